"""The checks of chapter 05's GPTQ lab (llmlab.checks.compression.gptq).

For every check: the reference passes, other correct answers pass too (torch.linalg.inv or
torch.cholesky_inverse or a solve, the lower factor transposed, einsum and outer-product
updates, float32 and float64 arithmetic, lazy blocks), plausible wrong answers (mutants) fail
on the case that exposes them with words that say what is wrong, a NotImplementedError stub
reports "not implemented", garbage never raises, and the global seed does not move. And the
references agree with the package: H with collect_hessians, the column loop with gptq_quantize.
"""

from __future__ import annotations

import math

import pytest
import torch
from check_contract import CheckContract

from llmlab.checks.compression import gptq as gq
from llmlab.compress import gptq as G

CHECKS = {
    "check_hessian": (gq.check_hessian, gq.reference_hessian),
    "check_inverse_cholesky": (gq.check_inverse_cholesky, gq.reference_inverse_cholesky),
    "check_gptq_columns": (gq.check_gptq_columns, gq.reference_gptq_columns),
}

GARBAGE = {
    "returns a number": lambda *a, **k: 0.5,
    "returns a string": lambda *a, **k: "H",
    "returns a list of numbers": lambda *a, **k: [0.1, 0.2, 0.3],
    "returns NaN": lambda *a, **k: torch.tensor(math.nan),
    "returns its first input": lambda x, *a, **k: x,
    "returns an int tensor": lambda x, *a, **k: torch.ones(x.shape, dtype=torch.int64),
    "returns a tuple": lambda x, *a, **k: (x, x),
    "returns NaN of the right shape": lambda x, *a, **k: torch.full(
        (x.shape[-1], x.shape[-1]) if x.shape[0] != x.shape[-1] else x.shape, math.nan
    ),
    "takes no arguments": lambda: torch.tensor(0.0),
}


class TestContract(CheckContract):
    MODULES = (gq,)
    CHECKS = CHECKS
    GARBAGE = GARBAGE
    MIN_CASES = 6


HS, IC, GC = "check_hessian", "check_inverse_cholesky", "check_gptq_columns"
HS_FIRST = "256 rows of 32 correlated features, mean 0.5, scales 0.5 to 5, damp 0.01"
IC_FIRST = "H of 256 rows of 16 correlated features, damp 0.01"
HS_DEFAULT = "the default damp (0.01): called as hessian(x)"
GC_FIRST = "a (16, 32) float32 weight, correlated inputs, 4 bits"
GC_DOUBLE = "a (32, 64) float64 weight, 4 bits"

# --------------------------------------------------------------------------------------------
# hessian


def hessian(x, damp=0.01):
    x = x.double()
    h = x.T @ x / x.shape[0]
    return h + damp * h.diagonal().mean() * torch.eye(h.shape[0], dtype=h.dtype)


def hessian_float32_einsum(x, damp=0.01):  # in x's dtype, an einsum, the trace / in
    h = torch.einsum("ni,nj->ij", x, x) / x.shape[0]
    return h + damp * (torch.trace(h) / h.shape[0]) * torch.eye(h.shape[0], dtype=h.dtype)


def hessian_sum_of_outer_products(x, damp=0.01):  # row by row, diagonal added in place
    h = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64)
    for row in x.double():
        h += torch.outer(row, row)
    h /= x.shape[0]
    h.diagonal().add_(damp * h.diagonal().mean())
    return h


def hessian_gram(x, damp=0.01):
    h = x.double() @ x.double().T / x.shape[0]
    return h + damp * h.diagonal().mean() * torch.eye(h.shape[0], dtype=h.dtype)


def hessian_not_divided(x, damp=0.01):
    h = x.double().T @ x.double()
    return h + damp * h.diagonal().mean() * torch.eye(h.shape[0], dtype=h.dtype)


