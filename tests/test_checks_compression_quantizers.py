"""The checks of chapter 05's quantizers lab (llmlab.checks.compression.quantizers).

For every check: the reference passes, other correct answers pass too (a loop over rows and
groups, float codes, float64 arithmetic, repeat_interleave instead of a blocked view),
plausible wrong answers (mutants) fail on the case that exposes them with words that say what
is wrong, a NotImplementedError stub reports "not implemented", garbage never raises, and the
global seed does not move.
"""

from __future__ import annotations

import math

import pytest
import torch
from check_contract import CheckContract

from llmlab.checks.compression import quantizers as qz
from llmlab.compress.quant import quantize

# FORBIDDEN calls torch.quantize_per_channel, deprecated (still what the check must flag)
pytestmark = pytest.mark.filterwarnings("ignore:torch.quantize_per:UserWarning")

CHECKS = {
    "check_absmax_quantize": (qz.check_absmax_quantize, qz.reference_absmax_quantize),
    "check_zeropoint_quantize": (qz.check_zeropoint_quantize, qz.reference_zeropoint_quantize),
    "check_dequantize": (qz.check_dequantize, qz.reference_dequantize),
}

GARBAGE = {
    "returns a number": lambda *a, **k: 3.0,
    "returns a string": lambda *a, **k: "codes",
    "returns a list": lambda *a, **k: [0.1, 0.9],
    "returns NaN": lambda *a, **k: torch.tensor(math.nan),
    "returns its first input": lambda x, *a, **k: x,
    "returns a tuple of its input": lambda x, *a, **k: (x, x, x)[: 2 + len(a) % 2],
    "returns tensors of the wrong shape": lambda *a, **k: (torch.zeros(2), torch.ones(2)),
    "returns bool tensors": lambda x, *a, **k: (x > 0, torch.ones(1, dtype=torch.bool)),
    "takes no arguments": lambda: 0,
}


class TestContract(CheckContract):
    MODULES = (qz,)
    CHECKS = CHECKS
    GARBAGE = GARBAGE
    MIN_CASES = 6


# --------------------------------------------------------------------------------------------
# absmax_quantize

FIRST = "8 bits, one scale per row: 4 rows of 8"
ZERO_ROW = "a row of zeros"
HALVES = "exact halves: w / scale = 2.5, 3.5, -2.5, ... (scale 1)"
GROUPS = "groups of 4 along each row: scale (3, 4, 1)"
NEGATIVE = "rows whose weight of largest magnitude is negative"


