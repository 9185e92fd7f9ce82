"""The checks of chapter 05's pruning-masks lab (llmlab.checks.compression.pruning_masks).

For every check: the reference passes, other correct answers pass too (topk and scatter, a
sort and a threshold, kthvalue with k = 0 handled, torch.linalg.vector_norm, float64 norms),
plausible wrong answers (mutants) fail on the case that exposes them with words that say what
is wrong, a NotImplementedError stub reports "not implemented", garbage never raises, and the
global seed does not move.
"""

from __future__ import annotations

import torch
from check_contract import CheckContract

from llmlab.checks.compression import pruning_masks as pm
from llmlab.compress import prune

CHECKS = {
    "check_magnitude_mask": (pm.check_magnitude_mask, pm.reference_magnitude_mask),
    "check_global_magnitude_masks": (
        pm.check_global_magnitude_masks,
        pm.reference_global_magnitude_masks,
    ),
    "check_input_norms": (pm.check_input_norms, pm.reference_input_norms),
    "check_wanda_mask": (pm.check_wanda_mask, pm.reference_wanda_mask),
    "check_n_m_mask": (pm.check_n_m_mask, pm.reference_n_m_mask),
}

GARBAGE = {
    "returns a number": lambda *a, **k: 0.5,
    "returns a string": lambda *a, **k: "mask",
    "returns a list of bools": lambda *a, **k: [True, False],
    "returns its first input": lambda x, *a, **k: x,
    "returns a bool scalar": lambda *a, **k: torch.tensor(True),
    "returns a dict": lambda *a, **k: {"mask": torch.ones(2, 2, dtype=torch.bool)},
    "returns a tuple": lambda x, *a, **k: (x, x),
    "takes no arguments": lambda: torch.tensor(0.0),
}


class TestContract(CheckContract):
    MODULES = (pm,)
    CHECKS = CHECKS
    GARBAGE = GARBAGE
    MIN_CASES = 5


MAG, GLO, NRM, WAN, NM = (
    "check_magnitude_mask",
    "check_global_magnitude_masks",
    "check_input_norms",
    "check_wanda_mask",
    "check_n_m_mask",
)
MAG_FIRST = "a (16, 32) weight, sparsity 0.5"
MAG_ROUND = "a (10, 11) weight, sparsity 0.37: 40.7 weights to prune, rounded to 41"
MAG_TRUNC = "a (10, 11) weight, sparsity 0.32: 35.2 weights to prune, rounded to 35"
MAG_ZERO = "sparsity 0: every weight kept"
GLO_FIRST = "3 layers of scales 1, 0.2 and 3, sparsity 0.5"
NRM_FIRST = "x of 40 tokens x 12 features"
NRM_SQUARE = "a square x: 32 tokens x 32 features"
WAN_FIRST = "a square (16, 16) weight, 2 outlier input features, sparsity 0.5"
WAN_SECOND = "a (12, 20) weight, 3 outlier features, sparsity 0.3"
WAN_ROUND = "a (6, 14) weight, sparsity 0.45: 6.3 per row to prune, rounded to 6"
NM_FIRST = "(8, 16) scores, 2:4"
NM_SIGNED = "(6, 16) signed scores (some negative), 2:4"

# --------------------------------------------------------------------------------------------
# magnitude_mask


def magnitude(weight, sparsity):
    keep = weight.numel() - int(round(sparsity * weight.numel()))
    flat = weight.abs().flatten()
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[flat.topk(keep).indices] = True
    return mask.view(weight.shape)


def magnitude_sorted(weight, sparsity):  # sort, then |w| at or above the keep-th largest
    keep = weight.numel() - int(round(sparsity * weight.numel()))
    a = weight.abs()
    if keep == 0:
        return torch.zeros_like(a, dtype=torch.bool)
    threshold = a.flatten().sort(descending=True).values[keep - 1]
    return a >= threshold


def magnitude_kthvalue(weight, sparsity):  # the k-th smallest |w| is the last one pruned
    k = int(round(sparsity * weight.numel()))
    a = weight.abs()
    if k == 0:
        return torch.ones_like(a, dtype=torch.bool)
    return a > a.flatten().kthvalue(k).values


def magnitude_smallest(weight, sparsity):
    keep = weight.numel() - int(round(sparsity * weight.numel()))
    flat = weight.abs().flatten()
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[flat.topk(keep, largest=False).indices] = True
    return mask.view(weight.shape)


