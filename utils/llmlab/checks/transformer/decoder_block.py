"""Checks of chapter 01's decoder-block lab (``solutions/01_transformer/04_decoder_block.ipynb``).

    lab 04_decoder_block: decoder_block

``check_decoder_block(fn)`` compares ``fn`` with a pre-norm :class:`llmlab.nn.blocks.DecoderBlock`
loaded with the same weights, on named cases (one target token, a fully padded source, a
LLaMA-style block ...), prints one line and returns a :class:`llmlab.checks.CheckResult` whose
``.fn`` the lab keeps using. Inputs come from :mod:`llmlab.checks._inputs` and module weights
are drawn under a forked RNG, so a check never moves the notebook's seed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from llmlab.checks import Case, CheckResult, run_check
from llmlab.checks._inputs import lengths, randn
from llmlab.checks.transformer import FLOAT32_TOLERANCE
from llmlab.nn import attention
from llmlab.nn.blocks import BlockConfig, DecoderBlock
from llmlab.nn.norms import RMSNorm

#: Library blocks that compute a whole answer: an answer that builds one is flagged (the
#: solution uses llmlab.nn.attention's causal_mask and the given parts).
FORBID_BLOCK = ("llmlab.nn.blocks", "torch.nn.modules.transformer")

#: The sub-modules of a decoder block, in the order a pre-norm forward uses them.
DECODER_PARTS = ("self_attn_norm", "self_attn", "cross_attn_norm", "cross_attn", "mlp_norm", "mlp")

# --------------------------------------------------------------------------------------------
# Reference: the chapter's tested block with the given weights


def reference_decoder_block(
    x: torch.Tensor,
    memory: torch.Tensor,
    parts: nn.ModuleDict,
    memory_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """:class:`llmlab.nn.blocks.DecoderBlock` (pre-norm) loaded with the weights of ``parts``.

    parts: the sub-modules named in :data:`DECODER_PARTS`; ``parts["self_attn"]`` is a plain
    (non-causal) :class:`~llmlab.nn.attention.MultiHeadAttention`, the block makes it causal.
    """
    block = _block_from_parts(parts)
    with torch.no_grad():
        return block(x, memory, memory_mask=memory_mask)


def _block_from_parts(parts: nn.ModuleDict) -> DecoderBlock:
    """A pre-norm DecoderBlock with the sizes and the weights of ``parts``."""
    attn, mlp, norm = parts["self_attn"], parts["mlp"], parts["self_attn_norm"]
    config = BlockConfig(
        d_model=attn.d_model,
        n_heads=attn.n_heads,
        d_ff=mlp.d_ff,
        n_kv_heads=attn.n_kv_heads,
        head_dim=attn.head_dim,
        attn_scale=attn.scale,
        activation=mlp.activation,
        norm="rms" if isinstance(norm, RMSNorm) else "layer",
        norm_eps=norm.eps,
        norm_first=True,
        bias=attn.q_proj.bias is not None,
    )
    with torch.random.fork_rng(devices=[]):
        block = DecoderBlock(config, cross_attention=True)
    block = block.to(attn.q_proj.weight.dtype)
    block.load_state_dict(parts.state_dict())
    return block.eval()


# --------------------------------------------------------------------------------------------
# Inputs


class DecoderParts(nn.ModuleDict):
    """The sub-modules of a pre-norm decoder block by name (:data:`DECODER_PARTS`), shown on
    one line in a check's message."""

    def __repr__(self) -> str:
        attn = self["self_attn"]
        return f"<{attn.n_heads} heads, d_model {attn.d_model}>"


def decoder_parts(config: BlockConfig, seed: int = 0) -> DecoderParts:
    """Random sub-modules of a pre-norm decoder block, the self-attention NOT causal.

    Norm weights and biases are moved away from 1 and 0, so that skipping or sharing a norm
    changes the output. Drawn under a forked RNG: the global seed does not move.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        block = DecoderBlock(config, cross_attention=True)
        with torch.no_grad():
            for name, param in block.named_parameters():
                if "norm" in name:
                    param.add_(0.3 * torch.randn_like(param))
    parts = DecoderParts({name: getattr(block, name) for name in DECODER_PARTS})
    parts["self_attn"].is_causal = False
    return parts.eval()


def _decoder_args(
    batch: int,
    seq: int,
    src: int,
    seed: int,
    dtype: torch.dtype = torch.float32,
    src_lengths: tuple[int, ...] | None = None,
    **config: Any,
) -> tuple:
    """(x, memory, parts[, memory_mask]) for one decoder-block case."""
    parts = decoder_parts(BlockConfig(norm_first=True, **config), seed=seed).to(dtype)
    d_model = config["d_model"]
    x = randn(batch, seq, d_model, dtype=dtype, seed=seed + 1)
    memory = randn(batch, src, d_model, dtype=dtype, seed=seed + 2)
    if src_lengths is None:
        return x, memory, parts
    return x, memory, parts, attention.padding_mask(lengths(*src_lengths), src)


# --------------------------------------------------------------------------------------------
# Check


def check_decoder_block(decoder_block: Callable) -> CheckResult:
    """Check ``decoder_block(x, memory, parts, memory_mask=None)`` against a pre-norm
    :class:`llmlab.nn.blocks.DecoderBlock` with the same weights."""
    small = {"d_model": 8, "n_heads": 2, "d_ff": 16}
    mask_hint = (
        "the cross-attention reads the encoder output: parts['cross_attn'](h, "
        "context=memory, mask=memory_mask); the causal mask belongs to the "
        "self-attention only."
    )
    cases = [
        Case(
            "batch 1, one target token, 3 source tokens", _decoder_args(1, 1, 3, seed=110, **small)
        ),
        Case(
            "(2, 7, 12) targets, 5 source tokens, 3 heads",
            _decoder_args(2, 7, 5, seed=120, d_model=12, n_heads=3, d_ff=24, activation="gelu"),
            hint="self-attention must be causal: pass causal_mask(seq) as its mask (the given "
            "parts['self_attn'] is a plain, non-causal attention).",
        ),
        Case(
            "source padding: memory_mask from lengths [5, 2]",
            _decoder_args(2, 4, 5, seed=130, src_lengths=(5, 2), **small),
            hint=mask_hint,
        ),
        Case(
            "a fully padded source: lengths [0, 3]",
            _decoder_args(2, 3, 3, seed=140, src_lengths=(0, 3), **small),
            hint=mask_hint,
        ),
        Case(
            "LLaMA-style: RMSNorm, SwiGLU, no biases, 4 heads sharing 2 kv heads",
            _decoder_args(
                2,
                5,
                6,
                seed=150,
                d_model=16,
                n_heads=4,
                n_kv_heads=2,
                d_ff=24,
                activation="swiglu",
                norm="rms",
                bias=False,
            ),
        ),
        Case(
            "d_model 20, 5 heads, seq 9, 4 source tokens",
            _decoder_args(1, 9, 4, seed=160, d_model=20, n_heads=5, d_ff=36),
        ),
        Case(
            "float64 weights and inputs",
            _decoder_args(2, 4, 3, seed=170, dtype=torch.float64, **small),
        ),
    ]
    return run_check(
        "decoder_block",
        decoder_block,
        reference_decoder_block,
        cases,
        hint="pre-norm, each sub-layer with its own norm and a residual: "
        "x = x + self_attn(self_attn_norm(x), mask=causal); "
        "x = x + cross_attn(cross_attn_norm(x), context=memory, mask=memory_mask); "
        "x = x + mlp(mlp_norm(x)).",
        compare=FLOAT32_TOLERANCE,
        forbid=FORBID_BLOCK,
    )
