"""T5: an encoder-decoder with relative position buckets (Raffel et al. 2020).

    source ids -> embed -> N x EncoderBlock(+ position bias) -> RMSNorm ----------+
    target ids -> embed -> N x DecoderBlock(causal self-attn + bias, cross-attn) -> RMSNorm
               -> * d_model^-0.5 -> embed^T -> logits

No position enters the embeddings. Instead each attention score gets a learned scalar per
head that depends on the *bucketed* distance key - query: distances 0..7 have a bucket each,
longer ones share logarithmically wider buckets up to ``max_distance`` (beyond which all share
the last). The encoder's buckets distinguish left from right; the decoder's only look back.
One bias table per stack, computed once and added in every layer. There are no biases in any
matrix, the norm is RMS-only, the attention scale is 1.0 (the initialisation absorbs
1/sqrt(d)), and the tied output head rescales by d_model^-0.5. Every task is text to text
("translate English to German: ..." -> "...").
"""

from __future__ import annotations

import math

import torch
from torch import nn

from llmlab.models.causal_lm import _init_weights, check_input_ids
from llmlab.models.configs import T5Config
from llmlab.nn.attention import combine_masks, padding_mask
from llmlab.nn.blocks import DecoderBlock, EncoderBlock
from llmlab.nn.norms import RMSNorm

__all__ = ["T5", "relative_position_bucket", "t5_state_dict"]


def relative_position_bucket(
    relative_position: torch.Tensor,
    bidirectional: bool = True,
    num_buckets: int = 32,
    max_distance: int = 128,
) -> torch.Tensor:
    """Bucket index in [0, num_buckets) for each distance ``key_pos - query_pos``.

    bidirectional (encoder): half the buckets for keys on the right (distance > 0), half for
    the left and the query itself. Unidirectional (decoder): keys on the right never occur
    (causal), every bucket serves the distances looking back. Within a half, the first half of
    the buckets are exact distances 0, 1, ...; the rest grow logarithmically up to
    ``max_distance`` and saturate there.
    """
    if not isinstance(relative_position, torch.Tensor) or relative_position.is_floating_point():
        raise TypeError("relative_position: expected an integer tensor of key - query distances")
    if num_buckets < 2 or (bidirectional and num_buckets < 4):
        raise ValueError(f"num_buckets: expected >= 4 (>= 2 unidirectional), got {num_buckets}")
    buckets = torch.zeros_like(relative_position)
    n = num_buckets
    if bidirectional:
        n //= 2
        buckets = buckets + (relative_position > 0).long() * n  # keys to the right: upper half
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp(min=0)  # looking back only
    exact = n // 2
    if max_distance <= exact:
        raise ValueError(
            f"max_distance: expected > {exact} (the exact buckets), got {max_distance}"
        )
    # log-spaced buckets: exact + log(d / exact) / log(max_distance / exact) * (n - exact)
    scaled = torch.log(distance.float().clamp(min=1) / exact) / math.log(max_distance / exact)
    large = (exact + (scaled * (n - exact)).long()).clamp(max=n - 1)
    return buckets + torch.where(distance < exact, distance, large)


class RelativePositionBias(nn.Module):
    """One learned scalar per (bucket, head): the additive mask (1, heads, seq_q, seq_k)."""

    def __init__(self, num_buckets: int, n_heads: int, max_distance: int, bidirectional: bool):
        super().__init__()
        self.embedding = nn.Embedding(num_buckets, n_heads)
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.bidirectional = bidirectional

    def forward(self, seq_q: int, seq_k: int, device=None) -> torch.Tensor:
        query = torch.arange(seq_k - seq_q, seq_k, device=device)[:, None]  # last seq_q positions
        key = torch.arange(seq_k, device=device)[None, :]
        bucket = relative_position_bucket(
            key - query, self.bidirectional, self.num_buckets, self.max_distance
        )
        return self.embedding(bucket).permute(2, 0, 1).unsqueeze(0)


