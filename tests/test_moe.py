"""llmlab.moe: routing, the auxiliary losses, the three expert implementations, the MoE LLaMA,
and parity with transformers' Mixtral block."""

import math

import pytest
import torch

from llmlab.models import LlamaConfig
from llmlab.moe import layer as L
from llmlab.moe import losses, router
from llmlab.moe.model import (
    MoESpec,
    aux_losses,
    moe_llama,
    moe_loss_fn,
    parameter_counts,
    to_mixtral_block,
)


def _logits(t=64, e=8, seed=0):
    return torch.randn(t, e, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------- routing


def test_both_orders_choose_the_same_experts_and_topk_softmax_is_renormalised():
    z = _logits()
    a = router.route(z, 2, "softmax_topk", renormalize=True)
    b = router.route(z, 2, "topk_softmax")
    assert torch.equal(a.experts, b.experts)
    torch.testing.assert_close(a.weights, b.weights)
    raw = router.route(z, 2, "softmax_topk", renormalize=False)
    torch.testing.assert_close(raw.weights, z.softmax(-1).gather(1, raw.experts))
    assert (raw.weights.sum(-1) < 1).all()


def test_top1_after_softmax_sends_no_gradient_to_the_router():
    z = _logits().requires_grad_()
    w = router.route(z, 1, "topk_softmax").weights
    assert torch.equal(w, torch.ones_like(w))
    (g,) = torch.autograd.grad(
        (w * torch.randn_like(w)).sum(), z, allow_unused=True, materialize_grads=True
    )
    assert g.abs().max() == 0
    z2 = _logits().requires_grad_()
    w2 = router.route(z2, 1, "softmax_topk", renormalize=False).weights  # Switch: p itself
    (g2,) = torch.autograd.grad((w2 * torch.randn_like(w2)).sum(), z2)
    assert g2.abs().max() > 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(logits=torch.zeros(4), k=1), "logits"),
        (dict(logits=torch.zeros(4, 3), k=4), "k: expected at most"),
        (dict(logits=torch.zeros(4, 3), k=0), "k"),
        (dict(logits=torch.zeros(4, 3), k=1, order="top"), "order"),
    ],
)
def test_route_names_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        router.route(**kwargs)


def test_router_keeps_float32_and_noise_only_in_training():
    r = router.TopKRouter(16, 4, 2, noisy=True).to(torch.bfloat16)
    x = torch.randn(10, 16, dtype=torch.bfloat16)
    r.eval()
    a, b = r(x), r(x)
    assert a.logits.dtype == torch.float32 and torch.equal(a.logits, b.logits)
    r.train()
    assert not torch.equal(r(x).logits, a.logits)


def test_capacity_formula_and_mask():
    assert router.capacity(100, 8, 2, 1.0) == 25
    assert router.capacity(100, 8, 2, 1.25) == math.ceil(1.25 * 100 * 2 / 8)
    with pytest.raises(ValueError, match="capacity_factor"):
        router.capacity(100, 8, 2, 0)
    experts = torch.tensor([[0, 1], [0, 2], [0, 1], [1, 0]])
    keep = router.capacity_mask(experts, 3, slots=2)
    # expert 0: first choices of tokens 0, 1, 2 -> token 2's is third, dropped; token 3's second
    # choice of 0 comes after every first choice -> dropped too. Expert 1: token 3's first
    # choice, then the second choices of tokens 0 and 2 -> token 2's is third, dropped
    assert keep.tolist() == [[True, True], [True, True], [False, False], [True, False]]
    assert router.capacity_mask(experts, 3, slots=8).all()


# ----------------------------------------------------------------------------------- losses


def test_balancing_loss_is_one_when_even_and_e_when_collapsed():
    t, e = 64, 8
    even_probs = torch.full((t, e), 1 / e)
    even_experts = torch.arange(t).remainder(e)[:, None]
    assert losses.load_balancing_loss(even_probs, even_experts).item() == pytest.approx(1.0)
    collapsed = torch.zeros(t, e)
    collapsed[:, 3] = 1
    assert losses.load_balancing_loss(collapsed, torch.full((t, 1), 3)).item() == pytest.approx(e)


