"""Tables -> Plotly figures. Every function takes DataFrames from `tables` / `sensitivity` (or a runs
table) and returns a `plotly.graph_objects.Figure`; none touches a model.
"""
from __future__ import annotations

import math
import os
from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .compact import CHANNEL_BINS, bin_reduce
from .errors import MxlabError

# transparent backgrounds, mid-grey text and translucent grid lines: readable in the app's light and
# dark themes and in the report (which picks its colours from the browser's preference)
_TEMPLATE = go.layout.Template(layout=dict(
    paper_bgcolor="rgba(0,0,0,0)", plot_bgcolor="rgba(0,0,0,0)", font=dict(color="#7b8794"),
    colorway=["#4c6ef5", "#f59f00", "#12b886", "#e8590c", "#ae3ec9", "#1098ad", "#c2255c", "#74b816"],
    xaxis=dict(gridcolor="rgba(128,128,128,0.25)", zerolinecolor="rgba(128,128,128,0.4)", automargin=True),
    yaxis=dict(gridcolor="rgba(128,128,128,0.25)", zerolinecolor="rgba(128,128,128,0.4)", automargin=True),
    legend=dict(orientation="h", yanchor="top", y=-0.25, xanchor="left", x=0),
    title=dict(x=0.01, xanchor="left", font=dict(size=14)),
    margin=dict(l=60, r=20, t=50, b=60)))


def _need(df: Any, cols: Sequence[str], what: str) -> None:
    """Raise a clear error when a table lacks the columns a figure reads."""
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise MxlabError(f"{what} needs columns {missing}; build the table with mxlab.tables / mxlab.sensitivity")


