"""Optimizers written from their definitions: AdamW (decoupled weight decay) and Muon
(orthogonalized momentum for hidden matrices), plus global-norm gradient clipping.

Each equals PyTorch's own (``torch.optim.AdamW``, ``torch.optim.Muon``,
``torch.nn.utils.clip_grad_norm_``) in the tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from llmlab.validate import require_positive_int

__all__ = [
    "AdamW",
    "Muon",
    "NS_COEFFICIENTS",
    "orthogonalize",
    "muon_param_groups",
    "grad_norm",
    "clip_grad_norm",
]

# --------------------------------------------------------------------------------------------
# AdamW


class _GroupwiseOptimizer(torch.optim.Optimizer):
    """An optimizer whose step updates each parameter group on its own (:meth:`update_group`)."""

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self.update_group(group)
        return loss

    def update_group(self, group: dict) -> None:
        raise NotImplementedError


class AdamW(_GroupwiseOptimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019), written out.

    Per parameter p with gradient g, at step t:

        p   <- p - lr * wd * p                     (decay: shrink the weights, not the gradient)
        m   <- beta1 m + (1 - beta1) g             (first moment: a running mean of g)
        v   <- beta2 v + (1 - beta2) g^2           (second moment: a running mean of g^2)
        p   <- p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    The bias corrections undo the zero start of m and v. Adam's step is about ``lr`` in size
    for every weight whatever the gradient's scale; L2 regularisation added to g would be
    rescaled by sqrt(v) too, which is why AdamW applies the decay to p directly.
    Equal to ``torch.optim.AdamW`` with the same arguments (tested over 100 steps).
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 6e-4,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
    ):
        if not lr >= 0.0:
            raise ValueError(f"lr: expected >= 0, got {lr!r}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas: expected two floats in [0, 1), got {betas!r}")
        if not eps > 0.0:
            raise ValueError(f"eps: expected > 0, got {eps!r}")
        if not weight_decay >= 0.0:
            raise ValueError(f"weight_decay: expected >= 0, got {weight_decay!r}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def update_group(self, group: dict) -> None:
        """One AdamW step for every parameter of ``group`` (``step`` calls it per group)."""
        lr, (beta1, beta2), eps, wd = (
            group["lr"],
            group["betas"],
            group["eps"],
            group["weight_decay"],
        )
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("AdamW: sparse gradients are not supported")
            state = self.state[p]
            if not state:
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            t = state["step"].item()
            m, v, g = state["exp_avg"], state["exp_avg_sq"], p.grad
            p.mul_(1 - lr * wd)
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            step_size = lr / (1 - beta1**t)
            denom = (v.sqrt() / math.sqrt(1 - beta2**t)).add_(eps)
            p.addcdiv_(m, denom, value=-step_size)


# --------------------------------------------------------------------------------------------
# Muon


NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # Keller Jordan's quintic (torch.optim.Muon's default)


def orthogonalize(
    g: torch.Tensor,
    steps: int = 5,
    coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
    eps: float = 1e-7,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """About ``U V^T`` for ``g = U S V^T``: every singular value pushed towards 1, directions kept.

    The quintic Newton-Schulz iteration X <- a X + (b X X^T + c (X X^T)^2) X maps each
    singular value s of X to a s + b s^3 + c s^5 and leaves the singular vectors alone.
    Scaled first so that all s <= 1 (dividing by the Frobenius norm, which is >= the spectral
    norm), five steps of these coefficients bring every s above about 1/500 of the norm into
    roughly [0.7, 1.2] (smaller ones grow by at most a^5 ~ 490): not exactly 1, which costs
    nothing in training and keeps the step count low. Works on the
    short side (X X^T is min(m, n) square). ``dtype`` runs the iteration in another
    precision (torch.optim.Muon uses bf16; fp32 is the default here, bf16 is slow on CPUs
    without bf16 units). The result has g's shape and dtype.
    """
    if g.dim() != 2:
        raise ValueError(f"g: expected a 2-D matrix, got shape {tuple(g.shape)}")
    require_positive_int(steps, "steps")
    a, b, c = coefficients
    x = g.to(dtype or g.dtype)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return (x.T if tall else x).to(g.dtype)


class Muon(_GroupwiseOptimizer):
    """Muon (Jordan et al. 2024) for the hidden layers' matrices, AdamW for everything else.

    For a weight matrix W with gradient G, at each step:

        B <- mu B + (1 - mu) G                     (momentum, a running mean of G)
        U <- (1 - mu) G + mu B                     (Nesterov: look one step ahead)
        W <- W - lr * wd * W                       (decoupled weight decay, as in AdamW)
        W <- W - lr * sqrt(max(1, rows/cols)) * orthogonalize(U)

    Adam rescales each weight's step separately; Muon rescales the whole update matrix so
    that all its singular values are about 1: every direction the gradient points in moves
    by the same amount, the rare directions as far as the dominant ones. It applies to
    2-D weights inside the network; embeddings, the output layer, gains and biases are not
    matrices of that kind and stay with AdamW. A parameter group with ``"muon": False`` is
    updated by AdamW with the group's ``lr``, ``betas``, ``eps`` and ``weight_decay``;
    :func:`muon_param_groups` makes both groups for a model. One optimizer for both keeps
    one learning-rate schedule and one checkpoint.

    The Muon groups equal ``torch.optim.Muon`` with the same arguments when ``ns_dtype`` is
    its bf16 (tested); fp32 (the default here) is faster on a CPU without bf16 units.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        ns_steps: int = 5,
        ns_dtype: torch.dtype | None = None,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
    ):
        if not lr >= 0.0:
            raise ValueError(f"lr: expected >= 0, got {lr!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum: expected a float in [0, 1), got {momentum!r}")
        if not weight_decay >= 0.0:
            raise ValueError(f"weight_decay: expected >= 0, got {weight_decay!r}")
        require_positive_int(ns_steps, "ns_steps")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            nesterov=nesterov,
            weight_decay=weight_decay,
            ns_steps=ns_steps,
            ns_dtype=ns_dtype,
            betas=betas,
            eps=eps,
            muon=True,
        )
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if group["muon"] and p.dim() != 2:
                    raise ValueError(
                        f"params: Muon updates 2-D weight matrices, got a parameter of shape "
                        f"{tuple(p.shape)}; put it in a group with 'muon': False (AdamW), "
                        "e.g. with muon_param_groups(model, ...)"
                    )

    @torch.no_grad()
    def update_group(self, group: dict) -> None:
        """One Muon step for a ``"muon"`` group, one AdamW step (:class:`AdamW`'s) for the others."""
        if not group["muon"]:
            AdamW.update_group(self, group)  # the same state layout as an AdamW of its own
            return
        lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["momentum_buffer"] = torch.zeros_like(p)
            buf = state["momentum_buffer"]
            buf.lerp_(p.grad, 1 - mu)
            update = p.grad.lerp(buf, mu) if group["nesterov"] else buf
            update = orthogonalize(update, group["ns_steps"], dtype=group["ns_dtype"])
            p.mul_(1 - lr * wd)
            p.add_(update, alpha=-lr * math.sqrt(max(1.0, p.shape[0] / p.shape[1])))


