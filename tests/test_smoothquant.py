"""SmoothQuant scales: the formula on hand values, and the outlier migration it is for."""
from __future__ import annotations

import torch
import torch.nn as nn

from mxlab.architectures import ScalingGroup
from mxlab.formats import quantize
from mxlab.ptq.methods.scaling import fold_scales
from mxlab.ptq.methods.smoothquant import smooth_scales


def test_scale_formula_on_hand_values():
    act = torch.tensor([16.0, 1.0, 0.0, 4.0])
    w = torch.tensor([1.0, 4.0, 2.0, 0.0])
    # s = act^0.5 / w^0.5: [4, 0.5, 1 (unseen channel), 1 (zero weight column)]
    assert torch.equal(smooth_scales(act, w, 0.5), torch.tensor([4.0, 0.5, 1.0, 1.0]))
    # alpha 1: s = max|X|, alpha 0: s = 1 / max|W|
    assert torch.equal(smooth_scales(act[:2], w[:2], 1.0), torch.tensor([16.0, 1.0]))
    assert torch.equal(smooth_scales(act[:2], w[:2], 0.0), torch.tensor([1.0, 0.25]))


def test_smoothing_an_outlier_channel_reduces_int8_activation_error():
    # per-token INT8 activations: one channel 100x larger than the rest crushes the others' resolution
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 64, generator=g)
    x[:, 3] *= 100
    block = nn.Module()
    block.norm, block.fc = nn.LayerNorm(64, elementwise_affine=True), nn.Linear(64, 32, bias=False)
    with torch.no_grad():
        block.fc.weight.copy_(torch.randn(32, 64, generator=g) * 0.1)
        block.norm.weight.fill_(1.0), block.norm.bias.zero_()
    ref = (x @ block.fc.weight.T).detach()

    def err(x_in, w):
        return float(((quantize(x_in.detach(), "int8") @ quantize(w.detach(), "int8").T) - ref).pow(2).mean())

    before = err(x, block.fc.weight.data)
    s = smooth_scales(x.abs().amax(0), block.fc.weight.abs().amax(0), 0.5)
    fold_scales(block, ScalingGroup("norm", ["fc"]), s)
    after = err(x / s, block.fc.weight.data)
    assert torch.allclose(block.norm.weight, 1 / s)
    assert after < before / 4
