"""The app through gradio_client, a real client of the running server, used the way a script would: load
the embedded model, run W-MXINT4/A-MXINT8 AWQ+GPTQ into the workspace, read the metrics, download the
export, inspect and compare; bad input leaves it working.

The API returns plain values (strings, tables as {"headers", "data"}, file paths) and takes a run by its
id (the runs table's first column)."""
from __future__ import annotations

import json
import math
import time
import zipfile
from pathlib import Path

import pytest

gradio_client = pytest.importorskip("gradio_client")

from mxlab.recipe import Recipe  # noqa: E402

from app_server import running_app  # noqa: E402

pytestmark = pytest.mark.slow

# the study's best 4-bit recipe, small calibration so the whole module stays fast on 2 cores
RECIPE = Recipe(weights="mxint4", acts="mxint8", block_size=32, steps=["awq", "gptq"],
                calib=dict(dataset="tinystories", n_samples=16, seq_len=128))
RTN = Recipe(weights="mxint4", acts="mxint8", steps=["rtn"], calib=dict(n_samples=4, seq_len=64))
EVAL_WINDOWS = 8
MODEL = ""              # the session's loaded model (the embedded stories260K until one is loaded)


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    with running_app(tmp_path_factory.mktemp("ws")) as address:
        yield address


@pytest.fixture(scope="module")
def client(url, tmp_path_factory):
    return gradio_client.Client(url, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))


@pytest.fixture(scope="module")
def first_run(client):
    """One AWQ+GPTQ run named 'client', shared by the tests that read its results: (message, row, seconds)."""
    start = time.perf_counter()
    message, runs = client.predict(MODEL, RECIPE.to_yaml(), "tinystories", EVAL_WINDOWS, "client", api_name="/run")
    return message, _rows(runs)[-1], time.perf_counter() - start


def _rows(table) -> list[dict]:
    """A Dataframe output (dict with headers/data) as a list of row dicts (none for an empty table)."""
    return [dict(zip(table["headers"], row)) for row in table["data"] if any(v not in (None, "") for v in row)]


def test_load_default_model_shows_architecture_and_layers(client):
    message, source, layers, model_line = client.predict("", RECIPE.to_yaml(), api_name="/load_model")
    assert "LlamaForCausalLM" in message and "260K parameters" in message
    rows = _rows(layers)
    # stories260K: 5 decoder blocks x 7 Linears (q, k, v, o, gate, up, down), all W-mxint4 / A-mxint8
    assert sum(r["count"] for r in rows) == 35 and len(rows) == 7
    assert {r["weights"] for r in rows} == {"mxint4"} and {r["acts"] for r in rows} == {"mxint8"}
    assert "35 of 36" in message                               # lm_head is not a decoder target
    assert source == "" and "embedded default" in model_line


def test_run_awq_gptq_gives_metrics(first_run):
    message, row, seconds = first_run
    assert message.startswith("**Done"), message
    assert row["recipe"] == "W-mxint4 A-mxint8 b32 awq+gptq" and row["name"] == "client"
    assert row["eval"] == f"tinystories x{EVAL_WINDOWS}" and row["model"] == "stories260K"
    assert 4.25 <= row["bits/weight"] < 4.27                      # packed: 4 + 8/32, plus a few padded blocks
    ppl_fp, ppl_q, kl, top1 = row["ppl FP"], row["ppl quant"], row["KL"], row["top-1"]
    assert all(math.isfinite(v) for v in (ppl_fp, ppl_q, kl, top1))
    # 4-bit weights cost something, but AWQ+GPTQ keeps the tiny model close to FP
    assert ppl_fp < ppl_q < 1.5 * ppl_fp, (ppl_fp, ppl_q)
    assert row["change %"] == pytest.approx(100 * (ppl_q / ppl_fp - 1), abs=0.1)
    assert 0 < kl < 0.5 and 0.5 < top1 <= 1.0
    print(f"client run: {seconds:.1f} s wall, ppl {ppl_fp} -> {ppl_q}, KL {kl}")


def test_export_downloads(client, first_run):
    _, row, _ = first_run
    message, model_zip, results, records, report, recipe = client.predict(row["run"], api_name="/export")
    assert message.startswith("**Ready"), message
    with zipfile.ZipFile(model_zip) as z:
        names = set(z.namelist())
    assert {"model.safetensors", "config.json"} <= names
    data = json.loads(Path(results).read_text())
    assert data["metrics"]["ppl_quant"] == pytest.approx(row["ppl quant"], rel=1e-3)
    header = Path(records).read_text().splitlines()[0].split(",")
    assert {"module", "step", "sqnr_before", "sqnr_after"} <= set(header)
    assert "<html" in Path(report).read_text()[:2000].lower()
    assert Recipe.from_yaml(Path(recipe).read_text()).to_dict() == RECIPE.to_dict()
    assert Path(recipe).name == f"{row['run']}-recipe.yaml"


def test_inspect_and_compare(client, first_run):
    _, awq, _ = first_run
    note, layer, heatmap, scales, waterfall, sens, table = client.predict(
        awq["run"], "layer 1", "output SQNR (dB)", api_name="/inspect")
    assert layer == "layer 1" and None not in (heatmap, scales, waterfall) and sens is None
    assert "**35 modules** x 4 windows of 128 tokens = 144 forward passes" in note      # the cost, before it starts
    records = _rows(table)
    assert {r["block"] for r in records} == {1} and {r["step"] for r in records} >= {"awq", "gptq"}
    assert all(r["sqnr_after"] > 10 for r in records if r["step"] == "gptq")   # 4-bit weights: > 10 dB each
    message, *_ = client.predict([awq["run"]], None, api_name="/compare")
    assert "two or more" in message                                    # one run is not a comparison
    message, runs = client.predict(MODEL, RTN.to_yaml(), "tinystories", EVAL_WINDOWS, "rtn", api_name="/run")
    assert message.startswith("**Done"), message
    rtn = _rows(runs)[-1]
    assert rtn["recipe"].endswith("rtn") and rtn["name"] == "rtn"
    message, table, layers, pareto = client.predict([awq["run"], rtn["run"]], awq["run"], api_name="/compare")
    assert "All runs share" in message and layers is not None and pareto is not None
    base, other = _rows(table)
    assert base["Δ perplexity vs baseline"] == 0
    assert other["Δ perplexity vs baseline"] == pytest.approx(rtn["ppl quant"] - awq["ppl quant"], rel=0.01)
    assert rtn["ppl quant"] > awq["ppl quant"]                          # the study's ranking holds here too


