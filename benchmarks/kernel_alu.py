"""The MX kernel against a device copy on this GPU, and why: memory or ALUs. Sections, in this order:

- ``base``: ``y.copy_(x)`` (bf16 8192 x 8192, read + write) and a Triton load/store kernel with the MX
  kernel's tiling (what the memory system allows that tiling);
- ``tune``: last-axis launch candidates (1, 2, 4 warps; 32 elements per thread), each with the kernels' element
  path ``quant_scaled`` and the reference-shaped ``quant_elements`` (same bits), on mxint4 and mxfp4; the best
  per block size is used for the rest of the run (``kernels.set_tuned``) and printed as a ``DEVICE_CONFIGS``
  line;
- ``tune0``: axis 0 (in place) candidates, the tile kernel and the row-loop kernel, on mxfp4; likewise;
- ``tune_mse``: the mse rule's own launch configs (``kernels.launch_config``'s "last_mse" / "inner_mse");
- ``table``: every MX format x blocks 16/32/64/128 x last axis / axis 0, rule floor;
- ``rules``: every MX format x scale rules ceil, even, rceil, mse x blocks 16/32/64/128, last axis; each rule on
  axis 0 at block 32 (mxint4, mxfp4); roundings even and floor for mxint4 and mxfp4;
- ``torchao``: torchao's compiled ``to_mx`` (fp4, fp8, fp6) next to mxlab's kernel, when torchao imports;
- ``bits``: GPU == CPU bit for bit on heavy-tailed values with zeros and edge blocks, float32 and bf16, every
  MX format x scale rule x axis at block 32 (every rounding for mxint4 and mxfp4; the interpreter check
  ``tests/interpret/check_kernels.py`` has all of them), and the launch configs in use at every block size.

Timing: each kernel's calls are captured in a CUDA graph of 50 calls, so no Python launch sits between them;
each of 11 rounds replays a copy graph, then the kernel's; a cell's "of copy" is the median over rounds of
copy time / kernel time. The JSON is rewritten after every section, so a run cut by a time limit keeps what
it measured.

    python3 benchmarks/kernel_alu.py [--sections base,tune,tune0,tune_mse,table,rules,torchao,bits] [--tuned kernel_alu.json]
    # writes $OUT (or benchmarks/results)/kernel_alu.{json,md}; bench_h200.py runs it as its kernel section
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
# TRITON_INTERPRET=1 on a CPU-only machine: a smoke run of the script itself (tiny tensor, no graphs, no timing
# worth reading), so a broken section is found before device time is spent on it
SMOKE = kernels.interpreted() and not torch.cuda.is_available()
DEV = torch.device("cpu" if SMOKE else "cuda")
REPS, ROUNDS = (1, 1) if SMOKE else (50, 11)
if SMOKE:   # every code path, a few cells each
    MX, BLOCKS = ["mxint4", "mxfp4_e2m1"], (16, 32)


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
    """Median over ``rounds`` of the mean seconds per call of ``reps`` back-to-back calls (CUDA events), without
    a graph (for functions a CUDA graph cannot capture)."""
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


def graph_of(fn, reps: int = REPS):
    """``reps`` calls of fn captured in one CUDA graph: replayed, the GPU runs them back to back with no
    Python launch between them (mx_quantize's launch takes ~30-50 us on the CPU, near the kernel's 70 us, so
    timing plain back-to-back calls let the CPU's jitter into the GPU times)."""
    fn()                                   # compile outside the capture
    if SMOKE:
        return lambda: [fn() for _ in range(reps)]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):          # warm-up on a side stream, as CUDA graph capture asks
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(reps):
            fn()
    torch.cuda.synchronize()
    return g


def replay_seconds(g, reps: int = REPS) -> float:
    if SMOKE:
        t = time.perf_counter()
        g()
        return (time.perf_counter() - t) / reps
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    g.replay()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / 1e3 / reps


