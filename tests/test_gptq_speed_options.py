"""GPTQ's speed options: stacked linears that share a Hessian (bit-identical), the Hessian's GEMM precision."""
from __future__ import annotations

import pytest
import torch

from conftest import make_tiny_model
from mxlab.errors import MxlabError
from mxlab.ptq.methods.hessian import hessian, round_tf32
from mxlab.ptq.pipeline import quantize_model
from mxlab.recipe import Recipe
from mxlab.steps import step_config


def _run(fmt: str, update: str, device: str = "cpu", **gptq):
    tokens = torch.randint(0, 512, (6, 64), generator=torch.Generator().manual_seed(0))
    model = make_tiny_model("llama")
    recipe = Recipe(weights=fmt, acts="mxint8", block_size=32,
                    steps=["awq", {"name": "gptq", "mx_update": update, **gptq}])
    result = quantize_model(model, None, recipe, device=device, calib_tokens=tokens)
    mods = {m.module.split("layers.0.")[-1]: m.details for r in result.records if r.step == "gptq" and r.block == 0
            for m in r.modules}
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, mods, result


@pytest.mark.parametrize("fmt, update", [("mxint4", "microblock"), ("mxint4", "column"), ("int4", "column"),
                                         ("mxfp4_e2m1", "column"), ("mxint4", "static")])
def test_batched_linears_bit_identical(fmt, update):
    ref, _, _ = _run(fmt, update)
    got, mods, result = _run(fmt, update, batch_linears=True)
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    assert mods["self_attn.q_proj"]["batched_with"] == ["self_attn.k_proj", "self_attn.v_proj"]
    assert mods["mlp.up_proj"]["batched_with"] == ["mlp.gate_proj"] and mods["mlp.down_proj"]["batched_with"] == []
    # the packed form of each linear still dequantizes to its weight
    lin = result.model.model.layers[0].self_attn.k_proj
    assert torch.equal(lin.packed().dequantize().to(lin.weight.dtype), lin.weight.data)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("fmt, update", [("int4", "column"), ("mxfp4_e2m1", "column"), ("mxint4", "static")])
def test_fused_and_batched_linears_bit_identical_on_the_gpu(fmt, update):
    """The fused kernel and stacked linears on CUDA: the update GEMMs run per linear, so each linear gets
    the bits it gets alone (cuBLAS picks its kernel by the row count)."""
    ref, _, _ = _run(fmt, update, device="cuda", fused=True)
    got, mods, _ = _run(fmt, update, device="cuda", fused=True, batch_linears=True)
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    assert mods["self_attn.q_proj"]["fused"] and mods["self_attn.q_proj"]["batched_with"]


def test_round_tf32_keeps_ten_mantissa_bits_ties_to_even():
    x = torch.tensor([1.0, 1 + 2 ** -10, 1 + 2 ** -11, 1 + 3 * 2 ** -11, 1 + 2 ** -11 + 2 ** -20, -3.0, float("inf")])
    want = torch.tensor([1.0, 1 + 2 ** -10, 1.0, 1 + 2 ** -9, 1 + 2 ** -10, -3.0, float("inf")])
    assert torch.equal(round_tf32(x), want)


def test_hessian_precisions_on_bf16_inputs_are_exact_rounding():
    """bf16 inputs are exact in TF32 and bf16: all three Hessians agree to float32 summation error."""
    x = torch.randn(4096, 64, generator=torch.Generator().manual_seed(0)).bfloat16()
    H = hessian(x)
    for dt in ("tf32", "bf16"):
        assert torch.equal(hessian(x, dt), H)     # CPU emulation: same products, same GEMM
    xf = torch.randn(4096, 64, generator=torch.Generator().manual_seed(1))
    Hf, Hb = hessian(xf), hessian(xf, "bf16")
    rel = float((Hb - Hf).norm() / Hf.norm())
    assert 1e-4 < rel < 1e-2                      # bf16 rounding of float32 inputs: 2^-9 relative per element
    ref = 2 * xf.to(torch.bfloat16).double().T @ xf.to(torch.bfloat16).double() / 4096
    assert float((Hb.double() - ref).abs().max() / ref.abs().max()) < 1e-6


def test_hessian_dtype_validated_and_recorded():
    assert step_config({"name": "gptq", "hessian_dtype": "bf16"}).hessian_dtype == "bf16"
    with pytest.raises(MxlabError, match="hessian_dtype must be one of float32, tf32, bf16"):
        step_config({"name": "gptq", "hessian_dtype": "fp16"})
    with pytest.raises(MxlabError, match="batch_linears"):
        step_config({"name": "gptq", "batch_linears": 1})
    _, mods, result = _run("mxint4", "microblock", hessian_dtype="tf32", fused=True)
    assert {d["hessian_dtype"] for d in mods.values()} == {"tf32"}
    assert not any(d["fused"] for d in mods.values())   # no CUDA here: the torch path ran, and the notes say so
    notes = [n for r in result.records if r.step == "gptq" for n in r.notes]
    assert any("torch path" in n for n in notes)