def hessian_n_minus_1(x, damp=0.01):
    h = x.double().T @ x.double() / (x.shape[0] - 1)
    return h + damp * h.diagonal().mean() * torch.eye(h.shape[0], dtype=h.dtype)


def hessian_covariance(x, damp=0.01):
    h = torch.cov(x.double().T)
    return h + damp * h.diagonal().mean() * torch.eye(h.shape[0], dtype=h.dtype)


def hessian_damp_everywhere(x, damp=0.01):
    h = x.double().T @ x.double() / x.shape[0]
    return h + damp * h.diagonal().mean()


def hessian_damp_constant(x, damp=0.01):
    h = x.double().T @ x.double() / x.shape[0]
    return h + damp * torch.eye(h.shape[0], dtype=h.dtype)


def hessian_damp_max(x, damp=0.01):
    h = x.double().T @ x.double() / x.shape[0]
    return h + damp * h.diagonal().max() * torch.eye(h.shape[0], dtype=h.dtype)


def hessian_damp_trace(x, damp=0.01):
    h = x.double().T @ x.double() / x.shape[0]
    return h + damp * torch.trace(h) * torch.eye(h.shape[0], dtype=h.dtype)


def hessian_damp_mean_of_all(x, damp=0.01):
    h = x.double().T @ x.double() / x.shape[0]
    return h + damp * h.mean() * torch.eye(h.shape[0], dtype=h.dtype)


def hessian_damp_factor_missing(x, damp=0.01):
    h = x.double().T @ x.double() / x.shape[0]
    return h + h.diagonal().mean() * torch.eye(h.shape[0], dtype=h.dtype)


def hessian_no_damp(x, damp=0.01):
    return x.double().T @ x.double() / x.shape[0]


def hessian_wrong_default(x, damp=0.1):
    return hessian(x, damp)


def hessian_float16(x, damp=0.01):
    return hessian(x, damp).half()


def hessian_with_the_package(x, damp=0.01):
    record = G.collect_hessians(torch.nn.Linear(x.shape[1], 1), [x], skip=())[""]
    h = record.hessian
    return h + damp * h.diagonal().mean() * torch.eye(h.shape[0], dtype=h.dtype)


# --------------------------------------------------------------------------------------------
# inverse_cholesky


def inverse_cholesky(h):
    return torch.linalg.cholesky(torch.linalg.inv(h.double()), upper=True)


def inverse_cholesky_package_route(h):  # as gptq_quantize: cholesky_inverse, in h's dtype
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)


def inverse_cholesky_lower_transposed(h):  # solve for H^-1, lower factor, transposed
    eye = torch.eye(h.shape[0], dtype=torch.float64)
    return torch.linalg.cholesky(torch.linalg.solve(h.double(), eye)).mT


def inverse_cholesky_lower(h):
    return torch.linalg.cholesky(torch.linalg.inv(h.double()))


def inverse_cholesky_transposed(h):
    return torch.linalg.cholesky(torch.linalg.inv(h.double()), upper=True).T


def inverse_cholesky_of_h(h):
    return torch.linalg.cholesky(h.double(), upper=True)


def inverse_cholesky_lower_of_h(h):
    return torch.linalg.cholesky(h.double())


def inverse_cholesky_just_the_inverse(h):
    return torch.linalg.inv(h.double())


def inverse_cholesky_inverse_of_factor(h):  # upper triangular, but V V^T = H^-1
    return torch.linalg.inv(torch.linalg.cholesky(h.double(), upper=True))


def inverse_cholesky_inverse_of_lower_factor(h):
    return torch.linalg.inv(torch.linalg.cholesky(h.double()))


def inverse_cholesky_unchanged(h):
    return h.clone()


def inverse_cholesky_with_the_package(h):  # any call into llmlab.compress is flagged
    u = inverse_cholesky(h)
    assert G.output_error(u, u, h) == 0.0
    return u


def inverse_cholesky_negative_diagonal(h):
    return -inverse_cholesky(h)


