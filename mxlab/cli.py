"""The command line: ``python -m mxlab run | mix | eval | report | presets | formats``.

Exit codes scripts can rely on: 0 ok, 2 a usage or user error (one line on stderr, no traceback),
130 cancelled (Ctrl-C), 1 an unexpected error (traceback; please report it).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from pathlib import Path
from typing import Any, Sequence

from . import __version__
from .errors import Cancelled, MxlabError

log = logging.getLogger("mxlab.cli")

EXIT_OK, EXIT_UNEXPECTED, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130

MAIN_EPILOG = """\
examples:
  python -m mxlab run --out runs/w4a8                         # embedded model, default recipe (W-MXINT4 A-MXINT8)
  python -m mxlab run --weights mxint4 --acts mxint8 --block-size 32 --steps awq,gptq \\
        --calib tinystories --calib-samples 32 --eval tinystories --out runs/awq-gptq
  python -m mxlab run --preset paper-awq-gptq-w4a8 --model path/to/hf-model --device cuda --out runs/p
  python -m mxlab run --recipe my_recipe.yaml --out runs/mine  # a recipe written by the app or by hand
  python -m mxlab eval --model runs/w4a8/model                 # perplexity of an exported checkpoint
  python -m mxlab report runs/w4a8                             # rebuild runs/w4a8/report.html
  python -m mxlab presets ; python -m mxlab formats            # what you can choose from

Exit codes: 0 ok, 2 usage/user error, 130 cancelled, 1 unexpected error.
"""

RUN_EPILOG = """\
The recipe comes from exactly one of: --recipe FILE (YAML or JSON), --preset NAME, or the format
and step flags (--weights --acts --block-size --rounding --steps). --calib* flags apply to all three.

stdout gets the metrics as one JSON object (progress and logs go to stderr).
DIR receives: results.json (metrics.ppl_fp, metrics.ppl_quant, kl, top1, bits_per_weight, the recipe,
per-layer records, statistics), recipe.yaml, *.csv tables, report.html and model/ (the packed MX
checkpoint; reload it with mxlab.load_quantized("DIR/model")).

examples:
  python -m mxlab run --weights mxint4 --acts mxint8 --steps awq,gptq --out runs/a
  python -m mxlab run --weights int4 --acts int8 --steps smoothquant,gptq --out runs/int-baseline
  python -m mxlab run --preset paper-awq-gptq-w4a8 --calib-samples 16 --max-eval-windows 8 --out runs/quick
