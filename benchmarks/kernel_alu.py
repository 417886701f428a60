"""The MX kernel against a device copy on this GPU, and why: memory or ALUs. Sections, in this order:

- ``base``: ``y.copy_(x)`` (bf16 8192 x 8192, read + write) and a Triton load/store kernel with the MX
  kernel's tiling (what the memory system allows that tiling);
- ``tune``: last-axis launch candidates (1, 2, 4 warps; 32 elements per thread), each with the kernels' element
  path ``quant_scaled`` and the reference-shaped ``quant_elements`` (same bits), on mxint4 and mxfp4; the best
  per block size is used for the rest of the run (``kernels.set_tuned``) and printed as a ``DEVICE_CONFIGS``
  line; axis 0 with both element paths;
- ``table``: every MX format x blocks 16/32/64/128 x last axis / axis 0 (in place), rule floor;
- ``rules``: every MX format x scale rules ceil, even, rceil, mse at block 32, last axis; roundings even and
  floor for mxint4 and mxfp4;
- ``bits``: GPU == CPU bit for bit on heavy-tailed values with zeros and edge blocks, every MX format x
  rounding x scale rule x axis.

Each time is the median of 9 rounds of 50 back-to-back calls between CUDA events, against a copy re-timed at
the start of each section. The JSON is rewritten after every section, so a run cut by a time limit keeps
what it measured.

    python3 benchmarks/kernel_alu.py [--sections base,tune,table,rules,bits]
    # writes $OUT (or benchmarks/results)/kernel_alu.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

import torch
import triton
import triton.language as tl

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from mxlab.formats import FORMATS, kernels, quantize  # noqa: E402

MX = [n for n, f in FORMATS.items() if f.kind == "mx" and n != "mxfp4"]   # mxfp4: an alias of mxfp4_e2m1
BLOCKS = (16, 32, 64, 128)


@triton.jit
def _load_store(x_ptr, y_ptr, BLOCK: tl.constexpr, NB: tl.constexpr, STREAM: tl.constexpr):
    pid = tl.program_id(0)
    b = pid.to(tl.int64) * NB + tl.arange(0, NB).to(tl.int64)
    offs = b[:, None] * BLOCK + tl.arange(0, BLOCK)[None, :]
    if STREAM:
        x = tl.load(x_ptr + offs, eviction_policy="evict_first").to(tl.float32)
        tl.store(y_ptr + offs, x.to(y_ptr.dtype.element_ty), cache_modifier=".cs")
    else:
        x = tl.load(x_ptr + offs).to(tl.float32)
        tl.store(y_ptr + offs, x.to(y_ptr.dtype.element_ty))


def timeit(fn, reps: int = 50, rounds: int = 9) -> float:
    """Median over ``rounds`` of the mean seconds per call of ``reps`` back-to-back calls (CUDA events):
    back to back, so the GPU never waits for Python's launch of the next kernel."""
    for _ in range(5):
        fn()
    times = []
    for _ in range(rounds):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(reps):
            fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1e3 / reps)
    return sorted(times)[len(times) // 2]


class Run:
    def __init__(self, out: Path):
        self.out, self.t0 = out, time.time()
        dev = torch.device("cuda")
        self.x = torch.randn(8192, 8192, device=dev).to(torch.bfloat16)
        self.y = torch.empty_like(self.x)
        self.copy = timeit(lambda: self.y.copy_(self.x))
        self.res = {"device": torch.cuda.get_device_name(dev), "date": datetime.date.today().isoformat(),
                    "torch": torch.__version__, "triton": triton.__version__, "copy_ms": self.copy * 1e3,
                    "rows": [], "tuned": {}, "sections_done": []}
        print(f"copy {self.copy * 1e3:.4f} ms ({4 * self.x.numel() / self.copy / 1e9:.0f} GB/s); {self.res['device']}",
              flush=True)

    def row(self, section: str, kernel: str, seconds: float, **extra) -> None:
        self.res["rows"].append({"section": section, "kernel": kernel, "ms": seconds * 1e3,
                                 "of_copy": self.copy / seconds, **extra})
        print(f"[{time.time() - self.t0:5.0f}s] {section:6s} {kernel:58s} {seconds * 1e3:.4f} ms "
              f"{100 * self.copy / seconds:5.1f}%", flush=True)

    def quant(self, fmt: str, block: int, axis: int, **kw) -> float:
        f = FORMATS[fmt]
        rounding = kw.pop("rounding", "nearest")
        return timeit(lambda: kernels.mx_quantize(self.x, f, block, axis, rounding, **kw))

    def save(self, section: str) -> None:
        self.res["sections_done"].append(section)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "kernel_alu.json").write_text(json.dumps(self.res, indent=1))


