"""SmoothQuant: move activation outliers into the weights with per-channel scales.

For each scaling group (prev op -> linears sharing its output as input):
    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)
with max|X_j| over the calibration tokens and max|W_j| over the rows of all the group's linears;
then X / s and W * s (``fold_scales``), so the FP function is unchanged.
"""
from __future__ import annotations

import logging
import time

import torch
import torch.nn as nn

from ...records import ModuleRecord, StepRecord
from ...steps import SmoothQuantConfig
from ..context import BlockContext
from .scaling import fold_scales, skipped_without_groups

log = logging.getLogger(__name__)

EPS = 1e-5      # floor for both statistics and the scale, as in the reference implementation


def smooth_scales(act_max: torch.Tensor, weight_max: torch.Tensor, alpha: float) -> torch.Tensor:
    """s (channels,) from per-channel max|X| and max|W|; channels never seen (max 0) keep s = 1."""
    s = act_max.clamp(min=EPS).pow(alpha) / weight_max.clamp(min=EPS).pow(1 - alpha)
    s = s.clamp(min=EPS)
    return torch.where((act_max > 0) & (weight_max > 0), s, torch.ones_like(s))


def apply(ctx: BlockContext, config: SmoothQuantConfig) -> StepRecord:
    """Smooth every scaling group of the block with ``config.alpha``."""
    block = ctx.block
    record = StepRecord("smoothquant", ctx.index)
    if skipped_without_groups(ctx, record):
        return record
    for group in ctx.groups:
        t0 = time.perf_counter()
        linears = [block.get_submodule(n) for n in group.linears]
        if any(getattr(m, "weight_quantized", False) for m in [block.get_submodule(group.prev), *linears]):
            record.notes.append(f"{group.prev} -> {group.linears}: already quantized, skipped")
            continue
        act_max = None
        for x in ctx.input_batches(group.linears[0]):           # x: (n, in), all linears share it
            m = x.abs().amax(dim=0)
            act_max = m if act_max is None else torch.maximum(act_max, m)
        if act_max is None:
            record.notes.append(f"{group.prev} -> {group.linears}: no calibration inputs, skipped")
            continue
        weight_max = torch.cat([lin.weight.detach().abs().float() for lin in linears]).amax(dim=0)
        s = smooth_scales(act_max, weight_max.to(act_max.device), config.alpha)
        fold_scales(block, group, s)
        details = {"alpha": config.alpha, "prev": f"{ctx.prefix}.{group.prev}", "scale_min": float(s.min()),
                   "scale_max": float(s.max()), "scale_mean": float(s.mean()),
                   "act_max_before": float(act_max.max()), "act_max_after": float((act_max / s).max())}
        seconds = (time.perf_counter() - t0) / len(group.linears)
        record.modules += [ModuleRecord(f"{ctx.prefix}.{n}", "smoothquant", seconds=seconds, details=dict(details))
                           for n in group.linears]
    return record