"""

FORMAT_FLAGS = ("weights", "acts", "block_size", "rounding", "steps")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keep the hand-wrapped examples in epilogs as written."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of every subcommand (kept separate so tests can inspect it)."""
    parser = argparse.ArgumentParser(
        prog="python -m mxlab", formatter_class=_Formatter, epilog=MAIN_EPILOG,
        description="mxlab: post-training quantization of LLMs into microscaling (MX) formats.")
    parser.add_argument("--version", action="version", version=f"mxlab {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings only, no progress bar")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", formatter_class=_Formatter, epilog=RUN_EPILOG,
                         help="quantize a model, evaluate it, write results/report/checkpoint",
                         description="Quantize a model with a recipe, evaluate FP and quantized "
                                     "perplexity (+KL, top-1 agreement), export everything to --out.")
    _model_args(run)
    _recipe_args(run)
    _eval_args(run)
    run.add_argument("--out", metavar="DIR", help="write results.json, report.html, recipe.yaml, model/ here")
    run.add_argument("--overwrite", action="store_true", help="replace DIR if it already exists")
    run.add_argument("--no-kl", action="store_true", help="skip KL/top-1 (saves one FP model copy in memory)")
    run.add_argument("--offload", choices=("auto", "always", "never"), default="auto",
                     help="keep the model on the CPU and stream one decoder block at a time to --device: auto "
                          "(default) when the weights take more than half of the GPU's memory")

    _mix_parser(sub)
    _sweep_parser(sub)

    ev = sub.add_parser("eval", formatter_class=_Formatter, help="perplexity of a model or an exported checkpoint",
                        description="Perplexity of a model (hub id, local HF dir, embedded default) or of an "
                                    "mxlab packed checkpoint directory (e.g. runs/x/model).",
                        epilog="examples:\n  python -m mxlab eval                       # embedded model\n"
                               "  python -m mxlab eval --model runs/a/model --eval wikitext2 --json")
    _model_args(ev)
    _eval_args(ev)
    ev.add_argument("--json", action="store_true", help="print the result as one JSON object")
    ev.add_argument("--no-verify", action="store_true",
                    help="load a packed checkpoint whose sha256 is missing or does not match (trusted files only)")

    rep = sub.add_parser("report", formatter_class=_Formatter, help="rebuild report.html from a run's results.json",
                         epilog="example:\n  python -m mxlab report runs/a              # writes runs/a/report.html")
    rep.add_argument("run_dir", metavar="DIR", help="a directory written by `run --out`")
    rep.add_argument("--output", metavar="FILE", help="where to write the HTML (default DIR/report.html)")

    exp = sub.add_parser("export", formatter_class=_Formatter, help="export a packed checkpoint for other runtimes",
                         description="Export an mxlab packed checkpoint (or a run directory) in another layout.",
                         epilog="examples:\n  python -m mxlab export runs/a --format compressed-tensors --out out/ct\n"
                                "  python -m mxlab export runs/a/model --format hf --out out/dense")
    exp.add_argument("source", metavar="SRC", help="a run directory or its model/ (mxlab packed checkpoint)")
    exp.add_argument("--format", required=True, choices=("compressed-tensors", "hf", "mxlab"),
                     help="compressed-tensors (transformers/vLLM load it), hf (dequantized), mxlab (packed)")
    exp.add_argument("--out", required=True, metavar="DIR", help="the directory to write")
    exp.add_argument("--weights-only", action="store_true",
                     help="compressed-tensors: leave out activation quantization it has no scheme for")
    exp.add_argument("--overwrite", action="store_true", help="replace DIR if it exists")

    pre = sub.add_parser("presets", help="list the named recipes", formatter_class=_Formatter)
    pre.add_argument("--show", metavar="NAME", help="print one preset as YAML (a starting point for --recipe)")
    fmt = sub.add_parser("formats", help="table of element formats with their bits per element",
                         formatter_class=_Formatter)
    fmt.add_argument("--block-size", type=_positive_int, default=32, metavar="N", help="block size for the table (default 32)")
    return parser


MIX_EPILOG = """\
Probes every decoder Linear in every candidate format (its weight alone quantized, KL to FP on a
few calibration windows), then solves exactly for every Pareto-optimal assignment (bits per weight,
scales included, vs predicted KL). DIR receives frontier.json, frontier.html, recipe.yaml (the base
recipe with overrides for the point chosen under --budget) and, with --run, run/ (a run directory).

examples:
  python -m mxlab mix --formats mxint4,mxfp6_e2m3,mxint8 --budget 5.0 --out runs/mix5
  python -m mxlab mix --formats mxint4,mxint8 --budget 6 --group qkv --min-bits '*.down_proj=8' --run --out runs/m
"""


def _mix_parser(sub) -> None:
    mix = sub.add_parser("mix", formatter_class=_Formatter, epilog=MIX_EPILOG,
                         help="mixed formats under a bit budget: frontier, recipe, optional run",
                         description="Choose a weight format per module under an average bits-per-weight budget.")
    _model_args(mix)
    _recipe_args(mix)
    _eval_args(mix)
    g = mix.add_argument_group("mix")
    g.add_argument("--formats", required=True, metavar="LIST", help="candidate weight formats, e.g. mxint4,mxint8")
    g.add_argument("--budget", required=True, type=float, metavar="BITS", help="average bits per weight, scales included")
    g.add_argument("--group", action="append", default=[], metavar="G",
                   help="modules of a block sharing one format: qkv, gate_up or patterns a,b (repeatable)")
    g.add_argument("--per-block", action="store_true", help="one format per decoder block")
    g.add_argument("--min-bits", action="append", default=[], metavar="PATTERN=N",
                   help="keep modules matching PATTERN at >= N-bit elements (repeatable)")
    g.add_argument("--method", choices=("rtn", "recipe"), default="rtn",
                   help="probe RTN weights, or the recipe's own GPTQ/RTN weights (default rtn)")
    g.add_argument("--probe-windows", type=_positive_int, default=8, metavar="N", help="calibration windows probed (8)")
    g.add_argument("--probe-seq-len", type=_positive_int, default=256, metavar="L", help="tokens per probe window (256)")
    g.add_argument("--cache-dir", metavar="DIR", help="keep sensitivity results here (keyed on every weight byte)")
    mix.add_argument("--run", action="store_true", help="also run the chosen recipe into DIR/run and add the measured point")
    mix.add_argument("--out", required=True, metavar="DIR", help="write frontier.json, frontier.html, recipe.yaml here")
    mix.add_argument("--overwrite", action="store_true", help="replace DIR if it already exists")


