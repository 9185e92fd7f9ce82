"""The decoder-only language model that GPT, LLaMA and PaLM share.

    token ids -> embedding [+ learned positions] -> N x DecoderBlock (no cross-attention)
              -> final norm -> lm_head -> logits over the vocabulary

The three families differ only in the choices inside: which norm, where positions enter
(added to the embedding, or RoPE inside attention), which FFN, how many key/value heads,
whether there are biases, and whether attention and FFN run one after the other or side by
side. Each family's config turns those choices into a :class:`~llmlab.nn.blocks.BlockConfig`
and this class stacks the blocks.

The KV cache. ``model(ids, cache=cache)`` treats ``ids`` as the positions that follow the
``cache.length`` already cached, appends their keys and values, and returns their logits:

    cache = model.new_cache()
    logits = model(prompt, cache=cache)                   # prefill
    logits = model(logits[:, -1:].argmax(-1), cache=cache)   # one new token, O(prefix) work

so each generated token costs one row of attention instead of a forward pass over the whole
prefix. The logits equal those of the full sequence without a cache (tests check 1e-5).

Activation (gradient) checkpointing. ``model.checkpoint_every = k`` makes training forward
passes keep only the input of every group of ``k`` blocks; backward recomputes each group's
inside from it. Saved activations fall from O(n_layers) to O(n_layers / k + k) (k ~ sqrt(n)
is the classic choice, Chen et al. 2016) for about one extra forward pass. Losses and
gradients are unchanged (tested); evaluation, ``no_grad`` and cached decoding ignore it.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from llmlab.nn.blocks import DecoderBlock
from llmlab.nn.cache import KVCache
from llmlab.nn.norms import make_norm
from llmlab.nn.positional import LearnedPositionalEmbedding, RotaryEmbedding
from llmlab.validate import require_positive_int, require_token_ids

__all__ = ["CausalLM"]


class CausalLM(nn.Module):
    """A stack of decoder blocks between a token embedding and an output head.

    Built by the families (:class:`~llmlab.models.GPT`, :class:`~llmlab.models.Llama`,
    :class:`~llmlab.models.PaLM`) from their config: ``config.block_config()`` gives the block,
    ``config.positions`` is ``"learned"`` or ``"rope"``, ``config.tie_embeddings`` shares the
    embedding matrix with the output head.

    Module names follow LLaMA's checkpoints (``embed_tokens``, ``layers.i.self_attn.q_proj``,
    ``layers.i.mlp.gate_proj``, ``norm``, ``lm_head``), so SmolLM2 loads with a short key map.
    """

    def __init__(self, config):
        super().__init__()
        self.config = config
        block = config.block_config()
        self.block_config = block
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.embed_positions = None
        self.rotary = None
        if config.positions == "learned":
            self.embed_positions = LearnedPositionalEmbedding(config.max_seq, config.d_model)
        else:
            head_dim = block.head_dim or config.d_model // config.n_heads
            self.rotary = RotaryEmbedding(head_dim, base=config.rope_base)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(
            DecoderBlock(block, cross_attention=False) for _ in range(config.n_layers)
        )
        # Pre-norm stacks end with one more norm; post-norm blocks already end normalised.
        self.norm = (
            make_norm(block.norm, config.d_model, eps=block.norm_eps, bias=block.bias)
            if block.norm_first
            else nn.Identity()
        )
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.apply(_init_weights)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self._checkpoint_every: int | None = None

    @property
    def checkpoint_every(self) -> int | None:
        """Blocks per activation-checkpointing group in training (None: no checkpointing)."""
        return self._checkpoint_every

    @checkpoint_every.setter
    def checkpoint_every(self, value: int | None) -> None:
        if value is not None:
            require_positive_int(value, "checkpoint_every")
        self._checkpoint_every = value

    def new_cache(self) -> KVCache:
        """An empty KV cache with one slot per layer, for ``forward(..., cache=...)``."""
        return KVCache(self.config.n_layers)

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """input_ids: (batch, seq) token ids -> logits (batch, seq, vocab_size), float.

        With ``cache``, ``input_ids`` are the positions ``cache.length`` .. ``cache.length +
        seq - 1``; their keys and values are appended to the cache.
        """
        return self.lm_head(self.hidden_states(input_ids, cache))

    def hidden_states(self, input_ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """The final-normed hidden states (batch, seq, d_model) that ``lm_head`` reads."""
        require_token_ids(input_ids, "input_ids", self.config.vocab_size, min_seq=1)
        if cache is not None and not isinstance(cache, KVCache):
            raise TypeError(f"cache: expected a KVCache or None, got {type(cache).__name__}")
        if cache is not None and cache.n_layers != self.config.n_layers:
            raise ValueError(
                f"cache: expected {self.config.n_layers} layers (use model.new_cache()), "
                f"got {cache.n_layers}"
            )
        start = 0 if cache is None else cache.length
        seq = input_ids.shape[1]
        positions = torch.arange(start, start + seq, device=input_ids.device)
        x = self.embed_tokens(input_ids)
        rope = None
        if self.embed_positions is not None:
            if start + seq > self.config.max_seq:
                raise ValueError(
                    f"input_ids: positions up to {start + seq - 1} exceed max_seq="
                    f"{self.config.max_seq} (learned positions cannot extrapolate)"
                )
            x = x + self.embed_positions(positions)
        else:
            rope = self.rotary(positions, dtype=x.dtype)
        x = self.dropout(x)
        every = self._checkpoint_every
        if every and cache is None and self.training and torch.is_grad_enabled():
            for lo in range(0, len(self.layers), every):
                x = checkpoint(self._run_layers, x, rope, lo, lo + every, use_reentrant=False)
        else:
            for i, layer in enumerate(self.layers):
                x = layer(x, rope=rope, cache=cache, layer_idx=i)
        return self.norm(x)

    def _run_layers(self, x: torch.Tensor, rope, lo: int, hi: int) -> torch.Tensor:
        for i in range(lo, min(hi, len(self.layers))):
            x = self.layers[i](x, rope=rope, layer_idx=i)
        return x

    def num_parameters(self) -> int:
        """Distinct parameters (a tied embedding counts once), as ``sum(p.numel())``."""
        return sum(p.numel() for p in self.parameters())


def _init_weights(module: nn.Module, std: float = 0.02) -> None:
    # GPT-2's initialisation: N(0, std) for every matrix, zero biases (norms keep ones/zeros).
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
