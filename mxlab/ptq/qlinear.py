"""QuantLinear: a Linear whose weight is stored quantized and whose input is quantized on the fly.

Both quantizations use blocks along in_features (axis -1), as the study does: a weight (out, in)
has blocks along each row, an activation (..., in) along each token's features. A ``rotate`` step
gives the layer an online input transform (``transform_input``: block Hadamard, then a per-channel
divisor that scaling steps after the rotation fold into), applied before the activation quantizer.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..errors import MxlabError
from ..formats import is_mx, pack, pack_quantized, quantize
from ..recipe import QuantSpec
from .rotation import rotate_blocks
import torch.nn as nn
import torch.nn.functional as F



class QuantLinear(nn.Module):
    """Drop-in replacement for nn.Linear in a quantized block.

    ``weight`` is floating point until a step (or the final RTN) calls ``set_quantized_weight``;
    from then on it holds the fake-quantized values (on the format's grid, in the model dtype)
    and ``weight_quantized`` is True. ``weight_fp`` keeps the FP reference weight for error
    measurements until ``release_fp``: the weight just before quantization, or before a step
    changed the function (AWQ's clipping calls ``keep_fp_reference``); scaling keeps it in the
    current basis.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, spec: QuantSpec,
                 device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype),
                                   requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype),
                                 requires_grad=False) if bias else None
        self.spec = spec
        self.weight_quantized = False
        self.weight_fp: Optional[torch.Tensor] = None
        self._packed = None
        self.rotation = 0                               # Hadamard block size of the input (0: none)
        self.input_scale: Optional[torch.Tensor] = None  # (in,) divisor after the rotation (scaling steps)

    @classmethod
    def from_linear(cls, linear: nn.Linear, spec: QuantSpec) -> "QuantLinear":
        """Wrap ``linear``'s own weight and bias tensors (no copy) with ``spec``."""
        q = cls(linear.in_features, linear.out_features, False, spec, device="meta")
        q.weight = nn.Parameter(linear.weight.data, requires_grad=False)
        q.bias = None if linear.bias is None else nn.Parameter(linear.bias.data, requires_grad=False)
        return q

    @property
    def has_transform(self) -> bool:
        """True when the input is rotated and/or rescaled online before quantization."""
        return self.rotation > 0 or self.input_scale is not None

    def transform_input(self, x: torch.Tensor) -> torch.Tensor:
        """The input the weight multiplies: ``x`` (..., in) rotated (x R), then divided by ``input_scale``."""
        if self.rotation:
            x = rotate_blocks(x, self.rotation)
        if self.input_scale is not None:
            x = (x.float() / self.input_scale.to(x.device)).to(x.dtype)
        return x

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (..., in_features), already transformed, fake-quantized in ``spec.acts`` (blocks along in)."""
        if self.spec.acts == "none":
            return x
        return quantize(x, self.spec.acts, **self.spec.quant_kwargs(self.spec.acts))

    def quantize_weight_rtn(self, w: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Round-to-nearest quantization of ``w`` (default: the current weight) in ``spec.weights``."""
        w = self.weight.data if w is None else w
        if self.spec.weights == "none":
            return w
        return quantize(w, self.spec.weights, **self.spec.quant_kwargs(self.spec.weights))

    @torch.no_grad()
    def keep_fp_reference(self) -> None:
        """Keep the current weight as the FP error reference before a step changes the function (clipping)."""
        if self.weight_fp is None:
            self.weight_fp = self.weight.data.clone()

    @torch.no_grad()
    def set_quantized_weight(self, q: torch.Tensor, packed=None) -> None:
        """Store the quantized weight ``q`` (out, in) and mark this layer done; steps after must not rescale it."""
        if q.shape != self.weight.shape:
            raise MxlabError(f"quantized weight has shape {tuple(q.shape)}, expected {tuple(self.weight.shape)}")
        self.keep_fp_reference()                # the earliest FP weight stays the error reference
        self.weight.data.copy_(q.to(self.weight.dtype))
        self.weight_quantized = True
        self._packed = packed

    def quantize_weight(self) -> None:
        """RTN-quantize the weight in place (no-op if already quantized)."""
        if self.weight_quantized:
            return
        if self.spec.weights == "none" or is_mx(self.spec.weights):
            self.set_quantized_weight(self.quantize_weight_rtn())   # MX: pack_quantized stores Q exactly later
        else:
            # per-channel int/nvfp4 scales of an already-quantized tensor can differ in the last bit:
            # pack the FP weight now and keep the packed form for export
            p = pack(self.weight.data, self.spec.weights, **self.spec.quant_kwargs(self.spec.weights))
            self.set_quantized_weight(p.dequantize().to(self.weight.device), packed=p)

    def unmark_quantized(self) -> None:
        """Treat the quantized weight as a starting point again (``Recipe.allow_requantize`` ablations)."""
        self.weight_quantized = False
        self._packed = None

    def release_fp(self) -> None:
        """Drop the pre-quantization copy of the weight (frees memory once the block is done)."""
        self.weight_fp = None

    def packed(self):
        """The weight as a PackedTensor (element codes + scales) for export."""
        if self._packed is not None:
            return self._packed
        if self.spec.weights == "none":
            raise MxlabError("this layer keeps its weights in floating point (weights 'none'): nothing to pack")
        kw = self.spec.quant_kwargs(self.spec.weights)
        if is_mx(self.spec.weights):  # the weight is on the grid: store it as it is (any scale rule)
            kw.pop("rounding")
            return pack_quantized(self.weight.data, self.spec.weights, **kw)
        return pack(self.weight.data, self.spec.weights, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.quantize_input(self.transform_input(x)), self.weight, self.bias)

    def extra_repr(self) -> str:
        s = self.spec
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"weights={s.weights}, acts={s.acts}, block_size={s.block_size}, scale_rule={s.scale_rule}, "
                f"rotation={self.rotation}, quantized={self.weight_quantized}")
