"""One self-contained HTML report (plotly.js inlined, works offline): recipe, model, metrics, figures."""
from __future__ import annotations

import base64
import html
import json
import logging
import os
import tempfile
import zlib
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

from . import __version__, plots
from . import tables as _stats
from .compact import CHANNEL_BINS
from .jsonable import to_jsonable
from .recipe import Recipe


log = logging.getLogger(__name__)

_CSS = """
:root{color-scheme:light dark;--fg:#1f2933;--muted:#616e7c;--line:#d9e2ec;--code:#f5f7fa;--bg:#fff}
@media (prefers-color-scheme:dark){:root{--fg:#e4e7eb;--muted:#9aa5b1;--line:#3e4c59;--code:#1f2933;--bg:#111418}}
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1200px;margin:2em auto;
     padding:0 1em;color:var(--fg);background:var(--bg)}
h1{font-size:1.6em;margin-bottom:.2em} h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid var(--line)}
.meta{color:var(--muted)} table{border-collapse:collapse;margin:.5em 0;font-size:.9em} td,th{padding:.25em .7em;
     border-bottom:1px solid var(--line);text-align:left;font-variant-numeric:tabular-nums;white-space:nowrap}
.scroll{overflow-x:auto;max-width:100%} pre{background:var(--code);padding:.8em;overflow:auto} .figure{margin:1em 0}
.headline{font-size:1.15em;line-height:1.6} .headline b{font-size:1.2em} .warn{color:#e8590c;font-weight:600}
"""

# plotly.js (the cartesian bundle, 1.5 MB; assets/plotly) goes in once, deflated and base64-encoded (0.66 MB); the browser inflates it
# (DecompressionStream) and then draws every figure from its JSON. Still no network needed.
_LOADER = """<script>(async () => {
  const b64 = document.getElementById('plotlyjs-z').textContent.trim();
  const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('deflate'));
  const s = document.createElement('script'); s.textContent = await new Response(stream).text();
  document.head.appendChild(s);
  for (const el of document.querySelectorAll('script[data-figure]')) {
    const fig = JSON.parse(el.textContent);
    const div = document.getElementById(el.dataset.figure);
    Plotly.newPlot(div, fig.data, fig.layout, {displaylogo: false, responsive: true});
  }
})();</script>"""

# human labels and units for metrics and run settings; keys not listed are shown as they are
LABELS = {"ppl_fp": "perplexity, FP", "ppl_quant": "perplexity, quantized", "kl": "KL(FP || quantized), nats/token",
          "top1": "top-1 agreement with FP", "bits_per_weight": "bits per weight (packed, incl. scales)",
          "seconds_quantize": "quantization time (s)", "seconds_eval": "evaluation time (s)",
          "n_eval_tokens": "evaluation tokens", "model": "model", "eval_dataset": "evaluation set",
          "max_eval_windows": "evaluation windows (cap)", "eval_seq_len": "evaluation window (tokens)",
          "device": "device", "mxlab_version": "mxlab version", "seconds": "total time (s)",
          "parameters": "parameters"}
_DEFAULTS = {"device": "default (CPU unless a GPU is given)", "max_eval_windows": "all", "eval_seq_len": "model's"}


PLOTLY_BUNDLE = Path(__file__).resolve().parents[1] / "assets" / "plotly" / "plotly-cartesian.min.js"


@lru_cache(maxsize=1)
def _plotly_blob() -> str:
    """plotly.js deflated + base64: the shipped cartesian bundle, else the full one of the plotly package."""
    if PLOTLY_BUNDLE.is_file():
        source = PLOTLY_BUNDLE.read_bytes()
    else:
        from plotly.offline import get_plotlyjs

        log.warning("%s is missing: embedding plotly's full bundle (the report grows by ~1.3 MB)", PLOTLY_BUNDLE)
        source = get_plotlyjs().encode()
    return base64.b64encode(zlib.compress(source, 9)).decode()


def _figure_html(fig: Any, div_id: str) -> str:
    """A div plus the figure's JSON (drawn by _LOADER once plotly.js is inflated)."""
    spec = fig.to_json().replace("</", "<\\/")
    return (f'<div class=figure><div id="{div_id}" style="min-height:{fig.layout.height or 450}px"></div>'
            f'<script type="application/json" data-figure="{div_id}">{spec}</script></div>')


