"""Run under TRITON_INTERPRET=1 (tests/test_triton_interpret.py): the Triton kernels on CPU tensors give
the same bits as the torch paths. Prints one line per check; exits 1 on the first mismatch."""
from __future__ import annotations

import os
import sys


import torch

assert os.environ.get("TRITON_INTERPRET") == "1", "set TRITON_INTERPRET=1"
torch.set_num_threads(1)

from mxlab.formats import FORMATS, kernels, quantize  # noqa: E402
from mxlab.ptq.methods.gptq import gptq_quantize, mx_block_quantizer, weight_quantizer  # noqa: E402
from mxlab.ptq.methods.gptq_fused import column_rule  # noqa: E402
from mxlab.recipe import QuantSpec  # noqa: E402

g = torch.Generator().manual_seed(0)


def heavy(*shape):
    """Values over many binades (with exact zeros and ties), to exercise every branch of the rounding."""
    x = torch.randn(shape, generator=g) * torch.exp(torch.randn(shape, generator=g) * 3)
    x.view(-1)[::17] = 0.0
    x.view(-1)[5::23] = 2.5
    return x


def check(ok: bool, what: str) -> None:
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        sys.exit(1)


# 1. MX fake-quant kernel: last axis and the in-place axis kernel, against the CPU path, bit for bit
cases = [((16, 96), 1, 32), ((64, 40), 0, 32), ((40, 24), 0, 16), ((3, 40, 5), 1, 16), ((256, 8), 0, 128),
         ((24, 64), 0, 64), ((48,), 0, 32)]
for shape, axis, bs in cases:
    x = heavy(*shape)
    for fmt, rnd, dt in [("mxint4", "nearest", torch.float32), ("mxfp4_e2m1", "even", torch.bfloat16),
                         ("mxfp8_e4m3", "floor", torch.float32), ("mxint8", "even", torch.float16),
                         ("mxfp6_e3m2", "nearest", torch.bfloat16)]:
        xd = x.to(dt)
        got = kernels.mx_quantize(xd, FORMATS[fmt], bs, axis, rnd)
        ref = quantize(xd, fmt, bs, axis=axis, rounding=rnd)
        same = torch.equal(got.view(torch.int16 if dt != torch.float32 else torch.int32),
                           ref.view(torch.int16 if dt != torch.float32 else torch.int32))
        check(same, f"mx kernel {fmt} {rnd} {dt} shape {shape} axis {axis} block {bs}")
    for rule in ("ceil", "even", "rceil", "mse"):       # the scale rules, float32 (bits equal with NaN masked)
        got = kernels.mx_quantize(x, FORMATS["mxfp4_e2m1"], bs, axis, "even", scale_rule=rule)
        ref = quantize(x, "mxfp4_e2m1", bs, axis=axis, rounding="even", scale_rule=rule)
        check(torch.equal(got.view(torch.int32), ref.view(torch.int32)), f"mx kernel scale_rule {rule} shape {shape}")

# 1a. edge values: signed zeros, elements that underflow to 0 against a huge block max, subnormal and all-zero
# blocks, saturation and ties at the top of the grid, NaN/Inf blocks; every MX format, rounding and rule
def edges() -> torch.Tensor:
    rows = [[2.0 ** 100, -2.0 ** -60, -1e-45, -0.0, 2.0 ** -149, -2.0 ** -149, 3.0, -7.5],
            [-0.0, 0.0, -0.0, 0.0, 0.0, -0.0, 0.0, 0.0],
            [2.0 ** -130, -2.0 ** -140, 2.0 ** -149, -2.0 ** -127, 1e-44, -3e-39, 0.0, -0.0],
            [1.75, -1.75, 1.875, -1.9999, 1.0, -0.5, 0.25, 1.984375],
            [448.0, -480.0, 57344.0, -61440.0, 6.0, -6.5, 7.0, 3.25],
            [float("nan"), 1.0, -2.0, 0.0, 3.0, 4.0, 5.0, 6.0],
            [float("inf"), -1.0, 2.0, -0.0, 3.0, 4.0, 5.0, 6.0],
            [2.0 ** 127 * 1.5, -2.0 ** 127, 1.0, -1.0, 2.0 ** -126, 0.0, -0.0, 1e-30]]
    return torch.tensor(rows, dtype=torch.float32)


