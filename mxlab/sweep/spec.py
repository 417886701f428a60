"""Sweep files: a base experiment and axes to cross, expanded and validated into cells before anything runs.

```yaml
name: w4-orders                      # optional; default: the file's stem
base:
  model: null                        # the embedded default; or a directory or hub id
  eval: {dataset: tinystories, max_windows: 2}
  recipe: {weights: mxint4, acts: mxint8, steps: [rtn]}   # or `preset: NAME` (+ recipe fields on top)
axes:                                # dotted paths into base; the jobs are the cross product
  model: [null, path/to/another/model]
  recipe.steps: [[rtn], [gptq]]
  method:                            # a named axis whose values set several paths together
    - {label: GPTQ+SQ, set: {recipe.steps: [gptq, smoothquant], recipe.allow_requantize: true}}
exclude:                             # drop cells matching every key of one rule (labels or values)
  - {model: null, recipe.steps: [gptq]}
table: {rows: [model], columns: recipe.steps, value: ppl_quant}
```
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import logging
import re
from pathlib import Path
from typing import Any

from ..errors import MxlabError
from ..presets import get_preset
from ..recipe import Recipe


log = logging.getLogger(__name__)

MAX_JOBS = 10_000
MAX_AXIS_VALUES = 1_000
BASE_KEYS = ("model", "eval", "recipe", "preset", "device", "with_kl", "save_model", "allow_pickle",
             "trust_remote_code")
EVAL_KEYS = ("dataset", "max_windows", "seq_len")
TOP_KEYS = ("name", "base", "axes", "exclude", "table", "retries")
VALUES = ("ppl_quant", "ppl_fp", "kl", "top1", "bits_per_weight", "seconds_quantize", "seconds_eval")
DEFAULT_BASE: dict[str, Any] = {"model": None, "eval": {"dataset": "tinystories", "max_windows": None,
                                                          "seq_len": None},
                                "recipe": {}, "preset": None, "device": "auto", "with_kl": True,
                                "save_model": True, "allow_pickle": False, "trust_remote_code": False}
_SAFE = re.compile(r"[^A-Za-z0-9._+-]+")


@dataclasses.dataclass(frozen=True)
class AxisValue:
    """One value of an axis: its label (used in cell names and tables) and the paths it sets."""
    label: str
    sets: tuple[tuple[str, Any], ...]


@dataclasses.dataclass(frozen=True)
class Axis:
    """A named axis and its values, in the file's order."""
    name: str
    values: tuple[AxisValue, ...]


@dataclasses.dataclass
class Cell:
    """One job: its name (a directory name), the axis labels that made it and its full config."""
    name: str
    labels: dict[str, str]
    config: dict[str, Any]

    @property
    def key(self) -> str:
        """A hash of the config: a finished cell is reused only when its config is the same."""
        return hashlib.sha256(json.dumps(self.config, sort_keys=True).encode()).hexdigest()[:16]


@dataclasses.dataclass
class Sweep:
    """An expanded sweep: its name, axes, cells (after exclusions) and how to tabulate the results."""
    name: str
    axes: list[Axis]
    cells: list[Cell]
    excluded: int
    table: dict[str, Any]
    retries: int = 2
    source: dict[str, Any] = dataclasses.field(default_factory=dict)


def label_of(value: Any) -> str:
    """A short, file-name-safe label for an axis value: [rtn, gptq] -> rtn+gptq, None -> default."""
    if value is None:
        text = "default"
    elif isinstance(value, (list, tuple)):
        text = "+".join(label_of(v) for v in value) or "none"
    elif isinstance(value, dict):
        text = value.get("name") if "name" in value and len(value) == 1 else ",".join(
            f"{k}-{label_of(v)}" for k, v in value.items())
    elif isinstance(value, bool):
        text = str(value).lower()
    else:
        text = Path(str(value)).name if ("/" in str(value) or "\\" in str(value)) else str(value)
    return _SAFE.sub("-", str(text)).strip("-.") or "x"


def _check_path(path: str, where: str) -> None:
    if not isinstance(path, str) or not path:
        raise MxlabError(f"{where}: a path must be a dotted string such as recipe.block_size, got {path!r}")
    head = path.split(".")[0]
    if head not in BASE_KEYS:
        raise MxlabError(f"{where}: {path!r} does not start with one of {', '.join(BASE_KEYS)}")
    if head == "eval" and path != "eval" and path.split(".")[1] not in EVAL_KEYS:
        raise MxlabError(f"{where}: {path!r}: eval takes {', '.join(EVAL_KEYS)}")


