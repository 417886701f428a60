"""Scale rules: every rule against an independent re-implementation of its definition, bit for bit.

The reference below works block by block in Python: the exponent from ``math.frexp`` and exact
fractions (no bit tricks), the elements in float64 numpy from the format's (ebits, mbits, emax,
max_norm) alone. Inputs are adversarial: block maxima at and around every rule's threshold,
powers of two, subnormal maxima, zero, Inf and NaN blocks, ties between grid points, padded tails.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from mxlab.errors import MxlabError
from mxlab.formats import FORMATS, SCALE_RULES, pack, pack_quantized, quantize, shared_exponent

MX = [n for n, f in FORMATS.items() if f.kind == "mx" and n != "mxfp4"]
FP = [n for n in MX if FORMATS[n].ebits]


# ----------------------------------------------------------------------------- the reference
def ref_exponent(amax: float, fmt: str, rule: str) -> int | None:
    """The block exponent by the issue's definitions (None: a NaN block)."""
    f = FORMATS[fmt]
    if not math.isfinite(amax):
        return None
    m = f.mbits - 2                                   # fraction bits
    if amax == 0:
        big, frac = -126, Fraction(1)
    else:
        mant, ex = math.frexp(amax)                   # amax = mant 2^ex, mant in [0.5, 1)
        big, frac = ex - 1, Fraction(mant) * 2        # f in [1, 2)
    e = big - f.emax
    if rule == "ceil":
        e += frac > 1
    elif rule == "even":                              # f rounded (half up) to m+1 significant bits
        e += math.floor(frac * 2 ** m + Fraction(1, 2)) == 2 ** (m + 1)
    elif rule == "rceil":                             # the smallest e with amax <= max_norm 2^e
        e = big - f.emax - 2                          # (a zero block counts as 2^-126, as for every rule)
        while Fraction(amax or 2.0 ** -126) > Fraction(f.max_norm) * Fraction(2) ** e:
            e += 1
    return max(-127, min(127, e))


def _round(a: np.ndarray, rounding: str) -> np.ndarray:
    """Round non-negative a (exact values) to integers, with the reference emulator's float32 tie quirk."""
    if rounding == "floor":
        return np.floor(a)
    quirk = a == np.float64(np.float32(0.5 - 2.0 ** -25))  # floor(a + 0.5) in float32 rounds it up
    if rounding == "nearest":
        return np.where(quirk, 1.0, np.floor(a + 0.5))
    r = np.floor(a)
    d = a - r
    up = (d > 0.5) | ((d == 0.5) & (r % 2 == 1))
    return np.where(quirk, 1.0, r + up)


def ref_elements(block: np.ndarray, e: int | None, fmt: str, rounding: str) -> np.ndarray:
    """One block (float64 values of float32 inputs) quantized with exponent e."""
    f = FORMATS[fmt]
    if e is None:
        return np.full_like(block, np.nan)
    mb = f.mbits - 2
    v = np.clip(block * 2.0 ** -e, -f.max_norm, f.max_norm)
    if f.ebits == 0:
        step = np.full_like(v, 2.0 ** -mb)
    else:
        min_exp = 2 - 2 ** (f.ebits - 1)
        with np.errstate(divide="ignore"):
            p = np.maximum(np.floor(np.log2(np.abs(v), where=v != 0, out=np.full_like(v, -1e9))), min_exp)
        step = 2.0 ** (p - mb)
    r = _round(np.abs(v) / step, rounding) * step
    with np.errstate(over="ignore"):              # 2^128 (a block near float32's top, rounded up) -> Inf
        out = (np.where(v < 0, -r, r) * 2.0 ** e).astype(np.float32).astype(np.float64)
    return np.where(out == 0, 0.0, out)               # -0.0 -> +0.0, as the reference's sign()


def ref_quantize(x: torch.Tensor, fmt: str, block: int, axis: int, rounding: str, rule: str
                 ) -> tuple[np.ndarray, list[int | None]]:
    """(quantized x as float64, block exponents in row-major block order) for a 2-D float32 x."""
    a = x.double().numpy()
    a = a if axis in (-1, 1) else a.T
    rows, n = a.shape
    out = np.empty_like(a)
    exps: list[int | None] = []
    for i in range(rows):
        for s in range(0, n, block):
            blk = a[i, s:s + block]
            amax = float(np.max(np.abs(blk))) if not np.isnan(blk).any() else math.nan
            e = ref_exponent(amax, fmt, "floor" if rule == "mse" else rule)
            if rule == "mse" and e is not None:
                e1 = min(127, e + 1)
                err = [float(np.sum((ref_elements(blk, c, fmt, rounding) - blk) ** 2)) for c in (e, e1)]
                e = e1 if err[1] < err[0] else e
            exps.append(e)
            out[i, s:s + block] = ref_elements(blk, e, fmt, rounding)
    return (out if axis in (-1, 1) else out.T), exps


