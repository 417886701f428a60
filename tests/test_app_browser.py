"""The app in headless Chromium (Playwright), replaying what a new user met (issue 13, items 1-9) over a
workspace made by two CLI runs. Uses Debian's /usr/bin/chromium; never downloads a browser.

The tests run in file order and share one app, one workspace and one page. MXLAB_UPDATE_SCREENSHOT=1
also refreshes the README's screenshots (docs/tab-*.png).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from app_server import ARGS, CHROMIUM, REPO, running_app

ARTIFACTS = REPO / "tests" / "artifacts"
QUICK = ["--steps", "rtn", "--calib-samples", "4", "--calib-seq-len", "64", "--max-eval-windows", "2"]

pytestmark = [
    pytest.mark.browser, pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                                                     "(apt-get install chromium); no browser is downloaded"),
]


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "mxlab", "-q", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A workspace made by two CLI runs (named 'cli-a' and 'cli-b')."""
    root = tmp_path_factory.mktemp("ws")
    for name, fmt in (("cli-a", "mxint4"), ("cli-b", "mxint8")):
        proc = _cli("run", *QUICK, "--weights", fmt, "--workspace", str(root), "--name", name)
        assert proc.returncode == 0, proc.stderr
    return root


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def app_url(workspace):
    with running_app(workspace) as url:
        yield url


def _new_page(browser, url):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    pg.goto(url)
    pg.wait_for_function("document.querySelector('#status-model')?.innerText.includes('parameters')")
    return pg


@pytest.fixture(scope="module")
def page(browser, app_url):
    pg = _new_page(browser, app_url)
    yield pg
    pg.context.close()


def _tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def _text(page, selector: str) -> str:
    return page.locator(selector).inner_text()


def _classes(page, selector: str) -> str:
    return page.locator(selector).first.get_attribute("class") or ""


def _wait_text(page, selector: str, text: str, timeout: int = 60_000) -> None:
    page.wait_for_function(f"document.querySelector({selector!r})?.innerText.includes({text!r})", timeout=timeout)


def _type_order(page, text: str) -> None:
    box = page.locator("#method-order textarea")
    box.fill("")
    box.press_sequentially(text, delay=60)            # human speed: every keystroke fires an input event


def _run_and_wait(page, marker: str = "Done.", timeout: int = 120_000) -> str:
    before = _text(page, "#status-run")
    page.locator("#run-btn").click()
    page.wait_for_function("document.querySelector('#status-run .wrap:not(.hide), #status-run .progress-text')",
                           timeout=30_000)                      # the run's progress overlay appeared
    page.wait_for_function(f"(() => {{ const el = document.querySelector('#status-run'); const t = el?.innerText || '';"
                           f" return !el.querySelector('.progress-text, .eta-bar') && !t.includes('%') && t !== {before!r}"
                           f" && (t.includes({marker!r}) || t.includes('Error')); }})()", timeout=timeout)
    return _text(page, "#status-run")


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    raw = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(raw), style=".toast-wrap {display: none !important;}")   # an earlier test's toast
    if os.environ.get("MXLAB_UPDATE_SCREENSHOT"):
        from PIL import Image

        Image.open(raw).convert("RGB").quantize(colors=64).save(REPO / "docs" / f"{name}.png", optimize=True)


# ---------------------------------------------------------------------------- workspace (items 8, 9)
def test_cli_runs_listed_by_cli_and_shown_in_a_fresh_app(page, workspace):
    _shot(page, "tab-model")
    proc = _cli("runs", "--workspace", str(workspace), "--json")
    rows = json.loads(proc.stdout)
    assert proc.returncode == 0 and [r["name"] for r in rows] == ["cli-a", "cli-b"]
    assert rows[0]["recipe"] == "W-mxint4 A-mxint8 b32 rtn" and rows[0]["eval"] == "tinystories x2"
    _tab(page, "3 · Run")
    table = _text(page, "#runs-table")
    assert all(r["id"] in table for r in rows) and "cli-a" in table and "cli-b" in table
    assert "embedded default" in _text(page, "#run-model")         # item 5: the Run tab names its model
    _shot(page, "tab-run")


