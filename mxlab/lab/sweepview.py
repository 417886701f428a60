"""The app's Sweep tab without Gradio: check a sweep file, run it into the workspace in the background
(through the session's gate and cancel flag), and show its cells' status, its table and heatmap.

A sweep's cells are run directories ``<workspace>/<sweep>/<cell>/``: the workspace lists them as runs
``<sweep>/<cell>``, so Inspect, Compare and Export open them like any run.
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from .. import workspace as ws
from ..errors import Cancelled, MxlabError
from ..limits import LIMITS, bound, check_file_size, check_max, short
from ..recipe import Recipe
from ..safe_yaml import load_yaml
from ..sweep import Sweep, expand, plan, run_sweep, sweep_status
from ..sweep.cost import estimate_sweep
from ..sweep.results import figure, read_manifest, sweep_table
from ..sweep.run import SweepOutcome, write_outputs
from ..sweep.spec import VALUES
from .server import POLICY
from .session import SessionState, check_sources

log = logging.getLogger(__name__)

Report = Callable[[float, str], None]

EXAMPLE = """\
# 2 x 2 cells on the embedded model (stories260K); each cell is a normal run: <workspace>/<name>/<cell>/
name: example-w4
base:
  model: null
  eval: {dataset: tinystories, max_windows: 2}
  recipe:
    acts: mxint8
    block_size: 32
    calib: {dataset: tinystories, n_samples: 4, seq_len: 64}
axes:
  recipe.weights: [mxint4, mxfp4_e2m1]
  recipe.steps: [[rtn], [gptq]]
table: {rows: [recipe.weights], columns: recipe.steps, value: ppl_quant}
"""
STATUS_COLUMNS = ["cell", "status", "attempts", "progress", "message", "error", "ppl_quant", "seconds"]
CELL_COLUMNS = ["cell", "axes", "state", "TFLOP (estimate)"]
_RESERVED = ("mxlab-session-", "_")    # the sessions' scratch folders; the job records' folder
_ACTIVE: set[Path] = set()              # sweep folders a session of this server is running now
_ACTIVE_LOCK = threading.Lock()
BUSY = "A run of this session is still going; wait for it or press Cancel."


def parse_sweep(text: str) -> Sweep:
    """A sweep file's text -> expanded, validated cells, within the app's bounds and allowed sources."""
    if not isinstance(text, str) or not text.strip():
        raise MxlabError("The sweep file is empty; write one (see the example) or upload a .yaml file.")
    check_max(len(text.encode("utf-8", errors="replace")), "sweep bytes", "The sweep file's size in bytes")
    sweep = expand(load_yaml(text, what="the sweep file"), name="sweep")
    if len(sweep.cells) > bound("sweep cells"):
        raise MxlabError(f"The sweep has {len(sweep.cells)} cells; the app runs at most {bound('sweep cells')} "
                         f"({LIMITS['sweep cells'].reason}). Remove axis values or add exclude rules.")
    if sweep.name.startswith(_RESERVED):
        raise MxlabError(f"The sweep name {sweep.name!r} is reserved; give the sweep another `name`.")
    seen = set()
    for cell in sweep.cells:
        c = cell.config
        if c["allow_pickle"] or c["trust_remote_code"]:
            raise MxlabError(f"cell {cell.name}: the app loads neither pickles nor remote code; set allow_pickle "
                             "and trust_remote_code to false, or run the sweep from the CLI")
        key = (c["model"], c["recipe"]["calib"]["dataset"], c["eval"]["dataset"])
        if key not in seen:       # the server reads only the roots its operator allowed
            seen.add(key)
            check_sources(c["model"], Recipe.from_dict(c["recipe"]), c["eval"]["dataset"])
    return sweep


def read_upload(path: Any) -> str:
    """The text of an uploaded sweep file: within the sweep size limit, UTF-8; MxlabError otherwise."""
    p = Path(str(path or ""))
    if not path or not p.is_file():
        raise MxlabError("The upload did not arrive; upload the .yaml file again.")
    check_file_size(p, "sweep bytes", "The uploaded sweep file")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise MxlabError("The uploaded sweep file is not UTF-8 text; upload a .yaml sweep file.") from None


def max_workers() -> int:
    """The most local worker processes the app starts for one sweep: this machine's CPU count."""
    return os.cpu_count() or 1


