"""PaLM: the parallel block with multi-query attention and no biases (Chowdhery et al. 2022).

    ids -> embed -> N x [h = LN(x); x + attn(h, RoPE, MQA) + SwiGLU(h)] -> LN -> embed^T

Three changes to a LLaMA-like decoder, each for speed at scale: attention and FFN read the
same normed input and are added together (one norm per layer; the paper reports ~15% faster
training at large scale), all query heads share a single key/value head (multi-query: the KV
cache shrinks by n_heads), and no dense layer or norm has a bias.
"""

from __future__ import annotations

from llmlab.models.causal_lm import CausalLM
from llmlab.models.configs import PaLMConfig

__all__ = ["PaLM"]


class PaLM(CausalLM):
    """PaLM layout from a :class:`~llmlab.models.PaLMConfig`; see :class:`CausalLM` for the API."""

    def __init__(self, config: PaLMConfig):
        if not isinstance(config, PaLMConfig):
            raise TypeError(f"config: expected a PaLMConfig, got {type(config).__name__}")
        super().__init__(config)
