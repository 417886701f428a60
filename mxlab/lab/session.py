"""One browser session of the app over a shared workspace: the session's live run, its cancel flag, and the
workspace's finished runs.

Finished runs live in the workspace (``mxlab.workspace``): every session sees them, and they survive
reloads and restarts. What is in flight belongs to the session that started it: only that session's
Cancel button reaches its flag, and only its progress bar shows its progress.

A heavy job (run, mix frontier, scale lab summary, sweep) started by a button goes through three stages, and
Cancel reaches it in each: waiting in Gradio's queue (``enqueue``, from an unqueued event chained before the
job, .. ``dequeued``, around its handler), then holding the session's one job (``start_job`` .. ``end_job``,
``busy``), which waits at the server's gate and then runs. One Cancel press stops the job that runs, else the
next one to start.
"""
from __future__ import annotations

import json
import re
import shutil
import tempfile
import threading
import time
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from .. import workspace as ws
from ..atomic import atomic_file
from ..compressed_tensors import export_compressed_tensors
from ..data import DATASETS, evaluation_tokens
from ..errors import Cancelled, MxlabError
from ..jsonable import to_jsonable
from ..limits import check_max
from ..models import load_model
from ..recipe import Recipe
from ..rundir import MODEL_DIR, RECIPE_FILE, REPORT_FILE, RESULTS_FILE, write_report_html
from ..runner import run_experiment
from ..sensitivity import layer_sensitivity
from ..tables import csv_name
from .server import POLICY, session_prefix

Report = Callable[[float, str], None]


@dataclass
class RunEntry:
    """One finished run as the app shows it: the workspace's RunInfo plus its records and statistics."""

    info: ws.RunInfo
    recipe_yaml: str
    records: list = field(default_factory=list)       # StepRecord dicts from results.json
    stats: dict = field(default_factory=dict)         # {"activations": [...], "weights": [...]}
    sensitivity: Optional[list] = None                # layer_sensitivity rows, once computed
    seconds: float = 0.0

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def label(self) -> str:
        """The picker label (workspace.RunInfo.label)."""
        return self.info.label

    @property
    def metrics(self) -> dict[str, Any]:
        return self.info.metrics

    @property
    def out_dir(self) -> Path:
        return self.info.path

    @property
    def model(self) -> str:
        return self.info.model

    @property
    def bits(self) -> Optional[float]:
        """Packed bits per quantized weight, scales included (the one 'bits' number the app shows)."""
        return self.info.metrics.get("bits_per_weight")

    @classmethod
    def load(cls, run_dir: Path) -> "RunEntry":
        """Read a run directory of the workspace."""
        info = ws.run_info(run_dir)
        results = json.loads((Path(run_dir) / RESULTS_FILE).read_text())
        recipe = Recipe.from_dict(results["recipe"]) if results.get("recipe") else None
        return cls(info=info, recipe_yaml=recipe.to_yaml() if recipe else "", records=results.get("records") or [],
                   stats=results.get("stats") or {}, sensitivity=results.get("sensitivity"),
                   seconds=float(results.get("seconds") or 0.0))


