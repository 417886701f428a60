"""A run's scale lab: the compact "scale_lab" section of results.json (every MX scale rule per layer, the rule
each layer used) and the report's "Scale rules" table, checked against the library's per-weight numbers."""
from __future__ import annotations

import json
import re

import pytest
import torch

from conftest import make_tiny_model
from mxlab import scalelab
from mxlab.recipe import Recipe
from mxlab.report import report_html
from mxlab.scalelab import recipe_scale_lab, scale_rule_rows
from mxlab.tables import scale_lab_section_table, scale_rule_summary, scale_rule_worst

RECIPE = Recipe(weights="mxfp4", acts="none", scale_rule="floor",
                overrides=[{"pattern": "*.mlp.down_proj", "scale_rule": "rceil"},
                           {"pattern": "*.self_attn.o_proj", "weights": "int4"}])


@pytest.fixture(scope="module")
def model():
    return make_tiny_model("llama")


def test_section_holds_every_rule_per_mx_layer(model):
    section = recipe_scale_lab(model, RECIPE)
    names = [l["module"] for l in section["layers"]]
    assert section["rules"] == ["floor", "ceil", "even", "rceil", "mse"]
    assert not any(n.endswith("o_proj") for n in names)                      # int4: no MX scales to compare
    assert {l["rule"] for l in section["layers"] if l["module"].endswith("down_proj")} == {"rceil"}
    assert {l["rule"] for l in section["layers"] if not l["module"].endswith("down_proj")} == {"floor"}
    layer = section["layers"][0]
    module = dict(model.named_modules())[layer["module"]]
    rows = scale_rule_rows(module.weight, "mxfp4", 32)
    assert layer["clipped_block_frac"] == pytest.approx([r["clipped_block_frac"] for r in rows], rel=1e-4)
    assert layer["flushed_frac"] == pytest.approx([r["flushed_frac"] for r in rows], rel=1e-4)
    assert layer["weight_sqnr_db"] == pytest.approx([r["weight_sqnr_db"] for r in rows], rel=1e-4)
    # the model-wide exponent histogram per rule counts every block of every MX layer once
    blocks = sum(dict(model.named_modules())[n].weight.numel() // 32 for n in names)
    assert all(sum(h["counts"]) == blocks for h in section["exp_hist"].values())
    assert recipe_scale_lab(model, Recipe(weights="int4", acts="none")) is None


def test_wide_layers_are_read_on_strided_rows(model, monkeypatch):
    monkeypatch.setattr(scalelab, "RUN_MAX_ELEMENTS", 1000)
    section = recipe_scale_lab(model, Recipe(weights="mxint4", acts="none"))
    layer = section["layers"][0]
    w = dict(model.named_modules())[layer["module"]].weight
    step = -(-w.numel() // 1000)
    assert layer["rows"] == f"{-(-w.shape[0] // step)}/{w.shape[0]}"
    rows = scale_rule_rows(w[::step], "mxint4", 32)
    assert layer["weight_sqnr_db"] == pytest.approx([r["weight_sqnr_db"] for r in rows], rel=1e-4)


def test_summary_and_worst_layers(model):
    df = scale_lab_section_table(recipe_scale_lab(model, RECIPE))
    summary = scale_rule_summary(df).set_index("rule")
    floor = df[df["scale_rule"] == "floor"]
    assert summary.loc["floor", "clipped blocks %"] == pytest.approx(100 * floor["clipped_block_frac"].mean())
    used = summary["used by the run (layers)"]
    assert used["rceil"] == 2 and used["floor"] == 10            # 2 blocks x 7 Linears - 2 int4 o_proj - 2 rceil
    worst = scale_rule_worst(df, 3)
    assert len(worst) == 3 and list(worst["gap dB"]) == sorted(worst["gap dB"], reverse=True)
    top = worst.iloc[0]
    g = df[df["module"] == top["module"]]
    assert top["gap dB"] == pytest.approx(g["weight_sqnr_db"].max() - g.loc[g["chosen"], "weight_sqnr_db"].iloc[0])


def test_report_shows_the_scale_rules_table(model):
    section = recipe_scale_lab(model, RECIPE)
    page = report_html(recipe=RECIPE.to_dict(), model_info={}, metrics={"ppl_fp": 10.0, "ppl_quant": 11.0},
                       scale_lab=json.loads(json.dumps(section)))
    text = re.sub(r"<[^>]+>", " ", page[page.index("<h2>Scale rules"):])
    summary = scale_rule_summary(scale_lab_section_table(section)).set_index("rule")
    assert "The run used floor, rceil" in " ".join(text.split())
    assert f"{summary.loc['ceil', 'clipped blocks %']:.4g}" in text
    assert f"{summary.loc['mse', 'weight SQNR dB']:.4g}" in text
    assert "Scale rules" not in report_html(recipe=None, model_info={}, metrics={})


def test_a_run_writes_the_section_and_the_report_table(tmp_path):
    from mxlab.runner import run_experiment

    recipe = Recipe(weights="mxfp4", acts="none", scale_rule="even", steps=["rtn"], calib=dict(n_samples=2, seq_len=32))
    outcome = run_experiment(None, recipe, out_dir=tmp_path / "run", max_eval_windows=2, with_kl=False)
    text = (tmp_path / "run" / "results.json").read_text()
    section = json.loads(text)["scale_lab"]
    assert len(section["layers"]) == 35 and {l["rule"] for l in section["layers"]} == {"even"}
    assert len(json.dumps(section)) < 16_000                                 # compact: a few hundred bytes a layer
    assert "<h2>Scale rules</h2>" in (tmp_path / "run" / "report.html").read_text()
    assert outcome.info["seconds"]["scale_lab"] < 5
    # the section was read on the FP weights: the quantized model's weights already sit on the FP4 grid
    w = dict(outcome.model.named_modules())[section["layers"][0]["module"]].weight
    fp_even = section["layers"][0]["weight_sqnr_db"][2]
    assert fp_even is not None and fp_even < 30
    assert scale_rule_rows(w, "mxfp4", 32, rules=["even"])[0]["weight_sqnr_db"] > 100
