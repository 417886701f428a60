"""YAML that cannot blow up: bounded size, depth and item count, and no anchors or aliases.

An alias bomb (a few hundred bytes of ``&a [*b, *b, ...]``) expands to gigabytes when loaded; a
recipe never needs anchors, so any anchor or alias is refused before anything is constructed.
"""
from __future__ import annotations

from typing import Any

import yaml

from .errors import MxlabError
from .limits import LIMITS, bound


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())[:200]


def load_yaml(text: str, what: str = "recipe") -> Any:
    """``yaml.safe_load`` of ``text`` after checking size, depth, items and that there are no aliases."""
    if not isinstance(text, str):
        raise MxlabError(f"{what} must be YAML text, got {type(text).__name__}")
    size = len(text.encode("utf-8", errors="replace"))
    if size > bound("recipe bytes"):
        lim = LIMITS["recipe bytes"]
        raise MxlabError(f"{what} is {size} bytes, over the limit of {lim.max} ({lim.reason})")
    depth, items = 0, 0
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                raise MxlabError(f"{what} uses YAML anchors/aliases (& or *), which mxlab does not accept; "
                                 f"write the values out")
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > bound("recipe depth"):
                    raise MxlabError(f"{what} nests deeper than {bound('recipe depth')} levels "
                                     f"({LIMITS['recipe depth'].reason})")
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
            elif isinstance(event, yaml.ScalarEvent):
                items += 1
                if items > 16 * bound("recipe items"):
                    raise MxlabError(f"{what} holds more than {16 * bound('recipe items')} values; "
                                     f"a recipe needs a few dozen")
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise MxlabError(f"{what} is not valid YAML: {_one_line(e)}") from None
