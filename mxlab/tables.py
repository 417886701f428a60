"""Tidy tables (pandas, imported lazily) of what a run recorded: step records and the statistics
of ``mxlab.ptq.statistics`` (as ``QuantResult.stats`` or loaded back from results.json).

Tables (one row each):
    records_table        module x step: block, step, module, mse_before, mse_after, sqnr_before,
                         sqnr_after, d_mse, d_sqnr, seconds, step_seconds, detail_<key>...
    activation_table     module x stage: module, block, stage, n_tokens, in_features, outlier_ratio,
                         kurtosis, absmax_max, absmax_median, top_channels (str "i,j,...")
    activation_channel_table   module x stage x channel (long): module, block, stage, channel,
                         absmax, mean_abs (+ channel_end, peak_channel when channels are binned)
    weights_table        module: module, block, format, block_size, out_features, in_features, mse,
                         sqnr_db, flushed_frac, n_blocks, saturated_frac, headroom_bits
    weight_channel_table module x output channel (long): module, block, channel, w_min, w_max
    scale_table          tensor x module x stage x exponent (long, MX formats only): tensor ("weights" or
                         "activations"), module, block, stage ("" for weights), format, block_size,
                         exponent, count
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

import torch

from .compact import compact_activation_row, compact_weight_row
from .jsonable import to_jsonable



def _get(obj: Any, name: str, default: Any = None) -> Any:
    """Attribute of a dataclass record, or key of its dict form (records loaded from JSON)."""
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def stat_rows(stats: Any, key: str) -> list[dict]:
    """The list of `key` rows from QuantResult.stats ({"activations": [...], "weights": [...]}) or a list."""
    if stats is None:
        return []
    if isinstance(stats, dict):
        return list(stats.get(key, []))
    return list(stats)


def records_table(records: Iterable[Any]):
    """One row per module x step from StepRecords (dataclasses or dicts), in pipeline order."""
    import pandas as pd

    rows = []
    for order, rec in enumerate(records or []):
        for m in _get(rec, "modules", []) or []:
            row = dict(order=order, block=_get(rec, "block"), step=_get(rec, "step"), module=_get(m, "module"),
                       mse_before=_get(m, "mse_before"), mse_after=_get(m, "mse_after"),
                       sqnr_before=_get(m, "sqnr_before"), sqnr_after=_get(m, "sqnr_after"),
                       seconds=_get(m, "seconds"), step_seconds=_get(rec, "seconds"))
            for key, val in (_get(m, "details", {}) or {}).items():
                scalar = val is None or isinstance(val, (bool, int, float, str))
                row[f"detail_{key}"] = val if scalar else json.dumps(to_jsonable(val))
            rows.append(row)
    cols = ["order", "block", "step", "module", "mse_before", "mse_after", "sqnr_before", "sqnr_after",
            "seconds", "step_seconds"]
    df = pd.DataFrame(rows, columns=cols + sorted({c for r in rows for c in r} - set(cols)))
    df["d_mse"] = df["mse_after"].astype(float) - df["mse_before"].astype(float)
    df["d_sqnr"] = df["sqnr_after"].astype(float) - df["sqnr_before"].astype(float)
    return df


def activation_table(stats: Any):
    """One row per module x stage: outlier summary of the calibration inputs."""
    import pandas as pd

    rows = []
    for s in stat_rows(stats, "activations"):
        absmax = torch.tensor([math.nan if v is None else v for v in s["absmax"]])  # JSON wrote nan as null
        rows.append(dict(module=s["module"], block=s["block"], stage=s["stage"], n_tokens=s["n_tokens"],
                         in_features=s["in_features"], outlier_ratio=s["outlier_ratio"], kurtosis=s["kurtosis"],
                         absmax_max=float(absmax.max()), absmax_median=float(absmax.median()),
                         top_channels=",".join(str(c) for c in s["top_channels"])))
    return pd.DataFrame(rows, columns=["module", "block", "stage", "n_tokens", "in_features", "outlier_ratio",
                                       "kurtosis", "absmax_max", "absmax_median", "top_channels"])


def _rows_of_block(rows: list[dict], block: int | None) -> list[dict]:
    return rows if block is None else [r for r in rows if r["block"] == block]


def activation_channel_table(stats: Any, block: int | None = None, max_channels: int | None = None):
    """Long table, one row per module x stage x input channel (or channel bin): absmax and mean |x|.

    ``block`` keeps one decoder block; ``max_channels`` bins wider modules (``mxlab.compact``), as do
    rows read back from a compacted results.json. Binned tables add ``channel_end`` (last channel of
    the bin) and ``peak_channel`` (the channel holding the bin's max |x|).
    """
    import pandas as pd


    frames = []
    for s in _rows_of_block(stat_rows(stats, "activations"), block):
        if max_channels is not None:
            s = compact_activation_row(s, max_channels)
        d = int(s["in_features"])
        if s.get("binned"):
            lo = list(s["channel_lo"])
            frames.append(pd.DataFrame(dict(module=s["module"], block=s["block"], stage=s["stage"], channel=lo,
                                            channel_end=[b - 1 for b in lo[1:]] + [d - 1], absmax=s["absmax"],
                                            mean_abs=s["mean_abs"], peak_channel=s["peak_channel"])))
        else:
            frames.append(pd.DataFrame(dict(module=s["module"], block=s["block"], stage=s["stage"],
                                            channel=range(len(s["absmax"])), absmax=s["absmax"],
                                            mean_abs=s["mean_abs"])))
    cols = ["module", "block", "stage", "channel", "absmax", "mean_abs"]
    if not frames:
        return pd.DataFrame(columns=cols)
    df = pd.concat(frames, ignore_index=True)
    if "peak_channel" in df:    # a mix of small (unbinned) and binned modules: a channel is its own bin
        df["channel_end"] = df["channel_end"].fillna(df["channel"]).astype(int)
        df["peak_channel"] = df["peak_channel"].fillna(df["channel"]).astype(int)
        cols += ["channel_end", "peak_channel"]
    return df[cols]


_WEIGHT_COLS = ["module", "block", "format", "block_size", "out_features", "in_features", "mse", "sqnr_db",
                "flushed_frac", "n_blocks", "saturated_frac", "headroom_bits", "scale_rule", "clipped_block_frac"]


def weights_table(stats: Any):
    """One row per quantized module: weight error, flush-to-zero, saturation, headroom, the scale rule and
    the fraction of blocks whose maximum clips."""
    import pandas as pd

    return pd.DataFrame([{c: s.get(c) for c in _WEIGHT_COLS} for s in stat_rows(stats, "weights")],
                        columns=_WEIGHT_COLS)


def weight_channel_table(stats: Any, block: int | None = None, max_channels: int | None = None):
    """Long table, one row per module x output channel (or channel bin): the channel's weight range."""
    import pandas as pd


    frames = []
    for s in _rows_of_block(stat_rows(stats, "weights"), block):
        if max_channels is not None:
            s = compact_weight_row(s, max_channels)
        channels = s["channel_lo"] if s.get("binned") else range(len(s["w_min"]))
        frames.append(pd.DataFrame(dict(module=s["module"], block=s["block"], channel=channels,
                                        w_min=s["w_min"], w_max=s["w_max"])))
    cols = ["module", "block", "channel", "w_min", "w_max"]
    return pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)