class SessionState:
    """What one browser session owns (its cancel flag, busy flag, chosen model, scratch folder), over a
    workspace all sessions share.

    Gradio builds one per session (``gr.State(SessionState)``) and hands the same object to every
    event of that session, so the Cancel button's event can set the flag a running event polls.
    """

    def __init__(self, workspace: Optional[Path] = None):
        self.workspace = ws.resolve(workspace)
        self.cancel = threading.Event()
        self.busy = False                             # a job holds the session (start_job .. end_job)
        self.pending = 0                              # jobs in Gradio's queue whose handler has not ended
        self._lock = threading.Lock()                 # busy, pending and the cancel flag change together
        self.model_source: Optional[str] = None       # the model the last successful Load chose
        self.model_summary: Optional[dict] = None
        self.mix: Any = None                          # the Mix tab's frontier (lab.mixview.MixSession)
        self._workdir: Optional[Path] = None
        self._cache: dict[str, tuple[float, RunEntry]] = {}
        self._shown: dict[str, Any] = {}              # per tab: the inputs of the view it shows (draw_if_new)
        self._shown_lock = threading.Lock()

    def __deepcopy__(self, memo):  # gradio deep-copies state defaults; a session's state is its own
        return SessionState(self.workspace)

    @property
    def workdir(self) -> Path:
        """The session's scratch folder for downloads, ``mxlab-session-<pid>@<host>-*`` in the workspace (created
        on first use, deleted with the session; this server's ``POLICY.shutdown`` removes any left over)."""
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix=session_prefix(), dir=self.workspace))
        return self._workdir

    def runs(self) -> list[ws.RunInfo]:
        """The workspace's finished runs, oldest first."""
        return ws.list_runs(self.workspace)

    def labels(self) -> list[str]:
        """The runs' picker labels, oldest first."""
        return [r.label for r in self.runs()]

    def get(self, label_or_id: Any) -> RunEntry:
        """The run named by its id or picker label (read once, re-read when its files change)."""
        if not label_or_id:
            raise MxlabError("No run is selected; pick one from the list (or run a recipe first).")
        info = ws.get_run(self.workspace, str(label_or_id))
        stamp = max((info.path / f).stat().st_mtime for f in (RESULTS_FILE, ws.META_FILE)
                    if (info.path / f).exists())
        cached = self._cache.get(info.id)
        if cached is None or cached[0] != stamp:
            cached = (stamp, RunEntry.load(info.path))
            self._cache[info.id] = cached
        return cached[1]

    def draw_if_new(self, tab: str, key: Any, draw: Callable[[], tuple]) -> Optional[tuple]:
        """Draw ``tab``'s view for ``key`` (the inputs that decide it) unless it shows exactly that already:
        then None (the caller redraws nothing). Gradio's dropdown reports one pick twice (select, then blur);
        the repeat waits here for the first and draws nothing, so the browser renders the figures once.
        A draw that raises leaves the tab's key as it was."""
        with self._shown_lock:
            if self._shown.get(tab) == key:
                return None
            out = draw()
            self._shown[tab] = key
            return out

    def forget_shown(self, tab: str) -> None:
        """Another handler drew ``tab`` (a sensitivity run, an error): its next pick draws again."""
        with self._shown_lock:
            self._shown.pop(tab, None)

    def request_cancel(self) -> Optional[str]:
        """Stop this session's job: 'running' (stops at its next progress report), 'waiting' (a queued job
        that will not start), or None when the session has no job."""
        with self._lock:
            if not (self.busy or self.pending):
                return None
            self.cancel.set()
            return "running" if self.busy else "waiting"

    def enqueue(self) -> None:
        """Note a heavy job about to wait in Gradio's queue (before its handler runs), so Cancel reaches it there."""
        with self._lock:
            if not (self.busy or self.pending):
                self.cancel.clear()     # nothing of this session is in flight: no Cancel can be meant for it
            self.pending += 1

    @contextmanager
    def dequeued(self) -> Iterator[None]:
        """Around a queued job's handler: its queue mark (``enqueue``) ends with the handler, however it ends."""
        try:
            yield
        finally:
            with self._lock:
                self.pending = max(self.pending - 1, 0)
                if not (self.busy or self.pending):
                    self.cancel.clear()     # a Cancel for a job that ended before starting must not stop the next

    def start_job(self, busy_message: str) -> None:
        """Take the session's one job: MxlabError while another holds it; Cancelled when Cancel was pressed
        while this job waited in the queue (the flag is then used up)."""
        with self._lock:
            if self.busy:
                raise MxlabError(busy_message)
            if self.cancel.is_set():
                self.cancel.clear()
                raise Cancelled("Cancelled while waiting in the queue; nothing was started.")
            self.busy = True

    def end_job(self) -> None:
        """Release the session's job; a Cancel pressed for it must not stop the next one."""
        with self._lock:
            self.busy = False
            self.cancel.clear()

    def close(self) -> None:
        """Delete the scratch folder (called when the session ends); the workspace stays."""
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None


