"""Per-module statistics (torch only) and tidy tables of them (pandas, imported lazily).

The pipeline calls two hooks for every quantized Linear; both return plain, JSON-able dicts
(lists, floats, ints, strings) so the GPU machine needs no pandas:

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
    headroom_bits      mean over nonzero blocks of max(0, log2(max_norm * 2^e / amax)): the bits of
                       range the power-of-two scale leaves unused, against an exact real scale

Tables (one row each):
    records_table        module x step: block, step, module, mse_before, mse_after, sqnr_before,
                         sqnr_after, d_mse, d_sqnr, seconds, step_seconds, detail_<key>...
    activation_table     module x stage: module, block, stage, n_tokens, in_features, outlier_ratio,
                         kurtosis, absmax_max, absmax_median, top_channels (str "i,j,...")
    activation_channel_table   module x stage x channel (long): module, block, stage, channel,
                         absmax, mean_abs
    weights_table        module: module, block, format, block_size, out_features, in_features, mse,
                         sqnr_db, flushed_frac, n_blocks, saturated_frac, headroom_bits
    weight_channel_table module x output channel (long): module, block, channel, w_min, w_max
    scale_table          module x exponent (long, MX modules only): module, block, format,
                         block_size, exponent, count
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Iterable

import torch

from .errors import MxlabError

log = logging.getLogger(__name__)

TOP_K = 8
_CHUNK = 8192  # rows of x per pass: bounds the float64 temporaries for big calibration sets


# ----------------------------------------------------------------------------- hooks (torch)


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


def mx_scale_stats(w: torch.Tensor, fmt: str, block_size: int) -> dict:
    """E8M0 exponent histogram, saturation and headroom of an MX format on w (out, in), blocks along in."""
    from .formats import FORMATS, canonical_format, shared_exponent

    ef = FORMATS[canonical_format(fmt)]
    emax, max_norm = int(ef.emax), float(ef.max_norm)
    w = w.detach().to(torch.float32)
    out_f, in_f = w.shape
    k = in_f if block_size is None or block_size <= 0 else block_size
    pad = (-in_f) % k
    wb = torch.nn.functional.pad(w, (0, pad)).reshape(out_f, -1, k)  # (out, n_blocks_per_row, k)
    amax = wb.abs().amax(-1)  # (out, nb)
    e = shared_exponent(amax, ef)  # (out, nb); 128: a block holding Inf/NaN
    # Inf/NaN blocks: this table has always reported finite exponents for them (its former frexp
    # reading: NaN as an all-zero block, Inf as frexp's exponent 0, e = -1 - emax); kept unchanged
    e = torch.where(e == 128, torch.where(amax.isnan(), -126, -1) - emax, e).clamp(-127, 127)
    scale = torch.ldexp(torch.ones_like(amax), e.to(torch.int32))
    scaled = wb.abs() / scale.unsqueeze(-1)  # (out, nb, k) element magnitudes on the element grid
    saturated = (scaled > max_norm).sum().item()
    nz = amax > 0
    headroom = torch.log2(max_norm * scale[nz] / amax[nz]).clamp(min=0)
    values, counts = torch.unique(e.flatten(), return_counts=True)
    return dict(n_blocks=int(e.numel()), exp_values=values.tolist(), exp_counts=counts.tolist(),
                saturated_frac=saturated / w.numel(),
                headroom_bits=float(headroom.mean()) if headroom.numel() else 0.0)


def weight_stats(module: str, block: int, w_fp: torch.Tensor, w_q: torch.Tensor, spec: Any) -> dict:
    """Range, error and (for MX formats) scale statistics of one quantized weight (out, in)."""
    from .formats import canonical_format, is_mx

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
               n_blocks=None, exp_values=None, exp_counts=None, saturated_frac=None, headroom_bits=None)
    if fmt not in (None, "none") and is_mx(canonical_format(fmt)):
        out.update(mx_scale_stats(w, fmt, block_size))
    return out


# ----------------------------------------------------------------------------- tables (pandas)


def _get(obj: Any, name: str, default: Any = None) -> Any:
    """Attribute of a dataclass record, or key of its dict form (records loaded from JSON)."""
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _split_stats(stats: Any, key: str) -> list[dict]:
    """The list of `key` rows from QuantResult.stats ({"activations": [...], "weights": [...]}) or a list."""
    if stats is None:
        return []
    if isinstance(stats, dict):
        return list(stats.get(key, []))
    return list(stats)


def records_table(records: Iterable[Any]):
    """One row per module x step from StepRecords (dataclasses or dicts), in pipeline order."""
    import pandas as pd

    rows = []
    for order, rec in enumerate(records or []):
        for m in _get(rec, "modules", []) or []:
            row = dict(order=order, block=_get(rec, "block"), step=_get(rec, "step"), module=_get(m, "module"),
                       mse_before=_get(m, "mse_before"), mse_after=_get(m, "mse_after"),
                       sqnr_before=_get(m, "sqnr_before"), sqnr_after=_get(m, "sqnr_after"),
                       seconds=_get(m, "seconds"), step_seconds=_get(rec, "seconds"))
            for key, val in (_get(m, "details", {}) or {}).items():
                scalar = val is None or isinstance(val, (bool, int, float, str))
                row[f"detail_{key}"] = val if scalar else json.dumps(val, default=str)
            rows.append(row)
    cols = ["order", "block", "step", "module", "mse_before", "mse_after", "sqnr_before", "sqnr_after",
            "seconds", "step_seconds"]
    df = pd.DataFrame(rows, columns=cols + sorted({c for r in rows for c in r} - set(cols)))
    df["d_mse"] = df["mse_after"].astype(float) - df["mse_before"].astype(float)
    df["d_sqnr"] = df["sqnr_after"].astype(float) - df["sqnr_before"].astype(float)
    return df


def activation_table(stats: Any):
    """One row per module x stage: outlier summary of the calibration inputs."""
    import pandas as pd

    rows = []
    for s in _split_stats(stats, "activations"):
        absmax = torch.tensor([math.nan if v is None else v for v in s["absmax"]])  # JSON wrote nan as null
        rows.append(dict(module=s["module"], block=s["block"], stage=s["stage"], n_tokens=s["n_tokens"],
                         in_features=s["in_features"], outlier_ratio=s["outlier_ratio"], kurtosis=s["kurtosis"],
                         absmax_max=float(absmax.max()), absmax_median=float(absmax.median()),
                         top_channels=",".join(str(c) for c in s["top_channels"])))
    return pd.DataFrame(rows, columns=["module", "block", "stage", "n_tokens", "in_features", "outlier_ratio",
                                       "kurtosis", "absmax_max", "absmax_median", "top_channels"])


def activation_channel_table(stats: Any):
    """Long table, one row per module x stage x input channel: absmax and mean |x|."""
    import pandas as pd

    frames = [pd.DataFrame(dict(module=s["module"], block=s["block"], stage=s["stage"],
                                channel=range(len(s["absmax"])), absmax=s["absmax"], mean_abs=s["mean_abs"]))
              for s in _split_stats(stats, "activations")]
    cols = ["module", "block", "stage", "channel", "absmax", "mean_abs"]
    return pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)


_WEIGHT_COLS = ["module", "block", "format", "block_size", "out_features", "in_features", "mse", "sqnr_db",
                "flushed_frac", "n_blocks", "saturated_frac", "headroom_bits"]


def weights_table(stats: Any):
    """One row per quantized module: weight error, flush-to-zero, saturation and headroom."""
    import pandas as pd

    return pd.DataFrame([{c: s.get(c) for c in _WEIGHT_COLS} for s in _split_stats(stats, "weights")],
                        columns=_WEIGHT_COLS)


def weight_channel_table(stats: Any):
    """Long table, one row per module x output channel: the channel's weight range."""
    import pandas as pd

    frames = [pd.DataFrame(dict(module=s["module"], block=s["block"], channel=range(len(s["w_min"])),
                                w_min=s["w_min"], w_max=s["w_max"]))
              for s in _split_stats(stats, "weights")]
    cols = ["module", "block", "channel", "w_min", "w_max"]
    return pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)


def scale_table(stats: Any):
    """Long table, one row per MX module x shared exponent: how many blocks use that exponent."""
    import pandas as pd

    rows = [dict(module=s["module"], block=s["block"], format=s["format"], block_size=s["block_size"],
                 exponent=int(v), count=int(c))
            for s in _split_stats(stats, "weights") if s.get("exp_values") is not None
            for v, c in zip(s["exp_values"], s["exp_counts"])]
    return pd.DataFrame(rows, columns=["module", "block", "format", "block_size", "exponent", "count"])


def to_csv(df, path: str | Path) -> Path:
    """Write one table as CSV atomically (temp file + rename); returns the path."""
    import os
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            df.to_csv(f, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_tables(out_dir: str | Path, records: Any = None, stats: Any = None) -> dict[str, Path]:
    """Write every table that has rows as <out_dir>/<name>.csv; returns {name: path}."""
    tables = {"records": records_table(records), "activations": activation_table(stats),
              "activation_channels": activation_channel_table(stats), "weights": weights_table(stats),
              "weight_channels": weight_channel_table(stats), "scales": scale_table(stats)}
    return {name: to_csv(df, Path(out_dir) / f"{name}.csv") for name, df in tables.items() if len(df)}
