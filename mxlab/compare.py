"""Comparing finished runs: a metrics table with deltas against a baseline, per-layer SQNR differences,
warnings when runs are not comparable, figures, and one self-contained HTML comparison report.

A run here is its results.json dict (``rundir.read_results``) plus a label; nothing touches a model.
"""
from __future__ import annotations

import html
from typing import Any, Sequence

from . import plots, tables
from .errors import MxlabError
from .recipe import Recipe
from .report import page_html


# what must match for two runs' perplexities to be comparable: (results key path, what to call it)
_SETTINGS = ((("model",), "model"), (("run", "eval_dataset"), "evaluation set"),
             (("run", "max_eval_windows"), "evaluation windows"), (("run", "eval_seq_len"), "evaluation window length"))


def _get(results: dict, path: Sequence[str]) -> Any:
    for key in path:
        results = (results or {}).get(key) if isinstance(results, dict) else None
    return results


def setting_warnings(runs: Sequence[tuple[str, dict]]) -> list[str]:
    """One sentence per setting the runs differ in (model, evaluation set, windows, window length)."""
    out = []
    for path, what in _SETTINGS:
        values = {label: _get(res, path) for label, res in runs}
        if len({str(v) for v in values.values()}) > 1:
            seen = ", ".join(f"{v if v is not None else 'all'} ({label.split(' ', 1)[0]})" for label, v in values.items())
            out.append(f"The runs differ in {what}: {seen}. Their perplexities are not directly comparable.")
    return out


def metrics_table(runs: Sequence[tuple[str, dict]], baseline: int = 0):
    """One row per run: model, recipe, evaluation, bits, perplexities and KL, with deltas against run ``baseline``."""
    import pandas as pd

    if not 0 <= baseline < len(runs):
        raise MxlabError(f"baseline {baseline} is not one of the {len(runs)} runs; pick one of the compared runs")
    rows = []
    for label, res in runs:
        m, r, recipe = res.get("metrics") or {}, res.get("run") or {}, res.get("recipe") or {}
        steps = "+".join(s.get("name", "?") for s in recipe.get("steps") or []) or "rtn"
        ppl_fp, ppl_q = m.get("ppl_fp"), m.get("ppl_quant")
        rows.append({"run": label, "model": res.get("model"),
                     "recipe": f"W-{recipe.get('weights')} A-{recipe.get('acts')} b{recipe.get('block_size')} {steps}",
                     "evaluation": f"{r.get('eval_dataset')} x{r.get('max_eval_windows') or 'all'}",
                     "bits per weight": m.get("bits_per_weight"), "perplexity FP": ppl_fp,
                     "perplexity quantized": ppl_q,
                     "change vs FP (%)": 100 * (ppl_q / ppl_fp - 1) if ppl_fp and ppl_q else None,
                     "KL (nats/token)": m.get("kl"), "top-1 agreement": m.get("top1"),
                     **zero_shot_columns(m.get("zero_shot"))})
    df = pd.DataFrame(rows)
    base = df.iloc[baseline]
    for col, new in (("perplexity quantized", "Δ perplexity vs baseline"), ("KL (nats/token)", "Δ KL vs baseline"),
                     ("bits per weight", "Δ bits vs baseline")):
        df[new] = pd.to_numeric(df[col], errors="coerce") - pd.to_numeric(pd.Series([base[col]]), errors="coerce")[0]
    return df


def zero_shot_columns(zero_shot: dict | None) -> dict[str, float]:
    """{"arc_easy/acc": quantized, "arc_easy/acc FP": FP, ...} from a run's metrics["zero_shot"] (stderr and n left out)."""
    out: dict[str, float] = {}
    if not zero_shot:
        return out
    fp = zero_shot.get("fp") or {}
    for task, row in (zero_shot.get("quant") or {}).items():
        for metric, value in row.items():
            if metric.endswith("_stderr") or metric == "n":
                continue
            out[f"{task}/{metric}"] = value
            out[f"{task}/{metric} FP"] = (fp.get(task) or {}).get(metric)
    return out


def final_sqnr(results: dict):
    """Series module -> output SQNR (dB) after the last step that touched it."""
    rec = tables.records_table(results.get("records") or [])
    return rec.groupby("module", sort=False)["sqnr_after"].last().astype(float)


def layer_deltas(runs: Sequence[tuple[str, dict]], baseline: int = 0):
    """Modules x runs table of final SQNR minus the baseline's, sorted by the largest absolute difference."""
    import pandas as pd

    finals = {label: final_sqnr(res) for label, res in runs}
    table = pd.DataFrame(finals)
    base = table.iloc[:, baseline]
    deltas = table.sub(base, axis=0).drop(columns=table.columns[baseline])
    order = deltas.abs().max(axis=1).sort_values(ascending=False).index
    return deltas.loc[order]


def figures(runs: Sequence[tuple[str, dict]], baseline: int = 0) -> dict[str, Any]:
    """'layers' (SQNR deltas: bars for two runs, a heatmap for more) and 'pareto' (perplexity vs bits)."""
    import pandas as pd

    if len(runs) < 2:
        raise MxlabError("Pick two or more runs to compare (run the recipe again with other settings first).")
    deltas = layer_deltas(runs, baseline)
    base_label = runs[baseline][0].split(" ", 1)[0]
    ids = {label: label.split(" ", 1)[0] for label, _ in runs}
    frame = pd.DataFrame([dict(name=ids[label], bits_per_weight=(res.get("metrics") or {}).get("bits_per_weight"),
                               ppl=(res.get("metrics") or {}).get("ppl_quant")) for label, res in runs])
    return {"layers": plots.sqnr_delta_chart(deltas.rename(columns=ids), base_label),
            "pareto": plots.pareto_chart(frame.dropna())}


def comparison_html(runs: Sequence[tuple[str, dict]], baseline: int = 0, title: str = "mxlab comparison") -> str:
    """One self-contained HTML page: warnings, the metrics table with deltas, the figures, the recipes."""
    figs = figures(runs, baseline)
    warn = "".join(f"<p class=warn>{html.escape(w)}</p>" for w in setting_warnings(runs))
    table = metrics_table(runs, baseline)
    deltas = layer_deltas(runs, baseline).head(40).reset_index().rename(columns={"index": "module"})
    body = [f"<p class=meta>Baseline: {html.escape(runs[baseline][0])}</p>", warn, "<h2>Metrics</h2>",
            _frame_html(table), ("Per-layer output SQNR", figs["layers"]), ("Perplexity vs bits", figs["pareto"]),
            "<h2>Largest per-layer SQNR differences (dB, run minus baseline)</h2>", _frame_html(deltas),
            "<h2>Recipes</h2>"]
    for label, res in runs:
        body.append(f"<h3>{html.escape(label)}</h3><pre>{html.escape(_yaml(res.get('recipe') or {}))}</pre>")
    return page_html(title, body)


def _yaml(recipe: dict) -> str:

    try:
        return Recipe.from_dict(recipe).to_yaml()
    except MxlabError:
        return str(recipe)


def _frame_html(df) -> str:
    return "<div class=scroll>" + df.to_html(index=False, border=0, na_rep="", float_format=lambda v: f"{v:.4g}") + "</div>"
