"""The experts and the mixture-of-experts layer.

    x (T, d) -> router -> for each token, k experts and their weights
             -> y_t = sum over its k experts e of  weight_te * FFN_e(x_t)
                      (+ the shared experts' FFN(x_t), which every token goes through)

Each expert is chapter 01's SwiGLU FFN, ``down(silu(gate x) * up x)``. The E experts' matrices
are stored stacked, ``w_gate`` and ``w_up`` (E, d_ff, d) and ``w_down`` (E, d, d_ff), as
transformers' Mixtral stores them (its ``gate_up_proj`` is ``w_gate`` and ``w_up`` side by
side): expert e is the FFN whose ``gate_proj.weight`` is ``w_gate[e]``, and so on.

Three ways to compute the same output (``impl``):

- ``"dense"``: every expert on every token, then the weighted sum with zeros for the experts not
  chosen. E/k times the work: the reference the others are tested against.
- ``"loop"``: one expert at a time on the tokens that chose it (gather, FFN, scale, scatter-add),
  as transformers' eager experts do. Small matmuls, one per expert.
- ``"grouped"``: sort the (token, expert) assignments by expert, so each expert's tokens are one
  contiguous segment; run all segments in one grouped matmul per weight matrix
  (``torch._grouped_mm`` with the segments' end offsets); scale and scatter-add back ("un-permute").
  The layout expert-parallel systems and GPU MoE kernels use.

With a capacity factor, assignments past an expert's capacity are dropped (weight 0, no work);
:attr:`MoE.stats` keeps the last forward's router output, auxiliary losses, loads and drops.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.moe.losses import expert_shares, load_balancing_loss, router_z_loss
from llmlab.moe.router import RouterOutput, TopKRouter, capacity, capacity_mask
from llmlab.nn.ffn import FeedForward
from llmlab.validate import require_positive_int

__all__ = ["IMPLS", "Experts", "MoE", "MoEStats", "grouped_mm", "permute", "unpermute"]

IMPLS = ("dense", "loop", "grouped")


class Experts(nn.Module):
    """E SwiGLU FFNs of width ``d_ff`` on ``d_model``, their matrices stacked (see module doc)."""

    def __init__(self, n_experts: int, d_model: int, d_ff: int):
        super().__init__()
        for value, name in ((n_experts, "n_experts"), (d_model, "d_model"), (d_ff, "d_ff")):
            require_positive_int(value, name)
        self.n_experts, self.d_model, self.d_ff = n_experts, d_model, d_ff
        self.w_gate = nn.Parameter(torch.empty(n_experts, d_ff, d_model))
        self.w_up = nn.Parameter(torch.empty(n_experts, d_ff, d_model))
        self.w_down = nn.Parameter(torch.empty(n_experts, d_model, d_ff))
        self.reset_parameters()

    def reset_parameters(self, std: float = 0.02) -> None:
        for w in (self.w_gate, self.w_up, self.w_down):
            nn.init.normal_(w, std=std)

    def ffn(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert ``e`` on the rows ``x`` (n, d_model)."""
        hidden = F.silu(F.linear(x, self.w_gate[e])) * F.linear(x, self.w_up[e])
        return F.linear(hidden, self.w_down[e])

    def as_feedforward(self, e: int) -> FeedForward:
        """Expert ``e`` as chapter 01's :class:`~llmlab.nn.ffn.FeedForward` (a copy)."""
        ffn = FeedForward(self.d_model, self.d_ff, activation="swiglu", bias=False)
        with torch.no_grad():
            ffn.gate_proj.weight.copy_(self.w_gate[e])
            ffn.up_proj.weight.copy_(self.w_up[e])
            ffn.down_proj.weight.copy_(self.w_down[e])
        return ffn.to(self.w_gate.dtype)

    def extra_repr(self) -> str:
        return f"n_experts={self.n_experts}, d_model={self.d_model}, d_ff={self.d_ff}"


# --------------------------------------------------------------------------------------------
# Permute, grouped matmul, un-permute
# --------------------------------------------------------------------------------------------


def permute(experts: torch.Tensor, n_experts: int, keep: torch.Tensor | None = None):
    """Sort the (T, k) assignments ``experts`` by expert (stable: token order within an expert).

    Returns ``(order, tokens, counts)``: ``order`` the flat indices (into ``experts.reshape(-1)``)
    of the kept assignments, sorted by expert; ``tokens = order // k`` the token each row of the
    sorted batch reads; ``counts`` (E,) how many rows each expert has. ``keep`` (T, k) bool
    leaves out dropped assignments.
    """
    flat = experts.reshape(-1)
    order = torch.argsort(flat, stable=True)
    if keep is not None:
        order = order[keep.reshape(-1)[order]]
    counts = torch.bincount(flat[order], minlength=n_experts)
    return order, order // experts.shape[1], counts


