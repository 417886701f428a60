"""A sweep job that kills its own worker on its first attempt, for the fault tests (importable by workers)."""
from __future__ import annotations

import os
import signal
from pathlib import Path

from mxlab.sweep.jobs import run_job


def run_or_die(config: dict, run_dir: str, record: str) -> dict:
    """Like ``run_job``, but if ``KILL_<cell>`` exists beside the cell, claim it and SIGKILL this worker mid-job."""
    cell = Path(run_dir)
    trigger = cell.parent / f"KILL_{cell.name}"
    claimed = cell.parent / f"KILLED_{cell.name}"
    try:
        os.rename(trigger, claimed)     # atomic: only the first attempt claims it
    except FileNotFoundError:
        return run_job(config, run_dir, record)
    from mxlab.sweep.jobs import update_record

    update_record(record, status="running", attempts=1)    # as run_job would have, then die mid-job
    (cell.parent / f".{cell.name}.tmp-dead0000").mkdir()   # what a dying export leaves behind
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable")


def run_slowly(config: dict, run_dir: str, record: str) -> dict:
    """A job that marks itself running and then sleeps (for the cancel tests: it never finishes by itself)."""
    import time

    from mxlab.sweep.jobs import update_record

    update_record(record, status="running", attempts=1, pid=os.getpid())
    time.sleep(600)
    raise AssertionError("unreachable: the driver kills this worker")
