"""Checks of chapter 05's GPTQ lab (``solutions/05_compression/03_gptq.ipynb``).

    lab 03_gptq: hessian, inverse_cholesky, gptq_columns

A linear layer computes ``x @ W.T``; ``weight`` ``W`` is (out, in), its calibration inputs
``x`` are (n, in), n rows seen on calibration text. The conventions are those of
:mod:`llmlab.compress.gptq`:

- ``hessian(x, damp=0.01) -> H``: ``H = x.T @ x / n``, the inputs' second moments averaged
  over the n rows (:func:`llmlab.compress.gptq.collect_hessians` records exactly this, without
  dampening), plus ``damp * mean(diag(H))`` on the diagonal. (in, in); float64 or float32.
- ``inverse_cholesky(h) -> U``: the upper-triangular Cholesky factor of ``H^-1``, ``U^T U =
  H^-1``, with a positive diagonal. (in, in); float64 or float32.
- ``gptq_columns(weight, h, quantize_column) -> Q``: the quantized weight (out, in), column by
  column: with ``U = inverse_cholesky(h)`` and ``W`` a copy of ``weight``, for ``i`` in order,
  ``q = quantize_column(W[:, i])``, ``err = (W[:, i] - q) / U[i, i]``,
  ``W[:, i+1:] -= err[:, None] * U[i, i+1:]``; column ``i`` of ``Q`` is ``q``. No lazy
  blocks (the package's ``block_size`` batches the same updates; the result is the same).
  ``quantize_column`` rounds one column (out,) to a per-row symmetric grid whose scales were
  fixed from the ORIGINAL weights before the loop (:class:`ColumnQuantizer`): with it,
  ``gptq_columns(W, hessian(x, d), q)`` equals ``gptq_quantize(W, x.T @ x / n, bits,
  scheme="absmax", damp=d).weight`` (``tests/test_checks_compression_gptq.py``).

Comparisons. ``H`` and ``U`` are compared in float64, within ``1e-5`` (H) and ``1e-4`` (U)
of the largest entry plus the same relative tolerance: float32 answers pass. ``Q`` is
replayed, not compared entry by entry: the check re-runs the column loop in float64 on your
own codes, and each of your codes must be the rounding of the column as GPTQ has updated it by
then; where that column lies within ``1e-3`` grid steps of a half-way point, either neighbour
is accepted (float32 arithmetic may round such a value the other way, and the rest of the row
then follows that choice).

The cases catch the usual slips, and the message names the slip when the answer matches it:
in ``hessian``, ``x @ x.T`` (n, n), no division by n or a division by n - 1, centred inputs
(a covariance), no dampening, dampening on every entry, a constant ``damp`` not scaled by the
mean diagonal, the largest diagonal entry (or the trace, or the mean of all entries) instead
of the mean diagonal, the factor ``damp`` left out, a default other than ``damp=0.01``; in
``inverse_cholesky``, the lower factor (``U`` transposed), the Cholesky factor of ``H``
instead of ``H^-1`` (either triangle), a negative diagonal, a lower triangle filled in,
``H^-1`` itself, the inverse of ``H``'s Cholesky factor (triangular, but ``V V^T = H^-1``); in
``gptq_columns``, no division by ``U_ii``, rows of ``H^-1`` instead of ``U`` (with ``U_ii`` or
``[H^-1]_ii``: Optimal Brain Surgeon's step with an inverse never updated), the update added
instead of subtracted, the original column quantized (round-to-nearest; also what the rows of
a lower-triangular factor give), the Cholesky factor of ``H`` instead of ``H^-1``, only the
next column updated, and an output off the grid (the updated weights returned, or a quantized
column changed afterwards); and a ``weight`` changed in place (``weight.double()`` is
``weight`` itself when it is float64: a case is).

Each ``check_NAME(fn)`` prints one line and returns a :class:`llmlab.checks.CheckResult`
whose ``.fn`` the lab keeps using::

    gptq_columns = check_gptq_columns(gptq_columns).fn

An answer that calls the package's compression code (:mod:`llmlab.compress`) is flagged.
Inputs come from :mod:`llmlab.checks._inputs`, so a check never moves the notebook's seed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from llmlab.checks import Case, CheckResult, describe, run_check
from llmlab.checks._inputs import randn

#: The package's GPTQ computes the answers: an answer that calls it is flagged.
FORBID = ("llmlab.compress",)

#: Tolerances, relative to the largest entry of the expected matrix (float32 answers pass).
H_TOL = 1e-5
U_TOL = 1e-4

#: A code may be either neighbour where the updated column lies this close (in grid steps) to
#: a half-way point.
NEAR_TIE = 1e-3

#: How far (in grid steps) a value may sit from a grid point and still count as on it.
ON_GRID = 1e-3

# --------------------------------------------------------------------------------------------
# Inputs


def calibration_inputs(
    n: int,
    features: int,
    seed: int,
    scale: float = 1.0,
    offset: float = 0.0,
    spread: float = 1.0,
    correlated: bool = True,
) -> torch.Tensor:
    """(n, features) float32 inputs: normal rows mixed by ``I + 2 G / sqrt(features)`` so that
    the features are correlated (as a layer's inputs are), times ``scale``, feature j scaled
    by ``spread ** (j / (features - 1))``, plus ``offset``."""
    x = randn(n, features, seed=seed)
    if correlated:
        mix = torch.eye(features) + 2 * randn(features, features, seed=seed + 1) / features**0.5
        x = x @ mix
    if features > 1 and spread != 1.0:
        x = x * spread ** (torch.arange(features) / (features - 1))
    return scale * x + offset


class ColumnQuantizer:
    """``quantize_column`` of the lab: rounds one column (out,) of ``W`` to a symmetric grid of
    ``bits`` bits with one scale per output row, ``scale_r = max|weight[r]| / top`` (``top =
    2**(bits - 1) - 1``), fixed from the ORIGINAL ``weight`` when it is made (a row of zeros
    gets scale 1). Codes are ``clamp(round(w / scale), -top, top)``; it returns
    ``codes * scale`` in the column's dtype. A column of shape (out, 1) works too."""

    def __init__(self, weight: torch.Tensor, bits: int = 4):
        self.bits = bits
        self.top = 2 ** (bits - 1) - 1
        scale = weight.detach().double().abs().amax(dim=1) / self.top
        self.scale = torch.where(scale > 0, scale, torch.ones_like(scale))

    def __call__(self, column: torch.Tensor) -> torch.Tensor:
        rows = self.scale.shape[0]
        if not isinstance(column, torch.Tensor) or column.shape not in ((rows,), (rows, 1)):
            raise ValueError(
                f"quantize_column: expected one column of W, shape ({rows},), got "
                f"{describe(column)}"
            )
        scale = self.scale.to(column.dtype).reshape(column.shape)
        return torch.clamp(torch.round(column / scale), -self.top, self.top) * scale

    def __repr__(self) -> str:
        return f"<per-row {self.bits}-bit absmax grid of {self.scale.shape[0]} rows>"


# --------------------------------------------------------------------------------------------
# References


def reference_hessian(x: torch.Tensor, damp: float = 0.01) -> torch.Tensor:
    """x.T @ x / n in float64, plus damp * mean(diag) on the diagonal."""
    x = x.detach().double()
    h = x.T @ x / x.shape[0]
    return h + damp * h.diagonal().mean() * torch.eye(h.shape[0], dtype=h.dtype)


def reference_inverse_cholesky(h: torch.Tensor) -> torch.Tensor:
    """The upper Cholesky factor U of H^-1 (U^T U = H^-1), in float64, as gptq_quantize."""
    h = h.detach().double()
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)


