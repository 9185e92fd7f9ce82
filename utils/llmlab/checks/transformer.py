"""Checks of chapter 01's labs: attention and its masks, multi-head attention, RoPE, a decoder block.

Each ``check_NAME(fn)`` compares ``fn`` with ``reference_NAME`` on named cases (batch 1, seq 1,
odd widths, masks with a fully padded row ...), prints one line and returns a
:class:`llmlab.checks.CheckResult` whose ``.fn`` the lab keeps using::

    causal_mask = check_causal_mask(causal_mask).fn

The references are the tested modules of the chapter (:mod:`llmlab.nn.attention`,
:mod:`llmlab.nn.positional`, :mod:`llmlab.nn.blocks`). Inputs come from private generators and module
weights are drawn under a forked RNG, so a check never moves the notebook's seed.

    lab 01_attention_masks:      scaled_dot_product_attention, causal_mask, padding_mask
    lab 02_multi_head_attention: split_heads, merge_heads, multi_head_attention, repeat_kv
    lab 03_rope:                 rope_frequencies, apply_rotary
    lab 04_decoder_block:        decoder_block
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from llmlab.checks import Case, CheckResult, compare_tensors, describe, run_check
from llmlab.nn import attention, positional
from llmlab.nn.blocks import BlockConfig, DecoderBlock
from llmlab.nn.norms import RMSNorm

#: The sub-modules of a decoder block, in the order a pre-norm forward uses them.
DECODER_PARTS = ("self_attn_norm", "self_attn", "cross_attn_norm", "cross_attn", "mlp_norm", "mlp")

# --------------------------------------------------------------------------------------------
# References: what a correct answer returns (the chapter's tested modules)


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


def reference_rope_frequencies(
    head_dim: int, max_seq: int, base: float = 10000.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each (max_seq, head_dim) float32, in the rotate-half layout."""
    return positional.rope_frequencies(head_dim, max_seq, base)


def reference_apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin, with the first seq rows of the tables.

    x: (batch, heads, seq, head_dim); cos, sin: (max_seq, head_dim) with max_seq >= seq.
    """
    return positional.apply_rotary(x, cos, sin)


def reference_decoder_block(
    x: torch.Tensor,
    memory: torch.Tensor,
    parts: nn.ModuleDict,
    memory_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """:class:`llmlab.nn.blocks.DecoderBlock` (pre-norm) loaded with the weights of ``parts``.

    parts: the sub-modules named in :data:`DECODER_PARTS`; ``parts["self_attn"]`` is a plain
    (non-causal) :class:`~llmlab.nn.attention.MultiHeadAttention`, the block makes it causal.
    """
    block = _block_from_parts(parts)
    with torch.no_grad():
        return block(x, memory, memory_mask=memory_mask)


def _block_from_parts(parts: nn.ModuleDict) -> DecoderBlock:
    """A pre-norm DecoderBlock with the sizes and the weights of ``parts``."""
    attn, mlp, norm = parts["self_attn"], parts["mlp"], parts["self_attn_norm"]
    config = BlockConfig(
        d_model=attn.d_model,
        n_heads=attn.n_heads,
        d_ff=mlp.d_ff,
        n_kv_heads=attn.n_kv_heads,
        head_dim=attn.head_dim,
        attn_scale=attn.scale,
        activation=mlp.activation,
        norm="rms" if isinstance(norm, RMSNorm) else "layer",
        norm_eps=norm.eps,
        norm_first=True,
        bias=attn.q_proj.bias is not None,
    )
    with torch.random.fork_rng(devices=[]):
        block = DecoderBlock(config, cross_attention=True)
    block = block.to(attn.q_proj.weight.dtype)
    block.load_state_dict(parts.state_dict())
    return block.eval()


# --------------------------------------------------------------------------------------------
# Inputs


def _randn(*shape: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    """Standard-normal values of ``shape`` from a private generator (global seed untouched)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=dtype)


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
    q = gain * _randn(batch, heads, seq_q, head_dim, dtype=dtype, seed=seed)
    k = gain * _randn(batch, heads, seq_k, head_dim, dtype=dtype, seed=seed + 1)
    v = _randn(batch, heads, seq_k, head_dim_v or head_dim, dtype=dtype, seed=seed + 2)
    return q, k, v


