"""The Mix tab without gradio: a session's frontier, the point a budget picks, its text, runs of points.

The library does the work (``mxlab.mix``: the probe, the exact solver, the recipe of a point). This
module keeps the frontier a session computed (``SessionState.mix``), turns a slider's budget into a
frontier point, and runs a point as a normal workspace run whose measured KL joins the chart.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..compressed_tensors import check_exportable
from ..errors import MxlabError
from ..formats import FORMATS, canonical_format
from ..limits import check_max, short
from ..mix.frontier import MAX_BUDGET, Frontier
from ..mix.probe import MAX_SEQ_LEN, METHODS
from ..mix.solver import Point
from ..mix.workflow import mix_frontier
from ..recipe import Recipe
from .session import Report, RunEntry, SessionState, check_sources, exclusive, execute_run, progress_adapter

# every format a module's weights can take (aliases and 'none' left out: 'none' has no packed size)
CANDIDATES = [f for f in FORMATS if f != "none" and canonical_format(f) == f]
DEFAULT_FORMATS = ["mxint4", "mxint8"]
METHOD_HELP = {"rtn": "round-to-nearest weights (fast; any recipe)",
               "recipe": "the recipe's own GPTQ/RTN weights, one uniform run per format (slower)"}
DEFAULT_WINDOWS, DEFAULT_SEQ_LEN = 8, 128
STEP = 0.001   # the budget slider's step (bits per weight); the slider's ends are multiples of it


@dataclass
class MixSession:
    """A frontier this session computed, with what it was computed for."""

    frontier: Frontier
    source: Optional[str]          # the model (None: the embedded default); runs of points use it
    method: str
    windows: int
    seq_len: int


def check_settings(formats: Any, method: Any, windows: Any, seq_len: Any) -> tuple[list[str], str, int, int]:
    """The probe's settings as sent by a form or a client, checked against ``mxlab.limits``."""
    if isinstance(formats, str):
        formats = [f for f in formats.split(",") if f.strip()]
    if not isinstance(formats, (list, tuple)) or not formats:
        raise MxlabError("Pick at least two candidate formats, e.g. mxint4 and mxint8.")
    check_max(len(formats), "mix formats", "candidate formats")
    fmts = []
    for f in formats:
        name = str(f).strip()
        if name not in FORMATS or name == "none":
            raise MxlabError(f"Candidate format {short(name)} is not one of {', '.join(CANDIDATES)}.")
        fmts.append(canonical_format(name))
    fmts = list(dict.fromkeys(fmts))
    if method not in METHODS:
        raise MxlabError(f"Probe method {short(method)}: choose {' or '.join(METHODS)}.")
    n, length = _whole(windows, "Probe windows"), _whole(seq_len, "Tokens per window")
    if not 1 <= n:
        raise MxlabError(f"Probe windows must be at least 1, got {n}.")
    check_max(n, "mix probe windows", "probe windows")
    if not 2 <= length <= MAX_SEQ_LEN:
        raise MxlabError(f"Tokens per window must be between 2 and {MAX_SEQ_LEN}, got {length}.")
    check_max(n * length, "mix probe tokens", "probe windows x tokens per window")
    return fmts, method, n, length


def _whole(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value != int(value):
        raise MxlabError(f"{what} must be a whole number, got {short(value)}.")
    return int(value)


def compute(state: SessionState, recipe: Recipe, formats: Any, method: Any, windows: Any, seq_len: Any,
            report: Report) -> MixSession:
    """Probe the session's model (every module x format, KL to FP) under ``recipe`` and solve the frontier."""
    fmts, method, n, length = check_settings(formats, method, windows, seq_len)
    source = state.model_source
    check_sources(source, recipe, None)
    with exclusive(state, report, "A job of this session (a run or a frontier) is still going; wait for it or "
                   "press Cancel."):
        frontier, _ = mix_frontier(source, recipe, fmts, probe_windows=n, probe_seq_len=length, method=method,
                                   progress=progress_adapter(report, state.cancel))
    state.mix = MixSession(frontier, source, method, n, length)
    report(1.0, f"frontier: {len(frontier.points)} points")     # also after a cached probe, which reports less
    return state.mix


def current(state: SessionState) -> MixSession:
    """The session's frontier; MxlabError when none was computed yet."""
    mix = getattr(state, "mix", None)
    if mix is None:
        raise MxlabError("No frontier yet: pick candidate formats and press Compute frontier.")
    return mix


def budget_bounds(mix: MixSession) -> tuple[float, float]:
    """The slider's ends: the cheapest and the most expensive point, rounded up to the slider's step."""
    fr = mix.frontier
    lo = _up(fr.bits_per_weight(fr.points[0].bits))
    hi = _up(fr.bits_per_weight(fr.points[-1].bits))
    return lo, max(hi, round(lo + STEP, 6))


def _up(x: float) -> float:
    return round(math.ceil(x / STEP - 1e-9) * STEP, 6)


def default_budget(mix: MixSession) -> float:
    """Half way between the cheapest and the most expensive point (on the slider's grid)."""
    lo, hi = budget_bounds(mix)
    return round(lo + round((hi - lo) / 2 / STEP) * STEP, 6)


def choose(mix: MixSession, budget: Any) -> Point:
    """The frontier point with the lowest predicted KL within ``budget`` bits per weight."""
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget):
        raise MxlabError(f"The budget must be bits per weight, e.g. 6.0; got {short(budget)}.")
    lo, hi = budget_bounds(mix)
    if not lo <= budget <= MAX_BUDGET:
        raise MxlabError(f"Budget {budget:g} bits/weight is outside this frontier: choose between {lo:g} "
                         f"(the cheapest assignment) and {hi:g} (the most expensive).")
    return mix.frontier.at_budget(float(budget))


