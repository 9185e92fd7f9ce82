"""The training loop and its parts: AdamW (and Muon), warmup + cosine schedule, the LM loss, clipping,
gradient accumulation, mixed precision and checkpoints that resume exactly.

    >>> config = TrainConfig(steps=300, lr=6e-4, grad_accum=2)
    >>> history = train(model, batch_fn, config, checkpoint_dir="runs/gpt")

``batch_fn(i)`` returns micro-batch number ``i`` (``i = step * grad_accum + micro``) as
``(inputs, targets)``; making the data a pure function of the index is what lets a resumed run
see exactly the batches an unbroken run would have seen.

The defaults are seed 000's (§3.2): AdamW with betas (0.9, 0.95), eps 1e-8, weight decay 0.01;
peak learning rate 6e-4 reached by a linear warmup over the first 10% of steps, then cosine
decay; label smoothing 0.1; gradients clipped to a global norm of 1.

Every piece is written from its definition and tested against PyTorch's own
(``torch.optim.AdamW``, ``torch.optim.Muon``, ``torch.nn.utils.clip_grad_norm_``,
``F.cross_entropy``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from llmlab.progress import progress as progress_bar
from llmlab.validate import check_int, check_positive_int

__all__ = [
    "AdamW",
    "Muon",
    "orthogonalize",
    "muon_param_groups",
    "warmup_cosine",
    "lm_loss",
    "sliding_window_nll",
    "grad_norm",
    "clip_grad_norm",
    "TrainConfig",
    "History",
    "make_optimizer",
    "train",
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
]

PRECISIONS = ("fp32", "bf16", "fp16")
OPTIMIZERS = ("llmlab", "torch", "muon")


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
        lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
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
    check_positive_int(steps, "steps")
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
        check_positive_int(ns_steps, "ns_steps")
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                        ns_steps=ns_steps, ns_dtype=ns_dtype, betas=betas, eps=eps, muon=True)
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
    heads = {id(m.weight) for m in model.modules()
             if isinstance(m, nn.Linear) and m.out_features in vocab_sizes}
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
# Schedule, loss, clipping


def warmup_cosine(
    step: int, total_steps: int, warmup_frac: float = 0.1, min_ratio: float = 0.0
) -> float:
    """The learning-rate multiplier at ``step`` (0-based): linear warmup, then cosine decay.

    Rises linearly from 1/warmup to 1 over the first ``warmup_frac`` of ``total_steps``, then
    follows half a cosine from 1 down to ``min_ratio`` at the last step. Multiply the peak
    learning rate by it (``torch.optim.lr_scheduler.LambdaLR`` does exactly that).
    """
    check_positive_int(total_steps, "total_steps")
    if not 0.0 <= warmup_frac < 1.0:
        raise ValueError(f"warmup_frac: expected a float in [0, 1), got {warmup_frac!r}")
    if not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"min_ratio: expected a float in [0, 1], got {min_ratio!r}")
    warmup = round(warmup_frac * total_steps)
    if step < warmup:
        return (step + 1) / warmup
    decay_steps = max(1, total_steps - 1 - warmup)
    progress = min(1.0, (step - warmup) / decay_steps)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def lm_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
) -> torch.Tensor:
    """Mean cross-entropy of next-token predictions, optionally label-smoothed.

    logits: (..., vocab); targets: (...) token ids, ``ignore_index`` where nothing is scored.
    With smoothing eps the target distribution is (1 - eps) on the true token plus eps spread
    uniformly over the vocabulary: loss = (1 - eps) * NLL + eps * mean_over_vocab(-log p).
    Equal to ``F.cross_entropy(..., label_smoothing=eps)``.
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"targets: expected shape {tuple(logits.shape[:-1])} (logits without the vocab dim), "
            f"got {tuple(targets.shape)}"
        )
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing: expected a float in [0, 1), got {label_smoothing!r}")
    logp = logits.float().log_softmax(-1).flatten(0, -2)
    targets = targets.flatten()
    keep = targets != ignore_index
    if not keep.any():
        return logp.sum() * 0.0  # nothing scored: a zero that still has a graph
    logp, targets = logp[keep], targets[keep]
    nll = -logp.gather(1, targets[:, None]).squeeze(1)
    if label_smoothing == 0.0:
        return nll.mean()
    uniform = -logp.mean(-1)
    return ((1 - label_smoothing) * nll + label_smoothing * uniform).mean()