def _lengths(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


def _pair_compare(
    names: tuple[str, str], atol: float | None = None, rtol: float | None = None
) -> Callable[[Any, tuple], str | None]:
    """Compare a returned pair of tensors (e.g. ``(cos, sin)``) with the expected pair."""

    def compare(received: Any, expected: tuple) -> str | None:
        if not isinstance(received, (tuple, list)) or len(received) != 2:
            return f"expected a pair ({', '.join(names)}), received {describe(received)}"
        for name, got, want in zip(names, received, expected, strict=True):
            problem = compare_tensors(got, want, atol=atol, rtol=rtol)
            if problem is not None:
                return f"{name}: {problem}"
        return None

    return compare


def _tolerance(atol: float, rtol: float) -> Callable[[Any, torch.Tensor], str | None]:
    """compare_tensors with a looser float32 tolerance (float64 keeps its own)."""

    def compare(received: Any, expected: torch.Tensor) -> str | None:
        if expected.dtype == torch.float32:
            return compare_tensors(received, expected, atol=atol, rtol=rtol)
        return compare_tensors(received, expected)

    return compare


# --------------------------------------------------------------------------------------------
# Lab 01: attention and masks


def check_scaled_dot_product_attention(scaled_dot_product_attention: Callable) -> CheckResult:
    """Check ``scaled_dot_product_attention(q, k, v, mask=None)`` (bool mask, True = attend)."""
    mask_hint = (
        "set the scores of masked keys to -inf BEFORE the softmax "
        "(scores.masked_fill(~mask, float('-inf'))): True means attend."
    )
    causal = attention.causal_mask(7)
    lengths = _lengths(5, 3)
    both = attention.causal_mask(6) & attention.padding_mask(_lengths(6, 4), 6)
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
            (*_qkv(2, 2, 5, 5, 4, seed=13), attention.padding_mask(lengths, 5)),
            hint=mask_hint + " A (batch, 1, 1, seq_k) mask broadcasts over heads and queries.",
        ),
        Case(
            "causal and padding combined (2, 1, 6, 6)",
            (*_qkv(2, 3, 6, 6, 4, seed=16), both),
            hint=mask_hint,
        ),
        Case(
            "a fully padded row: lengths [0, 4]",
            (*_qkv(2, 1, 4, 4, 4, seed=19), attention.padding_mask(_lengths(0, 4), 4)),
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
    )


def check_padding_mask(padding_mask: Callable) -> CheckResult:
    """Check ``padding_mask(lengths, seq)``: bool (batch, 1, 1, seq), True on real tokens."""
    cases = [
        Case("lengths [3, 5, 1], seq 5", (_lengths(3, 5, 1), 5)),
        Case("one sequence without padding", (_lengths(4), 4)),
        Case("seq longer than every length", (_lengths(2, 3), 6)),
        Case("an empty sequence (length 0)", (_lengths(0, 2), 3)),
        Case("seq 1", (_lengths(1, 0, 1), 1)),
        Case("7 sequences", (_lengths(7, 1, 4, 2, 6, 3, 5), 7)),
    ]
    return run_check(
        "padding_mask",
        padding_mask,
        reference_padding_mask,
        cases,
        hint="right padding puts the real tokens first: keep = torch.arange(seq)[None, :] < "
        "lengths[:, None], a bool (batch, seq); return keep[:, None, None, :] so it "
        "broadcasts over heads and queries.",
    )


# --------------------------------------------------------------------------------------------
# Lab 02: multi-head attention


