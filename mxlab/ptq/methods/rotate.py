"""Rotate: a block-diagonal Hadamard rotation of each quantized Linear's input space.

W -> W R offline (and its FP error reference with it), x -> x R online in the layer, before the
activation quantizer (``QuantLinear.rotation``); R R = I, so without quantization the function is
unchanged. Steps after it see the rotated inputs (``BlockContext.inputs``), so AWQ scales and the
GPTQ Hessian live in the rotated basis.
"""
from __future__ import annotations

import time

import torch

from ...records import ModuleRecord, StepRecord
from ...steps import RotateConfig
from ..context import BlockContext
from ..rotation import rotate_blocks


def block_peak_ratio(w: torch.Tensor, size: int) -> float:
    """Mean over blocks of ``size`` along in_features of max|w| / rms(w): how peaked the blocks are
    (sqrt(size) for one outlier alone, ~sqrt(2 ln size) + for Gaussian blocks)."""
    wb = w.detach().float().reshape(w.shape[0], -1, size)
    rms = wb.pow(2).mean(-1).sqrt()
    ok = rms > 0
    return float((wb.abs().amax(-1)[ok] / rms[ok]).mean()) if bool(ok.any()) else 0.0


@torch.no_grad()
def apply(ctx: BlockContext, config: RotateConfig) -> StepRecord:
    """Rotate the input space of every linear of the block (size: the config's, else its MX block size)."""
    record = StepRecord("rotate", ctx.index)
    for name, lin in ctx.linears.items():
        size = config.size or lin.spec.block_size
        if lin.weight_quantized:
            record.notes.append(f"{name}: already quantized, not rotated")
            continue
        if lin.in_features % size:
            record.notes.append(f"{name}: {lin.in_features} input features are not a multiple of {size}, "
                                "not rotated")
            continue
        t0 = time.perf_counter()
        before = block_peak_ratio(lin.weight, size)
        lin.weight.data.copy_(rotate_blocks(lin.weight.data, size))
        if lin.weight_fp is not None:
            lin.weight_fp.copy_(rotate_blocks(lin.weight_fp, size))
        lin.rotation = size
        record.modules.append(ModuleRecord(f"{ctx.prefix}.{name}", "rotate", seconds=time.perf_counter() - t0,
                                           details={"size": size, "weight_peak_ratio_before": before,
                                                    "weight_peak_ratio_after": block_peak_ratio(lin.weight, size)}))
    return record
