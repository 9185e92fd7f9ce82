"""Checks of chapter 06's dispatch-and-combine lab,
``solutions/06_mixture_of_experts/02_dispatch_combine.ipynb``.

    lab 02_dispatch_combine: capacity, capacity_mask, dispatch, combine, moe_forward

The router gives each of T tokens its k experts, ``experts`` (T, k) int64, row t = token t's
choices, column j = its (j+1)-th choice, and their weights, ``weights`` (T, k). One (token,
choice) pair is an **assignment**; its flat index is ``t * k + j``, its place in
``experts.reshape(-1)``.

- ``capacity(n_tokens, n_experts, k, capacity_factor)``: the slots per expert, an int,
  ``ceil(capacity_factor * n_tokens * k / n_experts)``.
- ``capacity_mask(experts, n_experts, slots)``: (T, k) bool, True where the assignment fits.
  Each expert takes its first ``slots`` assignments in GShard's priority: all first choices in
  token order, then all second choices, and so on.
- ``dispatch(x, experts, n_experts, keep)``: the kept assignments sorted by expert (a stable
  sort: token order within an expert), ``(x_sorted, order, tokens, counts)``: ``order`` their
  flat indices, ``tokens = order // k``, ``x_sorted = x[tokens]``, ``counts`` (n_experts,) the
  rows of each expert, zeros included.
- ``combine(rows, weights, order, tokens, n_tokens)``: each expert output row times its
  assignment's weight, ``weights.reshape(-1)[order]``, summed into its token: (n_tokens, d).
- ``moe_forward(x, router, experts, capacity_factor)``: the four above with the router
  (:class:`llmlab.moe.router.TopKRouter`) and the experts (:class:`llmlab.moe.layer.Experts`,
  ``experts.ffn(e, rows)``); equal to ``MoE(..., impl="loop")`` with these weights.

The cases catch the usual slips, and the message names the slip when the answer matches it: in
``capacity``, rounding down (``math.floor`` or ``int()``), rounding to the nearest, ``int(x) + 1``
(one slot too many when x is whole), k forgotten, the capacity factor forgotten or applied after
rounding, a float; in ``capacity_mask``, token-major priority (token 0's second choice before
token 1's first), positions counted from 1 or compared with ``<=`` (one slot too few or too
many), each choice rank counted on its own, only the first choices limited, the last tokens
served first, the choice-major mask reshaped without its transpose, the mask inverted, a float
mask; in ``dispatch``, an unstable sort (the case holds many equal expert ids, and ``tokens``
is compared exactly), the assignments left in token order, the dropped assignments kept,
``counts`` without ``minlength`` or counting the dropped assignments, ``tokens = order`` (or
``order % k``) instead of ``order // k``; in ``combine``, the weights not applied, taken in
unsorted order (``weights.reshape(-1)[:n]``) or by token, rows written over instead of summed
(a token with two experts keeps one), the weights normalised again, one row per assignment
returned; in ``moe_forward``, the capacity limit not applied, the kept weights renormalised
after the drop, x added (the residual belongs to the block), x passed through for a token whose
assignments were all dropped.

Each ``check_NAME(fn)`` prints one line and returns a :class:`llmlab.checks.CheckResult`
whose ``.fn`` the lab keeps using::

    dispatch = check_dispatch(dispatch).fn

The references delegate to :mod:`llmlab.moe.router` and :mod:`llmlab.moe.layer`; an answer
that calls the package's MoE code is flagged (in ``moe_forward``, the router and
``experts.ffn`` are the provided pieces, and only the layer, ``permute``, ``unpermute`` and the
capacity functions are off limits). Inputs come from :mod:`llmlab.checks._inputs`, and the
modules are built without touching the global RNG, so a check never moves the notebook's seed.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Callable
from typing import Any

import torch

from llmlab.checks import Case, CheckResult, compare_tensors, describe, run_check
from llmlab.checks._inputs import generator, randn
from llmlab.moe import layer as moe_layer
from llmlab.moe import router as moe_router

#: Exercises 1 to 4: the package's MoE code computes the answers; an answer that calls it is
#: flagged.
FORBID = ("llmlab.moe",)

#: Exercise 5 uses the package's router and experts: only the layer and the pieces the lab
#: writes are flagged.
FORWARD_FORBID = (
    "llmlab.moe.layer.MoE",
    "llmlab.moe.layer.permute",
    "llmlab.moe.layer.unpermute",
    "llmlab.moe.router.capacity",
    "llmlab.moe.router.capacity_mask",
)

#: Tolerances on combine and moe_forward: float32 sums taken in another order stay inside.
ATOL, RTOL = 1e-5, 1e-4

# --------------------------------------------------------------------------------------------
# References


def reference_capacity(n_tokens: int, n_experts: int, k: int, capacity_factor: float) -> int:
    """Slots per expert: ceil(capacity_factor * n_tokens * k / n_experts)."""
    return moe_router.capacity(n_tokens, n_experts, k, capacity_factor)


def reference_capacity_mask(experts: torch.Tensor, n_experts: int, slots: int) -> torch.Tensor:
    """(T, k) bool: the assignment fits among its expert's first ``slots``, first choices of
    every token (in token order) before any second choice."""
    return moe_router.capacity_mask(experts, n_experts, slots)


def reference_dispatch(
    x: torch.Tensor, experts: torch.Tensor, n_experts: int, keep: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_sorted, order, tokens, counts): the kept assignments sorted by expert, stably."""
    order, tokens, counts = moe_layer.permute(experts, n_experts, keep)
    return x[tokens], order, tokens, counts


