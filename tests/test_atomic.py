"""Atomic directory/file writes: success renames into place; any failure leaves nothing behind."""
from __future__ import annotations

import errno

import pytest

from mxlab.atomic import atomic_directory, atomic_file
from mxlab.errors import Cancelled, MxlabError


def _entries(path):
    return sorted(p.name for p in path.iterdir())


def test_success_renames_into_place(tmp_path):
    with atomic_directory(tmp_path / "out") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.tmp-")
        (tmp / "a.txt").write_text("hello")
    assert (tmp_path / "out" / "a.txt").read_text() == "hello"
    assert _entries(tmp_path) == ["out"]


@pytest.mark.parametrize("exc", [RuntimeError("boom"), Cancelled("stop"), KeyboardInterrupt()])
def test_failure_leaves_no_output(tmp_path, exc):
    with pytest.raises(type(exc)):
        with atomic_directory(tmp_path / "out") as tmp:
            (tmp / "half.bin").write_bytes(b"x" * 100)
            raise exc
    assert _entries(tmp_path) == []


def test_full_disk_becomes_clear_error(tmp_path):
    with pytest.raises(MxlabError, match="free disk space"):
        with atomic_directory(tmp_path / "out") as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert _entries(tmp_path) == []


def test_existing_target_needs_overwrite_and_survives_failure(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(MxlabError, match="overwrite"):
        with atomic_directory(target):
            pass
    with pytest.raises(RuntimeError):
        with atomic_directory(target, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("new")
            raise RuntimeError("midway")
    assert _entries(target) == ["old.txt"]  # the previous result is untouched
    with atomic_directory(target, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert _entries(target) == ["new.txt"] and _entries(tmp_path) == ["out"]


def test_empty_existing_directory_is_reused(tmp_path):
    (tmp_path / "out").mkdir()
    with atomic_directory(tmp_path / "out") as tmp:
        (tmp / "a").write_text("1")
    assert _entries(tmp_path / "out") == ["a"]


def test_atomic_file(tmp_path):
    target = tmp_path / "r.html"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_file(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError
    assert target.read_text() == "old" and _entries(tmp_path) == ["r.html"]
    with atomic_file(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and _entries(tmp_path) == ["r.html"]


def test_files_get_umask_modes(tmp_path):
    import os
    import tempfile

    with atomic_directory(tmp_path / "out") as tmp:
        fd, name = tempfile.mkstemp(dir=tmp)  # 0600, as report/stats helpers write
        os.close(fd)
    mask = os.umask(0)
    os.umask(mask)
    (only,) = (tmp_path / "out").iterdir()
    assert only.stat().st_mode & 0o777 == 0o666 & ~mask