def page_html(title: str, body: list, subtitle: str = "") -> str:
    """A self-contained HTML page: ``body`` items are HTML strings or (section title, Figure) pairs."""
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>",
             f"<meta name=viewport content='width=device-width'><style>{_CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1><p class=meta>{html.escape(subtitle)} mxlab {__version__} &middot; {when}</p>"]
    n = 0
    for item in body:
        if isinstance(item, tuple):
            section, fig = item
            parts.append(f"<h2>{html.escape(section)}</h2>{_figure_html(fig, f'fig{n}')}")
            n += 1
        else:
            parts.append(item)
    if n:
        parts.append(f"<script type=text/plain id=plotlyjs-z>{_plotly_blob()}</script>{_LOADER}")
    parts.append("</body></html>")
    return "\n".join(parts)


def _recipe_text(recipe: Any) -> str:
    """The recipe as YAML when it can say so, else JSON / str."""
    if recipe is None:
        return "(not given)"
    for attr in ("to_yaml", "to_json"):
        if hasattr(recipe, attr):
            return getattr(recipe, attr)()
    if isinstance(recipe, dict):

        try:
            return Recipe.from_dict(recipe).to_yaml()
        except Exception:  # noqa: BLE001 - a partial recipe dict: show it as JSON rather than fail the report
            return json.dumps(to_jsonable(recipe), indent=2)
    return str(recipe)


def _fmt(v: Any) -> str:
    """A cell value: floats to 5 significant digits."""
    if isinstance(v, float):
        return f"{v:.5g}"
    return str(v)


def _kv_table(d: dict | None) -> str:
    """A two-column HTML table of a dict."""
    if not d:
        return "<p class=meta>(none)</p>"
    rows = "".join(f"<tr><th>{html.escape(LABELS.get(str(k), str(k)))}</th>"
                   f"<td>{html.escape(_fmt(_DEFAULTS.get(str(k), '') if v is None else v))}</td></tr>"
                   for k, v in d.items())
    return f"<table>{rows}</table>"


def _df_table(df, max_rows: int = 40, worst: str | None = None, ascending: bool = True, csv: str | None = None) -> str:
    """A DataFrame as a compact, scrolling HTML table: all rows when short, else the ``max_rows`` worst by
    ``worst`` (or the first ones), with a note saying which and where every row is."""
    def html_of(frame) -> str:
        return frame.to_html(index=False, border=0, na_rep="", float_format=lambda v: f"{v:.4g}")

    if len(df) <= max_rows:
        return f"<div class=scroll>{html_of(df)}</div>"
    if worst is not None and worst in df:
        shown = df.sort_values(worst, ascending=ascending, na_position="first").head(max_rows)
        what = f"the {max_rows} rows with the {'lowest' if ascending else 'highest'} {worst}"
    else:
        shown, what = df.head(max_rows), f"the first {max_rows} rows"
    where = f"; every row is in {csv}" if csv else ""
    return f"<div class=scroll>{html_of(shown)}</div><p class=meta>{what} of {len(df)}{where}</p>"


def _as_frame(rows: Any):
    """A DataFrame from a DataFrame, a list of dicts, or None."""
    import pandas as pd

    if rows is None:
        return None
    return rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))


def figures(*, records: Any = None, stats_rows: Any = None, sensitivity: Any = None,
            runs: Any = None) -> list[tuple[str, Any]]:
    """Every figure the data allows, as (section title, Figure) in report order."""
    out = []
    rec = _stats.records_table(records) if records is not None else None
    if rec is not None and len(rec):
        out.append(("Error by step", plots.error_waterfall(rec)))
    acts = _stats.activation_table(stats_rows)
    if len(acts):
        channels = _stats.activation_channel_table(stats_rows, max_channels=CHANNEL_BINS)
        out.append(("Activation channels", plots.activation_heatmap(channels)))
        out.append(("Activation outliers", plots.outlier_ratio_chart(acts)))
    weights = _stats.weights_table(stats_rows)
    if len(weights):
        out.append(("Weight quality", plots.weight_quality_chart(weights)))
    scales = _stats.scale_table(stats_rows)
    if len(scales):
        out.append(("MX scales", plots.scale_histogram(scales)))
    sens = _as_frame(sensitivity)
    if sens is not None and len(sens):
        out.append(("Sensitivity", plots.sensitivity_chart(sens)))
    runs_df = _as_frame(runs)
    if runs_df is not None and len(runs_df):
        out.append(("Runs", plots.pareto_chart(runs_df)))
    return out


