"""Contract of llmlab.compress.quant: codes in range, error within half a step, PyTorch's own
quantizers give the same codes for the same scales, finer blocks track local ranges."""

from __future__ import annotations

import pytest
import torch

from llmlab.compress.quant import distinct_values_per_block, fake_quantize, quantize


def _weight(rows=16, cols=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=g) * torch.logspace(-2, 0, rows)[:, None]


@pytest.mark.parametrize("scheme", ["absmax", "zeropoint", "minmax"])
@pytest.mark.parametrize(
    "granularity, group_size", [("tensor", None), ("channel", None), ("group", 16)]
)
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_codes_in_range_and_error_within_half_a_step(scheme, granularity, group_size, bits):
    w = _weight()
    q = quantize(w, bits, scheme=scheme, granularity=granularity, group_size=group_size)
    if scheme == "absmax":
        top = 2 ** (bits - 1) - 1
        assert q.codes.min() >= -top and q.codes.max() <= top and q.zero is None
    else:
        assert q.codes.min() >= 0 and q.codes.max() <= 2**bits - 1
        assert q.zero.dtype == (torch.int16 if scheme == "zeropoint" else torch.float32)
    error = (q.dequantize() - w).abs()
    step = torch.broadcast_to(q.scale, _shape(q)).reshape(w.shape)
    assert (error <= step / 2 + 1e-6).all()
    assert q.dequantize().dtype == w.dtype and q.dequantize().shape == w.shape
    expected_scales = {"tensor": 1, "channel": 16, "group": 16 * 4}[granularity]
    assert q.n_scales == expected_scales


def _shape(q):
    rows, cols = q.codes.shape
    return {"tensor": (1, rows * cols), "channel": (rows, cols), "group": (rows, cols // 16, 16)}[
        q.granularity
    ]


@pytest.mark.filterwarnings(
    "ignore:torch.quantize_per:UserWarning"
)  # deprecated, still the reference
def test_absmax_per_channel_equals_torch_quantize_per_channel():
    w = _weight()
    q = quantize(w, 8, scheme="absmax", granularity="channel")
    theirs = torch.quantize_per_channel(
        w, q.scale.flatten().double(), torch.zeros(16, dtype=torch.long), 0, torch.qint8
    )
    assert torch.equal(q.codes.to(torch.int8), theirs.int_repr())


@pytest.mark.filterwarnings(
    "ignore:torch.quantize_per:UserWarning"
)  # deprecated, still the reference
def test_zeropoint_per_tensor_equals_torch_quantize_per_tensor():
    w = _weight() + 0.3  # skewed: the zero point matters
    q = quantize(w, 8, scheme="zeropoint", granularity="tensor")
    theirs = torch.quantize_per_tensor(w, q.scale.item(), int(q.zero.item()), torch.quint8)
    assert torch.equal(q.codes.to(torch.uint8), theirs.int_repr())
    torch.testing.assert_close(q.dequantize(), theirs.dequantize())


def test_finer_blocks_track_rows_of_different_size():
    w = _weight()  # rows span two orders of magnitude
    errors = {
        g: (fake_quantize(w, 4, granularity=g, **({"group_size": 16} if g == "group" else {})) - w)
        .square()
        .mean()
        .item()
        for g in ("tensor", "channel", "group")
    }
    assert errors["group"] < errors["channel"] < errors["tensor"]


def test_zero_blocks_and_exact_values():
    w = torch.zeros(2, 8)
    w[1, :4] = torch.tensor([-1.0, 0.0, 0.5, 1.0])
    q = quantize(w, 8, granularity="channel")
    assert torch.equal(q.dequantize()[0], torch.zeros(8))  # a zero row stays zero
    assert q.dequantize()[1, 3] == 1.0 and q.dequantize()[1, 0] == -1.0  # the extremes exact
    z = quantize(w, 4, scheme="zeropoint", granularity="channel")
    assert (z.dequantize()[w == 0] == 0).all()  # zero is on the asymmetric grid too


def test_bits_per_weight_counts_the_scales():
    w = _weight(rows=4, cols=64)
    assert quantize(w, 4, granularity="group", group_size=32).bits_per_weight() == 4 + 32 / 32
    assert quantize(
        w, 8, scheme="zeropoint", granularity="tensor"
    ).bits_per_weight() == pytest.approx(8 + 40 / 256)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"w": torch.zeros(4)}, ValueError, "w: expected a 2-D float tensor"),
        ({"w": torch.zeros(4, 4, dtype=torch.long)}, ValueError, "w: expected a 2-D float tensor"),
        ({"bits": 1}, ValueError, "bits: expected an int >= 2"),
        ({"bits": 9}, ValueError, "bits: expected 2 to 8"),
        ({"scheme": "log"}, ValueError, "scheme: expected one of"),
        ({"granularity": "row"}, ValueError, "granularity: expected one of"),
        ({"granularity": "group"}, ValueError, "group_size: expected an int"),
        ({"granularity": "group", "group_size": 128}, ValueError, "a divisor of the 576 input"),
        ({"group_size": 64}, ValueError, "group_size: only for granularity='group'"),
    ],
)
def test_errors_name_the_argument(kwargs, error, match):
    args = {"w": torch.zeros(2, 576), **kwargs}
    with pytest.raises(error, match=match):
        quantize(**args)


