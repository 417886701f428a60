"""mxlab/lab/wide.py: Inspect figures that stay small at real depth and width, and the sensitivity cost line."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mxlab import plots
from mxlab.errors import MxlabError
from mxlab.lab import session, views, wide
from mxlab.rundir import RESULTS_FILE
from mxlab import workspace as ws


def _channels(n_channels: int, modules=("m.layers.0.q", "m.layers.0.down")) -> pd.DataFrame:
    """One row per channel (uncompacted): absmax = channel index (+1000 at channel 37), mean_abs = 1."""
    rows = [dict(module=m, block=0, stage="fp", channel=c, absmax=float(c + (1000 if c == 37 else 0)), mean_abs=1.0)
            for m in modules for c in range(n_channels)]
    return pd.DataFrame(rows)


def test_rebin_keeps_the_outlier_channel_and_averages_means():
    out = wide.rebin_channels(_channels(100), 8)        # 100 channels -> ceil(100/8) = 13 per column, 8 columns
    q = out[out["module"] == "m.layers.0.q"]
    assert len(q) == 8 and q["channel"].tolist() == [0, 13, 26, 39, 52, 65, 78, 91]
    assert q["channel_end"].tolist() == [12, 25, 38, 51, 64, 77, 90, 99]
    third = q.iloc[2]                                   # channels 26..38 hold the outlier at 37
    assert third["absmax"] == 1037.0 and third["peak_channel"] == 37
    assert q.iloc[7]["absmax"] == 99.0 and q.iloc[7]["peak_channel"] == 99
    assert (q["mean_abs"] == 1.0).all()                 # a mean over channels, not a max
    assert out["module"].drop_duplicates().tolist() == ["m.layers.0.q", "m.layers.0.down"]   # layer order kept


def test_rebin_of_compacted_bins_weights_means_by_channels():
    df = pd.DataFrame(dict(module="m", block=0, stage="fp", channel=[0, 2, 6], channel_end=[1, 5, 6],
                           peak_channel=[1, 4, 6], absmax=[3.0, 9.0, 5.0], mean_abs=[1.0, 4.0, 8.0]))
    out = wide.rebin_channels(df, 1)
    assert out[["channel", "channel_end", "peak_channel", "absmax"]].values.tolist() == [[0, 6, 4, 9.0]]
    assert out["mean_abs"].iloc[0] == pytest.approx((2 * 1 + 4 * 4 + 1 * 8) / 7)
    with pytest.raises(MxlabError, match="at least 1"):
        wide.rebin_channels(df, 0)


def test_rebinned_heatmap_of_30_blocks_is_small():
    modules = [f"model.layers.{b}.{m}" for b in range(30) for m in
               ("self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj")]
    df = pd.concat([_channels(256, [m]).assign(block=int(m.split(".")[2]), absmax=lambda d, i=i: d["absmax"] + i)
                    for i, m in enumerate(modules)])                  # distinct inputs: one row each
    cols = wide.heatmap_columns(len(modules))
    assert cols == 8192 // 120 == 68
    fig = plots.activation_heatmap(wide.rebin_channels(df, cols))
    assert len(fig.data[0].y) == 120 and np.asarray(fig.data[0].z).size == 120 * 64   # ceil(256/68)=4 channels per bin
    assert len(fig.to_json()) < len(plots.activation_heatmap(df).to_json()) / 3
    assert fig.layout.height == 22 * 120 + 150 and wide.fit_height(fig).layout.height == 900
    assert wide.heatmap_columns(5) == 256 and wide.heatmap_columns(10_000) == 16


def _scales(n_layers: int) -> pd.DataFrame:
    rows = []
    for b in range(n_layers):
        for tensor, fmt, counts in (("weights", "mxint4", {-3: 10, -2: 30}), ("activations", "mxint8", {0: 5})):
            for e, n in counts.items():
                rows.append(dict(tensor=tensor, module=f"model.layers.{b}.mlp.up_proj", block=b, stage="final",
                                 format=fmt, exponent=e, count=n + b))
    return pd.DataFrame(rows)


def test_exponent_map_is_one_row_per_layer_with_shares():
    fig = wide.exponent_map(_scales(30))
    weights, acts = fig.data
    assert weights.x == (-3, -2) and len(weights.y) == 30 and weights.y[29] == "layer 29"
    assert weights.z[29] == pytest.approx([39 / (39 + 59), 59 / (39 + 59)], abs=1e-4)
    assert list(weights.customdata[29]) == [39, 59] and list(acts.z[0]) == [1.0]
    assert len(fig.to_json()) < len(plots.scale_histogram(_scales(30)).to_json()) / 2


def _run(tmp_path, n_blocks: int, n_modules: int) -> session.RunEntry:
    out = tmp_path / "r1"
    out.mkdir()
    records = [{"step": "rtn", "block": b, "modules": [{"module": f"model.layers.{b}.l{i}"} for i in range(n_modules)]}
               for b in range(n_blocks)]
    results = {"model": "x.gguf", "metrics": {"n_eval_tokens": 4094}, "records": records, "stats": {},
               "run": {"eval_dataset": "wikitext2", "max_eval_windows": 2, "seconds": {"eval_fp": 14.0}},
               "recipe": {"weights": "mxint4", "acts": "mxint8", "block_size": 32, "steps": [{"name": "rtn"}]}}
    (out / RESULTS_FILE).write_text(json.dumps(results))
    ws.write_meta(out, name="n", origin="cli")
    return session.SessionState(tmp_path).get("r1")


def test_sensitivity_line_of_a_smollm2_shaped_run(tmp_path):
    line = wide.sensitivity_line(_run(tmp_path, 30, 7))
    # 210 modules > 64: per block, (30 + 1) x 4 windows; 124 x 128 tokens x 14 s / 4094 tokens = 54 s
    assert "**30 blocks**" in line and "210 modules are more than 64" in line
    assert "124 forward passes" in line and "about 54 s" in line


def test_sensitivity_line_per_module_when_few(tmp_path):
    line = wide.sensitivity_line(_run(tmp_path, 2, 7))
    assert "**14 modules**" in line and "60 forward passes" in line and "about 26 s" in line


def test_run_figures_of_a_real_run_switch_to_the_wide_forms_and_are_cached(tmp_path, monkeypatch):
    from mxlab.recipe import Recipe
    from mxlab.runner import run_experiment

    recipe = Recipe(steps=["rtn"], calib=dict(dataset="tinystories", n_samples=2, seq_len=64))
    out = run_experiment(None, recipe, workspace=tmp_path, max_eval_windows=1, with_kl=False).out_dir
    entry = session.SessionState(tmp_path).get(out.name)             # stories260K: 5 blocks x 7 linears, width 64
    monkeypatch.setattr(wide, "WIDE_LAYERS", 2)                      # 5 layers count as many here
    monkeypatch.setattr(wide, "HEATMAP_CELLS", 35 * 16)              # 35 modules x 16 bins
    figs = views.run_figures(entry, views.ALL_LAYERS)
    assert [t.type for t in figs["scales"].data] == ["heatmap", "heatmap"]      # weights, activations
    assert list(figs["scales"].data[0].y) == [f"layer {b}" for b in range(5)]
    heat = figs["heatmap"].data[0]
    assert len(heat.y) == 20 and np.asarray(heat.z).shape == (20, 16)           # 64 channels -> 16 bins of 4
    assert "at most 16 per module" in figs["heatmap"].layout.xaxis.title.text
    assert heat.y[0].endswith("(4 ch/bin)") and heat.y[3].startswith("0.mlp.down_proj (")   # wider: more per bin
    again = views.run_figures(entry, views.ALL_LAYERS)
    assert again["heatmap"] is figs["heatmap"]                       # the second selection builds nothing
    one = views.run_figures(entry, "layer 3")
    assert {t.type for t in one["scales"].data} == {"bar"} and len(one["heatmap"].data[0].y) == 4
    assert np.asarray(one["heatmap"].data[0].z).shape == (4, 64)                # one layer keeps every channel
    assert views.module_table(entry, "layer 3")["block"].tolist() == [3] * 7
