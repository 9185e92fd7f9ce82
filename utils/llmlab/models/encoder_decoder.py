"""The encoder-decoder Transformer: one model for chapter 01's toy translator and for T5.

    source ids -> embed (+ positions) -> N x EncoderBlock -> final norm ----------------+
    target ids -> embed (+ positions) -> N x DecoderBlock(causal self-attn, cross-attn) -> final norm
               -> head -> logits (batch, target_seq, vocab)

The encoder reads the whole source at once (every position sees every other); the decoder
reads the target shifted right and attends to the encoder's output in every block
(cross-attention), so it is trained on whole sequences (teacher forcing) yet generates left to
right. Two conventions of the same design, chosen by the config:

- **Vaswani et al. (2017)**, chapter 01 (:class:`EncoderDecoderConfig`'s defaults): absolute
  positions (sinusoidal or learned) added to the embeddings, LayerNorm, ReLU, biases; the
  token embedding is shared with the output head and multiplied by sqrt(d_model) on the way in
  (``tied_scale="input"``).
- **T5** (Raffel et al. 2020, :class:`~llmlab.models.T5Config`): no positions in the embeddings
  but a learned bias per head and relative-distance bucket added to every attention score
  (one table per stack, :class:`llmlab.nn.positional.RelativePositionBias`), RMSNorm, no biases, attention scale
  1.0, and the decoder output multiplied by d_model^-0.5 before the tied head
  (``tied_scale="output"``).

Source positions that are padding are hidden from attention: pass ``attention_mask``
(batch, src_seq), 1 = real token, or set ``pad_id`` in the config to derive it from the ids.
Targets are right-padded, so the causal mask already keeps real positions from seeing padding.
:func:`llmlab.inference.generation.greedy_decode` generates from it; chapter 01 trains it with
:func:`llmlab.training.seq2seq.train_seq2seq`, chapter 03 with span corruption.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from llmlab.models.causal_lm import _init_weights
from llmlab.models.configs import EncoderDecoderConfig
from llmlab.nn.attention import combine_masks, padding_mask
from llmlab.nn.blocks import DecoderBlock, EncoderBlock
from llmlab.nn.norms import make_norm
from llmlab.nn.positional import (
    LearnedPositionalEmbedding,
    RelativePositionBias,
    SinusoidalPositionalEmbedding,
)
from llmlab.validate import require_token_ids

__all__ = ["EncoderDecoderConfig", "EncoderDecoder"]

# --------------------------------------------------------------------------------------------
# The model


class EncoderDecoder(nn.Module):
    """Encoder-decoder Transformer from an :class:`EncoderDecoderConfig`.

    ``model(input_ids, decoder_input_ids, attention_mask=None)`` -> logits
    (batch, target_seq, vocab). ``encode`` and ``decode`` expose the two halves; with
    ``return_weights`` the forward also returns the attention maps ``{"encoder": [...],
    "decoder_self": [...], "cross": [...]}``, one (batch, heads, q, k) tensor per layer.
    """

    def __init__(self, config: EncoderDecoderConfig):
        super().__init__()
        if not isinstance(config, EncoderDecoderConfig):
            raise TypeError(
                f"config: expected an EncoderDecoderConfig, got {type(config).__name__}"
            )
        self.config = config
        block = config.block_config()
        relative = config.positions == "relative"
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        if config.init_std is None:  # * sqrt(d_model) on the way in -> unit variance
            nn.init.normal_(self.embed_tokens.weight, std=config.d_model**-0.5)
        if config.positions == "sinusoidal":
            self.embed_positions = SinusoidalPositionalEmbedding(config.max_seq, config.d_model)
        elif config.positions == "learned":
            self.embed_positions = LearnedPositionalEmbedding(config.max_seq, config.d_model)
        if relative:
            self.encoder_bias = self._relative_bias(bidirectional=True)
        self.encoder_layers = nn.ModuleList(EncoderBlock(block) for _ in range(config.n_layers))
        self.encoder_norm = self._final_norm()
        if relative:
            self.decoder_bias = self._relative_bias(bidirectional=False)
        self.decoder_layers = nn.ModuleList(
            DecoderBlock(block, cross_attention=True) for _ in range(config.n_decoder_layers)
        )
        self.decoder_norm = self._final_norm()
        self.dropout = nn.Dropout(config.dropout)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.init_std is not None:
            self.apply(functools.partial(_init_weights, std=config.init_std))
        if config.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def _relative_bias(self, bidirectional: bool) -> RelativePositionBias:
        c = self.config
        return RelativePositionBias(c.num_buckets, c.n_heads, c.max_distance, bidirectional)

    def _final_norm(self) -> nn.Module:
        # Pre-norm blocks leave the residual stream un-normalised: one norm closes each stack.
        c = self.config
        if not c.norm_first:
            return nn.Identity()
        return make_norm(c.norm, c.d_model, eps=c.norm_eps, bias=c.bias)

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(ids)
        if self.config.tied_scale == "input":
            x = x * math.sqrt(self.config.d_model)
        if self.config.positions != "relative":
            x = x + self.embed_positions(torch.arange(ids.shape[1], device=ids.device))
        return self.dropout(x)

    def _require_ids(self, ids: torch.Tensor, name: str) -> None:
        max_seq = None if self.config.positions == "relative" else self.config.max_seq
        require_token_ids(ids, name, self.config.vocab_size, max_seq=max_seq)

    def source_mask(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """The (batch, src_seq) mask of real source tokens: ``attention_mask``, else
        ``input_ids != pad_id`` when the config has a ``pad_id``, else None (all real)."""
        if attention_mask is None and self.config.pad_id is not None:
            attention_mask = input_ids != self.config.pad_id
        return attention_mask

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        return_weights: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Source ids (batch, src_seq) -> encoder output (batch, src_seq, d_model)."""
        self._require_ids(input_ids, "input_ids")
        attention_mask = self.source_mask(input_ids, attention_mask)
        mask = None if attention_mask is None else padding_mask(attention_mask)
        if self.config.positions == "relative":
            seq = input_ids.shape[1]
            mask = combine_masks(self.encoder_bias(seq, seq, device=input_ids.device), mask)
        x = self._embed(input_ids)
        weights = []
        for layer in self.encoder_layers:
            if return_weights:
                x, w = layer(x, mask=mask, return_weights=True)
                weights.append(w["self"])
            else:
                x = layer(x, mask=mask)
        x = self.dropout(self.encoder_norm(x))
        return (x, weights) if return_weights else x

    def decode(
        self,
        decoder_input_ids: torch.Tensor,
        memory: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        return_weights: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        """Target ids (batch, tgt_seq) and the encoder output -> logits (batch, tgt_seq, vocab).

        ``attention_mask``: the source's (batch, src_seq) mask of real tokens, as for
        :meth:`encode` (:meth:`source_mask` gives it).
        """
        self._require_ids(decoder_input_ids, "decoder_input_ids")
        memory_mask = None if attention_mask is None else padding_mask(attention_mask)
        mask = None
        if self.config.positions == "relative":
            seq = decoder_input_ids.shape[1]
            mask = self.decoder_bias(seq, seq, device=decoder_input_ids.device)
        x = self._embed(decoder_input_ids)
        weights = {"decoder_self": [], "cross": []}
        for layer in self.decoder_layers:
            out = layer(
                x, memory=memory, mask=mask, memory_mask=memory_mask, return_weights=return_weights
            )
            if return_weights:
                x, w = out
                weights["decoder_self"].append(w["self"])
                weights["cross"].append(w["cross"])
            else:
                x = out
        x = self.dropout(self.decoder_norm(x))
        if self.config.tie_embeddings and self.config.tied_scale == "output":
            x = (
                x * self.config.d_model**-0.5
            )  # the tied head would otherwise see a d-times larger scale
        logits = self.lm_head(x)
        return (logits, weights) if return_weights else logits

    def forward(
        self,
        input_ids: torch.Tensor,
        decoder_input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        return_weights: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        attention_mask = self.source_mask(input_ids, attention_mask)
        if not return_weights:
            memory = self.encode(input_ids, attention_mask)
            return self.decode(decoder_input_ids, memory, attention_mask)
        memory, encoder_weights = self.encode(input_ids, attention_mask, return_weights=True)
        logits, weights = self.decode(decoder_input_ids, memory, attention_mask, True)
        return logits, {"encoder": encoder_weights, **weights}

    def num_parameters(self) -> int:
        """Trainable parameters, tied weights counted once."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
