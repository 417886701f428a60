"""GPTQ (Frantar et al. 2022) for MX and per-channel INT weight formats.

The math is :func:`gptq_quantize`, a pure function of a weight ``W`` (out, in), a Hessian ``H``
(in, in) and a quantizer. It runs the study's Algorithm 1 (Sharify et al. 2024): outer blocks of
``b1`` columns split into micro-blocks of ``b2`` columns, ``b2`` a multiple of the MX block size.
Each micro-block is quantized at once from the already-updated weights (so its shared block scales
see the error feedback of the columns before it), its error is pushed onto the rest of the outer
block, and the columns after the outer block get one lazy update. With ``b2 = 1`` and a quantizer
whose per-row scale and zero point are fixed from the original weight, this is exactly the classic
column-wise GPTQ of the reference implementation (IST-DASLab/gptq), which is what per-channel INT
formats use.

With ``U`` the upper Cholesky factor of ``H^-1`` (``H^-1 = U^T U``), quantizing a set ``S`` of
columns at once and correcting the remaining ones optimally (OBS) is
``W[:, rest] -= (W[:, S] - Q[:, S]) @ inv(U[S, S]) @ U[S, rest]``.

``mx_update="column"`` (the recipe's GPTQConfig) runs the standard group-wise GPTQ instead: at the
start of each MX block the block's shared exponents are fixed from the already-updated weights
(:func:`mx_block_quantizer`), then its columns are quantized one at a time with those scales, each
column's error fed to all later columns (``block_quantizer`` of :func:`gptq_quantize`).
``mx_update="static"`` fixes every block's exponents from the weights as they are before the loop
(as llm-compressor and FP-Quant do), then runs the same column-by-column loop.

:func:`apply` is the thin adapter that the pipeline calls for one decoder block.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Callable

import torch

from ...errors import MxlabError
from ...formats import (FORMATS, canonical_format, int_qparams, mx_elements, pack, pack_quantized, quantize,
                         scale_factors)
from ...records import ModuleRecord, StepRecord
from ...steps import GPTQConfig
from ...progress import Pulse, no_pulse, part, spans
from ..context import BlockContext
from .gptq_fused import (ColumnRule, block_exponents, column_rule, fused_available, fused_column_block,
                         fused_supports)
from .hessian import hessian

log = logging.getLogger(__name__)

Quantizer = Callable[[torch.Tensor], torch.Tensor]
# (block's current weights (out, m), index of its first column in W's original order) -> its quantizer, scales fixed
BlockQuantizer = Callable[[torch.Tensor, int], Quantizer]

_DAMP_RETRIES = 4      # each retry multiplies the dampening by 10 when H is not positive definite


def proxy_mse(W: torch.Tensor, Q: torch.Tensor, H: torch.Tensor) -> float:
    """Mean squared output error of Q against W over the calibration inputs behind H = 2 X^T X / n.

    mean_t ||(W - Q) x_t||^2 = tr((W - Q) H (W - Q)^T) / 2; divided by out_features gives the
    per-element output MSE of ``x @ W.T`` vs ``x @ Q.T`` (float activations).
    """
    D = (W.to(H.dtype) - Q.to(H.dtype))  # (out, in)
    return float(((D @ H) * D).sum() / (2 * W.shape[0]))


def inverse_cholesky(H: torch.Tensor, percdamp: float) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor U of (H + damp I)^-1, damp = percdamp * mean(diag H); returns (U, damp).

    If H + damp I is not positive definite (e.g. very few calibration tokens), the dampening is
    raised tenfold, with a warning, up to a few times before giving up.
    """
    damp = percdamp * float(H.diagonal().mean())
    if damp <= 0:
        damp = 1e-8
    for attempt in range(_DAMP_RETRIES + 1):
        Hd = H.clone()
        Hd.diagonal().add_(damp)
        L, info = torch.linalg.cholesky_ex(Hd)
        if int(info) == 0:
            U, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
            if int(info) == 0:
                return U, damp
        if attempt < _DAMP_RETRIES:
            log.warning("GPTQ: Hessian not positive definite with damp=%.3g; retrying with %.3g",
                        damp, damp * 10)
            damp *= 10
    raise MxlabError(f"GPTQ: the Hessian stays singular even with dampening {damp:.3g}; "
                     "use more calibration samples or a larger GPTQ percdamp")