# ---------------------------------------------------------------------------- items 1, 3, 7
def test_refused_run_shows_its_message_on_the_run_tab(page):
    _tab(page, "2 · Recipe")
    _type_order(page, "gptq, awq")
    _wait_text(page, "#recipe-check", "Invalid")
    assert "mx-bad" in _classes(page, "#recipe-check")            # invalid looks different (red)
    _tab(page, "3 · Run")
    status = _run_and_wait(page)
    assert "Error" in status and "gptq" in status and "already quantized" in status
    assert "mx-bad" in _classes(page, "#status-run")
    assert page.locator(".toast-body").count() >= 1                # and a toast
    _tab(page, "2 · Recipe")
    page.get_by_text("Calibration", exact=True).click()
    page.locator("#calib-n input").fill("-5")
    page.locator("#calib-n input").press("Tab")
    _tab(page, "3 · Run")
    status = _run_and_wait(page)
    assert "Error" in status, status
    _tab(page, "2 · Recipe")
    page.locator("#calib-n input").fill("32")
    page.locator("#calib-n input").press("Tab")


def test_order_rule_is_stated_not_circular(page):
    _tab(page, "2 · Recipe")
    _type_order(page, "awq, gptq, rtn")
    _wait_text(page, "#recipe-check", "goes last")          # the last keystroke's recipe, not 'rt'
    assert "'rt'" not in _text(page, "#recipe-check")
    message = _text(page, "#recipe-check")
    assert "scaling steps (awq) go first" in message and "one quantizing step (gptq or rtn) goes last" in message


def test_typed_order_and_exported_yaml_agree(page):
    _tab(page, "2 · Recipe")
    _type_order(page, "smoothquant, gptq")
    page.get_by_text("Recipe as YAML (import / export)").click()
    page.wait_for_function("(() => { const t = document.querySelector('#recipe-yaml')?.innerText || '';"
                           " return t.includes('smoothquant') && t.includes('gptq'); })()")
    _wait_text(page, "#recipe-check", "Recipe OK")
    page.locator("#download-yaml").click()
    link = page.locator("#dl-recipe-yaml a").first
    link.wait_for(state="visible")
    with page.expect_download() as info:
        link.click()
    path = ARTIFACTS / "typed-recipe.yaml"
    info.value.save_as(str(path))
    text = path.read_text()
    assert text.index("smoothquant") < text.index("gptq") and "awq" not in text
    assert info.value.suggested_filename.startswith("recipe-w-mxint4-a-mxint8-b32-smoothquant-gptq")
    _shot(page, "tab-recipe")


# ---------------------------------------------------------------------------- item 2
def test_reversed_order_runs_with_allow_requantize(page):
    _tab(page, "2 · Recipe")
    _type_order(page, "gptq, awq")
    page.locator("#allow-requantize input").check()
    _wait_text(page, "#recipe-check", "warnings")
    assert "allow_requantize" in _text(page, "#recipe-check") and "mx-warn" in _classes(page, "#recipe-check")
    _tab(page, "3 · Run")
    page.locator("#eval-windows input").fill("4")
    page.locator("#run-name textarea").fill("reversed")
    status = _run_and_wait(page)
    assert "Done" in status and "gptq+awq" in status, status
    assert "reversed" in _text(page, "#runs-table")


# ---------------------------------------------------------------------------- item 5
def test_failed_load_keeps_the_previous_model(page):
    _tab(page, "1 · Model")
    page.locator("#model-source textarea").fill("/no/such/model")
    page.locator("#load-model").click()
    _wait_text(page, "#status-model", "Error")
    assert "stays selected" in _text(page, "#status-model") and "mx-bad" in _classes(page, "#status-model")
    assert page.locator("#model-source textarea").input_value() == ""      # the box shows the model in use
    _tab(page, "3 · Run")
    assert "embedded default" in _text(page, "#run-model")


# ---------------------------------------------------------------------------- items 6, 4, 9
def test_inspect_defaults_to_sqnr(page):
    _tab(page, "4 · Inspect")
    page.locator("#plot-waterfall .main-svg").first.wait_for(state="visible")
    assert "SQNR" in _text(page, "#plot-waterfall")
    _shot(page, "tab-inspect")


