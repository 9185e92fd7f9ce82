"""The checks of chapter 05's distillation-loss lab (llmlab.checks.compression.distillation_loss).

For every check: the reference passes, other correct answers pass too (F.kl_div with
log_target, an explicit loop over positions, float64 arithmetic, F.cross_entropy or an
explicit gather for the hard loss), plausible wrong answers (mutants) fail on the case that
exposes them with words that say what is wrong, a NotImplementedError stub reports "not
implemented", garbage never raises, and the global seed does not move.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from check_contract import CheckContract

from llmlab.checks.compression import distillation_loss as dl
from llmlab.compress import distill

CHECKS = {
    "check_soft_targets": (dl.check_soft_targets, dl.reference_soft_targets),
    "check_kd_loss": (dl.check_kd_loss, dl.reference_kd_loss),
    "check_distillation_objective": (
        dl.check_distillation_objective,
        dl.reference_distillation_objective,
    ),
}

GARBAGE = {
    "returns a number": lambda *a, **k: 0.5,
    "returns a string": lambda *a, **k: "loss",
    "returns a list of numbers": lambda *a, **k: [0.1, 0.2, 0.3],
    "returns NaN": lambda *a, **k: torch.tensor(math.nan),
    "returns inf": lambda *a, **k: torch.tensor(math.inf),
    "returns its first input": lambda x, *a, **k: x,
    "returns an int tensor": lambda *a, **k: torch.tensor(1),
    "returns a tuple": lambda x, *a, **k: (x, x),
    "takes no arguments": lambda: torch.tensor(0.0),
}


class TestContract(CheckContract):
    MODULES = (dl,)
    CHECKS = CHECKS
    GARBAGE = GARBAGE
    MIN_CASES = 6


ST, KD, OBJ = "check_soft_targets", "check_kd_loss", "check_distillation_objective"
ST_FIRST = "top-8 logits of 2 x 5 positions, T = 2"
ST_HALF = "float16 values, as teacher_topk stores them, T = 2"
ST_BIG = "logits of scale 500, T = 1"
KD_FIRST = "(2, 6, 64) logits, the teacher's top 8, T = 2"
KD_STORED = "float16 top-k values and int32 ids, as teacher_topk stores them, T = 2"
KD_SAME = "the student equals the teacher on its top 8 (and is -10,000 elsewhere): KD loss 0"
KD_FAR = "a student far from the teacher: student logits of scale 100, T = 1"
KD_CONFIDENT = "a confident teacher: top-8 logits of scale 100, T = 1"
OBJ_FIRST = "(2, 6, 64) logits, top 8, T = 2, alpha 0.5"
OBJ_SECOND = "alpha 0.9, T = 4, top 16 over 100 tokens"
OBJ_BIG = "logits of scale 100, alpha 0.3, T = 1"

# --------------------------------------------------------------------------------------------
# soft_targets


def soft(teacher_values, temperature):
    return torch.softmax(teacher_values.float() / temperature, dim=-1)


def soft_by_hand(teacher_values, temperature):  # max subtracted, exp, normalised, in float64
    x = teacher_values.double() / temperature
    e = torch.exp(x - x.amax(dim=-1, keepdim=True))
    return e / e.sum(dim=-1, keepdim=True)


def soft_no_temperature(teacher_values, temperature):
    return torch.softmax(teacher_values.float(), dim=-1)


def soft_times_temperature(teacher_values, temperature):
    return torch.softmax(teacher_values.float() * temperature, dim=-1)


def soft_log_probs(teacher_values, temperature):
    return torch.log_softmax(teacher_values.float() / temperature, dim=-1)


def soft_not_normalised(teacher_values, temperature):
    return torch.exp(teacher_values.float() / temperature)


def soft_wrong_dim(teacher_values, temperature):
    return torch.softmax(teacher_values.float() / temperature, dim=1)


def soft_naive_exp(teacher_values, temperature):  # no max subtracted: exp overflows
    e = torch.exp(teacher_values.float() / temperature)
    return e / e.sum(dim=-1, keepdim=True)


def soft_float16(teacher_values, temperature):  # the stored dtype kept
    return torch.softmax(teacher_values / temperature, dim=-1)


# --------------------------------------------------------------------------------------------
# kd_loss


def kd(student_logits, teacher_values, teacher_indices, temperature):
    T = temperature
    log_q = torch.log_softmax(teacher_values.float() / T, dim=-1)
    log_p = torch.log_softmax(student_logits.float() / T, dim=-1)
    log_p = log_p.gather(-1, teacher_indices.long())
    return T**2 * (log_q.exp() * (log_q - log_p)).sum(-1).mean()


def kd_kl_div(student_logits, teacher_values, teacher_indices, temperature):
    T = temperature
    log_q = F.log_softmax(teacher_values.float() / T, dim=-1)
    log_p = F.log_softmax(student_logits / T, dim=-1).gather(-1, teacher_indices.long())
    k = log_q.shape[-1]
    positions = log_q.numel() // k
    kl = F.kl_div(
        log_p.reshape(positions, k), log_q.reshape(positions, k), reduction="sum", log_target=True
    )
    return T * T * kl / positions


def kd_loop(student_logits, teacher_values, teacher_indices, temperature):
    T = temperature
    vocab = student_logits.shape[-1]
    z = student_logits.reshape(-1, vocab).double()
    v = teacher_values.reshape(z.shape[0], -1).double()
    ids = teacher_indices.reshape(z.shape[0], -1).long()
    total = 0.0
    for i in range(z.shape[0]):
        lse = torch.logsumexp(z[i] / T, dim=0)
        log_q = v[i] / T - torch.logsumexp(v[i] / T, dim=0)
        for j in range(v.shape[1]):
            log_p = z[i, ids[i, j]] / T - lse
            total = total + torch.xlogy(log_q[j].exp(), log_q[j].exp()) - log_q[j].exp() * log_p
    return (T * T * total / z.shape[0]).float()


def kd_no_t_squared(student_logits, teacher_values, teacher_indices, temperature):
    return kd(student_logits, teacher_values, teacher_indices, temperature) / temperature**2


def kd_teacher_only(student_logits, teacher_values, teacher_indices, temperature):
    T = temperature
    log_q = torch.log_softmax(teacher_values.float() / T, dim=-1)
    log_p = torch.log_softmax(student_logits, dim=-1).gather(-1, teacher_indices.long())
    return T**2 * (log_q.exp() * (log_q - log_p)).sum(-1).mean()


def kd_student_only(student_logits, teacher_values, teacher_indices, temperature):
    T = temperature
    log_q = torch.log_softmax(teacher_values.float(), dim=-1)
    log_p = torch.log_softmax(student_logits / T, dim=-1).gather(-1, teacher_indices.long())
    return T**2 * (log_q.exp() * (log_q - log_p)).sum(-1).mean()


def kd_reversed(student_logits, teacher_values, teacher_indices, temperature):
    T = temperature
    log_q = torch.log_softmax(teacher_values.float() / T, dim=-1)
    log_p = torch.log_softmax(student_logits / T, dim=-1).gather(-1, teacher_indices.long())
    return T**2 * (log_p.exp() * (log_p - log_q)).sum(-1).mean()


def kd_over_k(student_logits, teacher_values, teacher_indices, temperature):
    T = temperature
    log_q = torch.log_softmax(teacher_values.float() / T, dim=-1)
    gathered = student_logits.gather(-1, teacher_indices.long())
    log_p = torch.log_softmax(gathered / T, dim=-1)
    return T**2 * (log_q.exp() * (log_q - log_p)).sum(-1).mean()


def kd_probabilities(student_logits, teacher_values, teacher_indices, temperature):
    T = temperature
    log_q = torch.log_softmax(teacher_values.float() / T, dim=-1)
    p = torch.softmax(student_logits / T, dim=-1).gather(-1, teacher_indices.long())
    return T**2 * (log_q.exp() * (log_q - p)).sum(-1).mean()


def kd_teacher_log_of_softmax(student_logits, teacher_values, teacher_indices, temperature):
    T = temperature
    q = soft(teacher_values, T)  # the soft targets of exercise 1, then their log
    log_p = torch.log_softmax(student_logits / T, dim=-1).gather(-1, teacher_indices.long())
    return T**2 * (q * (torch.log(q) - log_p)).sum(-1).mean()


def kd_student_log_of_softmax(student_logits, teacher_values, teacher_indices, temperature):
    T = temperature
    log_q = torch.log_softmax(teacher_values.float() / T, dim=-1)
    p = torch.softmax(student_logits / T, dim=-1).gather(-1, teacher_indices.long())
    return T**2 * (log_q.exp() * (log_q - torch.log(p))).sum(-1).mean()


def kd_sum_positions(student_logits, teacher_values, teacher_indices, temperature):
    n = teacher_values.numel() // teacher_values.shape[-1]
    return kd(student_logits, teacher_values, teacher_indices, temperature) * n


def kd_batchmean(student_logits, teacher_values, teacher_indices, temperature):
    T = temperature
    log_q = F.log_softmax(teacher_values.float() / T, dim=-1)
    log_p = F.log_softmax(student_logits / T, dim=-1).gather(-1, teacher_indices.long())
    return T * T * F.kl_div(log_p, log_q, reduction="batchmean", log_target=True)


def kd_mean_over_k(student_logits, teacher_values, teacher_indices, temperature):
    T = temperature
    log_q = F.log_softmax(teacher_values.float() / T, dim=-1)
    log_p = F.log_softmax(student_logits / T, dim=-1).gather(-1, teacher_indices.long())
    with warnings.catch_warnings():  # 'mean' divides by every element, k included
        warnings.simplefilter("ignore", UserWarning)
        return T * T * F.kl_div(log_p, log_q, reduction="mean", log_target=True)


def kd_cross_entropy(student_logits, teacher_values, teacher_indices, temperature):
    T = temperature
    q = torch.softmax(teacher_values.float() / T, dim=-1)
    log_p = torch.log_softmax(student_logits / T, dim=-1).gather(-1, teacher_indices.long())
    return T**2 * -(q * log_p).sum(-1).mean()


def kd_per_position(student_logits, teacher_values, teacher_indices, temperature):
    T = temperature
    log_q = torch.log_softmax(teacher_values.float() / T, dim=-1)
    log_p = torch.log_softmax(student_logits / T, dim=-1).gather(-1, teacher_indices.long())
    return T**2 * (log_q.exp() * (log_q - log_p)).sum(-1)


# --------------------------------------------------------------------------------------------
# distillation_objective


def objective(student_logits, targets, teacher_values, teacher_indices, temperature, alpha):
    soft = kd(student_logits, teacher_values, teacher_indices, temperature)
    vocab = student_logits.shape[-1]
    hard = F.cross_entropy(student_logits.reshape(-1, vocab), targets.reshape(-1))
    return alpha * soft + (1 - alpha) * hard


def objective_gather(student_logits, targets, teacher_values, teacher_indices, temperature, alpha):
    soft = kd_loop(student_logits, teacher_values, teacher_indices, temperature)
    log_p = torch.log_softmax(student_logits.double(), dim=-1)
    hard = -log_p.gather(-1, targets[..., None]).mean()
    return alpha * soft.double() + (1 - alpha) * hard


def _hard(student_logits, targets, **kwargs):
    vocab = student_logits.shape[-1]
    return F.cross_entropy(student_logits.reshape(-1, vocab), targets.reshape(-1), **kwargs)


def objective_swapped(student_logits, targets, teacher_values, teacher_indices, temperature, alpha):
    soft = kd(student_logits, teacher_values, teacher_indices, temperature)
    return (1 - alpha) * soft + alpha * _hard(student_logits, targets)


def objective_ce_unweighted(
    student_logits, targets, teacher_values, teacher_indices, temperature, alpha
):
    soft = kd(student_logits, teacher_values, teacher_indices, temperature)
    return alpha * soft + _hard(student_logits, targets)


def objective_kd_unweighted(
    student_logits, targets, teacher_values, teacher_indices, temperature, alpha
):
    soft = kd(student_logits, teacher_values, teacher_indices, temperature)
    return soft + (1 - alpha) * _hard(student_logits, targets)


def objective_label_smoothing(
    student_logits, targets, teacher_values, teacher_indices, temperature, alpha
):
    soft = kd(student_logits, teacher_values, teacher_indices, temperature)
    return alpha * soft + (1 - alpha) * _hard(student_logits, targets, label_smoothing=0.1)


def objective_hot_ce(student_logits, targets, teacher_values, teacher_indices, temperature, alpha):
    soft = kd(student_logits, teacher_values, teacher_indices, temperature)
    return alpha * soft + (1 - alpha) * _hard(student_logits / temperature, targets)


def objective_summed_ce(
    student_logits, targets, teacher_values, teacher_indices, temperature, alpha
):
    soft = kd(student_logits, teacher_values, teacher_indices, temperature)
    return alpha * soft + (1 - alpha) * _hard(student_logits, targets, reduction="sum")


def objective_shifted(student_logits, targets, teacher_values, teacher_indices, temperature, alpha):
    soft = kd(student_logits, teacher_values, teacher_indices, temperature)
    return alpha * soft + (1 - alpha) * _hard(student_logits[:, :-1], targets[:, 1:])


def objective_no_t_squared(
    student_logits, targets, teacher_values, teacher_indices, temperature, alpha
):
    soft = kd_no_t_squared(student_logits, teacher_values, teacher_indices, temperature)
    return alpha * soft + (1 - alpha) * _hard(student_logits, targets)


def objective_log_of_softmax(
    student_logits, targets, teacher_values, teacher_indices, temperature, alpha
):
    soft = kd(student_logits, teacher_values, teacher_indices, temperature)
    p = torch.softmax(student_logits, dim=-1).gather(-1, targets[..., None])
    return alpha * soft - (1 - alpha) * torch.log(p).mean()


# --------------------------------------------------------------------------------------------
# What the contract runs

CORRECT_VARIANTS = [
    (ST, soft),
    (ST, soft_by_hand),
    (KD, kd),
    (KD, kd_kl_div),
    (KD, kd_loop),
    (OBJ, objective),
    (OBJ, objective_gather),
]

MUTANTS = [
    (ST, soft_no_temperature, ST_FIRST, "these are softmax(teacher_values) at T = 1"),
    (ST, soft_times_temperature, ST_FIRST, "the logits were multiplied by T = 2"),
    (ST, soft_log_probs, ST_FIRST, "these are log-probabilities"),
    (ST, soft_not_normalised, ST_FIRST, "not normalised"),
    (ST, soft_wrong_dim, ST_FIRST, "your softmax runs over dim 1"),
    (ST, soft_float16, ST_HALF, "expected dtype float32, received float16"),
    (ST, soft_naive_exp, ST_BIG, "exp of a large logit overflows to inf"),
    (KD, kd_no_t_squared, KD_FIRST, "divided by T**2 = 4"),
    (KD, kd_teacher_only, KD_FIRST, "the temperature divides the teacher's logits only"),
    (KD, kd_student_only, KD_FIRST, "the temperature divides the student's logits only"),
    (KD, kd_reversed, KD_FIRST, "the KL is reversed"),
    (KD, kd_over_k, KD_FIRST, "over the k gathered logits only"),
    (KD, kd_probabilities, KD_FIRST, "the KL needs the student's LOG-probabilities"),
    (KD, kd_sum_positions, KD_FIRST, "the sum over the 12 positions"),
    (KD, kd_batchmean, KD_FIRST, "divided by the batch size (2)"),
    (KD, kd_mean_over_k, KD_FIRST, "also averaged over the k = 8 entries"),
    (KD, kd_cross_entropy, KD_FIRST, "the q log q term is missing"),
    (KD, kd_per_position, KD_FIRST, "expected a 0-dim tensor"),
    (KD, kd_student_log_of_softmax, KD_FAR, "received inf: torch.log(torch.softmax(...))"),
    (KD, kd_teacher_log_of_softmax, KD_CONFIDENT, "0 * -inf = NaN"),
    (OBJ, objective_ce_unweighted, OBJ_FIRST, "multiply it by 1 - alpha = 0.5"),
    (OBJ, objective_kd_unweighted, OBJ_FIRST, "multiply it by alpha = 0.5"),
    (OBJ, objective_label_smoothing, OBJ_FIRST, "label smoothing"),
    (OBJ, objective_hot_ce, OBJ_FIRST, "computed at temperature T = 2"),
    (OBJ, objective_summed_ce, OBJ_FIRST, "the cross-entropy is summed"),
    (OBJ, objective_shifted, OBJ_FIRST, "the targets were shifted once more"),
    (OBJ, objective_no_t_squared, OBJ_FIRST, "lacks its T**2 = 4 factor"),
    (OBJ, objective_swapped, OBJ_SECOND, "alpha weighs the wrong terms"),
    (OBJ, objective_log_of_softmax, OBJ_BIG, "received inf"),
]


# --------------------------------------------------------------------------------------------
# Answers that call the package's distillation code: flagged


def soft_with_the_package(teacher_values, temperature):
    x = teacher_values.float() / temperature
    lse = torch.logsumexp(x, dim=-1)
    mass = distill.topk_mass({"values": x, "lse": lse})  # 1 everywhere
    return torch.exp(x - lse[..., None]) / mass[..., None]


def kd_with_the_package(student_logits, teacher_values, teacher_indices, temperature):
    return distill.distillation_loss(
        student_logits, teacher_values, teacher_indices, None, temperature, 1.0
    )


def objective_with_the_package(
    student_logits, targets, teacher_values, teacher_indices, temperature, alpha
):
    return distill.distillation_loss(
        student_logits, teacher_values, teacher_indices, targets, temperature, alpha
    )


FORBIDDEN = [
    (ST, soft_with_the_package, "llmlab.compress.distill.topk_mass"),
    (KD, kd_with_the_package, "llmlab.compress.distill.distillation_loss"),
    (OBJ, objective_with_the_package, "llmlab.compress.distill.distillation_loss"),
]


# --------------------------------------------------------------------------------------------
# The cases hold what their names say


def test_the_student_that_equals_the_teacher_has_kd_loss_zero():
    (case,) = [c for c in dl._kd_cases() if c.name == KD_SAME]
    loss = dl.reference_kd_loss(*case.args)
    assert abs(float(loss)) < 1e-5
    assert float(kd_cross_entropy(*case.args)) > 1.0  # T**2 times the teacher's entropy


def test_the_large_case_underflows_a_naive_softmax():
    (case,) = [c for c in dl._kd_cases() if c.name == KD_FAR]
    student, _, indices, _ = case.args
    p = torch.softmax(student, dim=-1).gather(-1, indices.long())
    assert (p == 0).any()
    assert torch.isfinite(dl.reference_kd_loss(*case.args))
    (case,) = [c for c in dl._kd_cases() if c.name == KD_CONFIDENT]
    assert (soft(case.args[1], 1.0) == 0).any()
    assert torch.isfinite(dl.reference_kd_loss(*case.args))


def test_kd_loss_scales_as_t_squared_for_small_differences():
    # The reason for the T**2 factor: with it, the loss (and its gradient) keeps its size as T grows.
    teacher = torch.randn(1, 1, 64, generator=torch.Generator().manual_seed(0))
    student = teacher + 0.1 * torch.randn(1, 1, 64, generator=torch.Generator().manual_seed(1))
    top = teacher.topk(64, dim=-1)
    losses = [float(kd(student, top.values, top.indices, T)) for T in (4.0, 8.0, 16.0)]
    assert max(losses) / min(losses) < 1.2
