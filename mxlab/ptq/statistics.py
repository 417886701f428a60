"""Per-module statistics of activations and weights (torch only).

The pipeline computes two for every quantized Linear; both return plain, JSON-able dicts
(lists, floats, ints, strings) so the GPU machine needs no pandas; ``mxlab.tables`` turns them into tables.

``activation_stats(module, block, stage, x)`` with ``x`` (n_tokens, in_features):
    module, block, stage, n_tokens, in_features,
    absmax: list[float] (in_features)     max |x| per input channel
    mean_abs: list[float] (in_features)   mean |x| per input channel
    outlier_ratio                         max / median of the channel absmax
    kurtosis                              Pearson kurtosis of all entries of x (a Gaussian gives 3)
    top_channels: list[int]               the k channels with the largest absmax, largest first
    top_values: list[float]               their absmax

``weight_stats(module, block, w_fp, w_q, spec)`` with weights (out_features, in_features):
    module, block, format, block_size, out_features, in_features,
    w_min, w_max: list[float] (out_features)   range of each output channel of w_fp
    mse, sqnr_db                               of w_q against w_fp (sqnr inf when w_q == w_fp)
    flushed_frac                               fraction of elements nonzero in w_fp, zero in w_q
    For MX formats (None otherwise), blocks of ``block_size`` along in_features as formats.py:
    n_blocks                                   out_features * ceil(in_features / block_size)
    exp_values, exp_counts: list[int]          histogram of the E8M0 shared exponents over blocks
    saturated_frac     fraction of elements with |w| / 2^e > max_norm (clipped to +-max_norm)
    clipped_block_frac fraction of blocks whose maximum clips (amax / 2^e > max_norm)
    scale_rule         the rule that chose e (the spec's)
    headroom_bits      mean over nonzero blocks of max(0, log2(max_norm * 2^e / amax)): the bits of
                       range the power-of-two scale leaves unused, against an exact real scale
"""
from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import MxlabError
from ..formats import FORMATS, canonical_format, is_mx, search_exponent, shared_exponent

TOP_K = 8
_CHUNK = 8192  # rows of x per pass: bounds the float64 temporaries for big calibration sets


def activation_stats(module: str, block: int, stage: str, x: torch.Tensor, top_k: int = TOP_K) -> dict:
    """Per-input-channel magnitude and outlier measures of calibration inputs x (n_tokens, in_features)."""
    if x.dim() != 2 or x.shape[0] == 0:
        raise MxlabError(f"activation_stats({module}): expected a non-empty (n_tokens, in_features) "
                         f"tensor, got shape {tuple(x.shape)}; flatten batch and sequence first")
    x = x.detach()
    n, d = x.shape
    absmax = torch.zeros(d, dtype=torch.float64, device=x.device)
    abssum = torch.zeros(d, dtype=torch.float64, device=x.device)
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for i in range(0, n, _CHUNK):
        c = x[i:i + _CHUNK].to(torch.float64)  # (chunk, d)
        a = c.abs()
        absmax = torch.maximum(absmax, a.amax(0))
        abssum += a.sum(0)
        total += c.sum()
    mean = total / (n * d)
    m2 = torch.zeros((), dtype=torch.float64, device=x.device)
    m4 = torch.zeros((), dtype=torch.float64, device=x.device)
    for i in range(0, n, _CHUNK):  # second pass: central moments, stable in float64
        c2 = (x[i:i + _CHUNK].to(torch.float64) - mean) ** 2
        m2 += c2.sum()
        m4 += (c2 * c2).sum()
    m2, m4 = m2 / (n * d), m4 / (n * d)
    kurt = float(m4 / (m2 * m2)) if m2 > 0 else float("nan")
    median = float(absmax.median())
    ratio = float(absmax.max()) / median if median > 0 else float("inf")
    k = min(top_k, d)
    top = torch.topk(absmax, k)
    return dict(module=module, block=int(block), stage=stage, n_tokens=int(n), in_features=int(d),
                absmax=absmax.float().cpu().tolist(), mean_abs=(abssum / n).float().cpu().tolist(),
                outlier_ratio=ratio, kurtosis=kurt,
                top_channels=top.indices.cpu().tolist(), top_values=top.values.float().cpu().tolist())


def _spec_field(spec: Any, name: str) -> Any:
    """spec.<name> for a QuantSpec, or spec[name] for a dict (tests, loaded results)."""
    return spec[name] if isinstance(spec, dict) else getattr(spec, name)


