"""The Sweep tab through gradio_client, as a script would drive it: check a sweep file, run a 2 x 2 sweep on
the embedded model with one failing cell, read its status and table, open a cell as a run in Inspect, and
cancel a sweep mid-way (the finished cells stay runs of the workspace)."""
from __future__ import annotations

import json
import math
import time
import zipfile
from pathlib import Path

import pytest
import yaml

gradio_client = pytest.importorskip("gradio_client")

from app_server import running_app  # noqa: E402
from mxlab.lab import sweepview  # noqa: E402

pytestmark = pytest.mark.slow

SHORT_TEXT = ("Once upon a time there was a little cat named Tom. Tom liked to play in the sun "
              "with his red ball. One day the ball rolled away.")       # 45 tokens: no window of 64
TINY = {"save_model": True, "with_kl": True, "eval": {"dataset": "tinystories", "max_windows": 1},
        "recipe": {"weights": "mxint4", "acts": "mxint8", "block_size": 32, "steps": ["rtn"],
                   "calib": {"dataset": "tinystories", "n_samples": 2, "seq_len": 32}}}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return tmp_path_factory.mktemp("ws")


@pytest.fixture(scope="module")
def url(workspace):
    with running_app(workspace) as address:
        yield address


@pytest.fixture
def client(url, tmp_path):
    return gradio_client.Client(url, verbose=False, download_files=str(tmp_path))


def _rows(table) -> list[dict]:
    return [dict(zip(table["headers"], row)) for row in table["data"] if any(v not in (None, "") for v in row)]


def test_check_counts_cells_and_refuses_bad_files_in_one_line(client):
    message, cells = client.predict(sweepview.EXAMPLE, 1, api_name="/sweep_check")
    assert message.startswith("sweep example-w4: 4 job(s) (0 excluded)") and "estimated compute" in message
    assert [r["cell"] for r in _rows(cells)][:2] == ["weights-mxint4__steps-rtn", "weights-mxint4__steps-gptq"]
    message, _ = client.predict("base: {model: /etc}\naxes: {recipe.seed: [1, 2]}\n", 1, api_name="/sweep_check")
    assert message.startswith("**Error:**") and "/etc" in message and "\n" not in message
    outside = "name: outside\nbase: {eval: {dataset: /etc/passwd}}\naxes: {recipe.seed: [1]}\n"
    message, status, *_ = client.predict(outside, 1, "ppl_quant", api_name="/sweep_start")
    assert message.startswith("**Error:**") and "/etc/passwd" in message and not status["data"]
    assert "outside" not in client.predict(api_name="/sweeps")              # refused before anything ran
    with pytest.raises(gradio_client.exceptions.AppError, match="greater than maximum value"):   # the widget's bound
        client.predict(sweepview.EXAMPLE, 10_000, api_name="/sweep_check")


def test_sweep_with_a_failing_cell_then_open_a_cell_in_inspect(client, workspace):
    short = workspace / "short.txt"          # the workspace is an allowed root
    short.write_text(SHORT_TEXT)
    text = yaml.safe_dump({"name": "grid", "base": TINY,
                           "axes": {"eval.dataset": ["tinystories", str(short)], "eval.seq_len": [16, 64]}})
    message, status, table, _plot, cell = client.predict(text, 1, "ppl_quant", api_name="/sweep_start")
    assert message.startswith("**Done:** sweep grid: 3 cell(s) run, 0 kept from before, **1 failed**"), message
    rows = {r["cell"]: r for r in _rows(status)}
    assert [r["status"] for r in rows.values()] == ["done", "done", "done", "failed"]
    assert "fewer than one window of 64" in rows["dataset-short.txt__seq_len-64"]["error"]
    assert {r["attempts"] for r in rows.values()} == {1}
    cells = _rows(table)
    assert [r["eval.dataset"] for r in cells] == ["tinystories", "short.txt"]
    assert cells[0]["16"] == pytest.approx(rows["dataset-tinystories__seq_len-16"]["ppl_quant"], abs=1e-4)
    assert cells[1]["64"] is None                                    # the failed cell: an empty table cell
    assert cell == "grid/dataset-tinystories__seq_len-16"

    assert client.predict(api_name="/sweeps") == "Sweeps in the workspace: grid."
    message, status, *_ = client.predict("grid", "kl", api_name="/sweep_status")
    assert message == "Sweep **grid**: 3 done, 1 failed of 4."
    runs, _ = client.predict(api_name="/runs")
    by_id = {r["run"]: r for r in _rows(runs)}
    assert by_id[cell]["ppl quant"] == pytest.approx(rows["dataset-tinystories__seq_len-16"]["ppl_quant"], rel=1e-3)

    message, picked = client.predict(cell, api_name="/sweep_open")
    assert message == f"Opened run **{cell}** in Inspect." and picked.startswith(cell + " · stories260K")
    note, _layer, *_figs, modules = client.predict(picked, "all layers", "output SQNR (dB)", api_name="/inspect")
    mods = _rows(modules)
    assert len({m["module"] for m in mods}) == 35 and all(math.isfinite(m["sqnr_after"]) for m in mods)
    other = "grid/dataset-tinystories__seq_len-64"
    message, html = client.predict([cell, other], cell, api_name="/export_comparison")   # ids with a '/'
    assert message == "Comparison of 2 runs ready to download." and Path(html).name == (
        "comparison-grid_dataset-tinystories__seq_len-16-vs-grid_dataset-tinystories__seq_len-64.html")
    assert "<td>dataset-tinystories__seq_len-64 · stories260K" in Path(html).read_text()
    message, model_zip, results, *_ = client.predict(cell, api_name="/export")          # the cell's files
    assert Path(model_zip).name.endswith("dataset-tinystories__seq_len-16-model.zip") and zipfile.is_zipfile(model_zip)
    assert json.loads(Path(results).read_text())["metrics"]["ppl_quant"] == pytest.approx(
        rows["dataset-tinystories__seq_len-16"]["ppl_quant"], abs=1e-4)
    message, *_ = client.predict("grid/dataset-short.txt__seq_len-64", api_name="/sweep_open")
    assert message.startswith("**Error:**") and "no run" in message


def test_cancel_mid_sweep_keeps_finished_cells(client, workspace):
    lengths = [16, 24, 32, 40, 48, 56, 64, 72]
    text = yaml.safe_dump({"name": "long", "base": {**TINY, "save_model": False, "with_kl": False},
                           "axes": {"eval.seq_len": lengths}})
    job = client.submit(text, 1, "ppl_quant", api_name="/sweep_start")
    deadline = time.time() + 120
    while not list((workspace / "long").glob("seq_len-*/results.json")) and time.time() < deadline:
        time.sleep(0.1)
    assert client.predict(api_name="/cancel").startswith("**Cancelling**")
    t0 = time.perf_counter()
    message, status, *_ = job.result(timeout=60)
    assert message.startswith("**Cancelled:** Sweep cancelled: finished cells are kept")
    assert time.perf_counter() - t0 < 10
    states = [r["status"] for r in _rows(status)]
    done = states.count("done")
    assert 1 <= done < len(lengths) and set(states) == {"done", "cancelled"}
    runs, _ = client.predict(api_name="/runs")
    assert sum(r["run"].startswith("long/") for r in _rows(runs)) == done
