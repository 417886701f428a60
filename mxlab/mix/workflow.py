"""``python -m mxlab mix``: probe, solve, write the frontier and the chosen recipe; optionally run it.

DIR receives ``frontier.json`` (every Pareto point, the uniform references, the chosen point and
its assignment, measured points), ``frontier.html`` (the chart and the assignment grid),
``recipe.yaml`` (the base recipe with overrides implementing the chosen point) and, with
``run=True``, ``run/`` (a normal run directory of that recipe).
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from ..atomic import atomic_directory
from ..data import calibration_batches
from ..errors import MxlabError
from ..jsonable import to_jsonable
from ..models import load_model
from ..progress import ProgressFn, report, scaled
from ..runner import run_experiment
from .assign import Constraints
from .frontier import Frontier, build_frontier
from .probe import MAX_SEQ_LEN, MAX_WINDOWS, format_sensitivity


log = logging.getLogger(__name__)


def mix_frontier(source: str | os.PathLike | None, recipe: Any, formats: list[str], *,
                 constraints: Constraints | None = None, probe_windows: int = 8, probe_seq_len: int = 256,
                 method: str = "rtn", device: str | None = None, allow_pickle: bool = False,
                 trust_remote_code: bool = False, cache_dir: str | os.PathLike | None = None,
                 progress: ProgressFn | None = None) -> tuple[Frontier, Any]:
    """Load ``source``, probe every module x format on calibration windows, solve: (frontier, tokenizer)."""
    if not 1 <= probe_windows <= MAX_WINDOWS or not 2 <= probe_seq_len <= MAX_SEQ_LEN:
        raise MxlabError(f"probe windows must be 1..{MAX_WINDOWS} and probe seq_len 2..{MAX_SEQ_LEN}")
    report(progress, 0.0, "loading model")
    model, tokenizer = load_model(None if source is None else str(source), device=device,
                                  allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    # the probe slice: calibration text (never the evaluation text), its own seed
    windows = calibration_batches(tokenizer, recipe.calib.dataset, probe_windows, probe_seq_len, recipe.seed + 1)
    calib = (calibration_batches(tokenizer, recipe.calib.dataset, recipe.calib.n_samples, recipe.calib.seq_len,
                                 recipe.seed) if method == "recipe" else None)
    sens = format_sensitivity(model, recipe, formats, windows, method=method, tokenizer=tokenizer,
                              calib_tokens=calib, cache_dir=cache_dir, progress=scaled(progress, 0.05, 1.0))
    return build_frontier(sens, recipe, constraints), tokenizer


def write_mix(frontier: Frontier, budget: float, out_dir: str | os.PathLike, *, source=None, run: bool = False,
              eval_dataset: str = "tinystories", max_eval_windows: int | None = None, eval_seq_len: int | None = None,
              device: str | None = None, overwrite: bool = False, allow_pickle: bool = False,
              trust_remote_code: bool = False, progress: ProgressFn | None = None) -> dict:
    """Write frontier.json/.html and recipe.yaml for ``budget`` into ``out_dir`` (atomically); ``run``
    also runs the chosen recipe into ``out_dir/run`` and adds the measured point. Returns the summary."""

    point = frontier.at_budget(budget)
    recipe = frontier.recipe(point)
    summary: dict[str, Any] = dict(budget=budget, bits_per_weight=frontier.bits_per_weight(point.bits),
                                   predicted_kl=frontier.predicted_kl(point.loss), n_points=len(frontier.points),
                                   overrides=len(recipe.overrides))
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        (tmp / "recipe.yaml").write_text(recipe.to_yaml())
        if run:
            outcome = run_experiment(source, recipe, eval_dataset=eval_dataset, out_dir=tmp / "run",
                                     max_eval_windows=max_eval_windows, eval_seq_len=eval_seq_len, device=device,
                                     allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
                                     progress=scaled(progress, 0.0, 0.95))
            row = frontier.add_measured(f"budget {budget:g}", frontier.assignment(point), outcome.metrics)
            if not math.isclose(row["measured_bits_per_weight"], row["bits_per_weight"], rel_tol=0, abs_tol=1e-9):
                raise RuntimeError(f"predicted {row['bits_per_weight']} bits/weight but the run stores "
                                   f"{row['measured_bits_per_weight']}: the storage model is wrong (a bug)")
            summary.update(kl=row["kl"], ppl=row["ppl"], measured_bits_per_weight=row["measured_bits_per_weight"])
        data = frontier.to_dict(budget)
        (tmp / "frontier.json").write_text(json.dumps(to_jsonable(data), indent=1))
        try:
            from .figures import assignment_grid, frontier_chart
        except ImportError:
            log.warning("plotly is not installed: frontier.html not written")
        else:
            html = frontier_chart(data, budget).to_html(include_plotlyjs=True, full_html=True)
            grid = assignment_grid(data["chosen"]["grid"], data["formats"]).to_html(include_plotlyjs=False,
                                                                                    full_html=False)
            (tmp / "frontier.html").write_text(html.replace("</body>", grid + "</body>"))
        report(progress, 1.0, "mix: written")
    summary["out_dir"] = str(Path(out_dir))
    return summary
