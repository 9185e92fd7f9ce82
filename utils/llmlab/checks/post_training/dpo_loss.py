"""Checks of chapter 04's DPO lab, ``solutions/04_post_training/04_dpo_loss.ipynb``.

    lab 04_dpo_loss: completion_logprob, dpo_loss

``completion_logprob(logits, input_ids, completion_mask)``: each row's summed log-probability
of its completion tokens, (batch, seq, vocab), (batch, seq), (batch, seq) -> (batch,): the
logits at position t score the token at t + 1, so
``sum_t completion_mask[:, t + 1] * log_softmax(logits[:, t])[input_ids[:, t + 1]]``.

``dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
beta)``: ``(losses, chosen_rewards, rejected_rewards)``, each (pairs,), with
``losses = -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))`` and the implicit rewards
``beta * (pi - ref)``. The references are :mod:`llmlab.posttrain.dpo` and
:mod:`llmlab.posttrain.logprobs` (tested equal to trl's DPOTrainer).

Both checks name the slip a wrong value matches: for the log-prob, no shift, the mask not
shifted, probabilities instead of log-probs, ``log(softmax)`` that underflows, a mean instead
of a sum, the prompt summed too; for the loss, ratios without the reference, beta outside the
log-sigmoid, chosen and rejected swapped, the log of a ratio of log-probs, a missing sign,
rewards without beta, and one mean loss instead of one loss per pair.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from llmlab.checks import Case, CheckResult, compare_tensors, describe, run_check
from llmlab.checks._inputs import generator, randn, token_ids
from llmlab.posttrain import dpo

#: An answer that calls the library's DPO code (or trl's) is flagged.
FORBID = ("llmlab.posttrain.dpo", "llmlab.posttrain.logprobs", "trl")


# --------------------------------------------------------------------------------------------
# References


def _gathered(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """log p(x_{t+1} | x_<=t): (batch, seq - 1)."""
    work = torch.promote_types(logits.dtype, torch.float32)  # float32 at least
    logp = torch.log_softmax(logits[:, :-1].to(work), dim=-1)
    return logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1).to(logits.dtype)


def reference_completion_logprob(
    logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor
) -> torch.Tensor:
    """sum_t completion_mask[:, t + 1] * log_softmax(logits[:, t])[input_ids[:, t + 1]]: (batch,)."""
    per_token = _gathered(logits, input_ids)
    keep = completion_mask[:, 1:].bool()
    return torch.where(keep, per_token, torch.zeros_like(per_token)).sum(dim=1)


def reference_dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(losses, chosen_rewards, rejected_rewards) of DPO (:func:`llmlab.posttrain.dpo.dpo_loss`)."""
    return dpo.dpo_loss(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta
    )


# --------------------------------------------------------------------------------------------
# completion_logprob


def _completion(lengths: list[tuple[int, int]], seq: int, side: str) -> torch.Tensor:
    """A completion mask: row r has a prompt of p tokens then a completion of c tokens."""
    mask = torch.zeros(len(lengths), seq, dtype=torch.int64)
    for row, (p, c) in enumerate(lengths):
        start = p if side == "right" else seq - c
        mask[row, start : start + c] = 1
    return mask


def _logprob_cases() -> list[Case]:
    def case(name, lengths, seq, vocab, seed, side="right", scale=2.0, dtype=torch.float32, **kw):
        logits = randn(len(lengths), seq, vocab, seed=seed, scale=scale, dtype=dtype)
        ids = token_ids(len(lengths), seq, vocab=vocab, seed=seed + 1)
        return Case(name, (logits, ids, _completion(lengths, seq, side)), **kw)

    return [
        case("2 rows, prompts of 4 and 3 tokens, completions of 3 and 5", [(4, 3), (3, 5)], 8, 11, 40),
        case("one row, a completion of one token", [(5, 1)], 6, 7, 42),
        case("3 rows padded on the right (mask 0 after the completion)", [(2, 3), (4, 4), (3, 1)], 9, 13, 44),
        case("2 rows padded on the left (the completion ends the row)", [(2, 2), (1, 6)], 8, 9, 46, side="left"),
        case(
            "logits of scale 100",
            [(3, 4), (2, 2)],
            7,
            20,
            48,
            scale=100.0,
            hint="torch.log(torch.softmax(x)) gives log(0) = -inf for unlikely tokens; "
            "torch.log_softmax(x) computes the same without underflow.",
        ),
        case("float64, 4 rows of 12 over a vocabulary of 50", [(3, 9), (5, 2), (1, 11), (6, 6)], 12, 50, 50, dtype=torch.float64),
    ]  # fmt: skip


