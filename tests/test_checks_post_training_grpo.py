"""The checks of chapter 04's GRPO lab (llmlab.checks.post_training.grpo).

For every check: the reference passes, other correct answers pass too (a loop over groups,
numpy-free reshapes, boolean indexing of the real tokens), plausible wrong answers (mutants)
fail on the case that exposes them, a NotImplementedError stub reports "not implemented",
garbage never raises, and the global seed does not move.
"""

from __future__ import annotations

import torch
from check_contract import CheckContract

from llmlab.checks.post_training import grpo as gc
from llmlab.posttrain import grpo

CHECKS = {
    "check_group_advantages": (gc.check_group_advantages, gc.reference_group_advantages),
    "check_grpo_loss": (gc.check_grpo_loss, gc.reference_grpo_loss),
}

GARBAGE = {
    "returns a number": lambda *a, **k: 0.5,
    "returns a list": lambda *a, **k: [0.0, 1.0],
    "returns a string": lambda *a, **k: "loss",
    "returns its first input": lambda x, *a, **k: x,
    "returns a detached zero": lambda *a, **k: torch.tensor(0.0),
    "returns NaNs": lambda x, *a, **k: torch.full_like(x, float("nan")),
    "returns a tuple": lambda *a, **k: (torch.zeros(1), torch.zeros(1)),
    "takes no arguments": lambda: torch.zeros(1),
}


class TestContract(CheckContract):
    MODULES = (gc,)
    CHECKS = CHECKS
    GARBAGE = GARBAGE
    MIN_CASES = 6


# --------------------------------------------------------------------------------------------
# group_advantages

FIRST_ADV = "one group of 4: rewards (1, 0, 0, 1)"
TWO_GROUPS = "2 groups of 4: (1, 0, 0, 1 | 1, 1, 0, 1)"
EQUAL = "a group of equal rewards: (1, 1, 1, 1 | 0, 1, 0, 0)"


def advantages(rewards, group_size, scale=True, eps=1e-4):
    groups = rewards.view(-1, group_size)
    a = groups - groups.mean(dim=1, keepdim=True)
    if scale:
        a = a / (groups.std(dim=1, keepdim=True) + eps)
    return a.reshape(-1)


def advantages_loop(rewards, group_size, scale=True, eps=1e-4):
    out = []
    for start in range(0, len(rewards), group_size):
        g = rewards[start : start + group_size]
        centred = g - g.mean()
        out.append(centred / (g.std() + eps) if scale else centred)
    return torch.cat(out)


def advantages_by_formula(rewards, group_size, scale=True, eps=1e-4):
    # the unbiased std written out: sqrt(sum (r - mean)^2 / (G - 1))
    groups = rewards.reshape(-1, group_size)
    centred = groups - groups.sum(1, keepdim=True) / group_size
    if scale:
        std = ((centred**2).sum(1, keepdim=True) / (group_size - 1)).sqrt()
        centred = centred / (std + eps)
    return centred.flatten()


def adv_whole_batch(rewards, group_size, scale=True, eps=1e-4):
    a = rewards - rewards.mean()
    return a / (rewards.std() + eps) if scale else a


def adv_no_eps(rewards, group_size, scale=True, eps=1e-4):
    groups = rewards.view(-1, group_size)
    a = groups - groups.mean(dim=1, keepdim=True)
    return (a / groups.std(dim=1, keepdim=True) if scale else a).reshape(-1)


def adv_population_std(rewards, group_size, scale=True, eps=1e-4):
    groups = rewards.view(-1, group_size)
    a = groups - groups.mean(dim=1, keepdim=True)
    return (a / (groups.std(dim=1, keepdim=True, unbiased=False) + eps) if scale else a).reshape(-1)


def adv_strided_groups(rewards, group_size, scale=True, eps=1e-4):  # view(group_size, -1)
    groups = rewards.view(group_size, -1)
    a = groups - groups.mean(dim=0, keepdim=True)
    return (a / (groups.std(dim=0, keepdim=True) + eps) if scale else a).reshape(-1)


def adv_eps_under_sqrt(rewards, group_size, scale=True, eps=1e-4):
    groups = rewards.view(-1, group_size)
    a = groups - groups.mean(dim=1, keepdim=True)
    return (a / (groups.var(dim=1, keepdim=True) + eps).sqrt() if scale else a).reshape(-1)


def adv_ignores_scale(rewards, group_size, scale=True, eps=1e-4):
    return advantages(rewards, group_size, True, eps)


def adv_hard_coded_eps(rewards, group_size, scale=True, eps=1e-4):
    return advantages(rewards, group_size, scale, 1e-4)


# --------------------------------------------------------------------------------------------
# grpo_loss

