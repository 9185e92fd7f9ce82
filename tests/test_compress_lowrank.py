"""llmlab.compress.lowrank: truncated and activation-aware SVD, LowRankLinear."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llmlab.compress import lowrank as L
from llmlab.compress.gptq import output_error


def _w(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _correlated_inputs(n=400, d=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g, dtype=torch.float64)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) @ mix
    x[:, 3] *= 20  # one loud feature, like an LLM's massive activation
    return x


def test_break_even_and_rank_for_share():
    assert L.break_even_rank(576, 576) == 288
    assert L.rank_for_share(576, 576, 0.5) == 144
    k = L.rank_for_share(576, 1536, 0.5)
    assert k * (576 + 1536) <= 0.5 * 576 * 1536 < (k + 1) * (576 + 1536)
    assert L.rank_for_share(4, 4, 0.01) == 1


def test_energy_rank():
    s = torch.tensor([3.0, 2.0, 1.0, 0.0])  # squares 9, 4, 1: cumulative 9/14, 13/14, 1
    assert L.energy_rank(s, 0.5) == 1
    assert L.energy_rank(s, 0.9) == 2
    assert L.energy_rank(s, 1.0) == 3


@pytest.mark.parametrize("rank", [1, 3, 8])
def test_truncated_svd_meets_eckart_young(rank):
    w = _w(10, 16)
    a, b = L.truncated_svd(w, rank)
    assert a.shape == (10, rank) and b.shape == (rank, 16)
    s = torch.linalg.svdvals(w)
    assert torch.isclose((w - a @ b).norm(), s[rank:].square().sum().sqrt())
    assert torch.allclose(a.norm(dim=0), b.norm(dim=1))  # the singular values split evenly


def test_full_rank_reproduces_the_matrix():
    w = _w(6, 9)
    a, b = L.truncated_svd(w, 6)
    torch.testing.assert_close(a @ b, w)
    h = torch.eye(9, dtype=torch.float64)
    a, b = L.whitened_svd(w, h, 6, damp=0.0)
    torch.testing.assert_close(a @ b, w)


def test_whitened_svd_with_identity_inputs_is_plain_svd():
    w = _w(12, 8, seed=2)
    plain = torch.matmul(*L.truncated_svd(w, 3))
    white = torch.matmul(*L.whitened_svd(w, torch.eye(8, dtype=torch.float64), 3, damp=0.0))
    torch.testing.assert_close(white, plain)


@pytest.mark.parametrize("rank", [2, 6, 12])
def test_whitened_svd_is_optimal_for_the_output_error(rank):
    w, x = _w(16, 24, seed=3), _correlated_inputs()
    h = x.T @ x / x.shape[0]
    white = torch.matmul(*L.whitened_svd(w, h, rank, damp=0.0))
    plain = torch.matmul(*L.truncated_svd(w, rank))
    assert output_error(w, white, h) < output_error(w, plain, h)
    # optimum: the tail of the singular values of W L, H = L L^T
    tail = torch.linalg.svdvals(w @ torch.linalg.cholesky(h))[rank:].square().sum()
    assert output_error(w, white, h) == pytest.approx(tail.item(), rel=1e-6)
    # and no other rank-k matrix does better: random perturbations of the factors
    a, b = L.whitened_svd(w, h, rank, damp=0.0)
    g = torch.Generator().manual_seed(4)
    for _ in range(5):
        da = 1e-3 * torch.randn(a.shape, generator=g, dtype=torch.float64)
        assert output_error(w, (a + da) @ b, h) >= output_error(w, a @ b, h)


def test_low_rank_linear_runs_the_factors():
    lin = nn.Linear(16, 10).double()
    low = L.LowRankLinear.from_linear(lin, 4)
    x = _w(5, 16, seed=5)
    a, b = L.truncated_svd(lin.weight.detach(), 4)
    torch.testing.assert_close(low(x), x @ (a @ b).T + lin.bias.detach())
    torch.testing.assert_close(low.weight, a @ b)
    assert sum(p.numel() for p in low.parameters()) == 4 * (16 + 10) + 10
    assert "rank=4" in repr(low)


def test_factorize_linears_swaps_every_layer_but_the_head():
    from llmlab.assets import tiny_smollm2
    from llmlab.compress.gptq import collect_hessians

    model, _ = tiny_smollm2(seed=0, device="cpu")
    ids = torch.randint(0, 1000, (2, 10), generator=torch.Generator().manual_seed(0))
    hessians = collect_hessians(model, [ids])
    L.factorize_linears(model, 0.5, hessians)
    lows = [m for m in model.modules() if isinstance(m, L.LowRankLinear)]
    assert len(lows) == 14 and isinstance(model.lm_head, nn.Linear)
    assert all(
        m.rank * (m.in_features + m.out_features) <= 0.5 * m.in_features * m.out_features
        for m in lows
    )
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="rank"):
        L.truncated_svd(_w(4, 6), 5)
    with pytest.raises(ValueError, match="weight"):
        L.truncated_svd(_w(4), 1)
    with pytest.raises(ValueError, match="hessian"):
        L.whitened_svd(_w(4, 6), torch.eye(4), 2)
    with pytest.raises(ValueError, match="share"):
        L.rank_for_share(4, 4, 0.0)
    with pytest.raises(ValueError, match="energy"):
        L.energy_rank(torch.ones(3), 1.5)
    with pytest.raises(KeyError, match="hessians"):
        L.factorize_linears(nn.Sequential(nn.Linear(4, 4)), 0.5, hessians={})


def test_decompositions_are_reused_for_any_share():
    import copy

    from llmlab.assets import tiny_smollm2
    from llmlab.compress.gptq import collect_hessians

    model, _ = tiny_smollm2(seed=0, device="cpu")
    ids = torch.randint(0, 1000, (2, 10), generator=torch.Generator().manual_seed(0))
    hessians = collect_hessians(model, [ids])
    decs = {
        n: L.decompose(m.weight, hessians[n].hessian)
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and n != "lm_head"
    }
    a = L.factorize_linears(copy.deepcopy(model), 0.5, hessians)
    b = L.factorize_linears(copy.deepcopy(model), 0.5, decompositions=decs)
    with torch.no_grad():
        torch.testing.assert_close(a(ids).logits, b(ids).logits)
    with pytest.raises(KeyError, match="decompositions"):
        L.factorize_linears(copy.deepcopy(model), 0.5, decompositions={})
