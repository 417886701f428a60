"""Validation of a packed checkpoint's config against itself and against its stored tensors.

Every field of ``quantization_config`` is checked before it is used, and the recorded sha256 of
``model.safetensors`` is required: a deleted or edited digest refuses to load unless the caller
asks for ``verify=False`` (CLI: ``--no-verify``). A per-module field that disagrees with the stored
packed tensor (block size, format, shape) is refused: it would load as a different model.
"""
from __future__ import annotations

import json
import re
from typing import Any

import torch

from .errors import MxlabError
from .formats import ROUNDINGS, SCALE_RULES, canonical_format
from .ptq.rotation import check_rotation_size
from .limits import bound, short

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
NO_VERIFY = "pass verify=False (CLI: --no-verify) to load it unverified, only if you trust it"


def check_version(qc: dict[str, Any], where: str, newest: int) -> int:
    """The format version: a whole number in 1..newest."""
    v = qc.get("version")
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise MxlabError(f"{where}: quantization_config version {short(v)} is not a format version; "
                         "export the checkpoint again")
    if v > newest:
        raise MxlabError(f"{where} was written by a newer mxlab (format version {v}, this mxlab reads "
                         f"{newest}); upgrade mxlab")
    return v


def check_digest(qc: dict[str, Any], where: str, verify: bool) -> str | None:
    """The recorded sha256 (lower-case hex); refused when missing or malformed unless not verifying."""
    digest = qc.get("weights_sha256")
    if isinstance(digest, str) and _SHA256.match(digest):
        return digest
    if not verify:
        return None
    what = "has no weights_sha256" if digest is None else f"has a malformed weights_sha256 {short(digest)}"
    raise MxlabError(f"{where} {what}, so its weights cannot be verified; export it again, or {NO_VERIFY}")


def check_module_spec(name: str, spec: Any, where: str) -> dict[str, Any]:
    """One module's entry: weights/acts strings, block_size a whole number within limits, rounding a string."""
    if not isinstance(spec, dict):
        raise MxlabError(f"{where}: module {short(name)} has entry {short(spec)}, not a mapping; export again")
    for key in ("weights", "acts", "rounding"):
        if not isinstance(spec.get(key, "none" if key != "rounding" else "nearest"), str):
            raise MxlabError(f"{where}: module {short(name)} has {key} {short(spec.get(key))}, not a name; "
                             "export the checkpoint again")
    bs = spec.get("block_size")
    if isinstance(bs, bool) or not isinstance(bs, int) or not 1 <= bs <= bound("block_size"):
        raise MxlabError(f"{where}: module {short(name)} has block_size {short(bs)}, not a whole number in "
                         f"1..{bound('block_size')}; export the checkpoint again")
    return dict(spec)


def check_packed_meta(name: str, meta: Any, spec: dict[str, Any], weight_shape: torch.Size, where: str) -> None:
    """The packed tensor's header agrees with the module's entry and with the model's weight shape."""
    if not isinstance(meta, dict):
        raise MxlabError(f"{where}: packed header of {short(name)} is not a mapping; export again")
    try:
        shape = tuple(json.loads(meta["shape"]))
        block_size, fmt = int(meta["block_size"]), str(meta["fmt"])
    except (KeyError, TypeError, ValueError) as e:
        raise MxlabError(f"{where}: packed header of {short(name)} is malformed ({type(e).__name__}); "
                         "export the checkpoint again") from None
    if shape != tuple(weight_shape):
        raise MxlabError(f"{where}: packed weight of {short(name)} has shape {short(list(shape))} in its header, "
                         f"but the model's weight is {list(weight_shape)}; export the checkpoint again")
    if fmt != spec["weights"]:
        raise MxlabError(f"{where}: module {short(name)} says weights {short(spec['weights'])} but its packed "
                         f"weight is {short(fmt)}; export the checkpoint again")
    if block_size != spec["block_size"] and not spec["weights"].startswith("int"):
        raise MxlabError(f"{where}: module {short(name)} says block_size {spec['block_size']} but its packed "
                         f"weight was written with {block_size}; it would load as a different model, "
                         "export the checkpoint again")


def check_finite_tensors(tensors: dict[str, torch.Tensor], where: str) -> None:
    """NaN/Inf in a stored floating-point tensor (a scale, a norm weight) is refused, naming the tensor."""
    for key, t in tensors.items():
        if t.is_floating_point() and t.numel() and \
                not bool(torch.isfinite(t.float() if t.element_size() == 1 else t).all()):
            raise MxlabError(f"{where}: tensor {short(key, 80)} holds NaN/Inf values; the checkpoint is damaged, "
                             "export it again")


def check_formats(qc: dict[str, Any], path: Any) -> dict[str, dict[str, Any]]:
    """Validate each module's formats (canonical names) so an unknown one fails before any tensor work."""
    modules = {}
    for name, spec in qc["modules"].items():
        spec = check_module_spec(name, spec, str(path))
        for key in ("weights", "acts"):
            if spec.get(key, "none") != "none":
                try:
                    spec[key] = canonical_format(spec[key])
                except MxlabError as e:
                    raise MxlabError(f"{path}: module {short(name)} has unknown {key} format "
                                     f"{short(spec.get(key))}") from e
        if spec.get("rounding", "nearest") not in ROUNDINGS:
            raise MxlabError(f"{path}: module {short(name)} has unknown rounding {short(spec.get('rounding'))}; "
                             f"valid: {', '.join(ROUNDINGS)}")
        if spec.get("scale_rule", "floor") not in SCALE_RULES:
            raise MxlabError(f"{path}: module {short(name)} has unknown scale_rule {short(spec.get('scale_rule'))}; "
                             f"valid: {', '.join(SCALE_RULES)}")
        rot = spec.get("rotation", 0)
        if rot:
            try:
                check_rotation_size(rot)
            except MxlabError as e:
                raise MxlabError(f"{path}: module {short(name)}: {e}; export the checkpoint again") from None
        modules[name] = spec
    return modules
