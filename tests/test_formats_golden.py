"""Bit-exactness against the reference emulator's golden vectors (microsoft/microxcaling _quantize_mx)."""
from __future__ import annotations

import json

import pytest
import torch

from mxlab.formats import pack, quantize

from conftest import SHARED

GOLDEN = SHARED / "golden" / "mx_reference.safetensors"
REFERENCE_NAMES = {"fp8_e4m3": "mxfp8_e4m3", "fp8_e5m2": "mxfp8_e5m2", "fp6_e3m2": "mxfp6_e3m2",
                   "fp6_e2m3": "mxfp6_e2m3", "fp4_e2m1": "mxfp4_e2m1", "int8": "mxint8", "int4": "mxint4",
                   "int2": "mxint2"}


def bits(t: torch.Tensor) -> torch.Tensor:
    """Integer view: equality is bit equality (sign of zero and NaN positions included)."""
    return t.contiguous().view(torch.int32 if t.dtype == torch.float32 else torch.int16)


@pytest.fixture(scope="module")
def golden():
    if not GOLDEN.exists():
        pytest.skip(f"golden vectors missing at {GOLDEN}")
    from safetensors import safe_open

    with safe_open(str(GOLDEN), "pt") as f:
        cases = json.loads(f.metadata()["cases"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return cases, tensors


def test_every_golden_case_bit_exact(golden):
    cases, tensors = golden
    assert len(cases) == 1344
    mismatched = []
    for c in cases:
        x, ref = tensors[f"in.{c['input']}"], tensors[f"out.{c['out']}"]
        y = quantize(x, REFERENCE_NAMES[c["format"]], c["block_size"], c["axis"], c["rounding"])
        assert y.shape == ref.shape and y.dtype == torch.float32
        if not torch.equal(bits(y), bits(ref)):
            mismatched.append(c)
    assert not mismatched, f"{len(mismatched)} cases differ, first: {mismatched[:3]}"


def test_golden_covers_zero_signs(golden):
    """The bit comparison above checks -0.0 too (the reference emits it for small negatives).

    The golden outputs hold no NaN; NaN blocks are checked against the naive reference instead.
    """
    cases, tensors = golden
    outs = torch.cat([tensors[f"out.{c['out']}"].reshape(-1) for c in cases])
    assert (bits(outs) == torch.tensor(-0.0).view(torch.int32)).any()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_give_float32_result_cast(golden, dtype):
    cases, tensors = golden
    for c in cases[::7]:
        x = tensors[f"in.{c['input']}"].to(dtype)
        fmt = REFERENCE_NAMES[c["format"]]
        y = quantize(x, fmt, c["block_size"], c["axis"], c["rounding"])
        want = quantize(x.float(), fmt, c["block_size"], c["axis"], c["rounding"]).to(dtype)
        assert y.dtype == dtype and torch.equal(bits(y), bits(want)), c


def test_golden_pack_dequantize_bit_equal(golden):
    cases, tensors = golden
    for c in cases[::5]:
        x = tensors[f"in.{c['input']}"]
        p = pack(x, REFERENCE_NAMES[c["format"]], c["block_size"], c["axis"], c["rounding"])
        assert torch.equal(bits(p.dequantize()), bits(tensors[f"out.{c['out']}"])), c
