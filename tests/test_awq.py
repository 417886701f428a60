"""AWQ: the searches in the target format, and AWQ / GPTQ / AWQ+GPTQ against RTN by output error."""
from __future__ import annotations

import pytest
import torch

from mxlab.formats import quantize
from mxlab.ptq.methods import awq
from mxlab.ptq.methods.gptq import gptq_quantize, hessian

from _method_helpers import (INT_FORMATS, MX_FORMATS, REAL_MODULES, awq_weight, outlier_inputs, output_mse,
                             real_activations, weight_quantizer)

ALL_FORMATS = MX_FORMATS + INT_FORMATS


def _errors(x: torch.Tensor, W: torch.Tensor, fmt: str) -> dict[str, float]:
    """Output MSE of RTN, GPTQ, AWQ and AWQ then GPTQ for one linear (float activations)."""
    quant, block, on_grid = weight_quantizer(W, fmt, 32)
    s, Ws, _ = awq_weight(x, W, fmt)
    q_s, block_s, on_grid_s = weight_quantizer(Ws, fmt, 32)
    Q_g = gptq_quantize(W, hessian(x), quant, block_size=block)
    Q_ag = gptq_quantize(Ws, hessian(x / s), q_s, block_size=block_s)   # GPTQ on the scaled layer
    assert on_grid(Q_g) and on_grid_s(Q_ag)
    return {"rtn": output_mse(x, W, quant(W)), "gptq": output_mse(x, W, Q_g),
            "awq": output_mse(x, W, q_s(Ws) / s), "awq+gptq": output_mse(x, W, Q_ag / s)}


def test_alpha_zero_is_plain_quantization():
    x = outlier_inputs(512, 64, seed=1)
    W = torch.randn(32, 64, generator=torch.Generator().manual_seed(2)) * 0.05
    s, alpha, losses = awq.search_scale(x, [W], [lambda w: quantize(w, "mxint4", 32)], n_grid=10)
    assert len(losses) == 10 and losses[0] == pytest.approx(output_mse(x, W, quantize(W, "mxint4", 32)), rel=1e-5)
    assert min(losses) < 0.5 * losses[0] and alpha > 0          # the outlier channels make scaling pay
    assert float(s.max() * s.min()) == pytest.approx(1.0, rel=1e-5)


def test_clip_search_error_is_the_output_error():
    """For per-row int4 the Gram form d^T C d is the per-channel output MSE: check, then the winner is no worse."""
    x = outlier_inputs(512, 48, seed=3)
    W = torch.randn(16, 48, generator=torch.Generator().manual_seed(4)) * 0.05
    wq = lambda w: quantize(w, "int4")  # noqa: E731
    C = awq.group_gram(x, 48)
    d = W - wq(W)
    torch.testing.assert_close((d @ C[0] * d).sum(1), ((x @ d.T) ** 2).mean(0), rtol=1e-4, atol=1e-8)
    mv = awq.search_clip(W, C, wq, 48)
    Wc = awq.apply_clip(W, mv, 48)
    per_channel = lambda Q: ((x @ (W - Q).T) ** 2).mean(0)  # noqa: E731
    assert torch.all(per_channel(wq(Wc)) <= per_channel(wq(W)) * (1 + 1e-5))
    assert per_channel(wq(Wc)).mean() < 0.95 * per_channel(wq(W)).mean()


def test_apply_clip_partial_block():
    W = torch.arange(-20.0, 20.0).reshape(1, 40)      # blocks [0:32] and a padded [32:40]
    out = awq.apply_clip(W, torch.tensor([[10.0, 3.0]]), 32)
    assert out[0, :32].abs().max() == 10 and out[0, 32:].tolist() == [3.0] * 8


def test_search_with_activation_quantization():
    """Scored with A-MXINT8 as the layer will run: AWQ's output error is below RTN's."""
    x = outlier_inputs(1024, 128, seed=8)
    W = torch.randn(64, 128, generator=torch.Generator().manual_seed(9)) * 0.05
    wq = lambda w: quantize(w, "mxint4", 32)  # noqa: E731
    aq = lambda a: quantize(a, "mxint8", 32)  # noqa: E731
    s, alpha, losses = awq.search_scale(x, [W], [wq], [aq])
    ref = x @ W.T
    e_awq = float(((aq(x / s) @ wq(W * s).T - ref) ** 2).mean())
    e_rtn = float(((aq(x) @ wq(W).T - ref) ** 2).mean())
    assert e_awq == pytest.approx(min(losses), rel=1e-4) and e_awq < 0.5 * e_rtn, (e_awq, e_rtn)


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_toy_layer_awq_gptq_order(fmt):
    """Outlier channels: GPTQ < RTN, AWQ < RTN, AWQ then GPTQ < both (measured ratios in the comment)."""
    x = outlier_inputs(2048, 128, seed=5)
    W = torch.randn(96, 128, generator=torch.Generator().manual_seed(6)) * 0.05
    e = _errors(x, W, fmt)
    # measured / RTN: gptq 0.53-0.77, awq 0.17-0.90, awq+gptq 0.11-0.51
    assert e["gptq"] < 0.8 * e["rtn"] and e["awq"] < 0.95 * e["rtn"], e
    assert e["awq+gptq"] < min(e["awq"], e["gptq"]), e


@pytest.mark.slow  # loads the embedded model (~10 s on a busy 2-core machine)
def test_real_activations_of_the_embedded_model():
    """Three linears of stories260K on TinyStories calibration inputs, every 3/4-bit MX and INT format.

    Per module: GPTQ < RTN and AWQ < RTN. AWQ then GPTQ beats both on average over the modules for
    the MX formats and int4 (means / RTN: mxint4 0.69 vs 0.81, 0.82; mxint3 0.66 vs 0.80, 0.72;
    mxfp4 0.71 vs 0.74, 0.87; int4 0.69 vs 0.70, 0.77). Measured exception, kept visible: int3,
    where AWQ's clipping (chosen for RTN) costs GPTQ on q_proj (0.86 vs 0.70), mean 0.71 vs AWQ 0.67.
    """
    acts = real_activations()
    ratios = {m: {} for m in ("gptq", "awq", "awq+gptq")}
    for name in REAL_MODULES:
        x, W = acts[name]
        for fmt in ALL_FORMATS:
            e = _errors(x, W, fmt)
            for m in ratios:
                ratios[m][(name, fmt)] = e[m] / e["rtn"]
    assert max(ratios["gptq"].values()) < 0.9, ratios["gptq"]
    assert max(ratios["awq"].values()) < 1.0, ratios["awq"]
    assert max(ratios["awq+gptq"].values()) < 0.9, ratios["awq+gptq"]
    for fmt in MX_FORMATS + ["int4"]:
        mean = {m: sum(r[(n, fmt)] for n in REAL_MODULES) / len(REAL_MODULES) for m, r in ratios.items()}
        assert mean["awq+gptq"] < min(mean["awq"], mean["gptq"]), (fmt, mean)
