"""The app server's policy without a server: allowed roots, password/warning flags, disk cleanup."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mxlab.errors import MxlabError
from mxlab.guard import AllowedRoots
from mxlab.lab import server
from mxlab.lab.server import ServerPolicy, tree_bytes
from mxlab.lab.session import SessionState

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import app  # noqa: E402


def test_binding_beyond_loopback_without_a_password_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="mxlab.app"):
        assert app.auth_for("0.0.0.0", False, None) is None
        assert app.auth_for("127.0.0.1", True, None) is None
    assert sum("no password" in r.message for r in caplog.records) == 2
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mxlab.app"):
        assert app.auth_for("127.0.0.1", False, None) is None
    assert caplog.records == []


def test_password_file(tmp_path):
    (tmp_path / "pw").write_text("alice:correct horse\n")
    assert app.auth_for("0.0.0.0", False, str(tmp_path / "pw")) == ("alice", "correct horse")
    (tmp_path / "short").write_text("abc")
    with pytest.raises(MxlabError, match="at least 8"):
        app.auth_for("0.0.0.0", False, str(tmp_path / "short"))


def test_allow_path_must_exist_and_the_flag_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        app.main(["--allow-path", str(tmp_path / "nope")])
    assert info.value.code == 2 and "not a directory" in capsys.readouterr().err


def test_symlink_and_dotdot_escapes_are_refused(tmp_path):
    inside, outside = tmp_path / "in", tmp_path / "out"
    inside.mkdir(), outside.mkdir()
    (outside / "s.txt").write_text("secret")
    (inside / "link.txt").symlink_to(outside / "s.txt")
    roots = AllowedRoots([inside])
    for p in (inside / "link.txt", inside / ".." / "out" / "s.txt", outside / "s.txt", outside / "none.txt"):
        with pytest.raises(MxlabError, match="--allow-path") as info:
            roots.check_text(str(p), ["tinystories"])
        assert "secret" not in str(info.value)
    with pytest.raises(MxlabError, match="--allow-path"):
        roots.check_model("../../etc")


def test_session_and_shutdown_remove_their_folders(tmp_path):
    policy = ServerPolicy()
    policy.configure([], concurrency=1, workspace=tmp_path / "ws")
    s1, s2 = SessionState(policy.workspace), SessionState(policy.workspace)
    (s1.workdir / "run1").mkdir()
    (s1.workdir / "run1" / "model.bin").write_bytes(b"x" * 1000)
    (s2.workdir / "f").write_bytes(b"y" * 500)
    assert tree_bytes(policy.workspace) == 1500 == policy.workspace_bytes()
    s1.close()                                      # the session ended (gr.State delete_callback)
    assert tree_bytes(policy.workspace) == 500
    policy.shutdown()
    assert list(policy.workspace.iterdir()) == []


# a second app server over the same workspace, in its own process: it starts, opens a session folder, stops
OTHER_SERVER = """
import sys, tempfile
from mxlab.lab.server import ServerPolicy, session_prefix
policy = ServerPolicy()
policy.configure([], concurrency=1, workspace=sys.argv[1])
print(tempfile.mkdtemp(prefix=session_prefix(), dir=policy.workspace))
policy.shutdown()
"""


def test_a_second_server_leaves_the_live_ones_session_folders_alone(tmp_path):
    policy = ServerPolicy()
    policy.configure([], concurrency=1, workspace=tmp_path / "ws")
    mine = SessionState(policy.workspace).workdir
    assert mine.name.startswith(f"mxlab-session-{os.getpid()}@")
    (mine / "r1-model.zip").write_bytes(b"x" * 1000)
    repo = Path(__file__).resolve().parents[1]
    other = subprocess.run([sys.executable, "-c", OTHER_SERVER, str(policy.workspace)], cwd=repo,
                           capture_output=True, text=True, timeout=120)
    assert other.returncode == 0, other.stderr
    theirs = Path(other.stdout.strip())
    assert theirs.parent == policy.workspace and theirs.name.startswith("mxlab-session-")
    assert not theirs.exists()                                  # it removed its own folder at shutdown...
    assert (mine / "r1-model.zip").stat().st_size == 1000       # ...and kept ours, at its start and its shutdown
    policy.shutdown()
    assert not mine.exists()


def test_start_removes_the_session_folders_of_dead_servers_only(tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = server._host()
    folders = {"live": f"mxlab-session-{live.pid}@{host}-a1b2c3d4",
               "dead": f"mxlab-session-{dead.pid}@{host}-e5f6g7h8",
               "old-style": "mxlab-session-k3j4h5g6",                         # no owner: an older mxlab's
               "other host": f"mxlab-session-{dead.pid}@lab-node-7.example-0a1b2c3d"}   # unknowable here
    for name in folders.values():
        (root / name).mkdir()
        (root / name / "f.bin").write_bytes(b"y" * 10)
    try:
        policy = ServerPolicy()
        policy.configure([], concurrency=1, workspace=root)
        kept = sorted(p.name for p in root.iterdir())
        assert kept == sorted([folders["live"], folders["other host"]])
        own = SessionState(root).workdir
        policy.shutdown()                                       # removes only its own
        assert not own.exists() and sorted(p.name for p in root.iterdir()) == kept
    finally:
        live.kill()
        live.wait()


def test_pid_alive(monkeypatch):
    assert server.pid_alive(os.getpid()) and not server.pid_alive(0) and not server.pid_alive(-5)

    def denied(pid, sig):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(server.os, "kill", denied)               # another user's process: it exists
    assert server.pid_alive(12345)
