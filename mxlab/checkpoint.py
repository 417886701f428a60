"""The packed MX checkpoint: atomic save, exact reload (sha256-verified), and a dequantized HF checkpoint.

Packed checkpoint layout (a directory, written atomically):
- ``model.safetensors``: per quantized Linear ``<name>.weight.*`` = the tensors of its
  ``PackedTensor.state_dict`` (element codes, E8M0 scales, int/nvfp4 parameters); every other
  tensor of the model as it is. Header metadata ``mxlab`` (JSON): each packed weight's
  ``PackedTensor.metadata()`` and the tied-tensor aliases.
- ``config.json``: the Hugging Face config plus ``quantization_config`` (method "mxlab", version,
  the recipe, each quantized module's formats, the sha256 of ``model.safetensors``).
- the tokenizer files.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .atomic import atomic_directory
from .checkpoint_checks import check_digest, check_finite_tensors, check_formats, check_packed_meta, check_version
from .errors import MxlabError
from .limits import short
from .formats import PackedTensor
from .models import resolve_device
from .ptq.qlinear import QuantLinear
from .recipe import QuantSpec
from .jsonable import write_json
from .progress import ProgressFn, report

log = logging.getLogger(__name__)

QUANT_METHOD = "mxlab"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


# ----------------------------------------------------------------------------------------- saving
def _unpack_result(result_or_model: Any, recipe: Any) -> tuple[nn.Module, Any]:
    """Accept a QuantResult (model + recipe) or a bare model with an explicit recipe."""
    if hasattr(result_or_model, "model") and hasattr(result_or_model, "recipe"):
        return result_or_model.model, recipe if recipe is not None else result_or_model.recipe
    return result_or_model, recipe


def quant_linears(model: nn.Module) -> dict[str, nn.Module]:
    """Every QuantLinear of ``model`` by full module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantLinear)}


def _spec_dict(mod: Any) -> dict[str, Any]:
    """A QuantLinear's formats, scale rule and online input transform, as config.json records them."""
    spec = mod.spec
    return {"weights": spec.weights, "acts": spec.acts, "block_size": int(spec.block_size),
            "rounding": spec.rounding, "scale_rule": spec.scale_rule, "rotation": int(mod.rotation)}


INPUT_SCALE_PREFIX = "mxlab_input_scale."  # a rotated layer's per-channel input divisor (scaling after rotate)


