"""Blocks that live in host memory visit the device one at a time (in line) or one ahead (overlapped), and
always go home: after the last block, and when a run stops early."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from conftest import make_tiny_model
from mxlab.errors import Cancelled
from mxlab.ptq import pipeline
from mxlab.ptq.block_moves import BlockMoves
from mxlab.ptq.pipeline import quantize_model
from mxlab.recipe import Recipe

HOST = torch.device("meta")   # a stand-in home: blocks "live" there, so every block has to visit the device


def _spied(blocks, log):
    """Each block's .to logs (block, where) and really moves only to a real device."""
    for i, b in enumerate(blocks):
        def to(where, _i=i, _to=b.to):
            log.append((_i, str(where)))
            return b if torch.device(where) == HOST else _to(where)
        b.to = to


class _HostHomes(BlockMoves):
    def __init__(self, blocks, device, overlap=True):
        super().__init__(blocks, device, overlap)
        self.homes = [HOST] * len(blocks)


def test_in_line_each_block_goes_home_before_the_next_comes():
    blocks = [nn.Linear(2, 2) for _ in range(3)]
    log: list = []
    _spied(blocks, log)
    moves = _HostHomes(blocks, torch.device("cpu"), overlap=False)
    for i in range(3):
        moves.bring(i)
        assert moves.visiting == {i}
    moves.all_home()
    assert log == [(0, "cpu"), (0, "meta"), (1, "cpu"), (1, "meta"), (2, "cpu"), (2, "meta")]
    assert moves.visiting == set()


def test_blocks_already_on_the_device_are_never_moved(random_tokens):
    model = make_tiny_model("opt")
    log: list = []
    _spied(model.model.decoder.layers, log)
    seen = []
    quantize_model(model, None, Recipe(weights="mxint4", acts="none", steps=["rtn"]), calib_tokens=random_tokens,
                   device="cpu", progress=lambda f, msg: seen.append(f))
    assert log == []
    assert seen == sorted(seen) and seen[-1] == 1.0


@pytest.mark.parametrize("stop_at", ["block 1/2: rtn", "block 2/2: rtn", "block 1/2 done"])
def test_a_cancelled_run_sends_every_visiting_block_home(random_tokens, monkeypatch, stop_at):
    model = make_tiny_model("llama")
    log: list = []
    _spied(model.model.layers, log)
    made: list[BlockMoves] = []
    monkeypatch.setattr(pipeline, "BlockMoves", lambda *a, **k: made.append(_HostHomes(*a, **k)) or made[-1])

    def progress(f, msg):
        if stop_at in msg:
            raise Cancelled("stop")

    with pytest.raises(Cancelled):
        quantize_model(model, None, Recipe(steps=["rtn"]), calib_tokens=random_tokens, device="cpu", progress=progress)
    assert made[0].visiting == set()
    for i in {i for i, _ in log}:            # every block that came to the device went home last
        assert [w for j, w in log if j == i][-1] == "meta"


def _quantized_state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_overlapped_moves_give_the_same_weights_and_leave_the_model_on_the_host(random_tokens, monkeypatch):
    recipe = Recipe(weights="mxint4", acts="mxint8", steps=["awq", "gptq"])
    states, peaks = [], []
    for overlap in (False, True):
        monkeypatch.setattr(pipeline, "OVERLAP_MOVES", overlap)
        model = make_tiny_model("llama").to(torch.bfloat16)
        torch.cuda.reset_peak_memory_stats()
        quantize_model(model, None, recipe, calib_tokens=random_tokens, device="cuda")
        peaks.append(torch.cuda.max_memory_allocated())
        assert all(t.device.type == "cpu" for t in model.state_dict().values())
        states.append(_quantized_state(model))
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_overlapped_moves_stopped_mid_run_leave_every_block_on_the_host(random_tokens):
    model = make_tiny_model("llama")

    def progress(f, msg):
        if "block 2/2: rtn" in msg:
            raise Cancelled("stop")

    with pytest.raises(Cancelled):
        quantize_model(model, None, Recipe(steps=["rtn"]), calib_tokens=random_tokens, device="cuda", progress=progress)
    assert all(t.device.type == "cpu" for t in model.state_dict().values())
