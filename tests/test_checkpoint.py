"""The checkpoint: packed round trip (bit-exact logits), its size, the dequantized HF checkpoint,
clear errors for broken checkpoints, and no partial output when an export fails midway."""
from __future__ import annotations

import ast
import errno
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import make_tiny_model
from mxlab.errors import Cancelled, MxlabError
from mxlab.checkpoint import WEIGHTS_FILE, load_quantized, quant_linears, save_quantized
from mxlab.dequantized import save_dequantized
from mxlab.ptq.pipeline import quantize_model
from mxlab.recipe import Recipe


def _quantized(arch="llama", calib=None, **recipe):
    model = make_tiny_model(arch)
    g = torch.Generator().manual_seed(0)
    calib = torch.randint(0, 512, (4, 32), generator=g) if calib is None else calib
    return quantize_model(model, None, Recipe(**recipe), calib_tokens=calib)


def _logits(model, tokens):
    with torch.no_grad():
        return model(tokens).logits


TOKENS = torch.randint(0, 512, (2, 48), generator=torch.Generator().manual_seed(1))


def _tokenizer():
    from mxlab.models import load_model

    return load_model()[1]


# ------------------------------------------------------------------------------ round trip
@pytest.mark.parametrize("arch, recipe", [
    ("llama", dict(weights="mxint4", acts="mxint8", block_size=32)),
    ("opt", dict(weights="mxfp4_e2m1", acts="mxfp8_e4m3", block_size=16, rounding="even")),
    ("qwen2", dict(weights="int4", acts="int8", steps=["gptq"])),
    ("llama", dict(weights="nvfp4", acts="none", block_size=16, rounding="even")),
    ("mistral", dict(weights="mxint3", acts="mxint8", steps=["awq", "gptq"],
                     overrides=[{"pattern": "*.mlp.down_proj", "weights": "mxint8"},
                                {"pattern": "model.layers.0.self_attn.q_proj", "skip": True},
                                {"pattern": "model.layers.1.self_attn.k_proj", "weights": "none"}])),
])
def test_round_trip_logits_identical(tmp_path, arch, recipe):
    result = _quantized(arch, **recipe)
    expected = _logits(result.model, TOKENS)
    save_quantized(result, _tokenizer(), tmp_path / "ckpt")
    model, tok = load_quantized(tmp_path / "ckpt")
    assert tok is not None and tok.vocab_size == 512
    assert torch.equal(_logits(model, TOKENS), expected)
    before, after = quant_linears(result.model), quant_linears(model)
    assert after.keys() == before.keys()
    for name, q in before.items():
        assert after[name].spec == q.spec and torch.equal(after[name].weight, q.weight), name
    qc = json.loads((tmp_path / "ckpt" / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "mxlab" and qc["recipe"] == result.recipe.to_dict()
    assert qc["modules"].keys() == before.keys()


def test_round_trip_embedded_model_with_lm_head(tmp_path):
    """The embedded model ties lm_head to the embeddings; quantizing lm_head unties them."""
    from mxlab.models import load_model

    model, tok = load_model()
    calib = torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(0))
    result = quantize_model(model, tok, Recipe(weights="mxint4", acts="mxint8", targets="decoder+lm_head"),
                            calib_tokens=calib)
    expected = _logits(result.model, TOKENS)
    save_quantized(result, tok, tmp_path / "ckpt")
    loaded, _ = load_quantized(tmp_path / "ckpt")
    assert torch.equal(_logits(loaded, TOKENS), expected)
    assert "lm_head" in quant_linears(loaded)


def test_round_trip_bfloat16(tmp_path):
    model = make_tiny_model("qwen3").to(torch.bfloat16)
    result = quantize_model(model, None, Recipe(weights="mxfp6_e2m3", acts="mxint8"),
                            calib_tokens=torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(0)))
    save_quantized(result, None, tmp_path / "ckpt")
    loaded, tok = load_quantized(tmp_path / "ckpt")
    assert tok is None and loaded.dtype == torch.bfloat16
    assert torch.equal(_logits(loaded, TOKENS), _logits(result.model, TOKENS))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_round_trip_cuda(tmp_path):
    model = make_tiny_model("llama").to("cuda")
    result = quantize_model(model, None, Recipe(weights="mxint4", acts="mxint8", steps=["gptq"]), device="cuda",
                            calib_tokens=torch.randint(0, 512, (4, 32), generator=torch.Generator().manual_seed(0)))
    tokens = TOKENS.to("cuda")
    expected = _logits(result.model, tokens)
    save_quantized(result, None, tmp_path / "ckpt")
    loaded, _ = load_quantized(tmp_path / "ckpt", device="cuda")
    assert next(loaded.parameters()).device.type == "cuda"
    assert torch.equal(_logits(loaded, tokens), expected)


