"""llmlab.kernels.softmax: the Triton kernel equals the reference, forward and backward.

On the CPU the kernels run in Triton's interpreter: each test that needs it asks for the
``interpret`` fixture, which sets TRITON_INTERPRET=1 for that test only. The kernel module
decides between interpreter and GPU compiler when a kernel is *launched* (not when Triton is
imported), so the order in which pytest or pytest-xdist imports modules does not matter.
GPU tests (marked ``gpu``) skip without CUDA.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from kernel_testing import requires_cuda

from llmlab.kernels import softmax as S


def _grad_check(x: torch.Tensor, atol: float = 1e-6):
    """Forward and input gradient of our op against torch.softmax, in float32."""
    x_ours = x.detach().clone().requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    y_ours = S.softmax(x_ours)
    y_ref = torch.softmax(x_ref, dim=-1)
    torch.testing.assert_close(y_ours, y_ref, atol=atol, rtol=1e-5)
    dy = torch.randn_like(y_ref)
    y_ours.backward(dy)
    y_ref.backward(dy)
    torch.testing.assert_close(x_ours.grad, x_ref.grad, atol=atol, rtol=1e-5)
    assert y_ours.grad_fn is not None and "Softmax" in type(y_ours.grad_fn).__name__


# --------------------------------------------------------------------------------------------
# The reference
# --------------------------------------------------------------------------------------------


def test_reference_matches_torch():
    x = torch.randn(3, 5, 17, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(S.reference(x), torch.softmax(x, dim=-1))
    big = 1000.0 * x  # exp would overflow without the max subtraction
    torch.testing.assert_close(S.reference(big), torch.softmax(big, dim=-1))


def test_reference_backward_matches_autograd():
    x = torch.randn(4, 9, requires_grad=True)
    y = torch.softmax(x, dim=-1)
    dy = torch.randn_like(y)
    (expected,) = torch.autograd.grad(y, x, dy)
    torch.testing.assert_close(S.reference_backward(y.detach(), dy), expected)


# --------------------------------------------------------------------------------------------
# The kernels, in the interpreter
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 7), (3, 33), (4, 1000), (2, 3, 64), (5, 1), (16,)])
def test_kernel_matches_reference(interpret, shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape)))
    _grad_check(x)


def test_kernel_handles_masked_and_large_logits(interpret):
    x = 30.0 * torch.randn(4, 50, generator=torch.Generator().manual_seed(1))
    x[0, :10] = float("-inf")  # masked logits are a common input
    x[1, 25:] = float("-inf")
    _grad_check(x, atol=1e-5)


@pytest.mark.parametrize("shape", [(3, 33), (2, 1000), (2, 17)])
def test_looped_kernel_matches_reference(interpret, monkeypatch, shape):
    # Rows longer than MAX_FUSED_COLS take the online (looped) kernels; shrink the limit so
    # that small rows exercise them, chunk by chunk.
    monkeypatch.setattr(S, "MAX_FUSED_COLS", 16)
    monkeypatch.setattr(S, "INTERPRETER_CHUNK", 16)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(shape[1]))
    x[0, : min(20, shape[1] - 1)] = float("-inf")  # a whole first chunk of -inf
    _grad_check(x)


def test_non_contiguous_input(interpret):
    x = torch.randn(40, 6).t()  # rows of 40 with a column stride of 6
    assert not x.is_contiguous()
    _grad_check(x)


def test_triton_imported_before_the_variable_is_set():
    # The situation a notebook (or a pytest worker) creates: Triton imported first, the
    # interpreter asked for afterwards. A fresh process makes the import order certain.
    pytest.importorskip("triton")
    code = textwrap.dedent(
        """
        import os, torch
        import triton.language as tl
        from llmlab.kernels import softmax as S
        os.environ["TRITON_INTERPRET"] = "1"
        x = torch.randn(3, 33, requires_grad=True)
        y = S.softmax(x)
        torch.testing.assert_close(y, torch.softmax(x, -1))
        y.sum().backward()
        # After the launch, triton.language is as it was: GPU compilation would still work.
        assert type(tl.max).__name__ == "JITFunction"
        assert tl.program_id.__module__.startswith("triton.language")
        print("ok")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-2000:]


