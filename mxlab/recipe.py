"""Recipes: what to quantize, in which formats, with which ordered steps. Validated on construction.

A ``Recipe`` round-trips through dicts, YAML and JSON. A step may appear once; every other order
rule belongs to the step's own config (``StepConfig.check`` in ``steps.py``).
"""
from __future__ import annotations

import dataclasses
import fnmatch
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Optional

from .errors import MxlabError
from .formats import ROUNDINGS, canonical_format, is_mx
from .formats.table import SCALE_RULES, check_nvfp4
from .limits import bound, check_file_size, check_max, short
from .steps import StepConfig, check_bool, check_int, step_config


log = logging.getLogger(__name__)

TARGETS = ("decoder", "lm_head", "embeddings")


def check_format(name: str, what: str) -> str:
    """The canonical name of element format ``name`` (``none`` allowed); MxlabError lists valid ones."""
    if not isinstance(name, str) or not name:
        raise MxlabError(f"{what} format must be a format name such as 'mxint4' or 'none', got {short(name)}")
    if name.lower() == "none":
        return "none"
    if len(name) > 32:
        raise MxlabError(f"{what}: {short(name)} is not a format name; use e.g. 'mxint4', 'mxfp4' or 'none'")
    try:
        return canonical_format(name)
    except MxlabError as e:
        raise MxlabError(f"{what}: {e}") from None


def check_scale_rule(rule: Any, what: str = "scale_rule") -> str:
    """``rule`` if it names an MX scale rule (floor, ceil, even, rceil, mse); else MxlabError."""
    if rule not in SCALE_RULES:
        raise MxlabError(f"{what}: unknown scale_rule {rule!r}; choose one of: {', '.join(SCALE_RULES)} "
                         f"(floor is OCP MX v1.0)")
    return rule


# ----------------------------------------------------------------------------- recipe parts
@dataclass(frozen=True)
class QuantSpec:
    """What one Linear gets: weight format, activation format, MX block size, rounding."""
    weights: str
    acts: str
    block_size: int = 32
    rounding: str = "nearest"
    scale_rule: str = "floor"

    def quant_kwargs(self, fmt: str) -> dict[str, Any]:
        """Keyword arguments of ``formats.quantize``/``pack`` for ``fmt`` (one of this spec's formats): the
        scale rule goes to MX formats only (per-channel INT and NVFP4 have no E8M0 exponent)."""

        rule = self.scale_rule if fmt != "none" and is_mx(fmt) else "floor"
        return {"block_size": self.block_size, "axis": -1, "rounding": self.rounding, "scale_rule": rule}


@dataclass
class Override:
    """Mixed precision: modules whose full name matches ``pattern`` get other formats, or none.

    Args:
        pattern: fnmatch pattern on the full module name, e.g. ``*.mlp.down_proj`` or ``model.layers.0.*``.
        weights: weight format for these modules (None: the recipe's).
        acts: activation format for these modules (None: the recipe's).
        skip: leave these modules in floating point.
        scale_rule: MX scale rule for these modules (None: the recipe's).
    """

    pattern: str
    weights: Optional[str] = None
    acts: Optional[str] = None
    skip: bool = False
    scale_rule: Optional[str] = None

    def __post_init__(self) -> None:
        if not isinstance(self.pattern, str) or not self.pattern:
            raise MxlabError(f"override pattern must be a non-empty string, got {short(self.pattern)}")
        if not isinstance(self.skip, bool):
            raise MxlabError(f"override {short(self.pattern)}: skip must be true or false")
        if self.skip and (self.weights is not None or self.acts is not None or self.scale_rule is not None):
            raise MxlabError(f"override {short(self.pattern)}: skip=true leaves the module unquantized; "
                             f"remove weights/acts/scale_rule or set skip=false")
        if not self.skip and self.weights is None and self.acts is None and self.scale_rule is None:
            raise MxlabError(f"override {short(self.pattern)} changes nothing: give weights, acts, scale_rule "
                             "or skip=true")
        if self.scale_rule is not None:
            self.scale_rule = check_scale_rule(self.scale_rule, f"override {short(self.pattern)}")
        if self.weights is not None:
            self.weights = check_format(self.weights, f"override {short(self.pattern)} weights")
        if self.acts is not None:
            self.acts = check_format(self.acts, f"override {short(self.pattern)} acts")


