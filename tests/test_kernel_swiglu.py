"""llmlab.kernels.swiglu: the fused gate equals F.silu(gate) * up, forward and backward.

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
from llmlab.kernels import swiglu as W
from llmlab.nn.ffn import FeedForward


def _check(gate: torch.Tensor, up: torch.Tensor, atol: float = 1e-6):
    """Forward and both input gradients of swiglu() against F.silu(gate) * up, in float32."""
    ours = [t.detach().clone().requires_grad_() for t in (gate, up)]
    theirs = [t.detach().clone().requires_grad_() for t in (gate, up)]
    h_ours = W.swiglu(*ours)
    h_ref = F.silu(theirs[0]) * theirs[1]
    assert h_ours.grad_fn is not None and "SwiGLU" in type(h_ours.grad_fn).__name__
    torch.testing.assert_close(h_ours, h_ref, atol=atol, rtol=1e-5)
    dh = torch.randn(h_ref.shape, generator=_gen(1))
    h_ours.backward(dh)
    h_ref.backward(dh)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=atol, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# The reference
# --------------------------------------------------------------------------------------------


def test_reference_backward_matches_autograd():
    gate = 4 * torch.randn(3, 37, generator=_gen(0), requires_grad=True)
    up = torch.randn(3, 37, generator=_gen(1), requires_grad=True)
    h = W.reference(gate, up)
    dh = torch.randn(h.shape, generator=_gen(2))
    expected = torch.autograd.grad(h, (gate, up), dh)
    for a, b in zip(W.reference_backward(gate.detach(), up.detach(), dh), expected, strict=True):
        torch.testing.assert_close(a, b)


# --------------------------------------------------------------------------------------------
# The kernels, in the interpreter
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 64), (5, 65), (2, 3, 130), (4, 1)])
def test_kernel_matches_reference(interpret, shape):
    # 65 and 130 columns: rows that end in a partly masked block (INTERPRETER_BLOCK = 64).
    g = _gen(sum(shape))
    _check(3 * torch.randn(shape, generator=g), torch.randn(shape, generator=g))


@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")
def test_extreme_gates(interpret):
    # sigmoid saturates: silu(-100) = 0 and silu(100) = 100 with finite gradients. (In the
    # interpreter sigmoid(-100) = 1 / (1 + exp(100)) overflows NumPy's exp to inf: exactly 0.)
    gate = torch.tensor([[-100.0, -20.0, -1.0, 0.0, 1.0, 20.0, 100.0]])
    _check(gate, torch.randn(gate.shape, generator=_gen(3)))


def test_halves_of_a_fused_projection_are_read_in_place(interpret, monkeypatch):
    # gate_up = x @ W_gate_up.T, then chunk: two views whose rows are 2 * d_ff apart.
    gate_up = torch.randn(6, 2 * 70, generator=_gen(4))
    gate, up = gate_up.chunk(2, dim=-1)
    assert not gate.is_contiguous()
    monkeypatch.setattr(
        torch.Tensor, "contiguous", lambda *a, **k: pytest.fail("an input was copied")
    )
    _check(gate, up)


def test_non_contiguous_last_dim_and_upstream_gradient(interpret):
    gate = torch.randn(40, 6, generator=_gen(5)).t()  # columns 6 apart: copied, then fused
    up = torch.randn(6, 40, generator=_gen(6))
    _check(gate, up)
    g, u = gate.clone().requires_grad_(), up.clone().requires_grad_()
    h = W.swiglu(g, u).t()  # the gradient arrives transposed
    dh = torch.randn(h.shape, generator=_gen(7))
    ours = torch.autograd.grad(h, (g, u), dh)
    theirs = torch.autograd.grad((F.silu(g) * u).t(), (g, u), dh)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_drop_in_for_feed_forward(interpret):
    # FeedForward's swiglu hidden layer, with the fused gate in the middle: same output, same
    # gradients for every weight.
    torch.manual_seed(0)
    ffn = FeedForward(d_model=12, d_ff=40, activation="swiglu")
    x = torch.randn(2, 5, 12, generator=_gen(8))
    ours = ffn.down_proj(W.swiglu(ffn.gate_proj(x), ffn.up_proj(x)))
    ours_grads = torch.autograd.grad(ours.square().sum(), list(ffn.parameters()))
    theirs = ffn(x)
    theirs_grads = torch.autograd.grad(theirs.square().sum(), list(ffn.parameters()))
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)
    for a, b in zip(ours_grads, theirs_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# Dispatch and validation
# --------------------------------------------------------------------------------------------


_G = torch.zeros(3, 8)


@pytest.mark.parametrize(
    "gate, up, error, words",
    [
        ([1.0], _G, TypeError, "gate: expected a torch.Tensor"),
        (_G, None, TypeError, "up: expected a torch.Tensor"),
        (torch.tensor(1.0), _G, ValueError, "gate: expected at least 1 dimension"),
        (_G.long(), _G, TypeError, "gate: expected dtype .* got torch.int64"),
        (_G, _G.double(), TypeError, "up: expected dtype"),
        (_G, torch.zeros(3, 9), ValueError, r"up: expected the shape of gate \(3, 8\)"),
        (_G, _G.half(), TypeError, r"up: expected the dtype of gate \(torch.float32\)"),
    ],
)
def test_rejects_bad_input(gate, up, error, words):
    with pytest.raises(error, match=words):
        W.swiglu(gate, up)


def test_empty_input_passes_through(interpret):
    assert W.swiglu(torch.zeros(0, 8), torch.zeros(0, 8)).shape == (0, 8)


# --------------------------------------------------------------------------------------------
# Benchmark entry
# --------------------------------------------------------------------------------------------


def test_benchmark_bytes_and_cpu_run():
    b = bench.registry()["swiglu"]
    by = {(c.panel, c.x): c for c in b.cases("full")}
    rows = 8192
    assert b.work(by[("bfloat16, forward", 8192)]) == 3 * rows * 8192 * 2  # gate, up in; h out
    assert b.work(by[("float16, backward", 14336)]) == 5 * rows * 14336 * 2
    machine = bench.Machine("test cpu", "test-cpu", "cpu", 10.0, 0.5, "float32")
    record = bench.run(b, machine, "cpu", scale="cpu", log=lambda s: None)
    assert record["results"] and all(e["throughput"] > 0 for e in record["results"])
    assert set(b.setup(b.cases("cpu")[0], "cpu")) == {"triton", "eager", "compile"}


# --------------------------------------------------------------------------------------------
# The GPU path
# --------------------------------------------------------------------------------------------


def test_block_pruning_keeps_a_config():
    triton = pytest.importorskip("triton")
    configs = W._configs(triton)
    assert configs
    for n_cols in (1, 100, 1536, 4096, 14336):
        kept = W._prune_blocks(configs, {"n_cols": n_cols})
        assert kept and all(c.kwargs["BLOCK"] <= max(1024, n_cols) for c in kept)


def test_kernels_compile_for_hopper():
    """Compile both kernels for sm_90a with Triton's bundled ptxas (no GPU needed), in every
    dtype and every tuning config: they build and do not spill registers."""
    triton = pytest.importorskip("triton")
    t32 = torch.empty(1)
    try:
        bench.compile_offline(W._fwd, (t32, t32, t32, 64, 64, 64, 64), BLOCK=64)
    except (ImportError, FileNotFoundError, RuntimeError) as err:  # no NVIDIA toolchain here
        pytest.skip(f"cannot compile for sm_90 here: {err}")
    n = 8192
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        t = torch.empty(1, dtype=dtype)
        for config in W._configs(triton):
            meta = {"num_warps": config.num_warps, **config.kwargs}
            fwd = bench.compile_offline(W._fwd, (t, t, t, n, n, n, n), **meta)
            bwd = bench.compile_offline(W._bwd, (t,) * 5 + (n,) * 6, **meta)
            for report in (fwd, bwd):
                assert report["stack_bytes"] in (0, None), (dtype, config, report)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(4096, 8192), (300, 1536), (7, 14336), (2, 3, 1000)])
def test_gpu_matches_reference(dtype, shape):
    gate = 3 * torch.randn(shape, device="cuda", dtype=dtype)
    gate.requires_grad_()
    up = torch.randn(shape, device="cuda", dtype=dtype, requires_grad=True)
    h = W.swiglu(gate, up)
    # The truth: float32 math from the same (rounded) inputs.
    g32, u32 = gate.detach().float(), up.detach().float()
    atol = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float32: 1e-5}[dtype]
    torch.testing.assert_close(h.float(), W.reference(g32, u32), atol=atol, rtol=1e-2)
    dh = torch.randn_like(h)
    d_gate, d_up = torch.autograd.grad(h, (gate, up), dh)
    e_gate, e_up = W.reference_backward(g32, u32, dh.float())
    torch.testing.assert_close(d_gate.float(), e_gate, atol=atol, rtol=1e-2)
    torch.testing.assert_close(d_up.float(), e_up, atol=atol, rtol=1e-2)


@pytest.mark.gpu
@requires_cuda
def test_gpu_fused_projection_halves():
    gate_up = torch.randn(64, 2 * 1536, device="cuda", dtype=torch.bfloat16)
    gate, up = gate_up.chunk(2, dim=-1)
    expected = W.reference(gate.float(), up.float())
    torch.testing.assert_close(W.swiglu(gate, up).float(), expected, atol=1.6e-2, rtol=1e-2)