# --------------------------------------------------------------------------------------------
# Dispatch and validation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, error, words",
    [
        ([1.0, 2.0], TypeError, "x: expected a torch.Tensor"),
        (torch.tensor(1.0), ValueError, "x: expected at least 1 dimension"),
        (torch.zeros(3, 0), ValueError, "x: expected at least one column"),
        (torch.zeros(3, 4, dtype=torch.int64), TypeError, "torch.int64"),
    ],
)
def test_rejects_bad_input(bad, error, words):
    with pytest.raises(error, match=words):
        S.softmax(bad)


def test_empty_rows_pass_through(interpret):
    assert S.softmax(torch.randn(0, 8)).shape == (0, 8)


# --------------------------------------------------------------------------------------------
# The GPU path
# --------------------------------------------------------------------------------------------


def test_warp_pruning_keeps_a_config():
    triton = pytest.importorskip("triton")
    configs = S._warps_configs(triton)
    for block in (1, 16, 1024, 4096, 32768):
        for limit in (32, 64):
            kept = S._pruned_warps(limit)(configs, {}, BLOCK=block)
            assert kept and all(c.num_warps in (4, 8, 16, 32) for c in kept)


def test_kernels_compile_for_hopper():
    """Compile every kernel for sm_90a with the ptxas bundled with Triton (no GPU needed)."""
    pytest.importorskip("triton")
    from llmlab.bench import compile_offline

    try:
        compile_offline(S._fwd, (torch.empty(1), torch.empty(1), 16, 16, 16), BLOCK=16)
    except (ImportError, FileNotFoundError, RuntimeError) as err:  # no NVIDIA toolchain here
        pytest.skip(f"cannot compile for sm_90 here: {err}")
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        t = torch.empty(1, dtype=dtype)
        n = 4096
        fwd = compile_offline(S._fwd, (t, t, n, n, n), num_warps=16, BLOCK=n)
        bwd = compile_offline(S._bwd, (t, t, t, n, n, n, n), num_warps=16, BLOCK=n)
        fwd_loop = compile_offline(S._fwd_looped, (t, t, n, n, 40000), num_warps=8, CHUNK=4096)
        bwd_loop = compile_offline(
            S._bwd_looped, (t, t, t, n, n, n, 40000), num_warps=8, CHUNK=4096
        )
        for report in (fwd, bwd, fwd_loop, bwd_loop):
            assert report["stack_bytes"] in (0, None), report  # no register spills


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(4096, 4096), (300, 5000), (64, 32768), (8, 40000)])
def test_gpu_matches_reference(dtype, shape):
    # (300, 5000): not a power of two; (64, 32768): the largest one-block row forward, looped
    # backward; (8, 40000): looped both ways.
    x = torch.randn(shape, device="cuda", dtype=dtype, requires_grad=True)
    y = S.softmax(x)
    expected = S.reference(x.detach().float())
    atol = {torch.float16: 2e-3, torch.bfloat16: 1e-2, torch.float32: 1e-5}[dtype]
    torch.testing.assert_close(y.float(), expected, atol=atol, rtol=2e-2)
    dy = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, x, dy)
    dx_expected = S.reference_backward(expected, dy.float())
    torch.testing.assert_close(dx.float(), dx_expected, atol=atol, rtol=5e-2)


@pytest.mark.gpu
@requires_cuda
def test_gpu_leading_dims_and_strides():
    x = torch.randn(2, 3, 50, 1000, device="cuda", dtype=torch.bfloat16)[..., ::2]  # strided rows
    torch.testing.assert_close(S.softmax(x).float(), S.reference(x.float()), atol=1e-2, rtol=2e-2)
