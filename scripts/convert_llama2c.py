"""Convert a llama2.c checkpoint (legacy v0 format) + tok*.bin into a Hugging Face Llama directory.

Provenance of the embedded default model (assets/stories260K). Run once:

    python scripts/convert_llama2c.py ../shared/data/stories260K/stories260K.bin \
        ../shared/data/stories260K/tok512.bin assets/stories260K

The llama2.c format is a 7 x int32 header (dim, hidden_dim, n_layers, n_heads, n_kv_heads,
vocab_size, seq_len; a negative vocab_size means an unshared classifier) followed by float32
tensors in a fixed order. llama2.c rotates *interleaved* pairs (x0, x1), (x2, x3)... of each head,
while HF Llama rotates the two halves (x_i, x_{i+d/2}); permuting the rows of wq / wk per head
makes the two computations identical.

The tokenizer file is int32 max_token_length, then per token: float32 score, int32 length, bytes.
llama2.c's encoder looks every UTF-8 character up (falling back to <0xXX> byte tokens), then
repeatedly merges the adjacent pair whose concatenation is the highest-scoring vocabulary entry.
A `tokenizers` BPE model whose merges are every (a, b) with a + b in the vocabulary, ranked by
the score of a + b, does the same; the leading-space "dummy prefix" becomes a Prepend normalizer.
"""
from __future__ import annotations

import argparse
import json
import struct
import sys
from pathlib import Path

import numpy as np
import torch

SPACE = "\u2581"  # SentencePiece's visible space; llama2.c's export had turned it back into " "
SPECIALS = ("<unk>", "<s>", "</s>")