def reference_combine(
    rows: torch.Tensor,
    weights: torch.Tensor,
    order: torch.Tensor,
    tokens: torch.Tensor,
    n_tokens: int,
) -> torch.Tensor:
    """Each row times its assignment's weight, summed into its token: (n_tokens, d)."""
    scaled = rows * weights.reshape(-1)[order, None].to(rows.dtype)
    return moe_layer.unpermute(scaled, tokens, n_tokens)


def reference_moe_forward(
    x: torch.Tensor,
    router: moe_router.TopKRouter,
    experts: moe_layer.Experts,
    capacity_factor: float,
) -> torch.Tensor:
    """``MoE(..., capacity_factor, impl="loop")`` whose router and experts are these."""
    with torch.random.fork_rng(devices=[]):  # the layer's random init must not move the seed
        moe = moe_layer.MoE(
            experts.d_model,
            experts.d_ff,
            router.n_experts,
            router.k,
            capacity_factor=capacity_factor,
            order=router.order,
            renormalize=router.renormalize,
            impl="loop",
        )
    moe.router, moe.experts = router, experts
    with torch.no_grad():
        return moe(x)


# --------------------------------------------------------------------------------------------
# Inputs and plain words


def _choices(tokens: int, k: int, n_experts: int, seed: int, skew: int = 0) -> torch.Tensor:
    """(tokens, k) distinct expert ids per token, as a top-k gives them; ``skew`` > 0 makes
    experts 0 and 1 the favourites."""
    scores = torch.rand(tokens, n_experts, generator=generator(seed))
    if skew:
        scores[:, :2] += skew * torch.rand(tokens, 1, generator=generator(seed + 1))
    return scores.topk(k, dim=-1).indices


def _run(fn: Callable, *args) -> dict:
    """``fn``'s output with the case's inputs, for the comparison. The comparisons read the
    inputs from the reference's run: in the grader the student's run comes back as plain data,
    where the router and the experts are stand-ins."""
    return {"out": fn(*copy.deepcopy(args)), "inputs": args}


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, atol=ATOL, rtol=RTOL)


def _ints_problem(value: Any, name: str) -> str | None:
    """What is wrong with ``value`` as a 1-D tensor of integer indices or counts."""
    if not isinstance(value, torch.Tensor):
        return f"{name}: expected a 1-D int64 tensor, received {describe(value)}"
    if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
        dtype = str(value.dtype).removeprefix("torch.")
        return (
            f"{name}: expected an integer tensor (int64), received dtype {dtype}: indices and "
            "counts are integers (argsort, // and bincount return int64)"
        )
    if value.dim() != 1:
        return f"{name}: expected a 1-D tensor, received shape {tuple(value.shape)}"
    return None


# --------------------------------------------------------------------------------------------
# capacity


def _capacity_cases() -> list[Case]:
    return [
        Case("64 tokens, 8 experts, k = 2, capacity factor 1.0: 16 slots, no rounding", (64, 8, 2, 1.0)),
        Case(
            "10 tokens, 4 experts, k = 1, capacity factor 1.75: 4.375 slots' worth, rounded up to 5",
            (10, 4, 1, 1.75),
            hint="round once, up, after the multiplication: ceil(1.75 * 10 * 1 / 4) = "
            "ceil(4.375) = 5 (math.ceil returns an int).",
        ),
        Case("100 tokens, 8 experts, k = 2, capacity factor 1.25: 31.25 rounded up to 32", (100, 8, 2, 1.25)),
        Case(
            "12 tokens, 16 experts, k = 1, capacity factor 0.5: 0.375 rounded up to 1",
            (12, 16, 1, 0.5),
            hint="ceil(0.375) = 1: an expert with 0 slots could take no token at all.",
        ),
        Case("7 tokens, 4 experts, k = 2, capacity factor 1.0: 3.5 rounded up to 4", (7, 4, 2, 1.0)),
        Case("30 tokens, 4 experts, k = 2, capacity factor 2.0: every token fits in one expert", (30, 4, 2, 2.0)),
    ]  # fmt: skip


def _capacity_slips(
    n_tokens: int, n_experts: int, k: int, cf: float, want: int
) -> list[tuple[float, str]]:
    exact = cf * n_tokens * k / n_experts
    rule = f"ceil({cf:g} * {n_tokens} * {k} / {n_experts}) = ceil({exact:g}) = {want}"
    per_expert = n_tokens * k / n_experts
    slips = [
        (
            math.floor(exact),
            f"you rounded down (math.floor, int(), which truncates, or round(), which rounds "
            f"{exact:g} down too): {exact:g} slots' worth of assignments needs {rule}; rounding "
            "down drops assignments that the factor left room for",
        ),
    ]
    if exact == int(exact):
        slips.append(
            (
                int(exact) + 1,
                f"int(x) + 1 rounds up only when x is not whole: here x = {exact:g} is whole and "
                f"the capacity is {want}; use math.ceil",
            )
        )
    slips += [
        (
            math.ceil(cf * n_tokens / n_experts),
            f"k is missing: every token makes k = {k} assignments, so the experts share "
            f"n_tokens * k = {n_tokens * k} of them; {rule}",
        ),
        (
            math.ceil(cf * n_tokens / (n_experts * k)),
            f"you divided by k: the experts share n_tokens * k = {n_tokens * k} assignments, "
            f"k multiplies; {rule}",
        ),
        (
            math.ceil(per_expert),
            f"the capacity factor {cf:g} is missing: ceil(n_tokens * k / n_experts) is the "
            f"balanced load; the capacity is {rule}",
        ),
    ]
    after = cf * math.ceil(per_expert)
    for value in (after, math.ceil(after), math.floor(after)):
        slips.append(
            (
                value,
                f"you applied the capacity factor after rounding: {cf:g} * "
                f"ceil({n_tokens} * {k} / {n_experts}) = {after:g}; multiply first and round "
                f"once: {rule}",
            )
        )
    return slips


