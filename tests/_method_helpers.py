"""Shared pieces of the AWQ/GPTQ tests: formats under test, toy inputs with outliers, error measures."""
from __future__ import annotations

import functools

import torch

from mxlab.formats import pack, quantize
from mxlab.ptq.methods.gptq import weight_quantizer as _gptq_weight_quantizer
from mxlab.recipe import QuantSpec

MX_FORMATS = ["mxint4", "mxint3", "mxfp4_e2m1"]   # every MX format of 3 or 4 bits
INT_FORMATS = ["int4", "int3"]


def outlier_inputs(n: int, d: int, seed: int = 0, n_outliers: int = 4, factor: float = 30.0,
                   rank: int = 8) -> torch.Tensor:
    """(n, d) float32 activations shaped like an LLM's: independent noise plus a few shared directions
    (rank ``rank``, which makes channels correlated), and ``n_outliers`` channels ``factor`` times larger."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) + torch.randn(n, rank, generator=g) @ torch.randn(rank, d, generator=g)
    idx = torch.randperm(d, generator=g)[:n_outliers]
    x[:, idx] *= factor
    return x


def output_mse(x: torch.Tensor, W: torch.Tensor, Q: torch.Tensor) -> float:
    """mean ||x W^T - x Q^T||^2 per output element, in float64."""
    x, W, Q = x.double(), W.double(), Q.double()
    return float(((x @ (W - Q).T) ** 2).mean())


def weight_quantizer(W: torch.Tensor, fmt: str, block_size: int = 32):
    """(quantizer, gptq block size, on_grid(Q) -> bool) for W in ``fmt``, as the gptq step builds them."""
    spec = QuantSpec(weights=fmt, acts="none", block_size=block_size)
    quant, block, pack_fn = _gptq_weight_quantizer(W, spec)
    if block == 1:  # per-channel int: on the grid of the original W's scale / zero point
        on_grid = lambda Q: torch.equal(pack_fn(Q).dequantize().to(Q.dtype), Q)  # noqa: E731
    else:
        on_grid = lambda Q: torch.equal(quantize(Q, fmt, block_size), Q)  # noqa: E731
    return quant, block, on_grid


REAL_MODULES = ("model.layers.2.self_attn.q_proj", "model.layers.2.mlp.down_proj", "model.layers.4.mlp.gate_proj")


@functools.lru_cache(maxsize=1)
def real_activations() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """name -> (inputs (2048, in), weight (out, in)) of three linears of the embedded stories260K model,
    captured with forward pre-hooks on 16 x 128 TinyStories calibration tokens (loaded once per session)."""
    import mxlab
    from mxlab.data import calibration_batches

    model, tok = mxlab.load_model()
    tokens = calibration_batches(tok, "tinystories", n_samples=16, seq_len=128)
    got: dict[str, torch.Tensor] = {}

    def hook_for(name):
        def hook(module, args):
            got[name] = args[0].reshape(-1, args[0].shape[-1]).detach().float()
        return hook

    handles = [model.get_submodule(n).register_forward_pre_hook(hook_for(n)) for n in REAL_MODULES]
    with torch.no_grad():
        model(tokens)
    for h in handles:
        h.remove()
    return {n: (got[n], model.get_submodule(n).weight.detach().float().clone()) for n in REAL_MODULES}


def awq_weight(x: torch.Tensor, W: torch.Tensor, fmt: str, block_size: int = 32, clip: bool = True):
    """AWQ on one linear through the library's searches: (s, W * s clipped, alpha); the layer then
    computes (x / s) @ quantize(W * s clipped)^T."""
    from mxlab.ptq.methods import awq

    spec = QuantSpec(weights=fmt, acts="none", block_size=block_size)
    wq = lambda w: quantize(w, fmt, block_size)  # noqa: E731  (per-row min/max for int formats)
    s, alpha, _ = awq.search_scale(x, [W], [wq])
    Ws = W * s
    if clip:
        g = awq.clip_group_size(spec, W.shape[1])
        Ws = awq.apply_clip(Ws, awq.search_clip(Ws, awq.group_gram(x / s, g), wq, g), g)
    return s, Ws, alpha