# ----------------------------------------------------------------------------- adversarial inputs
def _near(v: float) -> list[float]:
    """v and its float32 neighbours."""
    t = torch.tensor(v, dtype=torch.float32)
    return [float(torch.nextafter(t, torch.tensor(-math.inf))), float(t), float(torch.nextafter(t, torch.tensor(math.inf)))]


def block_maxima(fmt: str) -> list[float]:
    """Maxima at and around every rule's threshold, at several binades, plus the special cases."""
    f = FORMATS[fmt]
    m = f.mbits - 2
    fracs = [1.0, 1.5, 2 - 2.0 ** -(m + 1), 2 - 2.0 ** -m, f.max_norm / 2 ** f.emax, 1.0 + 2.0 ** -23]
    out: list[float] = []
    for k in (0, -7, 13, -100, 100):
        for fr in fracs:
            out += _near(fr * 2.0 ** k)
    out += [2.0 ** -130, 3 * 2.0 ** -149, 2.0 ** -126, 1.5 * 2.0 ** -127, 1.9 * 2.0 ** 127, 2.0 ** 127]
    return [v for v in out if 0 < v < 3.4e38]


def adversarial(fmt: str, block: int, length: int, seed: int) -> torch.Tensor:
    """Rows (n_blocks, length): each row's first block has a chosen maximum; the rest are fractions of it
    (grid ties included); rows for zero, NaN and Inf blocks; ``length`` may leave a padded tail."""
    g = torch.Generator().manual_seed(seed)
    maxima = block_maxima(fmt)
    rows = []
    for i, amax in enumerate(maxima):
        r = (torch.rand(length, generator=g, dtype=torch.float64) * 2 - 1) * amax
        if i % 3 == 0:   # ties: halves of the element grid's steps at this block's scale
            e = ref_exponent(amax, fmt, "floor")
            r[: length // 2] = torch.randint(-64, 64, (length // 2,), generator=g).double() * 2.0 ** (e - 4)
            r = r.clamp(-amax, amax)
        r[i % min(block, length)] = -amax if i % 2 else amax
        rows.append(r.float())
    special = torch.zeros(4, length)
    special[1, 3] = float("nan")
    special[2, 1] = float("inf")
    special[3] = torch.linspace(-1, 1, length) * 2.0 ** -140    # all subnormal
    return torch.cat([torch.stack(rows), special])


def same(ours: torch.Tensor, ref: np.ndarray) -> bool:
    o = ours.double().numpy()
    nan = np.isnan(ref)
    return bool((np.isnan(o) == nan).all() and (o[~nan] == ref[~nan]).all())


# ----------------------------------------------------------------------------- the tests
@pytest.mark.parametrize("fmt", MX)
@pytest.mark.parametrize("rule", SCALE_RULES)
@pytest.mark.parametrize("block", [16, 32, 64, 128])
def test_rules_match_the_definitions(fmt, rule, block):
    """quantize and pack give the reference's values and exponents: both axes, nearest and even, padded tail."""
    length = block * 2 + block // 2              # a padded tail on every row
    x = adversarial(fmt, block, length, seed=block)
    for axis in (-1, 0):
        xa = x if axis == -1 else x.T.contiguous()
        for rounding in ("nearest", "even"):
            ref, exps = ref_quantize(xa, fmt, block, axis, rounding, rule)
            ours = quantize(xa, fmt, block, axis, rounding, scale_rule=rule)
            assert same(ours, ref), (fmt, rule, block, axis, rounding)
            p = pack(xa, fmt, block, axis, rounding, scale_rule=rule)
            got = (p.tensors["scales"].to(torch.int32) - 127)        # (outer, nblocks, inner)
            got = got.reshape(-1) if axis == -1 else got.permute(2, 1, 0).reshape(-1)
            want = torch.tensor([128 if e is None else e for e in exps], dtype=torch.int32)
            assert torch.equal(got, want), (fmt, rule, block, axis, rounding)
            assert same(p.dequantize(), ref)


def test_rules_differ_where_the_definitions_say():
    """fp4 (max_norm 6 = 1.5 * 4): amax 5 -> floor 0, ceil 1, even 0, rceil 0; amax 6.5 -> rceil 1;
    amax 7.5 (fraction 1.875 rounds to 2 at 2 bits) -> even 1."""
    f = FORMATS["mxfp4_e2m1"]
    amax = torch.tensor([5.0, 6.0, 6.5, 7.0, 7.5, 4.0])
    expect = {"floor": [0, 0, 0, 0, 0, 0], "ceil": [1, 1, 1, 1, 1, 0], "even": [0, 0, 0, 1, 1, 0],
              "rceil": [0, 0, 1, 1, 1, 0]}
    for rule, want in expect.items():
        assert shared_exponent(amax, f, rule).tolist() == want, rule


def test_floor_rule_is_the_default_and_unchanged():
    x = torch.randn(64, 96, generator=torch.Generator().manual_seed(3))
    for fmt in MX:
        assert torch.equal(quantize(x, fmt, 32), quantize(x, fmt, 32, scale_rule="floor"))


def test_mse_is_never_worse_than_floor_or_its_neighbour():
    x = torch.randn(256, 128, generator=torch.Generator().manual_seed(4)) ** 3     # heavy tails
    for fmt in ("mxfp4_e2m1", "mxint4", "mxfp6_e2m3"):
        errs = {r: float((quantize(x, fmt, 32, scale_rule=r) - x).double().square().sum()) for r in SCALE_RULES}
        assert errs["mse"] <= min(errs["floor"], errs["ceil"]) + 1e-9, (fmt, errs)
        assert errs["mse"] < errs["floor"], fmt          # it really moves blocks


@pytest.mark.parametrize("rule", SCALE_RULES)
def test_pack_quantized_stores_an_already_quantized_tensor_exactly(rule):
    """GPTQ's result is packed without re-deriving its exponents (ceil would not reproduce them)."""
    x = torch.randn(32, 200, generator=torch.Generator().manual_seed(5))
    for fmt in MX:
        q = quantize(x, fmt, 32, scale_rule=rule)
        p = pack_quantized(q, fmt, 32, scale_rule=rule)
        assert torch.equal(p.dequantize(), q), (fmt, rule)
        assert p.metadata()["scale_rule"] == rule
    with pytest.raises(MxlabError, match="not on the"):
        pack_quantized(x, "mxfp4", 32)


def test_a_block_at_the_top_code_repacks_only_by_pack_quantized():
    """GPTQ with fixed scales can leave a block at 6 2^e in fp4; ceil re-derives e + 1 from it and loses 0.5."""
    q = torch.tensor([[6.0, 0.5] + [0.0] * 30])                    # on the fp4 grid at e = 0
    assert float(quantize(q, "mxfp4", 32, scale_rule="ceil")[0, 1]) != 0.5
    assert torch.equal(pack_quantized(q, "mxfp4", 32, scale_rule="ceil").dequantize(), q)


def test_bad_scale_rule_and_non_mx_formats_are_refused():
    x = torch.randn(4, 32)
    with pytest.raises(MxlabError, match="unknown scale_rule"):
        quantize(x, "mxfp4", 32, scale_rule="round")
    with pytest.raises(MxlabError, match="no E8M0 scales"):
        quantize(x, "int4", scale_rule="rceil")
    assert torch.equal(quantize(x, "int4", scale_rule="floor"), quantize(x, "int4"))


# ----------------------------------------------------------------------------- torchao
TORCHAO_DTYPES = {"mxfp8_e4m3": "float8_e4m3fn", "mxfp8_e5m2": "float8_e5m2", "mxfp6_e2m3": "fp6_e2m3",
                  "mxfp6_e3m2": "fp6_e3m2", "mxfp4_e2m1": "fp4_e2m1"}


def _torchao_dequant(x: torch.Tensor, fmt: str, block: int, rule: str) -> tuple[torch.Tensor, torch.Tensor]:
    """torchao's to_mx (values decoded by torchao's own unpackers), and its biased E8M0 scales."""
    mx = pytest.importorskip("torchao.prototype.mx_formats.mx_tensor")
    from torchao.prototype.mx_formats import config as cfg
    from torchao.prototype.mx_formats import constants as C
    from torchao.prototype.mx_formats.kernels import (f4_unpacked_to_f32, f6_e2m3_unpacked_to_f32,
                                                      f6_e3m2_unpacked_to_f32, unpack_uint4)

    name = TORCHAO_DTYPES[fmt]
    dtype = getattr(torch, name) if name.startswith("float8") else \
        {"fp6_e2m3": C.DTYPE_FP6_E2M3, "fp6_e3m2": C.DTYPE_FP6_E3M2, "fp4_e2m1": torch.float4_e2m1fn_x2}[name]
    mode = getattr(cfg.ScaleCalculationMode, rule.upper())
    scale, data = mx.to_mx(x, dtype, block, scaling_mode=mode)
    if name.startswith("float8"):
        vals = data.float()
    elif name == "fp6_e2m3":
        vals = f6_e2m3_unpacked_to_f32(data)
    elif name == "fp6_e3m2":
        vals = f6_e3m2_unpacked_to_f32(data)
    else:
        vals = f4_unpacked_to_f32(unpack_uint4(data.view(torch.uint8)))
    s = scale.view(torch.uint8).to(torch.int32).reshape(*x.shape[:-1], -1)
    vals = vals.reshape(*x.shape[:-1], -1, block) * torch.ldexp(torch.ones(s.shape), s - 127)[..., None]
    return vals.reshape(x.shape), s


@pytest.mark.parametrize("fmt", FP)
@pytest.mark.parametrize("rule", ["floor", "ceil", "even", "rceil"])
@pytest.mark.parametrize("block", [16, 32])
def test_fp_rules_match_torchao_bit_for_bit(fmt, rule, block):
    """torchao rounds elements ties-to-even: our ``even`` rounding. Rows with a block at exponent -127 are
    left out (torchao divides those by 2^-126, not 2^-127), as are the zero/NaN/Inf/subnormal rows.

    One known disagreement, rceil: torchao's eager path takes ceil(float32 log2(amax / max_norm)), and
    log2 rounds to an integer k when amax / max_norm is just above 2^k; it then picks 2^k, which clips
    the block maximum. We compute the smallest non-clipping exponent exactly (NVIDIA's cvt.rp.ue8m0
    definition, which torchao's compiled Blackwell path uses): there we are torchao's e + 1.
    """
    x = adversarial(fmt, block, block * 4, seed=7)[:-4]
    e = pack(x, fmt, block, rounding="even", scale_rule=rule).tensors["scales"].to(torch.int32) - 127
    x = x[(e > -127).reshape(x.shape[0], -1).all(dim=1)].contiguous()
    assert x.shape[0] > 40
    ours = quantize(x, fmt, block, rounding="even", scale_rule=rule)
    ours_s = pack(x, fmt, block, rounding="even", scale_rule=rule).tensors["scales"].to(torch.int32)
    theirs, s = _torchao_dequant(x, fmt, block, rule)
    ours_s = ours_s.reshape(s.shape)
    rows = torch.ones(x.shape[0], dtype=torch.bool)
    if rule == "rceil":
        descale = x.reshape(x.shape[0], -1, block).abs().amax(-1) / FORMATS[fmt].max_norm
        log_rounds = (torch.log2(descale) == torch.log2(descale).round()) & (descale.frexp().mantissa != 0.5)
        differ = ours_s != s
        assert differ.any(), "the adversarial set should hit torchao's log2 rounding"
        assert bool((log_rounds | ~differ).all()) and torch.equal(ours_s[differ], s[differ] + 1)
        rows = ~differ.any(dim=1)
    assert torch.equal(ours_s[rows], s[rows]), (fmt, rule)
    assert torch.equal(ours[rows], theirs[rows]), (fmt, rule)


# ----------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("rule", SCALE_RULES)
def test_gpu_kernel_gives_the_cpu_bits_for_every_rule(rule):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    for fmt in MX:
        for block in (16, 32, 64, 128):
            x = adversarial(fmt, block, block * 2 + block // 2, seed=11)
            for axis in (-1, 0):
                for rounding in ("nearest", "even", "floor"):
                    cpu = quantize(x, fmt, block, axis, rounding, scale_rule=rule)
                    gpu = quantize(x.cuda(), fmt, block, axis, rounding, scale_rule=rule).cpu()
                    nan = cpu.isnan()
                    assert torch.equal(nan, gpu.isnan()) and \
                        torch.equal(cpu.view(torch.int32)[~nan], gpu.view(torch.int32)[~nan]), \
                        (fmt, block, axis, rounding, rule)


def test_nvfp4_block_scale_is_clamped_not_flushed():
    """A block 10^6 below the tensor's maximum: its E4M3 scale (~4e-4 / 6 / ts) underflows; clamped to 2^-9
    it keeps its values (here on the E2M1 grid at scale 2^-9 ts) instead of turning to zeros."""
    x = torch.zeros(2, 16)
    x[0, 0] = 2688.0                        # ts = 2688 / (448 * 6) = 1
    x[1, :4] = torch.tensor([0.004, -0.002, 0.001, 0.0])
    q = quantize(x, "nvfp4", 16, rounding="even")
    unit = 2.0 ** -9                        # the clamped block scale times ts
    assert torch.equal(q[1, :4], torch.tensor([2 * unit, -unit, 0.5 * unit, 0.0]))   # 2.048, -1.024, 0.512 units
    assert torch.equal(pack(x, "nvfp4", 16, rounding="even").dequantize(), q)
