"""Where a model lives while it runs: whole on the accelerator, or on the CPU with one decoder block
streamed to the accelerator at a time (for models larger than a share of the accelerator's memory).

The quantization pipeline always works one block at a time; this module gives evaluation the same
ability: ``streamed_blocks(model, device)`` moves everything outside the decoder blocks (embeddings,
final norm, head, rotary tables) to ``device`` and each block there for its own forward only.
"""
from __future__ import annotations

import copy
import logging
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from .architectures import decoder_blocks

log = logging.getLogger(__name__)

STREAM_FRACTION = 0.5   # stream blocks when the weights take more than this share of the accelerator


def model_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers (tied tensors counted once)."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def too_big_for(nbytes: int, device: torch.device, fraction: float = STREAM_FRACTION) -> bool:
    """Whether ``nbytes`` of weights exceed ``fraction`` of the accelerator's memory (never for the CPU)."""
    if device.type != "cuda":
        return False
    total = torch.cuda.get_device_properties(device).total_memory
    return nbytes > fraction * total


def fp_reference(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` (the KL / top-1 reference, taken before quantization edits the model):
    beside the model when both copies fit in ``STREAM_FRACTION`` of its accelerator, else in host memory,
    where evaluation streams its blocks (``streamed_blocks``) instead of running out of GPU memory."""
    device = next(model.parameters()).device
    if not too_big_for(2 * model_bytes(model), device):
        return copy.deepcopy(model)
    log.info("the FP reference for KL (%.1f GB) is kept in host memory: a second copy on %s would not fit; "
             "its evaluation streams blocks", model_bytes(model) / 1e9, device)
    return cpu_copy(model)


def cpu_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose parameters and buffers are in host memory, made without a second
    copy on the accelerator (tied tensors stay tied)."""
    memo: dict[int, object] = {}
    for p in model.parameters():
        if id(p) not in memo:
            memo[id(p)] = nn.Parameter(p.detach().to("cpu", copy=True), requires_grad=p.requires_grad)
    for b in model.buffers():
        if id(b) not in memo:
            memo[id(b)] = b.detach().to("cpu", copy=True)
    return copy.deepcopy(model, memo)


def _outside_blocks(model: nn.Module, blocks: nn.ModuleList) -> list[tuple[nn.Module, str, bool]]:
    """(module, tensor name, is_parameter) for every tensor that is not inside a decoder block."""
    inside = {id(m) for b in blocks for m in b.modules()}
    out = []
    for m in model.modules():
        if id(m) in inside:
            continue
        out += [(m, n, True) for n, p in m._parameters.items() if p is not None]
        out += [(m, n, False) for n, b in m._buffers.items() if b is not None]
    return out


def _move(entries: list[tuple[nn.Module, str, bool]], device: torch.device) -> None:
    for m, name, is_param in entries:
        if is_param:
            m._parameters[name].data = m._parameters[name].data.to(device)   # tied parameters move once
        else:
            m._buffers[name] = m._buffers[name].to(device)


def same_device(a: str | torch.device, b: str | torch.device) -> bool:
    """True when ``a`` and ``b`` name one device ("cuda" and "cuda:0" do, on device 0)."""
    a, b = torch.device(a), torch.device(b)
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True
    current = torch.cuda.current_device()
    return (current if a.index is None else a.index) == (current if b.index is None else b.index)


@contextmanager
def streamed_blocks(model: nn.Module, device: str | torch.device) -> Iterator[nn.Module]:
    """Run ``model`` on ``device`` while its decoder blocks stay where they are, one moved in per forward."""
    device = torch.device(device)
    _, blocks = decoder_blocks(model)
    shell = _outside_blocks(model, blocks)
    homes = [(m._parameters[n] if p else m._buffers[n]).device for m, n, p in shell]
    hooks = []

    def bring(block, args, kwargs):
        block.to(device)

    def send_back(home):
        def hook(block, args, kwargs, output):
            block.to(home)
        return hook

    for b in blocks:
        home = next(iter(b.parameters()), torch.empty(0)).device
        if same_device(home, device):
            continue
        hooks.append(b.register_forward_pre_hook(bring, with_kwargs=True))
        hooks.append(b.register_forward_hook(send_back(home), with_kwargs=True))
    _move(shell, device)
    log.info("streaming %d decoder blocks to %s, one at a time", len(blocks), device)
    try:
        yield model
    finally:
        for h in hooks:
            h.remove()
        for entry, home in zip(shell, homes):
            _move([entry], home)
