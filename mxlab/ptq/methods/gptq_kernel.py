"""Triton kernel of GPTQ's column-wise inner loop over one outer block (loaded lazily: needs triton).

A program owns ROWS rows of the outer block W1 (rows, b1) in registers and walks its columns:
quantize column j (per-channel INT with fixed scale/zero point, or MX with the block exponent fixed
from the updated weights at the block's first column, or given: static), err = (w_j - q_j) / U[j, j], then the rank-1
update of the columns after j. Same operations, in the same order and rounding, as the torch loop of
``gptq.gptq_quantize`` (b2 = 1): products and quotients are IEEE round-to-nearest (libdevice mul_rn /
div_rn on the GPU, so the compiler cannot fuse w - err * u into one FMA, which torch does not do).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from ...formats.kernels import block_exponent, interpreted, quant_elements

_ROUND = {"nearest": 0, "even": 1, "floor": 2}


@triton.jit
def _round_exact(a, ROUND: tl.constexpr):
    """Non-negative a to an integer, exactly (mx.round_inplace(exact=True)): ties away, to even, or floor."""
    r = tl.floor(a)
    if ROUND == 0:
        r = tl.where(a - r >= 0.5, r + 1.0, r)
    elif ROUND == 1:
        d = a - r
        odd = (r - 2.0 * tl.floor(r * 0.5)) == 1.0
        r = tl.where((d > 0.5) | ((d == 0.5) & odd), r + 1.0, r)
    return r


@triton.jit
def _gptq_columns(w_ptr, u_ptr, q_ptr, err_ptr, scale_ptr, zero_ptr, inv_ptr, exp_ptr,
                  rows, ld_w, ld_u, ld_e, qmax, mb, min_exp, emax, max_norm,
                  N: tl.constexpr, ROWS: tl.constexpr, B1P: tl.constexpr, BS: tl.constexpr, MX: tl.constexpr,
                  STATIC: tl.constexpr, ROUND: tl.constexpr, IEEE: tl.constexpr):
    r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS).to(tl.int64)   # (ROWS,)
    c = tl.arange(0, B1P)                                                         # (B1P,)
    rmask, cmask = r < rows, c < N
    offs = r[:, None] * ld_w + c[None, :]
    m = rmask[:, None] & cmask[None, :]
    w = tl.load(w_ptr + offs, mask=m, other=0.0)
    qt = tl.zeros((ROWS, B1P), tl.float32)
    et = tl.zeros((ROWS, B1P), tl.float32)
    e = tl.zeros((ROWS,), tl.int32)
    if not MX:
        scale = tl.load(scale_ptr + r, mask=rmask, other=1.0)
        zero = tl.load(zero_ptr + r, mask=rmask, other=0.0)
        inv = tl.load(inv_ptr + r, mask=rmask, other=1.0)
    for j in range(0, N):
        col = tl.sum(tl.where(c[None, :] == j, w, 0.0), axis=1)                  # (ROWS,) exact
        if MX and STATIC:  # the block's exponents, given (fixed from W before the loop)
            if j % BS == 0:
                e = tl.load(exp_ptr + r * ld_e + j // BS, mask=rmask, other=0)
            q = quant_elements(col, e, mb, min_exp, max_norm, ROUND, False)   # one column: the INT path buys nothing
        elif MX:  # the block's exponents, fixed from the updated weights at its first column
            j0 = j - j % BS
            blk = (c >= j0) & (c < j0 + BS) & cmask
            amax = tl.max(tl.where(blk[None, :], w.to(tl.int32, bitcast=True) & 0x7FFFFFFF, 0), axis=1)
            e_new, nan_blk = block_exponent(amax, emax, 1 << 23, 0)   # floor rule only (gptq_fused checks)
            e = tl.where(j % BS == 0, e_new, e)
            q = quant_elements(col, e, mb, min_exp, max_norm, ROUND, False)   # one column: the INT path buys nothing
        else:  # per-channel affine: x * (1 / scale), exact rounding, clamp the code, back
            y = col * inv
            a = _round_exact(tl.abs(y), ROUND)
            a = tl.where(y < 0, -a, a)
            code = tl.minimum(tl.maximum(a + zero, 0.0), qmax)
            q = (code - zero) * scale
        ujj = tl.zeros((ROWS,), tl.float32) + tl.load(u_ptr + j * ld_u + j)    # (ROWS,) U[j, j] > 0, exact
        if IEEE:
            err = libdevice.div_rn(col - q, ujj)
        else:
            err = (col - q) / ujj
        u = tl.load(u_ptr + j * ld_u + c, mask=cmask & (c > j), other=0.0)     # (B1P,) U[j, j+1:]
        eb = tl.broadcast_to(err[:, None], (ROWS, B1P))
        ub = tl.broadcast_to(u[None, :], (ROWS, B1P))
        if IEEE:
            w = w - libdevice.mul_rn(eb, ub)
        else:
            w = w - eb * ub
        here = c[None, :] == j
        qt = tl.where(here, q[:, None], qt)
        et = tl.where(here, err[:, None], et)
    tl.store(q_ptr + offs, qt, mask=m)
    tl.store(err_ptr + offs, et, mask=m)


def column_block(W1: torch.Tensor, U1: torch.Tensor, rule, first_col: int = 0, rows_per_program: int = 16,
                 num_warps: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q1, Err1) of one outer block W1 (rows, b1) float32 with U1 (b1, b1), starting at column
    ``first_col`` of W (where static exponents are read from); W1 is not modified."""
    W1c = W1.contiguous()
    U1c = U1.contiguous()
    rows, n = W1c.shape
    Q1, E1 = torch.empty_like(W1c), torch.empty_like(W1c)
    dummy = W1c.new_zeros(1)
    static = rule.kind == "mx" and rule.exps is not None
    exps = rule.exps[:, first_col // rule.block_size:].contiguous() if static else dummy.to(torch.int32)
    if rule.kind == "mx":
        f = rule.fmt
        args = (dummy, dummy, dummy, 0.0, f.mbits - 2, f.min_exp if f.ebits else 0, f.emax, float(f.max_norm))
    else:
        args = (rule.scale, rule.zero, rule.inv, float(rule.qmax), 0, 0, 0, 0.0)
    grid = (triton.cdiv(rows, rows_per_program),)
    _gptq_columns[grid](W1c, U1c, Q1, E1, *args[:3], exps, rows, W1c.stride(0), U1c.stride(0),
                        exps.stride(0) if static else 0, *args[3:],
                        N=n, ROWS=rows_per_program, B1P=triton.next_power_of_2(n), BS=rule.block_size,
                        MX=rule.kind == "mx", STATIC=static, ROUND=_ROUND[rule.rounding], IEEE=not interpreted(),
                        num_warps=num_warps)
    return Q1, E1
