"""Reproduce the study's Table (Sharify et al. 2024) on the embedded model: formats x methods x order.

Rows: A-MXINT8 with W-MXINT8/4/3 and A-INT8 with W-INT4, at block sizes 128 and 32 (per-channel INT
has no blocks, so its rows repeat across block sizes). Columns: RTN, GPTQ, SQ, AWQ, SQ+GPTQ,
AWQ+GPTQ and the reversed orders GPTQ+SQ / GPTQ+AWQ (the study's ablation, run with
``allow_requantize`` since the scaling step then rescales weights GPTQ already quantized).

    python benchmarks/study_table.py --eval tinystories --out benchmarks/results/study_table.json

Prints a Markdown table (perplexity, lower is better) and writes every number to JSON.
The model is loaded and evaluated in FP once; each cell quantizes a fresh copy.
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

METHODS = {  # column label -> ordered steps
    "RTN": ["rtn"], "GPTQ": ["gptq"], "SQ": ["smoothquant"], "AWQ": ["awq"],
    "SQ+GPTQ": ["smoothquant", "gptq"], "AWQ+GPTQ": ["awq", "gptq"],
    "GPTQ+SQ": ["gptq", "smoothquant"], "GPTQ+AWQ": ["gptq", "awq"],
}
CONFIGS = [  # row label -> (weights, acts)
    ("A-MXINT8 W-MXINT8", "mxint8", "mxint8"),
    ("A-MXINT8 W-MXINT4", "mxint4", "mxint8"),
    ("A-MXINT8 W-MXINT3", "mxint3", "mxint8"),
    ("A-INT8 W-INT4", "int4", "int8"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--eval", default="tinystories", help="evaluation set (default: tinystories)")
    ap.add_argument("--calib", default="tinystories", help="calibration set (default: tinystories)")
    ap.add_argument("--calib-samples", type=int, default=128)
    ap.add_argument("--calib-seq-len", type=int, default=512)
    ap.add_argument("--block-sizes", default="128,32")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated column labels")
    ap.add_argument("--out", type=Path, default=None, help="write all numbers to this JSON file (after every cell)")
    ap.add_argument("--device", default=None, help="cpu (default) or cuda: where blocks are quantized and evaluated")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)

    model, tok = load_model(device=args.device)
    calib = calibration_batches(tok, args.calib, args.calib_samples, args.calib_seq_len, seed=0)
    fp = evaluate_model(model, tok, args.eval)
    print(f"FP perplexity on {args.eval}: {fp['ppl']:.4f} ({fp['n_tokens']} tokens)", file=sys.stderr)
    methods = [m for m in args.methods.split(",") if m]
    cells: list[dict] = []
    for block in [int(b) for b in args.block_sizes.split(",")]:
        for label, weights, acts in CONFIGS:
            for method in methods:
                steps = METHODS[method]
                recipe = Recipe(weights=weights, acts=acts, block_size=block, steps=steps,
                                allow_requantize=steps[0] == "gptq" and len(steps) > 1)
                t0 = time.perf_counter()
                result = quantize_model(copy.deepcopy(model), tok, recipe, calib_tokens=calib, device=args.device)
                q = evaluate_model(result.model, tok, args.eval, reference=model)
                cell = dict(block_size=block, config=label, method=method, ppl=q["ppl"], kl=q.get("kl"),
                            top1=q.get("top1"), seconds=time.perf_counter() - t0)
                cells.append(cell)
                if args.out:
                    save(args, fp["ppl"], cells)
                print(f"block {block:4d} {label:18s} {method:9s} ppl {q['ppl']:.4f} kl {q.get('kl', 0):.4f} "
                      f"({cell['seconds']:.1f}s)", file=sys.stderr, flush=True)
    print(markdown(fp["ppl"], cells, methods))


def save(args: argparse.Namespace, ppl_fp: float, cells: list[dict]) -> None:
    """Every number so far, so that an interrupted run keeps what it measured."""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name() if args.device and args.device.startswith("cuda") else "cpu"
    args.out.write_text(json.dumps(dict(eval=args.eval, ppl_fp=ppl_fp, calib=args.calib, device=device,
                                        calib_samples=args.calib_samples, calib_seq_len=args.calib_seq_len,
                                        torch=torch.__version__, cells=cells), indent=1))


def markdown(ppl_fp: float, cells: list[dict], methods: list[str]) -> str:
    """One table per block size; the best cell of each row in bold."""
    out = []
    for block in dict.fromkeys(c["block_size"] for c in cells):
        out += [f"\nBlock size {block} (FP: {ppl_fp:.3f})\n", "| config | " + " | ".join(methods) + " |",
                "| --- |" + " ---: |" * len(methods)]
        for label, *_ in CONFIGS:
            row = {c["method"]: c["ppl"] for c in cells if c["block_size"] == block and c["config"] == label}
            if not row:
                continue
            best = min(row.values())
            out.append(f"| {label} | " + " | ".join(
                (f"**{row[m]:.3f}**" if row[m] == best else f"{row[m]:.3f}") if m in row else "" for m in methods) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
