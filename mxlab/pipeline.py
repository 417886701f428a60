"""The layer-by-layer PTQ pipeline: one decoder block on the accelerator at a time.

For each block: wrap its Linears in QuantLinear, run the recipe's steps in order (each sees the
block's current calibration inputs, re-captured after a step changes the block), RTN-quantize
what no step quantized, then run the quantized block to produce the next block's inputs.
"""
from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .architectures import ScalingGroup, architecture_map, decoder_blocks
from .errors import MxlabError
from .methods import get_method
from .progress import ProgressFn, report
from .qlinear import QuantLinear
from .recipe import QuantSpec, Recipe
from .records import ModuleRecord, StepRecord

log = logging.getLogger(__name__)

TOKENS_PER_BATCH = 4096     # calibration tokens per block forward
STATS_MAX_TOKENS = 4096     # tokens per linear handed to stats.activation_stats
DIAGNOSTIC_TOKENS = 16384   # calibration tokens (whole batches, seeded choice) for error records and statistics
STORE_FRACTION = 0.25       # keep calibration activations on the GPU if they take < this much free memory


class _Stop(Exception):
    """Raised inside a forward to stop it once what we wanted is captured."""


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


# ----------------------------------------------------------------------------- block context
class BlockContext:
    """Everything a method may use about the current block (see DESIGN.md).

    ``hidden``: the block's input hidden states, one tensor (B, L, H) per calibration batch;
    ``call_args``: batch size -> (positional args after hidden, kwargs) the model passes the block;
    ``diag_batches``: indices of the batches that error records and statistics are measured on
    (default all). Methods always see every batch: only diagnostics use the subset.
    """

    def __init__(self, index: int, prefix: str, block: nn.Module, device: torch.device,
                 linears: dict[str, QuantLinear], groups: list[ScalingGroup],
                 hidden: list[torch.Tensor], call_args: dict[int, tuple[tuple, dict]],
                 diag_batches: Optional[list[int]] = None):
        self.index, self.prefix, self.block, self.device = index, prefix, block, device
        self.linears, self.groups = linears, groups
        self._hidden, self._call_args = hidden, call_args
        self.diag_batches = list(range(len(hidden))) if diag_batches is None else list(diag_batches)
        self._cache: tuple[Optional[tuple], Optional[torch.Tensor]] = (None, None)

    # -- running the block
    def batches(self) -> Iterator[tuple[torch.Tensor, tuple, dict]]:
        """(hidden (B, L, H) on ``device``, args, kwargs) per calibration batch, to call the block with."""
        for h in self._hidden:
            args, kwargs = self._call_args[h.shape[0]]
            yield h.to(self.device, non_blocking=True), args, kwargs

    def call_block(self, hidden: torch.Tensor) -> torch.Tensor:
        """The block's output (B, L, H) for one batch of input hidden states."""
        args, kwargs = self._call_args[hidden.shape[0]]
        out = self.block(hidden.to(self.device), *args, **kwargs)
        return out[0] if isinstance(out, (tuple, list)) else out

    def _forward_hooked(self, names: list[str], fn: Callable[[str, torch.Tensor, nn.Module, int], None],
                        stop_after: Optional[str] = None, batches: Optional[list[int]] = None) -> None:
        """Run the batches (default every one) through the block calling ``fn(name, x (n, in), module, batch)``
        at each named module."""
        state = {"batch": 0}

        def make_hook(name: str):
            def hook(module, args, kwargs):
                x = args[0] if args else kwargs["hidden_states"]
                fn(name, x.reshape(-1, x.shape[-1]), module, state["batch"])
                if name == stop_after:
                    raise _Stop
            return hook

        handles = [self.block.get_submodule(n).register_forward_pre_hook(make_hook(n), with_kwargs=True)
                   for n in names]
        try:
            for b in range(len(self._hidden)) if batches is None else batches:
                state["batch"] = b
                try:
                    self.call_block(self._hidden[b])
                except _Stop:
                    pass
        finally:
            for hd in handles:
                hd.remove()

    # -- inputs of one module
    def input_batches(self, name: str) -> Iterator[torch.Tensor]:
        """Stream the calibration inputs of module ``name``: (n_b, in) float32 on ``device`` per batch."""
        module = self.block.get_submodule(name)
        for h in self._hidden:
            got: list[torch.Tensor] = []

            def hook(m, args, kwargs):
                x = args[0] if args else kwargs["hidden_states"]
                got.append(x.reshape(-1, x.shape[-1]).float())
                raise _Stop

            handle = module.register_forward_pre_hook(hook, with_kwargs=True)
            try:
                self.call_block(h)
            except _Stop:
                pass
            finally:
                handle.remove()
            if got:
                yield got[0]

    def collect(self, names: list[str], max_tokens: Optional[int] = None) -> dict[str, torch.Tensor]:
        """Inputs of several modules in one pass: name -> (n, in) float32 on ``device``, evenly subsampled
        to at most ``max_tokens`` rows."""
        sizes = [h.shape[:-1].numel() for h in self._hidden]
        total = sum(sizes)
        keep = None
        if max_tokens is not None and max_tokens < total:
            keep = torch.linspace(0, total - 1, max_tokens).round().long()
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        parts: dict[str, list[torch.Tensor]] = {n: [] for n in names}

        def fn(name, x, module, b):
            if keep is not None:
                idx = keep[(keep >= starts[b]) & (keep < starts[b] + sizes[b])] - starts[b]
                x = x[idx.to(x.device)]
            parts[name].append(x.float())

        self._forward_hooked(names, fn)
        return {n: torch.cat(p) for n, p in parts.items()}

    def inputs(self, name: str, max_tokens: Optional[int] = None) -> torch.Tensor:
        """Calibration inputs of ``name`` as captured now: (n_tokens, in) float32 on ``device``.

        Cached until the block changes. Large models: pass ``max_tokens`` or use ``input_batches``.
        """
        key = (name, max_tokens)
        if self._cache[0] != key:
            self._cache = (None, None)          # free the old one before capturing the new one
            self._cache = (key, self.collect([name], max_tokens)[name])
        return self._cache[1]

    def invalidate(self) -> None:
        """Forget captured inputs (the pipeline calls this after every step)."""
        self._cache = (None, None)

    # -- quantization helpers
    def spec(self, name: str) -> QuantSpec:
        """The QuantSpec of linear ``name``."""
        return self.linears[name].spec

    def quantizer(self, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
        """``W -> fake-quantized W`` in the weight format of linear ``name``."""
        return self.linears[name].quantize_weight_rtn

    def output_errors(self, names: Optional[list[str]] = None) -> dict[str, tuple[float, float]]:
        """name -> (mse, sqnr_db) of each linear's quantized output against its FP output, same inputs.

        A weight no step has quantized yet is scored as RTN would quantize it, so the numbers show
        what the final model would get; activations are quantized as the layer does. Measured on the
        diagnostic batches (``diag_batches``).
        """
        return self.diagnostics(names)[0]

    def diagnostics(self, names: Optional[list[str]] = None, stats_tokens: int = 0
                    ) -> tuple[dict[str, tuple[float, float]], dict[str, torch.Tensor]]:
        """One pass over the diagnostic batches: ``output_errors`` and, when ``stats_tokens`` > 0, each
        linear's inputs evenly subsampled to at most that many rows ((n, in) float32 on ``device``)."""
        names = list(self.linears) if names is None else names
        acc: dict[str, list] = {}           # name -> [sum err^2, sum ref^2 (float64, on device), count]
        wqs: dict[str, torch.Tensor] = {}          # name -> W_q (out, in) in the model dtype
        sizes = [self._hidden[b].shape[:-1].numel() for b in self.diag_batches]
        starts = dict(zip(self.diag_batches, [sum(sizes[:i]) for i in range(len(sizes))]))
        total = sum(sizes)
        keep = None
        if 0 < stats_tokens < total:
            keep = torch.linspace(0, total - 1, stats_tokens).round().long()
        parts: dict[str, list[torch.Tensor]] = {n: [] for n in names}

        def fn(name, x, m, b):
            if stats_tokens > 0:
                xs = x
                if keep is not None:
                    idx = keep[(keep >= starts[b]) & (keep < starts[b] + x.shape[0])] - starts[b]
                    xs = x[idx.to(x.device)]
                parts[name].append(xs.clone())
            if name not in wqs:
                wqs[name] = m.weight if m.weight_quantized else m.quantize_weight_rtn()
            w_ref = m.weight if m.weight_fp is None else m.weight_fp   # the FP weight, before clipping too
            bias = None if m.bias is None else m.bias.float()
            # float32 outputs (n, out): the errors can be far below bf16's resolution of the outputs;
            # float32 weight copies are made per batch (few batches) so that only one lives at a time
            y_ref = F.linear(x.float(), w_ref.float(), bias)
            err = F.linear(m.quantize_input(x).float(), wqs[name].float(), bias).sub_(y_ref)
            a = acc.setdefault(name, [0, 0, 0])       # sums stay on the device: no sync per batch
            a[0] = a[0] + err.square().sum(dtype=torch.float64)
            a[1] = a[1] + y_ref.square().sum(dtype=torch.float64)
            a[2] += y_ref.numel()

        self._forward_hooked(names, fn, batches=self.diag_batches)
        wqs.clear()
        xs = {n: torch.cat(p).float() for n, p in parts.items() if p} if stats_tokens > 0 else {}
        errors = {n: _mse_sqnr(float(acc[n][0]), float(acc[n][1]), acc[n][2]) if n in acc else (math.nan, math.nan)
                  for n in names}
        return errors, xs

    def output_error(self, name: str) -> tuple[float, float]:
        """(mse, sqnr_db) of linear ``name`` (see ``output_errors``)."""
        return self.output_errors([name])[name]


def _mse_sqnr(err: float, ref: float, count: int) -> tuple[float, float]:
    if count == 0:
        return math.nan, math.nan
    sqnr = math.inf if err == 0 else (10 * math.log10(ref / err) if ref > 0 else -math.inf)
    return err / count, sqnr


# ----------------------------------------------------------------------------- catching block inputs
def _shell_modules(model: nn.Module, path: str) -> list[nn.Module]:
    """Modules the model runs before the blocks: siblings along ``path`` (below the top level, where
    heads live, unless the blocks themselves are top level)."""
    parts = path.split(".")
    out, parent = [], model
    for depth, part in enumerate(parts):
        for name, child in parent.named_children():
            if name != part and (depth > 0 or len(parts) == 1):
                out.append(child)
        parent = getattr(parent, part)
    return out


def _device_of(module: nn.Module) -> Optional[torch.device]:
    t = next(iter(module.parameters()), None)
    if t is None:
        t = next(iter(module.buffers()), None)
    return None if t is None else t.device


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to_device(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    return obj


class _Passthrough(nn.Module):
    """Stands in for a block while catching: records how the model calls it, returns the input."""

    def __init__(self, block: nn.Module, index: int, sink: Callable, last: bool):
        super().__init__()
        self.inner, self.index, self.sink, self.last = block, index, sink, last

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:           # the model may read attributes of its layers (attention_type...)
            return getattr(self._modules["inner"], name)

    def forward(self, *args, **kwargs):
        if args:
            hidden, rest = args[0], tuple(args[1:])
        else:
            hidden, rest = kwargs.pop("hidden_states"), ()
        self.sink(self.index, hidden, rest, kwargs)
        if self.last:
            raise _Stop
        return hidden


def _catch(model: nn.Module, blocks: nn.ModuleList, path: str, tokens: torch.Tensor, device: torch.device,
           batch_size: int, store: torch.device) -> tuple[list[torch.Tensor], list[dict[int, tuple]]]:
    """Block 0's input hidden states per batch (on ``store``) and, per block, how the model calls it."""
    hidden: list[torch.Tensor] = []
    calls: list[dict[int, tuple]] = [{} for _ in blocks]

    def sink(i, h, args, kwargs):
        if i == 0:
            hidden.append(h.detach().to(store))
        calls[i].setdefault(h.shape[0], (_to_device(args, device), _to_device(kwargs, device)))

    shell = [(m, _device_of(m)) for m in _shell_modules(model, path)]
    originals = list(blocks)
    try:
        for m, _ in shell:
            m.to(device)
        for i, b in enumerate(originals):
            blocks[i] = _Passthrough(b, i, sink, last=i == len(originals) - 1)
        for start in range(0, tokens.shape[0], batch_size):
            try:
                model(input_ids=tokens[start:start + batch_size].to(device), use_cache=False)
            except _Stop:
                pass
    finally:
        for i, b in enumerate(originals):
            blocks[i] = b
        for m, dev in shell:
            if dev is not None:
                m.to(dev)
    if len(hidden) == 0 or any(not c for c in calls):
        raise MxlabError("could not capture the decoder blocks' inputs: the model did not call its blocks "
                         "in order; this architecture is not supported by the pipeline")
    return hidden, calls


def _store_device(device: torch.device, nbytes: int) -> torch.device:
    """Where calibration activations live: on the GPU if inputs + outputs fit comfortably, else CPU."""
    if device.type != "cuda":
        return device
    free, _ = torch.cuda.mem_get_info(device)
    if 2 * nbytes < STORE_FRACTION * free:
        return device
    log.info("calibration activations (%.1f GB) kept on CPU and streamed to %s", nbytes / 1e9, device)
    return torch.device("cpu")


# ----------------------------------------------------------------------------- the loop
def _wrap_linears(block: nn.Module, prefix: str, recipe: Recipe) -> dict[str, QuantLinear]:
    """Replace each targeted nn.Linear of ``block`` by a QuantLinear sharing its tensors."""
    out = {}
    for name, module in list(block.named_modules()):
        if type(module) is not nn.Linear:
            continue
        spec = recipe.spec_for(f"{prefix}.{name}")
        if spec is None or (spec.weights == "none" and spec.acts == "none"):
            continue
        parent_name, _, child = name.rpartition(".")
        q = QuantLinear.from_linear(module, spec)
        setattr(block.get_submodule(parent_name) if parent_name else block, child, q)
        out[name] = q
    return out


def _same_mx_spec(recipe: Recipe, names: dict, emb: nn.Module, head: nn.Module) -> bool:
    """Both tied tensors targeted with one MX weight spec: quantizing the shared tensor twice is harmless."""
    from .formats import is_mx

    if not {"embeddings", "lm_head"} <= recipe.target_set:
        return False
    se, sh = recipe.spec_for(names[id(emb)]), recipe.spec_for(names[id(head)])
    return se is not None and sh is not None and se.weights == sh.weights and se.block_size == sh.block_size \
        and se.rounding == sh.rounding and se.weights != "none" and is_mx(se.weights)


def _check_finite(linears: dict[str, QuantLinear], prefix: str) -> None:
    """NaN/Inf weights would poison every MX block they sit in: stop with a clear message instead."""
    for name, q in linears.items():
        if not bool(torch.isfinite(q.weight).all()):
            bad = int((~torch.isfinite(q.weight)).sum())
            raise MxlabError(f"{prefix}.{name}.weight has {bad} NaN/Inf values: the checkpoint is damaged or was "
                             "saved after a diverged run; load a healthy checkpoint (nothing was quantized "
                             "past this block)")


def _fill_errors(record: StepRecord, prefix: str, before: dict, after: dict) -> None:
    """Put the pipeline's before/after errors into the record, adding rows for untouched modules."""
    by_name = {m.module: m for m in record.modules}
    for name in before:
        full = f"{prefix}.{name}"
        m = by_name.get(full) or by_name.get(name)
        if m is None:
            m = ModuleRecord(module=full, step=record.step)
            record.modules.append(m)
        m.module = full
        m.mse_before, m.sqnr_before = before[name]
        m.mse_after, m.sqnr_after = after[name]


def _stats_module():
    try:
        from . import stats
    except ImportError:
        log.info("mxlab.stats is not available: activation/weight statistics are not collected")
        return None
    return stats


def _resolve_device(device) -> torch.device:
    """None or "auto": blocks go to CUDA when present (the model itself may stay on the CPU)."""
    from .models import resolve_device

    return resolve_device("auto" if device is None else device)


def _calibration(tokenizer, recipe: Recipe, calib_tokens: Optional[torch.Tensor]) -> torch.Tensor:
    if calib_tokens is None:
        from .data import calibration_batches

        calib_tokens = calibration_batches(tokenizer, recipe.calib.dataset, recipe.calib.n_samples,
                                           recipe.calib.seq_len, recipe.seed)
    if not isinstance(calib_tokens, torch.Tensor) or calib_tokens.dim() != 2 or calib_tokens.is_floating_point():
        raise MxlabError("calib_tokens must be an integer tensor of token ids shaped (n_samples, seq_len)")
    return calib_tokens.long()


def quantize_model(model: nn.Module, tokenizer, recipe: Recipe, progress: Optional[ProgressFn] = None,
                   device=None, calib_tokens: Optional[torch.Tensor] = None,
                   diagnostic_tokens: Optional[int] = DIAGNOSTIC_TOKENS) -> QuantResult:
    """Quantize ``model`` in place following ``recipe``, one decoder block at a time on ``device``.

    ``diagnostic_tokens``: about how many calibration tokens the per-module error records and the
    activation statistics are measured on (whole calibration batches, chosen with ``recipe.seed``;
    ``None`` for all). The quantization itself always uses every calibration token.
    """
    t_start = time.perf_counter()
    recipe.validate()
    if diagnostic_tokens is not None and (isinstance(diagnostic_tokens, bool) or not isinstance(diagnostic_tokens, int)
                                          or diagnostic_tokens <= 0):
        raise MxlabError(f"diagnostic_tokens must be a positive integer or None (all tokens), got {diagnostic_tokens!r}")
    if any(isinstance(m, QuantLinear) for m in model.modules()):
        raise MxlabError("this model is already quantized; load the floating-point model again to re-quantize")
    device = _resolve_device(device)
    methods = [(cfg, get_method(cfg.name)) for cfg in recipe.steps]      # fail before any work
    amap = architecture_map(model)
    path, blocks = decoder_blocks(model)
    groups = amap.groups if amap else []
    notes = list(amap.notes) if amap else [
        f"no architecture map for {getattr(model.config, 'model_type', type(model).__name__)!r}: "
        f"scaling steps (smoothquant, awq) skip this model"]
    for note in notes:
        log.info("%s", note)
    stats = _stats_module()
    result = QuantResult(model=model, recipe=recipe, records=[], notes=notes)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        if "decoder" in recipe.target_set:
            tokens = _calibration(tokenizer, recipe, calib_tokens)
            _quantize_blocks(model, blocks, path, groups, recipe, methods, tokens, device, stats, result, progress,
                             diagnostic_tokens)
        _quantize_extras(model, recipe, device, result)
    model.train(was_training)
    result.seconds = time.perf_counter() - t_start
    report(progress, 1.0, "done")
    return result


def _diagnostic_batches(hidden: list[torch.Tensor], n_tokens: Optional[int], seed: int) -> list[int]:
    """Indices (sorted) of a seeded random choice of calibration batches holding >= ``n_tokens`` tokens."""
    sizes = [h.shape[:-1].numel() for h in hidden]
    if n_tokens is None or n_tokens >= sum(sizes):
        return list(range(len(hidden)))
    chosen, got = [], 0
    for b in torch.randperm(len(hidden), generator=torch.Generator().manual_seed(seed)).tolist():
        if got >= n_tokens:
            break
        chosen.append(b)
        got += sizes[b]
    return sorted(chosen)


class _Timer:
    """Adds wall time per phase into ``timings``; syncs CUDA first so GPU work lands in its own phase."""

    def __init__(self, timings: dict[str, float], peaks: dict[str, float], device: torch.device):
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


def _quantize_blocks(model, blocks, path, groups, recipe, methods, tokens, device, stats, result, progress,
                     diagnostic_tokens=DIAGNOSTIC_TOKENS):
    n_blocks = len(blocks)
    batch_size = max(1, TOKENS_PER_BATCH // tokens.shape[1])
    hidden_size = getattr(model.config, "hidden_size", None) or 0
    dtype = next(blocks[0].parameters()).dtype
    store = _store_device(device, tokens.numel() * hidden_size * dtype.itemsize)
    timer = _Timer(result.timings, result.peak_memory, device)
    report(progress, 0.0, "capturing block inputs")
    with timer("catch"):
        hidden, calls = _catch(model, blocks, path, tokens, device, batch_size, store)
    diag = _diagnostic_batches(hidden, diagnostic_tokens, recipe.seed)
    n_stages = len(methods) + 2
    stats_tokens = STATS_MAX_TOKENS if stats is not None else 0
    for i, block in enumerate(blocks):
        prefix = f"{path}.{i}"
        home = _device_of(block)
        with timer("move"):
            block.to(device)
        try:
            linears = _wrap_linears(block, prefix, recipe)
            _check_finite(linears, prefix)
            ctx = BlockContext(i, prefix, block, device, linears, groups, hidden, calls[i], diag)
            with timer("diagnostics"):
                errors, xs = ctx.diagnostics(stats_tokens=stats_tokens)
                _activation_stats(stats, ctx, "fp", xs, result)
                del xs                  # (n, in) float32 per linear: not kept alive through the steps
            for k, (cfg, apply) in enumerate(methods):
                report(progress, (i + (k + 1) / n_stages) / n_blocks, f"block {i + 1}/{n_blocks}: {cfg.name}")
                if recipe.allow_requantize:
                    for q in linears.values():
                        q.unmark_quantized()
                t0 = time.perf_counter()
                with timer(f"step {cfg.name}"):
                    record = apply(block, ctx, cfg)
                record.seconds = record.seconds or time.perf_counter() - t0
                ctx.invalidate()
                with timer("diagnostics"):
                    after, xs = ctx.diagnostics(stats_tokens=stats_tokens if cfg.kind == "scaling" else 0)
                    _fill_errors(record, prefix, errors, after)
                    _activation_stats(stats, ctx, cfg.name, xs, result)
                    del xs
                result.records.append(record)
                errors = after
            remaining = [n for n, q in linears.items() if not q.weight_quantized]
            if remaining:
                t0 = time.perf_counter()
                with timer("final rtn"):
                    for n in remaining:
                        linears[n].quantize_weight()
                record = StepRecord("rtn", i, [ModuleRecord(f"{prefix}.{n}", "rtn", details={"final": True})
                                               for n in remaining], time.perf_counter() - t0)
                with timer("diagnostics"):
                    after = ctx.output_errors(remaining)
                _fill_errors(record, prefix, {n: errors[n] for n in remaining}, after)
                result.records.append(record)
            with timer("weight stats"):
                for n, q in linears.items():
                    if stats is not None and q.weight_fp is not None:
                        result.stats["weights"].append(stats.weight_stats(f"{prefix}.{n}", i, q.weight_fp,
                                                                          q.weight.data, q.spec))
                    q.release_fp()
            report(progress, (i + (n_stages - 0.5) / n_stages) / n_blocks, f"block {i + 1}/{n_blocks}: outputs")
            # the quantized block's outputs are the next block's inputs (same batches as the steps saw)
            with timer("outputs"), torch.inference_mode():
                hidden = [ctx.call_block(h).to(store) for h in hidden]
        finally:
            if home is not None:
                with timer("move"):
                    block.to(home)
        report(progress, (i + 1) / n_blocks, f"block {i + 1}/{n_blocks} done")


def _activation_stats(stats, ctx: BlockContext, stage: str, xs: dict[str, torch.Tensor],
                      result: QuantResult) -> None:
    """Append one activation-statistics row per linear from its sampled inputs ``xs[name]`` (n, in)."""
    if stats is None:
        return
    for n, x in xs.items():
        result.stats["activations"].append(stats.activation_stats(f"{ctx.prefix}.{n}", ctx.index, stage, x))


def _quantize_extras(model: nn.Module, recipe: Recipe, device: torch.device, result: QuantResult) -> None:
    """Weight-quantize the embeddings and/or wrap lm_head in a QuantLinear when the recipe targets them."""
    names = {id(m): n for n, m in model.named_modules()}
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = head is not None and emb is not None and head.weight is emb.weight
    targets = recipe.target_set
    if tied and ("embeddings" in targets or "lm_head" in targets) and not _same_mx_spec(recipe, names, emb, head):
        # untie: only one is quantized, or they get different formats, or the format is not idempotent
        # (per-channel int / nvfp4 scales move when re-quantized), so one tensor cannot serve both
        head.weight = nn.Parameter(head.weight.data.clone(), requires_grad=False)
        result.notes.append("lm_head and embeddings were tied; untied so that each gets its own quantization")
    if "embeddings" in targets and emb is not None:
        spec = recipe.spec_for(names[id(emb)])
        if spec is not None and spec.weights != "none":
            from .formats import quantize

            w = emb.weight.data
            w.copy_(quantize(w.to(device), spec.weights, spec.block_size, axis=-1, rounding=spec.rounding).to(w.device))
            result.records.append(StepRecord("rtn", -1, [ModuleRecord(names[id(emb)], "rtn",
                                                                      details={"weight_only": True})]))
    if "lm_head" in targets and isinstance(head, nn.Linear):
        name = names[id(head)]
        spec = recipe.spec_for(name)
        if spec is not None and not (spec.weights == "none" and spec.acts == "none"):
            q = QuantLinear.from_linear(head, spec)
            q.quantize_weight()
            q.release_fp()
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, q)
            result.records.append(StepRecord("rtn", -1, [ModuleRecord(name, "rtn", details={"calibrated": False})]))
