"""llmlab.nn.sparse_attention: sliding window + global tokens, blocked O(n w) == dense masked."""

from __future__ import annotations

import pytest
import torch

from llmlab.nn.sparse_attention import (
    attention_cost,
    attention_intermediate_shapes,
    blocked_sliding_window_attention,
    dense_sparse_attention,
    sliding_window_mask,
)


def _brute_force_mask(seq, window, causal, n_global):
    allowed = torch.zeros(seq, seq, dtype=torch.bool)
    for i in range(seq):
        for j in range(seq):
            near = 0 <= i - j < window if causal else abs(i - j) < window
            ok = near or i < n_global or j < n_global
            allowed[i, j] = ok and (j <= i or not causal)
    return allowed


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("n_global", [0, 2])
def test_mask_is_the_window_plus_global_tokens(causal, n_global):
    for seq, window in ((9, 3), (6, 1), (5, 8)):
        mask = sliding_window_mask(seq, window, causal=causal, n_global=n_global)
        assert mask.dtype == torch.bool and mask.shape == (seq, seq)
        assert torch.equal(mask, _brute_force_mask(seq, window, causal, n_global))
    # causal, window 3: the query and the 2 keys before it
    assert sliding_window_mask(5, 3).int().tolist()[4] == [0, 0, 1, 1, 1]
    assert sliding_window_mask(5, 3, causal=False).int().tolist()[2] == [1, 1, 1, 1, 1]
    # a window as long as the sequence is full (causal) attention
    assert torch.equal(sliding_window_mask(7, 7), torch.ones(7, 7, dtype=torch.bool).tril())


CASES = [  # (seq, window): a multiple of the window, odd lengths, shorter than one window
    (16, 4),
    (13, 4),
    (37, 5),
    (3, 8),
    (9, 1),
]


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("n_global", [0, 3])
def test_blocked_equals_dense_reference_float64(causal, n_global):
    torch.manual_seed(0)
    for seq, window in CASES:
        if n_global > seq:
            continue
        q, k, v = (
            torch.randn(2, 3, seq, 8, dtype=torch.float64, requires_grad=True) for _ in "qkv"
        )
        dy = torch.randn(2, 3, seq, 8, dtype=torch.float64)
        expected = dense_sparse_attention(q, k, v, window, n_global, causal)
        got = blocked_sliding_window_attention(q, k, v, window, n_global, causal)
        torch.testing.assert_close(got, expected, atol=1e-10, rtol=0)
        grads = torch.autograd.grad(got, (q, k, v), dy)
        expected_grads = torch.autograd.grad(expected, (q, k, v), dy)
        for name, g, e in zip("qkv", grads, expected_grads, strict=True):
            torch.testing.assert_close(g, e, atol=1e-10, rtol=0, msg=lambda m, n=name: f"d{n}: {m}")


@pytest.mark.parametrize("causal", [True, False])
def test_blocked_equals_dense_reference_float32(causal):
    torch.manual_seed(1)
    seq, window, n_global = 101, 16, 2
    q, k, v = (torch.randn(1, 2, seq, 32, requires_grad=True) for _ in "qkv")
    expected = dense_sparse_attention(q, k, v, window, n_global, causal)
    got = blocked_sliding_window_attention(q, k, v, window, n_global, causal, scale=0.3)
    assert got.dtype == torch.float32
    got_default = blocked_sliding_window_attention(q, k, v, window, n_global, causal)
    torch.testing.assert_close(got_default, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        got, dense_sparse_attention(q, k, v, window, n_global, causal, scale=0.3), atol=1e-5, rtol=0
    )
    grads = torch.autograd.grad(got_default.square().sum(), (q, k, v))
    expected_grads = torch.autograd.grad(expected.square().sum(), (q, k, v))
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=0)


@pytest.mark.parametrize("causal", [True, False])
def test_each_query_sees_exactly_the_keys_of_its_mask(causal):
    torch.manual_seed(2)
    seq, window, n_global = 14, 4, 2
    q, k, v = (torch.randn(1, 2, seq, 8, dtype=torch.float64) for _ in "qkv")
    out = blocked_sliding_window_attention(q, k, v, window, n_global, causal)
    mask = sliding_window_mask(seq, window, causal, n_global)
    for j in range(seq):  # perturb key (and value) j: exactly the queries allowed to see it move
        k2, v2 = k.clone(), v.clone()
        k2[:, :, j] += 1.0
        v2[:, :, j] += 1.0
        moved = blocked_sliding_window_attention(q, k2, v2, window, n_global, causal)
        changed = (moved - out).abs().amax(dim=(0, 1, 3)) > 1e-12  # (seq,) queries
        assert torch.equal(changed, mask[:, j]), (j, changed.int().tolist())


