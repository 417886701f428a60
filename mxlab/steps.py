"""Step configs: one dataclass per PTQ step, validated on construction, each checking its own order rules.

A config holds a step's parameters; ``check(recipe, index)`` says whether the step may run where the
recipe puts it (raise ``MxlabError``) and what to warn about (returned strings). The method that does
the work is ``mxlab/ptq/methods/<name>.py``; nothing outside that folder maps a name to an algorithm.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Union

from .errors import MxlabError
from .limits import check_max, short
from .ptq.rotation import check_rotation_size


if TYPE_CHECKING:
    from .recipe import Recipe


def check_int(value: Any, what: str, lo: int = 1, limit: str | None = None) -> int:
    """``value`` if it is an int >= ``lo`` (bools refused) and within ``LIMITS[limit]``, else MxlabError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        kind = "a positive integer" if lo == 1 else f"an integer >= {lo}"
        raise MxlabError(f"{what} must be {kind}, got {short(value)}")
    if limit is not None:
        check_max(value, limit, what)
    return value


def check_number(value: Any, what: str, lo: float, hi: float, *, open_lo: bool = False,
                 open_hi: bool = False) -> float:
    """``value`` as a float if it is a number in the range (brackets as given), else MxlabError."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    if ok:
        ok = (value > lo if open_lo else value >= lo) and (value < hi if open_hi else value <= hi)
    if not ok:
        rng = f"{'(' if open_lo else '['}{lo:g}, {hi:g}{')' if open_hi else ']'}"
        raise MxlabError(f"{what} must be a number in {rng}, got {short(value)}")
    return float(value)


def check_bool(value: Any, what: str) -> bool:
    """``value`` if it is a bool, else MxlabError naming ``what``."""
    if not isinstance(value, bool):
        raise MxlabError(f"{what} must be true or false, got {short(value)}")
    return value


@dataclass
class StepConfig:
    """Base of the step configs; ``name`` is the step's name in recipes (and its method's module).

    ``kind``: "scaling" steps rescale weights and leave them in floating point; "quantizing"
    steps write the final quantized weights, so no step may follow them.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "scaling"

    def to_dict(self) -> dict[str, Any]:
        """{'name': ..., <parameters>}."""
        return {"name": self.name, **dataclasses.asdict(self)}

    def check(self, recipe: "Recipe", index: int) -> list[str]:
        """Order rules for this step at ``recipe.steps[index]``: warnings, or MxlabError when refused.

        Shared rule: nothing may rewrite weights a quantizing step already wrote (unless the recipe
        sets ``allow_requantize`` for the study's reversed-order ablations).
        """
        names = [s.name for s in recipe.steps]
        done = [p for p in recipe.steps[:index] if p.kind == "quantizing"]
        if not done:
            return []
        if recipe.allow_requantize:
            return [f"{self.name} after {done[0].name}: re-quantizes already quantized weights "
                    f"(allow_requantize); the study found this order degrades badly"]
        quantizing = [n for n in names if n in {s.name for s in recipe.steps if s.kind == "quantizing"}]
        scaling = [n for n in names if n not in quantizing]
        raise MxlabError(
            f"step {self.name!r} comes after {done[0].name!r} in {names}, but {done[0].name} has already "
            f"quantized the weights. Rule: scaling steps ({', '.join(scaling) or 'none here'}) go first and "
            f"exactly one quantizing step (gptq or rtn) goes last, e.g. "
            f"{', '.join(scaling + quantizing[:1])}; set allow_requantize for reversed-order ablations.")


@dataclass
class SmoothQuantConfig(StepConfig):
    """SmoothQuant: s_j = max|X_j|^alpha / max|W_j|^(1-alpha), folded into the previous op.

    Args:
        alpha: migration strength in [0, 1]; 0.5 as in the study.
    """

    name: ClassVar[str] = "smoothquant"
    alpha: float = 0.5

    def __post_init__(self) -> None:
        self.alpha = check_number(self.alpha, "smoothquant: alpha", 0, 1)

    def check(self, recipe: "Recipe", index: int) -> list[str]:
        """Shared rule; warns beside AWQ (no benefit in the study) and without activation quantization."""
        warnings = super().check(recipe, index)
        if any(s.name == "awq" for s in recipe.steps):
            warnings.append("smoothquant together with awq: allowed, but the study found no benefit over awq alone")
        if recipe.acts == "none":
            warnings.append("smoothquant with acts 'none' only moves outliers into the weights; "
                            "it helps when activations are quantized")
        return warnings


