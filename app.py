"""mxlab's Gradio app: widgets -> Recipe -> library calls. No tensor math lives here.

    python app.py [--host 127.0.0.1] [--port 7860] [--share] [--allow-path DIR ...] [--password-file F]

Every helper that is not a widget lives in ``mxlab/lab/`` (unit-tested without gradio): ``session``
(state, runs), ``form`` (widgets <-> Recipe) and ``views`` (what is shown). ``build()`` creates the
widgets and wires them; handlers that need widgets close over the components of that one Blocks.
"""
from __future__ import annotations

import argparse
import logging
from typing import Any

import gradio as gr

from mxlab.data import DATASETS
from mxlab.atomic import clean_stale_exports
from mxlab.errors import Cancelled, MxlabError
from mxlab.formats import FORMATS, ROUNDINGS
from mxlab.lab import form, session, views
from mxlab.lab.server import POLICY
from mxlab.lab.session import SessionState
from mxlab.limits import bound
from mxlab.models import load_model
from mxlab.presets import PRESETS, get_preset
from mxlab.recipe import Recipe

log = logging.getLogger("mxlab.app")

HELP = """# mxlab: microscaling quantization lab
Quantize a causal LM into **MX formats** (MXINT, MXFP) or INT/NVFP4 baselines, choose the
**order** of methods (SmoothQuant, AWQ, GPTQ, RTN), run, then look inside. Work top to bottom:
**Model -> Recipe -> Run -> Inspect / Compare -> Export**. The embedded model (stories260K) runs offline in seconds."""

CSS = """
.gradio-container {max-width: 1280px !important; margin: auto;}
#status-run, #status-model, #recipe-check {min-height: 2.2em;}
.step-box {border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 6px;}
footer {display: none !important;}
"""


# ----------------------------------------------------------------------------- handlers
def _oneline(err: Exception) -> str:
    """An exception's message on one line (YAML errors span several)."""
    return " ".join(str(err).split())


def _error(err: Exception) -> str:
    """A message for the UI; unexpected errors are logged with their traceback."""
    if isinstance(err, MxlabError):
        return f"**Error:** {_oneline(err)}"
    log.exception("unexpected error")
    return f"**Error:** unexpected {type(err).__name__}: {_oneline(err)}"


def load_model_info(source: str, recipe_yaml: str, state: SessionState):
    """Load a model (None -> embedded default) and describe it and the layers the recipe quantizes."""
    src = form.normalize_source(source)
    name = src or form.DEFAULT_SOURCE
    try:
        recipe = form.parse_yaml(recipe_yaml)
        session.check_sources(src, None, None)      # a client may read only the allowed roots
        model, _ = load_model(src)
        summary = views.model_summary(model, recipe)
        del model
    except Exception as err:  # noqa: BLE001 - shown to the user, app stays usable
        return _error(err) + "\n\nThe previous model stays selected.", gr.update(), state
    state.model_source, state.model_summary = src, summary
    return views.summary_markdown(summary, name), views.summary_rows(summary), state


def check_recipe(*values):
    """Build the recipe from the widgets: (YAML, validation message). Live, on every edit."""
    yaml_text, message = form.recipe_check(**form.form_kwargs(values))
    return (yaml_text if yaml_text is not None else gr.update()), message


def build_for_run(*values):
    """The recipe for a run; raises gr.Error so the chained run does not start on a bad recipe."""
    yaml_text, message = form.recipe_check(**form.form_kwargs(values))
    if yaml_text is None:
        raise gr.Error(message.replace("**", ""))
    return yaml_text, message


def run_recipe(source: str, recipe_yaml: str, eval_dataset: str, max_eval_windows: float,
               state: SessionState, progress=gr.Progress()):
    """Run one experiment in the queue; append it to the session's runs table."""
    src = form.normalize_source(source)
    try:
        recipe = form.parse_yaml(recipe_yaml)
        windows = int(max_eval_windows) if max_eval_windows else None
        entry = session.execute_run(state, src, recipe, eval_dataset=eval_dataset, max_eval_windows=windows,
                                    report=lambda f, msg: progress(f, desc=msg))
        message = "**Done.** " + views.metrics_markdown(entry) + \
            f" Workspace: {POLICY.workspace_bytes() / 2**20:.1f} MB."
    except Cancelled as err:
        message = f"**Cancelled:** {err}"
    except Exception as err:  # noqa: BLE001
        message = _error(err)
    return (message, views.runs_rows(state), *_run_pickers(state), state)


