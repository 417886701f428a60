"""The scale lab: per layer and per rule, numbers checked against their closed forms on built weights."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import make_tiny_model
from mxlab.errors import MxlabError
from mxlab.scalelab import scale_lab_model, scale_rule_rows


def _rows(w, **kw):
    return {r["scale_rule"]: r for r in scale_rule_rows(w, "mxfp4", 32, **kw)}


def test_clipped_blocks_follow_the_rules_on_built_blocks():
    """fp4 block maxima 7.0 (f = 1.75 > 1.5: floor clips it), 5.0 (no rule clips), 4.0: floor clips 1 of 3;
    rceil and ceil never clip; even bumps 7.0 (1.75 rounds to 2 at 2 significant bits) so it does not clip."""
    w = torch.zeros(3, 32)
    w[0, 0], w[1, 0], w[2, 0] = 7.0, 5.0, 4.0
    w[:, 1] = 0.25
    r = _rows(w)
    assert r["floor"]["clipped_block_frac"] == pytest.approx(1 / 3)
    assert r["ceil"]["clipped_block_frac"] == r["rceil"]["clipped_block_frac"] == r["even"]["clipped_block_frac"] == 0
    # ceil moves every block with f > 1 up: 0.25 / 2 = 0.125 is below half of fp4's smallest step (0.5): flushed
    assert r["ceil"]["flushed_frac"] == pytest.approx(2 / 6)     # rows 0 and 1 lose their 0.25
    assert r["floor"]["flushed_frac"] == 0
    assert r["floor"]["exp_values"] == [0] and r["floor"]["exp_counts"] == [3]
    assert r["ceil"]["exp_values"] == [0, 1] and r["ceil"]["exp_counts"] == [1, 2]


def test_errors_match_direct_computation():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 64, generator=g)
    x = torch.randn(100, 64, generator=g)
    from mxlab.formats import quantize

    for rule, row in _rows(w, x=x).items():
        q = quantize(w, "mxfp4", 32, scale_rule=rule)
        assert row["weight_mse"] == pytest.approx(float((w - q).double().pow(2).mean()), rel=1e-9)
        y, yq = x @ w.T, x @ q.T
        assert row["output_mse"] == pytest.approx(float((yq - y).double().pow(2).mean()), rel=1e-5)
        sqnr = 10 * math.log10(float(y.double().pow(2).sum() / (yq - y).double().pow(2).sum()))
        assert row["output_sqnr_db"] == pytest.approx(sqnr, abs=1e-4)
    r = _rows(w, x=x)
    assert r["mse"]["weight_mse"] <= min(r[k]["weight_mse"] for k in ("floor", "ceil", "even", "rceil")) + 1e-12


def test_model_rows_cover_every_decoder_linear_and_rule(random_tokens):
    model = make_tiny_model("llama")
    rows = scale_lab_model(model, "mxfp4", 32, tokens=random_tokens, max_tokens=64)
    names = {r["module"] for r in rows}
    assert len(rows) == 5 * len(names) and len(names) == 14              # 2 blocks x 7 linears
    assert all(math.isfinite(r["output_sqnr_db"]) for r in rows)
    one = scale_lab_model(model, "mxfp4", 32, layers=["model.layers.1.mlp.down_proj"])
    assert {r["module"] for r in one} == {"model.layers.1.mlp.down_proj"} and math.isnan(one[0]["output_mse"])
    with pytest.raises(MxlabError, match="not decoder Linears"):
        scale_lab_model(model, "mxfp4", layers=["lm_head"])
    with pytest.raises(MxlabError, match="no E8M0"):
        scale_rule_rows(torch.randn(4, 32), "int4")


def test_scale_lab_figure_draws_every_rule():
    from mxlab.plots import scale_lab_figure
    from mxlab.tables import scale_lab_table

    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(1))
    df = scale_lab_table(scale_rule_rows(w, "mxfp4", 32, x=torch.randn(10, 64), module="m"))
    fig = scale_lab_figure(df)
    bars = [t for t in fig.data if t.name == "clipped blocks %"]
    assert list(bars[0].x) == ["floor", "ceil", "even", "rceil", "mse"]
    assert sum(1 for t in fig.data if t.name.startswith("e (")) == 5
    with pytest.raises(MxlabError, match="no rows"):
        scale_lab_figure(df, "other")


def test_pipeline_weight_stats_carry_the_rule_and_clipped_blocks():
    from mxlab.ptq.statistics import weight_stats

    w = torch.zeros(3, 32)
    w[0, 0], w[1, 0], w[2, 0] = 7.0, 5.0, 4.0
    floor = weight_stats("m", 0, w, w, {"weights": "mxfp4", "block_size": 32, "scale_rule": "floor"})
    rceil = weight_stats("m", 0, w, w, {"weights": "mxfp4", "block_size": 32, "scale_rule": "rceil"})
    assert floor["clipped_block_frac"] == pytest.approx(1 / 3) and floor["scale_rule"] == "floor"
    assert rceil["clipped_block_frac"] == 0 and rceil["exp_values"] == [0, 1]


def test_cli_scale_rule_flag_reaches_the_recipe():
    from mxlab.cli import build_parser, recipe_from_args

    args = build_parser().parse_args(["run", "--weights", "mxfp4", "--scale-rule", "rceil",
                                      "--steps", "rotate,gptq", "--out", "x"])
    r = recipe_from_args(args)
    assert r.scale_rule == "rceil" and [s.name for s in r.steps] == ["rotate", "gptq"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--scale-rule", "round", "--out", "x"])
