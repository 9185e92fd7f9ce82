"""The router: which k of the E experts see each token, and with what weight.

    logits = x W_r^T                          (tokens, E), in float32 whatever x's dtype
    softmax-then-top-k:  p = softmax(logits); weights, experts = top_k(p)
                         (renormalise the k weights to sum to 1: GShard, Mixtral; or not:
                         Switch with k = 1, DeepSeek-V2)
    top-k-then-softmax:  experts = top_k(logits); weights = softmax over those k logits

The two orders choose the same experts (softmax keeps the order of the logits), and the second
equals the first renormalised. With k = 1 the second gives every token the weight 1: the
language-model loss then sends no gradient to the router, which is why Switch multiplies the
expert's output by its unnormalised probability.

Noisy top-k (Shazeer et al. 2017) adds Gaussian noise with a learned, input-dependent scale to
the logits in training, before the top-k, so that experts the router does not yet favour are
tried.

The capacity limit. With a fixed capacity C = ceil(capacity_factor * tokens * k / E) slots per
expert, assignments beyond C are dropped: the token's weight for that expert becomes 0 (the
layer outputs nothing for it there, and the residual connection carries the token on). Which
assignments go first: all first choices (in token order), then all second choices, ... as in
GShard, so that a token loses its second expert before another token loses its first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.validate import require_positive_int

__all__ = ["ORDERS", "RouterOutput", "TopKRouter", "route", "capacity", "capacity_mask"]

ORDERS = ("softmax_topk", "topk_softmax")


@dataclass
class RouterOutput:
    """What a router decides for T tokens among E experts.

    logits (T, E) float32; probs (T, E): softmax(logits), what the balancing loss reads;
    weights (T, k): each chosen expert's weight in the token's output; experts (T, k) int64.
    """

    logits: torch.Tensor
    probs: torch.Tensor
    weights: torch.Tensor
    experts: torch.Tensor


def route(
    logits: torch.Tensor, k: int, order: str = "softmax_topk", renormalize: bool = True
) -> RouterOutput:
    """Top-k routing from router ``logits`` (T, E); see the module docstring for ``order``.
    ``renormalize`` (softmax_topk only): divide the k weights by their sum."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise ValueError("logits: expected a float tensor (tokens, n_experts)")
    k = require_positive_int(k, "k")
    if k > logits.shape[1]:
        raise ValueError(f"k: expected at most the {logits.shape[1]} experts, got {k}")
    if order not in ORDERS:
        raise ValueError(f"order: expected one of {ORDERS}, got {order!r}")
    logits = logits.float()
    probs = logits.softmax(dim=-1)
    if order == "softmax_topk":
        weights, experts = probs.topk(k, dim=-1)
        if renormalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
    else:
        top, experts = logits.topk(k, dim=-1)
        weights = top.softmax(dim=-1)
    return RouterOutput(logits, probs, weights, experts)


class TopKRouter(nn.Module):
    """x (T, d_model) -> :class:`RouterOutput`, from a linear layer without bias (float32).

    ``noisy``: noisy top-k gating in training (a second linear layer gives the noise's scale
    through a softplus). ``order`` and ``renormalize`` as in :func:`route`.
    """

    def __init__(
        self,
        d_model: int,
        n_experts: int,
        k: int,
        order: str = "softmax_topk",
        renormalize: bool = True,
        noisy: bool = False,
    ):
        super().__init__()
        require_positive_int(d_model, "d_model")
        require_positive_int(n_experts, "n_experts")
        require_positive_int(k, "k")
        if k > n_experts:
            raise ValueError(f"k: expected at most n_experts={n_experts}, got {k}")
        if order not in ORDERS:
            raise ValueError(f"order: expected one of {ORDERS}, got {order!r}")
        self.n_experts, self.k, self.order, self.renormalize = n_experts, k, order, renormalize
        self.weight = nn.Parameter(torch.empty(n_experts, d_model))
        self.noise = nn.Linear(d_model, n_experts, bias=False) if noisy else None
        for p in self.parameters():
            p.muon = False  # a scoring head, not a hidden matrix: AdamW (muon_param_groups)
        self.reset_parameters()

    def reset_parameters(self, std: float = 0.02) -> None:
        nn.init.normal_(self.weight, std=std)
        if self.noise is not None:
            nn.init.zeros_(self.noise.weight)  # softplus(0) = 0.69: noise from the start

    def forward(self, x: torch.Tensor) -> RouterOutput:
        logits = F.linear(x.float(), self.weight.float())
        if self.noise is not None and self.training:
            scale = F.softplus(F.linear(x.float(), self.noise.weight.float()))
            logits = logits + torch.randn_like(logits) * scale
        return route(logits, self.k, self.order, self.renormalize)

    def extra_repr(self) -> str:
        return (
            f"n_experts={self.n_experts}, k={self.k}, order={self.order!r}, "
            f"renormalize={self.renormalize}, noisy={self.noise is not None}"
        )


def capacity(n_tokens: int, n_experts: int, k: int, capacity_factor: float) -> int:
    """Slots per expert: ceil(capacity_factor * n_tokens * k / n_experts)."""
    if not capacity_factor > 0:
        raise ValueError(f"capacity_factor: expected a number > 0, got {capacity_factor!r}")
    return math.ceil(capacity_factor * n_tokens * k / n_experts)


def capacity_mask(experts: torch.Tensor, n_experts: int, slots: int) -> torch.Tensor:
    """Which assignments fit: (T, k) bool, True where the assignment ``experts[t, j]`` is among
    the first ``slots`` of its expert, counting all first choices in token order, then all
    second choices, and so on."""
    if not isinstance(experts, torch.Tensor) or experts.dim() != 2:
        raise ValueError("experts: expected an int tensor (tokens, k)")
    slots = int(slots)
    if slots < 0:
        raise ValueError(f"slots: expected >= 0, got {slots}")
    choice_major = experts.t().reshape(-1)  # first choices of every token, then second ...
    one_hot = F.one_hot(choice_major, n_experts)
    position = (one_hot.cumsum(dim=0) * one_hot).sum(dim=-1) - 1  # place in its expert's queue
    return (position < slots).view(experts.shape[1], experts.shape[0]).t()
