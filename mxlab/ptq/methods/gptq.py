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

:func:`apply` is the thin adapter that the pipeline calls for one decoder block.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Callable, Iterable

import torch

from ...errors import MxlabError
from ...formats import (FORMATS, block_amax, canonical_format, int_qparams, mx_elements, pack, quantize,
                         scale_factors, shared_exponent)
from ...records import ModuleRecord, StepRecord
from ...steps import GPTQConfig
from ...progress import Pulse, no_pulse, part, spans
from ..context import BlockContext

log = logging.getLogger(__name__)

Quantizer = Callable[[torch.Tensor], torch.Tensor]
BlockQuantizer = Callable[[torch.Tensor], Quantizer]  # block's weights -> quantizer with its scales fixed

_HESSIAN_CHUNK = 8192  # tokens per X^T X pass: bounds the float32 copy of a bf16 input chunk
_DAMP_RETRIES = 4      # each retry multiplies the dampening by 10 when H is not positive definite


def hessian(x: torch.Tensor | Iterable[torch.Tensor]) -> torch.Tensor:
    """H = 2 X^T X / n (in, in), float32, from inputs x (n_tokens, in) or a stream of (n_b, in) batches."""
    chunks = (x[i:i + _HESSIAN_CHUNK] for i in range(0, x.shape[0], _HESSIAN_CHUNK)) \
        if isinstance(x, torch.Tensor) else x
    H, n = None, 0
    for c in chunks:
        c = c.reshape(-1, c.shape[-1]).to(torch.float32)  # (chunk, in)
        if H is None:
            H = torch.zeros(c.shape[1], c.shape[1], dtype=torch.float32, device=c.device)
        H.addmm_(c.T, c)
        n += c.shape[0]
    if H is None or n == 0:
        raise MxlabError("GPTQ: no calibration inputs to build the Hessian from; check the calibration set")
    return H.mul_(2.0 / n)


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
                  info: dict | None = None, pulse: Pulse = no_pulse) -> torch.Tensor:
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
    each format block with its updated weights (out, <= block_size), it returns the quantizer of
    that block's columns with the block's scales fixed; columns then go one at a time (b2 = 1).
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

    U, damp = inverse_cholesky(H, percdamp)  # (in, in) upper triangular
    del H
    # b1 a multiple of the format block: a block's columns have had every earlier update, the lazy
    # ones included, when its scales are fixed from them
    b1 = max(b2, math.ceil(blocksize / b2) * b2)
    if block_quantizer is not None:
        b2 = 1
    Q = torch.empty_like(W)
    quant = quantizer
    for i1 in range(0, n_cols, b1):
        i2 = min(i1 + b1, n_cols)
        W1 = W[:, i1:i2]          # a view: updates below write into W
        U1 = U[i1:i2, i1:i2]
        Err1 = torch.empty_like(W1)  # (out, i2 - i1): scaled errors, for the lazy update
        for j in range(0, i2 - i1, b2):
            pulse((i1 + j) / n_cols)  # a cancellation point per micro-block / column
            k = min(j + b2, i2 - i1)
            if block_quantizer is not None and j % block_size == 0:  # i1 is a multiple of block_size too
                quant = block_quantizer(W1[:, j:j + block_size])  # scales of this block, fixed from here on
            Qj = quant(W1[:, j:k]).to(dtype)  # (out, k - j), scales from the updated weights
            D = W1[:, j:k] - Qj
            if k - j == 1:
                E = D / U1[j, j]
            else:  # E = D @ inv(U1[j:k, j:k])
                E = torch.linalg.solve_triangular(U1[j:k, j:k], D, upper=True, left=False)
            W1[:, k:] -= E @ U1[j:k, k:]
            Q[:, i1 + j:i1 + k] = Qj
            Err1[:, j:k] = E
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]

    if perm is not None:
        Q = Q[:, torch.argsort(perm)]
    if info is not None:
        info.update(damp=damp, dead_columns=int(dead.sum()))
    return Q


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
        return (lambda w: quantize(w, f.name, spec.block_size, axis=-1, **kw), spec.block_size,
                lambda q: pack(q.to(W.dtype), f.name, spec.block_size, axis=-1, **kw))  # grid fits bf16
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


