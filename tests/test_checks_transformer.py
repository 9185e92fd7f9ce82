"""The checks of chapter 01's labs (llmlab.checks.transformer: attention_masks,
multi_head_attention, rope, decoder_block).

For every check: the reference passes, other correct answers pass too, plausible wrong answers
(mutants) fail on the case that exposes them, a NotImplementedError stub reports "not
implemented", garbage never raises, and the notebook's global seed does not move.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from check_contract import CheckContract, student_copy

from llmlab.checks.transformer import attention_masks as am
from llmlab.checks.transformer import decoder_block as db
from llmlab.checks.transformer import multi_head_attention as mha
from llmlab.checks.transformer import rope
from llmlab.nn import attention
from llmlab.nn.blocks import BlockConfig, DecoderBlock
from llmlab.nn.norms import RMSNorm

CHECKS = {
    "check_scaled_dot_product_attention": (
        am.check_scaled_dot_product_attention,
        am.reference_scaled_dot_product_attention,
    ),
    "check_causal_mask": (am.check_causal_mask, am.reference_causal_mask),
    "check_padding_mask": (am.check_padding_mask, am.reference_padding_mask),
    "check_split_heads": (mha.check_split_heads, mha.reference_split_heads),
    "check_merge_heads": (mha.check_merge_heads, mha.reference_merge_heads),
    "check_multi_head_attention": (
        mha.check_multi_head_attention,
        mha.reference_multi_head_attention,
    ),
    "check_repeat_kv": (mha.check_repeat_kv, mha.reference_repeat_kv),
    "check_rope_frequencies": (rope.check_rope_frequencies, rope.reference_rope_frequencies),
    "check_apply_rotary": (rope.check_apply_rotary, rope.reference_apply_rotary),
    "check_decoder_block": (db.check_decoder_block, db.reference_decoder_block),
}


GARBAGE = {
    "returns a list": lambda *a, **k: [0.1, 0.9],
    "returns a number": lambda *a, **k: 0.5,
    "returns a string": lambda *a, **k: "attention",
    "returns a pair of Nones": lambda *a, **k: (None, None),
    "returns a numpy array": lambda x, *a, **k: x.numpy(),
    "returns the wrong shape": lambda *a, **k: torch.zeros(3, 2, 1),
    "returns a 0-dim tensor": lambda *a, **k: torch.tensor(1.0),
    "returns its first input": lambda x, *a, **k: x,
    "returns int64 zeros": lambda x, *a, **k: torch.zeros_like(x, dtype=torch.int64),
    "returns NaN": lambda x, *a, **k: torch.full_like(x, float("nan")),
    "returns a module": lambda *a, **k: torch.nn.Linear(2, 2),
    "takes no arguments": lambda: torch.zeros(1),
    "is not a function (a tensor)": torch.zeros(2),
}


class TestContract(CheckContract):
    MODULES = (am, mha, rope, db)
    CHECKS = CHECKS
    GARBAGE = GARBAGE
    MIN_CASES = 6


# --------------------------------------------------------------------------------------------
# Lab 01: attention and masks. Correct variants and mutants.


def sdpa_torch(q, k, v, mask=None):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def sdpa_where(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = torch.where(mask, scores, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return torch.nan_to_num(weights) @ v


def sdpa_no_scale(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1).nan_to_num() @ v


def sdpa_scale_by_dim(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / q.shape[-1]
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1).nan_to_num() @ v


def sdpa_mask_inverted(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(mask, float("-inf"))
    return torch.softmax(scores, dim=-1).nan_to_num() @ v


def sdpa_mask_after_softmax(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    weights = torch.softmax(scores, dim=-1)
    if mask is not None:
        weights = weights.masked_fill(~mask, 0.0)
    return weights @ v


def sdpa_nan_on_empty_rows(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def sdpa_large_negative_instead_of_inf(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, -1e9)  # an empty row averages every value
    return torch.softmax(scores, dim=-1) @ v


def sdpa_softmax_over_queries(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-2).nan_to_num() @ v


def sdpa_naive_exp(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    e = scores.exp()
    return (e / e.sum(dim=-1, keepdim=True)).nan_to_num() @ v


def sdpa_float32(q, k, v, mask=None):
    return sdpa_where(q.float(), k.float(), v.float(), mask)


def causal_arange(seq_q, seq_k=None):
    seq_k = seq_q if seq_k is None else seq_k
    query_position = torch.arange(seq_q)[:, None] + (seq_k - seq_q)
    return torch.arange(seq_k)[None, :] <= query_position


def causal_diagonal_excluded(seq_q, seq_k=None):
    seq_k = seq_q if seq_k is None else seq_k
    return torch.ones(seq_q, seq_k, dtype=torch.bool).tril(diagonal=seq_k - seq_q - 1)


def causal_upper_triangle(seq_q, seq_k=None):
    seq_k = seq_q if seq_k is None else seq_k
    return torch.ones(seq_q, seq_k, dtype=torch.bool).triu(diagonal=seq_k - seq_q)


def causal_top_left(seq_q, seq_k=None):
    seq_k = seq_q if seq_k is None else seq_k
    return torch.ones(seq_q, seq_k, dtype=torch.bool).tril()


def causal_float(seq_q, seq_k=None):
    return causal_arange(seq_q, seq_k).float()


def causal_square_only(seq_q, seq_k=None):
    return torch.ones(seq_q, seq_q, dtype=torch.bool).tril()


def padding_loop(lengths, seq):
    keep = torch.zeros(len(lengths), seq, dtype=torch.bool)
    for row, length in enumerate(lengths.tolist()):
        keep[row, :length] = True
    return keep[:, None, None, :]


def padding_left(lengths, seq):
    keep = torch.arange(seq)[None, :] >= seq - lengths[:, None]
    return keep[:, None, None, :]


def padding_off_by_one(lengths, seq):
    return (torch.arange(seq)[None, :] <= lengths[:, None])[:, None, None, :]


def padding_inverted(lengths, seq):
    return (torch.arange(seq)[None, :] >= lengths[:, None])[:, None, None, :]


def padding_2d(lengths, seq):
    return torch.arange(seq)[None, :] < lengths[:, None]


def padding_int(lengths, seq):
    return (torch.arange(seq)[None, :] < lengths[:, None]).long()[:, None, None, :]


def padding_query_axis(lengths, seq):
    return (torch.arange(seq)[None, :] < lengths[:, None])[:, None, :, None]


# --------------------------------------------------------------------------------------------
# Lab 02: multi-head attention


def split_reshape(x, n_heads):
    batch, seq, width = x.shape
    return x.reshape(batch, n_heads, seq, width // n_heads)


def split_head_dim_major(x, n_heads):
    batch, seq, width = x.shape
    return x.view(batch, seq, width // n_heads, n_heads).permute(0, 3, 1, 2)


def split_einops_style(x, n_heads):
    return torch.stack(x.chunk(n_heads, dim=-1), dim=1)


def merge_reshape(x):
    batch, heads, seq, head_dim = x.shape
    return x.reshape(batch, seq, heads * head_dim)


def merge_permute(x):
    return x.permute(0, 2, 1, 3).flatten(2)


def merge_head_dim_major(x):
    batch, heads, seq, head_dim = x.shape
    return x.permute(0, 2, 3, 1).reshape(batch, seq, heads * head_dim)


def _mha(
    x,
    w_q,
    w_k,
    w_v,
    w_o,
    n_heads,
    mask,
    split=mha.reference_split_heads,
    merge=mha.reference_merge_heads,
    attend=am.reference_scaled_dot_product_attention,
    linear=F.linear,
):
    q, k, v = (split(linear(x, w), n_heads) for w in (w_q, w_k, w_v))
    return linear(merge(attend(q, k, v, mask)), w_o)


def mha_correct(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    return _mha(x, w_q, w_k, w_v, w_o, n_heads, mask, linear=lambda t, w: t @ w.T)


def mha_split_without_transpose(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    return _mha(x, w_q, w_k, w_v, w_o, n_heads, mask, split=split_reshape)


def mha_merge_without_transpose(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    return _mha(x, w_q, w_k, w_v, w_o, n_heads, mask, merge=merge_reshape)


def mha_no_scale(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    return _mha(x, w_q, w_k, w_v, w_o, n_heads, mask, attend=sdpa_no_scale)


def mha_scale_by_d_model(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    def attend(q, k, v, mask):
        return attention.scaled_dot_product_attention(q, k, v, mask, scale=x.shape[-1] ** -0.5)

    return _mha(x, w_q, w_k, w_v, w_o, n_heads, mask, attend=attend)


def mha_weights_not_transposed(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    return _mha(x, w_q, w_k, w_v, w_o, n_heads, mask, linear=lambda t, w: t @ w)


def mha_no_output_projection(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    q, k, v = (mha.reference_split_heads(x @ w.T, n_heads) for w in (w_q, w_k, w_v))
    return mha.reference_merge_heads(attention.scaled_dot_product_attention(q, k, v, mask))


def mha_ignores_mask(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    return _mha(x, w_q, w_k, w_v, w_o, n_heads, None)


def mha_head_dim_from_d_model(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    batch, seq, d_model = x.shape

    def split(t, n_heads):
        return t.view(batch, seq, -1, d_model // n_heads).transpose(1, 2)

    return _mha(x, w_q, w_k, w_v, w_o, n_heads, mask, split=split)


def repeat_kv_interleave(x, n_rep):
    return x.repeat_interleave(n_rep, dim=1)


def repeat_kv_tiled(x, n_rep):
    return x.repeat(1, n_rep, 1, 1)


def repeat_kv_wrong_axis(x, n_rep):
    return x.repeat_interleave(n_rep, dim=2)


def repeat_kv_expand_wrong_order(x, n_rep):
    batch, kv_heads, seq, head_dim = x.shape
    return (
        x[:, None]
        .expand(batch, n_rep, kv_heads, seq, head_dim)
        .reshape(batch, kv_heads * n_rep, seq, head_dim)
    )


# --------------------------------------------------------------------------------------------
# Lab 03: RoPE


def rope_float64_then_cast(head_dim, max_seq, base=10000.0):
    i = torch.arange(head_dim // 2, dtype=torch.float64)
    theta = base ** (-2 * i / head_dim)
    angles = torch.outer(torch.arange(max_seq, dtype=torch.float64), theta)
    emb = torch.cat((angles, angles), dim=-1)
    return emb.cos().float(), emb.sin().float()


def _rope(head_dim, max_seq, base=10000.0, exponent=2, layout="half", start=0):
    i = torch.arange(head_dim // 2, dtype=torch.float32)
    theta = 1.0 / base ** (exponent * i / head_dim)
    angles = torch.outer(torch.arange(start, start + max_seq, dtype=torch.float32), theta)
    if layout == "half":
        emb = torch.cat((angles, angles), dim=-1)
    else:
        emb = angles.repeat_interleave(2, dim=-1)
    return emb.cos(), emb.sin()


def rope_exponent_without_2(head_dim, max_seq, base=10000.0):
    return _rope(head_dim, max_seq, base, exponent=1)


def rope_interleaved_table(head_dim, max_seq, base=10000.0):
    return _rope(head_dim, max_seq, base, layout="interleaved")


def rope_positions_from_1(head_dim, max_seq, base=10000.0):
    return _rope(head_dim, max_seq, base, start=1)


def rope_base_ignored(head_dim, max_seq, base=10000.0):
    return _rope(head_dim, max_seq)


def rope_sin_cos_swapped(head_dim, max_seq, base=10000.0):
    cos, sin = _rope(head_dim, max_seq, base)
    return sin, cos


def rope_half_table(head_dim, max_seq, base=10000.0):
    cos, sin = _rope(head_dim, max_seq, base)
    return cos[:, : head_dim // 2], sin[:, : head_dim // 2]


def rotary_explicit_halves(x, cos, sin):
    seq, half = x.shape[-2], x.shape[-1] // 2
    c, s = cos[:seq, :half], sin[:seq, :half]
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)


def rotary_interleaved(x, cos, sin):
    seq, half = x.shape[-2], x.shape[-1] // 2
    c, s = cos[:seq, :half], sin[:seq, :half]
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rotary_wrong_direction(x, cos, sin):
    seq = x.shape[-2]
    return x * cos[:seq] - _rotate_half(x) * sin[:seq]


def rotary_rotate_half_swapped(x, cos, sin):
    seq = x.shape[-2]
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos[:seq] + torch.cat((x2, -x1), dim=-1) * sin[:seq]


def rotary_whole_table(x, cos, sin):
    return x * cos + _rotate_half(x) * sin


def rotary_float32(x, cos, sin):
    return rotary_explicit_halves(x.float(), cos, sin)


# --------------------------------------------------------------------------------------------
# Lab 04: the decoder block


def _block(
    x,
    memory,
    parts,
    memory_mask,
    *,
    pre_norm=True,
    causal=True,
    cross_mask="memory",
    residual=(True, True, True),
    norms=("self_attn_norm", "cross_attn_norm", "mlp_norm"),
    cross=True,
):
    seq = x.shape[1]
    self_mask = attention.causal_mask(seq) if causal else None
    if cross_mask == "self":  # memory_mask given to the self-attention instead
        self_mask, memory_mask = attention.combine_masks(self_mask, memory_mask), None
    elif cross_mask == "none":
        memory_mask = None
    sublayers = [lambda h: parts["self_attn"](h, mask=self_mask)]
    if cross:
        sublayers.append(lambda h: parts["cross_attn"](h, context=memory, mask=memory_mask))
    sublayers.append(parts["mlp"])
    for sublayer, norm_name, keep in zip(sublayers, norms, residual, strict=False):
        norm = parts[norm_name]
        if pre_norm:
            out = sublayer(norm(x))
            x = x + out if keep else out
        else:
            x = norm(x + sublayer(x)) if keep else norm(sublayer(x))
    return x


def block_correct(x, memory, parts, memory_mask=None):
    return _block(x, memory, parts, memory_mask)


def block_combined_masks(x, memory, parts, memory_mask=None):
    """A correct variant: the causal mask from combine_masks, residuals named."""
    causal = attention.combine_masks(attention.causal_mask(x.shape[1]), None)
    residual = x
    x = residual + parts["self_attn"](parts["self_attn_norm"](x), mask=causal)
    residual = x
    h = parts["cross_attn_norm"](x)
    x = residual + parts["cross_attn"](h, context=memory, mask=memory_mask)
    return x + parts["mlp"](parts["mlp_norm"](x))


def block_post_norm(x, memory, parts, memory_mask=None):
    return _block(x, memory, parts, memory_mask, pre_norm=False)


def block_missing_ffn_residual(x, memory, parts, memory_mask=None):
    return _block(x, memory, parts, memory_mask, residual=(True, True, False))


def block_missing_attention_residual(x, memory, parts, memory_mask=None):
    return _block(x, memory, parts, memory_mask, residual=(False, True, True))


def block_not_causal(x, memory, parts, memory_mask=None):
    return _block(x, memory, parts, memory_mask, causal=False)


def block_cross_mask_ignored(x, memory, parts, memory_mask=None):
    return _block(x, memory, parts, memory_mask, cross_mask="none")


def block_memory_mask_on_self_attention(x, memory, parts, memory_mask=None):
    return _block(x, memory, parts, memory_mask, cross_mask="self")


def block_one_norm_for_all(x, memory, parts, memory_mask=None):
    return _block(x, memory, parts, memory_mask, norms=("self_attn_norm",) * 3)


def block_no_cross_attention(x, memory, parts, memory_mask=None):
    return _block(
        x,
        memory,
        parts,
        memory_mask,
        cross=False,
        norms=("self_attn_norm", "mlp_norm"),
        residual=(True, True),
    )


def block_cross_attention_to_itself(x, memory, parts, memory_mask=None):
    causal = attention.causal_mask(x.shape[1])
    x = x + parts["self_attn"](parts["self_attn_norm"](x), mask=causal)
    x = x + parts["cross_attn"](parts["cross_attn_norm"](x), mask=causal)
    return x + parts["mlp"](parts["mlp_norm"](x))


def block_final_norm(x, memory, parts, memory_mask=None):
    return parts["mlp_norm"](_block(x, memory, parts, memory_mask))


# --------------------------------------------------------------------------------------------
# Correct variants pass; each mutant fails on the case that exposes it

CORRECT_VARIANTS = [
    ("check_scaled_dot_product_attention", sdpa_where),
    ("check_causal_mask", causal_arange),
    ("check_padding_mask", padding_loop),
    ("check_split_heads", split_einops_style),
    ("check_merge_heads", merge_permute),
    ("check_multi_head_attention", mha_correct),
    ("check_repeat_kv", repeat_kv_interleave),
    ("check_rope_frequencies", rope_float64_then_cast),
    ("check_apply_rotary", rotary_explicit_halves),
    ("check_decoder_block", block_correct),
    ("check_decoder_block", block_combined_masks),
]


MUTANTS = [
    # (check, mutant, the first case that must fail, words the message must contain)
    (
        "check_scaled_dot_product_attention",
        sdpa_no_scale,
        "one query, 4 keys (1, 1, 1, 4)",
        "max abs error",
    ),
    (
        "check_scaled_dot_product_attention",
        sdpa_scale_by_dim,
        "one query, 4 keys (1, 1, 1, 4)",
        "max abs error",
    ),
    ("check_scaled_dot_product_attention", sdpa_mask_inverted, "causal mask (7, 7)", "received"),
    (
        "check_scaled_dot_product_attention",
        sdpa_mask_after_softmax,
        "causal mask (7, 7)",
        "max abs error",
    ),
    (
        "check_scaled_dot_product_attention",
        sdpa_nan_on_empty_rows,
        "a fully padded row: lengths [0, 4]",
        "received NaN",
    ),
    (
        "check_scaled_dot_product_attention",
        sdpa_large_negative_instead_of_inf,
        "a fully padded row: lengths [0, 4]",
        "max abs error",
    ),
    (
        "check_scaled_dot_product_attention",
        sdpa_softmax_over_queries,
        "one query, 4 keys (1, 1, 1, 4)",
        "max abs error",
    ),
    (
        "check_scaled_dot_product_attention",
        sdpa_naive_exp,
        "large scores (q and k x 30)",
        "max abs error",
    ),
    (
        "check_scaled_dot_product_attention",
        sdpa_float32,
        "float64 inputs",
        "expected dtype float64",
    ),
    ("check_causal_mask", causal_diagonal_excluded, "seq 1", "values differ"),
    ("check_causal_mask", causal_upper_triangle, "seq 4", "values differ"),
    (
        "check_causal_mask",
        causal_top_left,
        "one new query, 6 keys (decoding with a cache)",
        "values differ",
    ),
    ("check_causal_mask", causal_float, "seq 1", "expected dtype bool"),
    (
        "check_causal_mask",
        causal_square_only,
        "one new query, 6 keys (decoding with a cache)",
        "expected shape (1, 6)",
    ),
    ("check_padding_mask", padding_left, "lengths [3, 5, 1], seq 5", "values differ"),
    ("check_padding_mask", padding_off_by_one, "lengths [3, 5, 1], seq 5", "values differ"),
    ("check_padding_mask", padding_inverted, "lengths [3, 5, 1], seq 5", "values differ"),
    ("check_padding_mask", padding_2d, "lengths [3, 5, 1], seq 5", "expected shape (3, 1, 1, 5)"),
    ("check_padding_mask", padding_int, "lengths [3, 5, 1], seq 5", "expected dtype bool"),
    (
        "check_padding_mask",
        padding_query_axis,
        "lengths [3, 5, 1], seq 5",
        "expected shape (3, 1, 1, 5)",
    ),
    ("check_split_heads", split_reshape, "(2, 7, 12) into 3 heads", "max abs error"),
    ("check_split_heads", split_head_dim_major, "(1, 1, 4) into 2 heads", "max abs error"),
    ("check_merge_heads", merge_reshape, "(2, 3, 7, 4)", "max abs error"),
    ("check_merge_heads", merge_head_dim_major, "(1, 2, 1, 2)", "max abs error"),
    (
        "check_multi_head_attention",
        mha_split_without_transpose,
        "(2, 7, 12), 3 heads",
        "max abs error",
    ),
    (
        "check_multi_head_attention",
        mha_merge_without_transpose,
        "(2, 7, 12), 3 heads",
        "max abs error",
    ),
    ("check_multi_head_attention", mha_no_scale, "(2, 7, 12), 3 heads", "max abs error"),
    ("check_multi_head_attention", mha_scale_by_d_model, "(2, 7, 12), 3 heads", "max abs error"),
    (
        "check_multi_head_attention",
        mha_weights_not_transposed,
        "batch 1, seq 1, d_model 8, 2 heads",
        "max abs error",
    ),
    (
        "check_multi_head_attention",
        mha_no_output_projection,
        "batch 1, seq 1, d_model 8, 2 heads",
        "max abs error",
    ),
    ("check_multi_head_attention", mha_ignores_mask, "causal mask (6, 6)", "max abs error"),
    (
        "check_multi_head_attention",
        mha_head_dim_from_d_model,
        "4 heads of width 6 on d_model 12",
        "max abs error",
    ),
    ("check_repeat_kv", repeat_kv_tiled, "(2, 2, 5, 4), n_rep 3", "max abs error"),
    ("check_repeat_kv", repeat_kv_expand_wrong_order, "(2, 2, 5, 4), n_rep 3", "max abs error"),
    (
        "check_repeat_kv",
        repeat_kv_wrong_axis,
        "(2, 2, 5, 4), n_rep 3",
        "expected shape (2, 6, 5, 4)",
    ),
    (
        "check_rope_frequencies",
        rope_exponent_without_2,
        "head_dim 8, 5 positions",
        "cos: max abs error",
    ),
    (
        "check_rope_frequencies",
        rope_interleaved_table,
        "head_dim 8, 5 positions",
        "cos: max abs error",
    ),
    (
        "check_rope_frequencies",
        rope_positions_from_1,
        "head_dim 8, 5 positions",
        "cos: max abs error",
    ),
    (
        "check_rope_frequencies",
        rope_base_ignored,
        "base 500000 (LLaMA 3), head_dim 16, 10 positions",
        "cos: max abs error",
    ),
    (
        "check_rope_frequencies",
        rope_sin_cos_swapped,
        "head_dim 8, 5 positions",
        "cos: max abs error",
    ),
    (
        "check_rope_frequencies",
        rope_half_table,
        "head_dim 8, 5 positions",
        "cos: expected shape (5, 8)",
    ),
    (
        "check_apply_rotary",
        rotary_interleaved,
        "(2, 3, 7, 8), table of 7 positions",
        "max abs error",
    ),
    (
        "check_apply_rotary",
        rotary_wrong_direction,
        "(2, 3, 7, 8), table of 7 positions",
        "max abs error",
    ),
    (
        "check_apply_rotary",
        rotary_rotate_half_swapped,
        "(2, 3, 7, 8), table of 7 positions",
        "max abs error",
    ),
    ("check_apply_rotary", rotary_whole_table, "table of 16 positions, seq 5", "raised"),
    (
        "check_apply_rotary",
        rotary_float32,
        "float64 x with a float32 table",
        "expected dtype float64",
    ),
    (
        "check_decoder_block",
        block_post_norm,
        "batch 1, one target token, 3 source tokens",
        "max abs error",
    ),
    (
        "check_decoder_block",
        block_missing_ffn_residual,
        "batch 1, one target token, 3 source tokens",
        "max abs error",
    ),
    (
        "check_decoder_block",
        block_missing_attention_residual,
        "batch 1, one target token, 3 source tokens",
        "max abs error",
    ),
    (
        "check_decoder_block",
        block_one_norm_for_all,
        "batch 1, one target token, 3 source tokens",
        "max abs error",
    ),
    (
        "check_decoder_block",
        block_no_cross_attention,
        "batch 1, one target token, 3 source tokens",
        "max abs error",
    ),
    (
        "check_decoder_block",
        block_final_norm,
        "batch 1, one target token, 3 source tokens",
        "max abs error",
    ),
    (
        "check_decoder_block",
        block_not_causal,
        "(2, 7, 12) targets, 5 source tokens, 3 heads",
        "max abs error",
    ),
    (
        "check_decoder_block",
        block_cross_attention_to_itself,
        "batch 1, one target token, 3 source tokens",
        "max abs error",
    ),
    (
        "check_decoder_block",
        block_cross_mask_ignored,
        "source padding: memory_mask from lengths [5, 2]",
        "max abs error",
    ),
    (
        "check_decoder_block",
        block_memory_mask_on_self_attention,
        "source padding: memory_mask from lengths [5, 2]",
        "raised",
    ),
]


# --------------------------------------------------------------------------------------------
# Answers that call the library op the exercise asks for: flagged


def mha_torch_layer(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    layer = torch.nn.MultiheadAttention(x.shape[-1], n_heads, bias=False, batch_first=True)
    with torch.no_grad():
        layer.in_proj_weight.copy_(torch.cat([w_q, w_k, w_v]))
        layer.out_proj.weight.copy_(w_o)
        return layer(x, x, x, attn_mask=None if mask is None else ~mask, need_weights=False)[0]


def block_from_llmlab(x, memory, parts, memory_mask=None):
    attn, mlp = parts["self_attn"], parts["mlp"]
    config = BlockConfig(
        d_model=attn.d_model,
        n_heads=attn.n_heads,
        d_ff=mlp.d_ff,
        n_kv_heads=attn.n_kv_heads,
        head_dim=attn.head_dim,
        activation=mlp.activation,
        norm="rms" if isinstance(parts["self_attn_norm"], RMSNorm) else "layer",
        norm_first=True,
        bias=attn.q_proj.bias is not None,
    )
    block = DecoderBlock(config, cross_attention=True).to(x.dtype)
    block.load_state_dict(parts.state_dict())
    with torch.no_grad():
        return block(x, memory, memory_mask=memory_mask)


FORBIDDEN = [
    # (check, an answer that calls a forbidden op, the op as the message names it)
    (
        "check_scaled_dot_product_attention",
        sdpa_torch,
        "torch.nn.functional.scaled_dot_product_attention",
    ),
    (
        "check_scaled_dot_product_attention",
        student_copy(am.reference_scaled_dot_product_attention),
        "llmlab.nn.attention.scaled_dot_product_attention",
    ),
    (
        "check_causal_mask",
        student_copy(am.reference_causal_mask),
        "llmlab.nn.attention.causal_mask",
    ),
    (
        "check_padding_mask",
        student_copy(am.reference_padding_mask),
        "llmlab.nn.attention.padding_mask",
    ),
    (
        "check_multi_head_attention",
        student_copy(mha.reference_multi_head_attention),
        "llmlab.nn.attention.MultiHeadAttention.__init__",
    ),
    (
        "check_multi_head_attention",
        mha_torch_layer,
        "torch.nn.modules.activation.MultiheadAttention.__init__",
    ),
    ("check_repeat_kv", student_copy(mha.reference_repeat_kv), "llmlab.nn.attention.repeat_kv"),
    (
        "check_rope_frequencies",
        student_copy(rope.reference_rope_frequencies),
        "llmlab.nn.positional.rope_frequencies",
    ),
    (
        "check_apply_rotary",
        student_copy(rope.reference_apply_rotary),
        "llmlab.nn.positional.apply_rotary",
    ),
    ("check_decoder_block", block_from_llmlab, "llmlab.nn.blocks.DecoderBlock.__init__"),
]


def test_a_multi_head_attention_may_use_llmlabs_attention():
    # The lab's solution calls llmlab.nn.attention.scaled_dot_product_attention per head.
    def with_llmlab_attention(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
        q, k, v = (mha.reference_split_heads(x @ w.T, n_heads) for w in (w_q, w_k, w_v))
        heads = attention.scaled_dot_product_attention(q, k, v, mask)
        return mha.reference_merge_heads(heads) @ w_o.T

    assert mha.check_multi_head_attention(with_llmlab_attention).passed


def test_case_hints_point_at_the_mistake():
    empty = am.check_scaled_dot_product_attention(sdpa_nan_on_empty_rows).message
    assert "0/0 = NaN" in empty
    cache = am.check_causal_mask(causal_top_left).message
    assert "LAST seq_q" in cache
    width = mha.check_multi_head_attention(mha_head_dim_from_d_model).message
    assert "w_q.shape[0] // n_heads" in width
    causal = db.check_decoder_block(block_not_causal).message
    assert "causal_mask(seq)" in causal


def test_a_mask_of_the_wrong_dtype_is_told_its_type_not_the_diagonal():
    # A float mask fails on its dtype: the hint names the type, not a mistake in the triangle.
    message = am.check_causal_mask(causal_float).message
    assert "expected dtype bool, received float32. Hint: return a bool torch.Tensor" in message
    message = am.check_padding_mask(padding_int).message
    assert "Hint: return a bool torch.Tensor" in message
    # float32 for float64 is a precision slip: the case's own hint stays
    message = am.check_scaled_dot_product_attention(sdpa_float32).message
    assert "Hint: keep the inputs' dtype" in message


def test_decoder_parts_are_not_causal_and_match_the_block_names():
    from llmlab.nn.blocks import BlockConfig, DecoderBlock

    parts = db.decoder_parts(BlockConfig(d_model=8, n_heads=2, d_ff=16, norm_first=True))
    assert tuple(parts) == db.DECODER_PARTS
    assert not parts["self_attn"].is_causal
    block = DecoderBlock(BlockConfig(d_model=8, n_heads=2, d_ff=16, norm_first=True))
    assert set(block.state_dict()) == set(parts.state_dict())
    assert repr(parts) == "<2 heads, d_model 8>"
