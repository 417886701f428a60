"""The MX quantizer (OCP Microscaling v1.0): blocks, the shared exponent, element rounding.

Blocks of ``block_size`` elements along ``axis`` share one power-of-two scale 2^e (E8M0). We
reproduce the reference emulator (microsoft/microxcaling, ``mx_ops._quantize_mx``) bit for bit,
with one deliberate difference: floor(log2(.)) is read from the float's exponent bits, not from a
float32 ``log2`` that rounds up just below a power of two. ``shared_exponent`` is the one place
that rule is written; GPTQ's fixed-scale update and the scale statistics call it too.

All math runs in float32; bf16/fp16 inputs get the float32 result cast back. The CPU path works
on cache-sized chunks with in-place ops on a thread pool; CUDA tensors go to the Triton kernel in
``kernels.py`` (same bits). The blocking and rounding helpers here serve the baselines as well.
"""
from __future__ import annotations

import logging
import math

import torch
from torch import Tensor

from .table import FORMATS, ElementFormat, canonical_format, rule_threshold

log = logging.getLogger(__name__)

_CHUNK_ELEMS = 1 << 15  # CPU chunk bound: torch's parallel grain; a chunk's temporaries stay in L2


# ----------------------------------------------------------------------------- bit helpers
def pow2(k: Tensor) -> Tensor:
    """Exact float32 2**k for integer k in [-149, 127] (subnormal results included), built from bits."""
    k = k.to(torch.int32)
    normal = (k + 127).clamp_(min=0) << 23
    sub = torch.ones_like(k) << (k + 149).clamp_(0, 22)
    return torch.where(k >= -126, normal, sub).view(torch.float32)


def round_inplace(a: Tensor, rounding: str, exact: bool = False) -> Tensor:
    """Round non-negative ``a`` in place to an integer.

    MX formats follow the reference's float32 arithmetic: nearest = floor(a + 0.5) (ties away; the
    addition rounds 0.5 - 2^-25 up to 1), even = ties to even with that same value rounding up.
    ``exact=True`` (int and nvfp4 baselines) rounds the real value: no such artifact. floor: toward 0.
    """
    if rounding == "floor":
        return a.floor_()
    if rounding == "even":
        if exact:
            return a.round_()
        quirk = a == 0.49999997  # float32(0.5 - 2^-25), which the reference rounds to 1
        return a.round_().add_(quirk)
    if exact:
        r = a.floor()
        return r.add_(a.sub_(r) >= 0.5)
    return a.add_(0.5).floor_()


# ----------------------------------------------------------------------------- blocks
def blocked(x: Tensor, block_size: int, axis: int) -> tuple[Tensor, int]:
    """View x as (outer*nblocks, block, inner), zero-padding ``axis`` to a multiple of the block."""
    shape = x.shape if x.dim() else (1,)
    x = x.reshape(shape)
    length = shape[axis]
    outer = math.prod(shape[:axis])
    inner = math.prod(shape[axis + 1:])
    x = x.reshape(outer, length, inner)
    pad = (-length) % block_size
    if pad:
        x = torch.nn.functional.pad(x, (0, 0, 0, pad))
    return x.reshape(-1, block_size, inner), pad


def unblocked(y: Tensor, shape: torch.Size, axis: int, pad: int) -> Tensor:
    """Inverse of ``blocked``: (outer*nblocks, block, inner) -> ``shape``."""
    if not shape:
        return y.reshape(-1)[:1].reshape(shape)
    outer = math.prod(shape[:axis])
    y = y.reshape(outer, -1, y.shape[-1])
    if pad:
        y = y[:, : shape[axis]]
    return y.reshape(shape)


# ----------------------------------------------------------------------------- the shared scale
def shared_exponent(amax: Tensor, f: ElementFormat | str, scale_rule: str = "floor") -> Tensor:
    """Per-block scale exponent e (int32) from amax (float32); 128 marks a NaN block (Inf/NaN inside).

    E = floor(log2(amax)) and the fraction f = amax / 2^E are read exactly from the float's bits
    (subnormal amax normalised; amax == 0 counts as 2^-126, as in the reference). Then
    ``floor``: e = E - emax (OCP MX v1.0); ``ceil``: + 1 when f > 1; ``even``: + 1 when f rounded to
    m+1 significant bits is 2; ``rceil``: the smallest e with amax <= max_norm 2^e. e is clamped to
    [-127, 127]. ``mse`` is a search over element values (``search_exponent``); here it gives floor's e.
    ``f``: an ElementFormat or a format name.
    """
    if isinstance(f, str):
        f = FORMATS[canonical_format(f)]
    bits = amax.view(torch.int32) & 0x7FFFFFFF  # a NaN from a reduction may carry a sign bit
    biased = bits >> 23
    frac = bits & 0x7FFFFF
    big = torch.where(amax == 0, -126, biased - 127)
    if scale_rule in ("floor", "mse"):
        e = big - f.emax  # a subnormal amax reads as E = -127: clamped below like its exact E
    else:
        sub = (biased == 0) & (frac != 0)
        lead = (frac.float().view(torch.int32) >> 23) - 127  # floor(log2(frac)), exact: frac < 2^24
        frac = torch.where(sub, (frac << (23 - lead).clamp_(0, 23)) & 0x7FFFFF, frac)
        e = torch.where(sub, lead - 149, big) - f.emax + (frac > rule_threshold(f, scale_rule)).to(torch.int32)
    e.clamp_(-127, 127)
    return e.masked_fill_(biased == 255, 128)