def _recipe_args(p: argparse.ArgumentParser) -> None:
    recipe = p.add_argument_group("recipe (pick one source: --recipe, --preset, or these flags)")
    recipe.add_argument("--recipe", metavar="FILE", help="a recipe YAML/JSON file")
    recipe.add_argument("--preset", metavar="NAME", help="a named recipe (see `python -m mxlab presets`)")
    recipe.add_argument("--weights", metavar="FMT", help="weight format, e.g. mxint4, mxfp4, int4, nvfp4, none "
                        "(default: the recipe default, mxint4)")
    recipe.add_argument("--acts", metavar="FMT", help="activation format, e.g. mxint8, int8, none "
                        "(default: mxint8)")
    recipe.add_argument("--block-size", type=_positive_int, metavar="N", help="MX block size (default 32)")
    recipe.add_argument("--rounding", choices=("nearest", "even", "floor"), help="rounding mode (default nearest)")
    recipe.add_argument("--steps", metavar="LIST", help="comma-separated steps in order, from smoothquant, "
                        "awq, gptq, rtn; e.g. awq,gptq (default: none, plain round-to-nearest MX)")
    calib = p.add_argument_group("calibration")
    calib.add_argument("--calib", metavar="NAME", help="calibration text: tinystories, wikitext2, "
                       "shakespeare or a .txt file (default tinystories)")
    calib.add_argument("--calib-samples", type=_positive_int, metavar="N", help="calibration sequences (default 128)")
    calib.add_argument("--calib-seq-len", type=_positive_int, metavar="L", help="tokens per sequence (default 512)")


SWEEP_EPILOG = """\
FILE: base (model, eval, recipe or preset) and axes (dotted paths into base, crossed), plus optional
exclude rules and table {rows, columns, value}; see benchmarks/study_table.yaml.
Each job is a run directory DIR/<sweep name>/<cell>/; DIR/<sweep name>/ also gets table.csv,
table.md, report.html. Re-running skips finished cells and retries failed ones.

examples:
  python -m mxlab sweep benchmarks/study_table.yaml --dry-run       # the jobs, their cost, the memory plan
  python -m mxlab sweep benchmarks/study_table.yaml --workers 2
  python -m mxlab sweep grid.yaml --ray auto                          # Ray tasks (a running cluster, else local)
"""


def _sweep_parser(sub: Any) -> None:
    sw = sub.add_parser("sweep", formatter_class=_Formatter, epilog=SWEEP_EPILOG,
                        help="run a grid of recipes/models as parallel jobs (local or Ray)",
                        description="Expand a sweep file into jobs and run them in parallel.")
    sw.add_argument("file", metavar="FILE", help="the sweep YAML file")
    sw.add_argument("--workspace", metavar="DIR", default="runs", help="where sweeps go (default ./runs)")
    sw.add_argument("--workers", type=_positive_int, metavar="N",
                    help="local worker processes (default: GPUs x jobs per GPU of the memory plan, or cores/4)")
    sw.add_argument("--ray", metavar="auto|ADDRESS", help="run the jobs as Ray tasks (auto: a running cluster, "
                    "else a local Ray)")
    sw.add_argument("--gpus-per-job", type=float, metavar="G", help="Ray: GPUs per task (default 1 on a GPU "
                    "cluster; a fraction packs several jobs per GPU)")
    sw.add_argument("--only", metavar="GLOBS", help="run only cells whose names match these comma-separated "
                    "patterns, e.g. '*method-RTN,*method-GPTQ' (see --dry-run for the names)")
    sw.add_argument("--dry-run", action="store_true", help="show the jobs and the plan, run nothing")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="SRC", help="hub id, local directory or .gguf file (default: the embedded "
                                                  "stories260K)")
    p.add_argument("--device", metavar="D", default="auto",
                   help="cpu, cuda, cuda:1 ... or auto (default: cuda if available, else cpu)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="also load .bin/.pt pickle checkpoints (they can run arbitrary code: trusted sources only)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="run model code shipped in the model's repository (trusted sources only)")


