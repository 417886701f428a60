"""The Scale lab through gradio_client, as a script would use it: load the embedded model, ask for one layer's
rule table (checked against an independent computation on that layer's weight), time a second pick, ask for
the model-wide summary, and send bad values that leave the app working."""
from __future__ import annotations

import time

import pytest
import torch

gradio_client = pytest.importorskip("gradio_client")

from mxlab.models import load_model  # noqa: E402

from app_server import running_app  # noqa: E402

pytestmark = pytest.mark.slow

LAYER = "model.layers.2.self_attn.q_proj"


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with running_app(tmp_path_factory.mktemp("ws")) as url:
        yield gradio_client.Client(url, verbose=False, download_files=str(tmp_path_factory.mktemp("dl")))


def _rows(table) -> dict[str, dict]:
    """A Dataframe output ({"headers", "data"}) keyed by its first column."""
    return {row[0]: dict(zip(table["headers"], row)) for row in table["data"]}


def test_layer_rule_table_matches_the_weight(client):
    client.predict("", "weights: mxfp4\n", api_name="/load_model")
    note, layer, table, plot = client.predict("mxfp4_e2m1", 32, "nearest", 256, LAYER, api_name="/scale_lab")
    assert layer == LAYER and note.startswith(f"**{LAYER}** in mxfp4_e2m1, block 32"), note
    rows = _rows(table)
    assert list(rows) == ["floor", "ceil", "even", "rceil", "mse"]
    # independently: OCP floor scale e = floor(log2 amax) - 2; a block clips when amax / 2^e > 6 (FP4's max)
    model, _ = load_model(None)
    w = dict(model.named_modules())[LAYER].weight.detach().float()        # (64, 64): 2 blocks per row
    amax = w.abs().reshape(64, 2, 32).amax(-1)
    clipped = (amax / 2.0 ** (torch.floor(torch.log2(amax)) - 2) > 6).float().mean().item()
    assert rows["floor"]["clipped blocks %"] == pytest.approx(100 * clipped, abs=0.01) and clipped > 0.1
    assert rows["rceil"]["clipped blocks %"] == 0 and rows["ceil"]["clipped blocks %"] == 0
    assert all(15 < r["weight SQNR dB"] < 25 and 10 < r["output SQNR dB"] < 30 for r in rows.values()), rows
    assert rows["mse"]["weight MSE"] <= min(r["weight MSE"] for r in rows.values())   # mse searches per block
    assert plot is not None


def test_a_second_pick_answers_within_two_seconds(client):
    client.predict("mxfp4_e2m1", 32, "nearest", 256, "model.layers.0.mlp.up_proj", api_name="/scale_lab")
    start = time.perf_counter()
    note, layer, table, _ = client.predict("mxint8", 32, "nearest", 256, "model.layers.4.mlp.down_proj",
                                           api_name="/scale_lab")
    seconds = time.perf_counter() - start
    assert layer == "model.layers.4.mlp.down_proj" and len(table["data"]) == 5 and seconds < 2.0, seconds
    assert all(r["weight SQNR dB"] > 35 for r in _rows(table).values())           # 8-bit elements


def test_model_wide_summary(client):
    note, table = client.predict("mxfp4_e2m1", 32, "nearest", 0, api_name="/scale_lab_summary")
    rows = _rows(table)
    assert "35 layers" in note and list(rows) == ["floor", "ceil", "even", "rceil", "mse"]
    assert all(r["layers"] == 35 for r in rows.values()) and rows["rceil"]["clipped blocks %"] == 0
    assert rows["floor"]["clipped blocks %"] > rows["even"]["clipped blocks %"] > 0
    assert "output SQNR dB" not in table["headers"]                              # 0 tokens: weights only


@pytest.mark.parametrize("args,words", [
    (("int8", 32, "nearest", 0, LAYER), "not in the list of choices"),           # the widget refuses it
    (("mxfp4_e2m1", 32, "nearest", 10**7, LAYER), "greater than maximum value 4096"),
    (("mxfp4_e2m1", 0, "nearest", 0, LAYER), "less than minimum value 1"),
    (("mxfp4_e2m1", 32, "nearest", 0, "lm_head"), "not a decoder Linear"),       # the handler refuses it
])
def test_bad_values_leave_the_app_working(client, args, words):
    try:
        note, _layer, table, plot = client.predict(*args, api_name="/scale_lab")
    except gradio_client.exceptions.AppError as err:
        assert words in str(err)
    else:
        assert note.startswith("**Error:**") and words in note and plot is None, note
    note, *_ = client.predict("mxfp4_e2m1", 32, "nearest", 0, LAYER, api_name="/scale_lab")
    assert note.startswith(f"**{LAYER}**")