MAX_GRID_BATCH = 64  # awq grid points per batched GEMM
AWQ_SCORES = ("module", "linears")  # what an AWQ alpha is scored on (module: llm-awq's module2inspect)


@dataclass
class AWQConfig(StepConfig):
    """AWQ: grid search of s = mean|X|^a per channel, then optional weight clipping by MSE.

    Args:
        n_grid: number of alpha values tried in [0, 1).
        clip: search a clipping ratio per output channel after scaling.
        clip_grid: number of clipping ratios tried.
        max_shrink: smallest clipping ratio is 1 - max_shrink, in (0, 1).
        grid_batch: alpha values scored per batched GEMM (1: one at a time); the same scales either
            way, more memory and fewer, larger GEMMs when > 1 (at most ``MAX_GRID_BATCH``). Groups
            scored on their module run it once per alpha, whatever grid_batch says.
        score: what an alpha is scored on: ``module`` (llm-awq: the MSE of the module the group
            feeds, the attention block for q/k/v and the MLP for gate/up, from the architecture
            map) or ``linears`` (the summed output MSE of the group's linears). Groups of one
            linear are scored on its output either way.
    """

    name: ClassVar[str] = "awq"
    n_grid: int = 20
    clip: bool = True
    clip_grid: int = 20
    max_shrink: float = 0.5
    grid_batch: int = 1
    score: str = "module"

    def __post_init__(self) -> None:
        check_int(self.n_grid, "awq: n_grid", limit="awq n_grid")
        check_int(self.grid_batch, "awq: grid_batch")
        if self.grid_batch > MAX_GRID_BATCH:
            raise MxlabError(f"awq: grid_batch must be at most {MAX_GRID_BATCH}, got {self.grid_batch}")
        check_int(self.clip_grid, "awq: clip_grid", limit="awq clip_grid")
        check_bool(self.clip, "awq: clip")
        check_number(self.max_shrink, "awq: max_shrink", 0, 1, open_lo=True, open_hi=True)
        if self.score not in AWQ_SCORES:
            raise MxlabError(f"awq: score must be one of {', '.join(AWQ_SCORES)} (module is llm-awq's), "
                             f"got {short(self.score)}")

    def check(self, recipe: "Recipe", index: int) -> list[str]:
        """Shared rule; warns when there is no weight format to search for."""
        warnings = super().check(recipe, index)
        if recipe.weights == "none":
            warnings.append("weights 'none': awq has no weight format to target")
        return warnings


@dataclass
class RotateConfig(StepConfig):
    """Block-diagonal Hadamard rotation of every quantized Linear's input space: W -> W R offline,
    x -> x R online before the activation quantizer, R = blockdiag(H_size / sqrt(size)).

    Args:
        size: Hadamard block size, a power of two; None (default) is the recipe's MX block size, so
            each MX block of the rotated input mixes only the channels it covers.
    """

    name: ClassVar[str] = "rotate"
    size: Union[int, None] = None

    def __post_init__(self) -> None:
        if self.size is not None:
            check_rotation_size(self.size)

    def check(self, recipe: "Recipe", index: int) -> list[str]:
        """Shared rule; the default size needs a power-of-two block size; warns when size != block size."""
        warnings = super().check(recipe, index)

        if self.size is None:
            try:
                check_rotation_size(recipe.block_size)
            except MxlabError:
                raise MxlabError(f"rotate: the default size is the block size ({recipe.block_size}), which is "
                                 f"not a power of two; give rotate a size such as 32") from None
        elif self.size != recipe.block_size:
            warnings.append(f"rotate size {self.size} differs from the MX block size {recipe.block_size}: "
                            f"rotated blocks then straddle MX blocks")
        return warnings


GPTQ_MX_UPDATES = ("microblock", "column", "static")
HESSIAN_DTYPES = ("float32", "tf32", "bf16")  # GPTQ Hessian GEMM precisions (ptq/methods/hessian.py)


