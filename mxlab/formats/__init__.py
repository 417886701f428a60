"""Number formats as data, fake quantization into them (``quantize``) and real storage (``pack``).

The public surface of the package; the pieces live in submodules, lowest first:
``table`` (the format table and names), ``mx`` (the MX quantizer and its shared exponent),
``baselines`` (per-channel INT, NVFP4), ``codes`` (element codes, bit packing), ``packing``
(``PackedTensor``, ``pack``) and ``kernels`` (Triton, loaded by ``mx`` for CUDA tensors only).
``quantize`` is defined here because it dispatches over the MX quantizer and the baselines.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import MxlabError
from .baselines import int_qparams, int_quantize, nvfp4_quantize
from .codes import element_values, encode_elements, pack_bits, unpack_bits
from .mx import block_amax, mx_elements, mx_quantize, scale_factors, search_exponent, shared_exponent
from .packing import PackedTensor, pack, pack_quantized
from .table import (FORMATS, ROUNDINGS, SCALE_RULES, ElementFormat, bits_per_element, canonical_format, check_args,
                    check_scale_rule, is_mx)


def quantize(x: Tensor, fmt: str, block_size: int = 32, axis: int = -1, rounding: str = "nearest",
             scale_rule: str = "floor", *, scale: Tensor | None = None, zero_point: Tensor | None = None) -> Tensor:
    """Fake-quantize x into ``fmt``: same shape and dtype, values on the format's grid ("none" -> x).

    ``scale_rule`` (MX formats): how a block's E8M0 exponent is chosen, one of ``SCALE_RULES``.
    ``scale``/``zero_point`` (int formats only): explicit per-channel parameters (e.g. GPTQ's).
    ``nvfp4`` takes block_size 16 and rounding ``even`` only (NVIDIA's definition); others are refused.
    """
    f, ax = check_args(x, fmt, block_size, axis, rounding, scale_rule)
    if f is None:
        return x
    if (scale is not None or zero_point is not None) and f.kind != "int":
        raise MxlabError(f"scale=/zero_point= apply to int8/int4/int3 only, not {f.name}")
    if x.numel() == 0:
        return x.clone()
    with torch.no_grad():
        if f.kind == "mx":
            return mx_quantize(x, f, block_size, ax, rounding, scale_rule)
        if f.kind == "int":
            return int_quantize(x, f, ax, rounding, scale, zero_point)[0].to(x.dtype)
        return nvfp4_quantize(x, ax)[0].to(x.dtype)


__all__ = ["FORMATS", "ROUNDINGS", "SCALE_RULES", "ElementFormat", "PackedTensor", "bits_per_element",
           "block_amax", "canonical_format", "check_scale_rule", "element_values", "encode_elements", "int_qparams",
           "is_mx", "mx_elements", "pack", "pack_bits", "pack_quantized", "quantize", "scale_factors",
           "search_exponent", "shared_exponent", "unpack_bits"]
