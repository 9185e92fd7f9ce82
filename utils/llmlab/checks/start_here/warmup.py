"""Checks of chapter 00's warm-up lab (``solutions/00_start_here/01_warmup.ipynb``): softmax,
log-softmax, cross-entropy, temperature.

Each ``check_NAME(fn)`` compares ``fn`` with ``reference_NAME`` on named cases, prints one line
and returns a :class:`llmlab.checks.CheckResult` whose ``.fn`` the lab keeps using::

    softmax = check_stable_softmax(softmax).fn

The references are PyTorch's own functions, except ``apply_temperature`` (see its docstring).
Inputs come from :mod:`llmlab.checks._inputs`, so a check never moves the notebook's seed.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from llmlab.checks import Case, CheckResult, compare_tensors, run_check
from llmlab.checks._inputs import randn, token_ids

#: Library ops that compute a whole answer: an answer that calls one is flagged.
FORBID_SOFTMAX = (
    "torch.softmax",
    "torch.Tensor.softmax",
    "torch.nn.functional.softmax",
    "torch.special.softmax",
    "torch.nn.modules.activation.Softmax",
)
FORBID_LOG_SOFTMAX = (
    "torch.log_softmax",
    "torch.Tensor.log_softmax",
    "torch.nn.functional.log_softmax",
    "torch.special.log_softmax",
    "torch.nn.modules.activation.LogSoftmax",
)
FORBID_CROSS_ENTROPY = (
    "torch.nn.functional.cross_entropy",
    "torch.nn.functional.nll_loss",
    "torch.nn.modules.loss.CrossEntropyLoss",
    "torch.nn.modules.loss.NLLLoss",
    "torch._C._nn.cross_entropy_loss",
    "torch._C._nn.nll_loss",
)
FORBID_TEMPERATURE = ("llmlab.inference", "transformers.generation.logits_process")

# --------------------------------------------------------------------------------------------
# References: what a correct answer returns (built on PyTorch's own implementations)


def reference_softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax of ``x`` along ``dim``: same shape and dtype as ``x``, sums to 1 along ``dim``."""
    return torch.softmax(x, dim=dim)


def reference_log_softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Log of the softmax of ``x`` along ``dim``, computed without overflow or log(0)."""
    return torch.log_softmax(x, dim=dim)


def reference_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of ``targets`` under ``logits``.

    logits: (..., vocab) float; targets: (...) int64 in [0, vocab). Returns a 0-dim tensor.
    """
    vocab = logits.shape[-1]
    return F.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1))