def check_workers(workers: Any) -> int:
    """Local worker processes for a sweep: a whole number from 1 to this machine's CPU count."""
    cpus = max_workers()
    n = workers
    if isinstance(n, float) and n.is_integer():      # gr.Number sends floats
        n = int(n)
    elif isinstance(n, str) and n.strip().isdigit():
        n = int(n.strip())
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= cpus:
        raise MxlabError(f"Workers must be a whole number from 1 to {cpus} (this machine's CPU count), "
                         f"got {short(workers)}.")
    return n


def _sweep_dir(workspace: Path, sweep_name: str) -> Path:
    """The folder a sweep named ``sweep_name`` lives in; MxlabError when a run already owns that name."""
    d = Path(workspace) / sweep_name
    if (d / ws.RESULTS_FILE).is_file():
        raise MxlabError(f"{sweep_name!r} is the id of a run in the workspace; give the sweep another `name`.")
    return d


def check_sweep(text: str, workspace: Path, workers: Any = 1) -> tuple[str, list[list]]:
    """'Check': the plan's summary (cells, finished ones, cost estimate) and one row per cell."""
    sweep = parse_sweep(text)
    _sweep_dir(workspace, sweep.name)
    p = plan(sweep, workspace, workers=check_workers(workers))
    est = {e.cell: e for e in estimate_sweep(sweep.cells)}
    rows = []
    for cell in sweep.cells:
        state = "finished (kept)" if cell.name in p.finished else "to run"
        flops = est[cell.name].flops
        rows.append([cell.name, ", ".join(f"{k}={v}" for k, v in cell.labels.items()), state,
                     round(flops / 1e12, 6) if flops else None])
    return p.summary(), rows


@dataclass
class SweepJob:
    """A sweep running in a background thread for one session; the app polls it and the workspace."""
    name: str
    sweep_dir: Path
    thread: Optional[threading.Thread] = None
    outcome: Optional[SweepOutcome] = None
    error: Optional[BaseException] = None
    last: list = field(default_factory=lambda: [0.0, "starting"])   # (fraction, message) of the last report

    @property
    def running(self) -> bool:
        """True until the sweep has ended (finished, failed or cancelled)."""
        return self.thread is not None and self.thread.is_alive()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Wait for the end; False on timeout."""
        if self.thread is not None:
            self.thread.join(timeout)
        return not self.running

    def message(self) -> str:
        """One line for the status box: how it ended, or where it is."""
        if self.running:
            return f"**Running** sweep {self.name}: {self.last[1]}"
        if isinstance(self.error, Cancelled):
            return f"**Cancelled:** {self.error}"
        if self.error is not None:
            text = " ".join(str(self.error).split())
            return f"**Error:** {text}" if isinstance(self.error, MxlabError) else \
                f"**Error:** unexpected {type(self.error).__name__}: {text}"
        o = self.outcome
        failed = f", **{len(o.failed)} failed** (see the error column)" if o.failed else ""
        return (f"**Done:** sweep {self.name}: {len(o.done)} cell(s) run, {len(o.skipped)} kept from before"
                f"{failed}, in {o.seconds:.0f} s.")


def start_sweep(state: SessionState, text: str, workers: Any, report: Optional[Report] = None) -> SweepJob:
    """Validate, then run the sweep into the session's workspace in a background thread (one heavy job per
    session, waiting its turn at the server's gate); ``state.request_cancel()`` stops it within seconds."""
    if state.busy:
        raise MxlabError(BUSY)
    sweep = parse_sweep(text)
    n = check_workers(workers)
    job = SweepJob(sweep.name, _sweep_dir(state.workspace, sweep.name))
    sweep_plan = plan(sweep, state.workspace, workers=n)       # refuses a name taken by another configuration

    def progress(fraction: float, message: str) -> None:
        job.last[:] = [fraction, message]
        if report is not None:
            report(fraction, message)

    def work() -> None:
        try:
            with POLICY.gate.slot(state, state.cancel, progress):
                job.outcome = run_sweep(sweep, state.workspace, sweep_plan=sweep_plan, progress=progress,
                                        cancel=state.cancel)
        except BaseException as e:  # noqa: BLE001 - kept for the app to show
            job.error = e
            if (job.sweep_dir / ws.SWEEP_FILE).is_file():
                try:
                    write_outputs(job.sweep_dir)      # the table of what finished before the cancel
                except Exception:  # noqa: BLE001 - the run directories are the result; say why, keep the error
                    log.exception("cannot write the table of sweep %s", job.name)
        finally:
            with _ACTIVE_LOCK:
                _ACTIVE.discard(job.sweep_dir)
            state.end_job()

    state.start_job(BUSY)       # Cancelled here when Cancel was pressed while this waited in the queue
    with _ACTIVE_LOCK:         # two sessions must not write one sweep's records at once
        if job.sweep_dir in _ACTIVE:
            state.end_job()
            raise MxlabError(f"Sweep {sweep.name!r} is running in another session; wait for it, or give this "
                             "sweep another `name`.")
        _ACTIVE.add(job.sweep_dir)
    job.thread = threading.Thread(target=work, name=f"sweep-{sweep.name}", daemon=True)
    job.thread.start()
    return job


