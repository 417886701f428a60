"""Progress reporting: the library calls a plain callback; front ends adapt it.

A callback is ``progress(fraction: float, message: str) -> None`` with ``fraction`` in [0, 1].
The CLI maps it to tqdm, the app to ``gr.Progress``. A callback may raise ``Cancelled`` to stop work.
"""
from __future__ import annotations

import time
from typing import Callable, Optional

ProgressFn = Callable[[float, str], None]


def report(progress: Optional[ProgressFn], fraction: float, message: str) -> None:
    """Call ``progress`` if given; fraction clipped to [0, 1]."""
    if progress is not None:
        progress(min(max(float(fraction), 0.0), 1.0), message)


def scaled(progress: Optional[ProgressFn], start: float, stop: float) -> Optional[ProgressFn]:
    """A callback that maps [0, 1] onto [start, stop] of ``progress`` (for nested stages)."""
    if progress is None:
        return None
    return lambda f, msg: report(progress, start + (stop - start) * f, msg)


def pulse(progress: Optional[ProgressFn], fraction: float, message: str,
          every: float = 0.2) -> Callable[[], None]:
    """A no-argument callable for inner loops: reports ``fraction`` at most every ``every`` seconds.

    Long loops (AWQ grid points, GPTQ columns, evaluation windows) call it once per iteration, so a
    callback that raises ``Cancelled`` stops them within about ``every`` seconds plus one iteration.
    """
    if progress is None:
        return _noop
    last = [time.monotonic()]

    def beat() -> None:
        now = time.monotonic()
        if now - last[0] >= every:
            last[0] = now
            report(progress, fraction, message)

    return beat


def _noop() -> None:
    return None


class TqdmProgress:
    """A progress callback drawing one tqdm bar (used by the CLI)."""

    def __init__(self, desc: str = "mxlab", total: int = 1000):
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, desc=desc, unit="", bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}")
        self._total = total

    def __call__(self, fraction: float, message: str) -> None:
        target = int(round(fraction * self._total))
        self._bar.update(max(0, target - self._bar.n))
        self._bar.set_postfix_str(message, refresh=True)

    def close(self) -> None:
        self._bar.close()