def base(run: Run) -> None:
    nb = 64
    for stream in (False, True):
        t = timeit(lambda s=stream: _load_store[(run.x.numel() // (32 * nb),)](run.x, run.y, BLOCK=32, NB=nb,
                                                                               STREAM=s, num_warps=2))
        run.row("base", f"load/store block 32 x {nb}, 2 warps{' stream hints' if stream else ''}", t)


def tune(run: Run) -> None:
    """Last-axis launch candidates (1, 2, 4 warps; 32 elements per thread), each with ``quant_scaled`` (fast,
    the default) and ``quant_elements``, on mxint4 and mxfp4 (the integer and FP element paths); the best fast
    config per block size (mean of the two formats) is used for the rest of the run. Then axis 0 (this
    device's launch table), both element paths."""
    for block in BLOCKS:
        scores = {}
        for warps in (1, 2, 4):
            cfg = (32 * 32 * warps // block, warps, kernels.STREAM)
            for fast in (False, True):
                ts = []
                for fmt in ("mxint4", "mxfp4_e2m1"):
                    t = run.quant(fmt, block, 1, config=cfg, fast=fast)
                    ts.append(t)
                    run.row("tune", f"{fmt} block {block} last axis config {cfg} fast={fast}", t, fmt=fmt,
                            block=block, config=list(cfg), fast=fast)
                if fast:
                    scores[cfg] = sum(ts) / len(ts)
        best = min(scores, key=scores.get)
        kernels.set_tuned("last", block, best)
        run.res["tuned"][f"last/{block}"] = list(best)
    for block in BLOCKS:
        for fast in (False, True):
            run.row("tune", f"mxfp4_e2m1 block {block} axis 0 fast={fast}", run.quant("mxfp4_e2m1", block, 0, fast=fast),
                    fmt="mxfp4_e2m1", block=block, axis=0, fast=fast)
    table = {b: tuple(run.res["tuned"][f"last/{b}"]) for b in BLOCKS}
    print(f'DEVICE_CONFIGS "last": {table}', flush=True)


def table(run: Run) -> None:
    for axis in (1, 0):
        for block in BLOCKS:
            for fmt in MX:
                run.row("table", f"{fmt} block {block} axis {'last' if axis else 0}", run.quant(fmt, block, axis),
                        fmt=fmt, block=block, axis=-1 if axis else 0)


def rules(run: Run) -> None:
    for fmt in MX:
        for rule in ("ceil", "even", "rceil", "mse"):
            run.row("rules", f"{fmt} block 32 last axis rule {rule}", run.quant(fmt, 32, 1, scale_rule=rule),
                    fmt=fmt, rule=rule)
    for fmt in ("mxint4", "mxfp4_e2m1"):
        for rnd in ("even", "floor"):
            run.row("rules", f"{fmt} block 32 last axis rounding {rnd}", run.quant(fmt, 32, 1, rounding=rnd),
                    fmt=fmt, rounding=rnd)


def bits(run: Run) -> None:
    """Heavy-tailed values with zeros, plus blocks at extreme exponents (huge, tiny, subnormal, all-zero,
    NaN/Inf), so both element paths run; the CPU path is the reference."""
    g = torch.Generator().manual_seed(0)
    xc = torch.randn(256, 320, generator=g) * torch.exp(torch.randn(256, 320, generator=g) * 3)
    xc.view(-1)[::17] = 0.0
    xc.view(-1)[3::29] = -0.0
    xc[:64, :64] *= 2.0 ** 90
    xc[64:96, :32] *= 2.0 ** -120
    xc[96:128, 32:64] = 0.0
    xc[128, 100] = float("nan")
    xc[130, 200] = float("-inf")
    bad, cases = [], 0
    for fmt in MX:
        for rnd in ("nearest", "even", "floor"):
            for rule in ("floor", "ceil", "even", "rceil", "mse"):
                for axis in (-1, 0):
                    a = quantize(xc.cuda(), fmt, 32, axis=axis, rounding=rnd, scale_rule=rule).cpu()
                    b = quantize(xc, fmt, 32, axis=axis, rounding=rnd, scale_rule=rule)
                    cases += 1
                    if not torch.equal(a.view(torch.int32), b.view(torch.int32)):
                        bad.append(f"{fmt}/{rnd}/{rule}/{axis}")
        print(f"[{time.time() - run.t0:5.0f}s] bits {fmt}: {cases - len(bad)}/{cases} equal so far", flush=True)
    run.res["gpu_equals_cpu"] = {"cases": cases, "mismatched": bad}
    print(f"GPU == CPU: {cases - len(bad)}/{cases} cases" + (f", MISMATCH {bad[:5]}" if bad else ""), flush=True)


SECTIONS = {"base": base, "tune": tune, "table": table, "rules": rules, "bits": bits}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated, run in the order given")
    args = ap.parse_args(argv)
    run = Run(Path(os.environ.get("OUT") or HERE / "results"))
    run.res["copy_ms_by_section"] = {}
    for name in args.sections.split(","):
        # the copy re-timed per section: one timing at the start left cells above 100% later in a run
        run.copy = timeit(lambda: run.y.copy_(run.x))
        run.res["copy_ms_by_section"][name] = run.copy * 1e3
        SECTIONS[name](run)
        run.save(name)


if __name__ == "__main__":
    main()
