"""mxlab's Gradio app: widgets -> Recipe -> library calls. No tensor math lives here.

    python app.py [--host 127.0.0.1] [--port 7860] [--share] [--allow-path DIR ...] [--password-file F]

Every helper that is not a widget lives in ``mxlab/lab/`` (unit-tested without gradio): ``session``
(state, runs), ``form`` (widgets <-> Recipe) and ``views`` (what is shown). ``build()`` creates the
widgets and wires them; handlers that need widgets close over the components of that one Blocks.
"""
from __future__ import annotations

import argparse
import functools
import inspect
import logging
from typing import Any

import gradio as gr

from mxlab.data import DATASETS
from mxlab.atomic import clean_stale_exports
from mxlab.errors import Cancelled, MxlabError
from mxlab.formats import FORMATS, ROUNDINGS, SCALE_RULES
from mxlab import compare
from mxlab import workspace as ws
from mxlab.lab import form, mixview, scaleview, session, sweepview, tasks, views, wide
from mxlab.lab.server import POLICY, tree_bytes
from mxlab.lab.session import SessionState
from mxlab.limits import bound
from mxlab.models import load_model
from mxlab.presets import PRESETS, get_preset
from mxlab.recipe import Recipe
from mxlab.zeroshot import TASKS

log = logging.getLogger("mxlab.app")

HELP = """# mxlab: microscaling quantization lab
Quantize a causal LM into **MX formats** (MXINT, MXFP) or INT/NVFP4 baselines, choose the
**order** of methods (SmoothQuant, AWQ, GPTQ, RTN), run, then look inside. Work top to bottom:
**Model -> Recipe -> Run -> Inspect / Compare -> Export**. The embedded model (stories260K) runs offline in seconds."""

CSS = """
.mx-bad, .mx-bad * {color: var(--error-text-color, #c92a2a) !important;}
.mx-bad {border-left: 4px solid #e03131; padding-left: 8px;}
.mx-warn {border-left: 4px solid #f59f00; padding-left: 8px;}
.mx-ok {border-left: 4px solid #2f9e44; padding-left: 8px;}
#order-tools button {max-width: 110px;}
.gradio-container {max-width: 1280px !important; margin: auto;}
#status-run, #status-model, #recipe-check {min-height: 2.2em;}
.step-box {border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 6px;}
footer {display: none !important;}
"""


# ----------------------------------------------------------------------------- handlers
def _oneline(err: Exception) -> str:
    """An exception's message on one line (YAML errors span several)."""
    return " ".join(str(err).split())


def _error(err: Exception, toast: bool = True) -> str:
    """A message for the UI (and a toast); unexpected errors are logged with their traceback."""
    if isinstance(err, MxlabError):
        text = _oneline(err)
    else:
        log.exception("unexpected error")
        text = f"unexpected {type(err).__name__}: {_oneline(err)}"
    if toast:
        gr.Warning(text, duration=10)
    return f"**Error:** {text}"


def _status(message: str):
    """A status Markdown update coloured by what the message says (error, warnings, ok)."""
    return gr.update(value=message, elem_classes=form.message_classes(message))


def _plain(fn, n_outputs: int):
    """``fn`` as an API endpoint: its first ``n_outputs`` outputs, each ``gr.update`` replaced by its value.

    UI handlers return widget updates (a status's colour, a picker's choices); an API client wants the
    values themselves, and an update without a value ("leave it") becomes None."""
    @functools.wraps(fn)           # keeps the signature: gradio reads parameter names and gr.Progress from it
    def endpoint(*args, **kwargs):
        out = fn(*args, **kwargs)
        out = list(out) if isinstance(out, (list, tuple)) else [out]
        values = [o.get("value") if isinstance(o, dict) and o.get("__type__") == "update" else o
                  for o in out[:n_outputs]]
        return values[0] if n_outputs == 1 else tuple(values)
    return endpoint


def _model_line(state: SessionState) -> str:
    name = state.model_source or form.DEFAULT_SOURCE
    return f"Model for the next run: **{name}** (change it on tab 1 · Model). Workspace: `{state.workspace}`"


def load_model_info(source: str, recipe_yaml: str, state: SessionState):
    """Load a model (None -> embedded default) and describe it; on failure the previous model stays selected."""
    src = form.normalize_source(source)
    name = src or form.DEFAULT_SOURCE
    note = ""
    try:
        recipe = form.parse_yaml(recipe_yaml)
    except MxlabError as err:  # a broken YAML box must not block loading a model
        recipe, note = Recipe.from_dict(form.START_RECIPE), f"\n\n(The recipe YAML does not parse: {_oneline(err)} " \
                                                            "The table uses the start recipe.)"
    try:
        session.check_sources(src, None, None)      # a client may read only the allowed roots
        model, _ = load_model(src)
        summary = views.model_summary(model, recipe)
        del model
    except Exception as err:  # noqa: BLE001 - shown to the user, app stays usable
        previous = state.model_source or form.DEFAULT_SOURCE
        rows = views.summary_rows(state.model_summary) if state.model_summary else gr.update()
        return (_status(_error(err) + f" The previous model, **{previous}**, stays selected."),
                state.model_source or "", rows, _model_line(state))
    state.model_source, state.model_summary = src, summary
    return (_status(views.summary_markdown(summary, name) + note), src or "", views.summary_rows(summary),
            _model_line(state))


def check_recipe(*values):
    """Build the recipe from the widgets: (YAML, validation message). Live, on every edit."""
    yaml_text, message = form.recipe_check(**form.form_kwargs(values))
    return (yaml_text if yaml_text is not None else gr.update()), _status(message)


def run_recipe(*args, progress=gr.Progress(), source: str | None = None):
    """Build the recipe from the form (all its fields) and run it into the workspace; errors land in the status.

    ``source``: a model other than the session's loaded one (the API's model argument), checked like a load."""
    *values, eval_dataset, max_eval_windows, name, task_names, task_limit, state = args
    try:
        recipe = form.build_recipe(**form.form_kwargs(values))
        windows = int(max_eval_windows) if max_eval_windows else None
        if windows is not None and not 0 < windows <= 10_000:
            raise MxlabError(f"Eval windows must be between 0 (all) and 10000, got {windows}.")
        zero_shot = tasks.task_kwargs(task_names, task_limit)
        model = state.model_source if source is None else source
        entry = session.execute_run(state, model, recipe, eval_dataset=eval_dataset, max_eval_windows=windows,
                                    report=lambda f, msg: progress(f, desc=msg), name=name or "", **zero_shot)
        message = views.metrics_markdown(entry) + f" Workspace: {tree_bytes(state.workspace) / 2**20:.1f} MB."
        views.run_figures(entry, views.ALL_LAYERS)      # built now (cached), so Inspect shows the new run at once
    except Cancelled as err:
        message = f"**Cancelled:** {err}"
        gr.Info(str(err))
    except Exception as err:  # noqa: BLE001
        message = _error(err).replace("**Error:**", "**Error: the run did not start or failed:**")
    return (_status(message), views.runs_rows(state), *_run_pickers(state))


def run_yaml(source: str, recipe_yaml: str, eval_dataset: str, max_eval_windows: float, name: str,
             task_names: list[str], task_limit: float, state: SessionState, progress=gr.Progress()):
    """API 'run': a model ("" = the session's loaded one) and a recipe as YAML (every field), zero-shot tasks
    ([] = none) and examples per task; same outputs as the Run button."""
    try:
        values = form.widget_values(form.recipe_values(form.parse_yaml(recipe_yaml))) + [recipe_yaml]
    except MxlabError as err:
        return (_status(_error(err)), views.runs_rows(state), *_run_pickers(state))
    src = form.normalize_source(source) if source and source.strip() else None
    return run_recipe(*values, eval_dataset, max_eval_windows, name, task_names, task_limit, state,
                      progress=progress, source=src)


