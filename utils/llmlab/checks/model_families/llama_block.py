"""Checks of chapter 02's LLaMA-block lab (``solutions/02_model_families/02_llama_block.ipynb``):
one LLaMA decoder layer in plain torch.

    lab 02_llama_block: rms_norm, swiglu_mlp, llama_attention, llama_block

Each ``check_NAME(fn)`` compares ``fn`` with ``reference_NAME`` on named cases, prints one line
and returns a :class:`llmlab.checks.CheckResult` whose ``.fn`` the lab keeps using::

    rms_norm = check_rms_norm(rms_norm).fn

Weights follow ``nn.Linear``'s layout (out_features, in_features), as in SmolLM2's checkpoint,
so ``x @ w.T`` applies one. RoPE uses the rotate-half layout of transformers' LLaMA.

The references are written out as functions of raw weight tensors, the lab's convention;
:mod:`llmlab.nn` holds the same layers as modules that own their weights. The attention reuses
:mod:`llmlab.nn.attention` and :mod:`llmlab.nn.positional` for masks, RoPE and kv heads.
Inputs come from :mod:`llmlab.checks._inputs`, so a check never moves the notebook's seed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from llmlab.checks import Case, CheckResult, compare_tensors, run_check
from llmlab.checks._inputs import randn
from llmlab.nn import attention, positional

#: The weights of one LLaMA layer, named as in a transformers checkpoint (``model.layers.i.``
#: stripped).
LAYER_WEIGHTS = (
    "input_layernorm.weight",
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "post_attention_layernorm.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
)

#: Library layers that compute a whole answer: an answer that calls one is flagged.
_HF_LLAMA = "transformers.models.llama.modeling_llama"
FORBID_RMS_NORM = (
    "torch.nn.functional.rms_norm",
    "torch.nn.modules.normalization.RMSNorm",
    "llmlab.nn.norms",
    f"{_HF_LLAMA}.LlamaRMSNorm",
)
FORBID_SWIGLU = ("llmlab.nn.ffn", f"{_HF_LLAMA}.LlamaMLP")
_LLMLAB_MODELS = ("llmlab.models.causal_lm", "llmlab.models.llama")
FORBID_LLAMA_ATTENTION = (
    "torch.nn.functional.scaled_dot_product_attention",
    "llmlab.nn.attention",
    "llmlab.nn.positional",
    *_LLMLAB_MODELS,
    _HF_LLAMA,
)
FORBID_LLAMA_BLOCK = ("llmlab.nn.blocks", *_LLMLAB_MODELS, _HF_LLAMA)

# --------------------------------------------------------------------------------------------
# References: what a correct answer returns


def reference_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """weight * x / sqrt(mean(x^2 over the last dim) + eps), statistics in float32 at least."""
    x32 = x.float() if x.element_size() < 4 else x
    normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype)


def reference_swiglu_mlp(
    x: torch.Tensor, gate_w: torch.Tensor, up_w: torch.Tensor, down_w: torch.Tensor
) -> torch.Tensor:
    """down(silu(gate(x)) * up(x)); weights (d_ff, d), (d_ff, d), (d, d_ff)."""
    return (F.silu(x @ gate_w.T) * (x @ up_w.T)) @ down_w.T


def reference_llama_attention(
    x: torch.Tensor,
    q_w: torch.Tensor,
    k_w: torch.Tensor,
    v_w: torch.Tensor,
    o_w: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    n_heads: int,
    n_kv_heads: int,
) -> torch.Tensor:
    """Causal grouped-query self-attention with RoPE: (batch, seq, d) -> (batch, seq, d).

    q_w (n_heads * head_dim, d), k_w and v_w (n_kv_heads * head_dim, d), o_w (d, n_heads *
    head_dim); cos, sin (seq, head_dim) for positions 0 .. seq-1 (rotate-half layout).
    """
    batch, seq, _ = x.shape
    head_dim = q_w.shape[0] // n_heads
    q = (x @ q_w.T).view(batch, seq, n_heads, head_dim).transpose(1, 2)
    k = (x @ k_w.T).view(batch, seq, n_kv_heads, head_dim).transpose(1, 2)
    v = (x @ v_w.T).view(batch, seq, n_kv_heads, head_dim).transpose(1, 2)
    q, k = positional.apply_rotary(q, cos, sin), positional.apply_rotary(k, cos, sin)
    k = attention.repeat_kv(k, n_heads // n_kv_heads)
    v = attention.repeat_kv(v, n_heads // n_kv_heads)
    out = attention.scaled_dot_product_attention(
        q, k, v, mask=attention.causal_mask(seq, device=x.device)
    )
    return out.transpose(1, 2).reshape(batch, seq, n_heads * head_dim) @ o_w.T


def reference_llama_block(
    x: torch.Tensor,
    weights: dict[str, torch.Tensor],
    cos: torch.Tensor,
    sin: torch.Tensor,
    n_heads: int,
    n_kv_heads: int,
    eps: float = 1e-5,
) -> torch.Tensor:
    """One LLaMA decoder layer (pre-norm): x + attn(rms(x)), then + mlp(rms(x)).

    weights: the :data:`LAYER_WEIGHTS` of one layer, by name.
    """
    w = weights
    h = reference_rms_norm(x, w["input_layernorm.weight"], eps)
    x = x + reference_llama_attention(
        h, w["self_attn.q_proj.weight"], w["self_attn.k_proj.weight"],
        w["self_attn.v_proj.weight"], w["self_attn.o_proj.weight"], cos, sin, n_heads, n_kv_heads,
    )  # fmt: skip
    h = reference_rms_norm(x, w["post_attention_layernorm.weight"], eps)
    return x + reference_swiglu_mlp(
        h, w["mlp.gate_proj.weight"], w["mlp.up_proj.weight"], w["mlp.down_proj.weight"]
    )


# --------------------------------------------------------------------------------------------
# Inputs


def _weight(out: int, inp: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return randn(out, inp, dtype=dtype, seed=seed) / inp**0.5  # keeps activations ~unit size


def _norm_weight(d: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return 1.0 + 0.5 * randn(d, dtype=dtype, seed=seed)  # away from 1: forgetting it shows


def _tolerance(received: Any, expected: torch.Tensor) -> str | None:
    # float64 cases check the dtype is kept; an RMSNorm with float32 statistics (llmlab's,
    # transformers') is still a correct answer there, hence 1e-6 rather than float64's 1e-9.
    if expected.dtype == torch.float64:
        return compare_tensors(received, expected, atol=1e-6, rtol=1e-6)
    return compare_tensors(received, expected, atol=1e-5, rtol=1e-4)


def layer_weights(
    d: int, d_ff: int, n_heads: int, n_kv_heads: int, head_dim: int | None = None,
    seed: int = 0, dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """Random weights of one LLaMA layer, named as :data:`LAYER_WEIGHTS`."""
    head_dim = head_dim or d // n_heads
    shapes = {
        "self_attn.q_proj.weight": (n_heads * head_dim, d),
        "self_attn.k_proj.weight": (n_kv_heads * head_dim, d),
        "self_attn.v_proj.weight": (n_kv_heads * head_dim, d),
        "self_attn.o_proj.weight": (d, n_heads * head_dim),
        "mlp.gate_proj.weight": (d_ff, d),
        "mlp.up_proj.weight": (d_ff, d),
        "mlp.down_proj.weight": (d, d_ff),
    }
    weights = {}
    for i, name in enumerate(LAYER_WEIGHTS):
        if name.endswith("layernorm.weight"):
            weights[name] = _norm_weight(d, seed + i, dtype)
        else:
            weights[name] = _weight(*shapes[name], seed=seed + i, dtype=dtype)
    return weights


def _rope(seq: int, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    return positional.rope_frequencies(head_dim, seq, base=base)


# --------------------------------------------------------------------------------------------
# The checks


def check_rms_norm(rms_norm: Callable) -> CheckResult:
    """Check ``rms_norm(x, weight, eps=1e-5)``."""

    def args(*shape: int, seed: int, gain: float = 1.0, shift: float = 0.0,
             dtype: torch.dtype = torch.float32) -> tuple:  # fmt: skip
        x = gain * randn(*shape, dtype=dtype, seed=seed) + shift
        return x, _norm_weight(shape[-1], seed + 1, dtype)

    cases = [
        Case("one vector of width 8", args(8, seed=200)),
        Case(
            "(2, 5, 16), inputs with mean 3",
            args(2, 5, 16, seed=201, shift=3.0),
            hint="RMSNorm does NOT subtract the mean: x / sqrt(mean(x**2) + eps).",
        ),
        Case(
            "small inputs (x 0.01) with eps 0.1",
            args(3, 12, seed=202, gain=0.01),
            {"eps": 0.1},
            hint="eps goes INSIDE the square root: torch.rsqrt(mean(x**2) + eps).",
        ),
        Case("width 1", args(4, 1, seed=203)),
        Case("(1, 3, 576), SmolLM2's width", args(1, 3, 576, seed=204)),
        Case("float64", args(2, 3, 10, seed=205, dtype=torch.float64)),
    ]
    return run_check(
        "rms_norm",
        rms_norm,
        reference_rms_norm,
        cases,
        hint="weight * x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps): the mean of "
        "squares over the LAST dim, eps inside the root, then multiply by the weight.",
        compare=_tolerance,
        forbid=FORBID_RMS_NORM,
    )


def check_swiglu_mlp(swiglu_mlp: Callable) -> CheckResult:
    """Check ``swiglu_mlp(x, gate_w, up_w, down_w)`` (weights in nn.Linear layout)."""

    def args(batch: int, seq: int, d: int, d_ff: int, seed: int,
             dtype: torch.dtype = torch.float32) -> tuple:  # fmt: skip
        return (randn(batch, seq, d, dtype=dtype, seed=seed),
                _weight(d_ff, d, seed + 1, dtype), _weight(d_ff, d, seed + 2, dtype),
                _weight(d, d_ff, seed + 3, dtype))  # fmt: skip

    cases = [
        Case("(1, 1, 8), d_ff 8", args(1, 1, 8, 8, seed=210)),
        Case(
            "(2, 5, 12), d_ff 20",
            args(2, 5, 12, 20, seed=211),
            hint="weights are (out, in) as in nn.Linear: x @ w.T.",
        ),
        Case("(3, 4, 6), d_ff 16", args(3, 4, 6, 16, seed=212)),
        Case("(1, 2, 64), d_ff 172", args(1, 2, 64, 172, seed=213)),
        Case("float64 (2, 3, 8), d_ff 12", args(2, 3, 8, 12, seed=214, dtype=torch.float64)),
    ]
    return run_check(
        "swiglu_mlp",
        swiglu_mlp,
        reference_swiglu_mlp,
        cases,
        hint="(F.silu(x @ gate_w.T) * (x @ up_w.T)) @ down_w.T: SiLU on the GATE projection "
        "only, multiplied by the up projection.",
        compare=_tolerance,
        forbid=FORBID_SWIGLU,
    )


def _attention_args(batch: int, seq: int, d: int, n_heads: int, n_kv_heads: int, seed: int,
                    head_dim: int | None = None, base: float = 10000.0,
                    dtype: torch.dtype = torch.float32) -> tuple:  # fmt: skip
    head_dim = head_dim or d // n_heads
    w = layer_weights(d, 8, n_heads, n_kv_heads, head_dim, seed=seed, dtype=dtype)
    cos, sin = _rope(seq, head_dim, base)
    return (randn(batch, seq, d, dtype=dtype, seed=seed + 50), w["self_attn.q_proj.weight"],
            w["self_attn.k_proj.weight"], w["self_attn.v_proj.weight"],
            w["self_attn.o_proj.weight"], cos, sin, n_heads, n_kv_heads)  # fmt: skip


def check_llama_attention(llama_attention: Callable) -> CheckResult:
    """Check ``llama_attention(x, q_w, k_w, v_w, o_w, cos, sin, n_heads, n_kv_heads)``."""
    cases = [
        Case(
            "(2, 6, 16), 4 heads, 4 kv heads",
            _attention_args(2, 6, 16, 4, 4, seed=220),
            hint="causal: position i attends to positions <= i; rotate q and k (not v) with "
            "x * cos + rotate_half(x) * sin, rotate_half on the two HALVES.",
        ),
        Case("one token (1, 1, 8), 2 heads", _attention_args(1, 1, 8, 2, 2, seed=221)),
        Case(
            "GQA: 6 heads sharing 2 kv heads, (2, 5, 24)",
            _attention_args(2, 5, 24, 6, 2, seed=222),
            hint="query head h uses kv head h // (n_heads // n_kv_heads): repeat each kv head "
            "in a row, k.repeat_interleave(n_rep, dim=1), not k.repeat(1, n_rep, 1, 1).",
        ),
        Case(
            "multi-query: 4 heads, 1 kv head, (1, 7, 16)", _attention_args(1, 7, 16, 4, 1, seed=223)
        ),
        Case(
            "head_dim 8 on d 12 (3 heads x 8 = 24), (1, 4, 12)",
            _attention_args(1, 4, 12, 3, 3, seed=224, head_dim=8),
            hint="head_dim = q_w.shape[0] // n_heads, which need not be d // n_heads.",
        ),
        Case(
            "SmolLM2's shape: 9 heads, 3 kv heads, head_dim 64, RoPE base 1e5, (1, 5, 576)",
            _attention_args(1, 5, 576, 9, 3, seed=225, head_dim=64, base=100000.0),
        ),
        Case(
            "float64 (2, 3, 8), 2 heads, 1 kv head",
            _attention_args(2, 3, 8, 2, 1, seed=226, dtype=torch.float64),
        ),
    ]
    return run_check(
        "llama_attention",
        llama_attention,
        reference_llama_attention,
        cases,
        hint="project (x @ w.T), split heads (batch, heads, seq, head_dim), RoPE on q and k, "
        "repeat kv heads (repeat_interleave), softmax(q k^T / sqrt(head_dim) + causal) v, "
        "merge heads, @ o_w.T.",
        compare=_tolerance,
        forbid=FORBID_LLAMA_ATTENTION,
    )


def _block_args(batch: int, seq: int, d: int, d_ff: int, n_heads: int, n_kv_heads: int,
                seed: int, head_dim: int | None = None, eps: float = 1e-5,
                dtype: torch.dtype = torch.float32) -> tuple:  # fmt: skip
    head_dim = head_dim or d // n_heads
    cos, sin = _rope(seq, head_dim)
    return ((randn(batch, seq, d, dtype=dtype, seed=seed + 60),
             layer_weights(d, d_ff, n_heads, n_kv_heads, head_dim, seed=seed, dtype=dtype),
             cos, sin, n_heads, n_kv_heads), {"eps": eps})  # fmt: skip


def check_llama_block(llama_block: Callable) -> CheckResult:
    """Check ``llama_block(x, weights, cos, sin, n_heads, n_kv_heads, eps=1e-5)``."""
    cases = [
        Case(
            "(1, 4, 16), d_ff 24, 4 heads, 2 kv heads", *_block_args(1, 4, 16, 24, 4, 2, seed=230)
        ),
        Case("one token (1, 1, 8), 2 heads", *_block_args(1, 1, 8, 16, 2, 2, seed=231)),
        Case("(2, 6, 12), d_ff 20, 3 heads, 1 kv head", *_block_args(2, 6, 12, 20, 3, 1, seed=232)),
        Case(
            "eps 0.5",
            *_block_args(1, 3, 8, 12, 2, 1, seed=233, eps=0.5),
            hint="pass eps to both RMSNorms.",
        ),
        Case(
            "head_dim 8 on d 12, (1, 5, 12)", *_block_args(1, 5, 12, 16, 3, 3, seed=234, head_dim=8)
        ),
        Case("float64 (2, 3, 8)", *_block_args(2, 3, 8, 12, 2, 2, seed=235, dtype=torch.float64)),
    ]
    return run_check(
        "llama_block",
        llama_block,
        reference_llama_block,
        cases,
        hint="pre-norm with two residuals: x = x + llama_attention(rms_norm(x, "
        "input_layernorm), ...); x = x + swiglu_mlp(rms_norm(x, post_attention_layernorm), "
        "...). No norm after the additions.",
        compare=_tolerance,
        forbid=FORBID_LLAMA_BLOCK,
    )
