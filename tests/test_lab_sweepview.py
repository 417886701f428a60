"""The Sweep tab's logic without Gradio: checking a sweep file (cells, cost, bounds), a real 2 x 2 sweep on the
embedded model with one failing cell, Cancel mid-sweep, and the cells opened as workspace runs."""
from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import yaml

from mxlab import workspace as ws
from mxlab.errors import Cancelled, MxlabError
from mxlab.guard import AllowedRoots
from mxlab.lab import sweepview as sv
from mxlab.lab.server import POLICY
from mxlab.lab.session import SessionState
from mxlab.recipe import Recipe
from mxlab.runner import run_experiment

# 45 tokens: one evaluation window of 16 tokens fits, one of 64 does not (that cell fails)
SHORT_TEXT = ("Once upon a time there was a little cat named Tom. Tom liked to play in the sun "
              "with his red ball. One day the ball rolled away.")
TINY = {"save_model": False, "with_kl": False, "eval": {"dataset": "tinystories", "max_windows": 1},
        "recipe": {"weights": "mxint4", "acts": "mxint8", "block_size": 32, "steps": ["rtn"],
                   "calib": {"dataset": "tinystories", "n_samples": 2, "seq_len": 32}}}


@pytest.fixture
def roots(tmp_path, monkeypatch):
    """The server may read tmp_path (where the short text lives) and the workspace."""
    monkeypatch.setattr(POLICY, "roots", AllowedRoots([tmp_path]))
    return tmp_path


def _grid_text(tmp_path: Path, axes: dict) -> str:
    return yaml.safe_dump({"name": "grid", "base": TINY, "axes": axes})


def test_check_shows_cells_and_cost_of_the_example(tmp_path):
    summary, rows = sv.check_sweep(sv.EXAMPLE, tmp_path / "ws", workers=1)
    assert summary.startswith("sweep example-w4: 4 job(s) (0 excluded)") and "0 already finished, 4 to run" in summary
    assert [r[0] for r in rows] == ["weights-mxint4__steps-rtn", "weights-mxint4__steps-gptq",
                                    "weights-mxfp4_e2m1__steps-rtn", "weights-mxfp4_e2m1__steps-gptq"]
    assert rows[1][1] == "recipe.weights=mxint4, recipe.steps=gptq" and {r[2] for r in rows} == {"to run"}
    # 2 x params x tokens: 260032 parameters; calibration 4 x 64 tokens x (1 step + 1), eval 2 x 512 tokens x 3
    flops = 2 * 260032 * (4 * 64 * 2 + 2 * 512 * 3)
    assert rows[0][3] == pytest.approx(flops / 1e12, rel=1e-3)


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ("base: {model: null}\naxes: {recipe.seed: [" + ", ".join(map(str, range(65))) + "]}\n",
     "65 cells; the app runs at most 64"),
    ("# pad\n" * 12000, "exceeds the limit 65536"),
    ("base: &b {model: null}\naxes: {recipe.seed: [1]}\n", "anchors/aliases"),
    ("base: {allow_pickle: true}\naxes: {recipe.seed: [1]}\n", "neither pickles nor remote code"),
    ("base: {model: /etc}\naxes: {recipe.seed: [1]}\n", "/etc"),
    ("base: {eval: {dataset: /etc/passwd}}\naxes: {recipe.seed: [1]}\n", "/etc/passwd"),
    ("name: mxlab-session-x\naxes: {recipe.seed: [1]}\n", "reserved"),
    ("axes: {recipe.weights: [mxint4, mxint9]}\n", "cell weights-mxint9"),
])
def test_bad_sweep_files_are_refused_with_one_line(text, message):
    with pytest.raises(MxlabError, match=message) as err:
        sv.parse_sweep(text)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("workers, ok", [(1, 1), (1.0, 1), ("1", 1), (0, None), (1.5, None), (10**6, None),
                                         (True, None), ("two", None)])
def test_workers_are_bounded_by_the_cpu_count(workers, ok):
    if ok is None:
        with pytest.raises(MxlabError, match="Workers must be a whole number from 1 to"):
            sv.check_workers(workers)
    else:
        assert sv.check_workers(workers) == ok