def search_exponent(xb: Tensor, e: Tensor, f: ElementFormat, rounding: str) -> Tensor:
    """``mse`` rule: per block of xb (N, block, inner), floor's e or e + 1, whichever quantizes the block
    with the smaller squared error S (float64 sums of the exact squared errors). A tie keeps e: S0 - S1 within
    block 2^-52 (S0 + S1), more than the sums' rounding in any order, so the choice does not depend on the
    order (the GPU kernel sums in another one) where the two errors are equal in exact arithmetic.

    e - 1 is never a candidate: it saturates the block maximum (amax / 2^(e-1) >= 2^(emax+1) > max_norm).
    """
    e1 = torch.where(e == 128, e, (e + 1).clamp_(max=127))
    errs = []
    for cand in (e, e1):
        down, up = scale_factors(cand, f)
        q = mx_elements(xb.float(), down, up, f, rounding)
        errs.append((q.double() - xb.double()).square_().nan_to_num_(0.0).sum(dim=1, keepdim=True))
    return torch.where(errs[0] - errs[1] > (errs[0] + errs[1]) * (xb.shape[1] * 2.0 ** -52), e1, e)


def block_amax(xb: Tensor) -> Tensor:
    """max |x| per block of xb (N, block, inner) as float32 (N, 1, inner): an integer max of the
    magnitude bits (one pass, no float |x| temporary; NaN and Inf bits win, as they should)."""
    ints = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}[xb.dtype]
    mag = xb.view(ints) & torch.iinfo(ints).max
    return mag.amax(dim=1, keepdim=True).view(xb.dtype).float()


def scale_factors(e: Tensor, f: ElementFormat) -> tuple[Tensor, Tensor]:
    """(down, up) multipliers from ``shared_exponent``'s e: down = 2^-e (onto the element grid), up = 2^e
    (2^(e - mb) for integer elements, whose codes ``mx_elements`` keeps as integers); NaN block: 1, NaN."""
    nan_block = e == 128
    ec = e.masked_fill(nan_block, 0)
    down = pow2(-ec)  # 2^-e, may be subnormal (e = 127)
    up = pow2(ec - (f.mbits - 2 if f.ebits == 0 else 0)).masked_fill_(nan_block, float("nan"))
    return down, up


def element_unit(e: Tensor, f: ElementFormat) -> Tensor:
    """The ``up`` multiplier that leaves ``mx_elements`` on the element grid (1, or 2^-mb for integer
    elements); NaN for NaN blocks (e == 128)."""
    unit = torch.full(e.shape, 2.0 ** -(f.mbits - 2 if f.ebits == 0 else 0), device=e.device)
    return unit.masked_fill_(e == 128, float("nan"))


# ----------------------------------------------------------------------------- elements
def mx_elements(xc: Tensor, down: Tensor, up: Tensor, f: ElementFormat, rounding: str) -> Tensor:
    """Quantize one chunk xc (n, block, inner) float32 given its blocks' ``scale_factors`` (n, 1, inner)."""
    mb = f.mbits - 2
    if f.ebits == 0:
        # x / 2^e, then + 0.0 (maps -0.0, from the input or an underflow, to +0.0 as the reference's
        # sign() does), then * 2^mb (exact)
        t = torch.mul(xc, down).add_(0.0).mul_(2.0 ** mb)
        t.clamp_(-f.max_norm * 2 ** mb, f.max_norm * 2 ** mb)  # saturating first = clamping after rounding
        a = round_inplace(t.abs(), rounding)
    else:
        t = torch.mul(xc, down).add_(0.0).clamp_(-f.max_norm, f.max_norm)  # v = x / 2^e
        a = t.abs()
        # step = 2^(p - mb), p = max(floor(log2|v|), min_exp): 2^floor(log2|v|) is |v| with its mantissa
        # bits cleared (0.0 for subnormals and zero, which the clamp lifts to 2^min_exp)
        step = (a.view(torch.int32) & 0x7F800000).view(torch.float32)
        step.clamp_(min=2.0 ** f.min_exp).mul_(2.0 ** -mb)
        a = round_inplace(a.div_(step), rounding).mul_(step)  # exact: power-of-two divisor
    return a.copysign_(t).mul_(up)


