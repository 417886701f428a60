"""Every benchmark script parses on this Python (CI's 3.11): most run only on the GPU machine (3.12 there),
so a syntax that only 3.12 accepts would otherwise be found there, at the cost of device time."""
from __future__ import annotations

from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


def test_there_are_benchmark_scripts():
    assert len(SCRIPTS) >= 20


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_benchmark_script_parses(path):
    compile(path.read_text(), str(path), "exec")
