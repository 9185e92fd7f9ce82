"""Counting by formula: parameters, FLOPs and bytes (one home for every such count).

Parameters. A Transformer's weights are a few kinds of matrices, each counted from the config:

    embedding  vocab * d (+ max_seq * d for learned positions, + types for BERT)
    attention  d * h * hd (q) + 2 * d * kv * hd (k, v: GQA/MQA shrink these) + h * hd * d (o)
    FFN        2 * d * d_ff (ReLU/GELU) or 3 * d * d_ff (SwiGLU: gate, up, down)
    norms      d (RMSNorm, bias-free LayerNorm) or 2 * d (LayerNorm) each
    head       vocab * d, or 0 when tied to the embedding

(+ biases where the family has them). With d_ff = 4d, MHA and no biases a layer holds
4d^2 + 8d^2 = 12 d^2, so a GPT has N ~ 12 * n_layers * d^2 without its embeddings: GPT-3's
96 layers of d = 12288 give 174 B. :func:`count_parameters` equals ``sum(p.numel())`` of the
built models exactly (tests check it).

FLOPs. A matrix of N weights multiplies each token's vector once in the forward pass: N
multiply-adds, 2N FLOPs. The backward pass does it twice (the gradient for the input and the
gradient for the weight): 4N. Hence the rule "training costs 6N FLOPs per token" (Kaplan et
al. 2020). Attention adds what has no weights: q k^T and weights @ v, 2 * seq * (h * hd)
FLOPs each per token and layer forward, so ``forward = 2 N_matmul + 4 n_layers seq h hd`` and
training is 3x that: ``6 N_matmul + 12 n_layers seq h hd`` (the PaLM paper's 6N + 12LHQT).
N_matmul (:func:`matmul_parameters`) counts the weights that multiply activations: every
linear layer and the output head (even when tied), not the embedding lookups, norms or biases.

Beyond one forward pass: :func:`training_flops` (C = 6 N D, the scaling laws' compute) and
:func:`naive_attention_memory` (the bytes of the (seq x seq) score matrix that FlashAttention
never stores).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmlab.models.configs import BertConfig, GPTConfig, LlamaConfig, PaLMConfig, T5Config
from llmlab.validate import require_positive_int

__all__ = [
    "parameter_breakdown",
    "count_parameters",
    "matmul_parameters",
    "flops_per_token",
    "PUBLISHED",
    "training_flops",
    "AttentionMemory",
    "naive_attention_memory",
]

_CONFIGS = (GPTConfig, LlamaConfig, PaLMConfig, BertConfig, T5Config)


def _attention(d: int, heads: int, kv_heads: int, head_dim: int, bias: bool) -> int:
    q_and_o = 2 * d * heads * head_dim
    k_and_v = 2 * d * kv_heads * head_dim
    biases = (heads * head_dim + 2 * kv_heads * head_dim + d) if bias else 0
    return q_and_o + k_and_v + biases


def _ffn(d: int, d_ff: int, gated: bool, bias: bool) -> int:
    n_in = 2 if gated else 1  # gate_proj and up_proj, or up_proj alone
    weights = (n_in + 1) * d * d_ff
    biases = (n_in * d_ff + d) if bias else 0
    return weights + biases


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.d_model // config.n_heads


def parameter_breakdown(config) -> dict[str, int]:
    """Parameters by kind: embedding, attention, ffn, norms, head, other (pooler, biases tables).

    ``config``: any of the five family configs. Sums to :func:`count_parameters`.
    """
    if not isinstance(config, _CONFIGS):
        raise TypeError(
            f"config: expected one of {[c.__name__ for c in _CONFIGS]}, got {type(config).__name__}"
        )
    d, L, V = config.d_model, config.n_layers, config.vocab_size
    hd = _head_dim(config)
    parts = dict(embedding=V * d, attention=0, ffn=0, norms=0, head=0, other=0)
    if isinstance(config, GPTConfig):
        if config.positions == "learned":
            parts["embedding"] += config.max_seq * d
        parts["attention"] = L * _attention(d, config.n_heads, config.n_heads, hd, bias=True)
        parts["ffn"] = L * _ffn(d, config.d_ff, gated=config.activation == "swiglu", bias=True)
        parts["norms"] = (2 * L + (1 if config.norm_first else 0)) * 2 * d
        parts["head"] = 0 if config.tie_embeddings else V * d
    elif isinstance(config, (LlamaConfig, PaLMConfig)):
        kv = config.n_kv_heads or config.n_heads
        parts["attention"] = L * _attention(d, config.n_heads, kv, hd, bias=False)
        parts["ffn"] = L * _ffn(d, config.d_ff, gated=True, bias=False)
        norms_per_layer = 1 if isinstance(config, PaLMConfig) else 2  # PaLM: one, shared
        parts["norms"] = (norms_per_layer * L + 1) * d  # RMSNorm / bias-free LayerNorm: d each
        parts["head"] = 0 if config.tie_embeddings else V * d
    elif isinstance(config, BertConfig):
        parts["embedding"] += (config.max_seq + config.type_vocab_size) * d
        parts["attention"] = L * _attention(d, config.n_heads, config.n_heads, hd, bias=True)
        parts["ffn"] = L * _ffn(d, config.d_ff, gated=False, bias=True)
        parts["norms"] = (2 * L + 1 + 1) * 2 * d  # + embedding LN + MLM-transform LN
        parts["head"] = (d * d + d) + V + (2 * d + 2)  # MLM dense + vocab bias + NSP
        parts["other"] = d * d + d  # the pooler
    else:  # T5
        Ld = config.n_decoder_layers
        attn = _attention(d, config.n_heads, config.n_heads, hd, bias=False)
        ffn = _ffn(d, config.d_ff, gated=False, bias=False)
        parts["attention"] = L * attn + Ld * 2 * attn  # decoder: self + cross
        parts["ffn"] = (L + Ld) * ffn
        parts["norms"] = (2 * L + 1 + 3 * Ld + 1) * d
        parts["head"] = 0 if config.tie_embeddings else V * d
        parts["other"] = 2 * config.num_buckets * config.n_heads  # one bias table per stack
    return parts


def count_parameters(config) -> int:
    """Total parameters of the model ``config`` describes (a tied matrix counts once)."""
    return sum(parameter_breakdown(config).values())


def matmul_parameters(config) -> int:
    """Weights that multiply activations in a causal LM's forward pass (linear layers + head).

    The output head counts even when tied (the lookup at the input is not a matmul, the head
    is). Norms, biases and embedding lookups cost O(d) per token and are left out.
    """
    if not isinstance(config, (GPTConfig, LlamaConfig, PaLMConfig)):
        raise TypeError(
            f"config: expected a causal LM config (GPTConfig, LlamaConfig, PaLMConfig), "
            f"got {type(config).__name__}"
        )
    d, L, V = config.d_model, config.n_layers, config.vocab_size
    hd = _head_dim(config)
    kv = getattr(config, "n_kv_heads", None) or config.n_heads
    gated = not isinstance(config, GPTConfig) or config.activation == "swiglu"
    per_layer = _attention(d, config.n_heads, kv, hd, bias=False) + _ffn(
        d, config.d_ff, gated=gated, bias=False
    )
    return L * per_layer + V * d


def flops_per_token(config, seq: int, backward: bool = True) -> int:
    """Matmul FLOPs per token for a causal LM on sequences of length ``seq``.

    forward = 2 * matmul_parameters + 4 * n_layers * seq * n_heads * head_dim; with
    ``backward`` (a training step) three times that. Attention is counted over the full
    seq x seq score matrix, as naive attention computes it (masking does not skip work).
    """
    require_positive_int(seq, "seq")
    forward = 2 * matmul_parameters(config) + 4 * config.n_layers * seq * (
        config.n_heads * _head_dim(config)
    )
    return 3 * forward if backward else forward


# The published configs of the models the seed articles name (papers' tables).
PUBLISHED: dict[str, object] = {
    # GPT-1 (Radford et al. 2018): post-norm, 40,478-token BPE vocab, 512 positions.
    "GPT-1": GPTConfig(vocab_size=40478, max_seq=512, d_model=768, n_layers=12, n_heads=12,
                       norm_first=False),
    "GPT-2 XL": GPTConfig(vocab_size=50257, max_seq=1024, d_model=1600, n_layers=48,
                          n_heads=25),
    "GPT-3 175B": GPTConfig(vocab_size=50257, max_seq=2048, d_model=12288, n_layers=96,
                            n_heads=96),
    "BERT-base": BertConfig(vocab_size=30522, max_seq=512, d_model=768, n_layers=12,
                            n_heads=12),
    "T5-base": T5Config(vocab_size=32128, d_model=768, n_layers=12, n_heads=12, d_ff=3072),
    "LLaMA-7B": LlamaConfig(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32,
                            d_ff=11008),
    "LLaMA-65B": LlamaConfig(vocab_size=32000, d_model=8192, n_layers=80, n_heads=64,
                             d_ff=22016),
    "PaLM-540B": PaLMConfig(vocab_size=256000, d_model=18432, n_layers=118, n_heads=48,
                            head_dim=256, d_ff=73728),
}  # fmt: skip


# --------------------------------------------------------------------------------------------
# Compute and memory beyond one forward pass


def training_flops(n_params: float, n_tokens: float) -> float:
    """C = 6 N D: training FLOPs of a model with ``n_params`` weights on ``n_tokens`` tokens."""
    for value, name in ((n_params, "n_params"), (n_tokens, "n_tokens")):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{name}: expected a number > 0, got {value!r}")
    return 6.0 * n_params * n_tokens


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
