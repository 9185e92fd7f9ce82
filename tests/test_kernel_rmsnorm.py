"""llmlab.kernels.rmsnorm: the Triton kernels equal LLaMA's RMSNorm, forward and backward.

On the CPU the kernels run in Triton's interpreter (the ``interpret`` fixture sets
TRITON_INTERPRET=1 for one test); the kernel module decides between interpreter and GPU
compiler at launch. GPU tests (marked ``gpu``) skip without CUDA.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kernel_testing import gen as _gen
from kernel_testing import requires_cuda

from llmlab import bench
from llmlab.kernels import rmsnorm as R
from llmlab.kernels._common import next_power_of_2
from llmlab.nn.norms import RMSNorm


def _inputs(shape, seed=0, dtype=torch.float32):
    x = torch.randn(shape, generator=_gen(seed)).to(dtype)
    w = (1.0 + 0.5 * torch.randn(shape[-1], generator=_gen(seed + 1))).to(dtype)
    return x, w


def _check_against_torch(x, w, eps=1e-6, atol=1e-5):
    """Forward, dx and dweight of rms_norm against F.rms_norm, in float32."""
    x1, w1 = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    x2, w2 = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    y1 = R.rms_norm(x1, w1, eps)
    y2 = F.rms_norm(x2, (x.shape[-1],), w2, eps)
    assert y1.grad_fn is not None and "RMSNorm" in type(y1.grad_fn).__name__
    torch.testing.assert_close(y1, y2, atol=atol, rtol=1e-5)
    dy = torch.randn(y1.shape, generator=_gen(7))
    ours = torch.autograd.grad(y1, (x1, w1), dy)
    theirs = torch.autograd.grad(y2, (x2, w2), dy)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, atol=atol, rtol=1e-4)


# --------------------------------------------------------------------------------------------
# The reference
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_reference_is_llmlab_and_llama_rmsnorm(dtype):
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    x, w = _inputs((3, 5, 64), dtype=dtype)
    ours, hf = RMSNorm(64, eps=1e-5), llama.LlamaRMSNorm(64, eps=1e-5)
    with torch.no_grad():
        ours.weight.copy_(w.float())
        hf.weight.copy_(w.float())
    ours, hf = ours.to(dtype), hf.to(dtype)
    expected = hf(x)
    assert R.reference(x, w, 1e-5).dtype == dtype
    torch.testing.assert_close(R.reference(x, w, 1e-5), expected, atol=0, rtol=0)
    torch.testing.assert_close(ours(x), expected, atol=0, rtol=0)


def test_reference_matches_torch_in_float32_and_promotes_like_llama():
    x, w = _inputs((4, 33))
    torch.testing.assert_close(R.reference(x, w, 1e-6), F.rms_norm(x, (33,), w, 1e-6))
    # bf16 activations with a float32 weight: LLaMA's formula gives float32 (weight * n_bf16).
    y = R.reference(x.bfloat16(), w, 1e-6)
    assert y.dtype == torch.float32
    n = x.bfloat16().float() * torch.rsqrt(x.bfloat16().float().pow(2).mean(-1, True) + 1e-6)
    torch.testing.assert_close(y, w * n.bfloat16().float(), atol=0, rtol=0)


def test_reference_backward_matches_autograd():
    x, w = _inputs((6, 20), seed=3)
    x.requires_grad_(), w.requires_grad_()
    dy = torch.randn(6, 20, generator=_gen(4))
    expected = torch.autograd.grad(R.reference(x, w, 1e-5), (x, w), dy)
    got = R.reference_backward(x.detach(), w.detach(), dy, 1e-5)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b)


# --------------------------------------------------------------------------------------------
# The kernels, in the interpreter
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1), (3, 37), (2, 5, 64), (7, 100), (13,)])
def test_kernel_matches_torch(interpret, shape):
    # Odd widths (not powers of two) exercise the masks; 7 and 10 rows over 3 backward
    # programs share the rows unevenly; a single row leaves programs idle.
    x, w = _inputs(shape, seed=sum(shape))
    _check_against_torch(x, w, eps=1e-5)


def test_kernel_matches_transformers_llama(interpret):
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    hf = llama.LlamaRMSNorm(48, eps=1e-6)
    x, w = _inputs((2, 9, 48), seed=11)
    with torch.no_grad():
        hf.weight.copy_(w)
    xg = x.clone().requires_grad_()
    y = R.rms_norm(xg, hf.weight, 1e-6)
    y_hf = hf(x.clone().requires_grad_())
    torch.testing.assert_close(y, y_hf, atol=1e-6, rtol=1e-5)
    y.sum().backward()
    assert hf.weight.grad is not None and xg.grad is not None


def test_dweight_is_deterministic_and_rows_are_shared_out(interpret, monkeypatch):
    # More rows than programs; every program's partial sum must land in dweight exactly once.
    monkeypatch.setattr(R, "INTERPRETER_PROGRAMS", 4)
    x, w = _inputs((11, 24), seed=5)
    dy = torch.randn(11, 24, generator=_gen(6))
    runs = []
    for _ in range(2):
        wg = w.clone().requires_grad_()
        (dw,) = torch.autograd.grad(R.rms_norm(x, wg), wg, dy)
        runs.append(dw)
    assert torch.equal(runs[0], runs[1])
    torch.testing.assert_close(runs[0], R.reference_backward(x, w, dy)[1], atol=1e-5, rtol=1e-5)


def test_strided_rows_and_gradient(interpret):
    base = torch.randn(6, 2, 40, generator=_gen(8))
    x = base[:, 0, :33]  # rows of 33 with a row stride of 80: read in place
    w = torch.randn(33, generator=_gen(9))
    assert not x.is_contiguous()
    _check_against_torch(x, w)
    xt = torch.randn(30, 5, generator=_gen(10)).t()  # last dim not contiguous: copied first
    _check_against_torch(xt, torch.randn(30, generator=_gen(12)))


def test_weight_without_grad(interpret):
    x, w = _inputs((4, 10), seed=13)
    xg = x.clone().requires_grad_()
    (dx,) = torch.autograd.grad(R.rms_norm(xg, w).sum(), xg)
    torch.testing.assert_close(dx, R.reference_backward(x, w, torch.ones(4, 10))[0])


# --------------------------------------------------------------------------------------------
# Dispatch and validation
# --------------------------------------------------------------------------------------------


_X, _W = torch.zeros(2, 8), torch.ones(8)


@pytest.mark.parametrize(
    "args, error, words",
    [
        (([1.0], _W), TypeError, "x: expected a torch.Tensor"),
        ((_X, "w"), TypeError, "weight: expected a torch.Tensor"),
        ((_X.long(), _W), TypeError, "x: expected dtype .* got torch.int64"),
        ((_X, _W.double()), TypeError, "weight: expected dtype .* got torch.float64"),
        ((torch.tensor(1.0), _W), ValueError, r"x: expected shape \(..., d_model\)"),
        ((_X, torch.ones(7)), ValueError, r"weight: expected shape \(8,\) .* got \(7,\)"),
        ((_X, torch.ones(1, 8)), ValueError, "weight: expected shape"),
        ((_X, _W, -1.0), ValueError, "eps: expected a number >= 0"),
        ((_X, _W, "1e-6"), ValueError, "eps: expected a number"),
    ],
)
def test_rejects_bad_input(args, error, words):
    with pytest.raises(error, match=words):
        R.rms_norm(*args)


def test_interpreter_rejects_half_precision_and_huge_rows(interpret):
    with pytest.raises(TypeError, match="x: the Triton interpreter runs float32 only"):
        R.rms_norm(_X.half(), _W)
    with pytest.raises(TypeError, match="weight: the Triton interpreter runs float32 only"):
        R.rms_norm(_X, _W.bfloat16())
    wide = R.MAX_COLS + 1
    with pytest.raises(ValueError, match=f"x: .* d_model <= {R.MAX_COLS}"):
        R.rms_norm(torch.zeros(1, wide), torch.ones(wide))


def test_empty_input_passes_through(interpret):
    assert R.rms_norm(torch.zeros(0, 8), _W).shape == (0, 8)


# --------------------------------------------------------------------------------------------
# Benchmark entry
# --------------------------------------------------------------------------------------------


def test_benchmark_bytes_and_cpu_run():
    b = bench.registry()["rmsnorm"]
    case = next(c for c in b.cases("full") if c.panel == "bfloat16, backward" and c.x == 4096)
    assert b.work(case) == 3 * 16384 * 4096 * 2  # read x and dy, write dx, 2 bytes each
    machine = bench.Machine("test cpu", "test-cpu", "cpu", 10.0, 0.5, "float32")
    record = bench.run(b, machine, "cpu", scale="cpu", log=lambda s: None)
    assert record["results"] and all(e["throughput"] > 0 for e in record["results"])
    assert set(b.setup(b.cases("cpu")[0], "cpu")) == {"triton", "torch", "eager", "compile"}


# --------------------------------------------------------------------------------------------
# The GPU path
# --------------------------------------------------------------------------------------------


def test_warp_pruning_keeps_a_config():
    triton = pytest.importorskip("triton")
    configs = R._warps_configs(triton)
    for block in (1, 16, 1024, 8192, 16384):
        for limit in (16, 32):
            kept = R._pruned_warps(limit)(configs, {}, BLOCK=block)
            assert kept and all(c.num_warps in (1, 2, 4, 8, 16, 32) for c in kept)


def test_kernels_compile_for_hopper():
    """Compile both kernels for sm_90a with Triton's bundled ptxas (no GPU needed), in every
    dtype, at every warp count the pruning keeps, for SmolLM2-135M's, LLaMA-3-8B's and -70B's
    d_model: they build and do not spill registers."""
    triton = pytest.importorskip("triton")
    t32 = torch.empty(1)
    try:
        bench.compile_offline(R._fwd, (t32,) * 4 + (64, 64, 64, 1e-6), num_warps=1, BLOCK=64)
    except (ImportError, FileNotFoundError, RuntimeError) as err:  # no NVIDIA toolchain here
        pytest.skip(f"cannot compile for sm_90 here: {err}")
    configs = R._warps_configs(triton)
    for d in (576, 4096, 8192):
        block = next_power_of_2(d)
        for dtype in (torch.bfloat16, torch.float32):
            t = torch.empty(1, dtype=dtype)
            for config in R._pruned_warps(32)(configs, {}, BLOCK=block):
                report = bench.compile_offline(
                    R._fwd, (t, t, t, t32, d, d, d, 1e-6), num_warps=config.num_warps, BLOCK=block
                )
                assert report["stack_bytes"] in (0, None), ("fwd", d, dtype, config, report)
            for config in R._pruned_warps(16)(configs, {}, BLOCK=block):
                report = bench.compile_offline(
                    R._bwd,
                    (t, t, t, t32, t, t32, d, d, d, 16384, d, 31),
                    num_warps=config.num_warps,
                    BLOCK=block,
                )
                assert report["stack_bytes"] in (0, None), ("bwd", d, dtype, config, report)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(4, 1000, 4096), (3, 257, 576), (5, 16384), (7, 33)])
def test_gpu_matches_reference(dtype, shape):
    x = torch.randn(shape, device="cuda", dtype=dtype, requires_grad=True)
    w = (1 + 0.1 * torch.randn(shape[-1], device="cuda")).to(dtype).requires_grad_()
    y = R.rms_norm(x, w, 1e-6)
    assert y.dtype == dtype
    # The truth: the LLaMA formula from the same (rounded) inputs; n may round differently
    # by one ulp of dtype when the two sums differ in their last float32 bit.
    atol = {torch.float16: 4e-3, torch.bfloat16: 3e-2, torch.float32: 1e-5}[dtype]
    torch.testing.assert_close(y, R.reference(x.detach(), w.detach()), atol=atol, rtol=1e-2)
    dy = torch.randn_like(y)
    dx, dw = torch.autograd.grad(y, (x, w), dy)
    dx_ref, dw_ref = R.reference_backward(x.detach().float(), w.detach().float(), dy.float())
    torch.testing.assert_close(dx.float(), dx_ref, atol=atol, rtol=1e-2)
    rows = x.numel() // shape[-1]  # dweight sums rows: its error grows with sqrt(rows)
    torch.testing.assert_close(dw.float(), dw_ref, atol=atol * rows**0.5, rtol=2e-2)


@pytest.mark.gpu
@requires_cuda
def test_gpu_dweight_is_deterministic():
    x = torch.randn(8192, 2048, device="cuda", dtype=torch.bfloat16)
    w = torch.ones(2048, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    dy = torch.randn_like(x)
    first, second = (torch.autograd.grad(R.rms_norm(x, w), w, dy)[0] for _ in range(2))
    assert torch.equal(first, second)
