"""Block-diagonal Hadamard rotations: R = blockdiag(H_n / sqrt(n)), orthogonal and symmetric (R R = I).

A Linear y = x W^T is unchanged by W -> W R and x -> x R. With n the MX block size, each MX block of
the rotated input mixes exactly the n channels it covers, spreading an outlier over its block
(QuaRot, and MR-GPTQ / FP-Quant with block-sized Hadamards for MXFP4).
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch

from ..errors import MxlabError


def check_rotation_size(size: int) -> int:
    """``size`` if it is a power of two in [2, 4096] (Sylvester's construction); else MxlabError."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 2 or size > 4096 or size & (size - 1):
        raise MxlabError(f"rotate: size must be a power of two between 2 and 4096 (usually the MX block size, "
                         f"e.g. 32), got {size!r}")
    return size


@lru_cache(maxsize=16)
def _hadamard(size: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < size:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)  # Sylvester: [[H, H], [H, -H]]
    return (h / math.sqrt(size)).float()


def hadamard(size: int) -> torch.Tensor:
    """The orthonormal Hadamard matrix H_size / sqrt(size) (size, size), float32, symmetric."""
    return _hadamard(check_rotation_size(size)).clone()


def rotate_blocks(x: torch.Tensor, size: int) -> torch.Tensor:
    """x R for x (..., n) with R = blockdiag(H_size / sqrt(size)) (n a multiple of size); x's dtype,
    computed in float32."""
    n = x.shape[-1]
    if n % size:
        raise MxlabError(f"rotate: {n} features are not a whole number of {size}-blocks; use a size that divides {n}")
    h = _hadamard(check_rotation_size(size)).to(x.device)
    y = x.reshape(*x.shape[:-1], n // size, size).float() @ h      # (..., n / size, size)
    return y.reshape(x.shape).to(x.dtype)
