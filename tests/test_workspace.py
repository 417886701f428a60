"""mxlab/workspace.py: list, name, tag, delete runs; labels say what differs."""
from __future__ import annotations

import json

import pytest

from mxlab import workspace as ws
from mxlab.cli import main
from mxlab.errors import MxlabError

from test_lab_session import make_run


def test_list_rename_tag_delete(tmp_path):
    make_run(tmp_path, "a", name="first", ppl_fp=10.0, ppl_quant=11.0)
    make_run(tmp_path, "b", windows=None, ppl_fp=10.0, ppl_quant=10.5)
    (tmp_path / "not-a-run").mkdir()
    runs = ws.list_runs(tmp_path)
    assert [r.id for r in runs] == ["a", "b"]
    assert runs[0].label == "a · first · stories260K · W-mxint4 A-mxint8 b32 awq+gptq · eval tinystories x2"
    assert runs[1].eval_setting == "tinystories xall"
    assert ws.rename_run(tmp_path, "b", "  second   try ").name == "second try"
    assert ws.tag_run(tmp_path, "b", "w4, best").tags == ["w4", "best"]
    with pytest.raises(MxlabError, match="Tag"):
        ws.tag_run(tmp_path, "b", "no spaces allowed")
    with pytest.raises(MxlabError, match="at most 80"):
        ws.rename_run(tmp_path, "b", "x" * 81)
    with pytest.raises(MxlabError, match="no run"):
        ws.delete_run(tmp_path, "../etc")
    ws.delete_run(tmp_path, "a")
    assert [r.id for r in ws.list_runs(tmp_path)] == ["b"] and (tmp_path / "not-a-run").is_dir()


def test_new_run_dir_is_unique(tmp_path):
    first = ws.new_run_dir(tmp_path, "AWQ then GPTQ!")
    assert first.name.endswith("-awq-then-gptq")
    first.mkdir()
    assert ws.new_run_dir(tmp_path, "AWQ then GPTQ!").name == first.name + "-2"


def test_cli_runs_json(tmp_path, capsys):
    make_run(tmp_path, "a", name="first", ppl_fp=10.0, ppl_quant=11.0)
    assert main(["-q", "runs", "--workspace", str(tmp_path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["id"], r["name"], r["recipe"], r["ppl_quant"]) for r in rows] == [
        ("a", "first", "W-mxint4 A-mxint8 b32 awq+gptq", 11.0)]


def test_sweep_cells_are_runs_named_sweep_slash_cell(tmp_path):
    make_run(tmp_path, "plain", ppl_fp=10.0, ppl_quant=11.0)
    (tmp_path / "grid").mkdir()
    (tmp_path / "grid" / ws.SWEEP_FILE).write_text("{}")
    make_run(tmp_path / "grid", "steps-rtn", ppl_fp=10.0, ppl_quant=12.0)
    (tmp_path / "grid" / "_jobs").mkdir()                        # job records: not a run
    (tmp_path / "other").mkdir()                                 # not a sweep: its subfolders are not runs
    make_run(tmp_path / "other", "hidden", ppl_fp=10.0, ppl_quant=13.0)
    assert sorted(r.id for r in ws.list_runs(tmp_path)) == ["grid/steps-rtn", "plain"]
    info = ws.get_run(tmp_path, "grid/steps-rtn · anything after the id")
    assert info.path == tmp_path / "grid" / "steps-rtn" and info.metrics["ppl_quant"] == 12.0
    assert ws.tag_run(tmp_path, "grid/steps-rtn", "sweep").tags == ["sweep"]
    for bad in ("other/hidden", "grid/../plain", "grid/_jobs", "grid/steps-rtn/x", "/grid/steps-rtn", "grid/"):
        with pytest.raises(MxlabError, match="no run"):
            ws.get_run(tmp_path, bad)
    ws.delete_run(tmp_path, "grid/steps-rtn")
    assert [r.id for r in ws.list_runs(tmp_path)] == ["plain"] and (tmp_path / "grid" / ws.SWEEP_FILE).is_file()


def test_run_info_is_parsed_once_and_re_read_when_the_run_changes(tmp_path, monkeypatch):
    make_run(tmp_path, "a", name="first", ppl_fp=10.0, ppl_quant=11.0)
    parsed = []
    real_loads = ws.json.loads
    monkeypatch.setattr(ws.json, "loads", lambda text: parsed.append(len(text)) or real_loads(text))
    first = ws.get_run(tmp_path, "a")
    assert len(parsed) == 2                                  # results.json and run.json
    again = ws.get_run(tmp_path, "a")
    assert len(parsed) == 2 and again.label == first.label   # the listing fields come from the cache
    again.metrics["ppl_quant"] = -1.0                         # a caller's edit does not reach the cache
    assert ws.get_run(tmp_path, "a").metrics["ppl_quant"] == 11.0
    ws.rename_run(tmp_path, "a", "renamed")                  # run.json changes: read again
    assert ws.get_run(tmp_path, "a").name == "renamed" and len(parsed) > 2
    results = tmp_path / "a" / ws.RESULTS_FILE
    data = real_loads(results.read_text())
    data["metrics"]["ppl_quant"] = 12.25
    results.write_text(json.dumps(data))                     # edited in place (longer): read again
    assert ws.get_run(tmp_path, "a").metrics["ppl_quant"] == 12.25
