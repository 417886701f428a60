"""A sweep's result: every cell's status and metrics, the study-shaped table (rows/columns from the
axes) as CSV, Markdown and a heatmap, and one self-contained HTML report."""
from __future__ import annotations

import html
import json
import logging
import math
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..atomic import atomic_file
from ..errors import MxlabError
from ..workspace import SWEEP_FILE
from .jobs import read_record, record_path


log = logging.getLogger(__name__)

CELLS_CSV, TABLE_CSV, TABLE_MD, FIGURE_HTML, REPORT_HTML = ("cells.csv", "table.csv", "table.md",
                                                            "table.html", "report.html")


def read_manifest(sweep_dir: str | os.PathLike) -> dict[str, Any]:
    """sweep.json of a sweep directory (MxlabError when it is not one)."""
    path = Path(sweep_dir) / SWEEP_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise MxlabError(f"{sweep_dir} is not a sweep directory ({e}); run `python -m mxlab sweep FILE` first") from None


def sweep_status(sweep_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """One row per cell: name, axis labels, status (queued/running/done/failed/cancelled/not run),
    attempts, progress (0..1) and message of the running job, error, seconds, run_dir and its metrics
    (from results.json when the cell is done). Cheap to poll: it reads small JSON files only."""
    sweep_dir = Path(sweep_dir)
    rows = []
    for cell in read_manifest(sweep_dir)["cells"]:
        rec = read_record(record_path(sweep_dir, cell["name"])) or {}
        run_dir = sweep_dir / cell["name"]
        status = rec.get("status", "not run")
        metrics = {}
        if (run_dir / "results.json").is_file():
            try:
                metrics = json.loads((run_dir / "results.json").read_text()).get("metrics", {})
                status = "done" if status in ("done", "not run") else status
            except (OSError, ValueError):
                pass
        rows.append({"cell": cell["name"], **cell["labels"], "status": status, "attempts": rec.get("attempts", 0),
                     "progress": 1.0 if status == "done" else rec.get("progress", 0.0), "message": rec.get("message"),
                     "error": rec.get("error"), "seconds": rec.get("seconds"), "run_dir": str(run_dir),
                     **metrics})
    return rows


def sweep_table(sweep_dir: str | os.PathLike, value: str | None = None):
    """The study-shaped table: index = the row axes' labels, columns = the column axis' labels."""
    import pandas as pd

    manifest = read_manifest(sweep_dir)
    spec = manifest["table"]
    value = value or spec["value"]
    cells = pd.DataFrame(sweep_status(sweep_dir))
    if value not in cells:
        cells[value] = math.nan
    cells.loc[cells["status"] != "done", value] = math.nan
    order = {a["name"]: a["labels"] for a in manifest["axes"]}
    rows, col = spec["rows"], spec["columns"]
    if col is None:
        return cells.set_index(rows or ["cell"])[[value]] if rows else cells[[value]]
    for name in [*rows, col]:   # keep the file's order of values, not alphabetical
        cells[name] = pd.Categorical(cells[name], categories=order[name], ordered=True)
    if not rows:
        return cells.set_index(col)[[value]].T
    table = cells.pivot_table(index=rows, columns=col, values=value, aggfunc="first", observed=True, dropna=False)
    return table.reindex(columns=[c for c in order[col] if c in table.columns])


def markdown(table, digits: int = 4) -> str:
    """A Markdown table with the best (lowest) value of each row in bold, as the README shows it."""
    head = [" / ".join(map(str, table.index.names)) if table.index.names != [None] else "", *map(str, table.columns)]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * len(table.columns)]
    for idx, row in table.iterrows():
        label = " ".join(map(str, idx)) if isinstance(idx, tuple) else str(idx)
        finite = [v for v in row if isinstance(v, float) and math.isfinite(v)]
        best = min(finite) if finite else None

        def fmt(v: Any) -> str:
            if not isinstance(v, float) or not math.isfinite(v):
                return "–"      # failed or not run: cells.csv and report.html say which
            text = f"{v:#.{digits}g}"
            return f"**{text}**" if v == best else text
        lines.append(f"| {label} | " + " | ".join(fmt(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def figure(table, value: str):
    """A heatmap of the table (rows x columns), values written in the cells."""
    import plotly.graph_objects as go

    ylabels = [" ".join(map(str, i)) if isinstance(i, tuple) else str(i) for i in table.index]
    z = table.to_numpy(dtype=float)
    text = [[("–" if not math.isfinite(v) else f"{v:.4g}") for v in row] for row in z]
    fig = go.Figure(go.Heatmap(z=z, x=[str(c) for c in table.columns], y=ylabels, text=text,
                               texttemplate="%{text}", colorscale="Viridis", colorbar={"title": value}))
    fig.update_layout(title=f"{value} per cell", yaxis={"autorange": "reversed"}, height=200 + 28 * len(ylabels))
    return fig


def write_results(sweep_dir: str | os.PathLike) -> dict[str, Path]:
    """Write cells.csv, table.csv, table.md, table.html (figure) and report.html into the sweep directory."""
    import pandas as pd


    sweep_dir = Path(sweep_dir)
    manifest = read_manifest(sweep_dir)
    value = manifest["table"]["value"]
    status = pd.DataFrame(sweep_status(sweep_dir))
    table = sweep_table(sweep_dir)
    out = {name: sweep_dir / name for name in (CELLS_CSV, TABLE_CSV, TABLE_MD, FIGURE_HTML, REPORT_HTML)}
    with atomic_file(out[CELLS_CSV]) as tmp:
        status.to_csv(tmp, index=False)
    with atomic_file(out[TABLE_CSV]) as tmp:
        table.to_csv(tmp)
    with atomic_file(out[TABLE_MD]) as tmp:
        tmp.write_text(markdown(table))
    try:
        from plotly.offline import get_plotlyjs
    except ImportError:
        log.warning("plotly is not installed: wrote the CSV and Markdown tables, not the figure and report")
        return {k: v for k, v in out.items() if k in (CELLS_CSV, TABLE_CSV, TABLE_MD)}
    fig = figure(table, value)
    with atomic_file(out[FIGURE_HTML]) as tmp:
        fig.write_html(tmp, include_plotlyjs=True)
    done = int((status["status"] == "done").sum())
    failed = status[status["status"] != "done"][["cell", "status", "attempts", "error"]]
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    name = html.escape(manifest["name"])
    links = "".join(f"<li><a href='{html.escape(c)}/report.html'>{html.escape(c)}</a></li>"
                    for c in status.loc[status["status"] == "done", "cell"])
    parts = [f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>sweep {name}</title>",
             f"<script>{get_plotlyjs()}</script></head><body style='font-family:system-ui;max-width:1200px;"
             "margin:2em auto'>", f"<h1>sweep {name}</h1><p>{when}: {done} of {len(status)} cells done, "
             f"{len(failed)} not done</p>", f"<h2>{html.escape(value)}</h2>",
             table.to_html(float_format=lambda v: f"{v:.4g}", na_rep="–", border=0),
             fig.to_html(full_html=False, include_plotlyjs=False)]
    if len(failed):
        parts += ["<h2>Cells not done</h2>", failed.to_html(index=False, border=0)]
    parts += ["<h2>Runs</h2><ul>", links, "</ul>", "<h2>All cells</h2>",
              status.drop(columns=["run_dir", "progress", "message"]).to_html(index=False, border=0, float_format=lambda v: f"{v:.5g}"),
              "</body></html>"]
    with atomic_file(out[REPORT_HTML]) as tmp:
        tmp.write_text("\n".join(parts))
    return out
