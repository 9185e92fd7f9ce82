"""A LLaMA whose feed-forward layers are mixtures of experts, and what it costs.

:func:`moe_llama` builds chapter 03's :class:`~llmlab.models.Llama` and swaps each decoder
block's ``mlp`` (a SwiGLU FFN) for an :class:`~llmlab.moe.layer.MoE`; attention, norms,
embeddings and the training loop stay as they are. :func:`moe_loss_fn` is the loss for
:func:`llmlab.training.train`: cross-entropy plus the layers' balancing and z-losses, averaged
over the MoE layers. :func:`parameter_counts` says how many parameters the model has and how
many a token uses (the active ones: k of the E experts, the shared experts, everything else).

:func:`to_mixtral_block` copies an MoE layer's weights into transformers'
``MixtralSparseMoeBlock``, whose output the tests and notebook 1 compare with ours.
:func:`upcycle` turns a trained dense FFN into an MoE of copies (sparse upcycling).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from llmlab.moe.layer import MoE
from llmlab.training.losses import lm_loss

__all__ = [
    "MoESpec",
    "moe_layers",
    "moe_llama",
    "aux_losses",
    "moe_loss_fn",
    "parameter_counts",
    "to_mixtral_block",
    "upcycle",
]


@dataclass
class MoESpec:
    """What each MoE layer is: ``n_experts`` experts of width ``d_ff``, ``k`` per token, and
    the :class:`~llmlab.moe.layer.MoE` options."""

    n_experts: int
    k: int
    d_ff: int
    n_shared: int = 0
    capacity_factor: float | None = None
    order: str = "softmax_topk"
    renormalize: bool = True
    noisy: bool = False
    impl: str = "grouped"

    def layer(self, d_model: int) -> MoE:
        return MoE(d_model, self.d_ff, self.n_experts, self.k, self.n_shared,
                   self.capacity_factor, self.order, self.renormalize, self.noisy,
                   self.impl)  # fmt: skip


def moe_llama(config, spec: MoESpec, seed: int | None = None):
    """Chapter 03's Llama from ``config`` (a :class:`~llmlab.models.LlamaConfig`) with every
    block's FFN replaced by ``spec.layer(d_model)``; ``config.d_ff`` is ignored. ``seed``: draw
    all weights from it (the dense twin with the same seed shares attention and embeddings)."""
    from llmlab.models import Llama

    if not isinstance(spec, MoESpec):
        raise TypeError(f"spec: expected an MoESpec, got {type(spec).__name__}")
    if seed is not None:
        torch.manual_seed(seed)
    model = Llama(config)
    for block in model.layers:
        block.mlp = spec.layer(config.d_model)
    return model


def moe_layers(model: nn.Module) -> list[MoE]:
    """The MoE layers of ``model``, in order."""
    return [m for m in model.modules() if isinstance(m, MoE)]


def aux_losses(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(balance, z): the MoE layers' losses from the last forward pass, averaged over layers."""
    layers = [m for m in moe_layers(model) if m.stats is not None]
    if not layers:
        raise ValueError("model: no MoE layer has run a forward pass yet")
    balance = torch.stack([m.stats.balance_loss for m in layers]).mean()
    z = torch.stack([m.stats.z_loss for m in layers]).mean()
    return balance, z


def moe_loss_fn(balance: float = 0.01, z: float = 0.001):
    """A ``loss_fn`` for :func:`llmlab.training.train`: next-token cross-entropy plus
    ``balance`` times the balancing loss and ``z`` times the z-loss (Switch used 0.01;
    ST-MoE 0.001). ``balance=0, z=0``: the language-model loss alone."""
    for value, name in ((balance, "balance"), (z, "z")):
        if not value >= 0:
            raise ValueError(f"{name}: expected a number >= 0, got {value!r}")

    def loss_fn(model, batch, config):
        inputs, targets = batch
        loss = lm_loss(model(inputs), targets, config.label_smoothing)
        if balance or z:
            b, zz = aux_losses(model)
            loss = loss + balance * b + z * zz
        return loss

    return loss_fn


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """``total`` parameters (a tied embedding counted once), ``active`` per token (each MoE layer
    counts its router, its shared experts and k of its experts), and ``experts`` (all experts)."""
    total = sum(p.numel() for p in model.parameters())
    experts = inactive = 0
    for m in moe_layers(model):
        per_expert = sum(p[0].numel() for p in m.experts.parameters())
        experts += per_expert * m.n_experts
        inactive += per_expert * (m.n_experts - m.k)
    return {"total": total, "active": total - inactive, "experts": experts}


