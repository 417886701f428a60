"""The layer-by-layer pipeline on tiny models: what gets quantized, records, one block at a time."""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn as nn

from conftest import make_tiny_model
from mxlab.errors import Cancelled, MxlabError
from mxlab.formats import quantize
from mxlab.progress import eta_text, pulse
from mxlab.ptq import pipeline
from mxlab.ptq.pipeline import quantize_model
from mxlab.ptq.qlinear import QuantLinear
from mxlab.recipe import Recipe
from mxlab.steps import AWQConfig, GPTQConfig


def _logits(model, tokens):
    with torch.no_grad():
        return model(tokens).logits


def test_rtn_w8a8_quantizes_every_decoder_linear(random_tokens):
    model = make_tiny_model("llama")
    ref = _logits(model, random_tokens)
    result = quantize_model(model, None, Recipe(weights="mxint8", acts="mxint8", steps=["rtn"]),
                            calib_tokens=random_tokens, device="cpu")
    qlins = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    assert len(qlins) == 2 * 7 and all(n.startswith("model.layers.") for n in qlins)
    assert type(model.lm_head) is nn.Linear
    for q in qlins.values():
        assert q.weight_quantized and q.weight_fp is None          # fp copies released
        assert torch.equal(quantize(q.weight.data, "mxint8", 32), q.weight.data)   # on the grid
    assert [(r.step, r.block, len(r.modules)) for r in result.records] == [("rtn", 0, 7), ("rtn", 1, 7)]
    for m in result.records[0].modules:
        assert m.sqnr_after > 30 and m.mse_after > 0 and m.module.startswith("model.layers.0.")
    out = _logits(model, random_tokens)
    assert float((out - ref).abs().max() / ref.abs().max()) < 0.05
    assert len(result.stats["weights"]) == 14 and len(result.stats["activations"]) == 14
    for s in result.stats["activations"]:     # the shared exponents of every MX activation block (mxint8, 32)
        assert s["format"] == "mxint8" and s["n_blocks"] == s["n_tokens"] * s["in_features"] // 32
        assert sum(s["exp_counts"]) == s["n_blocks"]


def test_smoothquant_then_rtn_records_and_recaptured_inputs(random_tokens):
    model = make_tiny_model("qwen2")
    with torch.no_grad():                      # plant outlier input channels (a column of the embeddings)
        model.model.embed_tokens.weight[:, 5] *= 40
    recipe = Recipe(weights="mxint8", acts="mxint8", block_size=16, steps=["smoothquant"])
    result = quantize_model(model, None, recipe, calib_tokens=random_tokens, device="cpu")
    steps = [(r.step, r.block) for r in result.records]
    assert steps == [("smoothquant", 0), ("rtn", 0), ("smoothquant", 1), ("rtn", 1)]
    sq = result.records[0]
    q = next(m for m in sq.modules if m.module == "model.layers.0.self_attn.q_proj")
    assert q.details["alpha"] == 0.5 and q.details["scale_max"] > 1
    assert q.sqnr_after > q.sqnr_before                       # smoothing helps the outlier channel
    acts = {(a["module"], a["stage"]): a for a in result.stats["activations"]}
    before = max(acts[("model.layers.0.self_attn.q_proj", "fp")]["absmax"])
    after = max(acts[("model.layers.0.self_attn.q_proj", "smoothquant")]["absmax"])
    assert after < before / 2                                 # stats saw the re-captured, smoothed inputs
    final = result.records[1]
    assert all(m.details.get("final") for m in final.modules) and len(final.modules) == 7


def test_overrides_targets_and_errors(random_tokens):
    model = make_tiny_model("llama")
    recipe = Recipe(weights="mxint4", acts="mxint8", targets="decoder+lm_head",
                    overrides=[{"pattern": "model.layers.0.mlp.*", "skip": True},
                               {"pattern": "*.down_proj", "weights": "mxint8"}])
    quantize_model(model, None, recipe, calib_tokens=random_tokens, device="cpu")
    assert type(model.model.layers[0].mlp.up_proj) is nn.Linear
    assert model.model.layers[1].mlp.down_proj.spec.weights == "mxint8"
    assert isinstance(model.lm_head, QuantLinear) and model.lm_head.weight_quantized
    with pytest.raises(MxlabError, match="already quantized"):
        quantize_model(model, None, recipe, calib_tokens=random_tokens, device="cpu")
    with pytest.raises(MxlabError, match="calib_tokens"):
        quantize_model(make_tiny_model("llama"), None, recipe, calib_tokens=torch.rand(2, 8), device="cpu")


def test_unknown_architecture_rtn_works_scaling_skips(random_tokens):
    model = make_tiny_model("mistral")
    model.config.model_type = "mystery"
    result = quantize_model(model, None, Recipe(weights="mxint8", acts="mxint8", steps=["smoothquant"]),
                            calib_tokens=random_tokens, device="cpu")
    assert "no architecture map" in result.notes[0]
    assert result.records[0].step == "smoothquant" and result.records[0].notes
    assert sum(isinstance(m, QuantLinear) for m in model.modules()) == 14