# ------------------------------------------------------------------------------------ size
def _safetensors_sizes(path: Path) -> tuple[int, dict[str, int]]:
    """(header bytes, {tensor name: data bytes}) read straight from the file format."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    return 8 + n, {k: v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items()}


def test_packed_size_mxint4_block32(tmp_path):
    result = _quantized("llama", weights="mxint4", acts="mxint8", block_size=32)
    save_quantized(result, None, tmp_path / "ckpt")
    path = tmp_path / "ckpt" / WEIGHTS_FILE
    header, sizes = _safetensors_sizes(path)
    qmods = quant_linears(result.model)
    n_weights = sum(m.weight.numel() for m in qmods.values())
    packed_bytes = sum(b for k, b in sizes.items() if k.rpartition(".weight.")[0] in qmods)
    buffer_bytes = sum(b for k, b in sizes.items() if k.startswith("mxlab_buffers."))  # rotary inv_freq
    plain_bytes = sum(b for k, b in sizes.items() if k.rpartition(".weight.")[0] not in qmods) - buffer_bytes
    # 4-bit codes + one 8-bit E8M0 scale per 32 weights: 4.25 bits (tiny metadata tensors allowed)
    assert 4.25 <= 8 * packed_bytes / n_weights < 4.26
    # everything else stays float32, counted separately: embeddings, norms, lm_head
    n_plain = sum(p.numel() for n, p in result.model.state_dict().items()
                  if n.rpartition(".")[0] not in qmods)
    assert plain_bytes == 4 * n_plain
    assert path.stat().st_size == header + packed_bytes + plain_bytes + buffer_bytes and buffer_bytes < 200


# ------------------------------------------------------------------------------ dequantized
def test_dequantized_loads_in_plain_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    from mxlab.evaluate import perplexity

    result = _quantized("llama", weights="mxint4", acts="none", steps=["gptq"])
    save_dequantized(result.model, _tokenizer(), tmp_path / "plain")
    cfg = json.loads((tmp_path / "plain" / "config.json").read_text())
    assert "quantization_config" not in cfg
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "plain").eval()
    assert not quant_linears(plain)
    tokens = torch.randint(0, 512, (400,), generator=torch.Generator().manual_seed(2))
    ppl_q = perplexity(result.model, tokens, seq_len=64)
    assert perplexity(plain, tokens, seq_len=64) == pytest.approx(ppl_q, rel=1e-6)
    assert torch.equal(_logits(plain, TOKENS), _logits(result.model, TOKENS))


def test_dequantized_embedded_with_quantized_lm_head(tmp_path):
    """Quantizing lm_head unties it from the embeddings; the plain checkpoint must say so."""
    from transformers import AutoModelForCausalLM

    from mxlab.models import load_model

    model, tok = load_model()
    result = quantize_model(model, tok, Recipe(weights="mxint4", acts="none", targets="decoder+lm_head"),
                            calib_tokens=torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(0)))
    save_dequantized(result.model, tok, tmp_path / "plain")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "plain").eval()
    assert plain.config.tie_word_embeddings is False
    assert torch.equal(_logits(plain, TOKENS), _logits(result.model, TOKENS))


@pytest.mark.slow
def test_dequantized_loads_without_mxlab(tmp_path):
    """A clean interpreter outside the repository, where mxlab cannot be imported, loads it."""
    result = _quantized("llama", weights="mxint4", acts="none")
    save_dequantized(result.model, _tokenizer(), tmp_path / "plain")
    torch.save(TOKENS, tmp_path / "tokens.pt")
    code = ("import sys, torch; from transformers import AutoModelForCausalLM as A; "
            f"m = A.from_pretrained({str(tmp_path / 'plain')!r}).eval(); "
            f"t = torch.load({str(tmp_path / 'tokens.pt')!r}); "
            "assert not any(k.startswith('mxlab') for k in sys.modules); "
            f"torch.save(m(t).logits.detach(), {str(tmp_path / 'out.pt')!r})")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert torch.equal(torch.load(tmp_path / "out.pt"), _logits(result.model, TOKENS))


# ----------------------------------------------------------------------------- clear errors
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "ckpt"
    save_quantized(_quantized("llama", weights="mxint4", acts="mxint8"), None, path)
    return path


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_truncated_safetensors(saved, tmp_path):
    ckpt = _copy(saved, tmp_path / "c")
    data = (ckpt / WEIGHTS_FILE).read_bytes()
    (ckpt / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(MxlabError, match="corrupted or truncated"):
        load_quantized(ckpt)
    with pytest.raises(MxlabError, match="corrupted or truncated"):  # the file format check alone
        load_quantized(ckpt, verify=False)


def test_corrupted_safetensors(saved, tmp_path):
    ckpt = _copy(saved, tmp_path / "c")
    data = bytearray((ckpt / WEIGHTS_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the tensor data
    (ckpt / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(MxlabError, match="corrupted or truncated.*sha256"):
        load_quantized(ckpt)
    (ckpt / WEIGHTS_FILE).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(MxlabError, match="corrupted or truncated"):
        load_quantized(ckpt, verify=False)


def test_missing_config(saved, tmp_path):
    ckpt = _copy(saved, tmp_path / "c")
    (ckpt / "config.json").unlink()
    with pytest.raises(MxlabError, match="no config.json"):
        load_quantized(ckpt)
    with pytest.raises(MxlabError, match="not a directory"):
        load_quantized(tmp_path / "nowhere")


def test_unknown_format_in_config(saved, tmp_path):
    ckpt = _copy(saved, tmp_path / "c")
    cfg = json.loads((ckpt / "config.json").read_text())
    name = next(iter(cfg["quantization_config"]["modules"]))
    cfg["quantization_config"]["modules"][name]["weights"] = "mxint5"
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(MxlabError, match=f"{name}.*unknown weights format 'mxint5'"):
        load_quantized(ckpt)


def test_plain_checkpoint_is_not_packed(tmp_path):
    result = _quantized("llama", weights="mxint4", acts="none")
    save_dequantized(result.model, None, tmp_path / "plain")
    with pytest.raises(MxlabError, match="not an mxlab packed checkpoint"):
        load_quantized(tmp_path / "plain")


def test_unquantized_model_cannot_be_packed(tmp_path):
    with pytest.raises(MxlabError, match="quantize it first"):
        save_quantized(make_tiny_model("llama"), None, tmp_path / "x", Recipe())
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------- interrupted export
def test_export_failing_midway_leaves_nothing(tmp_path, monkeypatch):
    import safetensors.torch

    result = _quantized("llama", weights="mxint4", acts="mxint8")

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    with pytest.raises(MxlabError, match="free disk space"):
        save_quantized(result, None, tmp_path / "ckpt")
    assert list(tmp_path.iterdir()) == []


def test_export_cancelled_midway_leaves_nothing(tmp_path):
    result = _quantized("llama", weights="mxint4", acts="mxint8")
    seen = []

    def cancel_after_two(fraction, message):
        seen.append(fraction)
        if len(seen) == 2:
            raise Cancelled("stop")
    with pytest.raises(Cancelled):
        save_quantized(result, None, tmp_path / "ckpt", progress=cancel_after_two)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------- arrows
def test_checkpoint_imports_no_analysis_and_no_run_directory():
    """checkpoint.py is the file format alone: it never imports the run directory, the runner or analysis."""
    import mxlab.checkpoint as checkpoint

    tree = ast.parse(Path(checkpoint.__file__).read_text(encoding="utf-8"))
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:  # relative: mxlab's own modules
            modules |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            modules |= {n.split(".")[1] for n in names if n.startswith("mxlab.")}
    assert "atomic" in modules and "jsonable" in modules  # the scan sees the imports
    forbidden = {"report", "stats", "rundir", "runner", "plots", "tables", "sensitivity", "lab", "evaluate"}
    assert not modules & forbidden, modules & forbidden
