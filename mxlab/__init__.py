"""mxlab: post-training quantization of LLMs into microscaling (MX) formats.

The public API is re-exported here lazily, so ``import mxlab`` stays fast and the core
(formats, pipeline) needs only torch; plotting/app code imports plotly/gradio on first use.
"""
from __future__ import annotations

import importlib

from .errors import Cancelled, MxlabError

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "quantize": "formats",
    "pack": "formats",
    "PackedTensor": "formats",
    "FORMATS": "formats",
    "ROUNDINGS": "formats",
    "SCALE_RULES": "formats",
    "pack_quantized": "formats",
    "scale_lab_model": "scalelab",
    "load_model": "models",
    "Recipe": "recipe",
    "PRESETS": "presets",
    "get_preset": "presets",
    "plan": "ptq.plan",
    "quantize_model": "ptq.pipeline",
    "QuantResult": "ptq.pipeline",
    "perplexity": "evaluate",
    "evaluate_model": "evaluate",
    "save_quantized": "checkpoint",
    "load_quantized": "checkpoint",
    "export_run": "rundir",
    "zero_shot": "zeroshot",
    "export_compressed_tensors": "compressed_tensors",
    "load_sweep": "sweep",
    "run_sweep": "sweep",
}

__all__ = sorted([*_EXPORTS, "MxlabError", "Cancelled", "__version__"])


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'mxlab' has no attribute {name!r}")
