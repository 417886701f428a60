"""The Scale lab tab's helpers (mxlab.lab.scaleview), without gradio: a hand-made weight whose numbers are
worked out by hand, the embedded model's layers against an independent computation, the session cache,
the model-wide summary, Cancel, and every bad value refused."""
from __future__ import annotations

import math
import threading

import pytest
import torch

from mxlab import limits
from mxlab.data import calibration_batches
from mxlab.errors import Cancelled, MxlabError
from mxlab.formats import quantize
from mxlab.lab import scaleview
from mxlab.lab.scaleview import RULE_COLUMNS, layer_rows, layer_view, make_query, rule_table, summary_view
from mxlab.lab.session import SessionState
from mxlab.scalelab import scale_rule_rows

LAYER = "model.layers.1.mlp.down_proj"


def _by_rule(table: list[list]) -> dict[str, dict]:
    return {row[0]: dict(zip(RULE_COLUMNS, row)) for row in table}


def test_two_block_weight_floor_clips_one_block_rceil_none():
    """Two MXFP4 blocks (max 6.0 after scaling, emax 2). Block 1 holds 7, 2, 1, 0.25; block 2 holds 4, 0.5.
    floor: e = floor(log2 7) - 2 = 0, 7 > 6 clips to 6 (err 1), 0.25 ties up to 0.5 (err 1/16); block 2 exact.
    rceil: e = ceil(log2(7 / 6)) = 1: 7/2 = 3.5 ties up to 4 -> 8 (err 1), 0.25/2 = 0.125 flushes to 0 (err 1/16)."""
    w = torch.zeros(1, 64)
    w[0, :4] = torch.tensor([7.0, 2.0, 1.0, 0.25])
    w[0, 32:34] = torch.tensor([4.0, 0.5])
    t = _by_rule(rule_table(scale_rule_rows(w, "mxfp4", 32)))
    ref, err = 49 + 4 + 1 + 1 / 16 + 16 + 1 / 4, 1 + 1 / 16
    sqnr = 10 * math.log10(ref / err)                                   # 18.207 dB
    assert t["floor"]["clipped blocks %"] == 50.0 and t["rceil"]["clipped blocks %"] == 0.0
    assert t["floor"]["flushed %"] == 0.0 and t["rceil"]["flushed %"] == pytest.approx(100 / 6, abs=1e-2)
    assert t["floor"]["weight SQNR dB"] == pytest.approx(sqnr, abs=5e-3)      # shown to 4 digits
    assert t["rceil"]["weight SQNR dB"] == pytest.approx(sqnr, abs=5e-3)
    assert t["floor"]["weight MSE"] == pytest.approx(err / 64, rel=1e-3)
    assert t["floor"]["exponents (min..max)"] == "0..0" and t["rceil"]["exponents (min..max)"] == "0..1"
    assert t["floor"]["output SQNR dB"] is None                         # no inputs: an empty cell, not a number


@pytest.fixture
def state(tmp_path):
    return SessionState(tmp_path)


def _captured_inputs(model, layer: str, tokens: torch.Tensor, n: int) -> torch.Tensor:
    """The layer's first n input rows over the calibration sequences, captured with a hook of our own."""
    seen = []
    module = dict(model.named_modules())[layer]
    hook = module.register_forward_pre_hook(lambda _m, args: seen.append(args[0].reshape(-1, args[0].shape[-1])))
    with torch.no_grad():
        for i in range(tokens.shape[0]):
            model(tokens[i:i + 1])
    hook.remove()
    return torch.cat(seen)[:n].float()


def test_layer_view_matches_an_independent_computation(state, embedded):
    model, tokenizer = embedded
    q = make_query(None, "mxfp4", 32, "nearest", 200)
    view = layer_view(state, q, LAYER)
    t = _by_rule(view["table"])
    assert view["layer"] == LAYER and len(view["layers"]) == 35 and list(t) == ["floor", "ceil", "even", "rceil", "mse"]
    w = dict(model.named_modules())[LAYER].weight.detach().float()             # (64, 172): 6 blocks per row
    amax = torch.nn.functional.pad(w.abs(), (0, (-w.shape[1]) % 32)).reshape(w.shape[0], -1, 32).amax(-1)
    e_floor = torch.floor(torch.log2(amax)) - 2                                  # OCP: floor(log2 amax) - emax
    clipped = (amax / 2.0 ** e_floor > 6.0).float().mean().item()
    assert t["floor"]["clipped blocks %"] == pytest.approx(100 * clipped, abs=0.01)
    assert 0 < clipped < 1 and t["rceil"]["clipped blocks %"] == 0.0 and t["ceil"]["clipped blocks %"] == 0.0
    x = _captured_inputs(model, LAYER, calibration_batches(tokenizer, "tinystories", 2, 128, seed=0), 200)
    for rule in ("floor", "rceil", "mse"):
        qw = quantize(w, "mxfp4", 32, scale_rule=rule)
        wsqnr = 10 * math.log10(float(w.double().pow(2).sum() / (w - qw).double().pow(2).sum()))
        y, yq = x @ w.T, x @ qw.T
        osqnr = 10 * math.log10(float(y.double().pow(2).sum() / (yq - y).double().pow(2).sum()))
        assert t[rule]["weight SQNR dB"] == pytest.approx(wsqnr, abs=0.01)
        assert t[rule]["output SQNR dB"] == pytest.approx(osqnr, abs=0.01)
    assert view["figure"].layout.title.text == f"scale rules on {LAYER}"
    assert {b.name for b in view["figure"].data if b.name.startswith("e (")} == {f"e ({r})" for r in t}


