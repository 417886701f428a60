"""Loading any causal LM (hub id or local directory) and the embedded default model.

The embedded default is karpathy's pretrained ``stories260K`` (llama2.c), converted once into a
Hugging Face ``LlamaForCausalLM`` directory by ``scripts/convert_llama2c.py``.
"""
from __future__ import annotations

import contextlib
import logging
import os
import pickle
from pathlib import Path

import torch

from . import gguf_once
from .architectures import architecture_map
from .errors import MxlabError
from .limits import short
from .placement import model_bytes, too_big_for
from .progress import ProgressFn, report

log = logging.getLogger(__name__)

DEFAULT_MODEL_DIR: Path = Path(__file__).resolve().parents[1] / "assets" / "stories260K"

_HALF = (torch.float16, torch.bfloat16)
_RUNNABLE = ("cpu", "cuda", "mps", "xpu")


def _offline() -> bool:
    """True when the user asked for no network (read at call time, not import time)."""
    flags = (os.environ.get(k, "") for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    if any(f.strip().lower() in ("1", "true", "yes", "on") for f in flags):
        return True
    try:
        from huggingface_hub import constants
        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover - huggingface_hub always ships with transformers
        return False


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face endpoint accepts a TCP connection within `timeout` seconds.

    Checked before any download so that a machine without network fails in seconds instead of
    waiting through huggingface_hub's retries.
    """
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None -> cpu; "auto" -> cuda when available, else cpu; anything else as given."""
    if device is None:
        return torch.device("cpu")
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = device if isinstance(device, torch.device) else torch.device(str(device))
    except (RuntimeError, ValueError, TypeError):
        raise MxlabError(f"unknown device {short(device)}; use cpu, cuda, cuda:N or auto") from None
    if dev.type not in _RUNNABLE:
        raise MxlabError(f"device {short(str(device))} cannot run a model here; use cpu, cuda, cuda:N or auto")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MxlabError(f"device {short(str(device))} asked for, but CUDA is not available here; "
                         "use device='cpu' or 'auto'")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise MxlabError(f"device {dev} does not exist: this machine has {torch.cuda.device_count()} CUDA "
                         "device(s); use cuda:0 or auto")
    return dev


def _resolve_dtype(dtype, config, device: torch.device) -> torch.dtype:
    """The checkpoint's dtype, or float32 on CPU when the checkpoint is half precision."""
    if dtype is not None:
        if isinstance(dtype, str):
            if not isinstance(getattr(torch, dtype, None), torch.dtype):
                raise MxlabError(f"unknown dtype {dtype!r}; use e.g. 'float32', 'bfloat16' or 'float16'")
            dtype = getattr(torch, dtype)
        return dtype
    stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(stored, str):
        stored = getattr(torch, stored, None)
    if not isinstance(stored, torch.dtype):
        stored = torch.float32
    if device.type == "cpu" and stored in _HALF:
        # half-precision matmuls on CPU are slow (and float16 is emulated): compute in float32
        log.info("checkpoint is %s; loading as float32 on CPU", stored)
        return torch.float32
    return stored


def gguf_file_of(source: str | os.PathLike | None) -> Path | None:
    """The GGUF file `source` names: the file itself, or the one .gguf in a directory without config.json."""
    if source is None:
        return None
    path = Path(source).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return path
    if path.is_dir() and not (path / "config.json").is_file():
        found = sorted(path.glob("*.gguf"))
        if len(found) > 1:
            raise MxlabError(f"{path} holds {len(found)} GGUF files ({', '.join(f.name for f in found[:4])}...); "
                             "pass the path of the one to load")
        return found[0] if found else None
    return None


def _locate(source: str | os.PathLike | None) -> tuple[str, bool, str | None]:
    """(what to pass to from_pretrained, is_local, GGUF file name inside that directory or None)."""
    if source is None:
        if not (DEFAULT_MODEL_DIR / "config.json").is_file():
            raise MxlabError(f"the embedded model is missing from {DEFAULT_MODEL_DIR}; reinstall mxlab or run "
                             "scripts/convert_llama2c.py")
        return str(DEFAULT_MODEL_DIR), True, None
    gguf = gguf_file_of(source)
    if gguf is not None:
        _check_gguf(gguf)
        return str(gguf.parent), True, gguf.name
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise MxlabError(f"{path} has no config.json and no .gguf file: it is not a Hugging Face model directory")
        return str(path), True, None
    if path.exists():
        raise MxlabError(f"{path} is a file but not a .gguf; pass a GGUF file or the directory holding config.json "
                         "and the weights")
    text = str(source)
    looks_like_path = text.startswith((".", "/", "~")) or text.count("/") > 1 or os.sep in text and os.sep != "/"
    if looks_like_path:
        raise MxlabError(f"no such directory: {text}; give an existing local model directory or a hub id "
                         "like 'Qwen/Qwen2.5-0.5B'")
    return text, False, None


def _check_gguf(path: Path) -> None:
    """The GGUF magic, and the packages transformers needs to read it, before any slow work."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise MxlabError(f"{path} is not a GGUF file (its first bytes are {magic!r}, not b'GGUF'); "
                         "pass a llama.cpp .gguf file or a Hugging Face model directory")
    import importlib.util

    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise MxlabError(f"loading {path.name} needs the package(s) {', '.join(missing)}: "
                         f"pip install {' '.join(missing)}")


def _from_pretrained(loader, name: str, local: bool, **kwargs):
    """Call `loader.from_pretrained`, trying the local cache first so we never wait on the network."""
    try:
        return loader.from_pretrained(name, local_files_only=True, **kwargs)
    except (OSError, ValueError) as cached_err:
        if local or _offline():
            raise cached_err
        if not hub_reachable():
            raise OSError(f"{name} is not in the local cache and the Hugging Face hub cannot be reached "
                          "(no network)") from cached_err
        log.info("%s is not in the local cache; downloading from the Hugging Face hub", name)
        return loader.from_pretrained(name, **kwargs)


def _load_config(name: str, local: bool, trust_remote_code: bool, **gguf):
    from transformers import AutoConfig

    try:
        return _from_pretrained(AutoConfig, name, local, trust_remote_code=trust_remote_code, **gguf)
    except (ValueError, RuntimeError, KeyError) as e:
        if gguf:
            raise MxlabError(f"cannot read the GGUF file {gguf['gguf_file']} ({e}); transformers reads GGUF "
                             "files of the Llama, Mistral, Qwen2 and similar families only") from e
        if "trust_remote_code" in str(e):
            raise MxlabError(f"{name} needs custom code from its repository; pass trust_remote_code=True only if "
                             "you trust it") from e
        raise MxlabError(f"cannot read the config of {name}: {e}") from e
    except OSError as e:
        where = "the local cache (offline mode)" if _offline() else "the local cache or the Hugging Face hub"
        raise MxlabError(f"cannot find model {name!r} in {where}; check the id or path, or download it first "
                         f"(unset HF_HUB_OFFLINE when online). Details: {e}") from e


def _check_causal_lm(name: str, config) -> None:
    """A decoder-only LM whose checkpoint has its LM head (else the head would be random)."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

    archs = getattr(config, "architectures", None) or []
    remote = bool(getattr(config, "auto_map", None)) and any("CausalLM" in a for a in archs)
    if getattr(config, "is_encoder_decoder", False) or not (type(config) in MODEL_FOR_CAUSAL_LM_MAPPING or remote):
        raise MxlabError(f"{name} is a {config.model_type!r} model, not a causal (decoder-only) language model; "
                         "mxlab quantizes models that AutoModelForCausalLM can load")
    if archs and not any("CausalLM" in a or "LMHead" in a or a.endswith("ForConditionalGeneration") for a in archs):
        raise MxlabError(f"{name} holds a {'/'.join(archs)} checkpoint without a language-model head, so it is not a "
                         "causal LM (its head would be random); use the ...ForCausalLM checkpoint of that model")


def _load_tokenizer(name: str, local: bool, trust_remote_code: bool, **gguf):
    from transformers import AutoTokenizer

    try:
        tok = _from_pretrained(AutoTokenizer, name, local, trust_remote_code=trust_remote_code, **gguf)
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as e:
        raise MxlabError(f"{name} has no usable tokenizer ({e}); add the tokenizer files "
                         "(tokenizer.json or tokenizer.model + tokenizer_config.json) to the model directory") from e
    if tok is None or isinstance(tok, bool):
        raise MxlabError(f"{name} has no tokenizer; add the tokenizer files to the model directory")
    return tok


def _warn_if_unmapped(model) -> None:
    """Tell the user what works for an architecture the scaling methods know nothing about."""
    if architecture_map(model) is None:
        log.warning("no architecture map for %s: RTN and GPTQ work, but SmoothQuant and AWQ will skip its "
                    "blocks (they need to know which norm feeds which linears)", type(model).__name__)


def load_model(source: str | os.PathLike | None = None, device: str | torch.device | None = None, *,
               dtype: torch.dtype | str | None = None, allow_pickle: bool = False,
               trust_remote_code: bool = False, progress: ProgressFn | None = None, stream: bool | None = False):
    """Load a causal LM and its tokenizer from a hub id, local directory or GGUF file (None: the embedded default).

    Args:
        source: hub id ("Qwen/Qwen2.5-0.5B"), local HF directory, a .gguf file (or a directory holding
            exactly one; its weights are dequantized to float), or None for stories260K.
        device: None (cpu), "auto" (cuda when available) or any torch device.
        dtype: None follows the checkpoint (float32 on CPU for half-precision checkpoints).
        allow_pickle: also accept .bin/.pt pickle checkpoints (they can run arbitrary code).
        trust_remote_code: allow model code shipped in the repository.
        progress: ``progress(fraction, message)`` at each loading stage.
        stream: keep the model on the CPU (in the dtype chosen for `device`) so that the pipeline and the
            evaluation stream one decoder block at a time to `device`; None: only when the weights take
            more than half of the accelerator's memory; False (default): always move it to `device`.
    Returns:
        (model in eval mode on `device`, or on the CPU when streamed, tokenizer)
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    report(progress, 0.0, "reading the model config")
    name, local, gguf_name = _locate(source)
    gguf = {"gguf_file": gguf_name} if gguf_name else {}
    dev = resolve_device(device)
    # a GGUF source is read three times by transformers (config, tokenizer, weights): parse it once
    with gguf_once.parsed_once() if gguf else contextlib.nullcontext():
        config = _load_config(name, local, trust_remote_code, **gguf)
        _check_causal_lm(name, config)
        report(progress, 0.1, "loading the tokenizer")
        tokenizer = _load_tokenizer(name, local, trust_remote_code, **gguf)
        torch_dtype = _resolve_dtype(dtype, config, dev)
        report(progress, 0.2, "loading the weights" + (" (dequantizing GGUF tensors)" if gguf else ""))
        try:
            model = _from_pretrained(AutoModelForCausalLM, name, local, config=config, dtype=torch_dtype,
                                     use_safetensors=None if (allow_pickle or gguf) else True,
                                     trust_remote_code=trust_remote_code, **gguf)
        except (OSError, ValueError, EnvironmentError, KeyError, RuntimeError, pickle.UnpicklingError,
                SafetensorError) as e:
            detail = " ".join(str(e).split())[:100]
            if gguf:
                raise MxlabError(f"cannot load the weights of {gguf_name} ({type(e).__name__}: {detail}); the GGUF "
                                 "file is damaged or holds an architecture transformers cannot read") from e
            if not allow_pickle and ("safetensors" in str(e).lower() or _has_only_pickle(name)):
                raise MxlabError(f"{name} has no .safetensors weights; pickle checkpoints can run arbitrary code, "
                                 "so pass allow_pickle=True (CLI: --allow-pickle) only if you trust the source") from e
            if isinstance(e, pickle.UnpicklingError):
                raise MxlabError(f"{name}: the pickle checkpoint holds objects other than tensors (it could run code), "
                                 "so it is refused even with allow_pickle; convert it to safetensors") from e
            raise MxlabError(f"cannot load the weights of {name} ({type(e).__name__}: {detail}); the checkpoint is "
                             "damaged, truncated or not a trusted format: download or export it again") from e
    nbytes = model_bytes(model)
    if dev.type != "cpu" and (stream or (stream is None and too_big_for(nbytes, dev))):
        log.info("model weights (%.1f GB) stay on the CPU; decoder blocks are streamed to %s one at a time",
                 nbytes / 1e9, dev)
        dev = torch.device("cpu")
    report(progress, 0.9, f"moving the model to {dev}")
    model = model.to(dev).eval()
    if gguf:
        name = f"{name}/{gguf_name}"
    report(progress, 1.0, "model loaded")
    log.info("loaded %s (%s, %.2fM parameters) on %s", name, torch_dtype,
             sum(p.numel() for p in model.parameters()) / 1e6, dev)
    _warn_if_unmapped(model)
    return model, tokenizer


def check_finite_weights(model) -> None:
    """MxlabError naming the first parameter or buffer that holds NaN/Inf (a damaged checkpoint)."""
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise MxlabError(f"the model's tensor {name} holds {bad} NaN/Inf values: the checkpoint is damaged; "
                             "load a healthy checkpoint (nothing was quantized or written)")


def _has_only_pickle(name: str) -> bool:
    """A local directory with pickle weights and no safetensors."""
    path = Path(name)
    if not path.is_dir():
        return False
    return not any(path.glob("*.safetensors")) and (any(path.glob("*.bin")) or any(path.glob("*.pt")))
