"""The app server's safety policy: what clients may read, how heavy runs share the machine, and its disk.

One ``ServerPolicy`` per process (``POLICY``), set by ``app.main`` from its flags (``configure``):
- ``roots``: what a client's text/model source may name (``mxlab.guard.AllowedRoots``);
- ``gate``: a fair gate with ``slots`` heavy jobs at a time; each session has at most one job in
  the gate, and waiting jobs are served in arrival order, so one session cannot starve the others;
- ``workspace``: the folder holding every session's scratch folder, removed at shutdown.

Several servers may share one workspace, so a session folder is named after the server that made it
(``mxlab-session-<pid>@<host>-<random>``): a server removes its own at shutdown, and at start only those
whose owner process is gone.
"""
from __future__ import annotations

import itertools
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import time
from collections import deque
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

from ..errors import Cancelled, MxlabError
from ..guard import AllowedRoots

log = logging.getLogger(__name__)


class FairGate:
    """At most ``slots`` jobs at a time; one per session; the others wait first come, first served."""

    def __init__(self, slots: int = 1):
        if slots < 1:
            raise MxlabError(f"concurrency must be at least 1, got {slots}")
        self.slots = slots
        self._cond = threading.Condition()
        self._running: set[object] = set()
        self._waiting: deque[tuple[int, object]] = deque()
        self._tickets = itertools.count()

    @property
    def running(self) -> int:
        """Jobs holding a slot now."""
        with self._cond:
            return len(self._running)

    @property
    def waiting(self) -> int:
        """Jobs waiting for a slot now."""
        with self._cond:
            return len(self._waiting)

    @contextmanager
    def slot(self, session: object, cancel: threading.Event,
             report: Optional[Callable[[float, str], None]] = None, poll: float = 0.1) -> Iterator[None]:
        """Hold a slot for ``session`` while the block runs; waiting, check ``cancel`` every ``poll`` s."""
        with self._cond:
            if session in self._running or any(s is session for _, s in self._waiting):
                raise MxlabError("This session already has a run going or waiting; wait for it or press Cancel.")
            ticket = (next(self._tickets), session)
            self._waiting.append(ticket)
            try:
                while not (len(self._running) < self.slots and self._waiting[0] is ticket):
                    if cancel.is_set():
                        raise Cancelled("Run cancelled while waiting in the queue; nothing was started.")
                    ahead = list(self._waiting).index(ticket)
                    if report is not None:
                        report(0.0, f"waiting for a free worker ({ahead} ahead, {len(self._running)} running)")
                    self._cond.wait(poll)
            except BaseException:
                self._waiting.remove(ticket)
                self._cond.notify_all()
                raise
            self._waiting.popleft()
            self._running.add(session)
        try:
            yield
        finally:
            with self._cond:
                self._running.discard(session)
                self._cond.notify_all()


class ServerPolicy:
    """Allowed roots, the fair gate and the workspace of one app process."""

    def __init__(self) -> None:
        self.roots = AllowedRoots([Path.cwd()])
        self.gate = FairGate(1)
        self._workspace: Optional[Path] = None

    def configure(self, allow_paths: Iterable[str] = (), concurrency: int = 1,
                  workspace: Optional[str | os.PathLike] = None) -> None:
        """Set the roots (cwd, the workspace, uploads, ``allow_paths``), the gate's slots and the workspace."""
        for p in allow_paths:
            if not Path(p).expanduser().is_dir():
                raise MxlabError(f"--allow-path {p}: not a directory; give an existing directory")
        self._workspace = Path(workspace).expanduser().absolute() if workspace else None
        if self._workspace is not None:
            self._workspace.mkdir(parents=True, exist_ok=True)
            for stale in self._workspace.glob(f"{SESSION_PREFIX}*"):   # left by a server that was killed
                if not owner_alive(stale.name):
                    shutil.rmtree(stale, ignore_errors=True)
        self.roots = AllowedRoots([Path.cwd(), self.workspace, upload_dir(), *allow_paths])
        self.gate = FairGate(concurrency)

    @property
    def workspace(self) -> Path:
        """The folder holding the sessions' scratch folders (a fresh temporary one unless configured)."""
        if self._workspace is None:
            self._workspace = Path(tempfile.mkdtemp(prefix="mxlab-app-"))
        return self._workspace

    def workspace_bytes(self) -> int:
        """Bytes used under the workspace now (shown in the app)."""
        return tree_bytes(self.workspace)

    def shutdown(self) -> None:
        """Remove this server's session folders and the upload cache (called when the server stops)."""
        for child in list(self.workspace.glob(f"{session_prefix()}*")):   # not another live server's
            shutil.rmtree(child, ignore_errors=True)
        uploads = upload_dir()
        if AllowedRoots([self.workspace]).contains(uploads):   # never another program's /tmp/gradio
            shutil.rmtree(uploads, ignore_errors=True)
        if self.workspace.name.startswith("mxlab-app-"):
            shutil.rmtree(self.workspace, ignore_errors=True)
        log.info("removed the session folders and the upload cache")


SESSION_PREFIX = "mxlab-session-"
_OWNER = re.compile(r"(\d+)@(.+)-[^-]+")        # <pid>@<host>-<mkdtemp's random part, which has no '-'>


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:64] or "localhost"


def session_prefix() -> str:
    """The name prefix of this process's session folders: ``mxlab-session-<pid>@<host>-``."""
    return f"{SESSION_PREFIX}{os.getpid()}@{_host()}-"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (signal 0 checks without sending anything)."""
    if pid <= 0:
        return False
    if os.name == "nt":       # os.kill would terminate it there: count it alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # it exists, run by another user
        return True
    return True


def owner_alive(name: str) -> bool:
    """Whether the server that made session folder ``name`` may still use it: its pid is alive here, or it
    belongs to another host (unknowable). Old names without an owner (older mxlab versions) count as dead."""
    m = _OWNER.fullmatch(name[len(SESSION_PREFIX):]) if name.startswith(SESSION_PREFIX) else None
    if m is None:
        return False
    return m.group(2) != _host() or pid_alive(int(m.group(1)))


def upload_dir() -> Path:
    """Where Gradio keeps uploads and cached files (GRADIO_TEMP_DIR, else <tmp>/gradio)."""
    return Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio")


def tree_bytes(root: Path) -> int:
    """Total size of the files under ``root`` (0 when it does not exist)."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def wait_idle(gate: FairGate, timeout: float) -> bool:
    """Wait until no job holds or waits for a slot (tests); False on timeout."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if gate.running == 0 and gate.waiting == 0:
            return True
        time.sleep(0.05)
    return False


POLICY = ServerPolicy()