def magnitude_signed(weight, sparsity):
    keep = weight.numel() - int(round(sparsity * weight.numel()))
    flat = weight.flatten()
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[flat.topk(keep).indices] = True
    return mask.view(weight.shape)


def magnitude_per_row(weight, sparsity):
    keep = weight.shape[1] - int(round(sparsity * weight.shape[1]))
    idx = weight.abs().topk(keep, dim=1).indices
    return torch.zeros_like(weight, dtype=torch.bool).scatter(1, idx, True)


def magnitude_floor(weight, sparsity):  # int() truncates: one weight too many kept
    k = int(sparsity * weight.numel())
    a = weight.abs()
    if k == 0:
        return torch.ones_like(a, dtype=torch.bool)
    return a > a.flatten().kthvalue(k).values


def magnitude_keep_truncated(weight, sparsity):  # keep = int((1 - s) * n): one too few
    keep = int((1 - sparsity) * weight.numel())
    flat = weight.abs().flatten()
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[flat.topk(keep).indices] = True
    return mask.view(weight.shape)


def magnitude_float(weight, sparsity):
    return magnitude(weight, sparsity).float()


def magnitude_rows_count(weight, sparsity):  # the pruned count from the rows only
    keep = weight.numel() - int(round(sparsity * weight.shape[0]))
    flat = weight.abs().flatten()
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[flat.topk(keep).indices] = True
    return mask.view(weight.shape)


def magnitude_kthvalue_no_zero(weight, sparsity):  # kthvalue(0) is out of range
    k = int(round(sparsity * weight.numel()))
    a = weight.abs()
    return a > a.flatten().kthvalue(k).values


def magnitude_values(weight, sparsity):  # the pruned weight instead of the mask
    return weight * magnitude(weight, sparsity)


# --------------------------------------------------------------------------------------------
# global_magnitude_masks


def global_masks(weights, sparsity):
    flat = torch.cat([w.abs().flatten() for w in weights.values()])
    keep = flat.numel() - int(round(sparsity * flat.numel()))
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[flat.topk(keep).indices] = True
    out, start = {}, 0
    for name, w in weights.items():
        out[name] = mask[start : start + w.numel()].view(w.shape)
        start += w.numel()
    return out


def global_kthvalue(weights, sparsity):
    flat = torch.cat([w.abs().flatten() for w in weights.values()])
    k = int(round(sparsity * flat.numel()))
    threshold = flat.kthvalue(k).values if k > 0 else -1.0
    return {name: w.abs() > threshold for name, w in weights.items()}


def global_per_layer(weights, sparsity):
    return {name: magnitude(w, sparsity) for name, w in weights.items()}


def global_mean_threshold(weights, sparsity):
    flat = torch.cat([w.abs().flatten() for w in weights.values()])
    return {name: w.abs() > flat.mean() for name, w in weights.items()}


def global_normalised(weights, sparsity):
    return global_masks({n: w / w.abs().amax() for n, w in weights.items()}, sparsity)


def global_list(weights, sparsity):
    return list(global_masks(weights, sparsity).values())


def global_float(weights, sparsity):
    return {n: m.float() for n, m in global_masks(weights, sparsity).items()}


# --------------------------------------------------------------------------------------------
# input_norms


def norms(x):
    return (x**2).sum(dim=0).sqrt()


def norms_linalg(x):
    return torch.linalg.vector_norm(x.double(), dim=0)


def norms_loop(x):
    return torch.stack([x[:, j].norm() for j in range(x.shape[1])])


def norms_squared(x):
    return (x**2).sum(dim=0)


def norms_mean_abs(x):
    return x.abs().mean(dim=0)


def norms_wrong_dim(x):
    return x.norm(dim=1)


def norms_rms(x):
    return (x**2).mean(dim=0).sqrt()


def norms_keepdim(x):
    return x.norm(dim=0, keepdim=True)


def norms_frobenius(x):
    return x.norm()


# --------------------------------------------------------------------------------------------
# wanda_mask


def wanda(weight, input_norm, sparsity):
    score = weight.abs() * input_norm[None, :]
    keep = weight.shape[1] - int(round(sparsity * weight.shape[1]))
    idx = score.topk(keep, dim=1).indices
    return torch.zeros_like(score, dtype=torch.bool).scatter(1, idx, True)