def _set(config: dict, path: str, value: Any) -> None:
    node = config
    parts = path.split(".")
    for part in parts[:-1]:
        if node.get(part) is None:
            node[part] = {}
        if not isinstance(node[part], dict):
            raise MxlabError(f"cannot set {path}: {part} is not a mapping")
        node = node[part]
    node[parts[-1]] = copy.deepcopy(value)


def _parse_axis(name: Any, values: Any) -> Axis:
    if not isinstance(name, str) or not name:
        raise MxlabError(f"axis names must be strings, got {name!r}")
    if not isinstance(values, list) or not values:
        raise MxlabError(f"axis {name!r} must be a non-empty list of values")
    if len(values) > MAX_AXIS_VALUES:
        raise MxlabError(f"axis {name!r} has {len(values)} values; at most {MAX_AXIS_VALUES}")
    out = []
    for v in values:
        if isinstance(v, dict) and "set" in v:
            if set(v) - {"set", "label"} or not isinstance(v["set"], dict) or not v["set"]:
                raise MxlabError(f"axis {name!r}: a grouped value is {{label: ..., set: {{path: value, ...}}}}, "
                                 f"got {v!r}")
            for path in v["set"]:
                _check_path(path, f"axis {name!r}")
            label = label_of(v.get("label", "_".join(label_of(x) for x in v["set"].values())))
            out.append(AxisValue(label, tuple(v["set"].items())))
        else:
            _check_path(name, f"axis {name!r} (values that are not {{label, set}} groups)")
            out.append(AxisValue(label_of(v), ((name, v),)))
    labels = [v.label for v in out]
    if len(set(labels)) != len(labels):
        raise MxlabError(f"axis {name!r}: two values have the same label {labels}; give them distinct labels")
    return Axis(name, tuple(out))


def _matches(rule: dict, axes: list[Axis], combo: tuple[AxisValue, ...]) -> bool:
    by_name = {a.name: v for a, v in zip(axes, combo)}
    for key, want in rule.items():
        value = by_name[key]
        raw = dict(value.sets).get(key, object()) if len(value.sets) == 1 else object()
        if not (label_of(want) == value.label or want == value.label or want == raw):
            return False
    return True


def _resolve_recipe(config: dict, warnings: set[str]) -> dict:
    """The recipe dict of one cell: the preset (if any) with the base's recipe fields on top."""
    recipe = {}
    if config.get("preset"):
        recipe = get_preset(config["preset"]).to_dict()
    for key, value in (config.get("recipe") or {}).items():
        if key == "calib" and isinstance(value, dict):
            recipe["calib"] = {**recipe.get("calib", {}), **value}
        else:
            recipe[key] = value
    quiet = logging.getLogger("mxlab.recipe")
    level, quiet.level = quiet.level, logging.ERROR     # 64 cells would repeat the same warning 64 times
    try:
        built = Recipe.from_dict(recipe)
    finally:
        quiet.setLevel(level)
    warnings.update(built.warnings)
    return built.to_dict()


def _check_base(base: dict) -> None:
    unknown = sorted(set(base) - set(BASE_KEYS))
    if unknown:
        raise MxlabError(f"base: unknown key(s) {unknown}; valid keys: {list(BASE_KEYS)}")
    ev = base.get("eval")
    if not isinstance(ev, dict) or set(ev) - set(EVAL_KEYS):
        raise MxlabError(f"base.eval must be a mapping with keys {list(EVAL_KEYS)}, got {ev!r}")


def _check_cell(config: dict, name: str, warnings: set[str]) -> dict:
    """Validate one cell's config, returning it with the recipe resolved (MxlabError names the cell)."""
    try:
        _check_base(config)
        ev = config["eval"]
        for key in ("max_windows", "seq_len"):
            v = ev.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 1_000_000):
                raise MxlabError(f"eval.{key} must be a whole number in [1, 1000000] or null, got {v!r}")
        if not isinstance(ev.get("dataset"), str):
            raise MxlabError(f"eval.dataset must be a dataset name or text file, got {ev.get('dataset')!r}")
        if config["model"] is not None and not isinstance(config["model"], str):
            raise MxlabError(f"model must be null, a directory or a hub id, got {config['model']!r}")
        for key in ("with_kl", "save_model", "allow_pickle", "trust_remote_code"):
            if not isinstance(config[key], bool):
                raise MxlabError(f"{key} must be true or false, got {config[key]!r}")
        if config["device"] is not None and not isinstance(config["device"], str):
            raise MxlabError(f"device must be auto, cpu or cuda, got {config['device']!r}")
        config = dict(config, recipe=_resolve_recipe(config, warnings), preset=None)
    except MxlabError as e:
        raise MxlabError(f"cell {name}: {e}; fix the base/axes or add an `exclude` rule for it") from None
    return config


