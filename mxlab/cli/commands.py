"""One function per subcommand: ``cmd_<name>(args) -> exit code``; ``COMMANDS`` maps names to them."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from ..atomic import atomic_file, check_target
from ..checkpoint import is_packed_checkpoint, load_quantized, save_quantized
from ..dequantized import save_dequantized
from ..compressed_tensors import export_compressed_tensors
from ..errors import MxlabError
from ..evaluate import evaluate_model
from ..formats import FORMATS, bits_per_element, is_mx
from ..jsonable import to_jsonable
from ..mix.assign import Constraints
from ..mix.frontier import MAX_BUDGET
from ..mix.workflow import mix_frontier, write_mix
from ..models import load_model
from ..presets import PRESETS, get_preset
from ..progress import TqdmProgress, scaled
from ..recipe import Recipe
from ..rundir import REPORT_FILE, read_results, write_report_html
from ..runner import run_experiment
from ..sweep import load_sweep, plan, run_sweep
from ..zeroshot import parse_tasks, task_cost, zero_shot
from ..workspace import list_runs, resolve
from .parser import recipe_from_args

log = logging.getLogger("mxlab.cli")

EXIT_OK, EXIT_UNEXPECTED, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130


def _progress(args: argparse.Namespace, desc: str):
    if args.quiet:
        return None
    return TqdmProgress(desc=desc)


def cmd_run(args: argparse.Namespace) -> int:
    """`run`: quantize, evaluate, export; prints the metrics as JSON on stdout."""
    recipe = recipe_from_args(args)
    tasks = _check_tasks(args)
    bar = _progress(args, "mxlab run")
    try:
        outcome = run_experiment(args.model, recipe, eval_dataset=args.eval, out_dir=args.out,
                                 max_eval_windows=args.max_eval_windows, progress=bar, with_kl=not args.no_kl,
                                 device=args.device, eval_seq_len=args.eval_seq_len, overwrite=args.overwrite,
                                 allow_pickle=args.allow_pickle, trust_remote_code=args.trust_remote_code,
                                 tasks=tasks, task_limit=args.limit, tasks_online=args.tasks_online,
                                 task_batch_size=args.batch_size,
                                 stream={"auto": None, "always": True, "never": False}[args.offload],
                                 workspace=None if args.out else resolve_workspace(args.workspace),
                                 name=args.name, origin="cli")
    finally:
        if bar is not None:
            bar.close()
    print(json.dumps(to_jsonable(outcome.metrics), indent=2))
    log.info("results in %s (report: %s)", outcome.out_dir, Path(outcome.out_dir) / "report.html")
    return EXIT_OK


def cmd_runs(args: argparse.Namespace) -> int:
    """`runs`: the workspace's runs, oldest first, as a table or one JSON list."""
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
    return resolve(path)


def cmd_mix(args: argparse.Namespace) -> int:
    """`mix`: probe, solve, write the frontier and the recipe for --budget; --run measures it."""
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
    tasks = _check_tasks(args)   # bad task names or missing data: fail before loading anything
    if args.model and is_packed_checkpoint(args.model):
        model, tokenizer = load_quantized(args.model, device=args.device, verify=not args.no_verify)
        if tokenizer is None:
            raise MxlabError(f"{args.model} has no tokenizer files; export it again with its tokenizer")
    else:
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
    tasks = parse_tasks(args.tasks)
    if not args.tasks_online:
        cost = task_cost(tasks, args.limit)
        log.warning("zero-shot cost: %s = %d model requests per model", ", ".join(
            f"{k} {v['examples']}x{v['choices']}" for k, v in cost["tasks"].items()), cost["requests"])
    return tasks


def _zero_shot(args: argparse.Namespace, model: Any, tokenizer: Any, tasks: list[str], bar: Any) -> dict:
    return zero_shot(model, tokenizer, tasks, limit=args.limit, batch_size=args.batch_size,
                     online=args.tasks_online, progress=bar)


def cmd_export(args: argparse.Namespace) -> int:
    """`export`: a packed checkpoint (or a run's model/) as compressed-tensors, dequantized HF or mxlab."""
    if args.format == "compressed-tensors":
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
            recipe = (getattr(model, "mxlab_quantization_config", None) or {}).get("recipe")
            out = save_quantized(model, tokenizer, args.out, Recipe.from_dict(recipe) if recipe else None,
                                 overwrite=args.overwrite)
    print(out)
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    """`report`: rebuild report.html from results.json."""
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


COMMANDS = {"run": cmd_run, "runs": cmd_runs, "eval": cmd_eval, "export": cmd_export, "mix": cmd_mix,
            "sweep": cmd_sweep,
            "report": cmd_report, "presets": cmd_presets, "formats": cmd_formats}
