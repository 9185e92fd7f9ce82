"""llmlab.nn.norms, llmlab.nn.ffn, llmlab.nn.blocks: equal to torch's layers with the same weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llmlab.nn.attention import MultiHeadAttention, causal_mask, padding_mask
from llmlab.nn.blocks import BlockConfig, DecoderBlock, EncoderBlock
from llmlab.nn.ffn import FeedForward
from llmlab.nn.norms import LayerNorm, RMSNorm, make_norm

ATOL = 1e-5

# --------------------------------------------------------------------------------------------
# Norms
# --------------------------------------------------------------------------------------------


def test_layernorm_equals_torch():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 16) * 3 + 1
    ours, theirs = LayerNorm(16), torch.nn.LayerNorm(16)
    with torch.no_grad():
        theirs.weight.normal_()
        theirs.bias.normal_()
    ours.load_state_dict(theirs.state_dict())
    assert (ours(x) - theirs(x)).abs().max() < ATOL
    assert (ours.formula(x) - theirs(x)).abs().max() < ATOL  # the definition, op by op
    x.requires_grad_(True)
    (g_fused,) = torch.autograd.grad(ours(x).square().sum(), x)
    (g_formula,) = torch.autograd.grad(ours.formula(x).square().sum(), x)
    torch.testing.assert_close(g_fused, g_formula, atol=1e-5, rtol=1e-5)
    x = x.detach()
    no_bias = LayerNorm(16, bias=False)
    assert no_bias.bias is None
    assert (no_bias(x) - F.layer_norm(x, (16,))).abs().max() < ATOL
    xb = x.bfloat16()
    assert ours(xb).dtype == torch.bfloat16
    assert (ours(xb).float() - theirs(xb.float())).abs().max() < 5e-2


def test_rmsnorm_equals_torch_and_llama_formula():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 16) * 3
    ours = RMSNorm(16, eps=1e-6)
    with torch.no_grad():
        ours.weight.normal_()
    theirs = torch.nn.RMSNorm(16, eps=1e-6)
    theirs.load_state_dict(ours.state_dict())
    assert (ours(x) - theirs(x)).abs().max() < ATOL
    # the LLaMA formula, in bf16: statistics in fp32, cast back, then the weight
    xb, w = x.bfloat16(), ours.weight.detach().bfloat16()
    ours_b = ours.bfloat16()
    x32 = xb.float()
    expected = w * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-6)).bfloat16()
    assert torch.equal(ours_b(xb), expected)


def test_make_norm_and_errors():
    assert isinstance(make_norm("layer", 8), LayerNorm) and make_norm("layer", 8).eps == 1e-5
    assert isinstance(make_norm("rms", 8, eps=1e-5), RMSNorm)
    with pytest.raises(ValueError, match="kind: expected one of"):
        make_norm("batch", 8)
    with pytest.raises(ValueError, match="d_model: expected a positive int, got 0"):
        RMSNorm(0)
    assert LayerNorm(np.int64(8)).d_model == 8 and type(LayerNorm(np.int64(8)).d_model) is int


# --------------------------------------------------------------------------------------------
# FFN
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_tanh"])
def test_feedforward_two_layer(activation):
    torch.manual_seed(0)
    ffn = FeedForward(8, 32, activation=activation)
    x = torch.randn(3, 4, 8)
    act = {"relu": F.relu, "gelu": F.gelu, "gelu_tanh": lambda h: F.gelu(h, approximate="tanh")}
    expected = ffn.down_proj(act[activation](ffn.up_proj(x)))
    torch.testing.assert_close(ffn(x), expected)
    assert not hasattr(ffn, "gate_proj")


def test_feedforward_swiglu_has_llama_names():
    torch.manual_seed(0)
    ffn = FeedForward(8, 24, activation="swiglu", bias=False)
    assert set(ffn.state_dict()) == {"gate_proj.weight", "up_proj.weight", "down_proj.weight"}
    x = torch.randn(2, 8)
    expected = ffn.down_proj(F.silu(ffn.gate_proj(x)) * ffn.up_proj(x))
    torch.testing.assert_close(ffn(x), expected)
    with pytest.raises(ValueError, match="activation: expected one of"):
        FeedForward(8, 24, activation="tanh")
    with pytest.raises(TypeError, match="d_ff: expected an int, got float 24.0"):
        FeedForward(8, 24.0)


# --------------------------------------------------------------------------------------------
# Blocks == torch.nn.TransformerEncoderLayer / TransformerDecoderLayer
# --------------------------------------------------------------------------------------------

D, H, FF = 32, 4, 64


def copy_attention(ours: MultiHeadAttention, theirs: torch.nn.MultiheadAttention) -> None:
    with torch.no_grad():
        for i, proj in enumerate((ours.q_proj, ours.k_proj, ours.v_proj)):
            proj.weight.copy_(theirs.in_proj_weight[i * D : (i + 1) * D])
            proj.bias.copy_(theirs.in_proj_bias[i * D : (i + 1) * D])
        ours.o_proj.load_state_dict(theirs.out_proj.state_dict())


def copy_common(ours, theirs) -> None:
    copy_attention(ours.self_attn, theirs.self_attn)
    ours.self_attn_norm.load_state_dict(theirs.norm1.state_dict())
    ours.mlp.up_proj.load_state_dict(theirs.linear1.state_dict())
    ours.mlp.down_proj.load_state_dict(theirs.linear2.state_dict())


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_encoder_block_equals_torch(norm_first, activation):
    torch.manual_seed(0)
    theirs = torch.nn.TransformerEncoderLayer(
        D, H, FF, dropout=0.0, activation=activation, batch_first=True, norm_first=norm_first
    ).eval()
    ours = EncoderBlock(BlockConfig(D, H, FF, activation=activation, norm_first=norm_first)).eval()
    copy_common(ours, theirs)
    ours.mlp_norm.load_state_dict(theirs.norm2.state_dict())
    x = torch.randn(2, 6, D)
    assert (ours(x) - theirs(x)).abs().max() < ATOL
    lengths = torch.tensor([6, 3])
    expected = theirs(x, src_key_padding_mask=~padding_mask(lengths)[:, 0, 0])
    out = ours(x, mask=padding_mask(lengths))
    # torch's fast path zeroes padded positions; compare the real ones
    assert (out[0] - expected[0]).abs().max() < ATOL
    assert (out[1, :3] - expected[1, :3]).abs().max() < ATOL


@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_block_equals_torch(norm_first):
    torch.manual_seed(0)
    theirs = torch.nn.TransformerDecoderLayer(
        D, H, FF, dropout=0.0, batch_first=True, norm_first=norm_first
    ).eval()
    ours = DecoderBlock(BlockConfig(D, H, FF, norm_first=norm_first)).eval()
    copy_common(ours, theirs)
    copy_attention(ours.cross_attn, theirs.multihead_attn)
    ours.cross_attn_norm.load_state_dict(theirs.norm2.state_dict())
    ours.mlp_norm.load_state_dict(theirs.norm3.state_dict())
    x, memory = torch.randn(2, 5, D), torch.randn(2, 7, D)
    src_lengths = torch.tensor([7, 4])
    expected = theirs(
        x,
        memory,
        tgt_mask=~causal_mask(5),  # torch: True = blocked
        memory_key_padding_mask=~padding_mask(src_lengths)[:, 0, 0],
    )
    out, weights = ours(x, memory, memory_mask=padding_mask(src_lengths), return_weights=True)
    assert (out - expected).abs().max() < ATOL
    assert weights["self"].shape == (2, H, 5, 5) and weights["cross"].shape == (2, H, 5, 7)
    assert (weights["self"][..., 0, 1:] == 0).all()  # position 0 sees only itself
    assert (weights["cross"][1, ..., 4:] == 0).all()  # padded source positions get no weight


def test_decoder_block_is_causal():
    torch.manual_seed(0)
    block = DecoderBlock(BlockConfig(D, H, FF, norm="rms", norm_first=True), cross_attention=False)
    x = torch.randn(1, 6, D)
    y = x.clone()
    y[:, 4:] = torch.randn(1, 2, D)  # changing the future ...
    torch.testing.assert_close(block(x)[:, :4], block(y)[:, :4])  # ... leaves the past alone
    assert not hasattr(block, "cross_attn")


def test_llama_and_palm_style_blocks():
    torch.manual_seed(0)
    from llmlab.nn.positional import RotaryEmbedding

    llama = BlockConfig(
        64, 4, 96, n_kv_heads=2, activation="swiglu", norm="rms", norm_first=True, bias=False
    )
    block = DecoderBlock(llama, cross_attention=False)
    names = set(block.state_dict())
    assert "self_attn.q_proj.weight" in names and "mlp.gate_proj.weight" in names
    assert not any(name.endswith("bias") for name in names)
    assert block.self_attn.k_proj.weight.shape == (32, 64)
    x = torch.randn(2, 5, 64)
    rope = RotaryEmbedding(16)(torch.arange(5))
    assert block(x, rope=rope).shape == (2, 5, 64)

    palm = BlockConfig(64, 4, 128, n_kv_heads=1, norm_first=True, parallel=True, bias=False)
    block = DecoderBlock(palm, cross_attention=False).eval()
    assert not hasattr(block, "mlp_norm")
    h = block.self_attn_norm(x)
    torch.testing.assert_close(block(x), x + block.self_attn(h) + block.mlp(h))


def test_block_argument_errors():
    with pytest.raises(ValueError, match="parallel: the parallel block is pre-norm"):
        BlockConfig(parallel=True)
    with pytest.raises(ValueError, match="norm: expected one of"):
        BlockConfig(norm="batch")
    with pytest.raises(TypeError, match="config: expected a BlockConfig"):
        EncoderBlock({"d_model": 8})
    block = DecoderBlock(BlockConfig(D, H, FF))
    with pytest.raises(ValueError, match="memory: expected the encoder output, got NoneType"):
        block(torch.randn(1, 3, D))
    with pytest.raises(
        ValueError, match=r"memory: expected None \(no cross-attention\), got Tensor"
    ):
        DecoderBlock(BlockConfig(D, H, FF), cross_attention=False)(
            torch.randn(1, 3, D), torch.randn(1, 3, D)
        )
    with pytest.raises(ValueError, match="n_kv_heads: expected a positive int, got 0"):
        BlockConfig(D, H, FF, n_kv_heads=0)
    with pytest.raises(TypeError, match="dropout: expected a number, got str"):
        BlockConfig(D, H, FF, dropout="0.1")


def test_block_config_accepts_numpy_numbers():
    config = BlockConfig(
        np.int64(D), np.int32(H), np.int64(FF), head_dim=np.int64(8), dropout=np.float32(0.25)
    )
    assert config == BlockConfig(D, H, FF, head_dim=8, dropout=float(np.float32(0.25)))
    assert all(type(getattr(config, f)) is int for f in ("d_model", "n_heads", "d_ff", "head_dim"))
    assert type(config.dropout) is float
    assert repr(EncoderBlock(config)) == repr(
        EncoderBlock(BlockConfig(D, H, FF, head_dim=8, dropout=0.25))
    )


def test_dropout_only_in_training():
    block = EncoderBlock(BlockConfig(D, H, FF, dropout=0.3))
    x = torch.randn(2, 4, D)
    block.eval()
    torch.testing.assert_close(block(x), block(x))
    block.train()
    assert not torch.allclose(block(x), block(x))