def cancel_run(state: SessionState):
    """Ask this session's running job to stop at its next progress report."""
    if state.request_cancel():
        return "**Cancelling** at the next step..."
    return "Nothing is running."


def _run_pickers(state: SessionState):
    labels = state.labels()
    latest = labels[-1] if labels else None
    return (gr.update(choices=labels, value=latest), gr.update(choices=labels, value=labels[-2:]),
            gr.update(choices=labels, value=latest))


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
        return gr.update(), gr.update(), _error(err)
    choices = form.order_choices(steps)
    return form.format_order(steps), gr.update(choices=choices, value=choices[index] if choices else None), None


def order_picker(order: str, selected: str):
    """Keep the step picker in sync with a hand-edited order."""
    choices = form.order_choices(form.parse_order(order))
    return gr.update(choices=choices, value=selected if selected in choices else (choices[-1] if choices else None))


def inspect_run(run_label: str, layer: str, state: SessionState):
    """Figures and the per-module table for one run (and one layer)."""
    if not run_label:
        return ("Run a recipe first; its figures appear here.", gr.update(), None, None, None, None, None)
    try:
        entry = state.get(run_label)
        layers = views.run_layers(entry)
        layer = layer if layer in layers else views.ALL_LAYERS
        figs = views.run_figures(entry, layer)
        table = views.module_table(entry, layer)
    except Exception as err:  # noqa: BLE001
        return (_error(err), gr.update(), None, None, None, None, None)
    note = "" if figs["sensitivity"] is not None else "Press **Compute sensitivity** for the ranking."
    return (note, gr.update(choices=[views.ALL_LAYERS, *layers], value=layer), figs["heatmap"], figs["scales"],
            figs["waterfall"], figs["sensitivity"], table)


def sensitivity(run_label: str, layer: str, state: SessionState, progress=gr.Progress()):
    """Quantize one module at a time (RTN) and rank them by KL to the FP model; then redraw."""
    try:
        session.compute_sensitivity(state.get(run_label), report=lambda f, msg: progress(f, desc=msg))
    except Exception as err:  # noqa: BLE001
        return (_error(err), gr.update(), None, None, None, None, None)
    return inspect_run(run_label, layer, state)


def compare_runs(labels: list[str], state: SessionState):
    """Overlay the per-layer errors of the chosen runs and place them on perplexity vs bits."""
    try:
        entries = [state.get(label) for label in (labels or [])]
        figs = views.compare_figures(entries)
    except Exception as err:  # noqa: BLE001
        return _error(err), None, None
    return "", figs["layers"], figs["pareto"]


def export_run(run_label: str, state: SessionState):
    """The run's downloadable files: packed model (zip), results JSON, records CSV, report, recipe."""
    try:
        files = session.export_files(state.get(run_label))
    except Exception as err:  # noqa: BLE001
        return (_error(err), *[None] * 5)
    paths = [str(files[k]) if k in files else None for k in ("model", "results", "records", "report", "recipe")]
    return (f"**Ready:** the files of run {run_label}.", *paths)


