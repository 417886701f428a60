"""The Run tab's zero-shot task picker: picked names and limit -> run_experiment's arguments, the cost line
shown before a run starts, and the run's accuracies as text.

lm-eval does the evaluation (``mxlab.zeroshot``); this file only checks what the widgets hand over.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

from ..errors import MxlabError
from ..limits import bound
from ..zeroshot import TASKS, parse_tasks, task_cost

DEFAULT_TASK_LIMIT = 100     # examples per task: seconds on the embedded model, minutes on a 135M one


def task_kwargs(tasks: Optional[Sequence[str]], limit: Any) -> dict[str, Any]:
    """Picked task names and the limit box -> {"tasks": [...] or None, "task_limit": N or None}.

    No task picked: no zero-shot evaluation (the limit is then ignored). MxlabError on an unknown task or
    a limit that is not a whole number from 1 to the 'task limit' bound."""
    names = [t for t in (tasks or []) if t]
    if not names:
        return {"tasks": None, "task_limit": None}
    names = parse_tasks(names)
    top = bound("task limit")
    try:
        value = float(limit)
    except (TypeError, ValueError):
        raise MxlabError(f"Examples per task must be a whole number from 1 to {top}; got {limit!r}.") from None
    if value != int(value) or not 1 <= value <= top:
        raise MxlabError(f"Examples per task must be a whole number from 1 to {top}; got {limit!r}.")
    return {"tasks": names, "task_limit": int(value)}


def cost_line(tasks: Optional[Sequence[str]], limit: Any) -> str:
    """Markdown: how many model requests the picked tasks take, per task examples x choices (run twice: FP
    and quantized); the error message when the picks are invalid."""
    try:
        kwargs = task_kwargs(tasks, limit)
        if kwargs["tasks"] is None:
            return "No zero-shot tasks: the run reports perplexity, KL and top-1 only."
        cost = task_cost(kwargs["tasks"], kwargs["task_limit"])
    except MxlabError as err:
        return f"**Invalid tasks:** {err}"
    parts = ", ".join(f"{name} {row['examples']} x {row['choices']}" for name, row in cost["tasks"].items())
    return (f"Zero-shot: **{cost['requests']} requests** per model (examples x choices: {parts}), "
            "run on the FP and the quantized model.")


def accuracy_text(zero_shot: Optional[dict]) -> str:
    """'arc_easy acc 0.25 -> 0.5, acc_norm 0.25 -> 0.25' per task ('' when the run had no tasks)."""
    if not zero_shot:
        return ""
    fp, quant = zero_shot.get("fp") or {}, zero_shot.get("quant") or {}
    out = []
    for task, row in quant.items():
        metrics = [m for m in (TASKS[task].metrics if task in TASKS else row) if m in row]
        pairs = ", ".join(f"{m} {_num(fp.get(task, {}).get(m))} -> {_num(row[m])}" for m in metrics)
        out.append(f"{task} {pairs}")
    limit = zero_shot.get("limit")
    return f"zero-shot{f' ({limit} examples per task)' if limit else ''}: " + "; ".join(out)


def _num(v: Any) -> str:
    return f"{float(v):.4g}" if isinstance(v, (int, float)) else "?"
