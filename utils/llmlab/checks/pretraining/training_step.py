"""Checks of chapter 03's training-step lab (``solutions/03_pretraining/03_training_step.ipynb``).

    lab 03_training_step: train_step

``train_step(model, micro_batches, optimizer, loss_fn, clip_norm)``: one optimizer step on the
mean loss of the micro-batches, gradients clipped to a global norm; returns that loss.

The check calls ``train_step`` a few times on a tiny model, as a training loop would, and
compares the parameters and the returned losses with the reference's: a loss not divided by
the number of micro-batches hides behind clipping in one step but not over several. The
reference is written out: :func:`llmlab.training.train` runs a whole loop from a config and has
no step function of this signature. Inputs come from :mod:`llmlab.checks._inputs` and the
model is built under a forked RNG, so a check never moves the notebook's seed.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.checks import Case, CheckResult, compare_with, describe, run_check
from llmlab.checks._inputs import generator

# --------------------------------------------------------------------------------------------
# Reference: what a correct answer does


def reference_train_step(
    model: nn.Module,
    micro_batches: list,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    clip_norm: float | None = 1.0,
) -> float:
    """One optimizer step on the mean loss of ``micro_batches``; returns that mean loss.

    Gradients of each micro-batch's loss / n add up in ``.grad`` (the gradient of the mean);
    the global norm of all gradients is clipped once, after the last backward; one step.
    """
    optimizer.zero_grad(set_to_none=True)
    n = len(micro_batches)
    total = 0.0
    for batch in micro_batches:
        loss = loss_fn(model, batch) / n
        loss.backward()
        total += loss.item()
    if clip_norm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    optimizer.step()
    return total


# --------------------------------------------------------------------------------------------
# Inputs: a tiny model trained for a few steps


def _warm_up() -> None:
    """Build a throwaway optimizer of each kind, once, when this module is imported.

    torch imports torch._dynamo (about 900 modules, a second or more) when the first optimizer
    is built. The driver builds one inside a case, within its time budget and with every call
    recorded: on a busy CPU that first case ran out of time. The grader's sandbox imports this
    module to find the driver, so the warm-up happens there too, before any case.
    """
    torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.0)
    torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=0.0, foreach=False)


_warm_up()


class _TinyLM(nn.Module):
    """A next-token model small enough to train in a check: embed -> tanh MLP -> logits."""

    def __init__(self, vocab: int, d: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.hidden = nn.Linear(d, d)
        self.head = nn.Linear(d, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.hidden(self.embed(ids))))


def next_token_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy of ``model(inputs)`` against ``targets``: the loss_fn the checks pass."""
    inputs, targets = batch
    logits = model(inputs)
    return F.cross_entropy(logits.flatten(0, -2), targets.flatten())


@dataclass(frozen=True)
class StepCase:
    """A tiny model, an optimizer and ``steps`` steps of ``n_micro`` micro-batches each."""

    n_micro: int
    clip_norm: float | None
    optimizer: str = "sgd"  # "sgd" (sees every gradient-scale error) | "adamw"
    lr: float = 0.5
    steps: int = 3
    micro_batch: int = 4
    seq: int = 6
    vocab: int = 13
    d: int = 8
    seed: int = 0

    def __repr__(self) -> str:
        batches = "micro-batch" if self.n_micro == 1 else "micro-batches"
        return (
            f"{self.n_micro} {batches} of {self.micro_batch}x{self.seq}, "
            f"clip_norm={self.clip_norm}, {self.optimizer} lr={self.lr:g}, {self.steps} steps"
        )


def _train_steps(fn: Callable, case: StepCase) -> torch.Tensor:
    # Building the model draws from the global RNG: fork it. Tensors this small run fastest on
    # one thread (more threads only add synchronisation, badly so on a busy CPU).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            return _run_train_steps(fn, case)
    finally:
        torch.set_num_threads(threads)


def _run_train_steps(fn: Callable, case: StepCase) -> torch.Tensor:
    model = _TinyLM(case.vocab, case.d)
    g = generator(case.seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    if case.optimizer == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=case.lr)
    else:
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=case.lr, betas=(0.9, 0.95), weight_decay=0.01, foreach=False
        )
    data = generator(case.seed + 1)
    losses = []
    for _ in range(case.steps):
        micro_batches = []
        for _ in range(case.n_micro):
            window = torch.randint(0, case.vocab, (case.micro_batch, case.seq + 1), generator=data)
            micro_batches.append((window[:, :-1], window[:, 1:]))
        loss = fn(model, micro_batches, optimizer, next_token_loss, case.clip_norm)
        if isinstance(loss, bool) or not isinstance(loss, numbers.Real):
            # A tensor would keep the step's autograd graph alive in the caller's list of losses.
            raise TypeError(
                f"the loss train_step returned is {describe(loss)}, expected a Python float "
                "(loss.item() gives one)"
            )
        losses.append(float(loss))
    params = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return torch.cat([params, torch.tensor(losses)])


# --------------------------------------------------------------------------------------------
# Check


def check_train_step(train_step: Callable) -> CheckResult:
    """Check ``train_step(model, micro_batches, optimizer, loss_fn, clip_norm) -> float``.

    Each case builds a fresh tiny model and optimizer, calls ``train_step`` a few times and
    compares the parameters after the last step, followed by the returned losses.
    """
    cases = [
        Case(
            "one micro-batch, no clipping, SGD",
            (StepCase(1, None),),
            hint="zero the gradients, backward the loss, optimizer.step() once, and return the "
            "loss as a float.",
        ),
        Case(
            "4 micro-batches, no clipping, SGD",
            (StepCase(4, None, seed=1),),
            hint="the step must follow the gradient of the MEAN loss: divide each micro-batch's "
            "loss by the number of micro-batches before backward, let the gradients add "
            "up in .grad (zero them once, before the loop), and call optimizer.step() once "
            "after the loop.",
        ),
        Case(
            "4 micro-batches, clip_norm 0.05 (active), SGD",
            (StepCase(4, 0.05, seed=2),),
            hint="clip once, after the LAST backward, on the norm of ALL gradients together: "
            "torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm).",
        ),
        Case(
            "2 micro-batches, clip_norm 0.1, AdamW",
            (StepCase(2, 0.1, optimizer="adamw", lr=0.01, seed=3),),
        ),
        Case("3 micro-batches, clip_norm 100 (inactive), SGD", (StepCase(3, 100.0, seed=4),)),
        Case(
            "8 micro-batches of 1 sequence, clip_norm 0.5, 5 steps",
            (StepCase(8, 0.5, micro_batch=1, steps=5, seed=5),),
        ),
    ]
    return run_check(
        "train_step",
        train_step,
        reference_train_step,
        cases,
        hint="optimizer.zero_grad(); for each micro-batch: (loss_fn(model, batch) / n).backward(); "
        "then clip_grad_norm_(model.parameters(), clip_norm) if clip_norm is not None; "
        "optimizer.step(); return the summed loss / n as a float.",
        run=_train_steps,
        compare=compare_with(1e-5, 1e-4),
        arg_names=("steps",),
    )
