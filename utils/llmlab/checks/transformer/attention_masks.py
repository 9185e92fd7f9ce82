"""Checks of chapter 01's attention-and-masks lab (``solutions/01_transformer/01_attention_masks.ipynb``).

    lab 01_attention_masks: scaled_dot_product_attention, causal_mask, padding_mask

Each ``check_NAME(fn)`` compares ``fn`` with ``reference_NAME`` on named cases (one query, odd
widths, masks with a fully padded row ...), prints one line and returns a
:class:`llmlab.checks.CheckResult` whose ``.fn`` the lab keeps using::

    causal_mask = check_causal_mask(causal_mask).fn

The references are :mod:`llmlab.nn.attention`'s tested functions. Inputs come from
:mod:`llmlab.checks._inputs`, so a check never moves the notebook's seed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from llmlab.checks import Case, CheckResult, run_check
from llmlab.checks._inputs import lengths, randn
from llmlab.nn import attention

#: Library ops that compute a whole answer: an answer that calls one is flagged.
FORBID_ATTENTION = (
    "torch.nn.functional.scaled_dot_product_attention",
    "torch.nn.functional.multi_head_attention_forward",
    "torch.nn.modules.activation.MultiheadAttention",
    "llmlab.nn.attention",
)
FORBID_MASKS = ("llmlab.nn.attention", "torch.nn.modules.transformer")

# --------------------------------------------------------------------------------------------
# References: what a correct answer returns (the chapter's tested functions)


def reference_scaled_dot_product_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """softmax(q k^T / sqrt(head_dim), masked) v: (batch, heads, seq_q, head_dim_v).

    mask: None or bool broadcastable to (batch, heads, seq_q, seq_k), True = attend. A query
    row whose keys are all masked gets a zero output (as torch's SDPA).
    """
    return attention.scaled_dot_product_attention(q, k, v, mask=mask)


def reference_causal_mask(seq_q: int, seq_k: int | None = None) -> torch.Tensor:
    """Bool (seq_q, seq_k), True where query i may attend key j; queries are the last seq_q."""
    return attention.causal_mask(seq_q, seq_k)


def reference_padding_mask(lengths: torch.Tensor, seq: int) -> torch.Tensor:
    """Bool (batch, 1, 1, seq), True on the real tokens of right-padded sequences."""
    return attention.padding_mask(lengths, seq)


# --------------------------------------------------------------------------------------------
# Inputs


def _qkv(
    batch: int,
    heads: int,
    seq_q: int,
    seq_k: int,
    head_dim: int,
    head_dim_v: int | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    gain: float = 1.0,
) -> tuple:
    """Random q (batch, heads, seq_q, head_dim), k and v (batch, heads, seq_k, ...)."""
    q = gain * randn(batch, heads, seq_q, head_dim, dtype=dtype, seed=seed)
    k = gain * randn(batch, heads, seq_k, head_dim, dtype=dtype, seed=seed + 1)
    v = randn(batch, heads, seq_k, head_dim_v or head_dim, dtype=dtype, seed=seed + 2)
    return q, k, v


def check_scaled_dot_product_attention(scaled_dot_product_attention: Callable) -> CheckResult:
    """Check ``scaled_dot_product_attention(q, k, v, mask=None)`` (bool mask, True = attend)."""
    mask_hint = (
        "set the scores of masked keys to -inf BEFORE the softmax "
        "(scores.masked_fill(~mask, float('-inf'))): True means attend."
    )
    causal = attention.causal_mask(7)
    five_and_three = lengths(5, 3)
    both = attention.causal_mask(6) & attention.padding_mask(lengths(6, 4), 6)
    cases = [
        Case("one query, 4 keys (1, 1, 1, 4)", _qkv(1, 1, 1, 4, 4, seed=1)),
        Case("(2, 3, 7, 8) without a mask", _qkv(2, 3, 7, 7, 8, seed=4)),
        Case(
            "3 queries, 6 keys, head_dim 5, values of width 6",
            _qkv(2, 1, 3, 6, 5, 6, seed=7),
            hint="scores = q @ k.transpose(-2, -1) is (batch, heads, seq_q, seq_k); the "
            "softmax runs over the keys (dim=-1); scale by 1/sqrt(q.shape[-1]).",
        ),
        Case("causal mask (7, 7)", (*_qkv(2, 2, 7, 7, 4, seed=10), causal), hint=mask_hint),
        Case(
            "padding mask (2, 1, 1, 5), lengths [5, 3]",
            (*_qkv(2, 2, 5, 5, 4, seed=13), attention.padding_mask(five_and_three, 5)),
            hint=mask_hint + " A (batch, 1, 1, seq_k) mask broadcasts over heads and queries.",
        ),
        Case(
            "causal and padding combined (2, 1, 6, 6)",
            (*_qkv(2, 3, 6, 6, 4, seed=16), both),
            hint=mask_hint,
        ),
        Case(
            "a fully padded row: lengths [0, 4]",
            (*_qkv(2, 1, 4, 4, 4, seed=19), attention.padding_mask(lengths(0, 4), 4)),
            hint="a query whose keys are ALL masked has softmax 0/0 = NaN; return zeros for "
            "it, as torch's SDPA does (e.g. weights.nan_to_num(0.0)).",
        ),
        Case(
            "a mask of all True changes nothing",
            (*_qkv(1, 2, 5, 5, 6, seed=22), torch.ones(5, 5, dtype=torch.bool)),
        ),
        Case(
            "large scores (q and k x 30)",
            _qkv(1, 2, 4, 5, 8, seed=25, gain=30.0),
            hint="use torch.softmax (it subtracts the max); exp of huge scores overflows.",
        ),
        Case(
            "float64 inputs",
            _qkv(2, 2, 3, 5, 4, dtype=torch.float64, seed=28),
            hint="keep the inputs' dtype: do not convert to float32.",
        ),
    ]
    return run_check(
        "scaled_dot_product_attention",
        scaled_dot_product_attention,
        reference_scaled_dot_product_attention,
        cases,
        hint="softmax(q @ k.transpose(-2, -1) / sqrt(head_dim), dim=-1) @ v, with masked "
        "scores set to -inf before the softmax.",
        forbid=FORBID_ATTENTION,
    )


def check_causal_mask(causal_mask: Callable) -> CheckResult:
    """Check ``causal_mask(seq_q, seq_k=None)``: bool (seq_q, seq_k), True = may attend."""
    cache_hint = (
        "the queries are the LAST seq_q of the seq_k positions: query i sits at "
        "position i + seq_k - seq_q and sees keys up to there "
        "(torch.ones(...).tril(diagonal=seq_k - seq_q))."
    )
    diagonal_hint = "True on AND below the diagonal: query i sees keys 0 .. i, itself included."
    cases = [
        Case("seq 1", (1,), hint=diagonal_hint),
        Case("seq 4", (4,), hint=diagonal_hint),
        Case("seq 7", (7,)),
        Case("seq_q = seq_k = 5 given explicitly", (5, 5)),
        Case("one new query, 6 keys (decoding with a cache)", (1, 6), hint=cache_hint),
        Case("3 queries, 7 keys", (3, 7), hint=cache_hint),
    ]
    return run_check(
        "causal_mask",
        causal_mask,
        reference_causal_mask,
        cases,
        hint="return a bool tensor (seq_q, seq_k), True where key j is not in the query's "
        "future (a lower triangle).",
        forbid=FORBID_MASKS,
    )


def check_padding_mask(padding_mask: Callable) -> CheckResult:
    """Check ``padding_mask(lengths, seq)``: bool (batch, 1, 1, seq), True on real tokens."""
    cases = [
        Case("lengths [3, 5, 1], seq 5", (lengths(3, 5, 1), 5)),
        Case("one sequence without padding", (lengths(4), 4)),
        Case("seq longer than every length", (lengths(2, 3), 6)),
        Case("an empty sequence (length 0)", (lengths(0, 2), 3)),
        Case("seq 1", (lengths(1, 0, 1), 1)),
        Case("7 sequences", (lengths(7, 1, 4, 2, 6, 3, 5), 7)),
    ]
    return run_check(
        "padding_mask",
        padding_mask,
        reference_padding_mask,
        cases,
        hint="right padding puts the real tokens first: keep = torch.arange(seq)[None, :] < "
        "lengths[:, None], a bool (batch, seq); return keep[:, None, None, :] so it "
        "broadcasts over heads and queries.",
        forbid=FORBID_MASKS,
    )