def cancel_run(state: SessionState):
    """Stop this session's job: a running one at its next progress report, a queued one before it starts."""
    taken = state.request_cancel()
    if taken == "running":
        return _status("**Cancelling** at the next progress step...")
    if taken == "waiting":
        return _status("**Cancelling:** the job waiting in the queue will not start.")
    return _status("Nothing of this session is running.")


def _session_of(args) -> SessionState:
    """The SessionState among a handler's inputs (every heavy job takes the session's state)."""
    return next(a for a in args if isinstance(a, SessionState))


def _enqueue(state: SessionState) -> None:
    """The unqueued event chained before a heavy job: marks it waiting, so a Cancel reaches it in the queue."""
    state.enqueue()


def _job(fn):
    """``fn`` as a heavy job's handler: the waiting mark set by ``_enqueue`` ends with it (generators too)."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def stream(*args, **kwargs):
            with _session_of(args).dequeued():
                yield from fn(*args, **kwargs)
        return stream

    @functools.wraps(fn)
    def handler(*args, **kwargs):
        with _session_of(args).dequeued():
            return fn(*args, **kwargs)
    return handler


def refresh_runs(state: SessionState):
    """The workspace's runs (at page load and after any change): table, model line, then the run pickers."""
    return (views.runs_rows(state), _model_line(state), *_run_pickers(state))


def _run_pickers(state: SessionState):
    """The five run pickers (inspect, compare, export, manage, baseline): every run's label, the latest picked."""
    labels = state.labels()
    latest = labels[-1] if labels else None
    return (gr.update(choices=labels, value=latest), gr.update(choices=labels, value=labels[-2:]),
            gr.update(choices=labels, value=latest), gr.update(choices=labels, value=latest),
            gr.update(choices=labels, value=labels[-2] if len(labels) > 1 else latest))


def manage_run(action: str, label: str, text: str, state: SessionState):
    """Rename, tag or delete a workspace run."""
    try:
        key = session.run_key(label)
        if action == "rename":
            ws.rename_run(state.workspace, key, text)
        elif action == "tag":
            ws.tag_run(state.workspace, key, text)
        else:
            ws.delete_run(state.workspace, key)
        message = f"Run **{key}**: {'deleted' if action == 'delete' else 'saved'}."
    except Exception as err:  # noqa: BLE001
        message = _error(err)
    return (_status(message), views.runs_rows(state), *_run_pickers(state))


def edit_order(action: str, order: str, selected: str, method: str):
    """Add/remove/move a step of the method order; returns (order text, picker update, message)."""
    steps = form.parse_order(order)
    try:
        if action == "add":
            steps, index = form.add_step(steps, method), len(steps)
        else:
            index = form.choice_index(selected, len(steps))
            if action == "remove":
                steps, index = form.remove_step(steps, index), max(index - 1, 0)
            else:
                steps, index = form.move_step(steps, index, -1 if action == "up" else 1)
    except MxlabError as err:
        return gr.update(), gr.update(), _status(_error(err))
    choices = form.order_choices(steps)
    return form.format_order(steps), gr.update(choices=choices, value=choices[index] if choices else None), gr.update()


def order_picker(order: str, selected: str):
    """Keep the step picker in sync with a hand-edited order."""
    choices = form.order_choices(form.parse_order(order))
    return gr.update(choices=choices, value=selected if selected in choices else (choices[-1] if choices else None))


def inspect_run(run_label: str, layer: str, metric: str, state: SessionState):
    """Figures and the per-module table for one run (and one layer)."""
    empty = (gr.update(), None, None, None, None, None)
    if not run_label:
        return ("Run a recipe first (tab 3); its figures appear here.", *empty)
    try:
        entry = state.get(run_label)
        layers = views.run_layers(entry)
        layer = layer if layer in layers else views.ALL_LAYERS
        figs = views.run_figures(entry, layer, metric="mse" if metric.startswith("output MSE") else "sqnr")
        table = views.module_table(entry, layer)
    except Exception as err:  # noqa: BLE001
        return (_error(err), *empty)
    note = "" if figs["sensitivity"] is not None else wide.sensitivity_line(entry)   # its cost, before it starts
    return (note, gr.update(choices=[views.ALL_LAYERS, *layers], value=layer), figs["heatmap"], figs["scales"],
            figs["waterfall"], figs["sensitivity"], table)


def inspect_selection(run_label: str, layer: str, metric: str, state: SessionState):
    """A pick in the Inspect tab (run, layer, metric): its figures, or nothing new when they show already."""
    try:
        has_sensitivity = bool(run_label) and state.get(run_label).sensitivity is not None
    except Exception:  # noqa: BLE001
        return inspect_run(run_label, layer, metric, state)     # it says what is wrong; a retry draws again
    out = state.draw_if_new("inspect", (run_label, layer, metric, has_sensitivity),
                            lambda: inspect_run(run_label, layer, metric, state))
    return out if out is not None else tuple(gr.skip() for _ in range(7))


def sensitivity(run_label: str, layer: str, metric: str, state: SessionState, progress=gr.Progress()):
    """Quantize one module at a time (RTN), rank by KL; saved into the run (and its report), then redraw."""
    state.forget_shown("inspect")
    try:
        session.compute_sensitivity(state, state.get(run_label), report=lambda f, msg: progress(f, desc=msg))
    except Exception as err:  # noqa: BLE001
        return (_error(err), gr.update(), None, None, None, None, None)
    return inspect_run(run_label, layer, metric, state)


def compare_runs(labels: list[str], baseline: str, state: SessionState):
    """Metrics with deltas against the baseline, per-layer SQNR differences, perplexity vs bits."""
    try:
        view = views.compare_view(state, labels, baseline)
    except Exception as err:  # noqa: BLE001
        return _status(_error(err)), None, None, None
    message = view["note"] if not view["warn"] else "**Not comparable:** " + view["note"]
    if view["warn"]:
        gr.Warning(view["note"].replace("**", ""), duration=10)
    return (gr.update(value=message, elem_classes=["mx-status", "mx-warn" if view["warn"] else "mx-ok"]),
            view["table"], view["layers"], view["pareto"])


def export_comparison(labels: list[str], baseline: str, state: SessionState):
    """One self-contained HTML comparison report of the picked runs."""
    try:
        view = views.compare_view(state, labels, baseline)
        ids = (session.run_key(label).replace("/", "_") for label in labels)    # a sweep cell's id has a '/'
        path = state.workdir / f"comparison-{'-vs-'.join(ids)[:120]}.html"
        path.write_text(compare.comparison_html(view["runs"], view["baseline"]), encoding="utf-8")
    except Exception as err:  # noqa: BLE001
        return _status(_error(err)), None
    return _status(f"Comparison of {len(labels)} runs ready to download."), str(path)


def export_run(run_label: str, state: SessionState):
    """The run's downloadable files: packed model (zip), results JSON, records CSV, report, recipe."""
    try:
        files = session.export_files(state, state.get(run_label))
    except Exception as err:  # noqa: BLE001
        return (_status(_error(err)), *[None] * 5)
    paths = [str(files[k]) if k in files else None for k in ("model", "results", "records", "report", "recipe")]
    return (_status(f"**Ready:** the files of run {session.run_key(run_label)}."), *paths)


def export_compressed(run_label: str, state: SessionState):
    """The run's model as a compressed-tensors checkpoint (zip) that transformers + compressed-tensors load."""
    try:
        path = session.compressed_tensors_zip(state, state.get(run_label))
    except Exception as err:  # noqa: BLE001 - e.g. MXINT has no compressed-tensors layout: say so
        return _status(_error(err)), None
    return _status(f"**Ready:** compressed-tensors checkpoint of run {session.run_key(run_label)}."), str(path)


