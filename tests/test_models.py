"""load_model(): the embedded stories260K against llama2.c, tiny models of every architecture, errors."""
from __future__ import annotations

import logging
import struct

import numpy as np
import pytest
import torch

from conftest import ARCHITECTURES, SHARED, make_tiny_model
from mxlab.errors import MxlabError
from mxlab.models import DEFAULT_MODEL_DIR, load_model, resolve_device

STORY = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park."
BIN = SHARED / "data" / "stories260K" / "stories260K.bin"


def test_embedded_checkpoint_ships_with_license():
    names = {p.name for p in DEFAULT_MODEL_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "LICENSE"} <= names
    assert "MIT" in (DEFAULT_MODEL_DIR / "LICENSE").read_text()
    assert not any(n.endswith((".bin", ".pt", ".pth")) for n in names)


def test_embedded_greedy_story(embedded):
    model, tokenizer = embedded
    assert isinstance(model, torch.nn.Module) and not model.training
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    assert sum(p.numel() for p in model.parameters()) == 260_032
    out = model.generate(torch.tensor([[tokenizer.bos_token_id]]), max_new_tokens=32, do_sample=False)
    text = tokenizer.decode(out[0], skip_special_tokens=True)
    assert text.startswith(STORY), text


def llama2c_logits(path, tokens: list[int]) -> np.ndarray:
    """llama2.c's forward (run.c) in numpy on the raw .bin: interleaved RoPE from the stored tables,
    rmsnorm eps 1e-5, GQA, SwiGLU, shared classifier. Returns (T, vocab) logits."""
    raw = path.read_bytes()
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq = struct.unpack("7i", raw[:28])
    w = np.frombuffer(raw, dtype="<f4", offset=28).astype(np.float64)
    hs, kv_dim = dim // n_heads, dim // n_heads * n_kv
    pos = 0

    def take(*shape):
        nonlocal pos
        n = int(np.prod(shape))
        pos += n
        return w[pos - n:pos].reshape(shape)

    emb, att_norm = take(vocab, dim), take(n_layers, dim)
    wq, wk, wv, wo = take(n_layers, dim, dim), take(n_layers, kv_dim, dim), take(n_layers, kv_dim, dim), take(n_layers, dim, dim)
    ffn_norm, w1, w2, w3 = take(n_layers, dim), take(n_layers, hidden, dim), take(n_layers, dim, hidden), take(n_layers, hidden, dim)
    final_norm, cos, sin = take(dim), take(seq, hs // 2), take(seq, hs // 2)
    T = len(tokens)

    def rmsnorm(x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-5) * g

    def rope(x, n):  # (T, n*hs): rotate the pairs (x[2i], x[2i+1]) of every head
        x = x.reshape(T, n, hs // 2, 2)
        c, s = cos[:T, None, :], sin[:T, None, :]
        out = np.stack([x[..., 0] * c - x[..., 1] * s, x[..., 0] * s + x[..., 1] * c], -1)
        return out.reshape(T, n, hs)

    x = emb[tokens]  # (T, dim)
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for l in range(n_layers):
        xb = rmsnorm(x, att_norm[l])
        q, k = rope(xb @ wq[l].T, n_heads), rope(xb @ wk[l].T, n_kv)
        v = (xb @ wv[l].T).reshape(T, n_kv, hs)
        rep = n_heads // n_kv
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)  # (T, n_heads, hs)
        att = np.einsum("thd,shd->hts", q, k) / np.sqrt(hs) + mask
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        x = x + np.einsum("hts,shd->thd", att, v).reshape(T, dim) @ wo[l].T
        xb = rmsnorm(x, ffn_norm[l])
        a = xb @ w1[l].T
        x = x + ((a / (1 + np.exp(-a))) * (xb @ w3[l].T)) @ w2[l].T
    return rmsnorm(x, final_norm) @ emb.T


@pytest.mark.skipif(not BIN.is_file(), reason="needs ../shared/data/stories260K/stories260K.bin")
def test_converted_logits_match_llama2c_forward(embedded):
    model, tokenizer = embedded
    tokens = tokenizer("One day, Tom saw a big red ball in the park.")["input_ids"]
    ref = llama2c_logits(BIN, tokens)
    with torch.no_grad():
        got = model(torch.tensor([tokens])).logits[0].double().numpy()
    assert np.abs(got - ref).max() < 1e-4
    assert (got.argmax(-1) == ref.argmax(-1)).all()


def _save(model, tokenizer, path, **kw):
    model.save_pretrained(path, **kw)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_tiny_models_round_trip_and_evaluate(arch, embedded, tmp_path):
    from mxlab.evaluate import evaluate_model

    model = make_tiny_model(arch)
    _save(model, embedded[1], tmp_path / arch)
    loaded, tok = load_model(tmp_path / arch)
    assert type(loaded) is type(model) and loaded.dtype == torch.float32
    x = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)
    a = evaluate_model(model, tok, "tinystories", seq_len=64, max_windows=4)
    b = evaluate_model(loaded, tok, "tinystories", seq_len=64, max_windows=4)
    assert a == b and a["n_windows"] == 4 and a["n_tokens"] == 4 * 63
    assert 100 < a["ppl"] < 5000  # a random model: roughly the vocabulary size (512)


