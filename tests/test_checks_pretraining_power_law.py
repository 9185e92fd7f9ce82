"""The checks of chapter 03's power-law lab (llmlab.checks.pretraining.power_law).

For every check: the reference passes, other correct answers pass too (a log10 fit, a plain
grid search over c, torch instead of numpy), plausible wrong answers (mutants) fail on the case
that exposes them, a NotImplementedError stub reports "not implemented", garbage never raises,
and the global seed does not move.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from check_contract import CheckContract, student_copy

from llmlab.checks.pretraining import power_law as sc
from llmlab.training import scaling

CHECKS = {
    "check_fit_pure_power_law": (sc.check_fit_pure_power_law, sc.reference_fit_pure_power_law),
    "check_fit_power_law": (sc.check_fit_power_law, sc.reference_fit_power_law),
    "check_chinchilla_split": (sc.check_chinchilla_split, sc.reference_chinchilla_split),
}


GARBAGE = {
    "returns a number": lambda *a, **k: 3.0,
    "returns a string": lambda *a, **k: "fit",
    "returns a tuple of strings": lambda *a, **k: ("a", "b", "c"),
    "returns a tuple of None": lambda *a, **k: (None, None, None),
    "returns NaNs": lambda *a, **k: (math.nan, math.nan, math.nan),
    "returns an empty list": lambda *a, **k: [],
    "returns a dict": lambda *a, **k: {"a": 1.0, "alpha": 0.1},
    "returns its first input": lambda x, *a, **k: x,
    "takes no arguments": lambda: (1.0, 0.1),
}


class TestContract(CheckContract):
    MODULES = (sc,)
    CHECKS = CHECKS
    GARBAGE = GARBAGE
    MIN_CASES = 6


# --------------------------------------------------------------------------------------------
# fit_pure_power_law

FIRST_PURE = "a=10, alpha=0.1, 6 sizes 1e4..1e7"


def pure_natural(N, L):
    slope, b = np.polyfit(np.log(N), np.log(L), 1)
    return math.exp(b), -slope


def pure_log10(N, L):
    slope, b = np.polyfit(np.log10(N), np.log10(L), 1)
    return 10**b, -slope


def pure_torch(N, L):
    x = torch.log(torch.as_tensor(N, dtype=torch.float64))
    y = torch.log(torch.as_tensor(L, dtype=torch.float64))
    slope = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
    b = y.mean() - slope * x.mean()
    return torch.exp(b), -slope  # 0-dim tensors are numbers too


def pure_linear_space(N, L):  # a straight line through (N, L)
    slope, b = np.polyfit(np.asarray(N, float), np.asarray(L, float), 1)
    return b, -slope


def pure_slope_as_exponent(N, L):  # forgets the minus sign
    slope, b = np.polyfit(np.log(N), np.log(L), 1)
    return math.exp(b), slope


def pure_log10_then_exp(N, L):  # log10 fit, natural exponential
    slope, b = np.polyfit(np.log10(N), np.log10(L), 1)
    return math.exp(b), -slope


def pure_log_then_pow10(N, L):  # natural-log fit, 10 ** intercept
    slope, b = np.polyfit(np.log(N), np.log(L), 1)
    return 10**b, -slope


def pure_intercept_as_a(N, L):  # reports the log of a
    slope, b = np.polyfit(np.log(N), np.log(L), 1)
    return b, -slope


def pure_swapped(N, L):  # (alpha, a)
    a, alpha = pure_natural(N, L)
    return alpha, a


def pure_array_only(N, L):  # N.astype: breaks on lists
    slope, b = np.polyfit(np.log(N.astype(float)), np.log(L), 1)
    return math.exp(b), -slope


# --------------------------------------------------------------------------------------------
# fit_power_law

FIRST_FULL = "a=40, alpha=0.3, c=2.5, 6 sizes 1e4..1e7"


def full_grid(N, L, points=300):
    """What the lab asks for: a plain grid over c, each c fitted in log space."""
    N, L = np.asarray(N, float), np.asarray(L, float)
    best = None
    for c in np.linspace(0.0, L.min(), points, endpoint=False):
        a, alpha = pure_natural(N, L - c)
        error = np.sum((np.log(a * N**-alpha + c) - np.log(L)) ** 2)
        if best is None or error < best[0]:
            best = (error, a, alpha, c)
    return best[1:]


def full_grid_l_space_error(N, L):
    """Choosing c by the squared error of L (not log L): also correct."""
    N, L = np.asarray(N, float), np.asarray(L, float)
    best = None
    for c in np.linspace(0.0, L.min(), 1000, endpoint=False):
        a, alpha = pure_natural(N, L - c)
        error = np.sum((a * N**-alpha + c - L) ** 2)
        if best is None or error < best[0]:
            best = (error, a, alpha, c)
    return best[1:]


def full_forgets_c(N, L):
    a, alpha = pure_natural(N, L)
    return a, alpha, 0.0


def full_c_is_min_loss(N, L):  # takes the smallest loss as the floor
    N, L = np.asarray(N, float), np.asarray(L, float)
    c = 0.999 * L.min()
    a, alpha = pure_natural(N, L - c)
    return a, alpha, c


def full_linear_space(N, L):  # grid over c, then a line through (N, L - c)
    N, L = np.asarray(N, float), np.asarray(L, float)
    best = None
    for c in np.linspace(0.0, L.min(), 200, endpoint=False):
        slope, b = np.polyfit(N, L - c, 1)
        error = np.sum((b + slope * N - L + c) ** 2)
        if best is None or error < best[0]:
            best = (error, b, -slope, c)
    return best[1:]


def full_sign(N, L):
    a, alpha, c = full_grid(N, L)
    return a, -alpha, c


def full_log10_then_exp(N, L):
    N, L = np.asarray(N, float), np.asarray(L, float)
    best = None
    for c in np.linspace(0.0, L.min(), 300, endpoint=False):
        slope, b = np.polyfit(np.log10(N), np.log10(L - c), 1)
        a, alpha = 10**b, -slope
        error = np.sum((np.log(a * N**-alpha + c) - np.log(L)) ** 2)
        if best is None or error < best[0]:
            best = (error, math.exp(b), alpha, c)  # but reports e ** b
    return best[1:]


def full_coarse_grid(N, L):  # ten values of c are too few
    return full_grid(N, L, points=10)


# --------------------------------------------------------------------------------------------
# chinchilla_split

FIRST_SPLIT = "Chinchilla's budget, 5.76e23 FLOPs"


def split(compute, tokens_per_param=20.0):
    n = math.sqrt(compute / (6 * tokens_per_param))
    return n, tokens_per_param * n


def split_numpy(compute, tokens_per_param=20):
    n = np.sqrt(compute / 6 / tokens_per_param)
    return np.float64(n), np.float64(n * tokens_per_param)


def split_2nd(compute, tokens_per_param=20.0):  # C = 2 N D
    n = math.sqrt(compute / (2 * tokens_per_param))
    return n, tokens_per_param * n


def split_n_over_20(compute, tokens_per_param=20.0):  # D = N / 20
    n = math.sqrt(compute * tokens_per_param / 6)
    return n, n / tokens_per_param


def split_swapped(compute, tokens_per_param=20.0):  # (D, N)
    n, d = split(compute, tokens_per_param)
    return d, n


def split_hard_coded_20(compute, tokens_per_param=20.0):
    return split(compute, 20.0)


def split_as_text(compute, tokens_per_param=20.0):  # formatted for printing, not numbers
    n, d = split(compute, tokens_per_param)
    return f"{n!r}", f"{d!r}"


def split_no_sqrt(compute, tokens_per_param=20.0):
    n = compute / (6 * tokens_per_param)
    return n, tokens_per_param * n


# --------------------------------------------------------------------------------------------
# What the contract runs

PURE, FULL, SPLIT = "check_fit_pure_power_law", "check_fit_power_law", "check_chinchilla_split"

CORRECT_VARIANTS = [
    (PURE, pure_natural),
    (PURE, pure_log10),
    (PURE, pure_torch),
    (FULL, full_grid),
    (FULL, full_grid_l_space_error),
    (SPLIT, split),
    (SPLIT, split_numpy),
]

MUTANTS = [
    (PURE, pure_linear_space, FIRST_PURE, "a: expected 10"),
    (PURE, pure_slope_as_exponent, FIRST_PURE, "alpha: expected 0.1, received -0.1"),
    (PURE, pure_log10_then_exp, FIRST_PURE, "a: expected 10, received 2.71828"),
    (PURE, pure_log_then_pow10, FIRST_PURE, "a: expected 10"),
    (PURE, pure_intercept_as_a, FIRST_PURE, "a: expected 10"),
    (PURE, pure_swapped, FIRST_PURE, "a: expected 10"),
    (PURE, pure_array_only, "N and L as Python lists", "AttributeError"),
    (FULL, full_forgets_c, FIRST_FULL, "a: expected 40"),
    (FULL, full_c_is_min_loss, FIRST_FULL, "expected 40"),
    (FULL, full_linear_space, FIRST_FULL, "expected 40"),
    (FULL, full_sign, FIRST_FULL, "alpha: expected 0.3"),
    (FULL, full_log10_then_exp, FIRST_FULL, "a: expected 40"),
    (FULL, full_coarse_grid, FIRST_FULL, "expected"),
    (SPLIT, split_2nd, FIRST_SPLIT, "N (parameters): expected 6.9282e+10, received 1.2e+11"),
    (SPLIT, split_n_over_20, FIRST_SPLIT, "N (parameters): expected 6.9282e+10"),
    (SPLIT, split_swapped, FIRST_SPLIT, "N (parameters): expected 6.9282e+10"),
    (SPLIT, split_no_sqrt, FIRST_SPLIT, "N (parameters): expected 6.9282e+10"),
    (SPLIT, split_hard_coded_20, "tokens_per_param 10", "N (parameters)"),
    (SPLIT, split_as_text, FIRST_SPLIT, "expected numbers, received a str '69282032302.7"),
]


# --------------------------------------------------------------------------------------------
# Answers that call llmlab.training.scaling: flagged


def full_with_the_library(N, L):
    fit = scaling.fit_power_law(N, L)
    return fit.a, fit.alpha, fit.c


FORBIDDEN = [
    # (check, an answer that calls a forbidden op, the op as the message names it)
    (
        PURE,
        student_copy(sc.reference_fit_pure_power_law),
        "llmlab.training.scaling.fit_power_law",
    ),
    (FULL, full_with_the_library, "llmlab.training.scaling.fit_power_law"),
    (
        SPLIT,
        student_copy(sc.reference_chinchilla_split),
        "llmlab.training.scaling.chinchilla_optimal",
    ),
]


def test_a_type_slip_is_told_apart_from_a_wrong_law():
    # Numbers as text used to pass (float("6.9e10") works); now the check says it cannot use
    # them, and the hint is not one about the maths.
    message = sc.check_chinchilla_split(split_as_text).message
    assert "the check could not use what your function returned (TypeError: " in message
    assert "6 N D" not in message.split("Hint: ")[1]
    message = sc.check_fit_pure_power_law(lambda N, L: "fit").message
    assert "expected a tuple of 2 numbers, received a str 'fit'" in message
