"""Sparse attention: a sliding window plus global tokens, in O(seq * window) instead of O(seq^2).

    >>> from llmlab.nn.sparse_attention import blocked_sliding_window_attention, dense_sparse_attention
    >>> out = blocked_sliding_window_attention(q, k, v, window=128, n_global=2)   # q: (b, h, s, d)
    >>> ref = dense_sparse_attention(q, k, v, window=128, n_global=2)             # the same, O(s^2)

Full attention scores every query against every key: seq^2 entries, so doubling the context
quadruples the time and the memory of the score matrix. Most of a trained model's attention
weight sits near the diagonal, which suggests keeping only a band (Longformer, Beltagy et al.
2020; BigBird, Zaheer et al. 2020; Mistral's sliding window). The rule here, one function of
the query position i and the key position j (:func:`sliding_window_mask`):

- **local**: j is within the window: ``i - window < j <= i`` when causal (the query itself and
  the ``window - 1`` keys before it, as Mistral and transformers' ``sliding_window``), or
  ``|i - j| < window`` when bidirectional;
- **global**: the first ``n_global`` tokens (BigBird's and Longformer's global tokens, e.g. a
  [CLS] token or a prompt's instructions) attend to every key and every query attends to them,
  so information still crosses the sequence in two hops;
- causal attention keeps j <= i on top of both.

Two ways to compute it (equal in value and gradients), and two ways to count the cost:

- :func:`dense_sparse_attention`: the reference; the (seq, seq) mask into chapter 01's
  :func:`llmlab.nn.attention.scaled_dot_product_attention`. Still O(seq^2): masking saves no work.
- :func:`blocked_sliding_window_attention`: cut the sequence into blocks of ``window`` queries;
  every key a block's queries may see lies in that block and its neighbour(s), so each block
  scores ``2 * window`` keys (3 bidirectional) plus the ``n_global`` global keys:
  (seq / window) blocks x window queries x (2 * window + n_global) keys = O(seq * window).
  The few global queries are computed densely, O(n_global * seq).
- :func:`attention_cost` counts those score entries and FLOPs without running anything, and
  :func:`attention_intermediate_shapes` lists every tensor an implementation creates (from a
  run on the ``meta`` device: shapes only, no memory), the evidence that nothing is (seq, seq).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from llmlab.nn.attention import scaled_dot_product_attention
from llmlab.validate import require_dims, require_float, require_int, require_positive_int

__all__ = [
    "sliding_window_mask",
    "dense_sparse_attention",
    "blocked_sliding_window_attention",
    "attention_cost",
    "attention_intermediate_shapes",
]


def _may_attend(
    i: torch.Tensor, j: torch.Tensor, window: int, n_global: int, causal: bool
) -> torch.Tensor:
    """True where query position i may attend to key position j (broadcasting i against j)."""
    distance = i - j
    local = distance < window if causal else distance.abs() < window
    allowed = local | (i < n_global) | (j < n_global)
    return allowed & (distance >= 0) if causal else allowed


def sliding_window_mask(
    seq: int,
    window: int,
    causal: bool = True,
    n_global: int = 0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Bool mask (seq, seq), True where query i may attend to key j (the llmlab convention).

    window: how far a query sees: keys j with ``i - window < j <= i`` (causal) or
    ``|i - j| < window``; ``window >= seq`` is full attention. n_global: the first n_global
    tokens attend to and are attended by every token (still no peeking ahead when causal).
    Every row holds at least its diagonal, so no query is left without keys.
    """
    _require_pattern(seq, window, n_global, causal)
    position = torch.arange(seq, device=device)
    return _may_attend(position[:, None], position[None, :], window, n_global, causal)


def dense_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int,
    n_global: int = 0,
    causal: bool = True,
    scale: float | None = None,
) -> torch.Tensor:
    """The reference: full attention under :func:`sliding_window_mask`, O(seq^2) time and memory.

    q, k, v: (batch, heads, seq, head_dim) (self-attention: one seq). Returns
    (batch, heads, seq, head_dim). scale defaults to 1/sqrt(head_dim).
    """
    seq = _require_sparse_qkv(q, k, v)
    _require_pattern(seq, window, n_global, causal)
    mask = sliding_window_mask(seq, window, causal, n_global, device=q.device)
    return scaled_dot_product_attention(q, k, v, mask=mask, scale=scale)


