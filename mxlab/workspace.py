"""The workspace: one folder whose subfolders are run directories (app, CLI and API runs alike).

A run directory is what ``rundir.export_run`` writes (results.json, recipe.yaml, report.html,
model/). A sweep (``mxlab.sweep``) is a folder holding ``sweep.json`` whose cells are run
directories: they list as ``<sweep>/<cell>``. The workspace adds one small file per run, ``run.json``
(name, tags, creation time, who made it), and lists, renames, tags and deletes runs. Runs still being written are invisible: the
run directory appears atomically when the run is done.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import re
import shutil
import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

from .atomic import atomic_file
from .errors import MxlabError
from .rundir import RESULTS_FILE

log = logging.getLogger(__name__)

DEFAULT_WORKSPACE = "mxlab-runs"    # relative to the working directory
META_FILE = "run.json"
SWEEP_FILE = "sweep.json"    # marks a sweep folder (mxlab.sweep.run writes it)
MAX_NAME = 80
MAX_TAGS = 16
_TAG = re.compile(r"^[\w.+-]{1,32}$")
_INFO: dict[tuple, "RunInfo"] = {}    # run_info's parsed listing fields, keyed by directory and file stamps
_INFO_KEEP = 4096                     # a few KB each: far more runs than one workspace lists
_INFO_LOCK = threading.Lock()


def default_workspace() -> Path:
    """``$MXLAB_WORKSPACE`` if set, else ``./mxlab-runs``."""
    return Path(os.environ.get("MXLAB_WORKSPACE") or DEFAULT_WORKSPACE)


def resolve(workspace: str | os.PathLike | None) -> Path:
    """The workspace folder (created if missing); None -> default_workspace()."""
    root = Path(workspace).expanduser() if workspace else default_workspace()
    if root.exists() and not root.is_dir():
        raise MxlabError(f"workspace {root} is a file; give a folder (--workspace DIR)")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MxlabError(f"cannot create the workspace {root}: {e.strerror or e}; pick another --workspace") from e
    return root.absolute()


@dataclass
class RunInfo:
    """One finished run of a workspace, as listings show it (results.json is read lazily)."""

    id: str                       # the directory's name
    path: Path
    name: str
    tags: list[str]
    created: str                  # ISO time, seconds
    origin: str                   # "app", "cli", "api" or "" (a run directory written without the workspace)
    model: str
    recipe: dict[str, Any]
    metrics: dict[str, Any]
    run: dict[str, Any] = field(default_factory=dict)   # eval set, windows, device, versions

    @property
    def summary(self) -> str:
        """'W-mxint4 A-mxint8 b32 awq+gptq' (formats, block size, steps)."""
        r = self.recipe
        steps = "+".join(s["name"] if isinstance(s, dict) else str(s) for s in r.get("steps") or []) or "rtn"
        return f"W-{r.get('weights')} A-{r.get('acts')} b{r.get('block_size')} {steps}"

    @property
    def eval_setting(self) -> str:
        """'tinystories x40' (evaluation set and window cap; 'all' when uncapped)."""
        windows = self.run.get("max_eval_windows")
        return f"{self.run.get('eval_dataset', '?')} x{windows if windows else 'all'}"

    @property
    def model_short(self) -> str:
        """The model's last path component ('embedded:stories260K' -> 'stories260K')."""
        return re.split(r"[/:\\]", str(self.model).rstrip("/"))[-1] or str(self.model)

    @property
    def label(self) -> str:
        """What a picker shows: id, name, then what distinguishes runs (model, recipe, evaluation)."""
        name = f" {self.name} ·" if self.name else ""
        return f"{self.id} ·{name} {self.model_short} · {self.summary} · eval {self.eval_setting}"

    def row(self) -> dict[str, Any]:
        """A JSON-able listing row: id, name, tags, model, recipe summary, key metrics, date."""
        m = self.metrics
        return {"id": self.id, "name": self.name, "tags": self.tags, "created": self.created,
                "origin": self.origin, "model": self.model, "recipe": self.summary, "eval": self.eval_setting,
                "ppl_fp": m.get("ppl_fp"), "ppl_quant": m.get("ppl_quant"), "kl": m.get("kl"),
                "bits_per_weight": m.get("bits_per_weight"), "path": str(self.path)}


