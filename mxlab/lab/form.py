"""The recipe form: widget values <-> Recipe, the method order as an editable list, validation text.

Values arrive as Gradio hands them over (numbers as floats, the order as free text); everything
here is plain Python, so the form can be tested without a browser.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Optional, Sequence

from ..errors import MxlabError
from ..formats import bits_per_element
from ..limits import check_file_size
from ..recipe import Recipe
from ..steps import STEP_CONFIGS, step_config


DEFAULT_SOURCE = "embedded default (stories260K)"
# what the app shows first: the study's best 4-bit recipe, calibration sized for the embedded model
START_RECIPE = dict(weights="mxint4", acts="mxint8", block_size=32, steps=["awq", "gptq"],
                    calib=dict(dataset="tinystories", n_samples=32, seq_len=256))
DEFAULT_EVAL_WINDOWS = 40   # 512-token windows: ~20k tokens, enough to rank recipes on the embedded model
# the form's fixed widgets, in the order the app lays them out; the step parameters (param_keys()) follow
FORM_FIELDS = ("weights", "acts", "block_size", "rounding", "scale_rule", "order", "calib_dataset",
               "calib_samples", "calib_seq_len", "seed", "allow_requantize")


# ---------------------------------------------------------------------------- method order
def parse_order(text: str) -> list[str]:
    """'awq, gptq' / 'awq -> gptq' / 'awq+gptq' -> ['awq', 'gptq'] (names lower-cased, unchecked)."""
    parts = re.split(r"[,+>\s→]+|->", (text or "").strip().lower())
    return [p for p in (part.strip(" -") for part in parts) if p]


def format_order(steps: list[str]) -> str:
    """['awq', 'gptq'] -> 'awq, gptq' (what the order textbox shows)."""
    return ", ".join(steps)


def order_choices(steps: list[str]) -> list[str]:
    """Numbered entries for the step picker: ['1. awq', '2. gptq']."""
    return [f"{i + 1}. {name}" for i, name in enumerate(steps)]


def choice_index(choice: Optional[str], n_steps: int) -> int:
    """'2. gptq' -> 1; no choice -> the last step; MxlabError on an empty order."""
    if n_steps == 0:
        raise MxlabError("The method order is empty; add a step first.")
    match = re.match(r"\s*(\d+)\.", choice or "")
    index = int(match.group(1)) - 1 if match else n_steps - 1
    return min(max(index, 0), n_steps - 1)


def add_step(steps: list[str], name: str) -> list[str]:
    """A new order with ``name`` appended (validation happens when the recipe is built)."""
    if not name:
        raise MxlabError("Pick a method to add.")
    return [*steps, name]


def remove_step(steps: list[str], index: int) -> list[str]:
    """A new order without the step at ``index``."""
    return [s for i, s in enumerate(steps) if i != index]


def move_step(steps: list[str], index: int, delta: int) -> tuple[list[str], int]:
    """A new order with the step at ``index`` moved by ``delta`` (clamped); returns (order, new index)."""
    new = list(steps)
    target = min(max(index + delta, 0), len(new) - 1)
    new.insert(target, new.pop(index))
    return new, target


# ---------------------------------------------------------------------------- step parameters
def step_classes() -> dict[str, type]:
    """Method name -> its step config dataclass, as steps.py defines them."""
    return dict(STEP_CONFIGS)


def step_param_fields(cls: type) -> list[dataclasses.Field]:
    """The user-tunable fields of a step config (everything but its name)."""
    return [f for f in dataclasses.fields(cls) if f.name != "name" and f.init]


def param_keys() -> list[tuple[str, str]]:
    """(method, field) for every step parameter, in a fixed order: how the app lays out widgets."""
    return [(name, f.name) for name, cls in step_classes().items() for f in step_param_fields(cls)]


def field_default(f: dataclasses.Field) -> Any:
    """A dataclass field's default value."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _coerce(value: Any, like: Any) -> Any:
    """A widget value (numbers arrive as float) converted to the type of the field's default."""
    if value is None:
        return like
    if isinstance(like, bool):
        return bool(value)
    if isinstance(like, int):
        return int(round(float(value)))
    if isinstance(like, float):
        return float(value)
    return value