def run_key(label: Any) -> str:
    """A picker label '20250101-120000-x · name · ...' -> its run id."""
    key = str(label or "").strip().split(" ", 1)[0]
    if not key or key.lower() == "none":
        raise MxlabError("No run is selected; pick one from the list (or run a recipe first).")
    return key


# ---------------------------------------------------------------------------- runs
def progress_adapter(report: Report, cancel: threading.Event, every: float = 0.1) -> Report:
    """A library progress callback: raises Cancelled once ``cancel`` is set (checked on every call),
    and forwards to ``report`` at most every ``every`` seconds (inner loops call it often)."""
    last = [0.0]

    def callback(fraction: float, message: str) -> None:
        if cancel.is_set():
            raise Cancelled("Run cancelled; nothing was kept. Change the recipe and run again.")
        now = time.monotonic()
        if now - last[0] >= every or fraction >= 1.0:
            last[0] = now
            report(fraction, message)

    return callback


def check_sources(source: Optional[str], recipe: Optional[Recipe], eval_dataset: Optional[str]) -> None:
    """Refuse (MxlabError) a model or text source outside what the server may read (``POLICY.roots``)."""
    POLICY.roots.check_model(source)
    if recipe is not None:
        POLICY.roots.check_text(recipe.calib.dataset, DATASETS)
    if eval_dataset is not None:
        POLICY.roots.check_text(eval_dataset, DATASETS)


def execute_run(state: SessionState, source: Optional[str], recipe: Recipe, *, eval_dataset: str,
                max_eval_windows: Optional[int], report: Report, name: str = "",
                tasks: Optional[list[str]] = None, task_limit: Optional[int] = None) -> RunEntry:
    """Run one experiment into the workspace (load, FP eval, quantize, eval, export) and return it.

    ``tasks``/``task_limit``: lm-eval zero-shot tasks (offline data) on the FP and the quantized model."""
    if state.busy:
        raise MxlabError("A run of this session is still going; wait for it or press Cancel.")
    check_sources(source, recipe, eval_dataset)
    if max_eval_windows is not None:
        check_max(max_eval_windows, "eval windows", "eval windows")
    with exclusive(state, report, "A run of this session is still going; wait for it or press Cancel."):
        outcome = run_experiment(source, recipe, eval_dataset=eval_dataset, workspace=state.workspace,
                                 name=name, origin="app", max_eval_windows=max_eval_windows, with_kl=True,
                                 tasks=tasks or None, task_limit=task_limit if tasks else None,
                                 progress=progress_adapter(report, state.cancel))
    return state.get(outcome.out_dir.name)


@contextmanager
def exclusive(state: SessionState, report: Report, busy_message: str) -> Iterator[None]:
    """The session's one heavy job at a time: refused with ``busy_message`` while another runs, then a turn
    at the server's fair gate; Cancel (``state.cancel``) reaches the job through ``progress_adapter``, and
    one pressed while the job waited in Gradio's queue stops it here (``SessionState.start_job``)."""
    state.start_job(busy_message)
    try:
        with POLICY.gate.slot(state, state.cancel, report):
            yield
    finally:
        state.end_job()


def compute_sensitivity(state: SessionState, entry: RunEntry, report: Optional[Report] = None,
                        eval_dataset: str = "tinystories", max_windows: int = 4, seq_len: int = 128) -> list[dict]:
    """Rank the run's modules by how much quantizing each alone (RTN) moves the FP model; saved into the run's
    results.json and its report (regenerated), so every session and the report see it."""
    if entry.sensitivity is not None:
        return entry.sensitivity
    recipe = Recipe.from_yaml(entry.recipe_yaml)
    source = None if entry.model.startswith("embedded:") else entry.model
    check_sources(source, None, eval_dataset)
    model, tokenizer = load_model(source)
    tokens = evaluation_tokens(tokenizer, eval_dataset)
    rows = layer_sensitivity(model, recipe, tokens, max_windows=max_windows, seq_len=seq_len,
                             model_id=entry.model, progress=report)
    save_sensitivity(entry.out_dir, rows)
    return state.get(entry.id).sensitivity or rows


