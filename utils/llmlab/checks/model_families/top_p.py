"""Checks of chapter 02's decoding lab (``solutions/02_model_families/03_top_p.ipynb``):
temperature, top-k, top-p (nucleus) and sampling.

    lab 03_top_p: apply_temperature, top_k_filter, top_p_filter, sample

Each ``check_NAME(fn)`` compares ``fn`` with ``reference_NAME`` on named cases (p = 1, a tiny p,
the token that crosses p, ties, rows with different distributions, ``-inf`` already present
...), prints one line and returns a :class:`llmlab.checks.CheckResult` whose ``.fn`` the lab
keeps using::

    top_p_filter = check_top_p_filter(top_p_filter).fn

The references are :mod:`llmlab.inference.generation`'s processors (tested equal to
transformers' warpers). Removed tokens get the logit ``-inf``; a token tied with the last kept
one is kept. Inputs come from :mod:`llmlab.checks._inputs`, so a check never moves the
notebook's seed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from llmlab.checks import Case, CheckResult, compare_tensors, run_check
from llmlab.checks._inputs import SeededGenerator, randn
from llmlab.inference import generation
from llmlab.inference.generation import NEG_INF

#: Library logits processors and samplers: an answer that calls one is flagged.
FORBID_PROCESSORS = ("llmlab.inference", "transformers.generation.logits_process")

# --------------------------------------------------------------------------------------------
# References: what a correct answer returns


def reference_apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``logits / temperature``, a new tensor of the same shape and dtype."""
    return generation.apply_temperature(logits, temperature)


def reference_top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits of each row (and any tied with the k-th); the rest -> -inf."""
    return generation.top_k_filter(logits, k)


def reference_top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches p; the rest -inf.

    A token is kept when the probability of the tokens more likely than it is below p (so the
    token that crosses p is kept, and the most likely token always is); a token tied with the
    last kept one is kept too.
    """
    return generation.top_p_filter(logits, p)


