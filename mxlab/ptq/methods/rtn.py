"""Round to nearest: quantize every weight of the block directly in its format."""
from __future__ import annotations

import time

from ...records import ModuleRecord, StepRecord
from ...steps import RTNConfig
from ..context import BlockContext


def apply(ctx: BlockContext, config: RTNConfig) -> StepRecord:
    """RTN-quantize each linear of ``ctx`` that no earlier step has quantized."""
    modules = []
    for name, lin in ctx.linears.items():
        if lin.weight_quantized:
            continue
        t0 = time.perf_counter()
        lin.quantize_weight()
        modules.append(ModuleRecord(f"{ctx.prefix}.{name}", "rtn", seconds=time.perf_counter() - t0,
                                    details={"format": lin.spec.weights}))
    return StepRecord("rtn", ctx.index, modules)
