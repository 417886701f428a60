"""The frontier's bits are the checkpoint's real storage; the `mix` command end to end and its errors."""
from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import make_tiny_model
from mxlab.checkpoint import save_quantized
from mxlab.cli import main
from mxlab.mix import build_frontier, clear_cache, format_sensitivity
from mxlab.ptq.pipeline import quantize_model
from mxlab.recipe import Recipe

WINDOWS = torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(0))


@pytest.mark.slow
def test_frontier_bits_equal_the_packed_checkpoint_file(tmp_path):
    from safetensors import safe_open

    clear_cache()
    model = make_tiny_model("llama")
    base = Recipe(weights="mxfp4", acts="mxint8")
    fr = build_frontier(format_sensitivity(model, base, ["mxfp4", "mxfp6_e2m3", "int8"], WINDOWS), base)
    calib = torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(1))
    for point in (fr.points[1], fr.at_budget(6.0)):
        q = quantize_model(make_tiny_model("llama"), None, fr.recipe(point), calib_tokens=calib)
        out = save_quantized(q, None, tmp_path / f"ckpt{point.bits}")
        stored = 0
        with safe_open(str(out / "model.safetensors"), "pt") as f:
            for key in f.keys():
                if any(key.startswith(m + ".weight.") for m in fr.assignment(point)):
                    t = f.get_tensor(key)
                    stored += t.numel() * t.element_size()
        assert 8 * stored == point.bits
        assert len(set(fr.assignment(point).values())) >= 2        # really mixed


def test_random_assignment_fills_the_budget():
    clear_cache()
    model = make_tiny_model("llama")
    base = Recipe(weights="mxint4", acts="none")
    fr = build_frontier(format_sensitivity(model, base, ["mxint4", "mxint8"], WINDOWS), base)
    biggest = max(sum(o.bits for o in u.options) - min(o.bits for o in u.options) for u in fr.units)
    for seed in range(3):
        budget = math.floor(6.0 * fr.n_weights)
        got = fr.evaluate(fr.random_assignment(budget, seed))["bits"]
        assert budget - biggest < got <= budget
    assert fr.random_assignment(budget, 0) != fr.random_assignment(budget, 1)


def test_mix_errors_exit_2(tmp_path, capsys):
    assert main(["mix", "--formats", "mxint4,mxint8", "--budget", "0", "--out", str(tmp_path / "a")]) == 2
    assert "--budget" in capsys.readouterr().err
    assert main(["mix", "--formats", "mxint4", "--budget", "5", "--min-bits", "oops", "--out", str(tmp_path / "b")]) == 2
    assert "PATTERN=N" in capsys.readouterr().err


@pytest.mark.slow
def test_mix_command_writes_frontier_recipe_and_measured_run(tmp_path, capsys):
    out = tmp_path / "mix"
    code = main(["-q", "mix", "--formats", "mxint4,mxint8", "--budget", "6", "--group", "qkv", "--probe-windows", "2",
                 "--probe-seq-len", "64", "--calib-samples", "2", "--calib-seq-len", "64", "--max-eval-windows", "2",
                 "--eval-seq-len", "64", "--run", "--out", str(out)])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    data = json.loads((out / "frontier.json").read_text())
    assert summary["bits_per_weight"] <= 6.0 and summary["measured_bits_per_weight"] == summary["bits_per_weight"]
    assert data["chosen"]["bits_per_weight"] == summary["bits_per_weight"] and len(data["points"]) >= 3
    assert data["measured"][0]["kl"] == pytest.approx(json.loads((out / "run" / "results.json").read_text())
                                                      ["metrics"]["kl"])
    recipe = Recipe.load(out / "recipe.yaml")
    assert {o.weights for o in recipe.overrides} | {recipe.weights} == {"mxint4", "mxint8"}
    assert (out / "frontier.html").read_text().count("plotly") > 10
