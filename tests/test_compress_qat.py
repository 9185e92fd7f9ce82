"""llmlab.compress.qat: the straight-through estimator and quantization-aware training."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from llmlab.compress import qat as Q
from llmlab.compress.quant import fake_quantize


def test_straight_through_forward_is_quantized_backward_is_identity():
    w = torch.randn(6, 16, generator=torch.Generator().manual_seed(0), requires_grad=True)
    q = Q.fake_quant_ste(w, 3, group_size=8)
    expected = fake_quantize(w.detach(), 3, scheme="zeropoint", granularity="group", group_size=8)
    assert torch.equal(q.detach(), expected)
    g = torch.randn(6, 16, generator=torch.Generator().manual_seed(1))
    (grad,) = torch.autograd.grad(q, w, g)
    assert torch.equal(grad, g)  # round() treated as the identity


def test_prepare_qat_shares_parameters_and_freeze_stores_the_grid():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    params = [p for p in model.parameters()]
    qat = Q.prepare_qat(model, bits=4, group_size=8)
    assert qat[0].scale.shape == (16, 1, 1) and qat[0].zero.shape == (16, 1, 1)
    assert isinstance(qat[0], Q.QATLinear) and [p for p in qat.parameters()] == params
    x = torch.randn(5, 8)
    frozen = Q.freeze_qat(copy.deepcopy(qat))
    assert type(frozen[0]) is nn.Linear
    torch.testing.assert_close(frozen(x), qat(x))
    assert len(torch.unique(frozen[0].weight[0, :8])) <= 16
    with pytest.raises(ValueError, match="no QATLinear"):
        Q.freeze_qat(frozen)
    with pytest.raises(ValueError, match="group_size"):
        Q.prepare_qat(nn.Sequential(nn.Linear(6, 2)), bits=4, group_size=4)
    with pytest.raises(ValueError, match="no nn.Linear"):
        Q.prepare_qat(nn.Sequential(nn.ReLU()))


def test_qat_beats_post_training_rounding_at_two_bits():
    """A linear regression learnt in float, then either rounded to 2 bits (PTQ) or trained on
    with the rounding in the loop (QAT on the grid fixed at the start)."""
    g = torch.Generator().manual_seed(0)
    mix = torch.eye(32) + 2 * torch.randn(32, 32, generator=g) / 32**0.5
    x = torch.randn(512, 32, generator=g) @ mix  # correlated inputs: rounding each weight
    y = x @ torch.randn(32, 8, generator=g)  # to its nearest level is not the best 2-bit model

    def fit(model, lr, steps=300):
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        for _ in range(steps):
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            opt.step()
        return model

    def error(model):
        with torch.no_grad():
            return ((model(x) - y) ** 2).mean().item()

    torch.manual_seed(0)
    trained = fit(nn.Sequential(nn.Linear(32, 8)), lr=1e-2, steps=2000)
    ptq = copy.deepcopy(trained)
    with torch.no_grad():
        ptq[0].weight.copy_(
            fake_quantize(ptq[0].weight, 2, scheme="zeropoint", granularity="group", group_size=8)
        )
    qat = Q.freeze_qat(fit(Q.prepare_qat(copy.deepcopy(trained), bits=2, group_size=8), lr=3e-4))
    assert error(qat) < 0.9 * error(ptq), (error(qat), error(ptq))


def test_clipped_straight_through_gradient():
    torch.manual_seed(0)
    layer = Q.QATLinear(nn.Linear(8, 2), bits=2, group_size=None)
    with torch.no_grad():
        layer.weight[0, 0] = 10.0  # far beyond the grid fixed at the start: clipped
    x = torch.randn(4, 8)
    layer(x).sum().backward()
    assert layer.weight.grad[0, 0] == 0
    assert (layer.weight.grad[0, 1:] != 0).all() and (layer.weight.grad[1] != 0).all()
    assert layer.quantized_weight()[0, 0] <= layer.scale[0, 0] * (3 - layer.zero[0, 0]) + 1e-6