def inverse_cholesky_symmetrised(h):  # U + U^T - diag: the lower half filled in
    u = inverse_cholesky(h)
    return u + u.mT - torch.diag(u.diagonal())


# --------------------------------------------------------------------------------------------
# gptq_columns


def gptq_columns(weight, h, quantize_column):
    W = weight.clone()
    U = inverse_cholesky(h).to(W.dtype)
    Q = torch.zeros_like(W)
    for i in range(W.shape[1]):
        q = quantize_column(W[:, i])
        Q[:, i] = q
        err = (W[:, i] - q) / U[i, i]
        W[:, i + 1 :] -= err[:, None] * U[i, i + 1 :]
    return Q


def gptq_columns_float64_einsum(weight, h, quantize_column):  # float64 work, einsum update
    W = weight.double().clone()
    U = inverse_cholesky_package_route(h.double())
    Q = torch.empty_like(W)
    for i in range(W.shape[1]):
        Q[:, i] = quantize_column(W[:, i])
        err = (W[:, i] - Q[:, i]) / U[i, i]
        W[:, i + 1 :] -= torch.einsum("o,j->oj", err, U[i, i + 1 :])
    return Q.to(weight.dtype)


def gptq_columns_in_place_all_columns(weight, h, quantize_column):
    # No Q: ALL of W's columns updated with U's full row. U is upper triangular, so the
    # columns before i get 0 and column i becomes q (up to rounding): W ends up quantized.
    W = weight.clone().float()
    U = inverse_cholesky(h).float()
    for i in range(W.shape[1]):
        err = (W[:, i] - quantize_column(W[:, i])) / U[i, i]
        W -= torch.outer(err, U[i])
    return W


def gptq_columns_lazy_blocks(weight, h, quantize_column, block=8):  # the package's batching
    W = weight.double().clone()
    U = inverse_cholesky(h)
    Q = torch.zeros_like(W)
    cols = W.shape[1]
    for start in range(0, cols, block):
        end = min(start + block, cols)
        E = torch.zeros(W.shape[0], end - start, dtype=W.dtype)
        for j in range(start, end):
            q = quantize_column(W[:, j])
            Q[:, j] = q
            err = (W[:, j] - q) / U[j, j]
            W[:, j + 1 : end] -= err[:, None] * U[j, j + 1 : end]
            E[:, j - start] = err
        W[:, end:] -= E @ U[start:end, end:]
    return Q


def gptq_columns_2d_slices(weight, h, quantize_column):  # columns kept (out, 1)
    W = weight.clone()
    U = inverse_cholesky(h).to(W.dtype)
    Q = torch.zeros_like(W)
    for i in range(W.shape[1]):
        q = quantize_column(W[:, i : i + 1])
        Q[:, i : i + 1] = q
        W[:, i:] -= (W[:, i : i + 1] - q) / U[i, i] * U[i : i + 1, i:]
    return Q


def _loop(weight, h, quantize_column, rows, divide=True, span="after", sign=-1.0, original=False):
    W = weight.clone()
    original_weight = weight.clone()
    Q = torch.zeros_like(W)
    for i in range(W.shape[1]):
        q = quantize_column(original_weight[:, i] if original else W[:, i])
        Q[:, i] = q
        err = W[:, i] - q
        if divide == "rows":
            err = err / rows[i, i]
        elif divide:
            err = err / inverse_cholesky(h)[i, i].to(W.dtype)
        if span == "after":
            W[:, i + 1 :] += sign * err[:, None] * rows[i, i + 1 :]
        elif span == "next" and i + 1 < W.shape[1]:
            W[:, i + 1] += sign * err * rows[i, i + 1]
    return Q


def gptq_columns_no_division(weight, h, quantize_column):
    return _loop(weight, h, quantize_column, inverse_cholesky(h).to(weight.dtype), divide=False)


def gptq_columns_hinv_rows(weight, h, quantize_column):
    return _loop(weight, h, quantize_column, torch.linalg.inv(h).to(weight.dtype))


