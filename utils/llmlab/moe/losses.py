"""The auxiliary losses that keep a router healthy.

Load balancing (Switch Transformer, Fedus et al. 2021, eq. 4-6):

    L_balance = E * sum_i f_i * P_i

f_i is the share of the tokens' assignments that went to expert i (a count: no gradient) and
P_i the router's mean probability for expert i over the same tokens (the full softmax over all
E experts, for every token: this is where the gradient flows). Both are 1/E when the load is
even, and then L_balance = 1, its minimum for a given f; a router that sends everything to one
expert with certainty scores E. With k > 1, f here counts all T * k assignments, so it still
sums to 1; transformers' ``load_balancing_loss_func`` counts each of the k choices separately
and returns k times this value.

Two mistakes this module's tests (and chapter 06's lab) guard against: averaging P over the
*chosen* experts only (then P_i has no pull on the experts that are starved), and applying the
softmax to something that is already a probability (softmax(softmax(z)) is nearly uniform for
small z, so P_i is about 1/E whatever the router does, and the loss stops pushing).

Router z-loss (ST-MoE, Zoph et al. 2022): the mean over tokens of logsumexp(logits)^2, which
keeps the router's logits small, where the float32 (or bfloat16) exponentials stay accurate.
"""

from __future__ import annotations

import torch

__all__ = ["expert_shares", "load_balancing_loss", "router_z_loss"]


def expert_shares(experts: torch.Tensor, n_experts: int) -> torch.Tensor:
    """f: the share of the (T, k) assignments ``experts`` that each expert got, (E,) float32."""
    if not isinstance(experts, torch.Tensor) or experts.dim() != 2:
        raise ValueError("experts: expected an int tensor (tokens, k)")
    counts = torch.bincount(experts.reshape(-1), minlength=n_experts)
    return counts.float() / max(experts.numel(), 1)


def load_balancing_loss(probs: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """Switch's E * sum_i f_i P_i from the router's full softmax ``probs`` (T, E) and its
    choices ``experts`` (T, k); 1.0 for a perfectly even router."""
    if not isinstance(probs, torch.Tensor) or probs.dim() != 2:
        raise ValueError("probs: expected a float tensor (tokens, n_experts) of probabilities")
    if experts.shape[0] != probs.shape[0]:
        raise ValueError(
            f"experts: expected {probs.shape[0]} rows like probs, got {tuple(experts.shape)}"
        )
    n_experts = probs.shape[1]
    f = expert_shares(experts, n_experts)
    p = probs.float().mean(dim=0)
    return n_experts * (f * p).sum()


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE's z-loss: mean over tokens of logsumexp(logits)^2, from ``logits`` (T, E)."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise ValueError("logits: expected a float tensor (tokens, n_experts)")
    return torch.logsumexp(logits.float(), dim=-1).pow(2).mean()
