"""Run a sweep: decide what is left to do, plan workers and memory, hand the jobs to an executor.

Layout (``--workspace DIR``, default ``./runs``): ``DIR/<sweep name>/<cell>/`` is each cell's normal
run directory; ``DIR/<sweep name>/_jobs/<cell>.json`` its record; ``sweep.json`` the expanded cells;
``table.csv``, ``table.md``, ``table.html`` and ``report.html`` the result, rebuilt after every run.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from ..atomic import atomic_file
from ..errors import MxlabError
from ..jsonable import write_json
from ..progress import ProgressFn, report
from ..workspace import SWEEP_FILE
from .cost import describe, estimate_sweep, gpu_memory, jobs_per_gpu
from .executors import Task, _ray_init, run_local, run_ray, slot_envs
from .jobs import JobFn, cancel_leftovers, read_record, record_path, run_job, write_record
from .results import write_results
from .spec import Sweep


log = logging.getLogger(__name__)

MAX_WORKERS = 256
CPU_SLOT = 4   # cores per local CPU worker by default


@dataclasses.dataclass
class SweepPlan:
    """What a sweep will do: where, which cells run, which are already finished, with how many workers."""
    sweep: Sweep
    sweep_dir: Path
    todo: list[str]
    finished: list[str]
    workers: int
    gpus: list[int]
    per_gpu: int | None
    estimate: str

    def summary(self) -> str:
        """The lines shown before anything runs: jobs, skips, cost and the memory plan."""
        s = self.sweep
        head = (f"sweep {s.name}: {len(s.cells)} job(s) ({s.excluded} excluded) in {self.sweep_dir}; "
                f"{len(self.finished)} already finished, {len(self.todo)} to run"
                + (f", {left} left out by --only" if (left := len(s.cells) - len(self.finished) - len(self.todo))
                   else ""))
        return head + ("\n" + self.estimate if self.estimate else "")


def _finished(sweep_dir: Path, cell: Any) -> bool:
    """A cell is finished when its run directory holds results.json from the same config."""
    if not (sweep_dir / cell.name / "results.json").is_file():
        return False
    rec = read_record(record_path(sweep_dir, cell.name))
    if rec is not None and rec.get("key") not in (None, cell.key):
        raise MxlabError(f"{sweep_dir / cell.name} was run with a different configuration; give the sweep "
                         f"another `name`, or delete that directory to run it again")
    return True


def plan(sweep: Sweep, workspace: str | os.PathLike = "runs", *, workers: int | None = None,
         ray: str | None = None, only: list[str] | None = None) -> SweepPlan:
    """Run nothing: what ``run_sweep`` would do, with the cost and memory plan.

    ``only``: fnmatch patterns on cell names; other cells are left out of this run (not of the table).
    """
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or not 1 <= workers <= MAX_WORKERS):
        raise MxlabError(f"workers must be a whole number in [1, {MAX_WORKERS}], got {workers!r}")
    sweep_dir = Path(workspace).expanduser() / sweep.name
    finished = [c.name for c in sweep.cells if _finished(sweep_dir, c)]
    todo = [c.name for c in sweep.cells if c.name not in finished]
    if only:
        todo = [n for n in todo if any(fnmatch.fnmatchcase(n, pat) for pat in only)]
    todo_cells = [c for c in sweep.cells if c.name in todo] or sweep.cells
    estimates = estimate_sweep(todo_cells)
    use_gpu = any(c.config.get("device") in ("auto", "cuda") or str(c.config.get("device")).startswith("cuda")
                  for c in todo_cells)
    gpus = gpu_memory() if use_gpu and ray is None else []
    per_gpu = jobs_per_gpu(estimates, min(gpus)) if gpus else None
    if workers is None:
        cpus = os.cpu_count() or 1
        workers = len(gpus) * (per_gpu or 1) if gpus else max(1, cpus // CPU_SLOT)
        workers = min(workers, cpus)
    workers = max(1, min(workers, len(todo) or 1))
    return SweepPlan(sweep, sweep_dir, todo, finished, workers, gpus, per_gpu,
                     describe(estimates, len(todo), workers, gpus, per_gpu))


def _write_manifest(p: SweepPlan) -> None:

    s = p.sweep
    manifest = {"name": s.name, "axes": [{"name": a.name, "labels": [v.label for v in a.values]} for a in s.axes],
                "table": s.table, "excluded": s.excluded, "source": s.source,
                "cells": [{"name": c.name, "labels": c.labels, "key": c.key, "config": c.config} for c in s.cells]}
    with atomic_file(p.sweep_dir / SWEEP_FILE) as tmp:
        write_json(tmp, manifest)


@dataclasses.dataclass
class SweepOutcome:
    """After a sweep: which cells finished now, were finished before, failed (with their errors)."""
    sweep_dir: Path
    done: list[str]
    skipped: list[str]
    failed: dict[str, str]
    seconds: float
    outputs: dict[str, Path] = dataclasses.field(default_factory=dict)


def run_sweep(sweep: Sweep, workspace: str | os.PathLike = "runs", *, workers: int | None = None,
              ray: str | None = None, gpus_per_job: float | None = None, progress: ProgressFn | None = None,
              job_fn: JobFn = run_job, sweep_plan: SweepPlan | None = None,
              only: list[str] | None = None, cancel: threading.Event | None = None) -> SweepOutcome:
    """Run every unfinished cell (failed ones again), locally or on Ray, then write the table and report.

    Args:
        sweep: from ``load_sweep`` / ``expand``.
        workspace: the folder of sweeps; each cell becomes ``workspace/<sweep>/<cell>/``.
        workers: local worker processes (default: one per GPU slot of the memory plan, else one per 4 cores).
        ray: None for local workers; "auto" (a running cluster, else a local Ray) or a cluster address.
        gpus_per_job: Ray only: GPUs each task asks for (default: 1 on a GPU cluster, 0 otherwise).
        progress: ``progress(fraction, message)`` after every finished job; may raise ``Cancelled``.
        job_fn: the function a worker runs per cell (tests substitute one that kills its worker).
        only: run only the cells whose names match one of these fnmatch patterns.
        cancel: once set, the running jobs are stopped within seconds and ``Cancelled`` is raised; finished
            cells stay intact, unfinished ones are recorded as cancelled (the app's Cancel; Ctrl-C does the same).
    """
    p = sweep_plan or plan(sweep, workspace, workers=workers, ray=ray, only=only)
    p.sweep_dir.mkdir(parents=True, exist_ok=True)
    _write_manifest(p)
    cells = {c.name: c for c in sweep.cells}
    tasks = []
    for name in p.todo:
        path = record_path(p.sweep_dir, name)
        previous = read_record(path) or {}
        write_record(path, {"cell": name, "key": cells[name].key, "status": "queued",
                            "attempts": previous.get("attempts", 0), "labels": cells[name].labels,
                            "updated": time.time()})
        tasks.append(Task(name, cells[name].config, str(p.sweep_dir / name), str(path)))
    done: list[str] = []
    failed: dict[str, str] = {}
    t0 = time.perf_counter()

    def on_done(task: Task, record: dict) -> None:
        if record.get("status") == "done":
            done.append(task.cell)
        else:
            failed[task.cell] = record.get("error") or "failed"
        n = len(done) + len(failed)
        eta = (time.perf_counter() - t0) / n * (len(tasks) - n)
        report(progress, n / max(len(tasks), 1),
               f"{n}/{len(tasks)} jobs ({len(failed)} failed), ~{eta:.0f}s left; {task.cell}: {record.get('status')}")

    log.info("%s", p.summary())
    report(progress, 0.0, f"{len(tasks)} job(s) to run")
    try:
        if ray is not None:
            gpj = gpus_per_job if gpus_per_job is not None else _ray_gpus_per_job(ray)
            run_ray(tasks, job_fn, on_done, address=ray, gpus_per_job=gpj, retries=sweep.retries,
                    cancel=cancel)
        else:
            envs = slot_envs(p.workers, len(p.gpus))
            run_local(tasks, job_fn, on_done, workers=p.workers, envs=envs, retries=sweep.retries,
                      cancel=cancel)
    except BaseException:
        cancel_leftovers(p.sweep_dir, p.todo)
        raise
    outcome = SweepOutcome(p.sweep_dir, done, p.finished, failed, time.perf_counter() - t0)
    outcome.outputs = write_outputs(p.sweep_dir)
    return outcome


def _ray_gpus_per_job(address: str) -> float:

    ray = _ray_init(address)
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def write_outputs(sweep_dir: str | os.PathLike) -> dict[str, Path]:
    """The sweep's table as CSV and Markdown, its figure and report (skipped without pandas/plotly)."""
    try:
        return write_results(sweep_dir)
    except ImportError as e:   # the GPU machine may lack pandas/plotly: the run directories are the result
        log.warning("cannot write the sweep table (%s); install pandas and plotly, then run "
                    "`python -m mxlab sweep FILE` again (finished cells are not recomputed)", e)
        return {}