def gptq_columns_obs_stale_inverse(weight, h, quantize_column):
    return _loop(weight, h, quantize_column, torch.linalg.inv(h).to(weight.dtype), divide="rows")


def gptq_columns_sign_flipped(weight, h, quantize_column):
    return _loop(weight, h, quantize_column, inverse_cholesky(h).to(weight.dtype), sign=1.0)


def gptq_columns_original_column(weight, h, quantize_column):
    U = inverse_cholesky(h).to(weight.dtype)
    return _loop(weight, h, quantize_column, U, original=True)


def gptq_columns_lower_factor(weight, h, quantize_column):
    L = torch.linalg.cholesky(torch.linalg.inv(h)).to(weight.dtype)
    return _loop(weight, h, quantize_column, L, divide="rows")


def gptq_columns_cholesky_of_h(weight, h, quantize_column):
    U = torch.linalg.cholesky(h, upper=True).to(weight.dtype)
    return _loop(weight, h, quantize_column, U, divide="rows")


def gptq_columns_next_column_only(weight, h, quantize_column):
    U = inverse_cholesky(h).to(weight.dtype)
    return _loop(weight, h, quantize_column, U, span="next")


def gptq_columns_all_columns_hinv(weight, h, quantize_column):
    # q stored in W itself, and every column (the quantized ones too) moved along H^-1's row
    W = weight.clone()
    U = inverse_cholesky(h).to(W.dtype)
    h_inv = torch.linalg.inv(h).to(W.dtype)
    for i in range(W.shape[1]):
        q = quantize_column(W[:, i])
        err = (W[:, i] - q) / U[i, i]
        W[:, i] = q
        W -= err[:, None] * h_inv[i]
    return W


def gptq_columns_returns_updated_weights(weight, h, quantize_column):
    W = weight.clone()
    U = inverse_cholesky(h).to(W.dtype)
    for i in range(W.shape[1]):
        err = (W[:, i] - quantize_column(W[:, i])) / U[i, i]
        W[:, i + 1 :] -= err[:, None] * U[i, i + 1 :]
    return W


def gptq_columns_double_without_clone(weight, h, quantize_column):
    W = weight.double()  # weight itself when it is float64: the caller's weights change
    U = inverse_cholesky(h)
    Q = torch.zeros_like(W)
    for i in range(W.shape[1]):
        q = quantize_column(W[:, i])
        Q[:, i] = q
        W[:, i + 1 :] -= ((W[:, i] - q) / U[i, i])[:, None] * U[i, i + 1 :]
    return Q


def gptq_columns_half(weight, h, quantize_column):
    return gptq_columns(weight, h, quantize_column).half()


def gptq_columns_with_the_package(weight, h, quantize_column):
    return G.gptq_quantize(weight, h, bits=quantize_column.bits, scheme="absmax", damp=0.0).weight


# --------------------------------------------------------------------------------------------
# What the contract runs

CORRECT_VARIANTS = [
    (HS, hessian),
    (HS, hessian_float32_einsum),
    (HS, hessian_sum_of_outer_products),
    (IC, inverse_cholesky),
    (IC, inverse_cholesky_package_route),
    (IC, inverse_cholesky_lower_transposed),
    (GC, gptq_columns),
    (GC, gptq_columns_float64_einsum),
    (GC, gptq_columns_in_place_all_columns),
    (GC, gptq_columns_lazy_blocks),
    (GC, gptq_columns_2d_slices),
]

