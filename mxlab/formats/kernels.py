"""Triton GPU path of MX fake quantization: one pass, read once, write once, same bits as mx.py.

Imported lazily by ``mx.mx_quantize`` for CUDA tensors (Triton is absent on CPU-only machines).
Each program takes NB blocks of BLOCK elements: a (NB, KP) tile, KP = BLOCK rounded up to a power
of two. All exponent work is integer bit manipulation on the float32 bits, so there is no log2 and
no division; every float multiply is by an exact power of two. Arithmetic is IEEE (Triton flushes
subnormals only inside libdevice calls, which this kernel avoids except floor on values >= 0).

Element quantization is one formula for every MX format: integer formats are the float formula
with min_exp = 0, since their scaled values lie below 2 (p is then always 0, step 2^-mbits). Two
implementations give the same bits: ``quant_elements`` follows the reference's steps (the GPTQ column
kernel uses it); ``quant_scaled`` is the tile kernels' path, with fewer ops per element, because on an
H200 this kernel is bound by its ALUs, not by memory (``benchmarks/kernel_alu.py`` measures it;
``benchmarks/kernel_sass.py`` counts the instructions without a GPU).
"""
from __future__ import annotations

import functools
import math
import os

import torch
import triton
import triton.language as tl

from .table import rule_threshold

_ROUND = {"nearest": 0, "even": 1, "floor": 2}
RULE_IDS = {"floor": 0, "ceil": 1, "even": 2, "rceil": 3, "mse": 4}  # the kernels' scale-rule ids


def available() -> bool:
    """True when CUDA is usable (Triton imported, or this module would not have loaded)."""
    return torch.cuda.is_available()


