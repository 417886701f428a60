"""Recipes: what to quantize, in which formats, with which ordered steps. Validated on construction.

A ``Recipe`` round-trips through dicts, YAML and JSON. Order rules (checked in ``validate``):
GPTQ and RTN quantize the weights, so nothing may follow them; a step may appear once;
SmoothQuant together with AWQ is allowed with a warning (the study found no benefit).
"""
from __future__ import annotations

import dataclasses
import fnmatch
import json
import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional, Union

from .errors import MxlabError

log = logging.getLogger(__name__)

ROUNDINGS = ("nearest", "even", "floor")
TARGETS = ("decoder", "lm_head", "embeddings")


def check_format(name: str, what: str) -> str:
    """The canonical name of element format ``name`` (``none`` allowed); MxlabError lists valid ones."""
    if not isinstance(name, str) or not name:
        raise MxlabError(f"{what} format must be a format name such as 'mxint4' or 'none', got {name!r}")
    if name.lower() == "none":
        return "none"
    from .formats import canonical_format  # lazy: keeps `import mxlab.recipe` light

    try:
        return canonical_format(name)
    except MxlabError as e:
        raise MxlabError(f"{what}: {e}") from None


# ----------------------------------------------------------------------------- step configs
@dataclass
class StepConfig:
    """Base of the step configs; ``name`` is the key in ``mxlab.methods.METHODS``.

    ``kind``: "scaling" steps rescale weights and leave them in floating point; "quantizing"
    steps write the final quantized weights, so no step may follow them.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "scaling"

    def to_dict(self) -> dict[str, Any]:
        """{'name': ..., <parameters>}."""
        return {"name": self.name, **dataclasses.asdict(self)}

    def _positive(self, **values: Any) -> None:
        for key, v in values.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                raise MxlabError(f"{self.name}: {key} must be a positive number, got {v!r}")


@dataclass
class SmoothQuantConfig(StepConfig):
    """SmoothQuant: s_j = max|X_j|^alpha / max|W_j|^(1-alpha), folded into the previous op.

    Args:
        alpha: migration strength in [0, 1]; 0.5 as in the study.
    """

    name: ClassVar[str] = "smoothquant"
    alpha: float = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0 <= self.alpha <= 1:
            raise MxlabError(f"smoothquant: alpha must be in [0, 1], got {self.alpha!r}")
        self.alpha = float(self.alpha)


@dataclass
class AWQConfig(StepConfig):
    """AWQ: grid search of s = mean|X|^a per channel, then optional weight clipping by MSE.

    Args:
        n_grid: number of alpha values tried in [0, 1).
        clip: search a clipping ratio per output channel after scaling.
        clip_grid: number of clipping ratios tried.
        max_shrink: smallest clipping ratio is 1 - max_shrink, in (0, 1).
    """

    name: ClassVar[str] = "awq"
    n_grid: int = 20
    clip: bool = True
    clip_grid: int = 20
    max_shrink: float = 0.5

    def __post_init__(self) -> None:
        for key in ("n_grid", "clip_grid"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise MxlabError(f"awq: {key} must be a positive integer, got {v!r}")
        if not isinstance(self.clip, bool):
            raise MxlabError(f"awq: clip must be true or false, got {self.clip!r}")
        if isinstance(self.max_shrink, bool) or not isinstance(self.max_shrink, (int, float)) \
                or not 0 < self.max_shrink < 1:
            raise MxlabError(f"awq: max_shrink must be in (0, 1), got {self.max_shrink!r}")


GPTQ_MX_UPDATES = ("microblock", "column")


@dataclass
class GPTQConfig(StepConfig):
    """GPTQ for MX (the study's Algorithm 1): column blocks with error feedback through H^-1.

    Args:
        percdamp: damping added to H's diagonal, as a fraction of its mean diagonal.
        blocksize: columns per outer block (b1); a multiple of the recipe's MX block size.
        act_order: process columns in order of decreasing H diagonal.
        mx_update: "microblock" (the study's Algorithm 1: each MX block quantized at once) or
            "column" (group-wise GPTQ: block scales fixed at the block's start, then one column at
            a time with error feedback); per-channel INT formats are column-wise either way.
    """

    name: ClassVar[str] = "gptq"
    kind: ClassVar[str] = "quantizing"
    percdamp: float = 0.01
    blocksize: int = 128
    act_order: bool = False
    mx_update: str = field(default="microblock", metadata={"choices": GPTQ_MX_UPDATES})

    def __post_init__(self) -> None:
        if isinstance(self.percdamp, bool) or not isinstance(self.percdamp, (int, float)) or self.percdamp < 0:
            raise MxlabError(f"gptq: percdamp must be >= 0, got {self.percdamp!r}")
        if isinstance(self.blocksize, bool) or not isinstance(self.blocksize, int) or self.blocksize < 1:
            raise MxlabError(f"gptq: blocksize must be a positive integer, got {self.blocksize!r}")
        if not isinstance(self.act_order, bool):
            raise MxlabError(f"gptq: act_order must be true or false, got {self.act_order!r}")
        if self.mx_update not in GPTQ_MX_UPDATES:
            raise MxlabError(f"gptq: mx_update must be one of {', '.join(GPTQ_MX_UPDATES)} (\"microblock\": the "
                             f"study's Algorithm 1; \"column\": group-wise GPTQ), got {self.mx_update!r}")


@dataclass
class RTNConfig(StepConfig):
    """Round to nearest: quantize each weight directly in its format (no calibration needed)."""

    name: ClassVar[str] = "rtn"
    kind: ClassVar[str] = "quantizing"


STEP_CONFIGS: dict[str, type[StepConfig]] = {c.name: c for c in (SmoothQuantConfig, AWQConfig, GPTQConfig, RTNConfig)}
_ALIASES = {"sq": "smoothquant"}


def step_config(spec: Union[str, dict, StepConfig]) -> StepConfig:
    """A StepConfig from a config, a name ('awq') or a dict ({'name': 'smoothquant', 'alpha': 0.6})."""
    if isinstance(spec, StepConfig):
        return spec
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or "name" not in spec:
        raise MxlabError(f"a step must be a name or a mapping with a 'name', got {spec!r}")
    params = dict(spec)
    name = str(params.pop("name")).strip().lower()
    name = _ALIASES.get(name, name)
    if name not in STEP_CONFIGS:
        raise MxlabError(f"unknown step {name!r}; valid steps: {', '.join(STEP_CONFIGS)}")
    cls = STEP_CONFIGS[name]
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise MxlabError(f"{name}: unknown parameter(s) {unknown}; valid: {valid or 'none'}")
    return cls(**params)


# ----------------------------------------------------------------------------- recipe parts
@dataclass(frozen=True)
class QuantSpec:
    """What one Linear gets: weight format, activation format, MX block size, rounding."""

    weights: str
    acts: str
    block_size: int = 32
    rounding: str = "nearest"


@dataclass
class Override:
    """Mixed precision: modules whose full name matches ``pattern`` get other formats, or none.

    Args:
        pattern: fnmatch pattern on the full module name, e.g. ``*.mlp.down_proj`` or ``model.layers.0.*``.
        weights: weight format for these modules (None: the recipe's).
        acts: activation format for these modules (None: the recipe's).
        skip: leave these modules in floating point.
    """

    pattern: str
    weights: Optional[str] = None
    acts: Optional[str] = None
    skip: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.pattern, str) or not self.pattern:
            raise MxlabError(f"override pattern must be a non-empty string, got {self.pattern!r}")
        if not isinstance(self.skip, bool):
            raise MxlabError(f"override {self.pattern!r}: skip must be true or false")
        if self.skip and (self.weights is not None or self.acts is not None):
            raise MxlabError(f"override {self.pattern!r}: skip=true leaves the module unquantized; "
                             f"remove weights/acts or set skip=false")
        if not self.skip and self.weights is None and self.acts is None:
            raise MxlabError(f"override {self.pattern!r} changes nothing: give weights, acts or skip=true")
        if self.weights is not None:
            self.weights = check_format(self.weights, f"override {self.pattern!r} weights")
        if self.acts is not None:
            self.acts = check_format(self.acts, f"override {self.pattern!r} acts")


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
            raise MxlabError(f"calib dataset must be a dataset name or file path, got {self.dataset!r}")
        for key in ("n_samples", "seq_len"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise MxlabError(f"calib {key} must be a positive integer, got {v!r}")


# ----------------------------------------------------------------------------- recipe
@dataclass
class Recipe:
    """A full quantization recipe, validated on construction.

    Args:
        weights: weight element format (e.g. ``mxint4``, ``int4``, ``none``).
        acts: activation format, quantized on the fly at every Linear input (``none``: keep FP).
        block_size: MX block size along in_features (ignored by per-channel ``int*`` formats).
        rounding: ``nearest`` (ties away), ``even`` or ``floor``.
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
            raise MxlabError(f"steps must be a list of steps (e.g. [awq, gptq]) or 'awq,gptq', got {self.steps!r}")
        self.steps = [step_config(s) for s in (self.steps or [])]
        if not isinstance(self.overrides or [], (list, tuple)):
            raise MxlabError(f"overrides must be a list of mappings (e.g. [{{pattern: '*.down_proj', "
                             f"weights: mxint8}}]), got {self.overrides!r}")
        self.overrides = [o if isinstance(o, Override) else Override(**_checked_keys(o, Override, "override"))
                          for o in (self.overrides or [])]
        if isinstance(self.calib, dict):
            self.calib = CalibConfig(**_checked_keys(self.calib, CalibConfig, "calib"))
        elif not isinstance(self.calib, CalibConfig):
            raise MxlabError(f"calib must be a mapping (dataset, n_samples, seq_len), got {self.calib!r}")
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
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size < 1:
            raise MxlabError(f"block_size must be a positive integer (32 is the MX standard), got {self.block_size!r}")
        if self.rounding not in ROUNDINGS:
            raise MxlabError(f"unknown rounding {self.rounding!r}; valid: {', '.join(ROUNDINGS)}")
        if not isinstance(self.allow_requantize, bool):
            raise MxlabError(f"allow_requantize must be true or false, got {self.allow_requantize!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise MxlabError(f"seed must be an integer, got {self.seed!r}")
        if not isinstance(self.targets, str) or not self.target_set or self.target_set - set(TARGETS):
            raise MxlabError(f"targets {self.targets!r}: join one or more of {', '.join(TARGETS)} with '+', "
                             f"e.g. 'decoder+lm_head'")
        return self._check_steps()

    def _check_steps(self) -> list[str]:
        warnings: list[str] = []
        names = [s.name for s in self.steps]
        for i, step in enumerate(self.steps):
            if step.name in names[:i]:
                raise MxlabError(f"step {step.name!r} appears twice in {names}; each step may run once")
            done = [p for p in self.steps[:i] if p.kind == "quantizing"]
            if done and self.allow_requantize:
                warnings.append(f"{step.name} after {done[0].name}: re-quantizes already quantized weights "
                                f"(allow_requantize); the study found this order degrades badly")
            elif done:
                raise MxlabError(
                    f"step {step.name!r} comes after {done[0].name!r} in {names}, but {done[0].name} has already "
                    f"quantized the weights, so {step.name} would rewrite quantized weights. Put {done[0].name} "
                    f"last (e.g. {', '.join([n for n in names if n != done[0].name] + [done[0].name])}).")
        if "smoothquant" in names and "awq" in names:
            warnings.append("smoothquant together with awq: allowed, but the study found no benefit over awq alone")
        if "smoothquant" in names and self.acts == "none":
            warnings.append("smoothquant with acts 'none' only moves outliers into the weights; "
                            "it helps when activations are quantized")
        if self.weights == "none" and self.acts == "none" and not self.overrides:
            warnings.append("weights and acts are both 'none': nothing will be quantized")
        if self.weights == "none" and any(s.kind == "quantizing" or s.name == "awq" for s in self.steps):
            warnings.append("weights 'none': awq/gptq/rtn have no weight format to target")
        gptq = next((s for s in self.steps if s.name == "gptq"), None)
        if gptq is not None and self.weights.startswith("mx") and gptq.blocksize % self.block_size:
            raise MxlabError(f"gptq blocksize {gptq.blocksize} must be a multiple of the MX block size "
                             f"{self.block_size} (GPTQ quantizes whole MX blocks at a time)")
        return warnings

    def spec_for(self, module_name: str) -> Optional[QuantSpec]:
        """The QuantSpec a targeted module gets after overrides (first match wins); None to skip it."""
        for o in self.overrides:
            if fnmatch.fnmatchcase(module_name, o.pattern):
                if o.skip:
                    return None
                return QuantSpec(o.weights or self.weights, o.acts or self.acts, self.block_size, self.rounding)
        return QuantSpec(self.weights, self.acts, self.block_size, self.rounding)

    # -- serialisation
    def to_dict(self) -> dict[str, Any]:
        """A plain dict (YAML/JSON-able); ``Recipe.from_dict`` inverts it."""
        return {
            "weights": self.weights, "acts": self.acts, "block_size": self.block_size,
            "rounding": self.rounding, "steps": [s.to_dict() for s in self.steps], "targets": self.targets,
            "overrides": [{k: v for k, v in dataclasses.asdict(o).items() if v not in (None, False)}
                          for o in self.overrides],
            "calib": dataclasses.asdict(self.calib), "seed": self.seed,
            **({"allow_requantize": True} if self.allow_requantize else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Recipe":
        """Build from a dict; unknown keys raise MxlabError listing the valid ones."""
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
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise MxlabError(f"recipe is not valid YAML: {e}") from None
        return cls.from_dict(data)

    def to_json(self) -> str:
        """JSON text."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "Recipe":
        """Parse JSON text."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise MxlabError(f"recipe is not valid JSON: {e}") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path) -> "Recipe":
        """Read a .yaml/.yml/.json recipe file."""
        from pathlib import Path

        p = Path(path)
        if not p.is_file():
            raise MxlabError(f"recipe file {p} does not exist")
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise MxlabError(f"recipe file {p} cannot be read as UTF-8 text ({e}); give a .yaml or .json recipe") from None
        return cls.from_json(text) if p.suffix.lower() == ".json" else cls.from_yaml(text)


def _checked_keys(d: Any, cls: type, what: str) -> dict:
    if not isinstance(d, dict):
        raise MxlabError(f"{what} must be a mapping, got {d!r}")
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(valid))
    if unknown:
        raise MxlabError(f"{what}: unknown key(s) {unknown}; valid keys: {valid}")
    return dict(d)


# ----------------------------------------------------------------------------- presets
_PAPER_METHODS = {
    "rtn": ["rtn"], "gptq": ["gptq"], "sq": ["smoothquant", "rtn"], "awq": ["awq", "rtn"],
    "sq-gptq": ["smoothquant", "gptq"], "awq-gptq": ["awq", "gptq"],
}


def _paper_presets() -> dict[str, dict[str, Any]]:
    """The study's grid: A-MXINT8 with W-MXINT8/4/3 and A-INT8 with W-INT8/4/3, block 128, six methods."""
    out = {}
    for bits in (8, 4, 3):
        for method, steps in _PAPER_METHODS.items():
            base = dict(block_size=128, steps=list(steps))
            out[f"paper-{method}-w{bits}a8"] = dict(base, weights=f"mxint{bits}", acts="mxint8")
            out[f"paper-int-{method}-w{bits}a8"] = dict(base, weights=f"int{bits}", acts="int8")
    return out


_PRESET_SPECS: dict[str, dict[str, Any]] = {
    **_paper_presets(),
    "mxfp4-rtn-w4a8": dict(weights="mxfp4", acts="mxfp8_e4m3", block_size=32, steps=["rtn"]),
    "nvfp4-rtn-w4a4": dict(weights="nvfp4", acts="nvfp4", block_size=16, steps=["rtn"]),
    "weight-only-mxint4-gptq": dict(weights="mxint4", acts="none", block_size=32, steps=["gptq"]),
    # our best W4A8 on the embedded model: AWQ, then group-wise GPTQ (README, "Group-wise GPTQ for MX")
    "awq-gptq-column-w4a8": dict(weights="mxint4", acts="mxint8", block_size=32,
                                 steps=["awq", {"name": "gptq", "mx_update": "column"}]),
}


class _Presets(dict):
    """Preset name -> Recipe, built on first access (recipes validate formats, which loads mxlab.formats)."""

    def __missing__(self, name: str) -> Recipe:
        if name not in _PRESET_SPECS:
            raise KeyError(name)
        recipe = Recipe.from_dict(_PRESET_SPECS[name])
        self[name] = recipe
        return recipe

    def __iter__(self):
        return iter(_PRESET_SPECS)

    def __len__(self) -> int:
        return len(_PRESET_SPECS)

    def __contains__(self, name: object) -> bool:
        return name in _PRESET_SPECS

    def keys(self):
        return _PRESET_SPECS.keys()

    def items(self):
        return [(k, self[k]) for k in _PRESET_SPECS]

    def values(self):
        return [self[k] for k in _PRESET_SPECS]


PRESETS: dict[str, Recipe] = _Presets()


def get_preset(name: str) -> Recipe:
    """A fresh copy of preset ``name``; MxlabError lists the presets when unknown."""
    if name not in _PRESET_SPECS:
        raise MxlabError(f"unknown preset {name!r}; presets: {', '.join(_PRESET_SPECS)}")
    return Recipe.from_dict(_PRESET_SPECS[name])
