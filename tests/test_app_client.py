"""The app through gradio_client, a real client of the running server: load the embedded model, run
W-MXINT4/A-MXINT8 AWQ+GPTQ, read the metrics, download the export; bad input leaves it working."""
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
EVAL_WINDOWS = 8


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    with running_app(tmp_path_factory.mktemp("ws")) as address:
        yield address


@pytest.fixture(scope="module")
def client(url, tmp_path_factory):
    return gradio_client.Client(url, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))


@pytest.fixture(scope="module")
def first_run(client):
    """One AWQ+GPTQ run, shared by the tests that read its results."""
    start = time.perf_counter()
    out = client.predict(RECIPE.to_yaml(), "tinystories", EVAL_WINDOWS, "client", api_name="/run")
    return out, time.perf_counter() - start


def _rows(table) -> list[dict]:
    """A Dataframe output (dict with headers/data) as a list of row dicts."""
    return [dict(zip(table["headers"], row)) for row in table["data"]]


def test_load_default_model_shows_architecture_and_layers(client):
    message, _, layers, _ = client.predict("", RECIPE.to_yaml(), api_name="/load_model")
    assert "LlamaForCausalLM" in message and "parameters" in message
    rows = _rows(layers)
    # stories260K: 5 decoder blocks x 7 Linears (q, k, v, o, gate, up, down), all W-mxint4 / A-mxint8
    assert sum(r["count"] for r in rows) == 35 and len(rows) == 7
    assert {r["weights"] for r in rows} == {"mxint4"} and {r["acts"] for r in rows} == {"mxint8"}
    assert "35 of 36" in message                               # lm_head is not a decoder target


def test_run_awq_gptq_gives_metrics(first_run):
    (message, runs, *_), seconds = first_run
    assert message.startswith("**Done"), message
    (row,) = _rows(runs)
    assert row["recipe"] == "W-mxint4 A-mxint8 b32 awq+gptq" and row["name"] == "client"
    assert 4.25 <= row["bits/weight"] < 4.27                      # packed: 4 + 8/32, plus a few padded blocks
    ppl_fp, ppl_q, kl, top1 = row["ppl FP"], row["ppl quant"], row["KL"], row["top-1"]
    assert all(math.isfinite(v) for v in (ppl_fp, ppl_q, kl, top1))
    # 4-bit weights cost something, but AWQ+GPTQ keeps the tiny model close to FP
    assert ppl_fp < ppl_q < 1.5 * ppl_fp, (ppl_fp, ppl_q)
    assert 0 < kl < 0.5 and 0.5 < top1 <= 1.0
    print(f"client run: {seconds:.1f} s wall, ppl {ppl_fp} -> {ppl_q}, KL {kl}")


def test_export_downloads(client, first_run):
    (_, runs, *_), _ = first_run
    label = _rows(runs)[0]["run"]
    message, model_zip, results, records, report, recipe = client.predict(label, api_name="/export")
    assert message.startswith("**Ready"), message
    with zipfile.ZipFile(model_zip) as z:
        names = set(z.namelist())
    assert {"model.safetensors", "config.json"} <= names
    data = json.loads(Path(results).read_text())
    row = _rows(runs)[0]
    assert data["metrics"]["ppl_quant"] == pytest.approx(row["ppl quant"], rel=1e-3)
    assert Path(records).read_text().splitlines()[0].count(",") >= 5
    assert "<html" in Path(report).read_text()[:2000].lower()
    assert Recipe.from_yaml(Path(recipe).read_text()).to_dict() == RECIPE.to_dict()


def test_inspect_and_compare(client, first_run):
    (_, runs, *_), _ = first_run
    label = _rows(runs)[0]["run"]
    note, layer, heatmap, scales, waterfall, sens, table = client.predict(label, "all layers", "output SQNR (dB)", api_name="/inspect")
    assert heatmap is not None and scales is not None and waterfall is not None
    assert {r["step"] for r in _rows(table)} >= {"awq", "gptq"}
    message, *_ = client.predict([label], None, api_name="/compare")
    assert "two or more" in message                                    # one run is not a comparison
    rtn = Recipe(weights="mxint4", acts="mxint8", steps=["rtn"], calib=dict(n_samples=4, seq_len=64)).to_yaml()
    _, runs, *_ = client.predict(rtn, "tinystories", EVAL_WINDOWS, "", api_name="/run")
    labels = [r["run"] for r in _rows(runs)]
    assert len(labels) == 2 and labels[1].endswith("rtn")
    message, table, layers, pareto = client.predict(labels, None, api_name="/compare")
    assert message == "" and layers is not None and pareto is not None
    rtn_row, awq_row = _rows(runs)[1], _rows(runs)[0]
    assert awq_row["ppl quant"] < rtn_row["ppl quant"]                # the study's ranking holds here too


def test_bad_input_shows_message_and_app_keeps_working(client):
    message, *_ = client.predict("no-such-org/no-such-model", RECIPE.to_yaml(), api_name="/load_model")
    assert message.startswith("**Error") and "no-such-org/no-such-model" in message
    *_, check = client.predict("weights: [", api_name="/import_yaml")
    assert check.startswith("**Error") and "YAML" in check
    *_, check = client.predict("steps: [gptq, awq]", api_name="/import_yaml")
    assert check.startswith("**Error") and "already quantized" in check
    message, *_ = client.predict("weights: [", "tinystories", EVAL_WINDOWS, "", api_name="/run")
    assert message.startswith("**Error")
    message, *_ = client.predict("", RECIPE.to_yaml(), api_name="/load_model")
    assert message.startswith("**")                                   # still loads the default


def test_cancel_mid_run_then_run_again(url, tmp_path):
    client = gradio_client.Client(url, verbose=False, download_files=str(tmp_path))
    job = client.submit("", RECIPE.to_yaml(), "tinystories", EVAL_WINDOWS, api_name="/run")
    deadline = time.time() + 60
    while not job.status().progress_data and time.time() < deadline:   # wait until it is really running
        time.sleep(0.05)
    assert client.predict(api_name="/cancel").startswith("**Cancel")
    message, runs, *_ = job.result(timeout=120)
    assert message.startswith("**Cancel") and "cancelled" in message.lower()
    assert runs["data"] == [] or runs["data"] == [[]] or not any(runs["data"])
    # the session is usable: a cheap RTN run now finishes
    rtn = Recipe(weights="mxint4", acts="mxint8", steps=["rtn"], calib=dict(n_samples=4, seq_len=64)).to_yaml()
    message, runs, *_ = client.predict(rtn, "tinystories", 2, "", api_name="/run")
    assert message.startswith("**Done") and len(_rows(runs)) == 1


def test_sessions_do_not_see_each_other(url, first_run, tmp_path):
    (_, runs, *_), _ = first_run
    other = gradio_client.Client(url, verbose=False, download_files=str(tmp_path))
    message, *files = other.predict(_rows(runs)[0]["run"], api_name="/export")
    assert message.startswith("**Error") and "no run" in message and not any(files)


def test_preset_fills_the_recipe(client):
    *widgets, yaml_text, check = client.predict("paper-awq-gptq-w4a8", api_name="/preset")
    recipe = Recipe.from_yaml(yaml_text)
    assert (recipe.weights, recipe.acts, recipe.block_size) == ("mxint4", "mxint8", 128)   # the study's setup
    assert [s.name for s in recipe.steps] == ["awq", "gptq"] and "Recipe OK" in check
    assert widgets[:5] == ["mxint4", "mxint8", 128, "nearest", "awq, gptq"]
