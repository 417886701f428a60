"""Where one decoder block's time goes: torch.profiler over the AWQ+GPTQ pipeline (issue 17's speed options)
on a few Llama-3.1-8B-shaped blocks, 128 x 2048 calibration tokens.

    python3 benchmarks/profile_pipeline.py --layers 3 --out $OUT          # on the GPU machine
    python3 benchmarks/profile_pipeline.py --tiny --device cpu --layers 2  # smoke test

Writes profile_pipeline.md: the pipeline's own phase timers per block, then the top operators by self
CUDA time and by self CPU time (the CPU side shows host syncs and Python overhead). ``--model-on cpu``
keeps the model in host memory so that blocks are moved one at a time (the big-model path).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_pipeline import LLAMA31_8B, TINY, build_model  # noqa: E402
from mxlab.ptq.pipeline import quantize_model  # noqa: E402
from mxlab.recipe import Recipe  # noqa: E402

from bench_h200 import FAST_AWQ, FAST_GPTQ  # noqa: E402  the speed options, one definition

FAST_STEPS = [FAST_AWQ, FAST_GPTQ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--model-on", choices=("device", "cpu"), default="device")
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--out", type=Path, default=Path("."))
    args = ap.parse_args()
    dev = torch.device(args.device)
    model = build_model(TINY if args.tiny else LLAMA31_8B, args.layers, torch.bfloat16,
                        dev if args.model_on == "device" else torch.device("cpu"))
    vocab = model.get_input_embeddings().num_embeddings
    tokens = torch.randint(0, vocab, (args.samples, args.seq_len), generator=torch.Generator().manual_seed(0))
    recipe = Recipe(weights="mxint4", acts="mxint8", block_size=32, steps=FAST_STEPS)
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    t0 = time.perf_counter()
    with torch.profiler.profile(activities=acts) as prof:
        result = quantize_model(model, None, recipe, device=dev, calib_tokens=tokens)
    wall = time.perf_counter() - t0
    md = [f"# Pipeline profile: {args.layers} blocks, model on {args.model_on}, {args.samples} x {args.seq_len} "
          f"tokens, {torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'cpu'}", "",
          f"wall (profiled) {wall:.1f} s; phases per block:", ""]
    md += [f"- {k}: {v / args.layers:.3f} s" for k, v in sorted(result.timings.items(), key=lambda kv: -kv[1])]
    if dev.type == "cuda":
        md += ["", f"peak GPU memory {torch.cuda.max_memory_allocated(dev) / 2**30:.2f} GiB", ""]
    ka = prof.key_averages()
    for key in (["self_cuda_time_total"] if dev.type == "cuda" else []) + ["self_cpu_time_total"]:
        md += ["", f"## top by {key}", "", "```", ka.table(sort_by=key, row_limit=35, max_name_column_width=60), "```"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "profile_pipeline.md").write_text("\n".join(md) + "\n")
    print("\n".join(md[:30]))


if __name__ == "__main__":
    main()