def download_recipe(yaml_text: str, state: SessionState):
    """The recipe YAML box as a file named after the recipe (what the Recipe tab exports)."""
    try:
        recipe = form.parse_yaml(yaml_text)
    except MxlabError as err:
        return _status(_error(err)), None
    steps = "-".join(s.name for s in recipe.steps) or "rtn"
    path = state.workdir / f"recipe-w-{recipe.weights}-a-{recipe.acts}-b{recipe.block_size}-{steps}.yaml"
    path.write_text(recipe.to_yaml(), encoding="utf-8")
    return gr.update(), str(path)


# ----------------------------------------------------------------------------- sweep tab (mxlab/lab/sweepview.py)
def sweep_check(text: str, workers: float, state: SessionState):
    """'Check': the sweep file's cells, which are already finished, and the cost estimate; nothing runs."""
    try:
        summary, rows = sweepview.check_sweep(text, state.workspace, workers)
    except Exception as err:  # noqa: BLE001
        return _status(_error(err)), []
    return _status(summary.replace("\n", "  \n")), rows


def sweep_upload(path: str):
    """An uploaded sweep file (size-capped, UTF-8) into the editor."""
    try:
        return sweepview.read_upload(path), gr.update()
    except MxlabError as err:
        return gr.update(), _status(_error(err))


def sweep_list(state: SessionState, value: str | None = None):
    """The sweep picker: every sweep of the workspace (the app's and the CLI's), ``value`` or the last picked."""
    names = sweepview.list_sweeps(state.workspace)
    return gr.update(choices=names, value=value if value in names else (names[-1] if names else None))


def sweep_names(state: SessionState):
    """API 'sweeps': the workspace's sweeps, one line (the picker lists the same names)."""
    names = sweepview.list_sweeps(state.workspace)
    return _status("Sweeps in the workspace: " + (", ".join(names) if names else "none yet") + ".")


def _sweep_view(name: str, value: str, state: SessionState) -> tuple:
    """(status rows, result table, heatmap, cell-run picker) of one sweep; empty while it has no manifest yet."""
    try:
        rows = sweepview.status_rows(state.workspace, name)
        table, fig = sweepview.result_view(state.workspace, name, value or None)
        cells = sweepview.cell_runs(state.workspace, name)
    except MxlabError:
        return [], None, None, gr.update(choices=[], value=None)
    return rows, sweepview.display_table(table), fig, gr.update(choices=cells, value=cells[0] if cells else None)


def sweep_show(name: str, value: str, state: SessionState):
    """A sweep's cells (status, attempts, progress, error, ppl), its table and heatmap, its finished cells."""
    try:
        rows = sweepview.status_rows(state.workspace, name)
    except Exception as err:  # noqa: BLE001
        return _status(_error(err)), [], None, None, gr.update()
    try:
        view = _sweep_view(name, value, state)
    except Exception as err:  # noqa: BLE001 - e.g. a table value the sweep lacks: the status still shows
        return _status(_error(err)), rows, None, None, gr.update()
    return _status(f"Sweep **{name}**: {sweepview.status_counts(rows)}."), *view


def sweep_start(text: str, workers: float, value: str, state: SessionState, progress=gr.Progress()):
    """'Start sweep': run it into the workspace in the background, refreshing the cells' status every second."""
    keep = [gr.update()] * 6
    try:
        job = sweepview.start_sweep(state, text, workers)
    except Exception as err:  # noqa: BLE001 - Cancelled: Cancel was pressed while it waited in the queue
        message = f"**Cancelled:** {err}" if isinstance(err, Cancelled) else _error(err)
        yield (_status(message), *keep, *[gr.update()] * 6)
        return
    while not job.wait(1.0):
        progress(job.last[0], desc=job.last[1])
        try:
            rows = sweepview.status_rows(state.workspace, job.name)
        except MxlabError:      # waiting at the gate: the sweep has no manifest yet
            rows = []
        yield (_status(job.message()), rows, *keep[:4], gr.update(), *[gr.update()] * 6)
    labels = state.labels()
    pickers = [gr.update(choices=labels)] * 5       # new cell runs in every run picker; selections stay
    yield (_status(job.message()), *_sweep_view(job.name, value, state), sweep_list(state, job.name), gr.update(),
           views.runs_rows(state), *pickers)


def sweep_run(text: str, workers: float, value: str, state: SessionState, progress=gr.Progress()):
    """API 'sweep_start': start the sweep and return when it has ended, with the same outputs as the button."""
    out = None
    for out in sweep_start(text, workers, value, state, progress=progress):
        pass
    return out


def sweep_open(run_id: str, state: SessionState):
    """'Open in Inspect': select a finished cell's run in Inspect (and Export, and offer it to Compare), switch tab."""
    try:
        label = sweepview.cell_label(state.workspace, run_id)
    except Exception as err:  # noqa: BLE001
        return _status(_error(err)), gr.update(), gr.update(), gr.update(), gr.update()
    labels = state.labels()
    return (_status(f"Opened run **{session.run_key(label)}** in Inspect."), gr.update(choices=labels, value=label),
            gr.update(choices=labels, value=label), gr.update(choices=labels), gr.Tabs(selected="inspect"))


