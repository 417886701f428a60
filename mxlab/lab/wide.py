"""Inspect at real depth and width: figures that stay small and readable when a run has many layers, and
what sensitivity would cost before anyone starts it.

SmolLM2-135M has 30 blocks and 210 linears of width 576 to 1536: the all-layers activation heatmap has
120 rows of 256 channel bins (0.7 MB of JSON, 3,000 px tall) and the exponent histogram 30 bar series
per panel. Above ``WIDE_LAYERS`` layers the exponents become a layers x exponent map and the heatmap's
bins are merged down to ``HEATMAP_CELLS`` cells; a single layer keeps every bin.
"""
from __future__ import annotations

import weakref
from typing import Any, Optional

import numpy as np

from .. import tables
from ..compact import CHANNEL_BINS
from ..errors import MxlabError
from ..sensitivity import AUTO_MODULE_LIMIT
from .session import RunEntry

WIDE_LAYERS = 8            # the bar histogram stays readable up to this many layers (one colour each)
CHANNEL_COLUMNS = CHANNEL_BINS    # bins per module that results.json keeps (mxlab.compact)
HEATMAP_CELLS = 8192       # modules x bins of one heatmap: SmolLM2's 210 modules get 39 bins each (0.1 MB)
MAX_FIGURE_PX = 900        # SmolLM2's heatmap asked for 2,790 px: slower to draw, everything else out of view
_CACHED_RUNS = 4           # runs whose tables stay built (SmolLM2's: ~10 MB each)
_TABLES: dict[int, tuple[weakref.ref, dict]] = {}
SENS_WINDOWS, SENS_SEQ_LEN = 4, 128    # what the app's Compute sensitivity measures (session.compute_sensitivity)


def run_tables(entry: RunEntry) -> dict[str, Any]:
    """The run's activation-channel, scale and records tables, built once per loaded run (a few per process):
    switching layers then only filters them (SmolLM2: 42,240 channel rows, 0.1 s to build)."""
    key = id(entry)
    if key in _TABLES and _TABLES[key][0]() is entry:
        return _TABLES[key][1]
    built = {"channels": tables.activation_channel_table(entry.stats), "scales": tables.scale_table(entry.stats),
             "records": tables.records_table(entry.records), "figures": {}}
    remember(_TABLES, key, (weakref.ref(entry), built), keep=_CACHED_RUNS)
    return built


def fit_height(fig: Any, max_px: int = MAX_FIGURE_PX) -> Any:
    """Cap a figure's height (plotly then labels every n-th row of a category axis); returns the figure."""
    if (fig.layout.height or 0) > max_px:
        fig.update_layout(height=max_px)
    return fig


def remember(cache: dict, key: Any, value: Any, keep: int = 16) -> None:
    """Store ``value`` in ``cache``, dropping the oldest entries beyond ``keep`` (a run's figures per layer)."""
    cache[key] = value
    while len(cache) > keep:
        cache.pop(next(iter(cache)))


def rebin_channels(channels, max_columns: int):
    """Merge each module's contiguous channel bins down to at most ``max_columns`` (max |x| kept, with the
    channel holding it), so an outlier channel stays findable in a smaller figure.

    ``channels``: ``tables.activation_channel_table`` rows (compacted: channel, channel_end, peak_channel;
    or plain: one row per channel). Returns rows with the same columns.
    """
    import pandas as pd

    if max_columns < 1:
        raise MxlabError(f"max_columns must be at least 1, got {max_columns}")
    if not len(channels):
        return channels
    df = channels.reset_index(drop=True)      # idxmax below needs unique labels
    if "peak_channel" not in df:        # one row per channel: each is its own bin
        df["channel_end"] = df["peak_channel"] = df["channel"]
    keys = ["module", "stage"]
    df = df.sort_values([*keys, "channel"], kind="stable")
    n_bins = df.groupby(keys, sort=False)["channel"].transform("size")
    position = df.groupby(keys, sort=False).cumcount()
    # bins per merged column: ceil(n / max_columns), so a module keeps at most max_columns columns
    per = (n_bins + max_columns - 1) // max_columns
    df["_col"] = position // per
    df["_width"] = df["channel_end"] - df["channel"] + 1
    value = "absmax" if "absmax" in df else "mean"
    top = df.loc[df.groupby([*keys, "_col"], sort=False)[value].idxmax()].set_index([*keys, "_col"])
    means = [c for c in ("mean_abs", "mean") if c in df and c != value]    # averaged over channels, not maxed
    for c in means:
        df[c] = df[c] * df["_width"]
    agg = df.groupby([*keys, "_col"], sort=False).agg(channel=("channel", "min"), channel_end=("channel_end", "max"),
                                                     _width=("_width", "sum"), **{c: (c, "sum") for c in means})
    for c in means:
        agg[c] = agg[c] / agg["_width"]
    out = top.drop(columns=["channel", "channel_end", "_width", *means]).join(agg.drop(columns="_width"))
    out = out.reset_index().drop(columns="_col")
    order = list(dict.fromkeys(channels["module"]))   # keep the layer order of the input
    out["_m"] = out["module"].map({m: i for i, m in enumerate(order)})
    out = out.sort_values(["_m", "stage", "channel"], kind="stable").drop(columns="_m")
    return pd.DataFrame(out[list(channels.columns) + [c for c in ("channel_end", "peak_channel")
                                                       if c not in channels.columns]]).reset_index(drop=True)


