"""The key/value cache of autoregressive decoding.

Generating token t+1 needs the keys and values of every earlier token in every layer. Without a
cache each step recomputes them for the whole prefix (O(t) work per layer per step, O(T^2) for
a text of T tokens); with one, each step computes k and v for the new token only and appends
them:

    cache = model.new_cache()
    logits = model(prompt_ids, cache=cache)          # prefill: fills every layer
    logits = model(next_ids[:, None], cache=cache)   # one step: positions start at cache.length

Layout per layer: ``k`` and ``v`` of shape (batch, n_kv_heads, seq, head_dim), stored *before*
grouped-query heads are repeated (that is where GQA saves memory), and *after* RoPE (a cached
key keeps the rotation of its own position).
"""

from __future__ import annotations

import torch

from llmlab.validate import require_int, require_positive_int

__all__ = ["KVCache"]


class KVCache:
    """Per-layer keys and values, grown along the sequence dim (dim 2) one call at a time."""

    def __init__(self, n_layers: int):
        self.n_layers = require_positive_int(n_layers, "n_layers")
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers

    @property
    def length(self) -> int:
        """How many positions are cached (those of layer 0; all layers agree between calls)."""
        k = self.keys[0]
        return 0 if k is None else k.shape[2]

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this call's ``k``, ``v`` (batch, heads, new, head_dim) to ``layer``; return all."""
        if self.keys[layer] is not None:
            k = torch.cat([self.keys[layer], k], dim=2)
            v = torch.cat([self.values[layer], v], dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows ``index`` (beam search: each surviving beam takes its parent's cache)."""
        for i in range(self.n_layers):
            if self.keys[i] is not None:
                self.keys[i] = self.keys[i].index_select(0, index.to(self.keys[i].device))
                self.values[i] = self.values[i].index_select(0, index.to(self.values[i].device))

    def crop(self, length: int) -> None:
        """Forget every position from ``length`` on (e.g. to rewind to a shared prompt)."""
        length = require_int(length, "length", 0)
        for i in range(self.n_layers):
            if self.keys[i] is not None:
                self.keys[i] = self.keys[i][:, :, :length]
                self.values[i] = self.values[i][:, :, :length]

    def nbytes(self) -> int:
        """Memory held by the cached tensors, in bytes."""
        return sum(t.numel() * t.element_size() for t in self.keys + self.values if t is not None)

    def __repr__(self) -> str:
        return f"KVCache(n_layers={self.n_layers}, length={self.length}, nbytes={self.nbytes()})"
