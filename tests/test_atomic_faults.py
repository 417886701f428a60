"""Atomic overwrite under faults injected at each step: the old result or the new one is always whole,
an interrupted swap is recovered at the next start, and a killed export's temporary folders are removed."""
from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

import mxlab.atomic as atomic
from _faults import snapshot
from mxlab.atomic import atomic_directory, clean_stale_exports, recover
from mxlab.errors import MxlabError


class Crash(BaseException):
    """A kill at that instant (BaseException, like KeyboardInterrupt: no handler may swallow it)."""


def _old(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "a.txt").write_text("old")
    return target


def _write_new(target, **kw):
    with atomic_directory(target, overwrite=True) as tmp:
        (tmp / "a.txt").write_text("new")
        (tmp / "b.txt").write_text("new")


def test_overwrite_is_one_exchange(tmp_path):
    target = _old(tmp_path)
    _write_new(target)
    assert snapshot(target).keys() == {"a.txt", "b.txt"} and (target / "a.txt").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.parametrize("step", ["write", "exchange", "after-exchange-cleanup"])
def test_crash_at_each_step_of_the_exchange_keeps_a_whole_result(tmp_path, monkeypatch, step):
    target = _old(tmp_path)
    real = atomic._exchange

    def exchange(a, b):
        if step == "exchange":
            raise Crash()
        real(a, b)
        if step == "after-exchange-cleanup":
            raise Crash()
    monkeypatch.setattr(atomic, "_exchange", exchange)
    with pytest.raises(Crash):
        with atomic_directory(target, overwrite=True) as tmp:
            (tmp / "a.txt").write_text("new")
            if step == "write":
                raise Crash()
    content = (target / "a.txt").read_text()
    assert content == ("new" if step == "after-exchange-cleanup" else "old")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.parametrize("crash_on", [1, 2])
def test_keep_both_fallback_recovers_after_a_crash_at_each_rename(tmp_path, monkeypatch, crash_on):
    """Without exchange: old aside (rename 1), new in (rename 2). A hard kill at either leaves both; the
    next start puts back the old one, or keeps the new one, and removes the rest."""
    target = _old(tmp_path)
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: (_ for _ in ()).throw(OSError(errno.EINVAL, "no")))
    calls = []
    real_replace = os.replace

    def replace(a, b):
        calls.append((a, b))
        if len(calls) == crash_on + 0 and crash_on == 2:
            raise Crash()
        real_replace(a, b)
        if crash_on == 1 and len(calls) == 1:
            raise Crash()
    monkeypatch.setattr(atomic.os, "replace", replace)
    # simulate a kill -9: the cleanup handlers of the dying process never run
    monkeypatch.setattr(atomic.shutil, "rmtree", lambda *a, **k: None)
    monkeypatch.setattr(atomic, "_keep_both_swap", _no_rollback(atomic._keep_both_swap, real_replace))
    with pytest.raises(Crash):
        _write_new(target)
    monkeypatch.undo()
    monkeypatch.setattr(atomic, "_alive", lambda pid: False)      # the writer is dead now
    recover(tmp_path)
    assert (target / "a.txt").read_text() in ("old", "new")
    assert (target / "a.txt").read_text() == "old" or (target / "b.txt").exists()   # whole, not mixed
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def _no_rollback(fn, real_replace):
    def swap(tmp, target):
        old = atomic._side_name(target, "old")
        os.replace(target, old)
        os.replace(tmp, target)
    return swap


def test_ctrl_c_in_the_fallback_swap_puts_the_old_result_back(tmp_path, monkeypatch):
    target = _old(tmp_path)
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: (_ for _ in ()).throw(OSError(errno.ENOSYS, "no")))
    real_replace, n = os.replace, []

    def replace(a, b):
        n.append(1)
        if len(n) == 2:
            raise KeyboardInterrupt
        real_replace(a, b)
    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        _write_new(target)
    monkeypatch.undo()
    assert (target / "a.txt").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_killed_export_leaves_temp_folders_that_the_next_start_removes(tmp_path):
    script = ("import os, sys; sys.path.insert(0, %r)\n"
              "from mxlab.atomic import atomic_directory\n"
              "with atomic_directory(%r) as tmp:\n"
              "    (tmp / 'half').write_text('x'); os.kill(os.getpid(), 9)\n") % (
        str(atomic.Path(atomic.__file__).parents[1]), str(tmp_path / "out"))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -9
    (leftover,) = list(tmp_path.iterdir())
    assert leftover.name.startswith(".out.tmp-")
    done = clean_stale_exports(tmp_path)
    assert done and list(tmp_path.iterdir()) == []


def test_a_live_writer_is_left_alone(tmp_path):
    live = tmp_path / f".out.tmp-{os.getpid()}-0123abcd"
    live.mkdir()
    assert recover(tmp_path) == [] and live.exists()


def test_disk_error_during_export_leaves_nothing(tmp_path):
    target = _old(tmp_path)
    with pytest.raises(MxlabError, match="could not write"):
        with atomic_directory(target, overwrite=True) as tmp:
            raise OSError(errno.ENOSPC, "No space left on device")
    assert (target / "a.txt").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out"]
