"""Checks of chapter 05's pruning-masks lab (``solutions/05_compression/04_pruning_masks.ipynb``).

    lab 04_pruning_masks: magnitude_mask, global_magnitude_masks, input_norms, wanda_mask,
    n_m_mask

A **mask** is a bool tensor of the weight's shape, True where the weight is kept. ``weight`` is
an ``nn.Linear`` weight, rows = outputs and columns = inputs. ``sparsity`` is the share pruned:
a group of ``N`` weights loses ``int(round(sparsity * N))`` of them (Python's ``round``) and
keeps the rest, the largest scores.

- ``magnitude_mask(weight, sparsity)``: keep the largest ``|w|`` of the whole layer.
- ``global_magnitude_masks(weights, sparsity)``: ``weights`` is a dict of weight matrices; one
  threshold over all of them together (``N`` = all their weights). A dict of masks, same keys.
- ``input_norms(x)``: the L2 norm of each input feature over the calibration tokens, x of shape
  (tokens, in) -> (in,), float32 (float64 accepted): ``sqrt(sum_t x[t, j]**2)``.
- ``wanda_mask(weight, input_norm, sparsity)``: score ``|W_ij| * input_norm[j]``; every OUTPUT
  ROW keeps its own largest scores (``N`` = the row's length).
- ``n_m_mask(scores, n=2, m=4)``: keep the ``n`` highest scores of every block of ``m``
  consecutive entries of a row (blocks at columns 0..m-1, m..2m-1, ...). The scores are used
  as they are (a negative score is low).

**Ties.** The cases' scores come from ``torch.randn`` with fixed seeds and hold no ties, so any
correct selection (``topk``, a sort and a threshold, ``kthvalue``) gives the same mask.

**A float mask is refused.** A tensor of 0.0 and 1.0 selects the same weights, but it is not a
mask: ``w[mask]`` indexes with it as positions 0 and 1, and ``~mask`` fails. The check asks for
the comparison itself (a bool tensor) or ``.bool()``.

The cases catch the usual slips, and the message names the slip when the answer matches it: in
``magnitude_mask``, the smallest magnitudes kept, signed values ranked (large negative weights
pruned), a comparison per row or per column instead of per layer, a count one off (floor
instead of round), a count from the rows or the columns only; in ``global_magnitude_masks``,
each layer pruned to the same share, a threshold at the mean of ``|w|``, each layer normalised
(by its max, norm, mean or std) before the threshold; in ``input_norms``, the squared norm, the
root mean square, the mean or sum of ``|x|``, the max, the std, the norm over the wrong dim, a
kept dim; in ``wanda_mask``, ``input_norm`` ignored or on the output axis (one factor per row: the same
mask as none; a non-square case raises, and its hint names the axis), a comparison over the
whole layer or within each input column, signed weights, squared norms; in
``n_m_mask``, the lowest kept, blocks down the columns, every ``m``-th column as a block
(``reshape(rows, m, -1)``), the top of a whole row instead of each block, ``|scores|`` ranked,
and blocks that are not aligned at column 0 (named by the first block that keeps the wrong
number).

Each ``check_NAME(fn)`` prints one line and returns a :class:`llmlab.checks.CheckResult`
whose ``.fn`` the lab keeps using::

    wanda_mask = check_wanda_mask(wanda_mask).fn

The references delegate to :mod:`llmlab.compress.prune`; an answer that calls the package's
compression code is flagged. Inputs come from :mod:`llmlab.checks._inputs`, so a check never
moves the notebook's seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch

from llmlab.checks import Case, CheckResult, compare_tensors, describe, run_check
from llmlab.checks._inputs import randn
from llmlab.compress import prune

#: The package's pruning code computes the answers: an answer that calls it is flagged.
FORBID = ("llmlab.compress",)

#: Tolerances on the input norms (float32 arithmetic done in another order stays inside).
NORM_ATOL, NORM_RTOL = 1e-5, 1e-5

# --------------------------------------------------------------------------------------------
# References


def reference_magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """True at the ``1 - sparsity`` share of the largest ``|w|`` of the whole layer."""
    return prune.magnitude_mask(weight, sparsity)


def reference_global_magnitude_masks(
    weights: dict[str, torch.Tensor], sparsity: float
) -> dict[str, torch.Tensor]:
    """One threshold on ``|w|`` over all the layers of ``weights``: a mask per layer."""
    return prune.global_magnitude_masks(weights, sparsity)


def reference_input_norms(x: torch.Tensor) -> torch.Tensor:
    """The L2 norm of each column of ``x`` (tokens, in) over the tokens: shape (in,), float32."""
    return x.double().square().sum(dim=0).sqrt().float()


def reference_wanda_mask(
    weight: torch.Tensor, input_norm: torch.Tensor, sparsity: float
) -> torch.Tensor:
    """True at each row's ``1 - sparsity`` share of the largest ``|W_ij| * input_norm[j]``."""
    return prune.wanda_mask(weight, input_norm, sparsity)


