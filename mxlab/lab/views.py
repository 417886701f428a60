"""What the app shows: the model summary, the runs table, run metrics, and the Inspect/Compare figures.

The summary asks the plan (``mxlab.ptq.plan``), the one answer to "which modules does this recipe
quantize"; figures are built by ``mxlab.plots`` from ``mxlab.tables`` (plotly and pandas are
imported on first use).
"""
from __future__ import annotations

import re
from typing import Any, Optional

import torch.nn as nn

from .. import compare, tables
from ..errors import MxlabError
from ..ptq.plan import outline, plan
from ..recipe import Recipe
from ..rundir import read_results
from ..sensitivity import sensitivity_table
from .session import RunEntry, SessionState
from .tasks import accuracy_text
from . import wide

RUN_COLUMNS = ["run", "name", "model", "recipe", "eval", "bits/weight", "ppl FP", "ppl quant", "change %",
               "KL", "top-1", "tags", "date"]
SUMMARY_COLUMNS = ["module", "count", "shape", "weights", "acts"]
ALL_LAYERS = "all layers"


# ---------------------------------------------------------------------------- model
def model_summary(model: nn.Module, recipe: Recipe) -> dict[str, Any]:
    """Architecture, parameter count and the layers ``recipe`` quantizes (with their formats), as the plan says.

    ``quantized`` holds one row per (module pattern, formats): the block index replaced by ``*``,
    how many modules it stands for, and their full ``names``.
    """
    shape_of = outline(model)
    list_path = shape_of.block_path
    arch = (getattr(model.config, "architectures", None) or [type(model).__name__])[0]
    groups: dict[str, dict] = {}   # module name with the block index replaced by '*' -> row
    for t in plan(model, recipe):
        acts = "none (weight only)" if t.kind == "embedding" else t.spec.acts
        pattern = re.sub(rf"^{re.escape(list_path)}\.\d+\.", f"{list_path}.*.", t.name)
        shape = "x".join(str(d) for d in t.module.weight.shape)
        row = groups.setdefault(f"{pattern}|{t.spec.weights}|{acts}",
                                {"module": pattern, "count": 0, "shape": shape, "weights": t.spec.weights,
                                 "acts": acts, "names": []})
        row["count"] += 1
        row["names"].append(t.name)
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
    """Rows for the 'layers to be quantized' table (columns SUMMARY_COLUMNS)."""
    return [[r[c] for c in SUMMARY_COLUMNS] for r in summary["quantized"]]


def format_count(n: int) -> str:
    """1234567 -> '1.23M'."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


# ---------------------------------------------------------------------------- runs
def _fmt(value: Any, digits: int = 4) -> Any:
    """A float rounded to ``digits`` significant digits for display; None -> ''."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    return value if value is not None else ""


def runs_rows(state: SessionState) -> list[list]:
    """The workspace's runs table (columns RUN_COLUMNS), one row per run, oldest first."""
    rows = []
    for r in state.runs():
        m = r.metrics
        change = 100 * (m["ppl_quant"] / m["ppl_fp"] - 1) if m.get("ppl_fp") and m.get("ppl_quant") else None
        rows.append([r.id, r.name, r.model_short, r.summary, r.eval_setting, _fmt(m.get("bits_per_weight")),
                     _fmt(m.get("ppl_fp")), _fmt(m.get("ppl_quant")), _fmt(change, 3), _fmt(m.get("kl")),
                     _fmt(m.get("top1")), ", ".join(r.tags), r.created.replace("T", " ")])
    return rows


def metrics_markdown(entry: RunEntry) -> str:
    """One line summarising a finished run."""
    m = entry.metrics
    run = entry.info.run
    took = f"quantized in {run.get('seconds_quantize', entry.seconds):.1f} s"
    if run.get("seconds_eval") is not None:
        took += f", evaluated (FP and quantized) in {run['seconds_eval']:.1f} s"
    parts = [f"**Done.** Run **{entry.id}** ({entry.info.model_short}, {entry.info.summary}) {took}",
             f"perplexity FP **{_fmt(m.get('ppl_fp'))}** -> quantized **{_fmt(m.get('ppl_quant'))}**"]
    if m.get("kl") is not None:
        parts.append(f"KL(FP||quant) {_fmt(m.get('kl'))}")
    if m.get("top1") is not None:
        parts.append(f"top-1 agreement {_fmt(m.get('top1'))}")
    if m.get("bits_per_weight") is not None:
        parts.append(f"{_fmt(m.get('bits_per_weight'))} bits per weight")
    if m.get("zero_shot"):
        parts.append(accuracy_text(m["zero_shot"]))
    return " · ".join(parts)