def _eval_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("evaluation")
    g.add_argument("--eval", metavar="NAME", default="tinystories",
                   help="evaluation text: tinystories, wikitext2, shakespeare or a .txt file (default tinystories)")
    g.add_argument("--max-eval-windows", type=_positive_int, metavar="N", help="cap the evaluation windows (faster)")
    g.add_argument("--eval-seq-len", type=_positive_int, metavar="L", help="evaluation window (default: model's)")
    z = p.add_argument_group("zero-shot tasks (lm-evaluation-harness)")
    z.add_argument("--tasks", metavar="LIST", help="comma-separated lm-eval tasks: arc_easy, arc_challenge, piqa, "
                   "winogrande, openbookqa, boolq, lambada_openai, hellaswag (offline data shipped)")
    z.add_argument("--limit", type=_positive_int, metavar="N", help="at most N examples per task (quick looks)")
    z.add_argument("--tasks-online", action="store_true", help="use lm-eval's hub datasets instead of the shipped data")
    z.add_argument("--batch-size", type=_positive_int, default=8, metavar="B", help="zero-shot batch size (default 8)")


# ------------------------------------------------------------------------------------- commands
def recipe_from_args(args: argparse.Namespace) -> Any:
    """The Recipe the flags describe: --recipe FILE, --preset NAME or the format/step flags (+ calib flags)."""
    from .presets import get_preset
    from .recipe import Recipe

    given = [f"--{f.replace('_', '-')}" for f in FORMAT_FLAGS if getattr(args, f) is not None]
    if args.recipe and args.preset:
        raise MxlabError("give --recipe or --preset, not both")
    if (args.recipe or args.preset) and given:
        raise MxlabError(f"{' '.join(given)} cannot be combined with --recipe/--preset (the recipe already "
                         "sets formats and steps); edit the recipe file instead")
    if args.recipe:
        data = Recipe.load(args.recipe).to_dict()
    elif args.preset:
        data = get_preset(args.preset).to_dict()
    else:
        data = Recipe().to_dict()
        for key in ("weights", "acts", "block_size", "rounding"):
            if getattr(args, key) is not None:
                data[key] = getattr(args, key)
        if args.steps is not None:
            data["steps"] = [{"name": s.strip().lower()} for s in args.steps.split(",") if s.strip()]
    calib = dict(data.get("calib") or {})
    for flag, key in (("calib", "dataset"), ("calib_samples", "n_samples"), ("calib_seq_len", "seq_len")):
        if getattr(args, flag) is not None:
            calib[key] = getattr(args, flag)
    data["calib"] = calib
    return Recipe.from_dict(data)


def _progress(args: argparse.Namespace, desc: str):
    if args.quiet:
        return None
    from .progress import TqdmProgress

    return TqdmProgress(desc=desc)


