"""Formats: every code of every element format, fast path vs the naive eager reference, packing,
the int and nvfp4 baselines, errors."""
from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from mxlab.errors import MxlabError
from mxlab.formats import (FORMATS, ROUNDINGS, PackedTensor, bits_per_element, canonical_format, element_values,
                           encode_elements, int_qparams, is_mx, pack, pack_bits, quantize, unpack_bits)

from conftest import REPO

_spec = importlib.util.spec_from_file_location("bench_formats", REPO / "benchmarks" / "bench_formats.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

MX = [n for n, f in FORMATS.items() if f.kind == "mx" and n != "mxfp4"]
ALL = [*MX, "int8", "int4", "int3", "nvfp4"]


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit equality (sign of zero included); NaN compared by position."""
    iv = torch.int32 if a.dtype == torch.float32 else torch.int16
    nan = a.isnan()
    return a.shape == b.shape and torch.equal(nan, b.isnan()) and torch.equal(a.view(iv)[~nan], b.view(iv)[~nan])


# ----------------------------------------------------------------------------- every code
@pytest.mark.parametrize("fmt", MX)
def test_element_table_closed_forms(fmt):
    f = FORMATS[fmt]
    v = element_values(f)
    n = 2 ** f.bits
    assert v.numel() == n
    pos = v[: n // 2]
    mb = f.mbits - 2
    assert pos[0] == 0 and bool((pos[1:] > pos[:-1]).all()), "magnitude codes increase"
    if f.ebits == 0:
        assert pos.max() == f.max_norm == (2 ** (f.bits - 1) - 1) / 2 ** mb
        assert pos[1] == 2.0 ** -mb
    else:
        bias = 2 ** (f.ebits - 1) - 1
        assert pos[1] == 2.0 ** (1 - bias - mb), "min subnormal = 2^(1 - bias - mantissa bits)"
        assert pos[2 ** mb] == 2.0 ** (1 - bias), "min normal"
        top = pos[pos <= f.max_norm].max()
        assert top == f.max_norm
        if fmt == "mxfp8_e4m3":
            assert f.max_norm == 2 ** 8 * 1.75  # S.1111.111 is NaN in E4M3, so 1.75 not 1.875
        elif fmt == "mxfp8_e5m2":
            assert f.max_norm == 2 ** 15 * 1.75  # exponent 11111 is Inf/NaN
        else:
            assert f.max_norm == 2 ** f.emax * (2 - 2.0 ** -mb) == pos.max()  # no Inf/NaN codes
    assert torch.equal(v[n // 2:], -pos)


@pytest.mark.parametrize("fmt,torch_dtype", [("mxfp8_e4m3", torch.float8_e4m3fn), ("mxfp8_e5m2", torch.float8_e5m2)])
def test_fp8_tables_match_torch_float8(fmt, torch_dtype):
    """Independent check: PyTorch's float8 dtypes decode the same bits to the same values."""
    v = element_values(FORMATS[fmt])
    theirs = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(torch_dtype).float()
    ok = theirs.abs() <= FORMATS[fmt].max_norm
    assert int(ok.sum()) >= 248  # all but Inf/NaN codes
    assert same_bits(v[ok], theirs[ok])


@pytest.mark.parametrize("fmt", MX)
@pytest.mark.parametrize("exp", [0, -20, 37, -127])
def test_every_code_round_trips(fmt, exp):
    """A block holding every value (with max_norm, so the scale is 2^exp) is left unchanged."""
    f = FORMATS[fmt]
    v = element_values(f)
    v = v[(v.abs() <= f.max_norm) & (v.view(torch.int32) != torch.tensor(-0.0).view(torch.int32))]
    # (-0.0 is left out: the reference maps an input -0.0 to +0.0, as sign(0) = 0)
    x = torch.ldexp(v, torch.tensor(exp)) if exp > -127 else v * 2.0 ** -127
    if exp + f.emax - 127 > 0 or (exp == -127 and f.emax > 0):
        pytest.skip("scale out of E8M0 range for this format")
    y = quantize(x[None], fmt, block_size=x.numel())
    assert same_bits(y[0], x)
    p = pack(x[None], fmt, block_size=x.numel())
    assert same_bits(p.dequantize()[0], x)


@pytest.mark.parametrize("fmt", [*MX, "nvfp4"])
def test_encode_decode_every_code(fmt):
    f = FORMATS[fmt]
    codes = torch.arange(2 ** f.bits)
    v = element_values(f)
    finite = v.abs() <= f.max_norm
    assert torch.equal(encode_elements(v[finite], f).long(), codes[finite])


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
@pytest.mark.parametrize("n", [1, 7, 8, 33, 1000])
def test_pack_bits_round_trip_and_density(bits, n):
    codes = torch.randint(0, 2 ** bits, (n,), generator=torch.Generator().manual_seed(n)).to(torch.uint8)
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8
    group = 8 // math.gcd(8, bits)
    assert packed.numel() == math.ceil(n / group) * group * bits // 8
    assert torch.equal(unpack_bits(packed, bits, n), codes.long())


# ----------------------------------------------------------------------------- fast vs naive
@pytest.mark.parametrize("fmt", MX)
def test_fast_path_equals_naive_reference(fmt):
    """Adversarial inputs (ties, 1 - 2^-24 below powers of two, subnormals, huge, random bits)."""
    for x in bench.special_inputs():
        for rounding in ROUNDINGS:
            for bs, axis in [(32, -1), (16, 0), (48, -1)]:
                for dtype in (torch.float32, torch.bfloat16) if bs == 32 else (torch.float32,):
                    xx = x.to(dtype)
                    got = quantize(xx, fmt, bs, axis, rounding)
                    assert same_bits(got, bench.naive_quantize(xx, fmt, bs, axis, rounding)), (fmt, rounding, bs, axis)


def test_nan_and_inf_poison_only_their_block():
    x = torch.randn(4, 64)
    x[0, 3], x[1, 40] = float("nan"), float("inf")
    for fmt in MX:
        y = quantize(x, fmt, 32)
        assert y[0, :32].isnan().all() and y[1, 32:].isnan().all()
        assert not y[0, 32:].isnan().any() and not y[1, :32].isnan().any() and not y[2:].isnan().any()
        p = pack(x, fmt, 32)
        assert (p.tensors["scales"].reshape(4, 2) == 255).sum() == 2
        assert same_bits(p.dequantize(), y)


def test_scale_floor_and_zero_blocks():
    x = torch.zeros(2, 32)
    x[1] = torch.linspace(-1, 1, 32) * 2.0 ** -140  # below the E8M0 floor 2^-127
    for fmt in MX:
        y = quantize(x, fmt)
        assert same_bits(y[0], torch.zeros(32))
        p = pack(x, fmt)
        assert int(p.tensors["scales"].reshape(-1)[1]) == 0  # e = -127
        assert same_bits(p.dequantize(), y)


def test_known_values_mxfp4_and_mxint4():
    x = torch.tensor([[6.0, 5.0, 2.5, 0.25, 0.75, -3.5, 1.0, 0.1]])
    assert quantize(x, "mxfp4", 8).tolist() == [[6.0, 6.0, 3.0, 0.5, 1.0, -4.0, 1.0, 0.0]]
    assert quantize(x, "mxfp4", 8, rounding="even").tolist() == [[6.0, 4.0, 2.0, 0.0, 1.0, -4.0, 1.0, 0.0]]
    assert quantize(x, "mxfp4", 8, rounding="floor").tolist() == [[6.0, 4.0, 2.0, 0.0, 0.5, -3.0, 1.0, 0.0]]
    # amax 6 -> e = 2, step 2^2 / 4 = 1, max 7/4 * 4 = 7
    assert quantize(x, "mxint4", 8).tolist() == [[6.0, 5.0, 3.0, 0.0, 1.0, -4.0, 1.0, 0.0]]


# ----------------------------------------------------------------------------- packing
@pytest.mark.parametrize("fmt", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_pack_dequantize_bit_equal(fmt, dtype):
    g = torch.Generator().manual_seed(1)
    for shape, bs, axis in [((16, 64), 32, -1), ((3, 5, 70), 16, 1), ((40, 24), 32, 0), ((100,), 128, 0)]:
        x = (torch.randn(shape, generator=g) * torch.logspace(-3, 3, shape[-1])).to(dtype)
        for rounding in ROUNDINGS:
            if fmt == "nvfp4":  # NVIDIA's definition: blocks of 16, ties to even, nothing else
                bs, rounding = 16, "even"
            p = pack(x, fmt, bs, axis, rounding)
            assert p.tensors["codes"].dtype == torch.uint8
            assert same_bits(p.dequantize(), quantize(x, fmt, bs, axis, rounding)), (shape, bs, axis, rounding)
            q = PackedTensor.from_state_dict({**p.state_dict("w."), "other": x}, p.metadata(), "w.")
            assert same_bits(q.dequantize(), p.dequantize())
            assert q.dtype == dtype and q.shape == tuple(shape)


@pytest.mark.parametrize("fmt,bits", [("mxfp4", 4.25), ("mxint8", 8.25), ("mxint4", 4.25), ("mxint3", 3.25),
                                      ("mxint2", 2.25), ("mxfp6_e2m3", 6.25), ("mxfp8_e5m2", 8.25), ("nvfp4", 4.5)])
def test_nbytes_is_real_storage(fmt, bits):
    assert bits_per_element(fmt, 32) == bits  # nvfp4: always its block of 16
    x = torch.randn(64, 256)
    p = pack(x, fmt, 16, rounding="even") if fmt == "nvfp4" else pack(x, fmt, 32)
    assert p.nbytes * 8 == pytest.approx(bits * x.numel(), abs=32)  # nvfp4: + one fp32 tensor scale
    assert bits_per_element("mxfp4", 16) == 4.5


@pytest.mark.parametrize("fmt,bits", [("mxint4", 4), ("mxint8", 8), ("mxfp6_e3m2", 6)])
def test_padding_of_a_short_block_is_not_stored(fmt, bits):
    # a row of 64 in blocks of 128 (the study's block on a narrow layer): 64 codes + one scale per row
    x = torch.randn(10, 64)
    p = pack(x, fmt, 128)
    assert p.tensors["codes"].numel() == 10 * 64 * bits // 8
    assert p.tensors["scales"].numel() == 10
    assert same_bits(p.dequantize(), quantize(x, fmt, 128))


def test_int_pack_storage():
    """A real INT checkpoint's layout: b-bit codes, per row an fp16 scale and a b-bit zero point."""
    x = torch.randn(64, 256)
    for fmt, bits in [("int8", 8), ("int4", 4), ("int3", 3)]:
        p = pack(x, fmt)
        assert p.tensors["codes"].numel() == x.numel() * bits // 8
        assert p.tensors["scale"].dtype == torch.float16 and p.tensors["scale"].shape == (64,)
        assert p.tensors["zero_point"].dtype == torch.uint8 and p.tensors["zero_point"].numel() == 64 * bits // 8
        assert p.nbytes == x.numel() * bits // 8 + 64 * 2 + 64 * bits // 8
        assert p.bits_per_element() == bits + (16 + bits) / 256   # int4 rows of 256: 4.078125
        assert bits_per_element(fmt) == bits


def test_int_pack_reads_the_earlier_layout():
    """Checkpoints written with float32 scales and int32 zero points still dequantize the same."""
    x = torch.randn(8, 48)
    p = pack(x, "int4")
    zp = unpack_bits(p.tensors["zero_point"], 4, 8).to(torch.int32)
    old = PackedTensor.from_state_dict({"codes": p.tensors["codes"], "scale": p.tensors["scale"].float(),
                                        "zero_point": zp}, p.metadata())
    assert same_bits(old.dequantize(), p.dequantize())


def test_metadata_is_json_strings():
    import json

    md = pack(torch.randn(4, 32, dtype=torch.bfloat16), "mxfp6_e3m2").metadata()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in md.items())
    assert json.loads(md["shape"]) == [4, 32] and md["dtype"] == "bfloat16" and md["fmt"] == "mxfp6_e3m2"
    with pytest.raises(MxlabError, match="missing"):
        PackedTensor.from_state_dict({}, md)


# ----------------------------------------------------------------------------- int baselines
@pytest.mark.parametrize("fmt,bits", [("int8", 8), ("int4", 4), ("int3", 3)])
def test_int_matches_torch_observer_and_fake_quant(fmt, bits):
    """Independent check: PerChannelMinMaxObserver's qparams and fake_quantize_per_channel_affine."""
    from torch.ao.quantization import PerChannelMinMaxObserver

    g = torch.Generator().manual_seed(bits)
    w = torch.randn(32, 80, generator=g) * torch.rand(32, 1, generator=g) * 3
    w[3] = w[3].abs()  # an all-positive row: the range still includes 0
    obs = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.quint8, qscheme=torch.per_channel_affine,
                                   quant_min=0, quant_max=2 ** bits - 1)
    obs(w)
    scale, zp = obs.calculate_qparams()
    # the stored scale is the observer's rounded to fp16; the zero point follows from it
    scale = scale.half().float()
    zp = (-torch.round(w.amin(dim=1).clamp(max=0) / scale)).clamp(0, 2 ** bits - 1).to(torch.int32)
    mine_s, mine_zp = int_qparams(w, FORMATS[fmt], axis=1)
    assert torch.equal(mine_s, scale) and torch.equal(mine_zp, zp.to(torch.int32))
    want = torch.fake_quantize_per_channel_affine(w, scale, zp.to(torch.int32), 0, 0, 2 ** bits - 1)
    assert same_bits(quantize(w, fmt, rounding="even"), want)
    assert len(torch.unique(quantize(w, fmt)[5])) <= 2 ** bits


