"""mxlab/lab/session.py: per-session state, run ids and labels, cancelling, the files of a run."""
from __future__ import annotations

import copy

import pytest

from mxlab.errors import Cancelled, MxlabError
from mxlab.lab import session
from mxlab.rundir import MODEL_DIR, RECIPE_FILE, RESULTS_FILE


def _entry(run_id: int, **metrics) -> session.RunEntry:
    return session.RunEntry(id=run_id, model="default", recipe_yaml="", weights="mxint4", acts="mxint8",
                            block_size=32, steps=["awq", "gptq"], bits=4.25, metrics=metrics, seconds=1.234)


def test_session_state_runs_and_isolation(tmp_path):
    a = session.SessionState(root=tmp_path)
    b = copy.deepcopy(a)                                  # what gradio does per session
    assert b is not a and b.cancel is not a.cancel
    assert a.next_run_dir()[0] == 1
    a.add(_entry(1, ppl_fp=10.0, ppl_quant=11.5))
    assert b.runs == [] and a.next_run_dir()[0] == 2
    assert a.get("#1 W-mxint4 A-mxint8 awq+gptq") is a.runs[0] and a.get(1) is a.runs[0]
    with pytest.raises(MxlabError, match="no run"):
        a.get("#7")
    workdir = a.workdir
    assert workdir.is_dir() and workdir.parent == tmp_path
    a.close()
    assert not workdir.exists()


def test_progress_adapter_cancels():
    seen = []
    state = session.SessionState()
    callback = session.progress_adapter(lambda f, m: seen.append((f, m)), state.cancel)
    callback(0.5, "block 1")
    state.cancel.set()
    with pytest.raises(Cancelled):
        callback(0.6, "block 2")
    assert seen == [(0.5, "block 1")]


def test_run_id_of():
    assert session.run_id_of("#12 W-x") == 12 and session.run_id_of("3") == 3 and session.run_id_of(4) == 4
    with pytest.raises(MxlabError, match="does not name a run"):
        session.run_id_of("latest")


def test_export_files_names_the_run_directory(tmp_path):
    out = tmp_path / "run1"
    (out / MODEL_DIR).mkdir(parents=True)
    (out / MODEL_DIR / "config.json").write_text("{}")
    (out / RESULTS_FILE).write_text("{}")
    entry = _entry(1)
    entry.out_dir, entry.recipe_yaml = out, "weights: mxint4\n"
    files = session.export_files(entry)
    assert set(files) == {"model", "results", "recipe"}                 # no records.csv or report.html here
    assert files["results"] == out / RESULTS_FILE and files["model"] == tmp_path / "run1-model.zip"
    assert files["recipe"] == out / RECIPE_FILE and files["recipe"].read_text() == "weights: mxint4\n"
    entry.out_dir = tmp_path / "gone"
    with pytest.raises(MxlabError, match="no exported files"):
        session.export_files(entry)
