"""Checks of chapter 01's multi-head attention lab (``solutions/01_transformer/02_multi_head_attention.ipynb``).

    lab 02_multi_head_attention: split_heads, merge_heads, multi_head_attention, repeat_kv

Each ``check_NAME(fn)`` compares ``fn`` with ``reference_NAME`` on named cases (one head, heads
of width 1, n_heads * head_dim != d_model ...), prints one line and returns a
:class:`llmlab.checks.CheckResult` whose ``.fn`` the lab keeps using.

``multi_head_attention`` and ``repeat_kv`` delegate to :mod:`llmlab.nn.attention`;
``split_heads`` and ``merge_heads`` are written out, because the library keeps those reshapes
inside :class:`~llmlab.nn.attention.MultiHeadAttention` rather than as functions. Inputs come
from :mod:`llmlab.checks._inputs` and the layer's weights are drawn under a forked RNG, so a
check never moves the notebook's seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from llmlab.checks import Case, CheckResult, run_check
from llmlab.checks._inputs import lengths, randn
from llmlab.checks.transformer import FLOAT32_TOLERANCE
from llmlab.nn import attention

#: Library ops that compute a whole answer: an answer that calls one is flagged. The lab's
#: multi_head_attention may call llmlab's scaled_dot_product_attention (the solution does).
FORBID_MHA = (
    "llmlab.nn.attention.MultiHeadAttention",
    "torch.nn.modules.activation.MultiheadAttention",
    "torch.nn.functional.multi_head_attention_forward",
)
FORBID_REPEAT_KV = (
    "llmlab.nn.attention.repeat_kv",
    "transformers.models.llama.modeling_llama.repeat_kv",
)

# --------------------------------------------------------------------------------------------
# References: what a correct answer returns


def reference_split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(batch, seq, n_heads * head_dim) -> (batch, n_heads, seq, head_dim)."""
    batch, seq, width = x.shape
    return x.view(batch, seq, n_heads, width // n_heads).transpose(1, 2)


def reference_merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(batch, heads, seq, head_dim) -> (batch, seq, heads * head_dim)."""
    batch, heads, seq, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, seq, heads * head_dim)


def reference_multi_head_attention(
    x: torch.Tensor,
    w_q: torch.Tensor,
    w_k: torch.Tensor,
    w_v: torch.Tensor,
    w_o: torch.Tensor,
    n_heads: int,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """:class:`llmlab.nn.attention.MultiHeadAttention` (no biases) with these projection weights.

    x: (batch, seq, d_model); w_q, w_k, w_v: (n_heads * head_dim, d_model) and
    w_o: (d_model, n_heads * head_dim), laid out as ``nn.Linear.weight`` (y = x @ w.T).
    """
    head_dim = w_q.shape[0] // n_heads
    with torch.random.fork_rng(devices=[]):  # the layer's random init must not move the seed
        mha = attention.MultiHeadAttention(x.shape[-1], n_heads, bias=False, head_dim=head_dim)
    mha = mha.to(x.dtype)
    with torch.no_grad():
        for proj, weight in (
            (mha.q_proj, w_q),
            (mha.k_proj, w_k),
            (mha.v_proj, w_v),
            (mha.o_proj, w_o),
        ):
            proj.weight.copy_(weight)
        return mha(x, mask=mask)


def reference_repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(batch, kv_heads, seq, head_dim) -> (batch, kv_heads * n_rep, seq, head_dim).

    Query head h uses key/value head h // n_rep (LLaMA's layout).
    """
    return attention.repeat_kv(x, n_rep)


# --------------------------------------------------------------------------------------------
# Inputs


def _mha_args(
    batch: int, seq: int, d_model: int, n_heads: int, head_dim: int | None = None, seed: int = 0
) -> tuple:
    """(x, w_q, w_k, w_v, w_o, n_heads) with nn.Linear-shaped weights of unit-variance outputs."""
    head_dim = head_dim or d_model // n_heads
    width = n_heads * head_dim
    x = randn(batch, seq, d_model, seed=seed)
    w_q, w_k, w_v = (randn(width, d_model, seed=seed + i) / math.sqrt(d_model) for i in (1, 2, 3))
    w_o = randn(d_model, width, seed=seed + 4) / math.sqrt(width)
    return x, w_q, w_k, w_v, w_o, n_heads


# --------------------------------------------------------------------------------------------
# Checks


def check_split_heads(split_heads: Callable) -> CheckResult:
    """Check ``split_heads(x, n_heads)``: (batch, seq, d) -> (batch, n_heads, seq, d / n_heads)."""
    cases = [
        Case("(1, 1, 4) into 2 heads", (randn(1, 1, 4, seed=30), 2)),
        Case("(2, 7, 12) into 3 heads", (randn(2, 7, 12, seed=31), 3)),
        Case("(2, 5, 20) into 5 heads", (randn(2, 5, 20, seed=32), 5)),
        Case("(3, 4, 6) into 1 head", (randn(3, 4, 6, seed=33), 1)),
        Case("(2, 3, 8) into 8 heads of width 1", (randn(2, 3, 8, seed=34), 8)),
        Case("float64 (2, 6, 10) into 2 heads", (randn(2, 6, 10, dtype=torch.float64, seed=35), 2)),
    ]
    return run_check(
        "split_heads",
        split_heads,
        reference_split_heads,
        cases,
        hint="head h owns the features h*head_dim .. (h+1)*head_dim - 1: view x as (batch, seq, "
        "n_heads, head_dim), THEN transpose(1, 2); a reshape straight to (batch, n_heads, "
        "seq, head_dim) mixes positions.",
    )


def check_merge_heads(merge_heads: Callable) -> CheckResult:
    """Check ``merge_heads(x)``: (batch, heads, seq, head_dim) -> (batch, seq, heads * head_dim)."""
    cases = [
        Case("(1, 2, 1, 2)", (randn(1, 2, 1, 2, seed=40),)),
        Case("(2, 3, 7, 4)", (randn(2, 3, 7, 4, seed=41),)),
        Case("(2, 5, 5, 4)", (randn(2, 5, 5, 4, seed=42),)),
        Case("one head (3, 1, 4, 6)", (randn(3, 1, 4, 6, seed=43),)),
        Case("8 heads of width 1 (2, 8, 3, 1)", (randn(2, 8, 3, 1, seed=44),)),
        Case("float64 (2, 2, 6, 5)", (randn(2, 2, 6, 5, dtype=torch.float64, seed=45),)),
    ]
    return run_check(
        "merge_heads",
        merge_heads,
        reference_merge_heads,
        cases,
        hint="undo split_heads: transpose(1, 2) back to (batch, seq, heads, head_dim), then "
        "reshape to (batch, seq, heads * head_dim).",
    )


def check_multi_head_attention(multi_head_attention: Callable) -> CheckResult:
    """Check ``multi_head_attention(x, w_q, w_k, w_v, w_o, n_heads, mask=None)``."""
    cases = [
        Case("batch 1, seq 1, d_model 8, 2 heads", _mha_args(1, 1, 8, 2, seed=50)),
        Case("(2, 7, 12), 3 heads", _mha_args(2, 7, 12, 3, seed=55)),
        Case("(2, 5, 20), 5 heads", _mha_args(2, 5, 20, 5, seed=60)),
        Case("one head: attention between projections", _mha_args(1, 6, 8, 1, seed=65)),
        Case("causal mask (6, 6)", (*_mha_args(2, 6, 8, 2, seed=70), attention.causal_mask(6))),
        Case(
            "padding mask, lengths [4, 2]",
            (*_mha_args(2, 4, 12, 4, seed=75), attention.padding_mask(lengths(4, 2), 4)),
        ),
        Case(
            "4 heads of width 6 on d_model 12",
            _mha_args(2, 3, 12, 4, head_dim=6, seed=80),
            hint="head_dim = w_q.shape[0] // n_heads (here n_heads * head_dim != d_model).",
        ),
    ]
    return run_check(
        "multi_head_attention",
        multi_head_attention,
        reference_multi_head_attention,
        cases,
        hint="q = split_heads(x @ w_q.T, n_heads) (same for k, v); attention per head with the "
        "mask; merge_heads; then @ w_o.T.",
        compare=FLOAT32_TOLERANCE,
        forbid=FORBID_MHA,
    )


def check_repeat_kv(repeat_kv: Callable) -> CheckResult:
    """Check ``repeat_kv(x, n_rep)``: (b, kv_heads, s, d) -> (b, kv_heads * n_rep, s, d)."""
    cases = [
        Case("n_rep 1 changes nothing", (randn(2, 3, 4, 5, seed=90), 1)),
        Case("(2, 2, 5, 4), n_rep 3", (randn(2, 2, 5, 4, seed=91), 3)),
        Case("multi-query: (1, 1, 7, 6), n_rep 4", (randn(1, 1, 7, 6, seed=92), 4)),
        Case("seq 1: (2, 4, 1, 8), n_rep 2", (randn(2, 4, 1, 8, seed=93), 2)),
        Case("(3, 3, 2, 5), n_rep 2", (randn(3, 3, 2, 5, seed=94), 2)),
        Case("float64 (1, 2, 3, 4), n_rep 2", (randn(1, 2, 3, 4, dtype=torch.float64, seed=95), 2)),
    ]
    return run_check(
        "repeat_kv",
        repeat_kv,
        reference_repeat_kv,
        cases,
        hint="query head h uses kv head h // n_rep, so each kv head is copied n_rep times IN A "
        "ROW: x.repeat_interleave(n_rep, dim=1) (x.repeat tiles them instead).",
        forbid=FORBID_REPEAT_KV,
    )
