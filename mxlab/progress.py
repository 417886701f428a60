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


Pulse = Callable[..., None]
"""``beat()`` or ``beat(done)``: a cancellation point inside a long loop; ``done`` in [0, 1] says how far it is."""


def pulse(progress: Optional[ProgressFn], fraction: float, message: str, every: float = 0.2,
          stop: Optional[float] = None, since: Optional[tuple[float, float]] = None,
          clock: Callable[[], float] = time.monotonic) -> Pulse:
    """A callable for inner loops that reports at most every ``every`` seconds.

    Long loops (AWQ grid points, GPTQ columns, evaluation windows) call it once per iteration, so a
    callback that raises ``Cancelled`` stops them within about ``every`` seconds plus one iteration.
    Without ``stop`` it reports ``fraction``. With ``stop`` the loop passes ``done`` (0..1), which maps
    onto [fraction, stop], and the message gets ``done`` in percent and the time left until ``progress``
    reaches 1, at the rate since ``since`` = (``clock()`` then, fraction then; default: this pulse's
    start): ``"block 2/5: awq 40% · ~12 s left"``.
    """
    if progress is None:
        return no_pulse
    start = clock()
    t0, f0 = since or (start, fraction)
    last, state = [start], [0.0]

    def beat(done: Optional[float] = None) -> None:
        if done is not None:
            state[0] = min(max(float(done), 0.0), 1.0)
        now = clock()
        if now - last[0] >= every:
            last[0] = now
            if stop is None:
                report(progress, fraction, message)
            else:
                f = fraction + (stop - fraction) * state[0]
                report(progress, f, f"{message} {state[0]:.0%}{eta_text(f - f0, 1.0 - f0, now - t0)}")

    return beat


def part(beat: Pulse, start: float, stop: float) -> Pulse:
    """The pulse of one part of a loop: the part's own ``done`` (0..1) maps onto [start, stop] of ``beat``'s."""
    return lambda done=None: beat(None if done is None else start + (stop - start) * done)


def spans(costs: list[float]) -> list[tuple[float, float]]:
    """[start, stop) of each part of a loop, sized by its (estimated) cost: spans([1, 3]) -> [(0, .25), (.25, 1)]."""
    total, at, out = float(sum(costs)) or 1.0, 0.0, []
    for c in costs:
        out.append((at / total, (at + c) / total))
        at += c
    return out


def eta_text(done: float, total: float, elapsed: float) -> str:
    """' · ~12 s left': ``done`` of ``total`` took ``elapsed`` seconds; '' before 2 % or 1 s (too early to tell)."""
    if total <= 0 or not 0.02 <= done / total < 1.0 or elapsed < 1.0:
        return ""
    left = elapsed * (total - done) / done
    return f" · ~{left:.0f} s left" if left < 120 else f" · ~{left / 60:.0f} min left"


def no_pulse(done: Optional[float] = None) -> None:
    """A pulse that does nothing (no progress callback: loops run uninterrupted)."""


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
