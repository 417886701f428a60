"""Fold per-channel scales into a block: the FP function stays the same (SmoothQuant, AWQ)."""
from __future__ import annotations

import logging

import torch
import torch.nn as nn

from ...architectures import ScalingGroup
from ...errors import MxlabError
from ...records import StepRecord
from ..context import BlockContext

log = logging.getLogger(__name__)


def skipped_without_groups(ctx: BlockContext, record: StepRecord) -> bool:
    """True (with a note, logged once per model) when the architecture has no scaling groups to fold into."""
    if ctx.groups:
        return False
    note = f"no scaling groups for this architecture (no architecture map): {record.step} skipped"
    if ctx.index == 0:
        log.warning(note)
    record.notes.append(note)
    return True


@torch.no_grad()
def fold_scales(block: nn.Module, group: ScalingGroup, s: torch.Tensor) -> None:
    """Divide ``group.prev``'s output channels by ``s`` and multiply the linears' input columns by ``s``.

    When a ``rotate`` step came first, the linears' inputs are rotated online, and 1/s joins that
    online transform (``QuantLinear.input_scale``) instead of the previous op.

    ``s``: (channels,) positive. Norm: weight (and bias) / s. Linear prev: rows of weight (and
    bias) / s. Each linear: weight[:, j] * s[j]. Computed in float32, stored in each tensor's dtype.
    """
    prev = block.get_submodule(group.prev)
    linears = [block.get_submodule(n) for n in group.linears]
    s = s.detach().float().flatten()
    if not torch.all(torch.isfinite(s)) or not torch.all(s > 0):
        raise MxlabError(f"scales for {group.prev} -> {group.linears} must be finite and positive")
    for name, m in [(group.prev, prev), *zip(group.linears, linears)]:
        if getattr(m, "weight_quantized", False):
            raise MxlabError(f"{name} is already quantized: a scaling step must come before GPTQ/RTN")
    def scale_(t: torch.Tensor, factor: torch.Tensor) -> None:
        t.copy_((t.float() * factor.to(t.device)).to(t.dtype))

    rotations = {getattr(lin, "rotation", 0) for lin in linears}
    if rotations != {0}:
        # rotated inputs: the channels s scales exist only after each linear's online rotation, so 1/s
        # joins that transform ((x R) / input_scale / s) instead of the previous op
        if len(rotations) > 1:
            raise MxlabError(f"{group.linears} share an input but not one rotation; give them the same recipe "
                             f"(no skip override for only some of them)")
        for lin in linears:
            lin.input_scale = s.clone() if lin.input_scale is None else lin.input_scale.float() * s.to(
                lin.input_scale.device)
            scale_(lin.weight, s[None, :])
            if getattr(lin, "weight_fp", None) is not None:
                scale_(lin.weight_fp, s[None, :])
        return
    if prev.weight.shape[0 if group.prev_kind == "linear" else -1] != s.numel():
        raise MxlabError(f"{s.numel()} scales do not match the output channels of {group.prev}")

    if group.prev_kind == "linear":
        scale_(prev.weight, 1.0 / s[:, None])           # (out, in): rows
        if getattr(prev, "weight_fp", None) is not None:
            scale_(prev.weight_fp, 1.0 / s[:, None])
    else:
        scale_(prev.weight, 1.0 / s)                     # (channels,)
    if getattr(prev, "bias", None) is not None:
        scale_(prev.bias, 1.0 / s)
    for lin in linears:
        scale_(lin.weight, s[None, :])                   # (out, in): columns
        if getattr(lin, "weight_fp", None) is not None:  # keep the error reference in the same basis
            scale_(lin.weight_fp, s[None, :])
