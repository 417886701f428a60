"""UI-independent helpers behind the Gradio app: per-session state, the runs table, the method
order as an editable list, recipes built from widget values, and results formatted for display.

Nothing here imports gradio; every function is plain Python so it can be unit-tested alone.
pandas/plotly are imported lazily (the core library must not need them).
"""
from __future__ import annotations

import dataclasses
import logging
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from .errors import Cancelled, MxlabError

log = logging.getLogger(__name__)

DEFAULT_SOURCE = "embedded default (stories260K)"
# what the app shows first: the study's best 4-bit recipe, calibration sized for the embedded model
START_RECIPE = dict(weights="mxint4", acts="mxint8", block_size=32, steps=["awq", "gptq"],
                    calib=dict(dataset="tinystories", n_samples=32, seq_len=256))
DEFAULT_EVAL_WINDOWS = 40   # 512-token windows: ~20k tokens, enough to rank recipes on the embedded model
RUN_COLUMNS = ["run", "model", "weights", "acts", "block", "steps", "bits/elem", "ppl FP", "ppl quant",
               "KL", "top-1", "time (s)"]


# ---------------------------------------------------------------------------- session state
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

    def __init__(self, root: Optional[Path] = None):
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
            self._workdir = Path(tempfile.mkdtemp(prefix="mxlab-session-", dir=self._root))
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


# ---------------------------------------------------------------------------- method order
def parse_order(text: str) -> list[str]:
    """'awq, gptq' / 'awq -> gptq' / 'awq+gptq' -> ['awq', 'gptq'] (names lower-cased, unchecked)."""
    parts = re.split(r"[,+>\s→]+|->", (text or "").strip().lower())
    return [p for p in (part.strip(" -") for part in parts) if p]


def format_order(steps: list[str]) -> str:
    """['awq', 'gptq'] -> 'awq, gptq' (what the order textbox shows)."""
    return ", ".join(steps)


def order_choices(steps: list[str]) -> list[str]:
    """Numbered entries for the step picker: ['1. awq', '2. gptq']."""
    return [f"{i + 1}. {name}" for i, name in enumerate(steps)]


def choice_index(choice: Optional[str], n_steps: int) -> int:
    """'2. gptq' -> 1; no choice -> the last step; MxlabError on an empty order."""
    if n_steps == 0:
        raise MxlabError("The method order is empty; add a step first.")
    match = re.match(r"\s*(\d+)\.", choice or "")
    index = int(match.group(1)) - 1 if match else n_steps - 1
    return min(max(index, 0), n_steps - 1)


def add_step(steps: list[str], name: str) -> list[str]:
    """A new order with ``name`` appended (validation happens when the recipe is built)."""
    if not name:
        raise MxlabError("Pick a method to add.")
    return [*steps, name]


def remove_step(steps: list[str], index: int) -> list[str]:
    """A new order without the step at ``index``."""
    return [s for i, s in enumerate(steps) if i != index]


def move_step(steps: list[str], index: int, delta: int) -> tuple[list[str], int]:
    """A new order with the step at ``index`` moved by ``delta`` (clamped); returns (order, new index)."""
    new = list(steps)
    target = min(max(index + delta, 0), len(new) - 1)
    new.insert(target, new.pop(index))
    return new, target


# ---------------------------------------------------------------------------- recipes
def step_classes() -> dict[str, type]:
    """Method name -> its step config dataclass, as recipe.py defines them."""
    from .steps import STEP_CONFIGS

    return dict(STEP_CONFIGS)


def step_param_fields(cls: type) -> list[dataclasses.Field]:
    """The user-tunable fields of a step config (everything but its name)."""
    return [f for f in dataclasses.fields(cls) if f.name != "name" and f.init]


def param_keys() -> list[tuple[str, str]]:
    """(method, field) for every step parameter, in a fixed order: how the app lays out widgets."""
    return [(name, f.name) for name, cls in step_classes().items() for f in step_param_fields(cls)]


def field_default(f: dataclasses.Field) -> Any:
    """A dataclass field's default value."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _coerce(value: Any, like: Any) -> Any:
    """A widget value (numbers arrive as float) converted to the type of the field's default."""
    if value is None:
        return like
    if isinstance(like, bool):
        return bool(value)
    if isinstance(like, int):
        return int(round(float(value)))
    if isinstance(like, float):
        return float(value)
    return value


