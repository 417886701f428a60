"""llm-compressor's GPTQ beside mxlab's, on Llama-3.1-8B-shaped decoder-layer linears (issue 17).

Usage:
    python benchmarks/llmcompressor_gptq.py --device cpu --tiny --out /tmp/llmc      # CPU smoke run, < 1 min
    # the GPU machine (no network): wheels from benchmarks/device_llmcompressor_payload.sh, carried as .whlc
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whlc/*.whl && \
        export PYTHONPATH=/tmp/site:$PWD && python3 benchmarks/llmcompressor_gptq.py --device cuda --out $OUT
Options: --tokens N (calibration tokens behind H), --eval-tokens N (held-out tokens for the error),
--layers q_proj,down_proj (a subset of LAYER_8B), --actorder (activation order on both sides), --tiny.

Per linear, the same bf16 weight W and the same float32 Hessian H = 2 X^T X / n go to both sides:
- llm-compressor: ``llmcompressor.modifiers.gptq.gptq_quantize.quantize_weight`` (the pure math its
  GPTQModifier calls), with qparams from its ``memoryless_minmax`` weight observer on W (the modifier's
  default), blocksize 128, dampening 0.01; its Triton block kernel runs on CUDA, its torch loop elsewhere.
- mxlab: ``gptq_quantize`` with group-wise column updates for MX (mx_update "column"), blocksize 128,
  percdamp 0.01; on CUDA the fused Triton column loop (GPTQConfig.fused), else the torch loop.
Pairs: W4A16 (int4 symmetric, group 128, bf16 scales) vs mxlab MXINT4 block 128 (nearest formats); int4
per channel asymmetric vs mxlab int4 (the same affine format: compared directly, plus a cross-check that
runs mxlab's GPTQ loop on llm-compressor's own grid); MXFP4 (compressed-tensors' MXFP4A16 weights,
E8M0 scales, group 32) vs mxlab mxfp4_e2m1 block 32.
Seconds: wall time of qparams + GPTQ per linear, CUDA-synchronized, Hessian excluded (one untimed
warm-up call first on CUDA). Layer totals also time each side's batching: llm-compressor stacks
equal-shape linears (its batched_quantization), mxlab stacks q/k/v and gate/up (GPTQConfig.batch_linears).
Error: ||X W^T - X Q^T||^2 / ||X W^T||^2 on held-out inputs of the same distribution as the calibration.
Bits per weight as stored: mxlab from its packed tensor; llm-compressor from compressed-tensors' packed
layout (4-bit codes, scales in the weight dtype or E8M0 uint8 for MXFP4, 4-bit zero points if asymmetric).

Imports: only the GPTQ math of llm-compressor is loaded. Its package ``__init__`` files (``llmcompressor``,
``.modifiers``, ``.modifiers.gptq``, ``.observers``) import its whole pipeline (datasets, entrypoints, every
modifier); ``load_llmcompressor`` registers those four packages as bare package modules (their real
folders as ``__path__``, no code run), then imports ``gptq_quantize``, ``helpers`` and ``observers.min_max``
unchanged. No module is stubbed; compressed-tensors' own needs (pydantic, loguru) are carried as wheels.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import logging
import os
import sys
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.h200_sections import LAYER_8B, sync, wall  # noqa: E402
from mxlab.formats import quantize  # noqa: E402
from mxlab.ptq.methods.gptq import gptq_quantize, mx_block_quantizer, weight_quantizer  # noqa: E402
from mxlab.ptq.methods.gptq_fused import column_rule, fused_available, fused_supports  # noqa: E402
from mxlab.ptq.methods.hessian import hessian  # noqa: E402
from mxlab.recipe import QuantSpec  # noqa: E402

log = logging.getLogger("llmcompressor_gptq")
NOT_IMPORTABLE = ("llmcompressor is not importable: run benchmarks/device_llmcompressor_payload.sh and put .whlc on "
                  "PYTHONPATH (python3 -m pip install --no-index --no-deps --target /tmp/site .whlc/*.whl; "
                  "export PYTHONPATH=/tmp/site:$PWD)")
BARE_PACKAGES = ("llmcompressor", "llmcompressor.modifiers", "llmcompressor.modifiers.gptq", "llmcompressor.observers")
# mxlab's stacked GPTQ problems (rows are independent: one Hessian per group)
STACKS = (("q_proj", "k_proj", "v_proj"), ("o_proj",), ("gate_proj", "up_proj"), ("down_proj",))
BLOCKSIZE, PERCDAMP = 128, 0.01


class NotImportable(RuntimeError):
    pass


def load_llmcompressor() -> types.SimpleNamespace:
    """llm-compressor's GPTQ math, its weight observer and compressed-tensors' args, without its pipeline."""
    try:
        from compressed_tensors.quantization import QuantizationArgs, fake_quantize, preset_name_to_scheme
        from compressed_tensors.utils.triton import HAS_TRITON
        root = importlib.util.find_spec("llmcompressor")
    except ImportError as exc:
        raise NotImportable(f"{NOT_IMPORTABLE} ({type(exc).__name__}: {exc})") from exc
    if root is None:
        raise NotImportable(NOT_IMPORTABLE)
    base = Path(list(root.submodule_search_locations)[0])
    for name in BARE_PACKAGES:      # a package's folder without its __init__: its submodules import normally
        if name not in sys.modules:
            mod = types.ModuleType(name)
            mod.__path__ = [str(base.joinpath(*name.split(".")[1:]))]
            sys.modules[name] = mod
    try:
        from llmcompressor.modifiers.gptq.gptq_quantize import quantize_weight
        from llmcompressor.modifiers.gptq.helpers import get_triton_gptq_config
        from llmcompressor.observers.min_max import MemorylessMinMaxObserver
    except ImportError as exc:
        raise NotImportable(f"{NOT_IMPORTABLE} ({type(exc).__name__}: {exc})") from exc
    versions = {p: importlib.metadata.version(p) for p in ("llmcompressor", "compressed-tensors", "pydantic", "loguru")}
    return types.SimpleNamespace(quantize_weight=quantize_weight, Observer=MemorylessMinMaxObserver, Args=QuantizationArgs,
                                 fake_quantize=fake_quantize, preset=preset_name_to_scheme, has_triton=HAS_TRITON,
                                 triton_config=get_triton_gptq_config, versions=versions)


def pairs(lib, actorder: bool) -> list[dict]:
    """The format pairs: llm-compressor's QuantizationArgs and the nearest mxlab (format, block)."""
    w4a16 = lib.preset("W4A16", ["Linear"]).weights
    int4_channel = lib.Args(num_bits=4, type="int", strategy="channel", symmetric=False)
    mxfp4 = lib.preset("MXFP4A16", ["Linear"]).weights
    out = [{"name": "W4A16 int4 sym g128 | mxint4 b128", "args": w4a16, "fmt": "mxint4", "block": 128},
           {"name": "int4 per-channel asym | int4 per-channel", "args": int4_channel, "fmt": "int4", "block": 32},
           {"name": "MXFP4 g32 | mxfp4_e2m1 b32", "args": mxfp4, "fmt": "mxfp4_e2m1", "block": 32}]
    for p in out:
        p["args"].actorder = "weight" if actorder else None
    return out


