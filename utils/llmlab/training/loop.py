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
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from llmlab.progress import progress as progress_bar
from llmlab.training.checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint
from llmlab.training.losses import lm_loss
from llmlab.training.optim import AdamW, Muon, clip_grad_norm, grad_norm, muon_param_groups
from llmlab.training.schedule import warmup_cosine
from llmlab.validate import require_int, require_positive_int

__all__ = ["TrainConfig", "History", "make_optimizer", "train"]

PRECISIONS = ("fp32", "bf16", "fp16")
OPTIMIZERS = ("llmlab", "torch", "muon")
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
            require_positive_int(getattr(self, name), name)
        for name in ("eval_every", "checkpoint_every", "keep_checkpoints", "seed"):
            require_int(getattr(self, name), name, 0)
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
        return torch.optim.AdamW(
            groups, lr=config.lr, betas=config.betas, eps=config.eps, fused=fused
        )
    return AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps)


def autocast(precision: str, device_type: str = "cpu"):
    """The autocast context of a precision name: ``"fp32"`` none, ``"bf16"`` / ``"fp16"``
    autocast to that dtype on ``device_type`` (the training loop's, and its callers' for
    evaluation in the same precision)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device_type, dtype=dtype)


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
        raise TypeError(
            f"batch_fn: expected a function of the micro-batch index, got {type(batch_fn).__name__}"
        )
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
    bar = progress_bar(
        range(start_step, end),
        desc="training",
        total=end - start_step,
        **({} if progress else {"disable": True}),
    )
    tokens = history.tokens[-1] if history.tokens else 0
    for step in bar:
        started = time.perf_counter()
        total_loss = 0.0
        for micro in range(config.grad_accum):
            batch = batch_fn(step * config.grad_accum + micro)
            batch = tuple(t.to(device) for t in batch)
            with autocast(config.precision, device.type):
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
        if (
            evaluate is not None
            and config.eval_every
            and (done % config.eval_every == 0 or done == config.steps)
        ):
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
            save_checkpoint(
                checkpoint_dir,
                done,
                model,
                optimizer,
                scheduler,
                history,
                keep=config.keep_checkpoints,
                config=config,
            )
    model.eval()
    return history
