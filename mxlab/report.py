"""One self-contained HTML report (plotly.js inlined, works offline): recipe, model, metrics, figures."""
from __future__ import annotations

import html
import json
import logging
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import __version__, plots
from . import tables as _stats
from .compact import CHANNEL_BINS
from .jsonable import to_jsonable

log = logging.getLogger(__name__)

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1200px;margin:2em auto;
     padding:0 1em;color:#1f2933}
h1{font-size:1.6em;margin-bottom:.2em} h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #d9e2ec}
.meta{color:#616e7c} table{border-collapse:collapse;margin:.5em 0} td,th{padding:.25em .8em;
     border-bottom:1px solid #e4e7eb;text-align:left;font-variant-numeric:tabular-nums}
pre{background:#f5f7fa;padding:.8em;overflow:auto} .figure{margin:1em 0}
"""


def _recipe_text(recipe: Any) -> str:
    """The recipe as YAML when it can say so, else JSON / str."""
    if recipe is None:
        return "(not given)"
    for attr in ("to_yaml", "to_json"):
        if hasattr(recipe, attr):
            return getattr(recipe, attr)()
    if isinstance(recipe, dict):
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
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in d.items())
    return f"<table>{rows}</table>"


def _df_table(df, max_rows: int = 40, worst: str | None = None, ascending: bool = True, csv: str | None = None) -> str:
    """A DataFrame as a compact HTML table: all rows when short, else the ``max_rows`` worst by ``worst``."""
    if len(df) <= max_rows:
        return df.to_html(index=False, border=0, float_format=lambda v: f"{v:.5g}")
    if worst is not None and worst in df:
        shown = df.sort_values(worst, ascending=ascending, na_position="first").head(max_rows)
        what = f"the {max_rows} rows with the {'lowest' if ascending else 'highest'} {worst}"
    else:
        shown, what = df.head(max_rows), f"the first {max_rows} rows"
    where = f"; every row is in {csv}" if csv else ""
    return (shown.to_html(index=False, border=0, float_format=lambda v: f"{v:.5g}")
            + f"<p class=meta>{what} of {len(df)}{where}</p>")


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


def report_html(*, recipe: Any, model_info: dict | None, metrics: dict | None, records: Any = None,
                stats: Any = None, sensitivity: Any = None, runs: Any = None, title: str = "mxlab report") -> str:
    """The whole report as one HTML string with plotly.js inlined (no network needed to view it)."""
    from plotly.offline import get_plotlyjs

    figs = figures(records=records, stats_rows=stats, sensitivity=sensitivity, runs=runs)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style><script>{get_plotlyjs()}</script></head><body>",
             f"<h1>{html.escape(title)}</h1><p class=meta>mxlab {__version__} &middot; {when}</p>",
             "<h2>Metrics</h2>", _kv_table(metrics), "<h2>Model</h2>", _kv_table(model_info),
             "<h2>Recipe</h2>", f"<pre>{html.escape(_recipe_text(recipe))}</pre>"]
    for i, (section, fig) in enumerate(figs):
        div = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig{i}",
                          config={"displaylogo": False, "responsive": True})
        parts.append(f"<h2>{html.escape(section)}</h2><div class=figure>{div}</div>")
    sens = _as_frame(sensitivity)
    if sens is not None and len(sens):
        parts += ["<h2>Sensitivity table</h2>", _df_table(sens, worst="kl" if "kl" in sens else None,
                                                            ascending=False, csv="sensitivity.csv")]
    weights = _stats.weights_table(stats)
    if len(weights):
        parts += ["<h2>Weights table</h2>", _df_table(weights, worst="sqnr_db", csv="weights.csv")]
    if _binned(stats):
        parts.append(f"<p class=meta>Per-channel statistics are shown in at most {CHANNEL_BINS} channel bins per "
                     "module (each bin keeps its extreme and the channel holding it); every channel is in "
                     "activation_channels.csv and weight_channels.csv.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _binned(stats: Any) -> bool:
    """Whether any per-channel statistics row is (or will be shown) binned."""
    rows = _stats.stat_rows(stats, "activations") + _stats.stat_rows(stats, "weights")
    return any(r.get("binned") or len(r.get("absmax", r.get("w_min", []))) > CHANNEL_BINS for r in rows)


def write_report(path: str | Path, *, recipe: Any, model_info: dict | None, metrics: dict | None,
                 records: Any = None, stats: Any = None, sensitivity: Any = None, runs: Any = None,
                 title: str = "mxlab report") -> Path:
    """Write the report atomically (temp file in the same folder, then os.replace); returns the path."""
    path = Path(path)
    text = report_html(recipe=recipe, model_info=model_info, metrics=metrics, records=records, stats=stats,
                       sensitivity=sensitivity, runs=runs, title=title)
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
                        sensitivity=results.get("sensitivity"), runs=results.get("runs"))
