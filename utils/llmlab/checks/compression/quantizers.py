"""Checks of chapter 05's quantizers lab (``solutions/05_compression/01_quantizers.ipynb``).

    lab 01_quantizers: absmax_quantize, zeropoint_quantize, dequantize

``w`` is a float32 weight matrix, rows = output channels and columns = inputs (``nn.Linear``'s
layout). A **block** shares one scale: each row when ``group_size`` is None, else each run of
``group_size`` consecutive columns of a row (``group_size`` divides the columns in every case).

- ``absmax_quantize(w, bits, group_size=None) -> (codes, scale)``: symmetric, with
  ``top = 2**(bits - 1) - 1``: ``scale = max|block| / top`` and
  ``codes = clamp(round(w / scale), -top, top)``.
- ``zeropoint_quantize(w, bits, group_size=None) -> (codes, scale, zero)``: asymmetric, with
  ``top = 2**bits - 1``; each block's range is widened to hold 0, ``low = min(min(block), 0)``
  and ``high = max(max(block), 0)``; ``scale = (high - low) / top``,
  ``zero = clamp(round(-low / scale), 0, top)`` and
  ``codes = clamp(round(w / scale) + zero, 0, top)``.
- ``dequantize(codes, scale, zero=None, group_size=None) -> w_hat``: ``(codes - zero) * scale``
  per block (``codes * scale`` when ``zero`` is None), a float32 tensor of the codes' shape.

The conventions are those of :class:`llmlab.compress.quant.Quantized`:

- ``codes`` have ``w``'s shape; any integer dtype is accepted, and so is a float tensor that
  holds whole numbers (the reference stores int16).
- ``scale`` is a float tensor shaped to broadcast against the blocked weight: ``(rows, 1)`` per
  row, ``(rows, cols // group_size, 1)`` per group (``w`` viewed as ``(rows, cols // group_size,
  group_size)``). It is compared at float32 precision (relative 1e-5). ``zero`` has the scale's
  shape and holds whole numbers, of any dtype.
- A block of zeros gets scale 1 (and zero point 0): its codes are 0 and nothing is divided by 0.
- Per tensor is no argument: a tensor is one block once seen as one row, ``w.reshape(1, -1)``
  (the lab does that; a case passes a one-row ``w``). ``dequantize`` also takes a ``(1, 1)``
  scale, which broadcasts over every row.
- Rounding is ``torch.round``, which sends a tie to the even neighbour (2.5 -> 2, 3.5 -> 4,
  -2.5 -> -2), as ``torch.quantize_per_channel`` does. Ties are tested where ``w / scale`` is
  exactly ``k + 0.5``: the "exact halves" cases, built so that every scale is exactly 1. A code
  one step off where ``w / scale`` lies within 1e-4 of a half, not on it, is accepted: an
  equivalent formula (float64, a reciprocal) may round such a value the other way.

The cases catch the usual slips, and the message names the slip when the answer matches it:
the scale from ``max`` instead of ``max|.|`` (a row whose extreme weight is negative), a divisor
of ``2**(bits - 1)`` instead of ``2**(bits - 1) - 1`` (``2**bits`` instead of ``2**bits - 1``
for zero-point), one scale for the whole tensor, groups that take every n-th column instead
of consecutive ones (the reshape order), no clamp where one acts, floor or trunc instead of
round, half-up rounding at exact halves, a zero point that is not rounded or not clamped, a
range not widened to hold 0 (an all-positive row), an all-zero row (0 / 0 = NaN), and in
``dequantize`` a forgotten or added zero point, the zero point subtracted after scaling, uint8
arithmetic that wraps around, and group scales repeated along the row instead of interleaved.

Clamps that never act are not asked for. In absmax, ``|w / scale| <= top`` by construction, so
``round`` cannot leave ``[-top, top]``. In zero-point, once the range holds 0, ``-low / scale``
lies in ``[0, top]``: the zero point's clamp acts only on a zero point computed from an
unwidened minimum (a case has one). The codes' clamp acts at a tie: ``round(153.5) +
round(101.5) = 154 + 102 = 256`` at 8 bits (a case has it).

Each ``check_NAME(fn)`` prints one line and returns a :class:`llmlab.checks.CheckResult`
whose ``.fn`` the lab keeps using::

    absmax_quantize = check_absmax_quantize(absmax_quantize).fn

The references delegate to :mod:`llmlab.compress.quant`; an answer that calls it, or PyTorch's
own quantizers, is flagged. Inputs come from :mod:`llmlab.checks._inputs` and fixed tensors, so
a check never moves the notebook's seed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from llmlab.checks import Case, CheckResult, compare_tensors, describe, run_check
from llmlab.checks._inputs import randn
from llmlab.compress.quant import Quantized, quantize

#: The package's quantizers and PyTorch's compute the answers: an answer that calls them is
#: flagged.
FORBID_QUANT = (
    "llmlab.compress",
    "torch.quantize_per_tensor",
    "torch.quantize_per_tensor_dynamic",
    "torch.quantize_per_channel",
    "torch.fake_quantize_per_tensor_affine",
    "torch.fake_quantize_per_channel_affine",
    "torch.dequantize",
    "torch.Tensor.dequantize",
    "torch.ao.quantization",
)

#: A code may differ by one step where w / scale lies this close to a half (but not on it).
NEAR_TIE = 1e-4

#: Relative tolerance on scales (float32 arithmetic done another way stays well inside it).
SCALE_RTOL = 1e-5

# --------------------------------------------------------------------------------------------
# References


def _granularity(group_size: int | None) -> str:
    return "channel" if group_size is None else "group"


def reference_absmax_quantize(
    w: torch.Tensor, bits: int, group_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, scale): int16 codes of w's shape, a float32 scale per row or per group."""
    q = quantize(
        w, bits, scheme="absmax", granularity=_granularity(group_size), group_size=group_size
    )
    return q.codes, q.scale


