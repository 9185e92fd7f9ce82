"""Checks of chapter 03's power-law lab (``solutions/03_pretraining/05_power_law.ipynb``): fitting
L(N) = a N^-alpha + c, and Chinchilla's split.

- ``fit_pure_power_law(N, L) -> (a, alpha)``: the least-squares line through
  ``(log N, log L)``; ``alpha`` is minus its slope (positive when the loss falls with size) and
  ``a`` is the base of the logarithm raised to the intercept.
- ``fit_power_law(N, L) -> (a, alpha, c)``: the same with the irreducible loss ``c`` in
  ``[0, min(L))``, chosen to minimise the squared error of ``log L``.
- ``chinchilla_split(compute, tokens_per_param=20) -> (N, D)``: the parameters and tokens
  that spend ``compute = 6 N D`` FLOPs with ``D = tokens_per_param * N``.

The data are synthetic, drawn from a known law, so the expected answer is the truth itself
(and :mod:`llmlab.training.scaling`'s fit recovers it). The cases catch the usual slips: a line fitted
to N and L instead of their logarithms, the slope reported as the exponent (its sign), an
intercept from a log10 fit turned back with ``exp``, a fit without the offset ``c``, and
``C = 2 N D`` or ``D = N / 20`` in the compute split.

Each ``check_NAME(fn)`` prints one line and returns a :class:`llmlab.checks.CheckResult`
whose ``.fn`` the lab keeps using::

    fit_power_law = check_fit_power_law(fit_power_law).fn

    lab 05_power_law: fit_pure_power_law, fit_power_law, chinchilla_split

The references delegate to :mod:`llmlab.training.scaling`; they are what the lab falls back on.
A case is judged against the true law (``expect=``), not against the reference's own fit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmlab.checks import Case, CheckResult, describe, run_check
from llmlab.training import scaling

#: The library's fits: an answer that calls them is flagged.
FORBID_SCALING = ("llmlab.training.scaling",)

# --------------------------------------------------------------------------------------------
# References


def reference_fit_pure_power_law(N, L) -> tuple[float, float]:
    """(a, alpha) of L = a * N ** -alpha: least squares in log-log space."""
    fit = scaling.fit_power_law(N, L, fit_offset=False)
    return fit.a, fit.alpha


def reference_fit_power_law(N, L) -> tuple[float, float, float]:
    """(a, alpha, c) of L = a * N ** -alpha + c (:func:`llmlab.training.scaling.fit_power_law`)."""
    fit = scaling.fit_power_law(N, L)
    return fit.a, fit.alpha, fit.c


def reference_chinchilla_split(
    compute: float, tokens_per_param: float = 20.0
) -> tuple[float, float]:
    """(N, D) with 6 N D = compute and D = tokens_per_param * N."""
    return scaling.chinchilla_optimal(compute, tokens_per_param)


# --------------------------------------------------------------------------------------------
# Cases and comparison


@dataclass(frozen=True)
class LawCase:
    """Points (N_i, L_i) of a known law: ``n_points`` sizes from ``n_min`` to ``n_max``.

    ``noise``: relative Gaussian noise on L (seeded), to make the case look like real runs.
    ``as_list``: hand N and L over as Python lists instead of numpy arrays.
    """

    a: float
    alpha: float
    c: float
    n_min: float = 1e4
    n_max: float = 1e7
    n_points: int = 6
    noise: float = 0.0
    as_list: bool = False
    seed: int = 0

    def points(self) -> tuple[Any, Any]:
        n = np.geomspace(self.n_min, self.n_max, self.n_points)
        loss = self.a * n**-self.alpha + self.c
        if self.noise:
            loss = loss * (
                1 + self.noise * np.random.default_rng(self.seed).standard_normal(n.size)
            )
        return (n.tolist(), loss.tolist()) if self.as_list else (n, loss)

    def __repr__(self) -> str:
        return f"a={self.a:g}, alpha={self.alpha:g}, c={self.c:g}"


@dataclass(frozen=True)
class Tolerance:
    """Relative tolerance per returned number, in the order the function returns them."""

    names: tuple[str, ...]
    rtol: tuple[float, ...]


def _as_floats(received: Any, n: int) -> tuple[list[float] | None, str | None]:
    if isinstance(received, (str, bytes, dict, set)) or not hasattr(received, "__len__"):
        return None, f"expected a tuple of {n} numbers, received {describe(received)}"
    if len(received) != n:
        return None, f"expected a tuple of {n} numbers, received {describe(received)}"
    values = []
    for item in received:
        if isinstance(item, (str, bytes)):  # float("6.9e10") would hide a str
            return None, f"expected numbers, received {describe(item)} in the tuple"
        try:
            value = float(item)
        except (TypeError, ValueError):
            return None, f"expected numbers, received {describe(item)} in the tuple"
        values.append(value)
    return values, None


def _compare(received: Any, expected: Any) -> str | None:
    """``expected`` = (true values, Tolerance); every value within its relative tolerance."""
    want, tol = expected
    got, problem = _as_floats(received, len(want))
    if problem:
        return problem
    for name, g, w, rtol in zip(tol.names, got, want, tol.rtol, strict=True):
        if not math.isfinite(g):
            return f"{name}: expected a finite number near {w:.6g}, received {g}"
        if abs(g - w) > rtol * abs(w) + 1e-12:
            return (
                f"{name}: expected {w:.6g}, received {g:.6g} "
                f"(tolerance {rtol * 100:g}% of the expected value)"
            )
    return None


# --------------------------------------------------------------------------------------------
# fit_pure_power_law


def _numbers(result: Any, n: int) -> Any:
    """``result`` when it holds ``n`` numbers; otherwise a TypeError: the check cannot use it
    (a type slip then fails as such, not with a hint about the maths)."""
    _, problem = _as_floats(result, n)
    if problem:
        raise TypeError(problem)
    return result


def _run_pure_fit(fn: Callable, case: LawCase) -> Any:
    return _numbers(fn(*case.points()), 2)


def _run_fit(fn: Callable, case: LawCase) -> Any:
    return _numbers(fn(*case.points()), 3)


def check_fit_pure_power_law(fit_pure_power_law: Callable) -> CheckResult:
    """Check ``fit_pure_power_law(N, L) -> (a, alpha)`` on exact power laws (c = 0)."""
    tol = Tolerance(("a", "alpha"), (1e-4, 1e-4))
    sign_hint = (
        "alpha is MINUS the slope of log L against log N: a loss that falls with size "
        "has a negative slope and a positive alpha."
    )
    cases = [
        Case(
            "a=10, alpha=0.1, 6 sizes 1e4..1e7",
            (LawCase(10.0, 0.1, 0.0),),
            hint="fit a straight line to (log N, log L), not to (N, L): np.polyfit(np.log(N), "
            "np.log(L), 1) gives (slope, intercept).",
        ),
        Case(
            "a=2, alpha=0.5, 5 sizes 10..1e5", (LawCase(2.0, 0.5, 0.0, 10, 1e5, 5),), hint=sign_hint
        ),
        Case(
            "a=1000, alpha=0.3, 8 sizes 1e3..1e9 (a far from 1)",
            (LawCase(1000.0, 0.3, 0.0, 1e3, 1e9, 8),),
            hint="a is the base of your logarithm raised to the intercept: exp(b) after "
            "np.log, 10 ** b after np.log10.",
        ),
        Case(
            "a=5, alpha=0.076 (Kaplan's exponent), 7 sizes 1e6..1e10",
            (LawCase(5.0, 0.076, 0.0, 1e6, 1e10, 7),),
        ),
        Case(
            "N and L as Python lists",
            (LawCase(3.0, 0.2, 0.0, as_list=True),),
            hint="convert the inputs with np.asarray(N, dtype=float) first.",
        ),
        Case("only 3 points, a=0.5, alpha=1.0", (LawCase(0.5, 1.0, 0.0, 1, 100, 3),)),
    ]
    return run_check(
        "fit_pure_power_law",
        fit_pure_power_law,
        reference_fit_pure_power_law,
        cases,
        hint="slope, b = np.polyfit(np.log(N), np.log(L), 1); return np.exp(b), -slope.",
        run=_run_pure_fit,
        expect=lambda case: ((case.a, case.alpha), tol),
        compare=_compare,
        arg_names=("law",),
        forbid=FORBID_SCALING,
    )


# --------------------------------------------------------------------------------------------
# fit_power_law


def check_fit_power_law(fit_power_law: Callable) -> CheckResult:
    """Check ``fit_power_law(N, L) -> (a, alpha, c)`` on laws with an offset (and one without).

    Exact laws are recovered to 2% (a), 1% (alpha) and 1% (c), which a grid of a few hundred
    values of c already reaches; the noisy case only asks for 15% on alpha.
    """
    tight = Tolerance(("a", "alpha", "c"), (0.02, 0.01, 0.01))
    cases = [
        Case(
            "a=40, alpha=0.3, c=2.5, 6 sizes 1e4..1e7",
            (LawCase(40.0, 0.3, 2.5),),
            hint="the offset c matters: a pure power law bends towards alpha ~ 0 when the "
            "losses flatten. For each c in a grid over [0, min(L)), fit the line to "
            "(log N, log(L - c)) and keep the c whose curve fits log L best.",
        ),
        Case("a=30, alpha=0.25, c=1.0, 8 sizes 1e3..1e8", (LawCase(30.0, 0.25, 1.0, 1e3, 1e8, 8),)),
        Case(
            "c=0 (a pure power law)",
            (LawCase(10.0, 0.1, 0.0),),
            hint="c = 0 must be in your grid: np.linspace(0, min(L), ..., endpoint=False).",
        ),
        Case(
            "a=400, alpha=0.2, c=3.0, 7 sizes 1e5..1e9",
            (LawCase(400.0, 0.2, 3.0, 1e5, 1e9, 7),),
            hint="the error to minimise over c is that of the fitted curve a N^-alpha + c "
            "against L (in log space), not the error of the straight line itself.",
        ),
        Case("N and L as Python lists, c=1.7", (LawCase(20.0, 0.35, 1.7, as_list=True),)),
        Case(
            "1% noise on L, a=40, alpha=0.3, c=2.5, 8 sizes",
            (LawCase(40.0, 0.3, 2.5, 1e4, 1e8, 8, noise=0.01, seed=3),),
        ),
    ]

    loose = Tolerance(("a", "alpha", "c"), (math.inf, 0.15, math.inf))

    def expect(case: LawCase):
        return (case.a, case.alpha, case.c), loose if case.noise else tight

    return run_check(
        "fit_power_law",
        fit_power_law,
        reference_fit_power_law,
        cases,
        hint="grid over c in [0, min(L)); for each c: a, alpha = fit_pure_power_law(N, L - c) "
        "and the error sum((log(a N^-alpha + c) - log L)^2); return the best (a, alpha, c).",
        run=_run_fit,
        expect=expect,
        compare=_compare,
        arg_names=("law",),
        forbid=FORBID_SCALING,
    )


# --------------------------------------------------------------------------------------------
# chinchilla_split


def _run_split(fn: Callable, compute: float, tokens_per_param: float | None) -> Any:
    return _numbers(fn(compute) if tokens_per_param is None else fn(compute, tokens_per_param), 2)


def check_chinchilla_split(chinchilla_split: Callable) -> CheckResult:
    """Check ``chinchilla_split(compute, tokens_per_param=20) -> (N, D)`` to 1e-6."""
    tol = Tolerance(("N (parameters)", "D (tokens)"), (1e-6, 1e-6))
    cases = [
        Case(
            "Chinchilla's budget, 5.76e23 FLOPs",
            (5.76e23, None),
            hint="training costs C = 6 N D FLOPs (2 N per token forward, 4 N backward), not "
            "2 N D: with D = 20 N, N = sqrt(C / 120).",
        ),
        Case(
            "1e21 FLOPs",
            (1e21, None),
            hint="Chinchilla's rule is 20 TOKENS per parameter: D = 20 N, not N / 20.",
        ),
        Case("a tiny budget, 6e6 FLOPs", (6e6, None)),
        Case(
            "tokens_per_param 10",
            (1e18, 10.0),
            hint="use the tokens_per_param argument: N = sqrt(C / (6 r)), D = r N.",
        ),
        Case("tokens_per_param 1 (N = D)", (6e12, 1.0)),
        Case("GPT-3's budget, 3.14e23 FLOPs", (3.14e23, None)),
    ]

    def expect(compute: float, tokens_per_param: float | None):
        return reference_chinchilla_split(compute, tokens_per_param or 20.0), tol

    return run_check(
        "chinchilla_split",
        chinchilla_split,
        reference_chinchilla_split,
        cases,
        hint="C = 6 N D and D = r N give N = sqrt(C / (6 r)) and D = r N.",
        run=_run_split,
        expect=expect,
        compare=_compare,
        arg_names=("compute", "tokens_per_param"),
        forbid=FORBID_SCALING,
    )
