"""Layer sensitivity: quantize one module (or one block) at a time, everything else FP, and measure
how far the model moves on a small evaluation slice (KL to the FP model, perplexity change).

Each unit gets the recipe's formats with plain round-to-nearest (no SmoothQuant/AWQ/GPTQ): the
weight is fake-quantized in place and the input is quantized on the fly (blocks along
in_features, like QuantLinear), then restored exactly. Results are cached in memory per
(sha256 of every weight and buffer, recipe, granularity, evaluation slice), at most ``CACHE_SIZE``
entries (least recently used dropped first).

Rows returned (one per unit, most sensitive first):
    rank, unit, kind ("module" | "block"), block, n_modules, weights, acts, kl, ppl, ppl_fp, d_ppl
"""
from __future__ import annotations

import hashlib
import logging
import math
from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import MxlabError
from .formats import quantize
from .progress import ProgressFn, pulse, report
from .ptq.plan import plan

log = logging.getLogger(__name__)

CACHE_SIZE = 8
_CACHE: "OrderedDict[tuple, list[dict]]" = OrderedDict()


def clear_cache() -> None:
    """Forget every cached sensitivity result."""
    _CACHE.clear()


def _windows(tokens: torch.Tensor, seq_len: int, max_windows: int) -> torch.Tensor:
    """(N, L) evaluation windows: a 2-D batch as given, or 1-D tokens cut into non-overlapping windows."""
    if tokens.dim() == 2:
        return tokens[:max_windows]
    n = min(max_windows, tokens.numel() // seq_len)
    if n == 0:
        raise MxlabError(f"sensitivity needs at least seq_len={seq_len} evaluation tokens, got {tokens.numel()}; "
                         "pass more text or a smaller seq_len")
    return tokens[: n * seq_len].reshape(n, seq_len)


def _units(model: nn.Module, recipe: Any, granularity: str) -> list[dict]:
    """The decoder Linears the plan quantizes, grouped per module or per block."""
    by_block: dict[int, tuple[str, list]] = {}      # block index -> (block prefix, members)
    for t in plan(model, recipe):
        if t.kind == "linear":
            prefix = t.name[: -len(t.local) - 1]        # model.layers.3.mlp.up_proj -> model.layers.3
            by_block.setdefault(t.block, (prefix, []))[1].append((t.name, t.module, t.spec))
    units = []
    for i, (prefix, members) in by_block.items():
        if granularity == "module":
            units += [dict(unit=full, kind="module", block=i, members=[(full, m, s)]) for full, m, s in members]
        else:
            units.append(dict(unit=prefix, kind="block", block=i, members=members))
    if not units:
        raise MxlabError("no Linear in the decoder blocks is quantized by this recipe (or the model is already "
                         "quantized); pass the FP model and a recipe whose formats are not 'none'")
    return units


class _RTN:
    """Context manager: RTN-quantize the members' weights and inputs, restore them on exit."""

    def __init__(self, members: list):
        self.members, self.saved, self.hooks = members, [], []

    def __enter__(self):
        for _, m, spec in self.members:
            self.saved.append(m.weight.data.clone())
            if spec.weights not in (None, "none"):
                m.weight.data = quantize(m.weight.data, spec.weights, **spec.quant_kwargs(spec.weights))
            if spec.acts not in (None, "none"):
                self.hooks.append(m.register_forward_pre_hook(
                    lambda _m, args, f=spec.acts, kw=spec.quant_kwargs(spec.acts): (quantize(args[0], f, **kw),
                                                                                   *args[1:])))
        return self

    def __exit__(self, *exc):
        for h in self.hooks:
            h.remove()
        for (_, m, _), w in zip(self.members, self.saved):
            m.weight.data = w
        return False


@torch.no_grad()
def _logprobs(model: nn.Module, windows: torch.Tensor, batch_size: int, beat=lambda: None) -> torch.Tensor:
    """Log-softmax of the model's logits, (N, L, V) float32 on the CPU; ``beat()`` per batch (cancellation)."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(windows), batch_size):
        beat()
        out.append(F.log_softmax(model(input_ids=windows[i:i + batch_size].to(device)).logits.float(), -1).cpu())
    return torch.cat(out)


def _ppl(logp: torch.Tensor, windows: torch.Tensor) -> float:
    """Perplexity of next-token prediction inside the windows."""
    nll = -logp[:, :-1].gather(-1, windows[:, 1:, None].cpu()).mean()
    return math.exp(float(nll))


def _kl(logp_fp: torch.Tensor, logp_q: torch.Tensor) -> float:
    """Mean per-token KL(FP || quantized) in nats."""
    return float((logp_fp.exp() * (logp_fp - logp_q)).sum(-1).mean())


def weights_digest(model: nn.Module) -> str:
    """sha256 over every parameter and buffer (name, dtype, shape, bytes): any changed weight changes it."""
    h = hashlib.sha256()
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


AUTO_MODULE_LIMIT = 64    # "auto": per module up to this many quantized modules, per block above


def _granularity(model: nn.Module, recipe: Any, granularity: str) -> str:
    """'module' or 'block'; 'auto' picks per module for small models, per block above AUTO_MODULE_LIMIT modules."""
    if granularity not in ("module", "block", "auto"):
        raise MxlabError(f"granularity must be 'module', 'block' or 'auto', got {granularity!r}")
    if granularity != "auto":
        return granularity
    return "module" if len(_units(model, recipe, "module")) <= AUTO_MODULE_LIMIT else "block"


def sensitivity_cost(model: nn.Module, recipe: Any, tokens: torch.Tensor, *, granularity: str = "auto",
                     seq_len: int = 128, max_windows: int = 4) -> dict:
    """What ``layer_sensitivity`` will cost before it starts: units x evaluation windows forward passes.

    Returns dict(granularity, units, windows, seq_len, forwards = (units + 1) x windows (the FP pass
    included), tokens = forwards x seq_len).
    """
    gran = _granularity(model, recipe, granularity)
    n_units = len(_units(model, recipe, gran))
    windows = _windows(tokens.long(), seq_len, max_windows)
    forwards = (n_units + 1) * len(windows)
    return dict(granularity=gran, units=n_units, windows=len(windows), seq_len=int(windows.shape[1]),
                forwards=forwards, tokens=forwards * int(windows.shape[1]))


def layer_sensitivity(model: nn.Module, recipe: Any, tokens: torch.Tensor, *, granularity: str = "auto",
                      rank_by: str = "kl", seq_len: int = 128, max_windows: int = 4, batch_size: int = 4,
                      model_id: str | None = None, progress: ProgressFn | None = None) -> list[dict]:
    """Quantize one unit at a time (RTN, recipe formats), measure KL and perplexity change; ranked rows.

    ``granularity`` "auto" (default): per module up to AUTO_MODULE_LIMIT modules, per block above (see
    ``sensitivity_cost`` for the price before starting). ``progress`` may raise ``Cancelled``: the unit
    being measured is restored before the exception leaves.
    """
    granularity = _granularity(model, recipe, granularity)
    if rank_by not in ("kl", "d_ppl"):
        raise MxlabError(f"rank_by must be 'kl' or 'd_ppl', got {rank_by!r}")
    windows = _windows(tokens.long(), seq_len, max_windows)
    model_id = model_id or getattr(getattr(model, "config", None), "_name_or_path", "") or f"object-{id(model)}"
    recipe_key = recipe.to_json() if hasattr(recipe, "to_json") else repr(recipe)
    digest = hashlib.sha1(windows.cpu().numpy().tobytes()).hexdigest()
    key = (weights_digest(model), recipe_key, granularity, rank_by, digest)
    if key in _CACHE:
        log.info("sensitivity: cached result for %s", model_id)
        _CACHE.move_to_end(key)
        return [dict(r) for r in _CACHE[key]]

    units = _units(model, recipe, granularity)
    was_training = model.training
    model.eval()
    try:
        logp_fp = _logprobs(model, windows, batch_size, pulse(progress, 0.0, "sensitivity: FP model"))
        ppl_fp = _ppl(logp_fp, windows)
        rows = []
        for j, u in enumerate(units):
            report(progress, j / len(units), f"sensitivity: {u['unit']}")
            with _RTN(u["members"]):
                logp_q = _logprobs(model, windows, batch_size, pulse(progress, j / len(units), f"sensitivity: {u['unit']}"))
            ppl = _ppl(logp_q, windows)
            spec = u["members"][0][2]
            rows.append(dict(unit=u["unit"], kind=u["kind"], block=u["block"], n_modules=len(u["members"]),
                             weights=spec.weights, acts=spec.acts, kl=_kl(logp_fp, logp_q), ppl=ppl,
                             ppl_fp=ppl_fp, d_ppl=ppl - ppl_fp))
        report(progress, 1.0, "sensitivity: done")
    finally:
        model.train(was_training)
    rows.sort(key=lambda r: r[rank_by], reverse=True)
    rows = [{"rank": i + 1, **r} for i, r in enumerate(rows)]
    _CACHE[key] = rows
    while len(_CACHE) > CACHE_SIZE:
        _CACHE.popitem(last=False)
    return [dict(r) for r in rows]


def sensitivity_table(rows: list[dict]):
    """The ranked rows as a DataFrame (pandas imported lazily)."""
    import pandas as pd

    cols = ["rank", "unit", "kind", "block", "n_modules", "weights", "acts", "kl", "ppl", "ppl_fp", "d_ppl"]
    return pd.DataFrame(rows, columns=cols)
