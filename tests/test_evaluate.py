"""Perplexity, KL and top-1 agreement against hand-computed references; the embedded model's numbers."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mxlab.errors import Cancelled, MxlabError
from mxlab.evaluate import default_seq_len, evaluate_model, make_windows, perplexity


class Bigram(torch.nn.Module):
    """A 'language model' whose next-token logits depend only on the current token: table[token]."""

    def __init__(self, table: torch.Tensor, context: int = 64):
        super().__init__()
        self.table = torch.nn.Parameter(table.float())
        self.config = SimpleNamespace(vocab_size=table.shape[0], max_position_embeddings=context)

    def forward(self, input_ids, use_cache=False):
        return SimpleNamespace(logits=self.table[input_ids])  # (B, L, V)


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def reference_metrics(table, tokens, seq_len, ref_table=None):
    """The protocol written out with numpy, one window and one position at a time."""
    lp = _log_softmax(table.double().numpy())
    ref = None if ref_table is None else _log_softmax(ref_table.double().numpy())
    toks = tokens.numpy()
    nll, kl, agree, count = 0.0, 0.0, 0, 0
    for w in range(len(toks) // seq_len):
        win = toks[w * seq_len:(w + 1) * seq_len]
        for j in range(1, seq_len):
            prev, nxt = win[j - 1], win[j]
            nll -= lp[prev, nxt]
            if ref is not None:
                kl += (np.exp(ref[prev]) * (ref[prev] - lp[prev])).sum()
                agree += lp[prev].argmax() == ref[prev].argmax()
            count += 1
    return math.exp(nll / count), kl / count, agree / count


@pytest.fixture
def tables():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(32, 32, generator=g) * 2
    return a, a + 0.3 * torch.randn(32, 32, generator=g)


def test_uniform_model_has_perplexity_vocab_size():
    tokens = torch.randint(0, 50, (1000,), generator=torch.Generator().manual_seed(0))
    assert perplexity(Bigram(torch.zeros(50, 50)), tokens, seq_len=64) == pytest.approx(50.0, rel=1e-6)


def test_perplexity_matches_numpy_protocol(tables):
    table, _ = tables
    tokens = torch.randint(0, 32, (1000,), generator=torch.Generator().manual_seed(1))  # 15 windows + 40 dropped
    want, _, _ = reference_metrics(table, tokens, 64)
    for bs in (1, 4, 8):
        assert perplexity(Bigram(table), tokens, seq_len=64, batch_size=bs) == pytest.approx(want, rel=1e-5)


def test_kl_and_top1_match_numpy(tables):
    table, ref_table = tables
    tokens = torch.randint(0, 32, (700,), generator=torch.Generator().manual_seed(2))
    ppl, kl, top1 = reference_metrics(table, tokens, 32, ref_table)
    out = evaluate_model(Bigram(table), None, tokens, reference=Bigram(ref_table), seq_len=32, batch_size=3)
    assert out["ppl"] == pytest.approx(ppl, rel=1e-5)
    assert out["kl"] == pytest.approx(kl, rel=1e-4) and kl > 0.01
    assert out["top1"] == pytest.approx(top1) and 0.3 < top1 < 1
    assert (out["n_windows"], out["n_tokens"], out["seq_len"]) == (21, 21 * 31, 32)
    same = evaluate_model(Bigram(table), None, tokens, reference=Bigram(table), seq_len=32)
    assert same["kl"] == pytest.approx(0.0, abs=1e-6) and same["top1"] == 1.0


def test_windows_and_max_windows():
    tokens = torch.arange(1000)
    w = make_windows(tokens, 64)
    assert w.shape == (15, 64) and torch.equal(w[1], torch.arange(64, 128))
    assert make_windows(tokens, 64, max_windows=4).shape == (4, 64)
    with pytest.raises(MxlabError, match="fewer than one window"):
        make_windows(tokens[:10], 64)


def test_seq_len_defaults_and_limits(tables):
    model = Bigram(tables[0], context=64)
    assert default_seq_len(model) == 64
    model.config.max_position_embeddings = 32768
    assert default_seq_len(model) == 2048
    model.config.max_position_embeddings = 64
    with pytest.raises(MxlabError, match="longer than the model's context"):
        perplexity(model, torch.zeros(1000, dtype=torch.long), seq_len=128)


def test_progress_and_cancel(tables):
    seen = []
    tokens = torch.zeros(640, dtype=torch.long)
    perplexity(Bigram(tables[0]), tokens, seq_len=64, batch_size=4, progress=lambda f, m: seen.append(f))
    assert seen == [0.4, 0.8, 1.0]

    def cancel(f, m):
        raise Cancelled("stop")

    with pytest.raises(Cancelled):
        perplexity(Bigram(tables[0]), tokens, seq_len=64, progress=cancel)


def test_embedded_tinystories_perplexity_first_windows(embedded):
    """The first 24 windows of 512 tokens (a quick slice of the held-out head): 3.4855."""
    model, tok = embedded
    out = evaluate_model(model, tok, "tinystories", max_windows=24)
    assert out["n_tokens"] == 24 * 511
    assert out["ppl"] == pytest.approx(3.4855, abs=0.002)


@pytest.mark.slow
def test_embedded_tinystories_perplexity(embedded):
    """Whole validation head, 222 windows of 512: 3.7601 (published val loss 1.297 -> 3.66 on the full split)."""
    model, tok = embedded
    out = evaluate_model(model, tok, "tinystories")
    assert out["seq_len"] == 512 and out["n_windows"] == 222
    assert out["ppl"] == pytest.approx(3.7601, abs=0.002)


def test_embedded_wikitext2_perplexity_is_much_higher(embedded):
    """A children's-story model on Wikipedia: first 16 windows of 512 tokens."""
    model, tok = embedded
    out = evaluate_model(model, tok, "wikitext2", max_windows=16)
    assert out["n_windows"] == 16
    assert 100 < out["ppl"] < 400
