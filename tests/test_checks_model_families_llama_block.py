"""The checks of chapter 02's LLaMA-block lab (llmlab.checks.model_families.llama_block).

For every check: the reference passes, other correct answers pass too, plausible wrong answers
(mutants) fail on the case that exposes them, a NotImplementedError stub reports "not
implemented", garbage never raises, and the notebook's global seed does not move.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from check_contract import CheckContract, student_copy

from llmlab.checks.model_families import llama_block as mf
from llmlab.models import LlamaConfig
from llmlab.models.causal_lm import CausalLM
from llmlab.nn.ffn import FeedForward

CHECKS = {
    "check_rms_norm": (mf.check_rms_norm, mf.reference_rms_norm),
    "check_swiglu_mlp": (mf.check_swiglu_mlp, mf.reference_swiglu_mlp),
    "check_llama_attention": (mf.check_llama_attention, mf.reference_llama_attention),
    "check_llama_block": (mf.check_llama_block, mf.reference_llama_block),
}


GARBAGE = {
    "returns a list": lambda *a, **k: [0.1, 0.9],
    "returns a number": lambda *a, **k: 0.5,
    "returns a numpy array": lambda x, *a, **k: x.numpy(),
    "returns the wrong shape": lambda *a, **k: torch.zeros(3, 2, 1),
    "returns its first input": lambda x, *a, **k: x,
    "returns int64 zeros": lambda x, *a, **k: torch.zeros_like(x, dtype=torch.int64),
    "returns NaN": lambda x, *a, **k: torch.full_like(x, float("nan")),
    "takes no arguments": lambda: torch.zeros(1),
}


class TestContract(CheckContract):
    MODULES = (mf,)
    CHECKS = CHECKS
    GARBAGE = GARBAGE
    MIN_CASES = 5


# --------------------------------------------------------------------------------------------
# rms_norm


def rms_torch(x, weight, eps=1e-5):
    return F.rms_norm(x, (x.shape[-1],), weight, eps)


def rms_divide_by_sqrt(x, weight, eps=1e-5):
    return weight * (x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rms_layer_norm(x, weight, eps=1e-5):
    return F.layer_norm(x, (x.shape[-1],), weight, None, eps)


def rms_no_weight(x, weight, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def rms_eps_outside(x, weight, eps=1e-5):
    return weight * x / (x.pow(2).mean(-1, keepdim=True).sqrt() + eps)


def rms_sum_not_mean(x, weight, eps=1e-5):
    return weight * x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + eps)


def rms_eps_ignored(x, weight, eps=1e-5):
    return weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)


# --------------------------------------------------------------------------------------------
# swiglu_mlp


def swiglu_linear(x, gate_w, up_w, down_w):
    return F.linear(F.silu(F.linear(x, gate_w)) * F.linear(x, up_w), down_w)


def swiglu_gelu(x, gate_w, up_w, down_w):
    return (F.gelu(x @ gate_w.T) * (x @ up_w.T)) @ down_w.T


def swiglu_gate_up_swapped(x, gate_w, up_w, down_w):
    return (F.silu(x @ up_w.T) * (x @ gate_w.T)) @ down_w.T


def swiglu_no_transpose(x, gate_w, up_w, down_w):
    return (F.silu(x @ gate_w) * (x @ up_w)) @ down_w


def swiglu_silu_on_product(x, gate_w, up_w, down_w):
    return F.silu((x @ gate_w.T) * (x @ up_w.T)) @ down_w.T


def swiglu_sigmoid(x, gate_w, up_w, down_w):
    return (torch.sigmoid(x @ gate_w.T) * (x @ up_w.T)) @ down_w.T


# --------------------------------------------------------------------------------------------
# llama_attention


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _rotate_interleaved(x):
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


def make_attention(rope="half", causal=True, repeat="interleave", scale=True, rope_v=False):
    def llama_attention(x, q_w, k_w, v_w, o_w, cos, sin, n_heads, n_kv_heads):
        batch, seq, _ = x.shape
        hd = q_w.shape[0] // n_heads
        q = (x @ q_w.T).view(batch, seq, n_heads, hd).transpose(1, 2)
        k = (x @ k_w.T).view(batch, seq, n_kv_heads, hd).transpose(1, 2)
        v = (x @ v_w.T).view(batch, seq, n_kv_heads, hd).transpose(1, 2)
        c, s = cos[:seq].to(x.dtype), sin[:seq].to(x.dtype)
        if rope == "half":
            q, k = q * c + _rotate_half(q) * s, k * c + _rotate_half(k) * s
        elif rope == "interleaved":
            q, k = q * c + _rotate_interleaved(q) * s, k * c + _rotate_interleaved(k) * s
        if rope_v:
            v = v * c + _rotate_half(v) * s
        n_rep = n_heads // n_kv_heads
        if repeat == "interleave":
            k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)
        else:
            k, v = k.repeat(1, n_rep, 1, 1), v.repeat(1, n_rep, 1, 1)
        scores = q @ k.transpose(-2, -1)
        if scale:
            scores = scores / math.sqrt(hd)
        if causal:
            mask = torch.ones(seq, seq, dtype=torch.bool).tril()
            scores = scores.masked_fill(~mask, float("-inf"))
        out = torch.softmax(scores, dim=-1) @ v
        return out.transpose(1, 2).reshape(batch, seq, n_heads * hd) @ o_w.T

    return llama_attention


attn_correct = make_attention()
attn_interleaved_rope = make_attention(rope="interleaved")
attn_no_rope = make_attention(rope=None)
attn_not_causal = make_attention(causal=False)
attn_repeat_tiled = make_attention(repeat="tile")
attn_no_scale = make_attention(scale=False)
attn_rope_on_v = make_attention(rope_v=True)


def attn_sdpa(x, q_w, k_w, v_w, o_w, cos, sin, n_heads, n_kv_heads):
    batch, seq, _ = x.shape
    hd = q_w.shape[0] // n_heads
    q = (x @ q_w.T).view(batch, seq, n_heads, hd).transpose(1, 2)
    k = (x @ k_w.T).view(batch, seq, n_kv_heads, hd).transpose(1, 2)
    v = (x @ v_w.T).view(batch, seq, n_kv_heads, hd).transpose(1, 2)
    c, s = cos[:seq].to(x.dtype), sin[:seq].to(x.dtype)
    q, k = q * c + _rotate_half(q) * s, k * c + _rotate_half(k) * s
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    return out.transpose(1, 2).reshape(batch, seq, -1) @ o_w.T


# --------------------------------------------------------------------------------------------
# llama_block


def make_block(layout="pre", residual=(True, True), norm_names=("input", "post")):
    def llama_block(x, weights, cos, sin, n_heads, n_kv_heads, eps=1e-5):
        w = weights
        n1, n2 = (
            w[f"{n}_layernorm.weight"]
            if n in ("input", "post_attention")
            else w["input_layernorm.weight" if n == "input" else "post_attention_layernorm.weight"]
            for n in norm_names
        )

        def attn(h):
            return mf.reference_llama_attention(
                h,
                w["self_attn.q_proj.weight"],
                w["self_attn.k_proj.weight"],
                w["self_attn.v_proj.weight"],
                w["self_attn.o_proj.weight"],
                cos,
                sin,
                n_heads,
                n_kv_heads,
            )

        def mlp(h):
            return mf.reference_swiglu_mlp(
                h, w["mlp.gate_proj.weight"], w["mlp.up_proj.weight"], w["mlp.down_proj.weight"]
            )

        if layout == "post":
            x = mf.reference_rms_norm(x + attn(x), n1, eps)
            return mf.reference_rms_norm(x + mlp(x), n2, eps)
        if layout == "layernorm":
            h = F.layer_norm(x, (x.shape[-1],), n1, None, eps)
            x = x + attn(h)
            return x + mlp(F.layer_norm(x, (x.shape[-1],), n2, None, eps))
        a = attn(mf.reference_rms_norm(x, n1, eps))
        x = x + a if residual[0] else a
        m = mlp(mf.reference_rms_norm(x, n2, eps))
        return x + m if residual[1] else m

    return llama_block


block_correct = make_block()
block_post_norm = make_block(layout="post")
block_layer_norm = make_block(layout="layernorm")
block_no_attention_residual = make_block(residual=(False, True))
block_no_mlp_residual = make_block(residual=(True, False))
block_one_norm_weight = make_block(norm_names=("input", "input"))


llama_block_copy = student_copy(mf.reference_llama_block)  # the reference, typed by a student


def block_eps_ignored(x, weights, cos, sin, n_heads, n_kv_heads, eps=1e-5):
    return llama_block_copy(x, weights, cos, sin, n_heads, n_kv_heads)


def block_from_llmlab(x, weights, cos, sin, n_heads, n_kv_heads, eps=1e-5):
    # The chapter's module, loaded with the same weights, is a correct answer.
    d = x.shape[-1]
    d_ff, hd = (
        weights["mlp.up_proj.weight"].shape[0],
        weights["self_attn.q_proj.weight"].shape[0] // n_heads,
    )
    config = LlamaConfig(
        vocab_size=2,
        d_model=d,
        n_layers=1,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        d_ff=d_ff,
        head_dim=hd,
        norm_eps=eps,
    )
    layer = CausalLM(config).layers[0].to(x.dtype)
    state = {
        k.replace("input_layernorm", "self_attn_norm").replace(
            "post_attention_layernorm", "mlp_norm"
        ): v
        for k, v in weights.items()
    }
    layer.load_state_dict(state)
    with torch.no_grad():
        return layer(x, rope=(cos, sin))


# --------------------------------------------------------------------------------------------
# Correct variants pass; each mutant fails on the case that exposes it

CORRECT_VARIANTS = [
    ("check_rms_norm", rms_divide_by_sqrt),
    ("check_swiglu_mlp", swiglu_linear),
    ("check_llama_attention", attn_correct),
    ("check_llama_block", block_correct),
]


# --------------------------------------------------------------------------------------------
# Answers that call the library op the exercise asks for: flagged (rms_torch, attn_sdpa and
# block_from_llmlab compute the right values)


def swiglu_llmlab(x, gate_w, up_w, down_w):
    ffn = FeedForward(x.shape[-1], gate_w.shape[0], activation="swiglu", bias=False).to(x.dtype)
    with torch.no_grad():
        for linear, w in ((ffn.gate_proj, gate_w), (ffn.up_proj, up_w), (ffn.down_proj, down_w)):
            linear.weight.copy_(w)
        return ffn(x)


FORBIDDEN = [
    # (check, an answer that calls a forbidden op, the op as the message names it)
    ("check_rms_norm", rms_torch, "torch.nn.functional.rms_norm"),
    ("check_swiglu_mlp", swiglu_llmlab, "llmlab.nn.ffn.FeedForward.__init__"),
    (
        "check_llama_attention",
        attn_sdpa,
        "torch.nn.functional.scaled_dot_product_attention",
    ),
    (
        "check_llama_attention",
        student_copy(mf.reference_llama_attention),
        "llmlab.nn.positional.apply_rotary",
    ),
    ("check_llama_block", block_from_llmlab, "llmlab.models.causal_lm.CausalLM.__init__"),
]


MUTANTS = [
    # (check, mutant, the first case that must fail, words the message must contain)
    ("check_rms_norm", rms_layer_norm, "one vector of width 8", "max abs error"),
    ("check_rms_norm", rms_no_weight, "one vector of width 8", "max abs error"),
    ("check_rms_norm", rms_eps_outside, "small inputs (x 0.01) with eps 0.1", "max abs error"),
    ("check_rms_norm", rms_sum_not_mean, "one vector of width 8", "max abs error"),
    ("check_rms_norm", rms_eps_ignored, "small inputs (x 0.01) with eps 0.1", "max abs error"),
    ("check_swiglu_mlp", swiglu_gelu, "(1, 1, 8), d_ff 8", "max abs error"),
    ("check_swiglu_mlp", swiglu_gate_up_swapped, "(1, 1, 8), d_ff 8", "max abs error"),
    ("check_swiglu_mlp", swiglu_no_transpose, "(1, 1, 8), d_ff 8", "max abs error"),
    ("check_swiglu_mlp", swiglu_silu_on_product, "(1, 1, 8), d_ff 8", "max abs error"),
    ("check_swiglu_mlp", swiglu_sigmoid, "(1, 1, 8), d_ff 8", "max abs error"),
    (
        "check_llama_attention",
        attn_interleaved_rope,
        "(2, 6, 16), 4 heads, 4 kv heads",
        "max abs error",
    ),
    ("check_llama_attention", attn_no_rope, "(2, 6, 16), 4 heads, 4 kv heads", "max abs error"),
    ("check_llama_attention", attn_not_causal, "(2, 6, 16), 4 heads, 4 kv heads", "max abs error"),
    ("check_llama_attention", attn_no_scale, "(2, 6, 16), 4 heads, 4 kv heads", "max abs error"),
    ("check_llama_attention", attn_rope_on_v, "(2, 6, 16), 4 heads, 4 kv heads", "max abs error"),
    (
        "check_llama_attention",
        attn_repeat_tiled,
        "GQA: 6 heads sharing 2 kv heads, (2, 5, 24)",
        "max abs error",
    ),
    (
        "check_llama_block",
        block_post_norm,
        "(1, 4, 16), d_ff 24, 4 heads, 2 kv heads",
        "max abs error",
    ),
    (
        "check_llama_block",
        block_layer_norm,
        "(1, 4, 16), d_ff 24, 4 heads, 2 kv heads",
        "max abs error",
    ),
    (
        "check_llama_block",
        block_no_attention_residual,
        "(1, 4, 16), d_ff 24, 4 heads, 2 kv heads",
        "max abs error",
    ),
    (
        "check_llama_block",
        block_no_mlp_residual,
        "(1, 4, 16), d_ff 24, 4 heads, 2 kv heads",
        "max abs error",
    ),
    (
        "check_llama_block",
        block_one_norm_weight,
        "(1, 4, 16), d_ff 24, 4 heads, 2 kv heads",
        "max abs error",
    ),
    ("check_llama_block", block_eps_ignored, "eps 0.5", "max abs error"),
]


def test_case_hints_point_at_the_mistake():
    assert "INSIDE the square root" in mf.check_rms_norm(rms_eps_outside).message
    assert "NOT subtract the mean" not in mf.check_rms_norm(rms_no_weight).message
    assert "repeat_interleave" in mf.check_llama_attention(attn_repeat_tiled).message
    assert "causal" in mf.check_llama_attention(attn_not_causal).message


def test_layer_weights_match_the_checkpoint_names():
    weights = mf.layer_weights(16, 24, 4, 2)
    assert tuple(weights) == mf.LAYER_WEIGHTS
    assert weights["self_attn.k_proj.weight"].shape == (8, 16)
    assert weights["mlp.down_proj.weight"].shape == (16, 24)