def test_layers_are_cached_per_session_and_bounded(state, tmp_path, monkeypatch, embedded):
    q = make_query(None, "mxint4", 32, "nearest", 0)
    first = layer_rows(state, q, LAYER)
    assert layer_rows(state, q, LAYER) is first                          # the second pick reads the cache
    assert layer_rows(SessionState(tmp_path), q, LAYER) is not first     # another session has its own
    monkeypatch.setitem(limits.LIMITS, "scale lab cache", limits.Limit(2, "test"))
    for name in scaleview.layer_names(q)[:3]:
        layer_rows(state, q, name)
    assert len(scaleview._cache(state)) == 2                               # least recently used dropped


def test_summary_is_the_mean_over_layers(state, embedded):
    q = make_query(None, "mxfp4", 32, "nearest", 0)
    view = summary_view(state, q, lambda f, m: None)
    table = view["table"].set_index("rule")
    assert list(table.index) == ["floor", "ceil", "even", "rceil", "mse"] and set(table["layers"]) == {35}
    rows = [r for name in scaleview.layer_names(q) for r in layer_rows(state, q, name) if r["scale_rule"] == "floor"]
    assert table.loc["floor", "clipped blocks %"] == pytest.approx(
        100 * sum(r["clipped_block_frac"] for r in rows) / 35, rel=1e-3)
    assert table.loc["ceil", "clipped blocks %"] == 0.0
    assert "output SQNR dB" not in table                                 # 0 tokens: weights only
    assert table["weight SQNR dB"].idxmax() in view["note"] and "35 layers" in view["note"]


def test_summary_stops_on_cancel(state, embedded):
    q = make_query(None, "mxfp4", 32, "even", 0)
    calls = []

    def report(f, msg):      # the user presses Cancel as soon as the first layer is done
        calls.append(msg)
        state.cancel.set()

    with pytest.raises(Cancelled):
        summary_view(state, q, report)
    assert len(calls) == 1 and not state.busy and not state.cancel.is_set()
    assert len(scaleview._cache(state)) == 0                  # the interrupted chunk is not kept half done


@pytest.mark.parametrize("args,words", [
    (("int4", 32, "nearest", 0), "pick an MX format"),
    (("nvfp4", 16, "even", 0), "pick an MX format"),
    (("mxfp4", 0, "nearest", 0), "at least 1"),
    (("mxfp4", 10**6, "nearest", 0), "exceeds the limit 4096"),
    (("mxfp4", 32.5, "nearest", 0), "whole number"),
    (("mxfp4", 32, "upward", 0), "unknown rounding"),
    (("mxfp4", 32, "nearest", 10**6), "exceeds the limit 4096"),
    (("mxfp4", 32, "nearest", -1), r"0 \(weights only\) or more"),
    (("mxfp4", 32, "nearest", float("nan")), "whole number"),
])
def test_bad_values_are_refused(args, words):
    with pytest.raises(MxlabError, match=words):
        make_query(None, *args)


def test_unknown_layer_is_refused(state, embedded):
    with pytest.raises(MxlabError, match="not a decoder Linear"):
        layer_view(state, make_query(None, "mxfp4", 32, "nearest", 0), "lm_head")


def test_concurrent_sessions_share_the_model_safely(tmp_path, embedded):
    q = make_query(None, "mxfp4", 32, "nearest", 128)
    out = {}

    def pick(i):
        out[i] = layer_rows(SessionState(tmp_path), q, LAYER)

    threads = [threading.Thread(target=pick, args=(i,)) for i in range(3)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len({tuple(r["output_sqnr_db"] for r in rows) for rows in out.values()}) == 1   # same inputs for all