def scale_table(stats: Any):
    """Long table of MX shared exponents: how many blocks of each weight, and of each module's activations at
    each recorded stage, use each exponent."""
    import pandas as pd

    rows = [dict(tensor=tensor, module=s["module"], block=s["block"], stage=s.get("stage", ""), format=s["format"],
                 block_size=s["block_size"], exponent=int(v), count=int(c))
            for tensor in ("weights", "activations") for s in stat_rows(stats, tensor)
            if s.get("exp_values") is not None for v, c in zip(s["exp_values"], s["exp_counts"])]
    return pd.DataFrame(rows, columns=SCALE_COLUMNS)


SCALE_COLUMNS = ["tensor", "module", "block", "stage", "format", "block_size", "exponent", "count"]


SCALE_LAB_COLS = ["module", "format", "block_size", "rounding", "scale_rule", "clipped_block_frac", "flushed_frac",
                  "weight_mse", "weight_sqnr_db", "output_mse", "output_sqnr_db", "exp_values", "exp_counts"]


def scale_lab_table(rows: Iterable[dict]):
    """The scale lab's rows (``scalelab.scale_lab_model``) as a DataFrame: one row per module x scale rule."""
    import pandas as pd

    return pd.DataFrame([{c: r.get(c) for c in SCALE_LAB_COLS} for r in rows], columns=SCALE_LAB_COLS)


