"""The Mix tab through gradio_client, as a script would use it: compute the frontier of the embedded model over
{mxint4, mxint8}, pick a budget, run the point into the workspace, download its recipe; a second press while a
frontier is computing is refused, and Cancel stops it without losing the frontier already there."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

gradio_client = pytest.importorskip("gradio_client")

from mxlab.recipe import Recipe  # noqa: E402

from app_server import running_app  # noqa: E402

pytestmark = pytest.mark.slow

RTN = Recipe(weights="mxint4", acts="mxint8", steps=["rtn"], calib=dict(n_samples=4, seq_len=64))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ws")


@pytest.fixture(scope="module")
def client(workspace, tmp_path_factory):
    with running_app(workspace) as url:
        yield gradio_client.Client(url, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))


@pytest.fixture(scope="module")
def frontier(client):
    """/mix_frontier: (status, budget, summary, chart, grid, point, export note)."""
    return client.predict(RTN.to_yaml(), ["mxint4", "mxint8"], "rtn", 4, 64, api_name="/mix_frontier")


def _rows(table) -> list[dict]:
    return [dict(zip(table["headers"], row)) for row in table["data"] if any(v not in (None, "") for v in row)]


def test_frontier_spans_uniform_mxint4_to_mxint8(frontier):
    status, budget, summary, _chart, _grid, point, note = frontier
    assert status.startswith("**Frontier ready:**") and "over 35 modules" in status, status
    assert "from 4.258 to 8.258 bits/weight" in status       # uniform mxint4 / mxint8, scales included
    assert budget == 6.258 and point["budget"] == 6.258 and point["bits_per_weight"] <= 6.258
    assert sum(point["counts"].values()) == 35 and set(point["counts"]) == {"mxint4", "mxint8"}
    assert f"{point['bits_per_weight']:.4f} bits/weight" in summary
    assert "not for this point" in note                       # MXINT has no compressed-tensors layout


def test_run_a_point_its_bits_are_the_points(client, frontier, workspace):
    summary, _chart, _grid, point, _note = client.predict(6.0, api_name="/mix_point")
    assert 5.9 < point["bits_per_weight"] <= 6.0 and point["measured"] == []
    assert f"**{point['bits_per_weight']:.4f} bits/weight**" in summary
    message, _chart, summary, after, runs = client.predict(6.0, "tinystories", 2, "mixpoint", api_name="/mix_run")
    assert message.startswith("**Done"), message
    row = _rows(runs)[-1]
    assert row["name"] == "mixpoint"
    results = json.loads((workspace / row["run"] / "results.json").read_text())
    # exact: the packed checkpoint holds what the solver added up
    assert results["metrics"]["bits_per_weight"] == point["bits_per_weight"] == after["bits_per_weight"]
    measured = after["measured"][0]
    assert measured["label"] == row["run"] and measured["kl"] == results["metrics"]["kl"] > 0
    assert measured["ppl"] == results["metrics"]["ppl_quant"]
    assert f"measured by run {row['run']}" in summary
    assert {o["weights"] for o in results["recipe"]["overrides"]} | {results["recipe"]["weights"]} == \
        {"mxint4", "mxint8"}
    note, path = client.predict(6.0, api_name="/mix_recipe")
    assert Recipe.load(path).to_dict() == results["recipe"]
    assert row["run"] in [r["run"] for r in _rows(client.predict(api_name="/runs")[0])]


def test_bad_settings_are_refused_with_a_message(client, frontier):
    status = client.predict(RTN.to_yaml(), ["mxint4", "mxint8"], "rtn", 64, 129, api_name="/mix_frontier")[0]
    assert status.startswith("**Error:**") and "exceeds the limit 8192" in status
    fresh = gradio_client.Client(client.src, verbose=False)
    assert "No frontier yet" in fresh.predict(6.0, api_name="/mix_point")[0]


def test_second_press_is_refused_and_cancel_keeps_the_frontier(client, frontier):
    args = (RTN.to_yaml(), ["mxint4", "mxint3", "mxint8"], "rtn", 32, 256)
    jobs = [client.submit(*args, api_name="/mix_frontier") for _ in range(2)]
    end = time.monotonic() + 120
    while not any(j.done() for j in jobs) and time.monotonic() < end:
        time.sleep(0.1)
    refused = next(j for j in jobs if j.done())
    assert "still going" in refused.result()[0], refused.result()[0]
    running = next(j for j in jobs if j is not refused)
    assert not running.done()
    assert "Cancelling" in client.predict(api_name="/cancel")
    start = time.monotonic()
    status = running.result(timeout=60)[0]
    assert status.startswith("**Cancelled:**") and time.monotonic() - start < 5
    _summary, _chart, _grid, point, _note = client.predict(6.258, api_name="/mix_point")
    assert point == {**frontier[5], "measured": point["measured"]}      # the first frontier is still there