def test_allow_requantize_runs_the_reversed_order(random_tokens):
    with pytest.raises(MxlabError, match="already quantized"):
        Recipe(steps=["rtn", "smoothquant"])
    recipe = Recipe(weights="mxint4", acts="mxint8", steps=["rtn", "smoothquant"], allow_requantize=True)
    assert any("degrades" in w for w in recipe.warnings)
    assert Recipe.from_yaml(recipe.to_yaml()).allow_requantize
    model = make_tiny_model("llama")
    result = quantize_model(model, None, recipe, calib_tokens=random_tokens, device="cpu")
    assert [r.step for r in result.records[:3]] == ["rtn", "smoothquant", "rtn"]     # rescaled, then re-quantized
    for q in (m for m in model.modules() if isinstance(m, QuantLinear)):
        assert q.weight_quantized and torch.equal(quantize(q.weight.data, "mxint4", 32), q.weight.data)


@pytest.mark.slow
def test_embedded_model_w8a8_rtn_within_one_percent():
    from mxlab.data import calibration_batches, evaluation_tokens
    from mxlab.evaluate import perplexity
    from mxlab.models import load_model

    model, tok = load_model()
    tokens = evaluation_tokens(tok, "tinystories")[:16384]
    ppl_fp = perplexity(model, tokens)
    calib = calibration_batches(tok, "tinystories", 32, 256, 0)
    quantize_model(model, tok, Recipe(weights="mxint8", acts="mxint8", steps=["rtn"]), calib_tokens=calib, device="cpu")
    ppl_q = perplexity(model, tokens)
    assert ppl_fp < ppl_q < 1.01 * ppl_fp          # measured: 3.7601 -> 3.7679 (+0.2%) on the full eval text


def test_nan_weights_stop_with_a_clear_error(random_tokens):
    model = make_tiny_model("llama")
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[3, 5] = float("nan")
    with pytest.raises(MxlabError, match=r"model\.layers\.1\.mlp\.up_proj\.weight has 1 NaN"):
        quantize_model(model, None, Recipe(weights="mxint4", acts="none", steps=["rtn"]), calib_tokens=random_tokens)


def test_awq_records_count_the_clipping_error(random_tokens, monkeypatch):
    """Error records compare with the FP function: AWQ's clipping is part of the error, not of the reference."""
    import torch.nn.functional as F

    import mxlab.ptq.methods.awq as awq

    pre_clip = {}                      # weight storage -> the (scaled, exact) FP weight before clipping
    real_clip = awq.apply_clip

    def spy(W, max_val, group):
        pre_clip[W.data_ptr()] = W.clone()
        return real_clip(W, max_val, group)
    monkeypatch.setattr(awq, "apply_clip", spy)
    model = make_tiny_model("llama")
    result = quantize_model(model, None, Recipe(weights="mxint3", acts="mxint8", steps=["awq"]),
                            calib_tokens=random_tokens, device="cpu")
    block = model.model.layers[0]
    xs = {}
    hooks = [m.register_forward_pre_hook(lambda mod, a, n=n: xs.setdefault(n, []).append(a[0].flatten(0, -2)))
             for n, m in block.named_modules() if isinstance(m, QuantLinear)]
    _logits(model, random_tokens)
    for h in hooks:
        h.remove()
    final = next(r for r in result.records if r.block == 0 and r.step == "rtn")
    for rec in final.modules:
        name = rec.module[len("model.layers.0."):]
        m, x = block.get_submodule(name), torch.cat(xs[name])
        with torch.no_grad():
            true = float((F.linear(m.quantize_input(x), m.weight) - F.linear(x, pre_clip[m.weight.data_ptr()]))
                         .pow(2).mean())
        assert rec.mse_after == pytest.approx(true, rel=1e-4), name


@pytest.mark.parametrize("weights,head_override,stays_tied", [
    ("mxint4", None, True),        # one MX spec for both: quantizing the shared tensor twice is harmless
    ("int4", None, False),         # per-row int scales move when re-quantized: each gets its own copy
    ("mxint4", "mxint8", False),   # different formats cannot share one tensor
])
def test_tied_embeddings_get_exactly_their_own_format(embedded, weights, head_override, stays_tied):
    import copy

    model, tok = copy.deepcopy(embedded[0]), embedded[1]
    w0 = model.get_input_embeddings().weight.detach().clone()
    overrides = [{"pattern": "lm_head", "weights": head_override}] if head_override else []
    recipe = Recipe(weights=weights, acts="none", targets="decoder+lm_head+embeddings", overrides=overrides)
    result = quantize_model(model, tok, recipe, calib_tokens=torch.randint(0, 512, (2, 32)))
    emb, head = result.model.get_input_embeddings().weight, result.model.lm_head.weight
    assert (emb.data_ptr() == head.data_ptr()) == stays_tied   # one storage while tied
    assert torch.equal(emb, quantize(w0, weights, 32))
    assert torch.equal(head, quantize(w0, head_override or weights, 32))


