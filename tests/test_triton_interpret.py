"""The Triton kernels (MX fake quantization on both axes, GPTQ's fused column loop) run on the CPU under
TRITON_INTERPRET=1 and give the same bits as the torch paths (skipped where triton is not installed)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_kernels_bit_equal_to_torch_under_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, str(REPO / "tests" / "interpret" / "check_kernels.py")], env=env,
                         capture_output=True, text=True, timeout=600)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith(("ok", "FAIL"))]
    assert out.returncode == 0 and out.stdout.rstrip().endswith("all equal"), out.stdout[-2000:] + out.stderr[-2000:]
    assert len(lines) == 7 * 5 + 10 * 3 * 5 * 4 + 7 * 4 + 10 * 25 + 5 + 5 * 3 * 3 + 6 + 4 and all(ln.startswith("ok") for ln in lines)
