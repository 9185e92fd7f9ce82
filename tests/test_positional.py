"""llmlab.nn.positional: sinusoidal, learned, RoPE (== transformers' LLaMA) and ALiBi (== the paper)."""

from __future__ import annotations

import math

import pytest
import torch

from llmlab.nn.positional import (
    LearnedPositionalEmbedding,
    RotaryEmbedding,
    SinusoidalPositionalEmbedding,
    alibi_bias,
    alibi_slopes,
    apply_rotary,
    half_to_interleaved,
    interleaved_to_half,
    rope_frequencies,
    rope_permutation,
    rotate_half,
    rotate_interleaved,
    sinusoidal_encoding,
)

# --------------------------------------------------------------------------------------------
# Sinusoidal and learned
# --------------------------------------------------------------------------------------------


def test_sinusoidal_matches_the_paper_formula():
    pe = sinusoidal_encoding(50, 16)
    assert pe.shape == (50, 16) and pe.dtype == torch.float32
    for pos in (0, 1, 7, 49):
        for i in range(8):
            angle = pos / 10000 ** (2 * i / 16)
            assert pe[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-5)
            assert pe[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-5)


def test_sinusoidal_offset_is_a_fixed_rotation():
    # PE[pos + k] = R_k PE[pos] for each (sin, cos) pair, whatever pos
    pe = sinusoidal_encoding(40, 8).view(40, 4, 2)
    k = 5
    theta = k / 10000 ** (torch.arange(0, 8, 2) / 8)
    sin_k, cos_k = torch.sin(theta), torch.cos(theta)
    s, c = pe[:-k, :, 0], pe[:-k, :, 1]
    torch.testing.assert_close(pe[k:, :, 0], s * cos_k + c * sin_k, atol=1e-5, rtol=0)
    torch.testing.assert_close(pe[k:, :, 1], c * cos_k - s * sin_k, atol=1e-5, rtol=0)


def test_positional_embedding_modules():
    sin = SinusoidalPositionalEmbedding(32, 16)
    assert len(list(sin.parameters())) == 0 and "table" not in sin.state_dict()
    torch.testing.assert_close(sin(torch.arange(10)), sinusoidal_encoding(10, 16))
    learned = LearnedPositionalEmbedding(32, 16)
    assert learned(torch.arange(6)[None].expand(3, 6)).shape == (3, 6, 16)
    assert learned.weight.shape == (32, 16)
    # no up-front range check (it would wait for a GPU); past the table on the CPU it says so
    with pytest.raises(ValueError, match=r"positions: expected values in \[0, 32\) .*max 39"):
        learned(torch.arange(40))
    with pytest.raises(ValueError, match=r"positions: expected values in \[0, 32\) .*min -1"):
        sin(torch.tensor([-1, 3]))
    with pytest.raises(ValueError, match="d_model: expected an even number"):
        sinusoidal_encoding(4, 7)


# --------------------------------------------------------------------------------------------
# RoPE
# --------------------------------------------------------------------------------------------


def test_rope_score_depends_only_on_offset():
    torch.manual_seed(0)
    head_dim = 32
    q, k = torch.randn(head_dim), torch.randn(head_dim)
    cos, sin = rope_frequencies(head_dim, 512)

    def rotated(x, pos):
        return apply_rotary(x.view(1, 1, 1, -1), cos, sin, positions=torch.tensor([pos]))[0, 0, 0]

    def score(m, n):
        return rotated(q, m) @ rotated(k, n)

    for offset in (0, 3, 17):
        scores = torch.stack([score(m, m + offset) for m in (0, 5, 100, 400)])
        assert (scores - scores[0]).abs().max() < 1e-4, (offset, scores)
    assert abs(score(0, 3) - score(0, 17)) > 1e-2  # different offsets do differ
    # rotations keep lengths
    torch.testing.assert_close(rotated(q, 123).norm(), q.norm())