def test_int_explicit_scale_and_zero_point():
    w = torch.randn(8, 16)
    s, zp = int_qparams(w * 2, FORMATS["int4"], axis=1)  # e.g. GPTQ: the original weight's range
    y = quantize(w, "int4", scale=s, zero_point=zp)
    want = torch.fake_quantize_per_channel_affine(w, s, zp, 0, 0, 15)
    assert torch.allclose(y, want)
    p = pack(w, "int4", scale=s, zero_point=zp)
    assert same_bits(p.dequantize(), y) and torch.equal(p.tensors["scale"].float(), s)
    s32 = s + s * 2 ** -15  # not an fp16 value: rounded to the stored fp16 scale, in quantize as in pack
    assert same_bits(quantize(w, "int4", scale=s32, zero_point=zp), y)
    with pytest.raises(MxlabError, match="0..15"):
        quantize(w, "int4", scale=s, zero_point=zp + 16)
    with pytest.raises(MxlabError, match="fp16"):
        quantize(w * 1e7, "int4")
    with pytest.raises(MxlabError, match="one value per channel"):
        quantize(w, "int4", scale=s[:3], zero_point=zp[:3])
    with pytest.raises(MxlabError, match="both"):
        quantize(w, "int4", scale=s)
    with pytest.raises(MxlabError, match="int8/int4/int3 only"):
        quantize(w, "mxint4", scale=s, zero_point=zp)


