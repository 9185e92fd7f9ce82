"""The checks of chapter 04's reward-model lab (llmlab.checks.post_training.reward_loss).

For every check: the reference passes, other correct answers pass too (a softplus form, a
log(1 + exp) form on stable inputs is NOT among them: it overflows), plausible wrong answers
(mutants) fail on the case that exposes them with words that name the slip, a
NotImplementedError stub reports "not implemented", garbage never raises, and the global seed
does not move.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from check_contract import CheckContract, student_copy

from llmlab.checks.post_training import reward_loss as rl
from llmlab.posttrain import reward

CHECKS = {
    "check_bradley_terry_loss": (rl.check_bradley_terry_loss, rl.reference_bradley_terry_loss),
    "check_last_token_reward": (rl.check_last_token_reward, rl.reference_last_token_reward),
}

GARBAGE = {
    "returns a number": lambda *a, **k: 0.5,
    "returns a string": lambda *a, **k: "loss",
    "returns a list": lambda *a, **k: [0.1, 0.2],
    "returns NaN": lambda *a, **k: torch.tensor(math.nan),
    "returns its first input": lambda x, *a, **k: x,
    "takes no arguments": lambda: torch.tensor(0.0),
}


class TestContract(CheckContract):
    MODULES = (rl,)
    CHECKS = CHECKS
    GARBAGE = GARBAGE
    MIN_CASES = 6


# --------------------------------------------------------------------------------------------
# bradley_terry_loss

BT, HEAD = "check_bradley_terry_loss", "check_last_token_reward"
FIRST = "4 pairs of rewards around 0"


def bt(r_chosen, r_rejected):
    return -F.logsigmoid(r_chosen - r_rejected).mean()


def bt_softplus(r_chosen, r_rejected):  # -log sigmoid(x) = softplus(-x)
    return F.softplus(r_rejected - r_chosen).mean()


def bt_sigmoid(r_chosen, r_rejected):
    return -torch.sigmoid(r_chosen - r_rejected).mean()


def bt_swapped(r_chosen, r_rejected):
    return -F.logsigmoid(r_rejected - r_chosen).mean()


def bt_sum(r_chosen, r_rejected):
    return -F.logsigmoid(r_chosen - r_rejected).sum()


def bt_no_minus(r_chosen, r_rejected):
    return F.logsigmoid(r_chosen - r_rejected).mean()


def bt_log_of_sigmoid(r_chosen, r_rejected):
    return -torch.log(torch.sigmoid(r_chosen - r_rejected)).mean()


def bt_exp_ratio(r_chosen, r_rejected):  # the softmax over the pair, written with exp
    p = torch.exp(r_chosen) / (torch.exp(r_chosen) + torch.exp(r_rejected))
    return -torch.log(p).mean()


def bt_per_pair(r_chosen, r_rejected):
    return -F.logsigmoid(r_chosen - r_rejected)


def bt_item(r_chosen, r_rejected):
    return torch.tensor(-F.logsigmoid(r_chosen - r_rejected).mean().item())


# --------------------------------------------------------------------------------------------
# last_token_reward


def head(hidden, attention_mask, weight):
    positions = torch.arange(hidden.shape[1])
    last = (positions * attention_mask).argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0]), last] @ weight


def head_flip(hidden, attention_mask, weight):  # the first 1 from the right
    seq = attention_mask.shape[1]
    last = seq - 1 - attention_mask.long().flip(1).argmax(dim=1)
    return (hidden[torch.arange(hidden.shape[0]), last] * weight).sum(-1)


def head_minus_one(hidden, attention_mask, weight):
    return hidden[:, -1] @ weight


def head_sum_minus_one(hidden, attention_mask, weight):
    return hidden[torch.arange(hidden.shape[0]), attention_mask.sum(dim=1) - 1] @ weight


def head_mean(hidden, attention_mask, weight):
    m = attention_mask[..., None].float()
    return ((hidden * m).sum(1) / m.sum(1)) @ weight


def head_first(hidden, attention_mask, weight):
    return hidden[torch.arange(hidden.shape[0]), attention_mask.long().argmax(dim=1)] @ weight


CORRECT_VARIANTS = [(BT, bt), (BT, bt_softplus), (HEAD, head), (HEAD, head_flip)]

MUTANTS = [
    (BT, bt_sigmoid, FIRST, "uses sigmoid itself, not its logarithm"),
    (BT, bt_swapped, FIRST, "chosen and rejected are swapped"),
    (BT, bt_sum, FIRST, "the loss is a sum over the pairs"),
    (BT, bt_no_minus, FIRST, "the minus sign is missing"),
    (BT, bt_log_of_sigmoid, "a pair ranked wrong by 200", "underflows to 0"),
    (BT, bt_exp_ratio, "a pair ranked wrong by 200", "underflows to 0"),
    (BT, bt_per_pair, FIRST, "expected a 0-dim tensor"),
    (BT, bt_item, FIRST, "cut from the computation graph"),
    (HEAD, head_minus_one, "3 rows padded on the right", "read at position -1"),
    (HEAD, head_sum_minus_one, "3 rows padded on the left", "attention_mask.sum() - 1"),
    (HEAD, head_mean, "2 rows, no padding", "a mean over the tokens"),
    (HEAD, head_first, "2 rows, no padding", "at the FIRST real token"),
]

FORBIDDEN = [
    (
        BT,
        student_copy(rl.reference_bradley_terry_loss),
        "llmlab.posttrain.reward.bradley_terry_loss",
    ),
    (
        HEAD,
        student_copy(rl.reference_last_token_reward),
        "llmlab.posttrain.reward.last_token_index",
    ),
]


def test_the_head_reference_is_the_reward_models_own_pooling():
    # RewardModel reads its reward exactly where the reference does
    hidden = torch.randn(3, 7, 5)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 1, 1, 1], [1] * 7])
    expected = torch.stack([hidden[0, 2], hidden[1, 6], hidden[2, 6]]) @ torch.ones(5)
    assert torch.allclose(rl.reference_last_token_reward(hidden, mask, torch.ones(5)), expected)
    assert reward.last_token_index(mask).tolist() == [2, 6, 6]
