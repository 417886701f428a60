"""What a server may read: the embedded sets, hub ids and files under a few allowed roots.

The CLI and the Python API read whatever their user names. The app is different: its clients are
not the operator, so every text or model source they send is checked here first. A refusal says
the same thing whether or not the path exists, so it reveals nothing about the server's files.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable, Optional

from .errors import MxlabError
from .limits import short

# a hub id: "name" or "owner/name", no path tricks (".." and absolute paths are not ids)
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})?$")


class AllowedRoots:
    """Directories (resolved, symlinks followed) under which a server may read files."""

    def __init__(self, roots: Iterable[str | os.PathLike], flag: str = "--allow-path DIR"):
        self.roots = tuple(dict.fromkeys(Path(os.path.realpath(Path(r).expanduser())) for r in roots))
        self.flag = flag

    def contains(self, path: str | os.PathLike) -> bool:
        """Whether ``path`` (symlinks followed) lies under one of the roots."""
        try:
            real = Path(os.path.realpath(Path(path).expanduser()))
        except (OSError, ValueError, RuntimeError):
            return False
        return any(real == r or real.is_relative_to(r) for r in self.roots)

    def _refuse(self, what: str, value: str, allowed: str) -> MxlabError:
        return MxlabError(f"{what} {short(value)} is not {allowed} or a path under the directories this app may "
                          f"read; the operator can allow a directory with `python app.py {self.flag}`")

    def check_text(self, value: str, embedded: Iterable[str]) -> str:
        """``value`` if it names an embedded text set or a file under a root; else MxlabError."""
        embedded = tuple(embedded)
        if not isinstance(value, str) or not value or len(value) > 4096 or "\x00" in value:
            raise self._refuse("text source", str(value), f"one of {', '.join(embedded)}")
        if value in embedded:
            return value
        if self.contains(value):
            return value
        raise self._refuse("text source", value, f"one of {', '.join(embedded)}")

    def check_model(self, value: Optional[str]) -> Optional[str]:
        """None (the embedded model), a hub id, or a directory under a root; else MxlabError."""
        if value is None:
            return None
        if not isinstance(value, str) or len(value) > 4096 or "\x00" in value:
            raise self._refuse("model source", str(value), "a hub id")
        local = Path(value).expanduser()
        is_path = value.startswith(("/", "~", ".")) or ".." in Path(value).parts or os.path.lexists(local)
        if is_path:
            if self.contains(local):
                return value
            raise self._refuse("model source", value, "a hub id")
        if _HUB_ID.match(value):
            return value
        raise self._refuse("model source", value, "a hub id")
