"""Everything issue 17 asks to measure on the H200, in one run: the MX kernel against a device copy (and
torchao's to_mx; ``kernel_alu.py``'s sections, run in this process), Hessian precisions, GPTQ per 8B-shaped layer (torch loop, fused Triton kernel, stacked
linears), and the AWQ+GPTQ W-MXINT4/A-MXINT8 pipeline on a Llama-3.1-8B-shaped model.

    python3 benchmarks/bench_h200.py                     # the H200 run (< 9 min); writes $OUT or benchmarks/results
    python benchmarks/bench_h200.py --quick              # CPU smoke test of the script (tiny shapes)
    TRITON_INTERPRET=1 python benchmarks/bench_h200.py --quick    # ... with the Triton kernels interpreted

Writes ``bench_h200.json`` (every number) after each section, so a run cut short keeps what it measured,
and ``bench_h200.md`` (BENCHMARKS.md-ready tables). The pipeline runs until ``--budget`` seconds since the
start are used, then stops at a block boundary and extrapolates to 32 layers from the blocks it measured
(the markdown says which). Random weights: the numbers say nothing about accuracy, only time and memory.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_pipeline import LLAMA31_8B, TINY, build_model  # noqa: E402
from h200_sections import gptq_section, hessian_section, kernel_section, torchao_section  # noqa: E402
from mxlab.errors import Cancelled  # noqa: E402
from mxlab.ptq.pipeline import quantize_model  # noqa: E402
from mxlab.recipe import Recipe  # noqa: E402

log = logging.getLogger("bench_h200")

FAST_AWQ = {"name": "awq", "grid_batch": 4}
FAST_GPTQ = {"name": "gptq", "batch_linears": True, "hessian_dtype": "bf16", "fused": True}


def pipeline_run(model_layers, tokens, steps, dev, deadline: float, label: str, full_layers: int = 32) -> dict:
    """quantize_model on a fresh random 8B-shaped model until ``deadline``; per-block times, phases, peak."""
    model = build_model(model_layers[0], model_layers[1], torch.bfloat16, dev)
    recipe = Recipe(weights="mxint4", acts="mxint8", block_size=32, steps=steps)
    done: list[float] = []
    t_start = time.perf_counter()

    def progress(fraction: float, message: str) -> None:
        if re.fullmatch(r"block \d+/\d+ done", message):
            done.append(time.perf_counter())
            log.info("%s: %s (%.1f s)", label, message, done[-1] - (done[-2] if len(done) > 1 else t_start))
            if time.perf_counter() > deadline and len(done) < model_layers[1]:
                raise Cancelled("time budget used")

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    result, complete = None, True
    try:
        result = quantize_model(model, None, recipe, progress=progress, device=dev, calib_tokens=tokens)
    except Cancelled:
        complete = False
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    total = time.perf_counter() - t_start
    per_block = [b - a for a, b in zip([t_start] + done[:-1], done)]
    rest = per_block[1:] or per_block
    steady = sum(rest) / len(rest)
    peak = torch.cuda.max_memory_allocated(dev) / 2 ** 30 if dev.type == "cuda" else float("nan")
    if result is not None and result.peak_memory:
        peak = max(peak, max(result.peak_memory.values()) / 2 ** 30)
    out = {"label": label, "steps": steps, "layers_built": model_layers[1], "layers_done": len(done),
           "complete": complete, "total_s": total, "first_block_s": per_block[0], "steady_block_s": steady,
           "extrapolated_s": per_block[0] + steady * (full_layers - 1), "peak_GiB": peak,
           "phases_s": dict(result.timings) if result else {},
           "phase_peak_GiB": {k: v / 2 ** 30 for k, v in result.peak_memory.items()} if result else {}}
    del model, result
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return out


def pipeline_table(runs: list[dict]) -> list[str]:
    """Markdown of the pipeline runs so far."""
    md = ["### Pipeline: AWQ + GPTQ, W-MXINT4 / A-MXINT8, Llama-3.1-8B shape, 128 x 2048 tokens", "",
          "| run | layers measured | total | first block | other blocks (mean) | 32 layers | peak GPU memory |",
          "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in runs:
        if "error" in r:
            md.append(f"| {r['label']} | FAILED: {r['error'][:200]} | | | | | |")
            continue
        whole = r["complete"] and r["layers_done"] == 32
        measured = "all 32, measured" if whole else f"{r['layers_done']} of {r['layers_built']} (extrapolated)"
        full = r["total_s"] if whole else r["extrapolated_s"]
        md.append(f"| {r['label']} | {measured} | {r['total_s']:.1f} s | {r['first_block_s']:.1f} s | "
                  f"{r['steady_block_s']:.2f} s | {full:.0f} s = {full / 60:.2f} min | {r['peak_GiB']:.2f} GiB |")
    md += ["", "Phases per block (seconds, summed over blocks / layers done):", ""]
    for r in runs:
        if r.get("phases_s"):
            n = max(1, r["layers_done"])
            md.append(f"- {r['label']}: " + ", ".join(f"{k} {v / n:.2f}" for k, v in
                                                       sorted(r["phases_s"].items(), key=lambda kv: -kv[1])))
    peaks = [r for r in runs if r.get("phase_peak_GiB")]
    if peaks:
        md += ["", "Peak GPU memory by phase (GiB):", ""]
        for r in peaks:
            md.append(f"- {r['label']}: " + ", ".join(f"{k} {v:.2f}" for k, v in
                                                       sorted(r["phase_peak_GiB"].items(), key=lambda kv: -kv[1])))
    return md


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny shapes on the CPU: a smoke test of this script")
    ap.add_argument("--budget", type=float, default=500.0, help="seconds for the whole run (pipelines stop early)")
    ap.add_argument("--skip", default="", help="comma list of sections to skip: kernel,hessian,gptq,pipeline")
    ap.add_argument("--column-layers", type=int, default=4, help="layers of the GPTQ column-rule pipeline run")
    ap.add_argument("--static-layers", type=int, default=0, help="layers of the GPTQ static-scale pipeline run (0: none)")
    ap.add_argument("--no-defaults-run", action="store_true", help="skip the pipeline run with the former defaults")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out_dir = Path(os.environ.get("OUT") or HERE / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=HERE, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown (no git)"
    res: dict = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                 "date": datetime.date.today().isoformat(), "torch": torch.__version__, "commit": commit,
                 "command": "python3 benchmarks/bench_h200.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    try:
        import triton
        res["triton"] = triton.__version__
    except ImportError:
        res["triton"] = None
    md = [f"Device: {res['device']}, torch {res['torch']}, triton {res['triton']}, date {res['date']}, "
          f"commit {commit}.", "", f"    {res['command']}", ""]
    skip = set(args.skip.split(","))

    def save() -> None:
        (out_dir / "bench_h200.json").write_text(json.dumps(res, indent=1, default=str))
        (out_dir / "bench_h200.md").write_text("\n".join(md) + "\n")

    deadline = t0 + args.budget
    shape = TINY if args.quick else LLAMA31_8B
    samples, seq = (4, 128) if args.quick else (128, 2048)
    tokens = torch.randint(0, shape["vocab_size"], (samples, seq), generator=torch.Generator().manual_seed(0))
    res["pipeline"] = []
    pipe_md: list[str] = []

    def pipeline(label: str, steps: list, layers: int, room: float) -> list[str]:
        """One pipeline run, stopped ``room`` seconds before the budget ends; refreshes the pipeline table."""
        try:
            r = pipeline_run((shape, 2 if args.quick else layers), tokens, steps, dev, deadline - room, label)
        except Exception as exc:  # noqa: BLE001
            log.exception("pipeline %s failed", label)
            r = {"label": label, "error": f"{type(exc).__name__}: {exc}"}
        res["pipeline"].append(r)
        pipe_md[:] = pipeline_table(res["pipeline"])
        return []

    can_kernel = dev.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"
    # in priority order: the whole-model run first (all 32 layers measured), then the sections, then the rest
    tasks = [("pipeline", None, lambda: pipeline("fast, gptq microblock", [FAST_AWQ, FAST_GPTQ], 32, 200), True),
             ("kernel", "MX fake-quant kernel", lambda: kernel_section(dev, args.quick, res.setdefault("kernel", {})),
              can_kernel),
             ("hessian", "Hessian H = 2 X^T X / n", lambda: hessian_section(dev, args.quick, res.setdefault("hessian", {})),
              True),
             ("gptq", "GPTQ per Llama-3.1-8B-shaped decoder layer (Hessians given, not timed)",
              lambda: gptq_section(dev, args.quick, res.setdefault("gptq", {})), True),
             ("pipeline", None, lambda: pipeline("fast, gptq column (fused)",
                                                 [FAST_AWQ, {**FAST_GPTQ, "mx_update": "column"}],
                                                 args.column_layers, 40), args.column_layers > 0),
             ("pipeline", None, lambda: pipeline("fast, gptq static (fused)",
                                                 [FAST_AWQ, {**FAST_GPTQ, "mx_update": "static"}],
                                                 args.static_layers, 20), args.static_layers > 0),
             ("pipeline", None, lambda: pipeline("defaults (before)", ["awq", "gptq"], 2, 5), not args.no_defaults_run),
             ("torchao", "torchao to_mx (compiled), bf16 8192 x 8192, block 32", lambda: torchao_section(dev, args.quick, res),
              dev.type == "cuda")]
    sections_md: list[str] = []
    for key, title, fn, can in tasks:
        if key in skip or not can:
            continue
        if time.perf_counter() > deadline - 45:
            log.info("%s skipped: out of time", title or key)
            sections_md += [f"### {title or key}", "", "skipped: out of the time budget", ""]
            continue
        ts = time.perf_counter()
        try:
            lines = fn()
        except Exception as exc:  # noqa: BLE001 - keep the other sections' numbers
            log.exception("section %s failed", key)
            res.setdefault(key, {})["error"] = f"{type(exc).__name__}: {exc}"
            lines = [f"FAILED: {type(exc).__name__}: {exc}"]
        if title:
            res[key]["section_s"] = time.perf_counter() - ts
            sections_md += [f"### {title}", "", *lines, ""]
        md[4:] = ["", *pipe_md, "", *sections_md]
        save()
        log.info("%s: %.1f s", title or key, time.perf_counter() - ts)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    res["total_s"] = time.perf_counter() - t0
    md.append(f"\nWhole run: {res['total_s']:.0f} s.")
    save()
    print("\n".join(md))


if __name__ == "__main__":
    main()