def list_sweeps(workspace: Path) -> list[str]:
    """The sweeps of the workspace (folders holding sweep.json), the app's and the CLI's, by name."""
    root = Path(workspace)
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir() if not d.name.startswith(".") and (d / ws.SWEEP_FILE).is_file())


def sweep_dir(workspace: Path, name: Any) -> Path:
    """The folder of the sweep called ``name`` (one of ``list_sweeps``); MxlabError otherwise."""
    key = str(name or "").strip()
    if not key:
        raise MxlabError("No sweep is selected; pick one from the list (or start one).")
    if key not in list_sweeps(workspace):
        raise MxlabError(f"There is no sweep {key!r} in the workspace; pick one from the list.")
    return Path(workspace) / key


def status_rows(workspace: Path, name: Any) -> list[list]:
    """One row per cell (``STATUS_COLUMNS``): queued/running/done/failed/cancelled, attempts, progress, error."""
    rows = []
    for r in sweep_status(sweep_dir(workspace, name)):
        ppl = r.get("ppl_quant")
        rows.append([r["cell"], r["status"], r["attempts"], f"{100 * float(r.get('progress') or 0):.0f}%",
                     r.get("message") if r["status"] == "running" else None, r.get("error"),
                     round(ppl, 4) if isinstance(ppl, (int, float)) else None,
                     round(r["seconds"], 1) if isinstance(r.get("seconds"), (int, float)) else None])
    return rows


def status_counts(rows: list[list]) -> str:
    """'3 done, 1 failed of 4' from status rows."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row[1]] = counts.get(row[1], 0) + 1
    return ", ".join(f"{n} {s}" for s, n in counts.items()) + f" of {len(rows)}"


def result_view(workspace: Path, name: Any, value: Optional[str] = None) -> tuple[Any, Any]:
    """The study-shaped table (a flat DataFrame: the row axes as columns) and its heatmap, for ``value``."""
    d = sweep_dir(workspace, name)
    value = value or read_manifest(d)["table"]["value"]
    if value not in VALUES:
        raise MxlabError(f"Table value {value!r}: choose one of {', '.join(VALUES)}.")
    table = sweep_table(d, value)
    fig = figure(table, value)
    flat = table.reset_index().round(4)
    flat.columns = [str(c) for c in flat.columns]
    return flat, fig


def display_table(df: Any) -> Any:
    """A table for the browser and API clients: missing values (failed, not run) as empty cells, not NaN."""
    return df.astype(object).where(df.notna(), None)


def cell_runs(workspace: Path, name: Any) -> list[str]:
    """The run ids ('<sweep>/<cell>') of the sweep's finished cells, in the file's order."""
    d = sweep_dir(workspace, name)
    return [f"{d.name}/{c['name']}" for c in read_manifest(d)["cells"] if (d / c["name"] / ws.RESULTS_FILE).is_file()]


def cell_label(workspace: Path, run_id: Any) -> str:
    """The run picker's label of a sweep cell (MxlabError when that cell has not finished)."""
    return ws.get_run(workspace, str(run_id or "")).label
