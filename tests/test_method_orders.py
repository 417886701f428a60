"""AWQ/GPTQ composed with SmoothQuant and RTN through quantize_model, in every order the recipe allows."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from conftest import make_tiny_model
from mxlab.errors import MxlabError
from mxlab.formats import quantize
from mxlab.ptq.methods import awq
from mxlab.ptq.pipeline import quantize_model
from mxlab.ptq.qlinear import QuantLinear
from mxlab.recipe import Recipe

ORDERS = [["rtn"], ["gptq"], ["awq"], ["smoothquant"], ["awq", "gptq"], ["smoothquant", "gptq"],
          ["smoothquant", "awq", "gptq"], ["awq", "smoothquant", "gptq"]]


@pytest.fixture(scope="module")
def tokens():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 512, (8, 64), generator=g)


def _run(steps, tokens, weights="mxint4", acts="mxint8", arch="llama"):
    model = make_tiny_model(arch)
    recipe = Recipe(weights=weights, acts=acts, block_size=32, steps=steps)
    return model, quantize_model(model, None, recipe, device="cpu", calib_tokens=tokens)


def _final_errors(result) -> dict[str, float]:
    """module -> output MSE after the last step that touched it (what the quantized model gets)."""
    out = {}
    for rec in result.records:
        for m in rec.modules:
            if rec.block >= 0 and not math.isnan(m.mse_after):
                out[m.module] = m.mse_after
    return out


@pytest.fixture(scope="module")
def runs(tokens):
    return {"+".join(steps): _run(steps, tokens) for steps in ORDERS}


@pytest.mark.slow  # the shared fixture runs quantize_model 8 times (~20 s on 2 busy cores)
@pytest.mark.parametrize("steps", ["+".join(o) for o in ORDERS])
def test_every_order_quantizes_everything_and_records_errors(runs, steps):
    model, result = runs[steps]
    linears = [m for m in model.modules() if isinstance(m, QuantLinear)]
    assert len(linears) == 14
    for m in linears:                                       # every weight on the MXINT4 grid
        assert m.weight_quantized and torch.equal(quantize(m.weight.data, "mxint4", 32), m.weight.data)
    names = [r.step for r in result.records if r.block == 0]
    assert names[:len(steps.split("+"))] == steps.split("+")
    for rec in result.records:
        for m in rec.modules:
            assert m.module.startswith("model.layers.") and m.mse_after >= 0 and m.mse_before >= 0, m
    assert len(_final_errors(result)) == 14


@pytest.mark.slow
def test_errors_follow_the_study(runs):
    """Summed final output MSE over the 14 linears: GPTQ < RTN, AWQ < RTN, AWQ+GPTQ < GPTQ."""
    total = {k: sum(_final_errors(r).values()) for k, (_, r) in runs.items()}
    # measured (mxint4/mxint8, tiny llama, 8 x 64 random tokens): rtn 4.16e-3, gptq 3.86e-3, awq 3.11e-3,
    # smoothquant 3.88e-3, awq+gptq 2.99e-3, sq+gptq 3.62e-3, sq+awq+gptq 3.12e-3, awq+sq+gptq 3.43e-3
    assert total["gptq"] < total["rtn"], total
    assert total["awq"] < total["rtn"], total
    assert total["awq+gptq"] < total["gptq"], total
    assert total["smoothquant+gptq"] < total["smoothquant"], total


@pytest.mark.slow
def test_gptq_record_details(runs):
    _, result = runs["awq+gptq"]
    rec = next(r for r in result.records if r.step == "gptq" and r.block == 1)
    for m in rec.modules:
        d = m.details
        assert d["proxy_mse_gptq"] < d["proxy_mse_rtn"] and d["damp"] > 0 and d["microblock"] == 32, d
    awq_rec = next(r for r in result.records if r.step == "awq" and r.block == 1)
    alphas = {m.details.get("alpha") for m in awq_rec.modules}
    assert len(awq_rec.modules) == 7 and all(0 <= a < 1 for a in alphas if a is not None)


def test_int4_gptq_packs_exactly(tokens):
    model, result = _run(["gptq"], tokens, weights="int4", acts="int8")
    for m in model.modules():
        if isinstance(m, QuantLinear):
            assert torch.equal(m.packed().dequantize().to(m.weight.dtype), m.weight.data)


@pytest.mark.parametrize("steps", [["gptq", "awq"], ["rtn", "gptq"], ["gptq", "smoothquant"]])
def test_reversed_orders_are_refused(steps):
    with pytest.raises(MxlabError, match="already quantized"):
        Recipe(weights="mxint4", steps=steps)


def test_awq_without_architecture_map_is_skipped_with_a_note():
    ctx = SimpleNamespace(block=torch.nn.Module(), groups=[], index=0, prefix="model.layers.0", linears={})
    record = awq.apply(ctx, awq_config())
    assert record.modules == [] and "awq skipped" in record.notes[0]


def awq_config():
    from mxlab.steps import AWQConfig
    return AWQConfig()