def mx_block_quantizer(spec) -> BlockQuantizer | None:
    """Fixed-scale block quantizer of ``spec.weights`` for mx_update="column"; None for per-channel INT.

    The returned function takes one MX block's weights (out, m <= block_size), fixes their shared
    exponents per row with formats' own rule, and returns a quantizer of any of its columns
    (out, k) onto that grid: what ``quantize`` does to the block, with the scales held.
    """
    f = FORMATS[canonical_format(spec.weights)]
    if f.kind == "int":
        return None  # its scale / zero point are per row and fixed already: classic GPTQ either way
    if not column_update_supported(f):
        raise MxlabError(f"GPTQ mx_update='column' cannot keep {f.name} weights on the format's grid (a block "
                         "whose max shrinks re-quantizes with a finer scale, where its values can exceed the "
                         "largest element); use mx_update='microblock' for it")
    rounding = spec.rounding

    def fix(Wb: torch.Tensor) -> Quantizer:
        xb = Wb if Wb.dtype in (torch.float32, torch.bfloat16, torch.float16) else Wb.float()
        e = shared_exponent(block_amax(xb.unsqueeze(-1)), f)    # (out, 1, 1); 128: a NaN block
        down, up = scale_factors(e, f)                            # 2^-e, 2^e: as quantize's own

        def quant(cols: torch.Tensor) -> torch.Tensor:            # (out, k) -> (out, k)
            q = mx_elements(cols.float().unsqueeze(-1), down, up, f, rounding)  # (out, k, 1)
            return q.squeeze(-1).to(cols.dtype)
        return quant
    return fix


def _share_keys(ctx) -> dict[str, str]:
    """Linear name -> key of its input: linears of one scaling group read the same input (one Hessian)."""
    keys = {n: n for n in ctx.linears}
    for group in ctx.groups:
        for n in group.linears:
            if n in keys:
                keys[n] = f"group:{group.prev}"
    return keys


@torch.no_grad()
def apply(ctx: BlockContext, config: GPTQConfig) -> StepRecord:
    """GPTQ every linear of the block that no earlier step quantized, in module order.

    Inputs are captured when a linear's turn comes, so later linears see the earlier ones
    already quantized (true-sequential, as the reference's llama.py); q/k/v and gate/up share
    one Hessian.
    """
    record = StepRecord("gptq", ctx.index)
    keys, cached = _share_keys(ctx), (None, None)
    todo = [n for n, lin in ctx.linears.items() if not lin.weight_quantized and lin.spec.weights != "none"]
    for name, lin in ctx.linears.items():
        if name not in todo:
            why = "already quantized by an earlier step" if lin.weight_quantized else "weights 'none'"
            record.notes.append(f"{name}: {why}, skipped")
    # each linear's share of the step's progress: its column loop costs about out x in^2
    shares = spans([ctx.linears[n].weight.numel() * ctx.linears[n].in_features for n in todo])
    for name, (start, stop) in zip(todo, shares):
        lin = ctx.linears[name]
        t0 = time.perf_counter()
        if cached[0] != keys[name]:
            cached = (None, None)                                 # free the previous Hessian first
            cached = (keys[name], hessian(ctx.input_batches(name)))
        H = cached[1]
        W = lin.weight.data
        quantizer, block_size, pack_fn = weight_quantizer(W, lin.spec)
        block_quantizer = mx_block_quantizer(lin.spec) if config.mx_update == "column" else None
        info: dict = {}
        Q = gptq_quantize(W, H, quantizer, block_size=block_size, blocksize=config.blocksize,
                          percdamp=config.percdamp, act_order=config.act_order,
                          block_quantizer=block_quantizer, info=info, pulse=part(ctx.pulse, start, stop))
        details = {"damp": info["damp"], "dead_columns": info["dead_columns"], "act_order": config.act_order,
                   "blocksize": config.blocksize, "mx_update": config.mx_update,
                   "microblock": 1 if block_quantizer else block_size,
                   "proxy_mse_rtn": proxy_mse(W, quantizer(W), H), "proxy_mse_gptq": proxy_mse(W, Q, H)}
        lin.set_quantized_weight(Q, packed=pack_fn(Q))
        record.modules.append(ModuleRecord(f"{ctx.prefix}.{name}", "gptq",
                                           seconds=time.perf_counter() - t0, details=details))
    return record