def _capacity_problem(received: Any, expected: dict) -> str | None:
    got, want = received["out"], expected["out"]
    n_tokens, n_experts, k, cf = expected["inputs"]
    is_number = isinstance(got, numbers.Real) and not isinstance(got, bool)
    value = float(got) if is_number else None
    is_int = isinstance(got, numbers.Integral) and not isinstance(got, bool)
    if is_int and int(got) == want:
        return None
    if value is not None and math.isfinite(value):
        for wrong, words in _capacity_slips(n_tokens, n_experts, k, cf, want):
            if value == wrong and wrong != want:
                return words
    if value is not None and value == want:
        return (
            f"received {describe(got)}: the value is right, but a slot count is an int "
            "(math.ceil returns one; numpy's and torch's ceil return floats): wrap it in int()"
        )
    if isinstance(got, torch.Tensor):
        return (
            f"expected a Python int, received {describe(got)}: compute with math.ceil on "
            "Python numbers (or call int() on the result)"
        )
    if not is_number:
        return f"expected an int, the slots per expert, received {describe(got)}"
    exact = cf * n_tokens * k / n_experts
    return (
        f"expected ceil({cf:g} * {n_tokens} * {k} / {n_experts}) = ceil({exact:g}) = {want} "
        f"slots, received {got!r}"
    )


def check_capacity(capacity: Callable) -> CheckResult:
    """Check ``capacity(n_tokens, n_experts, k, capacity_factor) -> int``."""
    return run_check(
        "capacity",
        capacity,
        reference_capacity,
        _capacity_cases(),
        hint="return math.ceil(capacity_factor * n_tokens * k / n_experts): multiply everything "
        "first, round up once, an int.",
        run=_run,
        compare=_capacity_problem,
        arg_names=("n_tokens", "n_experts", "k", "capacity_factor"),
        forbid=FORBID,
    )


# --------------------------------------------------------------------------------------------
# capacity_mask


def _mask_cases() -> list[Case]:
    def case(name, tokens, k, n_experts, slots, seed, skew=0, hint=""):
        return Case(name, (_choices(tokens, k, n_experts, seed, skew), n_experts, slots), hint=hint)

    priority_hint = (
        "count the assignments in GShard's order: ALL first choices (token 0, 1, 2 ...), then "
        "all second choices: experts.T.reshape(-1) lists them so. An assignment fits when "
        "fewer than `slots` assignments to its expert come before it."
    )
    return [
        Case(
            "3 tokens, 3 experts, 1 slot each: token 0's second choice and token 1's first "
            "choice both want expert 1",
            (torch.tensor([[0, 1], [1, 2], [0, 2]]), 3, 1),
            hint="token 1's FIRST choice (expert 1) comes before token 0's SECOND choice: all "
            "first choices are served before any second choice (token 2's first choice, expert "
            "0, is already too late), so the expected mask is [[True, False], [True, True], "
            "[False, False]].",
        ),
        case("16 tokens, k = 2, 4 experts, 6 slots", 16, 2, 4, 6, 600, hint=priority_hint),
        case("k = 1, 20 tokens, 4 experts, 4 slots: each expert keeps its first 4 tokens", 20, 1, 4, 4, 601),
        case(
            "40 tokens, k = 2, 8 experts, 7 slots, most tokens choosing experts 0 and 1",
            40, 2, 8, 7, 602, skew=2, hint=priority_hint,
        ),
        case("k = 3, 12 tokens, 4 experts, 5 slots: third choices come last", 12, 3, 4, 5, 603, hint=priority_hint),
        case("slots = 0: nothing fits", 6, 2, 4, 0, 604),
        case("16 tokens, k = 2, 4 experts, 32 slots: everything fits", 16, 2, 4, 32, 605),
    ]  # fmt: skip


