"""AWQ's scale search scored on the module a scaling group feeds (llm-awq's ``module2inspect``).

llm-awq (``auto_scale._search_module_scale``) scores each alpha on the output of the module the
group's linears belong to: the attention block for q/k/v, the MLP for gate/up. For s =
mean|x|^alpha (normalised, ``awq.scale_candidate``) the group's linears compute
``aq(x / s) @ wq(W * s)^T`` (what folding s would give them) while the rest of the module (o_proj,
down_proj, the attention itself) stays in floating point, and the loss is the MSE of the module's
output against its FP output. Which module that is comes from ``ScalingGroup.module``
(``architectures.py``); this file knows no architecture.

The module runs on whole calibration sequences (attention mixes tokens, so a token sample would
not do): evenly spaced batches holding about ``max_tokens`` tokens.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Callable, Iterator, Sequence

import torch
import torch.nn as nn

from ...errors import MxlabError
from ...progress import Pulse, no_pulse
from ..capture import StopForward
from ..context import BlockContext
from ..qlinear import QuantLinear

Quantizer = Callable[[torch.Tensor], torch.Tensor]


def scale_candidate(x_mean: torch.Tensor, alpha: float) -> torch.Tensor:
    """s = mean|x|^alpha, floored at 1e-4 and normalised so that max(s) * min(s) = 1 (llm-awq)."""
    s = x_mean.pow(alpha).clamp(min=1e-4)
    return s / (s.max() * s.min()).sqrt()


def module_calls(ctx: BlockContext, module: str, max_tokens: int) -> list[tuple[tuple, dict]]:
    """(args, kwargs) the block passes ``module`` for evenly spaced calibration batches, about ``max_tokens``
    tokens in all (at least one batch); caches are dropped so that calls can repeat."""
    mod = ctx.block.get_submodule(module)
    sizes = [h.shape[:-1].numel() for h in ctx.hidden]
    n = min(len(sizes), max(1, round(max_tokens / max(1, max(sizes)))))
    picks = sorted({int(i) for i in torch.linspace(0, len(sizes) - 1, n).round().long()})
    calls: list[tuple[tuple, dict]] = []

    def hook(_m, args, kwargs):
        kw = dict(kwargs)
        for key in ("past_key_value", "past_key_values", "layer_past"):
            if key in kw:
                kw[key] = None
        if "use_cache" in kw:
            kw["use_cache"] = False
        calls.append((tuple(args), kw))
        raise StopForward

    handle = mod.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for b in picks:
            try:
                ctx.call_block(ctx.hidden[b])
            except StopForward:
                pass
    finally:
        handle.remove()
    if not calls:
        raise MxlabError(f"AWQ: the block never called {module}; score on the linears instead (score: linears)")
    return calls


def _output(module: nn.Module, call: tuple[tuple, dict]) -> torch.Tensor:
    out = module(*call[0], **call[1])
    return (out[0] if isinstance(out, (tuple, list)) else out).to(torch.float32)


@contextlib.contextmanager
def _fp_activations(layers: Sequence[QuantLinear]) -> Iterator[None]:
    """Run ``layers`` with activations in floating point (their specs restored afterwards)."""
    specs = [m.spec for m in layers]
    try:
        for m in layers:
            m.spec = dataclasses.replace(m.spec, acts="none")
        yield
    finally:
        for m, spec in zip(layers, specs):
            m.spec = spec


@contextlib.contextmanager
def _scaled(linears: Sequence[QuantLinear], s: torch.Tensor, wquants: Sequence[Quantizer]) -> Iterator[None]:
    """The linears as folding ``s`` would leave them: weight wq(W * s), input divided by s (before the
    activation quantizer); weights and input transforms restored afterwards."""
    saved = [(m.weight.data, m.input_scale) for m in linears]
    try:
        for m, wq in zip(linears, wquants):
            w = m.weight.data
            m.weight.data = wq(w.to(torch.float32) * s.to(w.device)).to(w.dtype)
            m.input_scale = s.clone() if m.input_scale is None else m.input_scale.float() * s.to(m.input_scale.device)
        yield
    finally:
        for m, (w, scale) in zip(linears, saved):
            m.weight.data, m.input_scale = w, scale


@torch.no_grad()
def search_scale_module(module: nn.Module, calls: list[tuple[tuple, dict]], linears: Sequence[QuantLinear],
                        wquants: Sequence[Quantizer], x_mean: torch.Tensor, n_grid: int = 20,
                        pulse: Pulse = no_pulse) -> tuple[torch.Tensor, float, list[float]]:
    """Best s (in,) for ``linears`` (the group, inside ``module``), scored on ``module``'s output over
    ``calls``; returns (s, alpha, losses) as ``awq.search_scale``. Linears in ``module`` outside the
    group run in floating point; the group's linears quantize their activations as their spec says."""
    if n_grid < 1:
        raise MxlabError(f"AWQ n_grid must be >= 1, got {n_grid}")
    group = {id(m) for m in linears}
    others = [m for m in module.modules() if isinstance(m, QuantLinear) and id(m) not in group]
    with _fp_activations(others):
        with _fp_activations(linears):
            refs = [_output(module, c) for c in calls]              # the FP module outputs
        losses: list[float] = []
        best = (math.inf, 0.0, torch.ones_like(x_mean))
        for g in range(n_grid):
            pulse(g / n_grid)
            alpha = g / n_grid
            s = scale_candidate(x_mean.to(torch.float32), alpha)
            sq, count = 0.0, 0
            with _scaled(linears, s, wquants):
                for c, ref in zip(calls, refs):
                    sq += float((_output(module, c) - ref).double().pow(2).sum())
                    count += ref.numel()
            loss = sq / count
            losses.append(loss)
            if loss < best[0]:
                best = (loss, alpha, s)
    return best[2], best[1], losses
