"""Sweeps: expansion and validation of sweep files, then real 2 x 2 grids on the embedded model with
the local executor and with Ray (local mode, 2 CPUs): a failing cell, a killed worker, a re-run."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from mxlab.errors import MxlabError
from mxlab.models import load_model
from mxlab.sweep import expand, load_sweep, plan, run_sweep, sweep_status, sweep_table
from mxlab.sweep.cost import model_shape

# a text of 45 tokens: one evaluation window of 16 tokens fits, one of 64 does not
SHORT_TEXT = ("Once upon a time there was a little cat named Tom. Tom liked to play in the sun "
              "with his red ball. One day the ball rolled away.")
FAST = {"save_model": False, "with_kl": False,
        "recipe": {"weights": "mxint4", "acts": "mxint8", "block_size": 32, "steps": ["rtn"],
                   "calib": {"dataset": "tinystories", "n_samples": 2, "seq_len": 32}}}


def test_issue_example_expands_to_the_cross_product(tmp_path):
    other = tmp_path / "other-model"
    text = f"""
base:
  model: null
  eval: {{dataset: tinystories, max_windows: 2}}
  recipe: {{weights: mxint4, acts: mxint8, block_size: 32, steps: [rtn],
           calib: {{dataset: tinystories, n_samples: 8, seq_len: 128}}}}
axes:
  model: [null, {other}]
  recipe.steps: [[rtn], [gptq]]
