"""T5: an encoder-decoder with relative position buckets (Raffel et al. 2020).

    source ids -> embed -> N x EncoderBlock(+ position bias) -> RMSNorm ----------+
    target ids -> embed -> N x DecoderBlock(causal self-attn + bias, cross-attn) -> RMSNorm
               -> * d_model^-0.5 -> embed^T -> logits

T5 is :class:`~llmlab.models.encoder_decoder.EncoderDecoder` with T5's choices
(:class:`~llmlab.models.T5Config`): no position enters the embeddings; instead each attention
score gets a learned scalar per head that depends on the *bucketed* distance key - query
(:func:`~llmlab.nn.positional.relative_position_bucket`: distances 0..7 have a bucket
each, longer ones share logarithmically wider buckets up to ``max_distance``). The encoder's
buckets distinguish left from right; the decoder's only look back. One bias table per stack,
computed once and added in every layer. There are no biases in any matrix, the norm is
RMS-only, the attention scale is 1.0 (the initialisation absorbs 1/sqrt(d)), and the tied
output head rescales by d_model^-0.5. Every task is text to text ("translate English to
German: ..." -> "..."). This module adds what is T5's alone: loading transformers' weights.
"""

from __future__ import annotations

import torch

from llmlab.models.configs import T5Config
from llmlab.models.encoder_decoder import EncoderDecoder

__all__ = ["T5", "t5_state_dict"]


class T5(EncoderDecoder):
    """T5 (v1.0 layout, ReLU FFN) from a :class:`~llmlab.models.T5Config`.

    ``model(input_ids, decoder_input_ids, attention_mask=None)`` -> logits
    (batch, target_seq, vocab). ``encode`` and ``decode`` expose the two halves.
    """

    def __init__(self, config: T5Config):
        if not isinstance(config, T5Config):
            raise TypeError(f"config: expected a T5Config, got {type(config).__name__}")
        super().__init__(config)

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
