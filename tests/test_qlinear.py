"""QuantLinear numerics: hand-computed MX cases, agreement with formats.quantize, dtypes, packing."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mxlab.architectures import ScalingGroup
from mxlab.errors import MxlabError
from mxlab.formats import quantize
from mxlab.ptq.methods.scaling import fold_scales
from mxlab.ptq.qlinear import QuantLinear
from mxlab.recipe import QuantSpec

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _qlinear(w: torch.Tensor, spec: QuantSpec, bias=None) -> QuantLinear:
    lin = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
    with torch.no_grad():
        lin.weight.copy_(w)
        if bias is not None:
            lin.bias.copy_(bias)
    return QuantLinear.from_linear(lin, spec)


def test_hand_computed_mxint4_blocks_along_in_features():
    # row [1, .5, .25, 3]: amax 3 -> scale 2^1; /2 = [.5, .25, .125, 1.5]; *4, round (ties away) -> [2, 1, 1, 6]
    # -> [1, .5, .5, 3]. Second block [.1, .1, .1, .1]: scale 2^-4, .1*16*4 = 6.4 -> 6 -> .09375.
    w = torch.tensor([[1.0, 0.5, 0.25, 3.0, 0.1, 0.1, 0.1, 0.1]])
    q = _qlinear(w, QuantSpec("mxint4", "none", block_size=4))
    q.quantize_weight()
    assert q.weight_quantized
    assert torch.equal(q.weight.data, torch.tensor([[1.0, 0.5, 0.5, 3.0] + [0.09375] * 4]))
    assert torch.equal(q.weight_fp, w)
    x = torch.eye(8)
    assert torch.equal(q(x), q.weight.data.T)          # acts 'none': a plain linear on the quantized weight


def test_activations_quantized_per_token_blocks():
    # mxint8, block 2: token [3, 0.01] -> scale 2^1, 0.01/2*64 = .32 -> 0: the small element vanishes
    q = _qlinear(torch.eye(2), QuantSpec("none", "mxint8", block_size=2))
    x = torch.tensor([[3.0, 0.01], [0.01, 0.01]])
    y = q(x)
    assert torch.equal(y[0], torch.tensor([3.0, 0.0]))
    assert torch.allclose(y[1], quantize(x[1:], "mxint8", 2)[0]) and y[1, 0] != 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("fmt", ["mxint4", "mxfp4", "int4"])
def test_matches_formats_quantize(device, dtype, fmt):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(48, 96, generator=g)
    b = torch.randn(48, generator=g)
    x = (torch.randn(3, 5, 96, generator=g) * torch.linspace(0.1, 8, 96)).to(device, dtype)
    spec = QuantSpec(fmt, "mxint8", block_size=32)
    q = _qlinear(w, spec, b).to(device=device, dtype=dtype)
    q.quantize_weight()
    wq = quantize(w.to(device, dtype), fmt, 32, axis=-1)
    assert torch.equal(q.weight.data, wq)
    want = F.linear(quantize(x, "mxint8", 32, axis=-1), wq, b.to(device, dtype))
    got = q(x)
    assert got.dtype == dtype and got.shape == (3, 5, 48)
    assert torch.equal(got, want)
    # the packed form dequantizes to exactly the stored weight
    assert torch.equal(q.packed().dequantize().to(device), q.weight.data)


def test_quantization_error_is_what_the_format_promises():
    # MXINT8 weights and activations: relative output error well below 1% (SQNR > 35 dB)
    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(64, 256, generator=g), torch.randn(512, 256, generator=g)
    q = _qlinear(w, QuantSpec("mxint8", "mxint8", 32))
    q.quantize_weight()
    err = q(x) - x @ w.T
    sqnr = 10 * torch.log10((x @ w.T).pow(2).sum() / err.pow(2).sum())
    assert sqnr > 35


def test_quantized_weights_cannot_be_rescaled():
    block = nn.Module()
    block.norm = nn.LayerNorm(8)
    block.fc = _qlinear(torch.randn(4, 8), QuantSpec("mxint4", "none", 8))
    block.fc.quantize_weight()
    with pytest.raises(MxlabError, match="already quantized"):
        fold_scales(block, ScalingGroup("norm", ["fc"]), torch.full((8,), 2.0))
    with pytest.raises(MxlabError, match="shape"):
        block.fc.set_quantized_weight(torch.zeros(8, 4))


def test_fold_scales_exact_on_norm_and_linear():
    torch.manual_seed(0)
    block = nn.Module()
    block.norm, block.a, block.b = nn.LayerNorm(8), nn.Linear(8, 6), nn.Linear(6, 3)
    with torch.no_grad():
        block.norm.weight.uniform_(0.5, 1.5), block.norm.bias.uniform_(-1, 1)
    f = lambda x: block.b(block.a(block.norm(x)))   # noqa: E731
    x = torch.randn(10, 8)
    ref = f(x)
    fold_scales(block, ScalingGroup("norm", ["a"]), torch.rand(8) + 0.5)
    fold_scales(block, ScalingGroup("a", ["b"], "linear"), torch.rand(6) * 4 + 0.1)
    assert torch.allclose(f(x), ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(MxlabError, match="positive"):
        fold_scales(block, ScalingGroup("a", ["b"], "linear"), torch.zeros(6))
