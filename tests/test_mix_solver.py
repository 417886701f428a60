"""The mixed-format solver is exact: it matches a brute force over every assignment of small cases."""
from __future__ import annotations

import itertools
import random

import pytest

from mxlab.errors import MxlabError
from mxlab.mix.solver import Option, Unit, best_within, pareto_frontier


def _units(rng: random.Random, n_units: int, n_opts: int, tie_prone: bool) -> list[Unit]:
    units = []
    for k in range(n_units):
        opts = []
        for j in range(n_opts):
            bits = rng.choice([64, 128, 192, 256]) if tie_prone else rng.randint(50, 400)
            loss = rng.choice([0.0, 0.5, 1.0]) if tie_prone else rng.random()
            opts.append(Option(f"f{j}", bits, loss))
        units.append(Unit(f"u{k}", (f"u{k}",), 1, tuple(opts)))
    return units


def _brute(units: list[Unit]) -> list[tuple[int, float]]:
    """Reference: every assignment, then keep those no other assignment dominates."""
    pts = set()
    for choice in itertools.product(*[range(len(u.options)) for u in units]):
        bits, loss = 0, 0.0
        for u, i in zip(units, choice):          # same summation order as the solver
            bits += u.options[i].bits
            loss += u.options[i].loss
        pts.add((bits, loss))
    return sorted(p for p in pts if not any(q != p and q[0] <= p[0] and q[1] <= p[1] for q in pts))


@pytest.mark.parametrize("seed", range(12))
def test_frontier_equals_brute_force(seed):
    rng = random.Random(seed)
    units = _units(rng, n_units=rng.randint(1, 6), n_opts=rng.randint(1, 4), tie_prone=seed % 3 == 0)
    front = pareto_frontier(units)
    assert [(p.bits, p.loss) for p in front] == _brute(units)
    for p in front:  # each point's choice really adds up to its bits and loss
        assert p.bits == sum(u.options[i].bits for u, i in zip(units, p.choice))
        assert p.loss == pytest.approx(sum(u.options[i].loss for u, i in zip(units, p.choice)), abs=1e-12)
    # and the best assignment under every budget is the brute-force optimum
    every = [(sum(u.options[i].bits for u, i in zip(units, c)), sum(u.options[i].loss for u, i in zip(units, c)))
             for c in itertools.product(*[range(len(u.options)) for u in units])]
    for budget in sorted({b for b, _ in every}):
        best = min(l for b, l in every if b <= budget)
        assert best_within(front, budget).loss == pytest.approx(best, abs=1e-12)


def test_worked_example():
    # two modules, 4-bit vs 8-bit: a 4-bit a (loss 3) costs less than a 4-bit b (loss 1)...
    a = Unit("a", ("a",), 10, (Option("mxint4", 40, 3.0), Option("mxint8", 80, 0.0)))
    b = Unit("b", ("b",), 10, (Option("mxint4", 40, 1.0), Option("mxint8", 80, 0.0)))
    front = pareto_frontier([a, b])
    assert [(p.bits, p.loss, p.choice) for p in front] == [(80, 4.0, (0, 0)), (120, 1.0, (1, 0)), (160, 0.0, (1, 1))]
    assert best_within(front, 130).choice == (1, 0)     # ... so with room for one 8-bit module, a gets it
    with pytest.raises(MxlabError, match="smallest needs 80"):
        best_within(front, 79)


def test_bad_units_are_refused():
    with pytest.raises(MxlabError, match="no allowed format"):
        pareto_frontier([Unit("a", ("a",), 1, ())])
    with pytest.raises(MxlabError, match="non-finite"):
        pareto_frontier([Unit("a", ("a",), 1, (Option("x", 1, float("inf")),))])
    a = Unit("a", ("a",), 1, (Option("mxint4", 40, 3.0), Option("mxint8", 80, 0.0)))
    b = Unit("b", ("b",), 1, (Option("mxint4", 40, 1.0), Option("mxint8", 80, 0.0)))
    with pytest.raises(MxlabError, match="group modules"):   # 3 Pareto points > a cap of 2
        pareto_frontier([a, b], max_points=2)
