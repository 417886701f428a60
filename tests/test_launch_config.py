"""The MX kernel's launch table: per device name, per block size, and the mse rule's own configs falling back
to the base kind's (the configs only change speed, never bits: tests/interpret/check_kernels.py)."""
from __future__ import annotations

import pytest

pytest.importorskip("triton")

from mxlab.formats import kernels  # noqa: E402


@pytest.fixture
def on_an_h200(monkeypatch):
    monkeypatch.setattr(kernels.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(kernels.torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(kernels, "_device_name", lambda index: "NVIDIA H200")
    monkeypatch.setattr(kernels, "_TUNED", {})


def test_the_h200_table_is_used_on_an_h200(on_an_h200):
    assert kernels.launch_config("last", 32) == (32, 1, kernels.STREAM)
    assert kernels.launch_config("inner", 16) == (128, 1, 0)
    assert kernels.launch_config("inner", 48) == kernels._full(kernels.INNER_DEFAULT.get(48, (max(16, 4096 // 64), 4)))


def test_mse_configs_fall_back_to_the_base_kind_and_win_where_measured(on_an_h200, monkeypatch):
    assert kernels.launch_config("inner_mse", 32) == (32, 1, 0)        # measured for mse (BENCHMARKS.md)
    assert kernels.launch_config("inner_mse", 128) == (32, 4, 0)       # not measured: the base kind's
    assert kernels.launch_config("last_mse", 32) == (16, 1, kernels.STREAM)
    kernels.set_tuned("last_mse", 32, (8, 2, 0))                       # what a tuning run picked wins
    assert kernels.launch_config("last_mse", 32) == (8, 2, 0)
    assert kernels.launch_config("last", 32) == (32, 1, kernels.STREAM)
