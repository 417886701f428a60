"""The element formats as data: one table of parameters, their names, and argument checks.

Every quantizer reads its numbers from ``FORMATS`` (bits, exponent and mantissa bits, emax,
max_norm, as in microsoft/microxcaling ``mx/formats.py``), so a format is one row, not a branch.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..errors import MxlabError

ROUNDINGS = ("nearest", "even", "floor")
NVFP4_BLOCK = 16          # NVIDIA's NVFP4: 16 E2M1 elements per E4M3 scale, elements rounded to nearest-even
NVFP4_ROUNDING = "even"
# how an MX block's E8M0 exponent follows from its largest magnitude (mx.shared_exponent says how)
SCALE_RULES = ("floor", "ceil", "even", "rceil", "mse")


@dataclass(frozen=True)
class ElementFormat:
    """One element format. ``kind``: "mx" (shared E8M0 scale), "int" (per-channel affine), "nvfp4"."""

    name: str
    kind: str
    bits: int          # storage bits per element code
    ebits: int = 0     # exponent bits (0: integer elements)
    mbits: int = 0     # mantissa bits counting sign and implicit bit (the reference's convention)
    emax: int = 0      # largest element exponent
    max_norm: float = 0.0

    @property
    def frac_bits(self) -> int:
        """Fraction (mantissa) bits of an element: e2m1 1, e2m3 3, e4m3 3, mxint8 6, mxint2 0."""
        return self.mbits - 2

    @property
    def min_exp(self) -> int:
        """Smallest normal exponent (floats); subnormals below it keep a fixed step."""
        return 2 - 2 ** (self.ebits - 1) if self.ebits else 0


def _mxfp(name: str, ebits: int, mbits: int, emax: int, max_norm: float) -> ElementFormat:
    return ElementFormat(name, "mx", ebits + mbits - 1, ebits, mbits, emax, max_norm)


def _mxint(name: str, bits: int) -> ElementFormat:
    return ElementFormat(name, "mx", bits, 0, bits, 0, (2 ** (bits - 1) - 1) / 2 ** (bits - 2))


FORMATS: dict[str, ElementFormat] = {
    f.name: f
    for f in (
        _mxint("mxint8", 8), _mxint("mxint4", 4), _mxint("mxint3", 3), _mxint("mxint2", 2),
        _mxfp("mxfp8_e4m3", 4, 5, 8, 448.0), _mxfp("mxfp8_e5m2", 5, 4, 15, 57344.0),
        _mxfp("mxfp6_e3m2", 3, 4, 4, 28.0), _mxfp("mxfp6_e2m3", 2, 5, 2, 7.5),
        _mxfp("mxfp4_e2m1", 2, 3, 2, 6.0),
        ElementFormat("int8", "int", 8), ElementFormat("int4", "int", 4), ElementFormat("int3", "int", 3),
        ElementFormat("nvfp4", "nvfp4", 4, 2, 3, 2, 6.0),
    )
}
ALIASES = {"mxfp4": "mxfp4_e2m1"}
FORMATS["mxfp4"] = FORMATS["mxfp4_e2m1"]
E2M1 = FORMATS["mxfp4_e2m1"]


def canonical_format(name: str) -> str:
    """Resolve aliases and case; raise MxlabError listing the valid names."""
    key = str(name).strip().lower() if isinstance(name, str) else None
    if key == "none":
        return "none"
    if key in ALIASES:
        return ALIASES[key]
    if key not in FORMATS:
        valid = ", ".join([*sorted(n for n in FORMATS if n not in ALIASES), *ALIASES, "none"])
        raise MxlabError(f"unknown number format {name!r}; choose one of: {valid}")
    return key


def is_mx(fmt: str) -> bool:
    """True for the microscaling formats (shared power-of-two block scale)."""
    name = canonical_format(fmt)
    return name != "none" and FORMATS[name].kind == "mx"


def bits_per_element(fmt: str, block_size: int = 32) -> float:
    """Storage bits per element, block scales included (mxfp4 @ 32 -> 4.25, nvfp4 -> 4.5 at its block 16);
    per-channel int -> its code bits (its per-row fp16 scale and zero point depend on the row length)."""
    name = canonical_format(fmt)
    if name == "none":
        raise MxlabError("format 'none' keeps the model dtype; its size depends on that dtype")
    f = FORMATS[name]
    _check_block(block_size)
    if f.kind == "nvfp4":  # its block is always NVFP4_BLOCK (other sizes are refused by quantize/pack)
        block_size = NVFP4_BLOCK
    return float(f.bits) + (8.0 / block_size if f.kind in ("mx", "nvfp4") else 0.0)


def _check_block(block_size: int) -> None:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise MxlabError(f"block_size must be a positive integer (16, 32, 64, 128 are usual); got {block_size!r}")


def check_scale_rule(scale_rule: str, f: ElementFormat | None = None) -> str:
    """``scale_rule`` if it is a known rule (and, for a non-MX format ``f``, the default); else MxlabError."""
    if scale_rule not in SCALE_RULES:
        raise MxlabError(f"unknown scale_rule {scale_rule!r}; choose one of: {', '.join(SCALE_RULES)}")
    if f is not None and f.kind != "mx" and scale_rule != "floor":
        raise MxlabError(f"scale_rule {scale_rule!r} sets E8M0 block exponents of MX formats; {f.name} has no "
                         f"E8M0 scales: use scale_rule 'floor' (the default) with it")
    return scale_rule


def check_args(x: Tensor, fmt: str, block_size: int, axis: int, rounding: str,
               scale_rule: str = "floor") -> tuple[ElementFormat | None, int]:
    """Validate quantize/pack arguments; return the format (None for "none") and the non-negative axis."""
    name = canonical_format(fmt)
    check_scale_rule(scale_rule, FORMATS[name] if name != "none" else None)
    if not isinstance(x, Tensor):
        raise MxlabError(f"expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise MxlabError(f"quantize needs a floating-point tensor (float32/bfloat16/float16); got {x.dtype}")
    if rounding not in ROUNDINGS:
        raise MxlabError(f"unknown rounding {rounding!r}; choose one of: {', '.join(ROUNDINGS)}")
    _check_block(block_size)
    if name == "nvfp4":
        check_nvfp4(block_size, rounding)
    ndim = max(x.dim(), 1)
    if isinstance(axis, bool) or not isinstance(axis, int) or not -ndim <= axis < ndim:
        raise MxlabError(f"axis {axis!r} is out of range for a tensor with {x.dim()} dims; use -{ndim}..{ndim - 1}")
    return (FORMATS[name] if name != "none" else None), axis % ndim


def check_nvfp4(block_size: int, rounding: str, what: str = "nvfp4") -> None:
    """MxlabError unless (block_size, rounding) are NVIDIA's NVFP4 definition: blocks of 16, ties to even."""
    if block_size != NVFP4_BLOCK:
        raise MxlabError(f"{what}: NVFP4 uses blocks of {NVFP4_BLOCK} elements (NVIDIA's definition); "
                         f"got block_size {block_size!r}: set block_size {NVFP4_BLOCK}")
    if rounding != NVFP4_ROUNDING:
        raise MxlabError(f"{what}: NVFP4 rounds its elements to nearest, ties to even (NVIDIA's definition); "
                         f"got rounding {rounding!r}: set rounding 'even'")


def rule_threshold(f: ElementFormat, scale_rule: str) -> int:
    """The 23-bit fraction t above which (``>``) a block's exponent moves up by one under ``scale_rule``.

    With amax = (1 + frac / 2^23) 2^E: ceil bumps when frac > 0; even when the fraction rounded to m+1
    significant bits reaches 2, i.e. frac >= 2^23 - 2^(22 - m); rceil when amax > max_norm 2^(E - emax),
    i.e. frac > (max_norm / 2^emax - 1) 2^23 (exact: max_norm has few bits). floor (and mse's start)
    never: t = 2^23.
    """
    m = f.frac_bits
    if scale_rule == "ceil":
        return 0
    if scale_rule == "even":
        return (1 << 23) - (1 << (22 - m)) - 1
    if scale_rule == "rceil":
        return int((f.max_norm / 2.0 ** f.emax - 1.0) * 2 ** 23)
    return 1 << 23