def wanda_sorted(weight, input_norm, sparsity):  # rank within the row by argsort
    score = weight.abs() * input_norm
    pruned = int(round(sparsity * weight.shape[1]))
    order = score.argsort(dim=1)  # ascending: the first `pruned` go
    mask = torch.ones_like(score, dtype=torch.bool)
    mask.scatter_(1, order[:, :pruned], False)
    return mask


def wanda_kthvalue(weight, input_norm, sparsity):
    score = (weight.abs() * input_norm).double()
    k = int(round(sparsity * weight.shape[1]))
    if k == 0:
        return torch.ones_like(score, dtype=torch.bool)
    return score > score.kthvalue(k, dim=1, keepdim=True).values


def wanda_squared_score(weight, input_norm, sparsity):  # |W|^2 ||X||^2 ranks the same
    return wanda(weight**2, input_norm**2, sparsity)


def wanda_per_layer(weight, input_norm, sparsity):
    return magnitude(weight.abs() * input_norm, sparsity)


def wanda_wrong_axis(weight, input_norm, sparsity):
    score = weight.abs() * input_norm[:, None]
    keep = weight.shape[1] - int(round(sparsity * weight.shape[1]))
    idx = score.topk(keep, dim=1).indices
    return torch.zeros_like(score, dtype=torch.bool).scatter(1, idx, True)


def wanda_no_norm(weight, input_norm, sparsity):
    return wanda(weight, torch.ones_like(input_norm), sparsity)


def wanda_signed(weight, input_norm, sparsity):
    score = weight * input_norm
    keep = weight.shape[1] - int(round(sparsity * weight.shape[1]))
    idx = score.topk(keep, dim=1).indices
    return torch.zeros_like(score, dtype=torch.bool).scatter(1, idx, True)


def wanda_per_column(weight, input_norm, sparsity):
    return _column_top(weight.abs() * input_norm, sparsity)


def _column_top(score, sparsity):
    keep = score.shape[0] - int(round(sparsity * score.shape[0]))
    idx = score.topk(keep, dim=0).indices
    return torch.zeros_like(score, dtype=torch.bool).scatter(0, idx, True)


def wanda_squared_norm(weight, input_norm, sparsity):
    return wanda(weight, input_norm**2, sparsity)


def wanda_truncated(weight, input_norm, sparsity):  # keep = int((1 - s) * in): one too few
    score = weight.abs() * input_norm
    keep = int((1 - sparsity) * weight.shape[1])
    idx = score.topk(keep, dim=1).indices
    return torch.zeros_like(score, dtype=torch.bool).scatter(1, idx, True)


# --------------------------------------------------------------------------------------------
# n_m_mask


def n_m(scores, n=2, m=4):
    blocks = scores.reshape(scores.shape[0], -1, m)
    idx = blocks.topk(n, dim=-1).indices
    return torch.zeros_like(blocks, dtype=torch.bool).scatter(-1, idx, True).view(scores.shape)


def n_m_rank(scores, n=2, m=4):  # rank inside each block: kept if fewer than n are higher
    blocks = scores.reshape(scores.shape[0], -1, m)
    higher = (blocks[..., None, :] > blocks[..., :, None]).sum(-1)
    return (higher < n).reshape(scores.shape)


def n_m_lowest(scores, n=2, m=4):
    return n_m(-scores, n, m)


def n_m_columns(scores, n=2, m=4):
    return n_m(scores.T.contiguous(), n, m).T


