"""AWQ (Lin et al. 2024) with its searches scored in the target format (MX or INT).

Two pure searches, separate from how their results are applied (as llm-awq's auto_scale/auto_clip):

- :func:`search_scale`: for one scaling group (a previous op feeding linears that share one input
  x), try s = mean|x|^alpha for alpha on a grid in [0, 1), normalised as llm-awq does
  (s / sqrt(max s * min s)), and keep the s whose quantized outputs
  ``aq(x / s) @ wq(W * s)^T`` are closest (summed MSE over the group's linears) to ``x @ W^T``.
  alpha = 0 is s = 1, plain quantization, so the winner is never worse on the search tokens.
  With ``score: module`` (the default, llm-awq's) a group that names its module (attention for
  q/k/v, MLP for gate/up) is scored on that module's output instead (``awq_module.py``).
- :func:`search_clip`: per output channel and format block (the MX block; the whole row for
  per-channel INT), the clipping threshold ``r * max|w|`` (r from 1 down to 1 - max_shrink) whose
  quantized block gives the smallest output MSE, measured exactly through the block's input Gram
  matrix.

:func:`apply` runs both for one decoder block: scales are folded with ``scaling.fold_scales``
(1/s into the previous op, s into the linears' columns), then weights are clipped in place. The
weights stay in floating point: a later GPTQ/RTN step (or the pipeline's final pass) quantizes them.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn as nn

from ...architectures import ScalingGroup
from ...errors import MxlabError
from ...formats import FORMATS, canonical_format
from ...records import ModuleRecord, StepRecord
from ...steps import AWQConfig
from ...progress import Pulse, no_pulse, part, spans
from ..context import BlockContext
from .awq_module import module_calls, scale_candidate, search_scale_module
from .scaling import fold_scales, skipped_without_groups

log = logging.getLogger(__name__)

Quantizer = Callable[[torch.Tensor], torch.Tensor]

SEARCH_TOKENS = 4096        # tokens (evenly spaced) used to score each alpha; mean|x| uses all of them
_CHUNK = 8192               # tokens per pass over big calibration inputs
_CLIP_BATCH_ELEMS = 1 << 24  # bound on (out rows x in_features) per clipping pass
GRID_BATCH_BYTES = 2 << 30  # bound on the float32 temporaries of one batch of AWQ grid points


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def token_batches(x: torch.Tensor | Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
    """Float32 row chunks (n_b, in) of one tensor (n, in), or the tensors of a stream as they come."""
    if isinstance(x, torch.Tensor):
        for i in range(0, x.shape[0], _CHUNK):
            yield x[i:i + _CHUNK].to(torch.float32)
    else:
        for b in x:
            yield b.reshape(-1, b.shape[-1]).to(torch.float32)


def mean_abs(x: torch.Tensor | Iterable[torch.Tensor]) -> torch.Tensor:
    """Mean |x| per input channel (in,), float32, over all tokens of x (n, in) or a stream of batches."""
    acc, n = None, 0
    for b in token_batches(x):
        s = b.abs().sum(0)
        acc = s if acc is None else acc + s
        n += b.shape[0]
    if acc is None:
        raise MxlabError("AWQ: no calibration inputs to compute mean |x| from")
    return acc / n


def spaced_tokens(x: torch.Tensor, n: int) -> torch.Tensor:
    """At most n rows of x, evenly spaced (deterministic), as float32."""
    if x.shape[0] > n:
        idx = torch.linspace(0, x.shape[0] - 1, n, device=x.device).round().long()
        x = x[idx]
    return x.to(torch.float32)


def search_scale(x: torch.Tensor, weights: Sequence[torch.Tensor], wquants: Sequence[Quantizer],
                 aquants: Sequence[Quantizer] | None = None, n_grid: int = 20,
                 max_tokens: int = SEARCH_TOKENS, x_mean: torch.Tensor | None = None,
                 grid_batch: int = 1, row_local: bool = False,
                 pulse: Pulse = no_pulse) -> tuple[torch.Tensor, float, list[float]]:
    """Best per-channel scale s (in,) for linears sharing input x (n, in); returns (s, alpha, losses).

    ``weights[i]`` (out_i, in) is quantized by ``wquants[i]`` (the target weight format) after
    scaling its columns by s; the input x / s by ``aquants[i]`` (the recipe's activation format,
    identity when None). ``losses[g]`` is the summed output MSE of alpha = g / n_grid. ``x_mean``
    (in,): mean |x| over all calibration tokens when x is only a sample of them.

    ``grid_batch`` > 1 scores up to that many grid points per batched GEMM (bounded by
    ``GRID_BATCH_BYTES``); ``row_local`` says the quantizers act on each row alone (MX, per-token or
    per-row INT; not NVFP4's tensor scale), so the candidates of a batch are quantized in one call.
    Each candidate's values, products and losses are computed as in the loop (``grid_batch=1``).
    ``pulse(done)`` is called per batch of grid points (a cancellation point, and how far the search is).
    """
    if n_grid < 1:
        raise MxlabError(f"AWQ n_grid must be >= 1, got {n_grid}")
    aquants = aquants or [_identity] * len(weights)
    x_mean = mean_abs(x) if x_mean is None else x_mean.to(torch.float32)
    xs = spaced_tokens(x, max_tokens)                       # (t, in)
    refs = [xs @ W.to(torch.float32).T for W in weights]    # (t, out_i) float outputs
    losses: list[float] = []
    best = (math.inf, 0.0, torch.ones_like(x_mean))
    per_point = 4 * (xs.numel() + sum(W.numel() + r.numel() for W, r in zip(weights, refs)))  # bytes
    step = max(1, min(grid_batch, GRID_BATCH_BYTES // max(per_point, 1)))
    for g0 in range(0, n_grid, step):
        pulse(g0 / n_grid)
        alphas = [g / n_grid for g in range(g0, min(g0 + step, n_grid))]
        cands = [scale_candidate(x_mean, a) for a in alphas]
        got = _score(xs, cands, weights, wquants, aquants, refs, row_local) if len(cands) > 1 else \
            [_score_one(xs, cands[0], weights, wquants, aquants, refs)]
        for alpha, s, loss in zip(alphas, cands, got):
            losses.append(loss)
            if loss < best[0]:
                best = (loss, alpha, s)
    return best[2], best[1], losses


def _score_one(xs: torch.Tensor, s: torch.Tensor, weights, wquants, aquants, refs) -> float:
    """Summed output MSE of one candidate s over the linears (the loop's arithmetic)."""
    loss = 0.0
    for W, wq, aq, ref in zip(weights, wquants, aquants, refs):
        Wq = wq(W.to(torch.float32) * s).to(torch.float32)       # (out, in) on the target grid
        out = aq(xs / s).to(torch.float32) @ Wq.T                # (t, out)
        loss += float((out - ref).pow(2).mean())
    return loss


def _stacked(fn: Quantizer, parts: list[torch.Tensor], row_local: bool) -> torch.Tensor:
    """fn on each (rows, in) part, stacked (G, rows, in) float32: one call when fn is row-local."""
    if row_local:
        return fn(torch.cat(parts)).to(torch.float32).reshape(len(parts), *parts[0].shape)
    return torch.stack([fn(p).to(torch.float32) for p in parts])


def _score(xs: torch.Tensor, cands: list[torch.Tensor], weights, wquants, aquants, refs,
           row_local: bool) -> list[float]:
    """Losses of several candidates at once: quantize them together, one batched GEMM per linear."""
    losses = [0.0] * len(cands)
    acts: dict[int, torch.Tensor] = {}      # aq -> (G, t, in): linears with one activation quantizer share it
    for W, wq, aq, ref in zip(weights, wquants, aquants, refs):
        key = id(getattr(aq, "__func__", aq)) if getattr(aq, "__self__", None) is None else \
            hash(_spec_key(aq.__self__))
        if key not in acts:
            acts = {key: _stacked(aq, [xs / s for s in cands], row_local)}
        Wf = W.to(torch.float32)
        Wq = _stacked(wq, [Wf * s for s in cands], row_local)   # (G, out, in)
        out = torch.bmm(acts[key], Wq.transpose(1, 2))             # (G, t, out)
        del Wq
        for g in range(len(cands)):
            losses[g] += float((out[g] - ref).pow(2).mean())
    return losses


def _spec_key(owner) -> tuple:
    """What an activation quantizer depends on (a QuantLinear's acts spec), to share its result."""
    spec = getattr(owner, "spec", None)
    return (spec.acts, spec.block_size, spec.rounding) if spec is not None else (id(owner),)


def _pad_groups(W: torch.Tensor, group: int) -> torch.Tensor:
    """(out, in) -> (out, n_groups, group), zero-padding in_features to a multiple of group."""
    out_f, in_f = W.shape
    pad = (-in_f) % group
    if pad:
        W = torch.nn.functional.pad(W, (0, pad))
    return W.reshape(out_f, -1, group)


def group_gram(x: torch.Tensor | Iterable[torch.Tensor], group: int) -> torch.Tensor:
    """Per-group input Gram matrices C_g = X_g^T X_g / n, (n_groups, group, group), float32.

    x: (n, in) or a stream of (n_b, in) batches; groups of ``group`` consecutive input channels.
    """
    C, n = None, 0
    for b in token_batches(x):
        xg = _pad_groups(b, group)                                  # (n_b, n_groups, group)
        c = torch.einsum("tgk,tgl->gkl", xg, xg)
        C = c if C is None else C.add_(c)
        n += b.shape[0]
    if C is None:
        raise MxlabError("AWQ: no calibration inputs for the clipping search")
    return C / n


def search_clip(W: torch.Tensor, C: torch.Tensor, quantizer: Quantizer, group: int,
                max_shrink: float = 0.5, clip_grid: int = 20,
                pulse: Pulse = no_pulse) -> torch.Tensor:
    """Per (output channel, group) clip threshold (out, n_groups) minimising the output MSE.

    For a block d = w - q of one output channel, the mean squared output error over the
    calibration tokens is d^T C_g d (C from :func:`group_gram`). Candidates are
    r * max|w| for r = 1, 1 - 1/clip_grid, ... down to 1 - max_shrink (exclusive); r = 1 is
    no clipping. ``quantizer`` gets whole (rows, in) slabs, so per-row formats see whole rows.
    ``pulse(done)`` is called per candidate and slab (a cancellation point, and how far the search is).
    """
    out_f, in_f = W.shape
    Wf = W.to(torch.float32)
    n_cand = max(1, int(max_shrink * clip_grid))
    rows = max(1, _CLIP_BATCH_ELEMS // max(in_f, 1))
    best_max = torch.empty(out_f, C.shape[0], dtype=torch.float32, device=W.device)
    n_steps = math.ceil(out_f / rows) * n_cand
    for o in range(0, out_f, rows):
        w = _pad_groups(Wf[o:o + rows], group)                      # (r, n_groups, group)
        org_max = w.abs().amax(-1, keepdim=True)                    # (r, n_groups, 1)
        best_err = torch.full(org_max.shape[:2], math.inf, device=W.device)
        best = org_max[..., 0].clone()
        for i in range(n_cand):
            pulse((o // rows * n_cand + i) / n_steps)
            max_val = org_max * (1 - i / clip_grid)
            cur = torch.maximum(torch.minimum(w, max_val), -max_val)
            q = quantizer(cur.reshape(cur.shape[0], -1)[:, :in_f]).to(torch.float32)
            d = _pad_groups(w.reshape(w.shape[0], -1)[:, :in_f] - q, group)  # (r, n_groups, group)
            err = (torch.einsum("ogk,gkl->ogl", d, C) * d).sum(-1)           # (r, n_groups)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best = torch.where(better, max_val[..., 0], best)
        best_max[o:o + rows] = best
    return best_max


def apply_clip(W: torch.Tensor, max_val: torch.Tensor, group: int) -> torch.Tensor:
    """W (out, in) clamped to +-max_val (out, n_groups) per group; same dtype as W."""
    in_f = W.shape[1]
    w = _pad_groups(W.to(torch.float32), group)
    m = max_val[..., None]
    w = torch.maximum(torch.minimum(w, m), -m)
    return w.reshape(W.shape[0], -1)[:, :in_f].to(W.dtype)


# ----------------------------------------------------------------------------- the pipeline step
def clip_group_size(spec, in_features: int) -> int:
    """Columns that share one quantization scale: the format block (MX, NVFP4) or the whole row (INT)."""
    kind = FORMATS[canonical_format(spec.weights)].kind
    return min(spec.block_size, in_features) if kind in ("mx", "nvfp4") else in_features


def _quantized(block: nn.Module, names: Sequence[str]) -> list[str]:
    return [n for n in names if getattr(block.get_submodule(n), "weight_quantized", False)]


def mean_and_sample(ctx: BlockContext, name: str, max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean |x| (in,) over every calibration token, evenly spaced sample (<= max_tokens, in)) of
    ``name``'s inputs, from one pass through the block; the same values as ``mean_abs`` and ``ctx.inputs``."""
    acc: list[torch.Tensor] = []
    n = [0]

    def observe(_: str, x: torch.Tensor) -> None:
        s = x.abs().sum(0)
        acc[:] = [s if not acc else acc[0] + s]
        n[0] += x.shape[0]

    xs = ctx.collect([name], max_tokens, observe=observe)[name]
    if not acc:
        raise MxlabError("AWQ: no calibration inputs to compute mean |x| from")
    return acc[0] / n[0], xs


def _row_local(spec) -> bool:
    """True when weights and activations are quantized row by row (no per-tensor scale): MX or per-channel INT."""
    kinds = {FORMATS[canonical_format(f)].kind for f in (spec.weights, spec.acts) if f != "none"}
    return kinds <= {"mx", "int"}


@torch.no_grad()
def _scale_group(block: nn.Module, ctx: BlockContext, group: ScalingGroup, config: AWQConfig,
                 record: StepRecord, beat: Pulse = no_pulse) -> dict[str, dict]:
    """Search and fold the scales of one group; returns details per linear (empty when skipped)."""
    done = _quantized(block, [group.prev, *group.linears])
    if done:
        record.notes.append(f"{group.prev} -> {group.linears}: skipped, {done} already quantized "
                            "(AWQ must come before GPTQ/RTN)")
        return {}
    targets = [n for n in group.linears if n in ctx.linears and ctx.spec(n).weights != "none"]
    if not targets:
        record.notes.append(f"{group.prev} -> {group.linears}: skipped, no linear with a weight format")
        return {}
    x_mean, xs = mean_and_sample(ctx, targets[0], SEARCH_TOKENS)  # (in,) over every token; (t, in) sample
    scored_on = group.module if config.score == "module" and group.module is not None else None
    if scored_on is not None:          # llm-awq: the group's module output (the rest of it in FP)
        del xs
        members = [n for n in group.linears if n in ctx.linears]
        s, alpha, losses = search_scale_module(
            block.get_submodule(scored_on), module_calls(ctx, scored_on, SEARCH_TOKENS),
            [ctx.linears[n] for n in members], [ctx.quantizer(n) for n in members], x_mean,
            n_grid=config.n_grid, pulse=beat)
    else:
        s, alpha, losses = search_scale(
            xs, [ctx.linears[n].weight for n in targets], [ctx.quantizer(n) for n in targets],
            [ctx.linears[n].quantize_input for n in targets], n_grid=config.n_grid, x_mean=x_mean,
            grid_batch=config.grid_batch, row_local=all(_row_local(ctx.spec(n)) for n in targets),
            pulse=beat)
    fold_scales(block, group, s)
    ctx.invalidate()                                              # the block changed: inputs are stale
    # a module-scored search runs the module once per alpha (grid_batch batches the linears' GEMMs only)
    details = {"alpha": alpha, "grid_batch": 1 if scored_on else config.grid_batch, "prev": f"{ctx.prefix}.{group.prev}",
               "score": f"module {scored_on}" if scored_on else "linears", "search_loss_plain": losses[0],
               "search_loss_best": min(losses), "scale_min": float(s.min()), "scale_max": float(s.max())}
    return {n: dict(details) for n in group.linears if n in ctx.linears}


@torch.no_grad()
def _clip_linear(ctx: BlockContext, name: str, config: AWQConfig, grams: dict, beat: Pulse = no_pulse) -> dict:
    """Clip one linear's weight in place by the per-block MSE search; returns its details.

    ``grams``: (input key, group) -> C, shared by linears that read one input (clipping one of
    them does not change the others' input, so the Gram is the same)."""
    lin = ctx.linears[name]
    g = clip_group_size(lin.spec, lin.in_features)
    key = (ctx.input_keys()[name], g)
    if key not in grams:
        grams.clear()                                             # free the previous input's Gram first
        grams[key] = group_gram(ctx.input_batches(name), g)       # inputs as the layer now sees them
    C = grams[key]
    W = lin.weight.data
    max_val = search_clip(W, C, ctx.quantizer(name), g, config.max_shrink, config.clip_grid, pulse=beat)
    org_max = _pad_groups(W.to(torch.float32), g).abs().amax(-1)  # (out, n_groups)
    ratio = torch.where(org_max > 0, max_val / org_max, torch.ones_like(org_max))
    lin.keep_fp_reference()             # clipping changes the function: errors stay measured against W
    W.copy_(apply_clip(W, max_val, g))
    return {"clip_group": g, "clip_ratio_mean": float(ratio.mean()), "clip_ratio_min": float(ratio.min()),
            "clipped_frac": float((ratio < 1).float().mean())}


def _costs(ctx: BlockContext, config: AWQConfig, clipped: Sequence[str]) -> list[float]:
    """Rough cost of each search of the step, in order (scale search per group, then clip per linear): weights
    times candidates. Only sizes the progress shares, so the ETA is an estimate."""
    size = {n: float(lin.weight.numel()) for n, lin in ctx.linears.items()}
    scale = [config.n_grid * sum(size.get(n, 0.0) for n in g.linears) for g in ctx.groups]
    return scale + [max(1, int(config.max_shrink * config.clip_grid)) * size[n] for n in clipped]


def apply(ctx: BlockContext, config: AWQConfig) -> StepRecord:
    """AWQ on one block: per scaling group search + fold the scales, then clip each linear's weights."""
    block = ctx.block
    record = StepRecord("awq", ctx.index)
    if skipped_without_groups(ctx, record):
        return record
    details: dict[str, dict] = {}
    seconds: dict[str, float] = {}
    clipped = [n for n, lin in ctx.linears.items() if config.clip and not lin.weight_quantized
               and lin.spec.weights != "none"]
    parts = iter(spans(_costs(ctx, config, clipped)))           # each search's share of the step's progress
    for group in ctx.groups:
        t0 = time.perf_counter()
        got = _scale_group(block, ctx, group, config, record, part(ctx.pulse, *next(parts)))
        for n in got:
            details[n] = got[n]
            seconds[n] = (time.perf_counter() - t0) / len(got)
    grams: dict = {}
    for name in clipped:
        t0 = time.perf_counter()
        details.setdefault(name, {}).update(_clip_linear(ctx, name, config, grams, part(ctx.pulse, *next(parts))))
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t0
    if clipped:
        ctx.invalidate()
    record.modules = [ModuleRecord(f"{ctx.prefix}.{n}", "awq", seconds=seconds.get(n, 0.0), details=d)
                      for n, d in details.items()]
    return record