def reference_apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``logits / temperature``; raises ValueError unless temperature is a finite number > 0.

    Written out rather than :func:`llmlab.inference.generation.apply_temperature`: the warm-up
    also rejects an infinite temperature, which the library accepts (T -> inf is uniform).
    """
    if not (
        isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0
    ):
        raise ValueError(f"temperature must be a finite number > 0, received {temperature!r}")
    return logits / temperature


# --------------------------------------------------------------------------------------------
# Inputs


def _masked(seed: int = 0) -> torch.Tensor:
    """(3, 6) logits with some entries -inf, as a causal mask makes them; every row keeps one."""
    x = randn(3, 6, seed=seed)
    mask = torch.ones(3, 6, dtype=torch.bool).triu(diagonal=1)
    return x.masked_fill(mask, float("-inf"))


def _different_scales() -> torch.Tensor:
    """(2, 5): one row around +1000, one around 0. A max over the whole tensor breaks row 2."""
    x = randn(2, 5, seed=3)
    x[0] += 1000.0
    return x


def _logit_cases() -> list[Case]:
    """Inputs shared by softmax and log-softmax: odd shapes, a non-last dim, huge values."""
    return [
        Case("1-D vector of 5", (randn(5, seed=1),)),
        Case("(3, 7) rows", (randn(3, 7, seed=2),)),
        Case("(2, 3, 5) along the last dim", (randn(2, 3, 5, seed=4),)),
        Case(
            "(2, 3, 5) along dim=1",
            (randn(2, 3, 5, seed=5),),
            {"dim": 1},
            hint="reduce along `dim`, not always the last axis; keepdim=True keeps shapes "
            "broadcastable.",
        ),
        Case(
            "(4, 3) along dim=0",
            (randn(4, 3, seed=6),),
            {"dim": 0},
            hint="reduce along `dim`, not always the last axis.",
        ),
        Case(
            "large logits (around 1000)",
            (1000.0 + 10 * randn(2, 5, seed=7),),
            hint="exp(1000) overflows to inf; subtract the max along `dim` before exp.",
        ),
        Case(
            "very negative logits (around -1000)",
            (-1000.0 + 10 * randn(2, 5, seed=8),),
            hint="exp(-1000) underflows to 0; subtract the max along `dim` before exp.",
        ),
        Case(
            "rows on very different scales",
            (_different_scales(),),
            hint="take the max of each row (along `dim`, keepdim=True), not of the whole tensor.",
        ),
        Case(
            "masked entries (-inf)",
            (_masked(seed=9),),
            hint="exp(-inf) is 0; make sure -inf entries do not turn into NaN.",
        ),
        Case(
            "float64 input",
            (randn(3, 4, dtype=torch.float64, seed=10),),
            hint="keep the input's dtype: do not convert to float32.",
        ),
    ]


# --------------------------------------------------------------------------------------------
# Checks


def check_stable_softmax(softmax: Callable) -> CheckResult:
    """Check ``softmax(x, dim=-1)`` against :func:`reference_softmax`."""
    return run_check(
        "stable_softmax",
        softmax,
        reference_softmax,
        _logit_cases(),
        hint="exp(x - max) / sum of exp(x - max), both along `dim` with keepdim=True.",
        forbid=FORBID_SOFTMAX,
    )


def _spread_case() -> Case:
    """Log-softmax of [0, -200]: its softmax underflows to 0 in float32, so log gives -inf."""
    x = torch.tensor([[0.0, -200.0, 1.0], [3.0, 2.0, -150.0]])
    return Case(
        "entries far below the max",
        (x,),
        hint="log(softmax(x)) gives log(0) = -inf for tiny probabilities; compute "
        "x - max - log(sum(exp(x - max))) instead.",
    )


def check_log_softmax(log_softmax: Callable) -> CheckResult:
    """Check ``log_softmax(x, dim=-1)`` against :func:`reference_log_softmax`."""
    return run_check(
        "log_softmax",
        log_softmax,
        reference_log_softmax,
        [*_logit_cases(), _spread_case()],
        hint="log_softmax(x) = x - logsumexp(x), with logsumexp(x) = m + log(sum(exp(x - m))) "
        "and m the max along `dim`.",
        # x - logsumexp(x) is right but subtracts two numbers near 1000: float32 keeps ~6e-5
        compare=functools.partial(compare_tensors, atol=1e-4),
        forbid=FORBID_LOG_SOFTMAX,
    )


def _compare_loss(received: Any, expected: torch.Tensor) -> str | None:
    """:func:`compare_tensors`, naming the two usual slips: a sum, a missing minus sign."""
    problem = compare_tensors(received, expected)
    if problem is None or not isinstance(received, torch.Tensor) or received.numel() != 1:
        return problem
    if received.shape != expected.shape or received.dtype != expected.dtype:
        return problem
    got, want = float(received), float(expected)
    if want != 0 and math.isclose(got, -want, rel_tol=1e-4):
        return f"{problem} (the expected value with the wrong sign: negate the log-probabilities)"
    ratio = got / want if want else 0.0
    if ratio > 1.5 and math.isclose(ratio, round(ratio), rel_tol=1e-4):
        return (
            f"{problem} ({round(ratio)} times the expected value: the sum over the examples, "
            "not their mean)"
        )
    return problem


def check_cross_entropy(cross_entropy: Callable) -> CheckResult:
    """Check ``cross_entropy(logits, targets)`` against :func:`reference_cross_entropy`."""
    large = 1000.0 * randn(4, 10, seed=13)
    large_targets = large.argmin(dim=-1)  # the least likely token: its probability underflows
    cases = [
        Case(
            "(4, 10) logits",
            (randn(4, 10, seed=11), token_ids(4, vocab=10, seed=12)),
            hint="take log_softmax along the LAST dim (the vocabulary), pick each target's "
            "log-probability, negate, and average over the examples (mean, not sum).",
        ),
        Case("one example (1, 5)", (randn(1, 5, seed=14), token_ids(1, vocab=5, seed=15))),
        Case(
            "(2, 3, 7) logits, (2, 3) targets",
            (randn(2, 3, 7, seed=16), token_ids(2, 3, vocab=7, seed=17)),
            hint="flatten to (N, vocab) and (N,) first; the mean is over all positions.",
        ),
        Case(
            "large logits (x1000)",
            (large, large_targets),
            hint="use a stable log_softmax (x - logsumexp(x)), not log(softmax(x)).",
        ),
        Case(
            "float64 logits",
            (randn(3, 6, dtype=torch.float64, seed=18), token_ids(3, vocab=6, seed=19)),
        ),
    ]
    return run_check(
        "cross_entropy",
        cross_entropy,
        reference_cross_entropy,
        cases,
        hint="-log_softmax(logits, dim=-1) at each target id, averaged over positions "
        "(a 0-dim tensor).",
        compare=_compare_loss,
        forbid=FORBID_CROSS_ENTROPY,
    )


def check_apply_temperature(apply_temperature: Callable) -> CheckResult:
    """Check ``apply_temperature(logits, temperature)``, bad temperatures included."""
    validate = "check the temperature first: raise ValueError unless it is a finite number > 0."
    cases = [
        Case("temperature 1 leaves logits unchanged", (randn(5, seed=20), 1.0)),
        Case(
            "temperature 0.5 sharpens",
            (randn(3, 7, seed=21), 0.5),
            hint="divide the logits by the temperature.",
        ),
        Case(
            "temperature 2 flattens (2, 3, 5)",
            (randn(2, 3, 5, seed=22), 2.0),
            hint="divide the logits by the temperature.",
        ),
        Case("integer temperature 3", (randn(4, seed=23), 3)),
        Case(
            "temperature 0 is rejected", (randn(5, seed=24), 0.0), raises=ValueError, hint=validate
        ),
        Case(
            "negative temperature is rejected",
            (randn(5, seed=25), -1.0),
            raises=ValueError,
            hint=validate,
        ),
        Case(
            "infinite temperature is rejected",
            (randn(5, seed=26), float("inf")),
            raises=ValueError,
            hint=validate,
        ),
        Case(
            "NaN temperature is rejected",
            (randn(5, seed=27), float("nan")),
            raises=ValueError,
            hint="NaN is not a finite number and compares False with everything: test "
            "math.isfinite(temperature) and temperature > 0, so that NaN fails the test.",
        ),
    ]
    return run_check(
        "apply_temperature",
        apply_temperature,
        reference_apply_temperature,
        cases,
        hint="return logits / temperature.",
        forbid=FORBID_TEMPERATURE,
    )
