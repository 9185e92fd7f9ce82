"""llmlab.kernels.w4a16: a 4-bit weight dequantized on chip equals the dequantize-then-matmul.

The format is the one ``llmlab.compress.quant`` produces: :func:`dequantize` equals its
zero-point, absmax and NF4 weights bit for bit. On the CPU the kernels run in Triton's
interpreter (the ``interpret`` fixture sets TRITON_INTERPRET=1 for one test): forward and
``grad_x`` against the reference in float32. GPU tests (marked ``gpu``) skip without CUDA.
"""

from __future__ import annotations

import pytest
import torch
from kernel_testing import gen as _gen
from kernel_testing import requires_cuda

from llmlab import bench
from llmlab.compress.quant import nf4_values, pack_4bit, quantize, quantize_nf4, unpack_4bit
from llmlab.kernels import w4a16 as W


def _weight(n: int, k: int, group: int, fmt: str, seed: int = 0):
    """``(packed, scales, zeros, lut)`` of a random 4-bit weight (N, K) in format ``fmt``."""
    g = _gen(seed)
    codes = torch.randint(0, 16, (n, k), generator=g, dtype=torch.uint8)
    packed = pack_4bit(codes).view(n, k // 2)
    scales = 0.02 + 0.1 * torch.rand(n, k // group, generator=g)
    zeros = 15 * torch.rand(n, k // group, generator=g) if fmt == "zeros" else None
    lut = nf4_values() if fmt == "nf4" else None
    return packed, scales, zeros, lut


def _from_quantized(q) -> tuple:
    """``(packed, scales, zeros)`` of a ``compress.quant.Quantized`` 4-bit weight."""
    n, k = q.codes.shape
    codes = q.codes if q.zero is not None else q.codes + W.SYMMETRIC_ZERO  # absmax: -7..7
    scales = q.scale.reshape(n, -1)  # (rows, groups, 1) or, per channel, (rows, 1)
    zeros = q.zero.reshape(n, -1).float() if q.zero is not None else None  # int16 codes
    return pack_4bit(codes).view(n, k // 2), scales, zeros


# --------------------------------------------------------------------------------------------
# The format and the reference
# --------------------------------------------------------------------------------------------


def test_unpack_is_pack_4bit_reversed_row_by_row():
    codes = torch.randint(0, 16, (5, 12), generator=_gen(1), dtype=torch.uint8)
    packed = pack_4bit(codes).view(5, 6)
    assert torch.equal(W.unpack(packed), codes)
    assert torch.equal(W.unpack(packed).flatten(), unpack_4bit(packed))
    assert packed[0, 0] == codes[0, 0] * 16 + codes[0, 1]  # the first code in the high nibble


@pytest.mark.parametrize("group", [16, 64])
@pytest.mark.parametrize("scheme", ["zeropoint", "absmax"])
def test_dequantize_equals_compress_quant_groups(scheme, group):
    w = torch.randn(6, 128, generator=_gen(2))
    w[1, :group] = 0.0  # a group of zeros: scale 1, codes at the zero point
    q = quantize(w, bits=4, scheme=scheme, granularity="group", group_size=group)
    packed, scales, zeros = _from_quantized(q)
    assert torch.equal(W.dequantize(packed, scales, group, zeros), q.dequantize())


def test_dequantize_equals_compress_quant_per_channel():
    # One scale per output channel is one group of K.
    w = torch.randn(7, 48, generator=_gen(3))
    q = quantize(w, bits=4, scheme="zeropoint", granularity="channel")
    packed, scales, zeros = _from_quantized(q)
    assert torch.equal(W.dequantize(packed, scales, 48, zeros), q.dequantize())


@pytest.mark.parametrize("blocksize", [32, 64])
def test_dequantize_equals_nf4_with_its_table(blocksize):
    # quantize_nf4 cuts the flattened weight into blocks; with blocksize dividing K each
    # block is one group of one row, so its absmax is that group's scale.
    w = torch.randn(5, 128, generator=_gen(4))
    nf4 = quantize_nf4(w, blocksize=blocksize)
    packed = pack_4bit(nf4.codes).view(5, 64)
    scales = nf4.absmax.view(5, 128 // blocksize)
    out = W.dequantize(packed, scales, blocksize, lut=nf4_values())
    assert torch.equal(out, nf4.dequantize())


def test_reference_is_a_linear_layer_with_the_dequantized_weight():
    packed, scales, zeros, _ = _weight(9, 32, 16, "zeros")
    x = torch.randn(2, 3, 32, generator=_gen(5))
    bias = torch.randn(9, generator=_gen(6))
    w = W.dequantize(packed, scales, 16, zeros)
    y = W.reference(x, packed, scales, 16, zeros, bias=bias)
    assert y.shape == (2, 3, 9)
    torch.testing.assert_close(y, torch.nn.functional.linear(x, w, bias))
    # bf16 activations: the weight is rounded to bf16, the output is bf16.
    y16 = W.reference(x.bfloat16(), packed, scales, 16, zeros)
    assert y16.dtype == torch.bfloat16
    torch.testing.assert_close(y16, x.bfloat16() @ w.bfloat16().T)


# --------------------------------------------------------------------------------------------
# The kernels, in the interpreter
# --------------------------------------------------------------------------------------------


def _check(x, packed, scales, group, zeros=None, lut=None, bias=None, atol=1e-5, rtol=1e-5):
    """Forward, grad_x (and grad_bias) of w4a16_matmul against the reference, in float32."""
    ours = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, bias)]
    theirs = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, bias)]
    y = W.w4a16_matmul(ours[0], packed, scales, group, zeros, lut, ours[1])
    y_ref = W.reference(theirs[0], packed, scales, group, zeros, lut, theirs[1])
    assert y.grad_fn is not None and "W4A16" in type(y.grad_fn).__name__
    torch.testing.assert_close(y, y_ref, atol=atol, rtol=rtol)
    dy = torch.randn(y.shape, generator=_gen(99))
    leaves = [t for t in ours if t is not None]
    grads = torch.autograd.grad(y, leaves, dy)
    expected = torch.autograd.grad(y_ref, [t for t in theirs if t is not None], dy)
    for a, b in zip(grads, expected, strict=True):
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


# (x shape, N, group): decode (M = 1); K = 48 and 40, not multiples of the interpreter's
# BLOCK_K (32), whose last step is partial; groups shorter than a step (8, 16: several per
# step), equal to it (32) and longer (64: one group over two steps); N not a multiple of 16.
SHAPES = [
    ((1, 64), 5, 16),
    ((5, 48), 33, 16),
    ((2, 3, 96), 16, 32),
    ((17, 40), 9, 8),
    ((3, 128), 20, 64),
]


@pytest.mark.parametrize("fmt", ["zeros", "absmax", "nf4"])
@pytest.mark.parametrize("shape, n, group", SHAPES, ids=str)
def test_kernel_matches_reference(interpret, shape, n, group, fmt):
    packed, scales, zeros, lut = _weight(n, shape[-1], group, fmt, seed=n)
    x = torch.randn(shape, generator=_gen(sum(shape)))
    _check(x, packed, scales, group, zeros, lut)


def test_bias_gets_its_gradient_and_the_weight_none(interpret):
    packed, scales, zeros, _ = _weight(12, 64, 32, "zeros", seed=7)
    x, bias = torch.randn(4, 64, generator=_gen(8)), torch.randn(12, generator=_gen(9))
    _check(x, packed, scales, 32, zeros, bias=bias)
    # Scales that require grad are read as constants: the 4-bit weight is frozen.
    scales = scales.clone().requires_grad_()
    y = W.w4a16_matmul(x.requires_grad_(), packed, scales, 32, zeros)
    y.sum().backward()
    assert scales.grad is None and x.grad is not None


def test_qlora_adapter_trains_through_the_frozen_base(interpret):
    # y = base(x) + B(A(x)): the base is the 4-bit kernel; A, B and x get the gradients that
    # the same adapter on the dequantized base gets.
    packed, scales, _, lut = _weight(24, 64, 32, "nf4", seed=10)
    x = torch.randn(3, 64, generator=_gen(11))
    a0, b0 = (
        0.1 * torch.randn(4, 64, generator=_gen(12)),
        0.1 * torch.randn(24, 4, generator=_gen(13)),
    )

    def step(base):
        xg, a, b = (t.clone().requires_grad_() for t in (x, a0, b0))
        y = base(xg, packed, scales, 32, None, lut) + (xg @ a.T) @ b.T
        return torch.autograd.grad(y.square().sum(), (xg, a, b))

    for ours, theirs in zip(step(W.w4a16_matmul), step(W.reference), strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_strided_inputs(interpret, monkeypatch):
    packed, scales, zeros, _ = _weight(10, 32, 16, "zeros", seed=14)
    base = torch.randn(6, 2, 40, generator=_gen(15))
    x = base[:, 0, :32]  # rows of 32 with a row stride of 80
    assert not x.is_contiguous()
    with monkeypatch.context() as m:
        m.setattr(torch.Tensor, "contiguous", lambda *a, **k: pytest.fail("x was copied"))
        y = W.w4a16_matmul(x, packed, scales, 16, zeros)
    torch.testing.assert_close(y, W.reference(x, packed, scales, 16, zeros), atol=1e-5, rtol=1e-5)
    xt = torch.randn(32, 5, generator=_gen(16)).t()  # last dim not contiguous: copied first
    _check(xt, packed, scales, 16, zeros)
    # Scales and zero points stored column-major, a bias taken from every other element.
    bias = torch.randn(20, generator=_gen(18))[::2]
    cols = scales.t().contiguous().t(), zeros.t().contiguous().t()
    assert cols[0].stride(-1) != 1 and not bias.is_contiguous()
    _check(torch.randn(4, 32, generator=_gen(19)), packed, *cols[:1], 16, cols[1], bias=bias)


def test_empty_input_and_group_sizes_the_kernels_cannot_step(interpret):
    packed, scales, zeros, _ = _weight(3, 48, 16, "zeros")
    assert W.w4a16_matmul(torch.zeros(0, 48), packed, scales, 16, zeros).shape == (0, 3)
    # Groups of 6 divide K = 48 but are no power of two: the reference takes them, the
    # kernels (which step through whole groups) refuse them.
    scales6 = torch.rand(3, 8, generator=_gen(17))
    with pytest.raises(ValueError, match="group_size: .* power of two, got 6"):
        W.w4a16_matmul(torch.ones(2, 48), packed, scales6, 6)
    assert W.reference(torch.ones(2, 48), packed, scales6, 6).shape == (2, 3)


# --------------------------------------------------------------------------------------------
# Dispatch and validation
# --------------------------------------------------------------------------------------------


_X = torch.zeros(2, 8)
_P = torch.zeros(3, 4, dtype=torch.uint8)
_S = torch.ones(3, 2)


@pytest.mark.parametrize(
    "args, kwargs, error, words",
    [
        (("x", _P, _S, 4), {}, TypeError, "x: expected a torch.Tensor"),
        ((_X.long(), _P, _S, 4), {}, TypeError, "x: expected dtype"),
        ((torch.zeros(2, 7), _P, _S, 4), {}, ValueError, "x: expected an even K .* K=7"),
        ((_X, _P.to(torch.int8), _S, 4), {}, TypeError, "packed: expected dtype torch.uint8"),
        ((_X, torch.zeros(3, 5, dtype=torch.uint8), _S, 4), {}, ValueError, r"packed: expected shape \(N, 4\)"),
        ((_X, _P, _S, 3), {}, ValueError, r"group_size: expected an even divisor of K=8 .*got 3"),
        ((_X, _P, _S, 16), {}, ValueError, "group_size: expected an even divisor of K=8"),
        ((_X, _P, _S, 0), {}, ValueError, "group_size: expected an int >= 2"),
        ((_X, _P, _S, 4.0), {}, TypeError, "group_size: expected an int"),
        ((_X, _P, torch.ones(3, 4), 4), {}, ValueError, r"scales: expected shape \(3, 2\)"),
        ((_X, _P, _S.long(), 4), {}, TypeError, "scales: expected dtype"),
        ((_X, _P, _S, 4), {"zeros": torch.ones(2, 2)}, ValueError, r"zeros: expected shape \(3, 2\)"),
        ((_X, _P, _S, 4), {"lut": torch.ones(15)}, ValueError, r"lut: expected shape \(16,\)"),
        ((_X, _P, _S, 4), {"zeros": _S, "lut": torch.ones(16)}, ValueError, "zeros: expected None with a lut"),
        ((_X, _P, _S, 4), {"bias": torch.ones(4)}, ValueError, r"bias: expected shape \(3,\)"),
    ],
)  # fmt: skip
def test_rejects_bad_input(args, kwargs, error, words):
    with pytest.raises(error, match=words):
        W.w4a16_matmul(*args, **kwargs)


def test_interpreter_rejects_half_precision(interpret):
    with pytest.raises(TypeError, match="x: the Triton interpreter runs float32 only"):
        W.w4a16_matmul(_X.half(), _P, _S, 4)
    with pytest.raises(TypeError, match="scales: the Triton interpreter runs float32 only"):
        W.w4a16_matmul(_X, _P, _S.bfloat16(), 4)
    with pytest.raises(TypeError, match="lut: the Triton interpreter runs float32 only"):
        W.w4a16_matmul(_X, _P, _S, 4, lut=nf4_values().half())


# --------------------------------------------------------------------------------------------
# Benchmark entry
# --------------------------------------------------------------------------------------------


def test_benchmark_bytes_and_cpu_run():
    b = bench.registry()["w4a16"]
    by = {(c.panel, c.x): c for c in b.cases("full")}
    n = k = 4096
    # The packed weight, a bf16 scale and zero point per group of 128, x in, y out.
    weight = n * k // 2 + n * (k // 128) * 2 * 2
    assert b.work(by[("bf16, N=4096, K=4096, zero points, g=128", 1)]) == weight + 2 * (k + n)
    nf4 = n * k // 2 + n * (k // 64) * 2  # a scale (absmax) per block of 64, no zero point
    assert b.work(by[("bf16, N=4096, K=4096, NF4, g=64", 16)]) == nf4 + 16 * 2 * (k + n)
    machine = bench.Machine("test cpu", "test-cpu", "cpu", 10.0, 0.5, "float32")
    record = bench.run(b, machine, "cpu", scale="cpu", log=lambda s: None)
    assert record["results"] and all(e["throughput"] > 0 for e in record["results"])
    assert set(b.setup(b.cases("cpu")[0], "cpu")) == {"triton", "eager", "compile", "bf16"}


# --------------------------------------------------------------------------------------------
# The GPU path
# --------------------------------------------------------------------------------------------


def test_pruning_keeps_configs_for_each_dtype_and_size():
    triton = pytest.importorskip("triton")
    for direction, first in (("forward", "X"), ("backward", "DY")):
        configs = W._configs(direction)(triton)
        prune = W._pruner(direction)
        for dtype, allowed in (
            (torch.bfloat16, W._SHAPES_16[direction]),
            (torch.float32, W._SHAPES_32),
        ):
            for m in (1, 16, 100, 8192):
                kept = prune(configs, {first: torch.empty(1, dtype=dtype), "M": m})
                assert kept and all(W._shape(c, direction) in allowed for c in kept)
                assert all(c.kwargs["BLOCK_M"] <= max(16, 2 * m) for c in kept)


def test_kernels_compile_for_hopper(monkeypatch):
    """Compile both kernels for sm_90a with Triton's bundled ptxas (no GPU needed): the decode
    and the largest tile of each direction in bf16 (zero points, groups of 128), the NF4
    table, and float32: they build without register spills, and the large 16-bit tiles run
    on Hopper's warp-group MMA. (All configs x dtypes x formats x group sizes 32-128 were
    compiled once, spill-free: too slow to repeat in every test run.)"""
    triton = pytest.importorskip("triton")
    u8, f32 = torch.empty(1, dtype=torch.uint8), torch.empty(1)
    n = 4096

    def compile_(direction, config, dtype, group, zeros, lut):
        t = torch.empty(1, dtype=dtype)
        meta = {"num_warps": config.num_warps, "num_stages": config.num_stages, **config.kwargs}
        meta.update(GROUP_SIZE=group, HAS_ZEROS=zeros, HAS_LUT=lut, PRECISION=W._precision(dtype))
        meta["GROUPS"] = max(1, config.kwargs["BLOCK_K"] // group)
        if direction == "forward":
            return bench.compile_offline(
                W._fwd, (t, u8, t, t, f32, t, t) + (n,) * 8, HAS_BIAS=True, **meta
            )
        return bench.compile_offline(W._bwd, (t, u8, t, t, f32, t) + (n,) * 8, **meta)

    forward = W._configs("forward")(triton)
    try:
        compile_("forward", forward[0], torch.bfloat16, 128, True, False)
    except (ImportError, FileNotFoundError, RuntimeError) as err:  # no NVIDIA toolchain here
        pytest.skip(f"cannot compile for sm_90 here: {err}")
    for direction in ("forward", "backward"):
        by_shape = {W._shape(c, direction): c for c in W._configs(direction)(triton)}
        small, large = (
            by_shape[s] for s in (W._SHAPES_16[direction][0], W._SHAPES_16[direction][-1])
        )
        for config, dtype, group, zeros, lut in (
            (small, torch.bfloat16, 128, True, False),
            (large, torch.bfloat16, 128, True, False),
            (small, torch.float16, 64, False, True),
            (by_shape[W._SHAPES_32[0]], torch.float32, 32, True, False),
        ):
            report = compile_(direction, config, dtype, group, zeros, lut)
            assert report["stack_bytes"] in (0, None), (direction, config, dtype, report)
            if config is large:
                assert report["warp_group_mma"], (direction, report)


def _gpu_weight(n: int, k: int, group: int, fmt: str, dtype: torch.dtype):
    packed, scales, zeros, lut = _weight(n, k, group, fmt, seed=1)
    # Scales that make y ~ N(0, 1) for x ~ N(0, 1): codes less their zero point are ~4.6 apart.
    scales = scales * (2.0 / k**0.5)
    move = lambda t: t.to("cuda", dtype) if t is not None else None  # noqa: E731
    return packed.cuda(), move(scales), move(zeros), move(lut)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("fmt", ["zeros", "absmax", "nf4"])
@pytest.mark.parametrize(
    "m, k, n, group",
    [(1, 4096, 4096, 128), (7, 4096, 14336, 64), (300, 576, 1536, 32), (33, 1024, 300, 128)],
)
def test_gpu_matches_reference(dtype, fmt, m, k, n, group):
    packed, scales, zeros, lut = _gpu_weight(n, k, group, fmt, dtype)
    x = torch.randn(m, k, device="cuda", dtype=dtype, requires_grad=True)
    y = W.w4a16_matmul(x, packed, scales, group, zeros, lut)
    assert y.dtype == dtype
    # The truth: the same weight rounded to x's dtype, the matmul in torch (float32 sums).
    atol = {torch.float16: 4e-3, torch.bfloat16: 3e-2, torch.float32: 1e-4}[dtype]
    x_ref = x.detach().clone().requires_grad_()
    y_ref = W.reference(x_ref, packed, scales, group, zeros, lut)
    torch.testing.assert_close(y.float(), y_ref.float(), atol=atol, rtol=1e-2)
    dy = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, x, dy)
    (dx_ref,) = torch.autograd.grad(y_ref, x_ref, dy)
    torch.testing.assert_close(dx.float(), dx_ref.float(), atol=atol * (n / k) ** 0.5, rtol=1e-2)
