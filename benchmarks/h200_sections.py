"""Sections of ``bench_h200.py``: the MX kernel table (``kernel_alu.py``'s sections), Hessian precision
timings, GPTQ per layer.

Each section fills a dict of plain numbers (JSON) and returns markdown lines. Timing here: CUDA events over
back-to-back calls after warm-up on a GPU; best of a few perf_counter calls elsewhere (smoke tests). The
kernel's own timing (CUDA graphs, a copy in every round) is ``kernel_alu.py``'s.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from mxlab.recipe import QuantSpec  # noqa: E402

import torch

from mxlab.formats import quantize
from mxlab.ptq.methods.gptq import gptq_quantize, mx_block_quantizer, proxy_mse, weight_quantizer
from mxlab.ptq.methods.gptq_fused import column_rule
from mxlab.ptq.methods.hessian import hessian

log = logging.getLogger("bench_h200")
# one Llama-3.1-8B decoder layer: name -> (out, in)
LAYER_8B = {"q_proj": (4096, 4096), "k_proj": (1024, 4096), "v_proj": (1024, 4096), "o_proj": (4096, 4096),
            "gate_proj": (14336, 4096), "up_proj": (14336, 4096), "down_proj": (4096, 14336)}


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timeit(fn, dev: torch.device, reps: int = 50) -> float:
    """Seconds per call: CUDA events over ``reps`` calls after warm-up, or the best of 3 calls on the CPU."""
    if dev.type != "cuda":
        fn()
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        return best
    for _ in range(5):
        fn()
    torch.cuda.synchronize(dev)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize(dev)
    return start.elapsed_time(end) / 1e3 / reps


def wall(fn, dev: torch.device):
    """(result, seconds) of one call, synchronised."""
    sync(dev)
    t0 = time.perf_counter()
    out = fn()
    sync(dev)
    return out, time.perf_counter() - t0


def heavy(shape, dev, seed=0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator(device=dev).manual_seed(seed)
    x = torch.randn(shape, generator=g, device=dev) * torch.exp(torch.randn(shape, generator=g, device=dev) * 2)
    return x.to(dtype)


# ----------------------------------------------------------------------------- the MX kernel
def _kernel_run(sections: tuple[str, ...], res: dict) -> list[str]:
    """``kernel_alu.py``'s sections in this process (one timing method for both scripts: CUDA graphs, the
    copy timed in every round); their launch picks stay set for the sections after."""
    import kernel_alu

    run = kernel_alu.Run(Path(os.environ.get("OUT") or kernel_alu.HERE / "results"))
    for name in sections:
        kernel_alu.SECTIONS[name](run)
        run.save(name)
    res.update(run.res)
    return kernel_alu.markdown(run.res)


def kernel_section(dev: torch.device, quick: bool, res: dict) -> list[str]:
    """Tune the launch configs per block size and axis, then every MX format x block x axis against a device
    copy, the other scale rules (not with ``quick``) and GPU == CPU bit for bit (``kernel_alu.py``; under
    TRITON_INTERPRET=1 on a CPU, its smoke run)."""
    return _kernel_run(("tune", "tune0", "table", "bits") if quick else ("tune", "tune0", "table", "rules", "bits"),
                       res)


def torchao_section(dev: torch.device, quick: bool, res: dict) -> list[str]:
    """torchao's compiled to_mx next to mxlab's kernel (``kernel_alu.py``'s torchao section), or why not."""
    return _kernel_run(("torchao",), res.setdefault("torchao", {}))


# ----------------------------------------------------------------------------- Hessians
def hessian_section(dev: torch.device, quick: bool, res: dict) -> list[str]:
    """Time H = 2 X^T X / n over the calibration tokens (bf16 activations) per precision, and how much
    GPTQ's result moves (equal weights, output MSE change measured with the float32 H)."""
    tokens = 2048 if quick else 128 * 2048
    md = ["| in features | tokens | float32 | tf32 | bf16 | GPTQ mxint4 equal weights tf32 / bf16 | output MSE change tf32 / bf16 |",
          "| ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    res["rows"] = []
    for d in ((64, 224) if quick else (4096, 14336)):
        X = heavy((tokens, d), dev, seed=d, dtype=torch.bfloat16)     # bf16 block inputs, as in a bf16 model
        X[:, :: max(1, d // 64)] *= 20                                  # a few outlier channels
        times, Hs = {}, {}
        for dt in ("float32", "tf32", "bf16"):
            Hs[dt], times[dt] = wall(lambda dt=dt: hessian((X[i:i + 8192] for i in range(0, tokens, 8192)), dt), dev)
        del X
        out_f = 256 if quick else 1024
        W = torch.randn(out_f, d, device=dev) * 0.02
        spec = QuantSpec("mxint4", "none", 32, "nearest")
        quant, block, _ = weight_quantizer(W, spec)
        Qs = {dt: gptq_quantize(W, H, quant, block_size=block) for dt, H in Hs.items()}
        base = proxy_mse(W, Qs["float32"], Hs["float32"])
        row = {"in": d, "tokens": tokens, "seconds": times, "out_rows": out_f,
               "equal": {dt: float((Qs[dt] == Qs["float32"]).float().mean()) for dt in ("tf32", "bf16")},
               "mse_change": {dt: proxy_mse(W, Qs[dt], Hs["float32"]) / base - 1 for dt in ("tf32", "bf16")}}
        res["rows"].append(row)
        md.append(f"| {d} | {tokens} | {times['float32']:.3f} s | {times['tf32']:.3f} s | {times['bf16']:.3f} s | "
                  f"{row['equal']['tf32']:.4f} / {row['equal']['bf16']:.4f} | "
                  f"{row['mse_change']['tf32']:+.1e} / {row['mse_change']['bf16']:+.1e} |")
        del Hs, Qs
    return md


def awq_grid_check(dev: torch.device, quick: bool) -> dict:
    """AWQ's grid search as a loop and batched over grid points on this device: time, and the same answer?"""
    from mxlab.ptq.methods import awq

    d = 256 if quick else 4096
    x = heavy((4096, d), dev, seed=3)
    g = torch.Generator(device=dev).manual_seed(4)
    Ws = [torch.randn(o, d, generator=g, device=dev) * 0.02 for o in (d, d // 4, d // 4)]
    wq = [lambda w: quantize(w, "mxint4", 32)] * 3
    aq = [lambda a: quantize(a, "mxint8", 32)] * 3
    (s1, a1, l1), t1 = wall(lambda: awq.search_scale(x, Ws, wq, aq, n_grid=20), dev)
    (s2, a2, l2), t2 = wall(lambda: awq.search_scale(x, Ws, wq, aq, n_grid=20, grid_batch=4, row_local=True), dev)
    return {"tokens": 4096, "in": d, "loop_s": t1, "batched_s": t2, "same_alpha": a1 == a2,
            "same_scales": bool(torch.equal(s1, s2)), "equal_losses": sum(p == q for p, q in zip(l1, l2))}


# ----------------------------------------------------------------------------- GPTQ per layer
def gptq_section(dev: torch.device, quick: bool, res: dict) -> list[str]:
    """GPTQ of one 8B-shaped decoder layer (Hessians given, not timed) per rule: torch loop, fused kernel,
    stacked q/k/v and gate/up; the fused and stacked results compared with the torch loop bit for bit."""
    shapes = {n: (max(8, o // 64), max(64, i // 64)) for n, (o, i) in LAYER_8B.items()} if quick else LAYER_8B
    Hs = {}
    for d in sorted({i for _, i in shapes.values()}):
        X = heavy((4 * d if quick else 16384, d), dev, seed=d)
        Hs[d] = hessian(X)
        del X
    g = torch.Generator(device=dev).manual_seed(0)
    Ws = {n: (torch.randn(o, i, generator=g, device=dev) * 0.02).to(torch.bfloat16) for n, (o, i) in shapes.items()}
    rules = [("int4", "column"), ("mxint4", "microblock"), ("mxint4", "column"), ("mxfp4_e2m1", "column")]
    md = ["| weights | rule | torch loop | fused kernel | fused + stacked q/k/v, gate/up | fused == torch | stacked == alone |",
          "| --- | --- | ---: | ---: | ---: | --- | --- |"]
    res["rows"] = []
    for fmt, rule in rules:
        spec = QuantSpec(fmt, "none", 32, "nearest")
        fusable = rule == "column" and (dev.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")
        t_torch = t_fused = t_stack = 0.0
        equal_fused = equal_stack = True
        for n, W in Ws.items():
            H = Hs[W.shape[1]]
            quant, block, _ = weight_quantizer(W, spec)
            bq = mx_block_quantizer(spec) if rule == "column" else None
            Q, t = wall(lambda: gptq_quantize(W, H, quant, block_size=block, block_quantizer=bq), dev)
            t_torch += t
            if fusable:
                Qf, t = wall(lambda: gptq_quantize(W, H, quant, block_size=block, block_quantizer=bq,
                                                   fused=column_rule(W, spec)), dev)
                t_fused += t
                equal_fused &= bool(torch.equal(Qf, Q))
        for group in (["q_proj", "k_proj", "v_proj"], ["o_proj"], ["gate_proj", "up_proj"], ["down_proj"]):
            Wg = torch.cat([Ws[n] for n in group])
            H = Hs[Wg.shape[1]]
            quant, block, _ = weight_quantizer(Wg, spec)
            bq = mx_block_quantizer(spec) if rule == "column" else None
            Qg, t = wall(lambda: gptq_quantize(Wg, H, quant, block_size=block, block_quantizer=bq,
                                               fused=column_rule(Wg, spec) if fusable else None), dev)
            t_stack += t
            parts = Qg.split([Ws[n].shape[0] for n in group])
            for n, Qn in zip(group, parts):
                quant_n, block_n, _ = weight_quantizer(Ws[n], spec)
                ref = gptq_quantize(Ws[n], H, quant_n, block_size=block_n, block_quantizer=bq,
                                    fused=column_rule(Ws[n], spec) if fusable else None)
                equal_stack &= bool(torch.equal(Qn, ref))
        row = {"format": fmt, "rule": rule, "torch_s": t_torch, "fused_s": t_fused if fusable else None,
               "stacked_s": t_stack, "fused_equal": equal_fused if fusable else None, "stacked_equal": equal_stack}
        res["rows"].append(row)
        log.info("gptq %s", row)
        md.append(f"| {fmt} | {rule} | {t_torch:.2f} s | " + (f"{t_fused:.2f} s" if fusable else "-") +
                  f" | {t_stack:.2f} s | {equal_fused if fusable else '-'} | {equal_stack} |")
    res["awq_grid_batch"] = awq_grid_check(dev, quick)
    a = res["awq_grid_batch"]
    md += ["", f"AWQ grid search, q/k/v-shaped group ({a['tokens']} tokens, 20 grid points): loop {a['loop_s']:.3f} s, "
           f"batched (grid_batch 4) {a['batched_s']:.3f} s; same alpha {a['same_alpha']}, same scales {a['same_scales']}, "
           f"bit-equal losses {a['equal_losses']}/20."]
    return md
