"""The layer-by-layer PTQ pipeline: one decoder block on the accelerator at a time.

For each block: wrap the Linears the plan names in QuantLinear, run the recipe's steps in order
(each sees the block's current calibration inputs, re-captured after a step changes the block),
RTN-quantize what no step quantized, then run the quantized block to produce the next block's
inputs. Around every step the diagnostics measure each Linear's output error.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn

from ..architectures import ScalingGroup, architecture_map, decoder_blocks
from ..data import calibration_batches
from ..formats import is_mx, quantize
from ..models import resolve_device
from ..errors import MxlabError
from ..limits import check_activation_memory
from ..progress import ProgressFn, pulse, report
from ..recipe import Recipe
from ..records import ModuleRecord, StepRecord
from ..steps import StepConfig
from . import statistics
from .block_moves import BlockMoves
from .capture import catch_block_inputs, store_device
from .context import BlockContext
from .diagnostics import diagnostic_batches, fill_errors, measure
from .methods import Apply, method_for
from .plan import Target, block_targets, plan
from .qlinear import QuantLinear

log = logging.getLogger(__name__)

TOKENS_PER_BATCH = 4096     # calibration tokens per block forward
STATS_MAX_TOKENS = 4096     # tokens per linear handed to statistics.activation_stats
DIAGNOSTIC_TOKENS = 16384   # calibration tokens (whole batches, seeded choice) for error records and statistics
OVERLAP_MOVES = True        # blocks living in host memory move on a helper thread during the neighbours' work
PULSE_EVERY = 0.2           # seconds between progress reports from inside a step (each is a cancellation point)


@dataclass
class QuantResult:
    """What ``quantize_model`` returns: the model (edited in place), the recipe and what each step did."""

    model: nn.Module
    recipe: Recipe
    records: list[StepRecord]
    stats: dict[str, list[dict]] = field(default_factory=lambda: {"activations": [], "weights": []})
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)    # phase -> seconds summed over blocks
    peak_memory: dict[str, int] = field(default_factory=dict)  # phase -> peak CUDA bytes allocated (CUDA only)


class _Timer:
    """Adds wall time per phase into ``timings``; syncs CUDA first so GPU work lands in its own phase."""

    def __init__(self, timings: dict[str, float], peaks: dict[str, int], device: torch.device):
        self.timings, self.peaks, self.device = timings, peaks, device

    @contextmanager
    def __call__(self, phase: str):
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if cuda:
                torch.cuda.synchronize(self.device)
                peak = torch.cuda.max_memory_allocated(self.device)
                self.peaks[phase] = max(self.peaks.get(phase, 0), peak)
            self.timings[phase] = self.timings.get(phase, 0.0) + time.perf_counter() - t0


@dataclass
class _Loop:
    """What the block loop needs besides the block: fixed for the whole model."""

    recipe: Recipe
    methods: list[tuple[StepConfig, Apply]]
    groups: list[ScalingGroup]
    device: torch.device
    store: torch.device
    result: QuantResult
    timer: _Timer
    progress: Optional[ProgressFn]
    n_blocks: int
    t0: float = field(default_factory=time.monotonic)    # when the block loop started (for the ETA)

    def tick(self, i: int, fraction: float, message: str) -> None:
        """Progress ``fraction`` of the way through block ``i``."""
        report(self.progress, (i + fraction) / self.n_blocks, f"block {i + 1}/{self.n_blocks}: {message}")


def _wrap(block: nn.Module, targets: list[Target]) -> dict[str, QuantLinear]:
    """Replace each target Linear of ``block`` by a QuantLinear sharing its tensors; name in block -> it."""
    out = {}
    for t in targets:
        parent_name, _, child = t.local.rpartition(".")
        q = QuantLinear.from_linear(t.module, t.spec)
        setattr(block.get_submodule(parent_name) if parent_name else block, child, q)
        out[t.local] = q
    return out


def _check_finite(linears: dict[str, QuantLinear], prefix: str) -> None:
    """NaN/Inf weights would poison every MX block they sit in: stop with a clear message instead."""
    for name, q in linears.items():
        if not bool(torch.isfinite(q.weight).all()):
            bad = int((~torch.isfinite(q.weight)).sum())
            raise MxlabError(f"{prefix}.{name}.weight has {bad} NaN/Inf values: the checkpoint is damaged or was "
                             "saved after a diverged run; load a healthy checkpoint (nothing was quantized "
                             "past this block)")


def _resolve_device(device) -> torch.device:
    """None or "auto": blocks go to CUDA when present (the model itself may stay on the CPU)."""
    return resolve_device("auto" if device is None else device)


def _calibration(tokenizer, recipe: Recipe, calib_tokens: Optional[torch.Tensor]) -> torch.Tensor:
    if calib_tokens is None:
        calib_tokens = calibration_batches(tokenizer, recipe.calib.dataset, recipe.calib.n_samples,
                                           recipe.calib.seq_len, recipe.seed)
    if not isinstance(calib_tokens, torch.Tensor) or calib_tokens.dim() != 2 or calib_tokens.is_floating_point():
        raise MxlabError("calib_tokens must be an integer tensor of token ids shaped (n_samples, seq_len)")
    return calib_tokens.long()


def check_calibration(model: nn.Module, tokens: torch.Tensor) -> None:
    """Token ids inside the model's vocabulary, and hidden states that fit in memory; MxlabError otherwise."""
    emb = model.get_input_embeddings()
    vocab = getattr(emb, "num_embeddings", None)
    if vocab is not None and tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab):
        raise MxlabError(f"calibration token ids range over [{int(tokens.min())}, {int(tokens.max())}] but the "
                         f"model's vocabulary has {vocab} entries; tokenize with the model's own tokenizer")
    hidden = getattr(model.config, "hidden_size", None) or 0
    check_activation_memory(tokens.numel(), hidden, "calibration")