def blocked_sliding_window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int,
    n_global: int = 0,
    causal: bool = True,
    scale: float | None = None,
) -> torch.Tensor:
    """:func:`dense_sparse_attention` in O(seq * window): no (seq, seq) tensor is ever built.

    q, k, v: (batch, heads, seq, head_dim) -> (batch, heads, seq, head_dim); any seq (the
    last block is padded with zeros, and the padded keys are masked out).

    With w = window, queries are cut into blocks of w. Query i = b*w + r (block b, row r) may
    see keys from i - w + 1 (in block b - 1, since r + 1 > 0) to i (causal) or i + w - 1 (in
    block b + 1): so block b scores the key blocks b - 1, b (and b + 1), 2w or 3w keys, taken
    as overlapping windows of the padded keys by ``unfold`` (a view). Their mask is the same
    rule as the dense mask, evaluated at those positions. The global keys (the first
    n_global) get their own columns, and are left out of the local ones so no key counts
    twice in the softmax. The global queries attend to every key: their few rows are dense.

    Shapes, with n = ceil(seq / w) blocks and c = 2 (causal) or 3 neighbour blocks::

        q blocks           (batch, heads, n, w, head_dim)
        local keys         (batch, heads, n, head_dim, c*w)      unfold: no copy
        scores             (batch, heads, n, w, n_global + c*w)  O(seq * w)
        global query rows  (batch, heads, n_global, seq)         O(n_global * seq)

    Equal to the reference in value and gradients (the same softmax over the same entries;
    only the summation order differs).
    """
    seq = _require_sparse_qkv(q, k, v)
    _require_pattern(seq, window, n_global, causal)
    return _blocked_attention(q, k, v, window, n_global, causal, scale)