def muon_param_groups(
    model: nn.Module, lr: float, muon_lr: float = 0.02, weight_decay: float = 0.0
) -> list[dict]:
    """Muon's and AdamW's parameter groups for ``model`` (Keller Jordan's split).

    Muon: the 2-D weights of the hidden layers. AdamW: the embeddings (every
    ``nn.Embedding``), the output layer (an ``nn.Linear`` with as many outputs as an
    embedding has rows: it maps into the vocabulary; a tied head is the embedding itself),
    with weight decay, and every 1-D parameter (gains, biases) without.
    """
    embedded = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    vocab_sizes = {m.num_embeddings for m in model.modules() if isinstance(m, nn.Embedding)}
    heads = {
        id(m.weight)
        for m in model.modules()
        if isinstance(m, nn.Linear) and m.out_features in vocab_sizes
    }
    hidden, outer, vectors = [], [], []
    for p in model.parameters():  # each shared parameter once
        if not p.requires_grad:
            continue
        if p.dim() < 2:
            vectors.append(p)
        elif id(p) in embedded or id(p) in heads or p.dim() != 2:
            outer.append(p)
        else:
            hidden.append(p)
    return [
        {"params": hidden, "muon": True, "lr": muon_lr, "weight_decay": weight_decay},
        {"params": outer, "muon": False, "lr": lr, "weight_decay": weight_decay},
        {"params": vectors, "muon": False, "lr": lr, "weight_decay": 0.0},
    ]


# --------------------------------------------------------------------------------------------
# Clipping


def grad_norm(grads: Iterable[torch.Tensor]) -> torch.Tensor:
    """The global L2 norm of ``grads``: the norm of the per-tensor norms."""
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def clip_grad_norm(parameters: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale all gradients together so their global L2 norm is at most ``max_norm``.

    Returns the norm before clipping (worth logging: spikes announce trouble). Equal to
    ``torch.nn.utils.clip_grad_norm_``.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    total = grad_norm(grads)
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale)
    return total
