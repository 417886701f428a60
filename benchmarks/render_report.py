"""Open a report.html in Debian's headless Chromium, offline, and say whether every figure rendered.

    python benchmarks/render_report.py RUN/report.html [--screenshot out.png] [--json out.json]

Counts the Plotly figures (``<div id="figN">`` in the file) and waits until each has drawn its SVG and at
least one trace; prints the time to the last figure, page errors and any request that would leave the
machine (refused). Exit code 1 when a figure did not render or the page raised an error.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]


def render(path: Path, screenshot: Path | None = None, timeout_s: float = 60) -> dict:
    from playwright.sync_api import sync_playwright

    n_figures = len(re.findall(r'<div id="fig\d+"', path.read_text(errors="replace")))
    blocked, errors = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(("file:", "data:"))
                       else (blocked.append(route.request.url), route.abort()))
            page.on("pageerror", lambda e: errors.append(str(e)))
            t0 = time.perf_counter()
            page.goto(path.resolve().as_uri())
            page.wait_for_function(
                f"Array.from(document.querySelectorAll('.js-plotly-plot')).filter("
                f"d => d.querySelector('.main-svg') && d.querySelectorAll('.trace, .hm, image').length).length"
                f" >= {n_figures}", timeout=timeout_s * 1000)
            seconds = time.perf_counter() - t0
            traces = page.evaluate("Array.from(document.querySelectorAll('.js-plotly-plot'))"
                                   ".map(d => d.querySelectorAll('.trace, .hm, image').length)")
            if screenshot:
                page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return {"report": str(path), "bytes": path.stat().st_size, "figures": n_figures, "rendered": len(traces),
            "traces_per_figure": traces, "seconds_to_last_figure": round(seconds, 2), "page_errors": errors,
            "blocked_requests": blocked}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path)
    ap.add_argument("--screenshot", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    out = render(args.report, args.screenshot)
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    ok = out["rendered"] == out["figures"] and all(out["traces_per_figure"]) and not out["page_errors"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
