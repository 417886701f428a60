"""The app server's policy without a server: allowed roots, password/warning flags, disk cleanup."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from mxlab.errors import MxlabError
from mxlab.guard import AllowedRoots
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
