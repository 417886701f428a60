"""From sensitivity to solver units (constraints applied) and from a solution back to a recipe.

Constraints: a minimum element width per module pattern (``{"*.down_proj": 8}`` keeps every
down_proj at >= 8-bit elements), one format per decoder block, and hardware-friendly groups inside
a block that share one format (``GROUP_PRESETS["qkv"]``: q/k/v together).
"""
from __future__ import annotations

import fnmatch
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..errors import MxlabError
from ..formats import FORMATS
from ..recipe import Recipe
from .probe import Sensitivity
from .solver import Option, Unit


GROUP_PRESETS = {"qkv": ("*q_proj", "*k_proj", "*v_proj"), "gate_up": ("*gate_proj", "*up_proj")}
MAX_GROUPS = 16


@dataclass
class Constraints:
    """Rules every assignment on the frontier obeys.

    Args:
        min_bits: fnmatch pattern on the full module name -> minimum element bits (1..16); the
            largest matching minimum applies.
        per_block: one format for every module of a decoder block.
        groups: tuples of fnmatch patterns on the name inside the block; the modules of one block
            matching one tuple share a format (names from ``GROUP_PRESETS`` are accepted too).
    """

    min_bits: dict[str, int] = field(default_factory=dict)
    per_block: bool = False
    groups: list = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.min_bits, dict):
            raise MxlabError("min_bits must map module patterns to bits, e.g. {'*.down_proj': 8}")
        for pat, b in self.min_bits.items():
            if not isinstance(pat, str) or not pat or isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 16:
                raise MxlabError(f"min_bits {pat!r}: {b!r} must be a whole number of bits from 1 to 16")
        if not isinstance(self.per_block, bool):
            raise MxlabError("per_block must be true or false")
        if len(self.groups) > MAX_GROUPS:
            raise MxlabError(f"at most {MAX_GROUPS} groups, got {len(self.groups)}")
        groups = []
        for g in self.groups:
            if isinstance(g, str) and g in GROUP_PRESETS:
                g = GROUP_PRESETS[g]
            if isinstance(g, str) or not g or not all(isinstance(p, str) and p for p in g):
                raise MxlabError(f"group {g!r} must be a list of name patterns or one of {', '.join(GROUP_PRESETS)}")
            groups.append(tuple(g))
        self.groups = groups

    def to_dict(self) -> dict:
        """JSON-able form."""
        return dict(min_bits=dict(self.min_bits), per_block=self.per_block, groups=[list(g) for g in self.groups])


def element_bits(fmt: str) -> int:
    """Bits of one element code (mxint4 -> 4, mxfp6_e2m3 -> 6, nvfp4 -> 4)."""
    return FORMATS[fmt].bits


def _unit_key(m: dict, c: Constraints) -> str:
    prefix = m["name"][: -len(m["local"]) - 1]
    if c.per_block:
        return prefix
    for g in c.groups:
        if any(fnmatch.fnmatchcase(m["local"], p) for p in g):
            return f"{prefix}.[{'|'.join(g)}]"
    return m["name"]


def build_units(sens: Sensitivity, c: Constraints) -> list[Unit]:
    """Solver units in model order: one per module, or per group / block under the constraints."""
    members: dict[str, list[dict]] = {}
    for m in sens.modules:
        members.setdefault(_unit_key(m, c), []).append(m)
    units = []
    for key, ms in members.items():
        options = []
        for f in sens.formats:
            floor = max([b for pat, b in c.min_bits.items() for m in ms if fnmatch.fnmatchcase(m["name"], pat)],
                        default=0)
            if element_bits(f) < floor:
                continue
            loss = 0.0
            for m in ms:
                loss += sens.kl[m["name"]][f]
            options.append(Option(f, sum(sens.bits[m["name"]][f] for m in ms), loss))
        if not options:
            raise MxlabError(f"{key}: no candidate format has enough bits for its minimum; add a wider format "
                             "or lower --min-bits")
        units.append(Unit(key, tuple(m["name"] for m in ms), sum(m["n_weights"] for m in ms), tuple(options)))
    return units


def assignment(units: list[Unit], choice: tuple[int, ...]) -> dict[str, str]:
    """Module name -> weight format for one solution."""
    return {name: u.options[i].fmt for u, i in zip(units, choice) for name in u.members}


def mixed_recipe(base: Any, assign: dict[str, str], acts: dict[str, str] | None = None) -> Any:
    """``base`` with the most common format as ``weights`` and one exact-name override per other module."""
    common = Counter(assign.values()).most_common(1)[0][0]
    overrides = []
    for name, f in assign.items():
        a = (acts or {}).get(name)
        spec = base.spec_for(name)
        changes_acts = spec is not None and spec.acts != base.acts
        if f != common or changes_acts:
            o = {"pattern": name, "weights": f}
            if changes_acts:
                o["acts"] = a or spec.acts
            overrides.append(o)
    data = base.to_dict()
    data["weights"] = common
    data["overrides"] = overrides + data.get("overrides", [])
    return Recipe.from_dict(data)
