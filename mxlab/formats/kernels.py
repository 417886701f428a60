"""Triton GPU path of MX fake quantization: one pass, read once, write once, same bits as mx.py.

Imported lazily by ``mx.mx_quantize`` for CUDA tensors (Triton is absent on CPU-only machines).
Each program takes NB blocks of BLOCK elements: a (NB, KP) tile, KP = BLOCK rounded up to a power
of two. All exponent work is integer bit manipulation on the float32 bits, so there is no log2 and
no division; every float multiply is by an exact power of two. Arithmetic is IEEE (Triton flushes
subnormals only inside libdevice calls, which this kernel avoids except floor on values >= 0).

Element quantization is one formula for every MX format: integer formats are the float formula
with min_exp = 0, since their scaled values lie below 2 (p is then always 0, step 2^-mbits).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

_ROUND = {"nearest": 0, "even": 1, "floor": 2}
RULE_IDS = {"floor": 0, "ceil": 1, "even": 2, "rceil": 3, "mse": 4}  # the kernel's scale-rule ids
NB_DEFAULT = 64  # blocks per program (with block 32: 2048 elements)
WARPS_DEFAULT = 4


def available() -> bool:
    """True when CUDA is usable (Triton imported, or this module would not have loaded)."""
    return torch.cuda.is_available()


@triton.jit
def _pow2(k):
    """Exact float32 2**k for int32 k in [-149, 127], from bits (subnormal results included)."""
    normal = tl.maximum(k + 127, 0) << 23
    sub = tl.full(k.shape, 1, tl.int32) << tl.minimum(tl.maximum(k + 149, 0), 22)
    return tl.where(k >= -126, normal, sub).to(tl.float32, bitcast=True)


@triton.jit
def _elements(x, e, mb, min_exp, max_norm, ROUND: tl.constexpr):
    """Quantize a (NB, KP) tile x given its blocks' exponents e (NB,): the values, signed, before NaN blocks."""
    v = x * _pow2(-e)[:, None]
    v = tl.minimum(tl.maximum(v, -max_norm), max_norm)  # saturate first: same as clamping after rounding
    eb = tl.maximum((v.to(tl.int32, bitcast=True) >> 23) & 0xFF, 127 + min_exp)  # biased p
    t = v * ((254 + mb - eb) << 23).to(tl.float32, bitcast=True)  # v * 2^(mb - p)
    a = tl.abs(t)
    if ROUND == 0:  # ties away, as floor(a + 0.5) in float32 (the reference's arithmetic)
        r = tl.floor(a + 0.5)
    elif ROUND == 1:  # ties to even, from the same floor(a + 0.5); r - a is exact for a >= 0.5
        r = tl.floor(a + 0.5)
        odd = (r - 2.0 * tl.floor(r * 0.5)) == 1.0
        r = tl.where(((r - a) == 0.5) & (a >= 0.5) & odd, r - 1.0, r)
    else:
        r = tl.floor(a)
    out = (r * ((eb - mb) << 23).to(tl.float32, bitcast=True)) * _pow2(e)[:, None]
    # sign(t) * |.| (-0.0 only from negative t, as the reference), set as a bit: Triton's -x is 0 - x,
    # which would turn -0.0 into +0.0
    return (out.to(tl.int32, bitcast=True) | ((t < 0).to(tl.int32) << 31)).to(tl.float32, bitcast=True)


