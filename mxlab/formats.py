"""Number formats as data, and fake quantization into them.

MX formats (OCP Microscaling v1.0): blocks of ``block_size`` elements along ``axis`` share one
power-of-two scale 2^e (E8M0). We reproduce the reference emulator (microsoft/microxcaling,
``mx_ops._quantize_mx``) bit for bit, with one deliberate difference: floor(log2(.)) is read from
the float's exponent bits, not from a float32 ``log2`` that rounds up just below a power of two.

Baselines: ``int8/int4/int3`` per-channel affine (PyTorch MinMaxObserver: range includes 0) and
``nvfp4`` (E2M1 elements, FP8 E4M3 block scales, one FP32 tensor scale).

All math runs in float32; bf16/fp16 inputs get the float32 result cast back. The CPU path works
on cache-sized chunks with in-place ops; CUDA tensors in MX formats go to the Triton kernel in
``kernels.py`` (same bits).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import MxlabError

log = logging.getLogger(__name__)

ROUNDINGS = ("nearest", "even", "floor")
_CHUNK_ELEMS = 1 << 15  # CPU chunk bound: torch's parallel grain; a chunk's temporaries stay in L2


@dataclass(frozen=True)
class ElementFormat:
    """One element format. ``kind``: "mx" (shared E8M0 scale), "int" (per-channel affine), "nvfp4"."""

    name: str
    kind: str
    bits: int          # storage bits per element code
    ebits: int = 0     # exponent bits (0: integer elements)
    mbits: int = 0     # mantissa bits counting sign and implicit bit (the reference's convention)
    emax: int = 0      # largest element exponent
    max_norm: float = 0.0

    @property
    def min_exp(self) -> int:
        """Smallest normal exponent (floats); subnormals below it keep a fixed step."""
        return 2 - 2 ** (self.ebits - 1) if self.ebits else 0


def _mxfp(name: str, ebits: int, mbits: int, emax: int, max_norm: float) -> ElementFormat:
    return ElementFormat(name, "mx", ebits + mbits - 1, ebits, mbits, emax, max_norm)


def _mxint(name: str, bits: int) -> ElementFormat:
    return ElementFormat(name, "mx", bits, 0, bits, 0, (2 ** (bits - 1) - 1) / 2 ** (bits - 2))


FORMATS: dict[str, ElementFormat] = {
    f.name: f
    for f in (
        _mxint("mxint8", 8), _mxint("mxint4", 4), _mxint("mxint3", 3), _mxint("mxint2", 2),
        _mxfp("mxfp8_e4m3", 4, 5, 8, 448.0), _mxfp("mxfp8_e5m2", 5, 4, 15, 57344.0),
        _mxfp("mxfp6_e3m2", 3, 4, 4, 28.0), _mxfp("mxfp6_e2m3", 2, 5, 2, 7.5),
        _mxfp("mxfp4_e2m1", 2, 3, 2, 6.0),
        ElementFormat("int8", "int", 8), ElementFormat("int4", "int", 4), ElementFormat("int3", "int", 3),
        ElementFormat("nvfp4", "nvfp4", 4, 2, 3, 2, 6.0),
    )
}
ALIASES = {"mxfp4": "mxfp4_e2m1"}
FORMATS["mxfp4"] = FORMATS["mxfp4_e2m1"]
E2M1 = FORMATS["mxfp4_e2m1"]
NVFP4_TENSOR_DIV = 448.0 * 6.0  # tensor scale = amax / (E4M3 max * E2M1 max)


# ----------------------------------------------------------------------------- names and checks
def canonical_format(name: str) -> str:
    """Resolve aliases and case; raise MxlabError listing the valid names."""
    key = str(name).strip().lower() if isinstance(name, str) else None
    if key == "none":
        return "none"
    if key in ALIASES:
        return ALIASES[key]
    if key not in FORMATS:
        valid = ", ".join([*sorted(n for n in FORMATS if n not in ALIASES), *ALIASES, "none"])
        raise MxlabError(f"unknown number format {name!r}; choose one of: {valid}")
    return key


def is_mx(fmt: str) -> bool:
    """True for the microscaling formats (shared power-of-two block scale)."""
    name = canonical_format(fmt)
    return name != "none" and FORMATS[name].kind == "mx"


def bits_per_element(fmt: str, block_size: int = 32) -> float:
    """Storage bits per element, scales included (mxfp4 @ 32 -> 4.25); per-channel int -> its bits."""
    name = canonical_format(fmt)
    if name == "none":
        raise MxlabError("format 'none' keeps the model dtype; its size depends on that dtype")
    f = FORMATS[name]
    _check_block(block_size)
    return float(f.bits) + (8.0 / block_size if f.kind in ("mx", "nvfp4") else 0.0)


def _check_block(block_size: int) -> None:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise MxlabError(f"block_size must be a positive integer (16, 32, 64, 128 are usual); got {block_size!r}")


def _check_args(x: Tensor, fmt: str, block_size: int, axis: int, rounding: str) -> tuple[ElementFormat, int]:
    """Validate everything; return the format and the non-negative axis."""
    name = canonical_format(fmt)
    if not isinstance(x, Tensor):
        raise MxlabError(f"expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise MxlabError(f"quantize needs a floating-point tensor (float32/bfloat16/float16); got {x.dtype}")
    if rounding not in ROUNDINGS:
        raise MxlabError(f"unknown rounding {rounding!r}; choose one of: {', '.join(ROUNDINGS)}")
    _check_block(block_size)
    ndim = max(x.dim(), 1)
    if isinstance(axis, bool) or not isinstance(axis, int) or not -ndim <= axis < ndim:
        raise MxlabError(f"axis {axis!r} is out of range for a tensor with {x.dim()} dims; use -{ndim}..{ndim - 1}")
    return (FORMATS[name] if name != "none" else None), axis % ndim


# ----------------------------------------------------------------------------- bit helpers
def pow2(k: Tensor) -> Tensor:
    """Exact float32 2**k for integer k in [-149, 127] (subnormal results included), built from bits."""
    k = k.to(torch.int32)
    normal = (k + 127).clamp_(min=0) << 23
    sub = torch.ones_like(k) << (k + 149).clamp_(0, 22)
    return torch.where(k >= -126, normal, sub).view(torch.float32)


def _round_inplace(a: Tensor, rounding: str, exact: bool = False) -> Tensor:
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


# ----------------------------------------------------------------------------- MX core
def _blocked(x: Tensor, block_size: int, axis: int) -> tuple[Tensor, int]:
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


def _unblocked(y: Tensor, shape: torch.Size, axis: int, pad: int) -> Tensor:
    """Inverse of ``_blocked``: (outer*nblocks, block, inner) -> ``shape``."""
    if not shape:
        return y.reshape(-1)[:1].reshape(shape)
    outer = math.prod(shape[:axis])
    y = y.reshape(outer, -1, y.shape[-1])
    if pad:
        y = y[:, : shape[axis]]
    return y.reshape(shape)


def shared_exponent(amax: Tensor, f: ElementFormat) -> Tensor:
    """Per-block scale exponent e (int32) from amax (float32); 128 marks a NaN block (Inf/NaN inside).

    e = floor(log2(amax)) - emax clamped to >= -127, floor(log2) read from the exponent bits
    (amax == 0 counts as 2^-126, as in the reference; subnormal amax clamps to -127 anyway).
    """
    biased = (amax.view(torch.int32) >> 23) & 0xFF  # & 0xFF: a NaN from a reduction may carry a sign bit
    e = torch.where(amax == 0, -126, biased - 127) - f.emax
    e.clamp_(min=-127)
    return e.masked_fill_(biased == 255, 128)


def _block_amax(xb: Tensor) -> Tensor:
    """max |x| per block of xb (N, block, inner) as float32 (N, 1, inner): an integer max of the
    magnitude bits (one pass, no float |x| temporary; NaN and Inf bits win, as they should)."""
    ints = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}[xb.dtype]
    mag = xb.view(ints) & torch.iinfo(ints).max
    return mag.amax(dim=1, keepdim=True).view(xb.dtype).float()


def _mx_elements(xc: Tensor, down: Tensor, up: Tensor, f: ElementFormat, rounding: str) -> Tensor:
    """Quantize one chunk xc (n, block, inner) float32 given its blocks' 2^-e and 2^e (n, 1, inner)."""
    mb = f.mbits - 2
    if f.ebits == 0:
        # x / 2^e, then + 0.0 (maps -0.0, from the input or an underflow, to +0.0 as the reference's
        # sign() does), then * 2^mb (exact)
        t = torch.mul(xc, down).add_(0.0).mul_(2.0 ** mb)
        t.clamp_(-f.max_norm * 2 ** mb, f.max_norm * 2 ** mb)  # saturating first = clamping after rounding
        a = _round_inplace(t.abs(), rounding)
    else:
        t = torch.mul(xc, down).add_(0.0).clamp_(-f.max_norm, f.max_norm)  # v = x / 2^e
        a = t.abs()
        # step = 2^(p - mb), p = max(floor(log2|v|), min_exp): 2^floor(log2|v|) is |v| with its mantissa
        # bits cleared (0.0 for subnormals and zero, which the clamp lifts to 2^min_exp)
        step = (a.view(torch.int32) & 0x7F800000).view(torch.float32)
        step.clamp_(min=2.0 ** f.min_exp).mul_(2.0 ** -mb)
        a = _round_inplace(a.div_(step), rounding).mul_(step)  # exact: power-of-two divisor
    return a.copysign_(t).mul_(up)


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