# ----------------------------------------------------------------------------- layout
def build(default_preset: str | None = None, workspace: str | None = None) -> gr.Blocks:
    """The app's Blocks (not launched), over the workspace folder ``workspace`` (default ./mxlab-runs)."""
    start = get_preset(default_preset) if default_preset else Recipe.from_dict(form.START_RECIPE)
    values = form.recipe_values(start)
    formats = ["none", *sorted(FORMATS)]
    classes = form.step_classes()
    root = ws.resolve(workspace)
    # the pickers the page fills per session (runs, layers) also take a value an API client sends as is:
    # a bare run id or 'layer 3' (the handlers check it: ws.get_run refuses anything but a run of the workspace)
    any_value = dict(allow_custom_value=True)

    # delete_cache: Gradio's cached files (uploads, downloads) older than an hour go, checked every 10 min
    with gr.Blocks(title="mxlab", analytics_enabled=False, delete_cache=(600, 3600)) as demo:
        # gradio deep-copies the value for each session (SessionState.__deepcopy__: a fresh one)
        state = gr.State(SessionState(root), delete_callback=lambda s: s.close())
        gr.Markdown(HELP)
        with gr.Tabs() as tabs:
            with gr.Tab("1 · Model", id="model"):
                gr.Markdown("A Hugging Face hub id, a local model directory, or empty for the embedded default. "
                            "Only safetensors checkpoints load (no pickles).")
                with gr.Row():
                    source = gr.Textbox("", label="Model", placeholder=form.DEFAULT_SOURCE, scale=4,
                                        elem_id="model-source")
                    load_btn = gr.Button("Load", variant="primary", scale=1, elem_id="load-model")
                model_md = gr.Markdown(elem_id="status-model")
                layers_df = gr.Dataframe(headers=views.SUMMARY_COLUMNS,
                                         label="Layers the recipe quantizes", interactive=False)

            with gr.Tab("2 · Recipe", id="recipe"):
                with gr.Row():
                    preset = gr.Dropdown(list(PRESETS), value=default_preset, label="Preset",
                                         info="The study's configurations and a few more", scale=2)
                    weights = gr.Dropdown(formats, value=values["weights"], label="Weights format")
                    acts = gr.Dropdown(formats, value=values["acts"], label="Activations format")
                    block_size = gr.Dropdown([8, 16, 32, 64, 128], value=values["block_size"], label="MX block size",
                                             allow_custom_value=True, info="elements per shared scale")
                    rounding = gr.Dropdown(list(ROUNDINGS), value=values["rounding"], label="Rounding",
                                           info="nearest: ties away from zero")
                    scale_rule = gr.Dropdown(list(SCALE_RULES), value=values["scale_rule"], label="Scale rule",
                                             info=form.field_help(Recipe, "scale_rule"), elem_id="scale-rule")
                preset_md = gr.Markdown(elem_id="preset-cost")
                gr.Markdown("**Method order**: steps run in this order on every decoder block. Rule: scaling steps "
                            "(smoothquant, awq) first, then at most one quantizing step (gptq or rtn) last; what no "
                            "step quantized gets round-to-nearest at the end.")
                with gr.Row(equal_height=True):
                    order = gr.Textbox(value=values["order"], label="Order", scale=3, elem_id="method-order",
                                       info="comma-separated; edit here or with the buttons")
                    picked = gr.Radio(form.order_choices(form.parse_order(values["order"])), label="Selected step",
                                      scale=3, elem_id="order-picker")
                with gr.Row(equal_height=True, elem_id="order-tools"):
                    method = gr.Dropdown(list(classes), value=next(iter(classes)), label="Method to add",
                                         scale=2, elem_id="add-method")
                    add_btn = gr.Button("+ Add", elem_id="order-add", size="sm", min_width=60)
                    remove_btn = gr.Button("× Remove", elem_id="order-remove", size="sm", min_width=60)
                    up_btn = gr.Button("↑ Up", elem_id="order-up", size="sm", min_width=60)
                    down_btn = gr.Button("↓ Down", elem_id="order-down", size="sm", min_width=60)
                    requant = gr.Checkbox(values["allow_requantize"], label="allow requantize", scale=2,
                                          elem_id="allow-requantize",
                                          info="ablations only: let steps follow gptq/rtn (the study's reversed orders)")
                check_md = gr.Markdown(form.validation_message(start), elem_id="recipe-check",
                                       elem_classes=form.message_classes(form.validation_message(start)))
                param_widgets = []
                with gr.Accordion("Step parameters", open=False):
                    gr.Markdown("GPTQ's *blocksize* is its column batch (a multiple of the MX block size), not the MX "
                                "block size itself. Hover a field for what it does.")
                    with gr.Row():
                        for name, cls in classes.items():
                            fields = form.step_param_fields(cls)
                            if not fields:
                                continue
                            with gr.Column(elem_classes="step-box", min_width=200):
                                gr.Markdown(f"**{name}**")
                                for f in fields:
                                    param_widgets.append(_param_widget(name, f, values["params"], cls))
                with gr.Accordion("Calibration", open=False):
                    with gr.Row():
                        calib_ds = gr.Dropdown(list(DATASETS), value=values["calib_dataset"], label="Calibration set")
                        calib_n = gr.Number(values["calib_samples"], precision=0, label="Calibration samples",
                                            minimum=1, maximum=4096, elem_id="calib-n")
                        calib_len = gr.Number(values["calib_seq_len"], precision=0, label="Tokens per sample",
                                              minimum=8, maximum=8192, elem_id="calib-len")
                        seed = gr.Number(values["seed"], precision=0, label="Seed")
                with gr.Accordion("Recipe as YAML (import / export)", open=False):
                    yaml_box = gr.Code(value=start.to_yaml(), language="yaml", label="recipe.yaml",
                                       interactive=True, elem_id="recipe-yaml")
                    with gr.Row():
                        import_btn = gr.Button("Import YAML into the widgets", elem_id="import-yaml")
                        yaml_dl_btn = gr.Button("Download this recipe", elem_id="download-yaml")
                        yaml_file = gr.File(label="...or upload a .yaml", file_types=[".yaml", ".yml"], height=80)
                    yaml_dl = gr.File(label="recipe file", elem_id="dl-recipe-yaml", interactive=False)

            with gr.Tab("3 · Run", id="run"):
                run_model_md = gr.Markdown(elem_id="run-model")
                with gr.Row():
                    eval_ds = gr.Dropdown(list(DATASETS), value="tinystories", label="Evaluation set")
                    eval_windows = gr.Number(form.DEFAULT_EVAL_WINDOWS, precision=0, label="Eval windows",
                                             info="of the model's context, at most 2048 tokens (stories260K: 512); 0: the whole set",
                                             minimum=0, maximum=10_000,
                                             elem_id="eval-windows")
                    run_name = gr.Textbox("", label="Run name (optional)", max_length=80, elem_id="run-name", scale=2)
                with gr.Row():
                    task_pick = gr.Dropdown(list(TASKS), value=[], multiselect=True, scale=3, elem_id="task-pick",
                                            label="Zero-shot tasks (lm-eval, offline data)",
                                            info="scored on the FP and the quantized model; none: perplexity only")
                    task_limit = gr.Number(tasks.DEFAULT_TASK_LIMIT, precision=0, label="Examples per task",
                                           minimum=1, maximum=bound("task limit"), elem_id="task-limit")
                task_cost_md = gr.Markdown(tasks.cost_line([], tasks.DEFAULT_TASK_LIMIT), elem_id="task-cost")
                with gr.Row():
                    run_btn = gr.Button("Run", variant="primary", elem_id="run-btn", scale=3)
                    cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel-btn", scale=1)
                run_md = gr.Markdown(elem_id="status-run", elem_classes=["mx-status"])
                runs_df = gr.Dataframe(headers=views.RUN_COLUMNS, label="Runs in the workspace (every session, "
                                       "the CLI and the API)", interactive=False, elem_id="runs-table", wrap=False)
                with gr.Accordion("Rename, tag or delete a run", open=False):
                    with gr.Row():
                        manage_pick = gr.Dropdown([], label="Run", scale=3, elem_id="manage-run", **any_value)
                        manage_text = gr.Textbox(label="New name, or tags (comma-separated)", scale=2,
                                                 elem_id="manage-text")
                        rename_btn = gr.Button("Rename", size="sm", elem_id="rename-btn")
                        tag_btn = gr.Button("Set tags", size="sm", elem_id="tag-btn")
                        delete_btn = gr.Button("Delete", size="sm", variant="stop", elem_id="delete-btn")

            with gr.Tab("4 · Inspect", id="inspect"):
                with gr.Row():
                    inspect_pick = gr.Dropdown([], label="Run", elem_id="inspect-run", scale=3, **any_value)
                    layer_pick = gr.Dropdown([views.ALL_LAYERS], value=views.ALL_LAYERS, label="Layer",
                                             elem_id="layer-pick", **any_value)
                    metric_pick = gr.Dropdown(["output SQNR (dB)", "output MSE (absolute)"], value="output SQNR (dB)",
                                              label="Error by step shows", elem_id="metric-pick")
                    sens_btn = gr.Button("Compute sensitivity", elem_id="sens-btn")
                inspect_md = gr.Markdown(elem_id="inspect-note")
                with gr.Row():
                    heatmap = gr.Plot(label="Activation outliers (channels x layers)", elem_id="plot-heatmap")
                    scales = gr.Plot(label="MX scale exponents (weights, activations)", elem_id="plot-scales")
                with gr.Row():
                    waterfall = gr.Plot(label="Error by step", elem_id="plot-waterfall")
                    sens_plot = gr.Plot(label="Sensitivity (one module quantized at a time)",
                                        elem_id="plot-sensitivity")
                module_df = gr.Dataframe(label="Per-module records", interactive=False, max_height=360,
                                         elem_id="inspect-table")

            with gr.Tab("5 · Compare", id="compare"):
                with gr.Row():
                    compare_pick = gr.Dropdown([], multiselect=True, label="Runs to compare (two or more)", scale=4,
                                               elem_id="compare-pick", **any_value)
                    baseline_pick = gr.Dropdown([], label="Baseline", scale=2, elem_id="baseline-pick", **any_value)
                with gr.Row():
                    compare_btn = gr.Button("Compare", variant="primary", elem_id="compare-btn")
                    compare_export_btn = gr.Button("Export comparison (HTML)", elem_id="compare-export")
                compare_md = gr.Markdown(elem_id="compare-note", elem_classes=["mx-status"])
                compare_df = gr.Dataframe(label="Metrics, with deltas against the baseline", interactive=False,
                                          elem_id="compare-table", wrap=False)
                overlay = gr.Plot(label="Per-layer output SQNR against the baseline", elem_id="plot-compare")
                pareto = gr.Plot(label="Perplexity vs bits per weight", elem_id="plot-pareto")
                compare_file = gr.File(label="comparison.html", elem_id="dl-compare", interactive=False)

            with gr.Tab("6 · Export", id="export"):
                gr.Markdown("The packed checkpoint (`mxlab.load_quantized` reloads it), the metrics and per-layer "
                            "records, a self-contained HTML report to send around, and the recipe to rerun it "
                            "(`python -m mxlab run --recipe recipe.yaml`).")
                with gr.Row():
                    export_pick = gr.Dropdown([], label="Run", elem_id="export-run", scale=3, **any_value)
                    export_btn = gr.Button("Prepare downloads", variant="primary", elem_id="export-btn", scale=1)
                    ct_btn = gr.Button("compressed-tensors (MXFP4/6/8)", elem_id="export-ct-btn", scale=1)
                export_md = gr.Markdown(elem_classes=["mx-status"])
                with gr.Row():
                    f_model = gr.File(label="Packed model (.zip)", elem_id="dl-model", min_width=360)
                    f_results = gr.File(label="results.json", elem_id="dl-results", min_width=360)
                    f_records = gr.File(label="records.csv", elem_id="dl-records", min_width=360)
                    f_report = gr.File(label="report.html", elem_id="dl-report", min_width=360)
                    f_recipe = gr.File(label="recipe.yaml", elem_id="dl-recipe", min_width=360)
                    f_ct = gr.File(label="compressed-tensors (.zip)", elem_id="dl-ct", min_width=360)

            # ---- the Mix tab: mixed formats under a bit budget (logic in mxlab/lab/mixview.py)
            with gr.Tab("7 · Mix", id="mix"):
                gr.Markdown("Mixed formats under a bit budget, for the **loaded model** with the **current recipe** as "
                            "base: each decoder Linear alone is quantized in each candidate format and the model's "
                            "KL to FP measured on a few calibration windows; an exact solver then finds every "
                            "Pareto-optimal assignment (bits per weight, scales included, vs predicted KL). Move the "
                            "budget to pick one; **Run this point** runs its recipe as a normal run (Run tab's "
                            "evaluation set and windows) that Inspect, Compare and Export list. When every module "
                            "ends up MXFP4/MXFP6 E2M3/MXFP8 E4M3 at block 32, the Export tab also writes the run as "
                            "compressed-tensors.")
                with gr.Row():
                    mix_formats = gr.Dropdown(mixview.CANDIDATES, value=mixview.DEFAULT_FORMATS, multiselect=True,
                                              max_choices=bound("mix formats"), label="Candidate weight formats",
                                              scale=3, elem_id="mix-formats")
                    mix_method = gr.Dropdown([(f"{k}: {v}", k) for k, v in mixview.METHOD_HELP.items()], value="rtn",
                                             label="Probe weights", scale=2, elem_id="mix-method")
                    mix_windows = gr.Number(mixview.DEFAULT_WINDOWS, precision=0, minimum=1,
                                            maximum=bound("mix probe windows"), label="Probe windows",
                                            info="of the recipe's calibration text", elem_id="mix-windows")
                    mix_seq = gr.Number(mixview.DEFAULT_SEQ_LEN, precision=0, minimum=2, maximum=4096,
                                        label="Tokens per window", elem_id="mix-seq-len")
                with gr.Row():
                    mix_btn = gr.Button("Compute frontier", variant="primary", elem_id="mix-btn", scale=3)
                    mix_cancel_btn = gr.Button("Cancel", variant="stop", elem_id="mix-cancel", scale=1)
                mix_md = gr.Markdown(elem_id="mix-status", elem_classes=["mx-status"])
                mix_budget = gr.Slider(0, mixview.MAX_BUDGET, value=6.0, step=mixview.STEP, elem_id="mix-budget",
                                       label="Budget: bits per weight (scales included)")
                mix_summary = gr.Markdown(elem_id="mix-summary")
                with gr.Row():
                    mix_chart = gr.Plot(label="Frontier: bits per weight vs KL to FP", elem_id="plot-mix-frontier")
                    mix_grid = gr.Plot(label="Format per module of the chosen point", elem_id="plot-mix-grid")
                with gr.Row():
                    mix_run_name = gr.Textbox("", label="Run name (optional)", max_length=80, scale=2,
                                              elem_id="mix-run-name")
                    mix_run_btn = gr.Button("Run this point", variant="primary", elem_id="mix-run-btn", scale=1)
                    mix_recipe_btn = gr.Button("Download this point's recipe", elem_id="mix-recipe-btn", scale=1)
                mix_note = gr.Markdown(elem_id="mix-export-note")
                mix_file = gr.File(label="recipe.yaml of the point", elem_id="dl-mix-recipe", interactive=False)
                with gr.Accordion("The chosen point (JSON: bits, predicted KL, format per module)", open=False):
                    mix_point = gr.JSON(elem_id="mix-point")

            with gr.Tab("8 · Scale lab", id="scalelab") as scale_tab:
                gr.Markdown("Every MX **scale rule** side by side on one layer of the loaded model (tab 1): "
                            "*floor* (OCP v1.0), *ceil*, *even*, *rceil* and *mse* (per-block search). Clipped: "
                            "blocks whose maximum exceeds the format's largest value after scaling; flushed: "
                            "nonzero weights that become 0. The output error uses a few calibration tokens.")
                with gr.Row():
                    sl_fmt = gr.Dropdown(scaleview.MX_FORMATS, value="mxfp4_e2m1", label="Element format (MX)",
                                         elem_id="scalelab-format")
                    sl_block = gr.Number(32, precision=0, minimum=1, maximum=bound("block_size"), label="Block size",
                                         elem_id="scalelab-block")
                    sl_rounding = gr.Dropdown(list(ROUNDINGS), value="nearest", label="Rounding",
                                              elem_id="scalelab-rounding")
                    sl_tokens = gr.Number(256, precision=0, minimum=0, maximum=bound("scale lab tokens"),
                                          label="Calibration tokens", info="for the output error; 0: weights only",
                                          elem_id="scalelab-tokens")
                    sl_layer = gr.Dropdown([], label="Layer", scale=2, elem_id="scalelab-layer", **any_value)
                sl_md = gr.Markdown(elem_id="scalelab-note", elem_classes=["mx-status"])
                sl_table = gr.Dataframe(headers=scaleview.RULE_COLUMNS, label="Scale rules on this layer",
                                        interactive=False, elem_id="scalelab-table", wrap=False)
                sl_plot = gr.Plot(label="Clipped / flushed, SQNR and block exponents per rule", elem_id="plot-scalelab")
                with gr.Row():
                    sl_sum_btn = gr.Button("Model-wide summary (every layer)", variant="primary",
                                           elem_id="scalelab-summary-btn", scale=3)
                    sl_cancel = gr.Button("Cancel", variant="stop", elem_id="scalelab-cancel", scale=1)
                sl_sum_md = gr.Markdown(elem_id="scalelab-summary-note", elem_classes=["mx-status"])
                sl_sum_df = gr.Dataframe(label="Mean over layers, per rule", interactive=False,
                                         elem_id="scalelab-summary", wrap=False)

            with gr.Tab("9 · Sweep", id="sweep"):
                gr.Markdown("A grid of recipes (and models) from one YAML file: each cell is a normal run, "
                            "`<workspace>/<sweep>/<cell>/`, listed as run `<sweep>/<cell>`. Same file as "
                            "`python -m mxlab sweep FILE`; cells already finished with the same settings are kept.")
                with gr.Row():
                    with gr.Column(scale=3):
                        sweep_yaml = gr.Code(value=sweepview.EXAMPLE, language="yaml", label="sweep.yaml",
                                             interactive=True, elem_id="sweep-yaml")
                    with gr.Column(scale=2):
                        sweep_file = gr.File(label="...or upload a sweep .yaml", file_types=[".yaml", ".yml"],
                                             height=80, elem_id="sweep-upload")
                        sweep_workers = gr.Number(1, precision=0, minimum=1, maximum=sweepview.max_workers(),
                                                  label="Workers", elem_id="sweep-workers",
                                                  info=f"local worker processes, 1 to {sweepview.max_workers()}")
                        with gr.Row():
                            sweep_check_btn = gr.Button("Check", elem_id="sweep-check")
                            sweep_start_btn = gr.Button("Start sweep", variant="primary", elem_id="sweep-start")
                            sweep_cancel_btn = gr.Button("Cancel", variant="stop", elem_id="sweep-cancel")
                sweep_md = gr.Markdown(elem_id="sweep-status", elem_classes=["mx-status"])
                sweep_cells_df = gr.Dataframe(headers=sweepview.CELL_COLUMNS, label="Cells (Check)",
                                              interactive=False, elem_id="sweep-cells", wrap=False, max_height=300)
                with gr.Row():
                    sweep_pick = gr.Dropdown([], label="Sweep in the workspace", scale=3, elem_id="sweep-pick",
                                             **any_value)
                    sweep_value = gr.Dropdown(list(sweepview.VALUES), value="ppl_quant", label="Table value",
                                              elem_id="sweep-value")
                    sweep_refresh_btn = gr.Button("Refresh", elem_id="sweep-refresh", scale=1)
                sweep_status_df = gr.Dataframe(headers=sweepview.STATUS_COLUMNS, label="Cells: status per job",
                                               interactive=False, elem_id="sweep-jobs", wrap=False, max_height=360)
                with gr.Row():
                    sweep_table_df = gr.Dataframe(label="Result table (rows x columns from the sweep's `table`)",
                                                  interactive=False, elem_id="sweep-table", wrap=False)
                    sweep_plot = gr.Plot(label="Heatmap", elem_id="plot-sweep")
                with gr.Row():
                    sweep_cell_pick = gr.Dropdown([], label="Finished cell (a run)", scale=3,
                                                  elem_id="sweep-cell", **any_value)
                    sweep_open_btn = gr.Button("Open in Inspect", elem_id="sweep-open", scale=1)

        # ---- wiring
        # the order of form.FORM_FIELDS, then the step parameters in form.param_keys() order
        recipe_widgets = [weights, acts, block_size, rounding, scale_rule, order, calib_ds, calib_n, calib_len, seed,
                          requant, *param_widgets]
        recipe_inputs = [*recipe_widgets, yaml_box]
        form_outputs = [*recipe_widgets, yaml_box, check_md]

        def import_yaml(text: str):
            """Parse pasted/uploaded YAML and show it in the widgets."""
            try:
                recipe = form.parse_yaml(text)
            except MxlabError as err:
                return [gr.update()] * len(recipe_widgets) + [gr.update(), _status(_error(err))]
            out = form.form_outputs(recipe)
            return [*out[:-1], _status(out[-1])]

        def apply_preset(name: str):
            """Fill the widgets from a preset, with a hint of its cost."""
            try:
                recipe = get_preset(name)
            except MxlabError as err:
                return [gr.update()] * len(recipe_widgets) + [gr.update(), _status(_error(err)), gr.update()]
            out = form.form_outputs(recipe)
            return [*out[:-1], _status(out[-1]), form.cost_hint(recipe)]

        # always_last: a keystroke typed while the previous check runs is not dropped (the last value wins)
        gr.on([w.input for w in recipe_widgets], check_recipe, recipe_inputs, [yaml_box, check_md],
              api_name=False, queue=False, trigger_mode="always_last")
        order.input(order_picker, [order, picked], picked, queue=False, api_name=False, trigger_mode="always_last")
        for btn, action in ((add_btn, "add"), (remove_btn, "remove"), (up_btn, "up"), (down_btn, "down")):
            btn.click(lambda o, p, m, a=action: edit_order(a, o, p, m), [order, picked, method],
                      [order, picked, check_md], queue=False, api_name=False
                      ).then(check_recipe, recipe_inputs, [yaml_box, check_md], queue=False, api_name=False)
        preset.input(apply_preset, preset, [*form_outputs, preset_md], api_name=False,
                     queue=False).then(order_picker, [order, picked], picked, queue=False, api_name=False)
        import_btn.click(import_yaml, yaml_box, form_outputs, api_name=False,
                         queue=False).then(order_picker, [order, picked], picked, queue=False, api_name=False)
        def upload_yaml(path: str):
            """An uploaded recipe file (size-capped, UTF-8) into the widgets."""
            try:
                text = form.read_upload(path)
            except MxlabError as err:
                return [gr.update()] * len(recipe_widgets) + [gr.update(), _status(_error(err))]
            return import_yaml(text)

        yaml_file.upload(upload_yaml, yaml_file, form_outputs, api_name=False
                         ).then(order_picker, [order, picked], picked, queue=False, api_name=False)
        yaml_dl_btn.click(download_recipe, [yaml_box, state], [check_md, yaml_dl], api_name=False)

        model_outputs = [model_md, source, layers_df, run_model_md]
        load_btn.click(load_model_info, [source, yaml_box, state], model_outputs, api_name=False)
        source.submit(load_model_info, [source, yaml_box, state], model_outputs, api_name=False)
        pickers = [inspect_pick, compare_pick, export_pick, manage_pick, baseline_pick]
        demo.load(load_model_info, [source, yaml_box, state], model_outputs, api_name=False)
        demo.load(refresh_runs, state, [runs_df, run_model_md, *pickers], api_name=False)

        # many may enter: each is validated at once, then waits in POLICY.gate (fair across sessions)
        runs = dict(concurrency_limit=RUN_ENTRY_LIMIT, concurrency_id="runs")

        def on_job(trigger, fn, inputs, outputs, concurrency_id: str = "runs"):
            """Wire a heavy job's button: a fast unqueued event marks the job waiting (_enqueue), then the queued
            handler runs and ends the mark (_job), so Cancel reaches the job while it waits in Gradio's queue.
            (Not Gradio's validator: its inputs' preprocessing errors would fail the queue join with a bare 400;
            not the Cancel button's cancels=: it drops the job's outputs and never runs the handler.)"""
            trigger(_enqueue, state, None, queue=False, api_name=False, show_progress="hidden").then(
                _job(fn), inputs, outputs, api_name=False, **dict(runs, concurrency_id=concurrency_id))

        run_inputs = [*recipe_inputs, eval_ds, eval_windows, run_name, task_pick, task_limit, state]
        gr.on([task_pick.change, task_limit.input], tasks.cost_line, [task_pick, task_limit], task_cost_md,
              queue=False, api_name=False, trigger_mode="always_last")
        on_job(run_btn.click, run_recipe, run_inputs, [run_md, runs_df, *pickers])
        cancel_btn.click(cancel_run, state, run_md, queue=False, api_name=False)
        for btn, action in ((rename_btn, "rename"), (tag_btn, "tag"), (delete_btn, "delete")):
            btn.click(lambda p, t, s, a=action: manage_run(a, p, t, s), [manage_pick, manage_text, state],
                      [run_md, runs_df, *pickers], api_name=False)

        inspect_inputs = [inspect_pick, layer_pick, metric_pick, state]
        inspect_outputs = [inspect_md, layer_pick, heatmap, scales, waterfall, sens_plot, module_df]
        for event in (inspect_pick.change, layer_pick.input, metric_pick.input):
            event(inspect_selection, inspect_inputs, inspect_outputs, api_name=False)
        sens_btn.click(sensitivity, inspect_inputs, inspect_outputs, api_name=False)
        compare_btn.click(compare_runs, [compare_pick, baseline_pick, state],
                          [compare_md, compare_df, overlay, pareto], api_name=False)
        compare_export_btn.click(export_comparison, [compare_pick, baseline_pick, state], [compare_md, compare_file],
                                 api_name=False)
        export_outputs = [export_md, f_model, f_results, f_records, f_report, f_recipe]
        export_btn.click(export_run, [export_pick, state], export_outputs, api_name=False)
        ct_btn.click(export_compressed, [export_pick, state], [export_md, f_ct], api_name=False)

        # ---- the API (gradio_client, /?view=api): the same handlers with plain values out (_plain), on a
        # hidden trigger. Run pickers take a run id or a picker label (allow_custom_value).
        api = gr.Button(visible=False, elem_id="api-trigger")

        def endpoint(name: str, fn, inputs, outputs: list, **kw):
            api.click(_plain(fn, len(outputs)), inputs, outputs, api_name=name, **kw)

        endpoint("build_recipe", check_recipe, recipe_inputs, [yaml_box, check_md], queue=False)
        endpoint("preset", apply_preset, preset, [*form_outputs, preset_md], queue=False)
        endpoint("import_yaml", import_yaml, yaml_box, form_outputs, queue=False)
        endpoint("load_model", load_model_info, [source, yaml_box, state], model_outputs)
        endpoint("runs", refresh_runs, state, [runs_df, run_model_md])
        # heavy API jobs: /cancel stops one that runs (or waits at the gate); gradio_client's Job.cancel()
        # takes one out of Gradio's queue before it starts
        endpoint("run_form", run_recipe, run_inputs, [run_md, runs_df], **runs)
        # 'run': a model ("" = the session's loaded one) and a recipe as YAML (every field)
        endpoint("run", run_yaml, [source, yaml_box, eval_ds, eval_windows, run_name, task_pick, task_limit, state],
                 [run_md, runs_df], **runs)
        endpoint("task_cost", tasks.cost_line, [task_pick, task_limit], [task_cost_md], queue=False)
        endpoint("cancel", cancel_run, state, [run_md], queue=False)
        endpoint("inspect", inspect_run, inspect_inputs, inspect_outputs)
        endpoint("sensitivity", sensitivity, inspect_inputs, inspect_outputs)
        endpoint("compare", compare_runs, [compare_pick, baseline_pick, state],
                 [compare_md, compare_df, overlay, pareto])
        endpoint("export_comparison", export_comparison, [compare_pick, baseline_pick, state],
                 [compare_md, compare_file])
        endpoint("export", export_run, [export_pick, state], export_outputs)
        endpoint("export_compressed_tensors", export_compressed, [export_pick, state], [export_md, f_ct])

        # ---- the Mix tab's wiring and API (mix_frontier, mix_point, mix_run, mix_recipe)
        def mix_compute(recipe_yaml: str, formats: list[str], method: str, windows: float, seq_len: float,
                        state: SessionState, progress=gr.Progress()):
            """Probe the loaded model under the recipe, solve the frontier; the budget slider spans it."""
            try:
                mix = mixview.compute(state, form.parse_yaml(recipe_yaml), formats, method, windows, seq_len,
                                      lambda f, msg: progress(f, desc=msg))
                budget, (lo, hi) = mixview.default_budget(mix), mixview.budget_bounds(mix)
                chart, grid = mixview.figures(mix, budget)
                return (_status(mixview.frontier_text(mix)), gr.update(minimum=lo, maximum=hi, value=budget),
                        mixview.summary_text(mix, budget), chart, grid, mixview.point_info(mix, budget),
                        mixview.export_note(mix, budget))
            except Cancelled:
                message = "**Cancelled:** no new frontier; the previous one (if any) stays."
            except Exception as err:  # noqa: BLE001
                message = _error(err)
            return (_status(message), *[gr.update()] * 6)

        def mix_choose(budget: float, state: SessionState):
            """The point for the budget: summary, chart with it marked, its grid, its JSON, the export note."""
            try:
                mix = mixview.current(state)
                chart, grid = mixview.figures(mix, budget)
                return (mixview.summary_text(mix, budget), chart, grid, mixview.point_info(mix, budget),
                        mixview.export_note(mix, budget))
            except Exception as err:  # noqa: BLE001
                return (_error(err), *[gr.update()] * 4)

        def mix_run(budget: float, eval_dataset: str, max_eval_windows: float, name: str, state: SessionState,
                    progress=gr.Progress()):
            """Run the chosen point's recipe into the workspace; its measured KL joins the chart."""
            try:
                entry, row = mixview.run_point(state, budget, eval_dataset=eval_dataset,
                                               max_eval_windows=max_eval_windows, name=name or "",
                                               report=lambda f, msg: progress(f, desc=msg))
                mix = state.mix
                chart, _ = mixview.figures(mix, budget)
                message = (views.metrics_markdown(entry) + f" · On the chart: measured KL {row['kl']:.4g} at "
                           f"{row['bits_per_weight']:.4f} bits/weight (predicted {row['predicted_kl']:.4g}).")
                return (_status(message), chart, mixview.summary_text(mix, budget), mixview.point_info(mix, budget),
                        views.runs_rows(state), *_run_pickers(state))
            except Cancelled as err:
                message = f"**Cancelled:** {err}"
            except Exception as err:  # noqa: BLE001
                message = _error(err).replace("**Error:**", "**Error: the run did not start or failed:**")
            return (_status(message), gr.update(), gr.update(), gr.update(), views.runs_rows(state),
                    *_run_pickers(state))

        def mix_recipe(budget: float, state: SessionState):
            """The chosen point's recipe as a YAML file, and whether compressed-tensors applies to it."""
            try:
                path = mixview.recipe_file(state, budget)
                return mixview.export_note(state.mix, budget), str(path)
            except Exception as err:  # noqa: BLE001
                return _error(err), None

        mix_inputs = [yaml_box, mix_formats, mix_method, mix_windows, mix_seq, state]
        mix_outputs = [mix_md, mix_budget, mix_summary, mix_chart, mix_grid, mix_point, mix_note]
        mix_run_inputs = [mix_budget, eval_ds, eval_windows, mix_run_name, state]
        mix_run_outputs = [mix_md, mix_chart, mix_summary, mix_point, runs_df, *pickers]
        mix_point_outputs = [mix_summary, mix_chart, mix_grid, mix_point, mix_note]
        on_job(mix_btn.click, mix_compute, mix_inputs, mix_outputs)
        mix_cancel_btn.click(cancel_run, state, mix_md, queue=False, api_name=False)
        mix_budget.input(mix_choose, [mix_budget, state], mix_point_outputs, api_name=False,
                         trigger_mode="always_last")
        on_job(mix_run_btn.click, mix_run, mix_run_inputs, mix_run_outputs)
        mix_recipe_btn.click(mix_recipe, [mix_budget, state], [mix_note, mix_file], api_name=False)
        endpoint("mix_frontier", mix_compute, mix_inputs, mix_outputs, **runs)
        endpoint("mix_point", mix_choose, [mix_budget, state], mix_point_outputs)
        endpoint("mix_run", mix_run, mix_run_inputs, mix_run_outputs[:5], **runs)
        endpoint("mix_recipe", mix_recipe, [mix_budget, state], [mix_note, mix_file])
        # ---- the scale lab (tab, events and its API endpoints 'scale_lab', 'scale_lab_summary')
        def scale_lab_layer(fmt: str, block: float, rounding_: str, n_tokens: float, layer: str,
                            state_: SessionState):
            """Every scale rule on one layer of the loaded model: (note, layer picker, rule table, figure)."""
            try:
                q = scaleview.make_query(state_.model_source, fmt, block, rounding_, n_tokens)
                view = scaleview.layer_view(state_, q, layer or None)
            except Exception as err:  # noqa: BLE001 - shown to the user, the tab stays usable
                return _status(_error(err)), gr.update(), None, None
            return (_status(view["note"]), gr.update(choices=view["layers"], value=view["layer"]), view["table"],
                    view["figure"])

        def scale_lab_summary(fmt: str, block: float, rounding_: str, n_tokens: float, state_: SessionState,
                              progress=gr.Progress()):
            """The mean over every layer per rule (waits at the server's gate; Cancel stops it)."""
            try:
                q = scaleview.make_query(state_.model_source, fmt, block, rounding_, n_tokens)
                view = scaleview.summary_view(state_, q, lambda f, msg: progress(f, desc=msg))
            except Cancelled as err:
                return _status(f"**Cancelled:** {err}"), None
            except Exception as err:  # noqa: BLE001
                return _status(_error(err)), None
            return _status(view["note"]), view["table"]

        sl_inputs = [sl_fmt, sl_block, sl_rounding, sl_tokens, sl_layer, state]
        sl_outputs = [sl_md, sl_layer, sl_table, sl_plot]
        gr.on([scale_tab.select, sl_fmt.input, sl_block.input, sl_rounding.input, sl_tokens.input, sl_layer.input],
              scale_lab_layer, sl_inputs, sl_outputs, api_name=False, trigger_mode="always_last")
        sl_sum_inputs = [sl_fmt, sl_block, sl_rounding, sl_tokens, state]
        sl_heavy = dict(concurrency_limit=RUN_ENTRY_LIMIT, concurrency_id="scalelab-summary")
        on_job(sl_sum_btn.click, scale_lab_summary, sl_sum_inputs, [sl_sum_md, sl_sum_df], "scalelab-summary")
        sl_cancel.click(cancel_run, state, sl_sum_md, queue=False, api_name=False)
        endpoint("scale_lab", scale_lab_layer, sl_inputs, sl_outputs)
        endpoint("scale_lab_summary", scale_lab_summary, sl_sum_inputs, [sl_sum_md, sl_sum_df], **sl_heavy)
        # ---- sweep tab wiring (mxlab/lab/sweepview.py); Cancel is the session's, as on the Run tab
        sweep_view_outputs = [sweep_md, sweep_status_df, sweep_table_df, sweep_plot, sweep_cell_pick]
        sweep_start_outputs = [*sweep_view_outputs, sweep_pick, sweep_cells_df, runs_df, *pickers]
        sweep_check_btn.click(sweep_check, [sweep_yaml, sweep_workers, state], [sweep_md, sweep_cells_df],
                              api_name=False)
        sweep_file.upload(sweep_upload, sweep_file, [sweep_yaml, sweep_md], api_name=False)
        on_job(sweep_start_btn.click, sweep_start, [sweep_yaml, sweep_workers, sweep_value, state],
               sweep_start_outputs)
        sweep_cancel_btn.click(cancel_run, state, sweep_md, queue=False, api_name=False)
        demo.load(sweep_list, state, sweep_pick, api_name=False)
        sweep_refresh_btn.click(sweep_list, [state, sweep_pick], sweep_pick, api_name=False).then(
            sweep_show, [sweep_pick, sweep_value, state], sweep_view_outputs, api_name=False)
        gr.on([sweep_pick.change, sweep_value.input], sweep_show, [sweep_pick, sweep_value, state],
              sweep_view_outputs, api_name=False)
        sweep_open_btn.click(sweep_open, [sweep_cell_pick, state],
                             [sweep_md, inspect_pick, export_pick, compare_pick, tabs], api_name=False)
        endpoint("sweep_check", sweep_check, [sweep_yaml, sweep_workers, state], [sweep_md, sweep_cells_df],
                 queue=False)
        endpoint("sweep_start", sweep_run, [sweep_yaml, sweep_workers, sweep_value, state], sweep_view_outputs,
                 **runs)
        endpoint("sweeps", sweep_names, state, [sweep_md], queue=False)
        endpoint("sweep_status", sweep_show, [sweep_pick, sweep_value, state], sweep_view_outputs)
        endpoint("sweep_open", sweep_open, [sweep_cell_pick, state], [sweep_md, inspect_pick])
    return demo