def point_info(mix: MixSession, budget: Any) -> dict:
    """The chosen point as plain values: bits, bits per weight, predicted KL, counts, the assignment."""
    fr = mix.frontier
    p = choose(mix, budget)
    assign = fr.assignment(p)
    counts = dict(sorted(Counter(assign.values()).items(), key=lambda kv: fr.sensitivity.formats.index(kv[0])))
    measured = [r for r in fr.measured if r["bits"] == p.bits]
    return dict(budget=float(budget), bits=p.bits, bits_per_weight=fr.bits_per_weight(p.bits),
                predicted_kl=fr.predicted_kl(p.loss), counts=counts, n_modules=len(assign),
                n_points=len(fr.points), assignment=assign, measured=measured)


def summary_text(mix: MixSession, budget: Any) -> str:
    """One line: the point's bits per weight, its predicted KL and how many modules get each format."""
    info = point_info(mix, budget)
    counts = ", ".join(f"{f} x{n}" for f, n in info["counts"].items())
    text = (f"Budget {info['budget']:g}: **{info['bits_per_weight']:.4f} bits/weight**, predicted KL "
            f"**{info['predicted_kl']:.4g}** · {counts} (of {info['n_modules']} modules; point "
            f"{_index(mix, info['bits']) + 1} of {info['n_points']} on the frontier)")
    for row in info["measured"]:
        text += f" · measured by run {row['label']}: KL {_num(row['kl'])}, perplexity {_num(row['ppl'])}"
    return text


def _index(mix: MixSession, bits: int) -> int:
    return next(i for i, p in enumerate(mix.frontier.points) if p.bits == bits)


def _num(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.4g}"


def frontier_text(mix: MixSession) -> str:
    """The status after Compute: what was probed and the frontier's range."""
    fr, (lo, hi) = mix.frontier, budget_bounds(mix)
    model = mix.source or "the embedded default model"
    return (f"**Frontier ready:** {len(fr.points)} Pareto-optimal assignments of {', '.join(fr.sensitivity.formats)} "
            f"over {len(fr.sensitivity.modules)} modules of {model} (probe: {mix.method}, {mix.windows} windows x "
            f"{mix.seq_len} tokens of {fr.base.calib.dataset}), from {lo:g} to {hi:g} bits/weight. "
            f"Move the budget to pick a point; **Run this point** measures it.")


def figures(mix: MixSession, budget: Any) -> tuple[Any, Any]:
    """(frontier chart with the budget and the chosen point, layers x module-type grid of the point)."""
    from ..mix.figures import assignment_grid, frontier_chart     # plotly, on first use

    choose(mix, budget)                                            # a bad budget fails before drawing
    data = mix.frontier.to_dict(float(budget))
    return frontier_chart(data, float(budget)), assignment_grid(data["chosen"]["grid"], data["formats"])


def run_point(state: SessionState, budget: Any, *, eval_dataset: str, max_eval_windows: Any,
              report: Report, name: str = "") -> tuple[RunEntry, dict]:
    """Run the point's recipe as a normal workspace run; its measured KL joins the frontier. (entry, row)

    ``max_eval_windows``: evaluation windows (0 or None: the whole set), as the Run tab takes them."""
    mix = current(state)
    point = choose(mix, budget)
    windows = _whole(max_eval_windows or 0, "Eval windows")
    if windows < 0:
        raise MxlabError(f"Eval windows must be 0 (the whole set) or more, got {windows}.")
    fr = mix.frontier
    name = name or f"mix {fr.bits_per_weight(point.bits):.3f} bpw"
    entry = execute_run(state, mix.source, fr.recipe(point), eval_dataset=eval_dataset,
                        max_eval_windows=windows or None, report=report, name=name)
    row = fr.add_measured(entry.id, fr.assignment(point), entry.metrics)
    if not math.isclose(row["measured_bits_per_weight"], row["bits_per_weight"], rel_tol=0, abs_tol=1e-9):
        raise RuntimeError(f"predicted {row['bits_per_weight']} bits/weight but run {entry.id} stores "
                           f"{row['measured_bits_per_weight']}: the storage model is wrong (a bug)")
    return entry, row


def recipe_file(state: SessionState, budget: Any) -> Path:
    """The point's recipe (base recipe + one override per module off the common format) as a YAML file."""
    mix = current(state)
    point = choose(mix, budget)
    bpw = mix.frontier.bits_per_weight(point.bits)
    path = state.workdir / re.sub(r"[^\w.-]", "_", f"mix-recipe-{bpw:.3f}bpw.yaml")
    path.write_text(mix.frontier.recipe(point).to_yaml(), encoding="utf-8")
    return path


def export_note(mix: MixSession, budget: Any) -> str:
    """Whether the Export tab can write the point's run as compressed-tensors, and if not, why."""
    fr = mix.frontier
    point = choose(mix, budget)
    recipe = fr.recipe(point)
    try:
        for name in fr.assignment(point):
            check_exportable(name, recipe.spec_for(name))
    except MxlabError as err:
        return f"compressed-tensors: not for this point ({str(err).split(';')[0]}); the packed mxlab export is."
    return ("compressed-tensors: every module is MXFP at block 32, so after **Run this point** the Export tab's "
            "compressed-tensors button exports the run.")