def test_balancing_loss_matches_switch_and_transformers():
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    z = _logits(128, 8)
    r = router.route(z, 2)
    ours = losses.load_balancing_loss(r.probs, r.experts)
    f = torch.bincount(r.experts.flatten(), minlength=8).float() / r.experts.numel()
    torch.testing.assert_close(ours, 8 * (f * z.softmax(-1).mean(0)).sum())
    theirs = load_balancing_loss_func((z,), num_experts=8, top_k=2)
    torch.testing.assert_close(theirs, 2 * ours)  # transformers counts each of the k choices


def test_the_two_classic_mistakes_give_other_numbers():
    z = 3 * _logits(256, 8)
    r = router.route(z, 2)
    right = losses.load_balancing_loss(r.probs, r.experts)
    double = losses.load_balancing_loss(r.probs.softmax(-1), r.experts)  # softmax(softmax(z))
    assert abs(double.item() - 1) < abs(right.item() - 1) / 5  # flattened towards the even value
    chosen_only = torch.zeros_like(r.probs).scatter(1, r.experts, r.probs.gather(1, r.experts))
    assert not torch.allclose(losses.load_balancing_loss(chosen_only, r.experts), right)


def test_z_loss():
    z = _logits()
    torch.testing.assert_close(losses.router_z_loss(z), (torch.logsumexp(z, -1) ** 2).mean())
    assert losses.router_z_loss(10 * z) > losses.router_z_loss(z)
    with pytest.raises(ValueError, match="logits"):
        losses.router_z_loss(torch.zeros(3))


# ------------------------------------------------------------------------------ the layer


def _moe(**kw):
    torch.manual_seed(0)
    return L.MoE(32, 48, kw.pop("n_experts", 8), kw.pop("k", 2), **kw)


@pytest.mark.parametrize(
    "kw", [{}, {"n_shared": 1}, {"capacity_factor": 0.5}, {"k": 1, "renormalize": False}]
)
def test_three_implementations_agree_forward_and_backward(kw):
    x = torch.randn(3, 21, 32, generator=torch.Generator().manual_seed(1))
    outs, grads = {}, {}
    for impl in L.IMPLS:
        m = _moe(impl=impl, **kw)
        xi = x.clone().requires_grad_()
        y = m(xi)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        outs[impl], grads[impl] = y.detach(), (xi.grad, m.experts.w_down.grad, m.router.weight.grad)
    for impl in ("loop", "grouped"):
        torch.testing.assert_close(outs[impl], outs["dense"], atol=1e-6, rtol=1e-5)
        for a, b in zip(grads[impl], grads["dense"], strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_capacity_drops_are_counted_and_pass_nothing():
    m = _moe(capacity_factor=0.25, n_experts=4)
    x = torch.randn(40, 32)
    y = m(x)
    assert m.stats.dropped > 0
    keep = router.capacity_mask(m.stats.router.experts, 4, router.capacity(40, 4, 2, 0.25))
    lost = ~keep.any(dim=1)  # tokens with both assignments dropped: the layer outputs zero
    assert lost.any() and y[lost].abs().max() == 0


def test_grouped_mm_equals_a_loop_with_empty_segments():
    x = torch.randn(30, 8)
    w = torch.randn(4, 5, 8)
    counts = torch.tensor([10, 0, 20, 0])
    expected = torch.cat([x[:10] @ w[0].T, x[10:] @ w[2].T])
    torch.testing.assert_close(L.grouped_mm(x, w, counts), expected)
    with pytest.raises(ValueError, match="counts"):
        L.grouped_mm(x, w, torch.tensor([1, 2, 3, 4]))


def test_permute_sorts_by_expert_stably():
    experts = torch.tensor([[2, 0], [0, 1], [2, 1]])
    order, tokens, counts = L.permute(experts, 3)
    assert counts.tolist() == [2, 2, 2]
    assert experts.flatten()[order].tolist() == [0, 0, 1, 1, 2, 2]
    assert tokens.tolist() == [0, 1, 1, 2, 0, 2]


def test_an_expert_is_chapter_01s_swiglu_ffn():
    m = _moe()
    x = torch.randn(5, 32)
    torch.testing.assert_close(m.experts.as_feedforward(3)(x), m.experts.ffn(3, x))


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"impl": "fast"}, "impl"),
        ({"n_shared": -1}, "n_shared"),
        ({"capacity_factor": 0}, "capacity_factor"),
    ],
)
def test_moe_names_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        _moe(**kw)


