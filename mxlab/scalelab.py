"""The scale lab: every MX scale rule side by side on a model's weights, per layer.

For one weight (out, in) and each rule: the fraction of blocks whose maximum clips (amax / 2^e >
max_norm), the fraction of nonzero elements flushed to zero, the histogram of block exponents,
the weight error and, given the layer's calibration inputs, the output error x W^T vs x Q^T.
``scale_lab_model`` runs it over the decoder Linears that ``plan`` names, with inputs captured
from a few calibration sequences; ``plots.scale_lab_figure`` draws one layer's rows.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from .errors import MxlabError
from .formats import FORMATS, SCALE_RULES, canonical_format, is_mx, pack
from .progress import ProgressFn, report
from .ptq.plan import plan
from .recipe import Recipe
import torch.nn as nn


MAX_TOKENS = 2048   # calibration tokens per layer for the output error


def _sqnr(err: float, ref: float) -> float:
    return math.inf if err == 0 else (10 * math.log10(ref / err) if ref > 0 else -math.inf)


@torch.no_grad()
def scale_rule_rows(w: torch.Tensor, fmt: str, block_size: int = 32, rounding: str = "nearest",
                    rules: Optional[Sequence[str]] = None, x: Optional[torch.Tensor] = None,
                    module: str = "") -> list[dict]:
    """One row per scale rule for weight w (out, in), blocks along in: clipped_block_frac, flushed_frac,
    exp_values / exp_counts, weight_mse / weight_sqnr_db, and output_mse / output_sqnr_db when the
    layer's inputs x (n, in) are given (NaN otherwise)."""

    if not is_mx(fmt):
        raise MxlabError(f"the scale lab compares MX scale rules; {fmt} has no E8M0 block scales (pick an mx* format)")
    if w.dim() != 2:
        raise MxlabError(f"scale lab: expected a (out, in) weight, got shape {tuple(w.shape)}")
    f = FORMATS[canonical_format(fmt)]
    rules = list(SCALE_RULES if rules is None else rules)
    wf = w.detach().float()
    out_f, in_f = wf.shape
    pad = (-in_f) % block_size
    amax = torch.nn.functional.pad(wf.abs(), (0, pad)).reshape(out_f, -1, block_size).amax(-1)  # (out, nb)
    xs = None if x is None else x.detach().float().to(wf.device)
    y = None if xs is None else xs @ wf.T                                                   # (n, out)
    rows = []
    for rule in rules:
        p = pack(wf, f.name, block_size, -1, rounding, rule)
        q = p.dequantize()
        e = p.tensors["scales"].to(torch.int32).reshape(out_f, -1) - 127                    # (out, nb)
        clipped = amax > f.max_norm * torch.ldexp(torch.ones(e.shape, device=e.device), e)
        values, counts = torch.unique(e, return_counts=True)
        err = float((wf - q).double().square().sum())
        row = dict(module=module, format=f.name, block_size=block_size, rounding=rounding, scale_rule=rule,
                   clipped_block_frac=float(clipped.float().mean()),
                   flushed_frac=float(((wf != 0) & (q == 0)).sum()) / max(1, int((wf != 0).sum())),
                   exp_values=values.tolist(), exp_counts=counts.tolist(),
                   weight_mse=err / wf.numel(), weight_sqnr_db=_sqnr(err, float(wf.double().square().sum())),
                   output_mse=math.nan, output_sqnr_db=math.nan)
        if xs is not None:
            oerr = float((xs @ q.T - y).double().square().sum())
            row.update(output_mse=oerr / y.numel(), output_sqnr_db=_sqnr(oerr, float(y.double().square().sum())))
        rows.append(row)
    return rows


class _Captured(Exception):
    """Raised by a capture hook once every layer has its tokens, to end the forward pass early."""


