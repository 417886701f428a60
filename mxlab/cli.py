"""The command line: ``python -m mxlab run | eval | report | presets | formats``.

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
    recipe = run.add_argument_group("recipe (pick one source: --recipe, --preset, or these flags)")
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
    calib = run.add_argument_group("calibration")
    calib.add_argument("--calib", metavar="NAME", help="calibration text: tinystories, wikitext2, "
                       "shakespeare or a .txt file (default tinystories)")
    calib.add_argument("--calib-samples", type=_positive_int, metavar="N", help="calibration sequences (default 128)")
    calib.add_argument("--calib-seq-len", type=_positive_int, metavar="L", help="tokens per sequence (default 512)")
    _eval_args(run)
    run.add_argument("--out", metavar="DIR", help="write results.json, report.html, recipe.yaml, model/ here "
                     "(default: a new run directory in the workspace)")
    run.add_argument("--workspace", metavar="DIR", help="the workspace folder the app lists "
                     "(default ./mxlab-runs or $MXLAB_WORKSPACE)")
    run.add_argument("--name", metavar="NAME", default="", help="a display name for the run (app, `runs`)")
    run.add_argument("--overwrite", action="store_true", help="replace DIR if it already exists")
    run.add_argument("--no-kl", action="store_true", help="skip KL/top-1 (saves one FP model copy in memory)")

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


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="SRC", help="hub id or local directory (default: the embedded stories260K)")
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
    bar = _progress(args, "mxlab run")
    try:
        outcome = run_experiment(args.model, recipe, eval_dataset=args.eval, out_dir=args.out,
                                 max_eval_windows=args.max_eval_windows, progress=bar, with_kl=not args.no_kl,
                                 device=args.device, eval_seq_len=args.eval_seq_len, overwrite=args.overwrite,
                                 allow_pickle=args.allow_pickle, trust_remote_code=args.trust_remote_code,
                                 workspace=None if args.out else resolve_workspace(args.workspace),
                                 name=args.name, origin="cli")
    finally:
        if bar is not None:
            bar.close()
    from .jsonable import to_jsonable

    print(json.dumps(to_jsonable(outcome.metrics), indent=2))
    log.info("results in %s (report: %s)", outcome.out_dir, Path(outcome.out_dir) / "report.html")
    return EXIT_OK


def cmd_runs(args: argparse.Namespace) -> int:
    """`runs`: the workspace's runs, oldest first, as a table or one JSON list."""
    from .jsonable import to_jsonable
    from .workspace import list_runs

    rows = [r.row() for r in list_runs(resolve_workspace(args.workspace))]
    if args.json:
        print(json.dumps(to_jsonable(rows), indent=2))
        return EXIT_OK
    for r in rows:
        ppl = "-" if r["ppl_quant"] is None else f"{r['ppl_fp']:.4g} -> {r['ppl_quant']:.4g}"
        print(f"{r['id']:<28} {r['name'][:24]:<24} {r['model'][-24:]:<24} {r['recipe']:<32} ppl {ppl:<18} "
              f"{r['created']}")
    if not rows:
        print(f"no runs in {resolve_workspace(args.workspace)}", file=sys.stderr)
    return EXIT_OK


def resolve_workspace(path: str | None) -> Path:
    """--workspace DIR (or the default), created if missing."""
    from .workspace import resolve

    return resolve(path)


def cmd_eval(args: argparse.Namespace) -> int:
    """`eval`: perplexity of a model or of an exported packed checkpoint."""
    from .evaluate import evaluate_model
    from .checkpoint import is_packed_checkpoint, load_quantized
    from .jsonable import to_jsonable

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
    finally:
        if bar is not None:
            bar.close()
    name = args.model or "embedded:stories260K"
    if args.json:
        row = {"model": name, "eval": args.eval, "ppl": out["ppl"], "n_tokens": out["n_tokens"]}
        print(json.dumps(to_jsonable(row)))
    else:
        print(f"perplexity {out['ppl']:.4f} on {args.eval} ({out['n_tokens']} tokens), model {name}")
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


COMMANDS = {"run": cmd_run, "runs": cmd_runs, "eval": cmd_eval, "report": cmd_report, "presets": cmd_presets, "formats": cmd_formats}


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
