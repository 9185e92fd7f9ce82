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
    rope_frequencies,
    rotate_half,
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
