"""Sensitivity per module AND per candidate format: the cheap proxy the solver minimizes.

For every decoder Linear the plan quantizes and every candidate weight format, the module's weight
alone is replaced by its quantized version (everything else floating point, activations unquantized)
and the model's KL(FP || probed) is measured on a few calibration windows: the loss as the model
sees it, not a weight-space error. The quantized weights come from round-to-nearest (``method="rtn"``)
or from the recipe's own steps run once per candidate format (``method="recipe"``; steps that keep
the weights in their original basis only, i.e. GPTQ/RTN). A constant ``offset`` (the KL of the
model with only the activations quantized) completes the prediction:

    predicted KL(assignment) = offset + sum over modules of kl[module, format]

Every candidate's storage is measured by packing the weight (``pack(...).nbytes``), so the bits
the solver adds up are the ones a packed checkpoint holds. Results are cached under a key over
every weight byte, the recipe, the formats, the tokens and the probe settings, so a changed model
can never be served a stale answer.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import __version__
from ..atomic import atomic_file
from ..errors import MxlabError
from ..formats import pack, quantize
from ..jsonable import to_jsonable
from ..progress import ProgressFn, report, scaled
from ..ptq.pipeline import quantize_model
from ..ptq.plan import plan
from ..recipe import Recipe, check_format


log = logging.getLogger(__name__)

PROBE_VERSION = 1                      # bump when the measurement changes: old cache entries then miss
MAX_FORMATS = 8
MAX_WINDOWS = 64
MAX_SEQ_LEN = 4096
METHODS = ("rtn", "recipe")
_CACHE: dict[str, "Sensitivity"] = {}


@dataclass
class Sensitivity:
    """Per module x format: predicted KL and exact storage bits; plus the constant offset."""
    formats: list[str]
    modules: list[dict]                # name, block, local, n_weights, acts
    kl: dict[str, dict[str, float]]    # module -> format -> KL(FP || only this module quantized)
    bits: dict[str, dict[str, int]]    # module -> format -> packed storage in bits
    offset: float                      # KL with only activations quantized
    key: str = ""
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-able form (``from_dict`` inverts it)."""
        return dict(formats=self.formats, modules=self.modules, kl=self.kl, bits=self.bits, offset=self.offset,
                    key=self.key, settings=self.settings)

    @classmethod
    def from_dict(cls, d: dict) -> "Sensitivity":
        """Rebuild from ``to_dict``."""
        return cls(**d)

    def rows(self) -> list[dict]:
        """One row per module x format (module, block, local, fmt, kl, bits, bits_per_weight)."""
        return [dict(module=m["name"], block=m["block"], local=m["local"], fmt=f, kl=self.kl[m["name"]][f],
                     bits=self.bits[m["name"]][f], bits_per_weight=self.bits[m["name"]][f] / m["n_weights"])
                for m in self.modules for f in self.formats]


def clear_cache() -> None:
    """Forget every in-memory sensitivity result."""
    _CACHE.clear()


def weights_digest(model: nn.Module) -> str:
    """SHA-256 over every parameter and buffer (name, dtype, shape, bytes)."""
    h = hashlib.sha256()
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        t = t.detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _check(formats: list[str], windows: torch.Tensor, method: str, recipe: Any) -> list[str]:

    if not formats or len(formats) > MAX_FORMATS:
        raise MxlabError(f"give 1 to {MAX_FORMATS} candidate formats, got {len(formats)}")
    fmts = list(dict.fromkeys(check_format(f, "candidate") for f in formats))
    if "none" in fmts:
        raise MxlabError("'none' cannot be a candidate (its size is the model dtype); skip modules with an "
                         "override instead")
    if windows.dim() != 2 or not 1 <= windows.shape[0] <= MAX_WINDOWS or not 2 <= windows.shape[1] <= MAX_SEQ_LEN:
        raise MxlabError(f"probe tokens must be (windows, seq_len) with 1..{MAX_WINDOWS} windows of "
                         f"2..{MAX_SEQ_LEN} tokens, got {tuple(windows.shape)}")
    if method not in METHODS:
        raise MxlabError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if recipe.target_set != {"decoder"}:
        raise MxlabError("mixed formats are chosen for the decoder Linears only; use targets: decoder")
    if method == "recipe":
        bad = [s.name for s in recipe.steps if s.name not in ("gptq", "rtn")]
        if bad:
            raise MxlabError(f"method='recipe' probes GPTQ/RTN weights only; {bad} rescale the model, so a "
                             "module's weights cannot be swapped in alone: use method='rtn' (the run still "
                             "applies the recipe's steps)")
    return fmts


@torch.no_grad()
def _logprobs(model: nn.Module, windows: torch.Tensor, batch_size: int = 4) -> torch.Tensor:
    device = next(model.parameters()).device
    return torch.cat([F.log_softmax(model(input_ids=windows[i:i + batch_size].to(device), use_cache=False)
                                    .logits[:, :-1].float(), -1).cpu() for i in range(0, len(windows), batch_size)])


def _kl(logp_fp: torch.Tensor, logp_q: torch.Tensor) -> float:
    """Mean per-token KL(FP || probed), nats, summed in float64 (a tiny KL must not come out negative)."""
    kl = float(F.kl_div(logp_q.double(), logp_fp.double(), log_target=True, reduction="sum")) / logp_fp[..., 0].numel()
    return max(kl, 0.0)