def check_split_heads(split_heads: Callable) -> CheckResult:
    """Check ``split_heads(x, n_heads)``: (batch, seq, d) -> (batch, n_heads, seq, d / n_heads)."""
    cases = [
        Case("(1, 1, 4) into 2 heads", (_randn(1, 1, 4, seed=30), 2)),
        Case("(2, 7, 12) into 3 heads", (_randn(2, 7, 12, seed=31), 3)),
        Case("(2, 5, 20) into 5 heads", (_randn(2, 5, 20, seed=32), 5)),
        Case("(3, 4, 6) into 1 head", (_randn(3, 4, 6, seed=33), 1)),
        Case("(2, 3, 8) into 8 heads of width 1", (_randn(2, 3, 8, seed=34), 8)),
        Case(
            "float64 (2, 6, 10) into 2 heads", (_randn(2, 6, 10, dtype=torch.float64, seed=35), 2)
        ),
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
        Case("(1, 2, 1, 2)", (_randn(1, 2, 1, 2, seed=40),)),
        Case("(2, 3, 7, 4)", (_randn(2, 3, 7, 4, seed=41),)),
        Case("(2, 5, 5, 4)", (_randn(2, 5, 5, 4, seed=42),)),
        Case("one head (3, 1, 4, 6)", (_randn(3, 1, 4, 6, seed=43),)),
        Case("8 heads of width 1 (2, 8, 3, 1)", (_randn(2, 8, 3, 1, seed=44),)),
        Case("float64 (2, 2, 6, 5)", (_randn(2, 2, 6, 5, dtype=torch.float64, seed=45),)),
    ]
    return run_check(
        "merge_heads",
        merge_heads,
        reference_merge_heads,
        cases,
        hint="undo split_heads: transpose(1, 2) back to (batch, seq, heads, head_dim), then "
        "reshape to (batch, seq, heads * head_dim).",
    )


def _mha_args(
    batch: int, seq: int, d_model: int, n_heads: int, head_dim: int | None = None, seed: int = 0
) -> tuple:
    """(x, w_q, w_k, w_v, w_o, n_heads) with nn.Linear-shaped weights of unit-variance outputs."""
    head_dim = head_dim or d_model // n_heads
    width = n_heads * head_dim
    x = _randn(batch, seq, d_model, seed=seed)
    w_q, w_k, w_v = (_randn(width, d_model, seed=seed + i) / math.sqrt(d_model) for i in (1, 2, 3))
    w_o = _randn(d_model, width, seed=seed + 4) / math.sqrt(width)
    return x, w_q, w_k, w_v, w_o, n_heads


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
            (*_mha_args(2, 4, 12, 4, seed=75), attention.padding_mask(_lengths(4, 2), 4)),
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
        compare=_tolerance(1e-5, 1e-4),
    )


def check_repeat_kv(repeat_kv: Callable) -> CheckResult:
    """Check ``repeat_kv(x, n_rep)``: (b, kv_heads, s, d) -> (b, kv_heads * n_rep, s, d)."""
    cases = [
        Case("n_rep 1 changes nothing", (_randn(2, 3, 4, 5, seed=90), 1)),
        Case("(2, 2, 5, 4), n_rep 3", (_randn(2, 2, 5, 4, seed=91), 3)),
        Case("multi-query: (1, 1, 7, 6), n_rep 4", (_randn(1, 1, 7, 6, seed=92), 4)),
        Case("seq 1: (2, 4, 1, 8), n_rep 2", (_randn(2, 4, 1, 8, seed=93), 2)),
        Case("(3, 3, 2, 5), n_rep 2", (_randn(3, 3, 2, 5, seed=94), 2)),
        Case(
            "float64 (1, 2, 3, 4), n_rep 2", (_randn(1, 2, 3, 4, dtype=torch.float64, seed=95), 2)
        ),
    ]
    return run_check(
        "repeat_kv",
        repeat_kv,
        reference_repeat_kv,
        cases,
        hint="query head h uses kv head h // n_rep, so each kv head is copied n_rep times IN A "
        "ROW: x.repeat_interleave(n_rep, dim=1) (x.repeat tiles them instead).",
    )


