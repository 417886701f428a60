"""Count the MX kernel's SASS instructions per element for an H100/H200 (sm_90) without a GPU.

Triton compiles for a target given by hand and its wheel ships ``nvdisasm``, so this runs on a CPU-only
machine. On an H200 the kernel is bound by its ALUs (``kernel_alu.py``), so the count per element predicts
its speed: try an idea here, keep it if the count drops, then measure on a GPU. The static count includes
the prologue and per-block work; a tile of 2048 elements on 64 threads gives 32 elements per thread.

    python3 benchmarks/kernel_sass.py                 # both element paths, integer and FP formats
    python3 benchmarks/kernel_sass.py --show 200      # also print the first 200 instructions of each
    python3 benchmarks/kernel_sass.py --rules         # also every scale rule
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mxlab.formats import FORMATS, kernels  # noqa: E402
from mxlab.formats.table import rule_threshold  # noqa: E402

NVDISASM = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"


def compile_last_axis(block: int = 32, nb: int = 64, warps: int = 2, rounding: int = 0, rule: int = 0,
                      is_int: bool = False, fast: bool = True):
    """``_mx_kernel`` as a bf16 8192 x 8192 launch specializes it: 16-byte aligned pointers, sizes that
    divide by 16, every block full (no masks), streaming hints."""
    sig = {"x_ptr": "*bf16", "y_ptr": "*bf16", "n_blocks": "i32", "L": "i32", "blocks_per_row": "i32"}
    f = FORMATS["mxint4" if is_int else "mxfp8_e4m3"]   # the format's constants are compiled in, as mx_quantize does
    rule_name = {v: k for k, v in kernels.RULE_IDS.items()}[rule]
    consts = dict(mb=f.mbits - 2, min_exp=f.min_exp if f.ebits else 0, emax=f.emax, max_norm=float(f.max_norm),
                  thresh=rule_threshold(f, rule_name), BLOCK=block, KP=block, NB=nb, ROUND=rounding, CONTIG=True,
                  MASKED=False, RULE=rule, STREAM=True, INT=is_int, FAST=fast)
    names = kernels._mx_kernel.arg_names
    aligned = {(names.index(n),): [["tt.divisibility", 16]] for n in ("x_ptr", "y_ptr", "n_blocks", "L",
                                                                        "blocks_per_row")}
    src = ASTSource(fn=kernels._mx_kernel, signature={**sig, **{k: "constexpr" for k in consts}},
                    constexprs=consts, attrs=aligned)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})


def sass(compiled) -> list[str]:
    with tempfile.TemporaryDirectory() as d:
        cubin = os.path.join(d, "k.cubin")
        Path(cubin).write_bytes(compiled.asm["cubin"])
        text = subprocess.run([str(NVDISASM), "-c", cubin], capture_output=True, text=True, check=True).stdout
    return [re.sub(r"\s+", " ", ln.split(";")[0]).strip() for ln in text.splitlines()
            if re.match(r"\s*/\*[0-9a-f]+\*/", ln)]


def opcodes(lines: list[str]) -> collections.Counter:
    ops = collections.Counter()
    for ln in lines:
        m = re.match(r"/\*[0-9a-f]+\*/ (@!?U?P\w+ )?([A-Z0-9_.]+)", ln)
        if m:
            ops[m.group(2).split(".")[0]] += 1
    return ops


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--block", type=int, default=32)
    ap.add_argument("--show", type=int, default=0, help="print this many instructions of each kernel")
    ap.add_argument("--rules", action="store_true", help="also count quant_scaled under every scale rule")
    args = ap.parse_args(argv)
    nb, warps = 2048 // args.block, 2
    per_thread = nb * args.block // (32 * warps)
    print(f"block {args.block}, {nb} blocks per program, {warps} warps: {per_thread} elements per thread")
    for is_int in (True, False):
        for fast in (False, True):
            lines = sass(compile_last_axis(args.block, nb, warps, is_int=is_int, fast=fast))
            ops = opcodes(lines)
            path = "quant_scaled" if fast else "quant_elements"
            print(f"{'integer' if is_int else 'FP':7s} {path:14s} {len(lines):5d} instructions, "
                  f"{len(lines) / per_thread:5.1f} per element; most: {dict(ops.most_common(8))}")
            if args.show:
                print("\n".join(lines[:args.show]))
    for rule, rid in kernels.RULE_IDS.items() if args.rules else ():
        for is_int in (True, False):
            lines = sass(compile_last_axis(args.block, nb, warps, rule=rid, is_int=is_int))
            ops = opcodes(lines)
            print(f"rule {rule:5s} {'integer' if is_int else 'FP':7s} quant_scaled {len(lines):5d} instructions, "
                  f"{len(lines) / per_thread:5.1f} per element; float64 conversions: {ops['F2F']}")


if __name__ == "__main__":
    main()
