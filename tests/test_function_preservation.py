"""Scaling folds leave the FP function unchanged: SmoothQuant with formats 'none' on every architecture."""
from __future__ import annotations

import pytest
import torch

from conftest import make_tiny_model, tiny_config
from mxlab.architectures import architecture_map, decoder_blocks
from mxlab.ptq.methods.scaling import fold_scales
from mxlab.ptq.pipeline import quantize_model
from mxlab.recipe import Recipe


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("alpha", [0.5, 0.85])
def test_smoothquant_preserves_logits(tiny_model, random_tokens, alpha):
    arch, model = tiny_model
    with torch.no_grad():
        ref = model(random_tokens).logits
    recipe = Recipe(weights="none", acts="none", steps=[{"name": "smoothquant", "alpha": alpha}])
    result = quantize_model(model, None, recipe, calib_tokens=random_tokens, device="cpu")
    scales = [m.details["scale_max"] for r in result.records for m in r.modules]
    assert scales and max(scales) > 2          # the fold really moved something
    with torch.no_grad():
        out = model(random_tokens).logits
    assert _rel(out, ref) < 1e-4, arch


def _mha_llama():
    import transformers as tf

    torch.manual_seed(0)
    cfg = tiny_config("llama")
    cfg.num_key_value_heads = cfg.num_attention_heads          # no GQA: v -> o can be folded
    return tf.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()


@pytest.mark.parametrize("which", ["mha_llama", "opt"])
def test_random_scales_in_every_group_preserve_logits(which, random_tokens):
    model = _mha_llama() if which == "mha_llama" else make_tiny_model("opt")
    amap = architecture_map(model)
    linear_groups = [g for g in amap.groups if g.prev_kind == "linear"]
    assert len(linear_groups) == 2                              # v -> o and up -> down / fc1 -> fc2
    with torch.no_grad():
        ref = model(random_tokens).logits
    g = torch.Generator().manual_seed(1)
    _, blocks = decoder_blocks(model)
    for block in blocks:
        for group in amap.groups:
            n = block.get_submodule(group.linears[0]).in_features
            fold_scales(block, group, torch.exp(torch.randn(n, generator=g)))   # s in ~[0.05, 20]
    with torch.no_grad():
        out = model(random_tokens).logits
    assert _rel(out, ref) < 1e-4