def reference_gptq_columns(
    weight: torch.Tensor, h: torch.Tensor, quantize_column: Callable
) -> torch.Tensor:
    """GPTQ one column at a time, in float64; the quantized weight in ``weight``'s dtype."""
    W = weight.detach().double().clone()
    U = reference_inverse_cholesky(h)
    Q = torch.zeros_like(W)
    for i in range(W.shape[1]):
        q = quantize_column(W[:, i]).double()
        Q[:, i] = q
        err = (W[:, i] - q) / U[i, i]
        W[:, i + 1 :] -= torch.outer(err, U[i, i + 1 :])
    return Q.to(weight.dtype)


# --------------------------------------------------------------------------------------------
# Comparing a matrix, naming the slip it matches


def _matrix_problem(value: Any, shape: tuple[int, ...], what: str) -> str | None:
    """Type, shape and dtype of a returned matrix, in words; None when it can be compared."""
    if not isinstance(value, torch.Tensor):
        return f"expected a tensor ({what}), received {describe(value)}"
    if tuple(value.shape) != shape:
        return f"expected shape {shape} ({what}), received shape {tuple(value.shape)}"
    if value.dtype not in (torch.float32, torch.float64):
        dtype = str(value.dtype).removeprefix("torch.")
        return f"expected a float64 (or float32) tensor, received {dtype}"
    if not bool(value.isfinite().all()):
        bad = int((~value.isfinite()).sum())
        return f"received NaN or inf at {bad} of {value.numel()} positions"
    return None