def cmd_run(args: argparse.Namespace) -> int:
    """`run`: quantize, evaluate, export; prints the metrics as JSON on stdout."""
    from .runner import run_experiment

    recipe = recipe_from_args(args)
    tasks = _check_tasks(args)
    if args.out is None:   # an existing --out is refused by run_experiment before any work
        log.warning("no --out given: nothing will be written (pass --out DIR to keep the results)")
    bar = _progress(args, "mxlab run")
    try:
        outcome = run_experiment(args.model, recipe, eval_dataset=args.eval, out_dir=args.out,
                                 max_eval_windows=args.max_eval_windows, progress=bar, with_kl=not args.no_kl,
                                 device=args.device, eval_seq_len=args.eval_seq_len, overwrite=args.overwrite,
                                 allow_pickle=args.allow_pickle, trust_remote_code=args.trust_remote_code,
                                 tasks=tasks, task_limit=args.limit, tasks_online=args.tasks_online,
                                 task_batch_size=args.batch_size,
                                 stream={"auto": None, "always": True, "never": False}[args.offload])
    finally:
        if bar is not None:
            bar.close()
    from .jsonable import to_jsonable

    print(json.dumps(to_jsonable(outcome.metrics), indent=2))
    if args.out:
        log.info("results in %s (report: %s)", args.out, Path(args.out) / "report.html")
    return EXIT_OK


def cmd_mix(args: argparse.Namespace) -> int:
    """`mix`: probe, solve, write the frontier and the recipe for --budget; --run measures it."""
    from .jsonable import to_jsonable
    from .mix.assign import Constraints
    from .mix.workflow import mix_frontier, write_mix

    recipe = recipe_from_args(args)
    min_bits = {}
    for item in args.min_bits:
        pat, _, n = item.rpartition("=")
        if not pat or not n.isdigit():
            raise MxlabError(f"--min-bits {item!r}: write PATTERN=N, e.g. '*.down_proj=8'")
        min_bits[pat] = int(n)
    groups = [g if g in ("qkv", "gate_up") else [p for p in g.split(",") if p] for g in args.group]
    constraints = Constraints(min_bits=min_bits, per_block=args.per_block, groups=groups)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    from .atomic import check_target
    from .mix.frontier import MAX_BUDGET
    from .progress import scaled

    if not 0 < args.budget <= MAX_BUDGET:
        raise MxlabError(f"--budget {args.budget} must be bits per weight in (0, {MAX_BUDGET}], e.g. 5.0")
    check_target(Path(args.out), args.overwrite)   # fail before the probe, not after it
    bar = _progress(args, "mxlab mix")
    try:
        frontier, _ = mix_frontier(args.model, recipe, formats, constraints=constraints,
                                   probe_windows=args.probe_windows, probe_seq_len=args.probe_seq_len,
                                   method=args.method, device=args.device, allow_pickle=args.allow_pickle,
                                   trust_remote_code=args.trust_remote_code, cache_dir=args.cache_dir,
                                   progress=scaled(bar, 0.0, 0.5 if args.run else 0.95))
        summary = write_mix(frontier, args.budget, args.out, source=args.model, run=args.run,
                            eval_dataset=args.eval, max_eval_windows=args.max_eval_windows,
                            eval_seq_len=args.eval_seq_len, device=args.device, overwrite=args.overwrite,
                            allow_pickle=args.allow_pickle, trust_remote_code=args.trust_remote_code,
                            progress=scaled(bar, 0.5 if args.run else 0.95, 1.0))
    finally:
        if bar is not None:
            bar.close()
    print(json.dumps(to_jsonable(summary), indent=2))
    return EXIT_OK


def cmd_eval(args: argparse.Namespace) -> int:
    """`eval`: perplexity of a model or of an exported packed checkpoint."""
    from .evaluate import evaluate_model
    from .checkpoint import is_packed_checkpoint, load_quantized
    from .jsonable import to_jsonable

    tasks = _check_tasks(args)   # bad task names or missing data: fail before loading anything
    if args.model and is_packed_checkpoint(args.model):
        model, tokenizer = load_quantized(args.model, device=args.device, verify=not args.no_verify)
        if tokenizer is None:
            raise MxlabError(f"{args.model} has no tokenizer files; export it again with its tokenizer")
    else:
        from .models import load_model

        model, tokenizer = load_model(args.model, device=args.device, allow_pickle=args.allow_pickle,
                                      trust_remote_code=args.trust_remote_code)
    bar = _progress(args, "mxlab eval")
    try:
        out = evaluate_model(model, tokenizer, args.eval, seq_len=args.eval_seq_len,
                             max_windows=args.max_eval_windows, progress=bar)
        table = _zero_shot(args, model, tokenizer, tasks, bar) if tasks else None
    finally:
        if bar is not None:
            bar.close()
    name = args.model or "embedded:stories260K"
    if args.json:
        row = {"model": name, "eval": args.eval, "ppl": out["ppl"], "n_tokens": out["n_tokens"]}
        if table is not None:
            row.update(zero_shot=table, limit=args.limit)
        print(json.dumps(to_jsonable(row)))
    else:
        print(f"perplexity {out['ppl']:.4f} on {args.eval} ({out['n_tokens']} tokens), model {name}")
        for task, r in (table or {}).items():
            vals = ", ".join(f"{k} {v:.4f}" for k, v in r.items() if k != "n" and not k.endswith("_stderr"))
            print(f"{task}: {vals} ({r['n']} examples)")
    return EXIT_OK