# ----------------------------------------------------------------------------- the two GPTQs
def llmc_gptq(lib, Ws: list[torch.Tensor], H: torch.Tensor, args) -> tuple[list[torch.Tensor], list[dict]]:
    """llm-compressor on equal-shape weights stacked as one batch (one is a batch of 1), as its modifier does:
    observer qparams from each bf16 W, then quantize_weight on float32 copies (it overwrites its H input)."""
    qps = [lib.Observer(base_name="weight", args=args)(W).get_qparams() for W in Ws]
    stack = lambda key: torch.stack([qp[key] for qp in qps])  # noqa: E731
    Q, _, fallback = lib.quantize_weight(torch.stack([W.float() for W in Ws]), H.expand(len(Ws), -1, -1).clone(),
                                         stack("scale"), stack("zero_point"), None, args, BLOCKSIZE, PERCDAMP)
    if bool(fallback.any()):
        raise RuntimeError("llm-compressor fell back to RTN (its Hessian was not positive definite)")
    return list(Q), qps


def mxlab_gptq(W: torch.Tensor, H: torch.Tensor, fmt: str, block: int, fused: bool, actorder: bool) -> torch.Tensor:
    """mxlab's GPTQ of W in fmt: group-wise column updates for MX, per-row qparams for int."""
    spec = QuantSpec(fmt, "none", block, "nearest")
    quant, bs, _ = weight_quantizer(W, spec)
    return gptq_quantize(W, H, quant, block_size=bs, blocksize=BLOCKSIZE, percdamp=PERCDAMP, act_order=actorder,
                         block_quantizer=mx_block_quantizer(spec),
                         fused=column_rule(W, spec) if fused and fused_supports(spec, "column") else None)


