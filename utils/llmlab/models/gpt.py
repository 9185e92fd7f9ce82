"""GPT: the decoder-only model of Radford et al. (GPT-1 2018, GPT-2 2019, GPT-3 2020).

    ids -> wte(ids) + wpe(positions) -> N x [x + attn(LN(x)); x + MLP(LN(x))] -> LN -> wte^T

Trained to predict the next token (causal language modelling); the output head reuses the
token embedding matrix (tied), so the model scores each vocabulary entry by a dot product with
its own input embedding.

:meth:`GPT.from_hf` copies the weights of a ``transformers.GPT2LMHeadModel``. Two details of
GPT-2's checkpoints need translating: its ``Conv1D`` layers store weights as (in, out), the
transpose of ``nn.Linear``'s (out, in), and one fused ``c_attn`` matrix holds q, k and v side
by side; :func:`gpt2_state_dict` splits and transposes them.
"""

from __future__ import annotations

import torch

from llmlab.models.causal_lm import CausalLM
from llmlab.models.configs import GPTConfig

__all__ = ["GPT", "gpt2_state_dict"]


class GPT(CausalLM):
    """GPT-2 layout from a :class:`~llmlab.models.GPTConfig`; see :class:`CausalLM` for the API."""

    def __init__(self, config: GPTConfig):
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config: expected a GPTConfig, got {type(config).__name__}")
        super().__init__(config)

    @classmethod
    def from_hf(cls, hf_model) -> GPT:
        """Our GPT with the weights of a ``transformers.GPT2LMHeadModel`` (any size)."""
        c = hf_model.config
        config = GPTConfig(
            vocab_size=c.vocab_size, max_seq=c.n_positions, d_model=c.n_embd,
            n_layers=c.n_layer, n_heads=c.n_head, d_ff=c.n_inner or 4 * c.n_embd,
            norm_eps=c.layer_norm_epsilon,
        )  # fmt: skip
        if c.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(
                f"hf_model: expected GPT-2's tanh GELU, got activation {c.activation_function!r}"
            )
        model = cls(config)
        model.load_state_dict(gpt2_state_dict(hf_model.state_dict()))
        return model.to(next(hf_model.parameters()).dtype)


def gpt2_state_dict(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a GPT2LMHeadModel state dict to :class:`GPT`'s names and layouts.

    transformer.wte -> embed_tokens, wpe -> embed_positions, h.i.ln_1 -> layers.i.self_attn_norm,
    h.i.attn.c_attn -> q_proj/k_proj/v_proj (split in three, transposed), attn.c_proj -> o_proj,
    ln_2 -> mlp_norm, mlp.c_fc -> mlp.up_proj, mlp.c_proj -> mlp.down_proj, ln_f -> norm.
    """
    out: dict[str, torch.Tensor] = {}
    renames = {"ln_1": "self_attn_norm", "ln_2": "mlp_norm", "attn.c_proj": "self_attn.o_proj",
               "mlp.c_fc": "mlp.up_proj", "mlp.c_proj": "mlp.down_proj"}  # fmt: skip
    for key, value in hf_state.items():
        if not key.startswith("transformer."):
            continue  # lm_head.weight is the tied wte
        key = key.removeprefix("transformer.")
        if key.startswith("wte."):
            out["embed_tokens.weight"] = value
            out["lm_head.weight"] = value
        elif key.startswith("wpe."):
            out["embed_positions.weight"] = value
        elif key.startswith("ln_f."):
            out["norm." + key.removeprefix("ln_f.")] = value
        elif key.startswith("h."):
            _, i, rest = key.split(".", 2)
            prefix = f"layers.{i}."
            if rest.startswith("attn.c_attn."):
                kind = rest.rsplit(".", 1)[1]  # weight (d, 3d) or bias (3d,)
                parts = value.chunk(3, dim=-1)
                for name, part in zip(("q_proj", "k_proj", "v_proj"), parts, strict=True):
                    out[f"{prefix}self_attn.{name}.{kind}"] = part.t() if kind == "weight" else part
                continue
            if rest in ("attn.bias", "attn.masked_bias"):
                continue  # causal-mask buffers of older checkpoints, not weights
            module, kind = rest.rsplit(".", 1)
            name = renames.get(module)
            if name is None:
                raise KeyError(f"hf_state: unexpected GPT-2 key {key!r}")
            is_conv = module != "ln_1" and module != "ln_2"
            out[f"{prefix}{name}.{kind}"] = value.t() if is_conv and kind == "weight" else value
    return {k: v.contiguous() for k, v in out.items()}