@dataclass
class GPTQConfig(StepConfig):
    """GPTQ for MX (the study's Algorithm 1): column blocks with error feedback through H^-1.

    Args:
        percdamp: damping added to H's diagonal, as a fraction of its mean diagonal.
        blocksize: columns per outer block (b1); a multiple of the recipe's MX block size.
        act_order: process columns in order of decreasing H diagonal.
        mx_update: "microblock" (the study's Algorithm 1: each MX block quantized at once),
            "column" (group-wise GPTQ: block scales fixed at the block's start, then one column at
            a time with error feedback) or "static" (every block's scales fixed from the weights
            before the loop, as llm-compressor and FP-Quant do, then column by column);
            per-channel INT formats are column-wise either way.
        hessian_dtype: GEMM precision of H = 2 X^T X / n: "float32" (reference), "tf32" or "bf16"
            (tensor cores: inputs rounded, float32 accumulation; see benchmarks/hessian_precision.py).
        batch_linears: quantize linears that share one Hessian (q/k/v, gate/up) as one stacked problem.
        fused: run the column-wise inner loop (mx_update "column", per-channel INT) as one Triton kernel
            per outer block on CUDA; elsewhere the torch path runs and the record says so.
    """

    name: ClassVar[str] = "gptq"
    kind: ClassVar[str] = "quantizing"
    percdamp: float = 0.01
    blocksize: int = 128
    act_order: bool = False
    mx_update: str = field(default="microblock", metadata={"choices": GPTQ_MX_UPDATES})
    hessian_dtype: str = field(default="float32", metadata={"choices": HESSIAN_DTYPES})
    batch_linears: bool = False
    fused: bool = False

    def __post_init__(self) -> None:
        if self.hessian_dtype not in HESSIAN_DTYPES:
            raise MxlabError(f"gptq: hessian_dtype must be one of {', '.join(HESSIAN_DTYPES)}, "
                             f"got {self.hessian_dtype!r}")
        check_bool(self.batch_linears, "gptq: batch_linears")
        check_bool(self.fused, "gptq: fused")
        check_number(self.percdamp, "gptq: percdamp", 0, 1e6)
        check_int(self.blocksize, "gptq: blocksize", limit="gptq blocksize")
        check_bool(self.act_order, "gptq: act_order")
        if self.mx_update not in GPTQ_MX_UPDATES:
            raise MxlabError(f"gptq: mx_update must be one of {', '.join(GPTQ_MX_UPDATES)} (\"microblock\": the "
                             f"study's Algorithm 1; \"column\": group-wise GPTQ; \"static\": scales fixed "
                             f"before the loop), got {short(self.mx_update)}")

    def check(self, recipe: "Recipe", index: int) -> list[str]:
        """Shared rule; the outer block must hold whole MX blocks."""
        warnings = super().check(recipe, index)
        if recipe.weights.startswith("mx") and self.blocksize % recipe.block_size:
            raise MxlabError(f"gptq blocksize {self.blocksize} must be a multiple of the MX block size "
                             f"{recipe.block_size} (GPTQ quantizes whole MX blocks at a time)")
        if recipe.weights == "none":
            warnings.append("weights 'none': gptq has no weight format to target")
        return warnings


@dataclass
class RTNConfig(StepConfig):
    """Round to nearest: quantize each weight directly in its format (no calibration needed)."""
    name: ClassVar[str] = "rtn"
    kind: ClassVar[str] = "quantizing"

    def check(self, recipe: "Recipe", index: int) -> list[str]:
        """Shared rule; warns when there is no weight format."""
        warnings = super().check(recipe, index)
        if recipe.weights == "none":
            warnings.append("weights 'none': rtn has no weight format to target")
        return warnings


STEP_CONFIGS: dict[str, type[StepConfig]] = {c.name: c for c in (RotateConfig, SmoothQuantConfig, AWQConfig,
                                                                  GPTQConfig, RTNConfig)}
ALIASES = {"sq": "smoothquant"}


def step_config(spec: Union[str, dict, StepConfig]) -> StepConfig:
    """A StepConfig from a config, a name ('awq') or a dict ({'name': 'smoothquant', 'alpha': 0.6})."""
    if isinstance(spec, StepConfig):
        return spec
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or "name" not in spec:
        raise MxlabError(f"a step must be a name or a mapping with a 'name', got {short(spec)}")
    params = dict(spec)
    name = params.pop("name")
    name = name.strip().lower() if isinstance(name, str) else name
    name = ALIASES.get(name, name) if isinstance(name, str) else name
    if name not in STEP_CONFIGS:
        raise MxlabError(f"unknown step {short(name)}; valid steps: {', '.join(STEP_CONFIGS)}")
    cls = STEP_CONFIGS[name]
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise MxlabError(f"{name}: unknown parameter(s) {short(unknown)}; valid: {valid or 'none'}")
    return cls(**params)
