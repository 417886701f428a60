"""The Sweep tab in headless Chromium (Playwright): a sweep run from the CLI shows up in a fresh app, Check
and Start work on the prefilled example, the cells' table fills while it runs, and Open in Inspect switches
tab with the cell's run picked. Uses Debian's /usr/bin/chromium; never downloads a browser."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from app_server import ARGS, CHROMIUM, REPO, running_app

TINY = {"save_model": False, "with_kl": False, "eval": {"dataset": "tinystories", "max_windows": 1},
        "recipe": {"weights": "mxint4", "acts": "mxint8", "block_size": 32, "steps": ["rtn"],
                   "calib": {"dataset": "tinystories", "n_samples": 2, "seq_len": 32}}}

pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A workspace holding one 1 x 2 sweep run by the CLI ('cli-grid')."""
    root = tmp_path_factory.mktemp("ws")
    spec = root.parent / "cli-grid.yaml"
    spec.write_text(yaml.safe_dump({"name": "cli-grid", "base": TINY, "axes": {"recipe.weights": ["mxint4", "mxint8"]}}))
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "mxlab", "-q", "sweep", str(spec), "--workspace", str(root),
                           "--workers", "1"], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root


@pytest.fixture(scope="module")
def page(workspace):
    sync_api = pytest.importorskip("playwright.sync_api")
    with running_app(workspace) as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        pg = browser.new_page(viewport={"width": 1280, "height": 900})
        pg.set_default_timeout(60_000)
        pg.goto(url)
        pg.wait_for_function("document.querySelector('#status-model')?.innerText.includes('parameters')")
        yield pg
        browser.close()


def _wait_text(page, selector: str, text: str, timeout: int = 60_000) -> None:
    page.wait_for_function(f"document.querySelector({selector!r})?.innerText.includes({text!r})", timeout=timeout)


def test_cli_sweep_is_listed_and_a_cell_opens_in_inspect(page):
    page.get_by_role("tab", name="Sweep").click()
    assert page.locator("#sweep-pick input").input_value() == "cli-grid"
    _wait_text(page, "#sweep-status", "Sweep cli-grid: 2 done of 2.")
    assert "weights-mxint8" in page.locator("#sweep-jobs").inner_text()
    assert page.locator("#sweep-cell input").input_value() == "cli-grid/weights-mxint4"
    page.locator("#sweep-open").click()
    page.wait_for_function("document.querySelector('#inspect-run input')?.value.startsWith('cli-grid/weights-mxint4 ')")
    assert page.locator("#inspect-run").is_visible() and not page.locator("#sweep-open").is_visible()


def test_check_then_start_the_example(page):
    page.get_by_role("tab", name="Sweep").click()
    page.locator("#sweep-check").click()
    _wait_text(page, "#sweep-status", "sweep example-w4: 4 job(s)")
    assert page.locator("#sweep-cells").inner_text().count("to run") == 4
    page.locator("#sweep-start").click()
    _wait_text(page, "#sweep-status", "Running sweep example-w4")          # refreshed while the workers run
    _wait_text(page, "#sweep-status", "Done: sweep example-w4: 4 cell(s) run", timeout=240_000)
    jobs = page.locator("#sweep-jobs").inner_text()
    assert jobs.count("done") == 4 and "failed" not in jobs
    assert page.locator("#sweep-pick input").input_value() == "example-w4"
    assert "mxfp4_e2m1" in page.locator("#sweep-table").inner_text()