def save_sensitivity(run_dir: Path, rows: list[dict]) -> None:
    """Add sensitivity rows to a run's results.json (atomically) and rebuild its report.html."""
    results = json.loads((Path(run_dir) / RESULTS_FILE).read_text())
    results["sensitivity"] = to_jsonable(rows)
    with atomic_file(Path(run_dir) / RESULTS_FILE) as tmp:
        tmp.write_text(json.dumps(results, indent=2) + "\n")
    with atomic_file(Path(run_dir) / REPORT_FILE) as tmp:
        write_report_html(results, tmp)


# ---------------------------------------------------------------------------- export
def export_files(state: SessionState, entry: RunEntry) -> dict[str, Path]:
    """The downloadable files of a run: model zip, results.json, records.csv, report.html, recipe.yaml.

    Downloads are named after the run ('<id>-recipe.yaml'), copied into the session's scratch folder.
    """
    out = Path(entry.out_dir)
    if not (out / RESULTS_FILE).is_file():
        raise MxlabError(f"Run {entry.id} has no exported files; run it again.")
    stem = re.sub(r"[^\w.-]", "_", entry.id)      # a sweep cell's id is '<sweep>/<cell>'
    target = state.workdir / stem
    target.mkdir(parents=True, exist_ok=True)
    files = {}
    if (out / MODEL_DIR).is_dir():
        zip_path = target / f"{stem}-model.zip"
        if not zip_path.exists():
            zip_dir(out / MODEL_DIR, zip_path)
        files["model"] = zip_path
    for key, name in (("results", RESULTS_FILE), ("records", csv_name("records")), ("report", REPORT_FILE),
                      ("recipe", RECIPE_FILE)):
        if (out / name).is_file():
            files[key] = target / f"{stem}-{name}"
            shutil.copyfile(out / name, files[key])
    if "recipe" not in files:
        files["recipe"] = target / f"{stem}-{RECIPE_FILE}"
        files["recipe"].write_text(entry.recipe_yaml)
    return files


def zip_dir(src: Path, dest: Path) -> Path:
    """Zip the files under ``src`` into ``dest`` atomically (a half-written zip is never offered).

    Deflate level 1: packed weights barely compress further, and level 6 took 3x longer for the same size
    (SmolLM2's 166 MB checkpoint: 26 s -> 8.5 s on a loaded 2-core machine, both 123 MB)."""
    partial = dest.with_name(f".{dest.name}.partial")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for path in sorted(p for p in Path(src).rglob("*") if p.is_file()):
            zf.write(path, path.relative_to(src).as_posix())
    partial.replace(dest)
    return dest


def compressed_tensors_zip(state: SessionState, entry: RunEntry) -> Path:
    """The run's model as a compressed-tensors checkpoint (transformers/vLLM load it), zipped for download.

    MXFP4/MXFP6 E2M3/MXFP8 E4M3 at block 32 only; anything else is refused with the alternatives.
    """
    out = Path(entry.out_dir)
    if not (out / MODEL_DIR).is_dir():
        raise MxlabError(f"Run {entry.id} has no packed model; run it again.")
    stem = re.sub(r"[^\w.-]", "_", entry.id)
    target = state.workdir / stem
    target.mkdir(parents=True, exist_ok=True)
    zip_path = target / f"{stem}-compressed-tensors.zip"
    if not zip_path.exists():
        ct_dir = target / f".{stem}-ct"
        export_compressed_tensors(out / MODEL_DIR, ct_dir, overwrite=True)
        zip_dir(ct_dir, zip_path)
        shutil.rmtree(ct_dir, ignore_errors=True)
    return zip_path