@dataclass
class CalibConfig:
    """Calibration set: a dataset name from ``mxlab.data.DATASETS`` or a text file path.

    Args:
        dataset: name or path of the calibration text.
        n_samples: number of token sequences.
        seq_len: tokens per sequence.
    """

    dataset: str = "tinystories"
    n_samples: int = 128
    seq_len: int = 512

    def __post_init__(self) -> None:
        if not isinstance(self.dataset, str) or not self.dataset:
            raise MxlabError(f"calib dataset must be a dataset name or file path, got {short(self.dataset)}")
        if len(self.dataset) > 4096 or "\x00" in self.dataset:
            raise MxlabError(f"calib dataset {short(self.dataset)} is not a dataset name or a file path")
        check_int(self.n_samples, "calib n_samples", limit="calib n_samples")
        check_int(self.seq_len, "calib seq_len", limit="calib seq_len")
        check_max(self.n_samples * self.seq_len, "calib tokens", "calib n_samples x seq_len")


# ----------------------------------------------------------------------------- recipe
@dataclass
class Recipe:
    """A full quantization recipe, validated on construction.

    Args:
        weights: weight element format (e.g. ``mxint4``, ``int4``, ``none``).
        acts: activation format, quantized on the fly at every Linear input (``none``: keep FP).
        block_size: MX block size along in_features (ignored by per-channel ``int*`` formats).
        rounding: ``nearest`` (ties away), ``even`` or ``floor``. A recipe using ``nvfp4`` needs
            ``even`` and block_size 16 (NVIDIA's definition), for every format it holds.
        scale_rule: how MX block exponents are chosen: ``floor`` (OCP MX v1.0), ``ceil``, ``even``,
            ``rceil`` or ``mse`` (per-block search); per-channel INT and NVFP4 modules ignore it.
        steps: ordered steps: configs, names (``"awq,gptq"`` or ``["awq", "gptq"]``) or dicts.
            Linears no step quantized are RTN-quantized at the end of each block.
        targets: what is quantized, ``+``-joined from ``decoder`` (every Linear in the decoder
            blocks), ``lm_head`` and ``embeddings`` (weight-only), e.g. ``decoder+lm_head``.
        overrides: per-module formats or skips; the first matching pattern decides.
        calib: calibration set and size.
        seed: seed for calibration sampling.
        allow_requantize: for ablations only: let steps follow GPTQ/RTN (the study's reversed orders);
            a later step starts from the quantized weights, which are quantized again at the end.
    """

    weights: str = "mxint4"
    acts: str = "mxint8"
    block_size: int = 32
    rounding: str = "nearest"
    scale_rule: str = "floor"
    steps: list[StepConfig] = field(default_factory=list)
    targets: str = "decoder"
    overrides: list[Override] = field(default_factory=list)
    calib: CalibConfig = field(default_factory=CalibConfig)
    seed: int = 0
    allow_requantize: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.steps, str):
            self.steps = [s for s in self.steps.replace(" ", "").split(",") if s]
        if not isinstance(self.steps or [], (list, tuple)):
            raise MxlabError(f"steps must be a list of steps (e.g. [awq, gptq]) or 'awq,gptq', got {short(self.steps)}")
        if len(self.steps or []) > bound("recipe items") or len(self.overrides or []) > bound("recipe items"):
            raise MxlabError(f"a recipe holds at most {bound('recipe items')} steps and overrides")
        self.steps = [step_config(s) for s in (self.steps or [])]
        if not isinstance(self.overrides or [], (list, tuple)):
            raise MxlabError(f"overrides must be a list of mappings (e.g. [{{pattern: '*.down_proj', "
                             f"weights: mxint8}}]), got {short(self.overrides)}")
        self.overrides = [o if isinstance(o, Override) else Override(**_checked_keys(o, Override, "override"))
                          for o in (self.overrides or [])]
        if isinstance(self.calib, dict):
            self.calib = CalibConfig(**_checked_keys(self.calib, CalibConfig, "calib"))
        elif not isinstance(self.calib, CalibConfig):
            raise MxlabError(f"calib must be a mapping (dataset, n_samples, seq_len), got {short(self.calib)}")
        self._warnings = self.validate()
        for w in self._warnings:
            log.warning("recipe: %s", w)

    @property
    def warnings(self) -> list[str]:
        """Warnings found by the last ``validate``."""
        return list(self._warnings)

    @property
    def target_set(self) -> frozenset[str]:
        """The parsed ``targets``."""
        return frozenset(t for t in self.targets.replace(",", "+").split("+") if t)

    def validate(self) -> list[str]:
        """Check every field and the step order; return warnings, raise MxlabError on errors."""
        self.weights = check_format(self.weights, "weights")
        self.acts = check_format(self.acts, "acts")
        check_int(self.block_size, "block_size (32 is the MX standard)", limit="block_size")
        if not isinstance(self.rounding, str) or self.rounding not in ROUNDINGS:
            raise MxlabError(f"unknown rounding {short(self.rounding)}; valid: {', '.join(ROUNDINGS)}")
        check_scale_rule(self.scale_rule)
        check_bool(self.allow_requantize, "allow_requantize")
        check_int(self.seed, "seed", lo=0, limit="seed")
        if not isinstance(self.targets, str) or not self.target_set or self.target_set - set(TARGETS):
            raise MxlabError(f"targets {short(self.targets)}: join one or more of {', '.join(TARGETS)} with '+', "
                             f"e.g. 'decoder+lm_head'")
        return self._check_steps()

    def _check_steps(self) -> list[str]:
        names = [s.name for s in self.steps]
        for i, step in enumerate(self.steps):
            if step.name in names[:i]:
                raise MxlabError(f"step {step.name!r} appears twice in {names}; each step may run once")
        warnings = [w for i, step in enumerate(self.steps) for w in step.check(self, i)]
        if self.weights == "none" and self.acts == "none" and not self.overrides:
            warnings.append("weights and acts are both 'none': nothing will be quantized")

        fmts = {self.weights, self.acts, *(o.weights for o in self.overrides), *(o.acts for o in self.overrides)}
        if "nvfp4" in fmts:  # one block size and rounding serve every format of the recipe
            check_nvfp4(self.block_size, self.rounding, "recipe with nvfp4")
        if self.scale_rule != "floor" and not any(f and f != "none" and is_mx(f) for f in fmts):
            warnings.append(f"scale_rule {self.scale_rule!r} applies to MX formats only; this recipe has none")
        return list(dict.fromkeys(warnings))

    def spec_for(self, module_name: str) -> Optional[QuantSpec]:
        """The QuantSpec a targeted module gets after overrides (first match wins); None to skip it."""
        for o in self.overrides:
            if fnmatch.fnmatchcase(module_name, o.pattern):
                if o.skip:
                    return None
                return QuantSpec(o.weights or self.weights, o.acts or self.acts, self.block_size, self.rounding,
                                 o.scale_rule or self.scale_rule)
        return QuantSpec(self.weights, self.acts, self.block_size, self.rounding, self.scale_rule)

    # -- serialisation
    def to_dict(self) -> dict[str, Any]:
        """A plain dict (YAML/JSON-able); ``Recipe.from_dict`` inverts it."""
        return {
            "weights": self.weights, "acts": self.acts, "block_size": self.block_size,
            "rounding": self.rounding, "scale_rule": self.scale_rule, "steps": [s.to_dict() for s in self.steps], "targets": self.targets,
            "overrides": [{k: v for k, v in dataclasses.asdict(o).items() if v not in (None, False)}
                          for o in self.overrides],
            "calib": dataclasses.asdict(self.calib), "seed": self.seed,
            **({"allow_requantize": True} if self.allow_requantize else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Recipe":
        """Build from a dict; unknown keys raise MxlabError listing the valid ones."""
        if isinstance(d, Recipe):
            return d
        if not isinstance(d, dict):
            raise MxlabError(f"a recipe must be a mapping, got {type(d).__name__}")
        return cls(**_checked_keys(d, cls, "recipe"))

    def to_yaml(self) -> str:
        """YAML text."""
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> "Recipe":
        """Parse YAML text (use ``load`` for a file path)."""
        from .safe_yaml import load_yaml

        return cls.from_dict(load_yaml(text, "recipe"))

    def to_json(self) -> str:
        """JSON text."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "Recipe":
        """Parse JSON text."""
        if not isinstance(text, str) or len(text) > bound("recipe bytes"):
            raise MxlabError(f"recipe JSON must be text of at most {bound('recipe bytes')} bytes")
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as e:
            raise MxlabError(f"recipe is not valid JSON: {' '.join(str(e).split())[:200]}") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path) -> "Recipe":
        """Read a .yaml/.yml/.json recipe file."""
        from pathlib import Path

        p = Path(path)
        if not p.is_file():
            raise MxlabError(f"recipe file {p} does not exist")
        check_file_size(p, "recipe bytes", f"recipe file {p}")
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            reason = "it is not UTF-8 text" if isinstance(e, UnicodeDecodeError) else (e.strerror or "unreadable")
            raise MxlabError(f"recipe file {p} cannot be read ({reason}); give a UTF-8 .yaml or .json recipe") from None
        return cls.from_json(text) if p.suffix.lower() == ".json" else cls.from_yaml(text)


def _checked_keys(d: Any, cls: type, what: str) -> dict:
    if not isinstance(d, dict):
        raise MxlabError(f"{what} must be a mapping, got {short(d)}")
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted((str(k) for k in set(d) - set(valid)))
    if unknown:
        raise MxlabError(f"{what}: unknown key(s) {short(unknown)}; valid keys: {valid}")
    return dict(d)