def _close(value: torch.Tensor, want: torch.Tensor, tol: float) -> bool:
    got, want = value.detach().double().cpu(), want.double()
    if got.shape != want.shape or not bool(want.isfinite().all()):
        return False  # a slip that divides by zero (n - 1 = 0) matches nothing
    atol = tol * float(want.abs().max()) if want.numel() else 0.0
    return bool(((got - want).abs() <= atol + tol * want.abs()).all())


def _first_mismatch(value: torch.Tensor, want: torch.Tensor, tol: float) -> str:
    got, want = value.detach().double().cpu(), want.double()
    atol = tol * float(want.abs().max())
    error = (got - want).abs()
    bad = error > atol + tol * want.abs()
    index = tuple(int(i) for i in bad.nonzero()[0])
    return (
        f"max abs error {float(error.max()):.3g} exceeds the tolerance ({tol:g} of the largest "
        f"entry, {float(want.abs().max()):.4g}); first mismatch at index {index}: expected "
        f"{float(want[index]):.6g}, received {float(got[index]):.6g}"
    )


# --------------------------------------------------------------------------------------------
# hessian


def _hessian_slips(x: torch.Tensor, damp: float) -> list:
    """(what a slip gives, the words that name it), the usual slips of hessian in turn."""
    x = x.double()
    n, k = x.shape
    eye = torch.eye(k, dtype=torch.float64)
    xtx = x.T @ x
    h0 = xtx / n
    mean_diag = h0.diagonal().mean()
    centred = x - x.mean(0)
    slips = [
        (
            xtx + damp * xtx.diagonal().mean() * eye,
            f"your H is n = {n} times too large: divide x.T @ x by the number of rows n (H is the "
            "mean of x_r x_r^T over the calibration rows, as collect_hessians records it)",
        ),
        (
            xtx / (n - 1) + damp * (xtx / (n - 1)).diagonal().mean() * eye,
            f"you divided by n - 1 = {n - 1}: H = x.T @ x / n, the mean over the n = {n} rows "
            "(no sample-variance correction)",
        ),
        (
            centred.T @ centred / n + damp * (centred.T @ centred / n).diagonal().mean() * eye,
            "you subtracted the inputs' mean (a covariance): GPTQ's H is the second moment "
            "x.T @ x / n of the raw inputs, because the layer's output error is ||x (W - Q)^T||^2 "
            "on the inputs as they are",
        ),
        (
            centred.T @ centred / (n - 1)
            + damp * (centred.T @ centred / (n - 1)).diagonal().mean() * eye,
            "this is the inputs' covariance (torch.cov: mean subtracted, divided by n - 1): "
            "GPTQ's H is x.T @ x / n of the raw inputs",
        ),
        (
            h0 + damp * mean_diag * torch.ones_like(h0),
            f"the dampening {damp:g} * mean(diag(H)) was added to EVERY entry: add it to the "
            "diagonal only, H + damp * mean(diag(H)) * I",
        ),
        (
            h0 + damp * eye,
            f"the dampening is the constant {damp:g} on the diagonal: scale it by the mean of "
            f"H's diagonal (here {float(mean_diag):.4g}), damp * mean(diag(H)), so that it "
            "follows the size of the inputs",
        ),
        (
            h0 + damp * h0.diagonal().max() * eye,
            "the dampening uses the LARGEST diagonal entry: GPTQ adds damp * MEAN(diag(H)) to "
            "the diagonal",
        ),
        (
            h0 + damp * h0.diagonal().sum() * eye,
            "the dampening uses the trace (the SUM of the diagonal): GPTQ adds damp * "
            "mean(diag(H)), the sum divided by the number of features",
        ),
        (
            h0 + damp * h0.mean() * eye,
            "the dampening uses the mean of ALL of H's entries: take the mean of its diagonal, "
            "h.diagonal().mean()",
        ),
        (
            h0 + mean_diag * eye,
            f"the factor damp = {damp:g} is missing: add damp * mean(diag(H)) to the diagonal, "
            "not mean(diag(H))",
        ),
        (
            h0,
            f"no dampening: add damp * mean(diag(H)) (damp = {damp:g}) to the diagonal, so that "
            "H is invertible even when a feature is rare or two features move together",
        ),
    ]
    return slips