def to_mixtral_block(moe: MoE, implementation: str = "eager"):
    """transformers' ``MixtralSparseMoeBlock`` holding ``moe``'s weights (router, experts), in
    eval mode. Mixtral has no shared experts and no capacity limit, and renormalises the k
    weights after a softmax: ``moe`` must be built that way. ``implementation``: how
    transformers runs the experts (``"eager"``, its per-expert loop; ``"batched_mm"``;
    ``"grouped_mm"``)."""
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    if not isinstance(moe, MoE):
        raise TypeError(f"moe: expected an MoE, got {type(moe).__name__}")
    r = moe.router
    if (
        moe.n_shared
        or moe.capacity_factor is not None
        or r.order != "softmax_topk"
        or not r.renormalize
    ):
        raise ValueError(
            "moe: Mixtral's block has no shared experts or capacity limit and renormalises "
            "softmax-then-top-k weights; build the MoE with n_shared=0, capacity_factor=None, "
            "order='softmax_topk', renormalize=True"
        )
    ex = moe.experts
    config = MixtralConfig(hidden_size=ex.d_model, intermediate_size=ex.d_ff,
                           num_local_experts=ex.n_experts, num_experts_per_tok=moe.k,
                           router_jitter_noise=0.0)  # fmt: skip
    config._experts_implementation = implementation
    block = MixtralSparseMoeBlock(config).to(ex.w_gate.dtype)
    with torch.no_grad():
        block.gate.weight.copy_(r.weight)
        block.experts.gate_up_proj.copy_(torch.cat([ex.w_gate, ex.w_up], dim=1))
        block.experts.down_proj.copy_(ex.w_down)
    return block.eval()


def upcycle(mlp: nn.Module, n_experts: int, k: int, router_std: float = 0.0) -> MoE:
    """Sparse upcycling (Komatsuzaki et al. 2022): an MoE layer whose ``n_experts`` experts are
    all copies of a trained SwiGLU FFN ``mlp`` (``gate_proj``, ``up_proj``, ``down_proj``, no
    biases: chapter 01's FeedForward or transformers' LlamaMLP), top-``k``, renormalised.

    With ``router_std=0`` the router's weights are zero: every expert is equally likely, the
    top-k ties resolve to the same k experts for every token, each weighted 1/k, and the layer
    computes exactly what ``mlp`` computes. A small ``router_std`` breaks the tie so that
    training can make the copies diverge."""
    for name in ("gate_proj", "up_proj", "down_proj"):
        layer = getattr(mlp, name, None)
        if not isinstance(layer, nn.Linear) or layer.bias is not None:
            raise ValueError(
                f"mlp: expected a SwiGLU FFN with bias-free nn.Linear {name}, got {layer!r}"
            )
    if not router_std >= 0:
        raise ValueError(f"router_std: expected a number >= 0, got {router_std!r}")
    d_ff, d_model = mlp.gate_proj.weight.shape
    moe = MoE(d_model, d_ff, n_experts, k).to(mlp.gate_proj.weight.dtype)
    with torch.no_grad():
        moe.experts.w_gate.copy_(mlp.gate_proj.weight.expand(n_experts, -1, -1))
        moe.experts.w_up.copy_(mlp.up_proj.weight.expand(n_experts, -1, -1))
        moe.experts.w_down.copy_(mlp.down_proj.weight.expand(n_experts, -1, -1))
        moe.router.weight.normal_(std=router_std) if router_std else moe.router.weight.zero_()
    return moe
