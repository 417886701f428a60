"""Every bound on a value a user can send, with the reason for it: one place to read and to extend.

A recipe, a run, an upload or a file is checked against these when it is built, so a request that
would take hours or all the memory is refused at once with the limit and its reason in the message.
Branches that add options add their bounds to ``LIMITS`` here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import MxlabError


@dataclass(frozen=True)
class Limit:
    """The largest value allowed for one setting, and why."""

    max: int
    reason: str


LIMITS: dict[str, Limit] = {
    "block_size": Limit(4096, "an MX block is 32 in the standard; larger blocks only coarsen the shared scale"),
    "awq n_grid": Limit(1000, "each grid point re-quantizes every weight of the group; 20 is the paper's"),
    "awq clip_grid": Limit(1000, "each ratio re-quantizes every weight of the linear; 20 is the paper's"),
    "gptq blocksize": Limit(65536, "columns per GPTQ block; wider than any model's hidden size"),
    "calib n_samples": Limit(4096, "the study calibrates on 128 sequences"),
    "calib seq_len": Limit(32768, "longer than the context of the models mxlab targets"),
    "calib tokens": Limit(1 << 21, "n_samples x seq_len tokens are kept as hidden states for every block; "
                                   "the study uses 128 x 2048 = 262144"),
    "eval windows": Limit(100000, "more windows than any evaluation text shipped or commonly used"),
    "eval seq_len": Limit(32768, "longer than the context of the models mxlab targets"),
    "task limit": Limit(100000, "examples per zero-shot task; more than any shipped task has (zeroshot.MAX_LIMIT)"),
    "seed": Limit((1 << 63) - 1, "torch generators take a 64-bit seed"),
    "recipe bytes": Limit(64 * 1024, "a recipe is a few hundred bytes; bigger text is not a recipe"),
    "recipe depth": Limit(8, "a recipe nests at most 3 levels (steps -> step -> parameter)"),
    "recipe items": Limit(256, "steps and overrides: a handful in any real recipe"),
    "text file bytes": Limit(256 * 1024 * 1024, "calibration/evaluation texts are read whole into memory"),
    "scale lab tokens": Limit(4096, "calibration tokens whose inputs the app's scale lab keeps per layer for the "
                                    "output error; a few hundred already give a stable SQNR"),
    "scale lab cache": Limit(4096, "layers whose rule rows a session keeps (a few kB each); more than the Linears "
                                   "of a 7B model"),
    "sweep bytes": Limit(64 * 1024, "a sweep file is a base recipe and a few axes: a few kB"),
    "sweep cells": Limit(64, "the app runs a sweep's cells on this server; larger grids belong to the CLI "
                             "(python -m mxlab sweep FILE --workers N, or --ray)"),
    "upload bytes": Limit(20 * 1024 * 1024, "uploads are recipes (kB) or texts; the app keeps them on its disk"),
    "mix formats": Limit(8, "each candidate format is one more probe pass over every module (mix.probe.MAX_FORMATS)"),
    "mix probe windows": Limit(64, "the probe runs the model once per window batch for every module x format "
                                   "(mix.probe.MAX_WINDOWS)"),
    "mix probe tokens": Limit(8192, "the probe keeps the FP and the probed log-probabilities of every token: "
                                    "8192 tokens x SmolLM2's 49152-word vocabulary = 2 x 1.6 GB"),
}

SHORT = 40  # characters of a bad value quoted in a message


def short(value: Any, n: int = SHORT) -> str:
    """repr(value) cut to ``n`` characters: messages never echo a huge value back."""
    try:
        text = repr(value) if not isinstance(value, (list, dict, tuple, set)) or len(value) < 64 \
            else f"<{type(value).__name__} of {len(value)} items>"
    except Exception:  # noqa: BLE001 - a repr that fails is still a bad value
        text = f"<{type(value).__name__}>"
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def bound(name: str) -> int:
    """The limit's maximum."""
    return LIMITS[name].max


def check_max(value: int | float, name: str, what: str | None = None) -> None:
    """MxlabError naming the limit and its reason when ``value`` exceeds ``LIMITS[name]``."""
    lim = LIMITS[name]
    if value > lim.max:
        raise MxlabError(f"{what or name} {short(value)} exceeds the limit {lim.max} ({lim.reason}); "
                         f"use a smaller value")


def available_memory() -> int:
    """Bytes of memory this machine has available now (MemAvailable; total memory if unknown)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 34


def check_activation_memory(n_tokens: int, hidden: int, what: str, copies: int = 4) -> None:
    """Refuse a run whose kept hidden states (``copies`` float32 (n_tokens, hidden)) exceed half the free memory."""
    need = int(n_tokens) * int(hidden) * 4 * copies
    have = available_memory()
    if need > have // 2:
        raise MxlabError(f"{what}: {n_tokens} tokens x hidden {hidden} need about {need / 2**30:.1f} GiB of "
                         f"activations, more than half of the {have / 2**30:.1f} GiB free; use fewer samples "
                         f"or shorter sequences")


def check_file_size(path: Path, name: str, what: str) -> None:
    """MxlabError when the file at ``path`` is larger than ``LIMITS[name]`` bytes."""
    size = path.stat().st_size
    lim = LIMITS[name]
    if size > lim.max:
        raise MxlabError(f"{what} is {size} bytes, over the limit of {lim.max} ({lim.reason}); "
                         f"give a smaller file")