# ---------------------------------------------------------------------------- inspect
def run_layers(entry: RunEntry) -> list[str]:
    """The decoder layers a run has records for: ['layer 0', 'layer 1', ...]."""
    blocks = {int(r["block"] if isinstance(r, dict) else r.block) for r in entry.records}
    blocks |= {int(s["block"]) for s in entry.stats.get("weights", [])}
    return [f"layer {b}" for b in sorted(blocks)]


def layer_index(layer: Optional[str]) -> Optional[int]:
    """'layer 3' -> 3; 'all layers' / None -> None."""
    match = re.match(r"\s*layer\s+(\d+)", layer or "")
    return int(match.group(1)) if match else None


def _only(df, block: Optional[int]):
    """Rows of one decoder block (all rows when block is None)."""
    return df if block is None or "block" not in df.columns else df[df["block"] == block]


def run_figures(entry: RunEntry, layer: Optional[str], metric: str = "sqnr") -> dict[str, Any]:
    """The Inspect tab's figures for one run and layer: heatmap, scales, waterfall, sensitivity (or None)."""
    from .. import plots

    block = layer_index(layer)
    whole = wide.run_tables(entry)            # built once per run: a layer switch only filters them
    key = (block, metric, entry.sensitivity is not None)
    if key in whole["figures"]:               # selected before: no rebuilding
        return dict(whole["figures"][key])
    channels, scales = _only(whole["channels"], block), _only(whole["scales"], block)
    many = scales["block"].nunique() > wide.WIDE_LAYERS if len(scales) else False
    columns = wide.heatmap_columns(channels["module"].nunique()) if len(channels) else wide.CHANNEL_COLUMNS
    if columns < wide.CHANNEL_COLUMNS:
        channels = wide.rebin_channels(channels, columns)
    figs = {
        "heatmap": wide.fit_height(plots.activation_heatmap(channels, max_columns=columns)),
        "scales": wide.exponent_map(scales) if many else plots.scale_histogram(scales),
        "waterfall": plots.error_waterfall(_only(whole["records"], block), metric=metric),
        "sensitivity": None,
    }
    if entry.sensitivity is not None:
        figs["sensitivity"] = plots.sensitivity_chart(_only(sensitivity_table(entry.sensitivity), block))
    wide.remember(whole["figures"], key, figs)
    return dict(figs)


def module_table(entry: RunEntry, layer: Optional[str]):
    """Per-module x step records of one run (and layer), numbers rounded for display."""
    cols = ["block", "module", "step", "mse_before", "mse_after", "sqnr_before", "sqnr_after", "seconds"]
    df = _only(wide.run_tables(entry)["records"], layer_index(layer))
    df = df[[c for c in cols if c in df.columns]].copy()
    for c in df.columns[3:]:
        df[c] = df[c].astype(float).map(lambda v: float(f"{v:.4g}"))
    return df


# ---------------------------------------------------------------------------- compare
def compared(state: SessionState, labels: list[str]) -> list[tuple[str, dict]]:
    """(label, results.json dict) of each picked run, in the order picked."""
    return [(state.get(label).label, read_results(state.get(label).out_dir)) for label in labels or []]


def compare_view(state: SessionState, labels: list[str], baseline: Optional[str] = None) -> dict[str, Any]:
    """Everything the Compare tab shows: warnings (Markdown), metrics table with deltas, and the figures."""
    runs = compared(state, labels)
    if len(runs) < 2:
        raise MxlabError("Pick two or more runs to compare (run the recipe again with other settings first).")
    ids = [label.split(" ", 1)[0] for label, _ in runs]
    base = ids.index(baseline.split(" ", 1)[0]) if baseline and baseline.split(" ", 1)[0] in ids else 0
    warnings = compare.setting_warnings(runs)
    note = "\n".join(f"**Warning:** {w}" for w in warnings) or f"Baseline: **{ids[base]}**. All runs share model and evaluation settings."
    table = compare.metrics_table(runs, base)
    for col in table.columns:
        if table[col].dtype.kind == "f":
            table[col] = table[col].map(lambda v: float(f"{v:.4g}") if v == v else None)
    return {"note": note, "warn": bool(warnings), "table": table, **compare.figures(runs, base), "runs": runs,
            "baseline": base}
