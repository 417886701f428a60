"""mxlab/lab/session.py: per-session state over a shared workspace, cancelling, the files of a run."""
from __future__ import annotations

import copy
import json
import threading
import time

import pytest

from mxlab import workspace as ws
from mxlab.errors import Cancelled, MxlabError
from mxlab.lab import session
from mxlab.lab.server import POLICY, FairGate
from mxlab.recipe import Recipe
from mxlab.rundir import MODEL_DIR, RECIPE_FILE, RESULTS_FILE

TINY = Recipe(weights="mxint4", acts="mxint8", steps=["rtn"], calib={"dataset": "tinystories", "n_samples": 2,
                                                                     "seq_len": 32})


def make_run(root, run_id: str, name: str = "", windows: int = 2, **metrics) -> str:
    """A finished run directory as rundir.export_run writes it (results.json only, plus run.json)."""
    out = root / run_id
    out.mkdir(parents=True)
    results = {"model": "embedded:stories260K", "metrics": metrics, "run": {"eval_dataset": "tinystories",
               "max_eval_windows": windows}, "recipe": {"weights": "mxint4", "acts": "mxint8", "block_size": 32,
               "steps": [{"name": "awq"}, {"name": "gptq"}]}, "records": [], "stats": {}, "seconds": 1.5}
    (out / RESULTS_FILE).write_text(json.dumps(results))
    ws.write_meta(out, name=name, origin="cli", created=f"2025-01-01T00:00:{len(list(root.iterdir())):02d}")
    return run_id


def test_sessions_share_the_workspace_but_not_their_flags(tmp_path):
    a = session.SessionState(tmp_path)
    b = copy.deepcopy(a)                                  # what gradio does per session
    assert b is not a and b.cancel is not a.cancel and b.workspace == a.workspace
    make_run(tmp_path, "r1", name="first", ppl_fp=10.0, ppl_quant=11.5)
    assert [r.name for r in b.runs()] == ["first"]        # a run of the workspace: every session sees it
    entry = a.get(b.labels()[0])
    assert entry.id == "r1" and entry.metrics["ppl_quant"] == 11.5 and "awq+gptq" in entry.label
    assert not b.request_cancel()                         # nothing of b's is running
    a.busy = True
    assert a.request_cancel() and a.cancel.is_set() and not b.cancel.is_set()
    with pytest.raises(MxlabError, match="no run"):
        a.get("r7")


def test_a_pick_reported_twice_draws_once_and_the_repeat_waits_for_it():
    state = session.SessionState()
    drawn, started = [], threading.Event()

    def draw(key):
        def run():
            started.set()
            time.sleep(0.2)                               # the first draw is still running when the repeat comes
            drawn.append(key)
            return (key,)
        return run

    key = ("run-a", "layer 29", "SQNR", False)
    first = threading.Thread(target=lambda: state.draw_if_new("inspect", key, draw(key)))
    first.start()
    started.wait()
    t0 = time.perf_counter()
    assert state.draw_if_new("inspect", key, draw(key)) is None      # Gradio's second report of the same pick
    assert time.perf_counter() - t0 > 0.1 and drawn == [key]         # it waited for the first, drew nothing
    first.join()
    other = ("run-a", "layer 28", "SQNR", False)
    assert state.draw_if_new("inspect", other, draw(other)) == (other,)
    assert state.draw_if_new("inspect", key, draw(key)) == (key,)    # back to layer 29: drawn again
    assert state.draw_if_new("compare", key, draw(key)) == (key,)    # each tab keeps its own
    state.forget_shown("inspect")                                    # another handler drew the tab
    assert state.draw_if_new("inspect", key, draw(key)) == (key,)
    with pytest.raises(RuntimeError):
        state.draw_if_new("inspect", other, lambda: (_ for _ in ()).throw(RuntimeError("boom")))
    assert state.draw_if_new("inspect", key, draw(key)) is None      # a failed draw leaves what is shown
    assert drawn == [key, other, key, key, key]