"""
    (tmp_path / "grid.yaml").write_text(text)
    sweep = load_sweep(tmp_path / "grid.yaml")
    assert sweep.name == "grid"
    assert [c.name for c in sweep.cells] == ["model-default__steps-rtn", "model-default__steps-gptq",
                                             "model-other-model__steps-rtn", "model-other-model__steps-gptq"]
    last = sweep.cells[3].config
    assert last["model"] == str(other) and last["eval"] == {"dataset": "tinystories", "max_windows": 2, "seq_len": None}
    assert [s["name"] for s in last["recipe"]["steps"]] == ["gptq"]
    assert last["recipe"]["calib"] == {"dataset": "tinystories", "n_samples": 8, "seq_len": 128}
    assert sweep.table == {"rows": ["model"], "columns": "recipe.steps", "value": "ppl_quant"}
    assert len({c.key for c in sweep.cells}) == 4


def test_grouped_axes_exclude_and_presets():
    sweep = expand({
        "base": {"preset": "paper-rtn-w4a8", "recipe": {"calib": {"n_samples": 4}}},
        "axes": {"recipe.block_size": [128, 32],
                 "method": [{"label": "GPTQ", "set": {"recipe.steps": ["gptq"]}},
                            {"label": "GPTQ+SQ", "set": {"recipe.steps": ["gptq", "smoothquant"],
                                                         "recipe.allow_requantize": True}}]},
        "exclude": [{"recipe.block_size": 32, "method": "GPTQ+SQ"}]}, name="g")
    assert [c.name for c in sweep.cells] == ["block_size-128__method-GPTQ", "block_size-128__method-GPTQ+SQ",
                                             "block_size-32__method-GPTQ"]
    assert sweep.excluded == 1
    rev = sweep.cells[1].config["recipe"]
    assert rev["allow_requantize"] is True and rev["weights"] == "mxint4" and rev["block_size"] == 128
    assert rev["calib"] == {"dataset": "tinystories", "n_samples": 4, "seq_len": 512}   # preset + override


@pytest.mark.parametrize("data, message", [
    ({"base": {"modle": None}}, "unknown key"),
    ({"axes": {"recipe.weights": ["mxint4", "mxint9"]}}, "cell weights-mxint9"),
    ({"axes": {"recipe.steps": [["gptq", "awq"]]}}, "add an `exclude` rule"),
    ({"axes": {"colour": [1, 2]}}, "does not start with"),
    ({"axes": {"recipe.block_size": [32]}, "exclude": [{"recipe.block_size": 32}]}, "every cell is excluded"),
    ({"axes": {"recipe.block_size": list(range(1, 200)), "recipe.seed": list(range(100))}}, "at most 10000"),
    ({"base": {"eval": {"max_windows": -1}}}, "eval.max_windows"),
    ({"axes": {"recipe.block_size": [32]}, "table": {"value": "speed"}}, "table value"),
])
def test_bad_sweeps_are_refused_before_anything_runs(data, message):
    with pytest.raises(MxlabError, match=message):
        expand(data)


def _grid(tmp_path: Path) -> dict:
    short = tmp_path / "short.txt"
    short.write_text(SHORT_TEXT)
    return {"name": "grid", "base": {**FAST, "eval": {"dataset": "tinystories", "max_windows": 2}},
            "axes": {"eval.dataset": ["tinystories", str(short)], "eval.seq_len": [16, 64]}}


def _reference_ppl(config: dict) -> float:
    """The same experiment without the sweep: what every finished cell must report."""
    from mxlab.recipe import Recipe
    from mxlab.runner import run_experiment

    ev = config["eval"]
    out = run_experiment(None, Recipe.from_dict(config["recipe"]), eval_dataset=ev["dataset"],
                         max_eval_windows=ev["max_windows"], eval_seq_len=ev["seq_len"], with_kl=False)
    return out.metrics["ppl_quant"]


def _check_faults(tmp_path: Path, **executor) -> None:
    from _sweep_faults import run_or_die

    sweep = expand(_grid(tmp_path))
    bad = "dataset-short.txt__seq_len-64"
    killed = "dataset-tinystories__seq_len-64"
    sweep_dir = tmp_path / "ws" / "grid"
    sweep_dir.mkdir(parents=True)
    (sweep_dir / f"KILL_{killed}").touch()

    out = run_sweep(sweep, tmp_path / "ws", job_fn=run_or_die, **executor)
    assert sorted(out.done) == sorted(c.name for c in sweep.cells if c.name != bad)
    assert list(out.failed) == [bad] and "fewer than one window of 64" in out.failed[bad]
    rows = {r["cell"]: r for r in sweep_status(sweep_dir)}
    assert rows[killed]["attempts"] == 2 and rows[killed]["status"] == "done"      # re-run after the kill
    assert all(rows[c]["attempts"] == 1 for c in rows if c != killed)               # the others untouched
    assert not list(sweep_dir.glob(".*.tmp-*"))                                     # no half-written run left
    good = sweep.cells[0]
    assert rows[good.name]["progress"] == 1.0 and rows[bad]["status"] == "failed"
    assert rows[good.name]["ppl_quant"] == pytest.approx(_reference_ppl(good.config), rel=1e-6)
    table = sweep_table(sweep_dir)
    assert table.shape == (2, 2) and math.isnan(table.loc["short.txt", "64"])
    assert table.loc["tinystories", "16"] == pytest.approx(rows["dataset-tinystories__seq_len-16"]["ppl_quant"])
    assert "| short.txt | " in (sweep_dir / "table.md").read_text() and " – |" in (sweep_dir / "table.md").read_text()
    stamps = {c: (sweep_dir / c / "results.json").stat().st_mtime_ns for c in out.done}

    (tmp_path / "short.txt").write_text(SHORT_TEXT * 3)        # fix the failing cell, then run again
    again = run_sweep(sweep, tmp_path / "ws", job_fn=run_or_die, **executor)
    assert again.done == [bad] and not again.failed and sorted(again.skipped) == sorted(stamps)
    assert {c: (sweep_dir / c / "results.json").stat().st_mtime_ns for c in stamps} == stamps   # not recomputed
    rows = {r["cell"]: r for r in sweep_status(sweep_dir)}
    assert rows[bad]["attempts"] == 2 and rows[bad]["status"] == "done"
    assert json.loads((sweep_dir / bad / "results.json").read_text())["run"]["eval_seq_len"] == 64


@pytest.mark.slow
def test_local_workers_failure_kill_and_rerun(tmp_path):
    _check_faults(tmp_path, workers=2)


@pytest.fixture
def local_ray():
    ray = pytest.importorskip("ray")
    import _sweep_faults
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(_sweep_faults)    # Ray workers do not have tests/ on their path
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_failure_kill_and_rerun(tmp_path, local_ray):
    _check_faults(tmp_path, ray="auto")


def test_plan_counts_cost_and_finished_cells(tmp_path):
    sweep = expand(_grid(tmp_path))
    p = plan(sweep, tmp_path / "ws", workers=2)
    assert (len(p.todo), p.finished, p.workers, p.gpus) == (4, [], 2, [])
    params = model_shape(None).params          # from the safetensors header, without loading the model
    assert params == sum(t.numel() for t in load_model()[0].parameters())   # lm_head is tied
    # 2 x params x (calibration tokens x (steps + 1) + evaluation tokens x 3), for L = 16 and L = 64, twice
    flops = 2 * params * (2 * (2 * 32 * 2 + 2 * 16 * 3) + 2 * (2 * 32 * 2 + 2 * 64 * 3))
    assert f"{flops / 1e12:.3g} TFLOP in all" in p.summary()
    with pytest.raises(MxlabError, match="workers"):
        plan(sweep, tmp_path / "ws", workers=0)


def test_readme_sweep_example_expands():
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = text.split("## Sweeps")[1].split("```yaml\n")[1].split("```")[0]
    sweep = expand(yaml.safe_load(block))
    assert sweep.name == "w4-methods" and sweep.excluded == 2 and len(sweep.cells) == 6
    cell = next(c for c in sweep.cells if c.labels == {"model": "default", "recipe.block_size": "128",
                                                      "method": "AWQ+GPTQ"})
    assert cell.config["recipe"]["block_size"] == 128
    assert [s["name"] for s in cell.config["recipe"]["steps"]] == ["awq", "gptq"]


@pytest.mark.slow
def test_ctrl_c_keeps_finished_runs_and_the_rerun_completes(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    grid = _grid(tmp_path)
    lengths = [16, 32, 48, 64, 80, 96]      # enough cells that the interrupt lands mid-sweep even on a loaded machine
    grid["axes"] = {"eval.seq_len": lengths}
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(grid))
    cmd = [sys.executable, "-m", "mxlab", "-q", "sweep", str(tmp_path / "grid.yaml"), "--workspace",
           str(tmp_path / "ws"), "--workers", "1"]
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(repo))
    proc = subprocess.Popen(cmd, cwd=repo, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sweep_dir = tmp_path / "ws" / "grid"

    def finished_runs() -> list[str]:     # not the hidden temporary directory an export is writing
        return [p.parent.name for p in sweep_dir.glob("*/results.json") if not p.parent.name.startswith(".")]
    deadline = time.time() + 240
    while not finished_runs() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)          # what Ctrl-C in a terminal sends: the whole process group
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()[-2000:]
    finished = finished_runs()
    assert 1 <= len(finished) < len(lengths)
    for name in finished:                       # intact: readable, with its metrics
        assert json.loads((sweep_dir / name / "results.json").read_text())["metrics"]["ppl_quant"] > 1
    assert not list(sweep_dir.glob(".*.tmp-*"))
    status = {r["cell"]: r["status"] for r in sweep_status(sweep_dir)}
    assert all(status[c] == "done" for c in finished)
    assert {s for c, s in status.items() if c not in finished} <= {"cancelled"}

    again = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, timeout=600)
    assert again.returncode == 0, again.stderr.decode()[-2000:]
    summary = json.loads(again.stdout)
    assert (summary["skipped"], summary["done"], summary["failed"]) == (len(finished), len(lengths) - len(finished), 0)


def test_gpu_slots_and_memory_plan(monkeypatch):
    from mxlab.sweep.cost import GIB, JobEstimate, ModelShape, estimate_job, jobs_per_gpu
    from mxlab.sweep.executors import slot_envs

    monkeypatch.setattr("os.cpu_count", lambda: 16)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    envs = slot_envs(4, gpus=2)                  # round-robin over the GPUs this process may use
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["2", "5", "2", "5"]
    assert {e["MXLAB_SWEEP_THREADS"] for e in envs} == {"4"}
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert "CUDA_VISIBLE_DEVICES" not in slot_envs(2, gpus=0)[0]

    # a Llama-3.1-8B-shaped bf16 checkpoint, calibration 128 x 2048, whole-set evaluation at 2048
    shape = ModelShape(params=8_030_261_248, hidden=4096, intermediate=14336, vocab=128256, context=131072,
                       bytes_per_param=2.0)
    config = {"recipe": {"calib": {"n_samples": 128, "seq_len": 2048}, "steps": [{"name": "awq"}, {"name": "gptq"}]},
              "eval": {"seq_len": None, "max_windows": None}, "with_kl": True}
    est = estimate_job("c", config, shape)
    model = 8_030_261_248 * 2 * 2                # weights + the FP reference for KL
    calib = 128 * 2048 * 4096 * 4 * 4
    hessian = 14336**2 * 4 * 2
    logits = 8 * 2048 * 128256 * 4 * 3
    assert est.memory_bytes == pytest.approx(1.25 * (model + calib + hessian + logits))
    assert est.memory_bytes / GIB == pytest.approx(88.7, abs=0.1)
    assert est.flops == pytest.approx(2 * 8_030_261_248 * (128 * 2048 * 3 + 256 * 2048 * 3))
    assert jobs_per_gpu([est], gpu_bytes=143_771 * 2**20) == 1          # one per H200 (139.8 GiB x 0.9)
    assert jobs_per_gpu([JobEstimate("s", 1, 1.0, 0.11 * GIB)], gpu_bytes=143_771 * 2**20) == 1148  # 0.9 x 140.4 / 0.11
    assert jobs_per_gpu([est, JobEstimate("hub", None, None, None)], gpu_bytes=10) is None


def test_cancel_event_stops_running_workers_within_seconds(tmp_path):
    """The app's Cancel (run_sweep's ``cancel`` event): the worker is killed, Cancelled raised, records say so."""
    import os
    import threading
    import time

    from _sweep_faults import run_slowly
    from mxlab.errors import Cancelled
    from mxlab.sweep.jobs import read_record, record_path

    sweep = expand({**_grid(tmp_path), "axes": {"eval.seq_len": [16, 32, 48]}})
    sweep_dir = tmp_path / "ws" / "grid"
    cancel, caught = threading.Event(), []

    def drive() -> None:
        try:
            run_sweep(sweep, tmp_path / "ws", workers=1, job_fn=run_slowly, cancel=cancel)
        except Cancelled as e:
            caught.append(e)
    thread = threading.Thread(target=drive)
    thread.start()
    first = record_path(sweep_dir, sweep.cells[0].name)
    deadline = time.time() + 120
    while (read_record(first) or {}).get("status") != "running" and time.time() < deadline:
        time.sleep(0.1)
    pid = read_record(first)["pid"]
    t0 = time.perf_counter()
    cancel.set()
    thread.join(30)
    took = time.perf_counter() - t0
    assert not thread.is_alive() and len(caught) == 1 and "finished cells are kept" in str(caught[0])
    assert took < 8, took                       # POLL = 0.5 s, then kill + join of one worker
    with pytest.raises(ProcessLookupError):     # the sleeping worker is gone
        os.kill(pid, 0)
    assert {r["cell"]: r["status"] for r in sweep_status(sweep_dir)} == {c.name: "cancelled" for c in sweep.cells}