class Run:
    def __init__(self, out: Path):
        self.out, self.t0 = out, time.time()
        dev = DEV
        self.x = torch.randn(*((64, 512) if SMOKE else (8192, 8192)), device=dev).to(torch.bfloat16)
        self.y = torch.empty_like(self.x)
        self.copy_graph = graph_of(lambda: self.y.copy_(self.x))
        self.copy = sorted(replay_seconds(self.copy_graph) for _ in range(ROUNDS))[ROUNDS // 2]
        self.res = {"device": "smoke run (interpreter)" if SMOKE else torch.cuda.get_device_name(dev), "date": datetime.date.today().isoformat(),
                    "torch": torch.__version__, "triton": triton.__version__, "copy_ms": self.copy * 1e3,
                    "method": f"CUDA graphs of {REPS} calls; {ROUNDS} rounds, each a copy graph then the kernel's; "
                              "of_copy = median over rounds of copy / kernel",
                    "rows": [], "tuned": {}, "sections_done": []}
        print(f"copy {self.copy * 1e3:.4f} ms ({4 * self.x.numel() / self.copy / 1e9:.0f} GB/s); {self.res['device']}",
              flush=True)

    def measure(self, fn) -> tuple[float, float]:
        """(median seconds per call, median of copy / kernel over rounds): the copy is timed in every round, next
        to the kernel, so a clock or thermal drift during the run moves both."""
        g = graph_of(fn)
        ks, ratios = [], []
        for _ in range(ROUNDS):
            c = replay_seconds(self.copy_graph)
            k = replay_seconds(g)
            ks.append(k)
            ratios.append(c / k)
        del g
        return sorted(ks)[ROUNDS // 2], sorted(ratios)[ROUNDS // 2]

    def row(self, section: str, kernel: str, timed: tuple[float, float], **extra) -> float:
        seconds, of_copy = timed
        self.res["rows"].append({"section": section, "kernel": kernel, "ms": seconds * 1e3, "of_copy": of_copy,
                                 **extra})
        print(f"[{time.time() - self.t0:5.0f}s] {section:6s} {kernel:58s} {seconds * 1e3:.4f} ms "
              f"{100 * of_copy:5.1f}%", flush=True)
        if len(self.res["rows"]) % 16 == 0:   # a run cut by its time limit keeps all but the last few rows
            self.save(None)
        return seconds

    def quant(self, fmt: str, block: int, axis: int, **kw) -> tuple[float, float]:
        f = FORMATS[fmt]
        rounding = kw.pop("rounding", "nearest")
        return self.measure(lambda: kernels.mx_quantize(self.x, f, block, axis, rounding, **kw))

    def save(self, section: str | None) -> None:
        if section:
            self.res["sections_done"].append(section)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "kernel_alu.json").write_text(json.dumps(self.res, indent=1))


def base(run: Run) -> None:
    nb = 64
    for stream in (False, True):
        run.row("base", f"load/store block 32 x {nb}, 2 warps{' stream hints' if stream else ''}",
                run.measure(lambda s=stream: _load_store[(run.x.numel() // (32 * nb),)](run.x, run.y, BLOCK=32, NB=nb,
                                                                                       STREAM=s, num_warps=2)))


def _pick(run: Run, kind: str, block: int, scores: dict) -> None:
    best = min(scores, key=scores.get)
    if not SMOKE:
        kernels.set_tuned(kind, block, best)
    run.res["tuned"][f"{kind}/{block}"] = list(best)


def tune(run: Run) -> None:
    """Last-axis launch candidates (1, 2, 4 warps; 32 elements per thread), each with ``quant_scaled`` (fast,
    the default) and ``quant_elements``, on mxint4 and mxfp4 (the integer and FP element paths); the best fast
    config per block size (mean of the two formats) is used for the rest of the run."""
    for block in BLOCKS:
        if f"last/{block}" in run.res["tuned"]:    # from --tuned
            continue
        scores = {}
        for warps in (1, 2, 4):
            cfg = (32 * 32 * warps // block, warps, kernels.STREAM)
            for fast in (False, True):
                ts = []
                for fmt in ("mxint4", "mxfp4_e2m1"):
                    ts.append(run.row("tune", f"{fmt} block {block} last axis config {cfg} fast={fast}",
                                      run.quant(fmt, block, 1, config=cfg, fast=fast), fmt=fmt, block=block,
                                      config=list(cfg), fast=fast))
                if fast:
                    scores[cfg] = sum(ts) / len(ts)
        _pick(run, "last", block, scores)
    table = {b: tuple(run.res["tuned"][f"last/{b}"]) for b in BLOCKS}
    print(f'DEVICE_CONFIGS "last": {table}', flush=True)


def axis0_candidates(block: int) -> list[tuple[int, int, int]]:
    """(inner columns, warps, variant) for blocks along axis 0: the (KP, NI) tile kernel with 1, 2, 4 warps (a
    tile of at most 16384 elements), and at block 16 the row-loop kernel (``kernels.ROWS``)."""
    kp = triton.next_power_of_2(block)
    tile = [(ni, w, v) for ni in (32, 64, 128, 256) for w in (1, 2, 4) for v in (0, kernels.STREAM)
            if kp * ni <= 16384 and kp * ni >= 32 * 8 * w]
    # the row-loop kernel: 62-78% at block 16 and <= 65% at block 32 on an H200 (2026-12-03), and its unrolled
    # loops take ~60 s to compile per config from block 64 up, so only its two best block-16 configs
    rows = [(256, 2, kernels.ROWS | kernels.STREAM), (512, 4, kernels.ROWS | kernels.STREAM)] if block == 16 else []
    return (tile[:2] + rows[:1]) if SMOKE else tile + rows


def tune0(run: Run) -> None:
    """Axis 0 (blocks across the memory order, read in place): every ``axis0_candidates`` config on mxfp4 (the
    FP path, the slower one); the best per block size is used for the rest of the run."""
    for block in BLOCKS:
        if f"inner/{block}" in run.res["tuned"]:   # from --tuned
            continue
        scores = {}
        for cfg in axis0_candidates(block):
            scores[cfg] = run.row("tune0", f"mxfp4_e2m1 block {block} axis 0 config {cfg}",
                                  run.quant("mxfp4_e2m1", block, 0, config=cfg), fmt="mxfp4_e2m1", block=block,
                                  axis=0, config=list(cfg))
        _pick(run, "inner", block, scores)
    table = {b: tuple(run.res["tuned"][f"inner/{b}"]) for b in BLOCKS}
    print(f'DEVICE_CONFIGS "inner": {table}', flush=True)


def tune_mse(run: Run) -> None:
    """The mse rule's own launch configs (it holds two quantized tiles and float64 sums, so it may want fewer
    elements per thread than floor): last axis 8/16/32 elements per thread x 1/2 warps at every block size,
    axis 0 at block 32 (the base kind's configs among them); mxfp4; the best is used for the rest of the run."""
    for block in BLOCKS:
        scores = {}
        for ept in (8, 16, 32):
            for warps in (1, 2):
                cfg = (max(1, ept * 32 * warps // block), warps, kernels.STREAM)
                scores[cfg] = run.row("tunemse", f"mxfp4_e2m1 block {block} last axis mse config {cfg}",
                                      run.quant("mxfp4_e2m1", block, 1, scale_rule="mse", config=cfg),
                                      fmt="mxfp4_e2m1", block=block, rule="mse", config=list(cfg))
        _pick(run, "last_mse", block, scores)
    scores = {}
    for cfg in ((32, 1, 0), (64, 1, 0), (64, 2, 0), (128, 2, 0), (32, 4, 0), (128, 4, 0)):
        scores[cfg] = run.row("tunemse", f"mxfp4_e2m1 block 32 axis 0 mse config {cfg}",
                              run.quant("mxfp4_e2m1", 32, 0, scale_rule="mse", config=cfg), fmt="mxfp4_e2m1",
                              block=32, axis=0, rule="mse", config=list(cfg))
    _pick(run, "inner_mse", 32, scores)


def table(run: Run) -> None:
    for axis in (1, 0):
        for block in BLOCKS:
            for fmt in MX:
                run.row("table", f"{fmt} block {block} axis {'last' if axis else 0}", run.quant(fmt, block, axis),
                        fmt=fmt, block=block, axis=-1 if axis else 0)


def rules(run: Run) -> None:
    for block in BLOCKS:
        for fmt in MX:
            for rule in ("ceil", "even", "rceil", "mse"):
                run.row("rules", f"{fmt} block {block} last axis rule {rule}",
                        run.quant(fmt, block, 1, scale_rule=rule), fmt=fmt, block=block, rule=rule)
    for fmt in ("mxint4", "mxfp4_e2m1"):
        for rule in ("ceil", "even", "rceil", "mse"):
            run.row("rules", f"{fmt} block 32 axis 0 rule {rule}", run.quant(fmt, 32, 0, scale_rule=rule), fmt=fmt,
                    block=32, axis=0, rule=rule)
        for rnd in ("even", "floor"):
            run.row("rules", f"{fmt} block 32 last axis rounding {rnd}", run.quant(fmt, 32, 1, rounding=rnd),
                    fmt=fmt, rounding=rnd)


def torchao(run: Run) -> None:
    """torchao's compiled ``to_mx`` (1-byte codes and E8M0 scales; fp4 packs two codes a byte) next to mxlab's
    fake quantization (the bf16 tensor), both rule floor, block 32: skipped with the reason when torchao is
    not importable."""
    try:
        from torchao.prototype.mx_formats.mx_tensor import to_mx
    except Exception as exc:  # noqa: BLE001 - torchao is optional; carried as a wheel to the device
        run.res["torchao"] = f"skipped: torchao not importable ({type(exc).__name__}: {exc})"
        print(run.res["torchao"], flush=True)
        return
    import torchao
    run.res["torchao"] = {"version": torchao.__version__}
    for name, dt in (("fp4_e2m1", getattr(torch, "float4_e2m1fn_x2", None)), ("fp8_e4m3", torch.float8_e4m3fn),
                     ("fp6_e2m3", "fp6_e2m3"), ("fp6_e3m2", "fp6_e3m2")):
        fn = torch.compile(lambda t, dt=dt: to_mx(t, dt, 32))
        try:
            fn(run.x)
        except Exception as exc:  # noqa: BLE001 - recorded, and the run goes on
            run.res["torchao"][name] = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
            print(f"torchao {name}: {run.res['torchao'][name]}", flush=True)
            continue
        try:
            timed, how = run.measure(lambda: fn(run.x)), "graph"
        except Exception as exc:  # noqa: BLE001 - a compiled function a CUDA graph cannot capture: plain calls
            if not SMOKE:
                torch.cuda.synchronize()
            k = timeit(lambda: fn(run.x))
            timed, how = (k, run.copy / k), f"plain back-to-back calls ({type(exc).__name__})"
        run.row("torchao", f"torchao {torchao.__version__} to_mx {name} block 32 (compiled; {how})", timed,
                fmt=name, block=32)
    for fmt in ("mxfp4_e2m1", "mxfp8_e4m3", "mxfp6_e2m3", "mxfp6_e3m2"):
        run.row("torchao", f"mxlab {fmt} block 32 (fake quant, bf16 out)", run.quant(fmt, 32, 1), fmt=fmt, block=32)


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
    xb = xc.to(torch.bfloat16)             # bf16 in, bf16 out: the conversion of the result is checked too
    bad, nan_payload, cases = [], [], 0

    def check(name: str, gpu: torch.Tensor, cpu: torch.Tensor) -> None:
        nonlocal cases
        cases += 1
        ints = torch.int32 if cpu.dtype == torch.float32 else torch.int16
        if torch.equal(gpu.view(ints), cpu.view(ints)):
            return
        same_but_nan = torch.equal(gpu.isnan(), cpu.isnan()) and torch.equal(
            gpu.nan_to_num(0.0).view(ints), cpu.nan_to_num(0.0).view(ints))
        (nan_payload if same_but_nan else bad).append(name)

    for fmt in MX:   # every rounding for one integer and one FP format (the interpreter check has all of them)
        for rnd in ("nearest", "even", "floor") if fmt in ("mxint4", "mxfp4_e2m1") else ("nearest",):
            for rule in ("floor", "ceil", "even", "rceil", "mse"):
                for axis in (-1, 0):
                    for x in (xc, xb):
                        check(f"{fmt}/{rnd}/{rule}/{axis}/{x.dtype}",
                              quantize(x.to(DEV), fmt, 32, axis=axis, rounding=rnd, scale_rule=rule).cpu(),
                              quantize(x, fmt, 32, axis=axis, rounding=rnd, scale_rule=rule))
        print(f"[{time.time() - run.t0:5.0f}s] bits {fmt}: {cases - len(bad) - len(nan_payload)}/{cases} equal so far",
              flush=True)
    # the launch configs in use (this device's table, or what tune/tune0 picked) at every block size, both axes
    for fmt in ("mxfp4_e2m1", "mxint8"):
        for block in BLOCKS:
            for axis in (-1, 0):
                for x in (xc, xb):
                    check(f"{fmt}/block {block}/axis {axis}/{x.dtype}",
                          quantize(x.to(DEV), fmt, block, axis=axis).cpu(), quantize(x, fmt, block, axis=axis))
    run.res["gpu_equals_cpu"] = {"cases": cases, "mismatched": bad, "nan_payload_only": nan_payload}
    print(f"GPU == CPU: {cases - len(bad) - len(nan_payload)}/{cases} cases bit for bit; {len(nan_payload)} differ only "
          f"in a NaN's payload (e.g. {nan_payload[:3]})" + (f"; MISMATCH {bad[:5]}" if bad else ""), flush=True)


def markdown(res: dict) -> list[str]:
    """The run's tables as markdown lines: every format x block x axis (rule floor), the other rules' range over
    blocks, torchao, the bits check and the launch configs in use."""
    rows = res["rows"]
    pct = lambda r: f"{100 * r['of_copy']:.1f}%"  # noqa: E731
    md = [f"Device copy (bf16, read + write): {res['copy_ms']:.4f} ms on {res['device']}; {res['method']}.", ""]
    table = {(r["fmt"], r["axis"], r["block"]): r for r in rows if r["section"] == "table"}
    if table:
        md += ["| format | last axis, block " + " | ".join(map(str, BLOCKS)) + " | axis 0, block "
               + " | ".join(map(str, BLOCKS)) + " |", "| --- |" + " ---: |" * (2 * len(BLOCKS))]
        for fmt in MX:
            md.append(f"| {fmt} | " + " | ".join(pct(table[fmt, a, b]) if (fmt, a, b) in table else "-"
                                                 for a in (-1, 0) for b in BLOCKS) + " |")
        md.append("")
    rules = [r for r in rows if r["section"] == "rules" and "rule" in r and r.get("axis", -1) == -1]
    for rule in ("ceil", "even", "rceil", "mse"):
        of = [r["of_copy"] for r in rules if r["rule"] == rule]
        if of:
            md.append(f"- rule {rule}, last axis, every format and block: {100 * min(of):.1f}-{100 * max(of):.1f}% of copy")
    md += [f"- {r['kernel']}: {r['ms']:.4f} ms ({pct(r)})" for r in rows if r["section"] == "torchao"]
    if "gpu_equals_cpu" in res:
        g = res["gpu_equals_cpu"]
        md.append(f"- GPU == CPU: {g['cases'] - len(g['mismatched']) - len(g['nan_payload_only'])}/{g['cases']} cases bit "
                  f"for bit, {len(g['nan_payload_only'])} equal but for a NaN's payload"
                  + (f"; MISMATCH {g['mismatched'][:5]}" if g["mismatched"] else ""))
    if res["tuned"]:
        md.append("- launch configs: " + ", ".join(f"{k} {tuple(v)}" for k, v in res["tuned"].items()))
    return md


SECTIONS = {"base": base, "tune": tune, "tune0": tune0, "tune_mse": tune_mse, "table": table, "rules": rules, "torchao": torchao,
            "bits": bits}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated, run in the order given")
    ap.add_argument("--tuned", type=Path, help="use the launch configs an earlier run picked (its kernel_alu.json)")
    args = ap.parse_args(argv)
    run = Run(Path(os.environ.get("OUT") or HERE / "results"))
    if args.tuned:
        for key, cfg in json.loads(args.tuned.read_text())["tuned"].items():
            kind, block = key.split("/")
            if not SMOKE:
                kernels.set_tuned(kind, int(block), tuple(cfg))
            run.res["tuned"][key] = cfg
    run.res["copy_ms_by_section"] = {}
    for name in args.sections.split(","):
        run.res["copy_ms_by_section"][name] = 1e3 * sorted(replay_seconds(run.copy_graph) for _ in range(ROUNDS))[ROUNDS // 2]
        SECTIONS[name](run)
        run.save(name)
    (run.out / "kernel_alu.md").write_text("\n".join(markdown(run.res)) + "\n")


if __name__ == "__main__":
    main()
