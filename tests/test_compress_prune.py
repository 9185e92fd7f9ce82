"""llmlab.compress.prune: magnitude, global magnitude, Wanda and N:M masks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llmlab.compress import prune as P


def _w(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("s", [0.0, 0.25, 0.5, 0.9])
def test_magnitude_mask_keeps_the_largest(s):
    w = _w(8, 16)
    mask = P.magnitude_mask(w, s)
    assert mask.dtype == torch.bool and mask.shape == w.shape
    assert int((~mask).sum()) == round(s * w.numel())
    if 0 < s:
        assert w.abs()[mask].min() >= w.abs()[~mask].max()


def test_global_threshold_prunes_the_layer_of_small_weights_more():
    weights = {"small": 0.01 * _w(8, 8, seed=1), "large": _w(8, 8, seed=2)}
    masks = P.global_magnitude_masks(weights, 0.5)
    assert int(sum((~m).sum() for m in masks.values())) == 64
    assert (~masks["small"]).sum() > (~masks["large"]).sum()
    kept = torch.cat([weights[n].abs()[masks[n]] for n in weights])
    pruned = torch.cat([weights[n].abs()[~masks[n]] for n in weights])
    assert kept.min() >= pruned.max()


def test_wanda_scores_weight_times_input_norm_per_row():
    w = _w(6, 10, seed=3)
    uniform = torch.ones(10)
    per_row = P.wanda_mask(w, uniform, 0.5)
    assert (per_row.sum(1) == 5).all()  # the same sparsity in every output row
    for i in range(6):  # with equal input norms: per-row magnitude
        assert w[i].abs()[per_row[i]].min() >= w[i].abs()[~per_row[i]].max()
    loud = uniform.clone()
    loud[0] = 1000.0  # a feature with large activations: its weights survive
    assert P.wanda_mask(w, loud, 0.8)[:, 0].all()
    assert not P.magnitude_mask(w, 0.8)[:, 0].all()
    with pytest.raises(ValueError, match="input_norm"):
        P.wanda_mask(w, torch.ones(9), 0.5)


def test_two_four_pattern():
    scores = _w(4, 16, seed=4).abs()
    mask = P.n_m_mask(scores, 2, 4)
    assert (mask.view(4, 4, 4).sum(-1) == 2).all()
    blocks, kept = scores.view(4, 4, 4), mask.view(4, 4, 4)
    for b, k in zip(blocks.reshape(-1, 4), kept.reshape(-1, 4), strict=True):
        assert b[k].min() >= b[~k].max()
    with pytest.raises(ValueError, match="m: expected a divisor"):
        P.n_m_mask(_w(2, 6), 2, 4)
    with pytest.raises(ValueError, match="n: expected at most"):
        P.n_m_mask(scores, 5, 4)


def test_apply_masks_and_sparsity():
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    masks = {"0": P.magnitude_mask(model[0].weight, 0.5)}
    P.apply_masks(model, masks)
    assert P.sparsity(model[0].weight) == 0.5
    assert P.sparsity([model[0].weight, model[2].weight]) == pytest.approx(16 / 40)
    with pytest.raises(KeyError, match="not a layer"):
        P.apply_masks(model, {"1": masks["0"]})


def test_argument_errors():
    with pytest.raises(ValueError, match="sparsity"):
        P.magnitude_mask(_w(2, 2), 1.0)
    with pytest.raises(ValueError, match="weight: expected a 2-D"):
        P.magnitude_mask(_w(4), 0.5)
    with pytest.raises(ValueError, match="weights: expected at least one"):
        P.global_magnitude_masks({}, 0.5)
