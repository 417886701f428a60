"""Compare a study-table sweep (benchmarks/study_table.yaml) with the numbers in the README.

    python -m mxlab sweep benchmarks/study_table.yaml --workspace runs
    python benchmarks/study_table_check.py runs/study_table [--out benchmarks/results/x.json]

Prints, per finished cell, the sweep's perplexity, the reference (default benchmarks/results/study_table_h200.json:
the README's tables, this sweep on an H200; --reference benchmarks/results/study_table_h100.json for the former
benchmarks/study_table.py's H100 numbers) and their difference; writes them to --out.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mxlab.sweep.results import sweep_status  # noqa: E402
from mxlab.sweep.spec import label_of  # noqa: E402

REFERENCE = Path(__file__).resolve().parent / "results" / "study_table_h200.json"   # the README's tables


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep_dir", type=Path)
    ap.add_argument("--reference", type=Path, default=REFERENCE)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    ref = {(str(c["block_size"]), label_of(c["config"]), label_of(c["method"])): c
           for c in json.loads(args.reference.read_text())["cells"]}
    rows = []
    for r in sweep_status(args.sweep_dir):
        key = (r["recipe.block_size"], r["config"], r["method"])
        if r["status"] != "done" or key not in ref:
            continue
        rows.append({"cell": r["cell"], "ppl": r["ppl_quant"], "reference": ref[key]["ppl"],
                     "diff": r["ppl_quant"] - ref[key]["ppl"], "kl": r.get("kl"), "seconds": r["seconds"],
                     "ppl_fp": r["ppl_fp"]})
        print(f"{r['cell']:55s} {r['ppl_quant']:9.4f} {ref[key]['ppl']:9.4f} {rows[-1]['diff']:+.2e}")
    if not rows:
        print("no finished cell matches the reference", file=sys.stderr)
        return 1
    worst = max(rows, key=lambda x: abs(x["diff"]))
    rel = max(abs(x["diff"]) / x["reference"] for x in rows)
    print(f"{len(rows)} cells; largest |diff| {abs(worst['diff']):.2e} ({worst['cell']}); largest relative {rel:.2e}")
    if args.out:
        args.out.write_text(json.dumps({"sweep_dir": str(args.sweep_dir), "reference": args.reference.name,
                                        "max_abs_diff": abs(worst["diff"]), "max_rel_diff": rel, "cells": rows},
                                       indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
