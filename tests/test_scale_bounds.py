"""Outputs that scale with the model, not with its widest tensor: results.json, the report and its
figures stay bounded for a 32-layer model; the CSV tables keep every channel.

1. Statistics with the real widths of Llama-3.1-8B (32 blocks, hidden 4096, MLP 14336; synthetic
   values, no model) through results.json and the report: the stated bound, under 10 MB each.
2. A real 32-block random Llama with widths scaled down (hidden 128, MLP 448) through the pipeline
   and the run directory: bins where channels are many, the CSVs keep every channel, and the Python
   memory the statistics hold is a few dozen bytes per recorded channel.
"""
from __future__ import annotations

import json
import tracemalloc

import pandas as pd
import pytest
import torch

from mxlab import plots, report, tables
from mxlab.compact import CHANNEL_BINS, compact_stats
from mxlab.jsonable import dumps, to_jsonable
from mxlab.ptq import statistics
from mxlab.records import ModuleRecord, StepRecord

# Llama-3.1-8B: (module, in_features, out_features)
LLAMA_8B = [("self_attn.q_proj", 4096, 4096), ("self_attn.k_proj", 4096, 1024), ("self_attn.v_proj", 4096, 1024),
            ("self_attn.o_proj", 4096, 4096), ("mlp.gate_proj", 4096, 14336), ("mlp.up_proj", 4096, 14336),
            ("mlp.down_proj", 14336, 4096)]
OUTLIER = 9001        # a planted outlier input channel of every down_proj


