"""llmlab.nn.attention: our attention equals torch's (SDPA and nn.MultiheadAttention)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llmlab.models.counting import naive_attention_memory
from llmlab.nn.attention import (
    MultiHeadAttention,
    causal_mask,
    combine_masks,
    padding_mask,
    repeat_kv,
    scaled_dot_product_attention,
    to_additive_mask,
)

ATOL = 1e-5


def qkv(batch=2, heads=3, seq_q=5, seq_k=5, head_dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, seq_q, head_dim, generator=g)
    k = torch.randn(batch, heads, seq_k, head_dim, generator=g)
    v = torch.randn(batch, heads, seq_k, head_dim, generator=g)
    return q, k, v


# --------------------------------------------------------------------------------------------
# scaled_dot_product_attention
# --------------------------------------------------------------------------------------------


def test_sdpa_equals_torch_without_mask():
    q, k, v = qkv(seq_q=4, seq_k=7)
    ours = scaled_dot_product_attention(q, k, v)
    assert (ours - F.scaled_dot_product_attention(q, k, v)).abs().max() < ATOL


def test_sdpa_equals_torch_causal():
    q, k, v = qkv(seq_q=6, seq_k=6)
    ours = scaled_dot_product_attention(q, k, v, mask=causal_mask(6, 6))
    theirs = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert (ours - theirs).abs().max() < ATOL


def test_sdpa_equals_torch_with_bool_and_float_masks():
    q, k, v = qkv(seq_q=5, seq_k=5)
    mask = combine_masks(causal_mask(5, 5), padding_mask(torch.tensor([5, 3])))
    theirs = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert (scaled_dot_product_attention(q, k, v, mask=mask) - theirs).abs().max() < ATOL
    bias = torch.randn(1, 3, 5, 5)
    theirs = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    assert (scaled_dot_product_attention(q, k, v, mask=bias) - theirs).abs().max() < ATOL


def test_sdpa_scale_and_weights():
    q, k, v = qkv()
    out, w = scaled_dot_product_attention(q, k, v, scale=0.3, return_weights=True)
    theirs = F.scaled_dot_product_attention(q, k, v, scale=0.3)
    assert (out - theirs).abs().max() < ATOL
    assert w.shape == (2, 3, 5, 5)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3, 5))
    torch.testing.assert_close(w @ v, out)


def test_sdpa_matches_the_formula():
    q, k, v = qkv()
    expected = torch.softmax(q @ k.transpose(-2, -1) / 8**0.5, dim=-1) @ v
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v), expected)


def test_fully_masked_rows_give_zeros_and_no_nan():
    q, k, v = qkv(batch=1, heads=1, seq_q=3, seq_k=4)
    q.requires_grad_(True)
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[1] = False  # query 1 may attend to nothing
    out, w = scaled_dot_product_attention(q, k, v, mask=mask, return_weights=True)
    assert torch.isfinite(out).all()
    assert (out[0, 0, 1] == 0).all() and (w[0, 0, 1] == 0).all()
    out.sum().backward()
    assert torch.isfinite(q.grad).all()
    # torch's SDPA makes the same choice
    assert (out - F.scaled_dot_product_attention(q, k, v, attn_mask=mask)).abs().max() < ATOL
    # an additive mask of -inf behaves the same
    out_float = scaled_dot_product_attention(q, k, v, mask=to_additive_mask(mask))
    torch.testing.assert_close(out_float, out)


def test_sdpa_dropout_only_when_asked():
    q, k, v = qkv()
    torch.manual_seed(0)
    a = scaled_dot_product_attention(q, k, v, dropout_p=0.5)
    b = scaled_dot_product_attention(q, k, v)
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sdpa_low_precision(dtype):
    q, k, v = (t.to(dtype) for t in qkv())
    ours = scaled_dot_product_attention(q, k, v, mask=causal_mask(5, 5))
    assert ours.dtype == dtype
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
    assert (ours.float() - ref).abs().max() < 3e-2


def test_sdpa_input_errors():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"q: expected 4 dims .*got shape \(3, 5, 8\)"):
        scaled_dot_product_attention(q[0], k, v)
    with pytest.raises(ValueError, match="k: expected shape"):
        scaled_dot_product_attention(q, k[..., :4], v)
    with pytest.raises(ValueError, match="v: expected shape"):
        scaled_dot_product_attention(q, k, v[:, :, :3])
    with pytest.raises(TypeError, match="k: expected dtype torch.float32"):
        scaled_dot_product_attention(q, k.double(), v)
    with pytest.raises(TypeError, match="q: expected a floating-point"):
        scaled_dot_product_attention(q.long(), k.long(), v.long())
    with pytest.raises(
        ValueError, match=r"mask: expected a shape broadcastable to .*\(2, 3, 5, 5\), got \(4, 4\)"
    ):
        scaled_dot_product_attention(q, k, v, mask=causal_mask(4, 4))
    with pytest.raises(TypeError, match="mask: expected a bool"):
        scaled_dot_product_attention(q, k, v, mask=torch.ones(5, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="dropout_p"):
        scaled_dot_product_attention(q, k, v, dropout_p=1.5)
    with pytest.raises(TypeError, match="dropout_p: expected a number, got str"):
        scaled_dot_product_attention(q, k, v, dropout_p="0.1")
    torch.testing.assert_close(
        scaled_dot_product_attention(q, k, v, dropout_p=np.float32(0.0)),
        scaled_dot_product_attention(q, k, v),
    )


# --------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------


def test_causal_mask_square_and_kv_cache_alignment():
    assert torch.equal(causal_mask(3), torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]]).bool())
    # 2 new queries after 3 cached keys: the last query sees every key
    expected = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]).bool()
    assert torch.equal(causal_mask(2, 5), expected)
    assert torch.equal(causal_mask(1, 4), torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="seq_k: expected >= seq_q"):
        causal_mask(5, 3)
    with pytest.raises(TypeError, match="seq_q: expected an int"):
        causal_mask(2.0, 3)


def test_causal_mask_with_cache_equals_full_attention_rows():
    q, k, v = qkv(seq_q=6, seq_k=6)
    full = scaled_dot_product_attention(q, k, v, mask=causal_mask(6, 6))
    last_two = scaled_dot_product_attention(q[:, :, 4:], k, v, mask=causal_mask(2, 6))
    torch.testing.assert_close(last_two, full[:, :, 4:])


def test_padding_mask_from_lengths_and_attention_mask():
    m = padding_mask(torch.tensor([3, 1]))
    assert m.shape == (2, 1, 1, 3) and m.dtype == torch.bool
    assert m[:, 0, 0].tolist() == [[True, True, True], [True, False, False]]
    assert padding_mask(torch.tensor([2, 1]), seq=4)[1, 0, 0].tolist() == [
        True,
        False,
        False,
        False,
    ]
    left_padded = torch.tensor([[0, 1, 1], [1, 1, 1]])
    assert padding_mask(left_padded)[:, 0, 0].tolist() == [[False, True, True], [True, True, True]]
    with pytest.raises(ValueError, match=r"lengths_or_mask: expected integer lengths \(batch,\)"):
        padding_mask(torch.ones(2, 1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"lengths_or_mask: .*got torch.bool of shape \(2,\)"):
        padding_mask(torch.tensor([True, False]))
    with pytest.raises(TypeError, match="lengths_or_mask: expected an integer or bool"):
        padding_mask(torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"lengths_or_mask: expected lengths >= 0 and <= seq=2"):
        padding_mask(torch.tensor([3, 1]), seq=2)
    with pytest.raises(ValueError, match=r"lengths_or_mask: expected lengths >= 0, got \[2, -1\]"):
        padding_mask(torch.tensor([2, -1]))
    with pytest.raises(ValueError, match="seq: expected 3 .the mask's width."):
        padding_mask(left_padded, seq=4)


def test_combine_masks():
    c, p = causal_mask(3), padding_mask(torch.tensor([2]), seq=3)
    both = combine_masks(c, None, p)
    assert both.shape == (1, 1, 3, 3) and both.dtype == torch.bool
    assert both[0, 0].tolist() == [[True, False, False], [True, True, False], [True, True, False]]
    bias = torch.full((1, 2, 3, 3), 0.5)
    mixed = combine_masks(c, bias)
    assert mixed.dtype == torch.float32 and mixed.shape == (1, 2, 3, 3)
    assert mixed[0, 0, 0, 1] == float("-inf") and mixed[0, 1, 1, 0] == 0.5
    assert combine_masks(None, None) is None
    with pytest.raises(ValueError, match="masks: expected shapes that broadcast together"):
        combine_masks(causal_mask(3), causal_mask(4))
    with pytest.raises(TypeError, match="masks.1.: expected a bool .True = attend. or float"):
        combine_masks(c, torch.ones(3, 3, dtype=torch.long))


# --------------------------------------------------------------------------------------------
# MultiHeadAttention
# --------------------------------------------------------------------------------------------


def copy_from_torch(ours: MultiHeadAttention, theirs: torch.nn.MultiheadAttention) -> None:
    d = ours.d_model
    with torch.no_grad():
        for i, proj in enumerate((ours.q_proj, ours.k_proj, ours.v_proj)):
            proj.weight.copy_(theirs.in_proj_weight[i * d : (i + 1) * d])
            proj.bias.copy_(theirs.in_proj_bias[i * d : (i + 1) * d])
        ours.o_proj.weight.copy_(theirs.out_proj.weight)
        ours.o_proj.bias.copy_(theirs.out_proj.bias)


@pytest.fixture
def pair():
    torch.manual_seed(0)
    theirs = torch.nn.MultiheadAttention(32, 4, batch_first=True).eval()
    ours = MultiHeadAttention(32, 4).eval()
    copy_from_torch(ours, theirs)
    return ours, theirs


def test_mha_equals_torch_causal(pair):
    ours, theirs = pair
    x = torch.randn(2, 6, 32)
    # torch's attn_mask: True = blocked, the opposite of ours
    expected, expected_w = theirs(x, x, x, attn_mask=~causal_mask(6), average_attn_weights=False)
    out, w = ours(x, mask=causal_mask(6), return_weights=True)
    assert (out - expected).abs().max() < ATOL
    assert (w - expected_w).abs().max() < ATOL
    ours.is_causal = True
    assert (ours(x) - expected).abs().max() < ATOL


def test_mha_equals_torch_key_padding(pair):
    ours, theirs = pair
    x = torch.randn(2, 5, 32)
    lengths = torch.tensor([5, 2])
    key_padding = ~padding_mask(lengths)[:, 0, 0]  # torch: True = padding
    expected, _ = theirs(x, x, x, key_padding_mask=key_padding)
    assert (ours(x, mask=padding_mask(lengths)) - expected).abs().max() < ATOL


def test_mha_cross_attention_equals_torch(pair):
    ours, theirs = pair
    x, memory = torch.randn(2, 3, 32), torch.randn(2, 7, 32)
    expected, _ = theirs(x, memory, memory)
    out = ours(x, context=memory)
    assert out.shape == (2, 3, 32)
    assert (out - expected).abs().max() < ATOL


def test_gqa_equals_mha_with_repeated_kv_weights():
    torch.manual_seed(0)
    gqa = MultiHeadAttention(32, 8, n_kv_heads=2, is_causal=True).eval()
    mha = MultiHeadAttention(32, 8, is_causal=True).eval()
    hd = gqa.head_dim
    with torch.no_grad():
        mha.q_proj.load_state_dict(gqa.q_proj.state_dict())
        mha.o_proj.load_state_dict(gqa.o_proj.state_dict())
        for ours, full in ((gqa.k_proj, mha.k_proj), (gqa.v_proj, mha.v_proj)):
            # kv head j serves query heads 4j .. 4j+3
            full.weight.copy_(ours.weight.view(2, 1, hd, 32).expand(2, 4, hd, 32).reshape(32, 32))
            full.bias.copy_(ours.bias.view(2, 1, hd).expand(2, 4, hd).reshape(32))
    assert gqa.k_proj.weight.shape == (2 * hd, 32)
    x = torch.randn(2, 5, 32)
    torch.testing.assert_close(gqa(x), mha(x))
    mqa = MultiHeadAttention(32, 8, n_kv_heads=1, bias=False)
    assert mqa.k_proj.weight.shape == (hd, 32) and mqa.k_proj.bias is None
    assert mqa(x).shape == (2, 5, 32)


def test_repeat_kv():
    x = torch.arange(2 * 2 * 3 * 4.0).view(2, 2, 3, 4)
    r = repeat_kv(x, 3)
    assert r.shape == (2, 6, 3, 4)
    assert (
        torch.equal(r[:, 0], x[:, 0])
        and torch.equal(r[:, 2], x[:, 0])
        and torch.equal(r[:, 3], x[:, 1])
    )
    assert repeat_kv(x, 1) is x


def test_mha_rope_hook_rotates_q_and_k():
    from llmlab.nn.positional import RotaryEmbedding, apply_rotary

    torch.manual_seed(0)
    attn = MultiHeadAttention(32, 4, n_kv_heads=2, is_causal=True).eval()
    x = torch.randn(2, 5, 32)
    cos, sin = RotaryEmbedding(attn.head_dim)(torch.arange(5))
    out = attn(x, rope=(cos, sin))
    # the same computation spelled out
    q = attn.q_proj(x).view(2, 5, 4, 8).transpose(1, 2)
    k = attn.k_proj(x).view(2, 5, 2, 8).transpose(1, 2)
    v = attn.v_proj(x).view(2, 5, 2, 8).transpose(1, 2)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    o = F.scaled_dot_product_attention(q, repeat_kv(k, 2), repeat_kv(v, 2), is_causal=True)
    expected = attn.o_proj(o.transpose(1, 2).reshape(2, 5, 32))
    assert (out - expected).abs().max() < ATOL
    assert (out - attn(x)).abs().max() > 1e-3


def test_mha_scale_option():
    torch.manual_seed(0)
    attn = MultiHeadAttention(16, 2, scale=1.0).eval()  # T5 does not divide by sqrt(head_dim)
    x = torch.randn(1, 4, 16)
    q, k, v = (
        p(x).view(1, 4, 2, 8).transpose(1, 2) for p in (attn.q_proj, attn.k_proj, attn.v_proj)
    )
    o = torch.softmax(q @ k.transpose(-2, -1), dim=-1) @ v
    expected = attn.o_proj(o.transpose(1, 2).reshape(1, 4, 16))
    assert (attn(x) - expected).abs().max() < ATOL


def test_mha_dropout_in_training_only():
    attn = MultiHeadAttention(16, 2, dropout=0.5)
    x = torch.randn(1, 4, 16)
    attn.eval()
    torch.testing.assert_close(attn(x), attn(x))
    attn.train()
    torch.manual_seed(0)
    assert not torch.allclose(attn(x), attn.eval()(x))


def test_mha_argument_errors():
    with pytest.raises(ValueError, match="n_kv_heads: expected a divisor of n_heads=8, got 3"):
        MultiHeadAttention(32, 8, n_kv_heads=3)
    with pytest.raises(ValueError, match="n_heads: expected a divisor of d_model=30"):
        MultiHeadAttention(30, 4)
    assert MultiHeadAttention(30, 4, head_dim=8)(torch.randn(1, 2, 30)).shape == (1, 2, 30)
    with pytest.raises(ValueError, match="n_kv_heads: expected a positive int, got 0"):
        MultiHeadAttention(32, 4, n_kv_heads=0)
    with pytest.raises(ValueError, match=r"dropout: expected a float in \[0, 1\), got 1.0"):
        MultiHeadAttention(32, 4, dropout=1.0)
    # numpy sizes count as ints
    attn = MultiHeadAttention(np.int64(32), np.int64(4), n_kv_heads=np.int32(2))
    assert attn(torch.randn(1, 5, 32)).shape == (1, 5, 32)


def test_naive_attention_memory_grows_quadratically():
    m = naive_attention_memory(1024, heads=8, head_dim=64)
    assert m.scores == 8 * 1024 * 1024 * 4
    assert m.qkvo == 4 * 8 * 1024 * 64 * 4
    assert m.total == m.scores + m.qkvo
    assert naive_attention_memory(2048, 8, 64).scores == 4 * m.scores
    assert naive_attention_memory(1024, 8, 64, dtype=torch.bfloat16, batch=2).scores == m.scores
    with pytest.raises(ValueError, match="seq: expected a positive int"):
        naive_attention_memory(0, 8, 64)


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
@pytest.mark.parametrize("mask_kind", ["none", "padding", "additive"])
def test_fused_path_equals_the_formula(is_causal, n_kv_heads, mask_kind):
    """Without return_weights the module runs torch's SDPA: same outputs and gradients."""
    from llmlab.nn.attention import formula_attention

    torch.manual_seed(0)
    mha = MultiHeadAttention(32, 4, n_kv_heads=n_kv_heads, is_causal=is_causal)
    x = torch.randn(3, 7, 32, requires_grad=True)
    mask = {
        "none": None,
        "padding": padding_mask(torch.tensor([7, 4, 1]), 7),
        "additive": torch.randn(1, 4, 7, 7),
    }[mask_kind]
    fused = mha(x, mask=mask)
    (g_fused,) = torch.autograd.grad(fused.sum(), x)
    with formula_attention():
        formula = mha(x, mask=mask)
    (g_formula,) = torch.autograd.grad(formula.sum(), x)
    weighed, _ = mha(x, mask=mask, return_weights=True)
    torch.testing.assert_close(fused, formula, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(weighed, formula)
    torch.testing.assert_close(g_fused, g_formula, atol=1e-5, rtol=1e-5)


def test_fused_path_with_a_cache_equals_the_full_sequence():
    from llmlab.nn.cache import KVCache

    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4, n_kv_heads=2, is_causal=True).eval()
    x = torch.randn(2, 6, 16)
    full = mha(x)
    cache = KVCache(1)
    steps = [mha(x[:, :3], cache=cache, layer_idx=0)]
    steps += [mha(x[:, t : t + 1], cache=cache, layer_idx=0) for t in range(3, 6)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-6, rtol=1e-5)
