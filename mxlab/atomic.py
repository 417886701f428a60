"""Atomic directory writes: build beside the target, fsync, swap into place; never leave half a result.

Overwriting swaps the two directories in one step (``renameat2(RENAME_EXCHANGE)`` on Linux). Where
the filesystem cannot, the old directory is renamed aside (``.NAME.old-PID-*``), the new one renamed
in, then the old removed; a crash between leaves both, and ``recover`` (run before every export and
at app start) puts the old one back. Temporary folders carry the writer's pid, so those of a killed
export (``.NAME.tmp-PID-*``) are removed by the next export into the same folder.
"""
from __future__ import annotations

import ctypes
import errno
import logging
import os
import re
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


_STALE = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-[0-9a-f]{8}$")


def _side_name(target: Path, kind: str) -> Path:
    return target.parent / f".{target.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def recover(parent: str | os.PathLike) -> list[str]:
    """Clean up after killed exports in ``parent``: put back an old directory whose replacement never
    arrived, remove leftover old copies and temporary folders of dead writers; returns what it did."""
    parent = Path(parent)
    done: list[str] = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return done
    for p in sorted(entries):
        m = _STALE.match(p.name)
        if not m or _alive(int(m["pid"])):
            continue
        target = parent / m["name"]
        try:
            if m["kind"] == "old" and not target.exists():
                os.replace(p, target)
                done.append(f"restored {target}")
                continue
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            done.append(f"removed {p}")
        except OSError as e:
            log.warning("could not clean %s: %s", p, e)
    for line in done:
        log.warning("recovered from an interrupted export: %s", line)
    return done


def clean_stale_exports(root: str | os.PathLike, depth: int = 2) -> list[str]:
    """``recover`` in ``root`` and its subfolders down to ``depth`` levels (the app calls it at start)."""
    root = Path(root)
    done = recover(root)
    if depth > 0 and root.is_dir():
        for child in root.iterdir():
            if child.is_dir() and not child.is_symlink() and not _STALE.match(child.name):
                done += clean_stale_exports(child, depth - 1)
    return done


def _exchange(a: Path, b: Path) -> None:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); OSError where unsupported."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        raise OSError(errno.ENOSYS, "renameat2 is not available") from None
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


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
    recover(target.parent)
    tmp = _side_name(target, "tmp")
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
    """Put ``tmp`` at ``target``: a rename, or for an existing target a one-step exchange (then the
    old copy, now at ``tmp``, is removed); without exchange, keep-both-then-delete (see ``recover``)."""
    if not target.exists():
        os.replace(tmp, target)
        return
    try:
        _exchange(tmp, target)
    except OSError as e:
        if e.errno not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        _keep_both_swap(tmp, target)
    else:
        shutil.rmtree(tmp, ignore_errors=True)   # tmp now holds the old directory
    log.info("replaced existing %s", target)


def _keep_both_swap(tmp: Path, target: Path) -> None:
    """old aside, new in, old removed; any failure or interrupt between puts the old one back."""
    old = _side_name(target, "old")
    os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        if not target.exists():
            os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_file(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it replaces ``target`` (fsynced)."""
    target = Path(target).expanduser().absolute()
    if target.is_dir():
        raise MxlabError(f"{target} is a directory; give a file name")
    tmp = _side_name(target, "tmp")
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
