"""The Scale lab tab: every MX scale rule side by side on one layer of the loaded model, and model-wide means.

A layer is computed when it is picked (``scalelab.scale_rule_rows`` on its weight, and on inputs captured
from a few calibration tokens for the output error) and cached per session, so going back to it is
instant. The FP model is loaded once per process and shared read-only by the sessions (one model at a
time; a lock serialises the forward passes whose hooks capture a layer's inputs).
"""
from __future__ import annotations

import math
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.nn as nn

from .. import tables
from ..data import calibration_batches
from ..errors import MxlabError
from ..formats import FORMATS, canonical_format, is_mx
from ..limits import bound, check_max
from ..models import load_model
from ..ptq.plan import plan
from ..recipe import Recipe
from ..scalelab import scale_lab_model
from .session import SessionState, check_sources, exclusive, progress_adapter

MX_FORMATS = list(dict.fromkeys(canonical_format(f) for f in FORMATS if is_mx(f)))
CALIB_SET = "tinystories"     # the embedded calibration text: no file access, same tokens for every session
SEQ_LEN = 128                 # tokens per calibration sequence
CAPTURE_BYTES = 256 << 20     # captured float32 inputs held at once by the model-wide summary
RULE_COLUMNS = ["rule", "clipped blocks %", "flushed %", "weight SQNR dB", "output SQNR dB", "weight MSE",
                "output MSE", "exponents (min..max)"]


@dataclass(frozen=True)
class ScaleQuery:
    """What the tab's widgets ask for: model source (None: embedded), MX format, block size, rounding, tokens."""

    source: Optional[str]
    fmt: str
    block_size: int
    rounding: str
    tokens: int


def make_query(source: Optional[str], fmt: Any, block_size: Any, rounding: Any, tokens: Any) -> ScaleQuery:
    """Validated widget values (MxlabError saying what to change otherwise)."""
    if not isinstance(fmt, str) or fmt not in FORMATS or canonical_format(fmt) not in MX_FORMATS:
        raise MxlabError(f"Scale lab: pick an MX format ({', '.join(MX_FORMATS)}); the rules choose MX block "
                         "scales, other formats have none")
    size, n = _integer(block_size, "Block size"), _integer(tokens, "Calibration tokens")
    if size < 1:
        raise MxlabError(f"Block size must be at least 1, got {size}; MX uses 32")
    check_max(size, "block_size", "Block size")
    if n < 0:
        raise MxlabError(f"Calibration tokens must be 0 (weights only) or more, got {n}")
    check_max(n, "scale lab tokens", "Calibration tokens")
    Recipe(weights=fmt, acts="none", block_size=size, rounding=rounding)  # the recipe's own checks of the rest
    return ScaleQuery(source, canonical_format(fmt), size, rounding, n)


def _integer(value: Any, what: str) -> int:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise MxlabError(f"{what} must be a whole number, got {value!r}") from None
    if not math.isfinite(f) or f != int(f):
        raise MxlabError(f"{what} must be a whole number, got {value!r}")
    return int(f)


# ---------------------------------------------------------------------------- the shared FP model
@dataclass
class _Loaded:
    model: nn.Module
    tokenizer: Any
    lock: threading.Lock = field(default_factory=threading.Lock)
    calib: dict[int, torch.Tensor] = field(default_factory=dict)
    layers: dict[int, list[str]] = field(default_factory=dict)


_MODEL: dict[Optional[str], _Loaded] = {}
_MODEL_LOCK = threading.Lock()


def _loaded(source: Optional[str]) -> _Loaded:
    """The FP model of ``source``, loaded on first use; loading another one drops the previous (memory)."""
    with _MODEL_LOCK:
        if source not in _MODEL:
            check_sources(source, None, None)
            _MODEL.clear()
            model, tokenizer = load_model(source)
            _MODEL[source] = _Loaded(model.eval(), tokenizer)
        return _MODEL[source]


def _calibration(m: _Loaded, n: int) -> Optional[torch.Tensor]:
    """``n`` calibration tokens as (ceil(n / SEQ_LEN), SEQ_LEN) ids of CALIB_SET (None for 0)."""
    if n == 0:
        return None
    if n not in m.calib:
        m.calib[n] = calibration_batches(m.tokenizer, CALIB_SET, math.ceil(n / SEQ_LEN), min(n, SEQ_LEN), seed=0)
    return m.calib[n]


def layer_names(q: ScaleQuery) -> list[str]:
    """The decoder Linears a weight-only recipe in ``q.fmt`` quantizes (the plan's answer), in model order."""
    m = _loaded(q.source)
    if q.block_size not in m.layers:
        recipe = Recipe(weights=q.fmt, acts="none", block_size=q.block_size)
        m.layers[q.block_size] = [t.name for t in plan(m.model, recipe) if t.kind == "linear"]
    if not m.layers[q.block_size]:
        raise MxlabError("Scale lab: this model has no decoder Linear to quantize; load another model (tab 1)")
    return m.layers[q.block_size]


# ---------------------------------------------------------------------------- per-session cache
_CACHES: "weakref.WeakKeyDictionary[SessionState, OrderedDict]" = weakref.WeakKeyDictionary()


