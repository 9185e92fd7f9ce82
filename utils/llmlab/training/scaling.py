"""Scaling laws: fit L(N) = a N^-alpha + c to losses, and split a compute budget as Chinchilla.

Kaplan et al. (2020) trained many Transformer sizes and found that, with enough data, the test
loss falls as a power of the parameter count N (embeddings left out)::

    L(N) = a * N ** -alpha + c          alpha_N ~ 0.076 in their fit

``c`` is the loss no model size removes (the entropy of the text itself, plus whatever the
data and tokenizer cap); ``a N^-alpha`` is what a bigger model still wins. On log-log axes the
reducible part ``L - c`` is a straight line of slope ``-alpha``, and the exponent is the same
in any base: ``log10(L - c) = log10(a) - alpha log10(N)`` and ``ln(L - c) = ln(a) - alpha
ln(N)`` have the same slope; only the intercept changes (``a = 10**b`` in one, ``e**b`` in
the other).

How :func:`fit_power_law` fits three numbers robustly. For a fixed ``c`` the model is linear
in log space, so ``a`` and ``alpha`` come from least squares on ``(ln N, ln(L - c))`` in
closed form. What remains is a one-dimensional search over ``c`` in ``[0, min(L))``: a grid
first (the error curve can have several dips), then a golden-section search around the best
grid point. The error minimised is that of ``ln L`` (relative errors), so the large losses of
small models do not outweigh the small differences between big ones. Fitting ``L`` directly
in linear space with a general optimiser often stalls at a poor ``alpha``; leaving out ``c``
(a pure power law) bends the exponent towards 0, because the losses flatten towards ``c``.

Compute. Training costs about ``C = 6 N D`` FLOPs for N parameters and D tokens (2 N per
token forward, 4 N backward; :mod:`llmlab.models.counting`). Hoffmann et al. (2022,
"Chinchilla") found that for a fixed C the loss is lowest when N and D grow together, at about
20 tokens per parameter; :func:`chinchilla_optimal` splits a budget that way:
``N = sqrt(C / (6 * 20))``, ``D = 20 N``.

    >>> fit = fit_power_law(n_params, losses)      # PowerLawFit(a=..., alpha=..., c=...)
    >>> fit.predict(1e9)
    >>> chinchilla_optimal(1e21)                   # (N, D) for 1e21 FLOPs
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from llmlab.models.counting import training_flops
from llmlab.validate import require_int

__all__ = [
    "KAPLAN_ALPHA_N",
    "CHINCHILLA_TOKENS_PER_PARAM",
    "PowerLawFit",
    "power_law",
    "fit_power_law",
    "leave_one_out",
    "training_flops",
    "chinchilla_optimal",
]

#: Kaplan et al. (2020), eq. 1.1: L(N) = (N_c / N) ** alpha_N with alpha_N ~ 0.076.
KAPLAN_ALPHA_N = 0.076
#: Hoffmann et al. (2022): compute-optimal training uses about 20 tokens per parameter.
CHINCHILLA_TOKENS_PER_PARAM = 20.0

_GOLDEN = (math.sqrt(5) - 1) / 2


class PowerLawFit(NamedTuple):
    """The fitted ``L(N) = a * N ** -alpha + c`` (unpacks as ``a, alpha, c``)."""

    a: float
    alpha: float
    c: float

    def predict(self, n) -> np.ndarray | float:
        """The fitted loss at ``n`` parameters (a number or an array)."""
        return power_law(n, self.a, self.alpha, self.c)


def power_law(n, a: float, alpha: float, c: float = 0.0) -> np.ndarray | float:
    """``a * n ** -alpha + c`` for a number or an array of ``n``."""
    out = a * np.asarray(n, dtype=np.float64) ** -alpha + c
    return float(out) if np.ndim(out) == 0 else out


def _as_points(N: Sequence[float], L: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    n = np.asarray(N, dtype=np.float64)
    loss = np.asarray(L, dtype=np.float64)
    if n.ndim != 1 or loss.ndim != 1:
        raise ValueError(f"N, L: expected 1-D sequences, got shapes {n.shape} and {loss.shape}")
    if n.shape != loss.shape:
        raise ValueError(f"N, L: expected the same length, got {n.size} and {loss.size}")
    if n.size < 3:
        raise ValueError(f"N: a fit of three numbers needs at least 3 points, got {n.size}")
    if not (np.isfinite(n).all() and (n > 0).all()):
        raise ValueError("N: expected finite parameter counts > 0")
    if not (np.isfinite(loss).all() and (loss > 0).all()):
        raise ValueError("L: expected finite losses > 0")
    if np.unique(n).size < 2:
        raise ValueError("N: expected at least two different sizes")
    return n, loss


def _fit_given_c(log_n: np.ndarray, loss: np.ndarray, c: float) -> tuple[float, float, float]:
    """(a, alpha, error) of the log-space least-squares line through ln(L - c) against ln N."""
    slope, intercept = np.polyfit(log_n, np.log(loss - c), 1)
    a, alpha = math.exp(intercept), -float(slope)
    predicted = a * np.exp(-alpha * log_n) + c
    error = float(np.sum((np.log(predicted) - np.log(loss)) ** 2))
    return a, alpha, error


def fit_power_law(
    N: Sequence[float], L: Sequence[float], fit_offset: bool = True, grid: int = 400
) -> PowerLawFit:
    """Fit ``L = a * N ** -alpha + c`` to points (N_i, L_i); returns :class:`PowerLawFit`.

    N: parameter counts (> 0, at least 3 points, two different); L: losses (> 0).
    fit_offset: False fits a pure power law (c = 0), a straight line in log-log space.
    grid: how many values of c in [0, min(L)) to try before the golden-section refinement.
    ``alpha`` is positive when the loss falls with size.
    """
    n, loss = _as_points(N, L)
    require_int(grid, "grid", 10)
    log_n = np.log(n)
    if not fit_offset:
        a, alpha, _ = _fit_given_c(log_n, loss, 0.0)
        return PowerLawFit(a, alpha, 0.0)

    top = float(loss.min())
    # c may come as close to min(L) as 1e-9 of it: the log of L - c stays finite
    cs = top * (1.0 - np.geomspace(1.0, 1e-9, grid))
    errors = [_fit_given_c(log_n, loss, c)[2] for c in cs]
    best = int(np.argmin(errors))
    lo, hi = cs[max(best - 1, 0)], cs[min(best + 1, grid - 1)]

    def error(c: float) -> float:
        return _fit_given_c(log_n, loss, c)[2]

    x1, x2 = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
    f1, f2 = error(x1), error(x2)
    for _ in range(100):
        if hi - lo <= 1e-13 * max(top, 1.0):
            break
        if f1 <= f2:
            hi, x2, f2 = x2, x1, f1
            x1 = hi - _GOLDEN * (hi - lo)
            f1 = error(x1)
        else:
            lo, x1, f1 = x1, x2, f2
            x2 = lo + _GOLDEN * (hi - lo)
            f2 = error(x2)
    candidates = [(errors[best], cs[best]), (f1, x1), (f2, x2)]
    c = min(candidates)[1]
    a, alpha, _ = _fit_given_c(log_n, loss, c)
    return PowerLawFit(a, alpha, float(c))


def leave_one_out(N: Sequence[float], L: Sequence[float], **kwargs) -> list[PowerLawFit]:
    """The fits obtained by leaving out each point in turn (needs >= 4 points).

    Their spread says how much one run moves the exponent: an honest error bar for a fit
    on a handful of points, where a bootstrap would resample too few distinct sets.
    """
    n, loss = _as_points(N, L)
    if n.size < 4:
        raise ValueError(f"N: leave-one-out needs at least 4 points, got {n.size}")
    keep = np.ones(n.size, dtype=bool)
    fits = []
    for i in range(n.size):
        keep[:] = True
        keep[i] = False
        fits.append(fit_power_law(n[keep], loss[keep], **kwargs))
    return fits


def chinchilla_optimal(
    compute: float, tokens_per_param: float = CHINCHILLA_TOKENS_PER_PARAM
) -> tuple[float, float]:
    """(N, D): the parameters and tokens that spend ``compute`` FLOPs at ``tokens_per_param``.

    From C = 6 N D and D = r N: N = sqrt(C / (6 r)), D = r N.
    """
    for value, name in ((compute, "compute"), (tokens_per_param, "tokens_per_param")):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{name}: expected a number > 0, got {value!r}")
    n = math.sqrt(compute / (6.0 * tokens_per_param))
    return n, tokens_per_param * n
