"""Export to the compressed-tensors layouts that transformers (and vLLM) load without mxlab.

compressed-tensors (>= 0.20) defines three MX layouts, all with blocks of 32 along in_features and
one E8M0 scale per block stored as a uint8 biased exponent (``scale = 2 ** (s - 127)``):

- ``mxfp4-pack-quantized``: ``weight_packed`` uint8 (out, in/2), two E2M1 codes per byte, the even
  element in the low nibble; a code is sign << 3 | index into (0, .5, 1, 1.5, 2, 3, 4, 6).
- ``mxfp6-pack-quantized``: ``weight_packed`` uint8 (out, 3*in/4), four E2M3 codes (sign << 5 | index
  into the 32 E2M3 magnitudes) little-endian in three bytes.
- ``mxfp8-quantized``: ``weight`` float8_e4m3fn (out, in).

Activations, where the layout has a scheme: dynamic MXFP4 or MXFP8 (E4M3), blocks of 32. The codes are
mxlab's own: the export stores exactly the weights ``mxlab.load_quantized`` gives, and says which
scale rule made them (``mxlab_scale_rule``). A consumer quantizes activations with its own scale
rule (compressed-tensors rounds the block maximum to a power of two; mxlab's OCP v1.0 rule floors),
so activation-quantized exports agree with mxlab to within that rule's difference, not bit for bit.
What the layouts cannot hold (MXINT, MXFP6 E3M2, MXFP8 E5M2, per-channel INT, NVFP4 here, blocks
other than 32, integer activations) is refused with the reason and the alternatives.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .atomic import atomic_directory
from .checkpoint import config_dict, dedup_tensors, is_packed_checkpoint, load_quantized, quant_linears
from .errors import MxlabError
from .formats import FORMATS, canonical_format, shared_exponent
from .formats.mx import pow2
from .jsonable import write_json
from .progress import ProgressFn, report


log = logging.getLogger(__name__)

BLOCK = 32
# mxlab weight format -> (compressed-tensors format, element bits)
WEIGHT_LAYOUTS = {"mxfp4_e2m1": ("mxfp4-pack-quantized", 4),
                  "mxfp6_e2m3": ("mxfp6-pack-quantized", 6),
                  "mxfp8_e4m3": ("mxfp8-quantized", 8)}
ACT_BITS = {"mxfp4_e2m1": 4, "mxfp8_e4m3": 8}   # dynamic MX activation schemes compressed-tensors has
SCALE_RULE = "floor"                            # the OCP v1.0 rule that produced mxlab's codes
ALTERNATIVES = ("export mxlab's own packed format (--format mxlab, any MX format and block size) or a "
                "dequantized checkpoint (--format hf, weights only)")

E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
E2M3 = tuple([m / 8 for m in range(8)] + [(1 + m / 8) * 2 ** e for e in range(3) for m in range(8)])


def _args(bits: int, dynamic: bool) -> dict[str, Any]:
    """compressed-tensors QuantizationArgs (as JSON) of an MX float format with E8M0 uint8 scales."""
    return {"num_bits": bits, "type": "float", "symmetric": True, "group_size": BLOCK, "strategy": "group",
            "block_structure": None, "dynamic": dynamic, "actorder": None, "observer": None if dynamic else "minmax",
            "observer_kwargs": {}, "scale_dtype": "torch.uint8", "zp_dtype": "torch.uint8"}


def check_exportable(name: str, spec: Any) -> None:
    """Raise MxlabError naming why ``spec`` of module ``name`` has no compressed-tensors layout."""
    w, a = canonical_format(spec.weights), canonical_format(spec.acts)
    if w not in WEIGHT_LAYOUTS:
        raise MxlabError(f"{name}: weight format {w} has no compressed-tensors layout (it has MXFP4, MXFP6 E2M3 "
                         f"and MXFP8 E4M3 only); {ALTERNATIVES}")
    if int(spec.block_size) != BLOCK:
        raise MxlabError(f"{name}: block size {spec.block_size}: compressed-tensors' MX layouts use blocks of "
                         f"{BLOCK} only; {ALTERNATIVES}")
    if a != "none" and a not in ACT_BITS:
        raise MxlabError(f"{name}: activation format {a} has no compressed-tensors scheme (it has dynamic MXFP4 "
                         f"and MXFP8 E4M3 activations only); pass weights_only=True (CLI --weights-only) to "
                         f"export the weights alone, or {ALTERNATIVES}")


def _codes(values: torch.Tensor, table: tuple[float, ...], sign_bit: int) -> torch.Tensor:
    """Element codes (int32) of ``values`` that lie exactly on ``table`` (magnitudes) with a sign bit."""
    grid = torch.tensor(table, dtype=torch.float32)
    idx = torch.searchsorted(grid, values.abs().float()).clamp_(max=len(table) - 1)
    if not torch.equal(grid[idx], values.abs().float()):
        raise RuntimeError("a weight element is off its format's grid; this is a bug in mxlab, please report it")
    return idx.to(torch.int32) | (torch.signbit(values).to(torch.int32) << sign_bit)


def pack_fp4(values: torch.Tensor) -> torch.Tensor:
    """E2M1 element values (out, in) -> uint8 (out, in/2), element 2k in the low nibble of byte k."""
    c = _codes(values, E2M1, 3)
    return (c[:, 0::2] | (c[:, 1::2] << 4)).to(torch.uint8)


def pack_fp6(values: torch.Tensor) -> torch.Tensor:
    """E2M3 element values (out, in) -> uint8 (out, 3*in/4), four 6-bit codes little-endian in 3 bytes."""
    c = _codes(values, E2M3, 5)
    m, n = c.shape
    c = c.reshape(m, n // 4, 4)
    word = c[..., 0] | c[..., 1] << 6 | c[..., 2] << 12 | c[..., 3] << 18
    return (torch.stack([word, word >> 8, word >> 16], dim=-1) & 0xFF).to(torch.uint8).reshape(m, 3 * n // 4)


def module_tensors(name: str, weight: torch.Tensor, fmt: str) -> dict[str, torch.Tensor]:
    """The compressed-tensors tensors of one Linear whose ``weight`` (out, in) is on ``fmt``'s MX grid."""
    out_f, in_f = weight.shape
    if in_f % BLOCK or (fmt == "mxfp6_e2m3" and in_f % 4):
        raise MxlabError(f"{name}: in_features {in_f} is not a multiple of {BLOCK}, which compressed-tensors' "
                         f"MX layouts need; {ALTERNATIVES}")
    w = weight.detach().float().cpu().reshape(out_f, in_f // BLOCK, BLOCK)
    amax = w.abs().amax(dim=-1)                                    # (out, in/32)
    e = shared_exponent(amax, FORMATS[fmt])                        # the same rule that made the weights
    if bool((e == 128).any()):
        raise MxlabError(f"{name}: the weight holds Inf/NaN; it cannot be exported")
    elems = (w * pow2(-e).unsqueeze(-1)).reshape(out_f, in_f)      # exact: power-of-two scale
    scale = (e + 127).to(torch.uint8)
    if fmt == "mxfp4_e2m1":
        return {f"{name}.weight_packed": pack_fp4(elems), f"{name}.weight_scale": scale}
    if fmt == "mxfp6_e2m3":
        return {f"{name}.weight_packed": pack_fp6(elems), f"{name}.weight_scale": scale}
    q = elems.to(torch.float8_e4m3fn)
    if not torch.equal(q.float(), elems):
        raise RuntimeError(f"{name}: an element is not an E4M3 value; this is a bug in mxlab, please report it")
    return {f"{name}.weight": q, f"{name}.weight_scale": scale}


def quantization_config(specs: dict[str, Any], ignore: list[str], weights_only: bool) -> dict[str, Any]:
    """The ``quantization_config`` of config.json: one config group per (weights, acts) pair."""
    groups: dict[tuple[str, str], list[str]] = {}
    for name, spec in specs.items():
        acts = "none" if weights_only else canonical_format(spec.acts)
        groups.setdefault((canonical_format(spec.weights), acts), []).append(name)
    config_groups = {}
    for i, ((w, a), names) in enumerate(sorted(groups.items())):
        fmt, bits = WEIGHT_LAYOUTS[w]
        config_groups[f"group_{i}"] = {
            "targets": [f"re:^{n.replace('.', '[.]')}$" for n in sorted(names)],
            "weights": _args(bits, False),
            "input_activations": _args(ACT_BITS[a], True) if a != "none" else None,
            "output_activations": None, "format": fmt}
    formats = {g["format"] for g in config_groups.values()}
    return {"quant_method": "compressed-tensors", "format": formats.pop() if len(formats) == 1 else "mixed-precision",
            "quantization_status": "compressed", "config_groups": config_groups, "ignore": sorted(ignore),
            "kv_cache_scheme": None, "global_compression_ratio": None,
            "mxlab": {"version": __version__, "scale_rule": SCALE_RULE, "weights_only": weights_only,
                      "element_rounding": sorted({s.rounding for s in specs.values()})}}


def save_compressed_tensors(model: nn.Module, tokenizer: Any, directory: str | os.PathLike, *,
                            weights_only: bool = False, overwrite: bool = False,
                            progress: ProgressFn | None = None) -> Path:
    """Write ``model`` (with QuantLinear layers, e.g. from load_quantized) as a compressed-tensors checkpoint."""
    from safetensors.torch import save_file


    qmods = {n: m for n, m in quant_linears(model).items() if m.spec.weights != "none"}
    if not qmods:
        raise MxlabError("the model has no quantized Linear layers; export a quantized model (a run's model/)")
    for name, mod in qmods.items():
        check_exportable(name, mod.spec if not weights_only else _no_acts(mod.spec))
    dropped = sorted({m.spec.acts for m in qmods.values() if m.spec.acts != "none"}) if weights_only else []
    if dropped:
        log.warning("weights_only: activation quantization (%s) is not part of this export", ", ".join(dropped))
    tensors: dict[str, torch.Tensor] = {}
    for i, (name, mod) in enumerate(qmods.items()):
        tensors.update(module_tensors(name, mod.weight, mod.spec.weights))
        report(progress, 0.8 * (i + 1) / len(qmods), f"packing {name}")
    plain = {k: v for k, v in model.state_dict().items()
             if k.rpartition(".")[0] not in qmods}                   # QuantLinear state: weight (+ bias below)
    for name, mod in qmods.items():
        if mod.bias is not None:
            plain[f"{name}.bias"] = mod.bias
    plain, aliases = dedup_tensors(plain)
    tensors.update(plain)
    ignore = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in qmods]
    cfg = config_dict(model)
    cfg["quantization_config"] = quantization_config({n: m.spec for n, m in qmods.items()}, ignore, weights_only)
    if aliases and not cfg.get("tie_word_embeddings"):
        log.info("tied tensors saved once: %s", aliases)
    with atomic_directory(directory, overwrite=overwrite) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        write_json(tmp / "config.json", cfg)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(str(tmp))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        report(progress, 1.0, "saved")
    log.info("compressed-tensors checkpoint written to %s (%d quantized modules)", directory, len(qmods))
    return Path(directory)


def _no_acts(spec: Any) -> Any:
    import dataclasses

    return dataclasses.replace(spec, acts="none")


def export_compressed_tensors(source: str | os.PathLike, directory: str | os.PathLike, *,
                              weights_only: bool = False, overwrite: bool = False,
                              progress: ProgressFn | None = None) -> Path:
    """Export a packed mxlab checkpoint or a run directory (its model/) as a compressed-tensors checkpoint."""
    src = Path(source)
    if not is_packed_checkpoint(src) and is_packed_checkpoint(src / "model"):
        src = src / "model"
    if not is_packed_checkpoint(src):
        raise MxlabError(f"{source} is neither an mxlab packed checkpoint nor a run directory with model/; "
                         "give a run's DIR or DIR/model")
    model, tokenizer = load_quantized(src)
    return save_compressed_tensors(model, tokenizer, directory, weights_only=weights_only,
                                   overwrite=overwrite, progress=progress)