def test_minmax_in_blocks_of_32_gives_back_a_q4_1_checkpoint_exactly():
    # a weight stored as llama.cpp's Q4_1 (min + scale * q per block of 32), then de-quantized,
    # as the offline SmolLM2 is: rounding it again on the same grid loses nothing (the trap)
    g = torch.Generator().manual_seed(3)
    codes = torch.randint(0, 16, (8, 4, 32), generator=g)
    codes[..., 0], codes[..., 1] = 0, 15  # each block reaches both ends of its grid
    low = torch.randn(8, 4, 1, generator=g) * 0.1
    step = torch.rand(8, 4, 1, generator=g) * 0.01 + 1e-3
    w = (low + codes * step).reshape(8, 128)
    again = fake_quantize(w, 4, scheme="minmax", granularity="group", group_size=32)
    torch.testing.assert_close(again, w, atol=1e-6, rtol=0)
    other = fake_quantize(w, 4, scheme="zeropoint", granularity="group", group_size=32)
    assert (other - w).abs().max() > 1e-4  # a grid that must hold 0 does not land on it
    assert (
        quantize(w, 4, scheme="minmax", granularity="group", group_size=32).bits_per_weight() == 6
    )


def test_distinct_values_per_block_sees_a_4_bit_grid():
    w = _weight(rows=4, cols=64)
    assert (distinct_values_per_block(w, 32) == 32).all()  # full precision: all different
    grid = fake_quantize(w, 4, scheme="zeropoint", granularity="group", group_size=32)
    assert (distinct_values_per_block(grid, 32) <= 16).all()
    with pytest.raises(ValueError, match="block: expected a divisor"):
        distinct_values_per_block(w, 48)


# --------------------------------------------------------------------------------------------
# NF4, against bitsandbytes


def _bnb():
    return pytest.importorskip("bitsandbytes.functional")


def test_nf4_levels_from_their_definition_equal_bitsandbytes_table():
    from llmlab.compress.quant import nf4_values

    levels = nf4_values()
    assert torch.equal(levels, _bnb().get_4bit_type("nf4", device="cpu"))
    assert levels[7] == 0 and levels[0] == -1 and levels[-1] == 1  # an exact zero, [-1, 1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("coarse", [False, True])  # coarse: many values exactly on a grid (ties)
def test_nf4_codes_bit_exact_with_bitsandbytes(dtype, coarse):
    from llmlab.compress.quant import pack_4bit, quantize_nf4, unpack_4bit

    w = torch.randn(48, 192, generator=torch.Generator().manual_seed(1))
    if coarse:
        w = torch.round(w * 8) / 8  # like a de-quantized checkpoint: few distinct values
    w = w.to(dtype)
    ours = quantize_nf4(w, blocksize=64)
    packed, state = _bnb().quantize_4bit(w, blocksize=64, quant_type="nf4")
    assert torch.equal(pack_4bit(ours.codes), packed.flatten())
    assert torch.equal(ours.absmax, state.absmax)
    assert torch.equal(unpack_4bit(pack_4bit(ours.codes)), ours.codes)
    theirs = _bnb().dequantize_4bit(packed, state)
    torch.testing.assert_close(ours.dequantize(), theirs, atol=0, rtol=0)


def test_nf4_errors_name_the_argument():
    from llmlab.compress.quant import pack_4bit, quantize_nf4

    with pytest.raises(ValueError, match="blocksize: expected a divisor of the 100 weights"):
        quantize_nf4(torch.zeros(10, 10), blocksize=64)
    with pytest.raises(ValueError, match="w: expected a float tensor"):
        quantize_nf4(torch.zeros(64, dtype=torch.long))
    with pytest.raises(ValueError, match="codes: expected an even number"):
        pack_4bit(torch.zeros(3, dtype=torch.uint8))