MUTANTS = [
    (HS, hessian_gram, HS_FIRST, "that is x @ x.T"),
    (HS, hessian_not_divided, HS_FIRST, "n = 256 times too large"),
    (HS, hessian_n_minus_1, HS_FIRST, "you divided by n - 1 = 255"),
    (HS, hessian_covariance, HS_FIRST, "the inputs' covariance (torch.cov"),
    (HS, hessian_damp_everywhere, HS_FIRST, "added to EVERY entry"),
    (HS, hessian_damp_constant, HS_FIRST, "the constant 0.01 on the diagonal"),
    (HS, hessian_damp_max, HS_FIRST, "uses the LARGEST diagonal entry"),
    (HS, hessian_damp_trace, HS_FIRST, "uses the trace"),
    (HS, hessian_damp_mean_of_all, HS_FIRST, "the mean of ALL of H's entries"),
    (HS, hessian_damp_factor_missing, HS_FIRST, "the factor damp = 0.01 is missing"),
    (HS, hessian_no_damp, HS_FIRST, "no dampening"),
    (HS, hessian_wrong_default, HS_DEFAULT, "your function used damp = 0.1"),
    (HS, hessian_float16, HS_FIRST, "expected a float64 (or float32) tensor, received float16"),
    (IC, inverse_cholesky_lower, IC_FIRST, "the lower Cholesky factor L of H^-1"),
    (IC, inverse_cholesky_transposed, IC_FIRST, "the transpose of U"),
    (IC, inverse_cholesky_of_h, IC_FIRST, "the upper Cholesky factor of H itself"),
    (IC, inverse_cholesky_lower_of_h, IC_FIRST, "the lower Cholesky factor of H itself"),
    (IC, inverse_cholesky_just_the_inverse, IC_FIRST, "this is H^-1 itself"),
    (IC, inverse_cholesky_inverse_of_factor, IC_FIRST, "the inverse of H's upper Cholesky factor"),
    (IC, inverse_cholesky_inverse_of_lower_factor, IC_FIRST, "inverse of H's lower Cholesky"),
    (IC, inverse_cholesky_unchanged, IC_FIRST, "this is H unchanged"),
    (IC, inverse_cholesky_negative_diagonal, IC_FIRST, "negative entries on its diagonal"),
    (IC, inverse_cholesky_symmetrised, IC_FIRST, "nonzero entries below the diagonal"),
    (GC, gptq_columns_no_division, GC_FIRST, "the error was not divided by U[i, i]"),
    (GC, gptq_columns_hinv_rows, GC_FIRST, "rows of H^-1 instead of rows of U"),
    (GC, gptq_columns_obs_stale_inverse, GC_FIRST, "Optimal Brain Surgeon's step"),
    (GC, gptq_columns_sign_flipped, GC_FIRST, "the update has the wrong sign"),
    (GC, gptq_columns_original_column, GC_FIRST, "your output is round-to-nearest"),
    (GC, gptq_columns_lower_factor, GC_FIRST, "your output is round-to-nearest"),
    (GC, gptq_columns_cholesky_of_h, GC_FIRST, "the Cholesky factor of H instead of H^-1"),
    (GC, gptq_columns_next_column_only, GC_FIRST, "only the next column was updated"),
    (GC, gptq_columns_all_columns_hinv, GC_FIRST, "not on the quantization grid"),
    (GC, gptq_columns_returns_updated_weights, GC_FIRST, "not the updated weights W"),
    (GC, gptq_columns_double_without_clone, GC_DOUBLE, "changed its input in place"),
    (GC, gptq_columns_half, GC_FIRST, "received float16"),
]

FORBIDDEN = [
    (HS, hessian_with_the_package, "llmlab.compress.gptq.collect_hessians"),
    (IC, inverse_cholesky_with_the_package, "llmlab.compress.gptq.output_error"),
    (GC, gptq_columns_with_the_package, "llmlab.compress.gptq.gptq_quantize"),
]


# --------------------------------------------------------------------------------------------
# The references agree with the package, and the cases hold what their names say


