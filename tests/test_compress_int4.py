"""llmlab.compress.int4: a 4-bit weight-only linear layer in the layout of kernels.w4a16."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llmlab.compress import int4 as I
from llmlab.compress.quant import fake_quantize, quantize_nf4


def _linear(out=12, cols=128, bias=True, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(cols, out, bias=bias)


@pytest.mark.parametrize("fmt", ["zeropoint", "absmax"])
@pytest.mark.parametrize("group", [32, 64, 128])
def test_int4_linear_multiplies_by_the_rounded_weight(fmt, group):
    lin = _linear()
    q = I.Int4Linear.from_linear(lin, fmt, group)
    expected = fake_quantize(
        lin.weight.detach(), 4, scheme=fmt, granularity="group", group_size=group
    )
    torch.testing.assert_close(q.dequantized(), expected)
    x = torch.randn(3, 5, 128)
    torch.testing.assert_close(
        q(x), nn.functional.linear(x, expected, lin.bias.detach()), rtol=1e-5, atol=1e-5
    )


def test_nf4_equals_quantize_nf4():
    lin = _linear(bias=False)
    q = I.Int4Linear.from_linear(lin, "nf4", 64)
    torch.testing.assert_close(q.dequantized(), quantize_nf4(lin.weight.detach(), 64).dequantize())
    assert "nf4" in repr(q)


def test_quantize_linears_4bit_stores_a_quarter_of_the_bytes():
    model = nn.Sequential(_linear(64, 128, seed=1), nn.ReLU(), _linear(128, 64, seed=2))
    before = sum(m.weight.numel() * 4 for m in (model[0], model[2]))  # fp32 weight bytes
    I.quantize_linears_4bit(model, "zeropoint", 64)
    assert all(isinstance(m, I.Int4Linear) for m in (model[0], model[2]))
    packed = sum(m.packed.numel() for m in (model[0], model[2]))
    assert packed * 8 == before  # 4 bits instead of 32 per weight
    with torch.no_grad():
        assert model(torch.randn(2, 128)).shape == (2, 128)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="fmt"):
        I.Int4Linear.from_linear(_linear(), "int3")
    with pytest.raises(ValueError, match="group_size"):
        I.Int4Linear.from_linear(_linear(cols=96), "zeropoint", 64)


def test_generation_speed_counts_the_new_tokens():
    from llmlab.assets import tiny_smollm2
    from llmlab.compress.evaluate import generation_speed

    model, tok = tiny_smollm2(seed=0, device="cpu")
    assert generation_speed(model, tok, batch=2, new_tokens=3, repeats=1) > 0
    with pytest.raises(ValueError, match="batch"):
        generation_speed(model, tok, batch=0)


def test_compare_speed_times_every_model_at_every_batch():
    from llmlab.assets import tiny_smollm2
    from llmlab.compress.evaluate import compare_speed

    model, tok = tiny_smollm2(seed=0, device="cpu")
    speed = compare_speed({"a": model, "b": model}, tok, (1, 2), new_tokens=2, repeats=2)
    assert set(speed) == {"a", "b"} and all(
        set(s) == {1, 2} and min(s.values()) > 0 for s in speed.values()
    )
    with pytest.raises(ValueError, match="models"):
        compare_speed({}, tok)


def test_peak_memory_during_sees_a_temporary_allocation():
    import sys

    from llmlab.compress.evaluate import peak_memory_during

    def allocate(mb):
        t = torch.ones(mb * 2**20 // 4)  # freed on return
        return float(t[0])

    result, before, peak = peak_memory_during(lambda: allocate(64))
    assert result == 1.0
    if not sys.platform.startswith("linux"):
        assert before is None and peak is None
        return
    if before is None:
        pytest.skip("/proc/self/clear_refs is not writable here")
    # A busy test process may hand the allocation pages it already holds (then the peak does
    # not move): try larger blocks than any it has freed, which must come from fresh pages.
    seen = [(peak - before) / 64]
    for mb in (160, 400):
        if seen[-1] >= 0.9:
            break
        _, before, peak = peak_memory_during(lambda mb=mb: allocate(mb))
        seen.append((peak - before) / mb)
    assert max(seen) >= 0.9, f"peak growth as a share of each allocation: {seen}"


@pytest.mark.parametrize("bias", [True, False])
def test_nf4_bitsandbytes_multiplies_by_our_nf4_weight_and_keeps_the_bias(bias):
    pytest.importorskip("bitsandbytes")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 12, bias=bias), nn.ReLU(), nn.Linear(12, 7))
    first = model[0]
    expected_w = quantize_nf4(first.weight.detach().clone(), 64).dequantize()
    expected_b = None if not bias else first.bias.detach().clone()
    out = I.nf4_bitsandbytes(model, torch.float32, 64, skip=("2",))
    assert out is model and type(model[0]).__name__ == "Linear4bit"
    assert isinstance(model[2], nn.Linear) and type(model[2]) is nn.Linear  # skipped
    x = torch.randn(5, 128)
    torch.testing.assert_close(
        model[0](x), nn.functional.linear(x, expected_w, expected_b), rtol=1e-4, atol=1e-4
    )
    with pytest.raises(ValueError, match="compute_dtype"):
        I.nf4_bitsandbytes(nn.Linear(64, 4), torch.int8)
    with pytest.raises(ValueError, match="blocksize"):
        I.nf4_bitsandbytes(nn.Linear(64, 4), blocksize=0)
