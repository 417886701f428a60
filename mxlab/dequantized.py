"""The dequantized checkpoint: quantized weights written as plain Linear weights (rotations undone),
loadable by transformers alone. Activation quantization cannot be expressed there: weights only."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .atomic import atomic_directory
from .checkpoint import embeddings_tied, quant_linears, save_tokenizer
from .ptq.rotation import rotate_blocks

log = logging.getLogger(__name__)


def save_dequantized(model: nn.Module, tokenizer: Any, directory: str | os.PathLike, *,
                     overwrite: bool = False) -> Path:
    """Write a plain HF checkpoint: fake-quantized weights as ordinary Linear weights, no mxlab needed.

    Activation quantization cannot be expressed in a plain checkpoint: it reproduces weights only.
    """
    qmods = quant_linears(model)
    acts = sorted({m.spec.acts for m in qmods.values() if m.spec.acts != "none"})
    if acts:
        log.warning("activation quantization (%s) is not part of a dequantized checkpoint: "
                    "it reproduces the quantized weights only", ", ".join(acts))
    # a QuantLinear may hold extra state (caches, flags); keep only what an nn.Linear has
    state = {}
    for key, value in model.state_dict().items():
        owner, _, leaf = key.rpartition(".")
        if owner in qmods and leaf not in ("weight", "bias"):
            continue
        if owner in qmods and leaf == "weight" and qmods[owner].has_transform:
            value = _plain_weight(qmods[owner])
        state[key] = value
    with atomic_directory(directory, overwrite=overwrite) as tmp:
        had_qc = hasattr(model.config, "quantization_config")
        qc = getattr(model.config, "quantization_config", None)
        tie = getattr(model.config, "tie_word_embeddings", None)
        if had_qc:
            del model.config.quantization_config
        if embeddings_tied(model) is False and tie:  # the pipeline untied them to quantize only one
            model.config.tie_word_embeddings = False
        try:
            model.save_pretrained(str(tmp), state_dict=state, safe_serialization=True)
        finally:
            if had_qc:
                model.config.quantization_config = qc
            if tie is not None:
                model.config.tie_word_embeddings = tie
        save_tokenizer(tokenizer, tmp)
    log.info("dequantized checkpoint written to %s", directory)
    return Path(directory)


def _plain_weight(mod: Any) -> torch.Tensor:
    """The nn.Linear weight equal to a rotated QuantLinear without activation quantization: the layer
    computes ((x R) / s) W^T, so W_plain = (W / s) R (R symmetric); in the weight's dtype."""
    w = mod.weight.detach().float()
    if mod.input_scale is not None:
        w = w / mod.input_scale.to(w.device)
    if mod.rotation:
        w = rotate_blocks(w, mod.rotation)
    return w.to(mod.weight.dtype)