def test_progress_adapter_cancels():
    seen = []
    state = session.SessionState()
    callback = session.progress_adapter(lambda f, m: seen.append((f, m)), state.cancel)
    callback(0.5, "block 1")
    state.cancel.set()
    with pytest.raises(Cancelled):
        callback(0.6, "block 2")
    assert seen == [(0.5, "block 1")]


def test_run_key():
    assert session.run_key("20250101-x · name · W-mxint4") == "20250101-x"
    with pytest.raises(MxlabError, match="No run is selected"):
        session.run_key(None)


def test_export_files_are_named_after_the_run(tmp_path):
    state = session.SessionState(tmp_path / "ws")
    make_run(state.workspace, "r1")
    (state.workspace / "r1" / MODEL_DIR).mkdir()
    (state.workspace / "r1" / MODEL_DIR / "config.json").write_text("{}")
    files = session.export_files(state, state.get("r1"))
    assert set(files) == {"model", "results", "recipe"}                 # no records.csv or report.html here
    assert files["results"].name == "r1-results.json" and files["model"].name == "r1-model.zip"
    assert files["recipe"].name == f"r1-{RECIPE_FILE}" and "awq" in files["recipe"].read_text()
    state.close()


def test_compressed_tensors_download_of_an_mxfp4_run(tmp_path):
    """The Export tab's compressed-tensors zip: an MXFP4 run's model in the layout transformers loads."""
    import json
    import zipfile

    from mxlab.errors import MxlabError
    from mxlab.lab import session
    from mxlab.recipe import Recipe
    from mxlab.runner import run_experiment

    state = session.SessionState(tmp_path / "ws")
    recipe = Recipe(weights="mxfp4", acts="none", block_size=32, steps=["rtn"],
                    overrides=[{"pattern": "*.down_proj", "skip": True}],   # 172 inputs: not whole blocks of 32
                    calib={"dataset": "tinystories", "n_samples": 2, "seq_len": 64})
    out = run_experiment(None, recipe, max_eval_windows=1, eval_seq_len=64, workspace=state.workspace, name="fp4")
    entry = state.get(out.out_dir.name)
    path = session.compressed_tensors_zip(state, entry)
    with zipfile.ZipFile(path) as z:
        cfg = json.loads(z.read("config.json"))
        assert "model.safetensors" in z.namelist()
    qc = cfg["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == "mxfp4-pack-quantized"
    mxint = run_experiment(None, Recipe(weights="mxint4", acts="none", steps=["rtn"],
                                        calib={"dataset": "tinystories", "n_samples": 2, "seq_len": 64}),
                           max_eval_windows=1, eval_seq_len=64, workspace=state.workspace, name="int4")
    with pytest.raises(MxlabError, match="mxint4"):
        session.compressed_tensors_zip(state, state.get(mxint.out_dir.name))


def test_zip_dir_round_trips_every_file_and_leaves_no_partial(tmp_path):
    import zipfile

    src = tmp_path / "model"
    (src / "sub").mkdir(parents=True)
    blobs = {"model.safetensors": bytes(range(256)) * 1000, "config.json": b'{"a": 1}', "sub/tok.json": b"x" * 5000}
    for name, data in blobs.items():
        (src / name).write_bytes(data)
    (tmp_path / "out").mkdir()
    dest = session.zip_dir(src, tmp_path / "out" / "r1-model.zip")
    with zipfile.ZipFile(dest) as z:
        assert sorted(z.namelist()) == sorted(blobs) and all(z.read(n) == d for n, d in blobs.items())
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_DEFLATED}
    assert dest.stat().st_size < 50_000 and [p.name for p in dest.parent.iterdir()] == ["r1-model.zip"]


# ---------------------------------------------------------------------------- Cancel before the job starts
@pytest.fixture
def gate(monkeypatch):
    """The server's gate, one slot, fresh for the test."""
    fresh = FairGate(1)
    monkeypatch.setattr(POLICY, "gate", fresh)
    return fresh


