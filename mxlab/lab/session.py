"""One browser session of the app: its runs, scratch directory and cancel flag, and how a run is executed.

A run goes through ``mxlab.runner.run_experiment`` like the CLI's; the session keeps only small
things (metrics, records, statistics) and the run directory's path.
"""
from __future__ import annotations

import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from ..data import DATASETS, evaluation_tokens
from ..errors import Cancelled, MxlabError
from ..formats import bits_per_element
from ..limits import check_max
from ..models import load_model
from ..recipe import Recipe
from ..rundir import MODEL_DIR, RECIPE_FILE, REPORT_FILE, RESULTS_FILE
from ..runner import run_experiment
from ..sensitivity import layer_sensitivity
from ..tables import csv_name
from .form import parse_yaml
from .server import POLICY

Report = Callable[[float, str], None]


@dataclass
class RunEntry:
    """One finished run as the app keeps it: small things only, the model itself stays on disk."""

    id: int
    model: str
    recipe_yaml: str
    weights: str
    acts: str
    block_size: int
    steps: list[str]
    bits: float
    metrics: dict[str, Any]
    seconds: float
    records: list = field(default_factory=list)       # list[StepRecord]
    stats: dict = field(default_factory=dict)         # {"activations": [...], "weights": [...]}
    out_dir: Optional[Path] = None                    # export_run's directory
    sensitivity: Optional[list] = None                # layer_sensitivity rows, computed on demand

    @property
    def label(self) -> str:
        """A short name for pickers: '#2 W-mxint4 A-mxint8 awq+gptq'."""
        steps = "+".join(self.steps) or "rtn"
        return f"#{self.id} W-{self.weights} A-{self.acts} {steps}"


class SessionState:
    """Everything one browser session owns: its runs, its scratch directory, its cancel flag.

    Gradio builds one per session (``gr.State(SessionState)``) and hands the same object to every
    event of that session, so the Cancel button's event can set the flag a running event polls.
    """

    def __init__(self, root: Optional[Path] = None):  # root None: the server's workspace
        self.runs: list[RunEntry] = []
        self.cancel = threading.Event()
        self.busy = False
        self.model_source: Optional[str] = None
        self.model_summary: Optional[dict] = None
        self._root = Path(root) if root else None
        self._workdir: Optional[Path] = None

    def __deepcopy__(self, memo):  # gradio deep-copies state defaults; a session's state is its own
        return SessionState(self._root)

    @property
    def workdir(self) -> Path:
        """The session's scratch directory (created on first use)."""
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="mxlab-session-", dir=self._root or POLICY.workspace))
        return self._workdir

    def next_run_dir(self) -> tuple[int, Path]:
        """The id and (not yet existing) output directory of the next run."""
        run_id = (self.runs[-1].id + 1) if self.runs else 1
        return run_id, self.workdir / f"run{run_id}"

    def request_cancel(self) -> bool:
        """Ask the running job to stop at its next progress report; False when nothing is running."""
        if not self.busy:
            return False
        self.cancel.set()
        return True

    def add(self, entry: RunEntry) -> None:
        """Append a finished run."""
        self.runs.append(entry)

    def get(self, label_or_id: Any) -> RunEntry:
        """The run named by its label ('#2 ...'), '#2', or id 2; MxlabError if there is none."""
        run_id = run_id_of(label_or_id)
        for entry in self.runs:
            if entry.id == run_id:
                return entry
        raise MxlabError(f"There is no run {label_or_id!r} in this session; run a recipe first.")

    def labels(self) -> list[str]:
        """The runs' labels, oldest first."""
        return [entry.label for entry in self.runs]

    def close(self) -> None:
        """Delete the scratch directory (called when the session ends)."""
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None