def dedup_tensors(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Drop tensors sharing storage with an earlier one (tied embeddings); return aliases dup -> kept."""
    seen: dict[tuple, str] = {}
    kept: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    for name, t in tensors.items():
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
        if t.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        kept[name] = t.detach().to("cpu").contiguous()
    return kept, aliases


BUFFER_PREFIX = "mxlab_buffers."  # non-persistent buffers (rotary inv_freq): saved so a cast model reloads exactly


def _non_persistent_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Buffers a state_dict leaves out (e.g. rotary inv_freq), keyed BUFFER_PREFIX + full name."""
    out = {}
    for mod_name, mod in model.named_modules():
        for b in getattr(mod, "_non_persistent_buffers_set", ()):
            t = mod._buffers.get(b)
            if t is not None:
                out[f"{BUFFER_PREFIX}{mod_name}.{b}" if mod_name else f"{BUFFER_PREFIX}{b}"] = t
    return out


def _restore_buffers(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Put saved non-persistent buffers back, with their saved dtype (pops them from ``tensors``)."""
    for key in [k for k in tensors if k.startswith(BUFFER_PREFIX)]:
        owner, _, leaf = key[len(BUFFER_PREFIX):].rpartition(".")
        try:
            mod = model.get_submodule(owner)
        except AttributeError:
            mod = None
        if mod is None or leaf not in mod._buffers:
            raise MxlabError(f"buffer {key[len(BUFFER_PREFIX):]} of the checkpoint is not in the model built "
                             "from config.json; export the checkpoint again")
        mod._buffers[leaf] = tensors.pop(key)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _save_safetensors(save_file: Any, tensors: dict, path: Path, meta: dict) -> None:
    """safetensors' save_file, its I/O errors (a full disk) raised as OSError so the export is rolled back."""
    from safetensors import SafetensorError

    try:
        save_file(tensors, str(path), metadata=meta)
    except SafetensorError as e:
        raise OSError(errno.EIO, f"writing {path.name} failed ({' '.join(str(e).split())[:160]})") from e


def save_tokenizer(tokenizer: Any, directory: Path) -> None:
    if tokenizer is None:
        log.warning("no tokenizer given: %s will hold no tokenizer files", directory)
        return
    tokenizer.save_pretrained(str(directory))


def embeddings_tied(model: nn.Module) -> bool | None:
    """Whether lm_head and the input embeddings share one tensor *now* (quantizing one unties them)."""
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    if emb is None or head is None:
        return None
    return head.weight.data_ptr() == emb.weight.data_ptr()


def config_dict(model: nn.Module) -> dict[str, Any]:
    """The HF config as a dict, with tie_word_embeddings matching the model as it is now."""
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    tied = embeddings_tied(model)
    if tied is not None and "tie_word_embeddings" in cfg:
        cfg["tie_word_embeddings"] = tied
    return cfg


def _check_packed(name: str, packed: Any, weight: torch.Tensor) -> None:
    """The packed codes must give back the in-memory weight bit for bit, or the reload would differ."""
    w = packed.dequantize().to(weight.device)
    same = (w == weight) | (torch.isnan(w) & torch.isnan(weight))
    if w.shape != weight.shape or w.dtype != weight.dtype or not bool(same.all()):
        raise RuntimeError(f"{name}: the packed weight ({packed.fmt}) does not reproduce the model's weight "
                           f"exactly; this is a bug in mxlab, please report it with the recipe")


def save_quantized(result_or_model: Any, tokenizer: Any, directory: str | os.PathLike, recipe: Any = None,
                   *, progress: ProgressFn | None = None, overwrite: bool = False) -> Path:
    """Write the packed MX checkpoint of a quantized model (a QuantResult or model + recipe) atomically."""
    model, recipe = _unpack_result(result_or_model, recipe)
    qmods = quant_linears(model)
    if not qmods:
        raise MxlabError("the model has no quantized Linear layers; quantize it first "
                         "(mxlab.quantize_model) or use save_dequantized for a plain checkpoint")
    with atomic_directory(directory, overwrite=overwrite) as tmp:
        tensors: dict[str, torch.Tensor] = {}
        modules: dict[str, dict[str, Any]] = {}
        packed_meta: dict[str, dict[str, str]] = {}
        for i, (name, mod) in enumerate(qmods.items()):
            modules[name] = _spec_dict(mod)
            if mod.input_scale is not None:
                tensors[INPUT_SCALE_PREFIX + name] = mod.input_scale.float()
            if mod.spec.weights != "none":
                packed = mod.packed()
                _check_packed(name, packed, mod.weight)
                tensors.update(packed.state_dict(f"{name}.weight."))
                packed_meta[name] = packed.metadata()
            report(progress, 0.8 * (i + 1) / len(qmods), f"packing {name}")
        plain = {k: v for k, v in model.state_dict().items()
                 if not (k.endswith(".weight") and k[: -len(".weight")] in packed_meta)}
        plain.update(_non_persistent_buffers(model))
        plain, aliases = dedup_tensors(plain)
        clash = set(plain) & set(tensors)
        if clash:
            raise MxlabError(f"internal name clash between packed and plain tensors: {sorted(clash)[:3]}")
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        tensors.update(plain)
        from safetensors.torch import save_file

        meta = {"format": "pt", "mxlab": json.dumps({"packed": packed_meta, "aliases": aliases})}
        _save_safetensors(save_file, tensors, tmp / WEIGHTS_FILE, meta)
        report(progress, 0.9, "writing config and tokenizer")
        cfg = config_dict(model)
        cfg["quantization_config"] = {
            "quant_method": QUANT_METHOD,
            "version": FORMAT_VERSION,
            "mxlab_version": __version__,
            "recipe": recipe.to_dict() if recipe is not None else None,
            "modules": modules,
            "weights_sha256": _file_sha256(tmp / WEIGHTS_FILE),
        }
        write_json(tmp / CONFIG_FILE, cfg)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(str(tmp))
        save_tokenizer(tokenizer, tmp)
        report(progress, 1.0, "saved")
    log.info("packed checkpoint written to %s (%d quantized modules)", directory, len(qmods))
    return Path(directory)


# ---------------------------------------------------------------------------------------- loading
def _read_config(directory: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """config.json without and its quantization_config; clear errors for every way it can be wrong."""
    if not directory.is_dir():
        raise MxlabError(f"{directory} is not a directory; give the directory written by save_quantized "
                         "(a run's DIR/model)")
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise MxlabError(f"{directory} has no {CONFIG_FILE}; it is not a complete mxlab checkpoint, "
                         "export it again with mxlab.save_quantized")
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MxlabError(f"{path} is not readable JSON ({e}); export the checkpoint again") from e
    qc = cfg.pop("quantization_config", None)
    if not isinstance(qc, dict) or qc.get("quant_method") != QUANT_METHOD:
        raise MxlabError(f"{directory} is not an mxlab packed checkpoint (no quantization_config with "
                         f"quant_method 'mxlab'); load a plain checkpoint with mxlab.load_model")
    check_version(qc, str(path), FORMAT_VERSION)
    if not isinstance(qc.get("modules"), dict):
        raise MxlabError(f"{path}: quantization_config has no 'modules' table; export the checkpoint again")
    return cfg, qc


def _read_weights(directory: Path, qc: dict[str, Any], verify: bool) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and the mxlab header metadata of model.safetensors, checked against the recorded sha256."""
    from safetensors import SafetensorError
    from safetensors import safe_open

    path = directory / WEIGHTS_FILE
    if not path.is_file():
        raise MxlabError(f"{directory} has no {WEIGHTS_FILE}; export the checkpoint again")
    expected = check_digest(qc, str(directory / CONFIG_FILE), verify)
    if verify and _file_sha256(path) != expected:
        raise MxlabError(f"{path} is corrupted or truncated (its sha256 differs from the one recorded in "
                         f"{CONFIG_FILE}); export the checkpoint again")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise MxlabError(f"{path} is corrupted or truncated ({e}); export the checkpoint again") from e
    try:
        extra = json.loads(meta["mxlab"])
    except (KeyError, json.JSONDecodeError) as e:
        raise MxlabError(f"{path} lacks mxlab's header metadata; it was not written by save_quantized") from e
    if not isinstance(extra, dict) or not isinstance(extra.get("packed", {}), dict) \
            or not isinstance(extra.get("aliases", {}), dict):
        raise MxlabError(f"{path}: mxlab's header metadata is malformed; export the checkpoint again")
    check_finite_tensors(tensors, str(path))
    return tensors, extra


def _build_model(cfg: dict[str, Any], dtype: torch.dtype) -> nn.Module:
    """An un-initialised model of the config's architecture (weights come from the file)."""
    import transformers as tf

    try:
        config = tf.AutoConfig.for_model(**cfg)
    except (ValueError, KeyError) as e:
        raise MxlabError(f"config.json describes a model transformers cannot build ({e})") from e
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers
        from transformers.modeling_utils import no_init_weights
    with no_init_weights():
        model = tf.AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model


def _pop_packed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    keys = [k for k in tensors if k.startswith(prefix)]
    return {k: tensors.pop(k) for k in keys}


def load_quantized(directory: str | os.PathLike, device: str | torch.device | None = None, *,
                   verify: bool = True) -> tuple[nn.Module, Any]:
    """Rebuild a runnable quantized model (QuantLinear from the packed tensors) and its tokenizer."""
    directory = Path(directory).expanduser()
    cfg, qc = _read_config(directory)
    modules = check_formats(qc, directory / CONFIG_FILE)
    tensors, extra = _read_weights(directory, qc, verify)
    packed_meta, aliases = extra.get("packed", {}), extra.get("aliases", {})

    packed: dict[str, Any] = {}
    for name, meta in packed_meta.items():
        prefix = f"{name}.weight."
        try:
            packed[name] = PackedTensor.from_state_dict(_pop_packed(tensors, prefix), meta, prefix)
        except (KeyError, ValueError, RuntimeError, TypeError) as e:
            raise MxlabError(f"{directory / WEIGHTS_FILE}: packed weight of {name} is incomplete ({e}); "
                             "export the checkpoint again") from e
    # the model dtype: that of most stored floating-point elements (buffers such as inv_freq may differ)
    counts: dict[torch.dtype, int] = {}
    for k, t in tensors.items():
        if t.is_floating_point() and not k.startswith(BUFFER_PREFIX):
            counts[t.dtype] = counts.get(t.dtype, 0) + t.numel()
    dtype = max(counts, key=counts.get) if counts else torch.float32
    model = _build_model(cfg, dtype)

    for name, spec in modules.items():
        try:
            linear = model.get_submodule(name)
        except AttributeError as e:
            raise MxlabError(f"{directory}: module {name} in quantization_config is not in the model") from e
        if not isinstance(linear, nn.Linear):
            raise MxlabError(f"{directory}: module {short(name)} in quantization_config is not a Linear layer")
        qspec = QuantSpec(spec["weights"], spec.get("acts", "none"), int(spec["block_size"]),
                          spec.get("rounding", "nearest"), spec.get("scale_rule", "floor"))
        qlin = QuantLinear.from_linear(linear, qspec)
        qlin.rotation = int(spec.get("rotation", 0))
        if INPUT_SCALE_PREFIX + name in tensors:
            qlin.input_scale = tensors.pop(INPUT_SCALE_PREFIX + name).float()
        if spec["weights"] != "none" and name not in packed:
            raise MxlabError(f"{directory / WEIGHTS_FILE}: module {short(name)} has no packed weight; "
                             "export the checkpoint again")
        if name in packed:  # its own tensor: never write into a weight tied to another module
            check_packed_meta(name, packed_meta[name], spec, linear.weight.shape, str(directory / WEIGHTS_FILE))
            try:
                values = packed[name].dequantize().to(linear.weight.dtype)
            except (RuntimeError, ValueError, IndexError) as e:
                raise MxlabError(f"{directory / WEIGHTS_FILE}: packed weight of {short(name)} does not match its "
                                 f"header ({type(e).__name__}); export the checkpoint again") from e
            qlin.weight = nn.Parameter(torch.empty_like(linear.weight), requires_grad=False)
            qlin.set_quantized_weight(values, packed=packed[name])
            qlin.release_fp()  # the pre-quantization copy is uninitialised memory here
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, qlin)

    for dup, kept in aliases.items():
        if kept in tensors:
            tensors[dup] = tensors[kept]
    _restore_buffers(model, tensors)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if not (k.endswith(".weight") and k[: -len(".weight")] in packed)]
    if missing or unexpected:
        raise MxlabError(f"{directory / WEIGHTS_FILE} does not match config.json: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}; export the checkpoint again")
    model.mxlab_quantization_config = qc
    model.eval()
    if device is not None:
        model.to(resolve_device(device))  # "auto": CUDA when present
    return model, _load_tokenizer(directory)


def _load_tokenizer(directory: Path) -> Any:
    from transformers import AutoTokenizer

    if not any((directory / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        log.warning("%s holds no tokenizer files: returning tokenizer None", directory)
        return None
    try:
        return AutoTokenizer.from_pretrained(str(directory))
    except (OSError, ValueError) as e:
        log.warning("no tokenizer could be loaded from %s (%s)", directory, e)
        return None


def is_packed_checkpoint(directory: str | os.PathLike) -> bool:
    """True when ``directory`` holds a config.json whose quantization_config says mxlab."""
    path = Path(directory) / CONFIG_FILE
    try:
        qc = json.loads(path.read_text()).get("quantization_config") or {}
    except (OSError, ValueError):
        return False
    return qc.get("quant_method") == QUANT_METHOD


def packed_bits_per_weight(model: nn.Module) -> float:
    """Mean storage bits per quantized weight element, scales included (from the real packed sizes)."""
    bits, count = 0, 0
    for mod in quant_linears(model).values():
        if mod.spec.weights != "none":
            bits += 8 * mod.packed().nbytes
            count += mod.weight.numel()
    return bits / count if count else float("nan")