def _mx_quantize(x: Tensor, f: ElementFormat, block_size: int, axis: int, rounding: str,
                 want_exponents: bool = False) -> tuple[Tensor, Tensor | None]:
    """MX fake quantization in torch ops (any device); optionally also the block exponents e."""
    shape, dtype = x.shape, x.dtype
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        x = x.float()  # e.g. float64: the math is float32
    xb, pad = _blocked(x, block_size, axis)  # (N, block, inner)
    e = shared_exponent(_block_amax(xb), f)  # (N, 1, inner), all blocks at once
    nan_block = e == 128
    ec = e.masked_fill(nan_block, 0)
    down = pow2(-ec)  # 2^-e, may be subnormal (e = 127)
    up = pow2(ec - (f.mbits - 2 if f.ebits == 0 else 0)).masked_fill_(nan_block, float("nan"))
    out = torch.empty(xb.shape, dtype=torch.float32 if want_exponents else dtype, device=x.device)
    n = xb.shape[0]
    # CPU: chunks just under torch's 32768-element parallel grain run inline in the calling thread
    rows = max(1, (_CHUNK_ELEMS - 1) // (block_size * xb.shape[2])) if x.device.type == "cpu" else n

    inference = torch.is_inference_mode_enabled()  # thread-local: pool threads must enter it too

    def work(lo_hi: tuple[int, int]) -> None:
        with torch.inference_mode(inference):
            for i in range(lo_hi[0], lo_hi[1], rows):
                j = min(i + rows, lo_hi[1])
                out[i:j] = _mx_elements(xb[i:j].float(), down[i:j], up[i:j], f, rounding)

    n_chunks = -(-n // rows)
    workers = min(torch.get_num_threads(), n_chunks // 4)
    if workers > 1:
        per = -(-n_chunks // workers) * rows  # contiguous ranges of whole chunks, one per thread
        list(_pool().map(work, [(i, min(n, i + per)) for i in range(0, n, per)]))
    else:
        work((0, n))
    res = _unblocked(out, shape, axis, pad)
    return (res, e) if want_exponents else (res.to(dtype), None)  # pack wants the float32 values


# ----------------------------------------------------------------------------- element codes
def element_values(f: ElementFormat) -> Tensor:
    """Float32 value of every code of an element format (sign-magnitude codes), indexed by code."""
    n = 2 ** (f.bits - 1)
    mag = torch.arange(n, dtype=torch.int64)
    mb = f.mbits - 2
    if f.ebits == 0:
        pos = mag.double() / 2 ** mb
    else:
        ef, m = mag >> mb, mag & (2 ** mb - 1)
        pos = torch.where(ef == 0, m.double() * 2.0 ** (f.min_exp - mb),
                          (1 + m.double() / 2 ** mb) * torch.pow(2.0, (ef - 1 + f.min_exp).double()))
    return torch.cat([pos, -pos]).float()


def encode_elements(q: Tensor, f: ElementFormat) -> Tensor:
    """Sign-magnitude code (uint8) of each value of q (float32, on f's element grid)."""
    sign = (q.view(torch.int32) < 0).to(torch.int32) << (f.bits - 1)  # keeps the sign of -0.0
    a = q.abs()
    mb = f.mbits - 2
    if f.ebits == 0:
        mag = (a * 2 ** mb).to(torch.int32)
    else:
        bits = a.view(torch.int32)
        eb = bits >> 23
        normal = ((eb - 126 - f.min_exp) << mb) | ((bits >> (23 - mb)) & (2 ** mb - 1))
        sub = (a * 2.0 ** (mb - f.min_exp)).to(torch.int32)
        mag = torch.where(eb - 127 >= f.min_exp, normal, sub)
    return (sign | mag).to(torch.uint8)


# ----------------------------------------------------------------------------- int baselines
def _int_range(f: ElementFormat) -> tuple[int, int]:
    return 0, 2 ** f.bits - 1


def int_qparams(x: Tensor, f: ElementFormat, axis: int) -> tuple[Tensor, Tensor]:
    """Per-channel (scale, zero_point) like PerChannelMinMaxObserver (affine, range includes 0).

    Channels are the slices across ``axis``: returns float32 scale and int32 zero_point of shape
    x.shape without ``axis``.
    """
    qmin, qmax = _int_range(f)
    xf = x.float()
    min_neg = xf.amin(dim=axis).clamp(max=0)
    max_pos = xf.amax(dim=axis).clamp(min=0)
    # divisors are tensors: CUDA turns division by a Python scalar into a reciprocal multiply,
    # which rounds differently from the CPU's true division
    scale = ((max_pos - min_neg) / torch.full_like(max_pos, qmax - qmin)).clamp(min=torch.finfo(torch.float32).eps)
    zero_point = (qmin - torch.round(min_neg / scale).to(torch.int32)).clamp(qmin, qmax)
    return scale, zero_point


def _channel_param(p, x: Tensor, axis: int, dtype: torch.dtype, what: str) -> Tensor:
    """Accept a per-channel parameter of shape x.shape-without-axis (or keepdim); return it keepdim."""
    t = torch.as_tensor(p, device=x.device).to(dtype)
    want = list(x.shape)
    want[axis] = 1
    if t.numel() != math.prod(want):
        raise MxlabError(f"{what} needs one value per channel ({math.prod(want)} for shape {tuple(x.shape)}, "
                         f"axis {axis}); got shape {tuple(t.shape)}")
    return t.reshape(want)


def _int_quantize(x: Tensor, f: ElementFormat, axis: int, rounding: str, scale=None, zero_point=None
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-channel affine fake quantization; returns (float32 result, codes, scale, zero_point) keepdim."""
    qmin, qmax = _int_range(f)
    if (scale is None) != (zero_point is None):
        raise MxlabError("pass both scale= and zero_point= (or neither, to compute them from min/max)")
    if scale is None:
        scale, zero_point = int_qparams(x, f, axis)
    scale = _channel_param(scale, x, axis, torch.float32, "scale")
    zero_point = _channel_param(zero_point, x, axis, torch.int32, "zero_point")
    # x * (1 / scale) as torch's fake_quantize_per_channel_affine does, then round and clamp
    y = x.float() * (1.0 / scale)
    r = _round_inplace(y.abs(), rounding, exact=True).copysign_(y)
    codes = (r + zero_point).clamp_(qmin, qmax)
    out = (codes - zero_point) * scale
    return out, codes.to(torch.uint8), scale, zero_point


# ----------------------------------------------------------------------------- NVFP4 baseline
def _nvfp4_quantize(x: Tensor, block_size: int, axis: int, rounding: str
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """NVFP4: returns (float32 result, E2M1 values q (blocked), E4M3 block scales (blocked), tensor scale).

    tensor scale ts = amax / (448 * 6); block scale s8 = fp8_e4m3(amax_block / 6 / ts) (RNE,
    saturating); elements q = E2M1(x / (s8 * ts)) with the chosen rounding; result q * (s8 * ts).
    """
    xf = x.float()
    amax = xf.abs().amax() if xf.numel() else torch.zeros((), device=x.device)
    ts = amax / torch.full_like(amax, NVFP4_TENSOR_DIV)  # tensor divisors: see int_qparams
    ts = torch.where(torch.isfinite(ts) & (ts > 0), ts, torch.ones_like(ts))  # all-zero / non-finite: 1
    xb, pad = _blocked(xf, block_size, axis)  # (N, block, inner)
    bamax = xb.abs().amax(dim=1, keepdim=True)
    s8 = (bamax / torch.full_like(bamax, 6.0) / ts).clamp(max=448.0)
    s8 = s8.masked_fill_(~torch.isfinite(bamax), float("nan")).to(torch.float8_e4m3fn)  # Inf/NaN block -> NaN
    scale = s8.float() * ts  # (N, 1, inner)
    v = torch.where(scale > 0, xb / scale, torch.zeros_like(xb)).clamp_(-6.0, 6.0)
    eb = (v.view(torch.int32) >> 23).bitwise_and_(0xFF).clamp_(min=127)  # E2M1: min_exp 0, one mantissa bit
    step = (eb - 1).bitwise_left_shift_(23).view(torch.float32)
    t = (v / step).add_(0.0)
    q = _round_inplace(t.abs(), rounding, exact=True).mul_(step).copysign_(t)
    out = q * scale
    return _unblocked(out, x.shape, axis, pad), q, s8, ts


# ----------------------------------------------------------------------------- public API
def quantize(x: Tensor, fmt: str, block_size: int = 32, axis: int = -1, rounding: str = "nearest",
             *, scale: Tensor | None = None, zero_point: Tensor | None = None) -> Tensor:
    """Fake-quantize x into ``fmt``: same shape and dtype, values on the format's grid ("none" -> x).

    ``scale``/``zero_point`` (int formats only): explicit per-channel parameters (e.g. GPTQ's).
    """
    f, ax = _check_args(x, fmt, block_size, axis, rounding)
    if f is None:
        return x
    if (scale is not None or zero_point is not None) and f.kind != "int":
        raise MxlabError(f"scale=/zero_point= apply to int8/int4/int3 only, not {f.name}")
    if x.numel() == 0:
        return x.clone()
    with torch.no_grad():
        if f.kind == "mx":
            if x.is_cuda:
                kernels = _kernels()
                if kernels is not None:
                    return kernels.mx_quantize(x, f, block_size, ax, rounding)
            return _mx_quantize(x, f, block_size, ax, rounding)[0]
        if f.kind == "int":
            return _int_quantize(x, f, ax, rounding, scale, zero_point)[0].to(x.dtype)
        return _nvfp4_quantize(x, block_size, ax, rounding)[0].to(x.dtype)


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


from .packing import PackedTensor, pack  # noqa: E402  (packing builds on the helpers above)

__all__ = ["FORMATS", "ROUNDINGS", "ElementFormat", "PackedTensor", "bits_per_element", "canonical_format",
           "is_mx", "pack", "quantize"]
