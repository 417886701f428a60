"""One experiment end to end: load -> FP eval -> quantize -> quantized eval (+KL) -> optional export.

The CLI's ``run`` and the app both call ``run_experiment``; it owns the progress split across stages.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from torch import nn

from . import __version__
from .atomic import check_target
from .checkpoint import packed_bits_per_weight
from .data import calibration_batches
from .evaluate import evaluate_model
from .errors import MxlabError
from .models import check_finite_weights, load_model, resolve_device
from .placement import fp_reference, same_device
from .ptq.pipeline import quantize_model
from .rundir import export_run
from .scalelab import recipe_scale_lab
from .zeroshot import parse_tasks, task_cost, zero_shot
from .progress import ProgressFn, report, scaled
from .workspace import check_name, new_run_dir, write_meta

log = logging.getLogger(__name__)

# share of the progress bar per stage: load, FP eval, quantize, quantized eval, export
_STAGES = {"load": (0.0, 0.05), "eval_fp": (0.05, 0.2), "scale_lab": (0.2, 0.22), "quantize": (0.22, 0.75),
           "eval_q": (0.75, 0.92), "export": (0.92, 1.0)}


@dataclasses.dataclass
class RunOutcome:
    """What one experiment produced: the QuantResult, the metrics, the quantized model and its tokenizer."""

    result: Any
    metrics: dict[str, Any]
    model: nn.Module
    tokenizer: Any
    info: dict[str, Any] = dataclasses.field(default_factory=dict)  # model source, eval set, versions
    out_dir: Path | None = None
    scale_lab: dict[str, Any] | None = None   # every MX scale rule on the FP weights (scalelab.recipe_scale_lab)


def _stage(progress: ProgressFn | None, name: str) -> ProgressFn | None:
    return scaled(progress, *_STAGES[name])


def run_experiment(source: str | os.PathLike | None, recipe: Any, *, eval_dataset: str = "tinystories",
                   out_dir: str | os.PathLike | None = None, max_eval_windows: int | None = None,
                   progress: ProgressFn | None = None, with_kl: bool = True, device: str | None = None,
                   eval_seq_len: int | None = None, calib_tokens: Any = None,
                   overwrite: bool = False, allow_pickle: bool = False,
                   trust_remote_code: bool = False, tasks: list[str] | str | None = None,
                   task_limit: int | None = None, tasks_online: bool = False,
                   task_batch_size: int = 8, stream: bool | None = None,
                   workspace: str | os.PathLike | None = None, name: str = "", origin: str = "api") -> RunOutcome:
    """Quantize ``source`` (None: the embedded model) with ``recipe``, evaluate it, optionally export it.

    With ``workspace`` (and no ``out_dir``) the run gets a fresh directory there, named ``name``.

    ``stream``: keep the model on the CPU and stream one decoder block at a time to ``device`` for the
    quantization and the evaluations; None (default): only when the weights take more than half of
    the accelerator's memory (``mxlab.placement``).

    ``tasks``: lm-eval zero-shot tasks run on the FP and the quantized model (``mxlab.zeroshot``);
    the tables land in ``metrics["zero_shot"]`` as {"fp": {task: {metric: v}}, "quant": ..., "limit": N}.
    """
    if workspace is not None and out_dir is None:
        out_dir = new_run_dir(workspace, name)
    if name:
        check_name(name)
    if out_dir is not None:                 # fail before any work, not after the whole run
        check_target(Path(out_dir), overwrite)
    if tasks:   # unknown names or missing offline data stop the run before any work
        tasks = parse_tasks(tasks)
        if not tasks_online:
            task_cost(tasks, task_limit)
    report(progress, 0.0, "loading model")
    target = resolve_device(device)
    t0 = time.perf_counter()
    model, tokenizer = load_model(None if source is None else str(source), device=target,
                                  allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
                                  progress=_stage(progress, "load"), stream=stream)
    seconds_load = time.perf_counter() - t0
    streamed = not same_device(next(model.parameters()).device, target)
    report(progress, _STAGES["load"][1], "checking the weights")   # a cancellation point between heavy calls
    check_finite_weights(model)
    if calib_tokens is None and "decoder" in recipe.target_set:
        # a bad calibration source should stop the run now, not after the FP evaluation
        calib_tokens = calibration_batches(tokenizer, recipe.calib.dataset, recipe.calib.n_samples,
                                           recipe.calib.seq_len, recipe.seed)
    report(progress, _STAGES["load"][1], "evaluating the FP model")

    t0 = time.perf_counter()
    fp = evaluate_model(model, tokenizer, eval_dataset, seq_len=eval_seq_len, max_windows=max_eval_windows,
                        progress=_stage(progress, "eval_fp"), device=target)
    zs_fp = zero_shot(model, tokenizer, tasks, limit=task_limit, online=tasks_online, batch_size=task_batch_size,
                      progress=_stage(progress, "eval_fp")) if tasks else None
    seconds_eval = seconds_eval_fp = time.perf_counter() - t0
    log.info("FP perplexity on %s: %.4f (%d tokens)", eval_dataset, fp["ppl"], fp["n_tokens"])
    # the pipeline edits the model in place: keep an FP copy as the KL / top-1 reference
    reference = fp_reference(model) if with_kl else None

    # every scale rule on the weights before the pipeline changes them: per weight, no forward pass
    t0 = time.perf_counter()
    scale_lab = recipe_scale_lab(model, recipe, progress=_stage(progress, "scale_lab"))
    seconds_scale_lab = time.perf_counter() - t0

    t0 = time.perf_counter()
    result = quantize_model(model, tokenizer, recipe, progress=_stage(progress, "quantize"), device=target,
                            calib_tokens=calib_tokens)
    seconds_quantize = time.perf_counter() - t0
    qmodel = result.model

    t0 = time.perf_counter()
    q = evaluate_model(qmodel, tokenizer, eval_dataset, reference=reference, seq_len=eval_seq_len,
                       max_windows=max_eval_windows, progress=_stage(progress, "eval_q"), device=target)
    zs_q = zero_shot(qmodel, tokenizer, tasks, limit=task_limit, online=tasks_online, batch_size=task_batch_size,
                     progress=_stage(progress, "eval_q")) if tasks else None
    seconds_eval += time.perf_counter() - t0
    del reference
    log.info("quantized perplexity: %.4f", q["ppl"])

    _check_finite_metrics({"FP perplexity": fp["ppl"], "quantized perplexity": q["ppl"], "KL": q.get("kl")})
    metrics = {"ppl_fp": float(fp["ppl"]), "ppl_quant": float(q["ppl"]),
               "kl": _maybe_float(q.get("kl")), "top1": _maybe_float(q.get("top1")),
               "bits_per_weight": packed_bits_per_weight(qmodel),
               "seconds_quantize": seconds_quantize, "seconds_eval": seconds_eval,
               "n_eval_tokens": int(q["n_tokens"])}
    if tasks:
        metrics["zero_shot"] = {"fp": zs_fp, "quant": zs_q, "limit": task_limit}
    info = {"model": "embedded:stories260K" if source is None else str(source), "eval_dataset": eval_dataset,
            "max_eval_windows": max_eval_windows, "eval_seq_len": eval_seq_len, "device": device,
            "streamed_blocks": streamed,
            "seconds": {"load": seconds_load, "eval_fp": seconds_eval_fp, "quantize": seconds_quantize,
                        "eval_quant": seconds_eval - seconds_eval_fp, "scale_lab": seconds_scale_lab},
            "mxlab_version": __version__}
    outcome = RunOutcome(result=result, metrics=metrics, model=qmodel, tokenizer=tokenizer, info=info,
                         scale_lab=scale_lab)
    if out_dir is not None:
        report(progress, _STAGES["export"][0], "exporting")
        t0 = time.perf_counter()
        outcome.out_dir = export_run(outcome, out_dir, progress=_stage(progress, "export"), overwrite=overwrite)
        write_meta(outcome.out_dir, name=name, origin=origin)
        info["seconds"]["export"] = time.perf_counter() - t0
    for phase, seconds in info["seconds"].items():
        log.info("phase %s: %.1f s", phase, seconds)
    report(progress, 1.0, "done")
    return outcome


def _check_finite_metrics(values: dict[str, Any]) -> None:
    """A NaN/Inf metric means a broken model: stop before anything is written, naming the metric."""
    for name, v in values.items():
        if v is not None and not math.isfinite(float(v)):
            raise MxlabError(f"the {name} is {float(v)}: the model produces non-finite outputs (a damaged checkpoint, "
                             "or a format that overflows it); nothing was written")


def _maybe_float(x: Any) -> float | None:
    return None if x is None else float(x)
