"""The rotate step: block Hadamard rotation of the Linears' inputs, online for activations.

Without quantization the function is unchanged on every architecture; with it, steps after the
rotation see the rotated inputs, and the packed checkpoint reloads the rotated model exactly.
"""
from __future__ import annotations

import math

import pytest
import torch

from conftest import make_tiny_model
from mxlab.checkpoint import load_quantized, save_quantized
from mxlab.dequantized import save_dequantized
from mxlab.errors import MxlabError
from mxlab.ptq.pipeline import quantize_model
from mxlab.ptq.qlinear import QuantLinear
from mxlab.ptq.rotation import hadamard, rotate_blocks
from mxlab.recipe import Recipe


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _logits(model, tokens):
    with torch.no_grad():
        return model(tokens).logits


def test_hadamard_is_orthonormal_and_sylvester():
    h4 = hadamard(4) * 2
    assert torch.equal(h4, torch.tensor([[1., 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]]))
    for n in (16, 32, 128):
        h = hadamard(n)
        assert torch.allclose(h @ h, torch.eye(n), atol=1e-6)            # symmetric and orthogonal
    x = torch.zeros(1, 64)
    x[0, 5] = 8.0                                                         # one outlier ...
    y = rotate_blocks(x, 32)
    assert torch.allclose(y[0, :32].abs(), torch.full((32,), 8 / math.sqrt(32)))   # ... spread over its block
    assert torch.equal(y[0, 32:], torch.zeros(32))                        # other blocks untouched
    with pytest.raises(MxlabError, match="power of two"):
        hadamard(24)


@pytest.mark.parametrize("size", [None, 16])
def test_rotate_alone_leaves_logits_unchanged(tiny_model, random_tokens, size):
    arch, model = tiny_model
    ref = _logits(model, random_tokens)
    recipe = Recipe(weights="none", acts="none", block_size=32, steps=[{"name": "rotate", "size": size}])
    result = quantize_model(model, None, recipe, calib_tokens=random_tokens, device="cpu")
    rotated = [m for m in result.model.modules() if isinstance(m, QuantLinear) and m.rotation]
    assert rotated and all(m.rotation == (size or 32) for m in rotated), arch
    assert _rel(_logits(model, random_tokens), ref) < 1e-5, arch


def test_scaling_after_rotate_folds_into_the_online_transform(random_tokens):
    """rotate, smoothquant with formats none: the scales go into input_scale; the function is unchanged."""
    model = make_tiny_model("llama")
    ref = _logits(model, random_tokens)
    recipe = Recipe(weights="none", acts="none", steps=["rotate", {"name": "smoothquant", "alpha": 0.85}])
    result = quantize_model(model, None, recipe, calib_tokens=random_tokens, device="cpu")
    scaled = [m for m in result.model.modules() if isinstance(m, QuantLinear) and m.input_scale is not None]
    assert scaled and max(float(m.input_scale.max()) for m in scaled) > 2
    assert _rel(_logits(model, random_tokens), ref) < 1e-5


def _outlier_model():
    """A tiny llama whose q/k/v and gate/up inputs each have one huge channel: what a rotation is for."""
    model = make_tiny_model("llama")
    with torch.no_grad():
        for layer in model.model.layers:
            layer.input_layernorm.weight[3] = 40.0
            layer.post_attention_layernorm.weight[7] = 40.0
    return model


def test_rotate_then_gptq_beats_gptq_on_outliers_in_mxfp4(random_tokens):
    errs = {}
    for steps in (["gptq"], ["rotate", "gptq"], ["rotate", "awq", "gptq"]):
        model = _outlier_model()
        ref = _logits(model, random_tokens)
        quantize_model(model, None, Recipe(weights="mxfp4", acts="mxfp8_e4m3", steps=steps),
                       calib_tokens=random_tokens, device="cpu")
        errs[",".join(steps)] = float((_logits(model, random_tokens) - ref).pow(2).mean())
    assert errs["rotate,gptq"] < 0.8 * errs["gptq"], errs
    assert errs["rotate,awq,gptq"] < errs["gptq"], errs


def test_rotated_checkpoint_reloads_exactly(tmp_path, random_tokens):
    from mxlab.models import load_model

    model = _outlier_model()
    recipe = Recipe(weights="mxfp4", acts="mxfp8_e4m3", scale_rule="rceil", steps=["rotate", "awq", "gptq"])
    result = quantize_model(model, None, recipe, calib_tokens=random_tokens, device="cpu")
    expected = _logits(result.model, random_tokens)
    tok = load_model()[1]
    save_quantized(result, tok, tmp_path / "ckpt")
    loaded, _ = load_quantized(tmp_path / "ckpt")
    assert torch.equal(_logits(loaded, random_tokens), expected)
    mods = loaded.mxlab_quantization_config["modules"]
    assert {m["rotation"] for m in mods.values()} == {32} and {m["scale_rule"] for m in mods.values()} == {"rceil"}
    assert any(m.input_scale is not None for m in loaded.modules() if isinstance(m, QuantLinear))


def test_rotated_dequantized_checkpoint_undoes_the_rotation(tmp_path, random_tokens):
    """A plain HF checkpoint has no online rotation: its weights are (W / s) R, equal without act quantization."""
    import transformers as tf
    from mxlab.models import load_model

    model = _outlier_model()
    result = quantize_model(model, None, Recipe(weights="mxint4", acts="none", steps=["rotate", "awq"]),
                            calib_tokens=random_tokens, device="cpu")
    expected = _logits(result.model, random_tokens)
    save_dequantized(result.model, load_model()[1], tmp_path / "hf")
    plain = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert _rel(_logits(plain, random_tokens), expected) < 1e-5


def test_rotate_order_rules():
    with pytest.raises(MxlabError, match="already"):
        Recipe(steps=["gptq", "rotate"])
    with pytest.raises(MxlabError, match="not a power of two"):
        Recipe(block_size=24, steps=["rotate"])
    r = Recipe(weights="mxfp4", steps=[{"name": "rotate", "size": 64}, "gptq"])
    assert any("straddle" in w for w in r.warnings)
    assert Recipe.from_yaml(r.to_yaml()).steps[0].size == 64
