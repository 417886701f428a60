"""The run directory: the one JSON converter, export_run's files (results.json, recipe.yaml, CSVs,
report.html, model/) from a RunOutcome, and read_results' clear errors."""
from __future__ import annotations

import ast
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_tiny_model
from mxlab.checkpoint import load_quantized
from mxlab.errors import MxlabError
from mxlab.jsonable import to_jsonable
from mxlab.ptq.pipeline import quantize_model
from mxlab.recipe import Recipe
from mxlab.rundir import MODEL_DIR, RECIPE_FILE, REPORT_FILE, RESULTS_FILE, export_run, read_results, results_dict
from mxlab.runner import RunOutcome

MXLAB = Path(__file__).resolve().parents[1] / "mxlab"


# ------------------------------------------------------------------------------- the converter
@dataclasses.dataclass
class _Point:
    x: float
    tags: tuple


def test_to_jsonable_plain_types_all_the_way_down():
    got = to_jsonable({1: _Point(math.nan, ("a", 2)), "t": torch.tensor([[1.5, math.inf]]),
                       "np": np.float32(0.25), "n": np.int64(7), "p": Path("/x/y"), "d": torch.float16,
                       "f": [-math.inf, 1e-300, None, True]})
    assert got == {"1": {"x": None, "tags": ["a", 2]}, "t": [[1.5, None]], "np": 0.25, "n": 7, "p": "/x/y",
                   "d": "torch.float16", "f": [None, 1e-300, None, True]}
    assert json.loads(json.dumps(got, allow_nan=False)) == got  # strict JSON: no NaN / Infinity tokens
    assert to_jsonable(got) == got


def test_one_json_converter_in_the_library():
    """No json.dump(s) call in mxlab brings its own converter (``default=``): to_jsonable is the one."""
    for path in MXLAB.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) in ("dump", "dumps"):
                assert not any(k.arg == "default" for k in node.keywords), f"{path.name}:{node.lineno}"


# ---------------------------------------------------------------------------------- export_run
@pytest.fixture(scope="module")
def outcome():
    calib = torch.randint(0, 512, (4, 32), generator=torch.Generator().manual_seed(0))
    result = quantize_model(make_tiny_model("llama"), None, Recipe(weights="mxint4", acts="mxint8"),
                            calib_tokens=calib)
    metrics = {"ppl_fp": 10.0, "ppl_quant": math.inf, "kl": math.nan, "bits_per_weight": 4.25}
    return RunOutcome(result=result, metrics=metrics, model=result.model, tokenizer=None,
                      info={"model": "tiny-llama", "eval_dataset": "tinystories"})


def test_results_dict(outcome):
    res = results_dict(outcome)
    assert res["model"] == "tiny-llama" and res["run"] == {"eval_dataset": "tinystories"}
    assert res["metrics"] == {"ppl_fp": 10.0, "ppl_quant": None, "kl": None, "bits_per_weight": 4.25}
    assert res["recipe"] == outcome.result.recipe.to_dict()
    assert res["seconds"] == outcome.result.seconds > 0
    assert len(res["records"]) == len(outcome.result.records)
    assert res["stats"]["weights"] and res["stats"]["activations"]
    assert outcome.info["model"] == "tiny-llama"  # the outcome is left as it was


def test_export_run_files(outcome, tmp_path):
    out = export_run(outcome, tmp_path / "run")
    assert out == tmp_path / "run"
    assert json.loads((out / RESULTS_FILE).read_text()) == results_dict(outcome)
    assert (out / RESULTS_FILE).read_text().endswith("}\n")
    assert read_results(out) == read_results(out / RESULTS_FILE) == results_dict(outcome)
    assert Recipe.from_yaml((out / RECIPE_FILE).read_text()).to_dict() == outcome.result.recipe.to_dict()
    assert (out / "records.csv").read_text().startswith("order,block,step,module")
    assert "<html" in (out / REPORT_FILE).read_text()[:200]
    model, tok = load_quantized(out / MODEL_DIR)
    tokens = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert tok is None and torch.equal(model(tokens).logits, outcome.model(tokens).logits)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temporary directory left


def test_export_run_without_model(outcome, tmp_path):
    fractions = []
    out = export_run(outcome, tmp_path / "run", save_model=False, progress=lambda f, m: fractions.append(f))
    assert not (out / MODEL_DIR).exists() and (out / RESULTS_FILE).is_file()
    assert fractions == sorted(fractions) and fractions[-1] <= 0.3
    with pytest.raises(MxlabError, match="already exists"):
        export_run(outcome, out, save_model=False)


# -------------------------------------------------------------------------------- read_results
def test_read_results_clear_errors(tmp_path):
    with pytest.raises(MxlabError, match="results.json not found"):
        read_results(tmp_path)
    (tmp_path / RESULTS_FILE).write_text("{not json")
    with pytest.raises(MxlabError, match="not readable JSON"):
        read_results(tmp_path)