class T5(nn.Module):
    """T5 (v1.0 layout, ReLU FFN) from a :class:`~llmlab.models.T5Config`.

    ``model(input_ids, decoder_input_ids, attention_mask=None)`` -> logits
    (batch, target_seq, vocab). ``encode`` and ``decode`` expose the two halves.
    """

    def __init__(self, config: T5Config):
        super().__init__()
        if not isinstance(config, T5Config):
            raise TypeError(f"config: expected a T5Config, got {type(config).__name__}")
        self.config = config
        block = config.block_config()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder_bias = RelativePositionBias(
            config.num_buckets, config.n_heads, config.max_distance, bidirectional=True
        )
        self.encoder_layers = nn.ModuleList(EncoderBlock(block) for _ in range(config.n_layers))
        self.encoder_norm = RMSNorm(config.d_model, eps=config.norm_eps)
        self.decoder_bias = RelativePositionBias(
            config.num_buckets, config.n_heads, config.max_distance, bidirectional=False
        )
        self.decoder_layers = nn.ModuleList(
            DecoderBlock(block, cross_attention=True) for _ in range(config.n_decoder_layers)
        )
        self.decoder_norm = RMSNorm(config.d_model, eps=config.norm_eps)
        self.dropout = nn.Dropout(config.dropout)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.apply(_init_weights)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def encode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Source ids (batch, src_seq) -> encoder output (batch, src_seq, d_model)."""
        check_input_ids(input_ids, self.config.vocab_size)
        seq = input_ids.shape[1]
        bias = self.encoder_bias(seq, seq, device=input_ids.device)  # shared by every layer
        mask = combine_masks(bias, None if attention_mask is None else padding_mask(attention_mask))
        x = self.dropout(self.embed_tokens(input_ids))
        for layer in self.encoder_layers:
            x = layer(x, mask=mask)
        return self.dropout(self.encoder_norm(x))

    def decode(
        self,
        decoder_input_ids: torch.Tensor,
        memory: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Target ids (batch, tgt_seq) and the encoder output -> logits (batch, tgt_seq, vocab)."""
        check_input_ids(decoder_input_ids, self.config.vocab_size, "decoder_input_ids")
        seq = decoder_input_ids.shape[1]
        bias = self.decoder_bias(seq, seq, device=decoder_input_ids.device)
        memory_mask = None if attention_mask is None else padding_mask(attention_mask)
        x = self.dropout(self.embed_tokens(decoder_input_ids))
        for layer in self.decoder_layers:
            x = layer(x, memory=memory, mask=bias, memory_mask=memory_mask)
        x = self.dropout(self.decoder_norm(x))
        if self.config.tie_embeddings:
            x = (
                x * self.config.d_model**-0.5
            )  # the tied head would otherwise see a d-times larger scale
        return self.lm_head(x)

    def forward(
        self,
        input_ids: torch.Tensor,
        decoder_input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.decode(
            decoder_input_ids, self.encode(input_ids, attention_mask), attention_mask
        )

    @classmethod
    def from_hf(cls, hf_model) -> T5:
        """Our T5 with the weights of a ``transformers.T5ForConditionalGeneration`` (ReLU FFN)."""
        c = hf_model.config
        if c.feed_forward_proj != "relu":
            raise ValueError(
                f"hf_model: expected feed_forward_proj 'relu' (T5 v1.0), got {c.feed_forward_proj!r}"
            )
        config = T5Config(
            vocab_size=c.vocab_size, d_model=c.d_model, n_layers=c.num_layers,
            n_decoder_layers=c.num_decoder_layers, n_heads=c.num_heads, d_ff=c.d_ff,
            head_dim=c.d_kv, num_buckets=c.relative_attention_num_buckets,
            max_distance=c.relative_attention_max_distance, norm_eps=c.layer_norm_epsilon,
            tie_embeddings=getattr(c, "scale_decoder_outputs", c.tie_word_embeddings),
        )  # fmt: skip
        model = cls(config)
        model.load_state_dict(t5_state_dict(hf_model.state_dict(), config))
        return model.eval()


_T5_ATTN = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj"}


def t5_state_dict(hf_state: dict[str, torch.Tensor], config: T5Config) -> dict[str, torch.Tensor]:
    """Map a T5ForConditionalGeneration state dict to :class:`T5`'s names.

    encoder.block.i.layer.0 = self-attention (+ its norm), layer.1 = FFN; decoder.block.i.layer.0
    = self-attention, layer.1 = cross-attention (EncDecAttention), layer.2 = FFN. Block 0's
    ``relative_attention_bias`` is the stack's shared bias table.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in hf_state.items():
        if key in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
            continue  # views of shared.weight
        if key == "shared.weight":
            out["embed_tokens.weight"] = value
            continue
        if key == "lm_head.weight":
            out["lm_head.weight"] = value
            continue
        stack, rest = key.split(".", 1)
        if rest == "final_layer_norm.weight":
            out[f"{stack}_norm.weight"] = value
            continue
        _, i, _, sub, rest = rest.split(".", 4)  # block.i.layer.sub.rest
        prefix = f"{stack}_layers.{i}."
        if rest.startswith("SelfAttention.relative_attention_bias."):
            out[f"{stack}_bias.embedding.weight"] = value
        elif rest == "layer_norm.weight":
            names = ["self_attn_norm", "cross_attn_norm", "mlp_norm"]
            if stack == "encoder":
                names = ["self_attn_norm", "mlp_norm"]
            out[f"{prefix}{names[int(sub)]}.weight"] = value
        elif rest.startswith(("SelfAttention.", "EncDecAttention.")):
            module, proj, _ = rest.split(".")
            attn = "self_attn" if module == "SelfAttention" else "cross_attn"
            out[f"{prefix}{attn}.{_T5_ATTN[proj]}.weight"] = value
        elif rest.startswith("DenseReluDense."):
            proj = rest.split(".")[1]
            out[f"{prefix}mlp.{'up_proj' if proj == 'wi' else 'down_proj'}.weight"] = value
        else:
            raise KeyError(f"hf_state: unexpected T5 key {key!r}")
    if config.tie_embeddings:
        out["lm_head.weight"] = out["embed_tokens.weight"]
    return out