@torch.no_grad()
def sliding_window_nll(
    model: Callable[[torch.Tensor], torch.Tensor],
    tokens,
    window: int,
    stride: int | None = None,
    batch_size: int = 32,
) -> torch.Tensor:
    """NLL (nats, float64) of every token of a stream but the first, as a causal LM scores it.

    ``model(ids)`` maps (batch, seq <= window) ids to (batch, seq, vocab) logits. The stream is
    read in windows of ``window`` inputs starting every ``stride`` tokens; each window scores
    only the targets that no earlier window scored, so every target ``tokens[1:]`` is scored
    exactly once. ``stride == window`` (the default) gives non-overlapping windows, where a
    target sees only the tokens before it in its own window (none at a window's start);
    a smaller stride gives every target at least ``window - stride`` tokens of context, at
    ``window / stride`` times the compute (the "sliding window" perplexity of fixed-length
    models). Returns a tensor of ``len(tokens) - 1`` values in stream order.
    """
    tokens = torch.as_tensor(tokens, dtype=torch.long).flatten()
    for name, value in (("window", window), ("batch_size", batch_size)):
        check_positive_int(value, name)
    stride = window if stride is None else stride
    if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= window:
        raise ValueError(f"stride: expected an int in [1, window={window}], got {stride!r}")
    if tokens.numel() < 2:
        raise ValueError(f"tokens: expected at least 2 tokens, got {tokens.numel()}")
    was_training = getattr(model, "training", False)
    if was_training:
        model.eval()
    n_targets = tokens.numel() - 1
    # window k reads inputs [b, b + window) and scores targets b + 1 .. b + window whose
    # index is past what window k - 1 scored; the first window that reaches the end is the last
    last = next(b for b in range(0, n_targets, stride) if b + window >= n_targets)
    begins = list(range(0, last + 1, stride))
    short = last + window > n_targets  # the last window is cut by the end of the stream
    full = begins[:-1] if short else begins
    groups = [full[i : i + batch_size] for i in range(0, len(full), batch_size)]
    groups += [[last]] if short else []
    out = torch.empty(n_targets, dtype=torch.float64)
    for group in groups:
        length = min(window, n_targets - group[0])
        x = torch.stack([tokens[b : b + length] for b in group])
        y = torch.stack([tokens[b + 1 : b + length + 1] for b in group])
        logp = model(x).float().log_softmax(-1)
        nll = -logp.gather(-1, y[..., None]).squeeze(-1).double()
        for row, b in zip(nll, group, strict=True):
            first_new = 0 if b == 0 else window - stride  # targets earlier windows did not score
            out[b + first_new : b + length] = row[first_new:]
    if was_training:
        model.train()
    return out


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


# --------------------------------------------------------------------------------------------
# The loop


@dataclass
class TrainConfig:
    """What :func:`train` does; defaults are seed 000's recipe."""

    steps: int = 1000
    lr: float = 6e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.01
    warmup_frac: float = 0.1
    min_lr_ratio: float = 0.1
    grad_accum: int = 1  # micro-batches per optimizer step
    clip_norm: float | None = 1.0
    label_smoothing: float = 0.1
    precision: str = "fp32"  # "fp32" | "bf16" (autocast) | "fp16" (autocast + GradScaler, CUDA)
    eval_every: int = 0  # 0: never
    checkpoint_every: int = 0  # 0: only at the end (when checkpoint_dir is given)
    keep_checkpoints: int = 2
    seed: int = 0
    optimizer: str = "llmlab"  # "llmlab" (our AdamW) | "torch" (torch.optim.AdamW, fused if
    # possible) | "muon" (our Muon for the hidden matrices at muon_lr, our AdamW for the rest at lr)
    muon_lr: float = 0.02

    def __post_init__(self):
        for name in ("steps", "grad_accum"):
            check_positive_int(getattr(self, name), name)
        for name in ("eval_every", "checkpoint_every", "keep_checkpoints", "seed"):
            check_int(getattr(self, name), name, 0)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {PRECISIONS}, got {self.precision!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer: expected one of {OPTIMIZERS}, got {self.optimizer!r}")
        if not self.muon_lr >= 0:
            raise ValueError(f"muon_lr: expected >= 0, got {self.muon_lr!r}")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ValueError(f"clip_norm: expected None or > 0, got {self.clip_norm!r}")
        self.betas = tuple(self.betas)


@dataclass
class History:
    """Per-step training log (plain lists: easy to plot, to save as JSON and to compare)."""

    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)  # tokens seen so far
    seconds: list[float] = field(default_factory=list)  # wall time of each step
    eval_step: list[int] = field(default_factory=list)
    eval_loss: list[float] = field(default_factory=list)

    def tokens_per_second(self) -> float:
        """Throughput: tokens seen / seconds spent in training steps (all steps logged)."""
        return self.tokens[-1] / sum(self.seconds) if self.step and sum(self.seconds) > 0 else 0.0