def mx_scale_stats(w: torch.Tensor, fmt: str, block_size: int, scale_rule: str = "floor",
                   rounding: str = "nearest") -> dict:
    """E8M0 exponent histogram, saturation and headroom of an MX format on w (out, in), blocks along in,
    with the exponents ``scale_rule`` picks (``rounding`` matters to ``mse`` only)."""
    ef = FORMATS[canonical_format(fmt)]
    emax, max_norm = int(ef.emax), float(ef.max_norm)
    w = w.detach().to(torch.float32)
    out_f, in_f = w.shape
    k = in_f if block_size is None or block_size <= 0 else block_size
    pad = (-in_f) % k
    wb = torch.nn.functional.pad(w, (0, pad)).reshape(out_f, -1, k)  # (out, n_blocks_per_row, k)
    amax = wb.abs().amax(-1)  # (out, nb)
    e = shared_exponent(amax, ef, scale_rule)  # (out, nb); 128: a block holding Inf/NaN
    if scale_rule == "mse":  # search_exponent wants blocks (N, block, 1)
        e = search_exponent(wb.reshape(-1, k, 1), e.reshape(-1, 1, 1), ef, rounding).reshape(e.shape)
    # Inf/NaN blocks: this table has always reported finite exponents for them (its former frexp
    # reading: NaN as an all-zero block, Inf as frexp's exponent 0, e = -1 - emax); kept unchanged
    e = torch.where(e == 128, torch.where(amax.isnan(), -126, -1) - emax, e).clamp(-127, 127)
    scale = torch.ldexp(torch.ones_like(amax), e.to(torch.int32))
    scaled = wb.abs() / scale.unsqueeze(-1)  # (out, nb, k) element magnitudes on the element grid
    saturated = (scaled > max_norm).sum().item()
    clipped_blocks = (amax > max_norm * scale).sum().item()   # blocks whose maximum clips
    nz = amax > 0
    headroom = torch.log2(max_norm * scale[nz] / amax[nz]).clamp(min=0)
    values, counts = torch.unique(e.flatten(), return_counts=True)
    return dict(n_blocks=int(e.numel()), exp_values=values.tolist(), exp_counts=counts.tolist(),
                saturated_frac=saturated / w.numel(), clipped_block_frac=clipped_blocks / max(1, e.numel()),
                headroom_bits=float(headroom.mean()) if headroom.numel() else 0.0)


def weight_stats(module: str, block: int, w_fp: torch.Tensor, w_q: torch.Tensor, spec: Any) -> dict:
    """Range, error and (for MX formats) scale statistics of one quantized weight (out, in)."""
    if w_fp.shape != w_q.shape or w_fp.dim() != 2:
        raise MxlabError(f"weight_stats({module}): w_fp {tuple(w_fp.shape)} and w_q {tuple(w_q.shape)} "
                         "must be the same (out_features, in_features) shape")
    fmt, block_size = _spec_field(spec, "weights"), int(_spec_field(spec, "block_size"))
    w = w_fp.detach().to(torch.float32)
    q = w_q.detach().to(torch.float32).to(w.device)
    err = (w - q).pow(2).sum().item()
    sig = w.pow(2).sum().item()
    out = dict(module=module, block=int(block), format=fmt, block_size=block_size,
               out_features=int(w.shape[0]), in_features=int(w.shape[1]),
               w_min=w.amin(1).cpu().tolist(), w_max=w.amax(1).cpu().tolist(),
               mse=err / w.numel(),
               sqnr_db=10 * math.log10(sig / err) if err > 0 else float("inf"),
               flushed_frac=((w != 0) & (q == 0)).sum().item() / w.numel(),
               n_blocks=None, exp_values=None, exp_counts=None, saturated_frac=None, headroom_bits=None,
               clipped_block_frac=None, scale_rule=None)
    if fmt not in (None, "none") and is_mx(canonical_format(fmt)):
        rule = _spec_field(spec, "scale_rule") if (isinstance(spec, dict) and "scale_rule" in spec) or \
            hasattr(spec, "scale_rule") else "floor"
        rounding = _spec_field(spec, "rounding") if (isinstance(spec, dict) and "rounding" in spec) or \
            hasattr(spec, "rounding") else "nearest"
        out.update(mx_scale_stats(w, fmt, block_size, rule, rounding), scale_rule=rule)
    return out