def _logprob_variants(logits, input_ids, completion_mask) -> dict[str, torch.Tensor]:
    """Values of the usual slips on this case, to name the one a wrong answer made."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    rows = []
    no_shift = logp.gather(-1, input_ids[..., None]).squeeze(-1)  # logits[t] scored at x_t
    shifted = logp[:, :-1].gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    mask = completion_mask.bool()
    rows.append(
        (
            "no shift: the logits at position t predict the NEXT token, input_ids[:, t + 1]; "
            "use logits[:, :-1] against input_ids[:, 1:]",
            (no_shift * mask).sum(1),
        )
    )
    rows.append(
        (
            "the completion mask is not shifted with the tokens: the log-prob of token t + 1 "
            "comes from logits[:, t], so mask it with completion_mask[:, 1:]",
            (shifted * mask[:, :-1]).sum(1),
        )
    )
    rows.append(
        (
            "the sum is of probabilities, not log-probabilities: sum log_softmax(...) over the "
            "completion (a sequence's log-prob is the sum of its tokens' log-probs)",
            (shifted.exp() * mask[:, 1:]).sum(1),
        )
    )
    rows.append(
        (
            "the result is a mean over the completion's tokens: DPO uses the SUM (the "
            "log-probability of the whole completion)",
            (shifted * mask[:, 1:]).sum(1) / mask[:, 1:].sum(1),
        )
    )
    rows.append(
        (
            "the prompt's tokens are summed too: keep only the completion's (completion_mask)",
            shifted.sum(1),
        )
    )
    return dict(rows)


def _logprob_problem(received: Any, expected: dict) -> str | None:
    value = received["out"]
    if not isinstance(value, torch.Tensor):
        return f"expected a (batch,) tensor, received {describe(value)}"
    problem = compare_tensors(value, expected["out"], atol=1e-4, rtol=1e-5)
    if problem is None or value.shape != expected["out"].shape:
        return problem
    if not value.isfinite().all():
        return (
            f"received {value.detach().tolist()}: torch.log(torch.softmax(...)) underflows "
            "to log(0) = -inf for unlikely tokens (and -inf * 0 at a masked position is NaN); "
            "torch.log_softmax(...) does not"
        )
    for slip, wrong in _logprob_variants(*received["inputs"]).items():
        if torch.allclose(value.detach().double(), wrong, atol=1e-4, rtol=1e-5):
            return slip
    return problem


def _run_logprob(fn: Callable, logits, input_ids, completion_mask) -> dict:
    out = fn(logits.clone(), input_ids.clone(), completion_mask.clone())
    return {"out": out, "inputs": (logits, input_ids, completion_mask)}


def check_completion_logprob(completion_logprob: Callable) -> CheckResult:
    """Check ``completion_logprob(logits, input_ids, completion_mask) -> (batch,)``."""
    return run_check(
        "completion_logprob",
        completion_logprob,
        reference_completion_logprob,
        _logprob_cases(),
        hint="logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, input_ids[:, 1:, None])"
        ".squeeze(-1); return (logp * completion_mask[:, 1:]).sum(1).",
        run=_run_logprob,
        compare=_logprob_problem,
        arg_names=("logits", "input_ids", "completion_mask"),
        forbid=FORBID,
    )


# --------------------------------------------------------------------------------------------
# dpo_loss


def _logps(pairs: int, seed: int, dtype=torch.float32) -> tuple[torch.Tensor, ...]:
    """Four (pairs,) sequence log-probs in [-60, -5]: policy chosen/rejected, ref chosen/rejected."""
    g = generator(seed)
    return tuple(-5 - 55 * torch.rand(pairs, generator=g, dtype=dtype) for _ in range(4))


def _dpo_cases() -> list[Case]:
    pc, pr, _, _ = _logps(3, 64)
    return [
        Case("4 pairs, beta 0.1", (*_logps(4, 60), 0.1)),
        Case("8 pairs, beta 0.5", (*_logps(8, 61), 0.5)),
        Case("one pair, beta 1", (*_logps(1, 62), 1.0)),
        Case("16 pairs, float64, beta 0.2", (*_logps(16, 63, torch.float64), 0.2)),
        Case(
            "the policy equals the reference: every loss is log 2",
            (pc, pr, pc.clone(), pr.clone(), 0.3),
        ),
        Case(
            "a pair ranked wrong by 500 nats, beta 1",
            (torch.tensor([-600.0, -10.0]), torch.tensor([-100.0, -12.0]),
             torch.tensor([-100.0, -11.0]), torch.tensor([-100.0, -11.0]), 1.0),
            hint="F.logsigmoid(x) is log(sigmoid(x)) without the underflow of sigmoid(-500) "
            "to 0.",
        ),
    ]  # fmt: skip


def _dpo_variants(pc, pr, rc, rr, beta) -> dict[str, torch.Tensor]:
    """Per-pair losses of the usual slips on this case, to name the one a wrong answer made."""
    z = (pc - rc) - (pr - rr)
    return {
        "the log-ratios are missing the reference: the implicit reward is beta * (log pi - "
        "log pi_ref), so z = (pi_c - ref_c) - (pi_r - ref_r)": -F.logsigmoid(beta * (pc - pr)),
        "beta is outside the log-sigmoid: it scales the margin INSIDE, -logsigmoid(beta * z)": -beta
        * F.logsigmoid(z),
        "chosen and rejected are swapped: the loss must fall as the chosen completion gains "
        "on the rejected one, -logsigmoid(beta * (chosen ratio - rejected ratio))": -F.logsigmoid(
            -beta * z
        ),
        "the log-ratio is the log of a ratio of LOG-probs: the inputs are log-probabilities "
        "already, so log(pi / pi_ref) is their difference pi_c - ref_c": -F.logsigmoid(
            beta * (torch.log(pc / rc) - torch.log(pr / rr))
        ),
        "a sign is missing: the loss is MINUS the log-sigmoid (it is positive, and falls as "
        "the margin grows)": F.logsigmoid(beta * z),
        "the loss is 1 - sigmoid, not -log sigmoid": 1 - torch.sigmoid(beta * z),
    }


def _as_triple(value: Any) -> tuple[Any, Any, Any] | str:
    if isinstance(value, torch.Tensor):
        return (
            f"expected a tuple (losses, chosen_rewards, rejected_rewards), received "
            f"{describe(value)}: return the implicit rewards too"
        )
    if not isinstance(value, (tuple, list)) or len(value) != 3:
        return (
            f"expected a tuple (losses, chosen_rewards, rejected_rewards), received "
            f"{describe(value)}"
        )
    return tuple(value)


def _dpo_problem(received: Any, expected: dict) -> str | None:
    triple = _as_triple(received["out"])
    if isinstance(triple, str):
        return triple
    losses, chosen, rejected = triple
    want_losses, want_chosen, want_rejected = expected["out"]
    pc, pr, rc, rr, beta = received["inputs"]
    if isinstance(losses, torch.Tensor) and losses.shape == ():
        return (
            f"losses: expected one loss per pair, shape {tuple(want_losses.shape)}, received "
            "a 0-dim tensor: return the per-pair losses (the training loop takes the mean)"
        )
    problem = compare_tensors(losses, want_losses, atol=1e-5, rtol=1e-5)
    if problem is not None:
        if isinstance(losses, torch.Tensor) and losses.shape == want_losses.shape:
            if losses.isinf().any():
                return (
                    "losses: received inf: log(sigmoid(x)) underflows to log(0) for a pair "
                    "ranked wrong by a lot; F.logsigmoid(x) does not"
                )
            for slip, wrong in _dpo_variants(pc, pr, rc, rr, beta).items():
                if torch.allclose(losses.detach(), wrong, atol=1e-5, rtol=1e-5, equal_nan=True):
                    return f"losses: {slip}"
        return f"losses: {problem}"
    for name, got, want, policy, ref in (
        ("chosen_rewards", chosen, want_chosen, pc, rc),
        ("rejected_rewards", rejected, want_rejected, pr, rr),
    ):
        problem = compare_tensors(got, want, atol=1e-5, rtol=1e-5)
        if problem is None:
            continue
        if isinstance(got, torch.Tensor) and got.shape == want.shape:
            slips = {
                "the implicit reward is missing beta: it is beta * (log pi - log pi_ref)": policy
                - ref,
                "the implicit reward is missing the reference: beta * (log pi - log pi_ref)": beta
                * policy,
                "the rewards are swapped: chosen_rewards belong to the chosen completions": beta
                * ((pr - rr) if name == "chosen_rewards" else (pc - rc)),
            }
            for slip, wrong in slips.items():
                if torch.allclose(got.detach(), wrong, atol=1e-5, rtol=1e-5):
                    return f"{name}: {slip}"
        return f"{name}: {problem}"
    return None


def _run_dpo(fn: Callable, pc, pr, rc, rr, beta) -> dict:
    out = fn(pc.clone(), pr.clone(), rc.clone(), rr.clone(), beta)
    return {"out": out, "inputs": (pc, pr, rc, rr, beta)}


def check_dpo_loss(dpo_loss: Callable) -> CheckResult:
    """Check ``dpo_loss(pi_c, pi_r, ref_c, ref_r, beta) -> (losses, chosen_rewards,
    rejected_rewards)``."""
    return run_check(
        "dpo_loss",
        dpo_loss,
        reference_dpo_loss,
        _dpo_cases(),
        hint="chosen = pi_c - ref_c; rejected = pi_r - ref_r; losses = "
        "-F.logsigmoid(beta * (chosen - rejected)); rewards = beta * chosen, beta * rejected.",
        run=_run_dpo,
        compare=_dpo_problem,
        arg_names=(
            "policy_chosen_logps",
            "policy_rejected_logps",
            "ref_chosen_logps",
            "ref_rejected_logps",
            "beta",
        ),
        forbid=FORBID,
    )
