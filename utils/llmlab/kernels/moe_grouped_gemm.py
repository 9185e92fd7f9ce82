"""Grouped GEMM for mixture-of-experts: every expert's segment of sorted rows times its weight,
in one launch.

    >>> from llmlab.kernels.moe_grouped_gemm import grouped_matmul, reference
    >>> order, tokens, counts = permute(experts, n_experts)    # llmlab.moe.layer
    >>> y = grouped_matmul(x[tokens], w_up, counts)            # (n, d_ff), w_up (E, d_ff, d)
    >>> torch.testing.assert_close(y, reference(x[tokens], w_up, counts))

**The problem.** After routing, :func:`llmlab.moe.layer.permute` sorts the (token, expert)
assignments by expert: the rows ``x`` ``(n, d_in)`` fall into E contiguous *segments*,
``counts[e]`` rows for expert ``e`` (some may be empty). Each segment is multiplied by its
expert's weight ``w[e]`` ``(d_out, d_in)``, stored stacked in ``nn.Linear``'s layout:
``y[seg_e] = x[seg_e] @ w[e].T``. A loop over the experts (:func:`reference`, as
``MoE._loop`` does) launches E small matmuls, each too small to fill a GPU at 8+ experts,
and reads ``counts`` on the host to slice the rows. One grouped launch keeps the GPU busy.
This op equals :func:`llmlab.moe.layer.grouped_mm` (and ``torch._grouped_mm`` there).

**The forward kernel.** One program per ``BLOCK_M x BLOCK_N`` tile of ``y``: the tiles of
``d_out`` times the ``BLOCK_M`` tiles of rows, *counted segment by segment*: segment ``e`` has
``ceil(counts[e] / BLOCK_M)`` tiles, so no tile straddles two experts (its last tile is
partly masked). Each program finds its own tile from ``counts`` on the device: it loads the
E counts as one vector, takes the running sums of tiles and of rows (``tl.cumsum``), and its
expert is the number of segments whose tiles end at or before its tile index. The host needs
no schedule, and the grid is sized without reading ``counts``: at most ``cdiv(n, BLOCK_M) +
min(E, n)`` row tiles (each non-empty segment wastes at most one partial tile). Programs past
the last real tile run their K loop zero times and store nothing. A program then walks
``d_in`` ``BLOCK_K`` at a time: a ``BLOCK_M x BLOCK_K`` tile of ``x``, a ``BLOCK_K x
BLOCK_N`` tile of ``w[e].T`` (read through strides: no transposed copy), ``tl.dot`` into a
float32 accumulator, one rounding to the output dtype at the end. The grid is 1-D (a 2-D
one would cap the row tiles at 65535) with the ``d_out`` tile varying fastest, so the
programs running together share a tile of rows (read from L2 once) and sweep one expert's
weight (a few MB, also kept in L2) before moving on to the next rows.

**Backward.** With ``dy`` ``(n, d_out)`` the output gradient:

- ``grad_x[seg_e] = dy[seg_e] @ w[e]``: the same forward kernel, given the view
  ``w.transpose(1, 2)`` ``(E, d_in, d_out)`` (the kernel takes all three strides of ``w``);
- ``grad_w[e] = dy[seg_e].T @ x[seg_e]``: a second kernel, one program per ``BLOCK_N x
  BLOCK_K`` tile of ``grad_w[e]`` (grid ``(d_out tiles, d_in tiles, E)``), looping over the
  rows of segment ``e`` ``BLOCK_M`` at a time; an empty segment loops zero times and writes
  zeros (its expert's gradient is zero, not missing).

The forward saves ``x``, ``w`` and ``counts``: nothing that the layer does not hold anyway.

Shapes: ``x`` ``(n, d_in)`` (rows sorted by expert), ``w`` ``(E, d_out, d_in)``, ``counts``
``(E,)`` integers summing to ``n``; returns ``(n, d_out)`` in ``x``'s dtype. Rows of ``x`` may be
strided (a last dim that is not contiguous is copied first); ``w`` may have any strides.
``counts`` may live on the CPU or on ``x``'s device. Checking that ``counts`` sums to ``n``
reads it on the host (one synchronisation), as :func:`llmlab.moe.layer.grouped_mm` does.
Dtypes: float32, float16, bfloat16 on the GPU (``x`` and ``w`` of one dtype, or both cast to
the autocast dtype inside ``torch.autocast``, as ``F.linear`` is), the math in float32;
float32 in the interpreter.

:class:`llmlab.kernels.launch.TritonKernel` decides at each launch whether a kernel runs
compiled on the GPU or in Triton's CPU interpreter.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llmlab import kernels
from llmlab.kernels._common import (
    cdiv,
    dispatch,
    next_power_of_2,
    require_dtype,
    require_tensor,
    tile_configs,
    tile_pruner,
    tile_shape,
    tl,
    unit_last_stride,
)
from llmlab.kernels.launch import TritonKernel

kernels.register(
    "moe_grouped_gemm",
    "grouped GEMM over expert segments of sorted rows (MoE), forward, grad_x and grad_w",
)

#: Tile sizes in the interpreter (the GPU tunes them): small, so tests take seconds, segments
#: span several row tiles and the K loop takes several steps. ``tl.dot`` needs tiles >= 16.
INTERPRETER_BLOCKS = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16}


# --------------------------------------------------------------------------------------------
# The reference: the definition of correct
# --------------------------------------------------------------------------------------------


def reference(x: torch.Tensor, w: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``x[seg_e] @ w[e].T`` for each expert's segment of ``counts[e]`` consecutive rows:
    ``(n, d_out)``. A loop of ``F.linear`` over the segments (as ``MoE._loop`` runs one
    matmul per expert); differentiable in ``x`` and ``w`` by autograd. Every expert,
    empty segments included, joins the graph, so unused experts get a zero gradient."""
    pieces = [F.linear(seg, w[e]) for e, seg in enumerate(x.split(counts.tolist()))]
    return torch.cat(pieces) if pieces else x.new_zeros(0, w.shape[1])


