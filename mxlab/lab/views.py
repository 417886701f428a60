"""What the app shows: the model summary, the runs table, run metrics, and the Inspect/Compare figures.

The summary asks the plan (``mxlab.ptq.plan``), the one answer to "which modules does this recipe
quantize"; figures are built by ``mxlab.plots`` from ``mxlab.tables`` (plotly and pandas are
imported on first use).
"""
from __future__ import annotations

import re
from typing import Any, Optional

import torch.nn as nn

from .. import tables
from ..errors import MxlabError
from ..ptq.plan import outline, plan
from ..recipe import Recipe
from ..sensitivity import sensitivity_table
from .session import RunEntry, SessionState

RUN_COLUMNS = ["run", "model", "weights", "acts", "block", "steps", "bits/elem", "ppl FP", "ppl quant",
               "KL", "top-1", "time (s)"]
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


# ---------------------------------------------------------------------------- inspect
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
    from .. import plots

    block = layer_index(layer)
    figs = {
        "heatmap": plots.activation_heatmap(_only(tables.activation_channel_table(entry.stats), block)),
        "scales": plots.scale_histogram(_only(tables.scale_table(entry.stats), block)),
        "waterfall": plots.error_waterfall(_only(tables.records_table(entry.records), block)),
        "sensitivity": None,
    }
    if entry.sensitivity is not None:
        figs["sensitivity"] = plots.sensitivity_chart(_only(sensitivity_table(entry.sensitivity), block))
    return figs


def module_table(entry: RunEntry, layer: Optional[str]):
    """Per-module x step records of one run (and layer), numbers rounded for display."""
    cols = ["block", "module", "step", "mse_before", "mse_after", "sqnr_before", "sqnr_after", "seconds"]
    df = _only(tables.records_table(entry.records), layer_index(layer))
    df = df[[c for c in cols if c in df.columns]].copy()
    for c in df.columns[3:]:
        df[c] = df[c].astype(float).map(lambda v: float(f"{v:.4g}"))
    return df


# ---------------------------------------------------------------------------- compare
def runs_frame(entries: list[RunEntry]):
    """A runs table for plots.pareto_chart: name, bits_per_weight, ppl, ppl_fp, kl."""
    import pandas as pd

    return pd.DataFrame([dict(name=e.label, bits_per_weight=e.metrics.get("bits_per_weight") or e.bits,
                              ppl=e.metrics.get("ppl_quant"), ppl_fp=e.metrics.get("ppl_fp"),
                              kl=e.metrics.get("kl")) for e in entries])


def compare_figures(entries: list[RunEntry]) -> dict[str, Any]:
    """Per-layer error overlay and perplexity vs bits for two or more runs."""
    from .. import plots

    if len(entries) < 2:
        raise MxlabError("Pick two or more runs to compare (run the recipe again with other settings first).")
    frames = [tables.records_table(e.records) for e in entries]
    names = [e.label for e in entries]
    if len(entries) == 2:
        layers = plots.compare_runs(frames[0], frames[1], names=(names[0], names[1]))
    else:
        layers = plots.overlay_runs(frames, names)
    return {"layers": layers, "pareto": plots.pareto_chart(runs_frame(entries))}