# ---------------------------------------------------------------------------- widgets <-> recipe
def form_kwargs(values: Sequence[Any]) -> dict[str, Any]:
    """Positional widget values (FORM_FIELDS, then param_keys(), then the YAML box) -> build_recipe kwargs."""
    keys = param_keys()
    fixed = dict(zip(FORM_FIELDS, values[:len(FORM_FIELDS)]))
    params: dict[str, dict[str, Any]] = {}
    for (method, name), value in zip(keys, values[len(FORM_FIELDS):len(FORM_FIELDS) + len(keys)]):
        params.setdefault(method, {})[name] = value
    return dict(fixed, params=params, base_yaml=values[-1])


def widget_values(values: dict[str, Any]) -> list:
    """recipe_values' dict -> the positional widget values (FORM_FIELDS, then param_keys()); defaults fill gaps."""
    defaults = {(m, f.name): field_default(f) for m, cls in step_classes().items() for f in step_param_fields(cls)}
    params = [values["params"].get(m, {}).get(f, defaults[(m, f)]) for m, f in param_keys()]
    return [values[k] for k in FORM_FIELDS] + params


def form_outputs(recipe: Recipe) -> list:
    """What the form shows for ``recipe``: widget_values, then its YAML and its validation message."""
    return widget_values(recipe_values(recipe)) + [recipe.to_yaml(), validation_message(recipe)]


def build_recipe(*, weights: str, acts: str, block_size: Any, rounding: str, order: str,
                 scale_rule: Optional[str] = None,
                 params: Optional[dict[str, dict[str, Any]]] = None, calib_dataset: Optional[str] = None,
                 calib_samples: Any = None, calib_seq_len: Any = None, seed: Any = None,
                 allow_requantize: Any = None, base_yaml: Optional[str] = None) -> Recipe:
    """A validated Recipe from widget values; the fields no widget shows (targets, overrides) come from
    ``base_yaml`` when it parses, so every recipe field survives import -> edit -> run -> export.

    Raises MxlabError (from Recipe's own validation) when the values make no recipe.
    """
    base = None
    if base_yaml and base_yaml.strip():
        try:
            base = Recipe.from_yaml(base_yaml)
        except MxlabError:
            base = None  # the widgets win; a broken YAML box must not block editing
    steps = []
    for name in parse_order(order):
        cls = type(step_config(name))  # resolves aliases ("sq"); MxlabError lists the valid steps
        given = (params or {}).get(cls.name, {})
        kwargs = {f.name: _coerce(given.get(f.name), field_default(f)) for f in step_param_fields(cls)}
        steps.append(cls(**kwargs))
    calib = base.calib if base is not None else Recipe().calib
    calib = dataclasses.replace(
        calib,
        dataset=calib_dataset or calib.dataset,
        n_samples=_coerce(calib_samples, calib.n_samples),
        seq_len=_coerce(calib_seq_len, calib.seq_len),
    )
    extra = {}
    if base is not None:
        extra = {"targets": base.targets, "overrides": base.overrides}
    try:
        block = int(str(block_size).strip())
    except ValueError:
        raise MxlabError(f"Block size {block_size!r} is not a whole number; 32 is the MX standard.") from None
    requantize = bool(allow_requantize) if allow_requantize is not None else bool(base and base.allow_requantize)
    rule = scale_rule or (base.scale_rule if base is not None else Recipe.scale_rule)
    return Recipe(weights=weights, acts=acts, block_size=block, rounding=rounding, scale_rule=rule, steps=steps,
                  calib=calib, seed=_coerce(seed, 0), allow_requantize=requantize, **extra)


def recipe_values(recipe: Recipe) -> dict[str, Any]:
    """The widget values that show ``recipe`` (the inverse of build_recipe)."""
    params = {step.name: {f.name: getattr(step, f.name) for f in step_param_fields(type(step))}
              for step in recipe.steps}
    return dict(weights=recipe.weights, acts=recipe.acts, block_size=recipe.block_size, rounding=recipe.rounding,
                scale_rule=recipe.scale_rule,
                order=format_order([s.name for s in recipe.steps]), params=params,
                calib_dataset=recipe.calib.dataset, calib_samples=recipe.calib.n_samples,
                calib_seq_len=recipe.calib.seq_len, seed=recipe.seed, allow_requantize=recipe.allow_requantize)