def interpreted() -> bool:
    """True under TRITON_INTERPRET=1 (kernels run on CPU tensors through numpy; used by the tests)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _pow2(k):
    """Exact float32 2**k for int32 k in [-149, 127], from bits (subnormal results included)."""
    normal = tl.maximum(k + 127, 0) << 23
    sub = tl.full(k.shape, 1, tl.int32) << tl.minimum(tl.maximum(k + 149, 0), 22)
    return tl.where(k >= -126, normal, sub).to(tl.float32, bitcast=True)


@triton.jit
def _round(t, ROUND: tl.constexpr):
    """t >= 0 (float32) to an integer: 0 ties away, as floor(t + 0.5) in float32 (the reference's arithmetic);
    1 ties to even; 2 floor."""
    if ROUND == 0:
        r = tl.floor(t + 0.5)
    elif ROUND == 1:  # t < 2^23, so t + 2^23 lies where float32's step is 1: IEEE addition rounds it to even
        r = (t + 8388608.0) - 8388608.0
    else:
        r = tl.floor(t)
    return r


@triton.jit
def block_exponent(amax_bits, emax, thresh, RULE: tl.constexpr):
    """(e, nan_block) from the int32 bits of a block's max |x| under scale rule RULE (``RULE_IDS``):
    floor (and mse's first candidate) e = floor(log2 amax) - emax; the others add 1 when amax's exact
    23-bit fraction (subnormals normalised) passes ``thresh`` (``table.rule_threshold``). e in [-127, 127],
    0 for a NaN block."""
    biased = amax_bits >> 23
    big = tl.where(amax_bits == 0, -126, biased - 127)
    if RULE == 0 or RULE == 4:
        e = big - emax
    else:  # a subnormal amax times 2^23 (exact) is normal: its bits hold floor(log2 amax) + 23 and the fraction;
        # adding 2^23 - 1 - thresh carries into the exponent field exactly when the fraction passes thresh.
        # A zero block gets e = -150 - emax (clamped), not the reference's -126 - emax: every output is 0 either way
        sub = biased == 0
        norm = tl.where(sub, (amax_bits.to(tl.float32, bitcast=True) * 8388608.0).to(tl.int32, bitcast=True),
                        amax_bits)
        e = ((norm + (0x7FFFFF - thresh)) >> 23) - tl.where(sub, 150, 127) - emax
    e = tl.minimum(tl.maximum(e, -127), 127)
    nan_block = biased == 255
    return tl.where(nan_block, 0, e), nan_block


@triton.jit
def quant_elements(x, e, mb, min_exp, max_norm, ROUND: tl.constexpr, INT: tl.constexpr):
    """float32 x (any shape) on the MX grid of exponent e (broadcastable int32): mx.mx_elements' bits.

    The reference's steps, with shortcuts that keep its bits (``quant_scaled`` goes further):
    - saturate |v| with one min, keep the sign of v apart (v < 0 is t < 0: t = v 2^(mb - p) never
      underflows, as p > mb only when |v| >= 2^p);
    - INT (integer elements: min_exp 0 and max_norm < 2, so every element's p is 0): the per-element
      scale factors are constants, and r 2^-mb 2^e is the exact r 2^(e - mb) (r < 2^(mb+1), e - mb >= -133).
    """
    v = x * _pow2(-e)
    a = tl.minimum(tl.abs(v), max_norm)   # saturate first: same as clamping after rounding
    if INT:
        eb = 127
        t = a * tl.cast((127 + mb) << 23, tl.float32, bitcast=True)  # |v| 2^mb (mb may be a constant: 1)
    else:
        eb = tl.maximum(a.to(tl.int32, bitcast=True) >> 23, 127 + min_exp)  # biased p (a >= 0: no sign bit)
        t = a * ((254 + mb - eb) << 23).to(tl.float32, bitcast=True)  # |v| 2^(mb - p)
    r = _round(t, ROUND)
    if INT:
        out = r * _pow2(e - mb)
    else:
        out = (r * ((eb - mb) << 23).to(tl.float32, bitcast=True)) * _pow2(e)
    # sign(v) * |.| (-0.0 only from negative v, as the reference), set as a bit: Triton's -x is 0 - x,
    # which would turn -0.0 into +0.0
    return (out.to(tl.int32, bitcast=True) | ((v < 0).to(tl.int32) << 31)).to(tl.float32, bitcast=True)


@triton.jit
def quant_scaled(x, e, nan_block, mb, min_exp, max_norm, ROUND: tl.constexpr, INT: tl.constexpr):
    """``quant_elements``' bits, NaN for ``nan_block``, in fewer ops per element (the tile kernels' path; the
    kernel is bound by its ALUs on an H200, so every op counts: 20.0 against 22.0 SASS instructions per
    element for FP formats with the format compiled in, 93-98% of a device copy, BENCHMARKS.md):
    - the element's exponent stays in place in the bits (a mask, no shifts): the step's and its inverse's bits
      are one add each;
    - the sign, as the reference's (v + 0.0 < 0), is selected per block: 0 in NaN blocks, whose results are 0
      (their scale back is 0.0) ORed with the quiet NaN's bits in the op that ORs the sign."""
    v = x * _pow2(-e)
    a = tl.minimum(tl.abs(v), max_norm)   # saturate first: same as clamping after rounding
    if INT:  # min_exp 0 and max_norm < 2: every element's p is 0, the steps are constants
        r = _round(a * tl.cast((127 + mb) << 23, tl.float32, bitcast=True), ROUND)
        out = r * tl.where(nan_block, 0.0, _pow2(e - mb))
    else:
        eb = tl.maximum(a.to(tl.int32, bitcast=True) & 0x7F800000, (127 + min_exp) << 23)   # 2^p's bits
        r = _round(a * (((127 + mb) << 23) - (eb - 0x3F800000)).to(tl.float32, bitcast=True), ROUND)  # no int32 overflow
        out = (r * (eb - (mb << 23)).to(tl.float32, bitcast=True)) * tl.where(nan_block, 0.0, _pow2(e))
    sign = tl.where(v < 0, tl.where(nan_block, 0, -2147483648), 0)
    return (out.to(tl.int32, bitcast=True) | sign | tl.where(nan_block, 0x7FC00000, 0)).to(tl.float32, bitcast=True)


@triton.jit
def quant_block(x, e, nan_block, mb, min_exp, max_norm, ROUND: tl.constexpr, INT: tl.constexpr,
                FAST: tl.constexpr):
    """x on the MX grid of its blocks' exponents e, NaN in NaN blocks (e, nan_block broadcastable to x):
    ``quant_scaled`` (FAST, the kernels' default) or ``quant_elements`` (benchmarks compare them)."""
    if FAST:
        out = quant_scaled(x, e, nan_block, mb, min_exp, max_norm, ROUND, INT)
    else:
        out = tl.where(nan_block, float("nan"), quant_elements(x, e, mb, min_exp, max_norm, ROUND, INT))
    return out


@triton.jit
def mse_pick(out0, out1, x, AXIS: tl.constexpr, BLOCK: tl.constexpr):
    """Per block along AXIS: True where candidate 1 (e + 1) quantizes the block with a smaller squared error than
    candidate 0, decided as the reference does (``mx.search_exponent``): float64 sums S0, S1 of the squared
    errors, e + 1 where S0 - S1 > BLOCK 2^-52 (S0 + S1), so a tie keeps e in any summation order.

    Each error d = q - x is exact in float32: q is 0 (then d = -x), or q and x lie within a factor of 2 of each
    other (Sterbenz; a saturated q too, as the floor rule keeps |x| below 2 max_norm 2^e); so d^2 in float64 is
    the reference's, with two conversions per element instead of three. (A float32 decision under a proven error
    bound, float64 only near ties, measured no faster on an H200: BENCHMARKS.md.)"""
    e0 = (out0 - x).to(tl.float64)
    e1 = (out1 - x).to(tl.float64)
    s0 = tl.sum(e0 * e0, axis=AXIS)
    s1 = tl.sum(e1 * e1, axis=AXIS)
    return s0 - s1 > (s0 + s1) * (BLOCK * 2.220446049250313e-16)


@triton.jit
def _mx_kernel(x_ptr, y_ptr, n_blocks, L, blocks_per_row,
               mb: tl.constexpr, min_exp: tl.constexpr, emax: tl.constexpr, max_norm: tl.constexpr, thresh: tl.constexpr,
               BLOCK: tl.constexpr, KP: tl.constexpr, NB: tl.constexpr, ROUND: tl.constexpr,
               CONTIG: tl.constexpr, MASKED: tl.constexpr, RULE: tl.constexpr, STREAM: tl.constexpr,
               INT: tl.constexpr, FAST: tl.constexpr):
    pid = tl.program_id(0)
    b = pid.to(tl.int64) * NB + tl.arange(0, NB).to(tl.int64)  # (NB,) block ids
    j = tl.arange(0, KP)  # (KP,) position in the block
    if CONTIG:  # rows are whole blocks: block b is elements [b*BLOCK, (b+1)*BLOCK)
        # the tile's start once in 64 bits, then 32-bit offsets in it: fewer ops per address than int64 offsets
        x_ptr += pid.to(tl.int64) * (NB * BLOCK)
        y_ptr += pid.to(tl.int64) * (NB * BLOCK)
        offs = tl.arange(0, NB)[:, None] * BLOCK + j[None, :]
        mask = (b[:, None] < n_blocks) & (j[None, :] < BLOCK)
    else:  # the last block of each row is short (zero-padded in the math)
        col = (b % blocks_per_row)[:, None] * BLOCK + j[None, :]
        offs = (b // blocks_per_row)[:, None] * L + col
        mask = (b[:, None] < n_blocks) & (j[None, :] < BLOCK) & (col < L)
    # STREAM: read once, written once, so hint the caches to keep neither (speed only, never bits)
    if MASKED and STREAM:
        x = tl.load(x_ptr + offs, mask=mask, other=0.0, eviction_policy="evict_first").to(tl.float32)
    elif MASKED:
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    elif STREAM:
        x = tl.load(x_ptr + offs, eviction_policy="evict_first").to(tl.float32)
    else:
        x = tl.load(x_ptr + offs).to(tl.float32)

    # shared exponent from the integer max of |x| bits: NaN/Inf (exponent 255) beat every finite value
    amax = tl.max(x.to(tl.int32, bitcast=True) & 0x7FFFFFFF, axis=1)
    e, nan_block = block_exponent(amax, emax, thresh, RULE)  # (NB,)
    out = quant_block(x, e[:, None], nan_block[:, None], mb, min_exp, max_norm, ROUND, INT, FAST)
    if RULE == 4:  # mse: e + 1 where it quantizes the block with a smaller squared error (float64 sums)
        out1 = quant_block(x, tl.minimum(e + 1, 127)[:, None], nan_block[:, None], mb, min_exp, max_norm,
                           ROUND, INT, FAST)
        out = tl.where(mse_pick(out, out1, x, 1, BLOCK)[:, None], out1, out)
    out = out.to(y_ptr.dtype.element_ty)
    if MASKED and STREAM:
        tl.store(y_ptr + offs, out, mask=mask, cache_modifier=".cs")
    elif MASKED:
        tl.store(y_ptr + offs, out, mask=mask)
    elif STREAM:
        tl.store(y_ptr + offs, out, cache_modifier=".cs")
    else:
        tl.store(y_ptr + offs, out)


@triton.jit
def _mx_kernel_inner(x_ptr, y_ptr, L, inner, blocks_per_col,
                     mb: tl.constexpr, min_exp: tl.constexpr, emax: tl.constexpr, max_norm: tl.constexpr,
                     thresh: tl.constexpr,
                     BLOCK: tl.constexpr, KP: tl.constexpr, NI: tl.constexpr, ROUND: tl.constexpr,
                     RULE: tl.constexpr, STREAM: tl.constexpr, INT: tl.constexpr, FAST: tl.constexpr):
    """Blocks along the middle axis of a contiguous (outer, L, inner) tensor, read in place: a program
    takes one block position and NI consecutive inner columns, a (KP, NI) tile loaded row by row."""
    ob = tl.program_id(0).to(tl.int64)       # outer index * blocks_per_col + block index along L
    o, bl = ob // blocks_per_col, ob % blocks_per_col
    c = tl.program_id(1).to(tl.int64) * NI + tl.arange(0, NI).to(tl.int64)  # (NI,) inner columns
    pos = bl * BLOCK + tl.arange(0, KP).to(tl.int64)                          # (KP,) positions along L
    offs = o * L * inner + pos[:, None] * inner + c[None, :]
    mask = (tl.arange(0, KP)[:, None] < BLOCK) & (pos[:, None] < L) & (c[None, :] < inner)
    if STREAM:   # read once, written once (speed only, never bits)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0, eviction_policy="evict_first").to(tl.float32)
    else:
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    amax = tl.max(x.to(tl.int32, bitcast=True) & 0x7FFFFFFF, axis=0)
    e, nan_block = block_exponent(amax, emax, thresh, RULE)  # (NI,)
    out = quant_block(x, e[None, :], nan_block[None, :], mb, min_exp, max_norm, ROUND, INT, FAST)
    if RULE == 4:  # mse, as in _mx_kernel, per column block
        out1 = quant_block(x, tl.minimum(e + 1, 127)[None, :], nan_block[None, :], mb, min_exp, max_norm,
                           ROUND, INT, FAST)
        out = tl.where(mse_pick(out, out1, x, 0, BLOCK)[None, :], out1, out)
    if STREAM:
        tl.store(y_ptr + offs, out.to(y_ptr.dtype.element_ty), mask=mask, cache_modifier=".cs")
    else:
        tl.store(y_ptr + offs, out.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _mx_kernel_inner_rows(x_ptr, y_ptr, L, inner, blocks_per_col,
                          mb: tl.constexpr, min_exp: tl.constexpr, emax: tl.constexpr, max_norm: tl.constexpr,
                          thresh: tl.constexpr,
                          BLOCK: tl.constexpr, NI: tl.constexpr, ROUND: tl.constexpr, RULE: tl.constexpr,
                          STREAM: tl.constexpr, INT: tl.constexpr, FAST: tl.constexpr):
    """``_mx_kernel_inner``'s blocks, one row of NI columns at a time: pass 1 keeps each column's running max
    of |x| bits in registers (no reduction across threads, the tile kernel's cost at small blocks), pass 2
    re-reads the block's rows (from cache) and quantizes them. Not for the mse rule (it needs both
    candidates' errors summed over the block before anything is written)."""
    ob = tl.program_id(0).to(tl.int64)
    o, bl = ob // blocks_per_col, ob % blocks_per_col
    c = tl.program_id(1).to(tl.int64) * NI + tl.arange(0, NI).to(tl.int64)   # (NI,) inner columns
    base = o * L * inner + bl * BLOCK * inner + c
    cmask = c < inner
    rows = tl.minimum(L - bl * BLOCK, BLOCK)                                  # the last block may be short
    amax = tl.zeros((NI,), dtype=tl.int32)
    for r in tl.static_range(BLOCK):
        x = tl.load(x_ptr + base + r * inner, mask=cmask & (r < rows), other=0.0, eviction_policy="evict_last")
        amax = tl.maximum(amax, x.to(tl.float32).to(tl.int32, bitcast=True) & 0x7FFFFFFF)
    e, nan_block = block_exponent(amax, emax, thresh, RULE)                   # (NI,)
    for r in tl.static_range(BLOCK):
        m = cmask & (r < rows)
        if STREAM:
            x = tl.load(x_ptr + base + r * inner, mask=m, other=0.0, eviction_policy="evict_first")
        else:
            x = tl.load(x_ptr + base + r * inner, mask=m, other=0.0)
        out = quant_block(x.to(tl.float32), e, nan_block, mb, min_exp, max_norm, ROUND, INT, FAST)
        if STREAM:
            tl.store(y_ptr + base + r * inner, out.to(y_ptr.dtype.element_ty), mask=m, cache_modifier=".cs")
        else:
            tl.store(y_ptr + base + r * inner, out.to(y_ptr.dtype.element_ty), mask=m)


# Launch configurations: (blocks per program, warps, variant) along the last axis and (inner columns per
# program, warps, variant) across it, per block size. variant: bit 0 = streaming cache hints (every kernel),
# bit 1 = the row-loop kernel (non-last axes, rules other than mse). Bits never depend on them, only speed.
# ``DEVICE_CONFIGS`` holds what was measured per device (name substring -> kind -> block size -> config);
# ``set_tuned`` (called by benchmarks/bench_h200.py after measuring candidates on the current device)
# overrides both for this process. A 2-tuple means variant 0.
STREAM, ROWS = 1, 2
LAST_AXIS_DEFAULT = {16: (128, 4), 32: (64, 4), 64: (32, 4), 128: (16, 4)}
INNER_DEFAULT = {16: (256, 4), 32: (128, 4), 64: (64, 4), 128: (32, 4)}
DEVICE_CONFIGS: dict[str, dict[str, dict[int, tuple[int, ...]]]] = {
    "H100": {"last": {32: (64, 4)}},   # 97.8% of copy at block 32 (BENCHMARKS.md, 2026-11-23)
    # last axis: best of 3 candidates per block (1/2/4 warps, 32 elements per thread) with quant_scaled, bf16
    # 8192 x 8192, 2026-12-03 (BENCHMARKS.md, benchmarks/kernel_alu.py): 93-98% of a copy for mxint4 and mxfp4;
    # axis 0: best of the tile kernel's 1/2/4 warps x 32-256 columns (tune0, 2026-12-03 fourth session):
    # 74-87% for mxfp4 against 41-80% with the old 4-warp default (cross-warp reductions through shared memory)
    "H200": {"last": {16: (64, 1, STREAM), 32: (32, 1, STREAM), 64: (16, 1, STREAM), 128: (16, 2, STREAM)},
             "inner": {16: (128, 1), 32: (128, 2), 64: (64, 2), 128: (32, 4)},
             # mse (tune_mse): 8-16 elements per thread, 1 warp: 57-59% of a copy on the last axis (55-56% with
             # floor's configs); axis 0 at block 32: (32 columns, 1 warp) 47% against 28%
             "last_mse": {16: (32, 1, STREAM), 32: (16, 1, STREAM), 64: (8, 1, STREAM), 128: (4, 1, STREAM)},
             "inner_mse": {32: (32, 1)}},
}
_TUNED: dict[tuple[str, str, int], tuple[int, ...]] = {}


def launch_config(kind: str, block_size: int, device: torch.device | None = None) -> tuple[int, int, int]:
    """(tile parameter, num_warps, variant) for ``kind`` "last" or "inner" at ``block_size`` on ``device``;
    "last_mse" / "inner_mse" are the mse rule's own configs where measured, else the base kind's."""
    name = _device_name(torch.cuda.current_device() if device is None or device.index is None else device.index) \
        if torch.cuda.is_available() else ""
    base = kind.removesuffix("_mse")
    for k in dict.fromkeys((kind, base)):
        if (name, k, block_size) in _TUNED:
            return _full(_TUNED[(name, k, block_size)])
        for key, table in DEVICE_CONFIGS.items():
            if key in name and block_size in table.get(k, {}):
                return _full(table[k][block_size])
    default = LAST_AXIS_DEFAULT if base == "last" else INNER_DEFAULT
    if block_size in default:
        return _full(default[block_size])
    kp = triton.next_power_of_2(block_size)
    return (max(1, 2048 // kp), 4, 0) if base == "last" else (max(16, 4096 // kp), 4, 0)


def _full(config: tuple[int, ...]) -> tuple[int, int, int]:
    return (config[0], config[1], config[2] if len(config) > 2 else 0)


def set_tuned(kind: str, block_size: int, config: tuple[int, ...], device: torch.device | None = None) -> None:
    """Use ``config`` for ``kind``/``block_size`` on this device for the rest of the process."""
    index = torch.cuda.current_device() if device is None or device.index is None else device.index
    _TUNED[(_device_name(index), kind, block_size)] = config


@functools.lru_cache(maxsize=None)
def _device_name(index: int) -> str:
    return torch.cuda.get_device_name(index)


def mx_quantize(x: torch.Tensor, f, block_size: int, axis: int, rounding: str,
                config: tuple[int, int] | None = None, scale_rule: str = "floor", fast: bool = True) -> torch.Tensor:
    """MX fake quantization of a CUDA tensor (f: formats.ElementFormat, axis non-negative).

    ``config``: (tile parameter, num_warps[, variant]) instead of ``launch_config``'s (for tuning);
    ``fast=False``: the reference-shaped ``quant_elements`` instead of ``quant_scaled`` (same bits; benchmarks).
    """
    thresh, rule = rule_threshold(f, scale_rule), RULE_IDS[scale_rule]
    xm = x.reshape(1) if x.dim() == 0 else x.contiguous()
    axis = axis if x.dim() else 0
    L = xm.shape[axis]
    inner = math.prod(xm.shape[axis + 1:])
    min_exp = f.min_exp if f.ebits else 0
    is_int = f.ebits == 0 and f.max_norm < 2      # quant_elements' INT path: every element's p is 0
    # the format's constants compiled in (one kernel per format): ~2 fewer instructions per element than as
    # arguments (20.0 against 22.8 for FP formats, benchmarks/kernel_sass.py), on an H200 bound by its ALUs
    fmt = dict(mb=f.mbits - 2, min_exp=min_exp, emax=f.emax, max_norm=float(f.max_norm), thresh=thresh)
    y = torch.empty_like(xm)
    mse = "_mse" if rule == RULE_IDS["mse"] else ""
    ni, warps, variant = _full(config or launch_config("inner" + mse, block_size, x.device))
    if inner > 1 and triton.cdiv(inner, ni) <= 65535:   # blocks across the memory order: tiles read in place
        outer = xm.numel() // (L * inner)
        bpc = triton.cdiv(L, block_size)
        grid = (outer * bpc, triton.cdiv(inner, ni))
        args = (xm, y, L, inner, bpc)
        if variant & ROWS and rule != RULE_IDS["mse"]:
            _mx_kernel_inner_rows[grid](*args, **fmt, BLOCK=block_size, NI=ni, ROUND=_ROUND[rounding], RULE=rule,
                                        STREAM=bool(variant & STREAM), INT=is_int, FAST=fast, num_warps=warps)
        else:   # the (KP, NI) tile kernel; a row-loop config's wide NI is cut to a tile of <= 16384 elements
            kp = triton.next_power_of_2(block_size)
            ni_tile = min(ni, max(16, 16384 // kp))
            grid = (outer * bpc, triton.cdiv(inner, ni_tile))
            _mx_kernel_inner[grid](*args, **fmt, BLOCK=block_size, KP=kp, NI=ni_tile, ROUND=_ROUND[rounding], RULE=rule,
                                   STREAM=bool(variant & STREAM), INT=is_int, FAST=fast, num_warps=warps)
        return y.reshape(x.shape)
    if inner > 1:   # more inner columns than a grid dimension holds: move the axis last and back
        return mx_quantize(xm.movedim(axis, -1), f, block_size, xm.dim() - 1, rounding,
                           scale_rule=scale_rule, fast=fast).movedim(-1, axis) \
            .contiguous().reshape(x.shape)
    nb, warps, variant = _full(config or launch_config("last" + mse, block_size, x.device))
    rows = xm.numel() // L
    blocks_per_row = triton.cdiv(L, block_size)
    n_blocks = rows * blocks_per_row
    kp = triton.next_power_of_2(block_size)
    nb = max(1, min(nb, 16384 // kp))  # keep a tile at most 16384 elements
    contig = L % block_size == 0
    masked = not (contig and kp == block_size and n_blocks % nb == 0)
    grid = (triton.cdiv(n_blocks, nb),)
    _mx_kernel[grid](xm, y, n_blocks, L, blocks_per_row, **fmt, BLOCK=block_size, KP=kp, NB=nb, ROUND=_ROUND[rounding], CONTIG=contig, MASKED=masked,
                     RULE=rule, STREAM=bool(variant & STREAM), INT=is_int, FAST=fast, num_warps=warps)
    return y.reshape(x.shape)
