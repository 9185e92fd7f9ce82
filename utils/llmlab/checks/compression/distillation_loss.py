"""Checks of chapter 05's distillation-loss lab (``solutions/05_compression/02_distillation_loss.ipynb``).

    lab 02_distillation_loss: soft_targets, kd_loss, distillation_objective

The teacher's answer at every position is its ``k`` largest logits, ``teacher_values``
(..., k), and their vocabulary ids, ``teacher_indices`` (..., k), as
:func:`llmlab.compress.distill.teacher_topk` stores them (float16 values, int32 ids). The
student's logits are ``student_logits`` (batch, seq, vocab); ``T`` is the temperature.

- ``soft_targets(teacher_values, temperature) -> probs``: ``softmax(teacher_values / T)`` over
  the last dim (the k entries): the teacher's distribution at temperature T, renormalised over
  its top k. A float32 tensor of the values' shape (float16 values are converted first).
- ``kd_loss(student_logits, teacher_values, teacher_indices, temperature) -> loss``:
  ``T**2 * mean over positions of sum_k q_k (log q_k - log p_k)``, with ``q`` the soft targets
  and ``log p = log_softmax(student_logits / T)`` over the WHOLE vocabulary, read at the
  teacher's k ids. A 0-dim tensor.
- ``distillation_objective(student_logits, targets, teacher_values, teacher_indices,
  temperature, alpha) -> loss``: ``alpha * kd_loss + (1 - alpha) * CE``, where ``CE`` is the
  cross-entropy of the student's logits (at temperature 1) on ``targets`` (batch, seq), the
  true next tokens, averaged over positions. ``targets[:, t]`` is what ``student_logits[:, t]``
  predicts: nothing is shifted here. A 0-dim tensor.

The losses are compared at float32 precision (relative 1e-4); a float64 answer is accepted.
The cases catch the usual slips, and the message names the slip when the answer matches it: in
``soft_targets``, no temperature or the logits multiplied by T, log-probabilities instead of
probabilities, a softmax over the wrong axis, ``exp`` that overflows on large logits, a
float16 result; in ``kd_loss``, no T² factor, the temperature on one side only or on neither,
the KL reversed (student || teacher), the student's log-softmax taken over the k gathered
logits instead of the whole vocabulary, probabilities where log-probabilities belong,
``log(softmax)`` that underflows to ``log 0`` on large logits, a sum over positions instead of
a mean (or ``F.kl_div``'s ``batchmean``, which divides by the batch only), a mean over the k
entries too, and the cross-entropy ``-sum q log p`` instead of the KL (the two differ by the
teacher's entropy: a case's student equals the teacher on its top k, where the KL is 0); in
``distillation_objective``, alpha on the wrong term, a hard loss with label smoothing, at
temperature T, summed, or on targets shifted once more.

Each ``check_NAME(fn)`` prints one line and returns a :class:`llmlab.checks.CheckResult`
whose ``.fn`` the lab keeps using::

    kd_loss = check_kd_loss(kd_loss).fn

The references delegate to :mod:`llmlab.compress.distill`; an answer that calls the package's
compression code is flagged. Inputs come from :mod:`llmlab.checks._inputs`, so a check never
moves the notebook's seed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from llmlab.checks import Case, CheckResult, compare_tensors, describe, run_check
from llmlab.checks._inputs import randn, token_ids
from llmlab.compress import distill

#: The package's distillation code computes the answers: an answer that calls it is flagged.
FORBID = ("llmlab.compress",)

#: Tolerances on the losses (float32 arithmetic done in another order stays well inside).
LOSS_ATOL, LOSS_RTOL = 1e-5, 1e-4

# --------------------------------------------------------------------------------------------
# References


def reference_soft_targets(teacher_values: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(teacher_values / T) over the k entries, in float32."""
    return torch.softmax(teacher_values.float() / temperature, dim=-1)


