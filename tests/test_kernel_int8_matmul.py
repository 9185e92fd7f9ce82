"""llmlab.kernels.int8_matmul: exact int32 sums of int8 codes, the scales applied once.

The reference is checked against an int64 computation that shares no code with it, and
against the float matmul it approximates. In Triton's interpreter (the ``interpret`` fixture
sets TRITON_INTERPRET=1 for one test) the kernel's output equals the reference *bit for bit*:
its int32 sums are exact like the reference's, and its float32 epilogue does the same
operations in the same order. GPU tests (marked ``gpu``) skip without CUDA.
"""

from __future__ import annotations

import pytest
import torch
from kernel_testing import gen as _gen
from kernel_testing import requires_cuda

from llmlab import bench
from llmlab.compress.quant import quantize
from llmlab.kernels import int8_matmul as I
from llmlab.kernels.launch import TritonKernel


def _codes(*shape, seed: int) -> torch.Tensor:
    return torch.randint(-128, 128, shape, generator=_gen(seed), dtype=torch.int8)


def _scales(n: int, seed: int) -> torch.Tensor:
    return 0.001 + 0.01 * torch.rand(n, generator=_gen(seed))


def _int64_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b.T`` as elementwise int64 products summed along K: no matmul involved."""
    return (a.long()[:, None, :] * b.long()[None, :, :]).sum(-1)


# --------------------------------------------------------------------------------------------
# The reference
# --------------------------------------------------------------------------------------------


# K = 1: torch._int_mm returns garbage there on the CPU (torch 2.13); int32_matmul avoids it.
@pytest.mark.parametrize("m, k, n", [(1, 37, 5), (16, 32, 16), (17, 1000, 9), (3, 1, 4)])
def test_int32_matmul_is_exact(m, k, n):
    a, b = _codes(m, k, seed=1), _codes(n, k, seed=2)
    acc = I.int32_matmul(a, b)
    assert acc.dtype == torch.int32 and acc.shape == (m, n)
    assert torch.equal(acc.long(), _int64_product(a, b))


def test_int32_matmul_holds_the_largest_sum_and_its_float64_path_is_exact(monkeypatch):
    # K = MAX_K terms of (-128) * (-128): the largest sum int32 can hold for any codes.
    a = torch.full((1, I.MAX_K), -128, dtype=torch.int8)
    assert I.int32_matmul(a, a).item() == I.MAX_K * 128 * 128 <= 2**31 - 1
    # Where torch._int_mm refuses the shapes (CUDA's small M, say), float64 takes over, exactly.
    a, b = _codes(5, 301, seed=3), _codes(7, 301, seed=4)

    def refuse(*args):
        raise RuntimeError("_int_mm: shape not supported")

    monkeypatch.setattr(torch, "_int_mm", refuse)
    assert torch.equal(I.int32_matmul(a, b).long(), _int64_product(a, b))
    full = torch.full((1, 4096), -128, dtype=torch.int8)
    assert I.int32_matmul(full, full).item() == 4096 * 128 * 128


@pytest.mark.parametrize("bias", [False, True])
def test_reference_is_the_exact_product_then_the_scales(bias):
    a, b = _codes(6, 45, seed=5), _codes(10, 45, seed=6)
    sa, sb = _scales(6, seed=7), _scales(10, seed=8)
    b_ = torch.randn(10, generator=_gen(9)) if bias else None
    expected = _int64_product(a, b).float() * sa[:, None] * sb[None, :]
    if bias:
        expected = expected + b_
    assert torch.equal(I.reference(a, b, sa, sb, b_), expected)
    # Per tensor: a 0-d or a one-element scale is the same as that scale on every row.
    one = torch.tensor(0.004)
    per_row = I.reference(a, b, one.expand(6), sb, b_)
    assert torch.equal(I.reference(a, b, one, sb, b_), per_row)
    assert torch.equal(I.reference(a, b, one.reshape(1), sb, b_), per_row)
    out16 = I.reference(a, b, sa, sb, b_, out_dtype=torch.bfloat16)
    assert out16.dtype == torch.bfloat16 and torch.equal(out16, expected.bfloat16())


def test_reference_approximates_the_float_matmul():
    # Quantize x per token and w per output channel: the int8 result equals the matmul of the
    # dequantized operands (to float32 rounding) and the float matmul to the quantization
    # error, which is bounded by half a step of each operand.
    x = torch.randn(8, 64, generator=_gen(10))
    w = 0.05 * torch.randn(24, 64, generator=_gen(11))
    (a, sa), (b, sb) = I.reference_quantize_rowwise(x), I.reference_quantize_rowwise(w)
    y = I.reference(a, b, sa, sb)
    dequantized = (a.double() * sa.double()[:, None]) @ (b.double() * sb.double()[:, None]).T
    torch.testing.assert_close(y.double(), dequantized, atol=1e-6, rtol=1e-6)
    # |x w - xq wq| <= sum_k |x_k| |dw_k| + |dx_k| |w_k| + |dx_k| |dw_k|, |dx| <= sa/2, |dw| <= sb/2
    half_a, half_b = sa[:, None] / 2, sb[:, None] / 2
    bound = x.abs() @ half_b.expand_as(w).T + half_a.expand_as(x) @ w.abs().T
    bound += half_a.expand_as(x) @ half_b.expand_as(w).T
    assert ((y - x @ w.T).abs() <= bound + 1e-6).all()
    assert (y - x @ w.T).abs().max() < 0.02 * (x @ w.T).abs().max()


def test_quantize_rowwise_reference_is_compress_quant_absmax_per_channel():
    x = 3 * torch.randn(9, 40, generator=_gen(12))
    x[4] = 0.0  # a row of zeros: scale 1, codes 0
    q, scale = I.reference_quantize_rowwise(x)
    theirs = quantize(x, 8, scheme="absmax", granularity="channel")
    assert q.dtype == torch.int8 and scale.dtype == torch.float32 and scale.shape == (9,)
    assert torch.equal(q, theirs.codes.to(torch.int8))
    assert torch.equal(scale, theirs.scale.squeeze(-1))
    assert scale[4] == 1 and not q[4].any()
    nonzero = [r for r in range(9) if r != 4]
    assert (q[nonzero].abs().amax(-1) == 127).all()  # every row uses its whole grid
    assert ((q.float() * scale[:, None] - x).abs() <= scale[:, None] / 2 + 1e-6).all()


# --------------------------------------------------------------------------------------------
# The kernels, in the interpreter
# --------------------------------------------------------------------------------------------


@pytest.fixture
def launches(monkeypatch):
    """How many Triton kernels were launched (to prove the kernel, not the reference, ran)."""
    seen = []
    launch = TritonKernel.launch

    def recording(self, grid, *args, interpret, **meta):
        seen.append(self)
        return launch(self, grid, *args, interpret=interpret, **meta)

    monkeypatch.setattr(TritonKernel, "launch", recording)
    return seen


# (M, K, N): decode (M = 1), K not a multiple of the interpreter's BLOCK_K (32) nor of 16,
# M and N not multiples of 16, and one exact fit.
SHAPES = [(1, 37, 5), (17, 40, 9), (3, 100, 33), (16, 64, 16)]


@pytest.mark.parametrize("m, k, n", SHAPES)
@pytest.mark.parametrize("bias", [False, True], ids=["no bias", "bias"])
@pytest.mark.parametrize("per", ["row", "tensor"])
def test_kernel_equals_reference_bit_for_bit(interpret, launches, m, k, n, bias, per):
    a, b = _codes(m, k, seed=m + k), _codes(n, k, seed=n)
    sa = _scales(m, seed=1) if per == "row" else torch.tensor(0.003)
    sb = _scales(n, seed=2)
    b_ = torch.randn(n, generator=_gen(3)) if bias else None
    out = I.int8_matmul(a, b, sa, sb, b_)
    assert launches == [I._matmul]
    assert out.shape == (m, n) and out.dtype == torch.float32
    assert torch.equal(out, I.reference(a, b, sa, sb, b_))


def test_kernel_extreme_codes_leading_dims_and_strides(interpret):
    # Every code -128, K = 1000: sums of 16384000 per element, exact; scales of 1 keep them.
    a = torch.full((2, 3, 1000), -128, dtype=torch.int8)
    b = torch.full((5, 1000), -128, dtype=torch.int8)
    out = I.int8_matmul(a, b, torch.ones(2, 3), torch.ones(5))
    assert out.shape == (2, 3, 5) and (out == 1000 * 128 * 128).all()
    # b: every other row of a larger matrix (read in place); a: a transpose (copied first).
    big = _codes(14, 50, seed=4)
    b = big[::2]
    a = _codes(50, 4, seed=5).t()
    assert not b.is_contiguous() and a.stride(-1) != 1
    sa, sb = _scales(4, seed=6), torch.tensor([0.02])  # per-tensor b_scale, one element
    assert torch.equal(I.int8_matmul(a, b, sa, sb), I.reference(a, b, sa, sb))
    # Scales and a bias taken from every other element of larger tensors.
    sa, sb, bias = _scales(8, seed=7)[::2], _scales(14, seed=8)[::2], torch.randn(14)[::2]
    out = I.int8_matmul(a, b, sa, sb, bias)
    assert torch.equal(out, I.reference(a, b, sa, sb, bias))


def test_quantize_rowwise_kernel_equals_reference(interpret, launches):
    x = 3 * torch.randn(6, 53, generator=_gen(7))
    x[2] = 0.0
    # A row whose scale is exactly 1 (absmax 127) and ties at +-0.5, 1.5, 2.5: half to even.
    x[3, :7] = torch.tensor([127.0, 0.5, 1.5, 2.5, -0.5, -2.5, -127.0])
    x[3, 7:] = 0.0
    q, scale = I.quantize_rowwise(x)
    assert launches == [I._quantize]
    q_ref, scale_ref = I.reference_quantize_rowwise(x)
    assert torch.equal(q, q_ref) and torch.equal(scale, scale_ref)
    assert q[3, :7].tolist() == [127, 0, 2, 2, 0, -2, -127]
    # Leading dims, and a row much longer than the interpreter's chunk (16 columns).
    x3 = torch.randn(2, 3, 70, generator=_gen(8))
    for ours, theirs in zip(I.quantize_rowwise(x3), I.reference_quantize_rowwise(x3), strict=True):
        assert torch.equal(ours, theirs)


def test_end_to_end_w8a8_linear(interpret):
    # A linear layer in W8A8: per-token activation codes, per-channel weight codes, bias.
    linear = torch.nn.Linear(48, 20)
    with torch.no_grad():
        linear.weight.copy_(0.1 * torch.randn(20, 48, generator=_gen(9)))
        linear.bias.copy_(torch.randn(20, generator=_gen(10)))
    x = torch.randn(5, 48, generator=_gen(11))
    (a, sa), (b, sb) = I.quantize_rowwise(x), I.quantize_rowwise(linear.weight)
    y = I.int8_matmul(a, b, sa, sb, bias=linear.bias)
    assert not y.requires_grad  # inference only, though weight and bias require grad
    expected = linear(x).detach()
    torch.testing.assert_close(y, expected, atol=0.05 * expected.abs().max().item(), rtol=0)


# --------------------------------------------------------------------------------------------
# Dispatch and validation
# --------------------------------------------------------------------------------------------


_A, _B = torch.zeros(2, 8, dtype=torch.int8), torch.zeros(4, 8, dtype=torch.int8)
_SA, _SB = torch.ones(2), torch.ones(4)


@pytest.mark.parametrize(
    "args, kwargs, error, words",
    [
        (([1], _B, _SA, _SB), {}, TypeError, "a: expected a torch.Tensor"),
        (
            (_A.float(), _B, _SA, _SB),
            {},
            TypeError,
            r"a: expected dtype torch.int8 .*got torch.float32",
        ),
        ((_A, _B.short(), _SA, _SB), {}, TypeError, "b: expected dtype torch.int8"),
        ((_A, _B[:, :7], _SA, _SB), {}, ValueError, r"b: expected shape \(N, 8\) .* \(4, 7\)"),
        ((_A, _B[0], _SA, _SB), {}, ValueError, r"b: expected shape \(N, 8\)"),
        ((_A, _B, torch.ones(3), _SB), {}, ValueError, r"a_scale: expected shape \(2,\) .* \(3,\)"),
        ((_A, _B, _SA.long(), _SB), {}, TypeError, "a_scale: expected dtype"),
        ((_A, _B, _SA, torch.ones(2)), {}, ValueError, r"b_scale: expected shape \(4,\)"),
        ((_A, _B, _SA, None), {}, TypeError, "b_scale: expected a torch.Tensor"),
        ((_A, _B, _SA, _SB, torch.ones(3)), {}, ValueError, r"bias: expected shape \(4,\)"),
        ((_A, _B, _SA, _SB), {"out_dtype": torch.int32}, TypeError, "out_dtype: expected one"),
    ],
)
def test_rejects_bad_input(args, kwargs, error, words):
    with pytest.raises(error, match=words):
        I.int8_matmul(*args, **kwargs)


def test_rejects_k_beyond_int32_and_bad_quantize_input():
    wide = torch.zeros(1, I.MAX_K + 1, dtype=torch.int8)
    with pytest.raises(ValueError, match=f"a: expected K <= {I.MAX_K}"):
        I.int8_matmul(wide, wide, torch.ones(1), torch.ones(1))
    with pytest.raises(TypeError, match="x: expected dtype"):
        I.quantize_rowwise(_A)
    with pytest.raises(ValueError, match=r"x: expected shape \(..., K\) with K >= 1"):
        I.quantize_rowwise(torch.tensor(1.0))


def test_interpreter_refuses_half_precision(interpret):
    with pytest.raises(TypeError, match="a_scale: the Triton interpreter runs float32 only"):
        I.int8_matmul(_A, _B, _SA.half(), _SB)
    with pytest.raises(TypeError, match="bias: the Triton interpreter runs float32 only"):
        I.int8_matmul(_A, _B, _SA, _SB, torch.ones(4, dtype=torch.bfloat16))
    with pytest.raises(TypeError, match="out_dtype: the Triton interpreter runs float32 only"):
        I.int8_matmul(_A, _B, _SA, _SB, out_dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="x: the Triton interpreter runs float32 only"):
        I.quantize_rowwise(torch.ones(2, 8, dtype=torch.float16))


def test_empty_inputs_pass_through(interpret, launches):
    assert I.int8_matmul(_A[:0], _B, _SA[:0], _SB).shape == (0, 4)
    bias = torch.arange(4.0)
    out = I.int8_matmul(_A[:, :0], _B[:, :0], _SA, _SB, bias)  # K = 0: the sum is empty
    assert torch.equal(out, bias.expand(2, 4))
    assert launches == []


def test_results_never_require_grad_on_the_reference_path(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    bias = torch.ones(4, requires_grad=True)
    assert not I.int8_matmul(_A, _B, _SA, _SB, bias).requires_grad
    q, scale = I.quantize_rowwise(torch.ones(2, 8, requires_grad=True))
    assert not q.requires_grad and not scale.requires_grad


# --------------------------------------------------------------------------------------------
# Benchmark entry
# --------------------------------------------------------------------------------------------


def test_benchmark_flops_and_cpu_run():
    b = bench.registry()["int8_matmul"]
    by = {(c.panel, c.x): c for c in b.cases("full")}
    assert b.work(by[("bf16 out, N=14336, K=4096", 4096)]) == 2 * 4096 * 14336 * 4096
    assert {c.x for c in b.cases("full")} >= {1, 8192}  # decode and prefill
    machine = bench.Machine("test cpu", "test-cpu", "cpu", 10.0, 0.5, "float32")
    record = bench.run(b, machine, "cpu", scale="cpu", log=lambda s: None)
    assert record["results"] and all(e["throughput"] > 0 for e in record["results"])
    assert set(b.setup(b.cases("cpu")[0], "cpu")) == {"triton", "eager", "compile", "bf16"}


# --------------------------------------------------------------------------------------------
# The GPU path
# --------------------------------------------------------------------------------------------


def test_tile_pruning_keeps_a_config():
    triton = pytest.importorskip("triton")
    configs = I._configs(triton)
    for m in (1, 16, 17, 300, 8192):
        kept = I._prune_tiles(configs, {"M": m})
        assert kept and all(c.kwargs["BLOCK_M"] <= max(16, 2 * m) for c in kept)
    assert all(c.kwargs["BLOCK_K"] % 32 == 0 for c in configs)


def test_kernels_compile_for_hopper(monkeypatch):
    """Compile the GEMM for sm_90a with Triton's bundled ptxas (no GPU needed) at a decode and
    a prefill tile, and the quantizer: they build, do not spill registers, and the large
    tile runs on Hopper's warp-group MMA (int8 tensor cores)."""
    triton = pytest.importorskip("triton")
    i8, f32, bf16 = (torch.empty(1, dtype=d) for d in (torch.int8, torch.float32, torch.bfloat16))
    args = (i8, i8, f32, f32, bf16, bf16, 4096, 4096, 4096, 4096, 4096, 4096, 1, 1)
    try:
        bench.compile_offline(I._quantize, (f32, i8, f32, 64, 64, 64), num_warps=4, CHUNK=1024)
    except (ImportError, FileNotFoundError, RuntimeError) as err:  # no NVIDIA toolchain here
        pytest.skip(f"cannot compile for sm_90 here: {err}")
    configs = I._configs(triton)
    for config in (configs[0], configs[-1]):
        meta = {"num_warps": config.num_warps, "num_stages": config.num_stages, **config.kwargs}
        report = bench.compile_offline(I._matmul, args, HAS_BIAS=True, **meta)
        assert report["stack_bytes"] in (0, None), (config, report)
    assert report["warp_group_mma"], report
    report = bench.compile_offline(I._quantize, (bf16, i8, f32, 4096, 4096, 4096), CHUNK=2048)
    assert report["stack_bytes"] in (0, None), report


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize(
    "m, k, n", [(1, 4096, 4096), (17, 4096, 14336), (4096, 4096, 4096), (33, 1000, 300)]
)
def test_gpu_matches_reference(m, k, n):
    a = torch.randint(-128, 128, (m, k), device="cuda", dtype=torch.int8)
    b = torch.randint(-128, 128, (n, k), device="cuda", dtype=torch.int8)
    ones_m, ones_n = torch.ones(m, device="cuda"), torch.ones(n, device="cuda")
    # Scales of 1: the output is the int32 sum converted to float32, so it must be identical.
    exact = I.int32_matmul(a.cpu(), b.cpu()).float().cuda()
    assert torch.equal(I.int8_matmul(a, b, ones_m, ones_n), exact)
    sa, sb = torch.rand(m, device="cuda") / 127, torch.rand(n, device="cuda") / 127
    bias = torch.randn(n, device="cuda")
    ref = I.reference(a, b, sa, sb, bias)
    out = I.int8_matmul(a, b, sa, sb, bias)
    # The epilogue may fuse * b_scale + bias into one FMA: a last-bit difference at most.
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6 * ref.abs().max().item())
    out16 = I.int8_matmul(a, b, sa, sb, bias, out_dtype=torch.bfloat16)
    torch.testing.assert_close(out16.float(), ref, rtol=8e-3, atol=1e-2 * ref.abs().max().item())


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gpu_quantize_rowwise_is_exact(dtype):
    # div_rn and the add-and-subtract rounding give torch's codes exactly.
    x = (3 * torch.randn(257, 5000, device="cuda")).to(dtype)
    x[7] = 0
    q, scale = I.quantize_rowwise(x)
    q_ref, scale_ref = I.reference_quantize_rowwise(x)
    assert torch.equal(scale, scale_ref) and torch.equal(q, q_ref)