# --------------------------------------------------------------------------------------------
# Lab 03: RoPE


def check_rope_frequencies(rope_frequencies: Callable) -> CheckResult:
    """Check ``rope_frequencies(head_dim, max_seq, base=10000.0)`` -> (cos, sin)."""
    cases = [
        Case("head_dim 8, 5 positions", (8, 5)),
        Case("head_dim 2, 1 position", (2, 1)),
        Case("head_dim 6, 7 positions", (6, 7)),
        Case("head_dim 64, 16 positions", (64, 16)),
        Case(
            "base 500000 (LLaMA 3), head_dim 16, 10 positions",
            (16, 10),
            {"base": 500000.0},
            hint="use the `base` argument, not a hard-coded 10000.",
        ),
        Case("head_dim 4, 100 positions", (4, 100)),
    ]
    return run_check(
        "rope_frequencies",
        rope_frequencies,
        reference_rope_frequencies,
        cases,
        hint="theta_i = base ** (-2i / head_dim) for i = 0 .. head_dim/2 - 1; angles = "
        "positions 0 .. max_seq-1 (outer) theta, (max_seq, head_dim/2); rotate-half layout: "
        "emb = torch.cat((angles, angles), dim=-1); return emb.cos(), emb.sin() in float32.",
        compare=_pair_compare(("cos", "sin"), atol=1e-4, rtol=1e-4),
    )