def build_recipe(*, weights: str, acts: str, block_size: Any, rounding: str, order: str,
                 params: Optional[dict[str, dict[str, Any]]] = None, calib_dataset: Optional[str] = None,
                 calib_samples: Any = None, calib_seq_len: Any = None, seed: Any = None,
                 base_yaml: Optional[str] = None):
    """A validated Recipe from widget values; keeps the targets/overrides of ``base_yaml`` if it parses.

    Raises MxlabError (from Recipe's own validation) when the values make no recipe.
    """
    from . import recipe as rec
    from .steps import step_config

    base = None
    if base_yaml and base_yaml.strip():
        try:
            base = rec.Recipe.from_yaml(base_yaml)
        except MxlabError:
            base = None  # the widgets win; a broken YAML box must not block editing
    steps = []
    for name in parse_order(order):
        cls = type(step_config(name))  # resolves aliases ("sq"); MxlabError lists the valid steps
        given = (params or {}).get(cls.name, {})
        kwargs = {f.name: _coerce(given.get(f.name), field_default(f)) for f in step_param_fields(cls)}
        steps.append(cls(**kwargs))
    calib = base.calib if base is not None else rec.Recipe().calib
    calib = dataclasses.replace(
        calib,
        dataset=calib_dataset or calib.dataset,
        n_samples=_coerce(calib_samples, calib.n_samples),
        seq_len=_coerce(calib_seq_len, calib.seq_len),
    )
    extra = {}
    if base is not None:
        extra = {"targets": base.targets, "overrides": base.overrides}
    try:
        block = int(str(block_size).strip())
    except ValueError:
        raise MxlabError(f"Block size {block_size!r} is not a whole number; 32 is the MX standard.") from None
    return rec.Recipe(weights=weights, acts=acts, block_size=block, rounding=rounding, steps=steps,
                      calib=calib, seed=_coerce(seed, 0), **extra)


def recipe_values(recipe) -> dict[str, Any]:
    """The widget values that show ``recipe`` (the inverse of build_recipe)."""
    params = {step.name: {f.name: getattr(step, f.name) for f in step_param_fields(type(step))}
              for step in recipe.steps}
    return dict(weights=recipe.weights, acts=recipe.acts, block_size=recipe.block_size, rounding=recipe.rounding,
                order=format_order([s.name for s in recipe.steps]), params=params,
                calib_dataset=recipe.calib.dataset, calib_samples=recipe.calib.n_samples,
                calib_seq_len=recipe.calib.seq_len, seed=recipe.seed)


def recipe_check(**values) -> tuple[Optional[str], str]:
    """(YAML of the recipe or None, a Markdown message: its validation warnings or the error)."""
    try:
        recipe = build_recipe(**values)
    except MxlabError as err:
        return None, f"**Invalid recipe:** {err}"
    return recipe.to_yaml(), validation_message(recipe)


def validation_message(recipe) -> str:
    """'Recipe OK' plus its bits/element, or its warnings as a Markdown list."""
    from .formats import bits_per_element

    warnings = recipe.warnings
    bits = bits_per_element(recipe.weights, recipe.block_size) if recipe.weights != "none" else None
    head = "Recipe OK" + (f" (weights: {bits:g} bits/element incl. scales)" if bits else "")
    if not warnings:
        return f"**{head}.**"
    return f"**{head}**, with warnings:\n" + "\n".join(f"- {w}" for w in warnings)


def parse_yaml(text: str):
    """A Recipe from YAML text; MxlabError with a readable message on anything malformed."""
    from . import recipe as rec

    if not text or not text.strip():
        raise MxlabError("The recipe YAML is empty; paste a recipe or pick a preset.")
    try:
        return rec.Recipe.from_yaml(text)
    except MxlabError:
        raise
    except Exception as err:  # yaml.YAMLError, TypeError from unknown keys...
        raise MxlabError(f"Could not read the recipe YAML: {err}. Fix it or pick a preset.") from err


# ---------------------------------------------------------------------------- model info
def model_summary(model, recipe) -> dict[str, Any]:
    """Architecture, parameter count and the layers ``recipe`` quantizes (with their formats), as the plan says."""
    from .ptq.plan import outline, plan

    shape_of = outline(model)
    list_path = shape_of.block_path
    arch = (getattr(model.config, "architectures", None) or [type(model).__name__])[0]
    groups: dict[str, dict] = {}   # module name with the block index replaced by '*' -> row
    for t in plan(model, recipe):
        acts = "none (weight only)" if t.kind == "embedding" else t.spec.acts
        pattern = re.sub(rf"^{re.escape(list_path)}\.\d+\.", f"{list_path}.*.", t.name)
        shape = "x".join(str(d) for d in t.module.weight.shape)
        row = groups.setdefault(f"{pattern}|{t.spec.weights}|{acts}",
                                {"module": pattern, "count": 0, "shape": shape, "weights": t.spec.weights, "acts": acts})
        row["count"] += 1
    return {"architecture": arch, "family": shape_of.family or "unknown (no scaling map)",
            "parameters": sum(p.numel() for p in model.parameters()), "blocks": shape_of.n_blocks,
            "block_path": list_path, "n_linear": shape_of.n_linear, "quantized": list(groups.values())}