def run_id_of(label_or_id: Any) -> int:
    """2, '2', '#2' or '#2 W-mxint4 ...' -> 2."""
    if isinstance(label_or_id, int):
        return label_or_id
    match = re.match(r"\s*#?(\d+)", str(label_or_id or ""))
    if not match:
        raise MxlabError(f"{label_or_id!r} does not name a run; pick one from the list.")
    return int(match.group(1))


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
                max_eval_windows: Optional[int], report: Report) -> RunEntry:
    """Run one experiment for the session (load, FP eval, quantize, eval, export) and record it."""
    if state.busy:
        raise MxlabError("A run of this session is still going; wait for it or press Cancel.")
    check_sources(source, recipe, eval_dataset)
    if max_eval_windows is not None:
        check_max(max_eval_windows, "eval windows", "eval windows")
    run_id, out_dir = state.next_run_dir()
    state.busy = True
    start = time.perf_counter()
    try:
        with POLICY.gate.slot(state, state.cancel, report):
            start = time.perf_counter()
            outcome = run_experiment(source, recipe, eval_dataset=eval_dataset, out_dir=out_dir,
                                     max_eval_windows=max_eval_windows, with_kl=True,
                                     progress=progress_adapter(report, state.cancel))
    except Cancelled:
        shutil.rmtree(out_dir, ignore_errors=True)
        raise
    finally:
        state.busy = False
        state.cancel.clear()  # a Cancel pressed for this run must not stop the next one
    seconds = time.perf_counter() - start
    bits = bits_per_element(recipe.weights, recipe.block_size) if recipe.weights != "none" else 16.0
    entry = RunEntry(id=run_id, model=source or "default", recipe_yaml=recipe.to_yaml(), weights=recipe.weights,
                     acts=recipe.acts, block_size=recipe.block_size, steps=[s.name for s in recipe.steps],
                     bits=float(bits), metrics=dict(outcome.metrics), seconds=seconds,
                     records=list(outcome.result.records), stats=outcome.result.stats or {}, out_dir=out_dir)
    state.add(entry)
    return entry


def compute_sensitivity(entry: RunEntry, report: Optional[Report] = None, eval_dataset: str = "tinystories",
                        max_windows: int = 4, seq_len: int = 128) -> list[dict]:
    """Rank the run's modules by how much quantizing each alone (RTN) moves the FP model; cached on the entry."""
    if entry.sensitivity is None:
        recipe = parse_yaml(entry.recipe_yaml)
        source = None if entry.model == "default" else entry.model
        check_sources(source, None, eval_dataset)
        model, tokenizer = load_model(source)
        tokens = evaluation_tokens(tokenizer, eval_dataset)
        entry.sensitivity = layer_sensitivity(model, recipe, tokens, max_windows=max_windows, seq_len=seq_len,
                                              model_id=entry.model, progress=report)
    return entry.sensitivity


# ---------------------------------------------------------------------------- export
def export_files(entry: RunEntry) -> dict[str, Path]:
    """The downloadable files of a run: model zip, results.json, records.csv, report.html, recipe.yaml."""
    if entry.out_dir is None or not Path(entry.out_dir).is_dir():
        raise MxlabError(f"Run {entry.label} has no exported files; run it again.")
    out = Path(entry.out_dir)
    files = {}
    model_dir = out / MODEL_DIR
    if model_dir.is_dir():
        zip_path = out.parent / f"run{entry.id}-model.zip"
        if not zip_path.exists():
            partial = shutil.make_archive(str(zip_path.with_suffix("")) + ".partial", "zip", model_dir)
            Path(partial).replace(zip_path)  # atomic: a half-written zip is never offered
        files["model"] = zip_path
    for key, name in (("results", RESULTS_FILE), ("records", csv_name("records")), ("report", REPORT_FILE),
                      ("recipe", RECIPE_FILE)):
        if (out / name).is_file():
            files[key] = out / name
    if "recipe" not in files:
        path = out / RECIPE_FILE
        path.write_text(entry.recipe_yaml)
        files["recipe"] = path
    return files