def _positions(order: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Each entry's place in its expert's queue, the queue running in the order given."""
    one_hot = torch.nn.functional.one_hot(order, n_experts)
    return (one_hot.cumsum(0) * one_hot).sum(-1) - 1


def _choice_major(values: torch.Tensor, tokens: int, k: int) -> torch.Tensor:
    """A choice-major flat tensor (first choices of all tokens, then second ...) back to (T, k)."""
    return values.view(k, tokens).t()


def _mask_slips(
    experts: torch.Tensor, n_experts: int, slots: int
) -> list[tuple[torch.Tensor, str]]:
    tokens, k = experts.shape
    its_slots = f"its {slots} slot" + ("" if slots == 1 else "s")
    flat = experts.t().reshape(-1)
    position = _choice_major(_positions(flat, n_experts), tokens, k)
    want = position < slots
    token_major = _positions(experts.reshape(-1), n_experts).view(tokens, k) < slots
    per_rank = torch.stack([_positions(experts[:, j], n_experts) < slots for j in range(k)], dim=1)
    first_only = want.clone()
    first_only[:, 1:] = True
    reversed_tokens = (
        _choice_major(_positions(experts.flip(0).t().reshape(-1), n_experts), tokens, k).flip(0)
        < slots
    )
    return [
        (
            token_major,
            "you counted token-major: token 0's second choice took a slot before token 1's first "
            "choice. GShard counts all first choices (in token order), then all second choices, "
            "so a token loses its second expert before another token loses its first "
            "(experts.T.reshape(-1) is that order)",
        ),
        (
            position + 1 < slots,
            f"a full expert keeps {max(slots - 1, 0)} assignments, one fewer than "
            f"{its_slots}: your positions start at 1 (a cumsum counts the assignment itself); "
            "subtract 1 and keep position < slots",
        ),
        (
            position <= slots,
            f"a full expert keeps {slots + 1} assignments, one more than {its_slots}: "
            "with positions counted from 0 the last slot is position slots - 1; keep "
            "position < slots, not <=",
        ),
        (
            per_rank,
            f"you counted each choice rank on its own: an expert took up to {slots} first "
            f"choices and, on top of them, up to {slots} second choices. The first choices "
            "fill the expert's slots first, and the second choices get only what is left",
        ),
        (
            first_only,
            "only the first choices were limited and every later choice kept: second choices "
            "count against the same slots, after all first choices",
        ),
        (
            reversed_tokens,
            "the last tokens were served first: within a choice rank the slots go in token "
            "order, token 0 first",
        ),
        (
            want.t().reshape(tokens, k),
            "your mask is the choice-major mask reshaped with .view(T, k): it is laid out "
            "(k, T), first choices of all tokens first; .view(k, T).T puts it back to (T, k)",
        ),
        (
            ~want,
            "your mask is inverted: True where the assignment is DROPPED; True marks the "
            "assignments that fit",
        ),
    ]


def _mask_problem(received: Any, expected: dict) -> str | None:
    got, want = received["out"], expected["out"]
    experts, n_experts, slots = expected["inputs"]
    tokens, k = experts.shape
    if not isinstance(got, torch.Tensor):
        return (
            f"expected a bool tensor of the experts' shape {tuple(want.shape)}, True where the "
            f"assignment fits; received {describe(got)}"
        )
    if got.shape != want.shape:
        return (
            f"expected a mask of the experts' shape (tokens, k) = {tuple(want.shape)}, received "
            f"shape {tuple(got.shape)}"
        )
    if got.dtype != torch.bool:
        dtype = str(got.dtype).removeprefix("torch.")
        if got.numel() == 0 or bool(((got == 0) | (got == 1)).all()):
            return (
                f"received a {dtype} tensor of 0s and 1s: a mask is a bool tensor, True where "
                "the assignment fits; return the comparison itself or .bool() (weights * keep "
                "works either way, but keep.reshape(-1)[order] must select, not index)"
            )
        return (
            f"expected a bool mask, True where the assignment fits, received dtype {dtype} "
            "holding values other than 0 and 1 (positions?): compare them with slots"
        )
    got = got.cpu()
    if torch.equal(got, want):
        return None
    for wrong, words in _mask_slips(experts, n_experts, slots):
        if torch.equal(got, wrong):
            return words
    flat = experts.reshape(-1)
    kept = torch.bincount(flat[got.reshape(-1)], minlength=n_experts)
    want_kept = torch.bincount(flat[want.reshape(-1)], minlength=n_experts)
    for e in range(n_experts):
        if kept[e] != want_kept[e]:
            total = int((flat == e).sum())
            return (
                f"expert {e} keeps {int(kept[e])} assignments; it was chosen {total} times and "
                f"has {slots} slots, so it keeps min({total}, {slots}) = {int(want_kept[e])}"
            )
    t, j = (got != want).nonzero()[0].tolist()
    e = int(experts[t, j])
    return (
        f"every expert keeps the right number, but not the right assignments: token {t}'s "
        f"choice {j + 1} (expert {e}) should be {bool(want[t, j])}. Serve the slots in "
        "GShard's order: all first choices in token order, then all second choices"
    )


def check_capacity_mask(capacity_mask: Callable) -> CheckResult:
    """Check ``capacity_mask(experts, n_experts, slots) -> keep``: (T, k) bool."""
    return run_check(
        "capacity_mask",
        capacity_mask,
        reference_capacity_mask,
        _mask_cases(),
        hint="flat = experts.T.reshape(-1) (first choices, then second ...); one_hot = "
        "F.one_hot(flat, n_experts); position = (one_hot.cumsum(0) * one_hot).sum(-1) - 1; "
        "keep = (position < slots).view(k, T).T",
        run=_run,
        compare=_mask_problem,
        arg_names=("experts", "n_experts", "slots"),
        forbid=FORBID,
    )


# --------------------------------------------------------------------------------------------
# dispatch


def _dispatch_args(
    tokens: int, k: int, n_experts: int, slots: int, seed: int, used: int | None = None
) -> tuple:
    """(x, experts, n_experts, keep): ``used`` experts chosen (the last ones never)."""
    experts = _choices(tokens, k, used or n_experts, seed)
    keep = moe_router.capacity_mask(experts, n_experts, slots)
    return randn(tokens, 6, seed=seed + 1), experts, n_experts, keep


def _dispatch_cases() -> list[Case]:
    stable_hint = (
        "within an expert, keep token order: torch.argsort(experts.reshape(-1), stable=True); "
        "a plain argsort may reorder equal expert ids (torch's CPU sort does beyond 16 entries)."
    )
    return [
        Case(
            "12 tokens, k = 2, 4 experts, every assignment kept",
            _dispatch_args(12, 2, 4, 24, 700),
            hint="order = torch.argsort(experts.reshape(-1), stable=True); tokens = order // k "
            "(order indexes the flat (T * k) assignments); x_sorted = x[tokens].",
        ),
        Case(
            "48 tokens, k = 2, 3 experts, 28 slots: 96 assignments with many equal ids, 15 dropped",
            _dispatch_args(48, 2, 3, 28, 701),
            hint=stable_hint,
        ),
        Case(
            "k = 1, 10 tokens, 4 experts, 2 slots: dropped tokens",
            _dispatch_args(10, 1, 4, 2, 702),
            hint="leave out the dropped assignments: order = order[keep.reshape(-1)[order]].",
        ),
        Case(
            "6 experts, experts 4 and 5 chosen by no token: counts ends with two zeros",
            _dispatch_args(16, 2, 6, 32, 703, used=4),
            hint="torch.bincount(ids, minlength=n_experts): without minlength the counts stop "
            "at the largest id present, and the experts after it lose their (zero) entries.",
        ),
        Case(
            "40 tokens, k = 4, 8 experts, 14 slots",
            _dispatch_args(40, 4, 8, 14, 704),
            hint=stable_hint,
        ),
        Case(
            "slots = 0: every assignment dropped, nothing to dispatch",
            _dispatch_args(5, 2, 3, 0, 705),
            hint="with no kept assignment, order and tokens are empty, x_sorted has 0 rows and "
            "counts is n_experts zeros.",
        ),
    ]


def _order_problem(
    order: torch.Tensor, want: torch.Tensor, experts: torch.Tensor, keep
) -> str | None:
    if torch.equal(order, want):
        return None
    tokens, k = experts.shape
    flat = experts.reshape(-1)
    n_all, n_kept = flat.numel(), want.numel()
    if order.numel() != n_kept:
        if order.numel() == n_all and n_kept < n_all:
            return (
                f"order holds all {n_all} assignments, the {n_all - n_kept} dropped ones too: "
                "leave out those where keep is False (order = order[keep.reshape(-1)[order]])"
            )
        return f"order should hold the {n_kept} kept assignments, received {order.numel()}"
    if order.min() < 0 or order.max() >= n_all:
        return (
            f"order holds {int(order.min())} .. {int(order.max())}: it indexes the "
            f"{n_all} flat assignments experts.reshape(-1), 0 .. {n_all - 1}"
        )
    if torch.equal(order, keep.reshape(-1).nonzero().squeeze(1)) and not torch.equal(
        flat[order], flat[want]
    ):
        return (
            "order lists the kept assignments in token order: sort them by expert, so that each "
            "expert's rows form one contiguous block"
        )
    same_set = torch.equal(order.sort().values, want.sort().values)
    if same_set and torch.equal(flat[order], flat[want]):
        i = int((order != want).nonzero()[0])
        e = int(flat[want[i]])
        return (
            f"within expert {e}'s block the assignments are not in token order: row {i} reads "
            f"token {int(order[i]) // k}, expected token {int(want[i]) // k}. The sort was not "
            "stable: torch.argsort(..., stable=True) keeps token order among equal expert ids"
        )
    if same_set and torch.equal(flat[order], flat[want].flip(0)):
        return "order sorts the experts in DESCENDING order: expert 0's rows come first"
    if same_set:
        return (
            "order holds the right assignments but is not sorted by expert: "
            "argsort of experts.reshape(-1) puts each expert's assignments in one block"
        )
    wrong = int((order != want).sum())
    i = int((order != want).nonzero()[0])
    return (
        f"{wrong} of {n_kept} entries of order differ; the first at row {i}: expected "
        f"{int(want[i])}, received {int(order[i])}"
    )


def _dispatch_problem(received: Any, expected: dict) -> str | None:
    got = received["out"]
    want_x, want_order, want_tokens, want_counts = expected["out"]
    x, experts, n_experts, keep = expected["inputs"]
    tokens, k = experts.shape
    flat = experts.reshape(-1)
    if not isinstance(got, (tuple, list)) or len(got) != 4:
        return (
            "expected a tuple of 4 tensors (x_sorted, order, tokens, counts), received "
            f"{describe(got)}"
        )
    xs, order, tok, counts = got
    for value, name in ((order, "order"), (tok, "tokens"), (counts, "counts")):
        problem = _ints_problem(value, name)
        if problem is not None:
            return problem
    order, tok, counts = order.cpu().long(), tok.cpu().long(), counts.cpu().long()
    problem = _order_problem(order, want_order, experts, keep)
    if problem is not None:
        return problem
    if not torch.equal(tok, want_tokens):
        if torch.equal(tok, want_order) and k > 1:
            return (
                f"tokens equals order: order holds flat indices t * k + j into "
                f"experts.reshape(-1) ({tokens * k} of them); the token is order // k"
            )
        if torch.equal(tok, want_order % k) and k > 1:
            return "tokens = order % k is the choice rank j; the token is order // k"
        if tok.shape != want_tokens.shape:
            return (
                f"tokens: expected shape {tuple(want_tokens.shape)}, one per kept assignment, "
                f"received {tuple(tok.shape)}"
            )
        i = int((tok != want_tokens).nonzero()[0])
        return (
            f"tokens[{i}] = {int(tok[i])}, expected order[{i}] // k = {int(want_order[i])} // "
            f"{k} = {int(want_tokens[i])}"
        )
    if not torch.equal(counts, want_counts):
        used = torch.bincount(flat[want_order])
        if counts.numel() < n_experts and torch.equal(counts, used):
            return (
                f"counts has length {counts.numel()}, not n_experts = {n_experts}: the last "
                "experts got no kept assignment and torch.bincount stops at the largest id it "
                "sees; pass minlength=n_experts"
            )
        if torch.equal(counts, torch.bincount(flat, minlength=n_experts)) and keep is not None:
            return (
                f"counts counts all {flat.numel()} assignments, the dropped ones too: count the "
                f"kept ones, {want_order.numel()} (bincount of experts.reshape(-1)[order])"
            )
        if counts.shape != want_counts.shape:
            return (
                f"counts: expected shape ({n_experts},), one per expert, received "
                f"{tuple(counts.shape)}"
            )
        e = int((counts != want_counts).nonzero()[0])
        return (
            f"counts[{e}] = {int(counts[e])}, but expert {e} has {int(want_counts[e])} kept "
            "assignments"
        )
    if isinstance(xs, torch.Tensor) and xs.shape == want_x.shape and xs.dtype == want_x.dtype:
        rows_wrong = (xs.cpu() != want_x).any(dim=1).nonzero()
        if len(rows_wrong):
            i = int(rows_wrong[0])
            return (
                f"x_sorted[{i}] is not x[tokens[{i}]] = x[{int(want_tokens[i])}]: "
                "x_sorted = x[tokens]"
            )
        return None
    problem = compare_tensors(xs, want_x, atol=0.0, rtol=0.0)
    return None if problem is None else f"x_sorted: {problem}"


def check_dispatch(dispatch: Callable) -> CheckResult:
    """Check ``dispatch(x, experts, n_experts, keep) -> (x_sorted, order, tokens, counts)``."""
    return run_check(
        "dispatch",
        dispatch,
        reference_dispatch,
        _dispatch_cases(),
        hint="order = torch.argsort(experts.reshape(-1), stable=True); order = "
        "order[keep.reshape(-1)[order]]; tokens = order // k; counts = "
        "torch.bincount(experts.reshape(-1)[order], minlength=n_experts); return x[tokens], "
        "order, tokens, counts.",
        run=_run,
        compare=_dispatch_problem,
        arg_names=("x", "experts", "n_experts", "keep"),
        forbid=FORBID,
    )


# --------------------------------------------------------------------------------------------
# combine


def _combine_args(
    tokens: int,
    k: int,
    n_experts: int,
    slots: int,
    seed: int,
    renormalize: bool = True,
    d: int = 5,
) -> tuple:
    """(rows, weights, order, tokens, n_tokens) as an MoE layer would hand them to combine."""
    logits = randn(tokens, n_experts, seed=seed)
    probs = logits.softmax(-1)
    weights, experts = probs.topk(k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(-1, keepdim=True)
    keep = moe_router.capacity_mask(experts, n_experts, slots)
    order, tok, _ = moe_layer.permute(experts, n_experts, keep)
    rows = randn(order.numel(), d, seed=seed + 1)
    return rows, weights, order, tok, tokens


def _combine_cases() -> list[Case]:
    sorted_hint = (
        "row i of rows belongs to assignment order[i]: its weight is weights.reshape(-1)[order]"
        "[i]; out = zeros(n_tokens, d).index_add_(0, tokens, rows * w[:, None]) sums a token's "
        "rows."
    )
    return [
        Case(
            "10 tokens, k = 2, 4 experts, nothing dropped, weights summing to 1 per token",
            _combine_args(10, 2, 4, 20, 800),
            hint=sorted_hint,
        ),
        Case(
            "16 tokens, k = 2, 4 experts, weights not renormalised (softmax then top-k), "
            "5 slots: some dropped",
            _combine_args(16, 2, 4, 5, 801, renormalize=False),
            hint=sorted_hint,
        ),
        Case(
            "k = 1, 12 tokens, 3 experts, 3 slots: 3 tokens dropped entirely, their output is 0",
            _combine_args(12, 1, 3, 3, 802, renormalize=False),
            hint="a token with no kept row gets a zero row: start from torch.zeros (torch.empty "
            "holds whatever was in memory).",
        ),
        Case("20 tokens, k = 4 of 8 experts, 9 slots", _combine_args(20, 4, 8, 9, 803), hint=sorted_hint),
        Case(
            "6 tokens, k = 2, 3 experts, 2 slots: tokens whose both assignments were dropped",
            _combine_args(6, 2, 3, 2, 804),
            hint=sorted_hint,
        ),
        Case(
            "slots = 0: no rows, the output is all zeros",
            _combine_args(4, 2, 3, 0, 805),
            hint="with no rows, index_add_ adds nothing: return torch.zeros(n_tokens, d).",
        ),
    ]  # fmt: skip


def _scatter_sum(rows: torch.Tensor, tokens: torch.Tensor, n_tokens: int) -> torch.Tensor:
    return rows.new_zeros(n_tokens, rows.shape[1]).index_add_(0, tokens, rows)


def _combine_slips(
    rows: torch.Tensor, weights: torch.Tensor, order: torch.Tensor, tokens: torch.Tensor, n: int
) -> list[tuple[torch.Tensor, str]]:
    r, w = rows.double(), weights.double().reshape(-1)
    n_rows = order.numel()
    scaled = r * w[order, None]
    overwrite_last = r.new_zeros(n, r.shape[1])
    for i in range(n_rows):
        overwrite_last[tokens[i]] = scaled[i]
    overwrite_first = r.new_zeros(n, r.shape[1])
    for i in reversed(range(n_rows)):
        overwrite_first[tokens[i]] = scaled[i]
    total = r.new_zeros(n).index_add_(0, tokens, w[order])
    again = _scatter_sum(scaled, tokens, n) / total.clamp_min(1e-30)[:, None]
    overwrite = (
        "a token's rows were written over, not summed (out[tokens] = ... or index_copy): a "
        "token with two kept experts keeps only one of them; index_add_ sums them"
    )
    return [
        (
            _scatter_sum(r, tokens, n),
            "the weights are not applied: every row is summed with weight 1; multiply row i by "
            "weights.reshape(-1)[order[i]] first",
        ),
        (
            _scatter_sum(r * w[:n_rows, None], tokens, n),
            "the weights are in unsorted order: weights.reshape(-1)[:n] pairs row i with "
            "assignment i, but row i is assignment order[i]; use weights.reshape(-1)[order]",
        ),
        (
            _scatter_sum(r * w[tokens, None], tokens, n),
            "the weights are indexed by token: weights.reshape(-1)[tokens] reads the wrong "
            "entries; row i's weight is weights.reshape(-1)[order[i]]",
        ),
        (overwrite_last, overwrite),
        (overwrite_first, overwrite),
        (
            again,
            "you normalised the weights again (divided by the sum of each token's weights): "
            "combine uses the router's weights as they are; where they do not sum to 1 (no "
            "renormalisation, or a dropped expert) the output must keep that scale",
        ),
    ]


def _combine_problem(received: Any, expected: dict) -> str | None:
    got, want = received["out"], expected["out"]
    rows, weights, order, tokens, n_tokens = expected["inputs"]
    if isinstance(got, torch.Tensor) and got.shape == rows.shape and rows.shape != want.shape:
        return (
            f"received shape {tuple(got.shape)}, one row per kept assignment: sum each "
            f"token's rows into its own row, an output of shape {tuple(want.shape)} "
            "(index_add_ over tokens)"
        )
    problem = compare_tensors(got, want, atol=ATOL, rtol=RTOL)
    if problem is None or got.shape != want.shape or not got.is_floating_point():
        return problem
    value = got.detach().cpu().double()
    for wrong, words in _combine_slips(rows, weights, order, tokens, n_tokens):
        if _close(value, wrong) and not _close(value, want.double()):
            return words
    empty = torch.ones(n_tokens, dtype=torch.bool)
    empty[tokens] = False
    bad_empty = (empty & (value != 0).any(1)).nonzero()
    if len(bad_empty):
        t = int(bad_empty[0])
        return (
            f"token {t} has no kept assignment, so its output row must be 0; yours holds other "
            "values (start from torch.zeros, not torch.empty)"
        )
    scaled = rows.double() * weights.double().reshape(-1)[order, None]
    for t in range(n_tokens):
        mine = (tokens == t).nonzero().squeeze(1)
        if len(mine) > 1 and not _close(value[t], want[t].double()):
            if any(_close(value[t], scaled[i]) for i in mine):
                return (
                    f"token {t} has {len(mine)} kept rows but its output equals one of them: "
                    "the rows were written over, not summed; index_add_ sums them"
                )
    return problem


def check_combine(combine: Callable) -> CheckResult:
    """Check ``combine(rows, weights, order, tokens, n_tokens) -> (n_tokens, d)``."""
    return run_check(
        "combine",
        combine,
        reference_combine,
        _combine_cases(),
        hint="w = weights.reshape(-1)[order]; return torch.zeros(n_tokens, rows.shape[1], "
        "dtype=rows.dtype).index_add_(0, tokens, rows * w[:, None]).",
        run=_run,
        compare=_combine_problem,
        arg_names=("rows", "weights", "order", "tokens", "n_tokens"),
        forbid=FORBID,
    )


# --------------------------------------------------------------------------------------------
# moe_forward


def _moe_args(
    tokens: int,
    n_experts: int,
    k: int,
    capacity_factor: float,
    seed: int,
    *,
    d: int = 12,
    d_ff: int = 20,
    renormalize: bool = True,
    favourite: bool = False,
) -> tuple:
    """(x, router, experts, capacity_factor) with seeded weights; ``favourite``: every token's
    first choice is expert 0."""
    with torch.random.fork_rng(devices=[]):  # the modules' random init must not move the seed
        top_k = moe_router.TopKRouter(d, n_experts, k, renormalize=renormalize)
        ffns = moe_layer.Experts(n_experts, d, d_ff)
    x = randn(tokens, d, seed=seed)
    with torch.no_grad():
        top_k.weight.copy_(randn(n_experts, d, seed=seed + 1, scale=d**-0.5))
        ffns.w_gate.copy_(randn(n_experts, d_ff, d, seed=seed + 2, scale=d**-0.5))
        ffns.w_up.copy_(randn(n_experts, d_ff, d, seed=seed + 3, scale=d**-0.5))
        ffns.w_down.copy_(randn(n_experts, d, d_ff, seed=seed + 4, scale=d_ff**-0.5))
        if favourite:
            x = x + 1.0
            top_k.weight[0] += 1.0
    return x, top_k, ffns, capacity_factor


def _moe_cases() -> list[Case]:
    steps_hint = (
        "r = router(x); slots = capacity(T, router.n_experts, router.k, capacity_factor); keep "
        "= capacity_mask(r.experts, router.n_experts, slots); dispatch x, run expert e on its "
        "block of counts[e] rows (experts.ffn(e, block)), combine with r.weights."
    )
    return [
        Case("16 tokens, 4 experts, k = 2, capacity factor 2.0: nothing dropped", _moe_args(16, 4, 2, 2.0, 900), hint=steps_hint),
        Case(
            "32 tokens, 4 experts, k = 2, capacity factor 1.0: some assignments dropped",
            _moe_args(32, 4, 2, 1.0, 910),
            hint="the dropped assignments add nothing: dispatch only the kept ones (keep from "
            "capacity_mask), and combine with the router's weights as they are.",
        ),
        Case("k = 1 (Switch), 24 tokens, 8 experts, capacity factor 1.25", _moe_args(24, 8, 1, 1.25, 920, renormalize=False), hint=steps_hint),
        Case(
            "every token's first choice is expert 0, 20 tokens, 4 experts, k = 2, capacity "
            "factor 1.0: tokens dropped entirely",
            _moe_args(20, 4, 2, 1.0, 930, favourite=True),
            hint="a token whose assignments were all dropped gets 0 from the layer (the "
            "block's residual carries x on): no x, no renormalisation.",
        ),
        Case("30 tokens, 6 experts, k = 3, capacity factor 0.5: half the assignments dropped", _moe_args(30, 6, 3, 0.5, 940), hint=steps_hint),
    ]  # fmt: skip


def _loop(
    x: torch.Tensor, experts: moe_layer.Experts, r: Any, weights: torch.Tensor
) -> torch.Tensor:
    """sum_j weights[t, j] * FFN_{experts[t, j]}(x_t), for every (t, j) (weights 0: left out)."""
    out = torch.zeros_like(x)
    for e in range(experts.n_experts):
        token, slot = ((r.experts == e) & (weights != 0)).nonzero(as_tuple=True)
        if token.numel():
            out.index_add_(0, token, experts.ffn(e, x[token]) * weights[token, slot, None])
    return out


def _moe_problem(received: Any, expected: dict) -> str | None:
    got, want = received["out"], expected["out"]
    x, top_k, ffns, cf = expected["inputs"]
    problem = compare_tensors(got, want, atol=ATOL, rtol=RTOL)
    if problem is None or got.shape != want.shape or not got.is_floating_point():
        return problem
    value = got.detach().cpu().double()
    with torch.no_grad():
        r = top_k(x)
        tokens = x.shape[0]
        slots = moe_router.capacity(tokens, top_k.n_experts, top_k.k, cf)
        keep = moe_router.capacity_mask(r.experts, top_k.n_experts, slots)
        weights = r.weights.to(x.dtype)
        everything = _loop(x, ffns, r, weights).double()
        kept = weights * keep
        renormalised = kept / kept.sum(-1, keepdim=True).clamp_min(1e-30)
        again = _loop(x, ffns, r, renormalised).double()
    lost = ~keep.any(dim=1)
    n_dropped = int((~keep).sum())
    slips = [
        (
            everything,
            f"you kept every assignment: with capacity factor {cf:g} each expert has {slots} "
            f"slots and {n_dropped} of the {keep.numel()} assignments are dropped; dispatch only "
            "those that capacity_mask keeps",
        ),
        (
            again,
            "you renormalised the kept weights after the drop: a token that lost an expert "
            "keeps its other weights as they were (the dropped share of its output is missing, "
            "not moved to the other experts)",
        ),
        (
            want.double() + x.double(),
            "you added x: the layer returns only the experts' sum; the residual connection "
            "(x + layer(x)) belongs to the block",
        ),
    ]
    if lost.any():
        slips.append(
            (
                want.double() + x.double() * lost[:, None],
                f"tokens whose assignments were all dropped ({int(lost.sum())} of them) got x: "
                "the layer gives them 0, and the block's residual carries x on",
            )
        )
    for wrong, words in slips:
        if _close(value, wrong) and not _close(value, want.double()):
            return words
    differ = ((value - want.double()).abs() > ATOL + RTOL * want.double().abs()).any(dim=1)
    touched = ~keep.all(dim=1)
    if differ.any() and bool((differ <= touched).all()):
        shown = ", ".join(map(str, differ.nonzero().squeeze(1).tolist()[:5]))
        more = ", ..." if differ.sum() > 5 else ""
        return (
            f"the tokens that differ ({shown}{more}) "
            "are all tokens with a dropped assignment: a dropped assignment adds nothing, a kept "
            "one adds its weight times its expert's output"
        )
    return problem


def check_moe_forward(moe_forward: Callable) -> CheckResult:
    """Check ``moe_forward(x, router, experts, capacity_factor) -> (T, d_model)``."""
    return run_check(
        "moe_forward",
        moe_forward,
        reference_moe_forward,
        _moe_cases(),
        hint="r = router(x); keep = capacity_mask(r.experts, E, capacity(T, E, k, "
        "capacity_factor)); xs, order, tokens, counts = dispatch(x, r.experts, E, keep); rows = "
        "torch.cat([experts.ffn(e, b) for e, b in enumerate(xs.split(counts.tolist()))]); "
        "return combine(rows, r.weights, order, tokens, T).",
        run=_run,
        compare=_moe_problem,
        arg_names=("x", "router", "experts", "capacity_factor"),
        forbid=FORWARD_FORBID,
    )