def recipe_check(**values) -> tuple[Optional[str], str]:
    """(YAML of the recipe or None, a Markdown message: its validation warnings or the error)."""
    try:
        recipe = build_recipe(**values)
    except MxlabError as err:
        return None, f"**Invalid recipe:** {err}"
    return recipe.to_yaml(), validation_message(recipe)


def message_classes(message: str) -> list[str]:
    """CSS classes for a status message: 'mx-bad' (error/invalid), 'mx-warn' (warnings) or 'mx-ok'."""
    if message.startswith(("**Invalid", "**Error", "**Cancelled")):
        return ["mx-status", "mx-bad"]
    return ["mx-status", "mx-warn" if "warnings" in message else "mx-ok"]


def cost_hint(recipe: Recipe) -> str:
    """How much work a recipe is relative to the start recipe (calibration tokens x step cost), e.g. '~6x'."""
    weight = {"rtn": 0.0, "smoothquant": 0.3, "gptq": 1.0, "awq": 2.0}
    def cost(r: Recipe) -> float:
        tokens = r.calib.n_samples * r.calib.seq_len
        return tokens * (1.0 + sum(weight.get(s.name, 1.0) for s in r.steps))
    ratio = cost(recipe) / cost(Recipe.from_dict(START_RECIPE))
    return (f"Cost: ~{ratio:.1f}x the start recipe's calibration work "
            f"({recipe.calib.n_samples} x {recipe.calib.seq_len} tokens, steps {', '.join(s.name for s in recipe.steps) or 'rtn'}).")


def validation_message(recipe: Recipe) -> str:
    """'Recipe OK' plus its bits/element, or its warnings as a Markdown list."""
    warnings = recipe.warnings
    bits = bits_per_element(recipe.weights, recipe.block_size) if recipe.weights != "none" else None
    head = "Recipe OK" + (f" ({recipe.weights} at block {recipe.block_size}: {bits:g} bits per element incl. "
                          "scales; a run reports the packed average over all its weights)" if bits else "")
    if not warnings:
        return f"**{head}.**"
    return f"**{head}**, with warnings:\n" + "\n".join(f"- {w}" for w in warnings)


def parse_yaml(text: str) -> Recipe:
    """A Recipe from YAML text; MxlabError with a readable message on anything malformed."""
    if not text or not text.strip():
        raise MxlabError("The recipe YAML is empty; paste a recipe or pick a preset.")
    try:
        return Recipe.from_yaml(text)
    except MxlabError:
        raise
    except Exception as err:  # yaml.YAMLError, TypeError from unknown keys...
        raise MxlabError(f"Could not read the recipe YAML: {err}. Fix it or pick a preset.") from err


def read_upload(path: str) -> str:
    """The text of an uploaded recipe file: at most the recipe size limit, UTF-8; MxlabError otherwise."""
    from pathlib import Path


    p = Path(path)
    if not p.is_file():
        raise MxlabError("The upload did not arrive; upload the .yaml file again.")
    check_file_size(p, "recipe bytes", "The uploaded recipe")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise MxlabError("The uploaded recipe is not UTF-8 text; upload a .yaml recipe.") from None


def normalize_source(source: Optional[str]) -> Optional[str]:
    """The model textbox's value -> load_model's source (None for the embedded default)."""
    text = (source or "").strip()
    if not text or text.lower() in {"default", "embedded", DEFAULT_SOURCE.lower()}:
        return None
    return text


def field_help(cls: type, name: str) -> str:
    """The line documenting field ``name`` in a dataclass's 'Args:' docstring ('' if none)."""
    doc = cls.__doc__ or ""
    match = re.search(rf"^\s*{re.escape(name)}:\s*(.+(?:\n\s{{12,}}.+)*)", doc, flags=re.M)
    return " ".join(match.group(1).split()) if match else ""
