"""The MX kernel's element path, compiled for sm_90 on this CPU-only machine (Triton's wheel ships the
compiler and nvdisasm): the tile kernels' ``quant_scaled`` must stay cheaper than the reference-shaped
``quant_elements``, as the H200 kernel is bound by its ALUs (BENCHMARKS.md: 20.0 against 22.0 instructions
per element for FP formats with the format's constants compiled in; 22.8 against 24.5 as arguments)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


@pytest.mark.slow
def test_quant_scaled_needs_fewer_instructions_per_element_than_quant_elements():
    import kernel_sass

    if not kernel_sass.NVDISASM.exists():
        pytest.skip("this triton wheel has no nvdisasm")
    per_element = {}
    for is_int in (False, True):
        for fast in (False, True):
            per_element[is_int, fast] = len(kernel_sass.sass(kernel_sass.compile_last_axis(is_int=is_int, fast=fast))) / 32
    assert per_element[False, True] <= per_element[False, False] - 1.5      # FP: 20.0 vs 22.0 on 2026-12-03
    assert per_element[True, True] <= per_element[True, False] + 0.5        # integer: 18.0 vs 17.8
    assert per_element[False, True] < 21                                   # a regression shows here first
