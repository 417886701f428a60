"""The run directory: results.json, recipe.yaml, the CSV tables, report.html and model/ (the packed checkpoint).

Written atomically by ``export_run``; ``read_results`` reads it back for the report and the front ends.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .atomic import atomic_directory
from .checkpoint import save_quantized
from .compact import CHANNEL_BINS, compact_stats
from .errors import MxlabError
from .jsonable import to_jsonable, write_json
from .progress import ProgressFn, report, scaled
from .tables import write_tables

if TYPE_CHECKING:  # runner imports this module: a run-time import would be a cycle
    from .runner import RunOutcome

log = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
RECIPE_FILE = "recipe.yaml"
REPORT_FILE = "report.html"
MODEL_DIR = "model"


def results_dict(outcome: RunOutcome, max_channels: int | None = None) -> dict[str, Any]:
    """The content of results.json: metrics, recipe, model, per-layer records, statistics.

    Per-channel statistics are cut to at most ``max_channels`` bins per module (``mxlab.compact``), so the
    file grows with the number of modules, not with their width; the CSV tables hold every channel.
    """
    result = outcome.result
    info = dict(outcome.info)
    max_channels = CHANNEL_BINS if max_channels is None else max_channels
    extra = {"scale_lab": outcome.scale_lab} if getattr(outcome, "scale_lab", None) else {}
    return to_jsonable({
        "mxlab_version": __version__,
        "model": info.pop("model", None),
        "metrics": outcome.metrics,
        "recipe": result.recipe.to_dict(),
        "run": info,
        "seconds": result.seconds,
        "records": list(result.records),
        "stats": compact_stats(result.stats, max_channels),
        "stats_channel_bins": max_channels,
        **extra,
    })


def write_report_html(results: dict[str, Any], path: Path) -> bool:
    """Write the HTML report from a results dict; False (with a warning) when plotly is missing."""
    try:
        import plotly  # noqa: F401
    except ImportError:
        log.warning("plotly is not installed: skipping %s (pip install plotly, then `python -m mxlab "
                    "report DIR` rebuilds it from results.json)", path.name)
        return False
    from .report import write_report_from_results

    write_report_from_results(results, path)
    return True


def _write_tables(records: Any, stats: Any, directory: Path) -> None:
    try:
        import pandas  # noqa: F401
    except ImportError:
        log.warning("pandas is not installed: skipping the CSV tables (results.json holds the same data)")
        return
    write_tables(directory, records=records, stats=stats)


def export_run(outcome: RunOutcome, out_dir: str | os.PathLike, *, progress: ProgressFn | None = None,
               overwrite: bool = False, save_model: bool = True) -> Path:
    """Write a run atomically: results.json, recipe.yaml, the CSV tables, report.html and model/."""
    results = results_dict(outcome)
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        write_json(tmp / RESULTS_FILE, results)
        (tmp / RECIPE_FILE).write_text(outcome.result.recipe.to_yaml())
        _write_tables(results["records"], outcome.result.stats, tmp)   # every channel: the CSVs are the full data
        report(progress, 0.1, "writing the report")
        write_report_html(results, tmp / REPORT_FILE)
        if save_model:
            report(progress, 0.3, "packing the model")
            save_quantized(outcome.result, outcome.tokenizer, tmp / MODEL_DIR, progress=scaled(progress, 0.3, 1.0))
    log.info("run written to %s", out_dir)
    return Path(out_dir)


def read_results(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Load DIR/results.json (or the file itself) with a clear error when it is missing or broken."""
    path = Path(run_dir)
    path = path if path.suffix == ".json" else path / RESULTS_FILE
    if not path.is_file():
        raise MxlabError(f"{path} not found; give a run directory written by `python -m mxlab run --out DIR`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise MxlabError(f"{path} is not readable JSON ({' '.join(str(e).split())[:120]}); "
                         "run the experiment again") from e
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
        raise MxlabError(f"{path} is not an mxlab results file (no 'metrics' mapping); give the results.json "
                         "written by `python -m mxlab run --out DIR`")
    return data
