"""Checks of chapter 03's schedule-and-AdamW lab (``solutions/03_pretraining/02_schedule_and_adamw.ipynb``).

    lab 02_schedule_and_adamw: warmup_cosine, adamw_step, orthogonalize

Each ``check_NAME(fn)`` runs ``fn`` the way a training loop would (every step of a schedule,
an optimizer over many steps), compares the whole trajectory with a reference, prints one line
and returns a :class:`llmlab.checks.CheckResult` whose ``.fn`` the lab keeps using::

    warmup_cosine = check_warmup_cosine(warmup_cosine).fn

A training bug rarely shows in one step: a missing bias correction fades after a few dozen
updates. So every case runs many steps and the cases are chosen so that each usual slip
changes the trajectory.

Conventions (the same as :mod:`llmlab.training`):

- ``warmup_cosine(step, total_steps, warmup_frac, min_ratio)``: the learning-rate multiplier
  at 0-based ``step``; ``warmup = round(warmup_frac * total_steps)`` steps rise linearly
  1/warmup, 2/warmup, ..., 1; then half a cosine from 1 down to exactly ``min_ratio`` at the
  last step ``total_steps - 1``.
- ``adamw_step(params, grads, state, lr, betas, eps, weight_decay)``: one AdamW update of a
  list of tensors, in place; ``state`` is a dict the function fills on its first call.
- ``orthogonalize(g, steps)``: Muon's quintic Newton-Schulz iteration on a 2-D tensor:
  ``X = g / ||g||_F``, then ``steps`` times ``A = X X^T; X = a X + (b A + c A A) X`` with
  ``(a, b, c) = llmlab.training.optim.NS_COEFFICIENTS``, on the short side of ``g`` (a tall
  ``g`` is transposed and the result transposed back); the result has ``g``'s shape and dtype.

``warmup_cosine`` and ``orthogonalize`` delegate to :mod:`llmlab.training.schedule` and
:mod:`llmlab.training.optim`; ``adamw_step`` is written out (see its docstring). Inputs come
from :mod:`llmlab.checks._inputs`, so a check never moves the notebook's seed.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from llmlab.checks import Case, CheckResult, compare_with, describe, run_check
from llmlab.checks._inputs import generator
from llmlab.training import optim, schedule

#: Library schedules and optimizers: an answer that calls one is flagged.
FORBID_SCHEDULE = ("llmlab.training.schedule", "transformers.optimization")
FORBID_ADAMW = ("torch.optim", "llmlab.training.optim")
FORBID_ORTHOGONALIZE = ("llmlab.training.optim",)

# --------------------------------------------------------------------------------------------
# References: what a correct answer does


def reference_warmup_cosine(
    step: int, total_steps: int, warmup_frac: float = 0.1, min_ratio: float = 0.0
) -> float:
    """Linear warmup from 1/warmup to 1, then cosine from 1 to ``min_ratio`` at the last step."""
    return schedule.warmup_cosine(step, total_steps, warmup_frac, min_ratio)


def reference_adamw_step(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    state: dict,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    weight_decay: float = 0.01,
) -> None:
    """One AdamW step on every tensor of ``params`` (in place), as ``torch.optim.AdamW``.

    state: ``{"step": t, "m": [...], "v": [...]}``, filled with zeros on the first call.

    Written out rather than :class:`llmlab.training.optim.AdamW`: the lab's update is a plain
    function over lists of tensors that keeps its moments in the caller's ``state`` dict,
    while the library's is a ``torch.optim.Optimizer`` that reads ``.grad`` and owns its state.
    """
    # no_grad inside rather than as a decorator: the check recognises its reference by its
    # code, and a decorator's wrapper would stand between the student's call and that code.
    with torch.no_grad():
        beta1, beta2 = betas
        if not state:
            state["step"] = 0
            state["m"] = [torch.zeros_like(p) for p in params]
            state["v"] = [torch.zeros_like(p) for p in params]
        state["step"] += 1
        t = state["step"]
        for p, g, m, v in zip(params, grads, state["m"], state["v"], strict=True):
            p.mul_(1 - lr * weight_decay)  # decoupled: shrink the weight, not the gradient
            m.mul_(beta1).add_(g, alpha=1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            m_hat = m / (1 - beta1**t)
            v_hat = v / (1 - beta2**t)
            p.sub_(lr * m_hat / (v_hat.sqrt() + eps))


def reference_orthogonalize(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Muon's Newton-Schulz iteration: about U V^T for g = U S V^T, g's shape and dtype."""
    with torch.no_grad():  # not a decorator: see reference_adamw_step
        return optim.orthogonalize(g, steps)


