"""mxlab/lab/mixview.py: the Mix tab's logic on the embedded model (stories260K: 5 blocks x 7 Linears).

A small probe (4 windows x 64 calibration tokens) over {mxint4, mxint8}; the bits are checked against the
MX storage closed form, the points against a brute force over the frontier, a run of a point against its
results.json."""
from __future__ import annotations

import json
import math

import pytest

from mxlab import workspace as ws
from mxlab.errors import Cancelled, MxlabError
from mxlab.lab import mixview
from mxlab.lab.session import SessionState
from mxlab.limits import bound
from mxlab.mix import clear_cache
from mxlab.mix.probe import MAX_FORMATS, MAX_WINDOWS
from mxlab.models import load_model
from mxlab.recipe import Recipe
from mxlab.rundir import RESULTS_FILE

RTN = Recipe(weights="mxint4", acts="mxint8", steps=["rtn"], calib=dict(n_samples=4, seq_len=64))
FORMATS = ["mxint4", "mxint8"]


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    clear_cache()           # measure here, even if an earlier test of this process probed the same settings
    st = SessionState(tmp_path_factory.mktemp("ws"))
    seen = []
    mixview.compute(st, RTN, FORMATS, "rtn", 4, 64, lambda f, m: seen.append((f, m)))
    st.seen = seen
    return st


@pytest.fixture(scope="module")
def linears():
    """(name, out_features, in_features) of every decoder Linear of the embedded model."""
    model, _ = load_model(None)
    return [(n, m.out_features, m.in_features) for n, m in model.named_modules()
            if n.startswith("model.layers.") and hasattr(m, "in_features")]


def mx_bits(out: int, inp: int, element_bits: int) -> int:
    """MX storage of an (out, in) weight at block 32: the element codes, and one 8-bit scale per (partial) block."""
    return out * (inp * element_bits + math.ceil(inp / 32) * 8)


def test_the_slider_spans_uniform_mxint4_to_uniform_mxint8(state, linears):
    mix = state.mix
    n = sum(o * i for _, o, i in linears)
    b4, b8 = sum(mx_bits(o, i, 4) for _, o, i in linears), sum(mx_bits(o, i, 8) for _, o, i in linears)
    assert mix.frontier.n_weights == n == 226560 and len(mix.frontier.sensitivity.modules) == 35
    assert (mix.frontier.points[0].bits, mix.frontier.points[-1].bits) == (b4, b8) == (964480, 1870720)
    lo, hi = mixview.budget_bounds(mix)
    # 4.25 and 8.25 plus the partial blocks of the 172-wide down_proj inputs (6 scales for 172), rounded up to the slider's 0.001
    assert (lo, hi) == (math.ceil(b4 / n * 1000) / 1000, math.ceil(b8 / n * 1000) / 1000) == (4.258, 8.258)
    assert mixview.default_budget(mix) == 6.258
    assert set(mixview.choose(mix, lo).choice) == {0}                      # every module in mxint4
    top = mixview.choose(mix, hi)
    best = sum(min(mix.frontier.sensitivity.kl[m].values()) for m in mix.frontier.sensitivity.kl)
    assert top.loss == pytest.approx(best, rel=1e-12)                      # the least loss any assignment has
    assert state.seen[0] == (0.0, "loading model") and state.seen[-1] == (1.0, "frontier: 84 points")
    assert any(m.startswith("sensitivity: model.layers.") for _, m in state.seen)     # the probe, throttled


def test_a_budget_picks_the_best_point_within_it(state, linears):
    mix = state.mix
    fr = mix.frontier
    shape = {name: (o, i) for name, o, i in linears}
    for budget in (4.258, 5.0, 6.0, 7.5, 8.258):
        p = mixview.choose(mix, budget)
        fits = [q for q in fr.points if q.bits <= budget * fr.n_weights]
        assert p.loss == min(q.loss for q in fits)                          # brute force over the frontier
        info = mixview.point_info(mix, budget)
        bits = sum(mx_bits(*shape[m], int(f[-1])) for m, f in info["assignment"].items())
        assert info["bits"] == p.bits == bits and info["bits_per_weight"] == bits / fr.n_weights <= budget
        kl = fr.sensitivity.offset + sum(fr.sensitivity.kl[m][f] for m, f in info["assignment"].items())
        assert info["predicted_kl"] == pytest.approx(kl, rel=1e-12)
        assert sum(info["counts"].values()) == 35
    info = mixview.point_info(mix, 6.0)
    text = mixview.summary_text(mix, 6.0)
    assert f"**{info['bits_per_weight']:.4f} bits/weight**" in text and f"{info['predicted_kl']:.4g}" in text
    assert f"mxint4 x{info['counts']['mxint4']}, mxint8 x{info['counts']['mxint8']} (of 35 modules" in text
    assert 5.9 < info["bits_per_weight"] <= 6.0