def test_compare_is_readable_and_warns_on_different_settings(page):
    _tab(page, "5 · Compare")
    page.locator("#compare-btn").click()        # the last two runs are picked: a CLI run (x2) and the app's (x4)
    page.locator("#plot-compare .main-svg").first.wait_for(state="visible")
    _wait_text(page, "#compare-note", "evaluation windows")
    assert "mx-warn" in _classes(page, "#compare-note")
    assert "Δ perplexity vs baseline" in _text(page, "#compare-table")
    ratio = page.evaluate("""(() => {
        const root = document.querySelector('#plot-compare .js-plotly-plot');
        const area = root.querySelector('.bglayer rect, .nsewdrag');
        return area.getBoundingClientRect().width / root.getBoundingClientRect().width; })()""")
    assert ratio >= 0.6, ratio
    _shot(page, "tab-compare")
    page.locator("#compare-export").click()
    link = page.locator("#dl-compare a").first
    link.wait_for(state="visible")
    with page.expect_download() as info:
        link.click()
    path = ARTIFACTS / "comparison.html"
    info.value.save_as(str(path))
    assert "Δ perplexity vs baseline" in path.read_text() and path.stat().st_size < 2_000_000


def test_export_names_files_after_the_run(page):
    _tab(page, "6 · Export")
    page.locator("#export-btn").click()
    link = page.locator("#dl-recipe a").first
    link.wait_for(state="visible")
    with page.expect_download() as info:
        link.click()
    assert info.value.suggested_filename.endswith("-reversed-recipe.yaml")
    _shot(page, "tab-export")


# ---------------------------------------------------------------------------- item 8
def test_runs_survive_a_reload_and_a_restart(page, workspace, browser):
    page.reload()
    page.wait_for_function("document.querySelector('#status-model')?.innerText.includes('parameters')")
    _tab(page, "3 · Run")
    page.wait_for_function("document.querySelector('#runs-table')?.innerText.includes('reversed')")
    with running_app(workspace) as url:                    # a fresh server over the same workspace
        fresh = _new_page(browser, url)
        _tab(fresh, "3 · Run")
        fresh.wait_for_function("document.querySelector('#runs-table')?.innerText.includes('reversed')")
        assert "cli-a" in _text(fresh, "#runs-table")
        fresh.context.close()


# ---------------------------------------------------------------------------- two sessions; the start recipe
def test_two_sessions_cannot_cancel_each_other_and_start_recipe_is_fast(browser, app_url):
    a, b = _new_page(browser, app_url), _new_page(browser, app_url)
    try:
        for pg in (a, b):
            _tab(pg, "3 · Run")
            pg.wait_for_function("document.querySelector('#runs-table')?.innerText.includes('cli-b')")
        start = time.perf_counter()
        a.locator("#run-btn").click()                    # the start recipe (AWQ + GPTQ), default settings
        a.wait_for_function("document.querySelector('.progress-text, .eta-bar, .progress-level')", timeout=30_000)
        b.locator("#cancel-btn").click()
        _wait_text(b, "#status-run", "Nothing of this session is running")
        _wait_text(a, "#status-run", "Done.", timeout=120_000)
        assert "awq+gptq" in _text(a, "#status-run")   # the start recipe finished inside the 120 s above
        print(f"start recipe, whole run: {time.perf_counter() - start:.1f} s")  # ~25 s on an idle 2-core machine
        b.locator("#run-btn").click()                    # b's own run, cancelled by b once the server runs it
        # wait for a progress message from the run itself, so this Cancel stops a running job (one still
        # waiting in the queue: tests/test_app_cancel_queued.py)
        b.wait_for_function("/model|weights|calibration|block|evaluat/.test("
                            "document.querySelector('#status-run')?.innerText || '')", timeout=60_000)
        b.locator("#cancel-btn").click()
        _wait_text(b, "#status-run", "Cancelled", timeout=60_000)
    finally:
        a.context.close()
        b.context.close()
