"""What a sweep will cost before it runs: parameters, forward FLOPs and accelerator memory per job.

Everything here is an estimate from the checkpoint's headers and the recipe, stated with its formula:
- FLOPs ~ 2 x params x tokens, tokens = calibration tokens x (steps + 1) (each scaling step re-captures
  a block's inputs; the final pass produces the next block's) + evaluation tokens x 3 (FP eval,
  quantized eval, FP reference for KL).
- Accelerator memory ~ 1.25 x (model bytes x (2 with KL: the FP reference copy, else 1)
  + calibration activations (n x L x hidden x 4 B x 4) + the largest GPTQ Hessian (in^2 x 4 B x 2)
  + evaluation logits (8 x L x vocab x 4 B x 3)). ``run_experiment`` keeps the whole model on the device.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import struct
from pathlib import Path
from typing import Any

from ..models import DEFAULT_MODEL_DIR

log = logging.getLogger(__name__)

GIB = 2**30
_DTYPE_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


@dataclasses.dataclass
class ModelShape:
    """What the estimates need from a checkpoint, read without loading its weights."""
    params: int
    hidden: int
    intermediate: int
    vocab: int
    context: int
    bytes_per_param: float


@dataclasses.dataclass
class JobEstimate:
    """One job's estimated cost; None where the model could not be inspected (e.g. a hub id offline)."""
    cell: str
    params: int | None
    flops: float | None
    memory_bytes: float | None


def _model_dir(source: str | None) -> Path | None:
    if source is None:
        return Path(DEFAULT_MODEL_DIR)
    p = Path(source).expanduser()
    return p if p.is_dir() else None


def _safetensors_numel(path: Path) -> tuple[int, int]:
    """(elements, bytes) of every tensor in a .safetensors file, from its JSON header only."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > 100_000_000:
            return 0, 0
        header = json.loads(f.read(n))
    numel = nbytes = 0
    for name, t in header.items():
        if name == "__metadata__":
            continue
        count = 1
        for d in t["shape"]:
            count *= d
        numel += count
        nbytes += count * _DTYPE_BYTES.get(t["dtype"], 4)
    return numel, nbytes


def model_shape(source: str | None) -> ModelShape | None:
    """Parameters and widths of a local checkpoint (None when it cannot be read without loading it)."""
    d = _model_dir(source)
    if d is None or not (d / "config.json").is_file():
        return None
    try:
        cfg = json.loads((d / "config.json").read_text())
        numel = nbytes = 0
        for f in d.glob("*.safetensors"):
            a, b = _safetensors_numel(f)
            numel, nbytes = numel + a, nbytes + b
    except (OSError, ValueError, KeyError, struct.error) as e:
        log.info("cannot inspect %s for the cost estimate: %s", d, e)
        return None
    if numel == 0:
        return None
    hidden = int(cfg.get("hidden_size") or cfg.get("d_model") or 0)
    inter = int(cfg.get("intermediate_size") or cfg.get("ffn_dim") or 4 * hidden)
    context = int(cfg.get("max_position_embeddings") or 2048)
    return ModelShape(numel, hidden, inter, int(cfg.get("vocab_size") or 0), context, nbytes / numel)


def estimate_job(cell_name: str, config: dict[str, Any], shape: ModelShape | None) -> JobEstimate:
    """FLOPs and accelerator memory of one cell (see the module docstring for the formulas)."""
    if shape is None:
        return JobEstimate(cell_name, None, None, None)
    recipe, ev = config["recipe"], config["eval"]
    calib_tokens = recipe["calib"]["n_samples"] * recipe["calib"]["seq_len"]
    seq = ev.get("seq_len") or min(shape.context, 2048)
    windows = ev.get("max_windows") or 256        # whole eval sets here are a few hundred windows
    eval_tokens = windows * seq
    flops = 2.0 * shape.params * (calib_tokens * (len(recipe["steps"]) + 1) + eval_tokens * 3)
    model = shape.params * shape.bytes_per_param * (2 if config["with_kl"] else 1)  # checkpoint dtype
    calib = calib_tokens * shape.hidden * 4 * 4
    hessian = max(shape.hidden, shape.intermediate) ** 2 * 4 * 2
    logits = 8 * seq * shape.vocab * 4 * 3
    return JobEstimate(cell_name, shape.params, flops, 1.25 * (model + calib + hessian + logits))


def estimate_sweep(cells: list) -> list[JobEstimate]:
    """An estimate for every cell (each model inspected once)."""
    shapes: dict[Any, ModelShape | None] = {}
    out = []
    for cell in cells:
        src = cell.config["model"]
        if src not in shapes:
            shapes[src] = model_shape(src)
        out.append(estimate_job(cell.name, cell.config, shapes[src]))
    return out


def gpu_memory() -> list[int]:
    """Total memory (bytes) of every visible CUDA device; [] without CUDA."""
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count())]


def jobs_per_gpu(estimates: list[JobEstimate], gpu_bytes: int, headroom: float = 0.9) -> int | None:
    """How many of the largest job fit on one GPU at once (None when a job's memory is unknown)."""
    known = [e.memory_bytes for e in estimates if e.memory_bytes]
    if not known or len(known) < len(estimates):
        return None
    return max(1, int(headroom * gpu_bytes // max(known)))


def describe(estimates: list[JobEstimate], n_todo: int, workers: int, gpus: list[int],
             per_gpu: int | None) -> str:
    """A few lines for the user: jobs, FLOPs, the memory plan."""
    lines = []
    flops = [e.flops for e in estimates if e.flops]
    if flops:
        lines.append(f"estimated compute: {sum(flops) / 1e12:.3g} TFLOP in all ({max(flops) / 1e12:.3g} TFLOP "
                     f"for the largest job; 2 x params x tokens)")
    else:
        lines.append("estimated compute: unknown (the model is not a local checkpoint)")
    mem = [e.memory_bytes for e in estimates if e.memory_bytes]
    if gpus:
        job = f"{max(mem) / GIB:.2f} GiB per job (estimate)" if len(mem) == len(estimates) else \
            "unknown memory per job (assuming one job per GPU)"
        lines.append(f"memory plan: {job}; {len(gpus)} GPU(s) of {min(gpus) / GIB:.0f} GiB -> "
                     f"{per_gpu or 1} job(s) at a time per GPU, {workers} worker(s) for {n_todo} job(s)")
        if per_gpu and workers > per_gpu * len(gpus):
            lines.append(f"warning: {workers} workers exceed the plan ({per_gpu * len(gpus)}); "
                         "jobs may run out of memory and will then be recorded as failed")
    elif mem:
        lines.append(f"memory: {max(mem) / GIB:.2f} GiB per job (estimate), {workers} worker(s) on CPU "
                     f"for {n_todo} job(s), {max(1, (os.cpu_count() or 1) // workers)} thread(s) each")
    return "\n".join(lines)