def reference_kd_loss(
    student_logits: torch.Tensor,
    teacher_values: torch.Tensor,
    teacher_indices: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """T^2 * KL(teacher_T || student_T), the mean over positions (the soft term alone)."""
    return distill.distillation_loss(
        student_logits, teacher_values, teacher_indices, None, temperature, alpha=1.0
    )


def reference_distillation_objective(
    student_logits: torch.Tensor,
    targets: torch.Tensor,
    teacher_values: torch.Tensor,
    teacher_indices: torch.Tensor,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """alpha * T^2 * KL + (1 - alpha) * CE(student, targets), means over positions."""
    return distill.distillation_loss(
        student_logits, teacher_values, teacher_indices, targets, temperature, alpha
    )


# --------------------------------------------------------------------------------------------
# Inputs


def _teacher(
    batch: int, seq: int, vocab: int, k: int, seed: int, scale: float = 3.0, stored: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(full teacher logits, top-k values, top-k ids); ``stored``: float16 values and int32
    ids, as :func:`llmlab.compress.distill.teacher_topk` keeps them."""
    logits = randn(batch, seq, vocab, seed=seed, scale=scale)
    top = logits.topk(k, dim=-1)
    if stored:
        return logits, top.values.half(), top.indices.int()
    return logits, top.values, top.indices


def _student_like_teacher(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Student logits equal to the teacher's on its top k and -10,000 everywhere else."""
    top = logits.topk(k, dim=-1)
    out = torch.full_like(logits, -1e4)
    return out.scatter(-1, top.indices, top.values)


# --------------------------------------------------------------------------------------------
# Comparing a loss, naming the slip it matches


def _close(value: torch.Tensor, want: torch.Tensor) -> bool:
    got = value.detach().double().cpu()
    want = want.double()
    if got.shape != want.shape or not bool(got.isfinite().all()):
        return False
    return bool(((got - want).abs() <= LOSS_ATOL + LOSS_RTOL * want.abs()).all())


def _kd_parts(z: torch.Tensor, v: torch.Tensor, idx: torch.Tensor, T: float) -> dict:
    """Pieces of the KD loss and of its usual slips, in float64."""
    z, v, idx = z.double(), v.double(), idx.long()

    def kl(t_teacher: float, t_student: float) -> torch.Tensor:  # per position
        log_q = F.log_softmax(v / t_teacher, dim=-1)
        log_p = F.log_softmax(z / t_student, dim=-1).gather(-1, idx)
        return (log_q.exp() * (log_q - log_p)).sum(-1)

    log_q = F.log_softmax(v / T, dim=-1)
    q = log_q.exp()
    log_p = F.log_softmax(z / T, dim=-1).gather(-1, idx)
    return {
        "kl": kl(T, T),
        "teacher only": kl(T, 1.0),
        "student only": kl(1.0, T),
        "neither": kl(1.0, 1.0),
        "reversed": (log_p.exp() * (log_p - log_q)).sum(-1),
        "over k": (q * (log_q - F.log_softmax(z.gather(-1, idx) / T, dim=-1))).sum(-1),
        "probabilities": (q * (log_q - log_p.exp())).sum(-1),
        "cross-entropy": -(q * log_p).sum(-1),
        "entropy": -(q * log_q).sum(-1),
    }


def _kd_slips(z: torch.Tensor, v: torch.Tensor, idx: torch.Tensor, T: float) -> list:
    """(what a slip gives, the words that name it), the usual slips of kd_loss in turn."""
    parts = _kd_parts(z, v, idx, T)
    kl, T2 = parts["kl"], T * T
    batch, k = z.shape[0], v.shape[-1]
    positions = kl.numel()
    return [
        (
            kl.mean(),
            f"your loss is the reference divided by T**2 = {T2:g}: multiply the KL by T**2 "
            "(the softened loss's gradients shrink as 1 / T**2; the factor gives them back their "
            "size)",
        ),
        (
            T2 * parts["teacher only"].mean(),
            "the temperature divides the teacher's logits only: divide the student's logits by "
            "T too, log_softmax(student_logits / T): both distributions are softened",
        ),
        (
            parts["teacher only"].mean(),
            "the temperature divides the teacher's logits only (and the T**2 factor is missing): "
            "soften both sides, log_softmax(student_logits / T), and multiply the KL by T**2",
        ),
        (
            T2 * parts["student only"].mean(),
            "the temperature divides the student's logits only: the soft targets are "
            "softmax(teacher_values / T), softened as well",
        ),
        (
            T2 * parts["neither"].mean(),
            "no temperature: both distributions are softmax(logits / T); you used T = 1 on both "
            "sides (and kept only the T**2 factor)",
        ),
        (
            parts["neither"].mean(),
            "no temperature at all: divide both the teacher's and the student's logits by T, "
            "and multiply the KL by T**2",
        ),
        (
            T2 * parts["reversed"].mean(),
            "the KL is reversed, KL(student || teacher) = sum p (log p - log q): distillation "
            "uses KL(teacher || student) = sum q (log q - log p), weighted by the TEACHER's "
            "probabilities q",
        ),
        (
            T2 * parts["over k"].mean(),
            "the student's log-softmax is taken over the k gathered logits only: take "
            "log_softmax(student_logits / T) over the WHOLE vocabulary, then gather at the "
            "teacher's ids (the probability the student puts on other tokens must count)",
        ),
        (
            T2 * parts["probabilities"].mean(),
            "you subtracted the student's probabilities from the teacher's log-probabilities: "
            "the KL needs the student's LOG-probabilities, log_softmax(student_logits / T)",
        ),
        (
            T2 * kl.sum(),
            f"your loss is the sum over the {positions} positions: average over positions "
            "(sum over the k entries, then .mean())",
        ),
        (
            T2 * kl.sum() / batch,
            f"your loss is divided by the batch size ({batch}), not by the number of positions "
            f"({positions}): F.kl_div's reduction='batchmean' divides by the first dim only; "
            "sum over k, then take the mean over every position",
        ),
        (
            T2 * kl.mean() / k,
            f"your loss is also averaged over the k = {k} entries: SUM over k (the KL of one "
            "position), then average over positions",
        ),
        (
            T2 * parts["cross-entropy"].mean(),
            "your loss exceeds the reference by T**2 times the teacher's entropy: that is the "
            "cross-entropy -sum q log p, the q log q term is missing; the KL is "
            "sum q (log q - log p), and it is 0 when the student matches the teacher",
        ),
    ]


def _scalar_problem(value: Any, want: torch.Tensor, what: str) -> str | None:
    """Shape and type of a loss, in words; None when it is a 0-dim float tensor."""
    if not isinstance(value, torch.Tensor):
        return f"expected a 0-dim float tensor ({what}), received {describe(value)}"
    if value.dim() != 0:
        return (
            f"expected a 0-dim tensor ({what}), received shape {tuple(value.shape)}: average "
            "over every position (.mean()) to one number"
        )
    if value.dtype not in (torch.float32, torch.float64):
        return (
            f"expected a float32 tensor, received {str(value.dtype).removeprefix('torch.')}: "
            "compute the loss in float32 (convert float16 teacher values with .float())"
        )
    return None


def _not_finite(value: torch.Tensor) -> str | None:
    number = float(value.detach())
    if number == float("inf"):
        return (
            "received inf: torch.log(torch.softmax(...)) underflows to log(0) = -inf where the "
            "student gives a teacher token almost no probability; torch.log_softmax(...) "
            "computes the same without underflow"
        )
    if number != number:
        return (
            "received NaN: a probability that underflows to 0 times its log(0) = -inf gives "
            "0 * -inf = NaN; take log_softmax on both sides and q = log_q.exp() (or "
            "torch.xlogy(q, q) for q log q)"
        )
    return None


def _loss_problem(received: Any, expected: dict, slips: Callable[..., list]) -> str | None:
    value, want = received["out"], expected["out"]
    problem = _scalar_problem(value, want, "the mean loss over positions")
    if problem is not None:
        return problem
    if _close(value, want):
        return None
    not_finite = _not_finite(value)
    if not_finite is not None:
        return not_finite
    for wrong, words in slips(*received["inputs"]):
        if _close(value, wrong):
            return words
    return compare_tensors(value.detach().double(), want.double(), atol=LOSS_ATOL, rtol=LOSS_RTOL)


# --------------------------------------------------------------------------------------------
# soft_targets


def _soft_cases() -> list[Case]:
    def case(name, batch, seq, k, T, seed, scale=3.0, stored=False, **kw):
        _, values, _ = _teacher(batch, seq, 4 * k, k, seed, scale, stored)
        return Case(name, (values, T), **kw)

    return [
        case("top-8 logits of 2 x 5 positions, T = 2", 2, 5, 8, 2.0, 100),
        case("T = 1: the teacher's own distribution over its top 16", 1, 4, 16, 1.0, 101),
        case("T = 4 on logits of scale 5", 3, 2, 6, 4.0, 102, scale=5.0),
        case("T = 0.5 sharpens: top-4 logits", 2, 3, 4, 0.5, 103),
        case("a single entry (k = 1): probability 1", 2, 3, 1, 2.0, 104),
        case(
            "float16 values, as teacher_topk stores them, T = 2",
            2, 4, 12, 2.0, 105, stored=True,
            hint="convert the float16 values to float32 first, teacher_values.float(): the "
            "probabilities are returned in float32.",
        ),
        case(
            "logits of scale 500, T = 1",
            2, 3, 8, 1.0, 106, scale=500.0,
            hint="exp(1000) overflows to inf and inf / inf is NaN: subtract each position's "
            "largest value before exp, or use torch.softmax, which does.",
        ),
    ]  # fmt: skip


def _soft_slips(values: torch.Tensor, T: float) -> list:
    v = values.double()
    slips = [
        (
            torch.softmax(v, dim=-1),
            f"these are softmax(teacher_values) at T = 1: divide the logits by T = {T:g} first",
        ),
        (
            torch.softmax(v * T, dim=-1),
            f"the logits were multiplied by T = {T:g}: DIVIDE them by T (T > 1 flattens the "
            "distribution, which is the point)",
        ),
        (
            torch.log_softmax(v / T, dim=-1),
            "these are log-probabilities: return the probabilities, softmax(teacher_values / T)",
        ),
        (
            torch.exp(v / T),
            "these are exp(teacher_values / T), not normalised: divide by their sum over the "
            "last dim (softmax does both)",
        ),
    ]
    for dim in range(v.dim() - 1):
        slips.append(
            (
                torch.softmax(v / T, dim=dim),
                f"your softmax runs over dim {dim}; the k entries of a position are the LAST "
                "dim: softmax(teacher_values / T, dim=-1)",
            )
        )
    return slips


def _soft_problem(received: Any, expected: dict) -> str | None:
    value, want = received["out"], expected["out"]
    values, T = received["inputs"]
    if isinstance(value, torch.Tensor) and value.shape == want.shape:
        if value.dtype == torch.float16:
            return (
                "expected dtype float32, received float16: convert the teacher's float16 "
                "values to float32 (teacher_values.float()) before the softmax"
            )
        if value.dtype == torch.float64:
            value = value.float()  # float64 arithmetic is fine
        if value.dtype == torch.float32 and bool(value.isnan().any()):
            return (
                "received NaN: exp of a large logit overflows to inf, and inf / inf is NaN; "
                "subtract each position's largest value before exp (torch.softmax does)"
            )
    problem = compare_tensors(value, want, atol=1e-6, rtol=1e-4)
    if problem is None or not isinstance(value, torch.Tensor) or value.shape != want.shape:
        return problem
    if not value.is_floating_point():
        return problem
    for wrong, words in _soft_slips(values, T):
        if _close(value, wrong):
            return words
    return problem


def _run_soft(fn: Callable, teacher_values, temperature) -> dict:
    out = fn(teacher_values.clone(), temperature)
    return {"out": out, "inputs": (teacher_values, temperature)}


def check_soft_targets(soft_targets: Callable) -> CheckResult:
    """Check ``soft_targets(teacher_values, temperature) -> probs`` (..., k), float32."""
    return run_check(
        "soft_targets",
        soft_targets,
        reference_soft_targets,
        _soft_cases(),
        hint="return torch.softmax(teacher_values.float() / temperature, dim=-1).",
        run=_run_soft,
        compare=_soft_problem,
        arg_names=("teacher_values", "temperature"),
        forbid=FORBID,
    )


# --------------------------------------------------------------------------------------------
# kd_loss


def _kd_inputs(batch, seq, vocab, k, seed, scale=2.0, teacher_scale=3.0, stored=False):
    logits, values, indices = _teacher(batch, seq, vocab, k, seed + 1, teacher_scale, stored)
    student = randn(batch, seq, vocab, seed=seed, scale=scale)
    return student, values, indices, logits


def _kd_cases() -> list[Case]:
    def case(name, T, *shape, hint="", **kw):
        student, values, indices, _ = _kd_inputs(*shape, **kw)
        return Case(name, (student, values, indices, T), hint=hint)

    same_logits, same_values, same_ids = _teacher(2, 4, 80, 8, 118)
    return [
        case("(2, 6, 64) logits, the teacher's top 8, T = 2", 2.0, 2, 6, 64, 8, 110),
        case("T = 1: no softening, T**2 = 1", 1.0, 2, 3, 50, 4, 112),
        case("T = 4: the T**2 factor is 16", 4.0, 3, 4, 100, 16, 114),
        case(
            "float16 top-k values and int32 ids, as teacher_topk stores them, T = 2",
            2.0, 2, 5, 64, 8, 116, stored=True,
            hint="convert the float16 values to float32 (teacher_values.float()) before the "
            "softmax; the ids index the student's vocabulary (gather them as .long()).",
        ),
        Case(
            "the student equals the teacher on its top 8 (and is -10,000 elsewhere): KD loss 0",
            (_student_like_teacher(same_logits, 8), same_values, same_ids, 2.0),
            hint="KL(q || p) = sum q (log q - log p) is 0 when p = q; the cross-entropy "
            "-sum q log p is the teacher's entropy there, not 0.",
        ),
        case(
            "a student far from the teacher: student logits of scale 100, T = 1",
            1.0, 2, 4, 64, 8, 120, scale=100.0,
            hint="torch.log(torch.softmax(...)) underflows to log(0) = -inf where the student "
            "gives a teacher token almost no probability; torch.log_softmax(student_logits / T, "
            "-1) stays finite.",
        ),
        case(
            "a confident teacher: top-8 logits of scale 100, T = 1",
            1.0, 2, 4, 64, 8, 124, teacher_scale=100.0,
            hint="the teacher's small probabilities underflow to 0, and 0 * log(0) = NaN: take "
            "log_q = torch.log_softmax(teacher_values / T, -1) and q = log_q.exp() (or "
            "torch.xlogy(q, q) for q log q), not torch.log of the soft targets.",
        ),
        case("one sequence of 7 positions, vocabulary 200, top 16, T = 3", 3.0, 1, 7, 200, 16, 122),
    ]  # fmt: skip


def _kd_problem(received: Any, expected: dict) -> str | None:
    return _loss_problem(received, expected, _kd_slips)


def _run_kd(fn: Callable, student_logits, teacher_values, teacher_indices, temperature) -> dict:
    out = fn(student_logits.clone(), teacher_values.clone(), teacher_indices.clone(), temperature)
    return {"out": out, "inputs": (student_logits, teacher_values, teacher_indices, temperature)}


def check_kd_loss(kd_loss: Callable) -> CheckResult:
    """Check ``kd_loss(student_logits, teacher_values, teacher_indices, temperature) -> loss``."""
    return run_check(
        "kd_loss",
        kd_loss,
        reference_kd_loss,
        _kd_cases(),
        hint="log_q = torch.log_softmax(teacher_values.float() / T, -1); log_p = "
        "torch.log_softmax(student_logits / T, -1).gather(-1, teacher_indices.long()); "
        "return T**2 * (log_q.exp() * (log_q - log_p)).sum(-1).mean().",
        run=_run_kd,
        compare=_kd_problem,
        arg_names=("student_logits", "teacher_values", "teacher_indices", "temperature"),
        forbid=FORBID,
    )


# --------------------------------------------------------------------------------------------
# distillation_objective


def _objective_slips(z, targets, v, idx, T, alpha) -> list:
    """(what a slip gives, the words that name it), the usual slips of the objective."""
    kd = T * T * _kd_parts(z, v, idx, T)["kl"].mean()
    x, vocab = z.double(), z.shape[-1]
    flat, y = x.reshape(-1, vocab), targets.reshape(-1)
    ce = F.cross_entropy(flat, y)
    a = alpha
    return [
        (
            (1 - a) * kd + a * ce,
            f"alpha weighs the wrong terms: alpha = {a:g} goes on the KD loss and 1 - alpha on "
            "the cross-entropy, alpha * kd + (1 - alpha) * ce",
        ),
        (
            a * kd + ce,
            f"the cross-entropy is not weighted: multiply it by 1 - alpha = {1 - a:g}",
        ),
        (
            kd + (1 - a) * ce,
            f"the KD loss is not weighted: multiply it by alpha = {a:g}",
        ),
        (
            a * kd + (1 - a) * F.cross_entropy(flat, y, label_smoothing=0.1),
            "the hard loss uses label smoothing (0.1): the hard term is the plain cross-entropy "
            "on the true next tokens; the teacher already supplies the soft targets",
        ),
        (
            a * kd + (1 - a) * F.cross_entropy(flat / T, y),
            f"the cross-entropy is computed at temperature T = {T:g}: the hard loss uses the "
            "student's own logits, temperature 1",
        ),
        (
            a * kd + (1 - a) * F.cross_entropy(flat, y, reduction="sum"),
            "the cross-entropy is summed over positions: average it (F.cross_entropy's default "
            "reduction='mean')",
        ),
        (
            a * kd
            + (1 - a) * F.cross_entropy(x[:, :-1].reshape(-1, vocab), targets[:, 1:].reshape(-1)),
            "the targets were shifted once more: targets[:, t] is already the token that "
            "student_logits[:, t] predicts; pass all the logits and all the targets, unshifted",
        ),
        (
            a * kd / (T * T) + (1 - a) * ce,
            f"the KD term lacks its T**2 = {T * T:g} factor: alpha * kd_loss(...) with your "
            "checked kd_loss has it",
        ),
    ]


def _objective_cases() -> list[Case]:
    def case(name, T, alpha, batch, seq, vocab, k, seed, hint="", **kw):
        student, values, indices, _ = _kd_inputs(batch, seq, vocab, k, seed, **kw)
        targets = token_ids(batch, seq, vocab=vocab, seed=seed + 7)
        return Case(name, (student, targets, values, indices, T, alpha), hint=hint)

    return [
        case("(2, 6, 64) logits, top 8, T = 2, alpha 0.5", 2.0, 0.5, 2, 6, 64, 8, 130),
        case("alpha 0.9, T = 4, top 16 over 100 tokens", 4.0, 0.9, 3, 4, 100, 16, 132),
        case("alpha 0: the cross-entropy alone", 2.0, 0.0, 2, 5, 60, 8, 134),
        case("alpha 1: the KD loss alone", 3.0, 1.0, 2, 5, 60, 8, 136),
        case("alpha 0.25, T = 1, vocabulary 200", 1.0, 0.25, 1, 8, 200, 12, 138),
        case(
            "float16 top-k values and int32 ids, alpha 0.7, T = 2",
            2.0, 0.7, 2, 4, 64, 8, 140, stored=True,
            hint="convert the float16 values to float32 (teacher_values.float()); gather the "
            "student's log-probabilities at teacher_indices.long().",
        ),
        case(
            "logits of scale 100, alpha 0.3, T = 1",
            1.0, 0.3, 2, 4, 64, 8, 142, scale=100.0, teacher_scale=100.0,
            hint="F.cross_entropy and torch.log_softmax stay finite on large logits; "
            "torch.log(torch.softmax(...)) does not.",
        ),
    ]  # fmt: skip


def _objective_problem(received: Any, expected: dict) -> str | None:
    return _loss_problem(received, expected, _objective_slips)


def _run_objective(
    fn: Callable, student_logits, targets, teacher_values, teacher_indices, temperature, alpha
) -> dict:
    out = fn(
        student_logits.clone(),
        targets.clone(),
        teacher_values.clone(),
        teacher_indices.clone(),
        temperature,
        alpha,
    )
    inputs = (student_logits, targets, teacher_values, teacher_indices, temperature, alpha)
    return {"out": out, "inputs": inputs}


def check_distillation_objective(distillation_objective: Callable) -> CheckResult:
    """Check ``distillation_objective(student_logits, targets, teacher_values, teacher_indices,
    temperature, alpha) -> loss``."""
    return run_check(
        "distillation_objective",
        distillation_objective,
        reference_distillation_objective,
        _objective_cases(),
        hint="ce = F.cross_entropy(student_logits.reshape(-1, vocab), targets.reshape(-1)); "
        "return alpha * kd_loss(student_logits, teacher_values, teacher_indices, T) + "
        "(1 - alpha) * ce.",
        run=_run_objective,
        compare=_objective_problem,
        arg_names=(
            "student_logits",
            "targets",
            "teacher_values",
            "teacher_indices",
            "temperature",
            "alpha",
        ),
        forbid=FORBID,
    )
