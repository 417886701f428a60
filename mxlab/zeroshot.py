"""Zero-shot tasks through EleutherAI's lm-evaluation-harness, on the model object mxlab holds.

lm-eval is the engine: its own task definitions (prompts, choices, targets) and metrics (acc,
acc_norm; perplexity and acc for LAMBADA). mxlab only points each task's dataset at the files it
ships in ``assets/zeroshot/`` (``dataset_path: json``), so tasks run offline; ``online=True`` uses
lm-eval's hub datasets instead. The model is handed over as an object (quantized layers included),
never re-loaded. HellaSwag's local data is llama.cpp's preprocessed file: its scores are close to,
not identical with, lm-eval's on ``Rowan/hellaswag`` (see assets/zeroshot/SOURCES.md).
"""
from __future__ import annotations

import gzip
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import Cancelled, MxlabError
from .progress import ProgressFn, report

log = logging.getLogger(__name__)

ASSETS_DIR: Path = Path(__file__).resolve().parents[1] / "assets" / "zeroshot"
MAX_LIMIT = 100_000          # more than any task has: bounds a user's --limit
MAX_BATCH_SIZE = 512


@dataclass(frozen=True)
class TaskData:
    """One task's local data: the file under assets/zeroshot and the split lm-eval evaluates."""

    file: str
    split: str               # the lm-eval config key whose split we replace ("test" or "validation")
    choices: int             # answer options per example (LAMBADA: 1 continuation)
    metrics: tuple[str, ...]


TASKS: dict[str, TaskData] = {
    "arc_easy": TaskData("arc_easy.jsonl.gz", "test", 4, ("acc", "acc_norm")),
    "arc_challenge": TaskData("arc_challenge.jsonl.gz", "test", 4, ("acc", "acc_norm")),
    "piqa": TaskData("piqa.jsonl.gz", "validation", 2, ("acc", "acc_norm")),
    "winogrande": TaskData("winogrande.jsonl.gz", "validation", 2, ("acc",)),
    "openbookqa": TaskData("openbookqa.jsonl.gz", "test", 4, ("acc", "acc_norm")),
    "boolq": TaskData("boolq.jsonl.gz", "validation", 2, ("acc",)),
    "lambada_openai": TaskData("lambada_openai.jsonl.gz", "test", 1, ("perplexity", "acc")),
    "hellaswag": TaskData("hellaswag.jsonl.gz", "validation", 4, ("acc", "acc_norm")),
}
DEFAULT_TASKS = ("arc_easy", "arc_challenge", "piqa", "winogrande", "openbookqa", "boolq", "lambada_openai")


def parse_tasks(tasks: str | list[str] | tuple[str, ...]) -> list[str]:
    """Task names from "a,b" or a list; an unknown name raises MxlabError listing the valid ones."""
    names = [t.strip().lower() for t in (tasks.split(",") if isinstance(tasks, str) else tasks)]
    names = list(dict.fromkeys(n for n in names if n))
    if not names:
        raise MxlabError(f"no task given; choose from: {', '.join(TASKS)}")
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise MxlabError(f"unknown zero-shot task {unknown[0]!r}; choose from: {', '.join(TASKS)}")
    return names


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT):
        raise MxlabError(f"limit must be a whole number from 1 to {MAX_LIMIT} (examples per task); got {limit!r}")


def task_path(name: str, data_dir: Path | None = None) -> Path:
    """The local data file of task ``name``; MxlabError when it is missing."""
    path = Path(data_dir or ASSETS_DIR) / TASKS[name].file
    if not path.is_file():
        raise MxlabError(f"the data of task {name} is missing ({path}); reinstall mxlab's assets, "
                         "or pass online=True (CLI: --tasks-online) to use lm-eval's hub datasets")
    return path


