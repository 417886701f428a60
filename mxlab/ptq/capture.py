"""Catching the first decoder block's inputs, and how the model calls each block.

The model runs with every block replaced by a pass-through that records its input hidden states
and call arguments, then stops after the last block: the embeddings (and whatever else runs
before the blocks) are the only real work.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Optional

import torch
import torch.nn as nn

from ..errors import MxlabError

log = logging.getLogger(__name__)

STORE_FRACTION = 0.25       # keep calibration activations on the GPU if they take < this much free memory


class StopForward(Exception):
    """Raised inside a forward to stop it once what we wanted is captured."""


def device_of(module: nn.Module) -> Optional[torch.device]:
    """The device of the module's first parameter (or buffer); None for a module with neither."""
    t = next(iter(module.parameters()), None)
    if t is None:
        t = next(iter(module.buffers()), None)
    return None if t is None else t.device


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
            raise StopForward
        return hidden


def catch_block_inputs(model: nn.Module, blocks: nn.ModuleList, path: str, tokens: torch.Tensor,
                       device: torch.device, batch_size: int, store: torch.device
                       ) -> tuple[list[torch.Tensor], list[dict[int, tuple]]]:
    """Block 0's input hidden states per batch (B, L, H) on ``store`` and, per block, how the model
    calls it: batch size -> (positional args after hidden, kwargs)."""
    hidden: list[torch.Tensor] = []
    calls: list[dict[int, tuple]] = [{} for _ in blocks]

    def sink(i, h, args, kwargs):
        if i == 0:
            hidden.append(h.detach().to(store))
        calls[i].setdefault(h.shape[0], (_to_device(args, device), _to_device(kwargs, device)))

    shell = [(m, device_of(m)) for m in _shell_modules(model, path)]
    originals = list(blocks)
    try:
        for m, _ in shell:
            m.to(device)
        for i, b in enumerate(originals):
            blocks[i] = _Passthrough(b, i, sink, last=i == len(originals) - 1)
        for start in range(0, tokens.shape[0], batch_size):
            try:
                model(input_ids=tokens[start:start + batch_size].to(device), use_cache=False)
            except StopForward:
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


def store_device(device: torch.device, nbytes: int) -> torch.device:
    """Where calibration activations live: on the GPU if inputs + outputs fit comfortably, else CPU."""
    if device.type != "cuda":
        return device
    free, _ = torch.cuda.mem_get_info(device)
    if 2 * nbytes < STORE_FRACTION * free:
        return device
    log.info("calibration activations (%.1f GB) kept on CPU and streamed to %s", nbytes / 1e9, device)
    return torch.device("cpu")