@triton.jit
def _mx_kernel(x_ptr, y_ptr, n_blocks, L, blocks_per_row, mb, min_exp, emax, max_norm, thresh,
               BLOCK: tl.constexpr, KP: tl.constexpr, NB: tl.constexpr, ROUND: tl.constexpr,
               CONTIG: tl.constexpr, MASKED: tl.constexpr, RULE: tl.constexpr):
    pid = tl.program_id(0)
    b = pid.to(tl.int64) * NB + tl.arange(0, NB).to(tl.int64)  # (NB,) block ids
    j = tl.arange(0, KP)  # (KP,) position in the block
    if CONTIG:  # rows are whole blocks: block b is elements [b*BLOCK, (b+1)*BLOCK)
        offs = b[:, None] * BLOCK + j[None, :]
        mask = (b[:, None] < n_blocks) & (j[None, :] < BLOCK)
    else:  # the last block of each row is short (zero-padded in the math)
        col = (b % blocks_per_row)[:, None] * BLOCK + j[None, :]
        offs = (b // blocks_per_row)[:, None] * L + col
        mask = (b[:, None] < n_blocks) & (j[None, :] < BLOCK) & (col < L)
    if MASKED:
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    else:
        x = tl.load(x_ptr + offs).to(tl.float32)

    # shared exponent from the integer max of |x| bits: NaN/Inf (exponent 255) beat every finite value
    amax_bits = tl.max(x.to(tl.int32, bitcast=True) & 0x7FFFFFFF, axis=1)  # (NB,)
    biased = amax_bits >> 23
    big = tl.where(amax_bits == 0, -126, biased - 127)
    if RULE == 0 or RULE == 4:  # floor (and mse's first candidate)
        e = big - emax
    else:  # exact E and fraction (subnormal amax normalised); + 1 when the fraction passes the rule's threshold
        frac = amax_bits & 0x7FFFFF
        sub = (biased == 0) & (frac != 0)
        lead = (frac.to(tl.float32).to(tl.int32, bitcast=True) >> 23) - 127  # floor(log2(frac))
        shift = tl.minimum(tl.maximum(23 - lead, 0), 23)
        frac = tl.where(sub, (frac << shift) & 0x7FFFFF, frac)
        e = tl.where(sub, lead - 149, big) - emax + (frac > thresh).to(tl.int32)
    e = tl.minimum(tl.maximum(e, -127), 127)
    nan_block = biased == 255
    e = tl.where(nan_block, 0, e)

    out = _elements(x, e, mb, min_exp, max_norm, ROUND)
    if RULE == 4:  # mse: e + 1 where it quantizes the block with a smaller squared error (float64 sums)
        e1 = tl.minimum(e + 1, 127)
        out1 = _elements(x, e1, mb, min_exp, max_norm, ROUND)
        d0 = out.to(tl.float64) - x.to(tl.float64)
        d1 = out1.to(tl.float64) - x.to(tl.float64)
        better = tl.sum(d1 * d1, axis=1) < tl.sum(d0 * d0, axis=1)
        out = tl.where(better[:, None], out1, out)
    out = tl.where(nan_block[:, None], float("nan"), out)
    out = out.to(y_ptr.dtype.element_ty)
    if MASKED:
        tl.store(y_ptr + offs, out, mask=mask)
    else:
        tl.store(y_ptr + offs, out)


def mx_quantize(x: torch.Tensor, f, block_size: int, axis: int, rounding: str,
                nb: int = NB_DEFAULT, num_warps: int = WARPS_DEFAULT, scale_rule: str = "floor") -> torch.Tensor:
    """MX fake quantization of a CUDA tensor (f: formats.ElementFormat, axis non-negative)."""
    from .mx import rule_threshold

    last = x.dim() - 1 if x.dim() else 0
    xm = x.reshape(1) if x.dim() == 0 else x
    xm = (xm.movedim(axis, -1) if axis != last else xm).contiguous()
    y = torch.empty_like(xm)
    L = xm.shape[-1]
    rows = xm.numel() // L
    blocks_per_row = triton.cdiv(L, block_size)
    n_blocks = rows * blocks_per_row
    kp = triton.next_power_of_2(block_size)
    nb = max(1, min(nb, 8192 // kp))  # keep a tile at most 8192 elements
    contig = L % block_size == 0
    masked = not (contig and kp == block_size and n_blocks % nb == 0)
    min_exp = f.min_exp if f.ebits else 0
    grid = (triton.cdiv(n_blocks, nb),)
    _mx_kernel[grid](xm, y, n_blocks, L, blocks_per_row, f.mbits - 2, min_exp, f.emax, float(f.max_norm),
                     rule_threshold(f, scale_rule), BLOCK=block_size, KP=kp, NB=nb, ROUND=_ROUND[rounding],
                     CONTIG=contig, MASKED=masked, RULE=RULE_IDS[scale_rule], num_warps=num_warps)
    if axis != last:
        y = y.movedim(-1, axis).contiguous()
    return y.reshape(x.shape)
