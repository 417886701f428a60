"""The PTQ methods: one module per step, each exposing ``apply(ctx, config) -> StepRecord``.

``apply(ctx: BlockContext, config: <Its>Config) -> StepRecord`` edits ``ctx.block`` in place. The
step configs in ``mxlab/steps.py`` are the one registry of steps; the method of a config lives in
``mxlab/ptq/methods/<config.name>.py``, imported on first use, so the pipeline names no method.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Callable

from ...errors import MxlabError

if TYPE_CHECKING:
    from ...records import StepRecord
    from ...steps import StepConfig
    from ..context import BlockContext

Apply = Callable[["BlockContext", "StepConfig"], "StepRecord"]


def method_for(config: "StepConfig") -> Apply:
    """The ``apply`` function of ``config``'s step, importing its module on first use."""
    try:
        module = importlib.import_module(f"{__name__}.{config.name}")
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{config.name}":
            raise
        raise MxlabError(f"step {config.name!r} has no method in this mxlab (no mxlab/ptq/methods/"
                         f"{config.name}.py)") from None
    return module.apply