def _hessian_cases() -> list[Case]:
    def case(name, n, k, seed, damp=None, hint="", dtype=torch.float32, **kw):
        x = calibration_inputs(n, k, seed, **kw).to(dtype)
        args = (x,) if damp is None else (x, damp)
        return Case(name, args, hint=hint)

    def dead_feature():
        x = calibration_inputs(48, 12, 208)
        x[:, 5] = 0.0
        return Case("feature 5 is always 0 (its row and column of H are 0), damp 0.01", (x, 0.01))

    return [
        case(
            "256 rows of 32 correlated features, mean 0.5, scales 0.5 to 5, damp 0.01",
            256, 32, 200, 0.01, scale=0.5, offset=0.5, spread=10.0,
        ),
        case("no dampening, damp 0: H = x.T @ x / n", 64, 16, 202, 0.0),
        case("the default damp (0.01): called as hessian(x)", 100, 8, 204),
        case("float64 inputs, damp 0.1", 40, 10, 206, 0.1, dtype=torch.float64),
        dead_feature(),
        case(
            "fewer rows than features: 24 rows of 32 (x.T @ x is singular), damp 0.01",
            24, 32, 210, 0.01,
            hint="H = x.T @ x / n has shape (in, in) whatever n is; with fewer rows than "
            "features it is singular, and only the dampening makes it invertible.",
        ),
        case("a single row of 8 features, damp 0.05", 1, 8, 212, 0.05),
    ]  # fmt: skip


def _hessian_problem(received: Any, expected: torch.Tensor) -> str | None:
    value, want = received["out"], expected["out"]
    x, damp, default = received["inputs"]
    n, k = x.shape
    if isinstance(value, torch.Tensor) and tuple(value.shape) == (n, n) and n != k:
        return (
            f"your H has shape ({n}, {n}): that is x @ x.T, a matrix over the {n} calibration "
            f"rows; GPTQ's H is over the {k} input features, x.T @ x / n, shape ({k}, {k})"
        )
    problem = _matrix_problem(value, (k, k), "H over the input features")
    if problem is not None:
        return problem
    if _close(value, want, H_TOL):
        return None
    for wrong, words in _hessian_slips(x, damp):
        if _close(value, wrong, H_TOL):
            return words
    if default:  # called as hessian(x): which damp did the function use by default?
        h0 = reference_hessian(x, 0.0)
        mean_diag = h0.diagonal().mean()
        used = float((value.double().diagonal().mean() - mean_diag) / mean_diag)
        if used != damp and _close(value, reference_hessian(x, used), H_TOL):
            return (
                f"called as hessian(x), your function used damp = {used:.3g}: the default is "
                f"damp={damp:g}, def hessian(x, damp={damp:g})"
            )
    return _first_mismatch(value, want, H_TOL)


def _run_hessian(fn: Callable, x: torch.Tensor, *damp: float) -> dict:
    out = fn(x, *damp)
    return {"out": out, "inputs": (x, damp[0] if damp else 0.01, not damp)}