def test_the_hessian_is_what_collect_hessians_records():
    x = gq.calibration_inputs(64, 12, seed=1, offset=0.3)
    layer = torch.nn.Linear(12, 5)
    record = G.collect_hessians(layer, [x[:40], x[40:]], skip=())[""]
    assert record.n == 64
    torch.testing.assert_close(gq.reference_hessian(x, damp=0.0), record.hessian)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_the_column_loop_equals_gptq_quantize(dtype, bits):
    # The per-row absmax grid fixed from the original weights, damp added by hessian(): the
    # package's gptq_quantize with its lazy blocks, act_order off, gives the same matrix.
    x = gq.calibration_inputs(512, 48, seed=3, spread=5.0)
    weight = gq.randn(24, 48, seed=4, scale=0.05).to(dtype)
    ours = gq.reference_gptq_columns(
        weight, gq.reference_hessian(x, 0.01), gq.ColumnQuantizer(weight, bits)
    )
    h_raw = (x.double().T @ x.double()) / x.shape[0]
    for block_size in (1, 16, 128):
        theirs = G.gptq_quantize(
            weight, h_raw, bits, scheme="absmax", damp=0.01, block_size=block_size
        )
        assert theirs.weight.dtype == ours.dtype == dtype
        torch.testing.assert_close(ours, theirs.weight, rtol=0, atol=1e-7)


def test_gptq_beats_round_to_nearest_on_the_first_case():
    (case,) = [c for c in gq._columns_cases() if c.name == GC_FIRST]
    weight, h, quantizer = case.args
    q = gq.reference_gptq_columns(*case.args)
    rtn = torch.stack([quantizer(weight[:, i]) for i in range(weight.shape[1])], dim=1)
    assert G.output_error(weight, q, h) < 0.8 * G.output_error(weight, rtn, h)


def test_the_diagonal_case_is_round_to_nearest():
    (case,) = [c for c in gq._columns_cases() if "H diagonal" in c.name]
    weight, h, quantizer = case.args
    rtn = torch.stack([quantizer(weight[:, i]) for i in range(weight.shape[1])], dim=1)
    torch.testing.assert_close(gq.reference_gptq_columns(*case.args), rtn, rtol=0, atol=1e-8)


def test_a_code_flipped_at_a_near_tie_is_accepted_and_one_elsewhere_is_not():
    (case,) = [c for c in gq._columns_cases() if c.name == GC_FIRST]
    weight, h, quantizer = case.args
    variant = gq._variants(h)["gptq"]
    grid = (quantizer.scale, quantizer.top)
    # Move column 0's row 0 exactly onto a half-way point: either neighbour is then right.
    w = weight.clone().double()
    w[0, 0] = 2.5 * quantizer.scale[0]
    out = gq.reference_gptq_columns(w, h, quantizer)
    assert gq._replay(out, w, grid, variant) is None
    flipped = out.clone()
    flipped[0, 0] = (
        3 * quantizer.scale[0] if out[0, 0] < 2.75 * quantizer.scale[0] else 2 * quantizer.scale[0]
    )
    # the other neighbour, followed consistently by the rest of the row
    W = w.clone()
    U = gq.reference_inverse_cholesky(h)
    Q = torch.zeros_like(W)
    for i in range(W.shape[1]):
        q = flipped[:, 0] if i == 0 else quantizer(W[:, i])
        Q[:, i] = q
        W[:, i + 1 :] -= torch.outer((W[:, i] - q) / U[i, i], U[i, i + 1 :])
    assert gq._replay(Q, w, grid, variant) is None
    wrong = out.clone()
    wrong[1, 5] += quantizer.scale[1]  # one step off, nowhere near a tie
    assert gq._replay(wrong, w, grid, variant)[:2] == (5, 1)


def test_the_quantizer_takes_a_column_either_way_and_refuses_a_row():
    weight = gq.randn(4, 6, seed=5)
    quantizer = gq.ColumnQuantizer(weight, 4)
    column = weight[:, 2]
    torch.testing.assert_close(quantizer(column[:, None])[:, 0], quantizer(column))
    assert quantizer(weight[:, 0]).abs().max() <= weight[:, 0].abs().max() + 1e-6
    with pytest.raises(ValueError, match=r"one column of W, shape \(4,\)"):
        quantizer(weight[0])
