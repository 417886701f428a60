"""Helpers for the bad-input and fault suites: snapshots that prove nothing was written or lost."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

MAX_MESSAGE = 400   # a one-line error message stays short whatever the bad value was


def snapshot(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under ``root`` (directories as '<dir>')."""
    out: dict[str, str] = {}
    root = Path(root)
    if not root.exists():
        return out
    for dirpath, dirs, files in os.walk(root):
        for d in dirs:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = "<dir>"
        for f in files:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


def one_line(text: str) -> str:
    """The single non-empty line of ``text``; fails when there are several or a traceback."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1, text[-2000:]
    assert "Traceback" not in text
    assert len(lines[0]) <= MAX_MESSAGE, lines[0][:500]
    return lines[0]