def check_hessian(hessian: Callable) -> CheckResult:
    """Check ``hessian(x, damp=0.01) -> H`` (in, in): x.T @ x / n + damp * mean(diag) * I."""
    return run_check(
        "hessian",
        hessian,
        reference_hessian,
        _hessian_cases(),
        hint="x = x.double(); h = x.T @ x / x.shape[0]; return h + damp * h.diagonal().mean() "
        "* torch.eye(h.shape[0], dtype=h.dtype).",
        run=_run_hessian,
        compare=_hessian_problem,
        arg_names=("x", "damp"),
        forbid=FORBID,
    )


# --------------------------------------------------------------------------------------------
# inverse_cholesky


def _inverse_cholesky_slips(h: torch.Tensor) -> list:
    h = h.double()
    h_inv = torch.linalg.inv(h)
    lower_h = torch.linalg.cholesky(h)
    return [
        (
            torch.linalg.cholesky(h_inv),
            "your matrix is lower triangular: it is the lower Cholesky factor L of H^-1 "
            "(H^-1 = L L^T), the transpose of U; GPTQ reads rows of the UPPER factor, "
            "torch.linalg.cholesky(h_inv, upper=True) (or L.mT)",
        ),
        (
            torch.linalg.cholesky(h, upper=True),
            "this is the upper Cholesky factor of H itself: GPTQ needs the factor of the "
            "INVERSE, invert H first (torch.linalg.inv or torch.cholesky_inverse), then factor",
        ),
        (
            lower_h,
            "this is the lower Cholesky factor of H itself: invert H first, then take the "
            "UPPER factor of H^-1, torch.linalg.cholesky(h_inv, upper=True)",
        ),
        (
            h_inv,
            "this is H^-1 itself (a full symmetric matrix): return its upper Cholesky factor U, "
            "torch.linalg.cholesky(h_inv, upper=True)",
        ),
        (
            torch.linalg.inv(lower_h).mT,
            "this is the inverse of H's upper Cholesky factor, L^-T: upper triangular, but "
            "L^-T (L^-T)^T = H^-1, whereas GPTQ's U satisfies U^T U = H^-1 (inverting a Cholesky "
            "factor does not give the factor of the inverse): invert H, then factor",
        ),
        (
            torch.linalg.inv(lower_h),
            "this is the inverse of H's lower Cholesky factor, L^-1: lower triangular, and not "
            "the factor GPTQ needs; invert H, then take the UPPER Cholesky factor of H^-1",
        ),
        (
            h,
            "this is H unchanged: return the upper Cholesky factor of its inverse",
        ),
    ]


def _structure_words(value: torch.Tensor, want: torch.Tensor) -> str | None:
    """What is wrong with a matrix that is no slip we know, in terms of U's two properties."""
    got = value.detach().double()
    scale = float(want.abs().max())
    if bool((got.tril(-1).abs() > U_TOL * scale).any()):
        return (
            "your matrix has nonzero entries below the diagonal: U is upper triangular "
            "(torch.linalg.cholesky(..., upper=True))"
        )
    if bool((got.diagonal() < 0).any()):
        return "your U has negative entries on its diagonal: a Cholesky factor's are positive"
    return None


def _inverse_cholesky_problem(received: Any, expected: dict) -> str | None:
    value, want = received["out"], expected["out"]
    (h,) = received["inputs"]
    k = h.shape[0]
    problem = _matrix_problem(value, (k, k), "U, the upper Cholesky factor of H^-1")
    if problem is not None:
        return problem
    if _close(value, want, U_TOL):
        return None
    for wrong, words in _inverse_cholesky_slips(h):
        if _close(value, wrong, U_TOL):
            return words
    words = _structure_words(value, want)
    mismatch = _first_mismatch(value, want, U_TOL)
    return mismatch if words is None else f"{words}; {mismatch}"


def _run_inverse_cholesky(fn: Callable, h: torch.Tensor) -> dict:
    return {"out": fn(h), "inputs": (h,)}