def llmc_bits(args, qp: dict, shape: tuple[int, int]) -> float:
    """Bits per weight in compressed-tensors' packed layout: codes, scales, zero points if asymmetric."""
    scale_bits = 8 if args.scale_dtype == torch.uint8 else 16   # E8M0 exponent, or the weight dtype (bf16)
    zp_bits = 0 if args.symmetric else args.num_bits
    n = shape[0] * shape[1]
    return args.num_bits + qp["scale"].numel() * (scale_bits + zp_bits) / n


def rel_err(X: torch.Tensor, W: torch.Tensor, Q: torch.Tensor) -> float:
    """||X W^T - X Q^T||^2 / ||X W^T||^2 in float32."""
    Wf = W.float()
    return float((X @ (Wf - Q.float()).T).square().sum() / (X @ Wf.T).square().sum())


def timed(fn, dev: torch.device):
    """(result, seconds) of fn; on CUDA one untimed warm-up call first (Triton compiles)."""
    if dev.type == "cuda":
        fn()
        sync(dev)
    return wall(fn, dev)


# ----------------------------------------------------------------------------- inputs
def calib_inputs(d: int, n_cal: int, n_eval: int, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Calibration and held-out inputs (n, d) of one distribution: log-normal channel scales, every
    d/16-th channel an outlier (x20), and a shared rank-16 component (correlated channels)."""
    g = torch.Generator(device=dev).manual_seed(d)
    s = torch.exp(torch.randn(d, generator=g, device=dev))
    s[:: max(1, d // 16)] *= 20
    B = torch.randn(16, d, generator=g, device=dev)
    draw = lambda n: (torch.randn(n, d, generator=g, device=dev)  # noqa: E731
                      + torch.randn(n, 16, generator=g, device=dev) @ B) * s
    return draw(n_cal), draw(n_eval)


def run(args: argparse.Namespace, lib, report=lambda pair, row: None) -> dict:
    """Every pair on every linear, then the layer with batching; ``report(pair, row)`` after each cell."""
    dev = torch.device(args.device)
    shapes = {n: ((o // 16, i // 16) if args.tiny else (o, i)) for n, (o, i) in LAYER_8B.items() if n in args.layers}
    widths = sorted({i for _, i in shapes.values()})
    n_cal = args.tokens or (4 * max(widths) if args.tiny else 16384)
    n_eval = args.eval_tokens or (1024 if args.tiny else 4096)
    Hs, Xe = {}, {}
    for d in widths:
        Xc, Xe[d] = calib_inputs(d, n_cal, n_eval, dev)
        Hs[d] = hessian(Xc, args.hessian_dtype)
        del Xc
    g = torch.Generator(device=dev).manual_seed(0)
    Ws = {n: (torch.randn(o, i, generator=g, device=dev) * 0.02).to(torch.bfloat16) for n, (o, i) in shapes.items()}
    fused = dev.type == "cuda" and fused_available()
    res = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "torch": torch.__version__,
           "versions": lib.versions, "tiny": args.tiny, "shapes": shapes, "tokens": n_cal, "eval_tokens": n_eval,
           "settings": {"blocksize": BLOCKSIZE, "percdamp": PERCDAMP, "actorder": args.actorder,
                        "hessian_dtype": args.hessian_dtype, "mxlab_mx_update": "column", "mxlab_fused": fused,
                        "llmc_triton": dev.type == "cuda" and lib.has_triton
                        and os.environ.get("LLMCOMPRESSOR_DISABLE_GPTQ_TRITON", "0") != "1"},
           "pairs": [], "errors": []}
    for p in pairs(lib, args.actorder):
        a, rows = p["args"], []
        entry = {"pair": p["name"], "llmc_args": a.model_dump(mode="json"), "mxlab": {"format": p["fmt"], "block": p["block"]},
                 "llmc_triton_kernel": res["settings"]["llmc_triton"] and lib.triton_config(a) is not None, "rows": rows}
        res["pairs"].append(entry)
        for n, W in Ws.items():
            H, X = Hs[W.shape[1]], Xe[W.shape[1]]
            row = {"linear": n, "shape": list(W.shape)}
            try:
                (Ql, qps), row["llmc_s"] = timed(lambda: llmc_gptq(lib, [W], H, a), dev)
                Ql, qp = Ql[0], qps[0]
                row["llmc_on_grid"] = bool(torch.equal(lib.fake_quantize(Ql, qp["scale"], qp["zero_point"], a), Ql))
                row["llmc_err"], row["llmc_bpw"] = rel_err(X, W, Ql), llmc_bits(a, qp, W.shape)
                row["llmc_rtn_err"] = rel_err(X, W, lib.fake_quantize(W.float(), qp["scale"], qp["zero_point"], a))
                Qm, row["mxlab_s"] = timed(lambda: mxlab_gptq(W, H, p["fmt"], p["block"], fused, args.actorder), dev)
                spec = QuantSpec(p["fmt"], "none", p["block"], "nearest")
                quant, _, pack_fn = weight_quantizer(W, spec)
                row["mxlab_on_grid"] = bool(torch.equal(quant(Qm), Qm))
                row["mxlab_err"], row["mxlab_bpw"] = rel_err(X, W, Qm), pack_fn(Qm).bits_per_element()
                row["mxlab_rtn_err"] = rel_err(X, W, quantize(W.float(), p["fmt"], p["block"]))
                row["ratio_llmc_over_mxlab"] = row["llmc_s"] / row["mxlab_s"]
                if p["fmt"] == "int4":   # mxlab's GPTQ loop on llm-compressor's own int4 grid: the same algorithm?
                    grid = lambda c: lib.fake_quantize(c, qp["scale"], qp["zero_point"], a)  # noqa: E731
                    Qx = gptq_quantize(W, H, grid, block_size=1, blocksize=BLOCKSIZE, percdamp=PERCDAMP,
                                       act_order=args.actorder)
                    row["cross_err"], row["cross_equal"] = rel_err(X, W, Qx), float((Qx == Ql).float().mean())
            except Exception as exc:  # noqa: BLE001 - one failing cell must not lose the device run
                row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
                res["errors"].append(f"{p['name']} / {n}: {row['error']}")
            rows.append(row)
            report(p["name"], row)
        entry["layer"] = layer_totals(lib, p, Ws, Hs, dev, fused, args.actorder, res["errors"])
    return res


def layer_totals(lib, p: dict, Ws: dict, Hs: dict, dev, fused: bool, actorder: bool, errors: list) -> dict:
    """Seconds of the layer with each side's batching, and whether the batched results equal the single ones."""
    out = {"llmc_batched_s": 0.0, "mxlab_stacked_s": 0.0, "llmc_batched_equal": True, "mxlab_stacked_equal": True}
    try:
        by_shape: dict = {}
        for n, W in Ws.items():
            by_shape.setdefault(tuple(W.shape), []).append(n)
        for names in by_shape.values():   # equal shapes share the Hessian here (equal in-features)
            group = [Ws[n] for n in names]
            (Qs, _), t = timed(lambda: llmc_gptq(lib, group, Hs[group[0].shape[1]], p["args"]), dev)
            out["llmc_batched_s"] += t
            for W, Q in zip(group, Qs):
                out["llmc_batched_equal"] &= bool(torch.equal(Q, llmc_gptq(lib, [W], Hs[W.shape[1]], p["args"])[0][0]))
        for names in STACKS:
            names = [n for n in names if n in Ws]
            if not names:
                continue
            Wg = torch.cat([Ws[n] for n in names])
            H = Hs[Wg.shape[1]]
            Qg, t = timed(lambda: mxlab_gptq(Wg, H, p["fmt"], p["block"], fused, actorder), dev)
            out["mxlab_stacked_s"] += t
            for n, Q in zip(names, Qg.split([Ws[n].shape[0] for n in names])):
                out["mxlab_stacked_equal"] &= bool(torch.equal(Q, mxlab_gptq(Ws[n], H, p["fmt"], p["block"], fused, actorder)))
    except Exception as exc:  # noqa: BLE001
        out["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        errors.append(f"{p['name']} / layer: {out['error']}")
    return out


# ----------------------------------------------------------------------------- report
def markdown(res: dict) -> list[str]:
    s = res["settings"]
    md = [f"Device {res['device']}, torch {res['torch']}, " + ", ".join(f"{k} {v}" for k, v in res["versions"].items())
          + f"; {res['tokens']} calibration tokens, {res['eval_tokens']} held-out tokens"
          + (" (--tiny: widths / 16)" if res["tiny"] else "") + ".",
          f"Both sides: blocksize {s['blocksize']}, damping {s['percdamp']} x mean diag(H), act-order "
          f"{'on' if s['actorder'] else 'off'}, the same float32 H ({s['hessian_dtype']} GEMM). mxlab MX: column "
          f"rule, fused Triton loop {'on' if s['mxlab_fused'] else 'off (torch loop)'}; llm-compressor Triton "
          f"block kernel {'on where its args allow' if s['llmc_triton'] else 'off (torch loop)'}.",
          "Seconds: qparams + GPTQ per linear, CUDA-synchronized wall time, Hessian excluded. Error: "
          "||X W^T - X Q^T||^2 / ||X W^T||^2 on held-out inputs. bpw: bits per weight as stored.", ""]
    for e in res["pairs"]:
        md += [f"**{e['pair']}** (llm-compressor | mxlab)", "",
               "| linear | shape | llmc s | mxlab s | llmc / mxlab | llmc err | mxlab err | llmc bpw | mxlab bpw |",
               "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in e["rows"]:
            if "error" in r:
                md.append(f"| {r['linear']} | {r['shape'][0]}x{r['shape'][1]} | error: {r['error']} |")
                continue
            md.append(f"| {r['linear']} | {r['shape'][0]}x{r['shape'][1]} | {r['llmc_s']:.3f} | {r['mxlab_s']:.3f} | "
                      f"{r['ratio_llmc_over_mxlab']:.2f} | {r['llmc_err']:.3e} | {r['mxlab_err']:.3e} | "
                      f"{r['llmc_bpw']:.4f} | {r['mxlab_bpw']:.4f} |")
        ok = [r for r in e["rows"] if "error" not in r]
        if ok:
            tl, tm = sum(r["llmc_s"] for r in ok), sum(r["mxlab_s"] for r in ok)
            md.append(f"| **all** | | {tl:.3f} | {tm:.3f} | {tl / tm:.2f} | | | | |")
            md += ["", f"On the format grid: llmc {sum(r['llmc_on_grid'] for r in ok)}/{len(ok)}, mxlab "
                   f"{sum(r['mxlab_on_grid'] for r in ok)}/{len(ok)}. GPTQ below RTN: llmc "
                   f"{sum(r['llmc_err'] < r['llmc_rtn_err'] for r in ok)}/{len(ok)}, mxlab "
                   f"{sum(r['mxlab_err'] < r['mxlab_rtn_err'] for r in ok)}/{len(ok)}."]
            cross = [r for r in ok if "cross_err" in r]
            if cross:
                md.append("Cross-check, mxlab's GPTQ loop on llm-compressor's int4 grid (same qparams): error "
                          + ", ".join(f"{r['linear']} {r['cross_err']:.3e} vs llmc {r['llmc_err']:.3e} "
                                      f"({100 * r['cross_equal']:.2f}% equal weights)" for r in cross) + ".")
        L = e["layer"]
        if "error" in L:
            md.append(f"Layer batching: error: {L['error']}")
        else:
            md.append(f"Layer with batching: llm-compressor equal-shape batches {L['llmc_batched_s']:.3f} s "
                      f"(== single: {L['llmc_batched_equal']}), mxlab stacked q/k/v, gate/up {L['mxlab_stacked_s']:.3f} s "
                      f"(== single: {L['mxlab_stacked_equal']}).")
        md.append("")
    if res["errors"]:
        md += ["Errors:", *[f"- {e}" for e in res["errors"]]]
    return md


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cuda", "cpu"))
    ap.add_argument("--tiny", action="store_true", help="widths / 16: a CPU run in well under a minute")
    ap.add_argument("--tokens", type=int, default=0, help="calibration tokens behind H (default 16384; tiny 4 x width)")
    ap.add_argument("--eval-tokens", type=int, default=0, help="held-out tokens (default 4096; tiny 1024)")
    ap.add_argument("--layers", default=",".join(LAYER_8B), help="comma-separated subset of " + ",".join(LAYER_8B))
    ap.add_argument("--actorder", action="store_true", help="activation order on both sides (llm-compressor 'weight')")
    ap.add_argument("--hessian-dtype", default="float32", choices=("float32", "tf32", "bf16"))
    ap.add_argument("--out", default="benchmarks/results", help="folder for llmcompressor_gptq.{json,md}")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.layers = [n.strip() for n in args.layers.split(",") if n.strip()]
    unknown = [n for n in args.layers if n not in LAYER_8B]
    if unknown or not args.layers:
        ap.error(f"--layers: unknown {unknown}; choose from {', '.join(LAYER_8B)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device here")
    try:
        lib = load_llmcompressor()
    except NotImportable as exc:
        print(exc, file=sys.stderr)
        return 2
    res = run(args, lib, report=lambda pair, row: log.info("%s %s", pair, row))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "llmcompressor_gptq.json").write_text(json.dumps(res, indent=1, default=str))
    md = ["## llm-compressor's GPTQ side by side (issue 17)", "", *markdown(res)]
    (out / "llmcompressor_gptq.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