def _eight_b_stats(n_blocks: int = 32) -> tuple[dict, list[StepRecord]]:
    g = torch.Generator().manual_seed(0)
    acts, weights, records = [], [], []
    for b in range(n_blocks):
        mods, inputs = [], {}
        for local, d_in, d_out in LLAMA_8B:
            name = f"model.layers.{b}.{local}"
            shared = {"self_attn.k_proj": "self_attn.q_proj", "self_attn.v_proj": "self_attn.q_proj",
                      "mlp.up_proj": "mlp.gate_proj"}.get(local, local)
            if shared not in inputs:                 # q/k/v and gate/up read the same input, as in the model
                inputs[shared] = torch.randn(4, d_in, generator=g)
                if local == "mlp.down_proj":
                    inputs[shared][:, OUTLIER] *= 300
            x = inputs[shared]
            for stage in ("fp", "awq"):
                acts.append(statistics.activation_stats(name, b, stage, x))
            w = torch.rand(d_out, generator=g)
            weights.append(dict(module=name, block=b, format="mxint4", block_size=32, out_features=d_out,
                                in_features=d_in, w_min=(-w).tolist(), w_max=w.tolist(), mse=1e-4, sqnr_db=20.0,
                                flushed_frac=0.01, n_blocks=d_out * d_in // 32, exp_values=list(range(-12, -4)),
                                exp_counts=[d_out * d_in // 256] * 8, saturated_frac=0.0, headroom_bits=0.4))
            mods.append(name)
        for step in ("awq", "gptq"):
            records.append(StepRecord(step, b, [ModuleRecord(m, step, 2e-3, 1e-3, 20.0, 23.0, 0.5, {"alpha": 0.45})
                                                for m in mods], seconds=3.0))
    return {"activations": acts, "weights": weights}, records


@pytest.fixture(scope="module")
def eight_b():
    torch.set_num_threads(1)
    return _eight_b_stats()


@pytest.mark.slow
def test_results_json_of_an_8b_model_is_bounded(eight_b):
    stats, records = eight_b
    full = sum(len(r["absmax"]) + len(r["mean_abs"]) for r in stats["activations"]) + \
        sum(len(r["w_min"]) + len(r["w_max"]) for r in stats["weights"])
    compact = compact_stats(stats)
    text = dumps({"records": records, "stats": compact})   # what write_json puts in results.json
    assert json.loads(text)["stats"] == to_jsonable(compact)
    assert full == 32 * 2 * 2 * (6 * 4096 + 14336) + 32 * 2 * (3 * 4096 + 2 * 1024 + 2 * 14336)  # ~7.6M numbers
    assert len(text) < 10e6, len(text) / 1e6       # the bound stated in the README
    widths = {len(r["absmax"]) for r in compact["activations"]} | {len(r["w_min"]) for r in compact["weights"]}
    assert max(widths) <= CHANNEL_BINS
    down = next(r for r in compact["activations"] if r["module"].endswith("down_proj"))
    k = max(range(len(down["absmax"])), key=down["absmax"].__getitem__)
    assert down["peak_channel"][k] == OUTLIER and down["channel_lo"][k] <= OUTLIER < down["channel_lo"][k + 1]
    assert down["top_channels"][0] == OUTLIER


@pytest.mark.slow
def test_report_and_figures_of_an_8b_model_are_bounded(eight_b):
    stats, records = eight_b
    compact = compact_stats(stats)
    html = report.report_html(recipe=None, model_info={"model": "8B-shaped"}, metrics={"ppl_fp": 6.0},
                              records=[r.to_dict() for r in records], stats=compact)
    assert len(html.encode()) < 10e6, len(html) / 1e6
    assert "every row is in weights.csv" in html and "activation_channels.csv" in html
    figs = dict(report.figures(records=records, stats_rows=compact))
    sizes = {name: len(fig.to_json()) for name, fig in figs.items()}
    assert max(sizes.values()) < 3e6, sizes         # each figure renders interactively in a browser
    heat = figs["Activation channels"].data[0]      # stage fp: 32 blocks x 4 distinct inputs, <= 256 bins
    assert len(heat.y) == 32 * 4 and max(len(row) for row in heat.z) <= CHANNEL_BINS
    row = list(heat.y).index(f"0.mlp.down_proj ({14336 // CHANNEL_BINS} ch/bin)")
    peak = max(range(len(heat.z[row])), key=lambda j: heat.z[row][j])
    value, lo, channel = heat.customdata[row][peak]
    assert channel == OUTLIER and lo <= OUTLIER < lo + 14336 // CHANNEL_BINS
    # the same figure straight from the full (unbinned) in-memory statistics of one block, as the app draws it
    one = tables.activation_channel_table(stats, block=0)
    assert len(one) == 2 * (6 * 4096 + 14336)
    assert len(plots.activation_heatmap(one).to_json()) < 0.5e6


def _tiny_32_layer_llama():
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=448, num_hidden_layers=32,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=False)
    return tf.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()


@pytest.mark.slow
def test_32_layer_run_directory_bounds(tmp_path, monkeypatch):
    from mxlab import rundir
    from mxlab.ptq.pipeline import quantize_model
    from mxlab.recipe import Recipe
    from mxlab.runner import RunOutcome

    torch.set_num_threads(1)
    model = _tiny_32_layer_llama()
    calib = torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(0))
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    result = quantize_model(model, None, Recipe(weights="mxint4", acts="mxint8", steps="awq"), calib_tokens=calib)
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    n_numbers = sum(2 * r["in_features"] for r in result.stats["activations"]) + \
        sum(2 * r["out_features"] for r in result.stats["weights"])
    assert n_numbers == 32 * 2 * 2 * (6 * 128 + 448) + 32 * 2 * (128 * 3 + 64 * 2 + 448 * 2)   # fp + awq stages
    assert held < 64 * n_numbers, (held, n_numbers)     # Python floats in lists: ~32 bytes each, no copies

    # a run directory that bins at 64 channels: 448-wide inputs and outputs are binned, 128-wide ones not
    monkeypatch.setattr(rundir, "CHANNEL_BINS", 64)
    outcome = RunOutcome(result=result, metrics={"ppl_fp": 1.0}, model=model, tokenizer=None, info={"model": "r"})
    rundir.export_run(outcome, tmp_path / "run", save_model=False)
    results = rundir.read_results(tmp_path / "run")
    assert results["stats_channel_bins"] == 64
    assert max(len(r["absmax"]) for r in results["stats"]["activations"]) == 64
    assert max(len(r["w_min"]) for r in results["stats"]["weights"]) == 64
    csv = pd.read_csv(tmp_path / "run" / "activation_channels.csv")
    assert len(csv) == 32 * 2 * (6 * 128 + 448)         # every channel of every module and stage
    down = csv[(csv["module"] == "model.layers.31.mlp.down_proj") & (csv["stage"] == "fp")]
    row = next(r for r in results["stats"]["activations"]
               if r["module"] == "model.layers.31.mlp.down_proj" and r["stage"] == "fp")
    k = max(range(64), key=row["absmax"].__getitem__)
    assert row["peak_channel"][k] == int(down.loc[down["absmax"].idxmax(), "channel"])
    assert row["absmax"][k] == pytest.approx(down["absmax"].max(), rel=1e-6)
    assert (tmp_path / "run" / "report.html").stat().st_size < 8e6
