"""The README's numbers for issue 14's fidelity corrections, on the embedded model (CPU, seed 0).

- AWQ's score: W-MXINT4/A-MXINT8 block 32, AWQ alone with ``score: module`` (llm-awq's) and
  ``score: linears`` (the former search): perplexity and the alpha of every scaling group.
- INT against MXINT at equal storage: RTN perplexity and packed bits per weight of INT4 (fp16 scale
  and 4-bit zero point per row) and MXINT4 at blocks 32, 64, 128.

Calibration 128 x 512 TinyStories tokens (seed 0), evaluation on the whole held-out TinyStories head.

    OMP_NUM_THREADS=1 python benchmarks/fidelity_numbers.py --out benchmarks/results/fidelity_numbers.json
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from mxlab.checkpoint import packed_bits_per_weight  # noqa: E402
from mxlab.data import calibration_batches, evaluation_tokens  # noqa: E402
from mxlab.evaluate import perplexity  # noqa: E402
from mxlab.models import load_model  # noqa: E402
from mxlab.ptq.pipeline import quantize_model  # noqa: E402
from mxlab.recipe import Recipe  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/fidelity_numbers.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    model, tok = load_model(None)
    ev = evaluation_tokens(tok, "tinystories")
    calib = calibration_batches(tok, "tinystories", 128, 512, seed=0)
    res = dict(ppl_fp=perplexity(model, ev, seq_len=512), eval_tokens=int(ev.numel()), calib="128 x 512, seed 0",
               awq={}, storage=[])
    for score in ("module", "linears"):
        recipe = Recipe(weights="mxint4", acts="mxint8", block_size=32, steps=[{"name": "awq", "score": score}])
        r = quantize_model(copy.deepcopy(model), tok, recipe, calib_tokens=calib)
        alphas = {m.module: m.details["alpha"] for rec in r.records if rec.step == "awq" for m in rec.modules
                  if "alpha" in m.details}
        res["awq"][score] = dict(ppl=perplexity(r.model, ev, seq_len=512), alphas=alphas)
        print(f"AWQ score {score}: ppl {res['awq'][score]['ppl']:.4f}", file=sys.stderr, flush=True)
    multi = [n for n in res["awq"]["module"]["alphas"] if n.endswith(("q_proj", "gate_proj"))]
    res["awq"]["groups_with_another_alpha"] = sum(
        res["awq"]["module"]["alphas"][n] != res["awq"]["linears"]["alphas"][n] for n in multi)
    res["awq"]["multi_linear_groups"] = len(multi)
    for w, a, bs in [("int4", "int8", 32), ("mxint4", "mxint8", 32), ("mxint4", "mxint8", 64), ("mxint4", "mxint8", 128)]:
        r = quantize_model(copy.deepcopy(model), tok, Recipe(weights=w, acts=a, block_size=bs, steps=["rtn"]),
                           calib_tokens=calib[:2])
        res["storage"].append(dict(weights=w, acts=a, block_size=bs, bits_per_weight=packed_bits_per_weight(r.model),
                                   ppl=perplexity(r.model, ev, seq_len=512)))
        print(res["storage"][-1], file=sys.stderr, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
