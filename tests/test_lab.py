"""The app's UI-independent helpers (mxlab/lab.py): order editing, recipes from widget values,
session state, results formatting. No gradio, no server."""
from __future__ import annotations

import copy

import pytest

from mxlab import lab
from mxlab.errors import MxlabError


# ---------------------------------------------------------------------------- method order
@pytest.mark.parametrize("text, steps", [
    ("awq, gptq", ["awq", "gptq"]),
    ("AWQ -> GPTQ", ["awq", "gptq"]),
    ("smoothquant+gptq", ["smoothquant", "gptq"]),
    ("awq → rtn", ["awq", "rtn"]),
    ("  ", []),
    (None, []),
])
def test_parse_order(text, steps):
    assert lab.parse_order(text) == steps
    assert lab.parse_order(lab.format_order(steps)) == steps


def test_order_editing_add_remove_move():
    steps = lab.add_step([], "gptq")
    steps = lab.add_step(steps, "awq")
    assert steps == ["gptq", "awq"]
    steps, index = lab.move_step(steps, 1, -1)           # awq up: the study's order
    assert (steps, index) == (["awq", "gptq"], 0)
    assert lab.move_step(steps, 0, -1) == (["awq", "gptq"], 0)   # clamped at the top
    assert lab.move_step(steps, 1, +1) == (["awq", "gptq"], 1)   # and at the bottom
    assert lab.remove_step(steps, 0) == ["gptq"]
    assert steps == ["awq", "gptq"]                      # inputs are never mutated
    with pytest.raises(MxlabError, match="Pick a method"):
        lab.add_step(steps, "")


def test_order_choices_round_trip():
    choices = lab.order_choices(["smoothquant", "awq", "gptq"])
    assert choices == ["1. smoothquant", "2. awq", "3. gptq"]
    assert [lab.choice_index(c, 3) for c in choices] == [0, 1, 2]
    assert lab.choice_index(None, 3) == 2                # nothing picked: the last step
    with pytest.raises(MxlabError, match="empty"):
        lab.choice_index(None, 0)


# ---------------------------------------------------------------------------- recipes
def _values(**over):
    values = dict(weights="mxint4", acts="mxint8", block_size=32, rounding="nearest", order="awq, gptq",
                  params={"awq": {"n_grid": 10.0, "clip": False}, "gptq": {"percdamp": 0.02, "blocksize": 64.0,
                                                                             "mx_update": "column"}},
                  calib_dataset="tinystories", calib_samples=16.0, calib_seq_len=64.0, seed=3.0)
    values.update(over)
    return values


def test_build_recipe_from_widget_values():
    recipe = lab.build_recipe(**_values())
    assert [s.name for s in recipe.steps] == ["awq", "gptq"]
    awq, gptq = recipe.steps
    assert (awq.n_grid, awq.clip, awq.clip_grid) == (10, False, 20)      # widget floats -> ints; defaults kept
    assert isinstance(awq.n_grid, int) and isinstance(gptq.blocksize, int)
    assert (gptq.percdamp, gptq.blocksize, gptq.mx_update) == (0.02, 64, "column")  # a dropdown's string
    assert (recipe.calib.n_samples, recipe.calib.seq_len, recipe.seed) == (16, 64, 3)
    # the inverse shows the same recipe in the widgets
    assert lab.build_recipe(**lab.recipe_values(recipe)).to_dict() == recipe.to_dict()


def test_build_recipe_keeps_overrides_of_the_yaml_box():
    from mxlab.recipe import Recipe

    base = Recipe(steps=["rtn"], overrides=[{"pattern": "*.down_proj", "weights": "mxint8"}], targets="decoder")
    recipe = lab.build_recipe(**_values(base_yaml=base.to_yaml()))
    assert recipe.overrides == base.overrides
    # a broken YAML box does not block editing with the widgets
    assert lab.build_recipe(**_values(base_yaml="weights: [")).overrides == []


@pytest.mark.parametrize("over, match", [
    (dict(order="gptq, awq"), "already quantized"),       # the reverse of the study's order
    (dict(order="awq, awq"), "twice"),
    (dict(order="awq, magic"), "unknown step 'magic'"),
    (dict(weights="mxint5"), "mxint5"),
    (dict(block_size="abc"), "whole number"),
])
def test_recipe_check_reports_invalid_values(over, match):
    yaml_text, message = lab.recipe_check(**_values(**over))
    assert yaml_text is None
    assert message.startswith("**Invalid recipe:**")
    assert match in message


def test_recipe_check_ok_and_warnings():
    yaml_text, message = lab.recipe_check(**_values())
    assert "Recipe OK" in message and "4.25 bits/element" in message      # mxint4 @ 32: 4 + 8/32
    assert lab.parse_yaml(yaml_text).to_dict() == lab.build_recipe(**_values()).to_dict()
    _, message = lab.recipe_check(**_values(order="smoothquant, awq, gptq"))
    assert "with warnings" in message and "no benefit" in message


