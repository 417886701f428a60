"""One sweep job, as a worker runs it, and the job records the driver and the workers share.

A job's record is ``<sweep dir>/_jobs/<cell>.json`` (status queued | running | done | failed |
cancelled, attempts, error); its result is the normal run directory ``<sweep dir>/<cell>/``, written
atomically, so a finished cell is exactly a directory holding ``results.json``.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
import traceback
import uuid
from pathlib import Path
from typing import Any, Callable

from ..errors import MxlabError
from ..jsonable import to_jsonable
from ..recipe import Recipe
from ..rundir import export_run
from ..runner import run_experiment

log = logging.getLogger(__name__)

JOBS_DIR = "_jobs"
STATUSES = ("queued", "running", "done", "failed", "cancelled")

JobFn = Callable[[dict, str, str], dict]   # (cell config, run dir, record path) -> record


def record_path(sweep_dir: str | os.PathLike, cell: str) -> Path:
    """Where the record of ``cell`` lives."""
    return Path(sweep_dir) / JOBS_DIR / f"{cell}.json"


def read_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """A job record, or None when there is none (or it is unreadable: treated as never run)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def write_record(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Replace a job record atomically (readers never see half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}"
    tmp.write_text(json.dumps(to_jsonable(record), indent=1))
    os.replace(tmp, path)


def update_record(path: str | os.PathLike, **changes: Any) -> dict[str, Any]:
    """Read, change and write back a record; returns the new record."""
    record = read_record(path) or {}
    record.update(changes, updated=time.time())
    write_record(path, record)
    return record


def _threads() -> None:
    """One job per CPU slot: split the cores among the workers the driver started."""
    n = os.environ.get("MXLAB_SWEEP_THREADS")
    if n:
        import torch

        torch.set_num_threads(max(1, int(n)))


def run_job(config: dict, run_dir: str, record: str) -> dict[str, Any]:
    """Run one cell into ``run_dir`` and record the outcome; never raises for a failed experiment."""
    attempts = int((read_record(record) or {}).get("attempts", 0)) + 1
    started = time.time()
    update_record(record, status="running", attempts=attempts, started=started, host=socket.gethostname(), progress=0.0,
                  pid=os.getpid(), error=None, traceback=None,
                  gpu=os.environ.get("CUDA_VISIBLE_DEVICES"))
    try:
        _threads()
        _drop_leftovers(Path(run_dir))
        metrics = _experiment(config, run_dir, _record_progress(record))
    except Exception as e:  # any failure of one cell is recorded; the sweep goes on

        oom = "out of memory" in str(e).lower()
        error = f"{type(e).__name__}: {e}" if not isinstance(e, MxlabError) else str(e)
        if oom:
            error = f"out of memory: {error}"
        log.warning("job %s failed: %s", Path(run_dir).name, error)
        return update_record(record, status="failed", error=error, traceback=traceback.format_exc(),
                             seconds=time.time() - started)
    except BaseException:    # KeyboardInterrupt / SystemExit: the driver is stopping the sweep
        update_record(record, status="cancelled", error="cancelled", seconds=time.time() - started)
        raise
    return update_record(record, status="done", metrics=metrics, seconds=time.time() - started)


def _drop_leftovers(run_dir: Path) -> None:
    """Remove what a killed attempt of this cell left beside its run directory (one job per cell at a time)."""
    import shutil

    for tmp in run_dir.parent.glob(f".{run_dir.name}.tmp-*"):
        log.info("removing %s, left by a worker that died", tmp)
        shutil.rmtree(tmp, ignore_errors=True)


def _record_progress(record: str, every: float = 2.0) -> Callable[[float, str], None]:
    """A progress callback that writes the job's fraction and message into its record (at most every 2 s)."""
    last = [0.0]

    def progress(fraction: float, message: str) -> None:
        now = time.time()
        if now - last[0] >= every or fraction >= 1.0:
            last[0] = now
            update_record(record, progress=round(float(fraction), 4), message=message)
    return progress


def _experiment(config: dict, run_dir: str, progress: Callable[[float, str], None] | None = None) -> dict[str, Any]:
    """load -> FP eval -> quantize -> eval -> run directory (the runner's one experiment)."""
    ev = config["eval"]
    device = config.get("device")
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else None
    outcome = run_experiment(config["model"], Recipe.from_dict(config["recipe"]), eval_dataset=ev["dataset"],
                             max_eval_windows=ev.get("max_windows"), eval_seq_len=ev.get("seq_len"),
                             with_kl=config["with_kl"], device=device, allow_pickle=config["allow_pickle"],
                             trust_remote_code=config["trust_remote_code"], progress=progress)
    outcome.info["sweep_cell"] = Path(run_dir).name
    export_run(outcome, run_dir, overwrite=True, save_model=config["save_model"])
    peak = getattr(outcome.result, "peak_memory", None) or {}   # phase -> CUDA bytes (CUDA only)
    return dict(outcome.metrics, peak_gpu_bytes=max(peak.values()) if peak else None)


def cancel_leftovers(sweep_dir: str | os.PathLike, cells: list[str]) -> None:
    """Mark records still 'running' or 'queued' as cancelled (after Ctrl-C), and drop dead temp dirs."""
    for cell in cells:
        path = record_path(sweep_dir, cell)
        rec = read_record(path)
        if rec and rec.get("status") in ("queued", "running"):
            update_record(path, status="cancelled", error="cancelled by the user")
        _drop_leftovers(Path(sweep_dir) / cell)