def _recipe_weights(model, tokenizer, recipe, fmts, targets, calib_tokens, progress) -> dict[str, dict[str, torch.Tensor]]:
    """Quantized weights per module and format from the recipe's own steps, one uniform run per format."""
    if calib_tokens is None:
        raise MxlabError("method='recipe' needs calibration tokens (calib_tokens)")
    out: dict[str, dict[str, torch.Tensor]] = {t.name: {} for t in targets}
    for i, f in enumerate(fmts):
        r = Recipe.from_dict({**recipe.to_dict(), "weights": f, "overrides": []})
        res = quantize_model(copy.deepcopy(model), tokenizer, r, calib_tokens=calib_tokens,
                             progress=scaled(progress, i / len(fmts), (i + 1) / len(fmts)))
        for t in targets:
            out[t.name][f] = res.model.get_submodule(t.name).weight.detach().clone()
    return out


def format_sensitivity(model: nn.Module, recipe: Any, formats: list[str], windows: torch.Tensor, *,
                       method: str = "rtn", tokenizer: Any = None, calib_tokens: torch.Tensor | None = None,
                       batch_size: int = 4, cache_dir: str | Path | None = None,
                       progress: ProgressFn | None = None) -> Sensitivity:
    """KL of each (module, candidate format) alone on ``windows`` (N, L), with exact storage bits; cached."""
    windows = windows.long()
    fmts = _check(list(formats), windows, method, recipe)
    settings = dict(method=method, formats=fmts, n_windows=int(windows.shape[0]), seq_len=int(windows.shape[1]))
    key = hashlib.sha256(json.dumps(dict(
        weights=weights_digest(model), recipe=recipe.to_dict(), settings=settings, version=__version__,
        probe=PROBE_VERSION, tokens=hashlib.sha256(windows.cpu().numpy().tobytes()).hexdigest(),
        calib=None if calib_tokens is None or method == "rtn"
        else hashlib.sha256(calib_tokens.long().cpu().numpy().tobytes()).hexdigest()), sort_keys=True).encode()).hexdigest()
    hit = _cache_get(key, cache_dir)
    if hit is not None:
        return hit

    targets = [t for t in plan(model, recipe) if t.kind == "linear" and t.spec.weights != "none"]
    if not targets:
        raise MxlabError("no decoder Linear is quantized by this recipe; pass the FP model and a recipe "
                         "whose weights are not 'none'")
    qweights = (_recipe_weights(model, tokenizer, recipe, fmts, targets, calib_tokens, scaled(progress, 0, 0.5))
                if method == "recipe" else None)
    probe_progress = scaled(progress, 0.5 if qweights else 0.0, 1.0)
    was_training = model.training
    model.eval()
    kl: dict[str, dict[str, float]] = {}
    bits: dict[str, dict[str, int]] = {}
    try:
        logp_fp = _logprobs(model, windows, batch_size)
        offset = _acts_offset(model, targets, windows, logp_fp, batch_size)
        n, j = len(targets) * len(fmts), 0
        for t in targets:
            s, w = t.spec, t.module.weight
            kl[t.name], bits[t.name] = {}, {}
            saved = w.data
            try:
                for f in fmts:
                    report(probe_progress, j / n, f"sensitivity: {t.name} in {f}")
                    j += 1
                    kw = s.quant_kwargs(f)    # the recipe's rounding and scale rule, as the pipeline uses them
                    q = qweights[t.name][f] if qweights else quantize(saved, f, **kw)
                    bits[t.name][f] = 8 * pack(q, f, **kw).nbytes
                    w.data = q.to(saved.dtype)
                    kl[t.name][f] = _kl(logp_fp, _logprobs(model, windows, batch_size))
            finally:
                w.data = saved
        report(probe_progress, 1.0, "sensitivity: done")
    finally:
        model.train(was_training)
    modules = [dict(name=t.name, block=t.block, local=t.local, n_weights=t.module.weight.numel(), acts=t.spec.acts)
               for t in targets]
    result = Sensitivity(fmts, modules, kl, bits, offset, key, settings)
    _cache_put(key, result, cache_dir)
    return result


def _acts_offset(model, targets, windows, logp_fp, batch_size) -> float:
    """KL with every planned module's input quantized (weights FP): the part no weight choice changes."""
    hooks = []
    for t in targets:
        s = t.spec
        if s.acts != "none":
            hooks.append(t.module.register_forward_pre_hook(
                lambda _m, args, s=s: (quantize(args[0], s.acts, **s.quant_kwargs(s.acts)), *args[1:])))
    if not hooks:
        return 0.0
    try:
        return _kl(logp_fp, _logprobs(model, windows, batch_size))
    finally:
        for h in hooks:
            h.remove()


def _cache_get(key: str, cache_dir) -> Sensitivity | None:
    if key in _CACHE:
        log.info("sensitivity: in-memory cache hit %s", key[:12])
        return Sensitivity.from_dict(copy.deepcopy(_CACHE[key].to_dict()))
    if cache_dir is not None:
        path = Path(cache_dir) / f"sensitivity-{key}.json"
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                log.warning("sensitivity: unreadable cache file %s, measuring again", path)
                return None
            if data.get("key") == key:
                _CACHE[key] = Sensitivity.from_dict(data)
                log.info("sensitivity: cache file hit %s", path)
                return Sensitivity.from_dict(copy.deepcopy(data))
    return None


def _cache_put(key: str, result: Sensitivity, cache_dir) -> None:
    _CACHE[key] = Sensitivity.from_dict(copy.deepcopy(result.to_dict()))
    if cache_dir is not None:
        with atomic_file(Path(cache_dir) / f"sensitivity-{key}.json") as tmp:
            tmp.write_text(json.dumps(to_jsonable(result.to_dict())))