def test_rope_equals_transformers_llama():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import (
        LlamaRotaryEmbedding,
        apply_rotary_pos_emb,
    )
    from transformers.models.llama.modeling_llama import rotate_half as hf_rotate_half

    config = LlamaConfig(hidden_size=128, num_attention_heads=4, max_position_embeddings=256)
    head_dim = 32
    torch.manual_seed(0)
    q, k = torch.randn(2, 4, 10, head_dim), torch.randn(2, 2, 10, head_dim)
    position_ids = torch.tensor([list(range(10)), list(range(5, 15))])
    hf_cos, hf_sin = LlamaRotaryEmbedding(config)(q, position_ids)
    cos, sin = RotaryEmbedding(head_dim)(position_ids)
    assert torch.equal(cos, hf_cos) and torch.equal(sin, hf_sin)
    hf_q, hf_k = apply_rotary_pos_emb(q, k, hf_cos, hf_sin)
    assert torch.equal(apply_rotary(q, cos, sin), hf_q)
    assert torch.equal(apply_rotary(k, cos, sin), hf_k)
    # the table + positions path gives the same values
    table_cos, table_sin = rope_frequencies(head_dim, 64)
    assert (apply_rotary(q, table_cos, table_sin, positions=position_ids) - hf_q).abs().max() < 1e-6
    assert torch.equal(rotate_half(q), hf_rotate_half(q))


def test_rope_in_bfloat16_matches_transformers_convention():
    rope = RotaryEmbedding(16, base=500000.0)
    cos, sin = rope(torch.arange(8), dtype=torch.bfloat16)
    assert cos.dtype == torch.bfloat16
    x = torch.randn(1, 2, 8, 16, dtype=torch.bfloat16)
    out = apply_rotary(x, cos, sin)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, x * cos + rotate_half(x) * sin)


def test_rope_table_and_inputs():
    cos, sin = rope_frequencies(8, 16)
    assert cos.shape == sin.shape == (16, 8)
    assert torch.equal(cos[:, :4], cos[:, 4:])  # rotate-half layout: angle i at dims i and i + 4
    assert torch.equal(cos[0], torch.ones(8)) and torch.equal(sin[0], torch.zeros(8))
    theta = 10000 ** (-torch.arange(0, 8, 2) / 8)
    torch.testing.assert_close(sin[3, :4], torch.sin(3 * theta))
    x = torch.randn(2, 3, 5, 8)
    torch.testing.assert_close(
        apply_rotary(x, cos, sin), apply_rotary(x, cos, sin, positions=torch.arange(5))
    )
    with pytest.raises(ValueError, match=r"x: expected 4 dims \(batch, heads, seq, head_dim\)"):
        apply_rotary(x[0], cos, sin)
    with pytest.raises(ValueError, match=r"cos: expected \(max_seq >= 20, 8\) .*got \(16, 8\)"):
        apply_rotary(torch.randn(1, 1, 20, 8), cos, sin)
    with pytest.raises(ValueError, match=r"cos: expected \(max_seq >= 4, 8\) or \(1, 4, 8\)"):
        apply_rotary(torch.randn(1, 1, 4, 8), cos[:, :6], sin[:, :6])
    with pytest.raises(ValueError, match=r"sin: expected the shape of cos \(16, 8\)"):
        apply_rotary(x, cos, sin[:8])
    with pytest.raises(ValueError, match=r"positions: expected \(5,\) or \(batch, 5\)"):
        apply_rotary(x, cos, sin, positions=torch.arange(4))
    with pytest.raises(ValueError, match=r"positions: expected values in \[0, 16\)"):
        apply_rotary(x, cos, sin, positions=torch.arange(14, 19))
    with pytest.raises(TypeError, match="x: expected a floating-point tensor"):
        apply_rotary(x.long(), cos, sin)
    with pytest.raises(ValueError, match="head_dim: expected an even number"):
        rope_frequencies(7, 16)


