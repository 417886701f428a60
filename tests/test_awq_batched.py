"""AWQ's batched grid search and one-pass capture: the same scales, bit for bit, as the plain loop."""
from __future__ import annotations

import pytest
import torch

from conftest import make_tiny_model
from mxlab.formats import quantize
from mxlab.ptq.methods import awq
from mxlab.ptq.pipeline import quantize_model
from mxlab.recipe import Recipe
from mxlab.errors import MxlabError
from mxlab.steps import step_config

from _method_helpers import outlier_inputs


def _case(seed: int = 0):
    x = outlier_inputs(1024, 128, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    weights = [torch.randn(o, 128, generator=g) * 0.05 for o in (96, 32, 32)]   # q, k, v shaped
    return x, weights


@pytest.mark.parametrize("wfmt, afmt, row_local", [("mxint4", "mxint8", True), ("mxfp4", "mxfp8_e4m3", True),
                                                    ("int4", "int8", True), ("nvfp4", "mxint8", False)])
@pytest.mark.parametrize("grid_batch", [3, 20])
def test_batched_grid_equals_loop_bit_for_bit(wfmt, afmt, row_local, grid_batch):
    x, weights = _case()
    wkw = dict(block_size=16, rounding="even") if wfmt == "nvfp4" else dict(block_size=32)  # NVIDIA's NVFP4
    wq = [lambda w: quantize(w, wfmt, **wkw)] * 3
    aq = [lambda a: quantize(a, afmt, 32)] * 3
    s1, a1, l1 = awq.search_scale(x, weights, wq, aq, n_grid=20)
    s2, a2, l2 = awq.search_scale(x, weights, wq, aq, n_grid=20, grid_batch=grid_batch, row_local=row_local)
    assert a1 == a2 and torch.equal(s1, s2) and len(set(l1)) == 20
    assert l1 == l2                                   # every loss, exactly: same values, same reductions


def test_batched_grid_respects_the_memory_bound(monkeypatch):
    """With room for one grid point per batch it falls back to the loop's arithmetic, same answer."""
    x, weights = _case(3)
    wq, aq = [lambda w: quantize(w, "mxint4", 32)] * 3, [lambda a: quantize(a, "mxint8", 32)] * 3
    ref = awq.search_scale(x, weights, wq, aq, n_grid=10)
    monkeypatch.setattr(awq, "GRID_BATCH_BYTES", 1)
    got = awq.search_scale(x, weights, wq, aq, n_grid=10, grid_batch=10, row_local=True)
    assert got[1] == ref[1] and torch.equal(got[0], ref[0]) and got[2] == ref[2]


def test_grid_batch_validated():
    assert step_config({"name": "awq", "grid_batch": 8}).grid_batch == 8
    for bad in (0, 65, 2.0, True):
        with pytest.raises(MxlabError, match="grid_batch"):
            step_config({"name": "awq", "grid_batch": bad})


@pytest.mark.parametrize("fmt", ["mxint4", "int4"])
def test_pipeline_same_model_with_batched_grid(fmt):
    """Through quantize_model (AWQ with clipping, then GPTQ): identical weights and logits, grid_batch recorded."""
    tokens = torch.randint(0, 512, (6, 64), generator=torch.Generator().manual_seed(0))
    states, logits = [], []
    for gb in (1, 7):
        model = make_tiny_model("llama")
        recipe = Recipe(weights=fmt, acts="mxint8", block_size=32, steps=[{"name": "awq", "grid_batch": gb}, "gptq"])
        result = quantize_model(model, None, recipe, device="cpu", calib_tokens=tokens)
        # module-scored groups (q/k/v -> attention, gate/up -> MLP) run their module once per alpha: 1
        used = {m.module.rsplit(".", 2)[-2] + "." + m.module.rsplit(".", 1)[-1]: m.details["grid_batch"]
                for r in result.records if r.step == "awq" for m in r.modules if "alpha" in m.details}
        assert used["mlp.down_proj"] == gb                        # scored on its own output: batched
        assert used["self_attn.q_proj"] == used["mlp.gate_proj"] == 1
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        with torch.no_grad():
            logits.append(model(tokens[:2]).logits)
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert torch.equal(logits[0], logits[1])


def test_mean_and_sample_is_mean_abs_and_inputs():
    """The one-pass capture returns exactly what the two separate passes did."""
    from mxlab.ptq.pipeline import _wrap
    from mxlab.ptq.plan import block_targets
    from mxlab.ptq.context import BlockContext
    from mxlab.ptq.capture import catch_block_inputs
    from mxlab.architectures import architecture_map, decoder_blocks

    model = make_tiny_model("llama")
    tokens = torch.randint(0, 512, (6, 64), generator=torch.Generator().manual_seed(1))
    recipe = Recipe(weights="mxint4", acts="mxint8", steps=["awq"])
    path, blocks = decoder_blocks(model)
    with torch.no_grad():
        hidden, calls = catch_block_inputs(model, blocks, path, tokens, torch.device("cpu"), 2, torch.device("cpu"))
        linears = _wrap(blocks[0], block_targets(blocks[0], f"{path}.0", 0, recipe))
        ctx = BlockContext(0, f"{path}.0", blocks[0], torch.device("cpu"), linears,
                           architecture_map(model).groups, hidden, calls[0])
        for name in ("self_attn.q_proj", "mlp.gate_proj"):
            m, xs = awq.mean_and_sample(ctx, name, 100)
            assert torch.equal(m, awq.mean_abs(ctx.input_batches(name)))
            assert torch.equal(xs, ctx.inputs(name, max_tokens=100)) and xs.shape == (100, 64)
        # one module's inputs: the block stops there (the MLP after it never runs), same values as a full pass
        ran = []
        handle = blocks[0].mlp.down_proj.register_forward_pre_hook(lambda *a: ran.append(1))
        try:
            alone = ctx.collect(["self_attn.q_proj"])["self_attn.q_proj"]
            assert ran == []
            both = ctx.collect(["self_attn.q_proj", "mlp.down_proj"])
            assert len(ran) == len(hidden) and torch.equal(both["self_attn.q_proj"], alone)
        finally:
            handle.remove()
