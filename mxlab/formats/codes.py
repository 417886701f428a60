"""Element codes: the value of every code of a format, values to codes, and dense bit packing.

Codes are sign-magnitude (the reference's convention, so -0.0 survives) for MX and NVFP4
elements; ``pack_bits`` stores b-bit codes densely, little-endian within groups: 2 per byte at 4
bits, 4 per 3 bytes at 6 bits, 8 per 3 bytes at 3 bits, 4 per byte at 2 bits.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .table import ElementFormat


def element_values(f: ElementFormat) -> Tensor:
    """Float32 value of every code of an element format (sign-magnitude codes), indexed by code."""
    n = 2 ** (f.bits - 1)
    mag = torch.arange(n, dtype=torch.int64)
    mb = f.mbits - 2
    if f.ebits == 0:
        pos = mag.double() / 2 ** mb
    else:
        ef, m = mag >> mb, mag & (2 ** mb - 1)
        pos = torch.where(ef == 0, m.double() * 2.0 ** (f.min_exp - mb),
                          (1 + m.double() / 2 ** mb) * torch.pow(2.0, (ef - 1 + f.min_exp).double()))
    return torch.cat([pos, -pos]).float()


def encode_elements(q: Tensor, f: ElementFormat) -> Tensor:
    """Sign-magnitude code (uint8) of each value of q (float32, on f's element grid)."""
    sign = (q.view(torch.int32) < 0).to(torch.int32) << (f.bits - 1)  # keeps the sign of -0.0
    a = q.abs()
    mb = f.mbits - 2
    if f.ebits == 0:
        mag = (a * 2 ** mb).to(torch.int32)
    else:
        bits = a.view(torch.int32)
        eb = bits >> 23
        normal = ((eb - 126 - f.min_exp) << mb) | ((bits >> (23 - mb)) & (2 ** mb - 1))
        sub = (a * 2.0 ** (mb - f.min_exp)).to(torch.int32)
        mag = torch.where(eb - 127 >= f.min_exp, normal, sub)
    return (sign | mag).to(torch.uint8)


def pack_bits(codes: Tensor, bits: int) -> Tensor:
    """Pack b-bit codes (uint8, flat) densely into bytes; the tail is zero-padded to a whole group."""
    codes = codes.reshape(-1)
    if bits == 8:
        return codes.to(torch.uint8).clone()
    group = 8 // math.gcd(8, bits)  # codes per group; a group is group*bits/8 whole bytes
    n = codes.numel()
    c = torch.nn.functional.pad(codes.to(torch.int32), (0, (-n) % group)).reshape(-1, group)
    shifts = torch.arange(group, device=codes.device, dtype=torch.int32) * bits
    word = (c << shifts).sum(dim=1, dtype=torch.int32)  # (groups,) at most 24 bits
    nbytes = group * bits // 8
    byte_shifts = torch.arange(nbytes, device=codes.device, dtype=torch.int32) * 8
    return ((word[:, None] >> byte_shifts) & 0xFF).to(torch.uint8).reshape(-1)


def unpack_bits(packed: Tensor, bits: int, n: int) -> Tensor:
    """Inverse of ``pack_bits``: the first n codes (int64)."""
    if bits == 8:
        return packed.reshape(-1)[:n].long()
    group = 8 // math.gcd(8, bits)
    nbytes = group * bits // 8
    b = packed.reshape(-1, nbytes).to(torch.int32)
    word = (b << (torch.arange(nbytes, device=b.device, dtype=torch.int32) * 8)).sum(dim=1, dtype=torch.int32)
    shifts = torch.arange(group, device=b.device, dtype=torch.int32) * bits
    return ((word[:, None] >> shifts) & (2 ** bits - 1)).reshape(-1)[:n].long()
