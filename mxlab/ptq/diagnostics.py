"""Diagnostics the pipeline measures around every step: output error per Linear, sampled inputs.

Measured on a seeded subset of whole calibration batches (``diagnostic_batches``), so a big
calibration set does not multiply the cost of the records; the methods always see every batch.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional

import torch
import torch.nn.functional as F

from ..records import ModuleRecord, StepRecord
from .methods.hessian import tf32_matmul

# Operands in these dtypes are exact in TF32 (at most 10 fraction bits, 8 exponent bits; MX-quantized values
# stored in them too), so a TF32 tensor-core GEMM of them differs from the float32 one only in the order of
# the float32 sums: the diagnostics' GEMMs run there on CUDA, ~4x faster for a bf16 model.
TF32_EXACT = (torch.bfloat16, torch.float16)

if TYPE_CHECKING:
    from .context import BlockContext


def mse_sqnr(err: float, ref: float, count: int) -> tuple[float, float]:
    """(mean squared error, SQNR in dB) from the summed squared error and reference over ``count`` elements."""
    if count == 0:
        return math.nan, math.nan
    sqnr = math.inf if err == 0 else (10 * math.log10(ref / err) if ref > 0 else -math.inf)
    return err / count, sqnr


def diagnostic_batches(hidden: list[torch.Tensor], n_tokens: Optional[int], seed: int) -> list[int]:
    """Indices (sorted) of a seeded random choice of calibration batches holding >= ``n_tokens`` tokens."""
    sizes = [h.shape[:-1].numel() for h in hidden]
    if n_tokens is None or n_tokens >= sum(sizes):
        return list(range(len(hidden)))
    chosen, got = [], 0
    for b in torch.randperm(len(hidden), generator=torch.Generator().manual_seed(seed)).tolist():
        if got >= n_tokens:
            break
        chosen.append(b)
        got += sizes[b]
    return sorted(chosen)


def measure(ctx: "BlockContext", names: Optional[list[str]] = None, stats_tokens: int = 0
            ) -> tuple[dict[str, tuple[float, float]], dict[str, torch.Tensor]]:
    """One pass over the diagnostic batches: (mse, sqnr_db) per linear of its quantized output against
    its FP output and, when ``stats_tokens`` > 0, each linear's inputs evenly subsampled to at most that
    many rows ((n, in) float32 on ``ctx.device``)."""
    names = list(ctx.linears) if names is None else names
    acc: dict[str, list] = {}           # name -> [sum err^2, sum ref^2 (float64, on device), count]
    wqs: dict[str, torch.Tensor] = {}          # name -> W_q (out, in) in the model dtype
    sizes = [ctx.hidden[b].shape[:-1].numel() for b in ctx.diag_batches]
    starts = dict(zip(ctx.diag_batches, [sum(sizes[:i]) for i in range(len(sizes))]))
    total = sum(sizes)
    keep = None
    if 0 < stats_tokens < total:
        keep = torch.linspace(0, total - 1, stats_tokens).round().long()
    parts: dict[str, list[torch.Tensor]] = {n: [] for n in names}

    def fn(name, x, m, b):
        if stats_tokens > 0:
            xs = x
            if keep is not None:
                idx = keep[(keep >= starts[b]) & (keep < starts[b] + x.shape[0])] - starts[b]
                xs = x[idx.to(x.device)]
            parts[name].append(xs.clone())
        if name not in wqs:
            wqs[name] = m.weight if m.weight_quantized else m.quantize_weight_rtn()
        w_ref = m.weight if m.weight_fp is None else m.weight_fp   # the FP weight, before clipping too
        bias = None if m.bias is None else m.bias.float()
        # float32 outputs (n, out): the errors can be far below bf16's resolution of the outputs;
        # float32 weight copies are made per batch (few batches) so that only one lives at a time
        xq = m.quantize_input(x)
        exact = x.is_cuda and all(t.dtype in TF32_EXACT for t in (x, xq, w_ref, wqs[name]))
        with tf32_matmul(exact):
            y_ref = F.linear(x.float(), w_ref.float(), bias)
            err = F.linear(xq.float(), wqs[name].float(), bias).sub_(y_ref)
        a = acc.setdefault(name, [0, 0, 0])       # sums stay on the device: no sync per batch
        a[0] = a[0] + err.square().sum(dtype=torch.float64)
        a[1] = a[1] + y_ref.square().sum(dtype=torch.float64)
        a[2] += y_ref.numel()

    ctx.forward_hooked(names, fn, batches=ctx.diag_batches)
    wqs.clear()
    xs = {n: torch.cat(p).float() for n, p in parts.items() if p} if stats_tokens > 0 else {}
    errors = {n: mse_sqnr(float(acc[n][0]), float(acc[n][1]), acc[n][2]) if n in acc else (math.nan, math.nan)
              for n in names}
    return errors, xs


def fill_errors(record: StepRecord, prefix: str, before: dict, after: dict) -> None:
    """Put the pipeline's before/after errors into the record, adding rows for untouched modules."""
    by_name = {m.module: m for m in record.modules}
    for name in before:
        full = f"{prefix}.{name}"
        m = by_name.get(full) or by_name.get(name)
        if m is None:
            m = ModuleRecord(module=full, step=record.step)
            record.modules.append(m)
        m.module = full
        m.mse_before, m.sqnr_before = before[name]
        m.mse_after, m.sqnr_after = after[name]
