"""INT8 GEMM: int8 activations times int8 weights, exact int32 sums, the scales applied once.

    >>> from llmlab.kernels.int8_matmul import int8_matmul, quantize_rowwise, reference
    >>> a, a_scale = quantize_rowwise(x)            # x: (tokens, K) float -> int8 codes, (tokens,)
    >>> b, b_scale = quantize_rowwise(linear.weight)  # (N, K) -> int8 codes, (N,): per channel
    >>> y = int8_matmul(a, b, a_scale, b_scale, bias=linear.bias)   # ~ linear(x), float32
    >>> torch.testing.assert_close(y, reference(a, b, a_scale, b_scale, linear.bias))

This is the inner product of **W8A8** inference and of LLM.int8() (Dettmers et al. 2022) for
the rows without outliers: both operands of ``x @ W.T`` are stored as 8-bit integers with a
float scale per row of ``x`` (a token) and per row of ``W`` (an output channel)::

    x[i, k] ~ a[i, k] * a_scale[i]            w[j, k] ~ b[j, k] * b_scale[j]
    y[i, j] = sum_k x[i, k] w[j, k] ~ (sum_k a[i, k] b[j, k]) * a_scale[i] * b_scale[j]

The scales do not depend on ``k``, so they leave the sum: the whole K loop multiplies and adds
*integers*, and the floats appear once per output element, in the epilogue. Integer sums are
exact (no rounding, no order dependence) as long as they fit in int32: each product is at most
``128 * 128 = 2**14`` in size, so up to :data:`MAX_K` = 131071 terms always fit.

**Why it pays.** Against a float16 GEMM of the same shape the int8 one reads half the bytes
of both operands (1 byte per element instead of 2), which is what decode, a memory-bound
matrix-vector product, is limited by; and on GPUs with int8 tensor cores (Turing and later;
A100 and H100 run dense int8 at twice their dense fp16 rate) the large, compute-bound
products of prefill run up to twice as fast. The price is the quantization error of *both*
operands: per-row scales (``vector-wise`` quantization) keep it small for ordinary rows,
and LLM.int8() sends the few outlier feature columns through a float16 matmul instead.

**Which quantization.** :func:`quantize_rowwise` is symmetric absmax with 127 levels a side,
one scale per row: ``scale = max|x_row| / 127``, ``q = round(x / scale)`` (round half to
even, as ``torch.round``), codes in [-127, 127]. It is
``llmlab.compress.quant.quantize(x, 8, scheme="absmax", granularity="channel")`` with the
scale per row (tested), and the vector-wise quantization of LLM.int8(). bitsandbytes'
``int8_vectorwise_quant`` (and ``llmlab.compress.int8.quantize_rowwise``, which follows it so
that chapter 05's ``QuantLinear`` equals ``Linear8bitLt``) keeps each row's absmax instead of
the scale and multiplies by
``127 / absmax`` rather than dividing by ``absmax / 127``: the two roundings of ``x / scale``
can differ for a value within a float32 rounding error of a half-integer. A row of zeros gets
scale 1 and codes 0, as in ``compress.quant``.

**The kernel.** A tiled GEMM: each program owns a ``BLOCK_M x BLOCK_N`` tile of the output
and walks K in steps of ``BLOCK_K``, loading an int8 tile of ``a`` and one of ``b`` and
accumulating ``tl.dot`` of them in an int32 tile. ``b`` is in ``nn.Linear``'s layout ``(N, K)``,
so both tiles are read with K contiguous (the layout int8 tensor cores want for both operands).
After the loop, the epilogue converts the int32 tile to float32, multiplies by ``a_scale`` down
the rows and ``b_scale`` across the columns, adds the bias, and writes the output once.
In Triton's CPU interpreter ``tl.dot`` of int8 tiles with an int32 accumulator is a NumPy int32
matmul, so the interpreter's sums are exact too, and its float32 epilogue does the reference's
operations in the reference's order: the interpreter's output equals :func:`reference` bit for
bit (tested). On the GPU the sums are exact; the epilogue may fuse ``* b_scale + bias`` into
one FMA (Triton allows it by default), which can change the last bit.

**No backward.** The operands are integer codes; there is nothing to differentiate, and there
is no autograd Function here: the ops are inference only, and their results never require
grad (on every path, so the reference and the kernel agree on that too). Training through
quantized weights is :mod:`llmlab.kernels.w4a16`'s business (its backward gives ``grad_x``).

Shapes: ``a`` of ``(..., K)`` int8, ``b`` of ``(N, K)`` int8 (any strides: a last dim that is
not contiguous is copied); ``a_scale`` of ``a.shape[:-1]`` (per row) or one element (per
tensor); ``b_scale`` of ``(N,)`` or one element; ``bias`` of ``(N,)`` or None. Output
``(..., N)`` in ``out_dtype``. Scales, bias and output: float32, float16, bfloat16 on the GPU
(the epilogue runs in float32); float32 in the interpreter.

Grid: ``(M blocks, N blocks)``. :class:`llmlab.kernels.launch.TritonKernel` decides at each
launch whether a kernel runs compiled on the GPU or in Triton's CPU interpreter.
"""

