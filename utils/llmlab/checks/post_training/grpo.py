"""Checks of chapter 04's GRPO lab (``solutions/04_post_training/05_grpo.ipynb``): the
group-normalised advantages and the clipped per-token loss with its KL penalty.

- ``group_advantages(rewards, group_size, scale=True, eps=1e-4) -> (n,)``: rewards of
  ``n = n_prompts * group_size`` completions, each prompt's group side by side;
  ``(r - mean_group) / (std_group + eps)`` with the unbiased std (``torch.std``'s default, as
  trl), or ``r - mean_group`` when ``scale`` is False (Dr. GRPO).
- ``grpo_loss(logps, old_logps, ref_logps, advantages, mask, clip_eps=0.2, beta=0.04)``: the
  scalar loss, per token ``-min(r A, clip(r, 1 - eps, 1 + eps) A) + beta * KL`` with
  ``r = exp(logps - old_logps)`` and ``KL = exp(ref - logps) - (ref - logps) - 1``, averaged
  over each sequence's real tokens (``mask``), then over the sequences.

The cases catch the usual slips: statistics over the whole batch instead of each group, a
population std, ``eps`` left out (a group of equal rewards gives 0/0 = NaN) or put under the
square root, ``max`` instead of ``min`` in the surrogate, the advantage clipped instead of the
ratio, the KL with its arguments or its sign swapped, padding tokens averaged in, and one mean
over all tokens instead of one per sequence. The loss is compared together with its gradient
with respect to ``logps``: a clipped token must get no gradient from the surrogate.

Each ``check_NAME(fn)`` prints one line and returns a :class:`llmlab.checks.CheckResult`
whose ``.fn`` the lab keeps using::

    group_advantages = check_group_advantages(group_advantages).fn

    lab 05_grpo: group_advantages, grpo_loss

The references delegate to :mod:`llmlab.posttrain.grpo` (tested equal to trl's GRPOTrainer);
an answer that calls that module is flagged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from llmlab.checks import Case, CheckResult, compare_tensors, compare_with, describe, run_check
from llmlab.checks._inputs import generator
from llmlab.posttrain import grpo

#: The package's GRPO: an answer that calls it is flagged.
FORBID_GRPO = ("llmlab.posttrain.grpo",)

# --------------------------------------------------------------------------------------------
# References


def reference_group_advantages(
    rewards: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-4
) -> torch.Tensor:
    """(r - group mean) / (group std + eps), or r - group mean when not ``scale``."""
    return grpo.group_advantages(rewards, group_size, scale=scale, eps=eps)


def reference_grpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    beta: float = 0.04,
) -> torch.Tensor:
    """GRPO's loss: clipped surrogate plus beta * k3 KL, per-sequence token mean, then mean."""
    return grpo.grpo_loss(logps, old_logps, ref_logps, advantages, mask, clip_eps, beta)


# --------------------------------------------------------------------------------------------
# group_advantages