def quantize_model(model: nn.Module, tokenizer, recipe: Recipe, progress: Optional[ProgressFn] = None,
                   device=None, calib_tokens: Optional[torch.Tensor] = None,
                   diagnostic_tokens: Optional[int] = DIAGNOSTIC_TOKENS) -> QuantResult:
    """Quantize ``model`` in place following ``recipe``, one decoder block at a time on ``device``.

    ``diagnostic_tokens``: about how many calibration tokens the per-module error records and the
    activation statistics are measured on (whole calibration batches, chosen with ``recipe.seed``;
    ``None`` for all). The quantization itself always uses every calibration token.
    """
    t_start = time.perf_counter()
    if isinstance(recipe, dict):
        recipe = Recipe.from_dict(recipe)
    if not isinstance(recipe, Recipe):
        raise MxlabError(f"recipe must be a mxlab.Recipe or a dict, got {type(recipe).__name__}")
    recipe.validate()
    if diagnostic_tokens is not None and (isinstance(diagnostic_tokens, bool) or not isinstance(diagnostic_tokens, int)
                                          or diagnostic_tokens <= 0):
        raise MxlabError(f"diagnostic_tokens must be a positive integer or None (all tokens), got {diagnostic_tokens!r}")
    if any(isinstance(m, QuantLinear) for m in model.modules()):
        raise MxlabError("this model is already quantized; load the floating-point model again to re-quantize")
    device = _resolve_device(device)
    methods = [(cfg, method_for(cfg)) for cfg in recipe.steps]      # fail before any work
    amap = architecture_map(model)
    notes = list(amap.notes) if amap else [
        f"no architecture map for {getattr(model.config, 'model_type', type(model).__name__)!r}: "
        f"scaling steps (smoothquant, awq) skip this model"]
    for note in notes:
        log.info("%s", note)
    result = QuantResult(model=model, recipe=recipe, records=[], notes=notes)
    extras = [t for t in plan(model, recipe) if t.kind != "linear"]   # decided on the FP model, before wrapping
    was_training = model.training
    model.eval()
    with torch.no_grad():
        if "decoder" in recipe.target_set:
            tokens = _calibration(tokenizer, recipe, calib_tokens)
            check_calibration(model, tokens)
            _quantize_blocks(model, tokens, recipe, methods, amap.groups if amap else [], device, result,
                             progress, diagnostic_tokens)
        _quantize_extras(model, extras, recipe, device, result)
    model.train(was_training)
    result.seconds = time.perf_counter() - t_start
    report(progress, 1.0, "done")
    return result


