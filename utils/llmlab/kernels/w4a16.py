"""W4A16: a GEMM whose weight stays 4-bit in memory and is dequantized tile by tile on chip.

    >>> from llmlab.kernels.w4a16 import w4a16_matmul, dequantize, reference
    >>> y = w4a16_matmul(x, packed, scales, group_size=64, zeros=zeros)   # x: (..., K)
    >>> torch.testing.assert_close(y, x @ dequantize(packed, scales, 64, zeros).T)

**Weight-only quantization.** GPTQ, AWQ and QLoRA's NF4 keep an ``nn.Linear`` weight
``W (N, K)`` in 4 bits and the activations ``x`` in float16/bfloat16 ("W4A16"). At decode a
layer multiplies a few tokens by the whole weight: a matrix-vector product that does 2 flops
per weight and is limited by reading the weight from memory. A 4-bit weight is a quarter of
the bytes of a float16 one (plus a scale per group: 2 bytes per 64 weights is 0.25 bit per
weight), so a kernel that reads it packed and never writes a float copy back moves about 3.5
to 4 times fewer bytes, and decode speeds up by about as much. Dequantizing the whole weight
first (what :func:`reference` does, for clarity) would write and read back a float16 copy:
more traffic than the unquantized model.

**The format** (what ``llmlab.compress.quant`` produces, laid out for the kernel):

- ``packed``: uint8 ``(N, K // 2)``, row-major; each byte holds two codes (0-15) that are
  neighbours along K, the first in the high nibble: exactly ``pack_4bit`` applied to the
  ``(N, K)`` code matrix, row by row (``pack_4bit(codes).view(N, K // 2)``).
- ``scales``: float ``(N, K // group_size)``, one per group of ``group_size`` consecutive
  inputs of a row (``group_size`` even, dividing K, and for the kernels a power of two: 32,
  64 and 128 are the usual ones; one scale per row is the group size K).
- ``zeros``: None, or float ``(N, K // group_size)`` in code units: ``w = (code - zero) *
  scale``. None means ``zero = 8``: the symmetric (absmax) layout, whose signed codes
  -7..7 are stored offset by 8.
- ``lut``: None, or a 16-entry float table: ``w = lut[code] * scale`` (NF4 with
  ``nf4_values()``; then ``zeros`` must be None).

``compress.quant.quantize(w, 4, scheme="zeropoint", granularity="group", group_size=g)``
gives ``codes`` 0-15 and integer ``zero`` points: pass ``zero.float()``. Its ``scheme="absmax"``
gives signed codes: pack ``codes + 8`` and pass no zeros. ``quantize_nf4(w, blocksize=g)``
gives NF4 codes and one absmax per block: with ``g`` dividing K, each block is a group of a
row, so ``scales = absmax.view(N, K // g)`` and ``lut = nf4_values()``. :func:`dequantize`
then equals their ``dequantize()`` bit for bit (tested).

**The kernel** (forward): each program owns a ``BLOCK_M x BLOCK_N`` tile of ``y = x @ W.T``
and walks K ``BLOCK_K`` at a time. Per step it loads an ``x`` tile and ``BLOCK_N x BLOCK_K / 2``
packed bytes, splits each byte into its two nibbles (``byte >> 4`` and ``byte & 15``,
interleaved back into K order), turns each code into its level (a table entry, or the code
less its zero point), and multiplies by the group's scale. The step spans whole groups, or
lies inside one (``group_size`` and ``BLOCK_K`` are both powers of two on the kernel
paths), so it loads one scale (and zero point) per group and row and broadcasts it over the
group's columns: a gather per weight would cost an address per weight in registers. The
float weights, rounded to ``x``'s dtype, feed ``tl.dot``, which accumulates in float32. The
dequantized weight exists only as a tile in registers. The bias is added in float32 before
the one rounding to ``x``'s dtype.

**Backward** (QLoRA trains low-rank adapters through a frozen 4-bit base): the base weight gets
no gradient, only its input does: ``grad_x = grad_y @ W``. A second kernel computes it the
same way, tiles of ``grad_x`` over a loop along N, the weight again dequantized on chip. The
forward saves nothing but the packed weight and its scales, which the layer holds anyway (not
``x``: no weight gradient needs it). A bias that requires grad gets ``grad_y`` summed over the
rows. ``scales``, ``zeros`` and ``lut`` get no gradient on any path (they are read detached).

Shapes: ``x`` of ``(..., K)``, leading dims flattened into rows (a last dim that is not
contiguous is copied); output ``(..., N)`` in ``x``'s dtype. Dtypes: float32, float16,
bfloat16 on the GPU (dequantization and accumulation in float32); float32 in the interpreter.

Grid: forward ``(M blocks, N blocks)``, backward ``(M blocks, K blocks)``.
:class:`llmlab.kernels.launch.TritonKernel` decides at each launch whether a kernel runs
compiled on the GPU or in Triton's CPU interpreter.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llmlab import kernels
from llmlab.kernels._common import (
    as_rows,
    cdiv,
    dispatch,
    require_dtype,
    require_tensor,
    tile_configs,
    tile_pruner,
    tile_shape,
    tl,
    unit_last_stride,
)
from llmlab.kernels.launch import TritonKernel
from llmlab.validate import require_int

kernels.register(
    "w4a16",
    "4-bit weight x 16-bit activation GEMM (dequantized on chip), zero points or NF4; "
    "forward and grad_x",
)

#: Tile sizes in the interpreter (the GPU tunes them): small, so tests take seconds and
#: K loops take several steps. ``tl.dot`` needs every tile dim >= 16 on the GPU.
INTERPRETER_BLOCKS = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 32}
#: The zero point of the symmetric layout: signed codes -7..7 stored as 1..15.
SYMMETRIC_ZERO = 8


# --------------------------------------------------------------------------------------------
# The reference: the definition of correct
# --------------------------------------------------------------------------------------------


def unpack(packed: torch.Tensor) -> torch.Tensor:
    """The ``(N, K)`` codes (uint8, 0-15) of ``packed`` ``(N, K // 2)``: high nibble first."""
    return torch.stack((packed >> 4, packed & 0x0F), dim=-1).reshape(packed.shape[0], -1)


def dequantize(
    packed: torch.Tensor,
    scales: torch.Tensor,
    group_size: int,
    zeros: torch.Tensor | None = None,
    lut: torch.Tensor | None = None,
) -> torch.Tensor:
    """The float32 weight ``(N, K)`` that the 4-bit format stands for (module docstring).

    ``(code - zero) * scale`` (``zero = 8`` when ``zeros`` is None) or, with a ``lut``,
    ``lut[code] * scale``; each scale and zero point covers ``group_size`` consecutive
    columns of its row. Computed in float32 in that order, as ``compress.quant`` does.
    """
    codes = unpack(packed)
    scale = scales.float().repeat_interleave(group_size, dim=1)
    if lut is not None:
        return lut.float()[codes.long()] * scale
    if zeros is None:
        return (codes.float() - SYMMETRIC_ZERO) * scale
    return (codes.float() - zeros.float().repeat_interleave(group_size, dim=1)) * scale


def reference(
    x: torch.Tensor,
    packed: torch.Tensor,
    scales: torch.Tensor,
    group_size: int,
    zeros: torch.Tensor | None = None,
    lut: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x @ W.T + bias`` with ``W = dequantize(...)`` rounded to ``x``'s dtype: what an
    ``nn.Linear`` holding the dequantized weight computes. Differentiable in ``x`` (and
    ``bias``) by autograd; the whole float weight is materialised, which the kernel avoids."""
    w = dequantize(packed, scales, group_size, zeros, lut).to(x.dtype)
    return F.linear(x, w, bias.to(x.dtype) if bias is not None else None)


# --------------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------------
# Plain functions; TritonKernel (below) compiles them for the GPU or hands them to the
# interpreter when they are launched. Both kernels dequantize a weight tile the same way;
# the lines are repeated because these kernels call no @jit helpers of their own.


def _w4a16_fwd_kernel(
    X,
    PACKED,
    SCALES,
    ZEROS,
    LUT,
    BIAS,
    Y,
    M,
    N,
    K,
    stride_xm,
    stride_pn,
    stride_sn,
    stride_zn,
    stride_ym,
    GROUP_SIZE: tl.constexpr,
    HAS_ZEROS: tl.constexpr,
    HAS_LUT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUPS: tl.constexpr,
):
    # One program per BLOCK_M x BLOCK_N tile of y; the weight is read packed, once per tile.
    # A step of BLOCK_K columns meets GROUPS groups: BLOCK_K // GROUP_SIZE of them, or one
    # (shared by several steps) when the groups are longer than the step.
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    offs_b = tl.arange(0, BLOCK_K // 2)  # bytes: two codes each
    offs_g = tl.arange(0, GROUPS)
    mask_m = offs_m < M
    mask_n = offs_n < N
    rows_n = offs_n[:, None].to(tl.int64)  # int64: row * stride can pass 2**31
    x_ptrs = X + offs_m[:, None].to(tl.int64) * stride_xm + offs_k[None, :]
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for start in range(0, K, BLOCK_K):
        # K need not be a multiple of BLOCK_K: the last step is masked (x = 0, scale = 0).
        k_mask = start + offs_k < K
        x = tl.load(x_ptrs, mask=mask_m[:, None] & k_mask[None, :], other=0.0)
        # Dequantize a BLOCK_N x BLOCK_K tile of W, in registers: the bytes' two nibbles ...
        b_mask = mask_n[:, None] & (start // 2 + offs_b < K // 2)[None, :]
        byte = tl.load(
            PACKED + rows_n * stride_pn + start // 2 + offs_b[None, :], mask=b_mask, other=0
        )
        code = tl.interleave(byte >> 4, byte & 0xF)  # (BLOCK_N, BLOCK_K), in K order
        # ... a level for each code (a table entry, or the code less its zero point) ...
        g_offs = start // GROUP_SIZE + offs_g[None, :]  # (1, GROUPS): this step's groups
        g_mask = mask_n[:, None] & (g_offs < K // GROUP_SIZE)
        if HAS_LUT:
            level = tl.load(LUT + code.to(tl.int32)).to(tl.float32)
        else:
            level = code.to(tl.float32)
        level = tl.reshape(level, [BLOCK_N, GROUPS, BLOCK_K // GROUPS])
        if HAS_ZEROS:
            zero = tl.load(ZEROS + rows_n * stride_zn + g_offs, mask=g_mask, other=0.0)
            level = level - zero.to(tl.float32)[:, :, None]
        elif not HAS_LUT:
            level = level - 8.0
        # ... times its group's scale.
        scale = tl.load(SCALES + rows_n * stride_sn + g_offs, mask=g_mask, other=0.0)
        w = tl.reshape(level * scale.to(tl.float32)[:, :, None], [BLOCK_N, BLOCK_K])
        w = tl.trans(w.to(X.dtype.element_ty))  # (BLOCK_K, BLOCK_N): the W.T of x @ W.T
        acc = tl.dot(x, w, acc, input_precision=PRECISION)
        x_ptrs += BLOCK_K
    if HAS_BIAS:
        acc += tl.load(BIAS + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    y_ptrs = Y + offs_m[:, None].to(tl.int64) * stride_ym + offs_n[None, :]
    tl.store(y_ptrs, acc.to(Y.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def _w4a16_bwd_kernel(
    DY,
    PACKED,
    SCALES,
    ZEROS,
    LUT,
    DX,
    M,
    N,
    K,
    stride_dym,
    stride_pn,
    stride_sn,
    stride_zn,
    stride_dxm,
    GROUP_SIZE: tl.constexpr,
    HAS_ZEROS: tl.constexpr,
    HAS_LUT: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUPS: tl.constexpr,
):
    # grad_x = grad_y @ W: one program per BLOCK_M x BLOCK_K tile of grad_x, a loop along N.
    pid_k = tl.program_id(1)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_b = pid_k * (BLOCK_K // 2) + tl.arange(0, BLOCK_K // 2)
    offs_n = tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    k_mask = offs_k < K
    g_offs = (pid_k * BLOCK_K) // GROUP_SIZE + tl.arange(0, GROUPS)[None, :]  # this tile's groups
    dy_ptrs = DY + offs_m[:, None].to(tl.int64) * stride_dym + offs_n[None, :]
    acc = tl.zeros([BLOCK_M, BLOCK_K], tl.float32)
    for start in range(0, N, BLOCK_N):
        n = start + offs_n
        mask_n = n < N
        dy = tl.load(dy_ptrs, mask=mask_m[:, None] & mask_n[None, :], other=0.0)
        # Dequantize a BLOCK_N x BLOCK_K tile of W, in registers, as the forward does.
        rows_n = n[:, None].to(tl.int64)
        b_mask = mask_n[:, None] & (offs_b < K // 2)[None, :]
        byte = tl.load(PACKED + rows_n * stride_pn + offs_b[None, :], mask=b_mask, other=0)
        code = tl.interleave(byte >> 4, byte & 0xF)
        g_mask = mask_n[:, None] & (g_offs < K // GROUP_SIZE)
        if HAS_LUT:
            level = tl.load(LUT + code.to(tl.int32)).to(tl.float32)
        else:
            level = code.to(tl.float32)
        level = tl.reshape(level, [BLOCK_N, GROUPS, BLOCK_K // GROUPS])
        if HAS_ZEROS:
            zero = tl.load(ZEROS + rows_n * stride_zn + g_offs, mask=g_mask, other=0.0)
            level = level - zero.to(tl.float32)[:, :, None]
        elif not HAS_LUT:
            level = level - 8.0
        scale = tl.load(SCALES + rows_n * stride_sn + g_offs, mask=g_mask, other=0.0)
        w = tl.reshape(level * scale.to(tl.float32)[:, :, None], [BLOCK_N, BLOCK_K])
        acc = tl.dot(dy, w.to(DY.dtype.element_ty), acc, input_precision=PRECISION)
        dy_ptrs += BLOCK_N
    dx_ptrs = DX + offs_m[:, None].to(tl.int64) * stride_dxm + offs_k[None, :]
    tl.store(dx_ptrs, acc.to(DX.dtype.element_ty), mask=mask_m[:, None] & k_mask[None, :])


# Tiles, warps and pipeline stages are tuned on the GPU once per shape and format. A small
# BLOCK_M serves decode (one to a few tokens: the product reads the weight and little else),
# large tiles serve prefill and training, where the tensor cores set the pace. Each entry is
# (BLOCK_M, the tile's other dim, the loop's step, warps, stages): for the forward the other
# dim is BLOCK_N and the step BLOCK_K, for the backward the other way round. Compiled for
# sm_90 (ptxas), none of them spills registers with 16-bit x, with zeros, a table or
# neither, for group sizes 32 to 128 (tests/test_kernel_w4a16.py compiles a sample).
_SHAPES_16 = {
    "forward": (
        # Decode: narrow column tiles give 4096 output columns 128-256 programs, not 32-64.
        (16, 16, 256, 4, 4),
        (16, 32, 256, 4, 4),
        (16, 64, 128, 4, 4),
        (16, 128, 128, 4, 4),
        (32, 64, 128, 4, 4),
        (64, 64, 64, 4, 4),
        (64, 128, 64, 4, 3),
        (128, 64, 64, 4, 3),
        (128, 128, 64, 8, 3),
    ),
    "backward": (
        (16, 128, 64, 4, 4),
        (32, 128, 64, 4, 4),
        (64, 64, 64, 4, 4),
        (64, 128, 64, 4, 3),
        (128, 64, 64, 4, 3),
        (128, 128, 64, 8, 3),
    ),
}
# float32 x multiplies on CUDA cores with exact products (no tensor cores): its tiles hold
# twice the bytes and the 16-bit tiles above spill; these do not, in either direction.
_SHAPES_32 = ((16, 32, 32, 4, 2), (16, 64, 32, 4, 2), (16, 32, 64, 4, 2), (32, 32, 32, 4, 2))
#: The block sizes of an entry, in order: BLOCK_M, the tile's other dim, the loop's step.
_NAMES = {
    "forward": ("BLOCK_M", "BLOCK_N", "BLOCK_K"),
    "backward": ("BLOCK_M", "BLOCK_K", "BLOCK_N"),
}


def _shape(config, direction: str) -> tuple:
    return tile_shape(config, _NAMES[direction])


def _configs(direction: str):
    return tile_configs(_SHAPES_16[direction], _SHAPES_32, _NAMES[direction])


def _pruner(direction: str):
    # The shapes for x's dtype; then tiles no taller than M needs (see tile_pruner).
    first = "X" if direction == "forward" else "DY"
    return tile_pruner(first, _SHAPES_16[direction], _SHAPES_32, _NAMES[direction], rows_arg="M")


_FLAGS = ["GROUP_SIZE", "HAS_ZEROS", "HAS_LUT"]
#: Groups met by one step of BLOCK_K columns (both are powers of two).
_GROUPS = {"GROUPS": lambda args: max(1, args["BLOCK_K"] // args["GROUP_SIZE"])}
_fwd = TritonKernel(
    _w4a16_fwd_kernel,
    autotune=(_configs("forward"), ["M", "N", "K", *_FLAGS, "HAS_BIAS"], _pruner("forward")),
    heuristics=_GROUPS,
    interpret_meta=INTERPRETER_BLOCKS,
)
_bwd = TritonKernel(
    _w4a16_bwd_kernel,
    autotune=(_configs("backward"), ["M", "N", "K", *_FLAGS], _pruner("backward")),
    heuristics=_GROUPS,
    interpret_meta=INTERPRETER_BLOCKS,
)


def _precision(dtype: torch.dtype) -> str:
    # float32 inputs get exact IEEE products (the reference's numbers); TF32 would round them
    # to 10 mantissa bits. 16-bit inputs ignore the setting.
    return "ieee" if dtype == torch.float32 else "tf32"


def _weight_args(packed, scales, zeros, lut):
    """The weight's pointers and row strides. The kernels step along a row with stride 1 (a
    copy is made where that does not hold: small, or the packed weight made strangely), and a
    tensor stands in for an absent zeros or lut (the kernels never read it)."""
    packed, scales = unit_last_stride(packed), unit_last_stride(scales)
    zeros = unit_last_stride(zeros) if zeros is not None else scales
    lut = lut.contiguous() if lut is not None else scales
    return (packed, scales, zeros, lut), (packed.stride(0), scales.stride(0), zeros.stride(0))


def _forward(x, packed, scales, zeros, lut, bias, group_size: int, interpret: bool):
    x2 = as_rows(x)
    (m, k), n = x2.shape, packed.shape[0]
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    pointers, strides = _weight_args(packed, scales, zeros, lut)

    def grid(meta):
        return (cdiv(m, meta["BLOCK_M"]), cdiv(n, meta["BLOCK_N"]))

    _fwd.launch(
        grid, x2, *pointers, bias.contiguous() if bias is not None else scales, y,
        m, n, k,
        x2.stride(0), *strides, y.stride(0),
        interpret=interpret,
        GROUP_SIZE=group_size, HAS_ZEROS=zeros is not None, HAS_LUT=lut is not None,
        HAS_BIAS=bias is not None, PRECISION=_precision(x.dtype),
    )  # fmt: skip
    return y.view(*x.shape[:-1], n)


def _backward(dy, packed, scales, zeros, lut, group_size: int, interpret: bool):
    dy2 = as_rows(dy)
    (m, n), k = dy2.shape, 2 * packed.shape[1]
    dx = torch.empty((m, k), dtype=dy.dtype, device=dy.device)
    pointers, strides = _weight_args(packed, scales, zeros, lut)

    def grid(meta):
        return (cdiv(m, meta["BLOCK_M"]), cdiv(k, meta["BLOCK_K"]))

    _bwd.launch(
        grid, dy2, *pointers, dx,
        m, n, k,
        dy2.stride(0), *strides, dx.stride(0),
        interpret=interpret,
        GROUP_SIZE=group_size, HAS_ZEROS=zeros is not None, HAS_LUT=lut is not None,
        PRECISION=_precision(dy.dtype),
    )  # fmt: skip
    return dx.view(*dy.shape[:-1], k)


# --------------------------------------------------------------------------------------------
# Autograd
# --------------------------------------------------------------------------------------------


class W4A16Function(torch.autograd.Function):
    """Triton forward and ``grad_x`` backward; the 4-bit weight is frozen (no gradient).
    Saves the packed weight, its scales, zeros and table, not ``x``."""

    @staticmethod
    def forward(ctx, x, packed, scales, zeros, lut, bias, group_size: int, interpret: bool):
        y = _forward(x, packed, scales, zeros, lut, bias, group_size, interpret)
        ctx.save_for_backward(packed, scales, zeros, lut)
        ctx.group_size, ctx.interpret = group_size, interpret
        ctx.bias_dtype = bias.dtype if bias is not None else None
        return y

    @staticmethod
    def backward(ctx, dy):
        packed, scales, zeros, lut = ctx.saved_tensors
        dx = dbias = None
        if ctx.needs_input_grad[0]:
            dx = _backward(dy, packed, scales, zeros, lut, ctx.group_size, ctx.interpret)
        if ctx.needs_input_grad[5]:
            dbias = dy.reshape(-1, dy.shape[-1]).float().sum(0).to(ctx.bias_dtype)
        return dx, None, None, None, None, dbias, None, None


# --------------------------------------------------------------------------------------------
# The public op
# --------------------------------------------------------------------------------------------


def _check(x, packed, scales, group_size, zeros, lut, bias) -> int:
    require_tensor(x, "x")
    require_dtype(x, "x")
    if x.dim() < 1:
        raise ValueError(f"x: expected shape (..., K), got {tuple(x.shape)}")
    k = x.shape[-1]
    if k % 2:
        raise ValueError(f"x: expected an even K (two 4-bit codes per byte), got K={k}")
    require_tensor(packed, "packed")
    if packed.dtype != torch.uint8:
        raise TypeError(
            f"packed: expected dtype torch.uint8 (two codes a byte), got {packed.dtype}"
        )
    if packed.dim() != 2 or packed.shape[1] != k // 2:
        raise ValueError(
            f"packed: expected shape (N, {k // 2}) (K // 2 bytes a row for x's K={k}), "
            f"got {tuple(packed.shape)}"
        )
    group_size = require_int(group_size, "group_size", 2)
    if group_size % 2 or k % group_size:
        raise ValueError(
            f"group_size: expected an even divisor of K={k} (whole bytes per group), "
            f"got {group_size}"
        )
    n, groups = packed.shape[0], k // group_size
    for t, name in ((scales, "scales"), (zeros, "zeros")):
        if t is None and name == "zeros":
            continue
        require_tensor(t, name)
        require_dtype(t, name)
        if tuple(t.shape) != (n, groups):
            raise ValueError(
                f"{name}: expected shape ({n}, {groups}) (one per group of {group_size} "
                f"inputs of each of the N={n} rows), got {tuple(t.shape)}"
            )
    if lut is not None:
        require_tensor(lut, "lut")
        require_dtype(lut, "lut")
        if tuple(lut.shape) != (16,):
            raise ValueError(
                f"lut: expected shape (16,) (one value per code), got {tuple(lut.shape)}"
            )
        if zeros is not None:
            raise ValueError(
                "zeros: expected None with a lut (w = lut[code] * scale has no zero point), "
                "got a tensor"
            )
    if bias is not None:
        require_tensor(bias, "bias")
        require_dtype(bias, "bias")
        if tuple(bias.shape) != (n,):
            raise ValueError(f"bias: expected shape ({n},), got {tuple(bias.shape)}")
    for t, name in (
        (packed, "packed"),
        (scales, "scales"),
        (zeros, "zeros"),
        (lut, "lut"),
        (bias, "bias"),
    ):
        if t is not None and t.device != x.device:
            raise ValueError(f"{name}: expected the device of x ({x.device}), got {t.device}")
    return group_size


def w4a16_matmul(
    x: torch.Tensor,
    packed: torch.Tensor,
    scales: torch.Tensor,
    group_size: int,
    zeros: torch.Tensor | None = None,
    lut: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x @ W.T + bias`` for ``x (..., K)`` and a 4-bit weight ``W (N, K)``; returns
    ``(..., N)`` in ``x``'s dtype. Differentiable in ``x`` (and ``bias``); the weight is frozen.

    The weight is ``packed`` uint8 ``(N, K // 2)``, ``scales (N, K // group_size)`` and either
    ``zeros`` (same shape, code units; None: 8) or a 16-entry ``lut`` (NF4): see the module
    docstring. Equals :func:`reference` (the same math with the weight dequantized first).

    Runs the Triton kernels on CUDA tensors when Triton and a GPU are present, the same kernels
    in Triton's CPU interpreter when ``TRITON_INTERPRET=1`` (float32 only), and
    :func:`reference` otherwise (see :func:`llmlab.kernels.backend`).
    """
    group_size = _check(x, packed, scales, group_size, zeros, lut, bias)
    # The 4-bit weight is frozen on every path: its scales, zeros and table get no gradient.
    scales = scales.detach()
    zeros = zeros.detach() if zeros is not None else None
    lut = lut.detach() if lut is not None else None
    floats = [
        (t, name) for t, name in ((zeros, "zeros"), (lut, "lut"), (bias, "bias")) if t is not None
    ]
    path = dispatch((x, "x"), (scales, "scales"), *floats)
    if path == "reference" or packed.numel() == 0:  # no rows of W: nothing to launch
        return reference(x, packed, scales, group_size, zeros, lut, bias)
    if group_size & (group_size - 1):
        raise ValueError(
            f"group_size: the kernels step through whole groups, expected a power of two, "
            f"got {group_size}"
        )
    return W4A16Function.apply(
        x, packed, scales, zeros, lut, bias, group_size, path == "interpreter"
    )


__all__ = [
    "SYMMETRIC_ZERO",
    "TritonKernel",
    "W4A16Function",
    "dequantize",
    "reference",
    "unpack",
    "w4a16_matmul",
]