def _empty(title: str, why: str) -> go.Figure:
    """A figure that says there is nothing to plot (and why), instead of an empty canvas."""
    fig = go.Figure(layout=dict(title=title, template=_TEMPLATE, xaxis_visible=False, yaxis_visible=False))
    fig.add_annotation(text=why, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper", font_size=14)
    return fig


def short_names(names: Sequence[str]) -> dict[str, str]:
    """Module names without their shared dotted prefix ("model.layers.3.mlp.up_proj" -> "3.mlp.up_proj")."""
    names = list(dict.fromkeys(names))
    if len(names) < 2:
        return {n: n for n in names}
    prefix = os.path.commonprefix(names)
    prefix = prefix[: prefix.rfind(".") + 1]
    return {n: n[len(prefix):] or n for n in names}


# ----------------------------------------------------------------------------- activations


def _module_cells(g, max_columns: int) -> tuple[list[float], list[int], list[int], list[int]]:
    """One module's (values, first channel, last channel, peak channel) per column, binned when wide."""
    g = g.sort_values("channel")
    vals, lo = g["absmax_or_mean"].tolist(), g["channel"].astype(int).tolist()
    if "peak_channel" in g:                      # binned already (a compacted results.json)
        return vals, lo, g["channel_end"].astype(int).tolist(), g["peak_channel"].astype(int).tolist()
    if len(vals) <= max_columns:
        return vals, lo, lo, lo
    starts, binned, peak = bin_reduce(vals, max_columns, "max")
    n = len(vals)
    return binned, [lo[b] for b in starts], [lo[e - 1] for e in starts[1:]] + [lo[n - 1]], [lo[p] for p in peak]


def _sig(v: float, digits: int = 4) -> float:
    """v to `digits` significant digits (figures carry what the hover shows, not float noise)."""
    return float(f"{v:.{digits}g}") if math.isfinite(v) else v


def _heatmap_rows(df, max_columns: int) -> tuple[list[str], list[list[float]], list[list[list]], bool]:
    """Rows of one stage (module order kept); modules with identical inputs (q/k/v) share one row.

    Returns labels (with the channels per column when binned), values (rows padded with nan), per-cell
    [value, first channel, peak channel], and whether any row is binned.
    """
    short = short_names(df["module"].unique())
    rows: dict[tuple, list] = {}
    binned = False
    for module, g in df.groupby("module", sort=False):
        vals, lo, hi, peak = _module_cells(g, max_columns)
        width = max(b - a + 1 for a, b in zip(lo, hi))
        binned = binned or width > 1
        key = (int(g["block"].iloc[0]), tuple(vals))
        if key in rows:
            rows[key][0] += "," + short[module].rsplit(".", 1)[-1]
        else:
            rows[key] = [short[module], vals, [[_sig(v), a, p] for v, a, p in zip(vals, lo, peak)], width]
    for r in rows.values():
        if r[3] > 1:
            r[0] += f" ({r[3]} ch/bin)"
    width = max(len(r[1]) for r in rows.values())
    z = [r[1] + [math.nan] * (width - len(r[1])) for r in rows.values()]
    cells = [r[2] + [[None] * 3] * (width - len(r[2])) for r in rows.values()]
    return [r[0] for r in rows.values()], z, cells, binned


def activation_heatmap(channels, value: str = "absmax", log_scale: bool = True,
                       max_columns: int = CHANNEL_BINS) -> go.Figure:
    """Layers x input channels heatmap of activation magnitude; a dropdown switches stage (fp, smoothquant...).

    Modules wider than ``max_columns`` channels are shown in ``max_columns`` contiguous channel bins
    (max over the bin); hovering a bin names its channel range and the channel holding its maximum.
    """
    _need(channels, ["module", "block", "stage", "channel", value], "activation_heatmap")
    title = f"Activation {'max' if value == 'absmax' else 'mean'} |x| per input channel"
    if not len(channels):
        return _empty(title, "no activation statistics recorded")
    stages = list(dict.fromkeys(channels["stage"]))
    fig = go.Figure()
    any_binned = False
    for i, stage in enumerate(stages):
        d = channels[channels["stage"] == stage].assign(absmax_or_mean=lambda t: t[value].astype(float))
        labels, z, cells, binned = _heatmap_rows(d, max_columns)
        any_binned = any_binned or binned
        if log_scale:
            z = [[round(math.log10(v), 3) if v > 0 else math.nan for v in row] for row in z]
        else:
            z = [[_sig(v) for v in row] for row in z]
        where = ("bin from channel %{customdata[1]}<br>peak channel %{customdata[2]}" if binned
                 else "channel %{customdata[1]}")
        fig.add_trace(go.Heatmap(
            # arrays, not nested lists: plotly validates lists cell by cell (0.8 s for SmolLM2's 120 x 39)
            z=np.asarray(z, dtype=np.float32), y=labels, customdata=np.asarray(cells, dtype=np.float32),
            colorscale="Viridis", visible=i == 0, name=stage,
            colorbar=dict(title=f"log10 {value}" if log_scale else value),
            hovertemplate="%{y}<br>" + where + "<br>" + value + " %{customdata[0]:.4g}<extra>" + stage + "</extra>"))
    buttons = [dict(label=s, method="update",
                    args=[{"visible": [j == i for j in range(len(stages))]}, {"title.text": f"{title}: {s}"}])
               for i, s in enumerate(stages)]
    fig.update_layout(
        title=f"{title}: {stages[0]}", template=_TEMPLATE,
        xaxis_title=f"input channel bin (at most {max_columns} per module; hover for channels)" if any_binned
        else "input channel",
        yaxis=dict(title="module (layer order)", autorange="reversed", type="category"),
        height=max(350, 22 * len(fig.data[0].y) + 150),
        updatemenus=[dict(buttons=buttons, direction="down", x=1.0, xanchor="right", y=1.12, yanchor="top",
                          showactive=True)] if len(stages) > 1 else [])
    return fig


def outlier_ratio_chart(activations) -> go.Figure:
    """Max/median channel absmax per module, one bar group per stage: what smoothing did to outliers."""
    _need(activations, ["module", "stage", "outlier_ratio", "kurtosis"], "outlier_ratio_chart")
    title = "Activation outlier ratio (max / median channel max|x|)"
    if not len(activations):
        return _empty(title, "no activation statistics recorded")
    short = short_names(activations["module"].unique())
    fig = go.Figure()
    for stage, g in activations.groupby("stage", sort=False):
        fig.add_trace(go.Bar(x=[short[m] for m in g["module"]], y=g["outlier_ratio"], name=stage,
                             customdata=g[["kurtosis", "top_channels"]] if "top_channels" in g else g[["kurtosis"]],
                             hovertemplate="%{x}<br>ratio %{y:.2f}<br>kurtosis %{customdata[0]:.2f}"
                                           "<br>top channels %{customdata[1]}<extra>" + stage + "</extra>"))
    fig.update_layout(title=title, template=_TEMPLATE, barmode="group", xaxis_title="module",
                      yaxis=dict(title="outlier ratio", type="log"), legend_title="stage")
    return fig


# ----------------------------------------------------------------------------- weights and scales


def _last_stage(scales):
    """Weight rows, and of each module's activation rows those of its last recorded stage: the inputs after
    every scaling step, which the quantized layer's activation format actually sees."""
    acts = scales["tensor"] == "activations"
    last = scales[acts].groupby("module", sort=False)["stage"].last()
    return scales[~acts | (scales["stage"] == scales["module"].map(last))]


def scale_histogram(scales) -> go.Figure:
    """Histogram of E8M0 shared exponents, one bar series per layer, one panel per tensor (weights, then
    activations at their last stage) and format."""
    _need(scales, ["tensor", "block", "stage", "format", "exponent", "count"], "scale_histogram")
    title = "MX shared-scale exponents (E8M0) per layer"
    if not len(scales):
        return _empty(title, "no MX formats (scale statistics exist for MX weights and activations only)")
    scales = _last_stage(scales)
    agg = scales.groupby(["tensor", "format", "block", "exponent"], as_index=False, sort=False)["count"].sum()
    panels = sorted(dict.fromkeys(zip(scales["tensor"], scales["format"])), key=lambda p: p[0] != "weights")
    fig = make_subplots(rows=len(panels), cols=1, subplot_titles=[f"{t}: {f}" for t, f in panels],
                        vertical_spacing=min(0.2, 0.5 / len(panels)))
    for r, (tensor, fmt) in enumerate(panels, start=1):
        for block, g in agg[(agg["tensor"] == tensor) & (agg["format"] == fmt)].groupby("block"):
            g = g.sort_values("exponent")
            share = g["count"] / g["count"].sum()
            fig.add_trace(go.Bar(x=g["exponent"], y=g["count"], name=f"layer {block}", legendgroup=str(block),
                                 showlegend=r == 1, customdata=share, marker_color=_TEMPLATE.layout.colorway[
                                     int(block) % len(_TEMPLATE.layout.colorway)],
                                 hovertemplate=f"layer {block} {tensor}<br>2^%{{x}}: %{{y}} blocks "
                                               "(%{customdata:.1%})<extra>" + fmt + "</extra>"), row=r, col=1)
        fig.update_xaxes(dtick=1, row=r, col=1)
        fig.update_yaxes(title_text="blocks", row=r, col=1)
    fig.update_xaxes(title_text="shared exponent e (scale 2^e)", row=len(panels), col=1)
    fig.update_layout(title=title, template=_TEMPLATE, barmode="group", height=320 * len(panels) + 80)
    return fig


def weight_quality_chart(weights) -> go.Figure:
    """Weight SQNR per module, hover: saturation, flush-to-zero and unused headroom of the scale."""
    _need(weights, ["module", "format", "sqnr_db", "saturated_frac", "flushed_frac", "headroom_bits"],
          "weight_quality_chart")
    title = "Weight quantization quality per module"
    if not len(weights):
        return _empty(title, "no weight statistics recorded")
    short = short_names(weights["module"].unique())
    sat = weights["saturated_frac"].astype(float)
    custom = list(zip(weights["format"], sat.fillna(-1), weights["flushed_frac"].astype(float),
                      weights["headroom_bits"].astype(float).fillna(-1)))
    fig = go.Figure(go.Bar(
        x=[short[m] for m in weights["module"]], y=weights["sqnr_db"], customdata=custom,
        marker_color=sat.fillna(0), marker_colorscale="Reds", marker_cmin=0, marker_colorbar=dict(title="saturated"),
        hovertemplate="%{x} (%{customdata[0]})<br>SQNR %{y:.2f} dB<br>saturated %{customdata[1]:.3%}"
                      "<br>flushed to zero %{customdata[2]:.3%}<br>headroom lost %{customdata[3]:.2f} bits"
                      "<extra></extra>"))
    fig.update_layout(title=title, template=_TEMPLATE, xaxis_title="module", yaxis_title="weight SQNR (dB)")
    return fig


# ----------------------------------------------------------------------------- error by step


def error_waterfall(records, metric: str = "sqnr") -> go.Figure:
    """Per-module waterfall: a bar at the error before any step, then one floating bar per step spanning
    its record's before -> after. Default SQNR (dB, higher is better): unlike absolute MSE it does not
    reward a step that merely rescales a layer's output (SmoothQuant/AWQ folds)."""
    _need(records, ["module", "step", f"{metric}_before", f"{metric}_after"], "error_waterfall")
    label = {"mse": "output MSE", "sqnr": "output SQNR (dB)"}.get(metric, metric)
    title = f"Layer {label}: what each step added or removed"
    if not len(records):
        return _empty(title, "no step records (the recipe ran no steps)")
    modules = list(dict.fromkeys(records["module"]))
    short = short_names(modules)
    x = [short[m] for m in modules]
    first = records.groupby("module", sort=False).first()
    last = records.groupby("module", sort=False).last()
    fig = go.Figure(go.Bar(x=x, y=[first.loc[m, f"{metric}_before"] for m in modules], name="before steps",
                           marker_color="#9aa5b1", hovertemplate="%{x}<br>before: %{y:.4g}<extra></extra>"))
    for step in dict.fromkeys(records["step"]):
        g = records[records["step"] == step].set_index("module")
        base = [g.loc[m, f"{metric}_before"] if m in g.index else None for m in modules]
        delta = [g.loc[m, f"{metric}_after"] - g.loc[m, f"{metric}_before"] if m in g.index else None
                 for m in modules]
        fig.add_trace(go.Bar(x=x, y=delta, base=base, name=step,
                             hovertemplate="%{x}<br>" + step + ": %{base:.4g} -> %{y:+.4g}<extra></extra>"))
    fig.add_trace(go.Scatter(x=x, y=[last.loc[m, f"{metric}_after"] for m in modules], name="final",
                             mode="markers", marker=dict(symbol="diamond", size=9, color="#e03131"),
                             hovertemplate="%{x}<br>final: %{y:.4g}<extra></extra>"))
    fig.update_layout(title=title, template=_TEMPLATE, barmode="group", xaxis_title="module",
                      yaxis_title=label + (" (higher is better)" if metric == "sqnr" else ""), legend_title="stage")
    return fig


def compare_runs(records_a, records_b, names: tuple[str, str] = ("run A", "run B"),
                 metric: str = "mse_after") -> go.Figure:
    """Final per-module error of two runs side by side (last step of each module in each run)."""
    for df in (records_a, records_b):
        _need(df, ["module", metric], "compare_runs")
    label = {"mse_after": "output MSE", "sqnr_after": "output SQNR (dB)"}.get(metric, metric)
    title = f"Layer by layer: {names[0]} vs {names[1]} ({label})"
    a = records_a.groupby("module", sort=False)[metric].last()
    b = records_b.groupby("module", sort=False)[metric].last()
    modules = list(dict.fromkeys([*a.index, *b.index]))
    if not modules:
        return _empty(title, "neither run has step records")
    short = short_names(modules)
    x = [short[m] for m in modules]
    fig = go.Figure()
    for name, s in zip(names, (a, b)):
        fig.add_trace(go.Bar(x=x, y=[s.get(m) for m in modules], name=name,
                             hovertemplate="%{x}<br>" + name + ": %{y:.4g}<extra></extra>"))
    ratio = [b[m] / a[m] if m in a.index and m in b.index and a[m] else None for m in modules]
    fig.add_trace(go.Scatter(x=x, y=ratio, name=f"{names[1]} / {names[0]}", yaxis="y2", mode="lines+markers",
                             hovertemplate="%{x}<br>ratio %{y:.3f}<extra></extra>"))
    fig.update_layout(title=title, template=_TEMPLATE, barmode="group", xaxis_title="module",
                      yaxis=dict(title=label, type="log" if metric.startswith("mse") else "linear"),
                      yaxis2=dict(title="ratio", overlaying="y", side="right", showgrid=False))
    return fig


def overlay_runs(records: Sequence[Any], names: Sequence[str], metric: str = "mse_after") -> go.Figure:
    """Final per-module error (last step of each module) of any number of runs, one line per run."""
    for df in records:
        _need(df, ["module", metric], "overlay_runs")
    finals = [t.groupby("module", sort=False)[metric].last() for t in records]
    modules = list(dict.fromkeys(m for f in finals for m in f.index))
    short = short_names(modules)
    fig = go.Figure([go.Scatter(x=[short[m] for m in modules], y=[f.get(m) for m in modules], name=name,
                                mode="lines+markers") for f, name in zip(finals, names)])
    label = {"mse_after": "output MSE", "sqnr_after": "output SQNR (dB)"}.get(metric, metric)
    scale = "log" if metric.startswith("mse") else "linear"
    fig.update_layout(title=f"Per-layer {label} after all steps, run by run", template=_TEMPLATE,
                      xaxis_title="module", yaxis=dict(title=label, type=scale))
    return fig


# ----------------------------------------------------------------------------- sensitivity and runs


def sensitivity_chart(sensitivity, value: str = "kl", top: int = 30) -> go.Figure:
    """The most sensitive modules (or blocks) when quantized alone, largest first."""
    _need(sensitivity, ["unit", value], "sensitivity_chart")
    label = {"kl": "KL to FP (nats/token)", "d_ppl": "perplexity increase"}.get(value, value)
    title = f"Sensitivity: {label} when only this unit is quantized"
    if not len(sensitivity):
        return _empty(title, "no sensitivity rows")
    d = sensitivity.sort_values(value, ascending=False).head(top).iloc[::-1]
    short = short_names(d["unit"])
    hover = "%{y}<br>" + label + " %{x:.4g}"
    if "ppl" in d:
        hover += "<br>ppl %{customdata[0]:.3f} (FP %{customdata[1]:.3f})"
    fig = go.Figure(go.Bar(x=d[value], y=[short[u] for u in d["unit"]], orientation="h",
                           customdata=d[["ppl", "ppl_fp"]] if "ppl" in d else None,
                           hovertemplate=hover + "<extra></extra>"))
    fig.update_layout(title=title, template=_TEMPLATE, xaxis_title=label, yaxis_title="unit",
                      height=max(350, 20 * len(d) + 150))
    return fig


def pareto_front(runs, x: str = "bits_per_weight", y: str = "ppl") -> list[int]:
    """Index labels of the runs no other run beats on both x and y (lower is better for both)."""
    best, front = math.inf, []
    for idx, row in runs.sort_values([x, y]).iterrows():
        if row[y] < best:
            best = row[y]
            front.append(idx)
    return front


def pareto_chart(runs, x: str = "bits_per_weight", y: str = "ppl", label: str = "name") -> go.Figure:
    """Perplexity vs bits per weight across runs, with the Pareto frontier drawn through the best."""
    _need(runs, [x, y, label], "pareto_chart")
    title = "Perplexity vs bits per weight"
    if not len(runs):
        return _empty(title, "no runs to compare")
    front = runs.loc[pareto_front(runs, x, y)]
    fig = go.Figure(go.Scatter(x=runs[x], y=runs[y], text=[str(t)[:28] for t in runs[label]], mode="markers+text",
                               name="runs", textposition="top center", cliponaxis=False, marker=dict(size=10),
                               hovertemplate="%{text}<br>%{x:.3f} bits/weight<br>ppl %{y:.3f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=front[x], y=front[y], mode="lines", name="Pareto frontier",
                             line=dict(dash="dash", shape="hv"), hoverinfo="skip"))
    pad_x = max(float(runs[x].max() - runs[x].min()), 0.5) * 0.15
    pad_y = max(float(runs[y].max() - runs[y].min()), 0.05 * float(runs[y].max())) * 0.2
    fig.update_layout(title=title, template=_TEMPLATE, xaxis_title="bits per weight (packed, incl. scales)",
                      yaxis_title="perplexity (lower is better)", margin=dict(l=60, r=30, t=50, b=60),
                      xaxis_range=[float(runs[x].min()) - pad_x, float(runs[x].max()) + pad_x],
                      yaxis_range=[float(runs[y].min()) - pad_y, float(runs[y].max()) + 2 * pad_y])
    return fig


def sqnr_delta_chart(deltas, baseline: str, top: int = 40) -> go.Figure:
    """Per-layer output SQNR of each run minus the baseline's (dB; positive: better than the baseline).

    ``deltas``: modules x runs, sorted by size (compare.layer_deltas). One run: horizontal bars of the
    ``top`` largest differences, readable module names; more runs: a heatmap (modules x runs).
    """
    title = f"Per-layer output SQNR vs {baseline} (dB, higher is better)"
    if deltas is None or not len(deltas) or not len(deltas.columns):
        return _empty(title, "no per-layer records to compare")
    d = deltas.head(top)
    short = short_names(list(d.index))
    names = [short[m] for m in d.index]
    if len(d.columns) == 1:
        col = d.columns[0]
        values = d[col].iloc[::-1]
        fig = go.Figure(go.Bar(x=values, y=names[::-1], orientation="h", name=str(col),
                               marker_color=["#12b886" if v >= 0 else "#e03131" for v in values],
                               hovertemplate="%{y}<br>%{x:+.2f} dB<extra></extra>"))
        fig.update_layout(xaxis_title=f"SQNR of {col} minus {baseline} (dB)", showlegend=False)
    else:
        z = d.to_numpy(dtype=float)
        finite = z[z == z]
        span = float(max(abs(finite).max(), 1e-9)) if finite.size else 1.0
        fig = go.Figure(go.Heatmap(z=z, x=[str(c) for c in d.columns], y=names, colorscale="RdBu", zmid=0,
                                   zmin=-span, zmax=span, colorbar=dict(title="dB", thickness=12),
                                   hovertemplate="%{y}<br>%{x}: %{z:+.2f} dB<extra></extra>"))
        fig.update_yaxes(autorange="reversed")
        fig.update_layout(xaxis_title="run")
    fig.update_layout(title=title, template=_TEMPLATE, height=max(360, 18 * len(d) + 140),
                      margin=dict(l=10, r=10, t=50, b=50), yaxis=dict(automargin=True, tickfont=dict(size=10)))
    return fig


# ----------------------------------------------------------------------------- scale lab
def scale_lab_figure(scale_lab, module: str | None = None) -> go.Figure:
    """One layer, every scale rule side by side (a ``tables.scale_lab_table``): clipped blocks and flushed
    elements (%), weight and output SQNR (dB), and the block-exponent histogram per rule."""
    _need(scale_lab, ["module", "scale_rule", "clipped_block_frac", "flushed_frac", "weight_sqnr_db",
                      "output_sqnr_db", "exp_values", "exp_counts"], "scale_lab_figure")
    if scale_lab.empty:
        return _empty("scale lab", "no MX layer to compare")
    module = module or scale_lab["module"].iloc[0]
    df = scale_lab[scale_lab["module"] == module]
    if df.empty:
        raise MxlabError(f"scale_lab_figure: no rows for module {module!r}; pick one of the table's modules")
    fig = make_subplots(rows=2, cols=2, subplot_titles=("clipped blocks / flushed elements (%)", "SQNR (dB)",
                                                        "block exponents", ""),
                        specs=[[{}, {}], [{"colspan": 2}, None]], vertical_spacing=0.16)
    rules = df["scale_rule"].tolist()
    fig.add_bar(x=rules, y=(100 * df["clipped_block_frac"]).tolist(), name="clipped blocks %", row=1, col=1)
    fig.add_bar(x=rules, y=(100 * df["flushed_frac"]).tolist(), name="flushed elements %", row=1, col=1)
    fig.add_bar(x=rules, y=df["weight_sqnr_db"].tolist(), name="weight SQNR", row=1, col=2)
    if df["output_sqnr_db"].notna().any():
        fig.add_bar(x=rules, y=df["output_sqnr_db"].tolist(), name="output SQNR", row=1, col=2)
    for _, r in df.iterrows():
        fig.add_bar(x=list(r["exp_values"]), y=list(r["exp_counts"]), name=f"e ({r['scale_rule']})", row=2, col=1)
    fig.update_layout(template=_TEMPLATE, barmode="group", title=f"scale rules on {module}", height=620)
    return fig
