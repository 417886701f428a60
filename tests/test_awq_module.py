"""AWQ scored on the group's module (llm-awq's module2inspect) against an independent re-implementation
of llm-awq's ``auto_scale._search_module_scale`` on a toy block."""
from __future__ import annotations

import copy

import pytest
import torch

from mxlab.architectures import architecture_map
from mxlab.errors import MxlabError
from mxlab.formats import quantize
from mxlab.ptq.pipeline import quantize_model
from mxlab.recipe import Recipe
from mxlab.steps import step_config

from conftest import make_tiny_model

GROUPS = {  # group -> (module llm-awq inspects, its linears), block 0 of a Llama
    "q": ("self_attn", ["q_proj", "k_proj", "v_proj"]),
    "gate": ("mlp", ["gate_proj", "up_proj"]),
}


def llm_awq_search(module, args, kwargs, x, linears, wq, n_grid=20):
    """llm-awq's search, written from its definition: for ratio in [0, 1) on a grid, s = x_mean^ratio
    (clamped at 1e-4, divided by sqrt(max s * min s)); each linear's weight becomes wq(W * s) / s; the
    module runs on its unchanged inputs; loss = MSE of its output against the FP output."""
    module = copy.deepcopy(module)
    with torch.no_grad():
        org_out = module(*args, **kwargs)
        org_out = org_out[0] if isinstance(org_out, tuple) else org_out
        x_mean = x.abs().reshape(-1, x.shape[-1]).mean(0)
        saved = {n: getattr(module, n).weight.data.clone() for n in linears}
        losses = []
        for r in range(n_grid):
            ratio = r / n_grid
            scales = x_mean.pow(ratio).clamp(min=1e-4).view(-1)
            scales = scales / (scales.max() * scales.min()).sqrt()
            for n in linears:
                fc = getattr(module, n)
                fc.weight.data = wq(saved[n] * scales.view(1, -1)) / scales.view(1, -1)
            out = module(*args, **kwargs)
            out = out[0] if isinstance(out, tuple) else out
            losses.append((org_out - out).float().pow(2).mean().item())
            for n in linears:
                getattr(module, n).weight.data = saved[n].clone()
    best = min(range(n_grid), key=lambda i: losses[i])
    return best / n_grid, losses


def _toy():
    """A tiny Llama whose block-0 norms make 3 channels 12x larger (the outliers AWQ protects)."""
    model = make_tiny_model("llama", seed=4)
    with torch.no_grad():
        for norm in (model.model.layers[0].input_layernorm, model.model.layers[0].post_attention_layernorm):
            norm.weight[[3, 17, 40]] *= 12.0
    tokens = torch.randint(0, 512, (4, 32), generator=torch.Generator().manual_seed(5))
    return model, tokens


def _captured(model, tokens, module_name):
    """(args, kwargs) of block 0's ``module_name`` in one FP forward over every calibration sequence."""
    got = {}

    def hook(_m, args, kwargs):
        got["call"] = (args, dict(kwargs))

    module = model.model.layers[0].get_submodule(module_name)
    h = module.register_forward_pre_hook(hook, with_kwargs=True)
    with torch.no_grad():
        model(tokens, use_cache=False)
    h.remove()
    return module, got["call"]


def test_module_score_reproduces_llm_awq_choice():
    model, tokens = _toy()
    ref = {}
    wq = lambda w: quantize(w, "mxint4", 32)  # noqa: E731  the target format, as llm-awq's w_quantize_func
    for key, (mod_name, linears) in GROUPS.items():
        module, (args, kwargs) = _captured(model, tokens, mod_name)
        x = args[0] if args else kwargs["hidden_states"]
        ref[key] = llm_awq_search(module, args, kwargs, x, linears, wq)
    recipe = Recipe(weights="mxint4", acts="none", block_size=32, steps=[{"name": "awq", "clip": False}])
    # the whole calibration set in one batch, as the reference runs it
    result = quantize_model(copy.deepcopy(model), None, recipe, device="cpu", calib_tokens=tokens)
    got = {m.module: m.details for r in result.records if r.step == "awq" for m in r.modules}
    for key, (mod_name, _) in GROUPS.items():
        d = got[f"model.layers.0.{mod_name}.{'q_proj' if key == 'q' else 'gate_proj'}"]
        alpha, losses = ref[key]
        assert d["score"] == f"module {mod_name}"
        assert d["alpha"] == alpha, (key, d["alpha"], alpha, losses)
        assert d["search_loss_best"] == pytest.approx(min(losses), rel=1e-3)
        assert d["search_loss_plain"] == pytest.approx(losses[0], rel=1e-3)
    # the reference's choice is not the trivial one here: the search does something to agree on
    assert {ref[k][0] for k in ref} != {0.0}, {k: ref[k][0] for k in ref}


def test_linears_score_is_the_summed_linear_error_and_can_differ():
    """score: linears keeps the former search (summed output MSE of the group's linears)."""
    model, tokens = _toy()
    details = {}
    for score in ("module", "linears"):
        recipe = Recipe(weights="mxint4", acts="none", block_size=32,
                        steps=[{"name": "awq", "clip": False, "score": score}])
        result = quantize_model(copy.deepcopy(model), None, recipe, device="cpu", calib_tokens=tokens)
        details[score] = {m.module: m.details for r in result.records if r.step == "awq" for m in r.modules}
    q = "model.layers.0.self_attn.q_proj"
    assert details["linears"][q]["score"] == "linears"
    # a one-linear group (up -> down) is scored on its own output in both modes: the same alpha
    o = "model.layers.0.mlp.down_proj"
    assert details["module"][o]["score"] == "linears" and details["module"][o]["alpha"] == details["linears"][o]["alpha"]


def test_architecture_map_names_the_modules_as_data():
    amap = architecture_map(make_tiny_model("llama"))
    assert {g.prev: g.module for g in amap.groups} == {   # (v -> o is skipped: GQA)
        "input_layernorm": "self_attn", "post_attention_layernorm": "mlp", "mlp.up_proj": None}
    opt = architecture_map(make_tiny_model("opt"))
    assert {g.prev: g.module for g in opt.groups}["self_attn_layer_norm"] == "self_attn"


def test_score_validated():
    assert step_config({"name": "awq"}).score == "module"
    with pytest.raises(MxlabError, match="module, linears"):
        step_config({"name": "awq", "score": "block"})
