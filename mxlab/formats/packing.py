"""Real storage of quantized tensors: dense bit-packed element codes plus their scales.

Layouts (element codes in the row-major order of the tensor's own shape: the zero padding that
makes ``axis`` a whole number of blocks is not stored, it is implied by the shape):
- MX: sign-magnitude element codes (the reference's convention, so -0.0 survives) and one E8M0
  byte per block (``scales``, shape = padded shape with ``axis`` replaced by the block count;
  2^(byte - 127), 255 = NaN).
- nvfp4: E2M1 codes, one FP8 E4M3 byte per block (``scales``), a float32 ``tensor_scale``.
- int8/int4/int3: unsigned affine codes, an fp16 ``scale`` per channel and a ``zero_point`` per
  channel packed in the element's width (4 bits for int4), as a real INT checkpoint stores them.
  Checkpoints written before this layout (float32 scale, int32 zero point) still load.
Codes of b bits are packed densely by ``codes.pack_bits``.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import MxlabError
from .baselines import int_quantize, nvfp4_quantize
from .codes import element_values, encode_elements, pack_bits, unpack_bits
from .mx import blocked, block_amax, element_unit, mx_elements, mx_quantize_exponents, pow2, scale_factors, shared_exponent, unblocked
from .table import E2M1, FORMATS, canonical_format, check_args, check_scale_rule

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
           "float64": torch.float64}


@dataclass
class PackedTensor:
    """A quantized tensor in its real storage; ``dequantize()`` equals ``quantize()`` bit for bit."""

    fmt: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    block_size: int
    axis: int
    tensors: dict[str, Tensor] = field(default_factory=dict)  # "codes" plus the format's scales
    scale_rule: str = "floor"  # the MX rule that chose the exponents (provenance; dequantize needs none)

    @property
    def nbytes(self) -> int:
        """Bytes actually stored: packed codes plus every scale tensor."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    @property
    def device(self) -> torch.device:
        return self.tensors["codes"].device

    def bits_per_element(self) -> float:
        """Measured storage cost per original element (includes padding)."""
        return 8.0 * self.nbytes / max(1, math.prod(self.shape))

    def dequantize(self) -> Tensor:
        """The fake-quantized tensor (original shape and dtype)."""
        f = FORMATS[self.fmt]
        shape = torch.Size(self.shape)
        if f.kind == "int":
            codes = unpack_bits(self.tensors["codes"], f.bits, math.prod(shape)).reshape(shape)
            zp, scale = self.tensors["zero_point"], self.tensors["scale"]
            keep = list(shape)
            keep[self.axis] = 1
            if zp.dtype == torch.uint8:  # packed b-bit zero points (an int32 tensor: the earlier layout)
                zp = unpack_bits(zp, f.bits, scale.numel())
            out = (codes.float() - zp.reshape(keep).float()) * scale.reshape(keep).float()
            return out.to(self.dtype)
        scales = self.tensors["scales"]  # (outer, nblocks, inner)
        inner = scales.shape[2]
        codes = unpack_bits(self.tensors["codes"], f.bits, math.prod(shape)).reshape(shape)
        values, pad = blocked(element_values(f).to(codes.device)[codes], self.block_size, self.axis)
        if f.kind == "mx":
            e = scales.reshape(-1, 1, inner).to(torch.int32) - 127
            up = pow2(e.clamp(max=127)).masked_fill_(e == 128, float("nan"))
        else:
            up = scales.view(torch.float8_e4m3fn).float().reshape(-1, 1, inner) * self.tensors["tensor_scale"]
        return unblocked(values * up, shape, self.axis, pad).to(self.dtype)

    def state_dict(self, prefix: str = "") -> dict[str, Tensor]:
        """Tensors to save (e.g. with safetensors), keys prefixed."""
        return {prefix + k: v for k, v in self.tensors.items()}

    def metadata(self) -> dict[str, str]:
        """JSON-able strings that, with ``state_dict``, rebuild this tensor."""
        f = FORMATS[self.fmt]
        code = "unsigned_affine" if f.kind == "int" else "sign_magnitude"
        return {"fmt": self.fmt, "shape": json.dumps(list(self.shape)), "dtype": str(self.dtype).split(".")[-1],
                "block_size": str(self.block_size), "axis": str(self.axis), "code": code,
                "bits": str(f.bits), "scale_rule": self.scale_rule}

    @classmethod
    def from_state_dict(cls, tensors: dict[str, Tensor], metadata: dict[str, str], prefix: str = "") -> PackedTensor:
        """Rebuild from ``state_dict(prefix)`` (extra keys ignored) and ``metadata()``."""
        try:
            fmt = canonical_format(metadata["fmt"])
            names = {"mx": ["codes", "scales"], "nvfp4": ["codes", "scales", "tensor_scale"],
                     "int": ["codes", "scale", "zero_point"]}[FORMATS[fmt].kind]
            own = {k: tensors[prefix + k] for k in names}
            rule = check_scale_rule(metadata.get("scale_rule", "floor"))
            return cls(fmt, tuple(json.loads(metadata["shape"])), _DTYPES[metadata["dtype"]],
                       int(metadata["block_size"]), int(metadata["axis"]), own, rule)
        except KeyError as exc:
            raise MxlabError(f"packed tensor {prefix!r} is incomplete: missing {exc}; re-export it") from exc


