"""Atomic directory writes: build beside the target, fsync, rename into place; never leave half a result."""
from __future__ import annotations

import logging
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import MxlabError

log = logging.getLogger(__name__)


def _fsync_path(path: Path) -> None:
    """fsync one file or directory (directories: so the rename itself survives a crash)."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() and hasattr(os, "O_DIRECTORY") else 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # some filesystems refuse to open directories; the data files were synced
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file under ``root``, then the directories (deepest first)."""
    dirs = []
    for dirpath, _dirnames, filenames in os.walk(root):
        dirs.append(Path(dirpath))
        for name in filenames:
            _fsync_path(Path(dirpath) / name)
    for d in reversed(dirs):
        _fsync_path(d)


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once at import: os.umask is process-wide, not safe to toggle from app threads


def _umask() -> int:
    return _UMASK


def normalize_modes(root: Path) -> None:
    """Give files the usual umask modes: helpers that write via mkstemp leave them 0600."""
    mask = _umask()
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            os.chmod(Path(dirpath) / name, 0o666 & ~mask)


def check_target(target: Path, overwrite: bool) -> None:
    """Refuse to replace a file, or a non-empty directory unless ``overwrite``."""
    if not target.exists():
        return
    if not target.is_dir():
        raise MxlabError(f"{target} exists and is a file; choose another output directory")
    if any(target.iterdir()) and not overwrite:
        raise MxlabError(f"{target} already exists and is not empty; choose another output directory "
                         "or pass overwrite=True (CLI: --overwrite)")


@contextmanager
def atomic_directory(target: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``target``; on success it becomes ``target``.

    Any exception (a failed write, a full disk, ``Cancelled``) removes the temporary directory and
    leaves ``target`` as it was. An ``OSError`` is re-raised as ``MxlabError`` saying what failed.
    """
    target = Path(target).expanduser().absolute()
    check_target(target, overwrite)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MxlabError(f"cannot create {target.parent}: {e.strerror or e}; check the path and permissions") from e
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        yield tmp
        normalize_modes(tmp)
        fsync_tree(tmp)
        _swap_into_place(tmp, target)
        _fsync_path(target.parent)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise MxlabError(f"could not write {target}: {e.strerror or e}; check free disk space and "
                         "permissions, nothing was written") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_into_place(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``; an existing target is moved aside first and restored on failure."""
    if not target.exists():
        os.replace(tmp, target)
        return
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    os.replace(target, old)
    try:
        os.replace(tmp, target)
    except OSError:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
    log.info("replaced existing %s", target)


@contextmanager
def atomic_file(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it replaces ``target`` (fsynced)."""
    target = Path(target).expanduser().absolute()
    if target.is_dir():
        raise MxlabError(f"{target} is a directory; give a file name")
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        _fsync_path(tmp)
        os.replace(tmp, target)
        _fsync_path(target.parent)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise MxlabError(f"could not write {target}: {e.strerror or e}; check free disk space and permissions") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