def _check_tasks(args: argparse.Namespace) -> list[str] | None:
    """The --tasks list validated before any model work (unknown names, missing offline data)."""
    if not args.tasks:
        if args.limit is not None or args.tasks_online:
            raise MxlabError("--limit/--tasks-online apply to zero-shot tasks; add --tasks arc_easy,...")
        return None
    from .zeroshot import parse_tasks, task_cost

    tasks = parse_tasks(args.tasks)
    if not args.tasks_online:
        cost = task_cost(tasks, args.limit)
        log.warning("zero-shot cost: %s = %d model requests per model", ", ".join(
            f"{k} {v['examples']}x{v['choices']}" for k, v in cost["tasks"].items()), cost["requests"])
    return tasks


def _zero_shot(args: argparse.Namespace, model: Any, tokenizer: Any, tasks: list[str], bar: Any) -> dict:
    from .zeroshot import zero_shot

    return zero_shot(model, tokenizer, tasks, limit=args.limit, batch_size=args.batch_size,
                     online=args.tasks_online, progress=bar)


def cmd_export(args: argparse.Namespace) -> int:
    """`export`: a packed checkpoint (or a run's model/) as compressed-tensors, dequantized HF or mxlab."""
    from .checkpoint import is_packed_checkpoint, load_quantized, save_dequantized, save_quantized

    if args.format == "compressed-tensors":
        from .compressed_tensors import export_compressed_tensors

        out = export_compressed_tensors(args.source, args.out, weights_only=args.weights_only,
                                        overwrite=args.overwrite)
    else:
        src = Path(args.source)
        src = src / "model" if not is_packed_checkpoint(src) and is_packed_checkpoint(src / "model") else src
        if not is_packed_checkpoint(src):
            raise MxlabError(f"{args.source} is neither an mxlab packed checkpoint nor a run directory with model/")
        model, tokenizer = load_quantized(src)
        if args.format == "hf":
            out = save_dequantized(model, tokenizer, args.out, overwrite=args.overwrite)
        else:
            from .recipe import Recipe

            recipe = (getattr(model, "mxlab_quantization_config", None) or {}).get("recipe")
            out = save_quantized(model, tokenizer, args.out, Recipe.from_dict(recipe) if recipe else None,
                                 overwrite=args.overwrite)
    print(out)
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    """`report`: rebuild report.html from results.json."""
    from .atomic import atomic_file
    from .rundir import REPORT_FILE, read_results, write_report_html

    results = read_results(args.run_dir)
    try:
        import plotly  # noqa: F401
    except ImportError:
        raise MxlabError("plotly is not installed; `pip install plotly` to build the report") from None
    target = Path(args.output) if args.output else Path(args.run_dir) / REPORT_FILE
    with atomic_file(target) as tmp:
        try:
            write_report_html(results, tmp)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            raise MxlabError(f"{args.run_dir}: results.json has an unexpected layout ({type(e).__name__}: "
                             f"{str(e)[:80]}); rebuild it with `python -m mxlab run`") from e
    print(target)
    return EXIT_OK


