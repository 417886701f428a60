"""Mixed formats under a bit budget, checked against measurement (issue 16).

For each candidate set and probe/calibration seed: probe every decoder Linear in every candidate
(RTN weights, KL on calibration windows), solve for the frontier, then quantize and measure
KL(FP || quantized) on the held-out evaluation text for
  - the solver's point at each budget,
  - the uniform format nearest below the budget,
  - 3 random assignments filling the same budget,
  - a few more frontier points (for the rank correlation of predicted vs measured KL).
Every measured run's bits per weight comes from the packed weights and must equal the frontier's.

    python benchmarks/mix_frontier.py                                   # embedded stories260K
    python benchmarks/mix_frontier.py --model path/SmolLM2-135M-Instruct.Q4_1.gguf --eval wikitext2 \
        --calib wikitext2 --seeds 0 --budgets 5,6 --out benchmarks/results/mix_frontier_smollm2.json
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mxlab.checkpoint import packed_bits_per_weight  # noqa: E402
from mxlab.data import calibration_batches, evaluation_tokens  # noqa: E402
from mxlab.evaluate import evaluate_model  # noqa: E402
from mxlab.jsonable import to_jsonable  # noqa: E402
from mxlab.mix import build_frontier, format_sensitivity, mixed_recipe  # noqa: E402
from mxlab.ptq.pipeline import quantize_model  # noqa: E402
from mxlab.recipe import Recipe  # noqa: E402

log = logging.getLogger("mix_frontier")


def load(source: str | None):
    """The embedded model, a local HF dir, or a GGUF file (transformers dequantizes it)."""
    if source and source.endswith(".gguf"):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        p = Path(source)
        tok = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
        model = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=torch.float32).eval()
        return model, tok
    from mxlab.models import load_model

    return load_model(source)


def _probe_log(cand: str, seed: int):
    """A progress callback that logs the probe every 10% (it is the longest part on a 30-block model)."""
    last = [-1]

    def progress(fraction: float, message: str) -> None:
        if int(fraction * 10) > last[0]:
            last[0] = int(fraction * 10)
            log.info("%s seed %d probe %3.0f%% (%s)", cand, seed, 100 * fraction, message)
    return progress


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman rank correlation (no ties expected: continuous KL values)."""
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sets", default="mxint4,mxint8;mxfp4,mxfp6_e2m3,mxfp8_e4m3")
    ap.add_argument("--budgets", default="5,6,7,8")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--random", type=int, default=3)
    ap.add_argument("--extra-points", type=int, default=4)
    ap.add_argument("--acts", default="mxint8")
    ap.add_argument("--calib", default="tinystories")
    ap.add_argument("--eval", default="tinystories")
    ap.add_argument("--calib-samples", type=int, default=32)
    ap.add_argument("--calib-seq-len", type=int, default=256)
    ap.add_argument("--probe-windows", type=int, default=8)
    ap.add_argument("--probe-seq-len", type=int, default=256)
    ap.add_argument("--eval-windows", type=int, default=32)
    ap.add_argument("--eval-seq-len", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/mix_frontier.json")
    ap.add_argument("--html-dir", help="write each set's seed-0 frontier (with measured points) as HTML here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("mxlab", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    model, tok = load(args.model)
    model.to(args.device)
    eval_tokens = evaluation_tokens(tok, args.eval)
    budgets = [float(b) for b in args.budgets.split(",")]
    out = dict(settings=vars(args), sets={})
    t_start = time.time()
    for cand in args.sets.split(";"):
        formats = cand.split(",")
        per_seed = []
        for seed in [int(s) for s in args.seeds.split(",")]:
            base = Recipe(weights=formats[0], acts=args.acts, calib=dict(dataset=args.calib, n_samples=args.calib_samples,
                                                                        seq_len=args.calib_seq_len), seed=seed)
            calib = calibration_batches(tok, args.calib, args.calib_samples, args.calib_seq_len, seed)
            windows = calibration_batches(tok, args.calib, args.probe_windows, args.probe_seq_len, seed + 1)
            t0 = time.time()
            sens = format_sensitivity(model, base, formats, windows, progress=_probe_log(cand, seed))
            fr = build_frontier(sens, base)
            formats = sens.formats          # canonical names (mxfp4 -> mxfp4_e2m1)
            t_probe = time.time() - t0

            def measure(label: str, assign: dict, kind: str) -> dict:
                rec = mixed_recipe(base, assign)
                q = quantize_model(copy.deepcopy(model), tok, rec, calib_tokens=calib, device=args.device)
                ev = evaluate_model(q.model, tok, eval_tokens, reference=model, seq_len=args.eval_seq_len,
                                    max_windows=args.eval_windows)
                bpw = packed_bits_per_weight(q.model)
                row = fr.add_measured(label, assign, dict(kl=ev["kl"], ppl_quant=ev["ppl"], bits_per_weight=bpw), kind)
                row["bits_exact"] = math.isclose(bpw, row["bits_per_weight"], rel_tol=0, abs_tol=1e-12)
                log.info("%s seed %d %-22s %.4f bits (exact %s) predicted %.4g measured %.4g", cand, seed, label,
                         row["bits_per_weight"], row["bits_exact"], row["predicted_kl"], row["kl"])
                return row

            uniform = {f: measure(f"uniform {f}", fr.uniform(f), "uniform") for f in formats}
            rows = {}
            for b in budgets:
                p = fr.at_budget(b)
                below = [f for f in formats if uniform[f]["bits_per_weight"] <= b]
                nearest = max(below, key=lambda f: uniform[f]["bits_per_weight"]) if below else None
                rand = [measure(f"random {b:g} #{k}", fr.random_assignment(math.floor(b * fr.n_weights), 1000 * seed + 10 * k + int(b)),
                                "random") for k in range(args.random)]
                rows[str(b)] = dict(solver=measure(f"solver {b:g}", fr.assignment(p), "solver"),
                                    uniform_below=nearest, uniform_below_kl=uniform[nearest]["kl"] if nearest else None,
                                    random=rand, random_mean_kl=statistics.mean(r["kl"] for r in rand),
                                    random_mean_bits=statistics.mean(r["bits_per_weight"] for r in rand))
            # more frontier points, evenly spaced in bits, for the rank correlation
            idx = np.linspace(0, len(fr.points) - 1, args.extra_points + 2).round().astype(int)[1:-1]
            extra = [measure(f"frontier #{i}", fr.assignment(fr.points[i]), "solver") for i in sorted(set(idx))]
            solver_rows = [r["solver"] for r in rows.values()] + extra
            rho = spearman([r["predicted_kl"] for r in solver_rows], [r["kl"] for r in solver_rows])
            log.info("%s seed %d: spearman(predicted, measured) over %d frontier points = %.3f", cand, seed,
                     len(solver_rows), rho)
            per_seed.append(dict(seed=seed, probe_seconds=t_probe, n_points=len(fr.points), n_weights=fr.n_weights,
                                 offset=sens.offset, uniform=uniform, budgets=rows, extra=extra, spearman=rho,
                                 all_bits_exact=all(r["bits_exact"] for r in fr.measured)))
            if args.html_dir and seed == per_seed[0]["seed"]:
                from mxlab.mix.figures import frontier_chart

                Path(args.html_dir).mkdir(parents=True, exist_ok=True)
                frontier_chart(fr.to_dict()).update_layout(title=f"{args.model or 'stories260K'}: {cand}").write_html(
                    str(Path(args.html_dir) / f"mix_frontier_{cand.replace(',', '_')}.html"), include_plotlyjs=True)
            # written after every seed, so a run cut short keeps the seeds it finished
            out["sets"][cand] = dict(seeds=per_seed, summary=summarize(per_seed, budgets))
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(to_jsonable(out), indent=1))
    out["seconds"] = time.time() - t_start
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(to_jsonable(out), indent=1))
    print(json.dumps(to_jsonable({k: v["summary"] for k, v in out["sets"].items()}), indent=1))