def test_half_precision_checkpoint_loads_as_float32_on_cpu(embedded, tmp_path):
    _save(make_tiny_model("llama").to(torch.bfloat16), embedded[1], tmp_path)
    model, _ = load_model(tmp_path)
    assert model.dtype == torch.float32
    model, _ = load_model(tmp_path, dtype="bfloat16")
    assert model.dtype == torch.bfloat16


def test_devices():
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(MxlabError, match="CUDA is not available"):
            resolve_device("cuda")


def test_missing_path(tmp_path):
    with pytest.raises(MxlabError, match="no such directory"):
        load_model(tmp_path / "nope")
    with pytest.raises(MxlabError, match="no config.json"):
        load_model(tmp_path)


def test_unknown_hub_id_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MxlabError, match="offline"):
        load_model("no-such-org/no-such-model")


def test_not_a_causal_lm(tmp_path):
    import transformers as tf

    tf.BertModel(tf.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64)).save_pretrained(tmp_path / "bert")
    with pytest.raises(MxlabError, match="without a language-model head"):
        load_model(tmp_path / "bert")
    tf.T5ForConditionalGeneration(tf.T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=1,
                                              num_heads=2)).save_pretrained(tmp_path / "t5")
    with pytest.raises(MxlabError, match="not a causal"):
        load_model(tmp_path / "t5")


def test_missing_tokenizer(tmp_path):
    _save(make_tiny_model("llama"), None, tmp_path)
    with pytest.raises(MxlabError, match="tokenizer"):
        load_model(tmp_path)


def test_pickle_only_needs_opt_in(embedded, tmp_path):
    model = make_tiny_model("llama")
    _save(model, embedded[1], tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(MxlabError, match="allow_pickle"):
        load_model(tmp_path)
    loaded, _ = load_model(tmp_path, allow_pickle=True)
    assert torch.equal(loaded.model.embed_tokens.weight, model.model.embed_tokens.weight)


def test_unmapped_architecture_warns(embedded, tmp_path, monkeypatch, caplog):
    import mxlab.models

    monkeypatch.setattr(mxlab.models, "architecture_map", lambda model: None)   # a family with no map
    _save(make_tiny_model("opt"), embedded[1], tmp_path)
    with caplog.at_level(logging.WARNING, logger="mxlab.models"):
        load_model(tmp_path)
    assert "RTN and GPTQ work, but SmoothQuant and AWQ will skip" in caplog.text


def test_mapped_architecture_does_not_warn(caplog):
    with caplog.at_level(logging.WARNING, logger="mxlab.models"):
        load_model()
    assert "SmoothQuant" not in caplog.text
