"""Attention, from the formula: softmax(Q K^T / sqrt(d_k)) V, its masks, and multi-head attention.

    >>> from llmlab.nn.attention import scaled_dot_product_attention, causal_mask, MultiHeadAttention
    >>> out = scaled_dot_product_attention(q, k, v, mask=causal_mask(seq, seq))
    >>> attn = MultiHeadAttention(d_model=64, n_heads=4, n_kv_heads=2, is_causal=True)
    >>> y = attn(x)                              # x: (batch, seq, d_model)

Masks follow one convention everywhere in ``llmlab``: a **boolean mask is True where a query
may attend** to a key (the convention of ``torch.nn.functional.scaled_dot_product_attention``;
``torch.nn.MultiheadAttention``'s ``attn_mask`` and ``key_padding_mask`` use the opposite, True
= blocked). A **float mask is added** to the scores before the softmax (0 keeps, ``-inf``
blocks; biases such as ALiBi or T5's relative positions are float masks too). A mask has up to
4 dims and broadcasts to the score matrix (batch, heads, seq_q, seq_k).

A query row that may attend to no key at all (every key masked) has no defined softmax (0/0).
Here its weights are all zero, so its output is **zeros** (torch's SDPA does the same), and no
NaN reaches the output or the gradients.

Chapter 02 builds GPT, BERT, T5, LLaMA and PaLM from :class:`MultiHeadAttention`: grouped-query
(``n_kv_heads``), multi-query (``n_kv_heads=1``), no biases (``bias=False``), RoPE (the ``rope``
argument of ``forward``) and additive position biases (the ``mask`` argument).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.nn.positional import apply_rotary
from llmlab.validate import require_dims, require_float, require_positive_int

if TYPE_CHECKING:
    from llmlab.nn.cache import KVCache

__all__ = [
    "scaled_dot_product_attention",
    "causal_mask",
    "padding_mask",
    "combine_masks",
    "to_additive_mask",
    "repeat_kv",
    "MultiHeadAttention",
    "formula_attention",
    "AttentionMemory",
    "naive_attention_memory",
]


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
    return_weights: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention(Q, K, V) = softmax(Q K^T * scale + mask) V, with scale = 1/sqrt(head_dim).

    q: (batch, heads, seq_q, head_dim); k: (batch, heads, seq_k, head_dim);
    v: (batch, heads, seq_k, head_dim_v). mask: None, a bool mask (True = attend) or a float
    mask (added to the scores), broadcastable to (batch, heads, seq_q, seq_k). dropout_p is
    applied to the weights whenever it is > 0 (as in torch: pass 0.0 in eval mode).

    Returns the output (batch, heads, seq_q, head_dim_v), and with ``return_weights`` also the
    weights (batch, heads, seq_q, seq_k) that multiplied v (after dropout, if any). Rows with
    every key masked give zero weights and a zero output.
    """
    _check_qkv(q, k, v)
    if not isinstance(dropout_p, (int, float)) or not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p: expected a float in [0, 1), got {dropout_p!r}")
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])  # keeps the scores' variance ~1: see chapter 01

    scores = (q @ k.transpose(-2, -1)) * scale  # (batch, heads, seq_q, seq_k)
    if mask is not None:
        _check_mask(mask, scores.shape)
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.to(scores.dtype)
        # A row of -inf only would give softmax 0/0 = NaN (and NaN gradients): give it zeros.
        empty_row = torch.isneginf(scores).all(dim=-1, keepdim=True)
        scores = scores.masked_fill(empty_row, 0.0)
        weights = torch.softmax(scores, dim=-1).masked_fill(empty_row, 0.0)
    else:
        weights = torch.softmax(scores, dim=-1)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    out = weights @ v
    return (out, weights) if return_weights else out


# --------------------------------------------------------------------------------------------
# Masks (bool: True = attend)
# --------------------------------------------------------------------------------------------