def _quantize_blocks(model: nn.Module, tokens: torch.Tensor, recipe: Recipe, methods: list[tuple[StepConfig, Apply]],
                     groups: list[ScalingGroup], device: torch.device, result: QuantResult,
                     progress: Optional[ProgressFn], diagnostic_tokens: Optional[int]) -> None:
    """Catch block 0's inputs, then quantize the blocks in order, each one's outputs feeding the next."""
    path, blocks = decoder_blocks(model)
    batch_size = max(1, TOKENS_PER_BATCH // tokens.shape[1])
    hidden_size = getattr(model.config, "hidden_size", None) or 0
    dtype = next(blocks[0].parameters()).dtype
    store = store_device(device, tokens.numel() * hidden_size * dtype.itemsize)
    loop = _Loop(recipe, methods, groups, device, store, result, _Timer(result.timings, result.peak_memory, device),
                 progress, len(blocks))
    report(progress, 0.0, "capturing block inputs")
    with loop.timer("catch"):
        hidden, calls = catch_block_inputs(model, blocks, path, tokens, device, batch_size, store)
    diag = diagnostic_batches(hidden, diagnostic_tokens, recipe.seed)
    moves = BlockMoves(blocks, device, overlap=OVERLAP_MOVES)
    try:
        for i, block in enumerate(blocks):
            with loop.timer("move"):             # only the part of the move that did not overlap work
                moves.bring(i)
            linears = _wrap(block, block_targets(block, f"{path}.{i}", i, recipe))
            _check_finite(linears, f"{path}.{i}")
            ctx = BlockContext(i, f"{path}.{i}", block, device, linears, groups, hidden, calls[i], diag)
            hidden = _quantize_block(ctx, loop)
            report(progress, (i + 1) / len(blocks), f"block {i + 1}/{len(blocks)} done")
    finally:
        with loop.timer("move"):
            moves.all_home()


def _quantize_block(ctx: BlockContext, loop: _Loop) -> list[torch.Tensor]:
    """Run the steps on one block, RTN what is left, record statistics; returns the block's outputs."""
    timer, result, linears = loop.timer, loop.result, ctx.linears
    n_stages = len(loop.methods) + 2
    with timer("diagnostics"):
        errors, xs = measure(ctx, stats_tokens=STATS_MAX_TOKENS)
        _activation_stats(ctx, "fp", xs, result)
        del xs                  # (n, in) float32 per linear: not kept alive through the steps
    for k, (cfg, apply) in enumerate(loop.methods):
        loop.tick(ctx.index, (k + 1) / n_stages, cfg.name)
        # the step's loops report how far they are (done 0..1): mapped onto this step's share of the block
        ctx.pulse = pulse(loop.progress, (ctx.index + (k + 1) / n_stages) / loop.n_blocks,
                          f"block {ctx.index + 1}/{loop.n_blocks}: {cfg.name}", every=PULSE_EVERY,
                          stop=(ctx.index + (k + 2) / n_stages) / loop.n_blocks, since=(loop.t0, 0.0))
        if loop.recipe.allow_requantize:
            for q in linears.values():
                q.unmark_quantized()
        t0 = time.perf_counter()
        with timer(f"step {cfg.name}"):
            record = apply(ctx, cfg)
        record.seconds = time.perf_counter() - t0
        ctx.invalidate()
        with timer("diagnostics"):
            after, xs = measure(ctx, stats_tokens=STATS_MAX_TOKENS if cfg.kind == "scaling" else 0)
            fill_errors(record, ctx.prefix, errors, after)
            _activation_stats(ctx, cfg.name, xs, result)
            del xs
        result.records.append(record)
        errors = after
    remaining = [n for n, q in linears.items() if not q.weight_quantized]
    if remaining:
        t0 = time.perf_counter()
        with timer("final rtn"):
            for n in remaining:
                linears[n].quantize_weight()
        record = StepRecord("rtn", ctx.index, [ModuleRecord(f"{ctx.prefix}.{n}", "rtn", details={"final": True})
                                               for n in remaining], time.perf_counter() - t0)
        with timer("diagnostics"):
            after = ctx.output_errors(remaining)
        fill_errors(record, ctx.prefix, {n: errors[n] for n in remaining}, after)
        result.records.append(record)
    with timer("weight stats"):
        for n, q in linears.items():
            if q.weight_fp is not None:
                result.stats["weights"].append(statistics.weight_stats(f"{ctx.prefix}.{n}", ctx.index, q.weight_fp,
                                                                       q.weight.data, q.spec))
            q.release_fp()
    loop.tick(ctx.index, (n_stages - 0.5) / n_stages, "outputs")
    # the quantized block's outputs are the next block's inputs (same batches as the steps saw)
    with timer("outputs"), torch.inference_mode():
        return [ctx.call_block(h).to(loop.store) for h in ctx.hidden]


def _activation_stats(ctx: BlockContext, stage: str, xs: dict[str, torch.Tensor], result: QuantResult) -> None:
    """Append one activation-statistics row per linear from its sampled inputs ``xs[name]`` (n, in), with the
    shared exponents its MX activation format would use on them."""
    for n, x in xs.items():
        result.stats["activations"].append(statistics.activation_stats(f"{ctx.prefix}.{n}", ctx.index, stage, x,
                                                                       spec=ctx.linears[n].spec))


def _same_mx_spec(extras: list[Target]) -> bool:
    """Both tied tensors targeted with one MX weight spec: quantizing the shared tensor twice is harmless."""
    specs = {t.kind: t.spec for t in extras}
    se, sh = specs.get("embedding"), specs.get("lm_head")
    return se is not None and sh is not None and se.weights == sh.weights and se.block_size == sh.block_size \
        and se.rounding == sh.rounding and se.scale_rule == sh.scale_rule and se.weights != "none" \
        and is_mx(se.weights)


def _quantize_extras(model: nn.Module, extras: list[Target], recipe: Recipe, device: torch.device,
                     result: QuantResult) -> None:
    """Weight-quantize the embeddings and/or wrap lm_head in a QuantLinear when the plan names them."""
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = head is not None and emb is not None and head.weight is emb.weight
    targets = recipe.target_set
    if tied and ("embeddings" in targets or "lm_head" in targets) and not _same_mx_spec(extras):
        # untie: only one is quantized, or they get different formats, or the format is not idempotent
        # (per-channel int / nvfp4 scales move when re-quantized), so one tensor cannot serve both
        head.weight = nn.Parameter(head.weight.data.clone(), requires_grad=False)
        result.notes.append("lm_head and embeddings were tied; untied so that each gets its own quantization")
    for t in extras:
        if t.kind == "embedding":
            w = emb.weight.data
            w.copy_(quantize(w.to(device), t.spec.weights, **t.spec.quant_kwargs(t.spec.weights)).to(w.device))
            result.records.append(StepRecord("rtn", -1, [ModuleRecord(t.name, "rtn", details={"weight_only": True})]))
        elif t.kind == "lm_head":
            q = QuantLinear.from_linear(head, t.spec)
            q.quantize_weight()
            q.release_fp()
            parent, _, child = t.name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, q)
            result.records.append(StepRecord("rtn", -1, [ModuleRecord(t.name, "rtn", details={"calibrated": False})]))
