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
    """An optimizer whose step updates each parameter group on its own (:meth:`update_group`).

    With ``foreach`` None or True, ``step`` runs :meth:`update_group_foreach` instead: the
    same update written with multi-tensor ops where a subclass has it (else the same method).
    """

    foreach: bool | None = None  # how step runs, not a hyperparameter: kept out of state_dict

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        update = self.update_group if self.foreach is False else self.update_group_foreach
        for group in self.param_groups:
            update(group)
        return loss

    def update_group(self, group: dict) -> None:
        raise NotImplementedError

    def update_group_foreach(self, group: dict) -> None:
        self.update_group(group)


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

    :meth:`update_group` is this definition, one tensor at a time (``foreach=False``).
    The default (``foreach=None`` or ``True``) runs :meth:`update_group_foreach`: the same
    operations in the same order, each applied to a list of tensors by one
    ``torch._foreach_*`` call, so the weights come out bit for bit the same (tested).
    Why that is faster: every tensor operation costs a Python call and a trip through
    PyTorch's dispatcher (on a GPU also a kernel launch) before it touches a number, which
    for the many small tensors of a model (biases, norm gains) is most of the cost. Per
    tensor, chapter 03's GPT (68 parameter tensors) pays it about 68 x 10 times a step; over
    lists, 10 times a list, and on a GPU one kernel walks the whole list. On the CPU the
    lists are cut to about 1 MiB each so that a tensor stays in the cache from one line to
    the next (:func:`_cache_sized`). The price is memory: sqrt(v) exists for a whole list at
    once. Both forms keep the same state (``step``, ``exp_avg``, ``exp_avg_sq``) and
    ``foreach`` is not part of it, so a checkpoint of either resumes in the other.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 6e-4,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        foreach: bool | None = None,
    ):
        if not lr >= 0.0:
            raise ValueError(f"lr: expected >= 0, got {lr!r}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas: expected two floats in [0, 1), got {betas!r}")
        if not eps > 0.0:
            raise ValueError(f"eps: expected > 0, got {eps!r}")
        if not weight_decay >= 0.0:
            raise ValueError(f"weight_decay: expected >= 0, got {weight_decay!r}")
        if foreach not in (None, True, False):
            raise ValueError(f"foreach: expected None, True or False, got {foreach!r}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.foreach = foreach

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

    @torch.no_grad()
    def update_group_foreach(self, group: dict) -> None:
        """:meth:`update_group`'s step with one ``torch._foreach_*`` call per line, not per tensor.

        The lists hold tensors of one device and dtype (what a multi-tensor kernel takes),
        on the CPU at most about 1 MiB of each (:func:`_cache_sized`). The bias corrections
        are per tensor: a parameter that had no gradient at some step is a step behind.
        """
        lr, (beta1, beta2), eps, wd = (
            group["lr"],
            group["betas"],
            group["eps"],
            group["weight_decay"],
        )
        kinds: dict[tuple, list[torch.Tensor]] = {}
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
            kinds.setdefault((p.device, p.dtype), []).append(p)
        for (device, _), params in kinds.items():
            decay, beta2_ = _multiplier(1 - lr * wd, device), _multiplier(beta2, device)
            for ps in _cache_sized(params, device):
                gs = [p.grad for p in ps]
                states = [self.state[p] for p in ps]
                ms = [state["exp_avg"] for state in states]
                vs = [state["exp_avg_sq"] for state in states]
                steps = [state["step"] for state in states]
                torch._foreach_add_(steps, 1.0)
                ts = [step.item() for step in steps]
                if wd != 0.0:  # multiplying by 1.0 changes nothing: skip it
                    torch._foreach_mul_(ps, decay)
                torch._foreach_lerp_(ms, gs, 1 - beta1)
                torch._foreach_mul_(vs, beta2_)
                torch._foreach_addcmul_(vs, gs, gs, value=1 - beta2)
                denom = torch._foreach_sqrt(vs)
                torch._foreach_div_(denom, [math.sqrt(1 - beta2**t) for t in ts])
                torch._foreach_add_(denom, eps)
                torch._foreach_addcdiv_(ps, ms, denom, [-lr / (1 - beta1**t) for t in ts])


CPU_FOREACH_BYTES = 1 << 20  # 1 MiB per list: p, g, m, v and sqrt(v) then fit in a CPU's L2/L3


def _cache_sized(tensors: list[torch.Tensor], device: torch.device) -> list[list[torch.Tensor]]:
    """Consecutive runs of ``tensors``, at most :data:`CPU_FOREACH_BYTES` each, on the CPU.

    A larger tensor is a run of its own; on other devices all tensors are one run. On a GPU
    a foreach op is one kernel over the whole list. On the CPU PyTorch runs it as a loop over
    the tensors, so with one run each of AdamW's lines would stream the whole model's p, g,
    m and v through memory again, where the per-tensor loop applies all of them to a tensor
    while it sits in the cache. Runs of about 1 MiB keep both advantages. Chapter 03's GPT
    (1.1M parameters, 2 threads of a shared EPYC): the per-tensor loop 4.1 ms a step, one
    run 4.3 ms, runs of 1 MiB 3.4 ms (256 KiB: 3.7 ms, 4 MiB: 3.8 ms).
    """
    if device.type != "cpu":
        return [tensors]
    runs: list[list[torch.Tensor]] = []
    size = CPU_FOREACH_BYTES
    for t in tensors:
        nbytes = t.numel() * t.element_size()
        if size + nbytes > CPU_FOREACH_BYTES:
            runs.append([])
            size = 0
        runs[-1].append(t)
        size += nbytes
    return runs


def _multiplier(x: float, device: torch.device) -> float | torch.Tensor:
    """``x`` as :func:`torch._foreach_mul_` should get it to multiply as ``Tensor.mul_(x)`` does.

    On the CPU, ``_foreach_mul_`` rounds a Python number to the tensors' dtype first, which
    ``mul_`` does not: in bf16, beta2 = 0.95 becomes 0.9492. A 0-d float64 tensor multiplies
    as ``mul_`` does (tested bit for bit). ``torch.optim.AdamW(foreach=True)`` passes the
    number, so on the CPU in bf16 or fp16 it differs from its own per-tensor loop.
    """
    return torch.tensor(x, dtype=torch.float64) if device.type == "cpu" else x


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
    matrices of that kind and stay with AdamW. A 3-D parameter is a stack of such matrices
    (an MoE layer's experts, ``(n_experts, rows, cols)``): each matrix of the stack gets its
    own Muon update, as if it were a parameter of its own. A parameter group with ``"muon": False`` is
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
                if group["muon"] and p.dim() not in (2, 3):
                    raise ValueError(
                        f"params: Muon updates 2-D weight matrices (or 3-D stacks of them), got a "
                        f"parameter of shape "
                        f"{tuple(p.shape)}; put it in a group with 'muon': False (AdamW), "
                        "e.g. with muon_param_groups(model, ...)"
                    )

    @torch.no_grad()
    def update_group(self, group: dict) -> None:
        """One Muon step for a ``"muon"`` group, one AdamW step (:class:`AdamW`'s) for the others."""
        if not group["muon"]:  # the same state layout as an AdamW of its own
            if self.foreach is False:
                AdamW.update_group(self, group)
            else:
                AdamW.update_group_foreach(self, group)
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
            matrices = update[None] if update.dim() == 2 else update  # a stack: each on its own
            update = torch.stack(
                [orthogonalize(m, group["ns_steps"], dtype=group["ns_dtype"]) for m in matrices]
            ).view_as(p)
            p.mul_(1 - lr * wd)
            p.add_(update, alpha=-lr * math.sqrt(max(1.0, p.shape[-2] / p.shape[-1])))


def muon_param_groups(
    model: nn.Module, lr: float, muon_lr: float = 0.02, weight_decay: float = 0.0
) -> list[dict]:
    """Muon's and AdamW's parameter groups for ``model`` (Keller Jordan's split).

    Muon: the 2-D weights of the hidden layers, and 3-D stacks of them (MoE experts). AdamW:
    the embeddings (every ``nn.Embedding``), the output layer (an ``nn.Linear`` with as many
    outputs as an embedding has rows: it maps into the vocabulary; a tied head is the
    embedding itself), any matrix marked ``p.muon = False`` (an MoE router, which scores
    tokens against experts as a head scores them against words), with weight decay, and
    every 1-D parameter (gains, biases) without.
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
        elif (
            id(p) in embedded or id(p) in heads or p.dim() > 3 or getattr(p, "muon", True) is False
        ):
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
    """The global L2 norm of ``grads``: the norm of the per-tensor norms.

    ``torch._foreach_norm`` is ``[torch.linalg.vector_norm(g) for g in grads]`` in one call.
    """
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(list(grads))))


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
    torch._foreach_mul_(grads, scale)  # g.mul_(scale) for every g, in one call
    return total