# ---------------------------------------------------------------------------- reading
def read_meta(run_dir: Path) -> dict[str, Any]:
    """run.json of a run directory ({} when absent or unreadable: the run still lists)."""
    path = Path(run_dir) / META_FILE
    try:
        meta = json.loads(path.read_text())
        return meta if isinstance(meta, dict) else {}
    except (OSError, ValueError):
        return {}


def _stamp(path: Path) -> Optional[tuple[int, int, int]]:
    """(inode, mtime in ns, size) of a file, None when it does not exist: mxlab writes replace the file (a new
    inode), other edits change its time or size."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def run_info(run_dir: str | os.PathLike, run_id: Optional[str] = None) -> RunInfo:
    """The RunInfo of one run directory (id: ``run_id``, else its folder name); MxlabError without results.json.

    results.json holds the run's statistics too (SmolLM2: ~10 MB, 0.15 s to parse): the listing fields are kept
    per directory and re-read only when results.json or run.json changes (see _stamp), so the app's pickers
    and every selection stay fast."""
    path = Path(run_dir)
    key = (str(path.absolute()), _stamp(path / RESULTS_FILE), _stamp(path / META_FILE))
    known = _INFO.get(key) if key[1] is not None else None
    if known is not None:
        return dataclasses.replace(copy.deepcopy(known), id=run_id or path.name, path=path)
    try:
        results = json.loads((path / RESULTS_FILE).read_text())
    except (OSError, ValueError) as e:
        raise MxlabError(f"{path} is not a finished run (no readable {RESULTS_FILE}: {e})") from e
    meta = read_meta(path)
    created = meta.get("created") or datetime.fromtimestamp((path / RESULTS_FILE).stat().st_mtime).isoformat(
        timespec="seconds")
    info = RunInfo(id=run_id or path.name, path=path, name=str(meta.get("name") or ""),
                   tags=list(meta.get("tags") or []),
                   created=created, origin=str(meta.get("origin") or ""), model=str(results.get("model") or "?"),
                   recipe=results.get("recipe") or {}, metrics=results.get("metrics") or {},
                   run=results.get("run") or {})
    with _INFO_LOCK:
        _INFO[key] = copy.deepcopy(info)
        while len(_INFO) > _INFO_KEEP:
            _INFO.pop(next(iter(_INFO)))
    return info


def list_runs(workspace: str | os.PathLike | None = None) -> list[RunInfo]:
    """Every finished run of the workspace, oldest first (folders without results.json are skipped)."""
    root = resolve(workspace)
    found = []
    for child in root.iterdir():
        if child.name.startswith("."):
            continue
        if (child / RESULTS_FILE).is_file():
            found.append((child, child.name))
        elif (child / SWEEP_FILE).is_file():     # a sweep: its finished cells are runs too
            found += [(cell, f"{child.name}/{cell.name}") for cell in child.iterdir()
                      if not cell.name.startswith(".") and (cell / RESULTS_FILE).is_file()]
    runs = []
    for path, run_id in found:
        try:
            runs.append(run_info(path, run_id))
        except MxlabError as e:
            log.warning("skipping %s: %s", path, e)
    return sorted(runs, key=lambda r: (r.created, r.id))


def get_run(workspace: str | os.PathLike | None, run_id: str) -> RunInfo:
    """One run by its id (directory name, or '<sweep>/<cell>') or by a picker label that starts with it."""
    root = resolve(workspace)
    key = str(run_id or "").strip().split(" ", 1)[0]
    if not key:
        raise MxlabError("No run is selected; pick one from the list (or run a recipe first).")
    parts = key.split("/")
    sweep_cell = len(parts) == 2 and (root / parts[0] / SWEEP_FILE).is_file()
    path = root.joinpath(*parts)
    bad_part = any(p in {"", ".", ".."} or p.startswith(".") or "\\" in p for p in parts)
    if bad_part or (len(parts) > 1 and not sweep_cell) or not (path / RESULTS_FILE).is_file():
        raise MxlabError(f"There is no run {key!r} in the workspace {root}; pick one from the list.")
    return run_info(path, key)


# ---------------------------------------------------------------------------- writing
def slug(text: str) -> str:
    """'AWQ then GPTQ (w4)' -> 'awq-then-gptq-w4' (at most 40 characters)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40].strip("-")


