"""MX scale rules x PTQ methods: the README's scale-rule table, with the spread over calibration seeds.

Cells (``--grid rules``, the default): configs (MXFP4 W4A4, MXFP4 W4A8 with MXFP8-E4M3 activations,
MXINT4 W4A8 with MXINT8 activations) x scale rules (floor ceil even rceil mse) x methods (RTN, GPTQ
microblock, GPTQ static, rotate+GPTQ, AWQ+GPTQ); block 32. ``--grid study``: the study's grid at
A-MXINT8 (W-MXINT4 block 32 and 128, per-channel INT4) x (RTN, GPTQ, AWQ, AWQ+GPTQ), rule floor.
Perplexity on the first --eval-tokens tokens of the --dataset eval text (windows of --seq-len),
calibration --calib-samples x --seq-len tokens of the same dataset's train split drawn with each
seed. RTN uses no calibration, so it runs once. ``--device cuda`` keeps the model on the GPU.

    OMP_NUM_THREADS=1 python benchmarks/scale_rules_table.py --out benchmarks/results/scale_rules_embedded.json
    python benchmarks/scale_rules_table.py --markdown benchmarks/results/scale_rules_embedded.json
    # another model (a HF directory or a GGUF file, as mxlab.load_model takes it):
    python benchmarks/scale_rules_table.py --model path/to/SmolLM2-135M-Instruct.Q4_1.gguf --dataset wikitext2 \
        --device cuda --out ...
    python benchmarks/scale_rules_table.py --grid study --model ... --dataset wikitext2 --rules floor --out ...
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

from mxlab.checkpoint import packed_bits_per_weight  # noqa: E402
from mxlab.data import calibration_batches, evaluation_tokens  # noqa: E402
from mxlab.evaluate import perplexity  # noqa: E402
from mxlab.formats import SCALE_RULES  # noqa: E402
from mxlab.models import load_model  # noqa: E402
from mxlab.ptq.pipeline import quantize_model  # noqa: E402
from mxlab.recipe import Recipe  # noqa: E402

# config name -> (weights, acts, block size)
CONFIGS = {"MXFP4 W4A4": ("mxfp4_e2m1", "mxfp4_e2m1", 32), "MXFP4 W4A8": ("mxfp4_e2m1", "mxfp8_e4m3", 32),
           "MXINT4 W4A8": ("mxint4", "mxint8", 32)}
AWQ = {"name": "awq", "n_grid": 10, "clip_grid": 10}
METHODS = {"RTN": ["rtn"], "GPTQ": [{"name": "gptq", "mx_update": "microblock"}],
           "GPTQ static": [{"name": "gptq", "mx_update": "static"}],
           "rotate+GPTQ": ["rotate", {"name": "gptq", "mx_update": "microblock"}],
           "AWQ+GPTQ": [AWQ, {"name": "gptq", "mx_update": "microblock"}]}
# the study's grid (Sharify et al.: RTN, GPTQ, AWQ, AWQ+GPTQ) at A-MXINT8; INT4 is per-channel (no block)
STUDY_CONFIGS = {"W-MXINT4/32": ("mxint4", "mxint8", 32), "W-MXINT4/128": ("mxint4", "mxint8", 128),
                 "W-INT4 (per-channel)": ("int4", "mxint8", 32)}
STUDY_METHODS = {"RTN": ["rtn"], "GPTQ": ["gptq"], "AWQ": [AWQ], "AWQ+GPTQ": [AWQ, "gptq"]}
GRIDS = {"rules": (CONFIGS, METHODS), "study": (STUDY_CONFIGS, STUDY_METHODS)}


def run(args) -> None:
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    configs, methods = GRIDS[args.grid]
    model, tok = load_model(args.model)
    model.to(args.device)  # cuda: the model, its copies and the evaluation stay on the GPU
    ev = evaluation_tokens(tok, args.dataset)[: args.eval_tokens]
    fp = perplexity(model, ev, seq_len=args.seq_len)
    print(f"FP perplexity {fp:.4f} on {ev.numel()} tokens", file=sys.stderr, flush=True)
    done = json.loads(args.out.read_text())["cells"] if args.out and args.out.exists() and args.resume else []
    have = {(c["config"], c["rule"], c["method"], c["seed"]) for c in done}
    cells = list(done)
    seeds = [int(s) for s in args.seeds.split(",")]
    for config in (args.configs.split(",") if args.configs else configs):
        weights, acts, block = configs[config]
        for method in (args.methods.split(",") if args.methods else methods):
            for rule in args.rules.split(","):
                for seed in (seeds[:1] if method == "RTN" else seeds):
                    if (config, rule, method, seed) in have:
                        continue
                    calib = calibration_batches(tok, args.dataset, args.calib_samples, args.seq_len, seed=seed)
                    recipe = Recipe(weights=weights, acts=acts, block_size=block, scale_rule=rule, seed=seed,
                                    steps=copy.deepcopy(methods[method]))
                    t0 = time.perf_counter()
                    result = quantize_model(copy.deepcopy(model), tok, recipe, calib_tokens=calib,
                                            diagnostic_tokens=1024, device=args.device)
                    ppl = perplexity(result.model, ev, seq_len=args.seq_len)
                    cells.append(dict(config=config, rule=rule, method=method, seed=seed, ppl=ppl,
                                      bits=packed_bits_per_weight(result.model), seconds=time.perf_counter() - t0))
                    print(f"{config:12s} {method:12s} {rule:6s} seed {seed} ppl {ppl:.4f} "
                          f"({cells[-1]['seconds']:.0f}s)", file=sys.stderr, flush=True)
                    if args.out:
                        args.out.parent.mkdir(parents=True, exist_ok=True)
                        args.out.write_text(json.dumps(dict(
                            model=args.model or "embedded stories260K", grid=args.grid, dataset=args.dataset,
                            ppl_fp=fp, eval_tokens=int(ev.numel()), seq_len=args.seq_len,
                            calib_samples=args.calib_samples, seeds=seeds, torch=torch.__version__,
                            device=str(args.device), cells=cells), indent=1))


def _cell(values: list[float], spread: bool) -> tuple[float, str]:
    m = statistics.mean(values)
    if not spread:
        return m, f"{m:.3f}"
    return m, f"{m:.3f} ± {statistics.stdev(values):.3f} (n={len(values)})" if len(values) > 1 else f"{m:.3f} (n=1)"


def unique_cells(paths: list[Path]) -> list[dict]:
    """The cells of several results files, each (config, method, rule, seed) once: where two files measured
    the same cell (a GPU shard and a CPU re-run), the first file given wins, so no seed counts twice."""
    seen: dict[tuple, dict] = {}
    for p in paths:
        for c in json.loads(p.read_text())["cells"]:
            seen.setdefault((c["config"], c["method"], c.get("rule"), c["seed"]), c)
    return list(seen.values())


def study_markdown(paths: list[Path]) -> str:
    """The study grid's table: configs as rows, methods as columns (mean ± std over seeds; RTN has one)."""
    data = json.loads(paths[0].read_text())
    cells = unique_cells(paths)
    methods = [m for m in STUDY_METHODS if any(c["method"] == m for c in cells)]
    seeds = sorted({c["seed"] for c in cells})
    lines = [f"FP perplexity {data['ppl_fp']:.3f} ({Path(data['model']).name}, {data['eval_tokens']} {data['dataset']} eval tokens "
             f"in windows of {data['seq_len']}, calibration {data['calib_samples']} x {data['seq_len']} tokens, "
             f"calibration seeds {seeds}, A-MXINT8, scale rule floor; best per row in bold).", "",
             "| weights | bits | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for config in [c for c in STUDY_CONFIGS if any(x["config"] == c for x in cells)]:
        stats = {m: _cell(v, m != "RTN") for m in methods
                 if (v := [c["ppl"] for c in cells if (c["config"], c["method"]) == (config, m)])}
        best = min(m for m, _ in stats.values())
        row = [("–" if m not in stats else f"**{stats[m][1]}**" if stats[m][0] == best else stats[m][1]) for m in methods]
        bits = next((c["bits"] for c in cells if c["config"] == config and "bits" in c), float("nan"))
        lines.append(f"| {config} | {bits:.3f} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def markdown(paths: list[Path]) -> str:
    """The table: mean perplexity (± std over seeds; RTN has one) per config x method x rule, from one or
    more results files of the same model and budget (e.g. configs run in parallel)."""
    data = json.loads(paths[0].read_text())
    cells = unique_cells(paths)
    rules = [r for r in SCALE_RULES if any(c["rule"] == r for c in cells)]
    seeds = sorted({c["seed"] for c in cells})
    dataset = {"tinystories": "TinyStories", "wikitext2": "WikiText-2"}.get(data.get("dataset", "tinystories"),
                                                                          data.get("dataset"))
    lines = [f"FP perplexity {data['ppl_fp']:.3f} ({Path(data['model']).name}, {data['eval_tokens']} {dataset} eval tokens, "
             f"calibration {data['calib_samples']} x {data['seq_len']} tokens, calibration seeds {seeds}; "
             f"n = seeds behind each cell).", ""]
    for config in dict.fromkeys(c["config"] for c in cells):
        lines += [f"**{config}** (perplexity, mean ± std over seeds; best per row in bold)", "",
                  "| method | " + " | ".join(rules) + " |", "|---|" + "---|" * len(rules)]
        for method in [m for m in METHODS if any((c["config"], c["method"]) == (config, m) for c in cells)]:
            stats = {}
            for r in rules:
                v = [c["ppl"] for c in cells if (c["config"], c["method"], c["rule"]) == (config, method, r)]
                if v:
                    stats[r] = (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v))
            best = min(m for m, _, _ in stats.values())
            row = []
            for r in rules:
                if r not in stats:
                    row.append("–")
                    continue
                m, s, n = stats[r]
                txt = f"{m:.3f}" + ("" if method == "RTN" else f" ± {s:.3f} (n={n})" if n > 1 else " (n=1)")
                row.append(f"**{txt}**" if m == best else txt)
            lines.append(f"| {method} | " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model source for mxlab.load_model (default: the embedded model)")
    ap.add_argument("--grid", choices=list(GRIDS), default="rules", help="which configs x methods (see above)")
    ap.add_argument("--dataset", default="tinystories", help="calibration and evaluation text (e.g. wikitext2)")
    ap.add_argument("--configs", default=None, help="comma-separated subset of the grid's configs (default: all)")
    ap.add_argument("--methods", default=None, help="comma-separated subset of the grid's methods (default: all)")
    ap.add_argument("--rules", default=",".join(SCALE_RULES))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--calib-samples", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--eval-tokens", type=int, default=16384)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the model runs")
    ap.add_argument("--resume", action="store_true", help="keep the cells already in --out")
    ap.add_argument("--out", type=Path, default=None, help="JSON with every cell (written after each one)")
    ap.add_argument("--markdown", type=Path, nargs="+", default=None,
                    help="print the table of results JSON file(s) and exit")
    args = ap.parse_args()
    if args.markdown:
        grid = json.loads(args.markdown[0].read_text()).get("grid", "rules")
        print(study_markdown(args.markdown) if grid == "study" else markdown(args.markdown))
        return
    run(args)


if __name__ == "__main__":
    main()
