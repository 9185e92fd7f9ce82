"""LLaMA: RMSNorm, RoPE, SwiGLU and grouped-query attention, without biases (Touvron et al. 2023).

    ids -> embed_tokens -> N x [x + attn(RMSNorm(x), RoPE, GQA); x + SwiGLU(RMSNorm(x))]
        -> RMSNorm -> lm_head

Each choice replaces one of GPT-2's: RMSNorm (no mean, no bias) for LayerNorm, rotary
positions inside attention for a learned table (no maximum length in the weights), a gated
SwiGLU FFN with three matrices for the two-matrix GELU one, and fewer key/value heads than
query heads (GQA), which shrinks the KV cache.

:meth:`Llama.from_smollm2` builds SmolLM2-135M (a LLaMA with 30 layers, d_model 576, 9 query
heads sharing 3 kv heads, tied embeddings) from the course's offline files; its names map to
ours one to one (:func:`llama_state_dict`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from llmlab.models.causal_lm import CausalLM
from llmlab.models.configs import LlamaConfig

__all__ = ["Llama", "llama_config_from_hf", "llama_state_dict", "load_smollm2_llama"]


class Llama(CausalLM):
    """LLaMA layout from a :class:`~llmlab.models.LlamaConfig`; see :class:`CausalLM` for the API."""

    def __init__(self, config: LlamaConfig):
        if not isinstance(config, LlamaConfig):
            raise TypeError(f"config: expected a LlamaConfig, got {type(config).__name__}")
        super().__init__(config)

    @classmethod
    def from_smollm2(cls, dtype: torch.dtype = torch.float32) -> Llama:
        """SmolLM2-135M-Instruct as our Llama (eval mode), from ``llmlab.assets.prepare("smollm2")``."""
        return load_smollm2_llama(dtype)

    @classmethod
    def from_hf(cls, hf_model) -> Llama:
        """Our Llama with the weights of a ``transformers.LlamaForCausalLM``."""
        model = cls(llama_config_from_hf(hf_model.config.to_dict()))
        model.load_state_dict(llama_state_dict(hf_model.state_dict(), model.config))
        return model.to(next(hf_model.parameters()).dtype).eval()


def llama_config_from_hf(hf: dict) -> LlamaConfig:
    """A :class:`LlamaConfig` from a transformers LLaMA ``config.json`` (as a dict)."""
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size"):  # fmt: skip
        if key not in hf:
            raise ValueError(f"hf: a LLaMA config.json needs {key!r}; keys: {sorted(hf)}")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hf: expected hidden_act 'silu' (SwiGLU), got {hf['hidden_act']!r}")
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise ValueError("hf: this LLaMA has biases; llmlab's Llama has none")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"hf: only default RoPE is supported, got {rope.get('rope_type')!r}")
    rope_base = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    return LlamaConfig(
        vocab_size=hf["vocab_size"],
        d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"],
        n_kv_heads=hf.get("num_key_value_heads"),
        d_ff=hf["intermediate_size"],
        head_dim=hf.get("head_dim"),
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_base=float(rope_base),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )


def llama_state_dict(
    hf_state: dict[str, torch.Tensor], config: LlamaConfig
) -> dict[str, torch.Tensor]:
    """Map a LlamaForCausalLM state dict to :class:`Llama`'s names.

    model.embed_tokens -> embed_tokens, model.layers.i.input_layernorm -> layers.i.self_attn_norm,
    post_attention_layernorm -> mlp_norm, self_attn.* and mlp.* keep their names,
    model.norm -> norm, lm_head -> lm_head (the embedding when tied).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in hf_state.items():
        if key == "lm_head.weight":
            if not config.tie_embeddings:
                out[key] = value
            continue
        if not key.startswith("model."):
            raise KeyError(f"hf_state: unexpected LLaMA key {key!r}")
        key = key.removeprefix("model.")
        key = key.replace(".input_layernorm.", ".self_attn_norm.")
        key = key.replace(".post_attention_layernorm.", ".mlp_norm.")
        out[key] = value
    if config.tie_embeddings:
        out["lm_head.weight"] = out["embed_tokens.weight"]
    return out


def load_smollm2_llama(dtype: torch.dtype = torch.float32) -> Llama:
    """Build our Llama from SmolLM2's cached ``config.json`` and ``model.safetensors``.

    The tokenizer is the one of ``llmlab.assets.load_smollm2()`` (or ``tokenizer.json`` in the
    same folder). Returns the model in eval mode, on the CPU, in ``dtype``.
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype: expected a floating torch.dtype, got {dtype!r}")
    from safetensors.torch import load_file

    from llmlab.assets import prepare

    folder = Path(prepare("smollm2"))
    config = llama_config_from_hf(json.loads((folder / "config.json").read_text()))
    model = Llama(config)
    model.load_state_dict(llama_state_dict(load_file(folder / "model.safetensors"), config))
    return model.to(dtype).eval()