def _rope_args(
    batch: int,
    heads: int,
    seq: int,
    head_dim: int,
    table: int | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> tuple:
    """(x, cos, sin): x (batch, heads, seq, head_dim) and float32 tables of ``table`` rows."""
    cos, sin = positional.rope_frequencies(head_dim, table or seq)
    return _randn(batch, heads, seq, head_dim, dtype=dtype, seed=seed), cos, sin


def check_apply_rotary(apply_rotary: Callable) -> CheckResult:
    """Check ``apply_rotary(x, cos, sin)`` in the rotate-half (HF LLaMA) convention."""
    cases = [
        Case("one position (1, 1, 1, 2)", _rope_args(1, 1, 1, 2, seed=100)),
        Case("(2, 3, 7, 8), table of 7 positions", _rope_args(2, 3, 7, 8, seed=101)),
        Case("head_dim 6 (1, 2, 5, 6)", _rope_args(1, 2, 5, 6, seed=102)),
        Case(
            "table of 16 positions, seq 5",
            _rope_args(2, 2, 5, 8, table=16, seed=103),
            hint="the table covers max_seq positions; x uses the first seq rows: cos[:seq].",
        ),
        Case("(1, 4, 3, 64)", _rope_args(1, 4, 3, 64, seed=104)),
        Case(
            "float64 x with a float32 table",
            _rope_args(2, 1, 4, 8, dtype=torch.float64, seed=105),
            hint="return x's dtype (float64 here).",
        ),
    ]
    return run_check(
        "apply_rotary",
        apply_rotary,
        reference_apply_rotary,
        cases,
        hint="x * cos + rotate_half(x) * sin, where rotate_half(x) = cat((-x2, x1), dim=-1) for "
        "the two HALVES x1, x2 of the last dim (not the even/odd pairs).",
    )


# --------------------------------------------------------------------------------------------
# Lab 04: a decoder block


class DecoderParts(nn.ModuleDict):
    """The sub-modules of a pre-norm decoder block by name (:data:`DECODER_PARTS`), shown on
    one line in a check's message."""

    def __repr__(self) -> str:
        attn = self["self_attn"]
        return f"<{attn.n_heads} heads, d_model {attn.d_model}>"


def decoder_parts(config: BlockConfig, seed: int = 0) -> DecoderParts:
    """Random sub-modules of a pre-norm decoder block, the self-attention NOT causal.

    Norm weights and biases are moved away from 1 and 0, so that skipping or sharing a norm
    changes the output. Drawn under a forked RNG: the global seed does not move.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        block = DecoderBlock(config, cross_attention=True)
        with torch.no_grad():
            for name, param in block.named_parameters():
                if "norm" in name:
                    param.add_(0.3 * torch.randn_like(param))
    parts = DecoderParts({name: getattr(block, name) for name in DECODER_PARTS})
    parts["self_attn"].is_causal = False
    return parts.eval()


def _decoder_args(
    batch: int,
    seq: int,
    src: int,
    seed: int,
    dtype: torch.dtype = torch.float32,
    src_lengths: tuple[int, ...] | None = None,
    **config: Any,
) -> tuple:
    """(x, memory, parts[, memory_mask]) for one decoder-block case."""
    parts = decoder_parts(BlockConfig(norm_first=True, **config), seed=seed).to(dtype)
    d_model = config["d_model"]
    x = _randn(batch, seq, d_model, dtype=dtype, seed=seed + 1)
    memory = _randn(batch, src, d_model, dtype=dtype, seed=seed + 2)
    if src_lengths is None:
        return x, memory, parts
    return x, memory, parts, attention.padding_mask(_lengths(*src_lengths), src)


def check_decoder_block(decoder_block: Callable) -> CheckResult:
    """Check ``decoder_block(x, memory, parts, memory_mask=None)`` against a pre-norm
    :class:`llmlab.nn.blocks.DecoderBlock` with the same weights."""
    small = {"d_model": 8, "n_heads": 2, "d_ff": 16}
    mask_hint = (
        "the cross-attention reads the encoder output: parts['cross_attn'](h, "
        "context=memory, mask=memory_mask); the causal mask belongs to the "
        "self-attention only."
    )
    cases = [
        Case(
            "batch 1, one target token, 3 source tokens", _decoder_args(1, 1, 3, seed=110, **small)
        ),
        Case(
            "(2, 7, 12) targets, 5 source tokens, 3 heads",
            _decoder_args(2, 7, 5, seed=120, d_model=12, n_heads=3, d_ff=24, activation="gelu"),
            hint="self-attention must be causal: pass causal_mask(seq) as its mask (the given "
            "parts['self_attn'] is a plain, non-causal attention).",
        ),
        Case(
            "source padding: memory_mask from lengths [5, 2]",
            _decoder_args(2, 4, 5, seed=130, src_lengths=(5, 2), **small),
            hint=mask_hint,
        ),
        Case(
            "a fully padded source: lengths [0, 3]",
            _decoder_args(2, 3, 3, seed=140, src_lengths=(0, 3), **small),
            hint=mask_hint,
        ),
        Case(
            "LLaMA-style: RMSNorm, SwiGLU, no biases, 4 heads sharing 2 kv heads",
            _decoder_args(
                2,
                5,
                6,
                seed=150,
                d_model=16,
                n_heads=4,
                n_kv_heads=2,
                d_ff=24,
                activation="swiglu",
                norm="rms",
                bias=False,
            ),
        ),
        Case(
            "d_model 20, 5 heads, seq 9, 4 source tokens",
            _decoder_args(1, 9, 4, seed=160, d_model=20, n_heads=5, d_ff=36),
        ),
        Case(
            "float64 weights and inputs",
            _decoder_args(2, 4, 3, seed=170, dtype=torch.float64, **small),
        ),
    ]
    return run_check(
        "decoder_block",
        decoder_block,
        reference_decoder_block,
        cases,
        hint="pre-norm, each sub-layer with its own norm and a residual: "
        "x = x + self_attn(self_attn_norm(x), mask=causal); "
        "x = x + cross_attn(cross_attn_norm(x), context=memory, mask=memory_mask); "
        "x = x + mlp(mlp_norm(x)).",
        compare=_tolerance(1e-5, 1e-4),
    )
