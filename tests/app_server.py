"""Start the Gradio app in this process on a free port (shared by the client and browser tests)."""
from __future__ import annotations

import socket
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Sequence

# Debian's chromium (apt-get), driven by Playwright; never a browser download
CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_app(workspace: Optional[Path] = None, allow: Sequence[str] = ()) -> Iterator[str]:
    """The app over ``workspace`` served from a background thread; yields its URL and closes it afterwards.

    As ``app.main``: the server policy's workspace (session scratch folders, allowed root) is the runs' one;
    ``allow``: directories clients may name as model sources (``app.py --allow-path``)."""
    sys.path.insert(0, str(REPO))
    import app
    from mxlab.lab.server import POLICY

    if workspace is not None:
        POLICY.configure(list(allow), concurrency=1, workspace=workspace)
    demo = app.build(workspace=str(workspace) if workspace else None)
    demo.queue(default_concurrency_limit=2)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **app.launch_kwargs())
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()
