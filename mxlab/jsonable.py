"""The one converter from Python values to JSON that every file and stdout line of mxlab goes through."""
from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

import torch


def to_jsonable(obj: Any) -> Any:
    """Plain JSON types all the way down; non-finite floats become null (JSON has no inf/nan)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if hasattr(obj, "item"):  # numpy scalars
        return to_jsonable(obj.item())
    return str(obj)  # paths, dtypes, devices


_FLAT_LIST = re.compile(r"\[\s+((?:-?[\d.eE+-]+|null)(?:,\s+(?:-?[\d.eE+-]+|null))*)\s+\]")


def dumps(obj: Any) -> str:
    """``to_jsonable(obj)`` as indented JSON, with lists of numbers kept on one line (a third of the size)."""
    text = json.dumps(to_jsonable(obj), indent=2)
    return _FLAT_LIST.sub(lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]", text)


def write_json(path: Path, obj: Any) -> None:
    """Write ``to_jsonable(obj)`` to ``path``, indented (number lists on one line), with a final newline."""
    path.write_text(dumps(obj) + "\n")
