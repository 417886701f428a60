"""Architecture maps: blocks, scaling groups checked against shapes, fallback for unknown models."""
from __future__ import annotations

import pytest
import torch.nn as nn

from conftest import make_tiny_model, tiny_config
from mxlab.architectures import architecture_map, decoder_blocks


@pytest.mark.parametrize("arch,path", [("llama", "model.layers"), ("mistral", "model.layers"),
                                       ("qwen2", "model.layers"), ("qwen3", "model.layers"),
                                       ("opt", "model.decoder.layers")])
def test_known_architectures(arch, path):
    model = make_tiny_model(arch)
    amap = architecture_map(model)
    assert amap.blocks == path
    assert decoder_blocks(model) == (path, model.get_submodule(path))
    prevs = [g.prev for g in amap.groups]
    if arch == "opt":   # MHA and ReLU: all four groups fold
        assert prevs == ["self_attn_layer_norm", "self_attn.v_proj", "final_layer_norm", "fc1"]
    else:               # the fixtures use GQA (2 kv heads for 4 heads): v -> o is skipped with a note
        assert prevs == ["input_layernorm", "post_attention_layernorm", "mlp.up_proj"]
        assert any("grouped-query" in n for n in amap.notes)
        assert amap.groups[0].linears == ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]


def test_opt_post_norm_and_gelu_drop_groups():
    import transformers as tf

    cfg = tiny_config("opt")
    cfg.do_layer_norm_before, cfg.activation_function = False, "gelu"
    amap = architecture_map(tf.AutoModelForCausalLM.from_config(cfg))
    assert [g.prev for g in amap.groups] == ["self_attn.v_proj"]
    assert len(amap.notes) == 3


def test_unknown_model_falls_back_to_largest_modulelist():
    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.small = nn.ModuleList([nn.Linear(2, 2)])
            self.blocks = nn.ModuleList([nn.Linear(8, 8) for _ in range(3)])

    toy = Toy()
    assert architecture_map(toy) is None
    assert decoder_blocks(toy) == ("blocks", toy.blocks)
