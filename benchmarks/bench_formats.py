"""Speed of MX fake quantization (CPU and CUDA) against a straightforward eager implementation.

    python benchmarks/bench_formats.py --device cpu            # CPU: fast path vs naive eager
    python benchmarks/bench_formats.py --device cuda           # GPU: copy bandwidth, Triton kernel, eager,
                                                              # and GPU == CPU bit for bit, every format/rounding

Bandwidth counts bytes read + written (2 x numel x itemsize), as a device-to-device copy does.
``naive_quantize`` is the independent eager reference the tests also use: a direct transcription of
the reference emulator's math (whole-tensor ops, one temporary per step), exponents from frexp.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mxlab.formats import FORMATS, ROUNDINGS, canonical_format, quantize  # noqa: E402

MX_NAMES = [n for n, f in FORMATS.items() if f.kind == "mx" and n != "mxfp4"]
BENCH_FORMATS = ("mxint4", "mxfp4_e2m1", "mxint8")


def naive_quantize(x: torch.Tensor, fmt: str, block_size: int = 32, axis: int = -1,
                   rounding: str = "nearest") -> torch.Tensor:
    """MX fake quantization written plainly (OCP MX v1.0 as microxcaling computes it, frexp exponents)."""
    f = FORMATS[canonical_format(fmt)]
    A = x.float().movedim(axis, -1)
    shape = A.shape
    pad = (-shape[-1]) % block_size
    A = F.pad(A, (0, pad)).reshape(*shape[:-1], -1, block_size)
    amax = A.abs().amax(dim=-1, keepdim=True)
    _, ex = torch.frexp(torch.where(amax == 0, torch.full_like(amax, 2.0 ** -126), amax))
    shared = (ex - 1).float() - f.emax  # floor(log2(amax)) - emax
    shared = torch.where(torch.isfinite(amax), shared.clamp(min=-127), torch.full_like(shared, float("nan")))
    A = A / 2 ** shared
    mb = f.mbits - 2
    if f.ebits:
        _, pe = torch.frexp(A.abs() + (A == 0).float())
        p = (pe - 1).float().clamp(min=f.min_exp)
    else:
        p = torch.zeros_like(A)
    A = A / 2 ** p * 2 ** mb
    if rounding == "nearest":
        A = torch.sign(A) * torch.floor(torch.abs(A) + 0.5)
    elif rounding == "floor":
        A = torch.sign(A) * torch.floor(torch.abs(A))
    else:
        absA = torch.abs(A)
        tie = ((absA - 0.5) % 2 == 0).float()
        A = torch.sign(A) * (torch.floor(absA + 0.5) - tie)
    A = A / 2 ** mb * 2 ** p
    A = torch.clamp(A, -f.max_norm, f.max_norm)
    A = A * 2 ** shared
    A = A.reshape(*shape[:-1], -1)[..., : shape[-1]]
    return A.movedim(-1, axis).to(x.dtype)


def special_inputs(seed: int = 0) -> list[torch.Tensor]:
    """Float32 tensors that hit every path: outliers, ties, powers of two, tiny, huge, zeros, NaN/Inf."""
    g = torch.Generator().manual_seed(seed)
    n = torch.randn(64, 96, generator=g)
    out = [n, n * torch.logspace(-30, 30, 96)[None, :]]
    k = torch.randint(-20, 20, (64, 96), generator=g).float()
    out.append(torch.ldexp(torch.randint(0, 64, (64, 96), generator=g).float() + 0.5, k.int() - 6))  # ties
    pw = torch.ldexp(torch.ones(64, 96), torch.randint(-140, 127, (64, 96), generator=g))
    out.append(pw * torch.where(torch.rand(64, 96, generator=g) < 0.5, 1.0, 1 - 2.0 ** -24))
    out.append(torch.randn(64, 96, generator=g) * 1e-39)  # subnormal inputs, scale floor
    out.append(torch.randn(64, 96, generator=g) * 3e37)  # near float32 max
    bits = torch.randint(-2 ** 31, 2 ** 31 - 1, (64, 96), generator=g, dtype=torch.int64).to(torch.int32)
    out.append(bits.view(torch.float32))  # random bit patterns: NaN, Inf, subnormals, everything
    s = torch.randn(64, 96, generator=g)
    s[0, 3], s[1, :32], s[2, 40], s[3, 5], s[4, 7] = float("nan"), 0.0, float("inf"), -0.0, 0.49999997
    s[5] = 0.49999997 * torch.ldexp(torch.ones(96), torch.randint(-10, 10, (96,), generator=g))
    out.append(s)
    return out


def _time(fn, reps: int, sync=lambda: None) -> float:
    """Best wall time of ``reps`` calls after one warm-up (seconds)."""
    fn()
    sync()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_cpu(size: int, reps: int) -> None:
    x = torch.randn(size, size).to(torch.bfloat16)
    nbytes = 2 * x.numel() * x.element_size()
    copy = _time(lambda: x.clone(), reps)
    print(f"cpu threads={torch.get_num_threads()} size={size}x{size} bf16, block 32, nearest")
    print(f"  copy (clone)          {copy * 1e3:8.1f} ms  {nbytes / copy / 1e9:6.2f} GB/s")
    for fmt in BENCH_FORMATS:
        fast = _time(lambda: quantize(x, fmt, 32), reps)
        naive = _time(lambda: naive_quantize(x, fmt, 32), max(1, reps // 2))
        same = torch.equal(quantize(x[:256], fmt).view(torch.int16), naive_quantize(x[:256], fmt).view(torch.int16))
        print(f"  {fmt:12s} fast {fast * 1e3:8.1f} ms {nbytes / fast / 1e9:6.2f} GB/s ({copy / fast:5.1%} of copy)"
              f" | naive {naive * 1e3:8.1f} ms | speedup {naive / fast:4.1f}x | equal {same}")


def check_gpu_equals_cpu() -> int:
    """Every format (MX via the Triton kernel, others via torch on CUDA) x rounding x layouts: bits equal."""
    bad = 0
    layouts = {torch.float32: [(32, -1), (16, 0), (48, -1)], torch.bfloat16: [(32, -1), (128, -1)],
               torch.float16: [(32, -1)]}
    xs = special_inputs()
    for fmt in [*MX_NAMES, "int8", "int4", "int3", "nvfp4"]:
        for rounding in ROUNDINGS:
            n = 0
            for x in xs:
                for dtype in (torch.float32, torch.bfloat16, torch.float16):
                    for bs, axis in layouts[dtype]:
                        xi = x[:, :90] if bs == 48 else x  # 90 columns: a padded last block
                        xi = xi.to(dtype)
                        cpu = quantize(xi, fmt, bs, axis, rounding)
                        gpu = quantize(xi.cuda(), fmt, bs, axis, rounding).cpu()
                        iv = torch.int32 if dtype == torch.float32 else torch.int16
                        m = (cpu.view(iv) != gpu.view(iv)) & ~(cpu.isnan() & gpu.isnan())  # NaN payloads may differ
                        if m.any():
                            n += 1
                            if n <= 2:
                                print(f"  MISMATCH {fmt} {rounding} {dtype} bs={bs} axis={axis}: {int(m.sum())} "
                                      f"elements, cpu {cpu[m][:4].tolist()} gpu {gpu[m][:4].tolist()} x {xi[m][:4].tolist()}")
            print(f"  gpu==cpu {fmt:12s} {rounding:8s} {'OK' if n == 0 else f'{n} MISMATCHED CASES'}")
            bad += n
    return bad


def _time_cuda(fn, reps: int) -> float:
    """Mean seconds per call of ``reps`` back-to-back calls between CUDA events (after 10 warm-ups)."""
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / reps


def bench_cuda(size: int, reps: int) -> None:
    import triton

    from mxlab.formats import FORMATS, kernels

    print(f"cuda {torch.cuda.get_device_name()} torch {torch.__version__} triton {triton.__version__} "
          f"kernels available: {kernels.available()}")
    x = torch.randn(size, size, device="cuda").to(torch.bfloat16)
    nbytes = 2 * x.numel() * x.element_size()
    y = torch.empty_like(x)
    _time_cuda(lambda: y.copy_(x), 5000)  # let clocks settle before anything is timed
    copy = _time_cuda(lambda: y.copy_(x), reps)
    print(f"size={size}x{size} bf16, block 32, nearest; bytes moved (read + write) {nbytes / 1e6:.0f} MB")
    print(f"  copy (d2d)            {copy * 1e3:8.3f} ms  {nbytes / copy / 1e9:7.1f} GB/s")
    for fmt in [*BENCH_FORMATS, *(m for m in MX_NAMES if m not in BENCH_FORMATS)]:
        fast = _time_cuda(lambda: quantize(x, fmt, 32), reps)
        naive = _time_cuda(lambda: naive_quantize(x, fmt, 32), max(3, reps // 10))
        print(f"  {fmt:12s} triton {fast * 1e3:8.3f} ms {nbytes / fast / 1e9:7.1f} GB/s ({copy / fast:6.1%} of copy)"
              f" | eager {naive * 1e3:8.3f} ms | speedup {naive / fast:5.1f}x")
    for rounding in ("even", "floor"):
        fast = _time_cuda(lambda: quantize(x, "mxint4", 32, -1, rounding), reps)
        print(f"  mxint4 {rounding:6s}  triton {fast * 1e3:8.3f} ms ({copy / fast:6.1%} of copy)")
    for bs in (16, 64, 128):
        fast = _time_cuda(lambda: quantize(x, "mxfp4", bs), reps)
        print(f"  mxfp4 block {bs:3d}       {fast * 1e3:8.3f} ms ({copy / fast:6.1%} of copy)")
    xf = x.float()
    yf = torch.empty_like(xf)
    copyf = _time_cuda(lambda: yf.copy_(xf), reps)
    fast = _time_cuda(lambda: quantize(xf, "mxfp4", 32), reps)
    print(f"  mxfp4 fp32 input      {fast * 1e3:8.3f} ms ({copyf / fast:6.1%} of fp32 copy)")
    fast = _time_cuda(lambda: quantize(x, "mxfp4", 32, 0), reps)
    print(f"  mxfp4 axis=0          {fast * 1e3:8.3f} ms ({copy / fast:6.1%} of copy; includes two transposes)")
    print("  config sweep, mxint4 block 32 (blocks per program x warps):")
    f = FORMATS["mxint4"]
    for nb in (16, 32, 64, 128, 256):
        row = []
        for warps in (2, 4, 8):
            t = _time_cuda(lambda: kernels.mx_quantize(x, f, 32, 1, "nearest", config=(nb, warps)), reps)
            row.append(f"w{warps} {copy / t:6.1%}")
        print(f"    nb={nb:3d}  " + "  ".join(row))
    big = torch.equal(quantize(x, "mxint4").cpu().view(torch.int16), quantize(x.cpu(), "mxint4").view(torch.int16))
    print(f"  {size}^2 mxint4 gpu==cpu: {big}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--reps", type=int, default=300, help="timed calls (CPU: reps // 5 + 1)")
    ap.add_argument("--skip-check", action="store_true", help="GPU: skip the bit-for-bit GPU == CPU check")
    args = ap.parse_args()
    print(f"torch {torch.__version__} {time.strftime('%Y-%m-%d %H:%M')}")
    if args.device == "cpu":
        bench_cpu(args.size, args.reps // 100 + 1)
        return
    t0 = time.time()
    bad = 0 if args.skip_check else check_gpu_equals_cpu()
    print(f"check took {time.time() - t0:.0f} s", flush=True)
    bench_cuda(args.size, args.reps)
    print("GPU == CPU bit for bit: " + ("skipped" if args.skip_check else "all OK" if bad == 0 else f"{bad} mismatches"))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