@pytest.mark.slow
def test_sweep_with_a_failing_cell_shows_3_done_1_failed_and_opens_cells_as_runs(tmp_path, roots):
    short = tmp_path / "short.txt"
    short.write_text(SHORT_TEXT)
    text = _grid_text(tmp_path, {"eval.dataset": ["tinystories", str(short)], "eval.seq_len": [16, 64]})
    state = SessionState(tmp_path / "ws")
    job = sv.start_sweep(state, text, workers=1)
    assert state.busy and job.wait(120) and job.error is None, job.error
    assert not state.busy and sv.list_sweeps(state.workspace) == ["grid"]

    status = sv.status_rows(state.workspace, "grid")
    rows = {r[0]: dict(zip(sv.STATUS_COLUMNS, r)) for r in status}
    bad = "dataset-short.txt__seq_len-64"
    assert sv.status_counts(status) == "3 done, 1 failed of 4"
    assert rows[bad]["status"] == "failed" and "fewer than one window of 64" in rows[bad]["error"]
    assert all(r["attempts"] == 1 for r in rows.values())
    assert all(r["progress"] == "100%" and r["error"] is None for c, r in rows.items() if c != bad)
    assert job.message().startswith("**Done:** sweep grid: 3 cell(s) run, 0 kept from before, **1 failed**")

    # the cell's ppl is what the same experiment gives outside the sweep
    cell = "dataset-tinystories__seq_len-16"
    ref = run_experiment(None, Recipe.from_dict(TINY["recipe"]), eval_dataset="tinystories", max_eval_windows=1,
                         eval_seq_len=16, with_kl=False)
    assert rows[cell]["ppl_quant"] == pytest.approx(ref.metrics["ppl_quant"], abs=1e-4)

    table, fig = sv.result_view(state.workspace, "grid")
    assert list(table.columns) == ["eval.dataset", "16", "64"] and list(table["eval.dataset"]) == ["tinystories",
                                                                                                   "short.txt"]
    assert table.loc[1, "64"] != table.loc[1, "64"]                                    # NaN: the failed cell
    assert table.loc[0, "16"] == pytest.approx(rows[cell]["ppl_quant"], abs=1e-4)
    assert fig.data[0].z.shape == (2, 2) and math.isnan(fig.data[0].z[1][1])
    kl, _ = sv.result_view(state.workspace, "grid", "kl")                             # with_kl false: no KL
    assert kl[["16", "64"]].isna().all().all()

    ids = sv.cell_runs(state.workspace, "grid")
    assert ids == ["grid/dataset-tinystories__seq_len-16", "grid/dataset-tinystories__seq_len-64",
                   "grid/dataset-short.txt__seq_len-16"]
    assert set(ids) <= {r.id for r in ws.list_runs(state.workspace)}                  # Inspect/Compare/Export list them
    label = sv.cell_label(state.workspace, ids[0])
    assert label.startswith("grid/dataset-tinystories__seq_len-16 · stories260K · W-mxint4 A-mxint8 b32 rtn")
    entry = state.get(label)                                                          # what Inspect reads
    assert entry.metrics["ppl_quant"] == pytest.approx(rows[cell]["ppl_quant"], abs=1e-4) and entry.records
    with pytest.raises(MxlabError, match="no run"):
        sv.cell_label(state.workspace, f"grid/{bad}")
    with pytest.raises(MxlabError, match="no run"):
        ws.get_run(state.workspace, "grid/../grid/" + cell)

    _, check_rows = sv.check_sweep(text, state.workspace)                              # Check again: 3 are kept
    assert [r[2] for r in check_rows].count("finished (kept)") == 3


@pytest.mark.slow
def test_cancel_while_the_sweep_waits_in_the_queue_starts_nothing_and_the_next_start_runs(tmp_path, roots):
    state = SessionState(tmp_path / "ws")
    text = _grid_text(tmp_path, {"eval.seq_len": [16]})
    state.enqueue()                                     # 'Start sweep' entered Gradio's queue
    assert state.request_cancel() == "waiting"
    with pytest.raises(Cancelled, match="waiting in the queue; nothing was started"), state.dequeued():
        sv.start_sweep(state, text, workers=1)
    assert not (state.workspace / "grid").exists() and sv.list_sweeps(state.workspace) == []
    assert (state.busy, state.pending, state.cancel.is_set()) == (False, 0, False) and not sv._ACTIVE
    state.enqueue()                                     # Start again: the one cell runs
    with state.dequeued():
        job = sv.start_sweep(state, text, workers=1)
    assert job.wait(120) and job.error is None, job.error
    assert sv.status_counts(sv.status_rows(state.workspace, "grid")) == "1 done of 1"


def test_cancel_mid_sweep_keeps_the_finished_runs_loadable(tmp_path, roots):
    lengths = [16, 24, 32, 40, 48, 56, 64, 72]
    state = SessionState(tmp_path / "ws")
    job = sv.start_sweep(state, _grid_text(tmp_path, {"eval.seq_len": lengths}), workers=1)
    with pytest.raises(MxlabError, match="still going"):                              # one heavy job per session
        sv.start_sweep(state, sv.EXAMPLE, workers=1)
    with pytest.raises(MxlabError, match="running in another session"):               # one driver per sweep
        sv.start_sweep(SessionState(tmp_path / "ws"), _grid_text(tmp_path, {"eval.seq_len": lengths}), workers=1)
    sweep_dir = state.workspace / "grid"
    deadline = time.time() + 120
    while not list(sweep_dir.glob("seq_len-*/results.json")) and time.time() < deadline:
        time.sleep(0.1)
    t0 = time.perf_counter()
    assert state.request_cancel()
    assert job.wait(30)
    took = time.perf_counter() - t0
    assert isinstance(job.error, Cancelled) and job.message().startswith("**Cancelled:**")
    assert took < 8, took
    assert not state.busy and not state.cancel.is_set()

    rows = {r[0]: r[1] for r in sv.status_rows(state.workspace, "grid")}
    finished = sv.cell_runs(state.workspace, "grid")
    assert 1 <= len(finished) < len(lengths)
    assert {rows[i.split("/")[1]] for i in finished} == {"done"}
    assert {s for c, s in rows.items() if f"grid/{c}" not in finished} == {"cancelled"}
    for run_id in finished:                                                            # intact and loadable
        entry = state.get(run_id)
        assert entry.metrics["ppl_quant"] > 1 and entry.info.run["eval_seq_len"] in lengths
    assert not list(sweep_dir.glob(".*.tmp-*"))
    table = sv.result_view(state.workspace, "grid")[0]          # one row (ppl_quant), a column per length
    assert table.shape == (1, 1 + len(lengths)) and int(table[[str(n) for n in lengths]].notna().sum(axis=1)[0]) \
        == len(finished)


def test_upload_is_size_capped_utf8(tmp_path):
    ok = tmp_path / "s.yaml"
    ok.write_text(sv.EXAMPLE)
    assert sv.read_upload(str(ok)) == sv.EXAMPLE
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (64 * 1024 + 1))
    with pytest.raises(MxlabError, match="The uploaded sweep file"):
        sv.read_upload(str(big))
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(MxlabError, match="not UTF-8"):
        sv.read_upload(str(bad))
    with pytest.raises(MxlabError, match="did not arrive"):
        sv.read_upload(None)
