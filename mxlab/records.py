"""What each pipeline step did: plain dataclasses (no pandas), one row per module and step."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ModuleRecord:
    """One module's result for one step.

    Args:
        module: full module name, e.g. ``model.layers.3.self_attn.q_proj``.
        step: the step's name (``smoothquant``, ``awq``, ``gptq``, ``rtn``).
        mse_before / mse_after: mean squared error of the module's output on the calibration inputs
            against the FP module, before and after the step (filled in by the pipeline).
        sqnr_before / sqnr_after: the same as signal-to-quantization-noise ratio in dB.
        seconds: time the step spent on this module.
        details: what the step chose (alpha, scale range, clip ratio, damping...), JSON-able.
    """

    module: str
    step: str
    mse_before: float = math.nan
    mse_after: float = math.nan
    sqnr_before: float = math.nan
    sqnr_after: float = math.nan
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A flat JSON-able dict."""
        return asdict(self)


@dataclass
class StepRecord:
    """One step on one decoder block: a record per module, the step's time and any notes."""

    step: str
    block: int
    modules: list[ModuleRecord] = field(default_factory=list)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (modules as a list of dicts)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StepRecord":
        """Inverse of ``to_dict``."""
        d = dict(d)
        d["modules"] = [ModuleRecord(**m) for m in d.get("modules", [])]
        return cls(**d)
