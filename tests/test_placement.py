"""mxlab.placement: model size, when to stream, and streamed evaluation equal to the whole-model one."""
from __future__ import annotations

import pytest
import torch

from conftest import make_tiny_model
from mxlab.evaluate import evaluate_model
from mxlab import placement
from mxlab.placement import cpu_copy, fp_reference, model_bytes, streamed_blocks, too_big_for


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


def test_cpu_copy_is_a_deep_copy_in_host_memory_with_ties_kept():
    model = make_tiny_model("llama")
    model.lm_head.weight = model.model.embed_tokens.weight
    ref = cpu_copy(model)
    pairs = list(zip(model.state_dict().items(), ref.state_dict().items()))
    assert all(ka == kb and torch.equal(a, b) and a.data_ptr() != b.data_ptr() for (ka, a), (kb, b) in pairs)
    assert ref.lm_head.weight is ref.model.embed_tokens.weight                 # still tied, in the copy
    ref.model.layers[0].mlp.up_proj.weight.data.zero_()                       # independent of the model
    assert model.model.layers[0].mlp.up_proj.weight.abs().sum() > 0


def test_kl_reference_goes_to_host_memory_when_two_copies_would_not_fit(monkeypatch, random_tokens):
    model = make_tiny_model("llama")
    tokens = random_tokens.reshape(-1)
    asked = []
    monkeypatch.setattr(placement, "too_big_for", lambda nbytes, device, *a: asked.append(nbytes) or True)
    ref = fp_reference(model)
    assert asked == [2 * model_bytes(model)]
    # the host copy is a faithful reference: KL 0 and full top-1 agreement against the model itself
    out = evaluate_model(model, None, tokens, seq_len=32, reference=ref)
    assert out["kl"] == pytest.approx(0.0, abs=1e-9) and out["top1"] == 1.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_kl_reference_of_a_gpu_model_that_fits_stays_on_the_gpu_else_streams(monkeypatch, random_tokens):
    model = make_tiny_model("llama").cuda()
    assert next(fp_reference(model).parameters()).is_cuda
    monkeypatch.setattr(placement, "too_big_for", lambda *a: True)
    ref = fp_reference(model)
    assert all(p.device.type == "cpu" for p in ref.parameters())
    out = evaluate_model(model, None, random_tokens.reshape(-1), seq_len=32, reference=ref, device="cuda")
    assert out["kl"] == pytest.approx(0.0, abs=1e-6) and out["top1"] == 1.0
