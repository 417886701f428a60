"""run_experiment end to end on the embedded model, and export_run's files."""
from __future__ import annotations

import json
import math

import pytest
import torch

from mxlab.errors import Cancelled, MxlabError
from mxlab.checkpoint import quant_linears
from mxlab.recipe import Recipe
from mxlab.runner import run_experiment

RECIPE = dict(weights="mxint4", acts="mxint8", block_size=32, calib={"dataset": "tinystories", "n_samples": 4,
                                                                     "seq_len": 64})


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    calls = []
    o = run_experiment(None, Recipe.from_dict(dict(RECIPE, steps=[{"name": "gptq"}])), eval_dataset="tinystories",
                       out_dir=out, max_eval_windows=2, progress=lambda f, m: calls.append((f, m)))
    o.calls = calls
    return o


@pytest.mark.slow  # shares one ~5-10 s run of the embedded model (fixture `outcome`)
def test_metrics(outcome):
    from mxlab.evaluate import evaluate_model

    m = outcome.metrics
    assert set(m) == {"ppl_fp", "ppl_quant", "kl", "top1", "bits_per_weight", "seconds_quantize",
                      "seconds_eval", "n_eval_tokens"}
    # the numbers are the ones evaluate_model gives on the returned quantized model
    again = evaluate_model(outcome.model, outcome.tokenizer, "tinystories", max_windows=2)
    assert m["ppl_quant"] == pytest.approx(again["ppl"], rel=1e-9)
    assert m["n_eval_tokens"] == again["n_tokens"] > 0
    assert 1 < m["ppl_fp"] < m["ppl_quant"] < 2 * m["ppl_fp"]  # W4A8 costs a little on stories260K
    assert 0 < m["kl"] < 1 and 0.5 < m["top1"] < 1
    # 4-bit codes for the real elements + an 8-bit scale per block of 32 (down_proj: 172 -> 6 blocks,
    # the padding is not stored), rounded up to whole bytes per tensor
    shapes = [q.weight.shape for q in quant_linears(outcome.model).values()]
    expected = sum(o * i * 4 + o * math.ceil(i / 32) * 8 for o, i in shapes) / sum(o * i for o, i in shapes)
    assert m["bits_per_weight"] == pytest.approx(expected, rel=1e-12) and 4.25 < expected < 4.3
    assert m["seconds_quantize"] > 0 and m["seconds_eval"] > 0


@pytest.mark.slow  # shares one ~5-10 s run of the embedded model (fixture `outcome`)
def test_progress_monotonic_to_one(outcome):
    fractions = [f for f, _ in outcome.calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and fractions[0] == 0.0


@pytest.mark.slow  # shares one ~5-10 s run of the embedded model (fixture `outcome`)
def test_export_files(outcome):
    from mxlab.checkpoint import load_quantized

    out = outcome.out_dir
    results = json.loads((out / "results.json").read_text())
    assert results["metrics"]["ppl_quant"] == pytest.approx(outcome.metrics["ppl_quant"])
    assert results["model"] == "embedded:stories260K"
    assert Recipe.from_dict(results["recipe"]).to_dict() == outcome.result.recipe.to_dict()
    assert Recipe.from_yaml((out / "recipe.yaml").read_text()).to_dict() == outcome.result.recipe.to_dict()
    assert len(results["records"]) == len(outcome.result.records)
    assert results["stats"]["weights"] and results["stats"]["activations"]
    header = (out / "records.csv").read_text().splitlines()[0]
    assert header.startswith("order,block,step,module")
    assert (out / "report.html").stat().st_size > 100_000  # plotly.js is inlined
    model, _ = load_quantized(out / "model")
    tokens = torch.arange(64).unsqueeze(0)
    with torch.no_grad():
        assert torch.equal(model(tokens).logits, outcome.model(tokens).logits)


@pytest.mark.slow  # shares one ~5-10 s run of the embedded model (fixture `outcome`)
def test_cli_report_rebuilds_html(outcome, tmp_path):
    from mxlab.cli import main

    assert main(["report", str(outcome.out_dir), "--output", str(tmp_path / "r.html")]) == 0
    assert "<html" in (tmp_path / "r.html").read_text()[:200]


def test_failing_export_leaves_no_run_dir(tmp_path, monkeypatch):
    import mxlab.rundir as rundir

    def broken(results, path):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(rundir, "write_report_html", broken)
    with pytest.raises(MxlabError, match="free disk space"):
        run_experiment(None, Recipe.from_dict(RECIPE), eval_dataset="tinystories", out_dir=tmp_path / "run",
                       max_eval_windows=1, with_kl=False)
    assert list(tmp_path.iterdir()) == []


def test_cancel_during_quantization(tmp_path):
    def cancel(fraction, message):
        if fraction > 0.3:
            raise Cancelled("user pressed stop")
    with pytest.raises(Cancelled):
        run_experiment(None, Recipe.from_dict(RECIPE), eval_dataset="tinystories", out_dir=tmp_path / "run",
                       max_eval_windows=1, progress=cancel)
    assert list(tmp_path.iterdir()) == []


def test_bad_inputs_fail_before_the_fp_evaluation(tmp_path, monkeypatch):
    import mxlab.evaluate as evaluate

    def must_not_run(*a, **k):
        raise AssertionError("the FP model was evaluated before the inputs were checked")
    monkeypatch.setattr(evaluate, "evaluate_model", must_not_run)
    bad_calib = Recipe.from_dict(dict(RECIPE, calib={"dataset": "no-such-text", "n_samples": 2, "seq_len": 16}))
    with pytest.raises(MxlabError, match="unknown text source"):
        run_experiment(None, bad_calib, eval_dataset="tinystories", max_eval_windows=1)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("earlier run")
    with pytest.raises(MxlabError, match="already exists"):
        run_experiment(None, Recipe.from_dict(RECIPE), eval_dataset="tinystories", out_dir=tmp_path / "taken",
                       max_eval_windows=1)