def test_int_per_token_for_activations():
    x = torch.randn(2, 5, 64)
    x[1, 2] *= 100
    y = quantize(x, "int8")
    assert (y[0] - x[0]).abs().max() < 0.05  # other tokens keep their own fine scale


# ----------------------------------------------------------------------------- nvfp4
def test_nvfp4_structure():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(16, 64, generator=g) * torch.logspace(-2, 2, 64)
    p = pack(x, "nvfp4", 16, rounding="even")
    ts = p.tensors["tensor_scale"]
    assert ts == x.abs().max() / (448 * 6)
    s8 = p.tensors["scales"].view(torch.float8_e4m3fn).float().reshape(16, 4)
    bamax = x.abs().reshape(16, 4, 16).amax(-1)
    assert torch.equal(s8, (bamax / 6 / ts).to(torch.float8_e4m3fn).float())
    y = quantize(x, "nvfp4", 16, rounding="even")
    # independent: the nearest of the block's 15 representable values q * s8 * ts
    grid = element_values(FORMATS["mxfp4_e2m1"])[:8]
    grid = torch.cat([-grid.flip(0), grid[1:]])
    S = (s8 * ts)[..., None].expand(16, 4, 16).reshape(-1, 1)
    cand = grid[None, :] * S
    want = cand.gather(1, (x.reshape(-1, 1) - cand).abs().argmin(1, keepdim=True)).reshape(16, 64)
    assert torch.equal(y, want)
    assert same_bits(p.dequantize(), y)
    err = (y - x).abs().reshape(16, 4, 16) / (s8 * ts)[..., None]
    assert err.max() <= 1.0 + 1e-6  # half of the largest E2M1 step (2)
    assert (y - x).pow(2).mean() < quantize(x, "mxfp4", 32).sub(x).pow(2).mean()  # finer scales win


