"""The argparse tree of ``python -m mxlab`` and the flags -> Recipe translation."""
from __future__ import annotations

import argparse
from typing import Any

from .. import __version__
from ..errors import MxlabError
from ..presets import get_preset
from ..recipe import Recipe

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

FORMAT_FLAGS = ("weights", "acts", "block_size", "rounding", "scale_rule", "steps")


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
    run.add_argument("--out", metavar="DIR", help="write results.json, report.html, recipe.yaml, model/ here "
                     "(default: a new run directory in the workspace)")
    run.add_argument("--workspace", metavar="DIR", help="the workspace folder the app lists "
                     "(default ./mxlab-runs or $MXLAB_WORKSPACE)")
    run.add_argument("--name", metavar="NAME", default="", help="a display name for the run (app, `runs`)")
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

    runs = sub.add_parser("runs", formatter_class=_Formatter, help="list the runs of a workspace",
                          description="List the workspace's runs: id, name, model, recipe, metrics, date.")
    runs.add_argument("--workspace", metavar="DIR", help="the workspace folder (default ./mxlab-runs)")
    runs.add_argument("--json", action="store_true", help="print one JSON list")

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
    recipe.add_argument("--scale-rule", choices=("floor", "ceil", "even", "rceil", "mse"),
                        help="how MX block exponents are chosen: floor (OCP MX v1.0, default), ceil, even, "
                        "rceil, or mse (per-block search)")
    recipe.add_argument("--steps", metavar="LIST", help="comma-separated steps in order, from rotate, smoothquant, "
                        "awq, gptq, rtn; e.g. rotate,gptq (default: none, plain round-to-nearest MX)")
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


def recipe_from_args(args: argparse.Namespace) -> Any:
    """The Recipe the flags describe: --recipe FILE, --preset NAME or the format/step flags (+ calib flags)."""
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
        for key in ("weights", "acts", "block_size", "rounding", "scale_rule"):
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
