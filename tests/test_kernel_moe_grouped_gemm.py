"""llmlab.kernels.moe_grouped_gemm: per-expert segments of sorted rows, each times its own
weight, equal a loop of F.linear over the segments, forward and both gradients.

On the CPU the kernels run in Triton's interpreter (the ``interpret`` fixture sets
TRITON_INTERPRET=1 for one test), in float32, at small shapes that are not multiples of the
interpreter's 16 x 16 x 16 tiles: segments that are empty, one row, exactly a tile and a tile
and a bit. GPU tests (marked ``gpu``) skip without CUDA.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kernel_testing import gen as _gen
from kernel_testing import requires_cuda

from llmlab import bench
from llmlab.kernels import moe_grouped_gemm as G
from llmlab.moe import layer as L


def _inputs(counts, d_in: int = 24, d_out: int = 20, seed: int = 0):
    g = _gen(seed)
    counts = torch.tensor(counts)
    x = torch.randn(int(counts.sum()), d_in, generator=g)
    w = torch.randn(len(counts), d_out, d_in, generator=g) / d_in**0.5
    return x, w, counts


def _check(x, w, counts, dy=None, atol=1e-5, rtol=1e-5):
    """Forward, grad_x and grad_w of grouped_matmul against the reference, in float32."""
    ours = [t.detach().clone().requires_grad_() for t in (x, w)]
    theirs = [t.detach().clone().requires_grad_() for t in (x, w)]
    y = G.grouped_matmul(*ours, counts)
    y_ref = G.reference(*theirs, counts)
    assert y.grad_fn is not None and "GroupedMatmul" in type(y.grad_fn).__name__
    torch.testing.assert_close(y, y_ref, atol=atol, rtol=rtol)
    dy = torch.randn(y_ref.shape, generator=_gen(1)) if dy is None else dy
    y.backward(dy)
    y_ref.backward(dy)
    for name, a, b in zip(("grad_x", "grad_w"), ours, theirs, strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=atol, rtol=rtol, msg=name)
    return ours


# --------------------------------------------------------------------------------------------
# The reference
# --------------------------------------------------------------------------------------------


def test_reference_is_the_moe_layers_grouped_mm():
    # llmlab.moe.layer.grouped_mm (torch._grouped_mm on this torch) gives the same numbers
    # and gradients; an unused expert gets a zero gradient, not None.
    x, w, counts = _inputs([5, 0, 9, 3])
    xs = [x.clone().requires_grad_() for _ in range(2)]
    ws = [w.clone().requires_grad_() for _ in range(2)]
    y_ref, y_layer = G.reference(xs[0], ws[0], counts), L.grouped_mm(xs[1], ws[1], counts)
    torch.testing.assert_close(y_ref, y_layer)
    dy = torch.randn(y_ref.shape, generator=_gen(2))
    y_ref.backward(dy)
    y_layer.backward(dy)
    torch.testing.assert_close(xs[0].grad, xs[1].grad)
    torch.testing.assert_close(ws[0].grad, ws[1].grad)
    assert torch.equal(ws[0].grad[1], torch.zeros(20, 24))
    # Row by row: row i belongs to the expert whose segment holds it.
    expert = torch.repeat_interleave(torch.arange(4), counts)
    rows = torch.stack([w[e] @ x[i] for i, e in enumerate(expert.tolist())])
    torch.testing.assert_close(y_ref.detach(), rows)


# --------------------------------------------------------------------------------------------
# The kernels, in the interpreter
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "counts",
    [
        [10, 0, 20, 7],  # uneven, an empty segment in the middle
        [37],  # E = 1: one plain matmul
        [16, 1, 17, 3],  # exactly a tile, one row, a tile and one row
        [0, 0, 0, 37],  # every row in the last expert
        [0, 3, 0, 0, 2, 0, 0, 0],  # more experts than rows, empty first and last
    ],
    ids=["uneven", "one-expert", "tile-edges", "last-only", "mostly-empty"],
)
def test_kernel_matches_reference(interpret, counts):
    _check(*_inputs(counts))


def test_shapes_off_the_tile_grid(interpret):
    # d_in 40: a K loop of 16 + 16 + 8; d_out 7: one masked column tile; d_in 5 < BLOCK_K.
    _check(*_inputs([4, 19, 0, 6], d_in=40, d_out=7))
    _check(*_inputs([2, 9], d_in=5, d_out=33))


def test_strided_inputs_and_upstream_gradient(interpret, monkeypatch):
    # Rows of x with a row stride (a slice of a wider tensor), w stored (E, d_in, d_out) and
    # viewed transposed: neither is copied. The upstream gradient arrives transposed.
    _, _, counts = _inputs([6, 0, 11])
    wide = torch.randn(17, 40, generator=_gen(3))
    x = wide[:, 3:27]
    w = torch.randn(3, 24, 20, generator=_gen(4)).transpose(1, 2)
    assert not x.is_contiguous() and not w.is_contiguous()
    with monkeypatch.context() as m:
        m.setattr(torch.Tensor, "contiguous", lambda *a, **k: pytest.fail("an input was copied"))
        y = G.grouped_matmul(x, w, counts)
    torch.testing.assert_close(y, G.reference(x, w, counts), atol=1e-5, rtol=1e-5)
    dy = torch.randn(20, 17, generator=_gen(5)).t()
    _check(x, w, counts, dy=dy)


def test_counts_as_int32_and_gradients_of_one_input(interpret):
    x, w, counts = _inputs([3, 12, 5])
    expected = G.reference(x, w, counts)
    torch.testing.assert_close(G.grouped_matmul(x, w, counts.int()), expected)
    # Only x, or only w, requires grad: the other kernel is not launched.
    xg = x.clone().requires_grad_()
    (dx,) = torch.autograd.grad(G.grouped_matmul(xg, w, counts).sum(), xg)
    torch.testing.assert_close(dx, torch.autograd.grad(G.reference(xg, w, counts).sum(), xg)[0])
    wg = w.clone().requires_grad_()
    (dw,) = torch.autograd.grad(G.grouped_matmul(x, wg, counts).sum(), wg)
    torch.testing.assert_close(dw, torch.autograd.grad(G.reference(x, wg, counts).sum(), wg)[0])


def test_drop_in_for_the_moe_layers_grouped_mm(interpret, monkeypatch):
    # The MoE layer's "grouped" path with its three grouped matmuls run by the kernel: same
    # output, same gradients for the router and every expert matrix.
    torch.manual_seed(0)
    moe = L.MoE(d_model=12, d_ff=20, n_experts=4, k=2, impl="grouped")
    x = torch.randn(9, 12, generator=_gen(6))

    def step():
        y = moe(x)
        return y, torch.autograd.grad(y.square().sum(), list(moe.parameters()))

    theirs = step()
    monkeypatch.setattr(L, "grouped_mm", G.grouped_matmul)
    ours = step()
    torch.testing.assert_close(ours[0], theirs[0], atol=1e-6, rtol=1e-5)
    for a, b in zip(ours[1], theirs[1], strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_empty_inputs_pass_through(interpret):
    # No rows: nothing to launch; every expert still gets a (zero) gradient.
    w = torch.randn(3, 5, 4, generator=_gen(7), requires_grad=True)
    y = G.grouped_matmul(torch.zeros(0, 4), w, torch.zeros(3, dtype=torch.long))
    assert y.shape == (0, 5)
    y.sum().backward()
    assert torch.equal(w.grad, torch.zeros(3, 5, 4))
    # d_out = 0: an empty output of the right shape.
    y = G.grouped_matmul(torch.ones(2, 4), torch.ones(2, 0, 4), torch.tensor([1, 1]))
    assert y.shape == (2, 0)


# --------------------------------------------------------------------------------------------
# Dispatch and validation
# --------------------------------------------------------------------------------------------


_X = torch.zeros(5, 4)
_W = torch.zeros(2, 3, 4)
_C = torch.tensor([2, 3])


@pytest.mark.parametrize(
    "x, w, counts, error, words",
    [
        ("x", _W, _C, TypeError, "x: expected a torch.Tensor"),
        (_X.long(), _W, _C, TypeError, "x: expected dtype .* got torch.int64"),
        (torch.zeros(5), _W, _C, ValueError, r"x: expected 2 dimensions \(n, d_in\)"),
        (torch.zeros(1, 5, 4), _W, _C, ValueError, "x: expected 2 dimensions"),
        (_X, torch.zeros(3, 4), _C, ValueError, r"w: expected 3 dimensions \(E, d_out, d_in\)"),
        (_X, torch.zeros(2, 3, 5), _C, ValueError, r"w: expected shape \(E, d_out, 4\)"),
        (_X, _W.double(), _C, TypeError, "w: expected dtype"),
        (_X, _W.half(), _C, TypeError, r"w: expected the dtype of x \(torch.float32\)"),
        (_X, _W, [2, 3], TypeError, "counts: expected a torch.Tensor"),
        (_X, _W, _C.float(), TypeError, "counts: expected an integer dtype"),
        (_X, _W, torch.tensor([5]), ValueError, r"counts: expected shape \(2,\)"),
        (_X, _W, _C[None], ValueError, r"counts: expected shape \(2,\)"),
        (_X, _W, torch.tensor([2, 2]), ValueError, "counts: expected segments summing to the 5 rows, got 4"),
        (_X, _W, torch.tensor([6, -1]), ValueError, "counts: expected counts >= 0, got -1"),
    ],
)  # fmt: skip
def test_rejects_bad_input(x, w, counts, error, words):
    with pytest.raises(error, match=words):
        G.grouped_matmul(x, w, counts)


def test_interpreter_rejects_half_precision(interpret):
    with pytest.raises(TypeError, match="x: the Triton interpreter runs float32 only"):
        G.grouped_matmul(_X.half(), _W.half(), _C)


def test_autocast_casts_both_operands_as_f_linear_does(monkeypatch):
    # The reference path (no interpreter): inside autocast a float32 weight meets bf16 rows.
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x, w, counts = _inputs([3, 4])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = G.grouped_matmul(x.bfloat16(), w, counts)
        expected = torch.cat([F.linear(x[:3], w[0]), F.linear(x[3:], w[1])])
    assert y.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(y, expected)


# --------------------------------------------------------------------------------------------
# Benchmark entry
# --------------------------------------------------------------------------------------------


def test_benchmark_flops_and_cpu_run():
    b = bench.registry()["moe_grouped_gemm"]
    cases = b.cases("full")
    by = {(c.panel, c.x): c for c in cases}
    assert {c.params["experts"] for c in cases} == {8, 16, 64}
    assert {c.x for c in cases} == {1024, 4096, 8192}
    # Top-2 routing: 2 rows per token, each a d_model x d_ff product (forward); the backward
    # computes grad_x and grad_w, twice the work.
    forward = by[("bf16, E=8, forward", 4096)]
    assert b.work(forward) == 2 * (2 * 4096) * 1024 * 2816
    assert b.work(by[("bf16, E=64, backward", 4096)]) == 2 * b.work(forward)
    machine = bench.Machine("test cpu", "test-cpu", "cpu", 10.0, 0.5, "float32")
    record = bench.run(b, machine, "cpu", scale="cpu", log=lambda s: None)
    assert record["results"] and all(e["throughput"] > 0 for e in record["results"])
    assert {"triton", "eager"} <= set(b.setup(b.cases("cpu")[0], "cpu"))


# --------------------------------------------------------------------------------------------
# The GPU path
# --------------------------------------------------------------------------------------------


def test_pruning_keeps_the_configs_of_each_dtype():
    triton = pytest.importorskip("triton")
    for kernel, first in (("forward", "X"), ("grad_w", "DY")):
        configs = G._configs(kernel)(triton)
        prune = G._pruner(kernel)
        for dtype, allowed in (
            (torch.bfloat16, G._SHAPES_16[kernel]),
            (torch.float32, G._SHAPES_32),
        ):
            kept = prune(configs, {first: torch.empty(1, dtype=dtype)})
            assert {G._shape(c) for c in kept} == set(allowed)


def test_kernels_compile_for_hopper():
    """Compile both kernels for sm_90a with Triton's bundled ptxas (no GPU needed): the
    smallest and largest bf16 tile of each, the forward also on a transposed weight (the
    grad_x launch), and a float32 tile. They build without register spills, the bf16 tiles run
    on warp-group MMA, and grad_w fits in the 227 KB of shared memory of an H100 or H200.
    (Every config was compiled once, spill-free: too slow to repeat in every test run.)"""
    pytest.importorskip("triton")
    i32 = torch.empty(1, dtype=torch.int32)
    n, k, e = 2816, 1024, 64

    def compile_(kernel, shape, dtype, w_strides=(n * k, k, 1)):
        t = torch.empty(1, dtype=dtype)
        m, bn, bk, warps, stages = shape
        meta = dict(num_warps=warps, num_stages=stages, BLOCK_M=m, BLOCK_N=bn, BLOCK_K=bk)
        meta.update(BLOCK_E=e, PRECISION=G._precision(dtype))
        if kernel == "forward":
            return bench.compile_offline(G._fwd, (t, t, i32, t, n, k, e, k, *w_strides, n), **meta)
        return bench.compile_offline(G._dw, (t, t, i32, t, n, k, e, n, k, n * k, k), **meta)

    try:
        compile_("forward", G._SHAPES_32[0], torch.float32)
    except (ImportError, FileNotFoundError, RuntimeError) as err:  # no NVIDIA toolchain here
        pytest.skip(f"cannot compile for sm_90 here: {err}")
    for kernel in ("forward", "grad_w"):
        for shape in (G._SHAPES_16[kernel][0], G._SHAPES_16[kernel][-1]):
            report = compile_(kernel, shape, torch.bfloat16)
            assert report["stack_bytes"] in (0, None), (kernel, shape, report)
            assert report["warp_group_mma"], (kernel, shape, report)
            if kernel == "grad_w":
                assert report["shared_bytes"] <= 227 * 1024, (shape, report)
    transposed = compile_("forward", G._SHAPES_16["forward"][1], torch.bfloat16, (n * k, 1, n))
    assert transposed["stack_bytes"] in (0, None) and transposed["warp_group_mma"]


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize(
    "counts, d_in, d_out",
    [
        ([700, 0, 1300, 1, 2048, 33, 0, 15], 1024, 2816),
        ([0] * 60 + [100, 3, 0, 500], 2816, 1024),
        ([4096], 576, 1536),
        ([5, 0, 7], 100, 36),
    ],
)
def test_gpu_matches_reference(dtype, counts, d_in, d_out):
    counts = torch.tensor(counts, device="cuda")
    n = int(counts.sum())
    x = torch.randn(n, d_in, device="cuda", dtype=dtype, requires_grad=True)
    w = (torch.randn(len(counts), d_out, d_in, device="cuda") / d_in**0.5).to(dtype)
    w.requires_grad_()
    y = G.grouped_matmul(x, w, counts)
    assert y.dtype == dtype
    # The truth: float32 math from the same (rounded) inputs.
    x32, w32 = x.detach().float().requires_grad_(), w.detach().float().requires_grad_()
    y32 = G.reference(x32, w32, counts)
    atol = {torch.float16: 4e-3, torch.bfloat16: 3e-2, torch.float32: 1e-4}[dtype]
    torch.testing.assert_close(y.float(), y32, atol=atol, rtol=1e-2)
    dy = torch.randn_like(y)
    dx, dw = torch.autograd.grad(y, (x, w), dy)
    dx32, dw32 = torch.autograd.grad(y32, (x32, w32), dy.float())
    torch.testing.assert_close(dx.float(), dx32, atol=atol * (d_out / d_in) ** 0.5, rtol=1e-2)
    # grad_w sums over a segment's rows: its error grows with the segment.
    longest = int(counts.max())
    torch.testing.assert_close(dw.float(), dw32, atol=atol * max(1.0, longest**0.5 / 4), rtol=1e-2)