def expand(data: dict, name: str = "sweep") -> Sweep:
    """Expand a parsed sweep file into validated cells (MxlabError on any bad key, value or cell)."""
    if not isinstance(data, dict):
        raise MxlabError("a sweep file must be a mapping with base, axes (and optionally exclude, table, name)")
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise MxlabError(f"sweep: unknown key(s) {unknown}; valid keys: {list(TOP_KEYS)}")
    base = copy.deepcopy(DEFAULT_BASE)
    given = data.get("base") or {}
    if not isinstance(given, dict):
        raise MxlabError(f"base must be a mapping, got {given!r}")
    for key, value in given.items():
        base[key] = {**base["eval"], **value} if key == "eval" and isinstance(value, dict) else value
    _check_base(base)
    axes_in = data.get("axes") or {}
    if not isinstance(axes_in, dict):
        raise MxlabError("axes must be a mapping: path -> list of values")
    axes = [_parse_axis(k, v) for k, v in axes_in.items()]
    rules = data.get("exclude") or []
    if not isinstance(rules, list) or not all(isinstance(r, dict) and r for r in rules):
        raise MxlabError("exclude must be a list of mappings {axis: value, ...}")
    for rule in rules:
        for key in rule:
            if key not in axes_in:
                raise MxlabError(f"exclude rule {rule!r}: {key!r} is not an axis ({', '.join(axes_in)})")
    total = 1
    for a in axes:
        total *= len(a.values)
    if total > MAX_JOBS:
        raise MxlabError(f"the axes make {total} jobs; at most {MAX_JOBS}: split the sweep")
    cells, excluded, warnings = [], 0, set()
    for combo in itertools.product(*(a.values for a in axes)):
        if any(_matches(rule, axes, combo) for rule in rules):
            excluded += 1
            continue
        config = copy.deepcopy(base)
        for value in combo:
            for path, v in value.sets:
                _set(config, path, v)
        labels = {a.name: v.label for a, v in zip(axes, combo)}
        cell_name = "__".join(f"{label_of(a.name.split('.')[-1])}-{v.label}" for a, v in zip(axes, combo)) or "base"
        cells.append(Cell(cell_name[:200], labels, _check_cell(config, cell_name, warnings)))
    names = [c.name for c in cells]
    if len(set(names)) != len(names):
        raise MxlabError("two cells got the same name (labels too long or equal); give the axis values labels")
    if not cells:
        raise MxlabError("every cell is excluded: nothing to run; loosen the exclude rules")
    for w in sorted(warnings):
        log.warning("recipe: %s", w)
    retries = data.get("retries", 2)
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 10:
        raise MxlabError(f"retries must be a whole number in [0, 10], got {retries!r}")
    sweep_name = label_of(data.get("name") or name)
    return Sweep(sweep_name, axes, cells, excluded, _table_spec(data.get("table"), axes), retries, data)


def _table_spec(table: Any, axes: list[Axis]) -> dict[str, Any]:
    names = [a.name for a in axes]
    table = dict(table or {})
    if set(table) - {"rows", "columns", "value"}:
        raise MxlabError(f"table takes rows, columns and value, got {sorted(table)}")
    columns = table.get("columns", names[-1] if names else None)
    rows = table.get("rows", [n for n in names if n != columns])
    rows = [rows] if isinstance(rows, str) else list(rows)
    for n in [*rows, *([columns] if columns else [])]:
        if n not in names:
            raise MxlabError(f"table: {n!r} is not an axis ({', '.join(names)})")
    value = table.get("value", "ppl_quant")
    if value not in VALUES:
        raise MxlabError(f"table value {value!r}: choose one of {', '.join(VALUES)}")
    return {"rows": rows, "columns": columns, "value": value}


def load_sweep(path: str | Path) -> Sweep:
    """Read and expand a sweep YAML file (MxlabError with what to fix on any problem)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise MxlabError(f"sweep file {p} does not exist")
    if p.stat().st_size > 1_000_000:
        raise MxlabError(f"sweep file {p} is larger than 1 MB; a sweep file is a short YAML description")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise MxlabError(f"sweep file {p} is not valid YAML: {e}") from None
    return expand(data, name=p.stem)
