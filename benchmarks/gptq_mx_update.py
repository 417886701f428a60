"""GPTQ's two MX update rules on the embedded model: the study's micro-block vs group-wise column.

TinyStories perplexity (full eval set) of GPTQ and AWQ+GPTQ at A-MXINT8 with W-MXINT4 / W-MXINT3,
blocks 32 and 128, calibration 128 x 512 TinyStories tokens (seed 0), as benchmarks/study_table.yaml:

    OMP_NUM_THREADS=1 python benchmarks/gptq_mx_update.py --out benchmarks/results/gptq_mx_update.json
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from mxlab.data import calibration_batches  # noqa: E402
from mxlab.evaluate import evaluate_model  # noqa: E402
from mxlab.models import load_model  # noqa: E402
from mxlab.ptq.pipeline import quantize_model  # noqa: E402
from mxlab.recipe import Recipe  # noqa: E402

METHODS = {"GPTQ": ["gptq"], "AWQ+GPTQ": ["awq", "gptq"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--updates", default="column", help="comma-separated: column,microblock")
    ap.add_argument("--weights", default="mxint4,mxint3")
    ap.add_argument("--block-sizes", default="32,128")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--out", type=Path, default=None, help="JSON with every number (written after each cell)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    model, tok = load_model()
    calib = calibration_batches(tok, "tinystories", 128, 512, seed=0)
    fp = evaluate_model(model, tok, "tinystories")["ppl"]
    print(f"FP perplexity {fp:.4f}", file=sys.stderr, flush=True)
    cells: list[dict] = []
    for block in [int(b) for b in args.block_sizes.split(",")]:
        for weights in args.weights.split(","):
            for method in args.methods.split(","):
                for update in args.updates.split(","):
                    steps = [*METHODS[method][:-1], {"name": "gptq", "mx_update": update}]
                    recipe = Recipe(weights=weights, acts="mxint8", block_size=block, steps=steps)
                    t0 = time.perf_counter()
                    result = quantize_model(copy.deepcopy(model), tok, recipe, calib_tokens=calib)
                    ppl = evaluate_model(result.model, tok, "tinystories")["ppl"]
                    cells.append(dict(block_size=block, weights=weights, method=method, mx_update=update,
                                      ppl=ppl, seconds=time.perf_counter() - t0))
                    print(f"block {block:4d} W-{weights} {method:9s} {update:10s} ppl {ppl:.4f} "
                          f"({cells[-1]['seconds']:.0f}s)", file=sys.stderr, flush=True)
                    if args.out:
                        args.out.parent.mkdir(parents=True, exist_ok=True)
                        args.out.write_text(json.dumps(dict(ppl_fp=fp, device="cpu", torch=torch.__version__,
                                                            cells=cells), indent=1))


if __name__ == "__main__":
    main()