FIRST_LOSS = "on-policy (every ratio 1), beta=0, no padding"
CLIPPED = "ratios far outside [0.8, 1.2], beta=0, no padding"
KL = "KL penalty: beta=0.04, ref_logps far from logps, on-policy"
PADDED = "padded sequences of 6, 2, 4 and 1 tokens (garbage in the padding)"
ARGS = "clip_eps=0.3, beta=0.02, padding, off-policy"


def _per_token(logps, old_logps, ref_logps, advantages, clip_eps, beta):
    ratio = torch.exp(logps - old_logps)
    a = advantages[:, None]
    surrogate = torch.min(ratio * a, ratio.clamp(1 - clip_eps, 1 + clip_eps) * a)
    kl = torch.exp(ref_logps - logps) - (ref_logps - logps) - 1
    return -surrogate + beta * kl


def loss(logps, old_logps, ref_logps, advantages, mask, clip_eps=0.2, beta=0.04):
    per_token = _per_token(logps, old_logps, ref_logps, advantages, clip_eps, beta)
    return ((per_token * mask).sum(-1) / mask.sum(-1)).mean()


def loss_boolean_index(logps, old_logps, ref_logps, advantages, mask, clip_eps=0.2, beta=0.04):
    # each sequence's real tokens picked out, one sequence at a time
    per_token = _per_token(logps, old_logps, ref_logps, advantages, clip_eps, beta)
    return torch.stack(
        [row[m.bool()].mean() for row, m in zip(per_token, mask, strict=True)]
    ).mean()


def loss_where_clipped(logps, old_logps, ref_logps, advantages, mask, clip_eps=0.2, beta=0.04):
    # PPO's other way of writing it: max of the two NEGATED terms
    ratio = torch.exp(logps - old_logps)
    a = advantages.unsqueeze(1)
    pg = torch.maximum(-a * ratio, -a * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps))
    d = ref_logps - logps
    per_token = pg + beta * (d.exp() - d - 1)
    return ((per_token * mask).sum(1) / mask.sum(1)).mean()


def loss_max(logps, old_logps, ref_logps, advantages, mask, clip_eps=0.2, beta=0.04):
    ratio = torch.exp(logps - old_logps)
    a = advantages[:, None]
    surrogate = torch.max(ratio * a, ratio.clamp(1 - clip_eps, 1 + clip_eps) * a)
    d = ref_logps - logps
    per_token = -surrogate + beta * (d.exp() - d - 1)
    return ((per_token * mask).sum(-1) / mask.sum(-1)).mean()


def loss_clips_advantage(logps, old_logps, ref_logps, advantages, mask, clip_eps=0.2, beta=0.04):
    ratio = torch.exp(logps - old_logps)
    a = advantages[:, None]
    surrogate = torch.min(ratio * a, ratio * a.clamp(1 - clip_eps, 1 + clip_eps))
    d = ref_logps - logps
    per_token = -surrogate + beta * (d.exp() - d - 1)
    return ((per_token * mask).sum(-1) / mask.sum(-1)).mean()


def loss_swapped_kl(logps, old_logps, ref_logps, advantages, mask, clip_eps=0.2, beta=0.04):
    ratio = torch.exp(logps - old_logps)
    a = advantages[:, None]
    surrogate = torch.min(ratio * a, ratio.clamp(1 - clip_eps, 1 + clip_eps) * a)
    d = logps - ref_logps  # policy minus ref: the estimator of the other KL direction
    per_token = -surrogate + beta * (d.exp() - d - 1)
    return ((per_token * mask).sum(-1) / mask.sum(-1)).mean()


def loss_kl_subtracted(logps, old_logps, ref_logps, advantages, mask, clip_eps=0.2, beta=0.04):
    ratio = torch.exp(logps - old_logps)
    a = advantages[:, None]
    surrogate = torch.min(ratio * a, ratio.clamp(1 - clip_eps, 1 + clip_eps) * a)
    d = ref_logps - logps
    per_token = -(surrogate + beta * (d.exp() - d - 1))  # the KL rewarded, not penalised
    return ((per_token * mask).sum(-1) / mask.sum(-1)).mean()


def loss_counts_padding(logps, old_logps, ref_logps, advantages, mask, clip_eps=0.2, beta=0.04):
    return _per_token(logps, old_logps, ref_logps, advantages, clip_eps, beta).mean()


def loss_masked_over_T(logps, old_logps, ref_logps, advantages, mask, clip_eps=0.2, beta=0.04):
    per_token = _per_token(logps, old_logps, ref_logps, advantages, clip_eps, beta)
    return (per_token * mask).mean(-1).mean()  # zeroes the padding but divides by T