def summary_markdown(summary: dict, source: str) -> str:
    """The model panel's text."""
    n_q = sum(row["count"] for row in summary["quantized"])
    return (f"**{source}** loaded: `{summary['architecture']}` (map: {summary['family']}), "
            f"{format_count(summary['parameters'])} parameters, {summary['blocks']} decoder blocks "
            f"at `{summary['block_path']}`. The recipe quantizes **{n_q} of {summary['n_linear']}** Linear layers:")


def summary_rows(summary: dict) -> list[list]:
    """Rows for the 'layers to be quantized' table: module, count, shape, weights, acts."""
    return [[r["module"], r["count"], r["shape"], r["weights"], r["acts"]] for r in summary["quantized"]]


def format_count(n: int) -> str:
    """1234567 -> '1.23M'."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def normalize_source(source: Optional[str]) -> Optional[str]:
    """The model textbox's value -> load_model's source (None for the embedded default)."""
    text = (source or "").strip()
    if not text or text.lower() in {"default", "embedded", DEFAULT_SOURCE.lower()}:
        return None
    return text


# ---------------------------------------------------------------------------- runs
def progress_adapter(report: Callable[[float, str], None], cancel: threading.Event) -> Callable[[float, str], None]:
    """A library progress callback that forwards to ``report`` and raises Cancelled once ``cancel`` is set."""

    def callback(fraction: float, message: str) -> None:
        if cancel.is_set():
            raise Cancelled("Run cancelled; nothing was kept. Change the recipe and run again.")
        report(fraction, message)

    return callback


def execute_run(state: SessionState, source: Optional[str], recipe, *, eval_dataset: str,
                max_eval_windows: Optional[int], report: Callable[[float, str], None]) -> RunEntry:
    """Run one experiment for the session (load, FP eval, quantize, eval, export) and record it."""
    from .formats import bits_per_element
    from .runner import run_experiment

    if state.busy:
        raise MxlabError("A run of this session is still going; wait for it or press Cancel.")
    run_id, out_dir = state.next_run_dir()
    state.busy = True
    start = time.perf_counter()
    try:
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


def _fmt(value: Any, digits: int = 4) -> Any:
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    return value if value is not None else ""


def runs_rows(state: SessionState) -> list[list]:
    """The runs table (columns RUN_COLUMNS), one row per run, oldest first."""
    rows = []
    for e in state.runs:
        m = e.metrics
        rows.append([e.label, e.model, e.weights, e.acts, e.block_size, "+".join(e.steps) or "rtn", _fmt(e.bits),
                     _fmt(m.get("ppl_fp")), _fmt(m.get("ppl_quant")), _fmt(m.get("kl")), _fmt(m.get("top1")),
                     round(e.seconds, 1)])
    return rows


def metrics_markdown(entry: RunEntry) -> str:
    """One line summarising a finished run."""
    m = entry.metrics
    parts = [f"**Run {entry.label}** finished in {entry.seconds:.1f} s:",
             f"perplexity FP **{_fmt(m.get('ppl_fp'))}** -> quantized **{_fmt(m.get('ppl_quant'))}**"]
    if m.get("kl") is not None:
        parts.append(f"KL(FP||quant) {_fmt(m.get('kl'))}")
    if m.get("top1") is not None:
        parts.append(f"top-1 agreement {_fmt(m.get('top1'))}")
    return " · ".join(parts)


# ---------------------------------------------------------------------------- inspect / compare
ALL_LAYERS = "all layers"


def run_layers(entry: RunEntry) -> list[str]:
    """The decoder layers a run has records for: ['layer 0', 'layer 1', ...]."""
    blocks = {int(r.block) for r in entry.records}
    blocks |= {int(s["block"]) for s in entry.stats.get("weights", [])}
    return [f"layer {b}" for b in sorted(blocks)]


def layer_index(layer: Optional[str]) -> Optional[int]:
    """'layer 3' -> 3; 'all layers' / None -> None."""
    match = re.match(r"\s*layer\s+(\d+)", layer or "")
    return int(match.group(1)) if match else None


def _only(df, block: Optional[int]):
    """Rows of one decoder block (all rows when block is None)."""
    return df if block is None or "block" not in df.columns else df[df["block"] == block]


def run_figures(entry: RunEntry, layer: Optional[str]) -> dict[str, Any]:
    """The Inspect tab's figures for one run and layer: heatmap, scales, waterfall, sensitivity (or None)."""
    from . import plots, tables

    block = layer_index(layer)
    figs = {
        "heatmap": plots.activation_heatmap(_only(tables.activation_channel_table(entry.stats), block)),
        "scales": plots.scale_histogram(_only(tables.scale_table(entry.stats), block)),
        "waterfall": plots.error_waterfall(_only(tables.records_table(entry.records), block)),
        "sensitivity": None,
    }
    if entry.sensitivity is not None:
        from .sensitivity import sensitivity_table

        figs["sensitivity"] = plots.sensitivity_chart(_only(sensitivity_table(entry.sensitivity), block))
    return figs


