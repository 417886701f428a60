"""Speed and memory of the layer-by-layer pipeline: AWQ+GPTQ, W-MXINT4 / A-MXINT8, on a randomly
initialised model with the Llama-3.1-8B shape and one decoder block on the GPU at a time.

    python benchmarks/bench_pipeline.py                              # 32 layers, 128 x 2048 tokens, cuda
    python benchmarks/bench_pipeline.py --layers 4                   # fewer layers: extrapolates to 32
    python benchmarks/bench_pipeline.py --tiny --device cpu          # smoke test of the script itself

The model is built on the meta device, then ``to_empty`` on the CPU in bf16 (one allocation) and
filled with N(0, 0.02) weights (ones for norms) — random weights, so the numbers say nothing about
accuracy, only about time and memory. Prints total time, time per block (from the pipeline's
progress messages), seconds per pipeline phase and peak GPU memory (``torch.cuda.max_memory_allocated``).
"""
from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mxlab.ptq.pipeline import DIAGNOSTIC_TOKENS, quantize_model  # noqa: E402
from mxlab.recipe import Recipe  # noqa: E402

LLAMA31_8B = dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                  vocab_size=128256, rope_theta=500000.0, max_position_embeddings=131072, num_hidden_layers=32)
TINY = dict(hidden_size=128, intermediate_size=352, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=512, rope_theta=500000.0, max_position_embeddings=4096, num_hidden_layers=2)
SMALL = dict(hidden_size=1024, intermediate_size=3584, num_attention_heads=8, num_key_value_heads=2,
             vocab_size=8192, rope_theta=500000.0, max_position_embeddings=4096, num_hidden_layers=4)


@torch.no_grad()
def build_model(shape: dict, layers: int, dtype: torch.dtype, init_device: torch.device):
    """A random LlamaForCausalLM on the CPU in ``dtype``, allocated once (meta -> to_empty -> fill)."""
    import transformers as tf

    cfg = tf.LlamaConfig(**{**shape, "num_hidden_layers": layers}, tie_word_embeddings=False)
    with torch.device("meta"):
        model = tf.LlamaForCausalLM._from_config(cfg, dtype=dtype)
    model = model.to_empty(device="cpu").eval()
    gen = torch.Generator(device=init_device).manual_seed(0)
    for name, p in model.named_parameters():     # fill on the init device (fast on a GPU), copy back
        if p.dim() == 1:
            p.fill_(1.0)                          # RMSNorm weights
        else:
            for i in range(0, p.shape[0], 4096):  # row slabs: bounded temporary memory
                rows = p[i:i + 4096]
                rows.copy_(torch.empty(rows.shape, dtype=dtype, device=init_device).normal_(0, 0.02, generator=gen))
    # non-persistent buffers (rotary inv_freq) were left uninitialised by to_empty: rebuild them
    model.model.rotary_emb = type(model.model.rotary_emb)(config=cfg)
    return model


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=32, help="decoder blocks to build and quantize")
    ap.add_argument("--samples", type=int, default=128, help="calibration sequences")
    ap.add_argument("--seq-len", type=int, default=2048, help="tokens per calibration sequence")
    ap.add_argument("--steps", default="awq,gptq")
    ap.add_argument("--gptq-mx-update", default="microblock", choices=["microblock", "column"],
                    help="GPTQ's MX rule: the study's micro-blocks (default) or group-wise column by column")
    ap.add_argument("--weights", default="mxint4")
    ap.add_argument("--acts", default="mxint8")
    ap.add_argument("--block-size", type=int, default=32)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="a tiny Llama config (to test this script on a CPU)")
    ap.add_argument("--small", action="store_true", help="hidden 1024 / intermediate 3584 (CPU profiling)")
    ap.add_argument("--diagnostic-tokens", type=int, default=DIAGNOSTIC_TOKENS,
                    help="calibration tokens for error records and statistics (0: all)")
    ap.add_argument("--full-layers", type=int, default=32, help="layer count to extrapolate to")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    log = logging.getLogger("bench_pipeline")

    device = torch.device(args.device)
    t0 = time.perf_counter()
    shape = TINY if args.tiny else SMALL if args.small else LLAMA31_8B
    model = build_model(shape, args.layers, torch.bfloat16, device)
    t_build = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    log.info("built %.2fB parameters in %.1f s", n_params / 1e9, t_build)

    vocab = model.config.vocab_size
    tokens = torch.randint(0, vocab, (args.samples, args.seq_len), generator=torch.Generator().manual_seed(0))
    steps = [{"name": "gptq", "mx_update": args.gptq_mx_update} if s == "gptq" else s
             for s in args.steps.split(",") if s]
    recipe = Recipe(weights=args.weights, acts=args.acts, block_size=args.block_size, steps=steps)
    done: list[float] = []

    def progress(fraction: float, message: str) -> None:
        if re.fullmatch(r"block \d+/\d+ done", message):
            done.append(time.perf_counter())
            log.info("%s (%.1f s)", message, done[-1] - (done[-2] if len(done) > 1 else t_start))

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t_start = time.perf_counter()
    result = quantize_model(model, None, recipe, progress=progress, device=device, calib_tokens=tokens,
                            diagnostic_tokens=args.diagnostic_tokens or None)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    total = time.perf_counter() - t_start
    per_block = [b - a for a, b in zip([t_start] + done[:-1], done)]
    first, rest = per_block[0], per_block[1:] or per_block
    steady = sum(rest) / len(rest)
    # the pipeline resets the peak counter per phase: the run's peak is the largest phase peak
    peak = (max([torch.cuda.max_memory_allocated(device), *result.peak_memory.values()]) / 2 ** 30
            if device.type == "cuda" else float("nan"))
    extrapolated = first + steady * (args.full_layers - 1)

    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device            {dev_name}")
    print(f"model             {'tiny' if args.tiny else 'small' if args.small else 'Llama-3.1-8B shape'}, {args.layers} layers, "
          f"{n_params / 1e9:.2f}B params, bf16 (built in {t_build:.1f} s)")
    print(f"recipe            {args.steps} (gptq mx_update {args.gptq_mx_update})  W-{args.weights} A-{args.acts} block {args.block_size}")
    print(f"calibration       {args.samples} x {args.seq_len} tokens "
          f"(diagnostics on {args.diagnostic_tokens or 'all'} tokens)")
    print(f"total             {total:.1f} s  (quantize_model, {args.layers} layers)")
    print(f"per block         first {first:.1f} s (includes catching block inputs), then mean {steady:.1f} s "
          f"(min {min(rest):.1f}, max {max(rest):.1f})")
    print(f"extrapolated      {extrapolated:.0f} s = {extrapolated / 60:.1f} min for {args.full_layers} layers")
    print(f"peak GPU memory   {peak:.2f} GiB (torch.cuda.max_memory_allocated)")
    print("phases            seconds in total / per block / peak GPU GiB (CUDA synced per phase)")
    for phase, sec in sorted(result.timings.items(), key=lambda kv: -kv[1]):
        print(f"  {phase:<16}{sec:8.1f} s {sec / args.layers:7.2f} s {result.peak_memory.get(phase, 0) / 2 ** 30:7.2f}")
    print(f"  {'(unaccounted)':<16}{total - sum(result.timings.values()):8.1f} s")


if __name__ == "__main__":
    main()
