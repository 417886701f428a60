"""MX scale rules x PTQ methods: the README's scale-rule table, with the spread over calibration seeds.

Cells: configs (MXFP4 W4A4, MXFP4 W4A8 with MXFP8-E4M3 activations, MXINT4 W4A8 with MXINT8
activations) x scale rules (floor ceil even rceil mse) x methods (RTN, GPTQ microblock, GPTQ
static, rotate+GPTQ, AWQ+GPTQ); block 32. Perplexity on the first --eval-tokens tokens of the
TinyStories eval text (windows of --seq-len), calibration --calib-samples x --seq-len TinyStories
tokens drawn with each seed. RTN uses no calibration, so it runs once.

    OMP_NUM_THREADS=1 python benchmarks/scale_rules_table.py --out benchmarks/results/scale_rules_embedded.json
    python benchmarks/scale_rules_table.py --markdown benchmarks/results/scale_rules_embedded.json
    # another model (a HF directory or a GGUF file, as mxlab.load_model takes it):
    python benchmarks/scale_rules_table.py --model path/to/SmolLM2-135M-Instruct.Q4_1.gguf --out ...
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from mxlab.data import calibration_batches, evaluation_tokens  # noqa: E402
from mxlab.evaluate import perplexity  # noqa: E402
from mxlab.formats import SCALE_RULES  # noqa: E402
from mxlab.models import load_model  # noqa: E402
from mxlab.ptq.pipeline import quantize_model  # noqa: E402
from mxlab.recipe import Recipe  # noqa: E402

CONFIGS = {"MXFP4 W4A4": ("mxfp4_e2m1", "mxfp4_e2m1"), "MXFP4 W4A8": ("mxfp4_e2m1", "mxfp8_e4m3"),
           "MXINT4 W4A8": ("mxint4", "mxint8")}
AWQ = {"name": "awq", "n_grid": 10, "clip_grid": 10}
METHODS = {"RTN": ["rtn"], "GPTQ": [{"name": "gptq", "mx_update": "microblock"}],
           "GPTQ static": [{"name": "gptq", "mx_update": "static"}],
           "rotate+GPTQ": ["rotate", {"name": "gptq", "mx_update": "microblock"}],
           "AWQ+GPTQ": [AWQ, {"name": "gptq", "mx_update": "microblock"}]}


def run(args) -> None:
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    model, tok = load_model(args.model)
    ev = evaluation_tokens(tok, "tinystories")[: args.eval_tokens]
    fp = perplexity(model, ev, seq_len=args.seq_len)
    print(f"FP perplexity {fp:.4f} on {ev.numel()} tokens", file=sys.stderr, flush=True)
    done = json.loads(args.out.read_text())["cells"] if args.out and args.out.exists() and args.resume else []
    have = {(c["config"], c["rule"], c["method"], c["seed"]) for c in done}
    cells = list(done)
    seeds = [int(s) for s in args.seeds.split(",")]
    for config in args.configs.split(","):
        weights, acts = CONFIGS[config]
        for method in args.methods.split(","):
            for rule in args.rules.split(","):
                for seed in (seeds[:1] if method == "RTN" else seeds):
                    if (config, rule, method, seed) in have:
                        continue
                    calib = calibration_batches(tok, "tinystories", args.calib_samples, args.seq_len, seed=seed)
                    recipe = Recipe(weights=weights, acts=acts, block_size=32, scale_rule=rule, seed=seed,
                                    steps=copy.deepcopy(METHODS[method]))
                    t0 = time.perf_counter()
                    result = quantize_model(copy.deepcopy(model), tok, recipe, calib_tokens=calib,
                                            diagnostic_tokens=1024, device=args.device)
                    ppl = perplexity(result.model, ev, seq_len=args.seq_len)
                    cells.append(dict(config=config, rule=rule, method=method, seed=seed, ppl=ppl,
                                      seconds=time.perf_counter() - t0))
                    print(f"{config:12s} {method:12s} {rule:6s} seed {seed} ppl {ppl:.4f} "
                          f"({cells[-1]['seconds']:.0f}s)", file=sys.stderr, flush=True)
                    if args.out:
                        args.out.parent.mkdir(parents=True, exist_ok=True)
                        args.out.write_text(json.dumps(dict(
                            model=args.model or "embedded stories260K", ppl_fp=fp, eval_tokens=int(ev.numel()),
                            seq_len=args.seq_len, calib_samples=args.calib_samples, seeds=seeds,
                            torch=torch.__version__, device="cpu", cells=cells), indent=1))


def markdown(paths: list[Path]) -> str:
    """The table: mean perplexity (± std over seeds; RTN has one) per config x method x rule, from one or
    more results files of the same model and budget (e.g. configs run in parallel)."""
    data = json.loads(paths[0].read_text())
    cells = [c for p in paths for c in json.loads(p.read_text())["cells"]]
    rules = [r for r in SCALE_RULES if any(c["rule"] == r for c in cells)]
    seeds = sorted({c["seed"] for c in cells})
    lines = [f"FP perplexity {data['ppl_fp']:.3f} ({data['model']}, {data['eval_tokens']} TinyStories eval tokens, "
             f"calibration {data['calib_samples']} x {data['seq_len']} tokens, calibration seeds {seeds}; "
             f"n = seeds behind each cell).", ""]
    for config in dict.fromkeys(c["config"] for c in cells):
        lines += [f"**{config}** (perplexity, mean ± std over seeds; best per row in bold)", "",
                  "| method | " + " | ".join(rules) + " |", "|---|" + "---|" * len(rules)]
        for method in dict.fromkeys(c["method"] for c in cells if c["config"] == config):
            stats = {}
            for r in rules:
                v = [c["ppl"] for c in cells if (c["config"], c["method"], c["rule"]) == (config, method, r)]
                if v:
                    stats[r] = (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v))
            best = min(m for m, _, _ in stats.values())
            row = []
            for r in rules:
                if r not in stats:
                    row.append("")
                    continue
                m, s, n = stats[r]
                txt = f"{m:.3f}" + (f" ± {s:.3f} (n={n})" if method != "RTN" else "")
                row.append(f"**{txt}**" if m == best else txt)
            lines.append(f"| {method} | " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model source for mxlab.load_model (default: the embedded model)")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--rules", default=",".join(SCALE_RULES))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--calib-samples", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--eval-tokens", type=int, default=16384)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="where blocks are quantized (cpu, cuda, auto)")
    ap.add_argument("--resume", action="store_true", help="keep the cells already in --out")
    ap.add_argument("--out", type=Path, default=None, help="JSON with every cell (written after each one)")
    ap.add_argument("--markdown", type=Path, nargs="+", default=None,
                    help="print the table of results JSON file(s) and exit")
    args = ap.parse_args()
    if args.markdown:
        print(markdown(args.markdown))
        return
    run(args)


if __name__ == "__main__":
    main()
