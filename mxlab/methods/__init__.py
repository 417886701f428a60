"""The PTQ methods: every method is one module here exposing the same ``apply`` signature.

``apply(block: nn.Module, ctx: BlockContext, config: StepConfig) -> StepRecord`` edits one decoder
block in place. A method module registers itself with ``@register("name")``; the pipeline finds
it through ``get_method(name)``, which imports ``mxlab.methods.<name>`` on first use, so the
pipeline never names a method.
"""
from __future__ import annotations

import importlib
from typing import Callable

from ..errors import MxlabError

METHODS: dict[str, Callable] = {}


def register(name: str) -> Callable[[Callable], Callable]:
    """Decorator: make ``fn`` the ``apply`` of step ``name`` in ``METHODS``."""

    def deco(fn: Callable) -> Callable:
        METHODS[name] = fn
        return fn

    return deco


def get_method(name: str) -> Callable:
    """The ``apply`` function of step ``name``, importing its module on first use."""
    if name not in METHODS:
        try:
            importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            raise MxlabError(f"step {name!r} is not available in this mxlab (no mxlab/methods/{name}.py); "
                             f"available now: {sorted(METHODS) or 'none loaded yet'}") from None
    if name not in METHODS:
        raise MxlabError(f"mxlab/methods/{name}.py does not register a method named {name!r}")
    return METHODS[name]