def absmax(w, bits, group_size=None):
    top = 2 ** (bits - 1) - 1
    rows, cols = w.shape
    x = w if group_size is None else w.reshape(rows, cols // group_size, group_size)
    scale = x.abs().amax(dim=-1, keepdim=True) / top
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round(x / scale).clamp(-top, top)
    return codes.to(torch.int8).reshape(rows, cols), scale


def absmax_loops(w, bits, group_size=None):  # float codes, a scale per block, one at a time
    top = 2 ** (bits - 1) - 1
    rows, cols = w.shape
    size = cols if group_size is None else group_size
    codes = torch.empty(rows, cols)
    scale = torch.empty(rows, cols // size, 1)
    for i in range(rows):
        for j in range(cols // size):
            block = w[i, j * size : (j + 1) * size]
            s = block.abs().max() / top
            s = s if s > 0 else torch.tensor(1.0)
            scale[i, j, 0] = s
            codes[i, j * size : (j + 1) * size] = torch.round(block / s).clamp(-top, top)
    return codes, (scale[:, :, 0] if group_size is None else scale)


def absmax_float64(w, bits, group_size=None):  # float64 arithmetic, int64 codes
    top = 2 ** (bits - 1) - 1
    rows, cols = w.shape
    x = w.double().view(-1, cols if group_size is None else group_size)
    scale = x.abs().amax(1, keepdim=True).clamp_min(0) / top
    scale[scale == 0] = 1.0
    codes = torch.round(x / scale).clamp(-top, top).long().view(rows, cols)
    shape = (rows, 1) if group_size is None else (rows, cols // group_size, 1)
    return codes, scale.view(shape)


def absmax_max_not_abs(w, bits, group_size=None):
    top = 2 ** (bits - 1) - 1
    scale = w.amax(dim=1, keepdim=True) / top
    return torch.round(w / scale).clamp(-top, top), scale


def absmax_by_two_to_the_bits(w, bits, group_size=None):  # 128 instead of 127
    top = 2 ** (bits - 1)
    scale = w.abs().amax(dim=1, keepdim=True) / top
    return torch.round(w / scale).clamp(-top, top - 1), scale


def absmax_one_scale(w, bits, group_size=None):
    top = 2 ** (bits - 1) - 1
    scale = w.abs().max() / top
    return torch.round(w / scale).clamp(-top, top), scale.reshape(1, 1)


def absmax_one_scale_per_row_shape(w, bits, group_size=None):  # the global scale, repeated
    codes, scale = absmax_one_scale(w, bits)
    return codes, scale.expand(w.shape[0], 1)


def absmax_floor(w, bits, group_size=None):
    codes, scale = absmax(w, bits, group_size)
    x = qz._blocked(w, group_size) / scale
    return torch.floor(x).reshape(w.shape), scale


def absmax_trunc(w, bits, group_size=None):
    codes, scale = absmax(w, bits, group_size)
    return (qz._blocked(w, group_size) / scale).int().reshape(w.shape), scale


def absmax_half_up(w, bits, group_size=None):
    codes, scale = absmax(w, bits, group_size)
    return torch.floor(qz._blocked(w, group_size) / scale + 0.5).reshape(w.shape), scale


def absmax_not_rounded(w, bits, group_size=None):
    codes, scale = absmax(w, bits, group_size)
    return (qz._blocked(w, group_size) / scale).reshape(w.shape), scale


def absmax_zero_row_nan(w, bits, group_size=None):  # no guard: 0 / 0
    top = 2 ** (bits - 1) - 1
    rows, cols = w.shape
    x = w if group_size is None else w.reshape(rows, cols // group_size, group_size)
    scale = x.abs().amax(dim=-1, keepdim=True) / top
    return torch.round(x / scale).clamp(-top, top).reshape(rows, cols), scale


def absmax_epsilon(w, bits, group_size=None):  # scale clamped to an epsilon, not set to 1
    top = 2 ** (bits - 1) - 1
    rows, cols = w.shape
    x = w if group_size is None else w.reshape(rows, cols // group_size, group_size)
    scale = x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-8) / top
    return torch.round(x / scale).clamp(-top, top).reshape(rows, cols), scale


def absmax_strided_groups(w, bits, group_size=None):  # reshape(rows, group_size, -1)
    if group_size is None:
        return absmax(w, bits)
    top = 2 ** (bits - 1) - 1
    rows, cols = w.shape
    x = w.reshape(rows, group_size, cols // group_size)
    scale = x.abs().amax(dim=1, keepdim=True) / top
    codes = torch.round(x / scale).clamp(-top, top).reshape(rows, cols)
    return codes, scale.reshape(rows, cols // group_size, 1)


def absmax_ignores_groups(w, bits, group_size=None):
    return absmax(w, bits)


def absmax_blocked_codes(w, bits, group_size=None):  # codes left in the blocked view
    if group_size is None:
        return absmax(w, bits)
    codes, scale = absmax(w, bits, group_size)
    return codes.reshape(scale.shape[0], scale.shape[1], group_size), scale


def absmax_no_clamp(w, bits, group_size=None):
    top = 2 ** (bits - 1) - 1
    rows, cols = w.shape
    x = w if group_size is None else w.reshape(rows, cols // group_size, group_size)
    scale = x.abs().amax(dim=-1, keepdim=True) / top
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.round(x / scale).reshape(rows, cols), scale


# --------------------------------------------------------------------------------------------
# zeropoint_quantize

ONE_SIDED = "all-positive and all-negative rows: the range is widened to hold 0"
TOP_CODE = "the top code: round(153.5) + round(101.5) = 256 at 8 bits"
ZP_ZERO_ROW = "a row of zeros"


def zeropoint(w, bits, group_size=None):
    top = 2**bits - 1
    rows, cols = w.shape
    x = w if group_size is None else w.reshape(rows, cols // group_size, group_size)
    low = x.amin(dim=-1, keepdim=True).clamp(max=0)
    high = x.amax(dim=-1, keepdim=True).clamp(min=0)
    scale = (high - low) / top
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = torch.round(-low / scale).clamp(0, top)
    codes = (torch.round(x / scale) + zero).clamp(0, top)
    return codes.to(torch.uint8).reshape(rows, cols), scale, zero.to(torch.uint8)


def zeropoint_loops(w, bits, group_size=None):  # python numbers per block, float codes
    top = 2**bits - 1
    rows, cols = w.shape
    size = cols if group_size is None else group_size
    n = cols // size
    codes = torch.empty(rows, cols)
    scale = torch.empty(rows, n, 1)
    zero = torch.empty(rows, n, 1, dtype=torch.int32)
    for i in range(rows):
        for j in range(n):
            block = w[i, j * size : (j + 1) * size]
            low, high = min(block.min(), 0.0), max(block.max(), 0.0)
            s = (high - low) / top
            s = s if s > 0 else torch.tensor(1.0)
            z = torch.round(-low / s).clamp(0, top)
            scale[i, j, 0], zero[i, j, 0] = s, z
            codes[i, j * size : (j + 1) * size] = (torch.round(block / s) + z).clamp(0, top)
    if group_size is None:
        return codes, scale[:, :, 0], zero[:, :, 0]
    return codes, scale, zero


def zeropoint_by_two_to_the_bits(w, bits, group_size=None):  # 256 instead of 255
    top = 2**bits
    low = w.amin(dim=1, keepdim=True).clamp(max=0)
    scale = (w.amax(dim=1, keepdim=True).clamp(min=0) - low) / top
    zero = torch.round(-low / scale)
    return (torch.round(w / scale) + zero).clamp(0, top - 1), scale, zero


def zeropoint_not_widened(w, bits, group_size=None):  # the block's own [min, max]
    top = 2**bits - 1
    low, high = w.amin(dim=1, keepdim=True), w.amax(dim=1, keepdim=True)
    scale = (high - low) / top
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = torch.round(-low / scale).clamp(0, top)
    return (torch.round(w / scale) + zero).clamp(0, top), scale, zero


def zeropoint_zero_not_rounded(w, bits, group_size=None):
    codes, scale, zero = zeropoint(w, bits, group_size)
    low = qz._blocked(w, group_size).amin(dim=-1, keepdim=True).clamp(max=0)
    return codes, scale, -low / scale


def zeropoint_zero_not_clamped(w, bits, group_size=None):  # zero from the raw minimum
    top = 2**bits - 1
    low = w.amin(dim=1, keepdim=True).clamp(max=0)
    scale = (w.amax(dim=1, keepdim=True).clamp(min=0) - low) / top
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = torch.round(-w.amin(dim=1, keepdim=True) / scale)
    return (torch.round(w / scale) + zero).clamp(0, top), scale, zero


def zeropoint_codes_not_clamped(w, bits, group_size=None):
    top = 2**bits - 1
    rows, cols = w.shape
    x = w if group_size is None else w.reshape(rows, cols // group_size, group_size)
    low = x.amin(dim=-1, keepdim=True).clamp(max=0)
    scale = (x.amax(dim=-1, keepdim=True).clamp(min=0) - low) / top
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = torch.round(-low / scale).clamp(0, top)
    return (torch.round(x / scale) + zero).reshape(rows, cols), scale, zero


def zeropoint_floor(w, bits, group_size=None):
    codes, scale, zero = zeropoint(w, bits, group_size)
    x = qz._blocked(w, group_size) / scale
    top = 2**bits - 1
    return (torch.floor(x) + zero).clamp(0, top).reshape(w.shape), scale, zero


def zeropoint_half_up(w, bits, group_size=None):  # floor(x + 0.5) for the zero and the codes
    top = 2**bits - 1
    low = w.amin(dim=1, keepdim=True).clamp(max=0)
    scale = (w.amax(dim=1, keepdim=True).clamp(min=0) - low) / top
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = torch.floor(-low / scale + 0.5).clamp(0, top)
    return (torch.floor(w / scale + 0.5) + zero).clamp(0, top), scale, zero


def zeropoint_codes_half_up(w, bits, group_size=None):  # the zero point right, codes half up
    codes, scale, zero = zeropoint(w, bits, group_size)
    x = qz._blocked(w, group_size) / scale
    codes = (torch.floor(x + 0.5) + zero.float()).clamp(0, 2**bits - 1)
    return codes.reshape(w.shape), scale, zero


def zeropoint_min_offset(w, bits, group_size=None):  # round((w - low) / scale): min-max style
    top = 2**bits - 1
    low = w.amin(dim=1, keepdim=True).clamp(max=0)
    scale = (w.amax(dim=1, keepdim=True).clamp(min=0) - low) / top
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = torch.round(-low / scale).clamp(0, top)
    return torch.round((w - low) / scale).clamp(0, top), scale, zero


def zeropoint_without_zero_in_codes(w, bits, group_size=None):
    codes, scale, zero = zeropoint(w, bits, group_size)
    x = qz._blocked(w, group_size) / scale
    return torch.round(x).reshape(w.shape), scale, zero


def zeropoint_zero_row_nan(w, bits, group_size=None):
    top = 2**bits - 1
    low = w.amin(dim=1, keepdim=True).clamp(max=0)
    scale = (w.amax(dim=1, keepdim=True).clamp(min=0) - low) / top
    zero = torch.round(-low / scale).clamp(0, top)
    return (torch.round(w / scale) + zero).clamp(0, top), scale, zero


def zeropoint_one_scale(w, bits, group_size=None):
    top = 2**bits - 1
    low, high = w.min().clamp(max=0), w.max().clamp(min=0)
    scale = (high - low) / top
    zero = torch.round(-low / scale).clamp(0, top)
    codes = (torch.round(w / scale) + zero).clamp(0, top)
    rows = w.shape[0]
    return codes, scale.expand(rows, 1), zero.expand(rows, 1)


def zeropoint_strided_groups(w, bits, group_size=None):
    if group_size is None:
        return zeropoint(w, bits)
    top = 2**bits - 1
    rows, cols = w.shape
    x = w.reshape(rows, group_size, cols // group_size)
    low = x.amin(dim=1, keepdim=True).clamp(max=0)
    scale = (x.amax(dim=1, keepdim=True).clamp(min=0) - low) / top
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = torch.round(-low / scale).clamp(0, top)
    codes = (torch.round(x / scale) + zero).clamp(0, top).reshape(rows, cols)
    shape = (rows, cols // group_size, 1)
    return codes, scale.reshape(shape), zero.reshape(shape)


# --------------------------------------------------------------------------------------------
# dequantize

DQ_FIRST = "absmax codes (int8), one scale per row"
DQ_ZERO = "zero-point codes (int16), one scale and zero point per row"
DQ_UINT8 = "zero-point codes and zero points stored as uint8"
DQ_GROUPS = "absmax, groups of 4: scale (3, 4, 1)"


def dequantize(codes, scale, zero=None, group_size=None):
    rows, cols = codes.shape
    c = codes.float()
    if group_size is not None:
        c = c.reshape(rows, cols // group_size, group_size)
    if zero is not None:
        c = c - zero.float()
    return (c * scale).reshape(rows, cols)


def dequantize_interleaved(codes, scale, zero=None, group_size=None):
    size = 1 if group_size is None else group_size
    s = scale.reshape(scale.shape[0], -1).repeat_interleave(size, dim=1)
    z = 0 if zero is None else zero.reshape(zero.shape[0], -1).repeat_interleave(size, dim=1)
    return (codes.to(torch.int32) - z) * s


def dequantize_loops(codes, scale, zero=None, group_size=None):
    rows, cols = codes.shape
    size = cols if group_size is None else group_size
    out = torch.empty(rows, cols)
    for i in range(rows):
        for j in range(cols // size):
            k = (
                (min(i, scale.shape[0] - 1), j)
                if scale.dim() == 3
                else (min(i, scale.shape[0] - 1),)
            )
            s = scale[k].reshape(())
            z = 0.0 if zero is None else float(zero[k].reshape(()))
            block = codes[i, j * size : (j + 1) * size].double()
            out[i, j * size : (j + 1) * size] = ((block - z) * float(s)).float()
    return out


def dequantize_no_zero(codes, scale, zero=None, group_size=None):
    return dequantize(codes, scale, None, group_size)


def dequantize_plus_zero(codes, scale, zero=None, group_size=None):
    return dequantize(codes, scale, None if zero is None else -zero.float(), group_size)


def dequantize_zero_after_scaling(codes, scale, zero=None, group_size=None):
    w = dequantize(codes, scale, None, group_size)
    if zero is None:
        return w
    return w - qz._per_weight(zero.float(), group_size, codes.shape)


def dequantize_wraps(codes, scale, zero=None, group_size=None):  # subtracts in the codes' dtype
    rows, cols = codes.shape
    c = codes if group_size is None else codes.reshape(rows, cols // group_size, group_size)
    if zero is not None:
        c = c - zero
    return (c * scale).reshape(rows, cols)


def dequantize_repeated_scales(codes, scale, zero=None, group_size=None):  # .repeat, not interleave
    size = 1 if group_size is None else group_size
    s = scale.reshape(scale.shape[0], -1).repeat(1, size)
    z = 0 if zero is None else zero.reshape(zero.shape[0], -1).repeat(1, size).float()
    return (codes.float() - z) * s


def dequantize_float64(codes, scale, zero=None, group_size=None):
    return dequantize(codes, scale, zero, group_size).double()


# --------------------------------------------------------------------------------------------
# What the contract runs

ABS, ZP, DQ = "check_absmax_quantize", "check_zeropoint_quantize", "check_dequantize"

CORRECT_VARIANTS = [
    (ABS, absmax),
    (ABS, absmax_loops),
    (ABS, absmax_float64),
    (ABS, absmax_no_clamp),  # the clamp never acts in absmax: |w / scale| <= top
    (ZP, zeropoint),
    (ZP, zeropoint_loops),
    (DQ, dequantize),
    (DQ, dequantize_interleaved),
    (DQ, dequantize_loops),
]

MUTANTS = [
    (ABS, absmax_max_not_abs, FIRST, "it must be the largest MAGNITUDE, max(|w|) / 127"),
    (ABS, absmax_by_two_to_the_bits, FIRST, "you divided by 2**(bits-1) = 128"),
    (ABS, absmax_one_scale, FIRST, "one scale for the whole tensor"),
    (ABS, absmax_one_scale_per_row_shape, FIRST, "computed over the WHOLE tensor"),
    (ABS, absmax_floor, FIRST, "rounded down (floor)"),
    (ABS, absmax_trunc, FIRST, "rounded toward zero (trunc"),
    (ABS, absmax_not_rounded, FIRST, "not a whole number: round w / scale with torch.round"),
    (ABS, absmax_half_up, HALVES, "a tie goes to the even code"),
    (ABS, absmax_zero_row_nan, ZERO_ROW, "which makes its codes 0 / 0 = NaN"),
    (ABS, absmax_epsilon, ZERO_ROW, "a block of zeros: expected 1, received 7.874e-11"),
    (ABS, absmax_strided_groups, GROUPS, "your groups are strided: each takes every 4-th column"),
    (ABS, absmax_ignores_groups, GROUPS, "one scale per row; with group_size set"),
    (ABS, absmax_blocked_codes, GROUPS, "reshape the codes back to w's shape"),
    (ZP, zeropoint_by_two_to_the_bits, FIRST, "you divided by 2**bits = 256"),
    (ZP, zeropoint_not_widened, ONE_SIDED, "the range must hold 0"),
    (ZP, zeropoint_zero_not_rounded, FIRST, "not a whole number: round it"),
    (ZP, zeropoint_zero_not_clamped, ONE_SIDED, "outside [0, 255]: clamp it"),
    (ZP, zeropoint_codes_not_clamped, TOP_CODE, "received 256 at index (0, 1)"),
    (ZP, zeropoint_floor, FIRST, "rounded down (floor)"),
    (ZP, zeropoint_half_up, HALVES, "-low / scale = 100.5 is exactly a half"),
    (ZP, zeropoint_codes_half_up, HALVES, "a tie goes to the even code"),
    (ZP, zeropoint_min_offset, FIRST, "round the zero point on its own"),
    (ZP, zeropoint_without_zero_in_codes, FIRST, "your codes lack the zero point"),
    (ZP, zeropoint_zero_row_nan, ZP_ZERO_ROW, "which makes its codes 0 / 0 = NaN"),
    (ZP, zeropoint_one_scale, FIRST, "computed over the WHOLE tensor"),
    (ZP, zeropoint_strided_groups, GROUPS, "your groups are strided"),
    (DQ, dequantize_no_zero, DQ_ZERO, "subtract the zero point first"),
    (DQ, dequantize_plus_zero, DQ_ZERO, "you added the zero point"),
    (DQ, dequantize_zero_after_scaling, DQ_ZERO, "subtracted the zero point after scaling"),
    (DQ, dequantize_wraps, DQ_UINT8, "wrapped around in uint8"),
    (DQ, dequantize_repeated_scales, DQ_GROUPS, "your scales repeat along the row"),
    (DQ, dequantize_float64, DQ_FIRST, "expected dtype float32, received float64"),
]


# --------------------------------------------------------------------------------------------
# Answers that call the package's or PyTorch's quantizers: flagged


def absmax_with_the_package(w, bits, group_size=None):
    granularity = "channel" if group_size is None else "group"
    q = quantize(w, bits, granularity=granularity, group_size=group_size)
    return q.codes, q.scale


def zeropoint_with_torch(w, bits, group_size=None):
    top = 2**bits - 1
    low = w.amin(dim=1).clamp(max=0)
    scale = (w.amax(dim=1).clamp(min=0) - low) / top
    zero = torch.round(-low / scale).long()
    q = torch.quantize_per_channel(w, scale.double(), zero, 0, torch.quint8)
    return q.int_repr(), scale[:, None], zero[:, None]


def dequantize_with_torch(codes, scale, zero=None, group_size=None):
    zero = torch.zeros_like(scale) if zero is None else zero
    q = torch._make_per_channel_quantized_tensor(
        codes.to(torch.int8), scale.flatten().double(), zero.flatten().long(), 0
    )
    return q.dequantize()


FORBIDDEN = [
    (ABS, absmax_with_the_package, "llmlab.compress.quant.quantize"),
    (ZP, zeropoint_with_torch, "torch.quantize_per_channel"),
    (DQ, dequantize_with_torch, "torch.Tensor.dequantize"),
]


# --------------------------------------------------------------------------------------------
# The cases hold what their names say


def test_the_halves_cases_hold_exact_ties_with_scale_one():
    for w, quantizer in (
        (qz.ABSMAX_HALVES, qz.reference_absmax_quantize),
        (qz.ZEROPOINT_HALVES, qz.reference_zeropoint_quantize),
        (qz.ZEROPOINT_TOP, qz.reference_zeropoint_quantize),
    ):
        scale = quantizer(w, 8)[1]
        assert torch.equal(scale, torch.ones_like(scale))
        assert ((w - w.floor()) == 0.5).sum() >= 4
    codes, _, zero = qz.reference_zeropoint_quantize(qz.ZEROPOINT_TOP, 8)
    unclamped = torch.round(qz.ZEROPOINT_TOP) + zero
    assert unclamped.max() == 256 and codes.max() == 255


def test_absmax_codes_never_need_the_clamp():
    # |w / scale| <= top with scale = max|w| / top, float rounding included: the clamp in
    # absmax is a safety, not part of what the check can ask for.
    for seed in range(20):
        w = torch.randn(16, 64, generator=torch.Generator().manual_seed(seed)) * 10 ** (seed % 5)
        for bits in (2, 4, 8):
            top = 2 ** (bits - 1) - 1
            scale = w.abs().amax(1, keepdim=True) / top
            assert torch.round(w / scale).abs().max() <= top


@pytest.mark.parametrize("name", list(CHECKS))
def test_a_variant_in_place_on_its_input_is_told_so(name):
    check, _ = CHECKS[name]

    def in_place(x, *args, **kwargs):
        x.mul_(2)
        return x

    result = check(in_place)
    assert not result.passed and "changed its input in place" in result.message