Batch = tuple[torch.Tensor, torch.Tensor]


def _default_loss(model: nn.Module, batch: Batch, config: TrainConfig) -> torch.Tensor:
    inputs, targets = batch
    out = model(inputs)
    logits = out.logits if hasattr(out, "logits") else out
    return lm_loss(logits, targets, config.label_smoothing)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer :func:`train` builds for ``model`` from ``config`` (e.g. to time a step).

    AdamW (ours or torch's fused one) with weight decay on the matrices only, or Muon for the
    hidden matrices plus AdamW for the rest (:func:`muon_param_groups`).
    """
    if config.optimizer == "muon":
        groups = muon_param_groups(model, config.lr, config.muon_lr, config.weight_decay)
        return Muon(groups, betas=config.betas, eps=config.eps)
    # No weight decay on biases and norm gains (1-D parameters), as GPT-2/LLaMA recipes do.
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if config.optimizer == "torch":  # one fused kernel for all parameters (CPU and CUDA)
        fused = next(model.parameters()).device.type in ("cpu", "cuda")
        return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps, fused=fused)
    return AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps)


def _autocast(config: TrainConfig, device: torch.device):
    if config.precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if config.precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def train(
    model: nn.Module,
    batch_fn: Callable[[int], Batch],
    config: TrainConfig,
    *,
    loss_fn: Callable[[nn.Module, Batch, TrainConfig], torch.Tensor] | None = None,
    evaluate: Callable[[nn.Module], float] | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = True,
    stop_after: int | None = None,
    on_step: Callable[[int, History], None] | None = None,
    progress: bool = True,
) -> History:
    """Train ``model`` for ``config.steps`` optimizer steps; returns the :class:`History`.

    batch_fn(i): micro-batch ``i`` as (inputs, targets), a pure function of ``i``.
    loss_fn(model, batch, config): the loss of a micro-batch (default: next-token
    cross-entropy with ``config.label_smoothing``). evaluate(model): a validation loss, called
    every ``config.eval_every`` steps in eval mode without gradients.
    checkpoint_dir: where checkpoints go; with ``resume`` the run continues from the newest
    one, so a run that was stopped and restarted produces the same losses as one that was not.
    stop_after: stop (after checkpointing) once this many steps are done in total, to
    simulate an interruption. on_step(step, history): called after each step (live plots).
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config: expected a TrainConfig, got {type(config).__name__}")
    if not callable(batch_fn):
        raise TypeError(f"batch_fn: expected a function of the micro-batch index, got {type(batch_fn).__name__}")
    loss_fn = loss_fn or _default_loss
    device = next(model.parameters()).device
    optimizer = make_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, config.steps, config.warmup_frac, config.min_lr_ratio)
    )
    if config.precision == "fp16" and device.type != "cuda":
        raise ValueError("precision: 'fp16' needs a CUDA device (use 'bf16' on the CPU)")
    scaler = torch.amp.GradScaler("cuda") if config.precision == "fp16" else None
    history, start_step = History(), 0
    latest = latest_checkpoint(checkpoint_dir) if checkpoint_dir is not None and resume else None
    if latest is not None:
        start_step, history = load_checkpoint(latest, model, optimizer, scheduler)
    else:
        torch.manual_seed(config.seed)  # dropout masks: the same in every run with this seed
    end = config.steps if stop_after is None else min(config.steps, stop_after)
    model.train()
    bar = progress_bar(range(start_step, end), desc="training", total=end - start_step,
                       **({} if progress else {"disable": True}))
    tokens = history.tokens[-1] if history.tokens else 0
    for step in bar:
        started = time.perf_counter()
        total_loss = 0.0
        for micro in range(config.grad_accum):
            batch = batch_fn(step * config.grad_accum + micro)
            batch = tuple(t.to(device) for t in batch)
            with _autocast(config, device):
                loss = loss_fn(model, batch, config) / config.grad_accum
            (scaler.scale(loss) if scaler else loss).backward()
            total_loss += loss.item()
            tokens += batch[0].numel()
        if scaler:
            scaler.unscale_(optimizer)
        params = [p for p in model.parameters() if p.grad is not None]
        if config.clip_norm is not None:
            norm = clip_grad_norm(params, config.clip_norm).item()
        else:
            norm = grad_norm([p.grad for p in params]).item()
        history.lr.append(scheduler.get_last_lr()[0])
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        history.step.append(step)
        history.loss.append(total_loss)
        history.grad_norm.append(norm)
        history.tokens.append(tokens)
        history.seconds.append(time.perf_counter() - started)
        done = step + 1
        if evaluate is not None and config.eval_every and (done % config.eval_every == 0 or done == config.steps):
            model.eval()
            with torch.no_grad():
                history.eval_step.append(done)
                history.eval_loss.append(float(evaluate(model)))
            model.train()
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{total_loss:.3f}", refresh=False)
        if on_step is not None:
            on_step(step, history)
        if checkpoint_dir is not None and (
            (config.checkpoint_every and done % config.checkpoint_every == 0) or done == end
        ):
            save_checkpoint(checkpoint_dir, done, model, optimizer, scheduler, history,
                            keep=config.keep_checkpoints, config=config)
    model.eval()
    return history