SECTION_COLS = ["module", "format", "block_size", "scale_rule", "chosen", "clipped_block_frac", "flushed_frac",
                "weight_sqnr_db"]


def scale_lab_section_table(section: dict | None):
    """A run's compact "scale_lab" section (``scalelab.recipe_scale_lab``) as long rows: module x rule, with
    ``chosen`` True on the rule the recipe used for that module."""
    import pandas as pd

    rules = (section or {}).get("rules") or []
    rows = [{"module": l["module"], "format": l["format"], "block_size": l["block_size"], "scale_rule": rule,
             "chosen": rule == l.get("rule"), "clipped_block_frac": l["clipped_block_frac"][i],
             "flushed_frac": l["flushed_frac"][i], "weight_sqnr_db": l["weight_sqnr_db"][i]}
            for l in (section or {}).get("layers") or [] for i, rule in enumerate(rules)]
    return pd.DataFrame(rows, columns=SECTION_COLS).astype({c: float for c in SECTION_COLS[-3:]})


def scale_rule_summary(df):
    """Model-wide, per scale rule (rows of ``scale_lab_table`` or ``scale_lab_section_table``): layers, the mean
    over layers of clipped blocks and flushed elements (%) and of weight (and output) SQNR (dB), and how many
    layers the recipe quantized with that rule (when ``chosen`` is known)."""
    import pandas as pd

    agg = {"layers": ("module", "nunique"), "clipped blocks %": ("clipped_block_frac", "mean"),
           "flushed %": ("flushed_frac", "mean"), "weight SQNR dB": ("weight_sqnr_db", "mean")}
    if "output_sqnr_db" in df and df["output_sqnr_db"].astype(float).notna().any():
        agg["output SQNR dB"] = ("output_sqnr_db", "mean")
    if "chosen" in df:
        agg["used by the run (layers)"] = ("chosen", "sum")
    out = df.astype({c: float for c in ("clipped_block_frac", "flushed_frac", "weight_sqnr_db", "output_sqnr_db")
                     if c in df}).groupby("scale_rule", sort=False).agg(**agg).reset_index()
    out[["clipped blocks %", "flushed %"]] *= 100
    return out.rename(columns={"scale_rule": "rule"}) if len(out) else pd.DataFrame(columns=["rule", *agg])


def scale_rule_worst(df, n: int = 10):
    """The ``n`` layers where the recipe's rule falls furthest below the best rule in weight SQNR (rows of
    ``scale_lab_section_table``): rule used, its SQNR and clipped %, the best rule, its SQNR, the gap (dB)."""
    import pandas as pd

    rows = []
    for module, g in df.groupby("module", sort=False):
        sqnr = g["weight_sqnr_db"].astype(float)
        used = g[g["chosen"].astype(bool)]
        if used.empty or sqnr.isna().all():
            continue
        u, best = used.iloc[0], g.loc[sqnr.idxmax()]
        rows.append({"module": module, "rule used": u["scale_rule"], "SQNR dB": u["weight_sqnr_db"],
                     "clipped blocks %": 100 * u["clipped_block_frac"], "best rule": best["scale_rule"],
                     "best SQNR dB": best["weight_sqnr_db"], "gap dB": best["weight_sqnr_db"] - u["weight_sqnr_db"]})
    out = pd.DataFrame(rows, columns=["module", "rule used", "SQNR dB", "clipped blocks %", "best rule",
                                      "best SQNR dB", "gap dB"])
    return out.sort_values("gap dB", ascending=False, kind="stable").head(n).reset_index(drop=True)


def to_csv(df, path: str | Path) -> Path:
    """Write one table as CSV atomically (temp file + rename); returns the path."""
    import os
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            df.to_csv(f, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def csv_name(table: str) -> str:
    """The file name write_tables gives a table: 'records' -> 'records.csv'."""
    return f"{table}.csv"


def write_tables(out_dir: str | Path, records: Any = None, stats: Any = None) -> dict[str, Path]:
    """Write every table that has rows as <out_dir>/<name>.csv; returns {name: path}."""
    tables = {"records": records_table(records), "activations": activation_table(stats),
              "activation_channels": activation_channel_table(stats), "weights": weights_table(stats),
              "weight_channels": weight_channel_table(stats), "scales": scale_table(stats)}
    return {name: to_csv(df, Path(out_dir) / csv_name(name)) for name, df in tables.items() if len(df)}
