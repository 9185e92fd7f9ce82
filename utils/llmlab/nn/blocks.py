"""Transformer blocks: the encoder block and the decoder block, pre-norm or post-norm.

    EncoderBlock:  x -> self-attention -> FFN
    DecoderBlock:  x -> masked (causal) self-attention -> cross-attention to the encoder -> FFN

Each sub-layer sits on a residual connection, with a norm either after the addition
(post-norm, the original Transformer, BERT: ``norm_first=False``) or before the sub-layer
(pre-norm, GPT-2, T5, LLaMA: ``norm_first=True``):

    post-norm:  x = norm(x + dropout(sublayer(x)))
    pre-norm:   x = x + dropout(sublayer(norm(x)))

Pre-norm keeps an untouched path from input to output, so gradients reach early layers at any
depth and training needs less warmup; stacks of pre-norm blocks end with one final norm (the
model adds it). With ``parallel=True`` (PaLM, GPT-J) attention and FFN read the same normed
input and add to the residual together: x = x + attn(norm(x)) + ffn(norm(x)).

Chapter 02's GPT, BERT, LLaMA and PaLM are stacks of these blocks (a decoder-only model is a
``DecoderBlock`` without cross-attention). Sub-module names: ``self_attn``, ``cross_attn``,
``mlp`` (with LLaMA's ``q_proj``... and ``gate_proj``... inside) and ``self_attn_norm``,
``cross_attn_norm``, ``mlp_norm``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from llmlab.nn.attention import MultiHeadAttention
from llmlab.nn.ffn import ACTIVATIONS, FeedForward
from llmlab.nn.norms import NORMS, make_norm
from llmlab.validate import require_positive_int, require_real

if TYPE_CHECKING:
    from llmlab.nn.cache import KVCache

__all__ = ["BlockConfig", "EncoderBlock", "DecoderBlock"]


@dataclass
class BlockConfig:
    """Sizes and choices of one Transformer block (defaults: the base model of Vaswani et al.)."""

    d_model: int = 512
    n_heads: int = 8
    d_ff: int = 2048
    n_kv_heads: int | None = None  # < n_heads: grouped-query attention; 1: multi-query
    head_dim: int | None = None  # default d_model // n_heads
    attn_scale: float | None = None  # default 1/sqrt(head_dim); T5 uses 1.0
    activation: str = "relu"  # "relu" | "gelu" | "gelu_tanh" | "swiglu"
    norm: str = "layer"  # "layer" | "rms"
    norm_eps: float | None = None  # default 1e-5 (layer) or 1e-6 (rms)
    norm_first: bool = False  # False: post-norm (Vaswani, BERT); True: pre-norm (GPT-2, LLaMA)
    parallel: bool = False  # PaLM's parallel attention + FFN (needs norm_first)
    bias: bool = True  # biases in attention, FFN and LayerNorm
    dropout: float = 0.0  # on attention weights, FFN hidden units and each residual branch

    def __post_init__(self):
        # Stored back as Python numbers: np.int64(512) is accepted and kept as 512.
        for name in ("d_model", "n_heads", "d_ff"):
            setattr(self, name, require_positive_int(getattr(self, name), name))
        for name in ("n_kv_heads", "head_dim"):  # None: the default
            if getattr(self, name) is not None:
                setattr(self, name, require_positive_int(getattr(self, name), name))
        self.dropout = require_real(self.dropout, "dropout")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {self.activation!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm: expected one of {NORMS}, got {self.norm!r}")
        if self.parallel and not self.norm_first:
            raise ValueError("parallel: the parallel block is pre-norm; set norm_first=True")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: expected a float in [0, 1), got {self.dropout!r}")


def _attention(config: BlockConfig, is_causal: bool) -> MultiHeadAttention:
    return MultiHeadAttention(
        config.d_model,
        config.n_heads,
        n_kv_heads=config.n_kv_heads,
        bias=config.bias,
        dropout=config.dropout,
        is_causal=is_causal,
        head_dim=config.head_dim,
        scale=config.attn_scale,
    )


def _norm(config: BlockConfig) -> nn.Module:
    return make_norm(config.norm, config.d_model, eps=config.norm_eps, bias=config.bias)


def _require_config(config) -> None:
    if not isinstance(config, BlockConfig):
        raise TypeError(f"config: expected a BlockConfig, got {type(config).__name__}")


class EncoderBlock(nn.Module):
    """Self-attention (every position sees every other) then FFN, each on a residual.

    Equals ``torch.nn.TransformerEncoderLayer(batch_first=True)`` with the same weights
    (``norm_first`` either way).
    """

    def __init__(self, config: BlockConfig):
        super().__init__()
        _require_config(config)
        self.config = config
        self.self_attn_norm = _norm(config)
        self.self_attn = _attention(config, is_causal=False)
        if not config.parallel:
            self.mlp_norm = _norm(config)
        self.mlp = FeedForward(
            config.d_model, config.d_ff, config.activation, config.bias, config.dropout
        )
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        return_weights: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """x: (batch, seq, d_model) -> same shape.

        mask: bool (True = attend) or additive float, broadcastable to
        (batch, heads, seq, seq), e.g. ``llmlab.nn.attention.padding_mask(lengths)``. rope: (cos, sin)
        for RoPE. With ``return_weights`` also returns ``{"self": (batch, heads, seq, seq)}``.
        """
        weights = {}

        def attend(h):
            if not return_weights:
                return self.self_attn(h, mask=mask, rope=rope)
            out, weights["self"] = self.self_attn(h, mask=mask, rope=rope, return_weights=True)
            return out

        x = _sublayers(self, x, attend)
        return (x, weights) if return_weights else x


class DecoderBlock(nn.Module):
    """Masked self-attention, then (optionally) cross-attention to the encoder, then FFN.

    The self-attention is causal: position i sees positions <= i only, so the model can be
    trained on whole sequences at once (teacher forcing) yet generate left to right.
    With ``cross_attention=True`` (encoder-decoder) it equals
    ``torch.nn.TransformerDecoderLayer(batch_first=True)`` with the same weights and a causal
    ``tgt_mask``; with ``cross_attention=False`` it is the block of decoder-only models.
    """

    def __init__(self, config: BlockConfig, cross_attention: bool = True):
        super().__init__()
        _require_config(config)
        if cross_attention and config.parallel:
            raise ValueError("cross_attention: the parallel block has no cross-attention sub-layer")
        self.config = config
        self.has_cross_attention = cross_attention
        self.self_attn_norm = _norm(config)
        self.self_attn = _attention(config, is_causal=True)
        if cross_attention:
            self.cross_attn_norm = _norm(config)
            self.cross_attn = _attention(config, is_causal=False)
        if not config.parallel:
            self.mlp_norm = _norm(config)
        self.mlp = FeedForward(
            config.d_model, config.d_ff, config.activation, config.bias, config.dropout
        )
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        return_weights: bool = False,
        cache: KVCache | None = None,
        layer_idx: int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """x: (batch, seq, d_model) -> same shape.

        memory: the encoder's output (batch, src_seq, d_model) (required with cross-attention).
        mask: extra self-attention mask, combined with the causal one (e.g. padding).
        memory_mask: cross-attention mask broadcastable to (batch, heads, seq, src_seq), e.g.
        ``padding_mask(src_lengths)``. rope: (cos, sin), applied in self-attention. With
        ``return_weights`` also returns ``{"self": ..., "cross": ...}`` attention weights.
        cache, layer_idx: a KV cache and this block's slot in it, for the self-attention
        (x then holds only the new positions; see :class:`llmlab.nn.attention.MultiHeadAttention`).
        """
        # Without memory cross_attn would silently self-attend; without cross_attn memory is unused.
        if self.has_cross_attention == (memory is None):
            want = "the encoder output" if self.has_cross_attention else "None (no cross-attention)"
            raise ValueError(f"memory: expected {want}, got {type(memory).__name__}")
        weights = {}

        def attend(h):
            out = self.self_attn(
                h,
                mask=mask,
                rope=rope,
                return_weights=return_weights,
                cache=cache,
                layer_idx=layer_idx,
            )
            if return_weights:
                out, weights["self"] = out
            return out

        def cross_attend(h):
            out = self.cross_attn(
                h, context=memory, mask=memory_mask, return_weights=return_weights
            )
            if return_weights:
                out, weights["cross"] = out
            return out

        x = _sublayers(self, x, attend, cross_attend if self.has_cross_attention else None)
        return (x, weights) if return_weights else x


def _sublayers(block, x, attend, cross_attend=None):
    """Attention, [cross-attention,] FFN around the residual stream, as the block's config says."""
    config = block.config
    if config.parallel:
        h = block.self_attn_norm(x)
        return x + block.dropout(attend(h)) + block.dropout(block.mlp(h))
    steps = [(block.self_attn_norm, attend)]
    if cross_attend is not None:
        steps.append((block.cross_attn_norm, cross_attend))
    steps.append((block.mlp_norm, block.mlp))
    for norm, sublayer in steps:
        if config.norm_first:
            x = x + block.dropout(sublayer(norm(x)))
        else:
            x = norm(x + block.dropout(sublayer(x)))
    return x