def new_run_dir(workspace: str | os.PathLike | None, name: str = "") -> Path:
    """A fresh, not yet existing run directory: '<date>-<time>[-<slug of name>]', made unique."""
    root = resolve(workspace)
    stem = datetime.now().strftime("%Y%m%d-%H%M%S") + (f"-{slug(name)}" if slug(name) else "")
    candidate, n = root / stem, 2
    while candidate.exists() or any(root.glob(f".{candidate.name}.tmp-*")):
        candidate, n = root / f"{stem}-{n}", n + 1
    return candidate


def check_name(name: str) -> str:
    """A run name, stripped; MxlabError when too long or multi-line."""
    name = " ".join(str(name or "").split())
    if len(name) > MAX_NAME:
        raise MxlabError(f"A run name has at most {MAX_NAME} characters (got {len(name)}); shorten it.")
    return name


def check_tags(tags: Any) -> list[str]:
    """Tags from a list or a comma-separated string; each 1-32 letters, digits, '._+-'."""
    if isinstance(tags, str):
        tags = tags.split(",")
    out = list(dict.fromkeys(t.strip() for t in (tags or []) if str(t).strip()))
    bad = [t for t in out if not _TAG.match(t)]
    if bad:
        raise MxlabError(f"Tag {bad[0]!r} is not allowed; use 1-32 letters, digits, '.', '_', '+' or '-'.")
    if len(out) > MAX_TAGS:
        raise MxlabError(f"A run has at most {MAX_TAGS} tags (got {len(out)}); remove some.")
    return out


def write_meta(run_dir: str | os.PathLike, **changes: Any) -> dict[str, Any]:
    """Update run.json atomically with ``changes`` (name, tags, origin, created); returns the new content."""
    path = Path(run_dir)
    meta = read_meta(path)
    if "name" in changes:
        changes["name"] = check_name(changes["name"])
    if "tags" in changes:
        changes["tags"] = check_tags(changes["tags"])
    meta.update(changes)
    meta.setdefault("created", datetime.now().isoformat(timespec="seconds"))
    with atomic_file(path / META_FILE) as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def rename_run(workspace: str | os.PathLike | None, run_id: str, name: str) -> RunInfo:
    """Give a run a (new) display name; its id (folder) stays."""
    info = get_run(workspace, run_id)
    write_meta(info.path, name=name)
    return run_info(info.path)


def tag_run(workspace: str | os.PathLike | None, run_id: str, tags: Any) -> RunInfo:
    """Replace a run's tags (a list or 'a, b')."""
    info = get_run(workspace, run_id)
    write_meta(info.path, tags=tags)
    return run_info(info.path)


def delete_run(workspace: str | os.PathLike | None, run_id: str) -> None:
    """Delete a finished run's directory (only a run directory inside the workspace)."""
    info = get_run(workspace, run_id)
    gone = info.path.parent / f".{info.path.name}.deleted"
    os.replace(info.path, gone)          # vanish from listings at once, then remove
    shutil.rmtree(gone, ignore_errors=True)
    log.info("deleted run %s", info.id)
