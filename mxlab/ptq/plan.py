"""The plan: the one answer to "which modules does this recipe quantize, and how".

The pipeline wraps exactly these modules, the app's model summary lists them and sensitivity
measures them; nobody else walks the model to decide.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch.nn as nn

from ..architectures import architecture_map, decoder_blocks
from ..recipe import QuantSpec, Recipe

TargetKind = Literal["linear", "lm_head", "embedding"]


@dataclass(frozen=True)
class Target:
    """One module the recipe quantizes.

    Args:
        name: full module name, e.g. ``model.layers.3.mlp.down_proj``.
        module: the module itself (an ``nn.Linear`` or ``nn.Embedding`` of the FP model).
        kind: ``linear`` (a decoder Linear: weights and activations), ``lm_head`` (weights and
            activations, no calibration) or ``embedding`` (weight only).
        spec: formats after overrides.
        block: decoder block index for ``linear``, None otherwise.
        local: for ``linear``, the name inside its block (``mlp.down_proj``); else the full name.
    """

    name: str
    module: nn.Module
    kind: TargetKind
    spec: QuantSpec
    block: Optional[int] = None
    local: str = ""


def _quantizes(spec: Optional[QuantSpec], kind: TargetKind) -> bool:
    """A spec that changes something: weights, or (for Linears) activations, not 'none'."""
    if spec is None:
        return False
    if kind == "embedding":
        return spec.weights != "none"
    return not (spec.weights == "none" and spec.acts == "none")


def block_targets(block: nn.Module, prefix: str, index: int, recipe: Recipe) -> list[Target]:
    """The Linears of one decoder block that ``recipe`` quantizes (names relative to the block's parent)."""
    out = []
    rotates = any(s.name == "rotate" for s in recipe.steps)   # a rotation changes even a 'none' layer
    for name, module in block.named_modules():
        if type(module) is not nn.Linear:    # a QuantLinear means the block is already quantized
            continue
        full = f"{prefix}.{name}"
        spec = recipe.spec_for(full)
        if _quantizes(spec, "linear") or (spec is not None and rotates):
            out.append(Target(full, module, "linear", spec, index, name))
    return out


def plan(model: nn.Module, recipe: Recipe) -> list[Target]:
    """Every module of ``model`` that ``recipe`` quantizes: the decoder Linears, then the input
    embedding (weight only), then the lm_head, each with its spec after overrides."""
    targets: list[Target] = []
    sets = recipe.target_set
    if "decoder" in sets:
        path, blocks = decoder_blocks(model)
        for i, block in enumerate(blocks):
            targets += block_targets(block, f"{path}.{i}", i, recipe)
    names = {id(m): n for n, m in model.named_modules()}
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if "embeddings" in sets and emb is not None:
        spec = recipe.spec_for(names[id(emb)])
        if _quantizes(spec, "embedding"):
            targets.append(Target(names[id(emb)], emb, "embedding", spec, local=names[id(emb)]))
    if "lm_head" in sets and isinstance(head, nn.Linear):
        spec = recipe.spec_for(names[id(head)])
        if _quantizes(spec, "lm_head"):
            targets.append(Target(names[id(head)], head, "lm_head", spec, local=names[id(head)]))
    return targets


@dataclass(frozen=True)
class Outline:
    """What a front end shows about a model's structure, without reading architecture tables itself."""

    family: Optional[str]       # the architecture map's name; None when there is none (no scaling steps)
    block_path: str             # dotted path of the decoder blocks, e.g. ``model.layers``
    n_blocks: int
    n_linear: int               # every nn.Linear in the model, quantized or not


def outline(model: nn.Module) -> Outline:
    """The model's architecture family, where its decoder blocks are, and how many Linears it has."""
    amap = architecture_map(model)
    path, blocks = decoder_blocks(model)
    return Outline(amap.name if amap else None, path, len(blocks), sum(type(m) is nn.Linear for m in model.modules()))