def _inverse_cholesky_cases() -> list[Case]:
    def case(name, n, k, seed, damp=0.01, hint="", dtype=torch.float64, **kw):
        h = reference_hessian(calibration_inputs(n, k, seed, **kw), damp).to(dtype)
        return Case(name, (h,), hint=hint)

    diagonal = torch.diag(torch.tensor([4.0, 1.0, 0.25, 9.0, 2.0], dtype=torch.float64))
    return [
        case("H of 256 rows of 16 correlated features, damp 0.01", 256, 16, 220),
        case("H of 512 rows of 64 features", 512, 64, 222),
        Case(
            "a diagonal H = diag(4, 1, 0.25, 9, 2): U = diag(1 / sqrt(H_ii))",
            (diagonal,),
            hint="for a diagonal H, H^-1 = diag(1 / H_ii) and its Cholesky factor is "
            "diag(1 / sqrt(H_ii)).",
        ),
        case("float32 H (200 rows of 24 features)", 200, 24, 224, dtype=torch.float32),
        case(
            "nearly dependent features: 40 rows of 32, damp 0.01 (the dampening keeps H "
            "invertible)",
            40, 32, 226, spread=30.0,
        ),
        Case("a 1 x 1 H = [[4]]: U = [[0.5]]", (torch.tensor([[4.0]], dtype=torch.float64),)),
        case("inputs of scale 10, mean 2: large entries", 128, 12, 228, scale=10.0, offset=2.0),
    ]  # fmt: skip


def check_inverse_cholesky(inverse_cholesky: Callable) -> CheckResult:
    """Check ``inverse_cholesky(h) -> U`` (in, in): upper triangular, U^T U = H^-1."""
    return run_check(
        "inverse_cholesky",
        inverse_cholesky,
        reference_inverse_cholesky,
        _inverse_cholesky_cases(),
        hint="h_inv = torch.linalg.inv(h.double()); return torch.linalg.cholesky(h_inv, "
        "upper=True).",
        run=_run_inverse_cholesky,
        compare=_inverse_cholesky_problem,
        arg_names=("h",),
        forbid=FORBID,
    )


# --------------------------------------------------------------------------------------------
# gptq_columns: replaying the loop on the student's codes


def _variants(h: torch.Tensor) -> dict[str, tuple]:
    """The column loop and its usual slips: name -> (rows, divisors, span, sign), where step
    i does ``W[:, cols] += sign * (w_i - q_i) / divisors[i] * rows[i, cols]`` on the columns
    ``cols`` that ``span`` names ("after": i+1 on; "next": i+1 only; "none": no update)."""
    h = h.double()
    U = reference_inverse_cholesky(h)
    h_inv = torch.linalg.inv(h)
    U_of_h = torch.linalg.cholesky(h, upper=True)
    ones = torch.ones(h.shape[0], dtype=torch.float64)
    return {
        "gptq": (U, U.diagonal(), "after", -1.0),
        "round to nearest": (U, U.diagonal(), "none", -1.0),
        "no division": (U, ones, "after", -1.0),
        "rows of H^-1": (h_inv, U.diagonal(), "after", -1.0),
        "OBS without updating H^-1": (h_inv, h_inv.diagonal(), "after", -1.0),
        "sign": (U, U.diagonal(), "after", 1.0),
        "Cholesky of H": (U_of_h, U_of_h.diagonal(), "after", -1.0),
        "next column only": (U, U.diagonal(), "next", -1.0),
    }


