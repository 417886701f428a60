"""Markdown table of benchmarks/results/mix_frontier.json (the README's mixed-format table).

    python benchmarks/mix_frontier_table.py benchmarks/results/mix_frontier_mxint.json benchmarks/results/mix_frontier_mxfp.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def fmt(ms: dict | None) -> str:
    if ms is None:
        return "-"
    return f"{ms['mean']:.4f} ± {ms['std']:.4f}" if ms["std"] else f"{ms['mean']:.4f}"


def main() -> None:
    paths = sys.argv[1:] or ["benchmarks/results/mix_frontier_mxint.json", "benchmarks/results/mix_frontier_mxfp.json"]
    data = {"sets": {}}
    for path in paths:
        data["sets"].update(json.loads(Path(path).read_text())["sets"])
    lines = ["| candidates | budget | solver bits | solver KL | uniform below | its KL | random KL (mean of 3) | random bits |",
             "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |"]
    notes = []
    for cand, d in data["sets"].items():
        s = d["summary"]
        for b, r in s.items():
            if b in ("spearman", "all_bits_exact"):
                continue
            lines.append(f"| {cand} | {float(b):g} | {r['solver_bits']['mean']:.3f} | **{fmt(r['solver_kl'])}** | "
                         f"{r['uniform_below'] or '-'} | {fmt(r['uniform_below_kl'])} | {fmt(r['random_mean_kl'])} | "
                         f"{r['random_mean_bits']['mean']:.3f} |")
        n = [len(x["budgets"]) + len(x["extra"]) for x in d["seeds"]]
        notes.append(f"- {cand}: Spearman(predicted, measured KL) over {n[0]} frontier points per seed: "
                     f"{fmt(s['spearman'])}; bits exact in every run: {s['all_bits_exact']}; "
                     f"seeds {[x['seed'] for x in d['seeds']]}")
    print("\n".join(lines + [""] + notes))


if __name__ == "__main__":
    main()