# --------------------------------------------------------------------------------------------
# warmup_cosine


def _schedule(fn: Callable, total_steps: int, warmup_frac: float, min_ratio: float) -> torch.Tensor:
    values = []
    for step in range(total_steps):
        value = fn(step, total_steps, warmup_frac, min_ratio)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(
                f"the multiplier at step {step} is {describe(value)}, expected a Python float "
                "(math.cos, not torch.cos)"
            )
        values.append(float(value))
    return torch.tensor(values, dtype=torch.float64)


def check_warmup_cosine(warmup_cosine: Callable) -> CheckResult:
    """Check ``warmup_cosine(step, total_steps, warmup_frac, min_ratio) -> float`` at every step.

    The compared tensor is the multiplier at steps 0 .. total_steps - 1.
    """
    cases = [
        Case(
            "no warmup: 50 steps, warmup_frac 0",
            (50, 0.0, 0.0),
            hint="the cosine must reach min_ratio exactly at the LAST step, total_steps - 1: "
            "progress = (step - warmup) / (total_steps - 1 - warmup) runs from 0 to 1, and "
            "0.5 * (1 + cos(pi * progress)) from 1 to 0.",
        ),
        Case(
            "100 steps, 10% warmup, down to 0",
            (100, 0.1, 0.0),
            hint="warmup multipliers are (step + 1) / warmup, so step 0 gives 1/warmup (not 0) "
            "and the last warmup step gives exactly 1; the cosine then runs over the "
            "REMAINING steps only, starting at 1 right after the warmup.",
        ),
        Case(
            "seed 000's recipe: 300 steps, 10% warmup, down to 10%",
            (300, 0.1, 0.1),
            hint="the floor is min_ratio: min_ratio + (1 - min_ratio) * 0.5 * "
            "(1 + cos(pi * progress)).",
        ),
        Case("20 steps, 25% warmup, down to 50%", (20, 0.25, 0.5)),
        Case("long warmup: 40 steps, 50% warmup, down to 0", (40, 0.5, 0.0)),
        Case(
            "37 steps, 10% warmup: round(3.7) = 4 warmup steps",
            (37, 0.1, 0.0),
            hint="warmup = round(warmup_frac * total_steps): int() and math.floor cut 3.7 to 3.",
        ),
        Case(
            "32 steps, 10% warmup: round(3.2) = 3 warmup steps",
            (32, 0.1, 0.0),
            hint="warmup = round(warmup_frac * total_steps): math.ceil turns 3.2 into 4.",
        ),
        Case(
            "one step after the warmup: 10 steps, 90% warmup",
            (10, 0.9, 0.0),
            hint="with warmup = total_steps - 1 the decay has 0 steps: divide by "
            "max(1, total_steps - 1 - warmup), so that the last step gives progress 0.",
        ),
        Case("1000 steps, 10% warmup, down to 0.1", (1000, 0.1, 0.1)),
    ]
    return run_check(
        "warmup_cosine",
        warmup_cosine,
        reference_warmup_cosine,
        cases,
        hint="warmup = round(warmup_frac * total_steps); for step < warmup return "
        "(step + 1) / warmup; after it, decay over the REMAINING steps only, reaching "
        "min_ratio at step total_steps - 1.",
        run=_schedule,
        compare=compare_with(1e-6, 1e-6),
        arg_names=("total_steps", "warmup_frac", "min_ratio"),
        forbid=FORBID_SCHEDULE,
    )


# --------------------------------------------------------------------------------------------
# adamw_step


@dataclass(frozen=True)
class AdamWCase:
    """A little optimisation problem: where the parameters start and what gradients they get.

    The gradient at each step is that of a quadratic bowl ``sum(scale * (p - target)**2) / 2``
    times ``grad_scale``, plus seeded noise, so it depends on where the parameters are: a
    wrong update sends the trajectory elsewhere and the error shows at every later step.
    """

    shapes: tuple[tuple[int, ...], ...]
    steps: int
    lr: float
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.01
    grad_scale: float = 1.0
    schedule: bool = False  # lr follows warmup_cosine over the steps
    dtype: torch.dtype = torch.float32
    seed: int = 0

    def __repr__(self) -> str:
        tensors = "tensor" if len(self.shapes) == 1 else "tensors"
        steps = "step" if self.steps == 1 else "steps"
        return (
            f"{len(self.shapes)} {tensors}, {self.steps} {steps}, lr={self.lr:g}, "
            f"betas={self.betas}, eps={self.eps:g}, weight_decay={self.weight_decay:g}"
        )


