"""mxlab.placement: model size, when to stream, and streamed evaluation equal to the whole-model one."""
from __future__ import annotations

import pytest
import torch

from conftest import make_tiny_model
from mxlab.evaluate import evaluate_model
from mxlab.placement import model_bytes, streamed_blocks, too_big_for


def test_model_bytes_counts_tied_tensors_once():
    model = make_tiny_model("llama")
    expected = sum(p.numel() * 4 for p in model.parameters()) + sum(b.numel() * b.element_size() for b in model.buffers())
    assert model_bytes(model) == expected
    model.lm_head.weight = model.model.embed_tokens.weight          # tie: 512 x 64 float32 fewer
    assert model_bytes(model) == expected - 512 * 64 * 4
    assert not too_big_for(10**15, torch.device("cpu"))              # the CPU never streams


def test_evaluation_on_the_models_own_device_is_unchanged(random_tokens):
    model = make_tiny_model("llama")
    tokens = random_tokens.reshape(-1)
    plain = evaluate_model(model, None, tokens, seq_len=32)
    placed = evaluate_model(model, None, tokens, seq_len=32, device="cpu")
    assert placed["ppl"] == plain["ppl"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: blocks stream from the CPU to it")
def test_streamed_evaluation_equals_the_model_on_the_gpu(random_tokens):
    model = make_tiny_model("llama")
    tokens = random_tokens.reshape(-1)
    ref = make_tiny_model("llama").cuda()
    whole = evaluate_model(ref, None, tokens, seq_len=32)
    streamed = evaluate_model(model, None, tokens, seq_len=32, device="cuda")
    assert streamed["ppl"] == pytest.approx(whole["ppl"], rel=1e-5)
    assert all(p.device.type == "cpu" for p in model.parameters())   # everything went back home
    with streamed_blocks(model, "cuda"):
        assert model.model.embed_tokens.weight.is_cuda and not model.model.layers[0].mlp.up_proj.weight.is_cuda
