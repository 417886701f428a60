"""The whole CLI job on a Llama-3.1-8B-shaped random model: FP evaluation, AWQ+GPTQ (W-MXINT4 /
A-MXINT8, 128 x 2048 calibration tokens), quantized evaluation, statistics, report, export.

    python benchmarks/bench_cli_8b.py --layers 32 --out /tmp/bench8b             # on the GPU machine
    python benchmarks/bench_cli_8b.py --layers 32 --offload always               # stream blocks (big models)
    python benchmarks/bench_cli_8b.py --tiny --device cpu                        # smoke test of the script

Builds the random bf16 model (``bench_pipeline.build_model``), saves it as a safetensors model
directory with the embedded model's 512-token tokenizer (ids < 512 are valid in the 128256 vocab),
then runs ``python -m mxlab run`` on it in a child process. Prints wall time per phase (from the
run's own ``phase ...`` log lines), peak GPU memory (nvidia-smi polled every 0.2 s: the child's
whole footprint, allocator cache included), peak CPU memory (the child's max RSS), and the sizes of
report.html, results.json, the CSVs and model/. Random weights: the perplexities mean nothing.
"""
from __future__ import annotations

import argparse
import json
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_pipeline import LLAMA31_8B, TINY, build_model  # noqa: E402


def _gpu_peak(stop: threading.Event, peak: list[int]) -> None:
    """Poll nvidia-smi's memory.used (MiB, all processes on GPU 0) until ``stop`` is set."""
    while not stop.is_set():
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                                  "-i", "0"], capture_output=True, text=True, timeout=5).stdout
            peak[0] = max(peak[0], int(out.strip().splitlines()[0]))
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            pass
        stop.wait(0.2)


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--tiny", action="store_true", help="a 2-layer, 128-wide model (smoke test)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--offload", choices=("auto", "always", "never"), default="auto")
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--eval-windows", type=int, default=40, help="evaluation windows of --seq-len tokens")
    ap.add_argument("--out", default="/tmp/bench_cli_8b")
    ap.add_argument("--fast", action="store_true",
                    help="the speed options of issue 17 (awq grid_batch 4; gptq batch_linears, bf16 Hessians, "
                         "fused) through a --recipe file instead of the default steps")
    args = ap.parse_args(argv)

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    model_dir, run_dir = out / "model_src", out / "run"
    t0 = time.perf_counter()
    shape = TINY if args.tiny else LLAMA31_8B
    init = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(shape, args.layers, torch.bfloat16, init)
    model.config.max_position_embeddings = max(args.seq_len, 4096)
    model.save_pretrained(model_dir, safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(REPO / "assets" / "stories260K" / f, model_dir / f)
    del model
    print(f"built and saved the model in {time.perf_counter() - t0:.1f} s ({_size(model_dir) / 1e9:.2f} GB)")

    if args.fast:
        recipe = out / "fast_recipe.json"
        from bench_h200 import FAST_AWQ, FAST_GPTQ   # the speed options, one definition
        recipe.write_text(json.dumps({"weights": "mxint4", "acts": "mxint8", "block_size": 32,
                                      "steps": [FAST_AWQ, FAST_GPTQ]}))
        how = ["--recipe", str(recipe)]
    else:
        how = ["--weights", "mxint4", "--acts", "mxint8", "--block-size", "32", "--steps", "awq,gptq"]
    cmd = [sys.executable, "-m", "mxlab", "run", "--model", str(model_dir), "--device", args.device,
           "--offload", args.offload, *how, "--calib", "wikitext2", "--calib-samples", str(args.samples),
           "--calib-seq-len", str(args.seq_len), "--eval", "wikitext2", "--eval-seq-len", str(args.seq_len),
           "--max-eval-windows", str(args.eval_windows), "--out", str(run_dir)]
    print(" ".join(cmd), flush=True)
    stop, peak = threading.Event(), [0]
    poll = threading.Thread(target=_gpu_peak, args=(stop, peak), daemon=True)
    poll.start()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    stop.set()
    poll.join()
    phases = dict(re.findall(r"phase (\w+): ([\d.]+) s", proc.stderr))
    if proc.returncode != 0:
        print(proc.stderr[-4000:])
        raise SystemExit(f"mxlab run failed with exit code {proc.returncode}")
    metrics = json.loads(proc.stdout)
    results = json.loads((run_dir / "results.json").read_text())
    print(f"\nwhole CLI job: {wall:.1f} s wall ({args.layers} layers, {args.samples} x {args.seq_len} calibration "
          f"tokens, {args.eval_windows} evaluation windows, streamed blocks: {results['run'].get('streamed_blocks')})")
    for phase, seconds in phases.items():
        print(f"  {phase:<11} {float(seconds):8.1f} s")
    print(f"  (python start, imports and the rest: {wall - sum(map(float, phases.values())):.1f} s)")
    print(f"peak GPU memory (nvidia-smi, whole process): {peak[0] / 1024:.2f} GiB")
    print(f"peak CPU memory (max RSS of the mxlab process): {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20:.2f} GiB")
    for name in ("report.html", "results.json", "activation_channels.csv", "weight_channels.csv", "records.csv",
                 "model"):
        path = run_dir / name
        if path.exists():
            print(f"  {name:<24} {_size(path) / 1e6:10.2f} MB")
    print(f"metrics: ppl_fp {metrics['ppl_fp']:.4g}, ppl_quant {metrics['ppl_quant']:.4g} (random weights)")


if __name__ == "__main__":
    main()
