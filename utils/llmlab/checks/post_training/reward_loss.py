"""Checks of chapter 04's reward-model lab, ``solutions/04_post_training/03_reward_loss.ipynb``.

    lab 03_reward_loss: bradley_terry_loss, last_token_reward

``bradley_terry_loss(r_chosen, r_rejected)``: the mean over pairs of
``-log sigmoid(r_chosen - r_rejected)``, a 0-dim tensor that keeps the graph (the reference is
:func:`llmlab.posttrain.reward.bradley_terry_loss`, tested equal to trl's RewardTrainer).

``last_token_reward(hidden, attention_mask, weight)``: the reward head of a reward model, the
dot product of ``weight`` (d_model,) with each row's hidden state at its LAST REAL token,
(batch, seq, d_model) -> (batch,), for padding on either side (the reference uses
:func:`llmlab.posttrain.reward.last_token_index`).

The loss check runs each answer forward and backward, and names the slip its value matches:
sigmoid instead of log-sigmoid, chosen and rejected swapped, a sum instead of a mean, a missing
minus sign, ``log(sigmoid(.))`` that overflows to inf on a pair ranked wrong by a lot, a loss
cut from the graph. The head check names a reward read at position -1 (wrong under right
padding), at ``mask.sum() - 1`` (wrong under left padding), or averaged over the tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from llmlab.checks import Case, CheckResult, compare_tensors, describe, run_check
from llmlab.checks._inputs import generator, randn
from llmlab.posttrain import reward

#: An answer that calls the library's reward code (or trl's) is flagged.
FORBID = ("llmlab.posttrain.reward", "trl")


# --------------------------------------------------------------------------------------------
# References


def reference_bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """mean(-log sigmoid(r_chosen - r_rejected)), a 0-dim tensor."""
    return reward.bradley_terry_loss(r_chosen, r_rejected)


def reference_last_token_reward(
    hidden: torch.Tensor, attention_mask: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """hidden[b, last real token of row b] @ weight for every row b: (batch,)."""
    last = reward.last_token_index(attention_mask)
    return hidden[torch.arange(hidden.shape[0]), last] @ weight


# --------------------------------------------------------------------------------------------
# bradley_terry_loss


def _loss_variants(r_c: torch.Tensor, r_r: torch.Tensor) -> dict[str, torch.Tensor]:
    """The values of the usual slips on this case, to name the one a wrong answer made."""
    d = r_c - r_r
    return {
        "the loss uses sigmoid itself, not its logarithm: a pair's likelihood is "
        "sigmoid(r_c - r_r), the loss is minus its LOG, -F.logsigmoid(r_c - r_r)": -torch.sigmoid(
            d
        ).mean(),
        "the loss uses 1 - sigmoid(r_c - r_r), not -log sigmoid(r_c - r_r)": (
            1 - torch.sigmoid(d)
        ).mean(),
        "chosen and rejected are swapped: the loss must fall as r_chosen rises above r_rejected, "
        "so it is -log sigmoid(r_chosen - r_rejected)": -F.logsigmoid(-d).mean(),
        "the loss is a sum over the pairs: take the mean": -F.logsigmoid(d).sum(),
        "the minus sign is missing: log sigmoid is negative, the loss -log sigmoid(...) is "
        "positive and falls as the chosen reward rises": F.logsigmoid(d).mean(),
    }


def _run_loss(fn: Callable, r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> dict:
    r_c = r_chosen.clone().requires_grad_(True)
    out = fn(r_c, r_rejected.clone())
    grad = None
    if isinstance(out, torch.Tensor) and out.requires_grad and out.numel() == 1:
        (grad,) = torch.autograd.grad(out.sum(), r_c, allow_unused=True)
    return {"out": out, "grad": grad, "inputs": (r_chosen, r_rejected)}


def _loss_problem(received: dict, expected: dict) -> str | None:
    value = received["out"]
    if isinstance(value, torch.Tensor) and value.shape != ():
        return (
            f"expected a 0-dim tensor (one number for the batch), received shape "
            f"{tuple(value.shape)}: take .mean() of the per-pair losses"
        )
    problem = compare_tensors(value, expected["out"])
    if problem is None:
        if received["grad"] is None:
            return (
                "the loss is cut from the computation graph (no gradient reaches r_chosen): "
                "compute it with torch operations on the inputs, no .item(), .detach() or "
                "torch.tensor(...) around a result"
            )
        return compare_tensors(received["grad"], expected["grad"], atol=1e-5, rtol=1e-4)
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point():
        if value.isnan().any():
            return (
                "received NaN: exp() of large rewards overflows (inf / inf); only the "
                "difference r_chosen - r_rejected matters, and F.logsigmoid of it never overflows"
            )
        if value.isinf().any():
            return (
                f"received {value.item()} where {expected['out'].item():.6g} was expected: a "
                "probability computed first (sigmoid, or a ratio of exp) underflows to 0 for a "
                "pair ranked wrong by a lot, and its log is -inf; F.logsigmoid(r_chosen - "
                "r_rejected) computes the log directly"
            )
        for slip, wrong in _loss_variants(*received["inputs"]).items():
            if torch.isclose(value.detach().reshape(()), wrong, rtol=1e-4, atol=1e-6):
                return slip
    return problem


def _loss_cases() -> list[Case]:
    g = generator(11)
    return [
        Case("4 pairs of rewards around 0", (randn(4, seed=1), randn(4, seed=2))),
        Case("one pair, chosen ahead by 1", (torch.tensor([0.5]), torch.tensor([-0.5]))),
        Case(
            "16 pairs of rewards of scale 3, float64",
            (randn(16, seed=3, scale=3.0, dtype=torch.float64), randn(16, seed=4, scale=3.0, dtype=torch.float64)),
        ),
        Case(
            "a pair ranked wrong by 200",
            (torch.tensor([-100.0, 1.0]), torch.tensor([100.0, 0.0])),
            hint="F.logsigmoid(x) is log(sigmoid(x)) computed without the underflow of "
            "sigmoid(-200) to 0.",
        ),
        Case(
            "rewards shifted by +1000 (only differences matter)",
            (1000 + randn(5, seed=5), 1000 + randn(5, seed=6)),
            hint="use the difference r_chosen - r_rejected; exp(1000) overflows.",
        ),
        Case(
            "8 pairs, every chosen reward higher",
            (torch.rand(8, generator=g) + 1.0, torch.rand(8, generator=g)),
        ),
    ]  # fmt: skip


def check_bradley_terry_loss(bradley_terry_loss: Callable) -> CheckResult:
    """Check ``bradley_terry_loss(r_chosen, r_rejected) -> 0-dim tensor`` and its gradient."""
    return run_check(
        "bradley_terry_loss",
        bradley_terry_loss,
        reference_bradley_terry_loss,
        _loss_cases(),
        hint="-F.logsigmoid(r_chosen - r_rejected).mean() is the whole loss.",
        run=_run_loss,
        compare=_loss_problem,
        arg_names=("r_chosen", "r_rejected"),
        forbid=FORBID,
    )


# --------------------------------------------------------------------------------------------
# last_token_reward


def _mask(lengths: list[int], seq: int, side: str) -> torch.Tensor:
    mask = torch.zeros(len(lengths), seq, dtype=torch.int64)
    for row, n in enumerate(lengths):
        if side == "right":
            mask[row, :n] = 1
        else:
            mask[row, seq - n :] = 1
    return mask


def _head_cases() -> list[Case]:
    def case(name: str, lengths: list[int], seq: int, side: str, d: int, seed: int, **kw):
        hidden = randn(len(lengths), seq, d, seed=seed)
        return Case(name, (hidden, _mask(lengths, seq, side), randn(d, seed=seed + 1)), **kw)

    return [
        case("2 rows, no padding", [6, 6], 6, "right", 8, 20),
        case(
            "3 rows padded on the right",
            [7, 3, 5],
            7,
            "right",
            8,
            22,
            hint="on the right, padding FOLLOWS the text: the last real token of a row is at "
            "position attention_mask[row].sum() - 1, not at -1.",
        ),
        case(
            "3 rows padded on the left",
            [4, 9, 2],
            9,
            "left",
            16,
            24,
            hint="on the left, padding comes first: the last real token is the last position, "
            "whatever the row's length. Take the largest position whose mask is 1.",
        ),
        case("one row of a single token", [1], 1, "right", 4, 26),
        case("a row of one real token, padded on the right", [1, 5], 5, "right", 8, 28),
        Case(
            "a bool attention mask, padded on the right",
            (randn(2, 5, 8, seed=30), _mask([2, 5], 5, "right").bool(), randn(8, seed=31)),
        ),
    ]


def _head_problem(received: Any, expected: dict) -> str | None:
    value = received["out"]
    if not isinstance(value, torch.Tensor):
        return f"expected a (batch,) tensor of rewards, received {describe(value)}"
    problem = compare_tensors(value, expected["out"], atol=1e-5, rtol=1e-5)
    if problem is None or value.shape != expected["out"].shape:
        return problem
    hidden, mask, weight = received["inputs"]
    rows = torch.arange(hidden.shape[0])
    slips = {
        "the reward is read at position -1: with padding on the right that is a pad token; "
        "read it at each row's last REAL token (from attention_mask)": hidden[:, -1] @ weight,
        "the last real token is taken as attention_mask.sum() - 1: right for padding on the "
        "right, wrong on the left; take the largest position whose mask is 1": hidden[
            rows, mask.long().sum(dim=1) - 1
        ]
        @ weight,
        "the reward is a mean over the tokens: the reward model reads ONE hidden state, the "
        "last real token's, which has seen the whole prompt and answer": (
            (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        )
        @ weight,
        "the reward is read at the FIRST real token: it has seen nothing of the answer": hidden[
            rows, mask.long().argmax(dim=1)
        ]
        @ weight,
    }
    for slip, wrong in slips.items():
        if torch.allclose(value.detach(), wrong, atol=1e-5, rtol=1e-5):
            return slip
    return problem


def _run_head(fn: Callable, hidden, attention_mask, weight) -> dict:
    out = fn(hidden.clone(), attention_mask.clone(), weight.clone())
    return {"out": out, "inputs": (hidden, attention_mask, weight)}


def check_last_token_reward(last_token_reward: Callable) -> CheckResult:
    """Check ``last_token_reward(hidden, attention_mask, weight) -> (batch,)``."""
    return run_check(
        "last_token_reward",
        last_token_reward,
        reference_last_token_reward,
        _head_cases(),
        hint="last = (positions * mask).argmax(dim=1) with positions = torch.arange(seq); "
        "return hidden[torch.arange(batch), last] @ weight.",
        run=_run_head,
        compare=_head_problem,
        arg_names=("hidden", "attention_mask", "weight"),
        forbid=FORBID,
    )