# --------------------------------------------------------------------------------------------
# Checkpoints


def _step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:08d}"


def latest_checkpoint(checkpoint_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint under ``checkpoint_dir`` (None if there is none).

    Only fully written checkpoints count: each is built in a temporary folder and renamed into
    place in one atomic step, so a crash mid-write leaves the previous one intact.
    """
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return None
    done = sorted(p for p in root.glob("step-*") if (p / "trainer.json").is_file())
    return done[-1] if done else None


def save_checkpoint(
    checkpoint_dir: str | os.PathLike,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    history: History | None = None,
    keep: int = 2,
    config: TrainConfig | None = None,
) -> Path:
    """Write model, optimizer, scheduler, RNG states and history for ``step``; atomically.

    Layout: ``step-NNNNNNNN/{model.safetensors, optimizer.safetensors, trainer.json}``. Tensors
    go to safetensors (no pickle: safe to load from strangers); the rest is JSON. Keeps the
    newest ``keep`` checkpoints (0 keeps all).
    """
    from safetensors.torch import save_file, save_model

    root = Path(checkpoint_dir)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-step-{step:08d}-", dir=root))
    try:
        save_model(model, str(tmp / "model.safetensors"))  # handles tied weights
        tensors, meta = _optimizer_state(optimizer)
        tensors["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_available():
            for i, state in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng.cuda.{i}"] = state
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        py_state = random.getstate()
        trainer = {
            "step": step,
            "optimizer": meta,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "history": asdict(history) if history is not None else None,
            "rng_python": [py_state[0], list(py_state[1]), py_state[2]],
            "config": asdict(config) if config is not None else None,
        }
        (tmp / "trainer.json").write_text(json.dumps(trainer))
        final = _step_dir(root, step)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep:
        for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler=None,
) -> tuple[int, History]:
    """Restore what :func:`save_checkpoint` wrote into ``model`` (and optimizer, scheduler, RNGs).

    Returns ``(step, history)``: the number of steps done and the log so far.
    """
    from safetensors.torch import load_file, load_model

    path = Path(path)
    if not (path / "trainer.json").is_file():
        raise FileNotFoundError(
            f"path: {path} is not a complete checkpoint (no trainer.json); "
            "use latest_checkpoint(checkpoint_dir) to find one"
        )
    device = next(model.parameters()).device
    load_model(model, str(path / "model.safetensors"), device=str(device))
    trainer = json.loads((path / "trainer.json").read_text())
    tensors = load_file(str(path / "optimizer.safetensors"))
    if optimizer is not None:
        _load_optimizer_state(optimizer, tensors, trainer["optimizer"], device)
    if scheduler is not None and trainer["scheduler"] is not None:
        scheduler.load_state_dict(trainer["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    version, state, gauss = trainer["rng_python"]
    random.setstate((version, tuple(state), gauss))
    history = History(**trainer["history"]) if trainer["history"] else History()
    return trainer["step"], history


def _optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, state in sd["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{index}.{name}"] = value
    groups = [{k: ({"dtype": str(v).removeprefix("torch.")} if isinstance(v, torch.dtype) else v)
               for k, v in group.items()} for group in sd["param_groups"]]  # JSON has no dtype
    return tensors, {"param_groups": groups, "scalars": scalars}


def _load_optimizer_state(optimizer, tensors, meta, device) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("state."):
            _, index, name = key.split(".", 2)
            # torch keeps AdamW's "step" on the CPU unless it runs fused/capturable
            state.setdefault(int(index), {})[name] = value if name == "step" else value.to(device)
    for key, value in meta["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    groups = meta["param_groups"]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
        for k, v in group.items():
            if isinstance(v, dict) and set(v) == {"dtype"}:
                group[k] = getattr(torch, v["dtype"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})
