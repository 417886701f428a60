"""GPTQ's Hessian H = 2 X^T X / n in a chosen GEMM precision (float32, TF32 or bf16 inputs).

``float32`` is the reference (CUDA cores on a GPU). ``tf32`` and ``bf16`` run the X^T X products on
tensor cores: inputs rounded to TF32 (10 mantissa bits) or bf16 (7), products accumulated in float32.
For a bf16 model the block inputs are bf16 already, so both roundings are exact there and only the
summation order changes. On the CPU the same rounding is emulated (inputs rounded, float32 GEMM), so
the numerical effect can be measured without a GPU (``benchmarks/hessian_precision.py``).
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterable, Iterator

import torch

from ...errors import MxlabError
from ...steps import HESSIAN_DTYPES

log = logging.getLogger(__name__)
_STATE: dict[str, bool] = {}
HESSIAN_CHUNK = 8192  # tokens per X^T X pass: bounds the float32 copy of a bf16 input chunk


def round_tf32(x: torch.Tensor) -> torch.Tensor:
    """float32 x rounded to TF32 (10 mantissa bits), ties to even, as float32 (NaN/Inf kept)."""
    bits = x.to(torch.float32).contiguous().view(torch.int32)
    lsb = (bits >> 13) & 1
    r = ((bits + 0xFFF + lsb) & ~0x1FFF).view(torch.float32)
    return torch.where(torch.isfinite(x), r, x.to(torch.float32))


@contextmanager
def tf32_matmul(on: bool) -> Iterator[None]:
    """CUDA float32 GEMMs on TF32 tensor cores inside the block (no-op when ``on`` is False)."""
    if not on:
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def _accumulate(H: torch.Tensor, c: torch.Tensor, dtype: str) -> None:
    """H += c^T c for one chunk c (n, in) float32, in ``dtype``'s GEMM precision."""
    if dtype == "float32":
        H.addmm_(c.T, c)
    elif c.is_cuda and dtype == "bf16":
        b = c.to(torch.bfloat16)
        if _STATE.get("mm_out_dtype", True):
            try:
                H.add_(torch.mm(b.T, b, out_dtype=torch.float32))     # bf16 tensor cores, float32 accumulation
                return
            except (TypeError, RuntimeError, NotImplementedError) as exc:
                _STATE["mm_out_dtype"] = False
                log.warning("torch.mm(out_dtype=float32) unavailable (%s): bf16 Hessian inputs go through TF32 "
                            "tensor cores instead (bf16 values are exact in TF32: same products)", exc)
        r = b.to(torch.float32)
        with tf32_matmul(True):
            H.addmm_(r.T, r)
    elif c.is_cuda:  # tf32
        with tf32_matmul(True):
            H.addmm_(c.T, c)
    else:  # CPU emulation: round the inputs as the tensor cores would, multiply exactly in float32
        r = round_tf32(c) if dtype == "tf32" else c.to(torch.bfloat16).to(torch.float32)
        H.addmm_(r.T, r)


def hessian(x: torch.Tensor | Iterable[torch.Tensor], dtype: str = "float32") -> torch.Tensor:
    """H = 2 X^T X / n (in, in), float32, from inputs x (n_tokens, in) or a stream of (n_b, in) batches.

    ``dtype``: the GEMM precision, one of ``HESSIAN_DTYPES`` (the result is float32 either way).
    """
    if dtype not in HESSIAN_DTYPES:
        raise MxlabError(f"hessian dtype must be one of {', '.join(HESSIAN_DTYPES)}, got {dtype!r}")
    chunks = (x[i:i + HESSIAN_CHUNK] for i in range(0, x.shape[0], HESSIAN_CHUNK)) \
        if isinstance(x, torch.Tensor) else x
    H, n = None, 0
    for c in chunks:
        c = c.reshape(-1, c.shape[-1]).to(torch.float32)  # (chunk, in)
        if H is None:
            H = torch.zeros(c.shape[1], c.shape[1], dtype=torch.float32, device=c.device)
        _accumulate(H, c, dtype)
        n += c.shape[0]
    if H is None or n == 0:
        raise MxlabError("GPTQ: no calibration inputs to build the Hessian from; check the calibration set")
    return H.mul_(2.0 / n)