def _rewards(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def _random_rewards(n: int, seed: int) -> torch.Tensor:
    """0/1 rewards with some partial credit (0.5), as a verifier with a format bonus gives."""
    return torch.randint(0, 3, (n,), generator=generator(seed)).float() / 2


def check_group_advantages(group_advantages: Callable) -> CheckResult:
    """Check ``group_advantages(rewards, group_size, scale=True, eps=1e-4) -> (n,)``.

    Within 0.1% (plus 1e-5): eps moves a typical advantage by 0.01%, so an answer without it
    fails where it matters (a group of equal rewards: NaN), not on every case.
    """
    cases = [
        Case(
            "one group of 4: rewards (1, 0, 0, 1)",
            (_rewards(1, 0, 0, 1), 4),
            hint="divide by the UNBIASED std, torch.std's default (divides by G - 1, as trl "
            "does), plus eps: (r - mean) / (std + eps).",
        ),
        Case(
            "2 groups of 4: (1, 0, 0, 1 | 1, 1, 0, 1)",
            (_rewards(1, 0, 0, 1, 1, 1, 0, 1), 4),
            hint="each group is normalised with ITS OWN mean and std: rewards.view(-1, "
            "group_size) puts one prompt's group per row; reduce over dim=1 with "
            "keepdim=True, then flatten back. Statistics over the whole batch mix prompts "
            "of different difficulty.",
        ),
        Case(
            "a group of equal rewards: (1, 1, 1, 1 | 0, 1, 0, 0)",
            (_rewards(1, 1, 1, 1, 0, 1, 0, 0), 4),
            hint="a group whose rewards are all equal has std 0: without eps its advantages "
            "are 0/0 = NaN, which poisons the whole loss. Add eps to the std: "
            "(r - mean) / (std + eps); those advantages are then exactly 0.",
        ),
        Case(
            "3 groups of 2: (1, 0 | 0, 0 | 0.5, 1)",
            (_rewards(1, 0, 0, 0, 0.5, 1), 2),
            hint="the groups are consecutive: completions 0..G-1 belong to prompt 0, G..2G-1 "
            "to prompt 1. rewards.view(-1, group_size), not view(group_size, -1).",
        ),
        Case(
            "rewards 0.001 apart: (0.5, 0.501, 0.5, 0.501)",
            (_rewards(0.5, 0.501, 0.5, 0.501), 4),
            hint="eps is added to the std, outside the square root: std + eps, not "
            "sqrt(var + eps).",
        ),
        Case(
            "scale=False (Dr. GRPO): 2 groups of 4",
            (_rewards(1, 0, 0, 0, 1, 1, 0.5, 1), 4),
            {"scale": False},
            hint="with scale=False the advantage is only centred: r - group mean, no division.",
        ),
        Case(
            "eps=0.1",
            (_rewards(1, 0, 0, 1, 1, 1, 0, 1), 4),
            {"eps": 0.1},
            hint="use the eps argument, do not hard-code 1e-4.",
        ),
        Case("8 groups of 16, random rewards", (_random_rewards(128, 1), 16)),
    ]
    return run_check(
        "group_advantages",
        group_advantages,
        reference_group_advantages,
        cases,
        hint="groups = rewards.view(-1, group_size); a = groups - groups.mean(dim=1, "
        "keepdim=True); if scale: a = a / (groups.std(dim=1, keepdim=True) + eps); "
        "return a.reshape(-1).",
        compare=compare_with(atol=1e-5, rtol=1e-3),
        forbid=FORBID_GRPO,
    )


# --------------------------------------------------------------------------------------------
# grpo_loss


@dataclass(frozen=True)
class LossCase:
    """Inputs of the loss, drawn from ``seed``.

    ``lengths``: real tokens per sequence (the rest is padding, filled with garbage values);
    ``drift``: std of old_logps - logps (0: on-policy, every ratio 1); ``ref_drift``: the same
    for ref_logps; ``clip_eps`` and ``beta`` are passed to the function.
    """

    lengths: tuple[int, ...]
    drift: float = 0.0
    ref_drift: float = 0.0
    clip_eps: float = 0.2
    beta: float = 0.0
    seed: int = 0

    def tensors(self) -> tuple[torch.Tensor, ...]:
        g = generator(self.seed)
        batch, T = len(self.lengths), max(self.lengths)
        logps = -3 * torch.rand(batch, T, generator=g)
        old = logps + self.drift * torch.randn(batch, T, generator=g)
        ref = logps + self.ref_drift * torch.randn(batch, T, generator=g)
        advantages = torch.randn(batch, generator=g)
        mask = (torch.arange(T)[None] < torch.tensor(self.lengths)[:, None]).float()
        garbage = -20 * torch.rand(3, batch, T, generator=g)  # padding holds other values
        logps, old, ref = (
            torch.where(mask.bool(), t, junk)
            for t, junk in zip((logps, old, ref), garbage, strict=True)
        )
        return logps, old, ref, advantages, mask

    def __repr__(self) -> str:
        return (
            f"lengths={self.lengths}, old_logps = logps + N(0, {self.drift:g}), ref_logps = "
            f"logps + N(0, {self.ref_drift:g}), clip_eps={self.clip_eps:g}, beta={self.beta:g}"
        )


def _run_loss(fn: Callable, case: LossCase) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss and its gradient with respect to ``logps``."""
    logps, old, ref, advantages, mask = case.tensors()
    logps.requires_grad_(True)
    loss = fn(logps, old, ref, advantages, mask, case.clip_eps, case.beta)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise TypeError(f"expected the loss as a one-number tensor, received {describe(loss)}")
    if not loss.requires_grad:
        raise TypeError(
            "the loss has no gradient with respect to logps: compute it from logps with torch "
            "operations (no .item(), .detach() or numpy on the way)"
        )
    (grad,) = torch.autograd.grad(loss.reshape(()), logps, allow_unused=True)
    if grad is None:
        grad = torch.zeros_like(logps)
    return loss.detach().reshape(()).float(), grad


def _compare_loss(received: Any, expected: Any) -> str | None:
    loss, grad = received
    want_loss, want_grad = expected
    problem = compare_tensors(loss, want_loss, atol=1e-5, rtol=1e-4)
    if problem:
        return f"the loss: {problem}"
    problem = compare_tensors(grad, want_grad, atol=1e-6, rtol=1e-4)
    if problem:
        return f"its gradient with respect to logps (sequence, token): {problem}"
    return None


def check_grpo_loss(grpo_loss: Callable) -> CheckResult:
    """Check ``grpo_loss(logps, old_logps, ref_logps, advantages, mask, clip_eps, beta)``.

    Compares the loss and its gradient with respect to ``logps`` (batch, T).
    """
    cases = [
        Case(
            "on-policy (every ratio 1), beta=0, no padding",
            (LossCase((4, 4, 4), seed=1),),
            hint="the loss is MINUS the surrogate (the optimizer minimises it), with the ratio "
            "exp(logps - old_logps), not the difference of the log-probs itself. On-policy "
            "every ratio is 1 and the loss is -mean(advantages).",
        ),
        Case(
            "ratios far outside [0.8, 1.2], beta=0, no padding",
            (LossCase((5, 5, 5, 5), drift=0.5, seed=2),),
            hint="per token: -torch.min(ratio * A, torch.clamp(ratio, 1 - clip_eps, 1 + "
            "clip_eps) * A). The MIN of the two is the pessimistic bound (max would reward "
            "moving far from the old policy), and it is the RATIO that is clipped, not the "
            "advantage. A has one value per sequence: advantages[:, None].",
        ),
        Case(
            "KL penalty: beta=0.04, ref_logps far from logps, on-policy",
            (LossCase((4, 4, 4), ref_drift=0.8, beta=0.04, seed=3),),
            hint="KL = exp(ref_logps - logps) - (ref_logps - logps) - 1 (the k3 estimator: "
            "ref minus policy, in that order), ADDED to the per-token loss as + beta * KL: "
            "the penalty grows as the policy leaves the reference.",
        ),
        Case(
            "padded sequences of 6, 2, 4 and 1 tokens (garbage in the padding)",
            (LossCase((6, 2, 4, 1), drift=0.1, ref_drift=0.3, beta=0.04, seed=4),),
            hint="only real tokens count: (per_token * mask).sum(-1) / mask.sum(-1) is each "
            "sequence's mean; then average those over the sequences. A mean over all T "
            "positions counts padding; one mean over all real tokens of the batch "
            "(DAPO's) weighs long sequences more.",
        ),
        Case(
            "clip_eps=0.3, beta=0.02, padding, off-policy",
            (LossCase((7, 3, 5), drift=0.4, ref_drift=0.4, clip_eps=0.3, beta=0.02, seed=5),),
            hint="use the clip_eps and beta arguments, do not hard-code 0.2 and 0.04.",
        ),
        Case(
            "16 sequences of 1 to 12 tokens, everything at once",
            (
                LossCase(
                    (12, 1, 5, 9, 12, 3, 7, 2, 11, 6, 4, 8, 10, 12, 2, 5),
                    drift=0.3,
                    ref_drift=0.5,
                    beta=0.04,
                    seed=6,
                ),
            ),
        ),
    ]
    return run_check(
        "grpo_loss",
        grpo_loss,
        reference_grpo_loss,
        cases,
        hint="ratio = torch.exp(logps - old_logps); A = advantages[:, None]; per_token = "
        "-torch.min(ratio * A, ratio.clamp(1 - clip_eps, 1 + clip_eps) * A) + beta * "
        "(torch.exp(ref_logps - logps) - (ref_logps - logps) - 1); then "
        "((per_token * mask).sum(-1) / mask.sum(-1)).mean().",
        run=_run_loss,
        compare=_compare_loss,
        arg_names=("inputs",),
        forbid=FORBID_GRPO,
    )
