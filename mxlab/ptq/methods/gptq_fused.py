"""GPTQ's column-wise inner loop fused into one Triton kernel per outer block: what it supports, when
it can run, and the per-row quantization parameters it needs (``ColumnRule``).

Torch-only module: the kernel itself (``gptq_kernel.py``) imports triton and is loaded on first use.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ...formats import FORMATS, ElementFormat, canonical_format, int_qparams

_STATE: dict[str, object] = {}


@dataclass
class ColumnRule:
    """How the kernel quantizes a column: "int" (per-row scale / zero point fixed from the original W)
    or "mx" (per-row block exponents fixed from the updated weights at each block's first column)."""

    kind: str
    fmt: ElementFormat
    rounding: str
    block_size: int = 1
    scale: Optional[torch.Tensor] = None   # (rows,) float32
    zero: Optional[torch.Tensor] = None    # (rows,) float32 (integer values)
    inv: Optional[torch.Tensor] = None     # (rows,) float32: 1 / scale as torch computes it
    qmax: int = 0


def fused_supports(spec, mx_update: str) -> bool:
    """True if the kernel covers GPTQ in ``spec.weights`` with ``mx_update``: per-channel INT, or MX with
    the column rule and the floor scale rule (the micro-block rule quantizes whole blocks at once: no
    column loop to fuse; static scales and the other scale rules are the torch path's)."""
    kind = FORMATS[canonical_format(spec.weights)].kind
    return kind == "int" or (kind == "mx" and mx_update == "column" and getattr(spec, "scale_rule", "floor") == "floor")


def fused_available() -> bool:
    """True when CUDA and triton are there (the kernel runs on CUDA tensors only, outside the tests)."""
    if "ok" not in _STATE:
        try:
            import triton  # noqa: F401
            _STATE["ok"] = torch.cuda.is_available()
        except ImportError:
            _STATE["ok"] = False
    return bool(_STATE["ok"])


def column_rule(W: torch.Tensor, spec) -> ColumnRule:
    """The ColumnRule of GPTQ on W (out, in) in ``spec.weights`` (its INT parameters from W's rows)."""
    f = FORMATS[canonical_format(spec.weights)]
    if f.kind == "mx":
        return ColumnRule("mx", f, spec.rounding, spec.block_size)
    scale, zero_point = int_qparams(W, f, axis=-1)                 # (out,), as weight_quantizer's
    scale = scale.float().contiguous()
    return ColumnRule("int", f, spec.rounding, 1, scale, zero_point.float().contiguous(),
                      (1.0 / scale).contiguous(), 2 ** f.bits - 1)


def fused_column_block(W1: torch.Tensor, U1: torch.Tensor, rule: ColumnRule) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q1, Err1) of one outer block W1 (rows, b1) float32 by the Triton kernel (W1 is not modified)."""
    from . import gptq_kernel     # project module that imports triton: loaded only when used
    return gptq_kernel.column_block(W1, U1, rule)