def _adamw_trajectory(fn: Callable, case: AdamWCase) -> torch.Tensor:
    g = generator(case.seed)
    params = [torch.randn(s, generator=g, dtype=case.dtype) for s in case.shapes]
    targets = [torch.randn(s, generator=g, dtype=case.dtype) for s in case.shapes]
    scales = [torch.rand(s, generator=g, dtype=case.dtype) * 2 + 0.1 for s in case.shapes]
    noise = generator(case.seed + 1)
    state: dict = {}
    trajectory = []
    for step in range(case.steps):
        grads = [
            case.grad_scale
            * (sc * (p - t) + 0.3 * torch.randn(p.shape, generator=noise, dtype=case.dtype))
            for p, t, sc in zip(params, targets, scales, strict=True)
        ]
        lr = case.lr * (reference_warmup_cosine(step, case.steps) if case.schedule else 1.0)
        fn(params, grads, state, lr, case.betas, case.eps, case.weight_decay)
        trajectory.append(torch.cat([p.detach().reshape(-1) for p in params]))
    return torch.stack(trajectory)


def check_adamw_step(adamw_step: Callable) -> CheckResult:
    """Check ``adamw_step(params, grads, state, lr, betas, eps, weight_decay)`` over many steps.

    The compared tensor is every parameter after every step (steps, total numel).
    """
    cases = [
        Case(
            "one tensor (5,), one step, lr 0.01, no decay",
            (AdamWCase(((5,),), 1, 0.01, weight_decay=0.0),),
            hint="on the first call t = 1, m = (1 - beta1) g and v = (1 - beta2) g**2; the bias "
            "correction m_hat = m / (1 - beta1**t), v_hat = v / (1 - beta2**t) makes each "
            "weight move by about lr. Write the new values into params, in place.",
        ),
        Case(
            "two tensors (4, 3) and (3,), 10 steps, lr 0.01, no decay",
            (AdamWCase(((4, 3), (3,)), 10, 0.01, weight_decay=0.0, seed=1),),
            hint="keep m and v per tensor in state, and count the step ONCE per call "
            "(state['step'] = 1 on the first call).",
        ),
        Case(
            "weight decay 0.1 with lr 0.1, 20 steps",
            (AdamWCase(((6,),), 20, 0.1, weight_decay=0.1, seed=2),),
            hint="AdamW decays the weight itself, p <- p * (1 - lr * weight_decay), before the "
            "Adam update; adding weight_decay * p to the gradient is Adam + L2, not AdamW.",
        ),
        Case(
            "betas (0.5, 0.99), 15 steps",
            (AdamWCase(((3, 3),), 15, 0.01, betas=(0.5, 0.99), seed=3),),
            hint="m uses beta1, v uses beta2: m <- beta1 m + (1 - beta1) g, "
            "v <- beta2 v + (1 - beta2) g**2.",
        ),
        Case(
            "tiny gradients (x 1e-4), 10 steps",
            (AdamWCase(((8,),), 10, 0.01, grad_scale=1e-4, seed=4),),
            hint="eps goes OUTSIDE the square root: m_hat / (sqrt(v_hat) + eps).",
        ),
        Case("eps 0.1, 10 steps", (AdamWCase(((5,),), 10, 0.01, eps=0.1, seed=5),)),
        Case(
            "no weight decay, 30 steps",
            (AdamWCase(((2, 5),), 30, 0.003, weight_decay=0.0, seed=6),),
        ),
        Case(
            "seed 000's recipe over 100 steps with a warmup-cosine lr",
            (AdamWCase(((4, 4), (4,)), 100, 6e-3, schedule=True, seed=7),),
        ),
        Case("float64, 20 steps", (AdamWCase(((6,),), 20, 0.05, dtype=torch.float64, seed=8),)),
    ]
    return run_check(
        "adamw_step",
        adamw_step,
        reference_adamw_step,
        cases,
        hint="state['step'] += 1 first (t starts at 1); p *= 1 - lr * weight_decay; "
        "m = beta1 m + (1 - beta1) g; v = beta2 v + (1 - beta2) g**2; "
        "p -= lr * m_hat / (sqrt(v_hat) + eps) with the bias-corrected m_hat, v_hat. "
        "Update the tensors in place.",
        run=_adamw_trajectory,
        compare=compare_with(1e-5, 1e-4),
        arg_names=("problem",),
        forbid=FORBID_ADAMW,
    )