def test_nvfp4_zero_tensor():
    assert torch.equal(quantize(torch.zeros(2, 16), "nvfp4", 16, rounding="even"), torch.zeros(2, 16))


def test_nvfp4_rounds_ties_to_even():
    """With tensor maximum 448 * 6 (ts = 1) a block whose maximum is 6 has scale 1, so its elements are
    E2M1 values themselves: each midpoint (0.25, 0.75, ..., 5) goes to the neighbour with an even
    code (ties away from zero would give 0.5, 1, 1.5, 2, 3, 4, 6)."""
    x = torch.zeros(2, 16)
    x[0, 0] = 6 * 448.0  # the tensor maximum makes ts = 1; its block has scale 448
    x[1, :8] = torch.tensor([6.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])
    x[1, 8:] = -x[1, :8]
    y = quantize(x, "nvfp4", 16, rounding="even")
    want = torch.tensor([6.0, 0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0])
    assert torch.equal(y[1], torch.cat([want, -want]))


@pytest.mark.parametrize("kwargs, match", [(dict(block_size=32, rounding="even"), "blocks of 16"),
                                           (dict(block_size=16), "ties to even"),
                                           (dict(block_size=16, rounding="floor"), "ties to even")])
def test_nvfp4_refuses_what_nvidia_does_not_define(kwargs, match):
    x = torch.randn(4, 32)
    for fn in (quantize, pack):
        with pytest.raises(MxlabError, match=match):
            fn(x, "nvfp4", **kwargs)


