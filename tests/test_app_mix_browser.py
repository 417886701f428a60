"""The Mix tab in headless Chromium: compute a frontier, move the budget, run the point, download its recipe.
Uses Debian's /usr/bin/chromium (as tests/test_app_browser.py); never downloads a browser."""
from __future__ import annotations

import re

import pytest

from app_server import ARGS, CHROMIUM, REPO, running_app


pytestmark = [
    pytest.mark.browser, pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"),
]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    sync_api = pytest.importorskip("playwright.sync_api")
    with running_app(tmp_path_factory.mktemp("ws")) as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        pg = browser.new_context(viewport={"width": 1280, "height": 1400}, accept_downloads=True).new_page()
        pg.set_default_timeout(90_000)
        pg.goto(url)
        pg.wait_for_function("document.querySelector('#status-model')?.innerText.includes('parameters')")
        yield pg
        browser.close()


def _wait_text(page, selector: str, text: str) -> str:
    page.wait_for_function(f"document.querySelector({selector!r})?.innerText.includes({text!r})")
    return page.locator(selector).inner_text()


def test_mix_tab_frontier_budget_run_and_recipe(page):
    page.get_by_role("tab", name="7 · Mix").click()
    page.locator("#mix-windows input").fill("4")
    page.locator("#mix-seq-len input").fill("64")
    page.locator("#mix-btn").click()
    status = _wait_text(page, "#mix-status", "Frontier ready")
    assert "from 4.258 to 8.258 bits/weight" in status
    assert "Budget 6.258" in _wait_text(page, "#mix-summary", "bits/weight")
    page.locator("#plot-mix-frontier .js-plotly-plot").wait_for()
    page.locator("#plot-mix-grid .js-plotly-plot").wait_for()

    box = page.locator("#mix-budget input[type=number]")       # the slider's number box
    box.fill("5")
    box.press("Enter")
    summary = _wait_text(page, "#mix-summary", "Budget 5:")
    bpw = float(re.search(r"([\d.]+) bits/weight", summary).group(1))
    assert 4.9 < bpw <= 5.0

    page.locator("#mix-run-btn").click()
    done = _wait_text(page, "#mix-status", "Done.")
    assert f"at {bpw:.4f} bits/weight" in done
    assert "measured by run" in _wait_text(page, "#mix-summary", "measured")
    page.locator("#mix-recipe-btn").click()
    link = page.locator("#dl-mix-recipe a").first
    link.wait_for(state="visible")
    with page.expect_download() as info:
        link.click()
    assert info.value.suggested_filename == f"mix-recipe-{bpw:.3f}bpw.yaml"
    assert "not for this point" in page.locator("#mix-export-note").inner_text()
    shots = REPO / "tests" / "artifacts"
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "tab-mix.png"), full_page=True)