# --------------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------------
# Plain functions; TritonKernel (below) compiles them for the GPU or hands them to the
# interpreter when they are launched. Both find a segment's rows from COUNTS the same way;
# the lines are repeated because these kernels call no @jit helpers of their own.


def _grouped_fwd_kernel(
    X,
    W,
    COUNTS,
    Y,
    N,
    K,
    E,
    stride_xm,
    stride_we,
    stride_wn,
    stride_wk,
    stride_ym,
    PRECISION: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # y[seg_e] = x[seg_e] @ w[e].T: one program per BLOCK_M x BLOCK_N tile of y, where the
    # row tiles are counted segment by segment (no tile holds rows of two experts).
    # A 1-D grid, d_out tiles varying fastest (see the module docstring).
    pid = tl.program_id(0)
    n_tiles = tl.cdiv(N, BLOCK_N)
    pid_n = pid % n_tiles
    tile = pid // n_tiles
    # Which segment owns row tile `tile`: running sums of the segments' tiles and rows.
    offs_e = tl.arange(0, BLOCK_E)
    counts = tl.load(COUNTS + offs_e, mask=offs_e < E, other=0)
    tiles = (counts + BLOCK_M - 1) // BLOCK_M
    tiles_end = tl.cumsum(tiles, 0)  # segment e's tiles are [tiles_end - tiles, tiles_end)
    rows_end = tl.cumsum(counts, 0)  # segment e's rows are [rows_end - counts, rows_end)
    expert = tl.sum((tiles_end <= tile).to(tl.int32), 0)  # empty segments are skipped
    mine = offs_e == expert  # all False past the last tile (expert >= E)
    seg_end = tl.sum(tl.where(mine, rows_end, 0), 0)
    seg_start = seg_end - tl.sum(tl.where(mine, counts, 0), 0)
    first_tile = tl.sum(tl.where(mine, tiles_end - tiles, 0), 0)
    row0 = seg_start + (tile - first_tile) * BLOCK_M
    # A program past the last tile has no rows (seg_end = 0): its K loop runs zero times.
    k_end = tl.where(expert < E, K, 0)

    offs_m = row0 + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < seg_end
    mask_n = offs_n < N
    x_ptrs = X + offs_m[:, None].to(tl.int64) * stride_xm + offs_k[None, :]
    # The (BLOCK_K, BLOCK_N) tile of w[e].T, read through w's strides (no transposed copy).
    w_ptrs = (
        W
        + expert.to(tl.int64) * stride_we
        + offs_n[None, :].to(tl.int64) * stride_wn
        + offs_k[:, None].to(tl.int64) * stride_wk
    )
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for start in range(0, k_end, BLOCK_K):
        # K need not be a multiple of BLOCK_K: the last step is masked (zeros add nothing).
        k_mask = start + offs_k < K
        x = tl.load(x_ptrs, mask=mask_m[:, None] & k_mask[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=k_mask[:, None] & mask_n[None, :], other=0.0)
        acc = tl.dot(x, w, acc, input_precision=PRECISION)
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K * stride_wk
    y_ptrs = Y + offs_m[:, None].to(tl.int64) * stride_ym + offs_n[None, :]
    tl.store(y_ptrs, acc.to(Y.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def _grouped_dw_kernel(
    DY,
    X,
    COUNTS,
    DW,
    N,
    K,
    E,
    stride_dym,
    stride_xm,
    stride_dwe,
    stride_dwn,
    PRECISION: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # grad_w[e] = dy[seg_e].T @ x[seg_e]: one program per BLOCK_N x BLOCK_K tile of grad_w[e],
    # a loop over the rows of segment e.
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    expert = tl.program_id(2)
    offs_e = tl.arange(0, BLOCK_E)
    counts = tl.load(COUNTS + offs_e, mask=offs_e < E, other=0)
    mine = offs_e == expert
    seg_end = tl.sum(tl.where(mine, tl.cumsum(counts, 0), 0), 0)
    seg_start = seg_end - tl.sum(tl.where(mine, counts, 0), 0)

    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_n = offs_n < N
    mask_k = offs_k < K
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    # An empty segment loops zero times and stores zeros: its expert's gradient.
    for start in range(seg_start, seg_end, BLOCK_M):
        rows = start + offs_m
        mask_m = rows < seg_end
        dy = tl.load(
            DY + rows[:, None].to(tl.int64) * stride_dym + offs_n[None, :],
            mask=mask_m[:, None] & mask_n[None, :],
            other=0.0,
        )
        x = tl.load(
            X + rows[:, None].to(tl.int64) * stride_xm + offs_k[None, :],
            mask=mask_m[:, None] & mask_k[None, :],
            other=0.0,
        )
        acc = tl.dot(tl.trans(dy), x, acc, input_precision=PRECISION)
    dw_ptrs = (
        DW
        + expert.to(tl.int64) * stride_dwe
        + offs_n[:, None].to(tl.int64) * stride_dwn
        + offs_k[None, :]
    )
    tl.store(dw_ptrs, acc.to(DW.dtype.element_ty), mask=mask_n[:, None] & mask_k[None, :])


# Tiles, warps and pipeline stages are tuned on the GPU once per (d_out, d_in, E) and dtype.
# Each entry is (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages). A segment wastes on average half
# a BLOCK_M tile of rows, so a small BLOCK_M suits many experts with few rows each; large
# tiles suit a few experts with thousands of rows, where the tensor cores set the pace.
# Compiled for sm_90 (ptxas), none spills registers and the 16-bit ones use Hopper's
# warp-group MMA (tests/test_kernel_moe_grouped_gemm.py compiles a sample).
_SHAPES_16 = {
    "forward": (
        (64, 64, 64, 4, 4),
        (64, 128, 64, 4, 4),
        (128, 64, 64, 4, 4),
        (128, 128, 64, 8, 3),
        (128, 256, 64, 8, 3),
        (64, 256, 64, 8, 3),
    ),
    # grad_w: the tile is BLOCK_N x BLOCK_K of grad_w[e] and the loop steps BLOCK_M rows; its
    # two operand tiles both grow with BLOCK_M, so it keeps to <= 150 KB of shared memory.
    "grad_w": (
        (32, 64, 64, 4, 4),
        (64, 64, 64, 4, 4),
        (64, 128, 64, 4, 4),
        (32, 128, 128, 8, 4),
        (64, 128, 128, 8, 3),
        (128, 128, 64, 8, 3),
    ),
}
# float32 multiplies on CUDA cores with exact products (no tensor cores): smaller tiles.
_SHAPES_32 = ((32, 32, 32, 4, 2), (32, 64, 32, 4, 2), (64, 64, 32, 4, 2), (16, 64, 32, 4, 2))


_NAMES = ("BLOCK_M", "BLOCK_N", "BLOCK_K")


def _shape(config) -> tuple:
    return tile_shape(config, _NAMES)


def _configs(kernel: str):
    return tile_configs(_SHAPES_16[kernel], _SHAPES_32, _NAMES)


def _pruner(kernel: str):
    # The shapes for the dtype of the first operand.
    first = "X" if kernel == "forward" else "DY"
    return tile_pruner(first, _SHAPES_16[kernel], _SHAPES_32, _NAMES)


_fwd = TritonKernel(
    _grouped_fwd_kernel,
    autotune=(_configs("forward"), ["N", "K", "E"], _pruner("forward")),
    interpret_meta=INTERPRETER_BLOCKS,
)
_dw = TritonKernel(
    _grouped_dw_kernel,
    autotune=(_configs("grad_w"), ["N", "K", "E"], _pruner("grad_w")),
    interpret_meta=INTERPRETER_BLOCKS,
)


def _precision(dtype: torch.dtype) -> str:
    # float32 inputs get exact IEEE products (the reference's numbers); TF32 would round them
    # to 10 mantissa bits. 16-bit inputs ignore the setting.
    return "ieee" if dtype == torch.float32 else "tf32"


def _grouped(x: torch.Tensor, w: torch.Tensor, counts: torch.Tensor, interpret: bool):
    """The forward kernel: ``x`` ``(n, K)`` by ``w`` ``(E, N, K)`` (any strides) per segment."""
    x2 = unit_last_stride(x)
    (m, k), (e, n) = x2.shape, w.shape[:2]
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)

    def grid(meta):
        # Row tiles of every segment (each non-empty one wastes at most a partial tile),
        # times the column tiles.
        return (cdiv(n, meta["BLOCK_N"]) * (cdiv(m, meta["BLOCK_M"]) + min(e, m)),)

    _fwd.launch(
        grid, x2, w, counts, y,
        n, k, e,
        x2.stride(0), *w.stride(), y.stride(0),
        interpret=interpret,
        PRECISION=_precision(x.dtype), BLOCK_E=next_power_of_2(e),
    )  # fmt: skip
    return y


def _grad_w(dy: torch.Tensor, x: torch.Tensor, counts: torch.Tensor, e: int, interpret: bool):
    """The grad_w kernel: ``(E, N, K)`` with ``grad_w[e] = dy[seg_e].T @ x[seg_e]``."""
    dy2, x2 = unit_last_stride(dy), unit_last_stride(x)
    n, k = dy2.shape[1], x2.shape[1]
    dw = torch.empty((e, n, k), dtype=x.dtype, device=x.device)

    def grid(meta):
        return (cdiv(n, meta["BLOCK_N"]), cdiv(k, meta["BLOCK_K"]), e)

    _dw.launch(
        grid, dy2, x2, counts, dw,
        n, k, e,
        dy2.stride(0), x2.stride(0), dw.stride(0), dw.stride(1),
        interpret=interpret,
        PRECISION=_precision(x.dtype), BLOCK_E=next_power_of_2(e),
    )  # fmt: skip
    return dw


# --------------------------------------------------------------------------------------------
# Autograd
# --------------------------------------------------------------------------------------------


class GroupedMatmulFunction(torch.autograd.Function):
    """Triton forward; backward ``grad_x`` by the same kernel on ``w.transpose(1, 2)``, and
    ``grad_w`` by a second kernel. Saves ``x``, ``w`` and ``counts`` (on ``x``'s device, int32)."""

    @staticmethod
    def forward(ctx, x, w, counts, interpret: bool):
        y = _grouped(x, w, counts, interpret)
        ctx.save_for_backward(x, w, counts)
        ctx.interpret = interpret
        return y

    @staticmethod
    def backward(ctx, dy):
        x, w, counts = ctx.saved_tensors
        dx = dw = None
        if ctx.needs_input_grad[0]:
            dx = _grouped(dy, w.transpose(1, 2), counts, ctx.interpret)
        if ctx.needs_input_grad[1]:
            dw = _grad_w(dy, x, counts, w.shape[0], ctx.interpret)
        return dx, dw, None, None


# --------------------------------------------------------------------------------------------
# The public op
# --------------------------------------------------------------------------------------------


def _check(x, w, counts) -> None:
    require_tensor(x, "x")
    require_dtype(x, "x")
    if x.dim() != 2:
        raise ValueError(f"x: expected 2 dimensions (n, d_in), got shape {tuple(x.shape)}")
    require_tensor(w, "w")
    require_dtype(w, "w")
    if w.dim() != 3:
        raise ValueError(f"w: expected 3 dimensions (E, d_out, d_in), got shape {tuple(w.shape)}")
    if w.shape[2] != x.shape[1]:
        raise ValueError(
            f"w: expected shape (E, d_out, {x.shape[1]}) (x's d_in={x.shape[1]}), "
            f"got {tuple(w.shape)}"
        )
    if w.device != x.device:
        raise ValueError(f"w: expected the device of x ({x.device}), got {w.device}")
    kind = x.device.type
    if w.dtype != x.dtype and not torch.is_autocast_enabled(kind):
        raise TypeError(f"w: expected the dtype of x ({x.dtype}), got {w.dtype}")
    require_tensor(counts, "counts")
    if counts.dtype.is_floating_point or counts.dtype.is_complex or counts.dtype == torch.bool:
        raise TypeError(f"counts: expected an integer dtype, got {counts.dtype}")
    if tuple(counts.shape) != (w.shape[0],):
        raise ValueError(
            f"counts: expected shape ({w.shape[0]},) (one count per expert of w), "
            f"got {tuple(counts.shape)}"
        )
    if counts.numel():
        total, smallest = torch.stack((counts.sum(), counts.min())).tolist()  # one sync
    else:
        total, smallest = 0, 0
    if smallest < 0:
        raise ValueError(f"counts: expected counts >= 0, got {smallest}")
    if total != x.shape[0]:
        raise ValueError(f"counts: expected segments summing to the {x.shape[0]} rows, got {total}")


def grouped_matmul(x: torch.Tensor, w: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Rows ``x`` ``(n, d_in)``, sorted into E segments of ``counts`` rows, each times its own
    ``w[e].T`` (``w`` ``(E, d_out, d_in)``, ``nn.Linear``'s layout): ``(n, d_out)``.
    Differentiable in ``x`` and ``w``; the same numbers as :func:`llmlab.moe.layer.grouped_mm`.

    Inside ``torch.autocast`` both operands are cast to the autocast dtype first, as
    ``F.linear`` casts them. Runs the grouped Triton kernels on CUDA tensors when Triton and a
    GPU are present, the same kernels in Triton's CPU interpreter when ``TRITON_INTERPRET=1``
    (float32 only), and :func:`reference` otherwise (see :func:`llmlab.kernels.backend`).
    """
    _check(x, w, counts)
    kind = x.device.type
    if torch.is_autocast_enabled(kind):
        dtype = torch.get_autocast_dtype(kind)
        x, w = x.to(dtype), w.to(dtype)
    path = dispatch((x, "x"), (w, "w"))
    if path == "reference" or w.numel() == 0:  # no rows, or d_out = 0: nothing to launch
        return reference(x, w, counts)
    counts = counts.to(device=x.device, dtype=torch.int32)
    return GroupedMatmulFunction.apply(x, w, counts, path == "interpreter")


__all__ = [
    "GroupedMatmulFunction",
    "TritonKernel",
    "grouped_matmul",
    "reference",
]