@pytest.mark.parametrize("text, match", [("", "empty"), ("weights: [", "not valid YAML"),
                                         ("- 1\n- 2", "mapping"), ("colour: blue", "unknown key")])
def test_parse_yaml_errors(text, match):
    with pytest.raises(MxlabError, match=match):
        lab.parse_yaml(text)


def test_param_keys_cover_every_step_field():
    keys = lab.param_keys()
    assert ("smoothquant", "alpha") in keys and ("gptq", "act_order") in keys and ("awq", "max_shrink") in keys
    assert not any(method == "rtn" for method, _ in keys)                # rtn has no parameters


# ---------------------------------------------------------------------------- session state
def _entry(run_id: int, **metrics) -> lab.RunEntry:
    return lab.RunEntry(id=run_id, model="default", recipe_yaml="", weights="mxint4", acts="mxint8", block_size=32,
                        steps=["awq", "gptq"], bits=4.25, metrics=metrics, seconds=1.234)


def test_session_state_runs_and_isolation(tmp_path):
    a = lab.SessionState(root=tmp_path)
    b = copy.deepcopy(a)                                  # what gradio does per session
    assert b is not a and b.cancel is not a.cancel
    assert a.next_run_dir()[0] == 1
    a.add(_entry(1, ppl_fp=10.0, ppl_quant=11.5))
    assert b.runs == [] and a.next_run_dir()[0] == 2
    assert a.get("#1 W-mxint4 A-mxint8 awq+gptq") is a.runs[0] and a.get(1) is a.runs[0]
    with pytest.raises(MxlabError, match="no run"):
        a.get("#7")
    workdir = a.workdir
    assert workdir.is_dir() and workdir.parent == tmp_path
    a.close()
    assert not workdir.exists()


def test_runs_rows_and_metrics_text():
    state = lab.SessionState()
    state.add(_entry(1, ppl_fp=12.3456789, ppl_quant=13.987654, kl=0.0123456, top1=0.91))
    rows = lab.runs_rows(state)
    assert len(rows[0]) == len(lab.RUN_COLUMNS)
    assert rows == [["#1 W-mxint4 A-mxint8 awq+gptq", "default", "mxint4", "mxint8", 32, "awq+gptq", 4.25,
                     12.35, 13.99, 0.01235, 0.91, 1.2]]
    text = lab.metrics_markdown(state.runs[0])
    assert "12.35" in text and "13.99" in text and "KL" in text


def test_progress_adapter_cancels():
    seen = []
    state = lab.SessionState()
    callback = lab.progress_adapter(lambda f, m: seen.append((f, m)), state.cancel)
    callback(0.5, "block 1")
    state.cancel.set()
    with pytest.raises(lab.Cancelled):
        callback(0.6, "block 2")
    assert seen == [(0.5, "block 1")]


def test_small_formatters():
    assert [lab.format_count(n) for n in (999, 260_000, 1_234_567, 7_000_000_000)] == ["999", "260K", "1.23M", "7B"]
    assert lab.normalize_source("  ") is None and lab.normalize_source("default") is None
    assert lab.normalize_source(" org/model ") == "org/model"
    assert lab.run_id_of("#12 W-x") == 12 and lab.layer_index("layer 3") == 3 and lab.layer_index("all layers") is None


def test_model_summary_follows_targets_and_overrides():
    from conftest import make_tiny_model

    from mxlab.recipe import Recipe

    model = make_tiny_model("llama")                     # 2 blocks x 7 Linears + lm_head
    summary = lab.model_summary(model, Recipe(steps=["rtn"]))
    assert summary["architecture"] == "LlamaForCausalLM" and summary["blocks"] == 2
    assert summary["n_linear"] == 15 and summary["parameters"] == sum(p.numel() for p in model.parameters())
    rows = {r["module"]: r for r in summary["quantized"]}
    assert len(rows) == 7 and all(r["count"] == 2 for r in rows.values())
    assert rows["model.layers.*.mlp.down_proj"]["shape"] == "64x128"
    recipe = Recipe(steps=["rtn"], targets="decoder+lm_head",
                    overrides=[{"pattern": "*.down_proj", "skip": True}, {"pattern": "*.q_proj", "weights": "mxint8"}])
    rows = {r["module"]: r for r in lab.model_summary(model, recipe)["quantized"]}
    assert "model.layers.*.mlp.down_proj" not in rows and rows["lm_head"]["count"] == 1
    assert rows["model.layers.*.self_attn.q_proj"]["weights"] == "mxint8"
    assert "**x**" not in lab.summary_markdown(lab.model_summary(model, recipe), "tiny")
