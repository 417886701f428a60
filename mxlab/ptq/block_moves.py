"""Moving decoder blocks between host memory and the accelerator while their neighbour is being worked on.

A model too big for the GPU stays in host memory and the pipeline brings one block at a time. Moved
in line, an 8B block costs ~0.4 s per block on an H200 (436 MB each way through pageable memory).
:class:`BlockMoves` does the same copies on a helper thread and a side CUDA stream: while block i is
quantized, block i - 1 goes home and block i + 1 comes. The weights are the same bytes either way. On
the H200 the move phase fell to 0.01 s per block, but blocks got only 0.1 s faster: the overlapped
copies slow the work they overlap (BENCHMARKS.md).

Order of safety: the side stream first waits for everything the main stream has queued (block i - 1's
last kernels wrote its weights), and ``wait()`` joins the thread after its stream has finished, so
the main thread never sees a half-copied block. At most two blocks are on the device at once: the
one being quantized and the previous or the next one (the helper sends the previous one home before
it brings the next).
"""
from __future__ import annotations

import threading
from typing import Optional

import torch
import torch.nn as nn

from ..placement import same_device
from .capture import device_of


class BlockMoves:
    """Block moves, in line or (CUDA, ``overlap``) on a helper thread and stream.

    ``homes[i]``: where block i lives between its turns (None for a block with no tensors); ``visiting``:
    the blocks that are (or are being moved) on the device, which ``all_home`` sends back.
    """

    def __init__(self, blocks: list[nn.Module], device: torch.device, overlap: bool = True):
        self.blocks, self.device = blocks, device
        self.homes: list[Optional[torch.device]] = [device_of(b) for b in blocks]
        self.overlap = overlap and device.type == "cuda"
        self.visiting: set[int] = set()
        self._stream = torch.cuda.Stream(device) if self.overlap else None
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None

    def _away(self, i: int) -> bool:
        """Block i lives somewhere other than the device (so it has to be moved there and back)."""
        return 0 <= i < len(self.blocks) and self.homes[i] is not None and not same_device(self.homes[i], self.device)

    def _come(self, i: int) -> None:
        self.visiting.add(i)
        self.blocks[i].to(self.device)

    def _go(self, i: int) -> None:
        self.blocks[i].to(self.homes[i])
        self.visiting.discard(i)

    def bring(self, i: int) -> None:
        """Block i on the device; then, while the caller works on it, block i - 1 goes home and block i + 1
        comes (on the helper when overlapping; without, block i - 1 goes home in line and i + 1 waits)."""
        self.wait()
        back = i - 1 if self._away(i - 1) and i - 1 in self.visiting else None
        ahead = i + 1 if self._away(i + 1) else None
        if not self.overlap and back is not None:
            self._go(back)                           # in line: one block on the device at a time
            back = None
        if self._away(i) and i not in self.visiting:
            self._come(i)
        if not self.overlap:
            return
        if back is None and ahead is None:
            return
        self._stream.wait_stream(torch.cuda.current_stream(self.device))   # block i - 1's last kernels first
        self._thread = threading.Thread(target=self._move, args=(back, ahead), name="mxlab-block-moves",
                                        daemon=True)
        self._thread.start()

    def _move(self, back: Optional[int], ahead: Optional[int]) -> None:
        try:
            with torch.cuda.device(self.device), torch.cuda.stream(self._stream):
                if back is not None:
                    self._go(back)
                if ahead is not None:
                    self._come(ahead)
            self._stream.synchronize()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread in wait()
            self._error = exc

    def wait(self) -> None:
        """The helper's move (if any) is done; raises what it raised."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            exc, self._error = self._error, None
            raise exc

    def all_home(self) -> None:
        """After the loop, or when it stopped early: every visiting block back where it lives."""
        try:
            self.wait()
        finally:
            for i in sorted(self.visiting):
                self._go(i)
