"""Named recipes: the study's grid and a few starting points (``mxlab.PRESETS``, ``get_preset``)."""
from __future__ import annotations

from typing import Any

from .errors import MxlabError
from .recipe import Recipe

_PAPER_METHODS = {
    "rtn": ["rtn"], "gptq": ["gptq"], "sq": ["smoothquant", "rtn"], "awq": ["awq", "rtn"],
    "sq-gptq": ["smoothquant", "gptq"], "awq-gptq": ["awq", "gptq"],
}


def _paper_presets() -> dict[str, dict[str, Any]]:
    """The study's grid: A-MXINT8 with W-MXINT8/4/3 and A-INT8 with W-INT8/4/3, block 128, six methods."""
    out = {}
    for bits in (8, 4, 3):
        for method, steps in _PAPER_METHODS.items():
            base = dict(block_size=128, steps=list(steps))
            out[f"paper-{method}-w{bits}a8"] = dict(base, weights=f"mxint{bits}", acts="mxint8")
            out[f"paper-int-{method}-w{bits}a8"] = dict(base, weights=f"int{bits}", acts="int8")
    return out


_PRESET_SPECS: dict[str, dict[str, Any]] = {
    **_paper_presets(),
    "mxfp4-rtn-w4a8": dict(weights="mxfp4", acts="mxfp8_e4m3", block_size=32, steps=["rtn"]),
    "nvfp4-rtn-w4a4": dict(weights="nvfp4", acts="nvfp4", block_size=16, rounding="even", steps=["rtn"]),
    "weight-only-mxint4-gptq": dict(weights="mxint4", acts="none", block_size=32, steps=["gptq"]),
    # our best W4A8 on the embedded model: AWQ, then group-wise GPTQ (README, "Group-wise GPTQ for MX")
    "awq-gptq-column-w4a8": dict(weights="mxint4", acts="mxint8", block_size=32,
                                 steps=["awq", {"name": "gptq", "mx_update": "column"}]),
}


class _Presets(dict):
    """Preset name -> Recipe, built on first access (recipes validate formats, which loads mxlab.formats)."""

    def __missing__(self, name: str) -> Recipe:
        if name not in _PRESET_SPECS:
            raise KeyError(name)
        recipe = Recipe.from_dict(_PRESET_SPECS[name])
        self[name] = recipe
        return recipe

    def __iter__(self):
        return iter(_PRESET_SPECS)

    def __len__(self) -> int:
        return len(_PRESET_SPECS)

    def __contains__(self, name: object) -> bool:
        return name in _PRESET_SPECS

    def keys(self):
        return _PRESET_SPECS.keys()

    def items(self):
        return [(k, self[k]) for k in _PRESET_SPECS]

    def values(self):
        return [self[k] for k in _PRESET_SPECS]


PRESETS: dict[str, Recipe] = _Presets()


def get_preset(name: str) -> Recipe:
    """A fresh copy of preset ``name``; MxlabError lists the presets when unknown."""
    if name not in _PRESET_SPECS:
        raise MxlabError(f"unknown preset {name!r}; presets: {', '.join(_PRESET_SPECS)}")
    return Recipe.from_dict(_PRESET_SPECS[name])