def n_m_row_top(scores, n=2, m=4):
    idx = scores.topk(scores.shape[1] * n // m, dim=1).indices
    return torch.zeros_like(scores, dtype=torch.bool).scatter(1, idx, True)


def n_m_shifted(scores, n=2, m=4):  # blocks start at column 1, the last wraps around
    return n_m(scores.roll(-1, dims=1), n, m).roll(1, dims=1)


def n_m_sliding(scores, n=2, m=4):  # kept if among the top n of the window starting there
    cols = scores.shape[1]
    mask = torch.zeros_like(scores, dtype=torch.bool)
    for j in range(cols):
        window = scores[:, j : min(j + m, cols)]
        kth = window.topk(min(n, window.shape[1]), dim=1).values[:, -1]
        mask[:, j] = scores[:, j] >= kth
    return mask


def n_m_strided(scores, n=2, m=4):
    rows, cols = scores.shape
    groups = scores.reshape(rows, m, cols // m).transpose(1, 2)
    idx = groups.topk(n, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter(-1, idx, True)
    return mask.transpose(1, 2).reshape(rows, cols)


def n_m_abs(scores, n=2, m=4):
    return n_m(scores.abs(), n, m)


def n_m_no_defaults(scores, n, m):
    return n_m(scores, n, m)


# --------------------------------------------------------------------------------------------
# What the contract runs

CORRECT_VARIANTS = [
    (MAG, magnitude),
    (MAG, magnitude_sorted),
    (MAG, magnitude_kthvalue),
    (GLO, global_masks),
    (GLO, global_kthvalue),
    (NRM, norms),
    (NRM, norms_linalg),
    (NRM, norms_loop),
    (WAN, wanda),
    (WAN, wanda_sorted),
    (WAN, wanda_kthvalue),
    (WAN, wanda_squared_score),
    (NM, n_m),
    (NM, n_m_rank),
]

MUTANTS = [
    (MAG, magnitude_smallest, MAG_FIRST, "keeps the SMALLEST magnitudes"),
    (MAG, magnitude_signed, MAG_FIRST, "you ranked the signed weights"),
    (MAG, magnitude_per_row, MAG_FIRST, "you compared within each row"),
    (MAG, magnitude_rows_count, MAG_FIRST, "16 is the number of rows"),
    (MAG, magnitude_float, MAG_FIRST, "a mask is a bool tensor"),
    (MAG, magnitude_values, MAG_FIRST, "expected a bool mask"),
    (MAG, magnitude_floor, MAG_ROUND, "one weight too many"),
    (MAG, magnitude_keep_truncated, MAG_TRUNC, "one weight too few"),
    (MAG, magnitude_kthvalue_no_zero, MAG_ZERO, "kthvalue(x, 0) is out of range"),
    (GLO, global_per_layer, GLO_FIRST, "every layer was pruned to the same share"),
    (GLO, global_mean_threshold, GLO_FIRST, "your threshold is the mean of all |w|"),
    (GLO, global_normalised, GLO_FIRST, "you normalised each layer"),
    (GLO, global_list, GLO_FIRST, "expected a dict of masks"),
    (GLO, global_float, GLO_FIRST, "a mask is a bool tensor"),
    (NRM, norms_squared, NRM_FIRST, "these are the squared norms"),
    (NRM, norms_mean_abs, NRM_FIRST, "the means of |x|"),
    (NRM, norms_wrong_dim, NRM_FIRST, "one value per TOKEN"),
    (NRM, norms_rms, NRM_FIRST, "root-mean-squares"),
    (NRM, norms_keepdim, NRM_FIRST, "drop the kept dim"),
    (NRM, norms_frobenius, NRM_FIRST, "the norm of the whole x"),
    (WAN, wanda_per_layer, WAN_FIRST, "you compared the scores over the whole layer"),
    (WAN, wanda_wrong_axis, WAN_FIRST, "it multiplies the ROWS"),
    (WAN, wanda_no_norm, WAN_FIRST, "as if input_norm were not there"),
    (WAN, wanda_signed, WAN_FIRST, "you scored the signed weights"),
    (WAN, wanda_per_column, WAN_FIRST, "within each input COLUMN"),
    (WAN, wanda_squared_norm, WAN_FIRST, "you squared the norms"),
    (WAN, wanda_truncated, WAN_ROUND, "one weight too few"),
    (NM, n_m_lowest, NM_FIRST, "keeps the LOWEST 2 scores"),
    (NM, n_m_columns, NM_FIRST, "your blocks run down the columns"),
    (NM, n_m_row_top, NM_FIRST, "anywhere in it"),
    (NM, n_m_strided, NM_FIRST, "your blocks take every 4-th column"),
    (NM, n_m_shifted, NM_FIRST, "aligned at column 0"),
    (NM, n_m_sliding, NM_FIRST, "aligned at column 0"),
    (NM, n_m_abs, NM_SIGNED, "you ranked |scores|"),
]


# --------------------------------------------------------------------------------------------
# Answers that call the package's pruning code: flagged


def magnitude_with_the_package(weight, sparsity):
    return prune.magnitude_mask(weight, sparsity)


def global_with_the_package(weights, sparsity):
    return prune.global_magnitude_masks(weights, sparsity)


def norms_with_the_package(x):
    prune.sparsity(x)  # any call into llmlab.compress counts
    return (x**2).sum(dim=0).sqrt()


def wanda_with_the_package(weight, input_norm, sparsity):
    return prune.wanda_mask(weight, input_norm, sparsity)


def n_m_with_the_package(scores, n=2, m=4):
    return prune.n_m_mask(scores, n, m)


FORBIDDEN = [
    (MAG, magnitude_with_the_package, "llmlab.compress.prune.magnitude_mask"),
    (GLO, global_with_the_package, "llmlab.compress.prune.global_magnitude_masks"),
    (NRM, norms_with_the_package, "llmlab.compress.prune.sparsity"),
    (WAN, wanda_with_the_package, "llmlab.compress.prune.wanda_mask"),
    (NM, n_m_with_the_package, "llmlab.compress.prune.n_m_mask"),
]


# --------------------------------------------------------------------------------------------
# The cases hold what their names say


def _scores_of(check_cases, score):
    return [score(*case.args) for case in check_cases]


def test_the_cases_have_no_ties():
    # Without ties every correct selection gives the same mask.
    for case in pm._magnitude_cases():
        a = case.args[0].abs().flatten()
        assert a.unique().numel() == a.numel(), case.name
    for case in pm._global_cases():
        a = torch.cat([w.abs().flatten() for w in case.args[0].values()])
        assert a.unique().numel() == a.numel(), case.name
    for case in pm._wanda_cases():
        w, norm, _ = case.args
        score = w.abs() * norm
        for row in score:
            assert row.unique().numel() == row.numel(), case.name
    for case in pm._nm_cases():
        for block in case.args[0].reshape(-1, 2):
            assert block.unique().numel() == block.numel(), case.name


def test_the_rounding_cases_round_as_named():
    counts = {0.37: (41, 40), 0.32: (35, 36)}  # round, and the slip (floor / keep truncated)
    for case in pm._magnitude_cases():
        w, s = case.args
        if s in counts:
            assert int(round(s * w.numel())) == counts[s][0], case.name
            assert int(s * w.numel()) != counts[s][0] or int((1 - s) * w.numel()) != 110 - 35
    (case,) = [c for c in pm._wanda_cases() if c.name == WAN_ROUND]
    w, _, s = case.args
    assert int(round(s * w.shape[1])) == 6 and int((1 - s) * w.shape[1]) == 7


def test_the_global_cases_differ_from_per_layer_pruning():
    for case in pm._global_cases():
        weights, s = case.args
        if len(weights) == 1:
            continue
        ref = pm.reference_global_magnitude_masks(weights, s)
        per_layer = global_per_layer(weights, s)
        assert any(not torch.equal(ref[k], per_layer[k]) for k in ref), case.name


def test_wanda_differs_from_magnitude_where_there_are_outliers():
    (case,) = [c for c in pm._wanda_cases() if c.name == WAN_FIRST]
    w, norm, s = case.args
    assert not torch.equal(pm.reference_wanda_mask(w, norm, s), wanda_no_norm(w, norm, s))


def test_rms_norms_give_the_same_wanda_mask_and_squared_norms_do_not():
    # What the lab's prose says: a factor common to every feature leaves the mask alone,
    # squaring the norms does not.
    (case,) = [c for c in pm._wanda_cases() if c.name == WAN_SECOND]
    w, norm, s = case.args
    ref = pm.reference_wanda_mask(w, norm, s)
    assert torch.equal(ref, pm.reference_wanda_mask(w, norm / 7.0, s))
    assert not torch.equal(ref, pm.reference_wanda_mask(w, norm**2, s))


def test_the_float_mask_message_says_which_weights_would_be_kept():
    result = pm.check_magnitude_mask(magnitude_float)
    assert "0s and 1s" in result.message and ".bool()" in result.message


def test_n_m_without_defaults_fails_on_the_defaults_case():
    result = pm.check_n_m_mask(n_m_no_defaults)
    assert not result.passed and result.failed_case == "(4, 12) scores, the defaults n=2, m=4"


def test_the_norm_on_the_output_axis_of_a_non_square_weight_gets_the_axis_hint():
    result = pm.check_wanda_mask(wanda_wrong_axis_any_shape)
    assert not result.passed and result.failed_case == WAN_SECOND
    assert "your function raised RuntimeError" in result.message
    assert "one entry per INPUT feature" in result.message


def wanda_wrong_axis_any_shape(weight, input_norm, sparsity):
    if weight.shape[0] == weight.shape[1]:
        return wanda(weight, input_norm, sparsity)  # right on the square case
    return wanda_wrong_axis(weight, input_norm, sparsity)