def reference_zeropoint_quantize(
    w: torch.Tensor, bits: int, group_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes, scale, zero): int16 codes, float32 scales and int16 zero points per block."""
    q = quantize(
        w, bits, scheme="zeropoint", granularity=_granularity(group_size), group_size=group_size
    )
    return q.codes, q.scale, q.zero


def reference_dequantize(
    codes: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor | None = None,
    group_size: int | None = None,
) -> torch.Tensor:
    """(codes - zero) * scale per block (codes * scale without a zero point), in scale's dtype."""
    q = Quantized(
        codes=codes,
        scale=scale,
        zero=zero,
        bits=8,  # unused by dequantize
        scheme="absmax" if zero is None else "zeropoint",
        granularity=_granularity(group_size),
        group_size=group_size,
        dtype=scale.dtype,
    )
    return q.dequantize()


# --------------------------------------------------------------------------------------------
# Blocks, and where a value sits in words


def _blocked(t: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """``t`` (rows, cols) viewed with each block on the last axis."""
    if group_size is None:
        return t
    rows, cols = t.shape
    return t.reshape(rows, cols // group_size, group_size)


def _per_weight(t: torch.Tensor, group_size: int | None, shape: torch.Size) -> torch.Tensor:
    """A per-block tensor (a scale, a zero point) spread over the weights: shape ``shape``."""
    if group_size is None:
        return torch.broadcast_to(t, shape)
    rows, cols = shape
    return t.expand(rows, cols // group_size, group_size).reshape(rows, cols)


def _nonzero(scale: torch.Tensor) -> torch.Tensor:
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def _top(scheme: str, bits: int) -> int:
    return 2 ** (bits - 1) - 1 if scheme == "absmax" else 2**bits - 1


def _first(mask: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in mask.nonzero()[0])


def _block_name(index: tuple[int, ...], group_size: int | None) -> str:
    """``row 2`` or ``row 2, columns 8 to 11`` for a scale's index."""
    if group_size is None:
        return f"row {index[0]}"
    j = index[1]
    return f"row {index[0]}, columns {j * group_size} to {(j + 1) * group_size - 1}"


def _close(received: torch.Tensor, expected: torch.Tensor, rtol: float = SCALE_RTOL) -> bool:
    return bool(((received - expected).abs() <= rtol * expected.abs() + 1e-30).all())


class _Answer(tuple):
    """The reference's answer, carrying the case's inputs so that the comparison can say
    which slip explains a mismatch (the student's function returns a plain tuple)."""

    inputs: dict[str, Any]

    def __new__(cls, values: tuple, inputs: dict[str, Any]) -> _Answer:
        answer = super().__new__(cls, values)
        answer.inputs = inputs
        return answer


# --------------------------------------------------------------------------------------------
# Comparing (codes, scale[, zero]) in plain words


def _scale_slips(w: torch.Tensor, scheme: str, bits: int, g: int | None) -> Iterator:
    """(what a slip gives as scales, the words that name it), the usual slips in turn."""
    top = _top(scheme, bits)
    x = _blocked(w, g)
    block = "row" if g is None else "group"
    if scheme == "absmax":
        peak = x.abs().amax(-1, keepdim=True)
        yield (
            _nonzero(peak / (top + 1)),
            f"every scale is max|w| / {top + 1}: you divided by 2**(bits-1) = {top + 1}; divide "
            f"by 2**(bits-1) - 1 = {top}, the largest code, so that the largest weight maps to "
            f"code {top}",
        )
        high = x.amax(-1, keepdim=True)
        negative = (x.amin(-1, keepdim=True).abs() > high).squeeze(-1)
        where = ""
        if negative.any():
            i = _first(negative)
            extreme = float(x[i].amin())
            where = (
                f": in {_block_name(i, g)} the weight of largest magnitude is {extreme:.4g}, "
                f"so its scale is {-extreme:.4g} / {top}, not {float(x[i].amax()):.4g} / {top}"
            )
        yield (
            _nonzero(high / top),
            f"your scale is max(w) / {top} per {block}; it must be the largest MAGNITUDE, "
            f"max(|w|) / {top} (w.abs().amax(...)){where}",
        )
        whole = _nonzero(w.abs().amax() / top)
    else:
        low = x.amin(-1, keepdim=True).clamp(max=0.0)
        high = x.amax(-1, keepdim=True).clamp(min=0.0)
        yield (
            _nonzero((high - low) / (top + 1)),
            f"every scale is (high - low) / {top + 1}: you divided by 2**bits = {top + 1}; "
            f"divide by 2**bits - 1 = {top}: the codes 0 to {top} are {top} steps apart",
        )
        own_low, own_high = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
        one_sided = ((own_low > 0) | (own_high < 0)).squeeze(-1)
        where = ""
        if one_sided.any():
            i = _first(one_sided)
            lo, hi = float(x[i].amin()), float(x[i].amax())
            side = "positive" if lo > 0 else "negative"
            widened = f"[0, {hi:.4g}]" if lo > 0 else f"[{lo:.4g}, 0]"
            where = (
                f": {_block_name(i, g)} lies in [{lo:.4g}, {hi:.4g}], all {side}, so its range "
                f"is {widened}"
            )
        yield (
            _nonzero((own_high - own_low) / top),
            "your scale spans each block's own [min, max]; the range must hold 0, low = "
            "min(w.min(), 0) and high = max(w.max(), 0), so that the weight 0 is exactly a "
            f"code{where}",
        )
        whole = _nonzero((w.amax().clamp(min=0.0) - w.amin().clamp(max=0.0)) / top)
    yield (
        torch.full_like(x[..., :1], float(whole)),
        f"every {block} got the same scale, computed over the WHOLE tensor; each {block} needs "
        "its own: reduce over the last axis only (amax(dim=-1, keepdim=True))",
    )
    if g is not None:
        rows, cols = w.shape
        strided = w.reshape(rows, g, cols // g).transpose(1, 2)  # column j in group j % n
        if scheme == "absmax":
            scale = strided.abs().amax(-1, keepdim=True) / top
        else:
            low = strided.amin(-1, keepdim=True).clamp(max=0.0)
            scale = (strided.amax(-1, keepdim=True).clamp(min=0.0) - low) / top
        yield (
            _nonzero(scale),
            f"your groups are strided: each takes every {cols // g}-th column of a row "
            "(w.reshape(rows, group_size, -1) reduced over dim 1); a group is group_size "
            "CONSECUTIVE columns: w.reshape(rows, cols // group_size, group_size), reduced over "
            "the last axis",
        )


def _scale_problem(scale: torch.Tensor, want: torch.Tensor, inputs: dict[str, Any]) -> str | None:
    w, bits, g, scheme = inputs["w"], inputs["bits"], inputs["group_size"], inputs["scheme"]
    rows, cols = w.shape
    per = "row" if g is None else f"group of {g} consecutive columns"
    if tuple(scale.shape) != tuple(want.shape):
        what = (
            f"scale: expected shape {tuple(want.shape)} (one per {per}), received shape "
            f"{tuple(scale.shape)}"
        )
        if scale.numel() == 1:
            return f"{what}: one scale for the whole tensor; each {per} needs its own"
        if g is not None and scale.numel() == rows:
            return f"{what}: one scale per row; with group_size set, each group gets its own"
        if scale.numel() == want.numel():
            return (
                f"{what}: the right number of scales, shaped otherwise; keep the reduced axis "
                "(amax(dim=-1, keepdim=True)) on the blocked view of w"
            )
        return what
    if scale.dtype == torch.bool or not scale.is_floating_point():
        return (
            f"scale: expected a float tensor, received {describe(scale)} (a scale is a "
            "fraction: divide in floating point)"
        )
    s, t = scale.detach().double(), want.double()
    if _close(s, t):
        return None
    zeros = (_blocked(w, g).abs().amax(-1, keepdim=True) == 0).squeeze(-1)
    wrong = ~((s - t).abs() <= SCALE_RTOL * t.abs()).squeeze(-1)
    if (zeros & wrong).any():
        i = _first(zeros & wrong)
        value = float(s[i])
        if not value or value != value:
            return (
                f"scale of {_block_name(i, g)}, a block of zeros: received {value:g}, which "
                "makes its codes 0 / 0 = NaN; give a block of zeros scale 1: "
                "torch.where(scale > 0, scale, 1)"
            )
        return (
            f"scale of {_block_name(i, g)}, a block of zeros: expected 1, received {value:.4g}; "
            "a block of zeros gets scale 1 (its codes are then 0 / 1 = 0), not an epsilon: "
            "torch.where(scale > 0, scale, 1)"
        )
    for alternative, words in _scale_slips(w, scheme, bits, g):
        if _close(s, alternative.double()):
            return f"scale: {words}"
    bad = ~s.isfinite() | (s <= 0)
    if bad.any():
        i = _first(bad.squeeze(-1))
        return (
            f"scale of {_block_name(i, g)}: received {float(s[i]):.4g}; a scale is a positive "
            "number"
        )
    i = _first(wrong)
    return (
        f"scale of {_block_name(i, g)}: expected {float(t[i]):.6g}, received {float(s[i]):.6g} "
        f"({int(wrong.sum())} of {t.numel()} scales differ)"
    )


def _whole_numbers(name: str, t: torch.Tensor, where: Any) -> str | None:
    """Why ``t`` is not a tensor of whole numbers, or None. ``where(index)`` names a place."""
    if t.dtype == torch.bool or t.is_complex():
        return f"{name}: expected whole numbers, received {describe(t)}"
    v = t.detach().double()
    if v.isnan().any():
        i = _first(v.isnan())
        return f"{name}: NaN at {int(v.isnan().sum())} of {v.numel()} positions, first {where(i)}"
    if v.isinf().any():
        i = _first(v.isinf())
        return f"{name}: {float(v[i]):g} {where(i)}"
    fraction = (v - v.round()).abs() > 1e-6
    if fraction.any():
        i = _first(fraction)
        return f"{name}: received {float(v[i]):.6g} {where(i)}, not a whole number"
    return None


def _is_tie(x: torch.Tensor) -> torch.Tensor:
    return (x - x.floor()) == 0.5


def _near_tie(x: torch.Tensor) -> torch.Tensor:
    return ((x - x.floor() - 0.5).abs() < NEAR_TIE) & ~_is_tie(x)


def _zero_problem(zero: torch.Tensor, want: torch.Tensor, inputs: dict[str, Any]) -> str | None:
    w, bits, g = inputs["w"], inputs["bits"], inputs["group_size"]
    top = 2**bits - 1
    if tuple(zero.shape) != tuple(want.shape):
        return (
            f"zero: expected the scale's shape {tuple(want.shape)}, received shape "
            f"{tuple(zero.shape)}"
        )

    def where(i: tuple[int, ...]) -> str:
        return f"for {_block_name(i[:-1], g)}"

    problem = _whole_numbers("zero", zero, where)
    if problem:
        return (
            f"{problem}: round it, zero = round(-low / scale), so that the weight 0 is "
            "exactly the code `zero`"
        )
    z, t = zero.detach().double(), want.double()
    if ((z < 0) | (z > top)).any():
        i = _first((z < 0) | (z > top))
        return (
            f"zero {where(i)}: received {float(z[i]):g}, outside [0, {top}]: clamp it to "
            f"[0, 2**bits - 1] (computed from low = min(w.min(), 0), -low / scale always lies "
            "in that range)"
        )
    x = _blocked(w, g)
    scale = _nonzero(
        (x.amax(-1, keepdim=True).clamp(min=0.0) - x.amin(-1, keepdim=True).clamp(max=0.0)) / top
    )
    offset = -x.amin(-1, keepdim=True).clamp(max=0.0) / scale  # -low / scale, as the reference
    wrong = (z != t) & ~(_near_tie(offset.double()) & ((z - t).abs() == 1))
    if not wrong.any():
        return None
    i = _first(wrong)
    if bool(_is_tie(offset)[i]):
        return (
            f"zero {where(i)}: -low / scale = {float(offset[i]):g} is exactly a half; "
            f"torch.round gives the even neighbour {float(t[i]):g}, yours {float(z[i]):g}"
        )
    return (
        f"zero {where(i)}: expected {float(t[i]):g}, received {float(z[i]):g} (zero = "
        f"round(-low / scale) with low = min(w.min(), 0), here -low / scale = "
        f"{float(offset[i]):.4g})"
    )


def _codes_problem(
    codes: torch.Tensor, inputs: dict[str, Any], scale: torch.Tensor, zero: torch.Tensor | None
) -> str | None:
    """``scale``: the reference's; ``zero``: the student's, already found right."""
    w, bits, g, scheme = inputs["w"], inputs["bits"], inputs["group_size"], inputs["scheme"]
    top = _top(scheme, bits)
    if tuple(codes.shape) != tuple(w.shape):
        what = f"codes: expected w's shape {tuple(w.shape)}, received shape {tuple(codes.shape)}"
        if codes.numel() == w.numel():
            return f"{what}: reshape the codes back to w's shape"
        return what

    def where(i: tuple[int, ...]) -> str:
        return f"at index {i} (w = {float(w[i]):.4g})"

    problem = _whole_numbers("codes", codes, where)
    if problem:
        zero_rows = (w.abs().amax(-1) == 0).nonzero()
        if "NaN" in problem and len(zero_rows):
            return (
                f"{problem}: row {int(zero_rows[0])} is all zeros, so w / scale is 0 / 0; give "
                "a block of zeros scale 1"
            )
        return f"{problem}: round w / scale with torch.round (a code is an integer)"
    c = codes.detach().double()
    x = w / _per_weight(scale, g, w.shape)  # float32, as the reference divides
    z = 0.0 if zero is None else _per_weight(zero.double(), g, w.shape)
    low = -top if scheme == "absmax" else 0
    expected = (torch.round(x).double() + z).clamp(low, top)
    wrong = (c != expected) & ~(_near_tie(x) & ((c - expected).abs() == 1))
    if not wrong.any():
        return None

    slips = [
        (torch.floor(x).double() + z, "your codes are rounded down (floor)"),
        (torch.trunc(x).double() + z, "your codes are rounded toward zero (trunc, or a cast "
         "with .int() / .long())"),
    ]  # fmt: skip
    if scheme == "zeropoint":
        blocks = _blocked(w, g)
        low_per_weight = _per_weight(blocks.amin(-1, keepdim=True).clamp(max=0.0), g, w.shape)
        shifted = torch.round((w - low_per_weight) / _per_weight(scale, g, w.shape))
        slips += [
            (torch.round(x).double(), "your codes lack the zero point: codes = round(w / scale) "
             "+ zero, then clamp to [0, 2**bits - 1]"),
            (shifted.double(), "your codes are round((w - low) / scale), which rounds the "
             "block's offset together with each weight; round the zero point on its own: "
             "round(w / scale) + zero, so that the weight 0 gets exactly the code `zero`"),
        ]  # fmt: skip

    def mine(i: tuple[int, ...]) -> str:
        rule = "torch.round(w / scale)"
        if scheme == "zeropoint":
            rule += f" + zero = {float(torch.round(x[i])):g} + {float(z[i]):g}"
        return f"yours is {float(c[i]):g}, where {rule} = {float(expected[i]):g}"

    for alternative, words in slips:
        for candidate in (alternative.clamp(low, top), alternative):
            if torch.equal(c, candidate):
                i = _first(wrong)
                return f"codes: {words}: at index {i}, w / scale = {float(x[i]):.4g}: {mine(i)}"
    outside = (c < low) | (c > top)
    if outside.any():
        i = _first(outside)
        after = " after adding the zero point" if scheme == "zeropoint" else ""
        return (
            f"codes: received {float(c[i]):g} {where(i)}, outside [{low}, {top}]: clamp the "
            f"codes to [{low}, {top}]{after}"
        )
    if _is_tie(x)[wrong].all():
        i = _first(wrong)
        return (
            f"codes: at exact halves yours round away from the even neighbour: w / scale = "
            f"{float(x[i]):g} {where(i)}: {mine(i)} (a tie goes to the even code: 2.5 -> 2, "
            "3.5 -> 4, -2.5 -> -2)"
        )
    i = _first(wrong)
    return (
        f"codes: {int(wrong.sum())} of {c.numel()} differ; first {where(i)}, where w / scale = "
        f"{float(x[i]):.4g}: {mine(i)}"
    )


def _compare_quantized(received: Any, expected: _Answer) -> str | None:
    inputs = expected.inputs
    names = ("codes", "scale") if inputs["scheme"] == "absmax" else ("codes", "scale", "zero")
    if not isinstance(received, (tuple, list)) or len(received) != len(names):
        return f"expected a tuple ({', '.join(names)}), received {describe(received)}"
    got, want = dict(zip(names, received, strict=True)), dict(zip(names, expected, strict=True))
    for name in names:
        if not isinstance(got[name], torch.Tensor):
            return f"{name}: expected a torch.Tensor, received {describe(got[name])}"
    problem = _scale_problem(got["scale"], want["scale"], inputs)
    if problem is None and "zero" in got:
        problem = _zero_problem(got["zero"], want["zero"], inputs)
    if problem is None:
        zero = got["zero"].detach().double() if "zero" in got else None
        problem = _codes_problem(got["codes"], inputs, want["scale"], zero)
    return problem


# --------------------------------------------------------------------------------------------
# The weights of the cases


def _rows(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def _zero_row(w: torch.Tensor, row: int) -> torch.Tensor:
    w = w.clone()
    w[row] = 0.0
    return w


def _zero_group(w: torch.Tensor) -> torch.Tensor:
    """``w`` with columns 4 to 7 of row 0 set to zero: one all-zero group of 4."""
    w = w.clone()
    w[0, 4:8] = 0.0
    return w


def _negative_peaks() -> torch.Tensor:
    """Rows whose weight of largest magnitude is negative, with a smaller positive maximum."""
    w = randn(4, 10, seed=51).abs()
    w[:, 3] = -torch.tensor([2.0, 3.5, 2.75, 4.0])
    w[:, 7] = -0.25
    return w


def _ranged(rows: int, cols: int, seed: int) -> torch.Tensor:
    """Rows of sizes spanning two orders of magnitude (one scale per row matters)."""
    return randn(rows, cols, seed=seed) * torch.logspace(-2, 0, rows)[:, None]


def _one_sided(seed: int) -> torch.Tensor:
    """Two all-positive rows, one all-negative row and a mixed one."""
    w = randn(4, 12, seed=seed).abs() + 0.5
    w[2] = -w[2]
    w[3, ::2] = -w[3, ::2]
    return w


def _group_skew(seed: int) -> torch.Tensor:
    """(3, 32) with each group of 8 of its own size and sign (groups of 8 matter)."""
    w = randn(3, 32, seed=seed)
    w[:, 8:16] = w[:, 8:16].abs() + 1.0  # an all-positive group
    w[:, 16:24] *= 0.05
    return w


# 8 bits, scale exactly 1: w / scale is w, and the ties are exact.
ABSMAX_HALVES = _rows(
    [127.0, 2.5, 3.5, -2.5, -3.5, 0.5, -0.5, 1.5, -126.5, 0.0],
    [-127.0, 4.5, 5.5, -4.5, 6.5, 100.5, -1.5, 0.25, 63.5, -64.5],
)
#: low = -100.5 and -50.5 (zero points 100 and 50, even: no tie overflows), scale 1.
ZEROPOINT_HALVES = _rows(
    [-100.5, 154.5, 2.5, 3.5, -2.5, -3.5, 0.5, -0.5, 10.25, 0.0],
    [-50.5, 204.5, 1.5, 7.5, -7.5, -49.5, 0.5, 100.5, -0.25, 0.0],
)
#: low = -101.5 and -1.5: the zero points 102 and 2 round up, and so does the top, 256 > 255.
ZEROPOINT_TOP = _rows(
    [-101.5, 153.5, 2.0, -3.0, 10.5, 0.0],
    [-1.5, 253.5, 100.0, 11.5, -0.5, 0.0],
)

# --------------------------------------------------------------------------------------------
# absmax_quantize


def _expected_absmax(w: torch.Tensor, bits: int, group_size: int | None = None) -> _Answer:
    inputs = {"w": w, "bits": bits, "group_size": group_size, "scheme": "absmax"}
    return _Answer(reference_absmax_quantize(w, bits, group_size), inputs)


ZERO_HINT = (
    "a block of zeros has max|w| = 0: give it scale 1 (torch.where(scale > 0, scale, 1)), so "
    "that its codes are 0 / 1 = 0 instead of 0 / 0 = NaN."
)
HALVES_HINT = (
    "torch.round sends a tie to the even neighbour: 2.5 -> 2, 3.5 -> 4, -2.5 -> -2 (as "
    "torch.quantize_per_channel rounds); floor(x + 0.5) rounds every half up."
)
GROUPS_HINT = (
    "a group is group_size CONSECUTIVE columns of one row: view w as (rows, cols // group_size, "
    "group_size) with w.reshape, reduce over the last axis with keepdim=True (scale shape "
    "(rows, cols // group_size, 1)), and reshape the codes back to w's shape."
)


def check_absmax_quantize(absmax_quantize: Any) -> CheckResult:
    """Check ``absmax_quantize(w, bits, group_size=None) -> (codes, scale)`` per row and per
    group, at 2, 4 and 8 bits, with a row of zeros and exact halves."""

    def case(name: str, w: torch.Tensor, bits: int, g: int | None = None, hint: str = "") -> Case:
        return Case(name, (w, bits, g), hint=hint)

    cases = [
        case("8 bits, one scale per row: 4 rows of 8", randn(4, 8, seed=50), 8),
        case(
            "rows whose weight of largest magnitude is negative",
            _negative_peaks(),
            8,
            hint="the scale comes from the largest MAGNITUDE, w.abs().amax(...): a row whose "
            "extreme weight is -4 needs scale 4 / 127, or -4 / scale falls outside the codes.",
        ),
        case(
            "4 bits (codes -7 to 7), rows of different sizes",
            _ranged(6, 12, seed=52),
            4,
            hint="top = 2**(bits-1) - 1 = 7 at 4 bits, and each row gets its own scale.",
        ),
        case("a row of zeros", _zero_row(randn(3, 8, seed=53), 1), 8, hint=ZERO_HINT),
        case("exact halves: w / scale = 2.5, 3.5, -2.5, ... (scale 1)", ABSMAX_HALVES, 8,
             hint=HALVES_HINT),
        case("one row: the whole tensor as one block, w.reshape(1, -1)",
             randn(1, 48, seed=54), 8),
        case("groups of 4 along each row: scale (3, 4, 1)", randn(3, 16, seed=55), 8, 4,
             hint=GROUPS_HINT),
        case("a group of zeros inside a row, groups of 4", _zero_group(randn(2, 16, seed=56)),
             8, 4, hint=ZERO_HINT),
        case("4 bits, groups of 8, groups of different sizes", _group_skew(58), 4, 8,
             hint=GROUPS_HINT),
        case("group_size = cols: one group per row, scale (5, 1, 1)", _ranged(5, 12, seed=59),
             8, 12),
        case("2 bits: codes -1, 0, 1", randn(4, 16, seed=60), 2,
             hint="top = 2**(bits-1) - 1 = 1 at 2 bits."),
    ]  # fmt: skip
    return run_check(
        "absmax_quantize",
        absmax_quantize,
        reference_absmax_quantize,
        cases,
        hint="top = 2**(bits-1) - 1; x = w, or w.reshape(rows, cols // group_size, group_size); "
        "scale = x.abs().amax(dim=-1, keepdim=True) / top (1 where that is 0); codes = "
        "torch.round(x / scale).clamp(-top, top), reshaped to w's shape.",
        compare=_compare_quantized,
        expect=_expected_absmax,
        forbid=FORBID_QUANT,
    )


# --------------------------------------------------------------------------------------------
# zeropoint_quantize


def _expected_zeropoint(w: torch.Tensor, bits: int, group_size: int | None = None) -> _Answer:
    inputs = {"w": w, "bits": bits, "group_size": group_size, "scheme": "zeropoint"}
    return _Answer(reference_zeropoint_quantize(w, bits, group_size), inputs)


def check_zeropoint_quantize(zeropoint_quantize: Any) -> CheckResult:
    """Check ``zeropoint_quantize(w, bits, group_size=None) -> (codes, scale, zero)`` per row
    and per group, at 2, 4 and 8 bits, with one-sided rows, a row of zeros and exact halves."""

    def case(name: str, w: torch.Tensor, bits: int, g: int | None = None, hint: str = "") -> Case:
        return Case(name, (w, bits, g), hint=hint)

    cases = [
        case("8 bits, one scale per row: 4 rows of 8", randn(4, 8, seed=70), 8),
        case(
            "all-positive and all-negative rows: the range is widened to hold 0",
            _one_sided(71),
            8,
            hint="low = min(w.min(), 0) and high = max(w.max(), 0) per block: a row in [0.5, 2] "
            "quantizes [0, 2], so that the weight 0 is exactly the code `zero`, and the zero "
            "point round(-low / scale) lies in [0, 2**bits - 1].",
        ),
        case(
            "4 bits (codes 0 to 15), rows of different sizes",
            _ranged(6, 12, seed=72) + 0.01,
            4,
            hint="top = 2**bits - 1 = 15 at 4 bits, and each row gets its own scale and zero.",
        ),
        case("a row of zeros", _zero_row(randn(3, 8, seed=73), 2), 8,
             hint="a block of zeros has high - low = 0: give it scale 1; its zero point is then "
             "0 and its codes 0, instead of 0 / 0 = NaN."),
        case("exact halves: w / scale = 2.5, 3.5, -2.5, ... (scale 1)", ZEROPOINT_HALVES, 8,
             hint="torch.round sends a tie to the even neighbour, in the codes and in the zero "
             "point: round(100.5) = 100, round(2.5) = 2, round(-3.5) = -4."),
        case("the top code: round(153.5) + round(101.5) = 256 at 8 bits", ZEROPOINT_TOP, 8,
             hint="clamp the codes to [0, 2**bits - 1] after adding the zero point: two halves "
             "rounded up (153.5 -> 154, the zero point 101.5 -> 102) reach 256."),
        case("one row: the whole tensor as one block, w.reshape(1, -1)",
             randn(1, 48, seed=74) + 0.3, 8),
        case("groups of 4 along each row: scale (3, 4, 1)", randn(3, 16, seed=75), 8, 4,
             hint=GROUPS_HINT),
        case("4 bits, groups of 8, an all-positive group", _group_skew(76), 4, 8,
             hint=GROUPS_HINT),
        case("2 bits: codes 0 to 3", randn(4, 16, seed=77), 2,
             hint="top = 2**bits - 1 = 3 at 2 bits."),
    ]  # fmt: skip
    return run_check(
        "zeropoint_quantize",
        zeropoint_quantize,
        reference_zeropoint_quantize,
        cases,
        hint="top = 2**bits - 1; per block low = min(min, 0), high = max(max, 0); scale = "
        "(high - low) / top (1 where that is 0); zero = round(-low / scale).clamp(0, top); "
        "codes = (torch.round(x / scale) + zero).clamp(0, top), reshaped to w's shape.",
        compare=_compare_quantized,
        expect=_expected_zeropoint,
        forbid=FORBID_QUANT,
    )


# --------------------------------------------------------------------------------------------
# dequantize


def _dequantize_slips(
    codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, g: int | None
) -> Iterator:
    """(what a slip gives, the words that name it)."""
    shape = codes.shape
    c = codes.double()
    s = _per_weight(scale.double(), g, shape)
    if zero is not None:
        z = _per_weight(zero.double(), g, shape)
        yield (
            c * s,
            "your values are codes * scale: subtract the zero point first, (codes - zero) * "
            "scale; without it each block is shifted by zero * scale",
        )
        yield (
            (c + z) * s,
            "you added the zero point: the codes are the weights shifted UP by `zero`, so "
            "subtract it: (codes - zero) * scale",
        )
        yield (
            c * s - z,
            "you subtracted the zero point after scaling (codes * scale - zero); it counts in "
            "codes, so subtract it before: (codes - zero) * scale",
        )
        kind = torch.result_type(codes, zero)
        if not kind.is_floating_point and not kind.is_signed:
            wrapped = (codes.to(kind) - zero.to(kind)).double()
            yield (
                _per_weight_product(wrapped, scale, g),
                f"(codes - zero) wrapped around in {str(kind).removeprefix('torch.')} "
                "(3 - 5 = 254 there): convert codes and zero to float (or a signed type) "
                "before subtracting",
            )
    if g is not None:
        rows, cols = shape
        repeated = scale.double().reshape(rows, cols // g).repeat(1, g)  # column j: group j % n
        base = c if zero is None else c - _per_weight(zero.double(), g, shape)
        if zero is not None:
            repeated_zero = zero.double().reshape(rows, cols // g).repeat(1, g)
            yield (
                (c - repeated_zero) * repeated,
                "your scales and zero points repeat along the row (.repeat(1, group_size): "
                "column j gets group j % n_groups); each group covers group_size CONSECUTIVE "
                "columns: .repeat_interleave(group_size, dim=1), or view the codes as (rows, "
                "cols // group_size, group_size)",
            )
        yield (
            base * repeated,
            "your scales repeat along the row (scale.repeat(1, group_size): column j gets "
            "group j % n_groups); each group covers group_size CONSECUTIVE columns: "
            "repeat_interleave(group_size, dim=1), or view the codes as (rows, cols // "
            "group_size, group_size)",
        )


def _per_weight_product(values: torch.Tensor, scale: torch.Tensor, g: int | None) -> torch.Tensor:
    return values * _per_weight(scale.double(), g, values.shape)


def _expected_dequantize(
    codes: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor | None = None,
    group_size: int | None = None,
) -> torch.Tensor:
    expected = reference_dequantize(codes, scale, zero, group_size)
    # the comparison names a slip from the inputs (a plain tensor takes an attribute)
    expected.llmlab_inputs = {
        "codes": codes,
        "scale": scale,
        "zero": zero,
        "group_size": group_size,
    }
    return expected


def _compare_dequantized(received: Any, expected: torch.Tensor) -> str | None:
    problem = compare_tensors(received, expected)
    if problem is None or not isinstance(received, torch.Tensor):
        return problem
    if received.shape != expected.shape or not received.is_floating_point():
        return problem
    inputs = expected.llmlab_inputs
    r = received.detach().double()
    for alternative, words in _dequantize_slips(
        inputs["codes"], inputs["scale"], inputs["zero"], inputs["group_size"]
    ):
        if alternative.shape == r.shape and torch.allclose(r, alternative, rtol=1e-5, atol=1e-6):
            return words
    return problem


def _stored(
    w: torch.Tensor, bits: int, scheme: str, granularity: str = "channel", group_size=None
) -> dict[str, Any]:
    """A quantized ``w`` as ``dequantize``'s arguments (codes int16, as the package stores)."""
    q = quantize(w, bits, scheme=scheme, granularity=granularity, group_size=group_size)
    return {"codes": q.codes, "scale": q.scale, "zero": q.zero, "group_size": group_size}


def check_dequantize(dequantize: Any) -> CheckResult:
    """Check ``dequantize(codes, scale, zero=None, group_size=None) -> w_hat`` on codes of both
    schemes, per row, per group and per tensor, in several integer dtypes."""

    def case(name: str, stored: dict[str, Any], dtype: torch.dtype, hint: str = "") -> Case:
        codes = stored["codes"].to(dtype)
        zero = stored["zero"]
        zero = None if zero is None else zero.to(dtype)
        return Case(name, (codes, stored["scale"], zero, stored["group_size"]), hint=hint)

    cases = [
        case("absmax codes (int8), one scale per row", _stored(randn(4, 8, seed=80), 8,
             "absmax"), torch.int8),
        case("zero-point codes (int16), one scale and zero point per row",
             _stored(randn(4, 8, seed=81) + 0.5, 8, "zeropoint"), torch.int16,
             hint="subtract the zero point from the codes, then scale: (codes - zero) * scale."),
        case("zero-point codes and zero points stored as uint8",
             _stored(randn(4, 8, seed=82), 8, "zeropoint"), torch.uint8,
             hint="convert to float before subtracting: in uint8, 3 - 5 wraps around to 254."),
        case("absmax, groups of 4: scale (3, 4, 1)",
             _stored(randn(3, 16, seed=83) * torch.logspace(-1, 1, 16), 8, "absmax", "group", 4),
             torch.int8,
             hint="view the codes as (rows, cols // group_size, group_size), multiply by the "
             "(rows, groups, 1) scale, and reshape back (or repeat each scale group_size times "
             "along the row with repeat_interleave)."),
        case("zero-point, 4 bits, groups of 8, int32 codes",
             _stored(_group_skew(84), 4, "zeropoint", "group", 8), torch.int32),
        case("one scale for the whole tensor: scale (1, 1)",
             _stored(randn(3, 8, seed=85), 8, "absmax", "tensor"), torch.int16,
             hint="a (1, 1) scale broadcasts over every row: codes * scale."),
        case("a row of zeros: scale 1, codes 0",
             _stored(_zero_row(randn(3, 8, seed=86), 0), 8, "absmax"), torch.int8),
        case("2 bits, zero-point, groups of 2, int64 codes",
             _stored(randn(2, 8, seed=87), 2, "zeropoint", "group", 2), torch.int64),
    ]  # fmt: skip
    return run_check(
        "dequantize",
        dequantize,
        reference_dequantize,
        cases,
        hint="w_hat = (codes - zero) * scale per block (codes * scale when zero is None), in "
        "float32: convert the codes to float first; with group_size, view the codes as (rows, "
        "cols // group_size, group_size) and reshape back to the codes' shape.",
        compare=_compare_dequantized,
        expect=_expected_dequantize,
        forbid=FORBID_QUANT,
    )