def _blocked_attention(q, k, v, window: int, n_global: int, causal: bool, scale) -> torch.Tensor:
    batch, heads, seq, head_dim = q.shape
    w, g = window, n_global
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    n_blocks = -(-seq // w)
    padded = n_blocks * w
    span = (2 if causal else 3) * w  # keys each block scores: previous, own (, next) block

    # Queries in blocks; keys and values padded with one block before (and after) the sequence.
    q_blocks = F.pad(q, (0, 0, 0, padded - seq)).view(batch, heads, n_blocks, w, head_dim)
    kv_pad = (0, 0, w, padded - seq + (0 if causal else w))
    k_local = F.pad(k, kv_pad).unfold(2, span, w)  # (batch, heads, n_blocks, head_dim, span)
    v_local = F.pad(v, kv_pad).unfold(2, span, w).transpose(-1, -2)  # (..., span, head_dim)
    k_global, v_global = k[:, :, None, :g], v[:, :, None, :g]  # (batch, heads, 1, g, head_dim)

    # Positions of the queries (n_blocks, w, 1) and of block b's keys (n_blocks, 1, span).
    device = q.device
    q_pos = torch.arange(padded, device=device).view(n_blocks, w, 1)
    k_pos = (torch.arange(n_blocks, device=device) - 1).view(n_blocks, 1, 1) * w
    k_pos = k_pos + torch.arange(span, device=device)
    local_ok = _may_attend(q_pos, k_pos, w, g, causal) & (k_pos >= g) & (k_pos < seq)
    global_ok = _may_attend(q_pos, torch.arange(g, device=device), w, g, causal)
    # Each row keeps a real key (key seq - 1 is within w of every padded query): no 0/0 NaN.
    allowed = torch.cat((global_ok, local_ok), dim=-1)  # (n_blocks, w, g + span)

    scores = torch.cat((q_blocks @ k_global.transpose(-1, -2), q_blocks @ k_local), dim=-1)
    scores = (scores * scale).masked_fill(~allowed, float("-inf"))
    weights = torch.softmax(scores, dim=-1)  # (batch, heads, n_blocks, w, g + span)
    out = weights[..., :g] @ v_global + weights[..., g:] @ v_local
    out = out.reshape(batch, heads, padded, head_dim)[:, :, g:seq]
    if g == 0:
        return out
    # The global queries see every key (causal: every earlier one): g dense rows.
    g_pos, all_pos = torch.arange(g, device=device), torch.arange(seq, device=device)
    rows_ok = _may_attend(g_pos[:, None], all_pos[None, :], w, g, causal)
    top = scaled_dot_product_attention(q[:, :, :g], k, v, mask=rows_ok, scale=scale)
    return torch.cat((top, out), dim=2)


# --------------------------------------------------------------------------------------------
# Cost: counted, and the shapes an implementation actually creates
# --------------------------------------------------------------------------------------------


def attention_cost(
    seq: int,
    head_dim: int,
    window: int | None = None,
    n_global: int = 0,
    causal: bool = True,
) -> dict[str, int]:
    """Score entries and matmul FLOPs of one head's attention over seq tokens.

    window None: full attention, seq^2 entries (masked or not, every one is computed).
    Otherwise :func:`blocked_sliding_window_attention`'s: n_blocks * window queries times
    (n_global + 2 or 3 windows) keys, plus n_global dense rows of seq keys. FLOPs count
    Q K^T and weights @ V, 2 * head_dim each per entry (multiply and add); the softmax's few
    operations per entry are left out. Returns {"score_entries": ..., "flops": ...}: per
    batch element and head (multiply by both for a layer).
    """
    require_positive_int(seq, "seq")
    require_positive_int(head_dim, "head_dim")
    if window is None:
        entries = seq * seq
    else:
        _require_pattern(seq, window, n_global, causal)
        span = (2 if causal else 3) * window
        entries = -(-seq // window) * window * (n_global + span) + n_global * seq
    return {"score_entries": entries, "flops": 4 * head_dim * entries}


def attention_intermediate_shapes(
    seq: int,
    window: int,
    n_global: int = 0,
    causal: bool = True,
    implementation: str = "blocked",
    head_dim: int = 64,
) -> list[tuple[int, ...]]:
    """The shape of every tensor an implementation creates, for batch 1 and 1 head.

    implementation: ``"blocked"`` (:func:`blocked_sliding_window_attention`) or ``"dense"``
    (:func:`dense_sparse_attention`). The function really runs, on the ``meta`` device (shapes
    without data: no memory, no time), with every operation's outputs recorded, so the list is
    what the code does, not what it claims. The largest entry is the memory that grows: with
    window fixed, (seq, seq) for dense, (seq / window, window, n_global + 2 window) blocked.
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    implementations = {"blocked": blocked_sliding_window_attention, "dense": dense_sparse_attention}
    if implementation not in implementations:
        raise ValueError(f"implementation: expected 'blocked' or 'dense', got {implementation!r}")
    _require_pattern(seq, window, n_global, causal)
    shapes: list[tuple[int, ...]] = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, tuple | list) else (out,):
                if isinstance(t, torch.Tensor):
                    shapes.append(tuple(t.shape))
            return out

    q, k, v = (torch.empty(1, 1, seq, head_dim, device="meta") for _ in range(3))
    with Record():
        implementations[implementation](q, k, v, window, n_global, causal)
    return shapes


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def _require_pattern(seq, window, n_global, causal) -> None:
    """The sparsity pattern's arguments, checked at each entry point."""
    require_positive_int(seq, "seq")
    require_positive_int(window, "window")
    require_int(n_global, "n_global", minimum=0)
    if n_global > seq:
        raise ValueError(
            f"n_global: expected <= seq={seq} (global tokens are tokens), got {n_global}"
        )
    if not isinstance(causal, bool):
        raise TypeError(f"causal: expected a bool, got {type(causal).__name__} {causal!r}")


def _require_sparse_qkv(q, k, v) -> int:
    """q, k, v of one shape (batch, heads, seq, head_dim) and dtype; returns seq."""
    for t, name in ((q, "q"), (k, "k"), (v, "v")):
        require_dims(t, 4, name, "(batch, heads, seq, head_dim)")
    require_float(q, "q")
    for t, name in ((k, "k"), (v, "v")):
        if t.shape != q.shape:
            raise ValueError(
                f"{name}: expected the shape of q {tuple(q.shape)} (self-attention), "
                f"got {tuple(t.shape)}"
            )
        if t.dtype != q.dtype:
            raise TypeError(f"{name}: expected dtype {q.dtype} (the dtype of q), got {t.dtype}")
    return q.shape[2]