def heatmap_columns(n_modules: int) -> int:
    """Channel bins per module for a heatmap of ``n_modules`` modules: every bin when few, fewer when many."""
    return max(16, min(CHANNEL_COLUMNS, HEATMAP_CELLS // max(n_modules, 1)))


def exponent_map(scales) -> Any:
    """Layers x shared exponent, one panel per tensor (weights, activations at their last stage) and format;
    colour: the share of the layer's blocks at that exponent. ``tables.scale_table`` rows in."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from .. import plots

    title = "MX shared-scale exponents (E8M0): share of each layer's blocks"
    if not len(scales):
        return plots.scale_histogram(scales)          # its 'no MX formats' figure
    last = scales[scales["stage"] == scales.groupby(["tensor", "module"])["stage"].transform("last")]
    agg = last.groupby(["tensor", "format", "block", "exponent"], as_index=False)["count"].sum()
    panels = sorted(dict.fromkeys(zip(agg["tensor"], agg["format"])), key=lambda p: p[0] != "weights")
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[f"{t}: {f}" for t, f in panels],
                        horizontal_spacing=0.12)
    for c, (tensor, fmt) in enumerate(panels, start=1):
        g = agg[(agg["tensor"] == tensor) & (agg["format"] == fmt)]
        grid = g.pivot_table(index="block", columns="exponent", values="count", aggfunc="sum", fill_value=0)
        grid = grid.reindex(columns=range(int(grid.columns.min()), int(grid.columns.max()) + 1), fill_value=0)
        share = grid.div(grid.sum(axis=1), axis=0)
        fig.add_trace(go.Heatmap(
            z=share.to_numpy(np.float32), x=[int(e) for e in share.columns], y=[f"layer {b}" for b in share.index],
            customdata=grid.to_numpy(np.float32), colorscale="Viridis", zmin=0, zmax=1, showscale=c == len(panels),
            colorbar=dict(title="share"), name=f"{tensor}",
            hovertemplate="%{y} " + tensor + "<br>2^%{x}: %{customdata} blocks (%{z:.1%})<extra>" + fmt + "</extra>"),
            row=1, col=c)
        span = int(share.columns.max()) - int(share.columns.min())     # every exponent labelled while they fit
        fig.update_xaxes(title_text="shared exponent e (scale 2^e)", row=1, col=c,
                         dtick=1 if span <= 12 else 2 if span <= 24 else None)
        fig.update_yaxes(autorange="reversed", type="category", row=1, col=c)
    n_layers = agg["block"].nunique()
    fig.update_layout(title=title, template=plots._TEMPLATE, height=max(350, 14 * n_layers + 160))
    return fig


def sensitivity_line(entry: RunEntry) -> str:
    """What **Compute sensitivity** will cost for this run, from its records (no model is loaded):
    units (modules, or blocks above ``sensitivity.AUTO_MODULE_LIMIT``) x windows forward passes, and a
    time estimate at the speed of the run's own FP evaluation."""
    modules = {(r["block"], m["module"]) for r in entry.records for m in r.get("modules", [])}
    blocks = {b for b, _ in modules}
    per_block = len(modules) > AUTO_MODULE_LIMIT
    units = len(blocks) if per_block else len(modules)
    forwards = (units + 1) * SENS_WINDOWS
    why = f" (one block at a time: {len(modules)} modules are more than {AUTO_MODULE_LIMIT})" if per_block else ""
    line = (f"Sensitivity is not computed yet: **{units} {'blocks' if per_block else 'modules'}**{why}"
            f" x {SENS_WINDOWS} windows of {SENS_SEQ_LEN} tokens = {forwards} forward passes")
    seconds = _seconds_per_token(entry)
    if seconds is not None:
        line += f", about {_duration(forwards * SENS_SEQ_LEN * seconds)} on this machine plus loading the model"
    return line + ". Press **Compute sensitivity** for the ranking."


def _seconds_per_token(entry: RunEntry) -> Optional[float]:
    """The run's FP evaluation speed (seconds per token), if it was recorded."""
    fp = (entry.info.run.get("seconds") or {}).get("eval_fp")
    tokens = entry.metrics.get("n_eval_tokens")
    return fp / tokens if fp and tokens else None


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"