def pack(x: Tensor, fmt: str, block_size: int = 32, axis: int = -1, rounding: str = "nearest",
         scale_rule: str = "floor", *, scale: Tensor | None = None, zero_point: Tensor | None = None) -> PackedTensor:
    """Quantize x into ``fmt`` and store it packed, with the block exponents ``scale_rule`` chose
    (``scale``/``zero_point``: int formats only)."""
    f, ax = check_args(x, fmt, block_size, axis, rounding, scale_rule)
    if f is None:
        raise MxlabError("format 'none' has nothing to pack; keep the tensor as it is")
    if (scale is not None or zero_point is not None) and f.kind != "int":
        raise MxlabError(f"scale=/zero_point= apply to int8/int4/int3 only, not {f.name}")
    shape = tuple(x.shape)
    with torch.no_grad():
        if f.kind == "int":
            _, codes, s, zp = int_quantize(x, f, ax, rounding, scale, zero_point)
            keep = [d for i, d in enumerate(shape) if i != ax]
            tensors = {"codes": pack_bits(codes, f.bits), "scale": s.reshape(keep).half().contiguous(),  # exact: fp16 scales
                       "zero_point": pack_bits(zp.reshape(-1).to(torch.uint8), f.bits)}
        elif f.kind == "mx":
            elements, e = mx_quantize_exponents(x, f, block_size, ax, rounding, scale_rule)
            tensors = _mx_tensors(elements, e, f, block_size, ax, shape)
        else:
            _, q, s8, ts = nvfp4_quantize(x, ax)
            inner, pad = q.shape[2], (-(x.shape[ax] if x.dim() else 1)) % block_size
            tensors = {"codes": pack_bits(encode_elements(unblocked(q, x.shape, ax, pad), E2M1), 4),
                       "scales": s8.view(torch.uint8).reshape(_outer(shape, ax), -1, inner),
                       "tensor_scale": ts.reshape(()).float()}
    return PackedTensor(f.name, shape, x.dtype, block_size, ax if shape else 0, tensors, scale_rule)


def _mx_tensors(elements: Tensor, e: Tensor, f, block_size: int, ax: int, shape: tuple[int, ...]
                ) -> dict[str, Tensor]:
    """Codes and E8M0 bytes of float32 element values (x / 2^e, unblocked) and block exponents e (N, 1, inner)."""
    ob, pad = blocked(elements, block_size, ax)  # (N, block, inner) float32
    q = torch.where(e == 128, 0.0, ob)  # NaN block -> code 0
    scales = (e + 127).to(torch.uint8)  # 128 + 127 = 255: NaN
    return {"codes": pack_bits(encode_elements(unblocked(q, torch.Size(shape), ax, pad), f), f.bits),
            "scales": scales.reshape(_outer(shape, ax), -1, ob.shape[2])}


def pack_quantized(q: Tensor, fmt: str, block_size: int = 32, axis: int = -1, scale_rule: str = "floor"
                   ) -> PackedTensor:
    """Store an MX tensor that is already on the format's grid (e.g. GPTQ's result) exactly.

    Each block gets the finest exponent that represents it exactly: floor's e of its own maximum,
    else e + 1 (an e4m3 block can need it). Rules other than floor need not reproduce a quantized
    tensor's exponents from its values (ceil picks e + 1 for a block whose maximum is 6 2^e in
    fp4, losing its smallest values), so re-quantizing is not a way to pack. ``scale_rule`` is
    recorded. MxlabError when a block is on neither grid.
    """
    f, ax = check_args(q, fmt, block_size, axis, "nearest", scale_rule)
    if f is None or f.kind != "mx":
        raise MxlabError(f"pack_quantized stores MX tensors; for {fmt} use pack (with scale=/zero_point= for int)")
    shape = tuple(q.shape)
    with torch.no_grad():
        xb, pad = blocked(q.float(), block_size, ax)  # (N, block, inner)
        e0 = shared_exponent(block_amax(xb), f)
        e1 = torch.where(e0 == 128, e0, (e0 + 1).clamp(max=127))

        def exact_at(e: Tensor) -> Tensor:  # (N, 1, inner): the block is on the grid of 2^e
            y = mx_elements(xb, *scale_factors(e, f), f, "nearest")
            return ((y == xb) | y.isnan()).all(dim=1, keepdim=True)

        ok0 = exact_at(e0)
        found = ok0 | exact_at(e1)
        exact = torch.where(ok0, e0, e1)
        if not bool(found.all()):
            raise MxlabError(f"pack_quantized: the tensor is not on the {f.name} grid with block {block_size}; "
                             "quantize it first (or use pack)")
        down = scale_factors(exact, f)[0]
        elements = mx_elements(xb, down, element_unit(exact, f), f, "nearest")
        tensors = _mx_tensors(unblocked(elements, torch.Size(shape), ax, pad), exact, f, block_size, ax, shape)
    return PackedTensor(f.name, shape, q.dtype, block_size, ax if shape else 0, tensors, scale_rule)


def _outer(shape: tuple[int, ...], axis: int) -> int:
    return math.prod(shape[:axis]) if shape else 1