def _param_widget(method: str, f, params: dict, cls: type) -> gr.components.Component:
    """A widget for one step parameter, typed by the field's default; its doc line from the config's Args."""
    default = form.field_default(f)
    value = params.get(method, {}).get(f.name, default)
    label = f.name.replace("_", " ")
    kw = dict(label=label, elem_id=f"param-{method}-{f.name}", info=form.field_help(cls, f.name))
    if isinstance(default, bool):
        return gr.Checkbox(value=value, **kw)
    if isinstance(default, str):  # a choice, e.g. gptq's mx_update: the field lists its options
        return gr.Dropdown(choices=list(f.metadata.get("choices", [default])), value=value, **kw)
    if isinstance(default, int):
        return gr.Number(value=value, precision=0, minimum=0, maximum=100_000, **kw)
    return gr.Number(value=value, step=0.05, **kw)


RUN_ENTRY_LIMIT = 32  # run requests inside the server at once (validated, then waiting at the gate)


def launch_kwargs() -> dict[str, Any]:
    """What launch() needs besides host/port (theme and CSS live here since Gradio 6); uploads capped."""
    return dict(theme=gr.themes.Soft(primary_hue="indigo"), css=CSS, footer_links=["api"],
                max_file_size=bound("upload bytes"))


def auth_for(host: str, share: bool, password_file: str | None) -> tuple[str, str] | None:
    """Gradio's (user, password) from ``password_file`` ("user:password" or a password for user mxlab).

    Warns when the app is reachable beyond this machine (a non-loopback host or --share) without one.
    """
    exposed = share or host not in ("127.0.0.1", "localhost", "::1")
    if password_file is None:
        if exposed:
            log.warning("the app is reachable beyond this machine (%s) and has no password: anyone who can "
                        "reach it can run jobs on this machine; pass --password-file FILE",
                        "--share" if share else f"--host {host}")
        return None
    from pathlib import Path

    try:
        text = Path(password_file).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise MxlabError(f"--password-file {password_file}: cannot read it ({e}); give a text file "
                         "holding user:password") from None
    user, _, password = text.partition(":") if ":" in text else ("mxlab", "", text)
    if len(password) < 8:
        raise MxlabError("--password-file: the password must be at least 8 characters")
    return user, password