@pytest.mark.parametrize("implementation", ["eager", "grouped_mm"])
def test_equals_transformers_mixtral_block(implementation):
    m = _moe(n_experts=8, k=2).eval()
    block = to_mixtral_block(m, implementation)
    x = torch.randn(2, 9, 32)
    with torch.no_grad():
        torch.testing.assert_close(block(x), m(x), atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="shared"):
        to_mixtral_block(_moe(n_shared=1))


# ------------------------------------------------------------------------------ the model


def _config():
    return LlamaConfig(
        vocab_size=64, d_model=32, n_layers=2, n_heads=2, d_ff=64, tie_embeddings=True
    )


def test_parameter_counts():
    spec = MoESpec(n_experts=8, k=2, d_ff=16)
    model = moe_llama(_config(), spec, seed=0)
    counts = parameter_counts(model)
    per_expert = 3 * 32 * 16
    assert counts["experts"] == 2 * 8 * per_expert
    assert counts["total"] - counts["active"] == 2 * 6 * per_expert
    all_on = parameter_counts(moe_llama(_config(), MoESpec(n_experts=4, k=4, d_ff=16)))
    assert all_on["active"] == all_on["total"]


def test_moe_llama_trains_with_its_auxiliary_losses():
    from llmlab.training import TrainConfig, train

    model = moe_llama(_config(), MoESpec(n_experts=4, k=2, d_ff=16), seed=0)
    with pytest.raises(ValueError, match="no MoE layer has run"):
        aux_losses(model)
    ids = torch.randint(0, 64, (8, 17), generator=torch.Generator().manual_seed(0))
    history = train(
        model,
        lambda i: (ids[:, :-1], ids[:, 1:]),
        TrainConfig(steps=20, lr=3e-3, label_smoothing=0.0),
        loss_fn=moe_loss_fn(),
        progress=False,
    )
    assert history.loss[-1] < history.loss[0]
    balance, z = aux_losses(model)
    assert balance.item() >= 1.0 - 1e-5 and z.item() > 0
    with pytest.raises(ValueError, match="balance"):
        moe_loss_fn(balance=-1)


def test_muon_updates_each_expert_as_its_own_matrix_and_leaves_the_router_to_adamw():
    from llmlab.training.optim import Muon, muon_param_groups, orthogonalize

    model = moe_llama(_config(), MoESpec(n_experts=4, k=2, d_ff=16), seed=0)
    groups = muon_param_groups(model, lr=1e-3, muon_lr=0.02)
    muon_ids = {id(p) for p in groups[0]["params"]}
    moe = model.layers[0].mlp
    assert id(moe.experts.w_gate) in muon_ids and id(moe.router.weight) not in muon_ids
    w = moe.experts.w_down
    before = w.detach().clone()
    w.grad = torch.randn_like(w)
    opt = Muon(
        [{"params": [w], "muon": True, "lr": 0.02, "weight_decay": 0.0}],
        momentum=0.0,
        nesterov=False,
    )
    opt.step()
    scale = 0.02 * math.sqrt(max(1.0, w.shape[1] / w.shape[2]))
    for e in range(w.shape[0]):
        expected = before[e] - scale * orthogonalize(w.grad[e], 5)
        torch.testing.assert_close(w.detach()[e], expected)


def test_upcycled_layer_computes_the_dense_ffn_exactly():
    from llmlab.moe.model import upcycle
    from llmlab.nn.ffn import FeedForward

    torch.manual_seed(0)
    ffn = FeedForward(32, 48, activation="swiglu", bias=False)
    x = torch.randn(3, 11, 32)
    moe = upcycle(ffn, n_experts=4, k=2)
    assert torch.equal(moe(x), ffn(x))
    noisy = upcycle(ffn, n_experts=4, k=2, router_std=0.1)
    torch.testing.assert_close(noisy(x), ffn(x))  # the copies are equal: any weights summing to 1
    assert len(set(noisy.stats.router.experts.flatten().tolist())) > 2
    with pytest.raises(ValueError, match="mlp"):
        upcycle(FeedForward(32, 48, activation="gelu"), 4, 2)