xe = edges()
xe_normal = xe[[0, 1, 3, 4, 5, 6, 7]]
for fmt in [n for n, f in FORMATS.items() if f.kind == "mx"]:
    for rnd in ("nearest", "even", "floor"):
        for rule in ("floor", "ceil", "even", "rceil", "mse"):
            # all rows, and without the subnormal row (tiles of only normal-range blocks)
            for axis, t in ((1, xe), (0, xe.T.contiguous()), (1, xe_normal), (0, xe_normal.T.contiguous())):
                got = kernels.mx_quantize(t, FORMATS[fmt], 8, axis, rnd, scale_rule=rule)
                ref = quantize(t, fmt, 8, axis=axis, rounding=rnd, scale_rule=rule)
                same = torch.equal(got.view(torch.int32), ref.view(torch.int32))
                if not same:
                    bad = (got.view(torch.int32) != ref.view(torch.int32)).nonzero()[:3].tolist()
                    print("mismatch at", bad, got.flatten()[:8].tolist(), ref.flatten()[:8].tolist())
                check(same, f"mx kernel edges {fmt} {rnd} rule {rule} axis {axis}")

# 1c. blocks at exponents from ~-120 (where exponent tricks on x itself stop being exact) up to 127 - emax, on
# elements at the reference's -0.0 threshold 2^(e - 150) (a negative x at or below it gives +0.0), subnormals,
# saturation; then the same blocks with one at e - 1 below the lowest
def exponent_blocks(fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
    f = FORMATS[fmt]
    mb, min_exp = f.mbits - 2, (f.min_exp if f.ebits else 0)
    lo = mb - min_exp - 126
    rows = []
    for E in sorted({lo, lo + 1, lo + 3, -20, -3, 0, 1, 2, 23, 24, 25, 60, 127 - f.emax}):
        amax = 1.5 * 2.0 ** (E + f.emax)
        row = [amax, -amax * 1.3, amax * 0.99, 0.0, -0.0, 2.0 ** -149, -2.0 ** -149, -2.0 ** -126]
        if E >= 1:
            t = 2.0 ** (E - 150)
            row += [-t, t, -t * 1.5, -t * 2, -t * 0.5 if E >= 2 else -t, -t * 3]
        row += (torch.randn(32 - len(row), generator=g) * amax * torch.exp(-torch.rand(32 - len(row), generator=g)
                                                                            * 30)).tolist()
        rows.append(row[:32])
    ok = torch.tensor(rows, dtype=torch.float32)
    low = ok.clone()
    low[0] *= 0.5  # e = lo - 1
    return ok, low


for fmt in [n for n, f in FORMATS.items() if f.kind == "mx"]:
    for name, xd in zip(("high", "with-low"), exponent_blocks(fmt)):
        for rnd in ("nearest", "even", "floor") if name == "high" else ("nearest", "even"):
            for rule in ("floor", "rceil", "mse") if name == "high" else ("floor",):
                # the row-loop kernel (slow under the interpreter) once per format and rule; it has no mse
                rows_too = rnd == "nearest" and rule != "mse"
                for axis, t, variant in ((1, xd, 0), (0, xd.T.contiguous(), 0),
                                         (0, xd.T.contiguous(), kernels.ROWS))[:3 if rows_too else 2]:
                    got = kernels.mx_quantize(t, FORMATS[fmt], 32, axis, rnd, scale_rule=rule,
                                              config=(64, 2, variant))
                    ref = quantize(t, fmt, 32, axis=axis, rounding=rnd, scale_rule=rule)
                    same = torch.equal(got.view(torch.int32), ref.view(torch.int32))
                    if not same:
                        bad = (got.view(torch.int32) != ref.view(torch.int32)).nonzero()[:3].tolist()
                        print("mismatch at", bad, [t[tuple(i)].item() for i in bad],
                              [got[tuple(i)].item() for i in bad], [ref[tuple(i)].item() for i in bad])
                    check(same, f"mx kernel {name} blocks {fmt} {rnd} rule {rule} axis {axis} variant {variant}")

# 1d. mse on tiles of ordinary blocks (both candidates win somewhere), then with near ties built into blocks
# (the two errors equal to ~2^-18 of their sum, or exactly: a tie keeps e in any summation order)
def mse_errors(x: torch.Tensor, fmt: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per element of x (blocks of 32 along dim 1): (q0, q1, t) in float64, the two candidates' values and
    t = (q1 - x)^2 - (q0 - x)^2, the reference's arithmetic."""
    from mxlab.formats.mx import block_amax, mx_elements, scale_factors, shared_exponent
    f = FORMATS[fmt]
    xb = x[:, :, None]
    e = shared_exponent(block_amax(xb), f, "floor")
    q = [mx_elements(xb.clone(), *scale_factors(c, f), f, "nearest").double()[:, :, 0] for c in (e, e + 1)]
    return q[0], q[1], (q[1] - x.double()) ** 2 - (q[0] - x.double()) ** 2


def mse_blocks(fmt: str, n: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """(ordinary blocks, near-tie blocks): a max in [1, 2) 2^k over values across 20 binades, every other block
    sparse, so e + 1 wins in some; a near tie moves one element within its rounding cell so that the block's sum
    of t nearly cancels (x_k solved from t's linear form in x, then rounded to float32), kept where |sum t| is
    within 36 2^-23 of sum |t| and both candidates' values are unchanged."""
    x = torch.randn(n, 32, generator=g) * 0.25 * 2.0 ** (-20 * torch.rand(n, 32, generator=g))  # many binades
    x[:, 1:] *= torch.rand(n, 31, generator=g) > torch.where(torch.arange(n) % 2 == 0, 0.0, 0.85)[:, None]
    top = torch.where(torch.arange(n) % 4 < 2, 1.0, 0.7)   # a max that saturates FP8, or one that does not
    x[:, 0] = (1 + top * torch.rand(n, generator=g)) * (2.0 ** torch.randint(-6, 6, (n,), generator=g))
    x[:, 1:] *= x[:, :1].abs()                          # sparse odd blocks: a saturated max can make e + 1 win
    q0, q1, t = mse_errors(x, fmt)
    dq = (q1 - q0).abs()
    dq[:, 0] = 0                                        # move another element than the block max
    k = dq.argmax(dim=1)
    rows = torch.arange(n)
    qa, qb = q0[rows, k], q1[rows, k]
    rest = t.sum(dim=1) - t[rows, k]
    y = x.clone()
    y[rows, k] = ((qa + qb) / 2 + rest / (2 * (qb - qa))).float()   # t_k(x) = (qb - qa)(qb + qa - 2x) = -rest
    p0, p1, u = mse_errors(y, fmt)
    T, A = u.sum(dim=1), u.abs().sum(dim=1)
    ok = (dq.amax(dim=1) > 0) & torch.isfinite(y).all(dim=1) & (p0 == q0).all(dim=1) & (p1 == q1).all(dim=1) \
        & (A > 0) & (T.abs() <= A * 36 * 2.0 ** -23)
    return x[:256], y[ok]


for fmt in ("mxint4", "mxfp4_e2m1", "mxfp8_e4m3"):
    plain, ties = mse_blocks(fmt)
    # FP8's candidates differ only at its saturated max and its subnormals, too few to build near ties from
    for name, t in (("ordinary", plain), ("with near ties", torch.cat([plain[:64], ties])))[:1 if fmt == "mxfp8_e4m3" else 2]:
        got = kernels.mx_quantize(t, FORMATS[fmt], 32, 1, "nearest", scale_rule="mse", config=(16, 1, 0))
        ref = quantize(t, fmt, 32, axis=1, rounding="nearest", scale_rule="mse")
        up = (quantize(t, fmt, 32, axis=1, scale_rule="floor") != ref).any(dim=1).float().mean()  # e + 1 won
        enough = len(ties) >= 10 or fmt == "mxfp8_e4m3"
        check(torch.equal(got.view(torch.int32), ref.view(torch.int32)) and 0.005 < up < 0.95 and enough,
              f"mx kernel mse {name} {fmt}: {len(ties)} near ties, e + 1 in {float(up):.1%} of blocks")

# 1b. the launch variants (streaming hints; the row-loop kernel for non-last axes) give the same bits
for shape, axis, bs in [((64, 40), 0, 32), ((40, 24), 0, 16), ((3, 40, 5), 1, 16), ((24, 64), 0, 64),
                        ((16, 96), 1, 32)]:
    x = heavy(*shape).to(torch.bfloat16)
    for variant in (kernels.STREAM, kernels.ROWS, kernels.ROWS | kernels.STREAM):
        for rule in ("floor", "rceil", "mse"):
            got = kernels.mx_quantize(x, FORMATS["mxfp4_e2m1"], bs, axis, "even", config=(16, 2, variant),
                                      scale_rule=rule)
            ref = quantize(x, "mxfp4_e2m1", bs, axis=axis, rounding="even", scale_rule=rule)
            check(torch.equal(got.view(torch.int16), ref.view(torch.int16)),
                  f"mx kernel variant {variant} rule {rule} shape {shape} axis {axis} block {bs}")

# 2. GPTQ column kernel against the torch column loop
for fmt, bs, rnd, (out_f, in_f), blocksize in [("int4", 32, "nearest", (24, 80), 32), ("int3", 32, "even", (9, 64), 64),
                                               ("mxint4", 32, "nearest", (20, 96), 64),
                                               ("mxfp4_e2m1", 16, "even", (12, 72), 32),
                                               ("mxint8", 32, "floor", (8, 100), 64),
                                               ("mxfp6_e2m3", 32, "nearest", (10, 64), 64)]:
    spec = QuantSpec(fmt, "none", bs, rnd)
    W = torch.randn(out_f, in_f, generator=g) * 0.05
    X = torch.randn(4 * in_f, in_f, generator=g) * torch.linspace(0.2, 3, in_f)
    H = 2 * X.T @ X / X.shape[0]
    quantizer, block, _ = weight_quantizer(W, spec)
    bq = mx_block_quantizer(spec)
    ref = gptq_quantize(W, H, quantizer, block_size=block, blocksize=blocksize, block_quantizer=bq)
    info: dict = {}
    got = gptq_quantize(W, H, quantizer, block_size=block, blocksize=blocksize, block_quantizer=bq,
                        fused=column_rule(W, spec), info=info)
    check(info["fused"] and torch.equal(got, ref), f"gptq kernel {fmt} block {bs} {rnd} W {tuple(W.shape)} b1 {blocksize}"
          f" (equal {float((got == ref).float().mean()):.4f})")
# 2b. static MX exponents (any scale rule, act-order too) in the kernel against the torch static loop
for fmt, rule, act_order in [("mxint4", "floor", False), ("mxfp4_e2m1", "mse", False), ("mxint4", "rceil", True),
                             ("mxfp6_e2m3", "even", True)]:
    spec = QuantSpec(fmt, "none", 16, "nearest", scale_rule=rule)
    W = torch.randn(12, 96, generator=g) * 0.05
    X = torch.randn(384, 96, generator=g) * torch.linspace(0.2, 3, 96)
    H = 2 * X.T @ X / X.shape[0]
    quantizer, block, _ = weight_quantizer(W, spec)
    bq = mx_block_quantizer(spec, W)
    ref = gptq_quantize(W, H, quantizer, block_size=block, blocksize=32, block_quantizer=bq, act_order=act_order)
    info = {}
    got = gptq_quantize(W, H, quantizer, block_size=block, blocksize=32, block_quantizer=bq, act_order=act_order,
                        fused=column_rule(W, spec, "static"), info=info)
    check(info["fused"] and torch.equal(got, ref), f"gptq kernel static {fmt} rule {rule} act_order {act_order}"
          f" (equal {float((got == ref).float().mean()):.4f})")
print("all equal")
