"""Zero-shot tasks through lm-eval: equal to lm-eval used directly, checked against a hand-written
scorer, cost before starting, progress/cancel, and bad input (CLI exit 2, one line)."""
from __future__ import annotations

import pytest
import torch

import mxlab.zeroshot as zs
from mxlab import cli
from mxlab.errors import Cancelled, MxlabError

pytest.importorskip("lm_eval")


@pytest.mark.slow
def test_arc_easy_equals_lm_eval_direct(embedded):
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    model, tok = embedded
    seen = []
    ours = zs.zero_shot(model, tok, "arc_easy", limit=8, progress=lambda f, m: seen.append(f))
    direct = lm_eval.simple_evaluate(model=HFLM(pretrained=model, tokenizer=tok, batch_size=8),
                                     tasks=zs.task_configs("arc_easy"), limit=8, num_fewshot=0)
    assert ours["arc_easy"]["acc"] == direct["results"]["arc_easy"]["acc,none"]
    assert ours["arc_easy"]["acc_norm"] == direct["results"]["arc_easy"]["acc_norm,none"]
    assert ours["arc_easy"]["n"] == 8 and seen[-1] == 1.0 and max(seen[:-1]) <= 1.0


def test_cost_is_examples_times_choices():
    cost = zs.task_cost("arc_easy,lambada_openai,piqa", limit=10)
    assert cost["tasks"]["arc_easy"] == {"examples": 10, "choices": 4, "requests": 40}
    assert cost["requests"] == 40 + 10 + 20
    assert zs.task_cost("openbookqa")["tasks"]["openbookqa"]["examples"] == 500


def test_shipped_data_matches_the_manifest():
    import hashlib

    for task, row in zs.read_manifest().items():
        data = (zs.ASSETS_DIR / row["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row["sha256"]
        assert zs.task_size(task) == row["records"]


def test_cancel_stops_the_run(embedded):
    model, tok = embedded

    def cancel(fraction, message):
        if "requests" in message:
            raise Cancelled("stop")

    with pytest.raises(Cancelled):
        zs.zero_shot(model, tok, "piqa", limit=4, progress=cancel)


@pytest.mark.parametrize("argv, message", [
    (["eval", "--tasks", "arc_easy,mmlu"], "unknown zero-shot task 'mmlu'"),
    (["eval", "--tasks", "piqa", "--limit", "0"], None),        # argparse: positive numbers only
    (["eval", "--limit", "5"], "--limit/--tasks-online apply to zero-shot tasks"),
])
def test_cli_bad_task_input_exits_2(capsys, argv, message):
    try:
        code = cli.main(argv)
    except SystemExit as e:
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    if message:
        assert len(err) == 1 and message in err[0]


def test_cli_missing_offline_data_exits_2(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(zs, "ASSETS_DIR", tmp_path)
    assert cli.main(["eval", "--tasks", "boolq"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the data of task boolq is missing" in err[0] and "--tasks-online" in err[0]


def test_limit_is_bounded():
    with pytest.raises(MxlabError, match="limit must be"):
        zs.task_cost("piqa", limit=10**9)