def test_intermediates_grow_linearly_blocked_quadratically_dense():
    window = 64
    largest = {}
    for impl in ("blocked", "dense"):
        for seq in (512, 1024, 2048):
            shapes = attention_intermediate_shapes(seq, window, n_global=2, implementation=impl)
            largest[impl, seq] = max(torch.Size(s).numel() for s in shapes)
    for seq in (512, 1024):
        assert largest["blocked", 2 * seq] == 2 * largest["blocked", seq]  # linear
        assert largest["dense", 2 * seq] == 4 * largest["dense", seq]  # quadratic
    # dense holds the (seq, seq) scores; blocked never anything near that
    assert largest["dense", 2048] == 2048 * 2048
    shapes = attention_intermediate_shapes(2048, window, n_global=2)
    assert (1, 1, 2048 // window, window, 2 + 2 * window) in shapes  # the scores, as documented
    assert largest["blocked", 2048] < 2048 * 2048 / 8
    # bidirectional: three key blocks per query block instead of two
    shapes = attention_intermediate_shapes(1000, 100, causal=False)
    assert (1, 1, 10, 100, 300) in shapes


@pytest.mark.parametrize("causal", [True, False])
def test_attention_cost_counts_what_the_code_computes(causal):
    from torch.utils.flop_counter import FlopCounterMode

    seq, head_dim, window, n_global = 300, 16, 32, 3
    q, k, v = (torch.empty(1, 1, seq, head_dim, device="meta") for _ in "qkv")
    for fn, cost in (
        (blocked_sliding_window_attention, attention_cost(seq, head_dim, window, n_global, causal)),
        (dense_sparse_attention, attention_cost(seq, head_dim)),
    ):
        with FlopCounterMode(display=False) as counter:
            fn(q, k, v, window, n_global, causal)
        assert counter.get_total_flops() == cost["flops"]
        assert cost["flops"] == 4 * head_dim * cost["score_entries"]
    # the slopes: doubling seq doubles the sparse cost and quadruples the full one
    full = [attention_cost(s, 64)["score_entries"] for s in (1024, 2048)]
    sparse = [attention_cost(s, 64, 128, 2, causal)["score_entries"] for s in (1024, 2048)]
    assert full[1] == 4 * full[0] and sparse[1] == 2 * sparse[0]


def test_inputs_are_validated():
    x = torch.randn(1, 2, 8, 4)
    with pytest.raises(ValueError, match="window: expected a positive int, got 0"):
        sliding_window_mask(8, 0)
    with pytest.raises(TypeError, match="window: expected an int, got float 2.5"):
        blocked_sliding_window_attention(x, x, x, 2.5)
    with pytest.raises(ValueError, match="n_global: expected an int >= 0, got -1"):
        dense_sparse_attention(x, x, x, 4, n_global=-1)
    with pytest.raises(ValueError, match=r"n_global: expected <= seq=8 .*got 9"):
        blocked_sliding_window_attention(x, x, x, 4, n_global=9)
    with pytest.raises(TypeError, match="causal: expected a bool, got str 'yes'"):
        sliding_window_mask(8, 2, causal="yes")
    with pytest.raises(ValueError, match=r"q: expected 4 dims \(batch, heads, seq, head_dim\)"):
        blocked_sliding_window_attention(x[0], x, x, 4)
    with pytest.raises(
        ValueError, match=r"k: expected the shape of q \(1, 2, 8, 4\) .*\(1, 2, 6, 4\)"
    ):
        blocked_sliding_window_attention(x, x[:, :, :6], x, 4)
    with pytest.raises(TypeError, match="v: expected dtype torch.float32"):
        dense_sparse_attention(x, x, x.double(), 4)
    with pytest.raises(TypeError, match="q: expected a floating-point tensor"):
        blocked_sliding_window_attention(x.long(), x.long(), x.long(), 4)
    with pytest.raises(ValueError, match="implementation: expected 'blocked' or 'dense'"):
        attention_intermediate_shapes(8, 2, implementation="sparse")
    with pytest.raises(ValueError, match="head_dim: expected a positive int"):
        attention_cost(8, 0)
    # numpy integers are integers
    np = pytest.importorskip("numpy")
    assert sliding_window_mask(np.int64(4), np.int64(2)).shape == (4, 4)
