"""BERT: an encoder-only Transformer pre-trained to fill in blanks (Devlin et al. 2019).

    ids, types -> LN(word + position + token-type embeddings) -> N x post-norm EncoderBlock
        -> hidden states -> MLM head (every position: which token was masked here?)
                         -> tanh pooler on [CLS] -> NSP head (is sentence B the real next one?)

Every position attends to every other (no causal mask), so each hidden state sees the whole
text on both sides: good for understanding, not for generating left to right. The masked-LM
head is a dense + GELU + LayerNorm transform followed by the word-embedding matrix (tied) and a
bias per vocabulary entry. :func:`bert_state_dict` maps ``transformers.BertForPreTraining``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.models.causal_lm import _init_weights
from llmlab.models.configs import BertConfig
from llmlab.nn.attention import padding_mask
from llmlab.nn.blocks import EncoderBlock
from llmlab.nn.norms import LayerNorm
from llmlab.nn.positional import LearnedPositionalEmbedding
from llmlab.validate import require_token_ids

__all__ = ["Bert", "BertOutput", "bert_state_dict"]


@dataclass
class BertOutput:
    """mlm_logits (batch, seq, vocab), nsp_logits (batch, 2), hidden (batch, seq, d_model)."""

    mlm_logits: torch.Tensor
    nsp_logits: torch.Tensor
    hidden: torch.Tensor


class Bert(nn.Module):
    """BERT with its two pre-training heads, from a :class:`~llmlab.models.BertConfig`."""

    def __init__(self, config: BertConfig):
        super().__init__()
        if not isinstance(config, BertConfig):
            raise TypeError(f"config: expected a BertConfig, got {type(config).__name__}")
        self.config = config
        d = config.d_model
        self.embed_tokens = nn.Embedding(config.vocab_size, d)
        self.embed_positions = LearnedPositionalEmbedding(config.max_seq, d)
        self.embed_types = nn.Embedding(config.type_vocab_size, d)
        self.embed_norm = LayerNorm(d, eps=config.norm_eps)
        self.dropout = nn.Dropout(config.dropout)
        block = config.block_config()
        self.layers = nn.ModuleList(EncoderBlock(block) for _ in range(config.n_layers))
        self.pooler = nn.Linear(d, d)
        self.mlm_dense = nn.Linear(d, d)
        self.mlm_norm = LayerNorm(d, eps=config.norm_eps)
        self.mlm_bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.nsp_head = nn.Linear(d, 2)
        self.apply(_init_weights)

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> BertOutput:
        """input_ids (batch, seq); token_type_ids (batch, seq) of 0 (sentence A) / 1 (B),
        default all 0; attention_mask (batch, seq), 1 on real tokens and 0 on padding."""
        config = self.config
        require_token_ids(
            input_ids, "input_ids", config.vocab_size, min_seq=1, max_seq=config.max_seq
        )
        batch, seq = input_ids.shape
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        require_token_ids(token_type_ids, "token_type_ids", config.type_vocab_size)
        if token_type_ids.shape != input_ids.shape:
            raise ValueError(
                f"token_type_ids: expected shape {tuple(input_ids.shape)}, "
                f"got {tuple(token_type_ids.shape)}"
            )
        mask = None
        if attention_mask is not None:
            if tuple(attention_mask.shape) != (batch, seq):
                raise ValueError(
                    f"attention_mask: expected shape {(batch, seq)}, got {tuple(attention_mask.shape)}"
                )
            mask = padding_mask(attention_mask)
        positions = torch.arange(seq, device=input_ids.device)
        x = (
            self.embed_tokens(input_ids)
            + self.embed_positions(positions)
            + self.embed_types(token_type_ids)
        )
        x = self.dropout(self.embed_norm(x))
        for layer in self.layers:
            x = layer(x, mask=mask)
        pooled = torch.tanh(self.pooler(x[:, 0]))  # the [CLS] position summarises the pair
        h = self.mlm_norm(F.gelu(self.mlm_dense(x)))
        mlm_logits = h @ self.embed_tokens.weight.t() + self.mlm_bias  # tied to the embeddings
        return BertOutput(mlm_logits=mlm_logits, nsp_logits=self.nsp_head(pooled), hidden=x)

    @classmethod
    def from_hf(cls, hf_model) -> Bert:
        """Our Bert with the weights of a ``transformers.BertForPreTraining``."""
        c = hf_model.config
        if c.hidden_act != "gelu":
            raise ValueError(f"hf_model: expected hidden_act 'gelu', got {c.hidden_act!r}")
        config = BertConfig(
            vocab_size=c.vocab_size, max_seq=c.max_position_embeddings, d_model=c.hidden_size,
            n_layers=c.num_hidden_layers, n_heads=c.num_attention_heads,
            d_ff=c.intermediate_size, type_vocab_size=c.type_vocab_size,
            norm_eps=c.layer_norm_eps,
        )  # fmt: skip
        model = cls(config)
        model.load_state_dict(bert_state_dict(hf_model.state_dict()))
        return model.eval()


_BERT_LAYER = {
    "attention.self.query": "self_attn.q_proj",
    "attention.self.key": "self_attn.k_proj",
    "attention.self.value": "self_attn.v_proj",
    "attention.output.dense": "self_attn.o_proj",
    "attention.output.LayerNorm": "self_attn_norm",
    "intermediate.dense": "mlp.up_proj",
    "output.dense": "mlp.down_proj",
    "output.LayerNorm": "mlp_norm",
}
_BERT_TOP = {
    "bert.embeddings.word_embeddings": "embed_tokens",
    "bert.embeddings.position_embeddings": "embed_positions",
    "bert.embeddings.token_type_embeddings": "embed_types",
    "bert.embeddings.LayerNorm": "embed_norm",
    "bert.pooler.dense": "pooler",
    "cls.predictions.transform.dense": "mlm_dense",
    "cls.predictions.transform.LayerNorm": "mlm_norm",
    "cls.seq_relationship": "nsp_head",
}


def bert_state_dict(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a BertForPreTraining state dict to :class:`Bert`'s names (explicit tables above)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in hf_state.items():
        if key in ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias"):
            continue  # the tied word embeddings and a second view of cls.predictions.bias
        if key.endswith("position_ids") or key.endswith("token_type_ids"):
            continue  # index buffers, not weights
        if key == "cls.predictions.bias":
            out["mlm_bias"] = value
            continue
        module, kind = key.rsplit(".", 1)
        if module.startswith("bert.encoder.layer."):
            i, rest = module.removeprefix("bert.encoder.layer.").split(".", 1)
            out[f"layers.{i}.{_BERT_LAYER[rest]}.{kind}"] = value
        elif module in _BERT_TOP:
            out[f"{_BERT_TOP[module]}.{kind}"] = value
        else:
            raise KeyError(f"hf_state: unexpected BERT key {key!r}")
    return out