def act_order_permutation(diag: torch.Tensor, block_size: int) -> torch.Tensor:
    """Column order for act-order: descending H diagonal, moving whole format blocks together.

    Columns are permuted in units of ``block_size`` (the MX block; 1 for per-channel formats),
    ranked by the sum of their diagonal, so every MX block stays intact and quantizes with the
    same shared scale as in the original order. A trailing partial block stays last, where the
    format puts it.
    """
    d = diag.shape[0]
    n_full = d // block_size
    score = diag[: n_full * block_size].reshape(n_full, block_size).sum(1)  # (n_full,)
    order = torch.argsort(score, descending=True, stable=True)
    cols = (order[:, None] * block_size + torch.arange(block_size, device=diag.device)).reshape(-1)
    tail = torch.arange(n_full * block_size, d, device=diag.device)
    return torch.cat([cols, tail])


def gptq_quantize(W: torch.Tensor, H: torch.Tensor, quantizer: Quantizer, *, block_size: int = 1,
                  blocksize: int = 128, percdamp: float = 0.01, act_order: bool = False,
                  microblock: int | None = None, block_quantizer: BlockQuantizer | None = None,
                  info: dict | None = None, fused: ColumnRule | None = None,
                  pulse: Pulse = no_pulse, row_groups: list[int] | None = None) -> torch.Tensor:
    """Quantize W (out, in) with GPTQ against H (in, in); returns Q (out, in), on the quantizer's grid.

    ``quantizer`` maps a slab of columns (out, m) to its fake-quantized values; it is called on
    micro-blocks of ``microblock`` columns (default ``block_size``) that start at multiples of
    ``block_size``, so for MX formats (blocks along in_features) every call sees whole format
    blocks and ``quantize(Q) == Q``. For per-channel INT formats pass ``block_size=1`` and a
    quantizer with the scale/zero point of the original W. ``blocksize`` is b1 (rounded up to a
    multiple of the micro-block). Computes in float32 (float64 if W is float64) on W's device.
    ``info``, if given, receives ``damp`` and ``dead_columns``. ``pulse(done)`` is called per micro-block
    or column with the share of columns done (a cancellation point).

    ``block_quantizer`` (group-wise GPTQ; ``quantizer`` is then unused): called at the start of
    each format block with its updated weights (out, <= block_size) and the index of its first
    column in W's original order, it returns the quantizer of that block's columns with the
    block's scales fixed; columns then go one at a time (b2 = 1).

    ``fused`` (a ``gptq_fused.ColumnRule`` of W, CUDA with triton): the column-wise loop of each outer
    block runs as one Triton kernel (INT: ``block_size=1``; MX: the column rule, with
    ``block_quantizer`` given) instead of the torch loop; float32 W only.

    ``row_groups``: sizes of consecutive row ranges of W that are separate linears stacked to share H
    (``batch_linears``). Rows are independent in GPTQ, but a BLAS picks its GEMM kernel by the row count,
    so the updates run per range: each linear gets the bits it would get alone.
    """
    if W.dim() != 2 or H.shape != (W.shape[1], W.shape[1]):
        raise MxlabError(f"gptq_quantize: W must be (out, in) and H (in, in); got {tuple(W.shape)} "
                         f"and {tuple(H.shape)}")
    b2 = microblock or block_size
    if block_quantizer is not None and microblock not in (None, 1):
        raise MxlabError("gptq_quantize: block_quantizer quantizes one column at a time; drop microblock")
    if block_size < 1 or b2 % block_size:
        raise MxlabError(f"gptq_quantize: the micro-block ({b2}) must be a positive multiple of the "
                         f"format block size ({block_size})")
    dtype = torch.promote_types(W.dtype, torch.float32)
    W = W.detach().to(dtype=dtype, copy=True)
    H = H.detach().to(device=W.device, dtype=dtype, copy=True)
    n_cols = W.shape[1]

    # Dead inputs (never active in calibration) carry no information: fix H, zero the weight.
    dead = H.diagonal() == 0
    H[dead, dead] = 1
    W[:, dead] = 0

    perm = act_order_permutation(H.diagonal(), block_size) if act_order else None
    if perm is not None:
        W, H = W[:, perm], H[perm][:, perm]
        if fused is not None and fused.exps is not None:   # static exponents follow their (whole) blocks
            fused = dataclasses.replace(fused, exps=fused.exps[:, perm[::block_size] // block_size].contiguous())

    U, damp = inverse_cholesky(H, percdamp)  # (in, in) upper triangular
    del H
    # b1 a multiple of the format block: a block's columns have had every earlier update, the lazy
    # ones included, when its scales are fixed from them
    b1 = max(b2, math.ceil(blocksize / b2) * b2)
    if block_quantizer is not None:
        b2 = 1
    if fused is not None and (b2 != 1 or dtype != torch.float32 or (fused.kind == "mx") != (block_quantizer is not None)):
        raise MxlabError("gptq_quantize: fused runs the column-wise float32 loop only (INT, or MX with a block_quantizer)")
    Q = torch.empty_like(W)
    quant = quantizer
    for i1 in range(0, n_cols, b1):
        i2 = min(i1 + b1, n_cols)
        W1 = W[:, i1:i2]          # a view: updates below write into W
        U1 = U[i1:i2, i1:i2]
        if fused is not None:     # the whole column loop of this outer block in one kernel
            Q[:, i1:i2], Err1 = fused_column_block(W1, U1, fused, i1)
            _update(W[:, i2:], Err1, U[i1:i2, i2:], row_groups)
            continue
        Err1 = torch.empty_like(W1)  # (out, i2 - i1): scaled errors, for the lazy update
        for j in range(0, i2 - i1, b2):
            pulse((i1 + j) / n_cols)  # a cancellation point per micro-block / column
            k = min(j + b2, i2 - i1)
            if block_quantizer is not None and j % block_size == 0:  # i1 is a multiple of block_size too
                start = i1 + j if perm is None else int(perm[i1 + j])
                quant = block_quantizer(W1[:, j:j + block_size], start)  # this block's scales, fixed from here on
            Qj = quant(W1[:, j:k]).to(dtype)  # (out, k - j), scales from the updated weights
            D = W1[:, j:k] - Qj
            if k - j == 1:
                E = D / U1[j, j]
            else:  # E = D @ inv(U1[j:k, j:k])
                E = _per_rows(lambda d: torch.linalg.solve_triangular(U1[j:k, j:k], d, upper=True, left=False),
                              D, row_groups)
            _update(W1[:, k:], E, U1[j:k, k:], row_groups)
            Q[:, i1 + j:i1 + k] = Qj
            Err1[:, j:k] = E
        _update(W[:, i2:], Err1, U[i1:i2, i2:], row_groups)

    if perm is not None:
        Q = Q[:, torch.argsort(perm)]
    if info is not None:
        info.update(damp=damp, dead_columns=int(dead.sum()), fused=fused is not None)
    return Q


def _update(A: torch.Tensor, E: torch.Tensor, U: torch.Tensor, row_groups: list[int] | None) -> None:
    """A -= E @ U in place, one GEMM per row range of ``row_groups`` (one for all rows when None)."""
    if row_groups is None or len(row_groups) == 1:
        A -= E @ U
        return
    start = 0
    for rows in row_groups:
        A[start:start + rows] -= E[start:start + rows] @ U
        start += rows


def _per_rows(fn: Callable[[torch.Tensor], torch.Tensor], D: torch.Tensor, row_groups: list[int] | None) -> torch.Tensor:
    """fn(D), applied per row range of ``row_groups`` and concatenated (fn acts on rows independently)."""
    if row_groups is None or len(row_groups) == 1:
        return fn(D)
    return torch.cat([fn(d) for d in D.split(row_groups)])


# ----------------------------------------------------------------------------- the pipeline step
def weight_quantizer(W: torch.Tensor, spec) -> tuple[Quantizer, int, Callable]:
    """(quantizer, block_size, pack_fn) for running GPTQ on W (out, in) in ``spec.weights``.

    MX: the format's own quantize on micro-blocks of whole MX blocks. Per-channel INT: each
    column quantized with the (scale, zero_point) of the original W, block size 1, and pack_fn
    packs with those same parameters so the packed weight dequantizes to GPTQ's result.
    """
    f = FORMATS[canonical_format(spec.weights)]
    kw = dict(rounding=spec.rounding)
    if f.kind == "mx":
        mkw = spec.quant_kwargs(f.name)
        # packed as it is (pack_quantized): a rule other than floor need not re-derive Q's exponents
        return (lambda w: quantize(w, f.name, **mkw), spec.block_size,
                lambda q: pack_quantized(q.to(W.dtype), f.name, spec.block_size, -1, spec.scale_rule))
    if f.kind == "int":
        scale, zero_point = int_qparams(W, f, axis=-1)           # (out,) each, from the whole row
        # packed from float32: affine grid values need not be representable in a bf16 model dtype
        return (lambda w: quantize(w, f.name, axis=-1, scale=scale, zero_point=zero_point, **kw), 1,
                lambda q: pack(q, f.name, axis=-1, scale=scale, zero_point=zero_point, **kw))
    raise MxlabError(f"GPTQ supports MX and per-channel int weight formats, not {f.name} (its per-tensor "
                     "scale would change as GPTQ updates the weights); use the rtn step for it")


# Group-wise GPTQ ("column") and the grid. A block's exponent e is fixed from its updated weights;
# each column is then rounded (saturating) onto {s 2^e : s an element value}, so the finished block
# has amax A' <= max_norm 2^e < 2^(emax + 1 + e), and quantize(Q) re-derives e' = floor(log2 A') - emax
# <= e (or the clamp -127 <= e; an all-zero block stays zero). Every point v of the 2^e grid is a
# point of the 2^e' grid, so re-quantization rounds nothing (any rounding mode: the scaled value is
# already an exact grid value), quantize(Q) == Q, and pack stores e' with exact codes:
# - int elements k 2^-mb, |k| <= 2^(mb+1) - 1: v = (k 2^(e-e')) 2^(e'-mb), an integer multiple, and
#   |v| <= A' < 2^(e'+1) keeps |k 2^(e-e')| < 2^(mb+1): no saturation.
# - fp elements: the numbers with <= mb+1 significant bits that are multiples of 2^(min_exp-mb)
#   (subnormals included) and at most max_norm. Scaling by 2^(e-e') >= 1 keeps the first two, and
#   |v| 2^-e' < 2^(emax+1) stays <= max_norm iff max_norm = (2 - 2^-mb) 2^emax, the binade full:
#   true for e2m1 (6), e2m3 (7.5), e3m2 (28), e5m2 (57344); false for e4m3, whose top code is NaN
#   (448, not 480): a block left with 240 2^e alone re-quantizes at e - 1 as 480 -> 448. Refused.
def column_update_supported(f) -> bool:
    """True if group-wise GPTQ's fixed-scale result stays on ``f``'s MX grid (see the comment above)."""
    return f.kind == "mx" and (f.ebits == 0 or f.max_norm == (2 - 2.0 ** -(f.mbits - 2)) * 2.0 ** f.emax)


def mx_block_quantizer(spec, W: torch.Tensor | None = None) -> BlockQuantizer | None:
    """Fixed-scale block quantizer of ``spec.weights`` for mx_update="column" (``W`` None) or "static"
    (exponents of every block fixed from ``W`` (out, in) now); None for per-channel INT.

    The returned function takes one MX block's weights (out, m <= block_size) and the index of its
    first column, fixes the block's exponents per row with ``spec.scale_rule`` (from those weights,
    or from ``W``'s block when static), and returns a quantizer of any of its columns (out, k) onto
    that grid: what ``quantize`` does to the block, with the scales held.
    """
    f = FORMATS[canonical_format(spec.weights)]
    if f.kind == "int":
        return None  # its scale / zero point are per row and fixed already: classic GPTQ either way
    if not column_update_supported(f):
        raise MxlabError(f"GPTQ mx_update='column'/'static' cannot keep {f.name} weights on the format's grid (a "
                         "block whose max shrinks re-quantizes with a finer scale, where its values can exceed "
                         "the largest element); use mx_update='microblock' for it")
    rounding, rule, bs = spec.rounding, spec.scale_rule, spec.block_size

    def exponents(Wb: torch.Tensor) -> torch.Tensor:              # (out, m) -> (out, 1, 1); 128: a NaN block
        return block_exponents(Wb, f, rule, rounding)

    fixed = None
    if W is not None:  # static: the exponents of every block, from the weights before the loop
        fixed = [exponents(W[:, c:c + bs]) for c in range(0, W.shape[1], bs)]

    def fix(Wb: torch.Tensor, start: int = 0) -> Quantizer:
        e = exponents(Wb) if fixed is None else fixed[start // bs].to(Wb.device)
        down, up = scale_factors(e, f)                            # 2^-e, 2^e: as quantize's own

        def quant(cols: torch.Tensor) -> torch.Tensor:            # (out, k) -> (out, k)
            q = mx_elements(cols.float().unsqueeze(-1), down, up, f, rounding)  # (out, k, 1)
            return q.squeeze(-1).to(cols.dtype)
        return quant
    return fix


def _runs(names: list[str], keys: dict[str, str], ctx: BlockContext, batch: bool) -> list[list[str]]:
    """Consecutive linears to quantize together: one Hessian, one spec, one dtype (each alone unless ``batch``)."""
    runs: list[list[str]] = []
    for n in names:
        last = runs[-1][-1] if runs else None
        same = last is not None and keys[last] == keys[n] and ctx.spec(last) == ctx.spec(n) \
            and ctx.linears[last].weight.dtype == ctx.linears[n].weight.dtype
        if batch and same:
            runs[-1].append(n)
        else:
            runs.append([n])
    return runs


@torch.no_grad()
def apply(ctx: BlockContext, config: GPTQConfig) -> StepRecord:
    """GPTQ every linear of the block that no earlier step quantized, in module order.

    Inputs are captured when a linear's turn comes, so later linears see the earlier ones
    already quantized (true-sequential, as the reference's llama.py); q/k/v and gate/up share
    one Hessian. With ``config.batch_linears`` such linears are stacked row-wise into one GPTQ
    problem: GPTQ treats rows independently, so each row gets the same updates as alone.
    """
    record = StepRecord("gptq", ctx.index)
    keys, cached = ctx.input_keys(), (None, None)
    todo = [n for n, lin in ctx.linears.items() if not lin.weight_quantized and lin.spec.weights != "none"]
    for name, lin in ctx.linears.items():
        if name not in todo:
            why = "already quantized by an earlier step" if lin.weight_quantized else "weights 'none'"
            record.notes.append(f"{name}: {why}, skipped")
    fused = config.fused and fused_available()
    if config.fused and not fused:
        record.notes.append("fused: the Triton GPTQ kernel needs CUDA and triton; ran the torch path")
    runs = _runs(todo, keys, ctx, config.batch_linears)
    # each run's share of the step's progress: a linear's column loop costs about out x in^2
    shares = spans([sum(ctx.linears[n].weight.numel() * ctx.linears[n].in_features for n in names) for names in runs])
    for names, (start, stop) in zip(runs, shares):
        t0 = time.perf_counter()
        if cached[0] != keys[names[0]]:
            cached = (None, None)                                 # free the previous Hessian first
            cached = (keys[names[0]], hessian(ctx.input_batches(names[0]), config.hessian_dtype))
        H = cached[1]
        Ws = [ctx.linears[n].weight.data for n in names]
        W = Ws[0] if len(Ws) == 1 else torch.cat(Ws)              # (sum out, in): rows are independent in GPTQ
        spec = ctx.spec(names[0])
        quantizer, block_size, _ = weight_quantizer(W, spec)
        block_quantizer = None if config.mx_update == "microblock" else \
            mx_block_quantizer(spec, W if config.mx_update == "static" else None)
        info: dict = {}
        use_fused = fused and fused_supports(spec, config.mx_update)
        if fused and not use_fused and not any(n.startswith("fused:") for n in record.notes):
            record.notes.append(f"fused: {spec.weights} with mx_update={config.mx_update!r} and scale_rule "
                                f"{spec.scale_rule!r} is not fused (the kernel runs INT, static MX and the floor column rule); "
                                "ran the torch path")
        Q = gptq_quantize(W, H, quantizer, block_size=block_size, blocksize=config.blocksize,
                          percdamp=config.percdamp, act_order=config.act_order,
                          block_quantizer=block_quantizer, info=info,
                          fused=column_rule(W, spec, config.mx_update) if use_fused else None,
                          pulse=part(ctx.pulse, start, stop), row_groups=[w.shape[0] for w in Ws])
        seconds = (time.perf_counter() - t0) / len(names)
        for n, Wn, Qn in zip(names, Ws, Q.split([w.shape[0] for w in Ws])):
            quant_n, _, pack_n = weight_quantizer(Wn, spec)       # per-row parameters: the same rows as W's
            details = {"damp": info["damp"], "dead_columns": info["dead_columns"], "act_order": config.act_order,
                       "blocksize": config.blocksize, "mx_update": config.mx_update, "scale_rule": spec.scale_rule,
                       "microblock": 1 if block_quantizer else block_size, "hessian_dtype": config.hessian_dtype,
                       "batched_with": [m for m in names if m != n], "fused": info.get("fused", False),
                       "proxy_mse_rtn": proxy_mse(Wn, quant_n(Wn), H), "proxy_mse_gptq": proxy_mse(Wn, Qn, H)}
            ctx.linears[n].set_quantized_weight(Qn, packed=pack_n(Qn))
            record.modules.append(ModuleRecord(f"{ctx.prefix}.{n}", "gptq", seconds=seconds, details=details))
    return record
