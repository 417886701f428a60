"""Sensitivity per module x format, constraints, recipes and exact bits, on a tiny llama."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import make_tiny_model
from mxlab.errors import Cancelled, MxlabError
from mxlab.formats import quantize
from mxlab.mix import Constraints, build_frontier, clear_cache, format_sensitivity
from mxlab.ptq.plan import plan
from mxlab.recipe import Recipe

WINDOWS = torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(0))
BASE = Recipe(weights="mxint4", acts="mxint8", block_size=32)


@pytest.fixture
def model():
    clear_cache()
    return make_tiny_model("llama")


def test_kl_and_bits_match_independent_references(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    s = format_sensitivity(model, BASE, ["mxint4", "mxint8"], WINDOWS)
    assert len(s.modules) == 14 and s.formats == ["mxint4", "mxint8"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k               # every weight restored bit for bit
    # KL of down_proj of block 1 in mxint4, by hand with torch's kl_div
    name = "model.layers.1.mlp.down_proj"
    lin = model.get_submodule(name)
    with torch.no_grad():
        ref = F.log_softmax(model(input_ids=WINDOWS).logits[:, :-1], -1)
        saved = lin.weight.data.clone()
        lin.weight.data = quantize(saved, "mxint4", block_size=32)
        q = F.log_softmax(model(input_ids=WINDOWS).logits[:, :-1], -1)
        lin.weight.data = saved
    expected = F.kl_div(q, ref, log_target=True, reduction="batchmean").item() / 31
    assert s.kl[name]["mxint4"] == pytest.approx(expected, rel=1e-5)
    assert 0 <= s.kl[name]["mxint8"] < s.kl[name]["mxint4"] / 100
    # storage: down_proj is 64 x 128: 4-bit codes + one 8-bit scale per 32 weights
    assert s.bits[name] == {"mxint4": 64 * 128 * 4 + 64 * 4 * 8, "mxint8": 64 * 128 * 8 + 64 * 4 * 8}
    assert s.offset > 0  # activations in mxint8 move the model a little


def test_probe_uses_the_recipes_scale_rule(model):
    """A recipe with scale_rule 'even' is probed with 'even' weights (and a different KL than 'floor')."""
    name = "model.layers.0.self_attn.o_proj"
    lin = model.get_submodule(name)
    even = Recipe(weights="mxfp4_e2m1", acts="none", block_size=32, scale_rule="even")
    s_even = format_sensitivity(model, even, ["mxfp4_e2m1"], WINDOWS)
    s_floor = format_sensitivity(model, Recipe(weights="mxfp4_e2m1", acts="none", block_size=32), ["mxfp4_e2m1"],
                                 WINDOWS)
    with torch.no_grad():
        ref = F.log_softmax(model(input_ids=WINDOWS).logits[:, :-1], -1)
        saved = lin.weight.data.clone()
        lin.weight.data = quantize(saved, "mxfp4_e2m1", block_size=32, scale_rule="even")
        q = F.log_softmax(model(input_ids=WINDOWS).logits[:, :-1], -1)
        lin.weight.data = saved
    expected = F.kl_div(q, ref, log_target=True, reduction="batchmean").item() / 31
    assert s_even.kl[name]["mxfp4_e2m1"] == pytest.approx(expected, rel=1e-5)
    assert s_even.kl[name]["mxfp4_e2m1"] != pytest.approx(s_floor.kl[name]["mxfp4_e2m1"], rel=1e-3)


def test_cache_key_covers_every_weight(model):
    s1 = format_sensitivity(model, BASE, ["mxint4", "mxint8"], WINDOWS)
    s2 = format_sensitivity(model, BASE, ["mxint4", "mxint8"], WINDOWS)
    assert s2.key == s1.key and s2.kl == s1.kl
    with torch.no_grad():          # one element of the last block's down_proj: a different model
        model.model.layers[1].mlp.down_proj.weight[0, 0] += 1e-3
    s3 = format_sensitivity(model, BASE, ["mxint4", "mxint8"], WINDOWS)
    assert s3.key != s1.key
    assert s3.kl["model.layers.1.mlp.down_proj"] != s1.kl["model.layers.1.mlp.down_proj"]


def test_disk_cache_and_cancel(model, tmp_path):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []

    def stop(fraction, message):
        calls.append(message)
        if len(calls) == 5:
            raise Cancelled("stop")

    with pytest.raises(Cancelled):
        format_sensitivity(model, BASE, ["mxint4"], WINDOWS, cache_dir=tmp_path, progress=stop)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert list(tmp_path.iterdir()) == []                 # nothing half-written
    s = format_sensitivity(model, BASE, ["mxint4"], WINDOWS, cache_dir=tmp_path)
    clear_cache()
    again = format_sensitivity(model, BASE, ["mxint4"], WINDOWS, cache_dir=tmp_path, progress=stop)
    assert again.kl == s.kl and len(list(tmp_path.iterdir())) == 1


def test_bad_input_is_refused(model):
    with pytest.raises(MxlabError, match="candidate"):
        format_sensitivity(model, BASE, ["mxint5"], WINDOWS)
    with pytest.raises(MxlabError, match="'none' cannot"):
        format_sensitivity(model, BASE, ["none"], WINDOWS)
    with pytest.raises(MxlabError, match="windows"):
        format_sensitivity(model, BASE, ["mxint4"], torch.zeros(100, 8, dtype=torch.long))
    with pytest.raises(MxlabError, match="use method='rtn'"):
        format_sensitivity(model, Recipe(steps="awq"), ["mxint4"], WINDOWS, method="recipe")


def test_recipe_method_probes_gptq_weights(model):
    calib = torch.randint(0, 512, (4, 32), generator=torch.Generator().manual_seed(1))
    r = Recipe(weights="mxint4", acts="none", steps="gptq")
    rtn = format_sensitivity(model, r, ["mxint4"], WINDOWS)
    gptq = format_sensitivity(model, r, ["mxint4"], WINDOWS, method="recipe", calib_tokens=calib)
    assert gptq.key != rtn.key and gptq.bits == rtn.bits
    # GPTQ changes the weights, so the probed KL differs in (almost) every module
    assert sum(gptq.kl[m]["mxint4"] != rtn.kl[m]["mxint4"] for m in rtn.kl) >= 10


def test_constraints_and_recipe_implement_the_point(model):
    s = format_sensitivity(model, BASE, ["mxint4", "mxfp6_e2m3", "mxint8"], WINDOWS)
    c = Constraints(min_bits={"*.down_proj": 8}, groups=["qkv"])
    fr = build_frontier(s, BASE, c)
    assert len(fr.units) == 2 * (1 + 4)                    # per block: qkv, o, gate, up, down
    for p in fr.points:
        a = fr.assignment(p)
        for b in range(2):
            pre = f"model.layers.{b}."
            assert len({a[pre + f"self_attn.{x}_proj"] for x in "qkv"}) == 1
            assert a[pre + "mlp.down_proj"] == "mxint8"
    p = fr.at_budget(6.0)
    assert fr.bits_per_weight(p.bits) <= 6.0
    recipe = fr.recipe(p)
    got = {t.name: t.spec.weights for t in plan(model, recipe)}
    assert got == fr.assignment(p) and all(t.spec.acts == "mxint8" for t in plan(model, recipe))
    # the whole frontier: bits up, predicted KL down; every point no worse than any uniform format that fits
    bits = [q.bits for q in fr.points]
    kls = [q.loss for q in fr.points]
    assert bits == sorted(bits) and kls == sorted(kls, reverse=True)
    per_block = build_frontier(s, BASE, Constraints(per_block=True))
    assert len(per_block.units) == 2 and all(len(set(per_block.assignment(q).values())) <= 2 for q in per_block.points)
    with pytest.raises(MxlabError, match="no candidate format has enough bits"):
        build_frontier(s, BASE, Constraints(min_bits={"*": 16}))
    with pytest.raises(MxlabError, match="budget"):
        fr.at_budget(0)