def task_size(name: str, data_dir: Path | None = None) -> int:
    """Number of examples in the local data of task ``name``."""
    with gzip.open(task_path(name, data_dir), "rt", encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


def task_cost(tasks: str | list[str], limit: int | None = None, data_dir: Path | None = None) -> dict[str, Any]:
    """What a run costs before it starts: per task examples, choices and model requests (examples x choices)."""
    _check_limit(limit)
    rows = {}
    for name in parse_tasks(tasks):
        n = task_size(name, data_dir)
        n = min(n, limit) if limit else n
        rows[name] = {"examples": n, "choices": TASKS[name].choices, "requests": n * TASKS[name].choices}
    return {"tasks": rows, "requests": sum(r["requests"] for r in rows.values())}


def task_configs(tasks: str | list[str], *, online: bool = False, data_dir: Path | None = None) -> list[dict | str]:
    """lm-eval task specs: the standard task, with its dataset pointed at the local file unless ``online``."""
    names = parse_tasks(tasks)
    if online:
        return names
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml

    index = TaskManager().task_index
    specs: list[dict | str] = []
    for name in names:
        path = task_path(name, data_dir)
        # lm-eval's own config (prompts, choices, metrics, process_docs); only the data source changes
        cfg = dict(load_yaml(index[name].yaml_path, resolve_func=True))
        split = TASKS[name].split
        cfg.update({"dataset_path": "json", "dataset_name": None,
                    "dataset_kwargs": {"data_files": {split: str(path)}},
                    "training_split": None, "validation_split": split if split == "validation" else None,
                    "test_split": split if split == "test" else None, "fewshot_split": None})
        cfg.pop("tag", None)
        specs.append(cfg)
    return specs


def make_lm(model: Any, tokenizer: Any, *, batch_size: int = 8, progress: ProgressFn | None = None,
            total_requests: int | None = None) -> Any:
    """An lm-eval HFLM around ``model`` (no re-loading) that reports progress and can be cancelled."""
    from lm_eval.models.huggingface import HFLM

    if tokenizer is None:
        raise MxlabError("zero-shot tasks need the model's tokenizer; load the model with its tokenizer files")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise MxlabError(f"batch_size must be a whole number from 1 to {MAX_BATCH_SIZE}; got {batch_size!r}")

    class _ProgressLM(HFLM):
        """HFLM counting the sequences it scores (progress) and checking for cancellation per batch."""

        done = 0

        def _model_call(self, inps, attn_mask=None, labels=None):
            out = super()._model_call(inps, attn_mask=attn_mask, labels=labels)
            self.done += int(inps.shape[0])
            if total_requests:
                # requests sharing a context may be scored in one sequence: the fraction is a lower bound
                report(progress, self.done / total_requests, f"zero-shot: {self.done}/{total_requests} requests")
            elif progress is not None:
                report(progress, 0.0, f"zero-shot: {self.done} requests")
            return out

    # HFLM's own defaults otherwise (max_length from the model config): the same as lm-eval used directly
    return _ProgressLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)


def zero_shot(model: Any, tokenizer: Any, tasks: str | list[str] = DEFAULT_TASKS, *, limit: int | None = None,
              batch_size: int = 8, online: bool = False, progress: ProgressFn | None = None,
              data_dir: Path | None = None) -> dict[str, dict[str, float]]:
    """Zero-shot accuracy of ``model`` on ``tasks`` with lm-eval: {task: {metric: value, metric_stderr, n}}."""
    import lm_eval

    _check_limit(limit)
    names = parse_tasks(tasks)
    cost = task_cost(names, limit, data_dir) if not online else None
    if cost:
        log.info("zero-shot: %s (%d model requests)", ", ".join(f"{k} {v['examples']}x{v['choices']}"
                 for k, v in cost["tasks"].items()), cost["requests"])
    report(progress, 0.0, "zero-shot: building tasks")
    specs = task_configs(names, online=online, data_dir=data_dir)
    lm = make_lm(model, tokenizer, batch_size=batch_size, progress=progress,
                 total_requests=cost["requests"] if cost else None)
    was_training = model.training
    model.eval()
    try:
        out = lm_eval.simple_evaluate(model=lm, tasks=specs, limit=limit, num_fewshot=0, bootstrap_iters=1000,
                                      log_samples=False, verbosity="WARNING")
    except (Cancelled, MxlabError):
        raise
    except (OSError, ConnectionError) as e:
        raise MxlabError(f"lm-eval could not read the task data ({e}); offline, leave online off") from e
    finally:
        model.train(was_training)
    report(progress, 1.0, "zero-shot: done")
    return summarize(out, names)


def summarize(out: dict[str, Any], names: list[str]) -> dict[str, dict[str, float]]:
    """lm-eval's results dict reduced to {task: {metric: value, metric_stderr: value, n: examples}}."""
    table: dict[str, dict[str, float]] = {}
    for name in names:
        res = out["results"][name]
        row: dict[str, float] = {}
        for metric in TASKS[name].metrics:
            value = res.get(f"{metric},none")
            err = res.get(f"{metric}_stderr,none")
            row[metric] = float(value) if value is not None else math.nan
            row[f"{metric}_stderr"] = float(err) if isinstance(err, (int, float)) else math.nan
        row["n"] = int(out.get("n-samples", {}).get(name, {}).get("effective", 0))
        table[name] = row
    return table


def flat_metrics(table: dict[str, dict[str, float]], prefix: str = "") -> dict[str, float]:
    """{"arc_easy/acc": ...} from ``zero_shot``'s table (for results.json's metrics and the runs table)."""
    return {f"{prefix}{task}/{k}": v for task, row in table.items() for k, v in row.items()
            if not k.endswith("_stderr") and k != "n"}


def read_manifest(data_dir: Path | None = None) -> dict[str, Any]:
    """The manifest of the shipped task files (records and sha256 per task)."""
    return json.loads((Path(data_dir or ASSETS_DIR) / "manifest.json").read_text())
