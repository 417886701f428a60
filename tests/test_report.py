"""report.py: one self-contained HTML file; in headless Chromium with no network every figure renders."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from mxlab import report, tables
from mxlab.ptq import statistics

from test_plots import _records, _two_layer_stats

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


def _inputs() -> dict:
    st = _two_layer_stats()
    g = torch.Generator().manual_seed(4)
    spec = dict(weights="mxint4", acts="mxint8", block_size=32, rounding="nearest")
    from mxlab.formats import quantize

    for b in range(2):
        w = torch.randn(64, 64, generator=g) * 0.1
        st["weights"].append(statistics.weight_stats(f"model.layers.{b}.attn.q", b, w, quantize(w, "mxint4", 32), spec))
        st["activations"].append(statistics.activation_stats(f"model.layers.{b}.attn.q", b, "fp",
                                                             torch.randn(16, 64, generator=g), spec=spec))
    sens = [dict(rank=1, unit="model.layers.1.attn.q", kind="module", block=1, kl=0.2, ppl=11.0, ppl_fp=10.0,
                 d_ppl=1.0),
            dict(rank=2, unit="model.layers.0.attn.q", kind="module", block=0, kl=0.1, ppl=10.5, ppl_fp=10.0,
                 d_ppl=0.5)]
    runs = [dict(name="w4a8 rtn", bits_per_weight=4.25, ppl=11.0), dict(name="w8a8", bits_per_weight=8.25, ppl=10.1)]
    return dict(recipe={"weights": "mxint4", "acts": "mxint8", "steps": ["awq", "gptq"]},
                model_info={"model": "toy <script>alert(1)</script>", "parameters": 1234},
                metrics={"ppl_fp": 10.0, "ppl_quant": 11.0}, records=_records(), stats=st, sensitivity=sens, runs=runs)


N_FIGURES = 7  # waterfall, heatmap, outlier ratio, weight quality, scales, sensitivity, pareto


def test_report_is_one_self_contained_file(tmp_path):
    path = report.write_report(tmp_path / "r" / "report.html", **_inputs())
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]  # temp file renamed, nothing left
    text = path.read_text()
    assert len(re.findall(r'<div id="fig\d+"', text)) == N_FIGURES
    assert not re.search(r'<(script|link)[^>]+(src|href)="?https?:', text)  # nothing fetched from the web
    assert "Plotly.newPlot" in text and 500_000 < len(text) < 2_000_000  # plotly.js embedded once, deflated
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "<script>alert(1)" not in text
    assert "perplexity, quantized" in text and "mxint4" in text and "+10.00%" in text  # headline: 10 -> 11
    assert "weights: mxint4" in text and "activations: mxint8" in text        # the MX exponents of both


def test_report_without_optional_parts(tmp_path):
    html = report.report_html(recipe=None, model_info=None, metrics={"ppl_fp": 1.0})
    assert '<div id="fig' not in html  # no figure without data (plotly.js itself is still inlined)
    assert "<h2>Metrics</h2>" in html and "(not given)" in html


def test_report_from_results_dict(tmp_path):
    """A results.json-shaped dict (records as dicts, inf -> None) makes the same figures."""
    inp = _inputs()
    results = dict(model="toy", run={"seconds": 1.0}, metrics=inp["metrics"], recipe=inp["recipe"],
                   records=[r.to_dict() for r in inp["records"]], stats=inp["stats"])
    text = report.write_report_from_results(results, tmp_path / "report.html").read_text()
    assert len(re.findall(r'<div id="fig\d+"', text)) == N_FIGURES - 2  # no sensitivity, no runs


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt install chromium); "
                                                   "Playwright's own browser download is not used")
def test_report_renders_offline_in_chromium(tmp_path):
    from playwright.sync_api import sync_playwright

    path = report.write_report(tmp_path / "report.html", **_inputs())
    blocked, errors = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            # no network: anything but the file itself (and inline data) is refused and counted
            page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(("file:", "data:"))
                       else (blocked.append(route.request.url), route.abort()))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(path.as_uri())
            page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot').length >= {N_FIGURES}",
                                   timeout=20_000)
            n_plots = page.locator(".js-plotly-plot").count()
            n_svg = page.locator(".main-svg").count()
            n_traces = page.evaluate("Array.from(document.querySelectorAll('.js-plotly-plot'))"
                                     ".map(d => d.querySelectorAll('.trace, .hm, image').length)")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
        finally:
            browser.close()
    assert blocked == [] and errors == []
    assert n_plots == N_FIGURES and n_svg >= 2 * N_FIGURES  # each plot draws a main and an overlay svg
    assert all(n > 0 for n in n_traces), n_traces  # every figure drew data, not just axes
    assert (ARTIFACTS / "report.png").stat().st_size > 10_000


@pytest.mark.slow
def test_full_analysis_on_the_embedded_model(tmp_path):
    """stories260K: quantize (smoothquant, gptq) with statistics, sensitivity, tables and the report.

    ~12 s on 2 busy CPU cores with one torch thread (quantize ~7 s, sensitivity ~4 s, report ~1 s)."""
    import time

    from mxlab.data import calibration_batches, evaluation_tokens
    from mxlab.models import load_model
    from mxlab.ptq.pipeline import quantize_model
    from mxlab.recipe import Recipe
    from mxlab.sensitivity import layer_sensitivity

    model, tok = load_model()
    fp, _ = load_model()
    recipe = Recipe(weights="mxint4", acts="mxint8", block_size=32, steps="smoothquant,gptq")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: on a shared 2-core box, 2 spinning threads per process run ~10x slower
    try:
        t0 = time.perf_counter()
        sens = layer_sensitivity(fp, recipe, evaluation_tokens(tok, "tinystories"), seq_len=128, max_windows=4)
        res = quantize_model(model, tok, recipe, calib_tokens=calibration_batches(tok, "tinystories", 16, 128))
        written = tables.write_tables(tmp_path / "tables", records=res.records, stats=res.stats)
        path = report.write_report(tmp_path / "report.html", recipe=recipe, model_info={"model": "stories260K"},
                                   metrics={}, records=res.records, stats=res.stats, sensitivity=sens)
        seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    n_linears = 5 * 7
    assert len(sens) == n_linears and len(res.stats["weights"]) == n_linears
    assert len(tables.activation_table(res.stats)) == 2 * n_linears  # fp and after smoothquant
    assert len(tables.records_table(res.records)) == 2 * n_linears  # one row per module x step
    assert set(written) == {"records", "activations", "activation_channels", "weights", "weight_channels", "scales"}
    assert len(re.findall(r'<div id="fig\d+"', path.read_text())) == N_FIGURES - 1  # all but the runs chart
    assert seconds < 60, seconds


def test_report_has_zero_shot_table():
    zs = {"fp": {"arc_easy": {"acc": 0.5, "acc_stderr": 0.29, "acc_norm": 0.25, "acc_norm_stderr": 0.25, "n": 4}},
          "quant": {"arc_easy": {"acc": 0.25, "acc_stderr": 0.25, "acc_norm": 0.75, "acc_norm_stderr": 0.25, "n": 4}},
          "limit": 4}
    html = report.report_html(recipe=None, model_info=None, metrics={"ppl_fp": 10.0, "ppl_quant": 11.0, "zero_shot": zs})
    section = html.split("<h2>Zero-shot tasks</h2>", 1)[1].split("<h2>", 1)[0]
    rows = re.findall(r"<tr>\s*<td>(.*?)</td>\s*<td>(.*?)</td>\s*<td>(.*?)</td>\s*<td>(.*?)</td>\s*<td>(.*?)</td>",
                      section)
    # task, metric, FP, quantized, change
    assert rows == [("arc_easy", "acc", "0.5", "0.25", "-0.25"), ("arc_easy", "acc_norm", "0.25", "0.75", "0.5")]
    assert "first 4 examples per task" in section
    assert "zero_shot" not in html.split("<h2>Metrics</h2>", 1)[1].split("<h2>", 1)[0]   # not dumped as a dict
    assert "Zero-shot tasks" not in report.report_html(recipe=None, model_info=None, metrics={"ppl_fp": 1.0})