# ----------------------------------------------------------------------------- API and errors
def test_names_and_aliases():
    assert canonical_format("MXFP4") == "mxfp4_e2m1" and canonical_format("none") == "none"
    assert is_mx("mxint8") and is_mx("mxfp4") and not is_mx("int8") and not is_mx("nvfp4") and not is_mx("none")
    assert set(ROUNDINGS) == {"nearest", "even", "floor"}
    names = {"mxint8", "mxint4", "mxint3", "mxint2", "mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3",
             "mxfp4_e2m1", "mxfp4", "int8", "int4", "int3", "nvfp4"}
    assert set(FORMATS) == names


def test_none_returns_input():
    x = torch.randn(3, 4)
    assert quantize(x, "none") is x


@pytest.mark.parametrize("kwargs,match", [
    (dict(fmt="mxint5"), "mxfp8_e4m3.*mxint4"),
    (dict(fmt="mxint4", rounding="up"), "nearest, even, floor"),
    (dict(fmt="mxint4", block_size=0), "positive integer"),
    (dict(fmt="mxint4", block_size=2.5), "positive integer"),
    (dict(fmt="mxint4", axis=2), "-2..1"),
])
def test_errors_name_the_choices(kwargs, match):
    with pytest.raises(MxlabError, match=match):
        quantize(torch.randn(4, 8), **kwargs)
    with pytest.raises(MxlabError, match=match):
        pack(torch.randn(4, 8), **kwargs)


def test_non_float_input_rejected():
    with pytest.raises(MxlabError, match="floating-point"):
        quantize(torch.arange(8), "mxint8")
    with pytest.raises(MxlabError, match="nothing to pack"):
        pack(torch.randn(8), "none")


def test_odd_shapes():
    assert quantize(torch.tensor(3.3), "mxint8").shape == ()
    assert quantize(torch.empty(0, 4), "mxfp4").shape == (0, 4)
    x = torch.randn(2, 3, 5, 7)
    for axis in range(4):
        y = quantize(x, "mxfp6_e2m3", 4, axis)
        assert same_bits(y, bench.naive_quantize(x, "mxfp6_e2m3", 4, axis))