from __future__ import annotations

import math

import torch

from llmlab import kernels
from llmlab.kernels._common import (
    DTYPES,
    as_rows,
    cdiv,
    dispatch,
    interpreter_meta,
    next_power_of_2,
    require_dtype,
    require_tensor,
    tl,
)
from llmlab.kernels.launch import TritonKernel

kernels.register(
    "int8_matmul",
    "INT8 GEMM (W8A8, LLM.int8), int32 accumulation, fused scales and bias; forward only",
)

#: Longest K whose int32 sums cannot overflow: K * 128 * 128 <= 2**31 - 1.
MAX_K = (2**31 - 1) // (128 * 128)
#: Tile sizes in the interpreter (small: many programs, K loops of several steps); the GPU
#: tunes them. ``tl.dot`` needs every tile dim >= 16 on the GPU.
INTERPRETER_BLOCKS = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 32}
#: Columns per step of the quantizer's loops in the interpreter; the GPU tunes it.
INTERPRETER_CHUNK = 16


# --------------------------------------------------------------------------------------------
# The references: the definition of correct
# --------------------------------------------------------------------------------------------


def int32_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b.T`` for int8 ``a (M, K)`` and ``b (N, K)``, exact, as int32 ``(M, N)``.

    ``torch._int_mm`` (int8 x int8 -> int32) where it gives exact sums. On the CPU (torch 2.13)
    it takes every shape, M = 1, odd K and N, strided operands, but with K = 1 it returns
    garbage (uninitialised memory, tests/test_kernel_int8_matmul.py); CUDA's refuses some
    shapes (small M, K or N not a multiple of 8). Those go through float64, which is exact
    here: every partial sum is an integer below ``2**31``, far inside float64's ``2**53``.
    (CUDA has no int32 or int64 matmul; on the CPU an int64 matmul works but is many times
    slower.)
    """
    if a.shape[1] > 1:
        try:
            return torch._int_mm(a, b.t())
        except RuntimeError:
            pass
    return (a.double() @ b.double().t()).to(torch.int32)


def reference(
    a: torch.Tensor,
    b: torch.Tensor,
    a_scale: torch.Tensor,
    b_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``(a @ b.T) * a_scale[:, None] * b_scale[None, :] + bias`` in plain PyTorch.

    The integer product is exact (:func:`int32_matmul`); the scaling runs in float32 in that
    order (the kernel's order), then the result is cast to ``out_dtype``. ``a (..., K)`` and
    ``b (N, K)`` int8; ``a_scale`` one per row of ``a`` or one element; ``b_scale`` one per
    row of ``b`` or one element; ``bias (N,)`` or None. Returns ``(..., N)``.
    """
    a2 = a.reshape(math.prod(a.shape[:-1]), a.shape[-1])  # (M, K), also when K = 0
    acc = int32_matmul(a2, b)
    out = acc.float() * a_scale.float().reshape(-1, 1) * b_scale.float().reshape(1, -1)
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype).reshape(*a.shape[:-1], b.shape[0])


