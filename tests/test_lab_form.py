"""mxlab/lab/form.py: the method order as an editable list, recipes from widget values and back,
validation messages. No gradio, no server."""
from __future__ import annotations

import pytest

from mxlab.errors import MxlabError
from mxlab.lab import form
from mxlab.recipe import Recipe


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
    assert form.parse_order(text) == steps
    assert form.parse_order(form.format_order(steps)) == steps


def test_order_editing_add_remove_move():
    steps = form.add_step([], "gptq")
    steps = form.add_step(steps, "awq")
    assert steps == ["gptq", "awq"]
    steps, index = form.move_step(steps, 1, -1)           # awq up: the study's order
    assert (steps, index) == (["awq", "gptq"], 0)
    assert form.move_step(steps, 0, -1) == (["awq", "gptq"], 0)   # clamped at the top
    assert form.move_step(steps, 1, +1) == (["awq", "gptq"], 1)   # and at the bottom
    assert form.remove_step(steps, 0) == ["gptq"]
    assert steps == ["awq", "gptq"]                      # inputs are never mutated
    with pytest.raises(MxlabError, match="Pick a method"):
        form.add_step(steps, "")


def test_order_choices_round_trip():
    choices = form.order_choices(["smoothquant", "awq", "gptq"])
    assert choices == ["1. smoothquant", "2. awq", "3. gptq"]
    assert [form.choice_index(c, 3) for c in choices] == [0, 1, 2]
    assert form.choice_index(None, 3) == 2                # nothing picked: the last step
    with pytest.raises(MxlabError, match="empty"):
        form.choice_index(None, 0)


# ---------------------------------------------------------------------------- recipes
def _values(**over):
    values = dict(weights="mxint4", acts="mxint8", block_size=32, rounding="nearest", order="awq, gptq",
                  params={"awq": {"n_grid": 10.0, "clip": False}, "gptq": {"percdamp": 0.02, "blocksize": 64.0,
                                                                             "mx_update": "column"}},
                  calib_dataset="tinystories", calib_samples=16.0, calib_seq_len=64.0, seed=3.0)
    values.update(over)
    return values


def test_build_recipe_from_widget_values():
    recipe = form.build_recipe(**_values())
    assert [s.name for s in recipe.steps] == ["awq", "gptq"]
    awq, gptq = recipe.steps
    assert (awq.n_grid, awq.clip, awq.clip_grid) == (10, False, 20)      # widget floats -> ints; defaults kept
    assert isinstance(awq.n_grid, int) and isinstance(gptq.blocksize, int)
    assert (gptq.percdamp, gptq.blocksize, gptq.mx_update) == (0.02, 64, "column")  # a dropdown's string
    assert (recipe.calib.n_samples, recipe.calib.seq_len, recipe.seed) == (16, 64, 3)
    # the inverse shows the same recipe in the widgets
    assert form.build_recipe(**form.recipe_values(recipe)).to_dict() == recipe.to_dict()


def test_positional_widget_values_round_trip():
    """What the app hands over positionally (fixed widgets, step parameters, YAML box) is the same recipe."""
    base = Recipe(steps=["smoothquant", "gptq"], overrides=[{"pattern": "*.o_proj", "weights": "mxint8"}])
    recipe = form.build_recipe(**_values(base_yaml=base.to_yaml()))
    *widgets, yaml_text, message = form.form_outputs(recipe)
    assert len(widgets) == len(form.FORM_FIELDS) + len(form.param_keys())
    assert widgets[:6] == ["mxint4", "mxint8", 32, "nearest", "floor", "awq, gptq"]
    assert yaml_text == recipe.to_yaml() and message == form.validation_message(recipe)
    kwargs = form.form_kwargs([*widgets, yaml_text])
    assert kwargs["params"]["gptq"]["mx_update"] == "column" and kwargs["params"]["smoothquant"]["alpha"] == 0.5
    assert form.build_recipe(**kwargs).to_dict() == recipe.to_dict()      # overrides come back via the YAML box


def test_build_recipe_keeps_overrides_of_the_yaml_box():
    base = Recipe(steps=["rtn"], overrides=[{"pattern": "*.down_proj", "weights": "mxint8"}], targets="decoder")
    recipe = form.build_recipe(**_values(base_yaml=base.to_yaml()))
    assert recipe.overrides == base.overrides
    # a broken YAML box does not block editing with the widgets
    assert form.build_recipe(**_values(base_yaml="weights: [")).overrides == []


@pytest.mark.parametrize("over, match", [
    (dict(order="gptq, awq"), "already quantized"),       # the reverse of the study's order
    (dict(order="awq, awq"), "twice"),
    (dict(order="awq, magic"), "unknown step 'magic'"),
    (dict(weights="mxint5"), "mxint5"),
    (dict(block_size="abc"), "whole number"),
])
def test_recipe_check_reports_invalid_values(over, match):
    yaml_text, message = form.recipe_check(**_values(**over))
    assert yaml_text is None
    assert message.startswith("**Invalid recipe:**")
    assert match in message


def test_recipe_check_ok_and_warnings():
    yaml_text, message = form.recipe_check(**_values())
    assert "Recipe OK" in message and "4.25 bits per element" in message      # mxint4 @ 32: 4 + 8/32
    assert form.parse_yaml(yaml_text).to_dict() == form.build_recipe(**_values()).to_dict()
    _, message = form.recipe_check(**_values(order="smoothquant, awq, gptq"))
    assert "with warnings" in message and "no benefit" in message


@pytest.mark.parametrize("text, match", [("", "empty"), ("weights: [", "not valid YAML"),
                                         ("- 1\n- 2", "mapping"), ("colour: blue", "unknown key")])
def test_parse_yaml_errors(text, match):
    with pytest.raises(MxlabError, match=match):
        form.parse_yaml(text)


def test_param_keys_cover_every_step_field():
    keys = form.param_keys()
    assert ("smoothquant", "alpha") in keys and ("gptq", "act_order") in keys and ("awq", "max_shrink") in keys
    assert not any(method == "rtn" for method, _ in keys)                # rtn has no parameters


def test_normalize_source():
    assert form.normalize_source("  ") is None and form.normalize_source("default") is None
    assert form.normalize_source(form.DEFAULT_SOURCE) is None
    assert form.normalize_source(" org/model ") == "org/model"


def test_scale_rule_round_trips_yaml_widgets_recipe():
    """A recipe with scale_rule 'even' survives import (YAML) -> widgets -> build_recipe -> YAML."""
    yaml_text = Recipe(weights="mxfp4", scale_rule="even", steps=["gptq"]).to_yaml()
    *widgets, _, _ = form.form_outputs(form.parse_yaml(yaml_text))
    assert widgets[form.FORM_FIELDS.index("scale_rule")] == "even"
    recipe = form.build_recipe(**form.form_kwargs([*widgets, yaml_text]))
    assert recipe.scale_rule == "even" and "scale_rule: even" in recipe.to_yaml()
    # the dropdown wins over the YAML box; no value keeps the YAML's
    widgets[form.FORM_FIELDS.index("scale_rule")] = "rceil"
    assert form.build_recipe(**form.form_kwargs([*widgets, yaml_text])).scale_rule == "rceil"
    assert form.build_recipe(**_values(base_yaml=yaml_text)).scale_rule == "even"
    assert form.build_recipe(**_values()).scale_rule == "floor"
    _, message = form.recipe_check(**_values(scale_rule="nearest"))
    assert message.startswith("**Invalid recipe:**") and "scale_rule" in message
