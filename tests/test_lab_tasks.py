"""mxlab/lab/tasks.py and the run path: the zero-shot picker -> run_experiment's tasks/task_limit, the cost
line shown before a run, and a run's accuracies in its metrics text and in Compare. No gradio, no server."""
from __future__ import annotations

import gzip
import types

import pytest

from mxlab import compare
from mxlab.errors import MxlabError
from mxlab.lab import session, tasks, views
from mxlab.recipe import Recipe
from mxlab.zeroshot import ASSETS_DIR

from test_lab_session import make_run

ZS = {"fp": {"arc_easy": {"acc": 0.5, "acc_stderr": 0.29, "acc_norm": 0.25, "acc_norm_stderr": 0.25, "n": 4}},
      "quant": {"arc_easy": {"acc": 0.25, "acc_stderr": 0.25, "acc_norm": 0.75, "acc_norm_stderr": 0.25, "n": 4}},
      "limit": 4}


def _lines(name: str) -> int:
    """Examples in a shipped task file, counted here (not through mxlab.zeroshot)."""
    with gzip.open(ASSETS_DIR / name, "rt", encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


def test_task_kwargs_from_the_picker():
    assert tasks.task_kwargs([], 100) == {"tasks": None, "task_limit": None}       # no task: no zero-shot
    assert tasks.task_kwargs(None, None) == {"tasks": None, "task_limit": None}
    # gradio hands numbers over as floats
    assert tasks.task_kwargs(["arc_easy", "piqa"], 4.0) == {"tasks": ["arc_easy", "piqa"], "task_limit": 4}


@pytest.mark.parametrize("picked, limit, match", [
    (["arc_easy"], 0, "from 1 to 100000"),
    (["arc_easy"], 100_001, "from 1 to 100000"),
    (["arc_easy"], 2.5, "whole number"),
    (["arc_easy"], None, "whole number"),
    (["mmlu"], 4, "unknown zero-shot task 'mmlu'"),
])
def test_task_kwargs_refuses_bad_values(picked, limit, match):
    with pytest.raises(MxlabError, match=match):
        tasks.task_kwargs(picked, limit)
    assert tasks.cost_line(picked, limit).startswith("**Invalid tasks:**")


def test_cost_line_counts_examples_times_choices():
    # 4 examples: arc_easy 4 choices, piqa 2 -> 16 + 8 requests
    line = tasks.cost_line(["arc_easy", "piqa"], 4)
    assert "**24 requests**" in line and "arc_easy 4 x 4" in line and "piqa 4 x 2" in line
    # a limit above the task's size: every example of it
    n = _lines("winogrande.jsonl.gz")
    assert f"**{2 * n} requests**" in tasks.cost_line(["winogrande"], 100_000)
    assert tasks.cost_line([], 4).startswith("No zero-shot tasks")


def test_execute_run_passes_tasks_and_limit(tmp_path, monkeypatch):
    seen = {}

    def fake_run(source, recipe, **kwargs):
        seen.update(kwargs)
        run_id = f"r{len(list(tmp_path.iterdir())) + 1}"
        out = tmp_path / make_run(tmp_path, run_id, ppl_fp=10.0, ppl_quant=11.0, zero_shot=ZS)
        return types.SimpleNamespace(out_dir=out)

    monkeypatch.setattr(session, "run_experiment", fake_run)
    state = session.SessionState(tmp_path)
    entry = session.execute_run(state, None, Recipe(steps=["rtn"]), eval_dataset="tinystories", max_eval_windows=2,
                                report=lambda f, m: None, **tasks.task_kwargs(["arc_easy"], 4.0))
    assert (seen["tasks"], seen["task_limit"]) == (["arc_easy"], 4)
    text = views.metrics_markdown(entry)
    assert "zero-shot (4 examples per task): arc_easy acc 0.5 -> 0.25, acc_norm 0.25 -> 0.75" in text
    seen.clear()
    session.execute_run(state, None, Recipe(steps=["rtn"]), eval_dataset="tinystories", max_eval_windows=2,
                        report=lambda f, m: None, **tasks.task_kwargs([], 4))
    assert (seen["tasks"], seen["task_limit"]) == (None, None)


def test_compare_table_has_task_columns():
    runs = [("a", {"metrics": {"ppl_fp": 10.0, "ppl_quant": 11.0, "zero_shot": ZS}}),
            ("b", {"metrics": {"ppl_fp": 10.0, "ppl_quant": 12.0}})]
    df = compare.metrics_table(runs)
    assert df.loc[0, "arc_easy/acc"] == 0.25 and df.loc[0, "arc_easy/acc FP"] == 0.5
    assert df.loc[0, "arc_easy/acc_norm"] == 0.75 and "arc_easy/acc_stderr" not in df.columns
    assert df["arc_easy/acc"].isna().tolist() == [False, True]       # run b had no tasks