def test_bad_budgets_and_settings_are_refused(state):
    mix = state.mix
    for budget, match in ((4.0, "between 4.258"), (65.0, "between 4.258"), (float("nan"), "bits per weight"),
                          ("6", "bits per weight"), (True, "bits per weight")):
        with pytest.raises(MxlabError, match=match):
            mixview.choose(mix, budget)
    assert bound("mix formats") == MAX_FORMATS and bound("mix probe windows") == MAX_WINDOWS
    cases = [(["mxint4"] * 9, "rtn", 4, 64, "exceeds the limit 8"), ([], "rtn", 4, 64, "at least two"),
             (["mxint4", "none"], "rtn", 4, 64, "not one of"), (["mxint4", "fp16"], "rtn", 4, 64, "not one of"),
             (FORMATS, "awq", 4, 64, "choose rtn or recipe"), (FORMATS, "rtn", 65, 64, "exceeds the limit 64"),
             (FORMATS, "rtn", 0, 64, "at least 1"), (FORMATS, "rtn", 4, 1, "between 2 and 4096"),
             (FORMATS, "rtn", 4.5, 64, "whole number"), (FORMATS, "rtn", 64, 129, "exceeds the limit 8192")]
    for formats, method, windows, seq_len, match in cases:
        with pytest.raises(MxlabError, match=match):
            mixview.check_settings(formats, method, windows, seq_len)
    assert mixview.check_settings("mxfp4, mxint8", "rtn", 2.0, 16) == (["mxfp4_e2m1", "mxint8"], "rtn", 2, 16)
    with pytest.raises(MxlabError, match="Compute frontier"):
        mixview.current(SessionState(state.workspace))


def test_busy_session_and_cancel_leave_the_frontier_alone(state):
    mix = state.mix
    state.busy = True
    try:
        with pytest.raises(MxlabError, match="still going"):
            mixview.compute(state, RTN, ["mxint4", "mxint3"], "rtn", 4, 64, lambda f, m: None)
    finally:
        state.busy = False
    with pytest.raises(Cancelled):      # Cancel pressed at the first progress report: stopped at the next one
        mixview.compute(state, RTN, ["mxint4", "mxint3"], "rtn", 4, 64, lambda f, m: state.cancel.set())
    assert state.mix is mix and not state.busy and not state.cancel.is_set()


def test_figures_mark_the_chosen_point_and_colour_the_grid(state):
    chart, grid = mixview.figures(state.mix, 6.0)
    info = mixview.point_info(state.mix, 6.0)
    star = next(t for t in chart.data if t.name == "chosen point")
    assert star.x == (info["bits_per_weight"],) and star.y[0] == pytest.approx(info["predicted_kl"])
    front = next(t for t in chart.data if t.name == "frontier (predicted)")
    assert len(front.x) == len(state.mix.frontier.points)
    heat = grid.data[0]
    assert heat.y == tuple(f"block {b}" for b in range(5)) and len(heat.x) == 7
    for i, row in enumerate(heat.z):                    # z: index of the module's format in FORMATS
        for j, z in enumerate(row):
            assert FORMATS[z] == info["assignment"][f"model.layers.{i}.{heat.x[j]}"]


def test_run_this_point_is_a_workspace_run_with_the_points_bits(state):
    entry, row = mixview.run_point(state, 6.0, eval_dataset="tinystories", max_eval_windows=2,
                                   report=lambda f, m: None)
    info = mixview.point_info(state.mix, 6.0)
    results = json.loads((entry.out_dir / RESULTS_FILE).read_text())
    assert results["metrics"]["bits_per_weight"] == info["bits_per_weight"] == row["bits_per_weight"]
    assert row["kl"] == results["metrics"]["kl"] > 0 and row["ppl"] == results["metrics"]["ppl_quant"]
    assert entry.id in [r.id for r in ws.list_runs(state.workspace)]
    assert results["recipe"]["overrides"] and entry.info.name == f"mix {info['bits_per_weight']:.3f} bpw"
    assert info["measured"] == [row] and f"measured by run {entry.id}: KL {row['kl']:.4g}" in \
        mixview.summary_text(state.mix, 6.0)
    # the downloadable recipe is the one that ran
    assert Recipe.load(mixview.recipe_file(state, 6.0)).to_dict() == results["recipe"]


def test_export_note_says_when_compressed_tensors_applies(state):
    assert "not for this point" in mixview.export_note(state.mix, 6.0)    # MXINT has no layout there
    fp = Recipe(weights="mxfp4", acts="mxfp8_e4m3", steps=["rtn"], calib=dict(n_samples=4, seq_len=64))
    st = SessionState(state.workspace)
    mix = mixview.compute(st, fp, ["mxfp4", "mxfp8_e4m3"], "rtn", 2, 32, lambda f, m: None)
    assert "Export tab's compressed-tensors button" in mixview.export_note(mix, mixview.default_budget(mix))
