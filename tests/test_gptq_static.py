"""GPTQ mx_update='static' (scales fixed from the weights before the loop) and GPTQ under every scale rule."""
from __future__ import annotations

import pytest
import torch

from conftest import make_tiny_model
from mxlab.formats import FORMATS, SCALE_RULES, element_values, pack, quantize
from mxlab.ptq.methods.gptq import gptq_quantize, hessian, mx_block_quantizer, proxy_mse, weight_quantizer
from mxlab.recipe import QuantSpec, Recipe


def _problem(seed=0, out_f=48, in_f=128):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(512, in_f, generator=g) @ (torch.eye(in_f) + 0.3 * torch.randn(in_f, in_f, generator=g))
    W = torch.randn(out_f, in_f, generator=g) * torch.logspace(-1, 0.5, in_f)
    return W, hessian(x)


@pytest.mark.parametrize("fmt", ["mxfp4_e2m1", "mxint4", "mxfp6_e2m3"])
@pytest.mark.parametrize("rule", SCALE_RULES)
def test_static_result_lies_on_the_grid_of_the_original_exponents(fmt, rule):
    """Every block of Q is (element value) x 2^e with e the exponent ``rule`` gives the *original* block."""
    W, H = _problem()
    spec = QuantSpec(fmt, "none", 32, "nearest", rule)
    quant, bs, pack_fn = weight_quantizer(W, spec)
    Q = gptq_quantize(W, H, quant, block_size=bs, block_quantizer=mx_block_quantizer(spec, W))
    e = pack(W, fmt, 32, scale_rule=rule).tensors["scales"].to(torch.int32).reshape(48, -1) - 127   # (out, nb)
    scaled = Q.reshape(48, -1, 32) * torch.ldexp(torch.ones(e.shape), -e)[..., None]
    grid = element_values(FORMATS[fmt])
    assert bool(torch.isin(scaled, grid).all())
    assert torch.equal(pack_fn(Q).dequantize(), Q)                         # packs exactly, whatever the rule
    assert proxy_mse(W, Q, H) < 0.9 * proxy_mse(W, quant(W), H)            # GPTQ beats RTN


def test_static_differs_from_column_and_microblock():
    W, H = _problem(1)
    spec = QuantSpec("mxfp4_e2m1", "none", 32)
    quant, bs, _ = weight_quantizer(W, spec)
    Qs = gptq_quantize(W, H, quant, block_size=bs, block_quantizer=mx_block_quantizer(spec, W))
    Qc = gptq_quantize(W, H, quant, block_size=bs, block_quantizer=mx_block_quantizer(spec))
    Qm = gptq_quantize(W, H, quant, block_size=bs)
    assert not torch.equal(Qs, Qc) and not torch.equal(Qs, Qm)
    # the first block of every row sees no error feedback before its scales are fixed: identical there
    assert torch.equal(Qs[:, :1], Qc[:, :1])


def test_static_with_act_order_uses_each_blocks_own_exponents():
    W, H = _problem(2)
    spec = QuantSpec("mxint4", "none", 32)
    quant, bs, pack_fn = weight_quantizer(W, spec)
    Q = gptq_quantize(W, H, quant, block_size=bs, act_order=True, block_quantizer=mx_block_quantizer(spec, W))
    e = pack(W, "mxint4", 32).tensors["scales"].to(torch.int32).reshape(48, -1) - 127
    scaled = Q.reshape(48, -1, 32) * torch.ldexp(torch.ones(e.shape), -e)[..., None]
    assert bool(torch.isin(scaled, element_values(FORMATS["mxint4"])).all())


@pytest.mark.parametrize("rule", ["ceil", "mse"])
@pytest.mark.parametrize("mx_update", ["microblock", "static"])
def test_pipeline_gptq_with_a_rule_exports_and_records_it(tmp_path, random_tokens, rule, mx_update):
    from mxlab.checkpoint import load_quantized, save_quantized
    from mxlab.ptq.pipeline import quantize_model

    model = make_tiny_model("llama")
    recipe = Recipe(weights="mxfp4", acts="mxfp8_e4m3", scale_rule=rule,
                    steps=[{"name": "gptq", "mx_update": mx_update}])
    result = quantize_model(model, None, recipe, calib_tokens=random_tokens, device="cpu")
    details = [m.details for r in result.records if r.step == "gptq" for m in r.modules]
    assert details and {d["scale_rule"] for d in details} == {rule}
    assert {w["scale_rule"] for w in result.stats["weights"]} == {rule}
    with torch.no_grad():
        expected = model(random_tokens).logits
    save_quantized(result, None, tmp_path / "ckpt")
    loaded, _ = load_quantized(tmp_path / "ckpt")
    with torch.no_grad():
        assert torch.equal(loaded(random_tokens).logits, expected)
    assert loaded.mxlab_quantization_config["recipe"]["scale_rule"] == rule


def test_override_scale_rule_reaches_the_layer():
    r = Recipe(weights="mxfp4", scale_rule="floor", overrides=[{"pattern": "*.down_proj", "scale_rule": "rceil"}])
    assert r.spec_for("model.layers.0.mlp.down_proj").scale_rule == "rceil"
    assert r.spec_for("model.layers.0.mlp.up_proj").scale_rule == "floor"
    assert r.spec_for("x").quant_kwargs("int4")["scale_rule"] == "floor"     # INT has no E8M0 exponent
    assert Recipe.from_yaml(r.to_yaml()).overrides[0].scale_rule == "rceil"
    w = torch.randn(8, 64)
    assert torch.equal(quantize(w, "mxfp4", **r.spec_for("a.down_proj").quant_kwargs("mxfp4")),
                       quantize(w, "mxfp4", 32, scale_rule="rceil"))