def main(argv: list[str] | None = None) -> None:
    """Parse flags and serve the app until interrupted."""
    parser = argparse.ArgumentParser(description="mxlab: the microscaling quantization lab (Gradio app)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (needs network)")
    parser.add_argument("--workspace", default=None,
                        help="folder of run directories the app lists and writes (default ./mxlab-runs)")
    parser.add_argument("--concurrency", type=int, default=1,
                        help="runs executed at the same time across all users (others wait in the queue)")
    parser.add_argument("--allow-path", action="append", default=[], metavar="DIR",
                        help="a directory whose files clients may name as model or text sources (repeatable); "
                             "besides it only the embedded sets, the workspace and the start directory")
    parser.add_argument("--password-file", metavar="FILE",
                        help="require a login (FILE holds user:password); advised with --share or a public --host")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        POLICY.configure(args.allow_path, concurrency=args.concurrency, workspace=ws.resolve(args.workspace))
        auth = auth_for(args.host, args.share, args.password_file)
    except MxlabError as err:
        parser.exit(2, f"app.py: error: {err}\n")
    clean_stale_exports(POLICY.workspace)
    demo = build(workspace=args.workspace)
    demo.queue(default_concurrency_limit=args.concurrency)
    try:
        demo.launch(server_name=args.host, server_port=args.port, share=args.share, auth=auth, **launch_kwargs())
    finally:
        POLICY.shutdown()


if __name__ == "__main__":
    main()