def loss_token_mean(logps, old_logps, ref_logps, advantages, mask, clip_eps=0.2, beta=0.04):
    per_token = _per_token(logps, old_logps, ref_logps, advantages, clip_eps, beta)
    return (per_token * mask).sum() / mask.sum()  # DAPO's reduction, not GRPO's


def loss_log_ratio(logps, old_logps, ref_logps, advantages, mask, clip_eps=0.2, beta=0.04):
    ratio = logps - old_logps  # forgot the exp
    a = advantages[:, None]
    surrogate = torch.min(ratio * a, ratio.clamp(1 - clip_eps, 1 + clip_eps) * a)
    d = ref_logps - logps
    per_token = -surrogate + beta * (d.exp() - d - 1)
    return ((per_token * mask).sum(-1) / mask.sum(-1)).mean()


def loss_no_minus(logps, old_logps, ref_logps, advantages, mask, clip_eps=0.2, beta=0.04):
    return -loss(logps, old_logps, ref_logps, advantages, mask, clip_eps, beta)


def loss_hard_coded(logps, old_logps, ref_logps, advantages, mask, clip_eps=0.2, beta=0.04):
    return loss(logps, old_logps, ref_logps, advantages, mask, 0.2, 0.04)


def loss_detached(logps, old_logps, ref_logps, advantages, mask, clip_eps=0.2, beta=0.04):
    return loss(logps.detach(), old_logps, ref_logps, advantages, mask, clip_eps, beta)


# --------------------------------------------------------------------------------------------
# What the contract runs

ADV, LOSS = "check_group_advantages", "check_grpo_loss"

CORRECT_VARIANTS = [
    (ADV, advantages),
    (ADV, advantages_loop),
    (ADV, advantages_by_formula),
    (LOSS, loss),
    (LOSS, loss_boolean_index),
    (LOSS, loss_where_clipped),
]

MUTANTS = [
    (ADV, adv_population_std, FIRST_ADV, "max abs error"),
    (ADV, adv_whole_batch, TWO_GROUPS, "max abs error"),
    (ADV, adv_no_eps, EQUAL, "received NaN at 4 of 8 positions"),
    (ADV, adv_strided_groups, TWO_GROUPS, "max abs error"),
    (ADV, adv_eps_under_sqrt, "rewards 0.001 apart: (0.5, 0.501, 0.5, 0.501)", "max abs error"),
    (ADV, adv_ignores_scale, "scale=False (Dr. GRPO): 2 groups of 4", "max abs error"),
    (ADV, adv_hard_coded_eps, "eps=0.1", "max abs error"),
    (LOSS, loss_no_minus, FIRST_LOSS, "the loss: max abs error"),
    (LOSS, loss_log_ratio, FIRST_LOSS, "the loss: max abs error"),
    (LOSS, loss_max, CLIPPED, "the loss: max abs error"),
    (LOSS, loss_clips_advantage, CLIPPED, "the loss: max abs error"),
    (LOSS, loss_swapped_kl, KL, "the loss: max abs error"),
    (LOSS, loss_kl_subtracted, KL, "the loss: max abs error"),
    (LOSS, loss_counts_padding, PADDED, "the loss: max abs error"),
    (LOSS, loss_masked_over_T, PADDED, "the loss: max abs error"),
    (LOSS, loss_token_mean, PADDED, "the loss: max abs error"),
    (LOSS, loss_hard_coded, ARGS, "the loss: max abs error"),
    (LOSS, loss_detached, FIRST_LOSS, "the loss has no gradient with respect to logps"),
]


def adv_with_the_library(rewards, group_size, scale=True, eps=1e-4):
    return grpo.group_advantages(rewards, group_size, scale, eps)


def loss_with_the_library(logps, old_logps, ref_logps, advantages, mask, clip_eps=0.2, beta=0.04):
    return grpo.grpo_loss(logps, old_logps, ref_logps, advantages, mask, clip_eps, beta)


FORBIDDEN = [
    (ADV, adv_with_the_library, "llmlab.posttrain.grpo.group_advantages"),
    (LOSS, loss_with_the_library, "llmlab.posttrain.grpo.grpo_loss"),
]


def test_a_clipped_token_gets_no_gradient_from_the_surrogate():
    # What the gradient comparison adds: a loss equal in value can still differ in gradient.
    case = gc.LossCase((5, 5, 5, 5), drift=0.5, seed=2)
    _, grad = gc._run_loss(gc.reference_grpo_loss, case)
    logps, old, *_ = case.tensors()
    ratio, adv = torch.exp(logps - old), case.tensors()[3][:, None]
    clipped = ((ratio > 1.2) & (adv > 0)) | ((ratio < 0.8) & (adv < 0))
    assert clipped.any() and (grad[clipped] == 0).all() and (grad[~clipped] != 0).all()