def reference_quantize_rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Absmax int8 codes of each row of ``x`` ``(..., K)`` and the row's float32 scale.

    ``scale = max|x_row| / 127`` (1 for a row of zeros), ``q = round(x / scale)`` in
    [-127, 127], computed in float32. Returns ``(q int8 (..., K), scale float32 (...))``;
    ``q * scale[..., None]`` approximates ``x`` to half a step.
    """
    x32 = x.float()
    top = x32.abs().amax(dim=-1, keepdim=True)
    # A tensor divisor: torch on CUDA turns division by a Python number into multiplication by
    # its reciprocal (a last-bit difference); IEEE division is the same on every device.
    scale = top / torch.full_like(top, 127.0)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(x32 / scale).clamp(-127, 127)
    return q.to(torch.int8), scale.squeeze(-1)


# --------------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------------
# Plain functions; TritonKernel (below) compiles them for the GPU or hands them to the
# interpreter when they are launched.


def _int8_matmul_kernel(
    A,
    B,
    A_SCALE,
    B_SCALE,
    BIAS,
    OUT,
    M,
    N,
    K,
    stride_am,
    stride_bn,
    stride_om,
    stride_as,
    stride_bs,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # One program per BLOCK_M x BLOCK_N tile of the output; the K loop adds integers only.
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    # int64 rows: row * stride can pass 2**31 on big inputs. b's tile is read as (K, N): the
    # transpose b.T that the product needs, with K still the contiguous dim in memory.
    a_ptrs = A + offs_m[:, None].to(tl.int64) * stride_am + offs_k[None, :]
    b_ptrs = B + offs_n[None, :].to(tl.int64) * stride_bn + offs_k[:, None]
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.int32)
    for start in range(0, K, BLOCK_K):
        k_mask = start + offs_k < K  # the last step may be partial: masked codes are 0
        a = tl.load(a_ptrs, mask=mask_m[:, None] & k_mask[None, :], other=0)
        b = tl.load(b_ptrs, mask=k_mask[:, None] & mask_n[None, :], other=0)
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)  # int8 x int8 -> int32, exact
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    # The epilogue: the floats enter once per output element, in the reference's order.
    a_s = tl.load(A_SCALE + offs_m * stride_as, mask=mask_m, other=0.0).to(tl.float32)
    b_s = tl.load(B_SCALE + offs_n * stride_bs, mask=mask_n, other=0.0).to(tl.float32)
    out = acc.to(tl.float32) * a_s[:, None] * b_s[None, :]
    if HAS_BIAS:
        out += tl.load(BIAS + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    o_ptrs = OUT + offs_m[:, None].to(tl.int64) * stride_om + offs_n[None, :]
    tl.store(o_ptrs, out.to(OUT.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def _quantize_rowwise_kernel(X, Q, SCALE, stride_x, stride_q, n_cols, CHUNK: tl.constexpr):
    # One program per row, two passes over it in chunks (any row length): the absmax, then
    # the codes. The second pass mostly reads from L2, where the first left the row.
    row = tl.program_id(0).to(tl.int64)  # int64: row * stride can pass 2**31 on big inputs
    cols = tl.arange(0, CHUNK)
    x_row = X + row * stride_x
    top = tl.zeros([CHUNK], tl.float32)
    for start in range(0, n_cols, CHUNK):
        x = tl.load(x_row + start + cols, mask=start + cols < n_cols, other=0.0)
        top = tl.maximum(top, tl.abs(x.to(tl.float32)))
    # div_rn: IEEE division, rounded as torch's (a plain / on the GPU is approximate).
    scale = tl.math.div_rn(tl.max(top, axis=0), 127.0)
    scale = tl.where(scale > 0, scale, 1.0)
    tl.store(SCALE + row, scale)
    for start in range(0, n_cols, CHUNK):
        mask = start + cols < n_cols
        x = tl.load(x_row + start + cols, mask=mask, other=0.0).to(tl.float32)
        v = tl.math.div_rn(x, scale)
        # Round half to even without a library call: adding 1.5 * 2**23 pushes the fraction
        # bits out of float32's 23-bit mantissa, and the add's own rounding (to nearest,
        # ties to even) rounds v; subtracting gives the integer back. Exact for |v| < 2**22.
        q = (v + 12582912.0) - 12582912.0  # 12582912 = 1.5 * 2**23
        q = tl.minimum(tl.maximum(q, -127.0), 127.0)
        tl.store(Q + row * stride_q + start + cols, q.to(tl.int8), mask=mask)


# Tiles and warps are tuned on the GPU once per (M, N, K). Small BLOCK_M serves decode (a few
# tokens: the product is a matrix-vector one, limited by reading b); large tiles serve
# prefill, where int8 tensor cores set the pace. BLOCK_K is a multiple of 32, the K of one
# int8 tensor-core instruction.
def _configs(triton):
    shapes = [
        # Decode (M of a few rows): narrow column tiles, so that 4096 output columns make
        # 128-256 programs for an H100's 132 multiprocessors instead of 32-64.
        (16, 16, 256, 4, 4),
        (16, 32, 256, 4, 4),
        (16, 64, 128, 4, 4),
        (16, 128, 128, 4, 4),
        (32, 64, 128, 4, 4),
        (64, 64, 128, 4, 4),
        (64, 128, 128, 4, 3),
        (128, 64, 128, 4, 3),
        (128, 128, 64, 8, 4),
        (128, 128, 128, 8, 3),
        (128, 256, 64, 8, 3),
    ]
    return [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)
        for m, n, k, w, s in shapes
    ]


def _prune_tiles(configs, named_args, **kwargs):
    # Rows of the tile beyond M are masked work: keep tiles up to M rounded up to a power of
    # two (and always the smallest BLOCK_M).
    rows = max(16, next_power_of_2(max(1, named_args["M"])))
    kept = [c for c in configs if c.kwargs["BLOCK_M"] <= rows]
    return kept or configs


def _quantize_configs(triton):
    return [
        triton.Config({"CHUNK": chunk}, num_warps=w)
        for chunk in (1024, 2048, 4096)
        for w in (4, 8)
        if 4 <= chunk // (32 * w) <= 16
    ]


_matmul = TritonKernel(
    _int8_matmul_kernel,
    autotune=(_configs, ["M", "N", "K", "HAS_BIAS"], _prune_tiles),
    interpret_meta=INTERPRETER_BLOCKS,
)
_quantize = TritonKernel(_quantize_rowwise_kernel, autotune=(_quantize_configs, ["n_cols"], None))


def _forward(a, b, a_scale, b_scale, bias, out_dtype, interpret: bool) -> torch.Tensor:
    a2, b2 = as_rows(a), as_rows(b)
    (m, k), n = a2.shape, b2.shape[0]
    a_s, b_s = a_scale.reshape(-1), b_scale.reshape(-1)
    out = torch.empty((m, n), dtype=out_dtype, device=a.device)

    def grid(meta):
        return (cdiv(m, meta["BLOCK_M"]), cdiv(n, meta["BLOCK_N"]))

    _matmul.launch(
        grid,
        a2,
        b2,
        a_s,
        b_s,
        bias.contiguous() if bias is not None else a_s,  # never read without a bias
        out,
        m,
        n,
        k,
        a2.stride(0),
        b2.stride(0),
        out.stride(0),
        a_s.stride(0) if a_s.numel() > 1 else 0,  # stride 0: one scale for every row
        b_s.stride(0) if b_s.numel() > 1 else 0,
        interpret=interpret,
        HAS_BIAS=bias is not None,
    )
    return out.view(*a.shape[:-1], n)


def _quantize_forward(x: torch.Tensor, interpret: bool) -> tuple[torch.Tensor, torch.Tensor]:
    x2 = as_rows(x)
    n_rows, n_cols = x2.shape
    q = torch.empty((n_rows, n_cols), dtype=torch.int8, device=x.device)
    scale = torch.empty(n_rows, dtype=torch.float32, device=x.device)
    _quantize.launch(
        (n_rows,),
        x2,
        q,
        scale,
        x2.stride(0),
        q.stride(0),
        n_cols,
        interpret=interpret,
        **interpreter_meta(interpret, CHUNK=INTERPRETER_CHUNK),
    )
    return q.view(x.shape), scale.view(x.shape[:-1])


# --------------------------------------------------------------------------------------------
# The public ops (no autograd Function: integer operands have no gradient)
# --------------------------------------------------------------------------------------------


def _check(a, b, a_scale, b_scale, bias, out_dtype) -> None:
    for t, name in ((a, "a"), (b, "b")):
        require_tensor(t, name)
        if t.dtype != torch.int8:
            raise TypeError(f"{name}: expected dtype torch.int8 (quantized codes), got {t.dtype}")
    if a.dim() < 1:
        raise ValueError(f"a: expected shape (..., K), got {tuple(a.shape)}")
    k = a.shape[-1]
    if b.dim() != 2 or b.shape[1] != k:
        raise ValueError(
            f"b: expected shape (N, {k}) (nn.Linear layout, K matching a's last dim), "
            f"got {tuple(b.shape)}"
        )
    if k > MAX_K:
        raise ValueError(f"a: expected K <= {MAX_K} (int32 sums could overflow), got K={k}")
    rows = tuple(a.shape[:-1])
    for t, name, shape, what in (
        (a_scale, "a_scale", rows, "one scale per row of a"),
        (b_scale, "b_scale", (b.shape[0],), "one scale per row of b"),
    ):
        require_tensor(t, name)
        require_dtype(t, name)
        if tuple(t.shape) != shape and t.numel() != 1:
            raise ValueError(
                f"{name}: expected shape {shape} ({what}) or a single element (per tensor), "
                f"got {tuple(t.shape)}"
            )
    if bias is not None:
        require_tensor(bias, "bias")
        require_dtype(bias, "bias")
        if tuple(bias.shape) != (b.shape[0],):
            raise ValueError(f"bias: expected shape ({b.shape[0]},), got {tuple(bias.shape)}")
    if out_dtype not in DTYPES:
        names = ", ".join(str(d) for d in DTYPES)
        raise TypeError(f"out_dtype: expected one of {names}, got {out_dtype!r}")
    for t, name in ((b, "b"), (a_scale, "a_scale"), (b_scale, "b_scale"), (bias, "bias")):
        if t is not None and t.device != a.device:
            raise ValueError(f"{name}: expected the device of a ({a.device}), got {t.device}")


def int8_matmul(
    a: torch.Tensor,
    b: torch.Tensor,
    a_scale: torch.Tensor,
    b_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``(a @ b.T) * a_scale[:, None] * b_scale[None, :] + bias`` with exact int32 sums.

    ``a (..., K)`` and ``b (N, K)`` int8 codes (``b`` in ``nn.Linear``'s layout), ``a_scale``
    one per row of ``a`` or one element, ``b_scale`` one per row of ``b`` or one element,
    ``bias (N,)`` or None; returns ``(..., N)`` in ``out_dtype``. Equals :func:`reference` (bit
    for bit in the interpreter; see the module docstring for the GPU). Inference only: the
    result never requires grad, even for a bias that does.

    Runs the Triton kernel on CUDA tensors when Triton and a GPU are present, the same kernel
    in Triton's CPU interpreter when ``TRITON_INTERPRET=1`` (scales, bias and output float32
    only), and :func:`reference` otherwise (see :func:`llmlab.kernels.backend`).
    """
    _check(a, b, a_scale, b_scale, bias, out_dtype)
    # Inference only, on every path: a bias or scales that require grad (an nn.Linear's
    # parameters) are read, and the result carries no gradient.
    a_scale, b_scale = a_scale.detach(), b_scale.detach()
    bias = bias.detach() if bias is not None else None
    if a.numel() == 0 or b.numel() == 0:  # nothing to launch (dispatch's rule for an empty a)
        return reference(a, b, a_scale, b_scale, bias, out_dtype)
    # The integer codes are not the interpreter's float32: dispatch decides on the float inputs.
    named = [(a_scale, "a_scale"), (b_scale, "b_scale")]
    path = dispatch(*named, *([(bias, "bias")] if bias is not None else []))
    if path == "reference":
        return reference(a, b, a_scale, b_scale, bias, out_dtype)
    if path == "interpreter" and out_dtype != torch.float32:
        raise TypeError(f"out_dtype: the Triton interpreter runs float32 only, got {out_dtype}")
    return _forward(a, b, a_scale, b_scale, bias, out_dtype, path == "interpreter")


