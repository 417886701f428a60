"""BlockContext: everything a method may use about the decoder block being quantized.

The calibration inputs of the block live here (one hidden-state tensor per batch); a method asks
for a Linear's inputs *as the block computes them now*, so after a step rescales or clips, the
next step sees the changed inputs.
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional

import torch
import torch.nn as nn

from ..architectures import ScalingGroup
from ..progress import Pulse, no_pulse
from ..recipe import QuantSpec
from .capture import StopForward
from .diagnostics import measure
from .qlinear import QuantLinear


def layer_input(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What ``module``'s weight multiplies: x after a rotated QuantLinear's online transform, else x."""
    return module.transform_input(x) if getattr(module, "has_transform", False) else x


class BlockContext:
    """The current block, its quantized Linears, its scaling groups and its calibration inputs.

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
        self.hidden, self._call_args = hidden, call_args
        self.diag_batches = list(range(len(hidden))) if diag_batches is None else list(diag_batches)
        self._cache: tuple[Optional[tuple], Optional[torch.Tensor]] = (None, None)
        # long inner loops call it (a cancellation point), with how far they are: ctx.pulse(done 0..1);
        # the pipeline sets it per step (progress.pulse)
        self.pulse: Pulse = no_pulse

    # -- running the block
    def batches(self) -> Iterator[tuple[torch.Tensor, tuple, dict]]:
        """(hidden (B, L, H) on ``device``, args, kwargs) per calibration batch, to call the block with."""
        for h in self.hidden:
            args, kwargs = self._call_args[h.shape[0]]
            yield h.to(self.device, non_blocking=True), args, kwargs

    def call_block(self, hidden: torch.Tensor) -> torch.Tensor:
        """The block's output (B, L, H) for one batch of input hidden states."""
        args, kwargs = self._call_args[hidden.shape[0]]
        out = self.block(hidden.to(self.device), *args, **kwargs)
        return out[0] if isinstance(out, (tuple, list)) else out

    def forward_hooked(self, names: list[str], fn: Callable[[str, torch.Tensor, nn.Module, int], None],
                       stop_after: Optional[str] = None, batches: Optional[list[int]] = None) -> None:
        """Run the batches (default every one) through the block calling ``fn(name, x (n, in), module, batch)``
        at each named module."""
        state = {"batch": 0}

        def make_hook(name: str):
            def hook(module, args, kwargs):
                x = layer_input(module, args[0] if args else kwargs["hidden_states"])
                fn(name, x.reshape(-1, x.shape[-1]), module, state["batch"])
                if name == stop_after:
                    raise StopForward
            return hook

        handles = [self.block.get_submodule(n).register_forward_pre_hook(make_hook(n), with_kwargs=True)
                   for n in names]
        try:
            for b in range(len(self.hidden)) if batches is None else batches:
                state["batch"] = b
                try:
                    self.call_block(self.hidden[b])
                except StopForward:
                    pass
        finally:
            for hd in handles:
                hd.remove()

    # -- inputs of one module
    def input_batches(self, name: str) -> Iterator[torch.Tensor]:
        """Stream the calibration inputs of module ``name``: (n_b, in) float32 on ``device`` per batch."""
        module = self.block.get_submodule(name)
        for h in self.hidden:
            got: list[torch.Tensor] = []

            def hook(m, args, kwargs):
                x = layer_input(m, args[0] if args else kwargs["hidden_states"])
                got.append(x.reshape(-1, x.shape[-1]).float())
                raise StopForward

            handle = module.register_forward_pre_hook(hook, with_kwargs=True)
            try:
                self.call_block(h)
            except StopForward:
                pass
            finally:
                handle.remove()
            if got:
                yield got[0]

    def collect(self, names: list[str], max_tokens: Optional[int] = None,
                observe: Optional[Callable[[str, torch.Tensor], None]] = None) -> dict[str, torch.Tensor]:
        """Inputs of several modules in one pass: name -> (n, in) float32 on ``device``, evenly subsampled
        to at most ``max_tokens`` rows. ``observe(name, x (n_b, in) float32)`` sees every batch whole."""
        sizes = [h.shape[:-1].numel() for h in self.hidden]
        total = sum(sizes)
        keep = None
        if max_tokens is not None and max_tokens < total:
            keep = torch.linspace(0, total - 1, max_tokens).round().long()
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        parts: dict[str, list[torch.Tensor]] = {n: [] for n in names}

        def fn(name, x, module, b):
            if observe is not None:
                observe(name, x.float())
            if keep is not None:
                idx = keep[(keep >= starts[b]) & (keep < starts[b] + sizes[b])] - starts[b]
                x = x[idx.to(x.device)]
            parts[name].append(x.float())

        # one module: the block's forward stops at it (what comes after cannot change its input)
        self.forward_hooked(names, fn, stop_after=names[0] if len(names) == 1 else None)
        return {n: torch.cat(p) for n, p in parts.items()}

    def inputs(self, name: str, max_tokens: Optional[int] = None) -> torch.Tensor:
        """Calibration inputs of ``name`` as captured now: (n_tokens, in) float32 on ``device`` (after a
        rotated layer's online transform: the inputs its weight multiplies).

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

    def input_keys(self) -> dict[str, str]:
        """Linear name -> key of its input: the linears of one scaling group read the same input."""
        keys = {n: n for n in self.linears}
        for group in self.groups:
            for n in group.linears:
                if n in keys:
                    keys[n] = f"group:{group.prev}"
        return keys

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
        return measure(self, names)[0]

    def output_error(self, name: str) -> tuple[float, float]:
        """(mse, sqnr_db) of linear ``name`` (see ``output_errors``)."""
        return self.output_errors([name])[name]
