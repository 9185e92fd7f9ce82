"""llmlab.training.scaling: the power-law fit recovers known laws, and the Chinchilla split is C = 6ND."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llmlab.models.counting import training_flops
from llmlab.training import scaling
from llmlab.training.scaling import (
    PowerLawFit,
    chinchilla_optimal,
    fit_power_law,
    leave_one_out,
    power_law,
)


@pytest.mark.parametrize(
    "a, alpha, c, lo, hi, n",
    [
        (40.0, 0.3, 2.5, 1e4, 1e7, 6),
        (10.0, 0.076, 1.69, 1e6, 1e10, 7),  # Kaplan's exponent
        (2.0, 1.0, 0.1, 1, 1e3, 4),
        (400.0, 0.2, 0.0, 1e5, 1e9, 5),  # no offset: the fit must find c = 0
        (5.0, 0.5, 3.0, 10, 1e5, 3),  # as few points as there are parameters
    ],
)
def test_fit_recovers_an_exact_law(a, alpha, c, lo, hi, n):
    N = np.geomspace(lo, hi, n)
    fit = fit_power_law(N, power_law(N, a, alpha, c))
    assert isinstance(fit, PowerLawFit)
    assert fit.alpha == pytest.approx(alpha, rel=1e-4)
    assert fit.a == pytest.approx(a, rel=1e-3)
    assert fit.c == pytest.approx(c, abs=1e-5 * (a + c))
    assert all(isinstance(x, float) for x in fit)


def test_fit_with_noise_stays_close_and_unpacks():
    N = np.geomspace(1e4, 1e8, 8)
    rng = np.random.default_rng(0)
    L = power_law(N, 40.0, 0.3, 2.5) * (1 + 0.005 * rng.standard_normal(8))
    a, alpha, c = fit_power_law(list(N), list(L))  # lists work, and the fit unpacks
    assert alpha == pytest.approx(0.3, rel=0.1)
    assert c == pytest.approx(2.5, rel=0.05)


def test_without_the_offset_the_exponent_is_biased_towards_zero():
    N = np.geomspace(1e4, 1e7, 6)
    L = power_law(N, 40.0, 0.3, 2.5)
    pure = fit_power_law(N, L, fit_offset=False)
    assert pure.c == 0.0
    assert pure.alpha < 0.5 * 0.3


def test_pure_fit_is_the_log_log_line_in_any_base():
    N = np.geomspace(10, 1e6, 6)
    L = power_law(N, 7.0, 0.25)
    fit = fit_power_law(N, L, fit_offset=False)
    slope10, b10 = np.polyfit(np.log10(N), np.log10(L), 1)
    assert fit.alpha == pytest.approx(
        -slope10, rel=1e-9
    )  # the exponent does not depend on the base
    assert fit.a == pytest.approx(10**b10, rel=1e-9)


def test_predict_and_power_law():
    fit = PowerLawFit(2.0, 0.5, 1.0)
    assert fit.predict(4.0) == pytest.approx(2.0)
    assert np.allclose(fit.predict(np.array([1.0, 100.0])), [3.0, 1.2])
    assert isinstance(power_law(4.0, 2.0, 0.5), float)


def test_leave_one_out_gives_one_fit_per_point():
    N = np.geomspace(1e4, 1e7, 5)
    fits = leave_one_out(N, power_law(N, 40.0, 0.3, 2.5))
    assert len(fits) == 5
    assert all(f.alpha == pytest.approx(0.3, rel=1e-3) for f in fits)
    with pytest.raises(ValueError, match="N: leave-one-out needs at least 4"):
        leave_one_out(N[:3], power_law(N[:3], 40.0, 0.3, 2.5))


@pytest.mark.parametrize(
    "N, L, match",
    [
        ([1, 2], [3, 2], "at least 3 points"),
        ([1, 2, 3], [3, 2], "same length"),
        ([1, 0, 3], [3, 2, 1], "N: expected finite"),
        ([1, 2, 3], [3, -2, 1], "L: expected finite"),
        ([1, 2, 3], [3, float("nan"), 1], "L: expected finite"),
        ([5, 5, 5], [3, 2, 1], "two different sizes"),
        ([[1, 2, 3]], [[3, 2, 1]], "1-D"),
    ],
)
def test_bad_points_name_the_argument(N, L, match):
    with pytest.raises(ValueError, match=match):
        fit_power_law(N, L)


def test_bad_grid():
    with pytest.raises(ValueError, match="grid"):
        fit_power_law([1, 2, 3], [3, 2, 1], grid=2)


def test_training_flops_is_six_n_d():
    assert training_flops(1e9, 2e10) == 6 * 1e9 * 2e10
    with pytest.raises(ValueError, match="n_tokens"):
        training_flops(1e9, 0)


def test_chinchilla_optimal():
    # Chinchilla itself: 70B parameters on 1.4T tokens, C = 6 N D ~ 5.88e23 FLOPs.
    n, d = chinchilla_optimal(6 * 70e9 * 1.4e12)
    assert n == pytest.approx(70e9, rel=1e-9) and d == pytest.approx(1.4e12, rel=1e-9)
    n, d = chinchilla_optimal(1e18, tokens_per_param=10)
    assert d == pytest.approx(10 * n) and 6 * n * d == pytest.approx(1e18)
    assert scaling.CHINCHILLA_TOKENS_PER_PARAM == 20 and math.isclose(scaling.KAPLAN_ALPHA_N, 0.076)
    with pytest.raises(ValueError, match="compute"):
        chinchilla_optimal(-1.0)
    with pytest.raises(ValueError, match="tokens_per_param"):
        chinchilla_optimal(1e20, 0)
