"""Is the MX kernel bound by memory or by its ALUs on this GPU? One short run, no tuning.

Against ``y.copy_(x)`` (bf16 8192 x 8192, read + write), in one process with this device's launch table:
- ``load/store``: a Triton kernel with the MX kernel's tiling that only converts to float32 and back
  (what the memory system allows this tiling),
- the MX kernel for integer formats with the constant-folded element path (``INT=True``, the default
  since 2026-12-03) and without it (``INT=False``, the generic path: same bits, ~8 more integer ops per
  element), and for FP formats, at block 32 on the last axis;
- ``quantize`` (the public path) for every MX format at block 32: rules floor, rceil and mse on the last
  axis, floor on axis 0;
and checks the GPU's bits against the CPU's for every MX format x rounding x scale rule x axis.

    python3 benchmarks/kernel_alu.py            # on a CUDA machine; writes $OUT (or benchmarks/results)/kernel_alu.json
"""
from __future__ import annotations

import datetime
import json
import os
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from mxlab.formats import FORMATS, kernels, quantize  # noqa: E402
from mxlab.formats.kernels import RULE_IDS  # noqa: E402
from mxlab.formats.table import rule_threshold  # noqa: E402


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


def timeit(fn, reps: int = 20, rounds: int = 7) -> float:
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


def mx_launch(x, y, fmt: str, block: int, is_int: bool):
    """kernels._mx_kernel on the last axis with this device's launch config, INT forced to ``is_int``."""
    f = FORMATS[fmt]
    nb, warps, variant = kernels.launch_config("last", block, x.device)
    n_blocks = x.numel() // block
    nb = max(1, min(nb, 16384 // block))
    grid = (triton.cdiv(n_blocks, nb),)
    kernels._mx_kernel[grid](x, y, n_blocks, x.shape[-1], x.shape[-1] // block, f.mbits - 2,
                             f.min_exp if f.ebits else 0, f.emax, float(f.max_norm), rule_threshold(f, "floor"),
                             BLOCK=block, KP=block, NB=nb, ROUND=0, CONTIG=True, MASKED=n_blocks % nb != 0,
                             RULE=RULE_IDS["floor"], STREAM=bool(variant & kernels.STREAM), INT=is_int,
                             num_warps=warps)
    return (nb, warps, variant)


def main() -> None:
    dev = torch.device("cuda")
    x = torch.randn(8192, 8192, device=dev).to(torch.bfloat16)
    y = torch.empty_like(x)
    copy = timeit(lambda: y.copy_(x))
    res = {"device": torch.cuda.get_device_name(dev), "date": datetime.date.today().isoformat(),
           "torch": torch.__version__, "triton": triton.__version__, "copy_ms": copy * 1e3, "rows": []}
    block = 32
    nb, warps, variant = kernels.launch_config("last", block, dev)
    nb = min(nb, 16384 // block)
    for stream in (False, True):
        t = timeit(lambda s=stream: _load_store[(x.numel() // (block * nb),)](x, y, BLOCK=block, NB=nb, STREAM=s,
                                                                              num_warps=warps))
        res["rows"].append({"kernel": f"load/store{' (stream hints)' if stream else ''}", "ms": t * 1e3,
                            "of_copy": copy / t})
    ref = {}
    for fmt in ("mxint4", "mxint8", "mxfp4_e2m1", "mxfp8_e4m3"):
        for is_int in ((True, False) if FORMATS[fmt].ebits == 0 else (False,)):
            cfg = mx_launch(x, y, fmt, block, is_int)
            got = y.clone()
            if fmt in ref:
                assert torch.equal(got.view(torch.int16), ref[fmt].view(torch.int16)), "INT path changed bits"
            ref[fmt] = got
            t = timeit(lambda: mx_launch(x, y, fmt, block, is_int))
            res["rows"].append({"kernel": f"{fmt} INT={is_int}", "config": list(cfg), "ms": t * 1e3,
                                "of_copy": copy / t})
    res["int_path_bits_equal"] = True
    # the public path (mx_quantize with this device's table) for every MX format, some rules, both axes
    for fmt in [n for n, f in FORMATS.items() if f.kind == "mx"]:
        for rule, axis in (("floor", -1), ("rceil", -1), ("mse", -1), ("floor", 0)):
            t = timeit(lambda: quantize(x, fmt, block, axis=axis, scale_rule=rule))
            res["rows"].append({"kernel": f"quantize {fmt} rule {rule} axis {axis}", "ms": t * 1e3, "of_copy": copy / t})
    # GPU == CPU bit for bit on heavy-tailed values with zeros, every MX format x rounding x rule, both axes
    g = torch.Generator().manual_seed(0)
    xc = torch.randn(256, 320, generator=g) * torch.exp(torch.randn(256, 320, generator=g) * 3)
    xc.view(-1)[::17] = 0.0
    xc.view(-1)[3::29] = -0.0
    bad, cases = [], 0
    for fmt in [n for n, f in FORMATS.items() if f.kind == "mx"]:
        for rnd in ("nearest", "even", "floor"):
            for rule in ("floor", "ceil", "even", "rceil", "mse"):
                for axis in (-1, 0):
                    a = quantize(xc.to(dev), fmt, 32, axis=axis, rounding=rnd, scale_rule=rule).cpu()
                    b = quantize(xc, fmt, 32, axis=axis, rounding=rnd, scale_rule=rule)
                    cases += 1
                    if not torch.equal(a.view(torch.int32), b.view(torch.int32)):
                        bad.append(f"{fmt}/{rnd}/{rule}/{axis}")
    res["gpu_equals_cpu"] = {"cases": cases, "mismatched": bad}
    out = Path(os.environ.get("OUT") or HERE / "results")
    out.mkdir(parents=True, exist_ok=True)
    (out / "kernel_alu.json").write_text(json.dumps(res, indent=1))
    print(f"copy {copy * 1e3:.4f} ms ({2 * x.numel() * 2 / copy / 1e9:.0f} GB/s); {res['device']}")
    for r in res["rows"]:
        print(f"{r['kernel']:44s} {r['ms']:.4f} ms  {100 * r['of_copy']:.1f}% of copy")
    print(f"GPU == CPU: {cases - len(bad)}/{cases} cases" + (f", MISMATCH {bad[:5]}" if bad else ""))


if __name__ == "__main__":
    main()
