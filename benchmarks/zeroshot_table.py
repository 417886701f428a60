"""Print the README's zero-shot table from benchmarks/results/zeroshot_smollm2.json (zeroshot_smollm2.py)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

STAGES = [("fp", "FP"), ("w8a8_mxint_rtn", "W-MXINT8/A-MXINT8 RTN"), ("w4a8_mxint_awq_gptq", "W-MXINT4/A-MXINT8 AWQ+GPTQ")]


def main() -> None:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "results" / "zeroshot_smollm2.json")
    d = json.loads(path.read_text())
    tasks = d["tasks"]
    print("| model | " + " | ".join(tasks) + " |")
    print("| --- |" + " ---: |" * len(tasks))
    for key, label in STAGES:
        table = d["stages"][key]["table"]
        cells = []
        for t in tasks:
            r = table[t]
            metric = "acc_norm" if "acc_norm" in r and t in ("arc_easy", "arc_challenge", "hellaswag", "openbookqa",
                                                              "piqa") else "acc"
            cells.append(f"{r[metric]:.2f}")
        print(f"| {label} | " + " | ".join(cells) + " |")
    lam = [f"{d['stages'][k]['table']['lambada_openai']['perplexity']:.1f}" for k, _ in STAGES]
    print(f"\nLAMBADA perplexity: {' / '.join(lam)} (FP / W8A8 / W4A8); limit {d['limit']} examples per task; "
          f"FP equals lm-eval run directly: {d.get('fp_equals_direct')}")


if __name__ == "__main__":
    main()