def test_bad_input_shows_message_and_app_keeps_working(client):
    message, source, *_ = client.predict("no-such-org/no-such-model", RECIPE.to_yaml(), api_name="/load_model")
    assert message.startswith("**Error") and "no-such-org/no-such-model" in message and "stays selected" in message
    assert source == ""                                               # the model in use is still the embedded one
    *_, check = client.predict("weights: [", api_name="/import_yaml")
    assert check.startswith("**Error") and "YAML" in check
    *_, check = client.predict("steps: [gptq, awq]", api_name="/import_yaml")
    assert check.startswith("**Error") and "already quantized" in check
    message, _ = client.predict(MODEL, "weights: [", "tinystories", EVAL_WINDOWS, "", api_name="/run")
    assert message.startswith("**Error")
    message, *_ = client.predict("", RECIPE.to_yaml(), api_name="/load_model")
    assert "35 of 36" in message                                      # still loads the default


def test_cancel_mid_run_then_run_again(url, tmp_path):
    client = gradio_client.Client(url, verbose=False, download_files=str(tmp_path))
    before = len(_rows(client.predict(api_name="/runs")[0]))
    job = client.submit(MODEL, RECIPE.to_yaml(), "tinystories", EVAL_WINDOWS, "", api_name="/run")
    deadline = time.time() + 60
    while not job.status().progress_data and time.time() < deadline:   # wait until it is really running
        time.sleep(0.05)
    assert client.predict(api_name="/cancel").startswith("**Cancel")
    message, runs = job.result(timeout=120)
    assert message.startswith("**Cancel") and "cancelled" in message.lower()
    assert len(_rows(runs)) == before                                   # nothing was kept
    # the session is usable: a cheap RTN run now finishes
    message, runs = client.predict(MODEL, RTN.to_yaml(), "tinystories", 2, "", api_name="/run")
    assert message.startswith("**Done") and len(_rows(runs)) == before + 1


def test_sessions_share_the_workspace_not_their_cancel(url, first_run, tmp_path):
    _, row, _ = first_run
    other = gradio_client.Client(url, verbose=False, download_files=str(tmp_path))
    table, _ = other.predict(api_name="/runs")
    assert row["run"] in [r["run"] for r in _rows(table)]               # every session lists every run
    message, _, results, *_ = other.predict(row["run"], api_name="/export")
    assert json.loads(Path(results).read_text())["metrics"]["ppl_quant"] == pytest.approx(row["ppl quant"], rel=1e-3)
    assert other.predict(api_name="/cancel") == "Nothing of this session is running."


def test_preset_fills_the_recipe(client):
    *widgets, yaml_text, check, cost = client.predict("paper-awq-gptq-w4a8", api_name="/preset")
    recipe = Recipe.from_yaml(yaml_text)
    assert (recipe.weights, recipe.acts, recipe.block_size) == ("mxint4", "mxint8", 128)   # the study's setup
    assert [s.name for s in recipe.steps] == ["awq", "gptq"] and "Recipe OK" in check
    assert widgets[:6] == ["mxint4", "mxint8", 128, "nearest", "floor", "awq, gptq"]
    assert cost.startswith("Cost: ~")


def test_run_with_zero_shot_task_reports_accuracies(url, tmp_path):
    """arc_easy, 4 examples, on the embedded model: the cost line first, then FP -> quantized acc / acc_norm."""
    import re

    client = gradio_client.Client(url, verbose=False, download_files=str(tmp_path))
    cost = client.predict(["arc_easy"], 4, api_name="/task_cost")
    assert "**16 requests**" in cost and "arc_easy 4 x 4" in cost                 # 4 examples x 4 choices
    message, runs = client.predict(MODEL, RTN.to_yaml(), "tinystories", 2, "zs", ["arc_easy"], 4, api_name="/run")
    assert message.startswith("**Done"), message
    found = re.search(r"zero-shot \(4 examples per task\): arc_easy acc ([\d.]+) -> ([\d.]+), "
                      r"acc_norm ([\d.]+) -> ([\d.]+)", message)
    assert found, message
    values = [float(v) for v in found.groups()]
    assert all(v * 4 == round(v * 4) and 0 <= v <= 1 for v in values)           # k correct out of 4
    _, _, results, *_ = client.predict(_rows(runs)[-1]["run"], api_name="/export")
    zs = json.loads(Path(results).read_text())["metrics"]["zero_shot"]
    assert zs["limit"] == 4 and zs["fp"]["arc_easy"]["n"] == 4
    assert values == [zs["fp"]["arc_easy"]["acc"], zs["quant"]["arc_easy"]["acc"],
                      zs["fp"]["arc_easy"]["acc_norm"], zs["quant"]["arc_easy"]["acc_norm"]]
    with pytest.raises(gradio_client.exceptions.AppError, match="less than minimum value 1"):   # the box's bound
        client.predict(MODEL, RTN.to_yaml(), "tinystories", 2, "", ["arc_easy"], 0, api_name="/run")