def module_table(entry: RunEntry, layer: Optional[str]):
    """Per-module x step records of one run (and layer), numbers rounded for display."""
    from . import tables

    cols = ["block", "module", "step", "mse_before", "mse_after", "sqnr_before", "sqnr_after", "seconds"]
    df = _only(tables.records_table(entry.records), layer_index(layer))
    df = df[[c for c in cols if c in df.columns]].copy()
    for c in df.columns[3:]:
        df[c] = df[c].astype(float).map(lambda v: float(f"{v:.4g}"))
    return df


def compute_sensitivity(entry: RunEntry, report: Optional[Callable[[float, str], None]] = None,
                        eval_dataset: str = "tinystories", max_windows: int = 4, seq_len: int = 128) -> list[dict]:
    """Rank the run's modules by how much quantizing each alone (RTN) moves the FP model; cached on the entry."""
    if entry.sensitivity is None:
        from .data import evaluation_tokens
        from .models import load_model
        from .sensitivity import layer_sensitivity

        recipe = parse_yaml(entry.recipe_yaml)
        source = None if entry.model == "default" else entry.model
        model, tokenizer = load_model(source)
        tokens = evaluation_tokens(tokenizer, eval_dataset)
        entry.sensitivity = layer_sensitivity(model, recipe, tokens, max_windows=max_windows, seq_len=seq_len,
                                              model_id=entry.model, progress=report)
    return entry.sensitivity


def runs_frame(entries: list[RunEntry]):
    """A runs table for plots.pareto_chart: name, bits_per_weight, ppl, ppl_fp, kl."""
    import pandas as pd

    return pd.DataFrame([dict(name=e.label, bits_per_weight=e.metrics.get("bits_per_weight") or e.bits,
                              ppl=e.metrics.get("ppl_quant"), ppl_fp=e.metrics.get("ppl_fp"),
                              kl=e.metrics.get("kl")) for e in entries])


def compare_figures(entries: list[RunEntry]) -> dict[str, Any]:
    """Per-layer error overlay and perplexity vs bits for two or more runs."""
    from . import plots, tables

    if len(entries) < 2:
        raise MxlabError("Pick two or more runs to compare (run the recipe again with other settings first).")
    frames = [tables.records_table(e.records) for e in entries]
    if len(entries) == 2:
        layers = plots.compare_runs(frames[0], frames[1], names=(entries[0].label, entries[1].label))
    else:
        layers = _overlay(frames, [e.label for e in entries])
    return {"layers": layers, "pareto": plots.pareto_chart(runs_frame(entries))}


def _overlay(tables: list, names: list[str], metric: str = "mse_after"):
    """Final per-module output error (last step of each module), one line per run."""
    import plotly.graph_objects as go

    from .plots import short_names

    finals = [t.groupby("module", sort=False)[metric].last() for t in tables]
    modules = list(dict.fromkeys(m for f in finals for m in f.index))
    short = short_names(modules)
    fig = go.Figure([go.Scatter(x=[short[m] for m in modules], y=[f.get(m) for m in modules], name=name,
                                mode="lines+markers") for f, name in zip(finals, names)])
    fig.update_layout(title="Per-layer output MSE after all steps, run by run", template="plotly_white",
                      xaxis_title="module", yaxis=dict(title="output MSE", type="log"))
    return fig


# ---------------------------------------------------------------------------- export
def export_files(entry: RunEntry) -> dict[str, Path]:
    """The downloadable files of a run: model zip, results.json, records.csv, report.html, recipe.yaml."""
    if entry.out_dir is None or not Path(entry.out_dir).is_dir():
        raise MxlabError(f"Run {entry.label} has no exported files; run it again.")
    out = Path(entry.out_dir)
    files = {}
    model_dir = out / "model"
    if model_dir.is_dir():
        zip_path = out.parent / f"run{entry.id}-model.zip"
        if not zip_path.exists():
            partial = shutil.make_archive(str(zip_path.with_suffix("")) + ".partial", "zip", model_dir)
            Path(partial).replace(zip_path)  # atomic: a half-written zip is never offered
        files["model"] = zip_path
    for key, name in (("results", "results.json"), ("records", "records.csv"), ("report", "report.html"),
                      ("recipe", "recipe.yaml")):
        if (out / name).is_file():
            files[key] = out / name
    if "recipe" not in files:
        path = out / "recipe.yaml"
        path.write_text(entry.recipe_yaml)
        files["recipe"] = path
    return files