def unpermute(rows: torch.Tensor, tokens: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """Sum the sorted rows (n, d) back into their tokens: (n_tokens, d)."""
    out = rows.new_zeros(n_tokens, rows.shape[1])
    return out.index_add_(0, tokens, rows)


def _contiguous_grad(t: torch.Tensor) -> torch.Tensor:
    if t.requires_grad:
        t.register_hook(lambda g: g.contiguous())  # _grouped_mm's backward rejects expanded grads
    return t


def grouped_mm(x: torch.Tensor, w: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Rows ``x`` (n, d_in), sorted into E segments of ``counts`` rows, each times its own
    ``w[e].T`` (``w`` (E, d_out, d_in), nn.Linear's layout): (n, d_out).

    ``torch._grouped_mm`` where torch has it for these dtypes and devices (one call; it runs on
    torch 2.13's CPU), else a loop over the segments, which gives the same numbers."""
    if int(counts.sum()) != x.shape[0]:
        raise ValueError(
            f"counts: expected segments summing to the {x.shape[0]} rows, got {int(counts.sum())}"
        )
    if hasattr(torch, "_grouped_mm") and x.shape[0] > 0:
        offs = counts.cumsum(0).to(torch.int32)
        kind = x.device.type
        # autocast does not know _grouped_mm: cast as it casts F.linear, both to its dtype
        dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype
        try:
            out = torch._grouped_mm(x.to(dtype), w.to(dtype).transpose(1, 2), offs=offs)
            return _contiguous_grad(out)
        except (RuntimeError, NotImplementedError):
            pass  # this build, device or dtype has no grouped matmul: the loop below
    pieces = [F.linear(seg, w[e]) for e, seg in enumerate(x.split(counts.tolist()))]
    return torch.cat(pieces) if pieces else x.new_zeros(0, w.shape[1])


# --------------------------------------------------------------------------------------------
# The layer
# --------------------------------------------------------------------------------------------


@dataclass
class MoEStats:
    """The last forward pass of an :class:`MoE`: router output, auxiliary losses (differentiable),
    each expert's share of the assignments (before capacity) and the share dropped."""

    router: RouterOutput
    balance_loss: torch.Tensor
    z_loss: torch.Tensor
    shares: torch.Tensor
    dropped: float


class MoE(nn.Module):
    """A mixture-of-experts FFN: x (..., d_model) -> (..., d_model).

    n_experts experts of width ``d_ff``, ``k`` per token, chosen by a :class:`TopKRouter`
    (``order``, ``renormalize``, ``noisy``); ``n_shared`` shared experts (DeepSeekMoE) of the same
    width, run on every token and added; ``capacity_factor`` (None: no limit); ``impl`` one of
    :data:`IMPLS`. Named ``mlp`` in a decoder block, it replaces the dense FFN.
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        n_experts: int,
        k: int,
        n_shared: int = 0,
        capacity_factor: float | None = None,
        order: str = "softmax_topk",
        renormalize: bool = True,
        noisy: bool = False,
        impl: str = "grouped",
    ):
        super().__init__()
        if impl not in IMPLS:
            raise ValueError(f"impl: expected one of {IMPLS}, got {impl!r}")
        if not isinstance(n_shared, int) or n_shared < 0:
            raise ValueError(f"n_shared: expected an int >= 0, got {n_shared!r}")
        if capacity_factor is not None and not capacity_factor > 0:
            raise ValueError(
                f"capacity_factor: expected None or a number > 0, got {capacity_factor!r}"
            )
        self.router = TopKRouter(d_model, n_experts, k, order, renormalize, noisy)
        self.experts = Experts(n_experts, d_model, d_ff)
        self.shared = (
            FeedForward(d_model, d_ff * n_shared, activation="swiglu", bias=False)
            if n_shared
            else None
        )
        self.n_experts, self.k, self.n_shared = n_experts, k, n_shared
        self.capacity_factor, self.impl = capacity_factor, impl
        self.stats: MoEStats | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        r = self.router(x)
        keep = None
        if self.capacity_factor is not None:
            slots = capacity(x.shape[0], self.n_experts, self.k, self.capacity_factor)
            keep = capacity_mask(r.experts, self.n_experts, slots)
        weights = r.weights.to(x.dtype)
        if keep is not None:
            weights = weights * keep
        y = getattr(self, f"_{self.impl}")(x, r.experts, weights, keep)
        if self.shared is not None:
            y = y + self.shared(x)
        dropped = 0.0 if keep is None else 1.0 - keep.float().mean().item()
        self.stats = MoEStats(r, load_balancing_loss(r.probs, r.experts), router_z_loss(r.logits),
                              expert_shares(r.experts, self.n_experts).detach(), dropped)  # fmt: skip
        return y.reshape(shape)

    def _dense(self, x, experts, weights, keep):
        gates = x.new_zeros(x.shape[0], self.n_experts).scatter_add(1, experts, weights)
        every = torch.stack([self.experts.ffn(e, x) for e in range(self.n_experts)], dim=1)
        return (gates.unsqueeze(-1) * every).sum(dim=1)

    def _loop(self, x, experts, weights, keep):
        out = torch.zeros_like(x)
        for e in range(self.n_experts):
            hit = experts == e
            if keep is not None:
                hit = hit & keep
            token, slot = hit.nonzero(as_tuple=True)
            if token.numel() == 0:
                continue
            rows = self.experts.ffn(e, x[token]) * weights[token, slot, None]
            out.index_add_(0, token, rows)
        return out

    def _grouped(self, x, experts, weights, keep):
        order, tokens, counts = permute(experts, self.n_experts, keep)
        xs = x[tokens]
        ex = self.experts
        hidden = F.silu(grouped_mm(xs, ex.w_gate, counts)) * grouped_mm(xs, ex.w_up, counts)
        rows = grouped_mm(hidden, ex.w_down, counts) * weights.reshape(-1)[order, None]
        return unpermute(rows, tokens, x.shape[0])

    def extra_repr(self) -> str:
        return (
            f"k={self.k}, n_shared={self.n_shared}, capacity_factor={self.capacity_factor}, "
            f"impl={self.impl!r}"
        )
