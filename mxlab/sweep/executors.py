"""Where jobs run: local worker processes (one per GPU or CPU slot) or Ray tasks on a cluster.

Both take the same ``Task`` list and call ``on_done(task, record)`` once per task with the job's
final record. A job that raises is recorded by the job itself; a worker that dies (killed, out of
host memory) is re-run up to ``retries`` times, then recorded as failed. Ctrl-C kills the workers
and re-raises ``KeyboardInterrupt``; run directories are written atomically, so every finished run
stays intact and nothing half-written is left in its place.
"""
from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import re
import threading
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable

from ..errors import Cancelled, MxlabError
from .jobs import JobFn, update_record


log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Task:
    """One job to run: the cell's name and config, its run directory and its record file."""
    cell: str
    config: dict[str, Any]
    run_dir: str
    record: str


OnDone = Callable[[Task, dict], None]
POLL = 0.5   # seconds between checks of the cancel flag while jobs run


def check_cancel(cancel: threading.Event | None) -> None:
    """Raise Cancelled when the front end asked the sweep to stop (the same path as Ctrl-C)."""
    if cancel is not None and cancel.is_set():
        raise Cancelled("Sweep cancelled: finished cells are kept; start it again to run the rest.")


def _died(task: Task, deaths: int, retries: int) -> dict | None:
    """Record a dead worker: None if the job gets another attempt, else its final 'failed' record."""
    if deaths <= retries:
        log.warning("the worker running %s died; re-running it (%d of %d retries)", task.cell, deaths, retries)
        update_record(task.record, status="queued", error=f"worker died during attempt; retry {deaths}")
        return None
    return update_record(task.record, status="failed",
                         error=f"the worker died {deaths} times (killed, or out of host memory); "
                               "check the machine's memory or run this cell alone")


def _init_worker(env: dict[str, str]) -> None:
    """Runs first in a fresh worker: its GPU and thread count, before torch is imported."""
    os.environ.update(env)


def slot_envs(workers: int, gpus: int) -> list[dict[str, str]]:
    """Per worker: CUDA_VISIBLE_DEVICES (round-robin over the visible GPUs) and its CPU thread count."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [s.strip() for s in visible.split(",") if s.strip()] if visible else [str(i) for i in range(gpus)]
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    envs = []
    for i in range(workers):
        env = {"MXLAB_SWEEP_THREADS": threads}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = ids[i % len(ids)]
        envs.append(env)
    return envs


def _kill(executor: ProcessPoolExecutor | None) -> None:
    if executor is None:
        return
    procs = list(getattr(executor, "_processes", {}).values())
    for p in procs:
        if p.is_alive():
            p.kill()
    for p in procs:    # dead before the driver tidies its temporary directories
        p.join(5)
    executor.shutdown(wait=False, cancel_futures=True)


def run_local(tasks: list[Task], job_fn: JobFn, on_done: OnDone, *, workers: int, envs: list[dict[str, str]],
              retries: int = 2, cancel: threading.Event | None = None) -> None:
    """Run ``tasks`` on ``workers`` spawned processes; each worker is its own one-process pool, so a
    worker that dies takes down only its own job (which is re-run), never the others. ``cancel`` set:
    the workers are killed within ``POLL`` seconds and Cancelled raised (as Ctrl-C does)."""
    ctx = multiprocessing.get_context("spawn")
    pools: list[ProcessPoolExecutor | None] = [None] * workers
    pending = deque(tasks)
    running: dict[Future, tuple[int, Task]] = {}
    deaths: dict[str, int] = {}
    try:
        while pending or running:
            busy = {slot for slot, _ in running.values()}
            for slot in range(workers):
                if slot in busy or not pending:
                    continue
                if pools[slot] is None:
                    pools[slot] = ProcessPoolExecutor(1, mp_context=ctx, initializer=_init_worker,
                                                      initargs=(envs[slot],))
                task = pending.popleft()
                running[pools[slot].submit(job_fn, task.config, task.run_dir, task.record)] = (slot, task)
            check_cancel(cancel)
            done, _ = wait(list(running), timeout=POLL if cancel is not None else None, return_when=FIRST_COMPLETED)
            check_cancel(cancel)
            for fut in done:
                slot, task = running.pop(fut)
                try:
                    record = fut.result()
                except BrokenProcessPool:
                    _kill(pools[slot])
                    pools[slot] = None
                    deaths[task.cell] = deaths.get(task.cell, 0) + 1
                    record = _died(task, deaths[task.cell], retries)
                    if record is None:
                        pending.appendleft(task)
                        continue
                except Exception as e:  # the job could not even start (e.g. not picklable)
                    record = update_record(task.record, status="failed", error=f"{type(e).__name__}: {e}")
                on_done(task, record)
    finally:
        stopping = bool(pending or running)    # Ctrl-C or an error in the driver: stop the workers now
        for pool in pools:
            if pool is not None and stopping:
                _kill(pool)
            elif pool is not None:
                pool.shutdown(wait=True)


def _ray_init(address: str) -> Any:
    import ray

    if ray.is_initialized():
        return ray
    if address == "auto":
        try:
            ray.init(address="auto", include_dashboard=False, log_to_driver=False)
            return ray
        except ConnectionError:
            log.info("no running Ray cluster found: starting a local Ray instance")
            ray.init(include_dashboard=False, log_to_driver=False)
            return ray
    ray.init(address=address, log_to_driver=False)
    return ray


def run_ray(tasks: list[Task], job_fn: JobFn, on_done: OnDone, *, address: str = "auto", cpus_per_job: float = 1,
            gpus_per_job: float = 0, retries: int = 2, cancel: threading.Event | None = None) -> None:
    """Run ``tasks`` as Ray tasks (each asks for ``cpus_per_job`` CPUs and ``gpus_per_job`` GPUs, so
    the cluster packs them); Ray re-runs a task whose worker died up to ``retries`` times."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise MxlabError("--ray needs Ray: pip install 'ray>=2.9' (or run without --ray for local workers)") from None
    ray = _ray_init(address)
    import mxlab

    # a local Ray worker finds this mxlab; on a cluster, mxlab must be installed on every node
    code = str(Path(mxlab.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (code, os.environ.get("PYTHONPATH", "")) if p)
    env = {"PYTHONPATH": path, "MXLAB_SWEEP_THREADS": str(max(1, int(cpus_per_job)))}
    remote = ray.remote(job_fn).options(num_cpus=cpus_per_job, num_gpus=gpus_per_job, max_retries=retries,
                                        retry_exceptions=False, runtime_env={"env_vars": env})
    refs = {remote.remote(t.config, t.run_dir, t.record): t for t in tasks}
    try:
        while refs:
            check_cancel(cancel)
            ready, _ = ray.wait(list(refs), num_returns=1, timeout=POLL if cancel is not None else None)
            for ref in ready:
                task = refs.pop(ref)
                try:
                    record = ray.get(ref)
                except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                        ray.exceptions.OutOfMemoryError) as e:
                    record = update_record(task.record, status="failed",
                                           error=f"the worker died {retries + 1} times ({type(e).__name__}); "
                                                 "check the node's memory or run this cell alone")
                except ray.exceptions.RayError as e:   # Ray colours its messages: keep plain text
                    error = re.sub(r"\x1b\[[0-9;]*m", "", f"{type(e).__name__}: {e}")
                    record = update_record(task.record, status="failed", error=error)
                on_done(task, record)
    except BaseException:
        for ref in refs:
            ray.cancel(ref, force=True)
        raise
