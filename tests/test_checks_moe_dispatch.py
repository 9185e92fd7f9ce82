"""The checks of chapter 06's dispatch-and-combine lab (llmlab.checks.mixture_of_experts.dispatch).

For every check: the reference passes, other correct answers pass too (math.ceil in another
order, a loop over the assignments, a sort on unique keys, a one-hot comparison, a dense
matmul, a loop over the experts), plausible wrong answers (mutants) fail on the case that
exposes them with words that say what is wrong, a NotImplementedError stub reports "not
implemented", garbage never raises, and the global seed does not move.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from check_contract import CheckContract

from llmlab.checks.mixture_of_experts import dispatch as dc
from llmlab.moe import layer as moe_layer
from llmlab.moe import router as moe_router

CHECKS = {
    "check_capacity": (dc.check_capacity, dc.reference_capacity),
    "check_capacity_mask": (dc.check_capacity_mask, dc.reference_capacity_mask),
    "check_dispatch": (dc.check_dispatch, dc.reference_dispatch),
    "check_combine": (dc.check_combine, dc.reference_combine),
    "check_moe_forward": (dc.check_moe_forward, dc.reference_moe_forward),
}

GARBAGE = {
    "returns a number": lambda *a, **k: 0.5,
    "returns a string": lambda *a, **k: "slots",
    "returns a list of ints": lambda *a, **k: [1, 2],
    "returns its first input": lambda x, *a, **k: x,
    "returns a bool scalar": lambda *a, **k: torch.tensor(True),
    "returns a dict": lambda *a, **k: {"order": torch.arange(3)},
    "returns a tuple of 4 Nones": lambda *a, **k: (None, None, None, None),
    "returns a tuple of 4 floats": lambda *a, **k: tuple(torch.zeros(3) for _ in range(4)),
    "returns a NaN tensor": lambda *a, **k: torch.full((3, 2), float("nan")),
    "takes no arguments": lambda: torch.tensor(0.0),
}


class TestContract(CheckContract):
    MODULES = (dc,)
    CHECKS = CHECKS
    GARBAGE = GARBAGE
    MIN_CASES = 5


CAP, MSK, DIS, COM, FWD = (
    "check_capacity",
    "check_capacity_mask",
    "check_dispatch",
    "check_combine",
    "check_moe_forward",
)
CAP_FIRST = "64 tokens, 8 experts, k = 2, capacity factor 1.0: 16 slots, no rounding"
CAP_ROUND = "10 tokens, 4 experts, k = 1, capacity factor 1.75: 4.375 slots' worth, rounded up to 5"
MSK_FIRST = (
    "3 tokens, 3 experts, 1 slot each: token 0's second choice and token 1's first choice both "
    "want expert 1"
)
MSK_RANDOM = "16 tokens, k = 2, 4 experts, 6 slots"
DIS_FIRST = "12 tokens, k = 2, 4 experts, every assignment kept"
DIS_TIES = "48 tokens, k = 2, 3 experts, 28 slots: 96 assignments with many equal ids, 15 dropped"
DIS_UNUSED = "6 experts, experts 4 and 5 chosen by no token: counts ends with two zeros"
COM_FIRST = "10 tokens, k = 2, 4 experts, nothing dropped, weights summing to 1 per token"
COM_RAW = (
    "16 tokens, k = 2, 4 experts, weights not renormalised (softmax then top-k), 5 slots: some "
    "dropped"
)
FWD_FIRST = "16 tokens, 4 experts, k = 2, capacity factor 2.0: nothing dropped"
FWD_DROP = "32 tokens, 4 experts, k = 2, capacity factor 1.0: some assignments dropped"
FWD_SWITCH = "k = 1 (Switch), 24 tokens, 8 experts, capacity factor 1.25"
FWD_LOST = (
    "every token's first choice is expert 0, 20 tokens, 4 experts, k = 2, capacity factor 1.0: "
    "tokens dropped entirely"
)

# --------------------------------------------------------------------------------------------
# capacity


def capacity(n_tokens, n_experts, k, capacity_factor):
    return math.ceil(capacity_factor * n_tokens * k / n_experts)


def capacity_other_order(n_tokens, n_experts, k, capacity_factor):
    return math.ceil(n_tokens * k / n_experts * capacity_factor)


def capacity_floor_division(n_tokens, n_experts, k, capacity_factor):
    return int(-(-capacity_factor * n_tokens * k // n_experts))


def capacity_numpy(n_tokens, n_experts, k, capacity_factor):
    return int(np.ceil(capacity_factor * n_tokens * k / n_experts))


def capacity_floor(n_tokens, n_experts, k, capacity_factor):
    return math.floor(capacity_factor * n_tokens * k / n_experts)


def capacity_truncated(n_tokens, n_experts, k, capacity_factor):
    return int(capacity_factor * n_tokens * k / n_experts)


def capacity_plus_one(n_tokens, n_experts, k, capacity_factor):
    return int(capacity_factor * n_tokens * k / n_experts) + 1


def capacity_no_k(n_tokens, n_experts, k, capacity_factor):
    return math.ceil(capacity_factor * n_tokens / n_experts)


def capacity_factor_after(n_tokens, n_experts, k, capacity_factor):
    return math.ceil(capacity_factor * math.ceil(n_tokens * k / n_experts))


def capacity_no_factor(n_tokens, n_experts, k, capacity_factor):
    return math.ceil(n_tokens * k / n_experts)


def capacity_float(n_tokens, n_experts, k, capacity_factor):
    return float(np.ceil(capacity_factor * n_tokens * k / n_experts))


def capacity_tensor(n_tokens, n_experts, k, capacity_factor):
    return torch.tensor(capacity_factor * n_tokens * k / n_experts).ceil().long()


# --------------------------------------------------------------------------------------------
# capacity_mask


def mask(experts, n_experts, slots):
    tokens, k = experts.shape
    flat = experts.T.reshape(-1)
    one_hot = F.one_hot(flat, n_experts)
    position = (one_hot.cumsum(0) * one_hot).sum(-1) - 1
    return (position < slots).view(k, tokens).T


def mask_loop(experts, n_experts, slots):
    tokens, k = experts.shape
    used = [0] * n_experts
    keep = torch.zeros(tokens, k, dtype=torch.bool)
    for j in range(k):
        for t in range(tokens):
            e = int(experts[t, j])
            if used[e] < slots:
                keep[t, j] = True
            used[e] += 1
    return keep


def mask_by_rank(experts, n_experts, slots):  # rank within the expert via a stable sort
    tokens, k = experts.shape
    flat = experts.T.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=n_experts)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(flat)
    rank[order] = torch.arange(flat.numel()) - starts[flat[order]]
    return (rank < slots).view(k, tokens).T


def mask_token_major(experts, n_experts, slots):
    flat = experts.reshape(-1)
    one_hot = F.one_hot(flat, n_experts)
    position = (one_hot.cumsum(0) * one_hot).sum(-1) - 1
    return (position < slots).view(experts.shape)


def mask_from_one(experts, n_experts, slots):
    tokens, k = experts.shape
    one_hot = F.one_hot(experts.T.reshape(-1), n_experts)
    position = (one_hot.cumsum(0) * one_hot).sum(-1)  # 1 for the first: one slot lost
    return (position < slots).view(k, tokens).T


def mask_at_most(experts, n_experts, slots):
    tokens, k = experts.shape
    one_hot = F.one_hot(experts.T.reshape(-1), n_experts)
    position = (one_hot.cumsum(0) * one_hot).sum(-1) - 1
    return (position <= slots).view(k, tokens).T


def mask_per_rank(experts, n_experts, slots):
    return torch.stack(
        [mask(experts[:, j : j + 1], n_experts, slots)[:, 0] for j in range(experts.shape[1])],
        dim=1,
    )


def mask_first_only(experts, n_experts, slots):
    keep = mask(experts, n_experts, slots)
    keep[:, 1:] = True
    return keep


def mask_no_transpose(experts, n_experts, slots):
    tokens, k = experts.shape
    one_hot = F.one_hot(experts.T.reshape(-1), n_experts)
    position = (one_hot.cumsum(0) * one_hot).sum(-1) - 1
    return (position < slots).view(tokens, k)


def mask_last_tokens_first(experts, n_experts, slots):
    return mask(experts.flip(0), n_experts, slots).flip(0)


def mask_inverted(experts, n_experts, slots):
    return ~mask(experts, n_experts, slots)


def mask_float(experts, n_experts, slots):
    return mask(experts, n_experts, slots).float()


# --------------------------------------------------------------------------------------------
# dispatch


def dispatch(x, experts, n_experts, keep):
    flat = experts.reshape(-1)
    order = torch.argsort(flat, stable=True)
    order = order[keep.reshape(-1)[order]]
    tokens = order // experts.shape[1]
    counts = torch.bincount(flat[order], minlength=n_experts)
    return x[tokens], order, tokens, counts


def dispatch_unique_keys(x, experts, n_experts, keep):  # ties broken by hand: any sort works
    flat = experts.reshape(-1)
    key = flat * flat.numel() + torch.arange(flat.numel())
    order = torch.argsort(key[keep.reshape(-1)])
    order = keep.reshape(-1).nonzero().squeeze(1)[order]
    counts = torch.bincount(flat[order], minlength=n_experts)
    tokens = order // experts.shape[1]
    return x[tokens], order, tokens, counts


def dispatch_one_hot(x, experts, n_experts, keep):
    flat = experts.reshape(-1)
    hit = (flat[None, :] == torch.arange(n_experts)[:, None]) & keep.reshape(1, -1)
    _, order = hit.nonzero(as_tuple=True)  # row-major: by expert, then by flat index
    tokens = order // experts.shape[1]
    return x[tokens], order, tokens, hit.sum(1)


def dispatch_loop(x, experts, n_experts, keep):
    tokens_, k = experts.shape
    order = [
        t * k + j
        for e in range(n_experts)
        for t in range(tokens_)
        for j in range(k)
        if experts[t, j] == e and keep[t, j]
    ]
    order = torch.tensor(order, dtype=torch.long)
    counts = torch.tensor([int(((experts == e) & keep).sum()) for e in range(n_experts)])
    return x[order // k], order, order // k, counts


def dispatch_ties_reversed(x, experts, n_experts, keep):  # an unstable sort, made reproducible
    flat = experts.reshape(-1)
    n = flat.numel()
    order = torch.argsort(flat * n + (n - 1 - torch.arange(n)))
    order = order[keep.reshape(-1)[order]]
    tokens = order // experts.shape[1]
    return x[tokens], order, tokens, torch.bincount(flat[order], minlength=n_experts)


def dispatch_default_argsort(x, experts, n_experts, keep):  # torch.argsort without stable=True
    flat = experts.reshape(-1)
    order = torch.argsort(flat)
    order = order[keep.reshape(-1)[order]]
    tokens = order // experts.shape[1]
    return x[tokens], order, tokens, torch.bincount(flat[order], minlength=n_experts)


def dispatch_keeps_dropped(x, experts, n_experts, keep):
    flat = experts.reshape(-1)
    order = torch.argsort(flat, stable=True)
    tokens = order // experts.shape[1]
    return x[tokens], order, tokens, torch.bincount(flat[order], minlength=n_experts)


def dispatch_no_minlength(x, experts, n_experts, keep):
    xs, order, tokens, _ = dispatch(x, experts, n_experts, keep)
    return xs, order, tokens, torch.bincount(experts.reshape(-1)[order])


def dispatch_counts_all(x, experts, n_experts, keep):
    xs, order, tokens, _ = dispatch(x, experts, n_experts, keep)
    return xs, order, tokens, torch.bincount(experts.reshape(-1), minlength=n_experts)


def dispatch_tokens_are_order(x, experts, n_experts, keep):
    xs, order, _, counts = dispatch(x, experts, n_experts, keep)
    return xs, order, order, counts


def dispatch_token_order(x, experts, n_experts, keep):  # never sorted by expert
    order = keep.reshape(-1).nonzero().squeeze(1)
    tokens = order // experts.shape[1]
    counts = torch.bincount(experts.reshape(-1)[order], minlength=n_experts)
    return x[tokens], order, tokens, counts


def dispatch_float_counts(x, experts, n_experts, keep):
    xs, order, tokens, counts = dispatch(x, experts, n_experts, keep)
    return xs, order, tokens, counts.float()


# --------------------------------------------------------------------------------------------
# combine


def combine(rows, weights, order, tokens, n_tokens):
    w = weights.reshape(-1)[order]
    out = torch.zeros(n_tokens, rows.shape[1], dtype=rows.dtype)
    return out.index_add_(0, tokens, rows * w[:, None])


def combine_matmul(rows, weights, order, tokens, n_tokens):
    gather = torch.zeros(n_tokens, rows.shape[0], dtype=rows.dtype)
    gather[tokens, torch.arange(rows.shape[0])] = weights.reshape(-1)[order]
    return gather @ rows


def combine_loop(rows, weights, order, tokens, n_tokens):
    out = torch.zeros(n_tokens, rows.shape[1])
    flat = weights.reshape(-1)
    for i in range(rows.shape[0]):
        out[tokens[i]] += flat[order[i]] * rows[i]
    return out


def combine_scatter_add(rows, weights, order, tokens, n_tokens):
    scaled = rows * weights.reshape(-1)[order].unsqueeze(1)
    index = tokens[:, None].expand_as(scaled)
    return torch.zeros(n_tokens, rows.shape[1]).scatter_add(0, index, scaled)


def combine_no_weights(rows, weights, order, tokens, n_tokens):
    return torch.zeros(n_tokens, rows.shape[1]).index_add_(0, tokens, rows)


def combine_unsorted_weights(rows, weights, order, tokens, n_tokens):
    w = weights.reshape(-1)[: rows.shape[0]]
    return torch.zeros(n_tokens, rows.shape[1]).index_add_(0, tokens, rows * w[:, None])


def combine_weights_by_token(rows, weights, order, tokens, n_tokens):
    w = weights.reshape(-1)[tokens]
    return torch.zeros(n_tokens, rows.shape[1]).index_add_(0, tokens, rows * w[:, None])


def combine_overwrite(rows, weights, order, tokens, n_tokens):
    out = torch.zeros(n_tokens, rows.shape[1])
    out[tokens] = rows * weights.reshape(-1)[order, None]
    return out


def combine_index_copy(rows, weights, order, tokens, n_tokens):
    scaled = rows * weights.reshape(-1)[order, None]
    return torch.zeros(n_tokens, rows.shape[1]).index_copy(0, tokens, scaled)


def combine_normalised_again(rows, weights, order, tokens, n_tokens):
    w = weights.reshape(-1)[order]
    total = torch.zeros(n_tokens).index_add_(0, tokens, w)
    out = combine(rows, weights, order, tokens, n_tokens)
    return out / total.clamp_min(1e-9)[:, None]


def combine_rows_only(rows, weights, order, tokens, n_tokens):
    return rows * weights.reshape(-1)[order, None]


# --------------------------------------------------------------------------------------------
# moe_forward: each answer uses the functions above, as the lab's does


def moe_forward(x, router, experts, capacity_factor):
    r = router(x)
    n, n_experts = x.shape[0], router.n_experts
    keep = mask(r.experts, n_experts, capacity(n, n_experts, router.k, capacity_factor))
    xs, order, tokens, counts = dispatch(x, r.experts, n_experts, keep)
    rows = torch.cat([experts.ffn(e, b) for e, b in enumerate(xs.split(counts.tolist()))])
    return combine(rows, r.weights, order, tokens, n)


def moe_forward_per_expert(x, router, experts, capacity_factor):  # a loop, no sort
    r = router(x)
    n, n_experts = x.shape[0], router.n_experts
    keep = mask_loop(r.experts, n_experts, capacity(n, n_experts, router.k, capacity_factor))
    out = torch.zeros_like(x)
    for e in range(n_experts):
        token, slot = ((r.experts == e) & keep).nonzero(as_tuple=True)
        out.index_add_(0, token, experts.ffn(e, x[token]) * r.weights[token, slot, None])
    return out


def moe_forward_zeroed_weights(x, router, experts, capacity_factor):  # dense over the kept
    r = router(x)
    n, n_experts = x.shape[0], router.n_experts
    keep = mask(r.experts, n_experts, capacity(n, n_experts, router.k, capacity_factor))
    gates = torch.zeros(n, n_experts).scatter_add(1, r.experts, r.weights * keep)
    every = torch.stack([experts.ffn(e, x) for e in range(n_experts)], dim=1)
    return (gates[..., None] * every).sum(1)


def moe_forward_no_capacity(x, router, experts, capacity_factor):
    r = router(x)
    keep = torch.ones_like(r.experts, dtype=torch.bool)
    xs, order, tokens, counts = dispatch(x, r.experts, router.n_experts, keep)
    rows = torch.cat([experts.ffn(e, b) for e, b in enumerate(xs.split(counts.tolist()))])
    return combine(rows, r.weights, order, tokens, x.shape[0])


def moe_forward_with_residual(x, router, experts, capacity_factor):
    return x + moe_forward(x, router, experts, capacity_factor)


def moe_forward_renormalised(x, router, experts, capacity_factor):
    r = router(x)
    n, n_experts = x.shape[0], router.n_experts
    keep = mask(r.experts, n_experts, capacity(n, n_experts, router.k, capacity_factor))
    weights = r.weights * keep
    weights = weights / weights.sum(-1, keepdim=True).clamp_min(1e-9)
    xs, order, tokens, counts = dispatch(x, r.experts, n_experts, keep)
    rows = torch.cat([experts.ffn(e, b) for e, b in enumerate(xs.split(counts.tolist()))])
    return combine(rows, weights, order, tokens, n)


def moe_forward_passes_dropped(x, router, experts, capacity_factor):
    r = router(x)
    n, n_experts = x.shape[0], router.n_experts
    keep = mask(r.experts, n_experts, capacity(n, n_experts, router.k, capacity_factor))
    out = moe_forward(x, router, experts, capacity_factor)
    lost = ~keep.any(1)
    return torch.where(lost[:, None], x, out)


# --------------------------------------------------------------------------------------------
# What the contract runs

CORRECT_VARIANTS = [
    (CAP, capacity),
    (CAP, capacity_other_order),
    (CAP, capacity_floor_division),
    (CAP, capacity_numpy),
    (MSK, mask),
    (MSK, mask_loop),
    (MSK, mask_by_rank),
    (DIS, dispatch),
    (DIS, dispatch_unique_keys),
    (DIS, dispatch_one_hot),
    (DIS, dispatch_loop),
    (COM, combine),
    (COM, combine_matmul),
    (COM, combine_loop),
    (COM, combine_scatter_add),
    (FWD, moe_forward),
    (FWD, moe_forward_per_expert),
    (FWD, moe_forward_zeroed_weights),
]

MUTANTS = [
    (CAP, capacity_floor, CAP_ROUND, "you rounded down"),
    (CAP, capacity_truncated, CAP_ROUND, "int(), which truncates"),
    (CAP, capacity_plus_one, CAP_FIRST, "int(x) + 1 rounds up only when x is not whole"),
    (CAP, capacity_no_k, CAP_FIRST, "k is missing"),
    (CAP, capacity_factor_after, CAP_ROUND, "you applied the capacity factor after rounding"),
    (CAP, capacity_no_factor, CAP_ROUND, "the capacity factor 1.75 is missing"),
    (CAP, capacity_float, CAP_FIRST, "a slot count is an int"),
    (CAP, capacity_tensor, CAP_FIRST, "expected a Python int"),
    (MSK, mask_token_major, MSK_FIRST, "you counted token-major"),
    (MSK, mask_from_one, MSK_FIRST, "one fewer than its 1 slot:"),
    (MSK, mask_at_most, MSK_FIRST, "one more than its 1 slot:"),
    (MSK, mask_per_rank, MSK_FIRST, "you counted each choice rank on its own"),
    (MSK, mask_first_only, MSK_FIRST, "only the first choices were limited"),
    (MSK, mask_no_transpose, MSK_FIRST, "the choice-major mask reshaped"),
    (MSK, mask_last_tokens_first, MSK_FIRST, "the last tokens were served first"),
    (MSK, mask_inverted, MSK_FIRST, "your mask is inverted"),
    (MSK, mask_float, MSK_FIRST, "a mask is a bool tensor"),
    (DIS, dispatch_ties_reversed, DIS_FIRST, "The sort was not stable"),
    (DIS, dispatch_keeps_dropped, DIS_TIES, "the 15 dropped ones too"),
    (DIS, dispatch_no_minlength, DIS_UNUSED, "pass minlength=n_experts"),
    (DIS, dispatch_counts_all, DIS_TIES, "counts counts all 96 assignments"),
    (DIS, dispatch_tokens_are_order, DIS_FIRST, "the token is order // k"),
    (DIS, dispatch_token_order, DIS_FIRST, "in token order: sort them by expert"),
    (DIS, dispatch_float_counts, DIS_FIRST, "counts: expected an integer tensor"),
    (COM, combine_no_weights, COM_FIRST, "the weights are not applied"),
    (COM, combine_unsorted_weights, COM_FIRST, "the weights are in unsorted order"),
    (COM, combine_weights_by_token, COM_FIRST, "the weights are indexed by token"),
    (COM, combine_overwrite, COM_FIRST, "written over, not summed"),
    (COM, combine_index_copy, COM_FIRST, "written over, not summed"),
    (COM, combine_normalised_again, COM_RAW, "you normalised the weights again"),
    (COM, combine_rows_only, COM_FIRST, "one row per kept assignment"),
    (FWD, moe_forward_no_capacity, FWD_DROP, "you kept every assignment"),
    (FWD, moe_forward_with_residual, FWD_FIRST, "you added x"),
    (FWD, moe_forward_renormalised, FWD_DROP, "you renormalised the kept weights"),
    (FWD, moe_forward_passes_dropped, FWD_SWITCH, "got x: the layer gives them 0"),
]


# --------------------------------------------------------------------------------------------
# Answers that call the package's MoE code: flagged


def capacity_with_the_package(n_tokens, n_experts, k, capacity_factor):
    return moe_router.capacity(n_tokens, n_experts, k, capacity_factor)


def mask_with_the_package(experts, n_experts, slots):
    return moe_router.capacity_mask(experts, n_experts, slots)


def dispatch_with_the_package(x, experts, n_experts, keep):
    order, tokens, counts = moe_layer.permute(experts, n_experts, keep)
    return x[tokens], order, tokens, counts


def combine_with_the_package(rows, weights, order, tokens, n_tokens):
    return moe_layer.unpermute(rows * weights.reshape(-1)[order, None], tokens, n_tokens)


def moe_forward_with_the_layer(x, router, experts, capacity_factor):
    moe = moe_layer.MoE(experts.d_model, experts.d_ff, router.n_experts, router.k,
                        capacity_factor=capacity_factor, impl="loop")  # fmt: skip
    moe.router, moe.experts = router, experts
    return moe(x)


def moe_forward_with_permute(x, router, experts, capacity_factor):
    r = router(x)
    n, n_experts = x.shape[0], router.n_experts
    keep = mask(r.experts, n_experts, capacity(n, n_experts, router.k, capacity_factor))
    order, tokens, counts = moe_layer.permute(r.experts, n_experts, keep)
    rows = torch.cat([experts.ffn(e, b) for e, b in enumerate(x[tokens].split(counts.tolist()))])
    return combine(rows, r.weights, order, tokens, n)


FORBIDDEN = [
    (CAP, capacity_with_the_package, "llmlab.moe.router.capacity"),
    (MSK, mask_with_the_package, "llmlab.moe.router.capacity_mask"),
    (DIS, dispatch_with_the_package, "llmlab.moe.layer.permute"),
    (COM, combine_with_the_package, "llmlab.moe.layer.unpermute"),
    (FWD, moe_forward_with_the_layer, "llmlab.moe.layer.MoE.__init__"),
    (FWD, moe_forward_with_permute, "llmlab.moe.layer.permute"),
]


# --------------------------------------------------------------------------------------------
# The cases hold what their names say


def test_the_priority_case_separates_the_slips():
    (case,) = [c for c in dc._mask_cases() if c.name == MSK_FIRST]
    experts, n_experts, slots = case.args
    want = dc.reference_capacity_mask(experts, n_experts, slots)
    assert want.tolist() == [[True, False], [True, True], [False, False]]
    slips = (mask_token_major, mask_from_one, mask_at_most, mask_per_rank, mask_first_only,
             mask_no_transpose, mask_last_tokens_first, mask_inverted)  # fmt: skip
    wrongs = [slip(experts, n_experts, slots) for slip in slips]
    for i, a in enumerate([want, *wrongs]):
        for b in wrongs[i:]:
            assert a is b or not torch.equal(a, b)


def test_the_capacity_cases_round_as_named():
    for case in dc._capacity_cases():
        n_tokens, n_experts, k, cf = case.args
        exact = cf * n_tokens * k / n_experts
        assert (
            exact == cf * (n_tokens * k / n_experts) == n_tokens * k / n_experts * cf
        )  # no float doubt
    assert capacity(10, 4, 1, 1.75) == 5 and capacity_floor(10, 4, 1, 1.75) == 4
    assert capacity_no_factor(10, 4, 1, 1.75) == 3 and capacity_factor_after(10, 4, 1, 1.75) == 6


def test_the_tie_case_has_many_equal_ids_and_drops():
    (case,) = [c for c in dc._dispatch_cases() if c.name == DIS_TIES]
    x, experts, n_experts, keep = case.args
    assert experts.numel() == 96 and int((~keep).sum()) == 15
    assert torch.bincount(experts.reshape(-1)).min() >= 20


def test_a_plain_argsort_fails_where_it_shuffles_ties():
    # torch.argsort without stable=True reorders equal ids on CPU beyond 16 entries; where this
    # build does, the check names the unstable sort.
    _, experts, _, keep = [c for c in dc._dispatch_cases() if c.name == DIS_TIES][0].args
    flat = experts.reshape(-1)
    if torch.equal(torch.argsort(flat), torch.argsort(flat, stable=True)):
        pytest.skip("this torch build's argsort kept the ties in order")
    result = dc.check_dispatch(dispatch_default_argsort)
    assert not result.passed and "The sort was not stable" in result.message


def test_the_unused_experts_case_has_trailing_zeros():
    (case,) = [c for c in dc._dispatch_cases() if c.name == DIS_UNUSED]
    x, experts, n_experts, keep = case.args
    counts = dc.reference_dispatch(x, experts, n_experts, keep)[3]
    assert counts.tolist()[-2:] == [0, 0] and counts.numel() == n_experts


def test_the_combine_cases_hold_tokens_with_no_row():
    names = {c.name: c.args for c in dc._combine_cases()}
    for name in (
        "k = 1, 12 tokens, 3 experts, 3 slots: 3 tokens dropped entirely, their output is 0",
        "6 tokens, k = 2, 3 experts, 2 slots: tokens whose both assignments were dropped",
    ):
        rows, weights, order, tokens, n_tokens = names[name]
        assert len(set(tokens.tolist())) < n_tokens, name


def test_the_forward_cases_drop_as_named():
    assert FWD_LOST in [c.name for c in dc._moe_cases()]
    for case in dc._moe_cases():
        x, router, experts, cf = case.args
        with torch.no_grad():
            r = router(x)
        slots = moe_router.capacity(x.shape[0], router.n_experts, router.k, cf)
        keep = moe_router.capacity_mask(r.experts, router.n_experts, slots)
        if "nothing dropped" in case.name:
            assert keep.all(), case.name
        else:
            assert not keep.all(), case.name
        if "dropped entirely" in case.name:
            assert (~keep.any(1)).any(), case.name


def test_the_forward_reference_is_the_package_layer():
    # The reference is MoE(impl="loop"); the grouped layer gives the same numbers.
    x, router, experts, cf = dc._moe_cases()[1].args
    with torch.random.fork_rng(devices=[]):
        moe = moe_layer.MoE(experts.d_model, experts.d_ff, router.n_experts, router.k,
                            capacity_factor=cf, impl="grouped")  # fmt: skip
    moe.router, moe.experts = router, experts
    with torch.no_grad():
        torch.testing.assert_close(moe(x), dc.reference_moe_forward(x, router, experts, cf))