_COLUMN_SLIPS = {
    "round to nearest": "your output is round-to-nearest: every column rounded as it was, no "
    "error carried forward. Quantize the UPDATED column W[:, i] (not weight[:, i]) and subtract "
    "err[:, None] * U[i, i+1:] from the columns after it (a lower-triangular factor has zeros "
    "there: U must be the UPPER factor)",
    "no division": "the error was not divided by U[i, i]: err = (W[:, i] - q) / U[i, i], then "
    "W[:, i+1:] -= err[:, None] * U[i, i+1:]",
    "rows of H^-1": "the update used rows of H^-1 instead of rows of U: after the first column "
    "H^-1 no longer describes the columns left; U's row i is what H^-1 becomes once columns "
    "0 to i-1 are removed (that is why GPTQ factors it once)",
    "OBS without updating H^-1": "this is Optimal Brain Surgeon's step, err = (w - q) / "
    "[H^-1]_ii along row i of H^-1, with an H^-1 that is never updated as columns are "
    "quantized: right for column 0 only. Use U, the upper Cholesky factor of H^-1: err = "
    "(w - q) / U[i, i], W[:, i+1:] -= err[:, None] * U[i, i+1:]",
    "sign": "the update has the wrong sign: SUBTRACT, W[:, i+1:] -= err[:, None] * U[i, i+1:] "
    "(adding it doubles the error instead of cancelling it)",
    "Cholesky of H": "U is the Cholesky factor of H instead of H^-1: use U = "
    "inverse_cholesky(h), the upper factor of the INVERSE",
    "next column only": "only the next column was updated: the error of column i is spread "
    "over ALL the columns after it, W[:, i+1:] -= err[:, None] * U[i, i+1:]",
}


def _replay(
    out: torch.Tensor, weight: torch.Tensor, grid: tuple[torch.Tensor, int], variant: tuple
) -> tuple[int, int, float, float] | None:
    """Re-run the loop of ``variant`` in float64 on the codes of ``out``; None when every code
    is what the loop rounds to (either neighbour near a half), else the first one that is not:
    (column, row, expected value, received value). ``grid``: the quantizer's (scale, top)."""
    rows_of, divisors, span, sign = variant
    scale, top = grid
    scale = scale.double()
    W = weight.detach().double().clone()
    codes = torch.round(out.detach().double() / scale[:, None])
    cols = W.shape[1]
    for i in range(cols):
        x = W[:, i] / scale
        nearest = torch.clamp(torch.round(x), -top, top)
        tie = (x - torch.floor(x) - 0.5).abs() < NEAR_TIE
        either = (codes[:, i] == torch.clamp(torch.floor(x), -top, top)) | (
            codes[:, i] == torch.clamp(torch.ceil(x), -top, top)
        )
        ok = (codes[:, i] == nearest) | (tie & either)
        if not bool(ok.all()):
            r = int((~ok).nonzero()[0])
            return i, r, float(nearest[r] * scale[r]), float(out[r, i])
        q = codes[:, i] * scale
        err = (W[:, i] - q) / divisors[i]
        if span == "after":
            W[:, i + 1 :] += sign * torch.outer(err, rows_of[i, i + 1 :])
        elif span == "next" and i + 1 < cols:
            W[:, i + 1] += sign * err * rows_of[i, i + 1]
    return None


def _off_grid(out: torch.Tensor, grid: tuple[torch.Tensor, int]) -> str | None:
    scale, top = grid
    steps = out.detach().double() / scale.double()[:, None]
    off = ((steps - torch.round(steps)).abs() > ON_GRID) | (steps.abs() > top + ON_GRID)
    if not bool(off.any()):
        return None
    r, i = (int(v) for v in off.nonzero()[0])
    cols = [int(c) for c in off.any(0).nonzero().flatten()]
    shown = ", ".join(map(str, cols[:6])) + (", ..." if len(cols) > 6 else "")
    return (
        f"your output is not on the quantization grid in {len(cols)} of {out.shape[1]} columns "
        f"({shown}): at row {r}, column {i}, {float(out[r, i]):.6g} is {float(steps[r, i]):.3f} "
        f"steps of the row's scale {float(scale[r]):.4g}, not a whole number in "
        f"[-{top}, {top}]. Return the quantized columns q = "
        "quantize_column(W[:, i]) (not the updated weights W), and never change a column once "
        "it is quantized (update W[:, i+1:] only)"
    )


