"""The frontier: every Pareto-optimal mixed assignment (bits per weight vs predicted KL), with the
reference assignments (uniform formats, random mixes) and measured points added by runs."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

from ..errors import MxlabError
from ..recipe import check_format
from .assign import Constraints, assignment, build_units, mixed_recipe
from .probe import Sensitivity
from .solver import Point, Unit, best_within, pareto_frontier


MAX_BUDGET = 64.0


@dataclass
class Frontier:
    """Solver output over one sensitivity table: units, Pareto points and measured points."""
    sensitivity: Sensitivity
    base: Any                       # the base Recipe
    constraints: Constraints
    units: list[Unit]
    points: list[Point]
    measured: list[dict] = field(default_factory=list)

    @property
    def n_weights(self) -> int:
        """Quantized weight elements (the denominator of bits per weight)."""
        return sum(u.n_weights for u in self.units)

    def bits_per_weight(self, bits: int) -> float:
        """Storage bits (scales included) per quantized weight."""
        return bits / self.n_weights

    def predicted_kl(self, loss: float) -> float:
        """Predicted KL to FP: the activation-only offset plus the summed module losses."""
        return self.sensitivity.offset + loss

    def at_budget(self, budget: float) -> Point:
        """The assignment with the lowest predicted loss within ``budget`` bits per weight."""
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget <= MAX_BUDGET:
            raise MxlabError(f"budget must be bits per weight in (0, {MAX_BUDGET}], e.g. 5.0; got {budget!r}")
        return best_within(self.points, math.floor(budget * self.n_weights + 1e-9))

    def assignment(self, point: Point) -> dict[str, str]:
        """Module name -> weight format of ``point``."""
        return assignment(self.units, point.choice)

    def recipe(self, point: Point) -> Any:
        """The base recipe with overrides that implement ``point``."""
        return mixed_recipe(self.base, self.assignment(point))

    def evaluate(self, assign: dict[str, str]) -> dict:
        """Exact bits and predicted KL of any module -> format assignment (e.g. a uniform one)."""
        s = self.sensitivity
        bits = sum(s.bits[m][f] for m, f in assign.items())
        loss = 0.0
        for m, f in assign.items():
            loss += s.kl[m][f]
        return dict(bits=bits, bits_per_weight=self.bits_per_weight(bits), predicted_kl=self.predicted_kl(loss))

    def uniform(self, fmt: str) -> dict[str, str]:
        """Every module in ``fmt`` (aliases such as ``mxfp4`` resolved)."""
        fmt = check_format(fmt, "uniform")
        if fmt not in self.sensitivity.formats:
            raise MxlabError(f"{fmt} was not probed; candidates: {', '.join(self.sensitivity.formats)}")
        return {m["name"]: fmt for m in self.sensitivity.modules}

    def random_assignment(self, max_bits: int, seed: int) -> dict[str, str]:
        """A random assignment (constraints respected) filling ``max_bits`` as far as random upgrades go."""
        rng = random.Random(seed)
        choice = [min(range(len(u.options)), key=lambda i: u.options[i].bits) for u in self.units]
        total = sum(u.options[i].bits for u, i in zip(self.units, choice))
        if total > max_bits:
            raise MxlabError("the budget is below the smallest assignment")
        for k in rng.sample(range(len(self.units)), len(self.units)):     # 1: random options that fit
            u = self.units[k]
            opts = [i for i in range(len(u.options)) if total - u.options[choice[k]].bits + u.options[i].bits <= max_bits]
            i = rng.choice(opts)
            total += u.options[i].bits - u.options[choice[k]].bits
            choice[k] = i
        for k in rng.sample(range(len(self.units)), len(self.units)):     # 2: fill what is left, random order
            u = self.units[k]
            fits = [i for i in range(len(u.options)) if total - u.options[choice[k]].bits + u.options[i].bits <= max_bits]
            i = max(fits, key=lambda i: u.options[i].bits)
            total += u.options[i].bits - u.options[choice[k]].bits
            choice[k] = i
        return assignment(self.units, tuple(choice))

    def grid(self, point: Point) -> list[dict]:
        """Rows (block, module type, format) for a layers x module-type picture of ``point``."""
        a = self.assignment(point)
        return [dict(block=m["block"], local=m["local"], module=m["name"], fmt=a[m["name"]])
                for m in self.sensitivity.modules]

    def add_measured(self, label: str, assign: dict[str, str], metrics: dict, kind: str = "solver") -> dict:
        """Record a run of ``assign``: its measured KL/perplexity beside the prediction; returns the row."""
        row = dict(label=label, kind=kind, **self.evaluate(assign), kl=metrics.get("kl"),
                   ppl=metrics.get("ppl_quant", metrics.get("ppl")),
                   measured_bits_per_weight=metrics.get("bits_per_weight"))
        self.measured.append(row)
        return row

    def to_dict(self, budget: float | None = None) -> dict:
        """JSON-able: points (bits per weight, predicted KL, formats used), uniform references, measured rows."""
        pts = [dict(bits=p.bits, bits_per_weight=self.bits_per_weight(p.bits), predicted_kl=self.predicted_kl(p.loss),
                    counts=_counts(self.units, p.choice)) for p in self.points]
        out = dict(n_weights=self.n_weights, formats=self.sensitivity.formats, offset=self.sensitivity.offset,
                   solver="exact multiple-choice knapsack: Pareto-set dynamic programming over units",
                   constraints=self.constraints.to_dict(), base_recipe=self.base.to_dict(),
                   sensitivity_key=self.sensitivity.key, sensitivity_settings=self.sensitivity.settings,
                   points=pts, uniform=[dict(fmt=f, **self.evaluate(self.uniform(f))) for f in self.sensitivity.formats],
                   measured=list(self.measured), units=[dict(name=u.name, members=list(u.members)) for u in self.units])
        if budget is not None:
            p = self.at_budget(budget)
            out["chosen"] = dict(budget=budget, bits=p.bits, bits_per_weight=self.bits_per_weight(p.bits),
                                 predicted_kl=self.predicted_kl(p.loss), assignment=self.assignment(p),
                                 grid=self.grid(p))
        return out


def _counts(units: list[Unit], choice: tuple[int, ...]) -> dict[str, int]:
    out: dict[str, int] = {}
    for u, i in zip(units, choice):
        out[u.options[i].fmt] = out.get(u.options[i].fmt, 0) + len(u.members)
    return out


def build_frontier(sens: Sensitivity, base: Any, constraints: Constraints | None = None) -> Frontier:
    """Units under ``constraints`` and every Pareto-optimal assignment of them."""
    constraints = constraints or Constraints()
    units = build_units(sens, constraints)
    return Frontier(sens, base, constraints, units, pareto_frontier(units))