def _wait(cond, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def _noop(fraction, message):
    pass


def test_cancel_while_queued_stops_the_job_before_it_starts_and_the_next_run_goes_in_full(tmp_path, gate):
    """Session B's Run waits in Gradio's queue (enqueued, handler not called) while A holds the gate's slot;
    B's Cancel stops it the moment its handler runs; B's next Run queues at the gate and finishes."""
    root = tmp_path / "ws"
    root.mkdir()
    a, b = session.SessionState(root), session.SessionState(root)
    holding, release = threading.Event(), threading.Event()

    def job_a():
        with session.exclusive(a, _noop, "busy"):
            holding.set()
            release.wait(60)

    thread_a = threading.Thread(target=job_a)
    thread_a.start()
    result: dict = {}
    try:
        assert holding.wait(10) and gate.running == 1
        b.enqueue()                                            # the validator, as B's Run enters the queue
        assert not b.busy and b.request_cancel() == "waiting" and b.cancel.is_set()
        reports = []
        start = time.perf_counter()
        with pytest.raises(Cancelled, match="waiting in the queue; nothing was started"), b.dequeued():
            session.execute_run(b, None, TINY, eval_dataset="tinystories", max_eval_windows=1,
                                report=lambda f, m: reports.append(m))
        assert time.perf_counter() - start < 1.0               # at once, though A still holds the slot
        assert reports == [] and gate.waiting == 0 and list(root.iterdir()) == []   # nothing ran or was written
        assert (b.busy, b.pending, b.cancel.is_set()) == (False, 0, False)        # and no flag is left

        b.enqueue()                                            # Run again: waits at the gate behind A

        def job_b():
            with b.dequeued():
                result["entry"] = session.execute_run(b, None, TINY, eval_dataset="tinystories",
                                                      max_eval_windows=1, report=_noop)

        thread_b = threading.Thread(target=job_b)
        thread_b.start()
        _wait(lambda: gate.waiting == 1)
        assert b.busy and not b.cancel.is_set() and ws.list_runs(root) == []
    finally:
        release.set()
        thread_a.join(10)
    thread_b.join(300)
    entry = result["entry"]
    assert [r.id for r in ws.list_runs(root)] == [entry.id]
    assert entry.metrics["ppl_quant"] > entry.metrics["ppl_fp"] > 1.0
    assert (b.busy, b.pending, b.cancel.is_set()) == (False, 0, False)


def test_a_cancel_for_a_queued_job_that_was_refused_does_not_stop_the_next(tmp_path, gate):
    state = session.SessionState(tmp_path)
    assert state.request_cancel() is None                      # nothing queued or running: nothing to cancel
    state.enqueue()
    assert state.request_cancel() == "waiting"
    with pytest.raises(MxlabError, match="--allow-path"), state.dequeued():   # refused before it took the session
        session.execute_run(state, "/etc", TINY, eval_dataset="tinystories", max_eval_windows=1, report=_noop)
    assert (state.pending, state.cancel.is_set()) == (0, False)
    ran = []
    state.enqueue()
    with state.dequeued(), session.exclusive(state, _noop, "busy"):
        ran.append(gate.running)
    assert ran == [1] and not state.busy


def test_a_second_run_refused_while_one_runs_keeps_the_cancel_for_the_running_one(tmp_path, gate):
    state = session.SessionState(tmp_path)
    with session.exclusive(state, _noop, "busy"):             # a job runs
        state.enqueue()                                        # Run pressed again
        assert state.request_cancel() == "running"
        with pytest.raises(MxlabError, match="still going"), state.dequeued():
            session.execute_run(state, None, TINY, eval_dataset="tinystories", max_eval_windows=1, report=_noop)
        with pytest.raises(Cancelled):                         # the running job still stops at its next report
            session.progress_adapter(_noop, state.cancel)(0.5, "block 1")
    assert (state.busy, state.pending, state.cancel.is_set()) == (False, 0, False)