def _cache(state: SessionState) -> OrderedDict:
    return _CACHES.setdefault(state, OrderedDict())


def _remember(state: SessionState, key: tuple, rows: list[dict]) -> None:
    cache = _cache(state)
    cache[key] = rows
    cache.move_to_end(key)
    while len(cache) > bound("scale lab cache"):
        cache.popitem(last=False)      # least recently used layer first


def layer_rows(state: SessionState, q: ScaleQuery, layer: str) -> list[dict]:
    """``scalelab.scale_rule_rows`` of one layer, one row per rule (cached per session)."""
    if layer not in layer_names(q):
        raise MxlabError(f"Scale lab: {str(layer)[:80]!r} is not a decoder Linear of this model; "
                         "pick one from the list")
    key = (q, layer)
    cache = _cache(state)
    if key not in cache:
        m = _loaded(q.source)
        with m.lock:
            rows = scale_lab_model(m.model, q.fmt, q.block_size, q.rounding, tokens=_calibration(m, q.tokens),
                                   layers=[layer], max_tokens=max(q.tokens, 1))
        _remember(state, key, rows)
    cache.move_to_end(key)
    return cache[key]


def model_rows(state: SessionState, q: ScaleQuery, progress: Optional[Callable[[float, str], None]] = None
               ) -> list[dict]:
    """Every layer's rows (the cached ones reused, the others computed in chunks that bound captured inputs)."""
    names = layer_names(q)
    missing = [n for n in names if (q, n) not in _cache(state)]
    m = _loaded(q.source)
    wanted = set(missing)
    widest = max((mod.weight.shape[1] for name, mod in m.model.named_modules() if name in wanted), default=1)
    chunk = max(1, CAPTURE_BYTES // max(1, 4 * q.tokens * widest))
    for start in range(0, len(missing), chunk):
        part = missing[start:start + chunk]
        sub = None if progress is None else \
            (lambda f, msg, a=start: progress((a + f * len(part)) / len(missing), msg))
        with m.lock:
            rows = scale_lab_model(m.model, q.fmt, q.block_size, q.rounding, tokens=_calibration(m, q.tokens),
                                   layers=part, max_tokens=max(q.tokens, 1), progress=sub)
        for name in part:
            _remember(state, (q, name), [r for r in rows if r["module"] == name])
    return [r for name in names for r in _cache(state).get((q, name)) or layer_rows(state, q, name)]


# ---------------------------------------------------------------------------- what the tab shows
def _g(v: Any) -> Any:
    """4 significant digits for display; NaN (no calibration tokens) -> None (an empty cell)."""
    return None if v is None or v != v else float(f"{v:.4g}")


def rule_table(rows: list[dict]) -> list[list]:
    """One display row per rule (columns RULE_COLUMNS): percentages, dB, MSE, exponent range."""
    return [[r["scale_rule"], _g(100 * r["clipped_block_frac"]), _g(100 * r["flushed_frac"]), _g(r["weight_sqnr_db"]),
             _g(r["output_sqnr_db"]), _g(r["weight_mse"]), _g(r["output_mse"]),
             f"{min(r['exp_values'])}..{max(r['exp_values'])}" if r["exp_values"] else ""] for r in rows]


def layer_view(state: SessionState, q: ScaleQuery, layer: Optional[str]) -> dict[str, Any]:
    """The layer's rule table and figure (every rule: clipped/flushed, SQNR, exponent histograms), and the list."""
    from .. import plots

    names = layer_names(q)
    layer = layer or names[0]          # none picked yet: the first; an unknown name is refused (layer_rows)
    rows = layer_rows(state, q, layer)
    best = max(rows, key=lambda r: r["weight_sqnr_db"])["scale_rule"]
    inputs = f"output error on {q.tokens} calibration tokens ({CALIB_SET})" if q.tokens else \
        "weights only (set calibration tokens for the output error)"
    note = (f"**{layer}** in {q.fmt}, block {q.block_size}, rounding {q.rounding}: highest weight SQNR with "
            f"**{best}**; {inputs}.")
    return {"layers": names, "layer": layer, "table": rule_table(rows), "note": note,
            "figure": plots.scale_lab_figure(tables.scale_lab_table(rows), layer)}


def summary_view(state: SessionState, q: ScaleQuery, report: Callable[[float, str], None]) -> dict[str, Any]:
    """The mean over every layer per rule (``tables.scale_rule_summary``): a session's heavy job, so it waits
    at the server's gate like a run and stops within a layer when Cancel is pressed."""
    with exclusive(state, report, "A job of this session is still going; wait for it or press Cancel."):
        rows = model_rows(state, q, progress_adapter(report, state.cancel))
    summary = tables.scale_rule_summary(tables.scale_lab_table(rows))
    for c in summary.columns[2:]:
        summary[c] = summary[c].map(_g)
    best = summary.loc[summary["weight SQNR dB"].idxmax(), "rule"]
    return {"table": summary, "note": f"Mean over **{len(rows) // len(summary)} layers** of {q.fmt}, block "
                                      f"{q.block_size}: highest mean weight SQNR with **{best}**."}