def summarize(per_seed: list[dict], budgets: list[float]) -> dict:
    """Mean and spread over seeds per budget; wins of the solver against both baselines."""
    def ms(xs):
        xs = [x for x in xs if x is not None]
        return dict(mean=statistics.mean(xs), std=statistics.stdev(xs) if len(xs) > 1 else 0.0) if xs else None

    summ = {}
    for b in budgets:
        rs = [s["budgets"][str(b)] for s in per_seed]
        summ[str(b)] = dict(
            solver_bits=ms([r["solver"]["bits_per_weight"] for r in rs]), solver_kl=ms([r["solver"]["kl"] for r in rs]),
            uniform_below=rs[0]["uniform_below"], uniform_below_kl=ms([r["uniform_below_kl"] for r in rs]),
            random_mean_kl=ms([r["random_mean_kl"] for r in rs]), random_mean_bits=ms([r["random_mean_bits"] for r in rs]),
            solver_beats_uniform=sum(r["uniform_below_kl"] is not None and r["solver"]["kl"] < r["uniform_below_kl"] for r in rs),
            solver_beats_random=sum(r["solver"]["kl"] < r["random_mean_kl"] for r in rs), n_seeds=len(rs))
    summ["spearman"] = ms([s["spearman"] for s in per_seed])
    summ["all_bits_exact"] = all(s["all_bits_exact"] for s in per_seed)
    return summ


if __name__ == "__main__":
    main()
