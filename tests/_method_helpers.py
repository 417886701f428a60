"""Shared pieces of the AWQ/GPTQ tests: formats under test, toy inputs with outliers, error measures."""
from __future__ import annotations

import torch

from mxlab.formats import pack, quantize
from mxlab.methods.gptq import weight_quantizer as _gptq_weight_quantizer
from mxlab.recipe import QuantSpec

MX_FORMATS = ["mxint4", "mxint3", "mxfp4_e2m1"]   # every MX format of 3 or 4 bits
INT_FORMATS = ["int4", "int3"]


def outlier_inputs(n: int, d: int, seed: int = 0, n_outliers: int = 4, factor: float = 30.0) -> torch.Tensor:
    """(n, d) float32 activations: correlated Gaussian channels, a few of them `factor` times larger."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.eye(d) + 0.3 * torch.randn(d, d, generator=g) / d ** 0.5   # mild channel correlation
    x = torch.randn(n, d, generator=g) @ mix
    idx = torch.randperm(d, generator=g)[:n_outliers]
    x[:, idx] *= factor
    return x


def output_mse(x: torch.Tensor, W: torch.Tensor, Q: torch.Tensor) -> float:
    """mean ||x W^T - x Q^T||^2 per output element, in float64."""
    x, W, Q = x.double(), W.double(), Q.double()
    return float(((x @ (W - Q).T) ** 2).mean())


def weight_quantizer(W: torch.Tensor, fmt: str, block_size: int = 32):
    """(quantizer, gptq block size, on_grid(Q) -> bool) for W in ``fmt``, as the gptq step builds them."""
    spec = QuantSpec(weights=fmt, acts="none", block_size=block_size)
    quant, block, pack_fn = _gptq_weight_quantizer(W, spec)
    if block == 1:  # per-channel int: on the grid of the original W's scale / zero point
        on_grid = lambda Q: torch.equal(pack_fn(Q).dequantize().to(Q.dtype), Q)  # noqa: E731
    else:
        on_grid = lambda Q: torch.equal(quantize(Q, fmt, block_size), Q)  # noqa: E731
    return quant, block, on_grid
