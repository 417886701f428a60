"""plots.py: each figure's data says what the tables say (planted outliers, exact counts, sums)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from mxlab import plots, tables
from mxlab.ptq import statistics
from mxlab.errors import MxlabError
from mxlab.records import ModuleRecord, StepRecord

from test_stats import OUTLIERS, planted_inputs


def _two_layer_stats() -> dict:
    """Two layers; q/k/v see the same input (one heatmap row), down sees a 128-wide input; plus smoothed."""
    acts = []
    for block in range(2):
        x = planted_inputs(seed=block)
        for name in ("q_proj", "k_proj", "v_proj"):
            acts.append(statistics.activation_stats(f"model.layers.{block}.self_attn.{name}", block, "fp", x))
        acts.append(statistics.activation_stats(f"model.layers.{block}.mlp.down_proj", block, "fp",
                                           torch.randn(256, 128, generator=torch.Generator().manual_seed(9))))
        s = x.abs().amax(0).sqrt()  # alpha-0.5 smoothing with a flat weight
        acts.append(statistics.activation_stats(f"model.layers.{block}.self_attn.q_proj", block, "smoothquant", x / s))
    return {"activations": acts, "weights": []}


def test_heatmap_rows_find_planted_outlier_channels():
    ch = tables.activation_channel_table(_two_layer_stats())
    fig = plots.activation_heatmap(ch)
    fp, sq = fig.data  # one trace per stage, switched by the dropdown
    assert fp.visible is True and sq.visible is False
    assert [b.label for b in fig.layout.updatemenus[0].buttons] == ["fp", "smoothquant"]
    # q/k/v share their input: one row each layer; down_proj is its own (wider) row
    assert list(fp.y) == ["0.self_attn.q_proj,k_proj,v_proj", "0.mlp.down_proj",
                          "1.self_attn.q_proj,k_proj,v_proj", "1.mlp.down_proj"]
    z = np.array(fp.z, dtype=float)  # (rows, 128); the 64-wide rows are NaN-padded
    assert z.shape == (4, 128) and np.isnan(z[0, 64:]).all() and not np.isnan(z[1]).any()
    for row in (0, 2):
        top3 = np.argsort(-np.nan_to_num(z[row], nan=-np.inf))[:3]
        assert top3.tolist() == sorted(OUTLIERS, key=OUTLIERS.get, reverse=True)
        # log10 scale: the planted 50x channel sits ~log10(50) = 1.7 decades above the median channel
        assert z[row, 42] - np.nanmedian(z[row, :64]) == pytest.approx(math.log10(50), abs=0.25)
    raw = np.array([[cell[0] for cell in row] for row in fp.customdata], dtype=float)  # cell: value, first channel, peak channel
    np.testing.assert_allclose(raw[0, :64], planted_inputs(seed=0).abs().amax(0).numpy(), rtol=5e-4)  # 4 significant digits, what the hover shows
    # after smoothing the outlier channel is no longer 1.7 decades above the rest
    zs = np.array(sq.z, dtype=float)
    assert zs[0, 42] - np.nanmedian(zs[0]) < 1.0


def test_outlier_ratio_chart_shows_smoothing():
    fig = plots.outlier_ratio_chart(tables.activation_table(_two_layer_stats()))
    by_stage = {t.name: dict(zip(t.x, t.y)) for t in fig.data}
    assert set(by_stage) == {"fp", "smoothquant"}
    for block in (0, 1):
        name = f"{block}.self_attn.q_proj"
        assert by_stage["smoothquant"][name] < by_stage["fp"][name] / 5


def _scale_rows() -> pd.DataFrame:
    rows = [("model.layers.0.a", 0, "mxint4", -3, 5), ("model.layers.0.b", 0, "mxint4", -3, 2),
            ("model.layers.0.b", 0, "mxint4", -2, 1), ("model.layers.1.a", 1, "mxint4", -4, 4),
            ("model.layers.1.c", 1, "mxfp4_e2m1", -5, 6)]
    return pd.DataFrame([dict(tensor="weights", module=m, block=b, stage="", format=f, block_size=32, exponent=e,
                              count=c) for m, b, f, e, c in rows], columns=tables.SCALE_COLUMNS)


def test_scale_histogram_shows_activations_at_their_last_stage():
    """Module a's inputs at 'fp' (exponent 2) and after smoothquant (exponent 0): only the last stage is drawn."""
    acts = pd.DataFrame([dict(tensor="activations", module="model.layers.0.a", block=0, stage=stage, format="mxint8",
                              block_size=32, exponent=e, count=c) for stage, e, c in (("fp", 2, 30), ("smoothquant", 0, 30),
                                                                                    ("smoothquant", 1, 2))])
    fig = plots.scale_histogram(pd.concat([_scale_rows(), acts], ignore_index=True))
    assert [a.text for a in fig.layout.annotations] == ["weights: mxint4", "weights: mxfp4_e2m1",
                                                       "activations: mxint8"]
    (act,) = [t for t in fig.data if t.xaxis == "x3"]
    assert dict(zip(act.x, act.y)) == {0: 30, 1: 2} and act.name == "layer 0"


