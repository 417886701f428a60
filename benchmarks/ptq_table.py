"""The study's Table 1 on the embedded model: TinyStories perplexity per format x method (RTN, SmoothQuant).

Usage: python benchmarks/ptq_table.py [--device cuda] [--block-size 32] [--n-samples 128] [--seq-len 256]
"""
from __future__ import annotations

import argparse
import json
import logging
import time

import torch

from mxlab.data import calibration_batches, evaluation_tokens
from mxlab.evaluate import perplexity
from mxlab.models import load_model
from mxlab.ptq.pipeline import quantize_model
from mxlab.recipe import Recipe

CONFIGS = [("mxint8", "mxint8"), ("int8", "int8"), ("mxint4", "mxint8"), ("int4", "int8"),
           ("mxint3", "mxint8"), ("int3", "int8")]
METHODS = {"rtn": ["rtn"], "sq": ["smoothquant", "rtn"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--block-size", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--n-samples", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--eval", default="tinystories")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    model, tok = load_model(device=args.device)
    ev = evaluation_tokens(tok, args.eval)
    cal = calibration_batches(tok, "tinystories", args.n_samples, args.seq_len, 0)
    rows = [{"weights": "fp", "acts": "fp", "method": "-", "block": 0, "ppl": perplexity(model, ev)}]
    print(json.dumps(rows[0]), flush=True)
    for bs in args.block_size:
        for w, a in CONFIGS:
            if not w.startswith("mx") and bs != args.block_size[0]:
                continue                     # per-channel int formats have no block size
            for method, steps in METHODS.items():
                model, tok = load_model(device=args.device)
                t0 = time.perf_counter()
                quantize_model(model, tok, Recipe(weights=w, acts=a, block_size=bs, steps=steps), calib_tokens=cal,
                               device=args.device)
                row = {"weights": w, "acts": a, "method": method, "block": bs if w.startswith("mx") else 0,
                       "ppl": perplexity(model, ev), "quant_s": round(time.perf_counter() - t0, 2)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
