"""The exact solver: a multiple-choice knapsack over units (modules or groups that share one format).

Each unit picks exactly one option; an option costs an integer number of storage bits (scales
included, from the real packed sizes) and adds a predicted loss. The predicted loss of an
assignment is the sum over units (the additive proxy). ``pareto_frontier`` returns every
Pareto-optimal assignment: for any budget, the cheapest-loss assignment within it is on the frontier.

Algorithm (exact, no discretization of the budget): dynamic programming over units on Pareto sets.
After unit k the set holds every non-dominated (bits, loss) pair reachable with units 0..k. The
next set is the Pareto pruning of {p + o : p in set, o in options(k+1)}: a dominated partial sum
can never become non-dominated by adding the same later choices (costs and losses add), so nothing
optimal is lost. Ties (equal bits and equal loss) keep one representative. Bits are integers, so
the set never holds more points than distinct reachable bit totals; ``max_points`` bounds it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import MxlabError

MAX_POINTS = 2_000_000


@dataclass(frozen=True)
class Option:
    """One choice of a unit: a format, its exact storage in bits, and its predicted loss."""

    fmt: str
    bits: int
    loss: float


@dataclass(frozen=True)
class Unit:
    """Modules that must share one format, with the options allowed for them."""

    name: str
    members: tuple[str, ...]
    n_weights: int
    options: tuple[Option, ...]


@dataclass(frozen=True)
class Point:
    """A Pareto-optimal assignment: total bits, predicted loss and the option index chosen per unit."""

    bits: int
    loss: float
    choice: tuple[int, ...]


def _prune(cost: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Indices of the Pareto-optimal (min cost, min loss) points, sorted by cost."""
    order = np.lexsort((loss, cost))               # by cost, then loss
    sl = loss[order]
    best_before = np.minimum.accumulate(np.concatenate(([np.inf], sl[:-1])))
    return order[sl < best_before]


def pareto_frontier(units: list[Unit], max_points: int = MAX_POINTS) -> list[Point]:
    """Every Pareto-optimal assignment (bits ascending, loss descending), exactly."""
    if not units:
        raise MxlabError("nothing to assign: no module is quantized by this recipe")
    for u in units:
        if not u.options:
            raise MxlabError(f"unit {u.name!r} has no allowed format; relax its minimum-bits constraint "
                             "or add a wider candidate format")
    cost = np.zeros(1, dtype=np.int64)
    loss = np.zeros(1, dtype=np.float64)
    parents: list[np.ndarray] = []
    picks: list[np.ndarray] = []
    for u in units:
        oc = np.array([o.bits for o in u.options], dtype=np.int64)
        ol = np.array([o.loss for o in u.options], dtype=np.float64)
        if not np.all(np.isfinite(ol)):
            raise MxlabError(f"unit {u.name!r} has a non-finite predicted loss; the sensitivity probe "
                             "overflowed (the format is unusable for it): drop that format")
        c = (cost[:, None] + oc[None, :]).ravel()
        l = (loss[:, None] + ol[None, :]).ravel()
        keep = _prune(c, l)
        if keep.size > max_points:
            raise MxlabError(f"the frontier grew past {max_points} points; group modules (one format per "
                             "block, or q/k/v together) to make the search smaller")
        parents.append(keep // len(oc))
        picks.append(keep % len(oc))
        cost, loss = c[keep], l[keep]
    points = []
    for j in range(len(cost)):
        choice, idx = [], j
        for k in range(len(units) - 1, -1, -1):
            choice.append(int(picks[k][idx]))
            idx = int(parents[k][idx])
        points.append(Point(int(cost[j]), float(loss[j]), tuple(reversed(choice))))
    return points


def best_within(points: list[Point], max_bits: int) -> Point:
    """The frontier point with the lowest predicted loss whose bits fit in ``max_bits``."""
    fits = [p for p in points if p.bits <= max_bits]
    if not fits:
        raise MxlabError(f"no assignment fits in {max_bits} bits; the smallest needs {points[0].bits} "
                         "(raise the budget or add a smaller candidate format)")
    return min(fits, key=lambda p: (p.loss, p.bits))