# ----------------------------------------------------------------------------- layout
def build(default_preset: str | None = None) -> gr.Blocks:
    """The app's Blocks (not launched)."""
    start = get_preset(default_preset) if default_preset else Recipe.from_dict(form.START_RECIPE)
    values = form.recipe_values(start)
    formats = ["none", *sorted(FORMATS)]
    classes = form.step_classes()

    # delete_cache: Gradio's cached files (uploads, downloads) older than an hour go, checked every 10 min
    with gr.Blocks(title="mxlab", analytics_enabled=False, delete_cache=(600, 3600)) as demo:
        state = gr.State(SessionState, delete_callback=lambda s: s.close())
        gr.Markdown(HELP)
        with gr.Tabs():
            with gr.Tab("1 · Model", id="model"):
                gr.Markdown("A Hugging Face hub id, a local model directory, or empty for the embedded default. "
                            "Only safetensors checkpoints load (no pickles).")
                with gr.Row():
                    source = gr.Textbox(label="Model", placeholder=form.DEFAULT_SOURCE, scale=4,
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
                    block_size = gr.Dropdown([8, 16, 32, 64, 128], value=values["block_size"], label="Block size",
                                             allow_custom_value=True, info="elements per shared scale")
                    rounding = gr.Radio(list(ROUNDINGS), value=values["rounding"], label="Rounding")
                gr.Markdown("**Method order**: steps run in this order on every decoder block "
                            "(e.g. AWQ then GPTQ; what no step quantized gets round-to-nearest at the end).")
                with gr.Row(equal_height=True):
                    order = gr.Textbox(value=values["order"], label="Order", scale=3, elem_id="method-order",
                                       info="comma-separated; edit here or with the buttons")
                    picked = gr.Radio(form.order_choices(form.parse_order(values["order"])), label="Selected step",
                                      scale=3, elem_id="order-picker")
                with gr.Row(equal_height=True):
                    method = gr.Dropdown(list(classes), value=next(iter(classes)), label="Method to add",
                                         scale=2, elem_id="add-method")
                    add_btn = gr.Button("+ Add", elem_id="order-add", size="md")
                    remove_btn = gr.Button("× Remove selected", elem_id="order-remove", size="md")
                    up_btn = gr.Button("↑ Move up", elem_id="order-up", size="md")
                    down_btn = gr.Button("↓ Move down", elem_id="order-down", size="md")
                check_md = gr.Markdown(form.validation_message(start), elem_id="recipe-check")
                param_widgets = []
                with gr.Accordion("Step parameters", open=False):
                    with gr.Row():
                        for name, cls in classes.items():
                            fields = form.step_param_fields(cls)
                            if not fields:
                                continue
                            with gr.Column(elem_classes="step-box", min_width=200):
                                gr.Markdown(f"**{name}**")
                                for f in fields:
                                    param_widgets.append(_param_widget(name, f, values["params"]))
                with gr.Accordion("Recipe as YAML (import / export)", open=False):
                    yaml_box = gr.Code(value=start.to_yaml(), language="yaml", label="recipe.yaml",
                                       interactive=True, elem_id="recipe-yaml")
                    with gr.Row():
                        import_btn = gr.Button("Import YAML into the widgets", elem_id="import-yaml")
                        yaml_file = gr.File(label="...or upload a .yaml", file_types=[".yaml", ".yml"], height=80)

            with gr.Tab("3 · Run", id="run"):
                gr.Markdown("Runs the recipe of tab 2 on the model of tab 1: FP evaluation, calibration, the "
                            "steps block by block, quantized evaluation (perplexity, KL and top-1 agreement "
                            "against FP), then the export. Each run is added to this session's table.")
                with gr.Row():
                    calib_ds = gr.Dropdown(list(DATASETS), value=values["calib_dataset"], label="Calibration set")
                    calib_n = gr.Number(values["calib_samples"], precision=0, label="Calibration samples",
                                        minimum=1, elem_id="calib-n")
                    calib_len = gr.Number(values["calib_seq_len"], precision=0, label="Tokens per sample",
                                          minimum=8, elem_id="calib-len")
                    seed = gr.Number(values["seed"], precision=0, label="Seed")
                    eval_ds = gr.Dropdown(list(DATASETS), value="tinystories", label="Evaluation set")
                    eval_windows = gr.Number(form.DEFAULT_EVAL_WINDOWS, precision=0, label="Eval windows",
                                             info="of 512 tokens; 0: the whole set", minimum=0,
                                             elem_id="eval-windows")
                with gr.Row():
                    run_btn = gr.Button("Run", variant="primary", elem_id="run-btn", scale=3)
                    cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel-btn", scale=1)
                run_md = gr.Markdown(elem_id="status-run")
                runs_df = gr.Dataframe(headers=views.RUN_COLUMNS, label="Runs in this session", interactive=False,
                                       elem_id="runs-table")

            with gr.Tab("4 · Inspect", id="inspect"):
                with gr.Row():
                    inspect_pick = gr.Dropdown([], label="Run", elem_id="inspect-run", allow_custom_value=True)
                    layer_pick = gr.Dropdown([views.ALL_LAYERS], value=views.ALL_LAYERS, label="Layer")
                    sens_btn = gr.Button("Compute sensitivity", elem_id="sens-btn")
                inspect_md = gr.Markdown()
                with gr.Row():
                    heatmap = gr.Plot(label="Activation outliers (channels x layers)", elem_id="plot-heatmap")
                    scales = gr.Plot(label="MX scale exponents", elem_id="plot-scales")
                with gr.Row():
                    waterfall = gr.Plot(label="Error by step", elem_id="plot-waterfall")
                    sens_plot = gr.Plot(label="Sensitivity (one module quantized at a time)",
                                        elem_id="plot-sensitivity")
                module_df = gr.Dataframe(label="Per-module records", interactive=False, max_height=360)

            with gr.Tab("5 · Compare", id="compare"):
                compare_pick = gr.CheckboxGroup([], label="Runs to compare (two or more)")
                compare_btn = gr.Button("Compare", variant="primary")
                compare_md = gr.Markdown()
                with gr.Row():
                    overlay = gr.Plot(label="Per-layer error, run by run")
                    pareto = gr.Plot(label="Perplexity vs bits per weight")

            with gr.Tab("6 · Export", id="export"):
                gr.Markdown("The packed checkpoint (`mxlab.load_quantized` reloads it), the metrics and per-layer "
                            "records, a self-contained HTML report to send around, and the recipe to rerun it "
                            "(`python -m mxlab run --recipe recipe.yaml`).")
                with gr.Row():
                    export_pick = gr.Dropdown([], label="Run", elem_id="export-run", scale=3, allow_custom_value=True)
                    export_btn = gr.Button("Prepare downloads", variant="primary", elem_id="export-btn", scale=1)
                export_md = gr.Markdown()
                with gr.Row():
                    f_model = gr.File(label="Packed model (.zip)", elem_id="dl-model", min_width=360)
                    f_results = gr.File(label="results.json", elem_id="dl-results", min_width=360)
                    f_records = gr.File(label="records.csv", elem_id="dl-records", min_width=360)
                    f_report = gr.File(label="report.html", elem_id="dl-report", min_width=360)
                    f_recipe = gr.File(label="recipe.yaml", elem_id="dl-recipe", min_width=360)

        # ---- wiring
        # the order of form.FORM_FIELDS, then the step parameters in form.param_keys() order
        recipe_widgets = [weights, acts, block_size, rounding, order, calib_ds, calib_n, calib_len, seed,
                          *param_widgets]
        recipe_inputs = [*recipe_widgets, yaml_box]

        def import_yaml(text: str):
            """Parse pasted/uploaded YAML and show it in the widgets."""
            try:
                recipe = form.parse_yaml(text)
            except MxlabError as err:
                return [gr.update()] * len(recipe_widgets) + [gr.update(), _error(err)]
            return form.form_outputs(recipe)

        def apply_preset(name: str):
            """Fill the widgets from a preset."""
            try:
                recipe = get_preset(name)
            except MxlabError as err:
                return [gr.update()] * len(recipe_widgets) + [gr.update(), _error(err)]
            return form.form_outputs(recipe)

        gr.on([w.input for w in recipe_widgets], check_recipe, recipe_inputs, [yaml_box, check_md],
              api_name="build_recipe", queue=False)
        order.input(order_picker, [order, picked], picked, queue=False, api_name=False)
        for btn, action in ((add_btn, "add"), (remove_btn, "remove"), (up_btn, "up"), (down_btn, "down")):
            btn.click(lambda o, p, m, a=action: edit_order(a, o, p, m), [order, picked, method],
                      [order, picked, check_md], queue=False, api_name=False
                      ).then(check_recipe, recipe_inputs, [yaml_box, check_md], queue=False, api_name=False)
        preset.input(apply_preset, preset, [*recipe_widgets, yaml_box, check_md], api_name="preset",
                     queue=False).then(order_picker, [order, picked], picked, queue=False, api_name=False)
        import_btn.click(import_yaml, yaml_box, [*recipe_widgets, yaml_box, check_md], api_name="import_yaml",
                         queue=False).then(order_picker, [order, picked], picked, queue=False, api_name=False)
        def upload_yaml(path: str):
            """An uploaded recipe file (size-capped, UTF-8) into the widgets."""
            try:
                text = form.read_upload(path)
            except MxlabError as err:
                return [gr.update()] * len(recipe_widgets) + [gr.update(), _error(err)]
            return import_yaml(text)

        yaml_file.upload(upload_yaml, yaml_file,
                         [*recipe_widgets, yaml_box, check_md], api_name=False
                         ).then(order_picker, [order, picked], picked, queue=False, api_name=False)

        load_btn.click(load_model_info, [source, yaml_box, state], [model_md, layers_df, state], api_name="load_model")
        source.submit(load_model_info, [source, yaml_box, state], [model_md, layers_df, state], api_name=False)
        demo.load(load_model_info, [source, yaml_box, state], [model_md, layers_df, state], api_name=False)

        pickers = [inspect_pick, compare_pick, export_pick]
        run_btn.click(build_for_run, recipe_inputs, [yaml_box, check_md], api_name=False, queue=False).success(
            # api "run": a model + a recipe as YAML in, metrics and the runs table out (gradio_client)
            run_recipe, [source, yaml_box, eval_ds, eval_windows, state], [run_md, runs_df, *pickers, state],
            # many may enter: each is validated at once, then waits in POLICY.gate (fair across sessions)
            api_name="run", concurrency_limit=RUN_ENTRY_LIMIT, concurrency_id="run")
        cancel_btn.click(cancel_run, state, run_md, queue=False, api_name="cancel")

        inspect_args = dict(fn=inspect_run, inputs=[inspect_pick, layer_pick, state],
                            outputs=[inspect_md, layer_pick, heatmap, scales, waterfall, sens_plot, module_df])
        inspect_pick.change(**inspect_args, api_name="inspect")
        layer_pick.input(**inspect_args, api_name=False)
        sens_btn.click(sensitivity, inspect_args["inputs"], inspect_args["outputs"], api_name="sensitivity")
        compare_btn.click(compare_runs, [compare_pick, state], [compare_md, overlay, pareto], api_name="compare")
        export_btn.click(export_run, [export_pick, state],
                         [export_md, f_model, f_results, f_records, f_report, f_recipe], api_name="export")
    return demo


def _param_widget(method: str, f, params: dict) -> gr.components.Component:
    """A widget for one step parameter, typed by the field's default."""
    default = form.field_default(f)
    value = params.get(method, {}).get(f.name, default)
    label = f.name.replace("_", " ")
    if isinstance(default, bool):
        return gr.Checkbox(value=value, label=label, elem_id=f"param-{method}-{f.name}")
    if isinstance(default, str):  # a choice, e.g. gptq's mx_update: the field lists its options
        return gr.Dropdown(choices=list(f.metadata.get("choices", [default])), value=value, label=label,
                           elem_id=f"param-{method}-{f.name}")
    if isinstance(default, int):
        return gr.Number(value=value, precision=0, label=label, elem_id=f"param-{method}-{f.name}")
    return gr.Number(value=value, label=label, step=0.05, elem_id=f"param-{method}-{f.name}")


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
    parser.add_argument("--concurrency", type=int, default=1,
                        help="runs executed at the same time across all users (others wait in the queue)")
    parser.add_argument("--allow-path", action="append", default=[], metavar="DIR",
                        help="a directory whose files clients may name as model or text sources (repeatable); "
                             "besides it only the embedded sets, the workspace and the start directory")
    parser.add_argument("--workspace", metavar="DIR", help="where session folders go (default: a temporary folder)")
    parser.add_argument("--password-file", metavar="FILE",
                        help="require a login (FILE holds user:password); advised with --share or a public --host")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        POLICY.configure(args.allow_path, concurrency=args.concurrency, workspace=args.workspace)
        auth = auth_for(args.host, args.share, args.password_file)
    except MxlabError as err:
        parser.exit(2, f"app.py: error: {err}\n")
    clean_stale_exports(POLICY.workspace)
    demo = build()
    demo.queue(default_concurrency_limit=args.concurrency)
    try:
        demo.launch(server_name=args.host, server_port=args.port, share=args.share, auth=auth, **launch_kwargs())
    finally:
        POLICY.shutdown()


if __name__ == "__main__":
    main()