def test_scale_histogram_counts_per_layer_and_format():
    fig = plots.scale_histogram(_scale_rows())
    bars = {(t.name, t.xaxis): dict(zip(t.x, t.y)) for t in fig.data}
    assert bars == {("layer 0", "x"): {-3: 7, -2: 1}, ("layer 1", "x"): {-4: 4}, ("layer 1", "x2"): {-5: 6}}
    assert sum(sum(b.values()) for b in bars.values()) == _scale_rows()["count"].sum()
    assert [a.text for a in fig.layout.annotations] == ["weights: mxint4", "weights: mxfp4_e2m1"]


def _records(scale: float = 1.0) -> list[StepRecord]:
    recs = []
    for b in range(2):
        q, o = f"model.layers.{b}.attn.q", f"model.layers.{b}.attn.o"
        recs.append(StepRecord("awq", b, [ModuleRecord(q, "awq", 4.0 * scale, 3.0 * scale, 10, 11),
                                          ModuleRecord(o, "awq", 2.0 * scale, 2.5 * scale, 12, 11.5)]))
        recs.append(StepRecord("gptq", b, [ModuleRecord(q, "gptq", 3.0 * scale, 1.0 * scale, 11, 15),
                                           ModuleRecord(o, "gptq", 2.5 * scale, 2.0 * scale, 11.5, 12)]))
    return recs


def test_error_waterfall_steps_chain_to_the_final_error():
    df = tables.records_table(_records())
    fig = plots.error_waterfall(df, metric="mse")
    names = [t.name for t in fig.data]
    assert names == ["before steps", "awq", "gptq", "final"]
    before, awq, gptq, final = fig.data
    assert list(final.x) == ["0.attn.q", "0.attn.o", "1.attn.q", "1.attn.o"]
    assert list(awq.base) == list(before.y) == [4.0, 2.0, 4.0, 2.0]  # each step floats from its start...
    assert list(awq.y) == [-1.0, 0.5, -1.0, 0.5]  # ...by what it removed (-) or added (+)
    np.testing.assert_allclose(np.add(awq.base, awq.y), gptq.base)  # the next step starts where it ended
    np.testing.assert_allclose(np.add(gptq.base, gptq.y), final.y)
    assert list(final.y) == [1.0, 2.0, 1.0, 2.0]


def test_compare_runs_ratio():
    fig = plots.compare_runs(tables.records_table(_records()), tables.records_table(_records(2.0)), names=("a", "b"))
    assert [t.name for t in fig.data] == ["a", "b", "b / a"]
    assert list(fig.data[0].y) == [1.0, 2.0, 1.0, 2.0] and list(fig.data[2].y) == [2.0] * 4


def test_overlay_runs_one_line_per_run_at_each_modules_final_error():
    frames = [tables.records_table(_records(k)) for k in (1.0, 2.0, 0.5)]
    fig = plots.overlay_runs(frames, ["a", "b", "c"])
    assert [t.name for t in fig.data] == ["a", "b", "c"]
    assert all(list(t.x) == ["0.attn.q", "0.attn.o", "1.attn.q", "1.attn.o"] for t in fig.data)
    assert [list(t.y) for t in fig.data] == [[k, 2 * k, k, 2 * k] for k in (1.0, 2.0, 0.5)]  # gptq's mse_after
    assert fig.layout.yaxis.type == "log" and "output MSE" in fig.layout.title.text


def test_sensitivity_chart_ranks_largest_first():
    sens = pd.DataFrame(dict(unit=["m.l.0.a", "m.l.0.b", "m.l.1.a"], kl=[0.1, 0.5, 0.3], ppl=[11, 15, 13],
                             ppl_fp=[10] * 3))
    fig = plots.sensitivity_chart(sens)
    assert list(fig.data[0].y)[::-1] == ["0.b", "1.a", "0.a"]  # horizontal bars: top of the chart first
    assert list(fig.data[0].x)[::-1] == [0.5, 0.3, 0.1]


def test_pareto_front_by_hand():
    runs = pd.DataFrame(dict(name=list("abcde"), bits_per_weight=[4.25, 4.25, 3.25, 8.25, 5.0],
                             ppl=[12.0, 11.0, 20.0, 10.0, 11.5]))
    assert plots.pareto_front(runs) == [2, 1, 3]  # c (fewest bits), b (beats a), d (best ppl); e is dominated by b
    fig = plots.pareto_chart(runs)
    assert list(fig.data[1].x) == [3.25, 4.25, 8.25] and list(fig.data[1].y) == [20.0, 11.0, 10.0]


def test_missing_columns_and_empty_tables():
    with pytest.raises(MxlabError, match="needs columns"):
        plots.sensitivity_chart(pd.DataFrame(dict(unit=["x"])))
    fig = plots.scale_histogram(tables.scale_table({"weights": []}))
    assert "no MX formats" in fig.layout.annotations[0].text
