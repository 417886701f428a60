"""Recipes: validation with user-facing messages, order rules, overrides, round trips, presets."""
from __future__ import annotations

import pytest

from mxlab.errors import MxlabError
from mxlab.presets import PRESETS, get_preset
from mxlab.recipe import CalibConfig, Override, QuantSpec, Recipe
from mxlab.steps import AWQConfig, GPTQConfig, SmoothQuantConfig


def test_defaults_and_aliases():
    r = Recipe(weights="mxfp4", steps="sq, gptq")
    assert r.weights == "mxfp4_e2m1" and r.acts == "mxint8" and r.block_size == 32
    assert [s.name for s in r.steps] == ["smoothquant", "gptq"]
    assert r.steps[0] == SmoothQuantConfig(alpha=0.5)
    assert r.target_set == {"decoder"}


@pytest.mark.parametrize("kwargs,needle", [
    (dict(weights="mxint5"), "mxint4"),                    # unknown format lists the valid ones
    (dict(acts="float7"), "mxint8"),
    (dict(steps=["awq", "bogus"]), "smoothquant, awq, gptq, rtn"),
    (dict(rounding="up"), "nearest, even, floor"),
    (dict(block_size=0), "block_size"),
    (dict(targets="decoder+heads"), "lm_head"),
    (dict(steps=[{"name": "smoothquant", "alpha": 1.5}]), "alpha"),
    (dict(steps=[{"name": "awq", "grid": 10}]), "n_grid"),  # unknown parameter lists the valid ones
    (dict(steps=["gptq"], block_size=48), "multiple"),
    (dict(weights="nvfp4", block_size=32, rounding="even"), "blocks of 16"),        # NVIDIA's NVFP4 only
    (dict(weights="nvfp4", block_size=16), "set rounding 'even'"),
    (dict(overrides=[{"pattern": "*.down_proj", "acts": "nvfp4"}], block_size=16), "ties to even"),
])
def test_invalid_fields_explain_themselves(kwargs, needle):
    with pytest.raises(MxlabError, match=needle):
        Recipe(**kwargs)


@pytest.mark.parametrize("steps,needle", [
    (["gptq", "awq"], "gptq has already quantized"),
    (["gptq", "smoothquant"], "e.g. smoothquant, gptq;"),      # the advice is an order that passes
    (["awq", "gptq", "rtn"], "exactly one quantizing step .* e.g. awq, gptq;"),  # not "put gptq last"
    (["rtn", "gptq"], "rtn has already quantized"),
    (["gptq", "rtn"], "already quantized"),
    (["awq", "awq"], "appears twice"),
])
def test_order_rules(steps, needle):
    with pytest.raises(MxlabError, match=needle):
        Recipe(steps=steps)


def test_allowed_orders_and_warnings():
    assert Recipe(steps=["awq", "gptq"]).warnings == []
    assert Recipe(steps=["smoothquant", "gptq"]).warnings == []
    w = Recipe(steps=["smoothquant", "awq", "gptq"]).warnings
    assert len(w) == 1 and "no benefit" in w[0]
    assert any("acts 'none'" in x for x in Recipe(acts="none", steps=["smoothquant"]).warnings)


def test_overrides_first_match_wins():
    r = Recipe(weights="mxint4", acts="mxint8", block_size=64, overrides=[
        {"pattern": "*.mlp.down_proj", "weights": "mxint8"},
        Override("model.layers.0.*", skip=True),
        {"pattern": "*.self_attn.*", "acts": "none"},
    ])
    assert r.spec_for("model.layers.3.mlp.down_proj") == QuantSpec("mxint8", "mxint8", 64, "nearest")
    assert r.spec_for("model.layers.0.mlp.down_proj").weights == "mxint8"      # first match decides
    assert r.spec_for("model.layers.0.mlp.up_proj") is None
    assert r.spec_for("model.layers.5.self_attn.q_proj") == QuantSpec("mxint4", "none", 64, "nearest")
    assert r.spec_for("model.layers.5.mlp.up_proj") == QuantSpec("mxint4", "mxint8", 64, "nearest")


@pytest.mark.parametrize("kwargs,needle", [
    (dict(pattern="*", skip=True, weights="mxint8"), "skip=true"),
    (dict(pattern="*"), "changes nothing"),
    (dict(pattern="*", weights="fp3"), "mxint4"),
])
def test_bad_overrides(kwargs, needle):
    with pytest.raises(MxlabError, match=needle):
        Override(**kwargs)


def test_round_trips_keep_everything():
    r = Recipe(weights="int4", acts="int8", block_size=128, rounding="even",
               steps=[SmoothQuantConfig(0.7), AWQConfig(n_grid=10, clip=False), GPTQConfig(act_order=True)],
               targets="decoder+lm_head", overrides=[Override("*.fc2", weights="int8"), Override("*.0.*", skip=True)],
               calib=CalibConfig("wikitext2", 64, 256), seed=3)
    for text, parse in ((r.to_yaml(), Recipe.from_yaml), (r.to_json(), Recipe.from_json)):
        back = parse(text)
        assert back == r and back.to_dict() == r.to_dict()
    assert "alpha: 0.7" in r.to_yaml()


def test_from_dict_rejects_unknown_keys_and_bad_text():
    with pytest.raises(MxlabError, match="valid keys"):
        Recipe.from_dict({"weights": "mxint4", "wieghts": "mxint8"})
    with pytest.raises(MxlabError, match="YAML"):
        Recipe.from_yaml("weights: [")
    with pytest.raises(MxlabError, match="JSON"):
        Recipe.from_json("{")


def test_load_file(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(get_preset("paper-awq-gptq-w4a8").to_yaml())
    assert Recipe.load(p) == get_preset("paper-awq-gptq-w4a8")
    with pytest.raises(MxlabError, match="does not exist"):
        Recipe.load(tmp_path / "missing.yaml")


def test_paper_presets():
    r = get_preset("paper-awq-gptq-w4a8")
    assert (r.weights, r.acts, r.block_size, [s.name for s in r.steps]) == ("mxint4", "mxint8", 128, ["awq", "gptq"])
    for name in ("paper-rtn-w4a8", "paper-gptq-w4a8", "paper-sq-w4a8", "paper-awq-w4a8", "paper-sq-gptq-w4a8",
                 "paper-rtn-w8a8", "paper-awq-gptq-w3a8", "paper-int-rtn-w4a8"):
        assert name in PRESETS
    assert [s.name for s in PRESETS["paper-sq-gptq-w4a8"].steps] == ["smoothquant", "gptq"]
    assert (PRESETS["paper-int-gptq-w3a8"].weights, PRESETS["paper-int-gptq-w3a8"].acts) == ("int3", "int8")
    assert all(isinstance(v, Recipe) for v in PRESETS.values())
    get_preset("paper-rtn-w4a8").block_size = 16                 # a copy: the preset stays
    assert PRESETS["paper-rtn-w4a8"].block_size == 128
    with pytest.raises(MxlabError, match="paper-rtn-w4a8"):
        get_preset("paper-foo")


@pytest.mark.parametrize("text,needle", [
    ("steps: 5", "steps must be a list"),
    ("calib: 5", "calib must be a mapping"),
    ("overrides: {pattern: x, skip: true}", "overrides must be a list"),
])
def test_wrong_container_types_are_user_errors(text, needle):
    with pytest.raises(MxlabError, match=needle):
        Recipe.from_yaml(text)


def test_load_binary_file_is_a_user_error(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_bytes(b"\xff\xfe\x00weights")
    with pytest.raises(MxlabError, match="UTF-8"):
        Recipe.load(p)