def reference_n_m_mask(scores: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """True at the ``n`` highest scores of every ``m`` consecutive entries of each row."""
    return prune.n_m_mask(scores, n, m)


# --------------------------------------------------------------------------------------------
# Masks, counts and where a weight sits, in words


def _top(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """True at the ``keep`` largest entries of each row (last dim) of ``scores``."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if keep > 0:
        mask.scatter_(-1, scores.topk(keep, dim=-1).indices, True)
    return mask


def _top_layer(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """True at the ``keep`` largest entries of all of ``scores``."""
    return _top(scores.flatten()[None], keep).view(scores.shape)


def _pruned(sparsity: float, count: int) -> int:
    return int(round(sparsity * count))


def _count_rule(sparsity: float, count: int, what: str) -> str:
    k = _pruned(sparsity, count)
    return (
        f"prune int(round(sparsity * {what})) = round({sparsity:g} * {count}) = "
        f"round({sparsity * count:.4g}) = {k} and keep {count - k}"
    )


def _off_by(got: int, want: int) -> str:
    if got == want + 1:
        return "one weight too many"
    if got == want - 1:
        return "one weight too few"
    return f"{abs(got - want)} weights too {'many' if got > want else 'few'}"


def _floor_note(sparsity: float, count: int, kept: int) -> str:
    """``" (floor ...)"`` when ``kept`` is what a floor or a truncation would give."""
    pruned = count - kept
    if pruned == math.floor(sparsity * count) != _pruned(sparsity, count):
        return (
            f" (you pruned floor({sparsity * count:.4g}) = {pruned}: int(x) truncates; "
            "int(round(x)) rounds)"
        )
    if kept == int((1 - sparsity) * count) != count - _pruned(sparsity, count):
        return (
            f" (you kept int({(1 - sparsity) * count:.4g}) = {kept}: count the pruned weights "
            "with round, then keep the rest)"
        )
    if pruned == math.ceil(sparsity * count) != _pruned(sparsity, count):
        return f" (you pruned ceil({sparsity * count:.4g}) = {pruned}: use round)"
    return ""


def _mask_problem(value: Any, shape: torch.Size, what: str = "the weight's") -> str | None:
    """What is wrong with ``value`` as a mask of ``shape``, before any entry is looked at."""
    if not isinstance(value, torch.Tensor):
        return (
            f"expected a bool tensor of {what} shape {tuple(shape)}, True where kept; received "
            f"{describe(value)}"
        )
    if value.shape != shape:
        return (
            f"expected a mask of {what} shape {tuple(shape)}, received shape {tuple(value.shape)}"
        )
    if value.dtype != torch.bool:
        dtype = str(value.dtype).removeprefix("torch.")
        zero_one = bool(((value == 0) | (value == 1)).all()) if value.numel() else True
        if zero_one:
            return (
                f"received a {dtype} tensor of 0s and 1s: a mask is a bool tensor, True where "
                "kept; return the comparison itself or .bool() (a float mask cannot index "
                "weight[mask], and ~mask fails on it)"
            )
        return (
            f"expected a bool mask (True where kept), received dtype {dtype} holding values "
            "other than 0 and 1: the mask says which weights to keep, not their values"
        )
    return None


def _index(flat: int, shape: torch.Size) -> tuple[int, ...]:
    out = []
    for size in reversed(shape):
        out.append(flat % size)
        flat //= size
    return tuple(reversed(out))


def _wrong_choice(got: torch.Tensor, want: torch.Tensor, scores: torch.Tensor, what: str) -> str:
    """Which high score was pruned and which low one kept (same count, other weights)."""
    lost = (want & ~got).flatten().nonzero()
    extra = (got & ~want).flatten().nonzero()
    flat = scores.flatten()
    if len(lost) and len(extra):
        i = int(lost[flat[lost[:, 0]].argmax()])
        j = int(extra[flat[extra[:, 0]].argmin()])
        return (
            f"you pruned the weight at {_index(i, scores.shape)} ({what} {float(flat[i]):.4g}) "
            f"but kept the one at {_index(j, scores.shape)} ({what} {float(flat[j]):.4g}): keep "
            f"the largest {what}"
        )
    n_wrong = int((got != want).sum())
    return f"{n_wrong} of {want.numel()} entries differ from the expected mask"


def _first_match(got: torch.Tensor, slips: Iterator[tuple[torch.Tensor, str]]) -> str | None:
    for wrong, words in slips:
        if wrong.shape == got.shape and torch.equal(got, wrong):
            return words
    return None


def _run(fn: Callable, *args) -> dict:
    copies = tuple(
        {k: v.clone() for k, v in a.items()}
        if isinstance(a, dict)
        else a.clone()
        if isinstance(a, torch.Tensor)
        else a
        for a in args
    )
    return {"out": fn(*copies), "inputs": args}


# --------------------------------------------------------------------------------------------
# magnitude_mask


def _magnitude_cases() -> list[Case]:
    def case(name, rows, cols, s, seed, hint="", scale=1.0):
        return Case(name, (randn(rows, cols, seed=seed, scale=scale), s), hint=hint)

    return [
        case("a (16, 32) weight, sparsity 0.5", 16, 32, 0.5, 200),
        case("a (24, 10) weight, sparsity 0.75", 24, 10, 0.75, 201),
        case(
            "a (10, 11) weight, sparsity 0.37: 40.7 weights to prune, rounded to 41",
            10, 11, 0.37, 202,
            hint="count the pruned weights as int(round(sparsity * weight.numel())), keep the "
            "rest: here 110 - 41 = 69.",
        ),
        case(
            "a (10, 11) weight, sparsity 0.32: 35.2 weights to prune, rounded to 35",
            10, 11, 0.32, 203,
            hint="count the pruned weights as int(round(sparsity * weight.numel())), keep the "
            "rest: here 110 - 35 = 75 (int(0.68 * 110) = 74 truncates).",
        ),
        case(
            "sparsity 0: every weight kept",
            6, 8, 0.0, 204,
            hint="nothing is pruned at sparsity 0: torch.kthvalue(x, 0) is out of range, so "
            "handle k = 0 apart (or use topk of the kept count).",
        ),
        case("a (32, 64) weight of scale 0.02, sparsity 0.9", 32, 64, 0.9, 205, scale=0.02),
    ]  # fmt: skip


def _magnitude_slips(w: torch.Tensor, s: float) -> Iterator[tuple[torch.Tensor, str]]:
    rows, cols = w.shape
    n = w.numel()
    keep = n - _pruned(s, n)
    a = w.abs()
    yield (
        _top_layer(-a, keep),
        "your mask keeps the SMALLEST magnitudes: keep the largest |w| (topk of weight.abs(), "
        "or |w| above the threshold)",
    )
    if keep < n:
        i = int(w.flatten().argmin())
        yield (
            _top_layer(w, keep),
            f"you ranked the signed weights: the weight {float(w.flatten()[i]):.4g} at "
            f"{_index(i, w.shape)}, one of the largest in magnitude, was pruned; rank "
            "weight.abs()",
        )
    per_row = cols - _pruned(s, cols)
    yield (
        _top(a, per_row),
        f"every row keeps exactly {per_row} of its {cols} weights: you compared within each "
        f"row; magnitude_mask compares all {n} weights of the layer together (the per-row "
        "comparison is Wanda's, exercise 4)",
    )
    per_col = rows - _pruned(s, rows)
    yield (
        _top(a.T, per_col).T,
        f"every column keeps exactly {per_col} of its {rows} weights: you compared within each "
        f"column; magnitude_mask compares all {n} weights of the layer together",
    )
    for size, what in ((rows, "rows"), (cols, "columns")):
        k = _pruned(s, size)
        if k != _pruned(s, n):
            yield (
                _top_layer(a, n - k),
                f"you pruned round(sparsity * {size}) = {k} weights: {size} is the number of "
                f"{what}, not of weights; {_count_rule(s, n, 'weight.numel()')}",
            )


def _magnitude_problem(received: Any, expected: dict) -> str | None:
    got, want = received["out"], expected["out"]
    w, s = received["inputs"]
    problem = _mask_problem(got, want.shape)
    if problem is not None or torch.equal(got.cpu(), want):
        return problem
    got = got.cpu()
    slip = _first_match(got, _magnitude_slips(w.float(), s))
    if slip is not None:
        return slip
    n, kept, want_kept = w.numel(), int(got.sum()), int(want.sum())
    if kept != want_kept:
        return (
            f"your mask keeps {kept} of {n} weights, {_off_by(kept, want_kept)}: "
            f"{_count_rule(s, n, 'weight.numel()')}{_floor_note(s, n, kept)}"
        )
    return _wrong_choice(got, want, w.abs().float(), "|w|")


def check_magnitude_mask(magnitude_mask: Callable) -> CheckResult:
    """Check ``magnitude_mask(weight, sparsity) -> mask``: bool, the weight's shape."""
    return run_check(
        "magnitude_mask",
        magnitude_mask,
        reference_magnitude_mask,
        _magnitude_cases(),
        hint="k = int(round(sparsity * weight.numel())) pruned; keep = the top "
        "weight.numel() - k of weight.abs().flatten() (topk), as a bool mask of weight's shape.",
        run=_run,
        compare=_magnitude_problem,
        arg_names=("weight", "sparsity"),
        forbid=FORBID,
    )


# --------------------------------------------------------------------------------------------
# global_magnitude_masks


def _layers(seed: int, shapes: dict[str, tuple[int, int, float]]) -> dict[str, torch.Tensor]:
    return {
        name: randn(r, c, seed=seed + i, scale=scale)
        for i, (name, (r, c, scale)) in enumerate(shapes.items())
    }


def _global_cases() -> list[Case]:
    three = {"attn.q_proj": (8, 16, 1.0), "attn.k_proj": (16, 16, 0.2), "mlp.up_proj": (24, 8, 3.0)}
    return [
        Case("3 layers of scales 1, 0.2 and 3, sparsity 0.5", (_layers(210, three), 0.5)),
        Case(
            "2 layers of scales 0.05 and 0.01, sparsity 0.7",
            (_layers(220, {"fc1": (12, 20, 0.05), "fc2": (20, 12, 0.01)}), 0.7),
        ),
        Case(
            "3 layers, 632 weights in all, sparsity 0.33: 208.56 to prune, rounded to 209",
            (_layers(230, {"a": (8, 25, 1.0), "b": (12, 16, 0.5), "c": (16, 15, 2.0)}), 0.33),
            hint="count the pruned weights over ALL the layers together: "
            "int(round(sparsity * total)) with total = sum of the layers' numel().",
        ),
        Case(
            "one layer: the same mask as magnitude_mask, sparsity 0.6",
            (_layers(240, {"only": (10, 14, 1.0)}), 0.6),
        ),
        Case(
            "4 layers with one of scale 10, sparsity 0.25",
            (
                _layers(
                    250,
                    {"l0": (6, 8, 1.0), "l1": (6, 8, 1.0), "l2": (8, 6, 10.0), "l3": (8, 6, 0.1)},
                ),
                0.25,
            ),
        ),
    ]


def _global_slips(weights: dict, s: float) -> Iterator[tuple[dict, str]]:
    names = list(weights)
    a = {k: weights[k].detach().float().abs() for k in names}
    total = sum(t.numel() for t in a.values())
    keep = total - _pruned(s, total)

    def global_of(scores: dict) -> dict:
        flat = torch.cat([scores[k].flatten() for k in names])
        mask = _top_layer(flat, keep)
        out, start = {}, 0
        for k in names:
            out[k] = mask[start : start + a[k].numel()].view(a[k].shape)
            start += a[k].numel()
        return out

    yield (
        {k: _top_layer(a[k], a[k].numel() - _pruned(s, a[k].numel())) for k in names},
        f"every layer was pruned to the same share, {s:g}: you ran one threshold per layer "
        "(magnitude_mask on each); one threshold over all the layers' |w| together "
        "(torch.cat of the flattened |w|) prunes more where the weights are small",
    )
    mean = float(torch.cat([t.flatten() for t in a.values()]).mean())
    for op in (torch.gt, torch.ge):
        mask = {k: op(a[k], mean) for k in names}
        kept = sum(int(m.sum()) for m in mask.values())
        yield (
            mask,
            f"your threshold is the mean of all |w| ({mean:.4g}): it keeps {kept} of {total} "
            f"weights whatever the sparsity; the threshold is set by the count, "
            f"{_count_rule(s, total, 'total')} (topk, kthvalue or a sort of the |w|)",
        )
    for what, norm in (
        ("largest |w|", lambda t: t.amax()),
        ("L2 norm", lambda t: t.norm()),
        ("mean |w|", lambda t: t.mean()),
        ("std", lambda t: t.std()),
    ):
        yield (
            global_of({k: a[k] / norm(a[k]) for k in names}),
            f"you normalised each layer (divided by its {what}) before the global threshold: "
            "that makes the layers alike, which is what a per-layer threshold does; compare the "
            "raw |w| of all layers",
        )


def _global_problem(received: Any, expected: dict) -> str | None:
    got, want = received["out"], expected["out"]
    weights, s = received["inputs"]
    if not isinstance(got, dict):
        return (
            f"expected a dict of masks, one per layer (keys {list(want)}), received {describe(got)}"
        )
    if set(got) != set(want):
        return f"expected one mask per layer, keys {sorted(want)}; received keys {sorted(got)}"
    for name in want:
        problem = _mask_problem(got[name], want[name].shape, f"layer {name!r}'s")
        if problem is not None:
            return f"masks[{name!r}]: {problem}"
    got = {k: v.cpu() for k, v in got.items()}
    if all(torch.equal(got[k], want[k]) for k in want):
        return None
    for wrong, words in _global_slips(weights, s):
        if all(torch.equal(got[k], wrong[k]) for k in want):
            return words
    total = sum(t.numel() for t in want.values())
    kept, want_kept = (
        sum(int(t.sum()) for t in got.values()),
        sum(int(t.sum()) for t in want.values()),
    )
    if kept != want_kept:
        return (
            f"your masks keep {kept} of the {total} weights, {_off_by(kept, want_kept)}: "
            f"{_count_rule(s, total, 'total')}{_floor_note(s, total, kept)}"
        )
    lost = [
        (float(weights[k].abs()[want[k] & ~got[k]].max()), k)
        for k in want
        if (want[k] & ~got[k]).any()
    ]
    extra = [
        (float(weights[k].abs()[got[k] & ~want[k]].min()), k)
        for k in want
        if (got[k] & ~want[k]).any()
    ]
    (high, high_name), (low, low_name) = max(lost), min(extra)
    return (
        f"you pruned a weight of |w| {high:.4g} in {high_name!r} but kept one of |w| {low:.4g} "
        f"in {low_name!r}: keep the largest |w| over all the layers together"
    )


def check_global_magnitude_masks(global_magnitude_masks: Callable) -> CheckResult:
    """Check ``global_magnitude_masks(weights, sparsity) -> {name: mask}``."""
    return run_check(
        "global_magnitude_masks",
        global_magnitude_masks,
        reference_global_magnitude_masks,
        _global_cases(),
        hint="flat = torch.cat([w.abs().flatten() for w in weights.values()]); keep the top "
        "flat.numel() - int(round(sparsity * flat.numel())) of flat, then cut the flat mask "
        "back into one mask per layer (in the dict's order, .view(w.shape)).",
        run=_run,
        compare=_global_problem,
        arg_names=("weights", "sparsity"),
        forbid=FORBID,
    )


# --------------------------------------------------------------------------------------------
# input_norms


def _activations(tokens: int, features: int, seed: int, outliers: int = 0) -> torch.Tensor:
    x = randn(tokens, features, seed=seed)
    if outliers:
        x[:, :: features // outliers] *= 20.0
    return x


def _norm_cases() -> list[Case]:
    return [
        Case("x of 40 tokens x 12 features", (_activations(40, 12, 300),)),
        Case("a square x: 32 tokens x 32 features", (_activations(32, 32, 301),)),
        Case(
            "64 tokens x 16 features, 4 of them 20 times larger (outlier features)",
            (_activations(64, 16, 302, outliers=4),),
        ),
        Case("one token: the norms are |x|", (_activations(1, 10, 303),)),
        Case("fewer tokens than features: 5 x 48", (_activations(5, 48, 304),)),
        Case("x of scale 100: 20 tokens x 8 features", (100.0 * _activations(20, 8, 305),)),
    ]


def _norm_slips(x: torch.Tensor) -> Iterator[tuple[torch.Tensor, str]]:
    x = x.double()
    t = x.shape[0]
    yield (
        x.square().sum(0),
        "these are the squared norms, sum_t x[t, j]**2: take the square root. (Squaring the "
        "norms changes the Wanda mask: |W| * ||X||**2 weighs the activations twice as much "
        "as the weights)",
    )
    if t > 1:
        yield (
            x.square().mean(0).sqrt(),
            f"these are root-mean-squares, sqrt(mean_t x**2): the norm SUMS over the {t} tokens "
            f"(yours are the norms divided by sqrt({t})). The Wanda mask would be the same, "
            "one factor for every feature, but the values are not norms",
        )
    yield (
        x.abs().mean(0),
        "these are the means of |x| over the tokens: the L2 norm is sqrt(sum x**2)",
    )
    yield x.abs().sum(0), "these are the sums of |x| (L1 norms): the L2 norm is sqrt(sum x**2)"
    yield (
        x.abs().amax(0),
        "these are the largest |x| of each feature: the L2 norm is sqrt(sum x**2)",
    )
    if t > 1:
        yield (
            x.std(0),
            "these are the standard deviations over the tokens: the L2 norm is sqrt(sum x**2), the mean not removed",
        )
    if x.shape[0] == x.shape[1]:
        yield (
            x.square().sum(1).sqrt(),
            "you took the norm over dim 1, one per TOKEN: each feature's norm runs over the "
            "tokens, dim 0 (x.norm(dim=0))",
        )


def _norm_problem(received: Any, expected: dict) -> str | None:
    got, want = received["out"], expected["out"]
    (x,) = received["inputs"]
    tokens, features = x.shape
    if isinstance(got, torch.Tensor) and got.shape != want.shape:
        if got.shape == (tokens,):
            return (
                f"received shape ({tokens},), one value per TOKEN: you took the norm over dim 1 "
                f"(the features); each feature's norm runs over the tokens, dim 0, shape ({features},)"
            )
        if got.shape == (1, features):
            return f"received shape (1, {features}): drop the kept dim (keepdim=False), shape ({features},)"
        if got.dim() == 0:
            return f"received a single number, the norm of the whole x: return one norm per input feature, shape ({features},)"
    if isinstance(got, torch.Tensor) and got.shape == want.shape and got.dtype == torch.float64:
        got = got.float()  # float64 arithmetic is fine
    problem = compare_tensors(got, want, atol=NORM_ATOL, rtol=NORM_RTOL)
    if problem is None or not isinstance(got, torch.Tensor) or got.shape != want.shape:
        return problem
    if not got.is_floating_point():
        return problem
    value = got.detach().double().cpu()
    for wrong, words in _norm_slips(x):
        if torch.allclose(value, wrong, atol=1e-4, rtol=1e-4):
            return words
    return problem


def check_input_norms(input_norms: Callable) -> CheckResult:
    """Check ``input_norms(x) -> norms``: (tokens, in) -> (in,), float32."""
    return run_check(
        "input_norms",
        input_norms,
        reference_input_norms,
        _norm_cases(),
        hint="return x.float().norm(dim=0), i.e. (x ** 2).sum(dim=0).sqrt(): one L2 norm per "
        "input feature (column), over the tokens (rows).",
        run=_run,
        compare=_norm_problem,
        arg_names=("x",),
        forbid=FORBID,
    )


# --------------------------------------------------------------------------------------------
# wanda_mask


def _norms(features: int, seed: int, outliers: int = 2) -> torch.Tensor:
    """Positive input norms, ``outliers`` of them 20 times the others, without ties."""
    norm = 1.0 + randn(features, seed=seed).abs()
    if outliers:
        norm[
            torch.randperm(features, generator=torch.Generator().manual_seed(seed))[:outliers]
        ] *= 20.0
    return norm


def _wanda_cases() -> list[Case]:
    def case(name, rows, cols, s, seed, outliers=2, hint=""):
        return Case(
            name, (randn(rows, cols, seed=seed), _norms(cols, seed + 1, outliers), s), hint=hint
        )

    axis_hint = (
        "score = weight.abs() * input_norm[None, :] (input_norm has one entry per INPUT "
        "feature, a column of weight, broadcast over the rows); keep, in every row, the top "
        "in_features - int(round(sparsity * in_features)) scores (topk along dim=1)."
    )
    return [
        case("a square (16, 16) weight, 2 outlier input features, sparsity 0.5", 16, 16, 0.5, 400, hint=axis_hint),
        case("a (12, 20) weight, 3 outlier features, sparsity 0.3", 12, 20, 0.3, 402, 3, hint=axis_hint),
        case(
            "a (6, 14) weight, sparsity 0.45: 6.3 per row to prune, rounded to 6",
            6, 14, 0.45, 404,
            hint="each row prunes int(round(sparsity * in_features)) = round(6.3) = 6 and keeps "
            "14 - 6 = 8 (int(0.55 * 14) = 7 truncates).",
        ),
        case(
            "sparsity 0: every weight kept",
            5, 8, 0.0, 406,
            hint="nothing is pruned at sparsity 0: torch.kthvalue(x, 0) is out of range, so "
            "handle k = 0 apart (or use topk of the kept count).",
        ),
        case("a (32, 24) weight, no outlier features, sparsity 0.75", 32, 24, 0.75, 408, 0, hint=axis_hint),
        case("a (4, 40) weight, 5 outlier features, sparsity 0.6", 4, 40, 0.6, 410, 5, hint=axis_hint),
    ]  # fmt: skip


def _wanda_slips(
    w: torch.Tensor, norm: torch.Tensor, s: float
) -> Iterator[tuple[torch.Tensor, str]]:
    rows, cols = w.shape
    keep = cols - _pruned(s, cols)
    a, norm = w.abs().float(), norm.float()
    score = a * norm[None, :]
    yield (
        _top(a, keep),
        "your mask is the per-row magnitude mask, as if input_norm were not there: either it "
        "is not used, or it multiplies the ROWS (input_norm[:, None]: one factor per output "
        "row, which changes no ranking within a row). It holds one norm per INPUT feature, "
        "column j: score |W_ij| * input_norm[j]",
    )
    yield (
        _top_layer(a, rows * keep),
        "your mask is the layer's magnitude mask (exercise 1): it ignores input_norm and "
        "compares the whole layer. Score |W_ij| * input_norm[j], compared within each row",
    )
    yield (
        _top_layer(score, rows * keep),
        f"you compared the scores over the whole layer: Wanda compares within each output row, "
        f"so that every row keeps exactly {keep} of its {cols} weights (topk along dim=1)",
    )
    yield (
        _top(w.float() * norm[None, :], keep),
        "you scored the signed weights, W_ij * ||X_j||: a large negative weight gets a low "
        "score and is pruned; score |W_ij| * ||X_j||",
    )
    yield (
        _top(score.T, rows - _pruned(s, rows)).T,
        "you compared within each input COLUMN (dim 0): Wanda compares the weights of each "
        "output row (topk along dim=1), the weights that add up to one output",
    )
    yield (
        _top(a * norm[None, :].square(), keep),
        "you squared the norms, |W_ij| * ||X_j||**2: that is not the same ranking (it weighs "
        "the activations twice); the score is |W_ij| * ||X_j||",
    )


def _wanda_problem(received: Any, expected: dict) -> str | None:
    got, want = received["out"], expected["out"]
    w, norm, s = received["inputs"]
    problem = _mask_problem(got, want.shape)
    if problem is not None or torch.equal(got.cpu(), want):
        return problem
    got = got.cpu()
    slip = _first_match(got, _wanda_slips(w, norm, s))
    if slip is not None:
        return slip
    rows, cols = w.shape
    keep = cols - _pruned(s, cols)
    per_row = got.sum(1)
    bad = (per_row != keep).nonzero()
    if len(bad):
        i = int(bad[0])
        kept = int(per_row[i])
        return (
            f"row {i} keeps {kept} of its {cols} weights, {_off_by(kept, keep)}: in every row, "
            f"{_count_rule(s, cols, 'in_features')}{_floor_note(s, cols, kept)}"
        )
    score = w.abs().float() * norm.float()[None, :]
    return _wrong_choice(got, want, score, "score |W_ij| * input_norm[j]")


def check_wanda_mask(wanda_mask: Callable) -> CheckResult:
    """Check ``wanda_mask(weight, input_norm, sparsity) -> mask``: bool, the weight's shape."""
    return run_check(
        "wanda_mask",
        wanda_mask,
        reference_wanda_mask,
        _wanda_cases(),
        hint="score = weight.abs() * input_norm[None, :]; keep, in every row, the top "
        "in_features - int(round(sparsity * in_features)) scores (topk along dim=1, then "
        "scatter True into a bool mask).",
        run=_run,
        compare=_wanda_problem,
        arg_names=("weight", "input_norm", "sparsity"),
        forbid=FORBID,
    )


# --------------------------------------------------------------------------------------------
# n_m_mask


def _nm_cases() -> list[Case]:
    def scores(rows, cols, seed, signed=False):
        x = randn(rows, cols, seed=seed)
        return x if signed else x.abs()

    return [
        Case("(8, 16) scores, 2:4", (scores(8, 16, 500), 2, 4)),
        Case("(6, 24) scores, 2:4", (scores(6, 24, 501), 2, 4)),
        Case("(3, 16) scores, 1:4", (scores(3, 16, 502), 1, 4)),
        Case("(5, 32) scores, 4:8", (scores(5, 32, 503), 4, 8)),
        Case("(4, 12) scores, the defaults n=2, m=4", (scores(4, 12, 504),)),
        Case(
            "(6, 16) signed scores (some negative), 2:4",
            (scores(6, 16, 505, signed=True), 2, 4),
            hint="rank the scores as they are: a score of -3 is LOWER than 0.1 (no .abs(); the "
            "caller passes |W| or Wanda's scores).",
        ),
        Case("(2, 18) scores, 3:6", (scores(2, 18, 506), 3, 6)),
    ]


def _nm_args(inputs: tuple) -> tuple[torch.Tensor, int, int]:
    sc, *rest = inputs
    n, m = (rest + [2, 4][len(rest) :])[:2]
    return sc, n, m


def _nm_slips(sc: torch.Tensor, n: int, m: int) -> Iterator[tuple[torch.Tensor, str]]:
    rows, cols = sc.shape
    blocks = sc.reshape(rows, -1, m)
    yield (
        _top(-blocks, n).view(rows, cols),
        f"your mask keeps the LOWEST {n} scores of each block: keep the highest (topk)",
    )
    if rows % m == 0:
        yield (
            _top(sc.T.reshape(cols, -1, m), n).view(cols, rows).T,
            f"your blocks run down the columns (along the output dim): an N:M block is {m} "
            "consecutive entries of a ROW, along the input dim (scores.reshape(rows, -1, m))",
        )
    if cols // m > 1:
        yield (
            _top(sc.reshape(rows, m, -1).transpose(1, 2), n).transpose(1, 2).reshape(rows, cols),
            f"your blocks take every {cols // m}-th column (scores.reshape(rows, m, -1)): a block "
            f"is {m} CONSECUTIVE columns, scores.reshape(rows, -1, m) (columns 0 to {m - 1}, "
            f"{m} to {2 * m - 1}, ...)",
        )
    yield (
        _top(sc, n),
        f"you kept the {n} highest scores of each whole row: keep {n} in EVERY block of {m} "
        "consecutive entries",
    )
    share = cols * n // m
    yield (
        _top(sc, share),
        f"you kept the {share} highest scores of each row, anywhere in it: the count is right "
        f"but N:M needs exactly {n} in every block of {m} consecutive entries",
    )
    yield (
        _top(blocks.abs(), n).view(rows, cols),
        "you ranked |scores|: the scores are used as they are, and a negative score is low",
    )


def _nm_problem(received: Any, expected: dict) -> str | None:
    got, want = received["out"], expected["out"]
    sc, n, m = _nm_args(received["inputs"])
    problem = _mask_problem(got, want.shape, "the scores'")
    if problem is not None or torch.equal(got.cpu(), want):
        return problem
    got = got.cpu()
    slip = _first_match(got, _nm_slips(sc, n, m))
    if slip is not None:
        return slip
    rows, cols = sc.shape
    per_block = got.reshape(rows, -1, m).sum(-1)
    bad = (per_block != n).nonzero()
    if len(bad):
        i, b = int(bad[0, 0]), int(bad[0, 1])
        return (
            f"in row {i}, columns {b * m} to {b * m + m - 1} keep {int(per_block[i, b])} of "
            f"{m} entries: "
            f"every block of {m} consecutive columns, aligned at column 0 (0 to {m - 1}, {m} to "
            f"{2 * m - 1}, ...), keeps exactly n = {n}"
        )
    return _wrong_choice(got, want, sc.float(), "score")


def check_n_m_mask(n_m_mask: Callable) -> CheckResult:
    """Check ``n_m_mask(scores, n=2, m=4) -> mask``: bool, the scores' shape."""
    return run_check(
        "n_m_mask",
        n_m_mask,
        reference_n_m_mask,
        _nm_cases(),
        hint="blocks = scores.reshape(rows, -1, m); idx = blocks.topk(n, dim=-1).indices; "
        "scatter True at idx into a bool tensor of blocks' shape, then .view(scores.shape).",
        run=_run,
        compare=_nm_problem,
        arg_names=("scores", "n", "m"),
        forbid=FORBID,
    )
