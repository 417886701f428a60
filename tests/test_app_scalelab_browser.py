"""The Scale lab tab in headless Chromium (Debian's /usr/bin/chromium, never downloaded): opening the tab
shows the first layer's rule table and figure; picking another layer redraws both within 2 s."""
from __future__ import annotations

import time

import pytest

from app_server import ARGS, CHROMIUM, running_app


pytestmark = [
    pytest.mark.browser, pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"),
]

PLOT_TITLE = "document.querySelector('#plot-scalelab .gtitle')?.textContent || ''"


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    sync_api = pytest.importorskip("playwright.sync_api")
    with running_app(tmp_path_factory.mktemp("ws")) as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        pg = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        pg.set_default_timeout(60_000)
        pg.goto(url)
        pg.wait_for_function("document.querySelector('#status-model')?.innerText.includes('parameters')")
        yield pg
        browser.close()


def test_tab_shows_every_rule_and_a_new_layer_draws_within_two_seconds(page):
    page.get_by_role("tab", name="Scale lab").click()
    page.wait_for_function(f"({PLOT_TITLE}).includes('model.layers.0.self_attn.q_proj')")
    table = page.locator("#scalelab-table").inner_text()
    assert all(rule in table for rule in ("floor", "ceil", "even", "rceil", "mse")) and "clipped blocks %" in table
    box = page.locator("#scalelab-layer input")
    box.click()
    start = time.perf_counter()
    page.get_by_role("option", name="model.layers.3.mlp.down_proj", exact=True).click()
    page.wait_for_function(f"({PLOT_TITLE}).includes('model.layers.3.mlp.down_proj')", timeout=10_000)
    seconds = time.perf_counter() - start
    assert "model.layers.3.mlp.down_proj" in page.locator("#scalelab-note").inner_text()
    assert seconds < 2.0, f"the figure took {seconds:.2f} s"