def quantize_rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Int8 absmax codes of each row of ``x`` ``(..., K)`` and one float32 scale per row.

    Returns ``(q int8 (..., K), scale float32 (...))`` with ``x ~ q * scale[..., None]``;
    equals :func:`reference_quantize_rowwise` code for code. Use it on activations (one scale
    per token) and on an ``nn.Linear`` weight (one scale per output channel) to feed
    :func:`int8_matmul`. The result carries no gradient (rounding has none worth having).

    Runs the Triton kernel on CUDA tensors when Triton and a GPU are present, in Triton's CPU
    interpreter when ``TRITON_INTERPRET=1`` (float32 only), and the reference otherwise.
    """
    require_tensor(x, "x")
    require_dtype(x, "x")
    if x.dim() < 1 or x.shape[-1] < 1:
        raise ValueError(f"x: expected shape (..., K) with K >= 1, got {tuple(x.shape)}")
    x = x.detach()  # rounding has no useful gradient: the codes and scale carry none
    path = dispatch((x, "x"))
    if path == "reference":
        return reference_quantize_rowwise(x)
    return _quantize_forward(x, path == "interpreter")


__all__ = [
    "MAX_K",
    "TritonKernel",
    "int32_matmul",
    "int8_matmul",
    "quantize_rowwise",
    "reference",
    "reference_quantize_rowwise",
]