def headline(metrics: dict | None, model_info: dict | None, recipe: Any) -> str:
    """The report's first lines: FP -> quantized perplexity (change in %), KL, bits per weight, time, model."""
    m, info = metrics or {}, model_info or {}
    if m.get("ppl_fp") is None or m.get("ppl_quant") is None:
        return ""
    fp, q = float(m["ppl_fp"]), float(m["ppl_quant"])
    parts = [f"Perplexity <b>{fp:.4g} &rarr; {q:.4g}</b> ({100 * (q / fp - 1):+.2f}%)"]
    if m.get("kl") is not None:
        parts.append(f"KL {float(m['kl']):.4g} nats/token")
    if m.get("top1") is not None:
        parts.append(f"top-1 agreement {100 * float(m['top1']):.1f}%")
    if m.get("bits_per_weight") is not None:
        parts.append(f"<b>{float(m['bits_per_weight']):.3f}</b> bits per weight")
    seconds = sum(float(m.get(k) or 0) for k in ("seconds_quantize", "seconds_eval"))
    if seconds:
        parts.append(f"{seconds:.1f} s")
    summary = ""
    if isinstance(recipe, dict) and recipe:
        steps = " &rarr; ".join(html.escape(str(s.get("name") if isinstance(s, dict) else s))
                                for s in recipe.get("steps") or []) or "RTN"
        summary = (f"W-{html.escape(str(recipe.get('weights')).upper())} A-{html.escape(str(recipe.get('acts')).upper())}"
                   f", block {recipe.get('block_size')}, {steps}")
    where = " &middot; ".join(html.escape(str(x)) for x in (info.get("model"), info.get("eval_dataset")) if x)
    return (f"<p class=headline>{' &middot; '.join(parts)}</p>"
            f"<p class=meta>{summary}{' &middot; ' if summary and where else ''}{where}</p>")


def report_html(*, recipe: Any, model_info: dict | None, metrics: dict | None, records: Any = None,
                stats: Any = None, sensitivity: Any = None, runs: Any = None, title: str = "mxlab report",
                scale_lab: dict | None = None) -> str:
    """The whole report as one HTML string; plotly.js embedded once (no network needed to view it)."""
    figs = figures(records=records, stats_rows=stats, sensitivity=sensitivity, runs=runs)
    plain = {k: v for k, v in (metrics or {}).items() if k != "zero_shot"}
    body: list = [headline(metrics, model_info, recipe), "<h2>Metrics</h2>", _kv_table(plain),
                  *zero_shot_section((metrics or {}).get("zero_shot")),
                  "<h2>Model and evaluation</h2>", _kv_table(model_info),
                  "<h2>Recipe</h2>", f"<pre>{html.escape(_recipe_text(recipe))}</pre>", *figs]
    sens = _as_frame(sensitivity)
    if sens is not None and len(sens):
        body += ["<h2>Sensitivity table</h2>", _df_table(sens, worst="kl" if "kl" in sens else None,
                                                           ascending=False, csv="sensitivity.csv")]
    body += scale_rules_section(scale_lab)
    weights = _stats.weights_table(stats)
    if len(weights):
        body += ["<h2>Weights table</h2>", _df_table(weights, worst="sqnr_db", csv="weights.csv")]
    if _binned(stats):
        body.append(f"<p class=meta>Per-channel statistics are shown in at most {CHANNEL_BINS} channel bins per "
                    "module (each bin keeps its extreme and the channel holding it); every channel is in "
                    "activation_channels.csv and weight_channels.csv.</p>")
    return page_html(title, body)


SCALE_WORST = 8   # layers listed under "Scale rules"


