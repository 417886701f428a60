"""mxlab/lab/views.py: what the app shows. The model summary lists exactly what the pipeline quantizes."""
from __future__ import annotations

import copy
import re

import pytest
import torch

from mxlab.formats import quantize
from mxlab.lab import session, views
from mxlab.ptq.pipeline import quantize_model
from mxlab.ptq.qlinear import QuantLinear
from mxlab.recipe import Recipe

from conftest import make_tiny_model


def test_runs_rows_and_metrics_text(tmp_path):
    from test_lab_session import make_run

    state = session.SessionState(tmp_path)
    make_run(tmp_path, "r1", name="n", ppl_fp=12.3456789, ppl_quant=13.987654, kl=0.0123456, top1=0.91,
             bits_per_weight=4.2571)
    rows = views.runs_rows(state)
    assert len(rows[0]) == len(views.RUN_COLUMNS)
    assert rows[0][:11] == ["r1", "n", "stories260K", "W-mxint4 A-mxint8 b32 awq+gptq", "tinystories x2", 4.257,
                            12.35, 13.99, 13.3, 0.01235, 0.91]
    text = views.metrics_markdown(state.get("r1"))
    assert "12.35" in text and "13.99" in text and "KL" in text and "4.257 bits per weight" in text
    assert "quantized in 1.5 s" in text and "evaluated" not in text   # results.json 'seconds': quantization only


def test_small_formatters():
    assert [views.format_count(n) for n in (999, 260_000, 1_234_567, 7_000_000_000)] == ["999", "260K", "1.23M", "7B"]
    assert views.layer_index("layer 3") == 3 and views.layer_index(views.ALL_LAYERS) is None


def test_model_summary_follows_targets_and_overrides():
    model = make_tiny_model("llama")                     # 2 blocks x 7 Linears + lm_head
    summary = views.model_summary(model, Recipe(steps=["rtn"]))
    assert summary["architecture"] == "LlamaForCausalLM" and summary["blocks"] == 2
    assert summary["n_linear"] == 15 and summary["parameters"] == sum(p.numel() for p in model.parameters())
    rows = {r["module"]: r for r in summary["quantized"]}
    assert len(rows) == 7 and all(r["count"] == 2 for r in rows.values())
    assert rows["model.layers.*.mlp.down_proj"]["shape"] == "64x128"
    recipe = Recipe(steps=["rtn"], targets="decoder+lm_head",
                    overrides=[{"pattern": "*.down_proj", "skip": True}, {"pattern": "*.q_proj", "weights": "mxint8"}])
    rows = {r["module"]: r for r in views.model_summary(model, recipe)["quantized"]}
    assert "model.layers.*.mlp.down_proj" not in rows and rows["lm_head"]["count"] == 1
    assert rows["model.layers.*.self_attn.q_proj"]["weights"] == "mxint8"
    assert "**x**" not in views.summary_markdown(views.model_summary(model, recipe), "tiny")
    assert [len(r) for r in views.summary_rows(views.model_summary(model, recipe))] == [5] * len(rows)


# ---------------------------------------------------------------------------- summary == pipeline
TARGETS = ["decoder", "lm_head", "embeddings", "decoder+lm_head", "decoder+embeddings", "decoder+lm_head+embeddings"]
OVERRIDES = {
    "none": [],
    "mixed": [
        {"pattern": "*.1.mlp.down_proj", "skip": True},                     # one module of one block skipped
        {"pattern": "*.0.self_attn.o_proj", "weights": "mxint8"},           # a weights-only change, one block
        {"pattern": "*.k_proj", "weights": "none", "acts": "none"},          # nothing left to do: not quantized
        {"pattern": "*.v_proj", "weights": "none"},                         # activations only: still quantized
        {"pattern": "model.embed_tokens", "weights": "none"},               # the embedding kept in FP
        {"pattern": "lm_head", "weights": "mxfp8_e4m3", "acts": "none"},
    ],
    "embedding-mxint8": [{"pattern": "model.embed_tokens", "weights": "mxint8"}],
}


def _summary_formats(summary: dict) -> dict[str, tuple[str, str]]:
    """Full module name -> (weights, acts), as the summary lists them; each row's count matches its names."""
    out = {}
    for row in summary["quantized"]:
        assert row["count"] == len(row["names"])
        for name in row["names"]:
            pattern = row["module"].replace("*", r"\d+").replace(".", r"\.")
            assert re.fullmatch(pattern, name), (row["module"], name)
            assert name not in out, f"{name} listed twice"
            out[name] = (row["weights"], row["acts"])
    return out


def _pipeline_formats(model_fp: torch.nn.Module, recipe: Recipe) -> dict[str, tuple[str, str]]:
    """Full module name -> (weights, acts) of what quantize_model actually quantized, read off the result."""
    model = copy.deepcopy(model_fp)
    emb_fp = model_fp.get_input_embeddings().weight.detach().clone()
    tokens = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))
    result = quantize_model(model, None, recipe, device="cpu", calib_tokens=tokens)
    out = {name: (m.spec.weights, m.spec.acts) for name, m in model.named_modules() if isinstance(m, QuantLinear)}
    emb_name = next(n for n, m in model.named_modules() if m is model.get_input_embeddings())
    emb = model.get_input_embeddings().weight.detach()
    rtn_extras = {m.module for r in result.records if r.step == "rtn" and r.block == -1 for m in r.modules}
    if not torch.equal(emb, emb_fp):
        spec = recipe.spec_for(emb_name)
        assert torch.equal(emb, quantize(emb_fp, spec.weights, spec.block_size, rounding=spec.rounding))
        assert emb_name in rtn_extras
        out[emb_name] = (spec.weights, "none (weight only)")
    else:
        assert emb_name not in rtn_extras
    return out


@pytest.mark.parametrize("overrides", list(OVERRIDES))
@pytest.mark.parametrize("targets", TARGETS)
@pytest.mark.parametrize("arch", ["llama", "embedded"])
def test_summary_lists_exactly_what_the_pipeline_quantizes(arch, targets, overrides, embedded):
    """For every ``targets`` and with overrides, the app's summary and the pipeline agree module by module
    (formats included). The embedded model ties lm_head to the embedding, the tiny llama does not."""
    model = make_tiny_model("llama") if arch == "llama" else embedded[0]
    recipe = Recipe(weights="mxint4", acts="mxint8", steps=["rtn"], targets=targets, overrides=OVERRIDES[overrides])
    listed = _summary_formats(views.model_summary(model, recipe))
    done = _pipeline_formats(model, recipe)
    assert listed == done
    assert len(done) > 0 or (targets, overrides) == ("embeddings", "mixed")
    emb_name = "model.embed_tokens"
    assert (emb_name in done) == ("embeddings" in targets and overrides != "mixed")
