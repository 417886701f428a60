"""Shared fixtures: tiny random models of each supported architecture, built from configs offline."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

# The models under test are tiny: one thread beats two spinning ones, and leaves the other core
# to the app server that some tests start in a subprocess.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "opt")


def tiny_config(arch: str, vocab_size: int = 512):
    """A transformers config for a 2-block model small enough to run in milliseconds."""
    import transformers as tf

    common = dict(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=256, tie_word_embeddings=False)
    decoder = dict(common, intermediate_size=128, num_key_value_heads=2)
    if arch == "llama":
        return tf.LlamaConfig(**decoder)
    if arch == "mistral":
        return tf.MistralConfig(**decoder, sliding_window=None)
    if arch == "qwen2":
        return tf.Qwen2Config(**decoder)
    if arch == "qwen3":
        return tf.Qwen3Config(**decoder, head_dim=16)
    if arch == "opt":
        return tf.OPTConfig(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, ffn_dim=128,
                            num_attention_heads=4, max_position_embeddings=256, word_embed_proj_dim=64)
    raise ValueError(arch)


def make_tiny_model(arch: str, seed: int = 0, vocab_size: int = 512) -> torch.nn.Module:
    """A randomly initialised causal LM of the given architecture, float32, eval mode.

    Norm weights are randomised too (they are all ones at init), so that folding scales into
    them is actually exercised by function-preservation tests.
    """
    import transformers as tf

    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(tiny_config(arch, vocab_size), dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.uniform_(0.5, 1.5)
            elif "norm" in name and name.endswith("bias"):
                p.uniform_(-0.1, 0.1)
    return model


@pytest.fixture(params=ARCHITECTURES)
def tiny_model(request):
    """Each architecture in turn: (arch name, model)."""
    return request.param, make_tiny_model(request.param)


@pytest.fixture
def random_tokens():
    """Calibration-like token batches (4 x 32) for tiny models with a 512-token vocabulary."""
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 512, (4, 32), generator=g)


@pytest.fixture(scope="session")
def embedded():
    """The embedded default (stories260K) loaded once per session: (model, tokenizer)."""
    from mxlab.models import load_model

    return load_model()