# --------------------------------------------------------------------------------------------
# RoPE, interleaved layout (RoFormer, Meta's LLaMA, GPT-J) and the permutation to rotate-half
# --------------------------------------------------------------------------------------------


def _complex_rope(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0):
    """Meta's LLaMA: adjacent pairs as complex numbers, times e^(i * position * theta)."""
    head_dim = x.shape[-1]
    theta = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = positions.double()[:, None] * theta  # (seq, head_dim / 2)
    freqs_cis = torch.polar(torch.ones_like(angles), angles)
    pairs = torch.view_as_complex(x.reshape(*x.shape[:-1], head_dim // 2, 2).contiguous())
    return torch.view_as_real(pairs * freqs_cis).flatten(-2)


def test_interleaved_rope_equals_complex_multiplication():
    close = {"atol": 1e-6, "rtol": 1e-5}  # the tables hold float32 angles, the reference float64
    torch.manual_seed(0)
    x = torch.randn(2, 3, 11, 16, dtype=torch.float64)
    cos, sin = rope_frequencies(16, 64, layout="interleaved")
    assert torch.equal(cos[:, 0::2], cos[:, 1::2])  # angle i at dims 2i and 2i + 1
    expected = _complex_rope(x, torch.arange(11))
    torch.testing.assert_close(apply_rotary(x, cos, sin, layout="interleaved"), expected, **close)
    # at other positions (a KV cache's offset), and from the module
    positions = torch.arange(20, 31)
    torch.testing.assert_close(
        apply_rotary(x, cos, sin, positions=positions, layout="interleaved"),
        _complex_rope(x, positions),
        **close,
    )
    m_cos, m_sin = RotaryEmbedding(16, layout="interleaved")(positions[None])
    torch.testing.assert_close(
        apply_rotary(x, m_cos, m_sin, layout="interleaved"), _complex_rope(x, positions), **close
    )
    # rotate_interleaved is multiplication by i on each pair
    i_times = torch.view_as_real(1j * torch.view_as_complex(x.reshape(2, 3, 11, 8, 2))).flatten(-2)
    assert torch.equal(rotate_interleaved(x), i_times)


def test_interleaved_rope_equals_transformers_gptj():
    from transformers.models.gptj.modeling_gptj import (
        apply_rotary_pos_emb,
        create_sinusoidal_positions,
        rotate_every_two,
    )

    torch.manual_seed(0)
    head_dim = 32
    x = torch.randn(2, 4, 10, head_dim)  # ours: (batch, heads, seq, head_dim)
    position_ids = torch.tensor([list(range(10)), list(range(7, 17))])
    # GPT-J: a (max_pos, head_dim) table of [sin | cos], gathered per position, heads on dim 2
    sincos = create_sinusoidal_positions(64, head_dim)[position_ids]
    gj_sin, gj_cos = sincos.chunk(2, dim=-1)
    expected = apply_rotary_pos_emb(x.transpose(1, 2), gj_sin, gj_cos).transpose(1, 2)
    cos, sin = RotaryEmbedding(head_dim, layout="interleaved")(position_ids)
    torch.testing.assert_close(apply_rotary(x, cos, sin, layout="interleaved"), expected)
    # from GPT-J's own angles, bitwise the same
    rep_cos, rep_sin = gj_cos.repeat_interleave(2, -1), gj_sin.repeat_interleave(2, -1)
    assert torch.equal(apply_rotary(x, rep_cos, rep_sin, layout="interleaved"), expected)
    assert torch.equal(rotate_interleaved(x), rotate_every_two(x))


def test_interleaved_rope_score_depends_only_on_offset():
    torch.manual_seed(0)
    head_dim = 32
    q, k = torch.randn(head_dim, dtype=torch.float64), torch.randn(head_dim, dtype=torch.float64)
    cos, sin = rope_frequencies(head_dim, 512, layout="interleaved")

    def rotated(x, pos):
        x = x.view(1, 1, 1, -1)
        return apply_rotary(x, cos, sin, torch.tensor([pos]), layout="interleaved")[0, 0, 0]

    def score(m, n):
        return rotated(q, m) @ rotated(k, n)

    for offset in (0, 3, 17, -9):
        scores = torch.stack([score(m, m + offset) for m in (20, 25, 100, 400)])
        assert (scores - scores[0]).abs().max() < 1e-4, (offset, scores)  # float32 angles
    assert abs(score(0, 3) - score(0, 17)) > 1e-2  # different offsets do differ
    torch.testing.assert_close(rotated(q, 123).norm(), q.norm())


def test_rope_permutation_maps_interleaved_to_half():
    perm = rope_permutation(8)
    assert perm.tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 8)
    cos_h, sin_h = rope_frequencies(8, 16)
    cos_i, sin_i = rope_frequencies(8, 16, layout="interleaved")
    assert torch.equal(cos_i[:, perm], cos_h) and torch.equal(sin_i[:, perm], sin_h)
    # the same element-wise operations on permuted dims: bitwise equal
    half = apply_rotary(x[..., perm], cos_h, sin_h, layout="half")
    assert torch.equal(half, apply_rotary(x, cos_i, sin_i, layout="interleaved")[..., perm])
    assert torch.equal(rotate_half(x[..., perm]), rotate_interleaved(x)[..., perm])


def _hf_permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """transformers' convert_llama_weights_to_hf.py, ``permute`` (Meta's wq/wk -> q_proj/k_proj)."""
    dim1, dim2 = w.shape
    return w.view(n_heads, dim1 // n_heads // 2, 2, dim2).transpose(1, 2).reshape(dim1, dim2)


def test_permuted_weights_with_half_rope_equal_interleaved_rope():
    from llmlab.nn.attention import MultiHeadAttention, causal_mask, repeat_kv
    from llmlab.nn.attention import scaled_dot_product_attention as sdpa

    torch.manual_seed(0)
    d_model, n_heads, n_kv_heads, head_dim, seq = 64, 4, 2, 16, 12
    x = torch.randn(2, seq, d_model, dtype=torch.float64)
    # an "interleaved" checkpoint (Meta's LLaMA layout), with q/k biases to permute too (Qwen)
    attn = MultiHeadAttention(d_model, n_heads, n_kv_heads, is_causal=True).double()
    wq, bq = attn.q_proj.weight.detach().clone(), attn.q_proj.bias.detach().clone()
    wk, bk = attn.k_proj.weight.detach().clone(), attn.k_proj.bias.detach().clone()

    def heads(t, n):
        return t.view(2, seq, n, head_dim).transpose(1, 2)

    cos_i, sin_i = rope_frequencies(head_dim, seq, layout="interleaved")
    q = apply_rotary(heads(x @ wq.T + bq, n_heads), cos_i, sin_i, layout="interleaved")
    k = apply_rotary(heads(x @ wk.T + bk, n_kv_heads), cos_i, sin_i, layout="interleaved")
    v = heads(attn.v_proj(x), n_kv_heads)
    scores = q @ repeat_kv(k, n_heads // n_kv_heads).transpose(-1, -2)
    out, weights = sdpa(
        q, repeat_kv(k, 2), repeat_kv(v, 2), mask=causal_mask(seq), return_weights=True
    )
    expected = attn.o_proj(out.transpose(1, 2).reshape(2, seq, d_model))

    # the same weights, converted: the rows of q_proj and k_proj permuted within each head
    assert torch.equal(interleaved_to_half(wq, n_heads), _hf_permute(wq, n_heads))
    with torch.no_grad():
        attn.q_proj.weight.copy_(interleaved_to_half(wq, n_heads))
        attn.q_proj.bias.copy_(interleaved_to_half(bq, n_heads))
        attn.k_proj.weight.copy_(interleaved_to_half(wk, n_kv_heads))
        attn.k_proj.bias.copy_(interleaved_to_half(bk, n_kv_heads))
    q_h = apply_rotary(heads(attn.q_proj(x), n_heads), *rope_frequencies(head_dim, seq))
    k_h = apply_rotary(heads(attn.k_proj(x), n_kv_heads), *rope_frequencies(head_dim, seq))
    torch.testing.assert_close(q_h @ repeat_kv(k_h, 2).transpose(-1, -2), scores)
    # the whole rotate-half layer (MultiHeadAttention) gives the interleaved model's output
    rope = RotaryEmbedding(head_dim)(torch.arange(seq))
    got, got_weights = attn(x, rope=rope, return_weights=True)
    torch.testing.assert_close(got_weights, weights)
    torch.testing.assert_close(got, expected)
    # and back
    assert torch.equal(half_to_interleaved(attn.q_proj.weight.detach(), n_heads), wq)
    assert torch.equal(half_to_interleaved(attn.k_proj.bias.detach(), n_kv_heads), bk)


def test_rope_layout_is_validated():
    x = torch.randn(1, 2, 4, 8)
    cos, sin = rope_frequencies(8, 4)
    message = r"layout: expected 'half' \(pairs \(i, i \+ head_dim/2\).*'interleaved'.*got 'pairs'"
    with pytest.raises(ValueError, match=message):
        apply_rotary(x, cos, sin, layout="pairs")
    with pytest.raises(ValueError, match="layout: expected 'half'.*got None"):
        RotaryEmbedding(8, layout=None)
    with pytest.raises(ValueError, match="layout: expected 'half'.*got 'Half'"):
        rope_frequencies(8, 4, layout="Half")
    assert "layout='interleaved'" in repr(RotaryEmbedding(8, layout="interleaved"))
    with pytest.raises(ValueError, match="head_dim: expected an even number"):
        rope_permutation(7)
    with pytest.raises(ValueError, match=r"weight: expected n_heads=3 heads .*got 16 rows"):
        interleaved_to_half(torch.randn(16, 8), 3)
    with pytest.raises(ValueError, match=r"weight: expected n_heads=4 heads .*even head_dim"):
        interleaved_to_half(torch.randn(12, 8), 4)
    with pytest.raises(ValueError, match=r"weight: expected a projection weight .*got shape"):
        half_to_interleaved(torch.randn(2, 8, 8), 2)
    with pytest.raises(TypeError, match="weight: expected a torch.Tensor, got list"):
        interleaved_to_half([[1.0, 2.0]], 1)


# --------------------------------------------------------------------------------------------
# ALiBi
# --------------------------------------------------------------------------------------------


def test_alibi_slopes_match_the_paper():
    assert alibi_slopes(8).tolist() == [1 / 2**i for i in range(1, 9)]
    assert alibi_slopes(16).tolist() == pytest.approx([1 / 2 ** (i / 2) for i in range(1, 17)])
    # non-power of 2: the 8 slopes of 8 heads, then every other slope of 16 heads
    s12 = alibi_slopes(12).tolist()
    assert s12[:8] == alibi_slopes(8).tolist()
    assert s12[8:] == pytest.approx(alibi_slopes(16).tolist()[0::2][:4])
    assert alibi_slopes(1).tolist() == [2**-8]


def test_alibi_bias():
    bias = alibi_bias(8, 4)
    assert bias.shape == (1, 8, 4, 4)
    # head 0, slope 1/2: row i is -1/2 * [i, i-1, ..., 0, ...]
    assert bias[0, 0, 3].tolist() == [-1.5, -1.0, -0.5, 0.0]
    assert bias[0, 7, 2, 0].item() == pytest.approx(-2 / 256)
    assert torch.equal(bias[0, :, 1, 1], torch.zeros(8))
    # decoding with a cache: the single query is the last position
    assert torch.equal(alibi_bias(8, 1, 4)[0, :, 0], bias[0, :, 3])
    with pytest.raises(ValueError, match="n_heads: expected a positive int"):
        alibi_slopes(0)