def reference_sample(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One token id per row, (batch,) int64: ``torch.multinomial(softmax(logits), 1, generator)``."""
    return generation.sample_from_logits(logits, generator)


# --------------------------------------------------------------------------------------------
# Inputs


def _log(*probs: float) -> torch.Tensor:
    """One row of logits whose softmax is ``probs``."""
    return torch.tensor([probs]).log()


def _with_minus_inf(logits: torch.Tensor, every: int = 3) -> torch.Tensor:
    logits = logits.clone()
    logits[:, ::every] = NEG_INF
    return logits


def _peaked_and_flat(vocab: int = 12, seed: int = 0) -> torch.Tensor:
    """Row 0 is confident (one token ~ 90%), row 1 is nearly uniform."""
    peaked = randn(1, vocab, seed=seed)
    peaked[0, 3] = 6.0
    return torch.cat([peaked, 0.1 * randn(1, vocab, seed=seed + 1)])


def _probabilities(t: torch.Tensor) -> bool:
    """Whether every row of ``t`` is a probability distribution (in [0, 1], summing to 1)."""
    if not t.is_floating_point() or t.numel() == 0 or not t.isfinite().all():
        return False
    sums = t.double().sum(dim=-1)
    return bool((t >= 0).all() and (t <= 1).all() and torch.allclose(sums, torch.ones_like(sums)))


def _compare_logits(received: Any, expected: torch.Tensor) -> str | None:
    """:func:`compare_tensors`, saying so when the answer returned probabilities, not logits."""
    problem = compare_tensors(received, expected)
    if (
        problem is not None
        and isinstance(received, torch.Tensor)
        and received.shape == expected.shape
        and _probabilities(received)
        and not _probabilities(expected)
    ):
        problem += (
            " (your output looks like probabilities, each row summing to 1: return LOGITS, "
            "the softmax comes later, when sampling)"
        )
    return problem


# --------------------------------------------------------------------------------------------
# The checks


def check_apply_temperature(apply_temperature: Callable) -> CheckResult:
    """Check ``apply_temperature(logits, temperature)``."""
    cases = [
        Case("T = 1 changes nothing", (randn(2, 10, seed=1), 1.0)),
        Case(
            "T = 0.5 sharpens: (2, 10)",
            (randn(2, 10, seed=2), 0.5),
            hint="divide the logits by T (T < 1 makes them larger, the distribution sharper).",
        ),
        Case("T = 2 flattens: (3, 7)", (randn(3, 7, seed=3), 2.0)),
        Case("T = 0.1 on a vocabulary of 1000", (randn(2, 1000, seed=4), 0.1)),
        Case("-inf logits stay -inf", (_with_minus_inf(randn(2, 9, seed=5)), 0.7)),
        Case(
            "float64 logits",
            (randn(2, 5, dtype=torch.float64, seed=6), 1.5),
            hint="keep the logits' dtype.",
        ),
    ]
    return run_check(
        "apply_temperature",
        apply_temperature,
        reference_apply_temperature,
        cases,
        hint="return logits / temperature: still logits (not probabilities), in a new tensor.",
        compare=_compare_logits,
        forbid=FORBID_PROCESSORS,
    )


def check_top_k_filter(top_k_filter: Callable) -> CheckResult:
    """Check ``top_k_filter(logits, k)``: the k largest logits of each row stay, others -inf."""
    tie_hint = (
        "keep every logit >= the k-th largest: kth = logits.topk(k, dim=-1).values[..., -1:], "
        "then logits.masked_fill(logits < kth, float('-inf')); tied values all stay."
    )
    cases = [
        Case("k = 1 keeps the argmax", (randn(3, 10, seed=10), 1)),
        Case(
            "k = 3 on (2, 10)",
            (randn(2, 10, seed=11), 3),
            hint="removed tokens get -inf (probability 0), not 0: a logit of 0 is still likely.",
        ),
        Case("k = 5 on a vocabulary of 1000", (randn(4, 1000, seed=12), 5)),
        Case("k = vocab keeps every token", (randn(2, 6, seed=13), 6)),
        Case(
            "ties at the k-th value: [3, 2, 2, 2, 1], k = 2",
            (torch.tensor([[3.0, 2.0, 2.0, 2.0, 1.0]]), 2),
            hint=tie_hint,
        ),
        Case("-inf already present", (_with_minus_inf(randn(2, 12, seed=14)), 4)),
        Case("float64 logits", (randn(2, 8, dtype=torch.float64, seed=15), 3)),
    ]
    return run_check(
        "top_k_filter",
        top_k_filter,
        reference_top_k_filter,
        cases,
        hint="find the k-th largest logit of each row (torch.topk) and set every smaller logit "
        "to -inf; return logits, in a new tensor.",
        compare=_compare_logits,
        forbid=FORBID_PROCESSORS,
    )


def check_top_p_filter(top_p_filter: Callable) -> CheckResult:
    """Check ``top_p_filter(logits, p)``: the nucleus of each row stays, the other tokens -inf."""
    crossing_hint = (
        "keep a token when the mass of the tokens BEFORE it (in descending order) is "
        "< p: cumsum(sorted_probs) - sorted_probs < p. The token that crosses p stays."
    )
    order_hint = (
        "the mask you build is in sorted order: map it back to vocabulary order (e.g. "
        "keep every logit >= the smallest kept sorted logit) before masking."
    )
    logits_ties = torch.tensor([[2.0, 1.0, 1.0, 1.0, 0.0]])
    p_ties = round(logits_ties.softmax(-1)[0, 0].item() + 0.01, 3)  # crosses inside the tie
    cases = [
        Case(
            "the token that crosses p is kept: probs [0.5, 0.3, 0.15, 0.05], p = 0.7",
            (_log(0.5, 0.3, 0.15, 0.05), 0.7),
            hint=crossing_hint,
        ),
        Case(
            "p = 0.8 on logits in random order (4, 12)",
            (randn(4, 12, seed=22, scale=2.0), 0.8),
            hint=order_hint,
        ),
        Case("p = 1 keeps every token", (randn(2, 10, seed=20), 1.0)),
        Case(
            "a tiny p (1e-4) keeps exactly the argmax",
            (randn(3, 10, seed=21, scale=2.0), 1e-4),
            hint="the most likely token is always kept: the mass before it is 0 < p.",
        ),
        Case(
            "rows with different distributions: peaked and flat, p = 0.9",
            (_peaked_and_flat(seed=23), 0.9),
            hint="each row has its own nucleus: sort, softmax and cumsum along the last dim.",
        ),
        Case(
            "ties: the last kept logit is shared by three tokens",
            (logits_ties, p_ties),
            hint="a token tied with the last kept one is kept too: find the cut-off logit, then "
            "keep every logit >= it.",
        ),
        Case(
            "-inf already present, p = 0.9",
            (_with_minus_inf(randn(2, 15, seed=24, scale=2.0)), 0.9),
        ),
        Case("p = 0.95 on a vocabulary of 1000", (randn(2, 1000, seed=25, scale=3.0), 0.95)),
        Case(
            "float64 logits",
            (randn(2, 9, dtype=torch.float64, seed=26, scale=2.0), 0.6),
            hint="keep the logits' dtype.",
        ),
    ]
    return run_check(
        "top_p_filter",
        top_p_filter,
        reference_top_p_filter,
        cases,
        hint="sort the logits in descending order, softmax, cumsum; keep a token while the mass "
        "before it is < p; set the others to -inf in the ORIGINAL order; return logits.",
        compare=_compare_logits,
        forbid=FORBID_PROCESSORS,
    )


def check_sample(sample: Callable) -> CheckResult:
    """Check ``sample(logits, generator)``: (batch,) int64 draws from softmax(logits)."""
    cases = [
        Case("one row of 5 logits", (randn(1, 5, seed=30), SeededGenerator(1))),
        Case(
            "4 rows with different distributions",
            (randn(4, 10, seed=31, scale=2.0), SeededGenerator(2)),
            hint="softmax over the vocabulary (dim=-1), one draw per row.",
        ),
        Case(
            "a peaked row always gives its argmax",
            (torch.tensor([[0.0, 30.0, 0.0]]), SeededGenerator(3)),
        ),
        Case(
            "-inf tokens are never drawn",
            (_with_minus_inf(randn(3, 9, seed=32), every=2), SeededGenerator(4)),
        ),
        Case(
            "1000 rows, vocabulary 50",
            (randn(1000, 50, seed=33), SeededGenerator(5)),
            hint="torch.multinomial(probs, num_samples=1, generator=generator), then .squeeze(-1) "
            "for shape (batch,).",
        ),
        Case("float64 logits", (randn(2, 6, dtype=torch.float64, seed=34), SeededGenerator(6))),
    ]
    return run_check(
        "sample",
        sample,
        reference_sample,
        cases,
        hint="probs = logits.softmax(dim=-1); return torch.multinomial(probs, num_samples=1, "
        "generator=generator).squeeze(-1): int64 token ids of shape (batch,), drawn with "
        "the given generator (so a seed reproduces them).",
        forbid=FORBID_PROCESSORS,
    )
