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
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.nn.positional import apply_rotary
from llmlab.validate import require_dims, require_float, require_positive_int, require_real

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
    _require_qkv(q, k, v, mask, dropout_p)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])  # keeps the scores' variance ~1: see chapter 01

    scores = (q @ k.transpose(-2, -1)) * scale  # (batch, heads, seq_q, seq_k)
    if mask is not None:
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
    for value, name in ((seq_q, "seq_q"), (seq_k, "seq_k")):
        require_positive_int(value, name)
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
    x = lengths_or_mask
    _require_lengths_or_mask(x, seq)
    if x.dim() == 2:
        keep = x.bool()
    else:
        seq = (int(x.max()) if x.numel() else 0) if seq is None else seq
        keep = torch.arange(seq, device=x.device)[None, :] < x[:, None]
    return keep[:, None, None, :]


def to_additive_mask(mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A bool mask (True = attend) as a float mask: 0 where True, -inf where False."""
    _require_mask(mask, "mask")
    if mask.dtype != torch.bool:
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
        _require_mask(m, f"masks[{i}]")
    if not present:
        return None
    if _broadcast(*(m.shape for m in present)) is None:
        shapes = ", ".join(str(tuple(m.shape)) for m in present)
        raise ValueError(f"masks: expected shapes that broadcast together, got {shapes}")
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
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        for value, name in ((d_model, "d_model"), (n_heads, "n_heads"), (n_kv_heads, "n_kv_heads")):
            require_positive_int(value, name)
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
# Input checks
# --------------------------------------------------------------------------------------------


def _require_qkv(q, k, v, mask, dropout_p) -> None:
    """The inputs of :func:`scaled_dot_product_attention`, checked once at that entry point."""
    for t, name in ((q, "q"), (k, "k"), (v, "v")):
        require_dims(t, 4, name, "(batch, heads, seq, head_dim)")
    require_float(q, "q")
    batch, heads, seq_q, head_dim = q.shape
    seq_k = k.shape[2]
    for t, name, shape, layout in (
        (k, "k", (batch, heads, seq_k, head_dim), f"({batch}, {heads}, seq_k, {head_dim})"),
        (v, "v", (batch, heads, seq_k), f"({batch}, {heads}, {seq_k}, head_dim_v)"),
    ):
        if t.dtype != q.dtype:
            raise TypeError(f"{name}: expected dtype {q.dtype} (the dtype of q), got {t.dtype}")
        if t.shape[: len(shape)] != shape:
            raise ValueError(
                f"{name}: expected shape {layout} to match q {tuple(q.shape)}, got {tuple(t.shape)}"
            )
    if not 0.0 <= require_real(dropout_p, "dropout_p") < 1.0:
        raise ValueError(f"dropout_p: expected a float in [0, 1), got {dropout_p!r}")
    if mask is not None:
        _require_mask(mask, "mask", (batch, heads, seq_q, seq_k))


def _require_mask(mask, name: str, scores_shape: tuple[int, ...] | None = None) -> None:
    """A bool or float mask; with ``scores_shape``, one that broadcasts to it."""
    if not isinstance(mask, torch.Tensor) or not (
        mask.dtype == torch.bool or mask.is_floating_point()
    ):
        got = f"dtype {mask.dtype}" if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise TypeError(f"{name}: expected a bool (True = attend) or float tensor, got {got}")
    if scores_shape is not None and _broadcast(mask.shape, scores_shape) != scores_shape:
        raise ValueError(
            f"{name}: expected a shape broadcastable to (batch, heads, seq_q, seq_k) = "
            f"{scores_shape}, got {tuple(mask.shape)}"
        )


def _require_lengths_or_mask(x, seq) -> None:
    """Integer lengths (batch,) in [0, seq], or an integer or bool mask (batch, seq)."""
    if not isinstance(x, torch.Tensor) or x.is_floating_point() or x.is_complex():
        got = f"dtype {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"lengths_or_mask: expected an integer or bool tensor, got {got}")
    if x.dim() == 2:
        if seq not in (None, x.shape[1]):
            raise ValueError(f"seq: expected {x.shape[1]} (the mask's width) or None, got {seq}")
        return
    if x.dim() != 1 or x.dtype == torch.bool:
        raise ValueError(
            "lengths_or_mask: expected integer lengths (batch,) or an attention mask "
            f"(batch, seq), got {x.dtype} of shape {tuple(x.shape)}"
        )
    if x.numel() and (int(x.min()) < 0 or seq is not None and int(x.max()) > seq):
        upto = "" if seq is None else f" and <= seq={seq}"
        raise ValueError(f"lengths_or_mask: expected lengths >= 0{upto}, got {x.tolist()}")


def _broadcast(*shapes) -> tuple[int, ...] | None:
    """The shape ``shapes`` broadcast to, or None when they do not broadcast."""
    try:
        return tuple(torch.broadcast_shapes(*shapes))
    except RuntimeError:
        return None