def cmd_sweep(args: argparse.Namespace) -> int:
    """`sweep`: expand, validate and show the plan, run the jobs, print where the table is."""
    from .sweep import load_sweep, plan, run_sweep

    sweep = load_sweep(args.file)
    if args.gpus_per_job is not None and not 0 <= args.gpus_per_job <= 64:
        raise MxlabError(f"--gpus-per-job must be in [0, 64], got {args.gpus_per_job}")
    only = [g.strip() for g in args.only.split(",") if g.strip()] if args.only else None
    p = plan(sweep, args.workspace, workers=args.workers, ray=args.ray, only=only)
    print(p.summary(), file=sys.stderr)
    if args.dry_run:
        for cell in sweep.cells:
            state = "done" if cell.name in p.finished else "todo" if cell.name in p.todo else "skip"
            print(f"{state}  {cell.name}")
        return EXIT_OK
    bar = _progress(args, f"sweep {sweep.name}")
    try:
        out = run_sweep(sweep, args.workspace, workers=args.workers, ray=args.ray, gpus_per_job=args.gpus_per_job,
                        progress=bar, sweep_plan=p)
    finally:
        if bar is not None:
            bar.close()
    for cell, error in out.failed.items():
        print(f"failed {cell}: {error}", file=sys.stderr)
    print(json.dumps({"sweep_dir": str(out.sweep_dir), "done": len(out.done), "skipped": len(out.skipped),
                      "failed": len(out.failed), "seconds": round(out.seconds, 1),
                      "outputs": {k: str(v) for k, v in out.outputs.items()}}, indent=2))
    return EXIT_OK if not out.failed else EXIT_USAGE


def cmd_presets(args: argparse.Namespace) -> int:
    """`presets`: one line per named recipe, or one preset as YAML."""
    from .presets import PRESETS, get_preset

    if args.show:
        print(get_preset(args.show).to_yaml(), end="")
        return EXIT_OK
    width = max(len(n) for n in PRESETS)
    for name, r in PRESETS.items():
        steps = "+".join(s.name for s in r.steps) or "rtn"
        print(f"{name:<{width}}  W-{r.weights.upper()} A-{r.acts.upper()} block {r.block_size}, steps {steps}")
    return EXIT_OK


def cmd_formats(args: argparse.Namespace) -> int:
    """`formats`: every element format with its storage bits per element at the block size."""
    from .formats import FORMATS, bits_per_element, is_mx

    print(f"{'format':<12} {'kind':<22} bits/element (block {args.block_size}, scales included)")
    for name in FORMATS:
        if name == "mxfp4":  # alias of mxfp4_e2m1
            continue
        kind = "MX (E8M0 block scale)" if is_mx(name) else (
            "NVFP4 (E4M3 blocks)" if name == "nvfp4" else "per-channel affine INT")
        note = "" if is_mx(name) or name == "nvfp4" else "  (+ one scale/zero-point per row)"
        print(f"{name:<12} {kind:<22} {bits_per_element(name, args.block_size):.3f}{note}")
    print(f"{'none':<12} {'unquantized':<22} model dtype (16 or 32)")
    return EXIT_OK


COMMANDS = {"run": cmd_run, "eval": cmd_eval, "export": cmd_export, "mix": cmd_mix, "sweep": cmd_sweep,
            "report": cmd_report, "presets": cmd_presets, "formats": cmd_formats}


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    if args.quiet and args.command in ("run", "eval"):  # transformers draws its own "Loading weights" bar
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    if not args.verbose:  # transformers / httpx chatter is noise at INFO
        for noisy in ("transformers", "httpx", "urllib3", "filelock"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the command, map failures to exit codes; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse itself exits 2 with a usage line on bad flags
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    _setup_logging(args)
    try:
        return COMMANDS[args.command](args)
    except (Cancelled, KeyboardInterrupt):
        print("mxlab: cancelled; nothing partial was written", file=sys.stderr)
        return EXIT_CANCELLED
    except MxlabError as e:
        message = " ".join(str(e).split())     # one line, always (YAML and HF errors span several)
        print(f"mxlab {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except Exception:  # a bug, not a user error: show everything
        traceback.print_exc(file=sys.stderr)
        print(f"mxlab {args.command}: unexpected error (a bug; please report it with the traceback above)",
              file=sys.stderr)
        return EXIT_UNEXPECTED
