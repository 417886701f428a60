"""The baselines MX is compared against: per-channel affine INT and NVFP4.

``int8/int4/int3``: per-channel affine, as PyTorch's PerChannelMinMaxObserver and
``fake_quantize_per_channel_affine`` (the range includes 0), with the scale rounded to fp16 and the
zero point an integer of the element's width: what a packed checkpoint stores (compressed-tensors
and GPTQ checkpoints keep fp16 scales), so the stored parameters are the ones used. ``nvfp4``
(NVIDIA's definition): E2M1 elements rounded to nearest-even, one FP8 E4M3 scale per block of 16
and one FP32 tensor scale. Both return their codes and scales with the values, so ``pack`` stores
exactly what ``quantize`` computed.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import MxlabError
from .mx import blocked, round_inplace, unblocked
from .table import NVFP4_BLOCK, NVFP4_ROUNDING, ElementFormat

NVFP4_TENSOR_DIV = 448.0 * 6.0  # tensor scale = amax / (E4M3 max * E2M1 max)
E4M3_MIN = 2.0 ** -9            # smallest positive FP8 E4M3 value (a subnormal)


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
    scale = fp16_scale(scale)  # the stored scale (eps = 2^-23 is an exact fp16 subnormal)
    zero_point = (qmin - torch.round(min_neg / scale).to(torch.int32)).clamp(qmin, qmax)
    return scale, zero_point


def fp16_scale(scale: Tensor) -> Tensor:
    """``scale`` (float32) rounded to the nearest fp16, as a packed checkpoint stores it; MxlabError on overflow."""
    s16 = scale.half()
    if not bool(torch.isfinite(s16).all()):
        raise MxlabError(f"a per-channel int scale exceeds fp16's range ({float(scale.max()):.3g} > 65504): the "
                         "tensor's values are too large for per-channel int storage; use an MX format")
    return s16.float()


def _channel_param(p, x: Tensor, axis: int, dtype: torch.dtype, what: str) -> Tensor:
    """Accept a per-channel parameter of shape x.shape-without-axis (or keepdim); return it keepdim."""
    t = torch.as_tensor(p, device=x.device).to(dtype)
    want = list(x.shape)
    want[axis] = 1
    if t.numel() != math.prod(want):
        raise MxlabError(f"{what} needs one value per channel ({math.prod(want)} for shape {tuple(x.shape)}, "
                         f"axis {axis}); got shape {tuple(t.shape)}")
    return t.reshape(want)


def int_quantize(x: Tensor, f: ElementFormat, axis: int, rounding: str, scale=None, zero_point=None
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-channel affine fake quantization; returns (float32 result, codes, scale, zero_point) keepdim.

    An explicit ``scale`` is rounded to fp16 (what is stored); ``zero_point`` must lie in the codes' range.
    """
    qmin, qmax = _int_range(f)
    if (scale is None) != (zero_point is None):
        raise MxlabError("pass both scale= and zero_point= (or neither, to compute them from min/max)")
    if scale is None:
        scale, zero_point = int_qparams(x, f, axis)
    scale = fp16_scale(_channel_param(scale, x, axis, torch.float32, "scale"))  # stored as fp16
    zero_point = _channel_param(zero_point, x, axis, torch.int32, "zero_point")
    if bool(((zero_point < qmin) | (zero_point > qmax)).any()):
        raise MxlabError(f"zero_point must lie in {qmin}..{qmax} for {f.name} (it is stored in {f.bits} bits); "
                         "compute it with int_qparams")
    # x * (1 / scale) as torch's fake_quantize_per_channel_affine does, then round and clamp
    y = x.float() * (1.0 / scale)
    r = round_inplace(y.abs(), rounding, exact=True).copysign_(y)
    codes = (r + zero_point).clamp_(qmin, qmax)
    out = (codes - zero_point) * scale
    return out, codes.to(torch.uint8), scale, zero_point


# ----------------------------------------------------------------------------- NVFP4 baseline
def nvfp4_quantize(x: Tensor, axis: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """NVFP4: returns (float32 result, E2M1 values q (blocked), E4M3 block scales (blocked), tensor scale).

    Blocks of 16 along ``axis``; tensor scale ts = amax / (448 * 6); block scale s8 =
    fp8_e4m3(amax_block / 6 / ts) (RNE, saturating at 448, clamped up to 2^-9 for a nonzero block
    instead of flushing to 0); elements q = E2M1(x / (s8 * ts)) rounded to nearest, ties to even;
    result q * (s8 * ts).
    """
    block_size = NVFP4_BLOCK
    xf = x.float()
    amax = xf.abs().amax() if xf.numel() else torch.zeros((), device=x.device)
    ts = amax / torch.full_like(amax, NVFP4_TENSOR_DIV)  # tensor divisors: see int_qparams
    ts = torch.where(torch.isfinite(ts) & (ts > 0), ts, torch.ones_like(ts))  # all-zero / non-finite: 1
    xb, pad = blocked(xf, block_size, axis)  # (N, block, inner)
    bamax = xb.abs().amax(dim=1, keepdim=True)
    s8 = (bamax / torch.full_like(bamax, 6.0) / ts).clamp(max=448.0)
    # a nonzero block whose scale underflows E4M3 gets its smallest scale (2^-9), not 0: NVIDIA clamps
    # the block scale, so a block far below the tensor's maximum keeps what the elements can hold
    s8 = torch.where(bamax > 0, s8.clamp(min=E4M3_MIN), s8)
    s8 = s8.masked_fill_(~torch.isfinite(bamax), float("nan")).to(torch.float8_e4m3fn)  # Inf/NaN block -> NaN
    scale = s8.float() * ts  # (N, 1, inner)
    v = torch.where(scale > 0, xb / scale, torch.zeros_like(xb)).clamp_(-6.0, 6.0)
    eb = (v.view(torch.int32) >> 23).bitwise_and_(0xFF).clamp_(min=127)  # E2M1: min_exp 0, one mantissa bit
    step = (eb - 1).bitwise_left_shift_(23).view(torch.float32)
    t = (v / step).add_(0.0)
    q = round_inplace(t.abs(), NVFP4_ROUNDING, exact=True).mul_(step).copysign_(t)
    out = q * scale
    return unblocked(out, x.shape, axis, pad), q, s8, ts
