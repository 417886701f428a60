"""GPTQ's column-wise inner loop fused into one Triton kernel per outer block: what it supports, when
it can run, and the per-row quantization parameters it needs (``ColumnRule``).

Torch-only module: the kernel itself (``gptq_kernel.py``) imports triton and is loaded on first use.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ...errors import MxlabError
from ...formats import FORMATS, ElementFormat, block_amax, canonical_format, int_qparams, search_exponent, shared_exponent

_STATE: dict[str, object] = {}


@dataclass
class ColumnRule:
    """How the kernel quantizes a column: "int" (per-row scale / zero point fixed from the original W)
    or "mx" (per-row block exponents fixed from the updated weights at each block's first column, or,
    for mx_update="static", given in ``exps``: every block's exponents from the weights before the loop)."""

    kind: str
    fmt: ElementFormat
    rounding: str
    block_size: int = 1
    scale: Optional[torch.Tensor] = None   # (rows,) float32
    zero: Optional[torch.Tensor] = None    # (rows,) float32 (integer values)
    inv: Optional[torch.Tensor] = None     # (rows,) float32: 1 / scale as torch computes it
    qmax: int = 0
    exps: Optional[torch.Tensor] = None    # (rows, in / block_size) int32: static MX exponents


def fused_supports(spec, mx_update: str) -> bool:
    """True if the kernel covers GPTQ in ``spec.weights`` with ``mx_update``: per-channel INT, MX with
    static scales (any scale rule: the exponents are computed before the loop), or MX with the column
    rule and the floor scale rule (the kernel derives those exponents itself). The micro-block rule
    quantizes whole blocks at once: no column loop to fuse."""
    kind = FORMATS[canonical_format(spec.weights)].kind
    return kind == "int" or (kind == "mx" and (mx_update == "static" or (
        mx_update == "column" and getattr(spec, "scale_rule", "floor") == "floor")))


def block_exponents(Wb: torch.Tensor, f: ElementFormat, rule: str, rounding: str) -> torch.Tensor:
    """Shared exponents (out, 1, 1) int32 of one MX block of columns Wb (out, m <= block size) under scale
    rule ``rule``, as ``quantize`` would fix them (128 marks a NaN block)."""
    xb = Wb if Wb.dtype in (torch.float32, torch.bfloat16, torch.float16) else Wb.float()
    e = shared_exponent(block_amax(xb.unsqueeze(-1)), f, rule)
    return search_exponent(xb.unsqueeze(-1), e, f, rounding) if rule == "mse" else e


def fused_available() -> bool:
    """True when CUDA and triton are there (the kernel runs on CUDA tensors only, outside the tests)."""
    if "ok" not in _STATE:
        try:
            import triton  # noqa: F401
            _STATE["ok"] = torch.cuda.is_available()
        except ImportError:
            _STATE["ok"] = False
    return bool(_STATE["ok"])


def column_rule(W: torch.Tensor, spec, mx_update: str = "column") -> ColumnRule:
    """The ColumnRule of GPTQ on W (out, in) in ``spec.weights`` (its INT parameters from W's rows; with
    ``mx_update="static"`` every block's MX exponents from W as it is now)."""
    f = FORMATS[canonical_format(spec.weights)]
    if f.kind == "mx":
        exps = None
        if mx_update == "static":
            bs = spec.block_size
            exps = torch.cat([block_exponents(W[:, c:c + bs], f, spec.scale_rule, spec.rounding)[:, :, 0]
                              for c in range(0, W.shape[1], bs)], dim=1).to(torch.int32).contiguous()
            if bool((exps == 128).any()):
                raise MxlabError("GPTQ: the weights hold NaN or Inf; fix the checkpoint before quantizing")
        return ColumnRule("mx", f, spec.rounding, spec.block_size, exps=exps)
    scale, zero_point = int_qparams(W, f, axis=-1)                 # (out,), as weight_quantizer's
    scale = scale.float().contiguous()
    return ColumnRule("int", f, spec.rounding, 1, scale, zero_point.float().contiguous(),
                      (1.0 / scale).contiguous(), 2 ** f.bits - 1)


def fused_column_block(W1: torch.Tensor, U1: torch.Tensor, rule: ColumnRule,
                       first_col: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q1, Err1) of one outer block W1 (rows, b1) float32, whose first column is ``first_col`` of W (a
    multiple of the MX block size), by the Triton kernel (W1 is not modified)."""
    from . import gptq_kernel     # project module that imports triton: loaded only when used
    return gptq_kernel.column_block(W1, U1, rule, first_col)