def _columns_problem(received: Any, expected: dict) -> str | None:
    # The reference's output is not compared entry by entry: the loop is replayed on the
    # student's own codes (a float32 near-tie may round either way; the row then follows it).
    value = received["out"]
    weight, h, grid = received["inputs"]
    problem = _matrix_problem(value, tuple(weight.shape), "the quantized weight Q")
    if problem is not None:
        return problem
    off = _off_grid(value, grid)
    if off is not None:
        return off
    variants = _variants(h)
    first = _replay(value, weight, grid, variants.pop("gptq"))
    if first is None:
        return None
    for name, variant in variants.items():
        if _replay(value, weight, grid, variant) is None:
            return _COLUMN_SLIPS[name]
    col, row, wanted, got = first
    where = (
        "column 0 is the original column rounded (nothing has been carried to it yet): call "
        "quantize_column(W[:, 0])"
        if col == 0
        else f"columns 0 to {col - 1} agree with GPTQ"
    )
    return (
        f"first difference at column {col}, row {row}: GPTQ rounds the updated weight to "
        f"{wanted:.6g}, you have {got:.6g}; {where}"
    )


def _run_columns(fn: Callable, weight: torch.Tensor, h: torch.Tensor, quantize_column) -> dict:
    out = fn(weight, h, quantize_column)
    # The grid as plain data: the grader sends what a driver returns back as tensors and numbers.
    grid = (quantize_column.scale, quantize_column.top)
    return {"out": out, "inputs": (weight, h, grid)}


def _columns_cases() -> list[Case]:
    def case(name, out, cols, seed, bits=4, n=None, dtype=torch.float32, hint="", **kw):
        x = calibration_inputs(n or 8 * cols, cols, seed, **kw)
        h = reference_hessian(x, 0.01)
        weight = randn(out, cols, seed=seed + 2, scale=0.05).to(dtype)
        return Case(name, (weight, h, ColumnQuantizer(weight, bits)), hint=hint)

    diagonal_weight = randn(8, 16, seed=254, scale=0.05)
    second_moments = calibration_inputs(128, 16, 255, spread=4.0).double().pow(2).mean(0)
    diagonal_h = torch.diag(1.01 * second_moments)
    zero_row = randn(6, 12, seed=248, scale=0.05)
    zero_row[2] = 0.0
    zero_h = reference_hessian(calibration_inputs(96, 12, 246), 0.01)
    return [
        case("a (16, 32) float32 weight, correlated inputs, 4 bits", 16, 32, 240),
        case(
            "a (32, 64) float64 weight, 4 bits", 32, 64, 242, dtype=torch.float64,
            hint="work on a copy, W = weight.clone(): weight.double() is weight itself when "
            "it is already float64, and the loop must not change the caller's weights.",
        ),
        case("3 bits (codes -3 to 3), a (8, 24) weight", 8, 24, 244, bits=3),
        case("2 bits (codes -1, 0, 1), a (12, 16) weight", 12, 16, 250, bits=2),
        case("8 bits: a fine grid, a (10, 20) weight", 10, 20, 252, bits=8),
        Case(
            "independent inputs (H diagonal): GPTQ equals round-to-nearest",
            (diagonal_weight, diagonal_h, ColumnQuantizer(diagonal_weight, 4)),
            hint="with a diagonal H, U is diagonal and U[i, i+1:] is 0: nothing is carried "
            "over, every column is rounded as it is.",
        ),
        Case(
            "row 2 of the weight is all zeros (its scale is 1, its codes 0)",
            (zero_row, zero_h, ColumnQuantizer(zero_row, 4)),
        ),
        case("one strong feature: feature scales from 1 to 20", 8, 24, 256, spread=20.0),
        case("a single input column: plain rounding", 5, 1, 258),
    ]  # fmt: skip


def check_gptq_columns(gptq_columns: Callable) -> CheckResult:
    """Check ``gptq_columns(weight, h, quantize_column) -> Q`` (out, in): GPTQ column by column."""
    return run_check(
        "gptq_columns",
        gptq_columns,
        reference_gptq_columns,
        _columns_cases(),
        hint="W = weight.clone(); U = inverse_cholesky(h).to(W.dtype); Q = torch.zeros_like(W); "
        "for i in range(W.shape[1]): q = quantize_column(W[:, i]); Q[:, i] = q; err = "
        "(W[:, i] - q) / U[i, i]; W[:, i+1:] -= err[:, None] * U[i, i+1:]. Return Q.",
        run=_run_columns,
        compare=_columns_problem,
        arg_names=("weight", "h", "quantize_column"),
        forbid=FORBID,
    )
