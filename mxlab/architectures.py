"""Architecture knowledge as data: where the decoder blocks are and which ops feed which linears.

A scaling group says "the output channels of ``prev`` are the input channels of ``linears``", so a
per-channel scale ``s`` can be divided out of ``prev`` and multiplied into the linears' columns
without changing the FP function (SmoothQuant, AWQ). Names are relative to one decoder block.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Literal, Optional

import torch.nn as nn

from .errors import MxlabError

log = logging.getLogger(__name__)


@dataclass
class ScalingGroup:
    """``prev`` (a norm or a linear) feeds exactly ``linears``; ``prev_kind`` says how to fold into it.

    ``module``: the module whose output a scale search scores (llm-awq's ``module2inspect``: the
    attention block for q/k/v, the MLP for gate/up); None: the linears' own outputs.
    """

    prev: str
    linears: list[str]
    prev_kind: Literal["norm", "linear"] = "norm"
    module: Optional[str] = None


@dataclass
class ArchitectureMap:
    """Where the decoder blocks are (dotted path to the ModuleList) and each block's scaling groups."""

    name: str
    blocks: str
    groups: list[ScalingGroup]
    notes: list[str] = field(default_factory=list)


# One table per family. A group may carry a condition on the config (see _CONDITIONS).
_LLAMA_GROUPS = [
    (ScalingGroup("input_layernorm", ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
                  module="self_attn"), None),
    # v -> o is exact only when v_proj's outputs are o_proj's inputs one to one (no GQA repeat).
    (ScalingGroup("self_attn.v_proj", ["self_attn.o_proj"], "linear"), None),
    (ScalingGroup("post_attention_layernorm", ["mlp.gate_proj", "mlp.up_proj"], module="mlp"), None),
    # down(act(gate(x)) * up(x)): scaling up's output channel scales the product channel.
    (ScalingGroup("mlp.up_proj", ["mlp.down_proj"], "linear"), None),
]
_OPT_GROUPS = [
    (ScalingGroup("self_attn_layer_norm", ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
                  module="self_attn"), "norm_before"),
    (ScalingGroup("self_attn.v_proj", ["self_attn.out_proj"], "linear"), None),
    (ScalingGroup("final_layer_norm", ["fc1"]), "norm_before"),
    # fc2(relu(fc1(x))): relu(x / s) = relu(x) / s for s > 0, so the fold is exact for ReLU only.
    (ScalingGroup("fc1", ["fc2"], "linear"), "relu"),
]
ARCHITECTURES: dict[str, tuple[str, list]] = {
    "llama": ("model.layers", _LLAMA_GROUPS),
    "mistral": ("model.layers", _LLAMA_GROUPS),
    "qwen2": ("model.layers", _LLAMA_GROUPS),
    # Qwen3's q_norm/k_norm act after q_proj/k_proj: scaling their input columns is still exact.
    "qwen3": ("model.layers", _LLAMA_GROUPS),
    "opt": ("model.decoder.layers", _OPT_GROUPS),
}
_CONDITIONS: dict[str, tuple[Callable, str]] = {
    "norm_before": (lambda cfg: getattr(cfg, "do_layer_norm_before", True),
                    "layer norms come after attention/MLP (do_layer_norm_before=False)"),
    "relu": (lambda cfg: getattr(cfg, "activation_function", "relu") == "relu",
             "the MLP activation is not ReLU, so fc1 -> fc2 cannot be folded"),
}


def _model_type(model: nn.Module) -> Optional[str]:
    cfg = getattr(model, "config", None)
    return getattr(cfg, "model_type", None)


def architecture_map(model: nn.Module) -> Optional[ArchitectureMap]:
    """The map of a known architecture, its groups checked against the model's shapes; else None."""
    name = _model_type(model)
    if name not in ARCHITECTURES:
        return None
    blocks_path, table = ARCHITECTURES[name]
    blocks = model.get_submodule(blocks_path)
    first = blocks[0]
    groups, notes = [], []
    for group, condition in table:
        if condition is not None:
            ok, why = _CONDITIONS[condition]
            if not ok(model.config):
                notes.append(f"{group.prev} -> {', '.join(group.linears)} skipped: {why}")
                continue
        reason = _shape_problem(first, group)
        if reason:
            notes.append(f"{group.prev} -> {', '.join(group.linears)} skipped: {reason}")
            continue
        groups.append(ScalingGroup(group.prev, list(group.linears), group.prev_kind, group.module))
    for note in notes:
        log.debug("%s: %s", name, note)
    return ArchitectureMap(name=name, blocks=blocks_path, groups=groups, notes=notes)


def _shape_problem(block: nn.Module, group: ScalingGroup) -> Optional[str]:
    """Why ``group`` cannot be folded in ``block`` (missing module, mismatched channels), or None."""
    try:
        prev = block.get_submodule(group.prev)
        linears = [block.get_submodule(n) for n in group.linears]
        if group.module is not None:
            block.get_submodule(group.module)
    except AttributeError as e:
        return f"module missing ({e})"
    if group.prev_kind == "linear":
        width = prev.weight.shape[0]
    else:
        width = prev.weight.shape[-1] if getattr(prev, "weight", None) is not None else None
    for n, lin in zip(group.linears, linears):
        if width is not None and lin.weight.shape[1] != width:
            return (f"{group.prev} has {width} output channels but {n} has {lin.weight.shape[1]} inputs "
                    f"(grouped-query attention repeats v heads)")
    return None


def decoder_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(dotted path, ModuleList) of the decoder blocks; unknown models: the largest ModuleList."""
    amap = architecture_map(model)
    if amap is not None:
        return amap.blocks, model.get_submodule(amap.blocks)
    best, best_size = None, -1
    for path, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            size = sum(p.numel() for p in module.parameters())
            if size > best_size:
                best, best_size = (path, module), size
    if best is None:
        raise MxlabError(f"cannot find decoder blocks in {type(model).__name__}: it has no nn.ModuleList; "
                         f"known architectures: {sorted(ARCHITECTURES)}")
    log.info("no architecture map for %r: using %s (%d blocks) as the decoder blocks",
             _model_type(model), best[0], len(best[1]))
    return best
