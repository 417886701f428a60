"""Bounded summaries of per-channel statistics, so that results files and figures scale with the model.

A 32-layer model with 14336-wide MLPs records ~10^7 per-channel numbers; results.json, the report and
the figures carry at most ``CHANNEL_BINS`` contiguous channel bins per module instead. Each bin keeps
its extreme value (max |x| for activations, min/max for weights) and the index of the channel that
holds it, so an outlier channel stays findable by its index; the full per-channel data goes to CSV.

A compacted row is the statistics row with these keys changed (``binned: True``):
    activations: absmax (max per bin), mean_abs (mean per bin), channel_lo (first channel of each bin),
                 peak_channel (the channel holding the bin's max |x|)
    weights:     w_min (min per bin), w_max (max per bin), channel_lo
Rows with at most ``max_channels`` channels are kept as they are.
"""
from __future__ import annotations

import math
from typing import Any

import torch

CHANNEL_BINS = 256


def bin_edges(n: int, max_bins: int) -> list[int]:
    """Start channel of each contiguous bin: ceil(n / max_bins) channels per bin (the last may be short)."""
    width = max(1, math.ceil(n / max_bins))
    return list(range(0, n, width))


def _vec(values: Any) -> torch.Tensor:
    """A float64 vector from a list (JSON null -> nan) or a tensor."""
    if isinstance(values, torch.Tensor):
        return values.detach().to(torch.float64).flatten().cpu()
    return torch.tensor([math.nan if v is None else v for v in values], dtype=torch.float64)


def bin_reduce(values: Any, max_bins: int, how: str) -> tuple[list[int], list[float], list[int]]:
    """(bin starts, reduced value per bin, channel of the extreme per bin) for how in max, min, mean."""
    v = _vec(values)
    n = v.numel()
    starts = bin_edges(n, max_bins)
    width = starts[1] - starts[0] if len(starts) > 1 else n
    pad = len(starts) * width - n
    fill = {"max": -math.inf, "min": math.inf, "mean": 0.0}[how]
    vb = torch.cat([v, torch.full((pad,), fill, dtype=torch.float64)]).view(len(starts), width)  # (bins, width)
    base = torch.tensor(starts, dtype=torch.int64)
    if how == "mean":
        counts = torch.tensor([min(width, n - s) for s in starts], dtype=torch.float64)
        return starts, (vb.sum(1) / counts).tolist(), starts
    red, arg = (vb.max(1) if how == "max" else vb.min(1))
    return starts, red.tolist(), (base + arg).tolist()


def compact_activation_row(row: dict, max_channels: int = CHANNEL_BINS) -> dict:
    """One activation-statistics row with its per-channel vectors binned (unchanged when small)."""
    if row.get("binned") or len(row["absmax"]) <= max_channels:
        return row
    starts, absmax, peak = bin_reduce(row["absmax"], max_channels, "max")
    _, mean_abs, _ = bin_reduce(row["mean_abs"], max_channels, "mean")
    return {**row, "absmax": absmax, "mean_abs": mean_abs, "channel_lo": starts, "peak_channel": peak,
            "binned": True}


def compact_weight_row(row: dict, max_channels: int = CHANNEL_BINS) -> dict:
    """One weight-statistics row with its per-output-channel ranges binned (unchanged when small)."""
    if row.get("binned") or len(row["w_min"]) <= max_channels:
        return row
    starts, w_min, _ = bin_reduce(row["w_min"], max_channels, "min")
    _, w_max, _ = bin_reduce(row["w_max"], max_channels, "max")
    return {**row, "w_min": w_min, "w_max": w_max, "channel_lo": starts, "binned": True}


def compact_stats(stats: dict | None, max_channels: int = CHANNEL_BINS) -> dict:
    """QuantResult.stats with every per-channel vector cut to at most ``max_channels`` bins."""
    stats = stats or {}
    return {"activations": [compact_activation_row(r, max_channels) for r in stats.get("activations", [])],
            "weights": [compact_weight_row(r, max_channels) for r in stats.get("weights", [])]}
