"""The scale lab over a model's decoder Linears: clipped-block and flushed-element fractions and the
weight / output SQNR per scale rule, averaged over layers (weights only, block 32, 8 x 256 tokens).

    python benchmarks/scale_lab_embedded.py --out benchmarks/results/scale_lab_embedded.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from mxlab.data import calibration_batches  # noqa: E402
from mxlab.models import load_model  # noqa: E402
from mxlab.scalelab import scale_lab_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--formats", default="mxfp4_e2m1,mxint4")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, tok = load_model(args.model)
    tokens = calibration_batches(tok, "tinystories", 8, 256, seed=0)
    summary = {}
    for fmt in args.formats.split(","):
        rows = scale_lab_model(model, fmt, 32, tokens=tokens)
        summary[fmt] = {}
        for rule in dict.fromkeys(r["scale_rule"] for r in rows):
            rs = [r for r in rows if r["scale_rule"] == rule]
            summary[fmt][rule] = {k: statistics.mean(r[k] for r in rs) for k in
                                  ("clipped_block_frac", "flushed_frac", "weight_sqnr_db", "output_sqnr_db")}
            print(fmt, rule, " ".join(f"{k} {v:.4f}" for k, v in summary[fmt][rule].items()))
    if args.out:
        args.out.write_text(json.dumps(dict(model=args.model or "embedded stories260K", layers=len(rows) // 5,
                                            summary=summary), indent=1))


if __name__ == "__main__":
    main()