@torch.no_grad()
def scale_lab_model(model: nn.Module, fmt: str, block_size: int = 32, rounding: str = "nearest", *,
                    tokens: Optional[torch.Tensor] = None, layers: Optional[Sequence[str]] = None,
                    rules: Optional[Sequence[str]] = None, max_tokens: int = MAX_TOKENS,
                    progress: Optional[ProgressFn] = None) -> list[dict]:
    """Rows of ``scale_rule_rows`` for every decoder Linear of the (floating-point) model, or those named
    in ``layers`` (full names); ``tokens`` (N, L) token ids give each layer's inputs for the output error."""

    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens <= 1_000_000:
        raise MxlabError(f"max_tokens must be an integer in [1, 1000000], got {max_tokens!r}")
    targets = [t for t in plan(model, Recipe(weights=fmt, acts="none", block_size=block_size)) if t.kind == "linear"]
    if layers is not None:
        wanted = set(layers)
        unknown = wanted - {t.name for t in targets}
        if unknown:
            raise MxlabError(f"scale lab: {sorted(unknown)[:3]} are not decoder Linears of this model; "
                             f"e.g. {targets[0].name if targets else 'none'}")
        targets = [t for t in targets if t.name in wanted]
    inputs: dict[str, torch.Tensor] = {}
    if tokens is not None:
        hooks = []

        def full() -> bool:
            return all(inputs.get(t.name) is not None and inputs[t.name].shape[0] >= max_tokens for t in targets)

        for t in targets:
            def hook(_m, args, name=t.name):
                x = args[0].reshape(-1, args[0].shape[-1])
                have = inputs.get(name)
                room = max_tokens - (0 if have is None else have.shape[0])
                if room > 0:
                    inputs[name] = x[:room].float() if have is None else torch.cat([have, x[:room].float()])
                if full():
                    raise _Captured    # every input is in: the rest of the forward pass would be wasted
            hooks.append(t.module.register_forward_pre_hook(hook))
        try:
            device = next(model.parameters()).device
            with torch.no_grad():
                for i in range(tokens.shape[0]):
                    try:
                        model(tokens[i:i + 1].to(device))
                    except _Captured:
                        break
        finally:
            for h in hooks:
                h.remove()
    rows: list[dict] = []
    for k, t in enumerate(targets):
        rows += scale_rule_rows(t.module.weight, fmt, block_size, rounding, rules, inputs.get(t.name), t.name)
        report(progress, (k + 1) / len(targets), f"scale lab: {t.name}")
    return rows


# ----------------------------------------------------------------------------- a run's compact section
RUN_MAX_ELEMENTS = 1 << 18   # weights per layer a run reads (8192 blocks of 32); wider layers: evenly strided rows
SECTION_DIGITS = 5           # significant digits kept in results.json


def _short(v: float) -> float | None:
    """A number for JSON: SECTION_DIGITS significant digits; NaN -> None (inf stays: a lossless layer)."""
    return None if v != v else float(f"{v:.{SECTION_DIGITS}g}")


@torch.no_grad()
def recipe_scale_lab(model: nn.Module, recipe: Recipe, progress: Optional[ProgressFn] = None) -> Optional[dict]:
    """The compact "scale_lab" section of a run: for every decoder Linear whose weights the recipe puts in an
    MX format, each rule's clipped-block fraction, flushed fraction and weight SQNR, plus the model-wide
    exponent histogram per rule; per weight only (no forward pass). None when no weight is MX.

    Read on the weights as given (call it before the recipe's steps: rotate/SmoothQuant/AWQ rescale them,
    GPTQ updates them while quantizing). Layers over RUN_MAX_ELEMENTS weights are read on evenly strided rows."""
    targets = [t for t in plan(model, recipe) if t.kind == "linear" and t.spec.weights != "none"
               and is_mx(t.spec.weights)]
    if not targets:
        return None
    layers, hist = [], {r: {} for r in SCALE_RULES}
    for k, t in enumerate(targets):
        w = t.module.weight
        step = max(1, math.ceil(w.numel() / RUN_MAX_ELEMENTS))
        rows = scale_rule_rows(w[::step], t.spec.weights, t.spec.block_size, t.spec.rounding)
        for r in rows:
            for v, c in zip(r["exp_values"], r["exp_counts"]):
                hist[r["scale_rule"]][v] = hist[r["scale_rule"]].get(v, 0) + c
        layers.append({"module": t.name, "format": rows[0]["format"], "block_size": t.spec.block_size,
                       "rule": t.spec.scale_rule, "rows": f"{math.ceil(w.shape[0] / step)}/{w.shape[0]}",
                       "clipped_block_frac": [_short(r["clipped_block_frac"]) for r in rows],
                       "flushed_frac": [_short(r["flushed_frac"]) for r in rows],
                       "weight_sqnr_db": [_short(r["weight_sqnr_db"]) for r in rows]})
        report(progress, (k + 1) / len(targets), f"scale lab: {t.name}")
    return {"rules": list(SCALE_RULES), "rounding": recipe.rounding, "layers": layers,
            "exp_hist": {r: {"values": sorted(h), "counts": [h[v] for v in sorted(h)]} for r, h in hist.items()},
            "note": "per weight, on the FP weights before the recipe's steps; lists follow 'rules'"}