def read_checkpoint(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Parse a legacy llama2.c .bin into (header, {name: float32 array})."""
    raw = path.read_bytes()
    keys = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len")
    hdr = dict(zip(keys, struct.unpack("7i", raw[:28])))
    shared = hdr["vocab_size"] > 0
    hdr["vocab_size"] = abs(hdr["vocab_size"])
    dim, hid, nl, nh, nkv, vocab, seq = (hdr[k] for k in keys)
    head = dim // nh
    kv_dim = head * nkv
    shapes = [("tok_embeddings", (vocab, dim)), ("attention_norm", (nl, dim)),
              ("wq", (nl, dim, dim)), ("wk", (nl, kv_dim, dim)), ("wv", (nl, kv_dim, dim)),
              ("wo", (nl, dim, dim)), ("ffn_norm", (nl, dim)), ("w1", (nl, hid, dim)),
              ("w2", (nl, dim, hid)), ("w3", (nl, hid, dim)), ("norm", (dim,)),
              ("freq_cis_real", (seq, head // 2)), ("freq_cis_imag", (seq, head // 2))]
    if not shared:
        shapes.append(("output", (vocab, dim)))
    data = np.frombuffer(raw, dtype="<f4", offset=28)
    out, pos = {}, 0
    for name, shape in shapes:
        n = int(np.prod(shape))
        out[name] = data[pos:pos + n].reshape(shape).copy()
        pos += n
    if pos != data.size:
        raise SystemExit(f"{path}: {data.size - pos} trailing floats; not a legacy v0 llama2.c file")
    hdr["shared_classifier"] = shared
    return hdr, out


def permute_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Rows of wq/wk (n_heads*head, in): interleaved pairs -> halves, per head."""
    rows, cols = w.shape
    return w.reshape(n_heads, rows // n_heads // 2, 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


def check_rope_tables(hdr: dict, w: dict[str, np.ndarray], theta: float) -> None:
    """The stored cos/sin tables must be llama2.c's theta-based ones (we rely on HF recomputing them)."""
    head = hdr["dim"] // hdr["n_heads"]
    freqs = 1.0 / theta ** (np.arange(0, head, 2, dtype=np.float64) / head)
    ang = np.outer(np.arange(hdr["seq_len"]), freqs)
    err = max(np.abs(np.cos(ang) - w["freq_cis_real"]).max(), np.abs(np.sin(ang) - w["freq_cis_imag"]).max())
    if err > 1e-4:
        raise SystemExit(f"RoPE tables do not match theta={theta} (max err {err:.2e})")


def state_dict(hdr: dict, w: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """HF LlamaForCausalLM parameter names -> tensors."""
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    sd = {"model.embed_tokens.weight": t(w["tok_embeddings"]), "model.norm.weight": t(w["norm"])}
    for i in range(hdr["n_layers"]):
        p = f"model.layers.{i}."
        sd[p + "self_attn.q_proj.weight"] = t(permute_rotary(w["wq"][i], hdr["n_heads"]))
        sd[p + "self_attn.k_proj.weight"] = t(permute_rotary(w["wk"][i], hdr["n_kv_heads"]))
        sd[p + "self_attn.v_proj.weight"] = t(w["wv"][i])
        sd[p + "self_attn.o_proj.weight"] = t(w["wo"][i])
        sd[p + "mlp.gate_proj.weight"] = t(w["w1"][i])
        sd[p + "mlp.down_proj.weight"] = t(w["w2"][i])
        sd[p + "mlp.up_proj.weight"] = t(w["w3"][i])
        sd[p + "input_layernorm.weight"] = t(w["attention_norm"][i])
        sd[p + "post_attention_layernorm.weight"] = t(w["ffn_norm"][i])
    if not hdr["shared_classifier"]:
        sd["lm_head.weight"] = t(w["output"])
    return sd


def read_tokenizer(path: Path, vocab_size: int) -> tuple[list[bytes], list[float]]:
    """Parse tok*.bin into (pieces as bytes, scores)."""
    raw = path.read_bytes()
    pos, pieces, scores = 4, [], []
    for _ in range(vocab_size):
        score, n = struct.unpack("<fi", raw[pos:pos + 8])
        pieces.append(raw[pos + 8:pos + 8 + n])
        scores.append(score)
        pos += 8 + n
    return pieces, scores


def build_tokenizer(pieces: list[bytes], scores: list[float]):
    """A `tokenizers.Tokenizer` equivalent to llama2.c's encode(text, bos=True, eos=False)."""
    from tokenizers import Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE

    names = list(SPECIALS) + [p.decode("utf-8").replace(" ", SPACE) for p in pieces[len(SPECIALS):]]
    vocab = {name: i for i, name in enumerate(names)}
    if len(vocab) != len(names):
        raise SystemExit("duplicate pieces in the tokenizer file")
    mergeable = {n: i for n, i in vocab.items() if i >= 3 + 256}  # not specials, not <0xXX>
    merges = []
    for name, i in mergeable.items():
        for cut in range(1, len(name)):
            a, b = name[:cut], name[cut:]
            if a in mergeable and b in mergeable:
                merges.append((-scores[i], i, a, b))
    merges = [(a, b) for *_, a, b in sorted(merges)]
    model = BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    tok = Tokenizer(model)
    tok.normalizer = normalizers.Sequence([normalizers.Prepend(SPACE), normalizers.Replace(" ", SPACE)])
    tok.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                      special_tokens=[("<s>", 1)])
    tok.add_special_tokens(list(SPECIALS))
    return tok


def convert(bin_path: Path, tok_path: Path, out: Path, theta: float = 10000.0) -> None:
    """Write config.json, model.safetensors and the tokenizer files into `out`."""
    import transformers as tf

    hdr, w = read_checkpoint(bin_path)
    check_rope_tables(hdr, w, theta)
    cfg = tf.LlamaConfig(
        vocab_size=hdr["vocab_size"], hidden_size=hdr["dim"], intermediate_size=hdr["hidden_dim"],
        num_hidden_layers=hdr["n_layers"], num_attention_heads=hdr["n_heads"],
        num_key_value_heads=hdr["n_kv_heads"], max_position_embeddings=hdr["seq_len"],
        rms_norm_eps=1e-5,  # llama2.c's rmsnorm adds 1e-5f
        rope_parameters={"rope_type": "default", "rope_theta": theta},
        tie_word_embeddings=hdr["shared_classifier"], bos_token_id=1, eos_token_id=2,
        hidden_act="silu", attention_bias=False, mlp_bias=False, dtype="float32")
    model = tf.LlamaForCausalLM(cfg)
    missing, unexpected = model.load_state_dict(state_dict(hdr, w), strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise SystemExit(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config.pad_token_id = 0
    model.save_pretrained(out, safe_serialization=True)

    pieces, scores = read_tokenizer(tok_path, hdr["vocab_size"])
    fast = tf.PreTrainedTokenizerFast(tokenizer_object=build_tokenizer(pieces, scores), bos_token="<s>",
                                      eos_token="</s>", unk_token="<unk>", pad_token="<unk>",
                                      model_max_length=hdr["seq_len"], add_bos_token=True)
    fast.save_pretrained(out)
    print(json.dumps({k: v for k, v in hdr.items()}), file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("tokenizer", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--rope-theta", type=float, default=10000.0)
    args = ap.parse_args()
    convert(args.checkpoint, args.tokenizer, args.out, args.rope_theta)


if __name__ == "__main__":
    main()