# ----------------------------------------------------------------------------- whole tensors
_POOL: list = []


def _pool():
    """Threads for CPU chunks: torch ops on chunks below its 32768-element grain run inline, and the
    GIL is released inside them, so chunks proceed in parallel without OpenMP (whose barriers crawl
    on an oversubscribed machine)."""
    n = torch.get_num_threads()
    if not _POOL or _POOL[0]._max_workers != n:
        from concurrent.futures import ThreadPoolExecutor

        _POOL[:] = [ThreadPoolExecutor(n, thread_name_prefix="mxlab-quant")]
    return _POOL[0]


def _mx_torch(x: Tensor, f: ElementFormat, block_size: int, axis: int, rounding: str,
              want_exponents: bool = False, scale_rule: str = "floor") -> tuple[Tensor, Tensor | None]:
    """MX fake quantization in torch ops (any device); optionally also the block exponents e."""
    shape, dtype = x.shape, x.dtype
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        x = x.float()  # e.g. float64: the math is float32
    xb, pad = blocked(x, block_size, axis)  # (N, block, inner)
    e = shared_exponent(block_amax(xb), f, scale_rule)  # (N, 1, inner), all blocks at once
    if scale_rule == "mse":
        e = search_exponent(xb, e, f, rounding)
    down, up = scale_factors(e, f)
    if want_exponents:  # pack wants element values x / 2^e on the grid (a value that overflows to 2^128 too)
        up = element_unit(e, f)
    out = torch.empty(xb.shape, dtype=torch.float32 if want_exponents else dtype, device=x.device)
    n = xb.shape[0]
    # CPU: chunks just under torch's 32768-element parallel grain run inline in the calling thread
    rows = max(1, (_CHUNK_ELEMS - 1) // (block_size * xb.shape[2])) if x.device.type == "cpu" else n

    inference = torch.is_inference_mode_enabled()  # thread-local: pool threads must enter it too

    def work(lo_hi: tuple[int, int]) -> None:
        with torch.inference_mode(inference):
            for i in range(lo_hi[0], lo_hi[1], rows):
                j = min(i + rows, lo_hi[1])
                out[i:j] = mx_elements(xb[i:j].float(), down[i:j], up[i:j], f, rounding)

    n_chunks = -(-n // rows)
    workers = min(torch.get_num_threads(), n_chunks // 4)
    if workers > 1:
        per = -(-n_chunks // workers) * rows  # contiguous ranges of whole chunks, one per thread
        list(_pool().map(work, [(i, min(n, i + per)) for i in range(0, n, per)]))
    else:
        work((0, n))
    res = unblocked(out, shape, axis, pad)
    return (res, e) if want_exponents else (res.to(dtype), None)


def mx_quantize(x: Tensor, f: ElementFormat, block_size: int, axis: int, rounding: str,
                scale_rule: str = "floor") -> Tensor:
    """MX fake quantization of x (same shape and dtype; axis non-negative): Triton on CUDA, else torch."""
    if x.is_cuda:
        kernels = _kernels()
        if kernels is not None:
            return kernels.mx_quantize(x, f, block_size, axis, rounding, scale_rule=scale_rule)
    return _mx_torch(x, f, block_size, axis, rounding, scale_rule=scale_rule)[0]


def mx_quantize_exponents(x: Tensor, f: ElementFormat, block_size: int, axis: int, rounding: str,
                          scale_rule: str = "floor") -> tuple[Tensor, Tensor]:
    """(float32 element values x / 2^e on the format's grid, block exponents e (N, 1, inner) of ``blocked``)
    for packing; NaN blocks are NaN."""
    return _mx_torch(x, f, block_size, axis, rounding, want_exponents=True, scale_rule=scale_rule)


_KERNELS_STATE: dict[str, object] = {}


def _kernels():
    """The Triton module for CUDA tensors, or None (logged once) when Triton is missing."""
    if "mod" not in _KERNELS_STATE:
        try:
            from . import kernels
            _KERNELS_STATE["mod"] = kernels if kernels.available() else None
        except ImportError as exc:  # triton not installed: the torch path gives the same bits, slower
            _KERNELS_STATE["mod"] = None
            log.warning("Triton unavailable (%s); MX quantization on CUDA uses the slower torch path", exc)
    return _KERNELS_STATE["mod"]