def causal_mask(
    seq_q: int, seq_k: int | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """Bool mask (seq_q, seq_k), True where query i may attend to key j: no peeking ahead.

    The queries are the *last* seq_q positions of the seq_k keys (bottom-right alignment), as
    when decoding with a KV cache: query i sits at position i + seq_k - seq_q and attends to
    keys j <= that position. With seq_q == seq_k this is the usual lower triangle.
    (``torch``'s ``is_causal=True`` aligns top-left instead; both agree when seq_q == seq_k.)
    """
    seq_k = seq_q if seq_k is None else seq_k
    require_positive_int(seq_q, "seq_q")
    require_positive_int(seq_k, "seq_k")
    if seq_k < seq_q:
        raise ValueError(
            f"seq_k: expected >= seq_q={seq_q} (the keys include the queries' own positions), "
            f"got {seq_k}"
        )
    return torch.ones(seq_q, seq_k, dtype=torch.bool, device=device).tril(diagonal=seq_k - seq_q)


def padding_mask(lengths_or_mask: torch.Tensor, seq: int | None = None) -> torch.Tensor:
    """Bool key mask (batch, 1, 1, seq), True on real tokens and False on padding.

    ``lengths_or_mask`` is either the lengths (batch,) of right-padded sequences (``seq``
    defaults to the longest), or an attention mask (batch, seq) as tokenizers return it
    (1 or True = real token, 0 or False = padding; any padding side). The result broadcasts
    over heads and queries, so it only hides padded *keys*; a padded query still gets an
    output, which a loss should ignore.
    """
    if not isinstance(lengths_or_mask, torch.Tensor):
        raise TypeError(
            f"lengths_or_mask: expected a torch.Tensor, got {type(lengths_or_mask).__name__}"
        )
    x = lengths_or_mask
    if x.is_floating_point() or x.is_complex():
        raise TypeError(f"lengths_or_mask: expected an integer or bool tensor, got dtype {x.dtype}")
    if x.dim() == 2:
        if seq is not None and seq != x.shape[1]:
            raise ValueError(f"seq: expected {x.shape[1]} (the mask's width) or None, got {seq}")
        keep = x.bool()
    elif x.dim() == 1:
        if x.dtype == torch.bool:
            raise TypeError(
                "lengths_or_mask: lengths (batch,) must be integers, got dtype torch.bool"
            )
        if (x < 0).any():
            raise ValueError(f"lengths_or_mask: lengths must be >= 0, got {x.tolist()}")
        longest = int(x.max()) if x.numel() else 0
        seq = longest if seq is None else seq
        if seq < longest:
            raise ValueError(f"seq: expected >= the longest length {longest}, got {seq}")
        keep = torch.arange(seq, device=x.device)[None, :] < x[:, None]
    else:
        raise ValueError(
            "lengths_or_mask: expected lengths (batch,) or an attention mask (batch, seq), "
            f"got shape {tuple(x.shape)}"
        )
    return keep[:, None, None, :]


def to_additive_mask(mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A bool mask (True = attend) as a float mask: 0 where True, -inf where False."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask: expected a torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        if not mask.is_floating_point():
            raise TypeError(f"mask: expected a bool or float tensor, got dtype {mask.dtype}")
        return mask.to(dtype)
    zeros = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return zeros.masked_fill(~mask, float("-inf"))


def combine_masks(*masks: torch.Tensor | None) -> torch.Tensor | None:
    """Combine masks that must all hold (``None`` entries are skipped), broadcasting shapes.

    Bool masks are AND-ed (a key is visible only if every mask allows it). If any mask is a
    float (additive) mask, the bool ones become 0/-inf and everything is summed, e.g.
    ``combine_masks(causal_mask(s, s), alibi_bias(h, s, s))``.
    """
    present = [m for m in masks if m is not None]
    for i, m in enumerate(present):
        if not isinstance(m, torch.Tensor):
            raise TypeError(f"masks[{i}]: expected a torch.Tensor or None, got {type(m).__name__}")
        if m.dtype != torch.bool and not m.is_floating_point():
            raise TypeError(f"masks[{i}]: expected a bool or float tensor, got dtype {m.dtype}")
    if not present:
        return None
    try:
        torch.broadcast_shapes(*(m.shape for m in present))
    except RuntimeError as err:
        shapes = ", ".join(str(tuple(m.shape)) for m in present)
        raise ValueError(f"masks: shapes {shapes} do not broadcast together") from err
    floats = [m for m in present if m.dtype != torch.bool]
    if not floats:
        out = present[0]
        for m in present[1:]:
            out = out & m
        return out
    dtype = floats[0].dtype
    out = to_additive_mask(present[0], dtype)
    for m in present[1:]:
        out = out + to_additive_mask(m, dtype)
    return out


# --------------------------------------------------------------------------------------------
# Multi-head attention
# --------------------------------------------------------------------------------------------


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(batch, kv_heads, seq, head_dim) -> (batch, kv_heads * n_rep, seq, head_dim).

    Grouped-query attention: each key/value head serves ``n_rep`` consecutive query heads
    (query head h uses kv head h // n_rep), the layout of LLaMA's ``repeat_kv``.
    """
    require_dims(x, 4, "x", "(batch, kv_heads, seq, head_dim)")
    require_positive_int(n_rep, "n_rep")
    if n_rep == 1:
        return x
    batch, kv_heads, seq, head_dim = x.shape
    x = x[:, :, None, :, :].expand(batch, kv_heads, n_rep, seq, head_dim)
    return x.reshape(batch, kv_heads * n_rep, seq, head_dim)


class MultiHeadAttention(nn.Module):
    """Multi-head attention (Vaswani et al. 2017) with grouped-query and multi-query options.

    head_i = Attention(x W_q^i, c W_k^i, c W_v^i), MHA(x, c) = Concat(head_1..head_h) W_o, where
    c = x (self-attention) or ``context`` (cross-attention: queries from the decoder, keys and
    values from the encoder's output).

    ``n_kv_heads`` (default ``n_heads``) sets how many key/value heads there are: fewer than
    ``n_heads`` is grouped-query attention (GQA, LLaMA 2/3, SmolLM2), 1 is multi-query attention
    (MQA, PaLM). It shrinks k_proj/v_proj and the KV cache by n_heads / n_kv_heads.

    Weights are named like LLaMA's (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``), so a
    LLaMA-family checkpoint loads by name. ``head_dim`` defaults to d_model // n_heads; ``scale``
    to 1/sqrt(head_dim) (T5 uses 1.0: its initialisation absorbs the factor).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int | None = None,
        bias: bool = True,
        dropout: float = 0.0,
        is_causal: bool = False,
        head_dim: int | None = None,
        scale: float | None = None,
    ):
        super().__init__()
        require_positive_int(d_model, "d_model")
        require_positive_int(n_heads, "n_heads")
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        require_positive_int(n_kv_heads, "n_kv_heads")
        if n_heads % n_kv_heads:
            raise ValueError(
                f"n_kv_heads: expected a divisor of n_heads={n_heads}, got {n_kv_heads}"
            )
        if head_dim is None:
            if d_model % n_heads:
                raise ValueError(
                    f"n_heads: expected a divisor of d_model={d_model} (or pass head_dim), got {n_heads}"
                )
            head_dim = d_model // n_heads
        require_positive_int(head_dim, "head_dim")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout: expected a float in [0, 1), got {dropout!r}")
        self.d_model = d_model
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.head_dim = head_dim
        self.dropout = dropout
        self.is_causal = is_causal
        self.scale = scale
        self.q_proj = nn.Linear(d_model, n_heads * head_dim, bias=bias)
        self.k_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=bias)
        self.o_proj = nn.Linear(n_heads * head_dim, d_model, bias=bias)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        return_weights: bool = False,
        cache: KVCache | None = None,
        layer_idx: int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x: (batch, seq_q, d_model) -> (batch, seq_q, d_model).

        context: (batch, seq_k, d_model) for cross-attention, None for self-attention.
        mask: bool (True = attend) or additive float, broadcastable to
        (batch, heads, seq_q, seq_k); combined with the causal mask when ``is_causal``.
        rope: ``(cos, sin)`` from :class:`llmlab.nn.positional.RotaryEmbedding` (each
        (seq, head_dim) or (batch, seq, head_dim)), applied to q and k after the projections
        (self-attention only). With ``return_weights`` also returns the attention weights
        (batch, heads, seq_q, seq_k).
        cache, layer_idx: a :class:`llmlab.nn.cache.KVCache` and this layer's index in it
        (self-attention only). This call's k and v (after RoPE, before GQA repetition) are
        appended to the cache and the queries attend to every cached key: x holds the *new*
        positions, ``rope`` must be computed at those positions, and the causal mask aligns
        the queries with the last keys.
        """
        require_dims(x, 3, "x", "(batch, seq, d_model)")
        require_float(x, "x")
        if x.shape[-1] != self.d_model:
            raise ValueError(
                f"x: expected last dim d_model={self.d_model}, got shape {tuple(x.shape)}"
            )
        if context is not None:
            require_dims(context, 3, "context", "(batch, seq_k, d_model)")
            if context.shape[0] != x.shape[0] or context.shape[-1] != self.d_model:
                raise ValueError(
                    f"context: expected shape ({x.shape[0]}, seq_k, {self.d_model}), "
                    f"got {tuple(context.shape)}"
                )
            if rope is not None:
                raise ValueError(
                    "rope: rotary embeddings apply to self-attention only (context is set)"
                )
        if cache is not None:
            if context is not None:
                raise ValueError("cache: a KV cache serves self-attention only (context is set)")
            if isinstance(layer_idx, bool) or not isinstance(layer_idx, int):
                raise TypeError(
                    f"layer_idx: expected an int (this layer's slot in the cache), got "
                    f"{type(layer_idx).__name__}"
                )
        if rope is not None and (not isinstance(rope, (tuple, list)) or len(rope) != 2):
            raise TypeError(f"rope: expected a (cos, sin) pair, got {type(rope).__name__}")
        batch, seq_q, _ = x.shape
        source = x if context is None else context
        seq_k = source.shape[1]

        # (batch, seq, heads * head_dim) -> (batch, heads, seq, head_dim)
        q = self.q_proj(x).view(batch, seq_q, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(source).view(batch, seq_k, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(source).view(batch, seq_k, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if rope is not None:
            cos, sin = rope
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer_idx, k, v)  # every position so far
            seq_k = k.shape[2]
        n_rep = self.n_heads // self.n_kv_heads
        k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)

        dropout_p = self.dropout if self.training else 0.0
        if return_weights or not _USE_FUSED:  # our formula: it hands back the weights
            if self.is_causal:
                mask = combine_masks(causal_mask(seq_q, seq_k, device=x.device), mask)
            out, weights = scaled_dot_product_attention(
                q, k, v, mask=mask, dropout_p=dropout_p, scale=self.scale, return_weights=True
            )
        else:  # the same math through torch's fused kernel: never stores the weights
            out = _fused_attention(q, k, v, mask, self.is_causal, dropout_p, self.scale)
        out = out.transpose(1, 2).reshape(batch, seq_q, self.n_heads * self.head_dim)
        out = self.o_proj(out)
        return (out, weights) if return_weights else out

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, "
            f"head_dim={self.head_dim}, is_causal={self.is_causal}"
        )


_USE_FUSED = True


@contextlib.contextmanager
def formula_attention():
    """Inside this block :class:`MultiHeadAttention` always computes attention from the formula.

    Outside it, a module that is not asked for its attention weights runs torch's fused SDPA
    (same result, faster, no (seq, seq) matrix kept). Use the formula when something must see
    every operation: ``torch.utils.flop_counter.FlopCounterMode`` does not count the CPU's
    fused attention kernel, so FLOP measurements run inside ``formula_attention()``.
    """
    global _USE_FUSED
    previous, _USE_FUSED = _USE_FUSED, False
    try:
        yield
    finally:
        _USE_FUSED = previous


def _fused_attention(q, k, v, mask, is_causal: bool, dropout_p: float, scale) -> torch.Tensor:
    """torch's SDPA (flash / memory-efficient kernels where available) with our mask rules.

    Equal to :func:`scaled_dot_product_attention` (tested), but faster and without the
    (seq_q, seq_k) weights in memory: what training uses when no one asks for the weights.
    """
    seq_q, seq_k = q.shape[-2], k.shape[-2]
    causal_flag = False
    if is_causal:
        if mask is None and seq_q == seq_k:
            causal_flag = True  # lets torch skip the masked half
        else:
            mask = combine_masks(causal_mask(seq_q, seq_k, device=q.device), mask)
    if mask is not None and mask.is_floating_point() and mask.dtype != q.dtype:
        mask = mask.to(q.dtype)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal_flag, scale=scale
    )


# --------------------------------------------------------------------------------------------
# The O(n^2) memory of naive attention
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttentionMemory:
    """Bytes that naive attention holds for one layer: the (seq x seq) part and the linear part."""

    scores: int  # the score matrix (batch, heads, seq, seq): grows as seq^2
    qkvo: int  # q, k, v and the output (batch, heads, seq, head_dim): grows as seq

    @property
    def total(self) -> int:
        return self.scores + self.qkvo

    def __repr__(self) -> str:
        return f"AttentionMemory(scores={self.scores:,} B, qkvo={self.qkvo:,} B, total={self.total:,} B)"


def naive_attention_memory(
    seq: int, heads: int, head_dim: int, dtype: torch.dtype = torch.float32, batch: int = 1
) -> AttentionMemory:
    """Bytes of the tensors that naive attention materialises, for the O(n^2) plot.

    ``scores`` = batch * heads * seq^2 * itemsize: one score matrix (the softmax weights that
    backward keeps are another of the same size). ``qkvo`` = 4 * batch * heads * seq * head_dim *
    itemsize. FlashAttention never materialises ``scores``: only ``qkvo`` remains.
    """
    for value, name in ((seq, "seq"), (heads, "heads"), (head_dim, "head_dim"), (batch, "batch")):
        require_positive_int(value, name)
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype: expected a torch.dtype, got {type(dtype).__name__}")
    itemsize = torch.empty((), dtype=dtype).element_size()
    return AttentionMemory(
        scores=batch * heads * seq * seq * itemsize,
        qkvo=4 * batch * heads * seq * head_dim * itemsize,
    )


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def _check_qkv(q, k, v) -> None:
    require_dims(q, 4, "q", "(batch, heads, seq_q, head_dim)")
    require_dims(k, 4, "k", "(batch, heads, seq_k, head_dim)")
    require_dims(v, 4, "v", "(batch, heads, seq_k, head_dim_v)")
    require_float(q, "q")
    for t, name in ((k, "k"), (v, "v")):
        if t.dtype != q.dtype:
            raise TypeError(f"{name}: expected dtype {q.dtype} (the dtype of q), got {t.dtype}")
    if k.shape[:2] != q.shape[:2] or k.shape[-1] != q.shape[-1]:
        raise ValueError(
            f"k: expected shape ({q.shape[0]}, {q.shape[1]}, seq_k, {q.shape[-1]}) to match q "
            f"{tuple(q.shape)}, got {tuple(k.shape)}"
        )
    if v.shape[:3] != k.shape[:3]:
        raise ValueError(
            f"v: expected shape ({k.shape[0]}, {k.shape[1]}, {k.shape[2]}, head_dim_v) to match k "
            f"{tuple(k.shape)}, got {tuple(v.shape)}"
        )


def _check_mask(mask, scores_shape: torch.Size) -> None:
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask: expected a torch.Tensor or None, got {type(mask).__name__}")
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise TypeError(
            f"mask: expected a bool (True = attend) or float tensor, got dtype {mask.dtype}"
        )
    ok = mask.dim() <= 4
    if ok:
        try:
            ok = torch.broadcast_shapes(mask.shape, scores_shape) == scores_shape
        except RuntimeError:
            ok = False
    if not ok:
        raise ValueError(
            "mask: expected a shape broadcastable to (batch, heads, seq_q, seq_k) = "
            f"{tuple(scores_shape)}, got {tuple(mask.shape)}"
        )