# ---------------------------------------------------------------------------- progress inside a step
def _step_reports(seen: list, prefix: str) -> list[tuple[float, str]]:
    """The reports from inside one step (messages '<prefix> 40%...', not the step's start tick)."""
    return [(f, msg) for f, msg in seen if msg.startswith(prefix + " ")]


@pytest.mark.parametrize("step", [AWQConfig(n_grid=10, clip_grid=10), GPTQConfig()], ids=["awq", "gptq"])
def test_long_steps_report_how_far_they_are(random_tokens, monkeypatch, step):
    monkeypatch.setattr(pipeline, "PULSE_EVERY", 0.0)            # every iteration reports (default: 0.2 s)
    seen = []
    quantize_model(make_tiny_model("llama"), None, Recipe(steps=[step]), calib_tokens=random_tokens,
                   device="cpu", progress=lambda f, msg: seen.append((f, msg)))
    # 2 blocks x 3 stages (diagnostics, the step, outputs): block 1's step owns [1/6, 1/3] of the bar
    reports = _step_reports(seen, f"block 1/2: {step.name}")
    inside = [f for f, _ in reports]
    assert len(inside) >= 15                                     # awq: 4 groups x 10 alphas + clipping; gptq: 7 linears
    assert all(a < b for a, b in zip(inside, inside[1:]))        # strictly increasing within the step
    assert inside[0] == pytest.approx(1 / 6) and 1 / 6 + 0.8 / 6 < inside[-1] < 1 / 3
    assert all(re.fullmatch(rf"block 1/2: {step.name} \d+%( · ~\d+ s left)?", msg) for _, msg in reports)


def test_cancel_from_the_callback_stops_inside_the_awq_step(random_tokens, monkeypatch):
    monkeypatch.setattr(pipeline, "PULSE_EVERY", 0.0)
    seen = []

    def progress(fraction, message):
        seen.append(message)
        if message.startswith("block 2/2: awq ") and fraction >= 0.75:   # block 2 awq owns [2/3, 5/6]: half-way
            raise Cancelled("stop")

    with pytest.raises(Cancelled) as info:
        quantize_model(make_tiny_model("llama"), None, Recipe(steps=[AWQConfig(n_grid=10, clip_grid=10)]),
                       calib_tokens=random_tokens, device="cpu", progress=progress)
    frames = {entry.name for entry in info.traceback}
    assert frames & {"search_scale", "search_clip"}              # raised from inside a search loop
    assert seen[-1].startswith("block 2/2: awq ") and not any("outputs" in m for m in seen[-5:])


def test_eta_extrapolates_the_rate_so_far():
    assert eta_text(0.25, 1.0, 10.0) == " · ~30 s left" and eta_text(0.5, 1.0, 300.0) == " · ~5 min left"
    assert eta_text(0.1, 0.5, 10.0) == " · ~40 s left"                  # 0.1 of 0.5 in 10 s: 0.4 more in 40 s
    assert eta_text(0.01, 1.0, 10.0) == "" and eta_text(0.5, 1.0, 0.2) == ""   # too early to tell
    seen, clock = [], iter([100.0, 105.0, 110.0])                # pulse made at t=100, reports at 105 and 110
    beat = pulse(lambda f, m: seen.append((f, m)), 0.5, "awq", every=0.0, stop=0.75,
                 since=(95.0, 0.25), clock=lambda: next(clock))
    beat(0.5), beat(1.0)
    # 0.625 reached 10 s after 0.25: 0.375 more takes 10 s; then 0.75 after 15 s: 0.25 more takes 7.5 s
    assert seen == [(0.625, "awq 50% · ~10 s left"), (0.75, "awq 100% · ~8 s left")]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_diagnostics_on_tensor_cores_match_float32_for_bf16_models(random_tokens, monkeypatch):
    """bf16 operands are exact in TF32: the error records move only by float32 summation order."""
    from mxlab.ptq import diagnostics

    def records(exact_dtypes):
        monkeypatch.setattr(diagnostics, "TF32_EXACT", exact_dtypes)
        model = make_tiny_model("llama").to(torch.bfloat16)
        result = quantize_model(model, None, Recipe(weights="mxint4", acts="mxint8", steps=["rtn"]),
                                device=torch.device("cuda"), calib_tokens=random_tokens)
        return [(m.module, m.sqnr_after) for r in result.records for m in r.modules]

    tf32, fp32 = records((torch.bfloat16, torch.float16)), records(())
    assert [n for n, _ in tf32] == [n for n, _ in fp32] and len(tf32) == 14
    assert max(abs(a - b) for (_, a), (_, b) in zip(tf32, fp32)) < 1e-3   # dB