# --------------------------------------------------------------------------------------------
# orthogonalize


@dataclass(frozen=True)
class MatrixCase:
    """A matrix with known singular values: ``scale`` times ``U diag(s) V^T``, s from 1 down to 1/spread."""

    shape: tuple[int, int]
    steps: int = 5
    spread: float = 10.0
    scale: float = 1.0
    dtype: torch.dtype = torch.float32
    seed: int = 0

    def __repr__(self) -> str:
        return (
            f"a {self.shape[0]}x{self.shape[1]} {str(self.dtype).removeprefix('torch.')} matrix, "
            f"singular values {self.scale:g} .. {self.scale / self.spread:g}, steps={self.steps}"
        )

    def matrix(self) -> torch.Tensor:
        g = generator(self.seed)
        k = min(self.shape)
        u, _ = torch.linalg.qr(torch.randn(self.shape[0], k, generator=g, dtype=torch.float64))
        v, _ = torch.linalg.qr(torch.randn(self.shape[1], k, generator=g, dtype=torch.float64))
        s = torch.logspace(0, -math.log10(self.spread), k, dtype=torch.float64) * self.scale
        return (u @ torch.diag(s) @ v.T).to(self.dtype)


def _orthogonalized(fn: Callable, case: MatrixCase) -> Any:
    return fn(case.matrix(), case.steps)


def check_orthogonalize(orthogonalize: Callable) -> CheckResult:
    """Check ``orthogonalize(g, steps) -> tensor`` (Muon's Newton-Schulz) on matrices of known SVD.

    The compared tensor is the result itself.
    """
    cases = [
        Case(
            "a square 6x6 matrix, 5 steps",
            (MatrixCase((6, 6)),),
            hint="start from X = g / g.norm() (the Frobenius norm, so that every singular value "
            "is <= 1), then repeat: A = X @ X.T; X = a * X + (b * A + c * A @ A) @ X, "
            "with (a, b, c) = (3.4445, -4.7750, 2.0315) in that order; the polynomial "
            "multiplies X from the LEFT.",
        ),
        Case("a wide 4x10 matrix, 5 steps", (MatrixCase((4, 10), seed=1),)),
        Case(
            "a tall 10x4 matrix, 5 steps",
            (MatrixCase((10, 4), seed=2),),
            hint="the result has g's shape: for a tall g (more rows than columns) work on g.T, "
            "so that X @ X.T is the small square, and transpose the result back.",
        ),
        Case(
            "one step",
            (MatrixCase((5, 8), steps=1, seed=3),),
            hint="run exactly `steps` iterations (the argument, not a fixed 5).",
        ),
        Case(
            "a gradient 1000x larger",
            (MatrixCase((6, 9), scale=1000.0, seed=4),),
            hint="divide by the norm first: the polynomial pushes singular values towards 1 "
            "only from inside [0, 1]; larger ones blow up.",
        ),
        Case(
            "float64 in, float64 out",
            (MatrixCase((7, 5), dtype=torch.float64, seed=5),),
            hint="compute in g's dtype and return that dtype (no .float()).",
        ),
        Case(
            "3 steps on a 16x24 matrix with singular values spread 100x",
            (MatrixCase((16, 24), steps=3, spread=100.0, seed=6),),
        ),
        Case("10 steps", (MatrixCase((8, 8), steps=10, seed=7),)),
    ]
    return run_check(
        "orthogonalize",
        orthogonalize,
        reference_orthogonalize,
        cases,
        hint="X = g / g.norm(); then `steps` times A = X @ X.T; X = a X + (b A + c A @ A) @ X; "
        "transpose a tall g first and back at the end; return g's shape and dtype.",
        run=_orthogonalized,
        compare=compare_with(1e-5, 1e-4),
        arg_names=("matrix",),
        forbid=FORBID_ORTHOGONALIZE,
    )
