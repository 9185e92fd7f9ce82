"""The checks of chapter 04's DPO lab (llmlab.checks.post_training.dpo_loss).

For every check: the reference passes, other correct answers pass too (cross-entropy for the
log-probs, softplus for the loss), plausible wrong answers (mutants) fail on the case that
exposes them with words that name the slip, a NotImplementedError stub reports "not
implemented", garbage never raises, and the global seed does not move.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from check_contract import CheckContract, student_copy

from llmlab.checks.post_training import dpo_loss as dl
from llmlab.posttrain.logprobs import sequence_logprobs

CHECKS = {
    "check_completion_logprob": (dl.check_completion_logprob, dl.reference_completion_logprob),
    "check_dpo_loss": (dl.check_dpo_loss, dl.reference_dpo_loss),
}

GARBAGE = {
    "returns a number": lambda *a, **k: 0.5,
    "returns a string": lambda *a, **k: "loss",
    "returns a list of numbers": lambda *a, **k: [0.1, 0.2, 0.3],
    "returns a tuple of None": lambda *a, **k: (None, None, None),
    "returns NaN": lambda *a, **k: torch.tensor(math.nan),
    "returns its first input": lambda x, *a, **k: x,
    "takes no arguments": lambda: torch.tensor(0.0),
}


class TestContract(CheckContract):
    MODULES = (dl,)
    CHECKS = CHECKS
    GARBAGE = GARBAGE
    MIN_CASES = 6


LP, DPO = "check_completion_logprob", "check_dpo_loss"
FIRST_LP = "2 rows, prompts of 4 and 3 tokens, completions of 3 and 5"
FIRST_DPO = "4 pairs, beta 0.1"

# --------------------------------------------------------------------------------------------
# completion_logprob


def lp(logits, input_ids, completion_mask):
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    per_token = logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return (per_token * completion_mask[:, 1:]).sum(dim=1)


def lp_cross_entropy(logits, input_ids, completion_mask):
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), input_ids[:, 1:], reduction="none")
    return -(nll * completion_mask[:, 1:]).sum(dim=1)


def lp_no_shift(logits, input_ids, completion_mask):
    logp = torch.log_softmax(logits, dim=-1).gather(-1, input_ids[..., None]).squeeze(-1)
    return (logp * completion_mask).sum(dim=1)


def lp_mask_not_shifted(logits, input_ids, completion_mask):
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    per_token = logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return (per_token * completion_mask[:, :-1]).sum(dim=1)


def lp_probabilities(logits, input_ids, completion_mask):
    p = torch.softmax(logits[:, :-1], dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return (p * completion_mask[:, 1:]).sum(dim=1)


def lp_log_of_softmax(logits, input_ids, completion_mask):
    p = torch.softmax(logits[:, :-1], dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return (torch.log(p) * completion_mask[:, 1:]).sum(dim=1)


def lp_mean(logits, input_ids, completion_mask):
    return lp(logits, input_ids, completion_mask) / completion_mask[:, 1:].sum(dim=1)


def lp_with_prompt(logits, input_ids, completion_mask):
    return lp(logits, input_ids, torch.ones_like(completion_mask))


# --------------------------------------------------------------------------------------------
# dpo_loss


def dpo(pc, pr, rc, rr, beta):
    chosen, rejected = pc - rc, pr - rr
    return -F.logsigmoid(beta * (chosen - rejected)), beta * chosen, beta * rejected


def dpo_softplus(pc, pr, rc, rr, beta):
    z = (pc - rc) - (pr - rr)
    return F.softplus(-beta * z), (beta * (pc - rc)).detach(), (beta * (pr - rr)).detach()


def dpo_no_reference(pc, pr, rc, rr, beta):
    return -F.logsigmoid(beta * (pc - pr)), beta * (pc - rc), beta * (pr - rr)


def dpo_beta_outside(pc, pr, rc, rr, beta):
    z = (pc - rc) - (pr - rr)
    return -beta * F.logsigmoid(z), beta * (pc - rc), beta * (pr - rr)


def dpo_swapped(pc, pr, rc, rr, beta):
    z = (pr - rr) - (pc - rc)
    return -F.logsigmoid(beta * z), beta * (pc - rc), beta * (pr - rr)


def dpo_log_of_logps(pc, pr, rc, rr, beta):
    z = torch.log(pc / rc) - torch.log(pr / rr)
    return -F.logsigmoid(beta * z), beta * (pc - rc), beta * (pr - rr)


def dpo_no_minus(pc, pr, rc, rr, beta):
    z = (pc - rc) - (pr - rr)
    return F.logsigmoid(beta * z), beta * (pc - rc), beta * (pr - rr)


def dpo_rewards_without_beta(pc, pr, rc, rr, beta):
    losses, _, _ = dpo(pc, pr, rc, rr, beta)
    return losses, pc - rc, pr - rr


def dpo_rewards_without_reference(pc, pr, rc, rr, beta):
    losses, _, _ = dpo(pc, pr, rc, rr, beta)
    return losses, beta * pc, beta * pr


def dpo_mean(pc, pr, rc, rr, beta):
    losses, c, r = dpo(pc, pr, rc, rr, beta)
    return losses.mean(), c, r


def dpo_log_sigmoid(pc, pr, rc, rr, beta):
    z = (pc - rc) - (pr - rr)
    return -torch.log(torch.sigmoid(beta * z)), beta * (pc - rc), beta * (pr - rr)


def dpo_loss_only(pc, pr, rc, rr, beta):
    return dpo(pc, pr, rc, rr, beta)[0]


CORRECT_VARIANTS = [(LP, lp), (LP, lp_cross_entropy), (DPO, dpo), (DPO, dpo_softplus)]

MUTANTS = [
    (LP, lp_no_shift, FIRST_LP, "no shift"),
    (LP, lp_mask_not_shifted, FIRST_LP, "the completion mask is not shifted"),
    (LP, lp_probabilities, FIRST_LP, "the sum is of probabilities"),
    (LP, lp_log_of_softmax, "logits of scale 100", "torch.log_softmax(...) does not"),
    (LP, lp_mean, FIRST_LP, "a mean over the completion's tokens"),
    (LP, lp_with_prompt, FIRST_LP, "the prompt's tokens are summed too"),
    (DPO, dpo_no_reference, FIRST_DPO, "missing the reference"),
    (DPO, dpo_beta_outside, FIRST_DPO, "beta is outside the log-sigmoid"),
    (DPO, dpo_swapped, FIRST_DPO, "chosen and rejected are swapped"),
    (DPO, dpo_log_of_logps, FIRST_DPO, "the log of a ratio of LOG-probs"),
    (DPO, dpo_no_minus, FIRST_DPO, "a sign is missing"),
    (DPO, dpo_rewards_without_beta, FIRST_DPO, "chosen_rewards: the implicit reward is missing beta"),
    (DPO, dpo_rewards_without_reference, FIRST_DPO, "chosen_rewards: the implicit reward is missing the reference"),
    (DPO, dpo_mean, FIRST_DPO, "expected one loss per pair"),
    (DPO, dpo_log_sigmoid, "a pair ranked wrong by 500 nats, beta 1", "F.logsigmoid(x) does not"),
    (DPO, dpo_loss_only, FIRST_DPO, "return the implicit rewards too"),
]  # fmt: skip


def lp_with_the_library(logits, input_ids, completion_mask):
    class GivenLogits(torch.nn.Module):
        def forward(self, input_ids):
            return logits

    return sequence_logprobs(GivenLogits(), input_ids, None, completion_mask)


FORBIDDEN = [
    (LP, lp_with_the_library, "llmlab.posttrain.logprobs.sequence_logprobs"),
    (DPO, student_copy(dl.reference_dpo_loss), "llmlab.posttrain.dpo.dpo_loss"),
]  # fmt: skip


def test_the_logprob_reference_equals_the_package_on_a_real_model():
    """The check's reference is the package's sequence_logprobs on a model's logits."""
    from llmlab.assets import tiny_smollm2
    from llmlab.posttrain.logprobs import preference_batch

    model, tokenizer = tiny_smollm2(seed=0)
    batch = preference_batch(tokenizer, ["Hi"], ["Hello!"], ["Go away."], system="Be brief.")
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        expected = sequence_logprobs(model, **batch)
    got = dl.reference_completion_logprob(logits, batch["input_ids"], batch["completion_mask"])
    assert torch.allclose(got, expected, atol=1e-5)