def scale_rules_section(scale_lab: dict | None) -> list[str]:
    """The "Scale rules" heading: every MX scale rule model-wide (means over layers) and the layers where the
    run's rule is furthest below the best one in weight SQNR; [] when the run has no MX weights."""
    df = _stats.scale_lab_section_table(scale_lab)
    if not len(df):
        return []
    summary = _stats.scale_rule_summary(df)
    used = ", ".join(sorted(set(df.loc[df["chosen"], "scale_rule"]))) or "none"
    best = summary.loc[summary["weight SQNR dB"].idxmax(), "rule"] if summary["weight SQNR dB"].notna().any() else "?"
    worst = _stats.scale_rule_worst(df, SCALE_WORST)
    note = (f"<p class=meta>Each rule applied to the run's FP weights before its steps ({df['module'].nunique()} MX "
            f"layers, per weight, no forward pass). The run used <b>{html.escape(used)}</b>; the highest mean weight "
            f"SQNR is <b>{html.escape(str(best))}</b>. Clipped: blocks whose maximum exceeds the format's largest "
            "value after scaling; flushed: nonzero weights that quantize to 0.</p>")
    gaps = worst[worst["gap dB"] > 0]
    out = ["<h2>Scale rules</h2>", note, _df_table(summary)]
    if len(gaps):
        out += [f"<p class=meta>Layers where another rule beats the run's rule most (up to {SCALE_WORST}):</p>",
                _df_table(gaps)]
    else:
        out.append("<p class=meta>On every layer the run's rule has the best weight SQNR of the rules.</p>")
    return out


def zero_shot_section(zero_shot: dict | None) -> list[str]:
    """The "Zero-shot tasks" heading and table (task, metric, FP, quantized, change, stderr, examples); [] if none."""
    import pandas as pd

    if not zero_shot:
        return []
    fp, quant = zero_shot.get("fp") or {}, zero_shot.get("quant") or {}
    rows = []
    for task, row in quant.items():
        for metric, value in row.items():
            if metric.endswith("_stderr") or metric == "n":
                continue
            before = (fp.get(task) or {}).get(metric)
            rows.append({"task": task, "metric": metric, "FP": before, "quantized": value,
                         "change": value - before if isinstance(before, (int, float)) else None,
                         "stderr (quantized)": row.get(f"{metric}_stderr"), "examples": row.get("n")})
    limit = zero_shot.get("limit")
    note = (f"<p class=meta>lm-evaluation-harness, zero-shot"
            f"{f', first {limit} examples per task' if limit else ', every example'}.</p>")
    return ["<h2>Zero-shot tasks</h2>", _df_table(pd.DataFrame(rows)), note]


def _binned(stats: Any) -> bool:
    """Whether any per-channel statistics row is (or will be shown) binned."""
    rows = _stats.stat_rows(stats, "activations") + _stats.stat_rows(stats, "weights")
    return any(r.get("binned") or len(r.get("absmax", r.get("w_min", []))) > CHANNEL_BINS for r in rows)


def write_report(path: str | Path, *, recipe: Any, model_info: dict | None, metrics: dict | None,
                 records: Any = None, stats: Any = None, sensitivity: Any = None, runs: Any = None,
                 title: str = "mxlab report", scale_lab: dict | None = None) -> Path:
    """Write the report atomically (temp file in the same folder, then os.replace); returns the path."""
    path = Path(path)
    text = report_html(recipe=recipe, model_info=model_info, metrics=metrics, records=records, stats=stats,
                       sensitivity=sensitivity, runs=runs, title=title, scale_lab=scale_lab)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("report written to %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return path


def write_report_from_results(results: dict, path: str | Path) -> Path:
    """Write the report of a results.json dict (as rundir.results_dict builds it) to path."""
    model_info = {"model": results.get("model"), **(results.get("run") or {})}
    return write_report(path, recipe=results.get("recipe"), model_info=model_info, metrics=results.get("metrics"),
                        records=results.get("records"), stats=results.get("stats"),
                        sensitivity=results.get("sensitivity"), runs=results.get("runs"),
                        scale_lab=results.get("scale_lab"))
