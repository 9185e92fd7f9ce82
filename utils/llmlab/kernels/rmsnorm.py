"""Fused RMSNorm: one read of x and one write of y forward, one pass over x and dy backward.

    >>> from llmlab.kernels.rmsnorm import rms_norm, reference
    >>> y = rms_norm(x, weight, eps=1e-6)     # x: (..., d_model), weight: (d_model,)
    >>> torch.testing.assert_close(y, reference(x, weight, eps=1e-6))

What it computes is chapter 01's :class:`llmlab.nn.norms.RMSNorm`, row by row::

    rstd = 1 / sqrt(mean(x^2) + eps)          one float per row
    y    = weight * (x * rstd)

**Which rounding.** There are two conventions in the wild when x is float16 or bfloat16. We
follow transformers' ``LlamaRMSNorm`` (and SmolLM2, and :class:`llmlab.nn.norms.RMSNorm`): the
statistics and ``n = x * rstd`` are computed in float32, ``n`` is *rounded to x's dtype*, and
only then multiplied by the weight; the result has the promoted dtype of x and the weight
(``torch.result_type``), exactly as ``weight * n.to(x.dtype)`` has in PyTorch.
``torch.nn.functional.rms_norm`` multiplies before it rounds, so in half precision the two
differ in the last bit; in float32 all three agree.

**Bytes.** RMSNorm does about four flops per element and moves two to four bytes in and out:
it is memory bound. Eager PyTorch runs it as six kernels (cast up, square, mean, rsqrt and
scale, cast down, times weight), each reading and writing a full ``(rows, d_model)`` tensor,
and autograd keeps several of those intermediates for the backward. The fused forward reads
each row once into registers, reduces it there, and writes ``y`` once: two passes over the
data, the least any kernel can do. For the backward it saves only ``rstd``: 4 bytes per row,
next to ``2 * d_model`` bytes per row of a bf16 activation.

**Backward.** With ``g = dy * weight`` and ``n = x * rstd``, differentiating
``y_j = w_j x_j rstd`` (``rstd`` depends on every ``x_i``: ``d rstd / d x_i = -rstd^3 x_i / d``)::

    dx      = rstd * (g - n * mean(g * n))          one reduction per row
    dweight = sum over rows of dy * n               a reduction *across* rows

``dx`` is per row like the forward. ``dweight`` sums over every row of the batch: thousands of
programs adding into one ``(d_model,)`` vector with atomics would be slow and, because float
addition is not associative, give different bits run to run. Instead the backward launches a
fixed number of programs (a few per streaming multiprocessor); each walks its own run of rows,
keeps its partial ``dweight`` in registers, and writes it to one row of a
``(programs, d_model)`` float32 buffer, which ``sum(0)`` then reduces: deterministic, and the
buffer is tiny. (``n`` in ``dweight`` is the rounded ``n`` the forward multiplied, as autograd
of the LLaMA formula sees it.)

Shapes: ``x`` of ``(..., d_model)``, leading dims flattened into rows (rows may be strided;
a last dim that is not contiguous is copied first); ``weight`` of ``(d_model,)``;
``d_model <= MAX_COLS`` on the kernel paths (one row lives in registers). Dtypes: float32,
float16, bfloat16 on the GPU with the math in float32; float32 in the interpreter.

Grid: forward, one program per row; backward, ``min(rows, programs)`` programs that each own
a contiguous run of rows. :class:`llmlab.kernels.launch.TritonKernel` decides at each launch
whether a kernel runs compiled on the GPU or in Triton's CPU interpreter.
"""

from __future__ import annotations

import math

import torch

from llmlab import kernels
from llmlab.kernels._common import (
    as_rows,
    dispatch,
    next_power_of_2,
    require_dtype,
    require_tensor,
    tl,
)
from llmlab.kernels.launch import TritonKernel

kernels.register("rmsnorm", "fused RMSNorm (LLaMA rounding), forward and backward")

#: Longest row the kernels hold in registers (LLaMA-3-405B's d_model). Compiled for sm_90 the
#: backward fits in registers up to d_model 8192; at 16384 it spills 48-64 bytes per thread
#: to local memory (cached in L1), and longer rows would spill more.
MAX_COLS = 16384
#: Programs of the backward in the interpreter (few, so rows are shared out unevenly).
INTERPRETER_PROGRAMS = 3
#: Backward programs per streaming multiprocessor on the GPU.
PROGRAMS_PER_SM = 4


# --------------------------------------------------------------------------------------------
# The reference: the definition of correct
# --------------------------------------------------------------------------------------------


def reference(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm in plain PyTorch, rounded as transformers' ``LlamaRMSNorm``.

    ``weight * (x32 * rsqrt(mean(x32^2) + eps)).to(x.dtype)`` with ``x32 = x.float()``: the
    same arithmetic as :class:`llmlab.nn.norms.RMSNorm`, as a function.
    """
    x32 = x.float()
    n = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + eps)
    return weight * n.to(x.dtype)


def reference_backward(
    x: torch.Tensor, weight: torch.Tensor, dy: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dx, dweight)`` of :func:`reference` from the formulas in the module docstring.

    Computed in float32; ``dx`` is returned in x's dtype, ``dweight`` in the weight's.
    """
    x32, dy32, w32 = x.float(), dy.float(), weight.float()
    rstd = torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + eps)
    n = x32 * rstd
    g = dy32 * w32
    dx = rstd * (g - n * (g * n).mean(dim=-1, keepdim=True))
    dweight = (dy32 * n.to(x.dtype).float()).reshape(-1, x.shape[-1]).sum(0)
    return dx.to(x.dtype), dweight.to(weight.dtype)


# --------------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------------
# Plain functions; TritonKernel (below) compiles them for the GPU or hands them to the
# interpreter when they are launched.


def _rmsnorm_fwd_kernel(X, W, Y, RSTD, stride_x, stride_y, n_cols, eps, BLOCK: tl.constexpr):
    # One program per row, the whole row in registers: x is read once and y written once.
    row = tl.program_id(0).to(tl.int64)  # int64: row * stride can pass 2**31 on big inputs
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / n_cols + eps)
    # LLaMA's rounding: n goes back to x's dtype before the weight multiplies it.
    n = (x * rstd).to(X.dtype.element_ty).to(tl.float32)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + row * stride_y + cols, (n * w).to(Y.dtype.element_ty), mask=mask)
    tl.store(RSTD + row, rstd)


def _rmsnorm_bwd_kernel(
    X,
    W,
    DY,
    RSTD,
    DX,
    DW_PARTIAL,
    stride_x,
    stride_dy,
    stride_dx,
    n_rows,
    n_cols,
    rows_per_program,
    BLOCK: tl.constexpr,
):
    # Each program owns rows [first, last): it writes their dx and sums their share of
    # dweight in registers, then stores that partial sum once (see the module docstring).
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    dw = tl.zeros([BLOCK], tl.float32)
    first = pid.to(tl.int64) * rows_per_program  # int64 rows: row * stride can pass 2**31
    last = tl.minimum(first + rows_per_program, n_rows)
    for row in range(first, last):
        x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + row * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + row)
        # w is read again for every row (from L1/L2, not memory): holding it in registers
        # across the loop would spill them at d_model 16384.
        w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
        n = x * rstd
        g = dy * w
        dx = rstd * (g - n * (tl.sum(g * n, axis=0) / n_cols))
        tl.store(DX + row * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=mask)
        dw += dy * n.to(X.dtype.element_ty).to(tl.float32)
    tl.store(DW_PARTIAL + pid * n_cols + cols, dw, mask=mask)


# Warps per row are tuned on the GPU once per (row block, dtype): each thread should hold
# 4..32 values of a row (fewer wastes lanes, more spills registers; the backward holds x, dy,
# w and the dweight partial, hence its lower limit).
def _warps_configs(triton):
    return [triton.Config({}, num_warps=w) for w in (1, 2, 4, 8, 16, 32)]


def _pruned_warps(max_per_thread: int):
    def prune(configs, named_args, **kwargs):
        block = kwargs.get("BLOCK", named_args.get("BLOCK"))
        kept = [c for c in configs if 4 <= block // (32 * c.num_warps) <= max_per_thread]
        if kept:
            return kept
        fewest = min(configs, key=lambda c: c.num_warps)
        most = max(configs, key=lambda c: c.num_warps)
        return [fewest if block < 4 * 32 * fewest.num_warps else most]

    return prune


_fwd = TritonKernel(
    _rmsnorm_fwd_kernel, autotune=(_warps_configs, ["BLOCK", "n_cols"], _pruned_warps(32))
)
_bwd = TritonKernel(
    _rmsnorm_bwd_kernel, autotune=(_warps_configs, ["BLOCK", "n_cols"], _pruned_warps(16))
)


def _backward_programs(n_rows: int, device: torch.device, interpret: bool) -> int:
    if interpret:
        return max(1, min(n_rows, INTERPRETER_PROGRAMS))
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(n_rows, PROGRAMS_PER_SM * sms))


def _forward(
    x: torch.Tensor, weight: torch.Tensor, eps: float, interpret: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    x2 = as_rows(x)
    n_rows, n_cols = x2.shape
    y2 = torch.empty(x2.shape, dtype=torch.result_type(x, weight), device=x.device)
    rstd = torch.empty(n_rows, dtype=torch.float32, device=x.device)
    _fwd.launch(
        (n_rows,),
        x2,
        weight,
        y2,
        rstd,
        x2.stride(0),
        y2.stride(0),
        n_cols,
        eps,
        interpret=interpret,
        BLOCK=next_power_of_2(n_cols),
    )
    return y2.view(x.shape), rstd


def _backward(
    x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor, dy: torch.Tensor, interpret: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    x2, dy2 = as_rows(x), as_rows(dy)
    n_rows, n_cols = x2.shape
    dx2 = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
    programs = _backward_programs(n_rows, x.device, interpret)
    partial = torch.empty(programs, n_cols, dtype=torch.float32, device=x.device)
    _bwd.launch(
        (programs,),
        x2,
        weight,
        dy2,
        rstd,
        dx2,
        partial,
        x2.stride(0),
        dy2.stride(0),
        dx2.stride(0),
        n_rows,
        n_cols,
        math.ceil(n_rows / programs),
        interpret=interpret,
        BLOCK=next_power_of_2(n_cols),
    )
    return dx2.view(x.shape), partial.sum(0).to(weight.dtype)


# --------------------------------------------------------------------------------------------
# Autograd
# --------------------------------------------------------------------------------------------


class RMSNormFunction(torch.autograd.Function):
    """Triton RMSNorm with a Triton backward; saves ``rstd`` (one float per row) besides the
    inputs x and weight, which the caller holds anyway."""

    @staticmethod
    def forward(ctx, x, weight, eps: float, interpret: bool):
        y, rstd = _forward(x, weight, eps, interpret)
        ctx.save_for_backward(x, weight, rstd)
        ctx.interpret = interpret
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, rstd = ctx.saved_tensors
        dx, dweight = _backward(x, weight, rstd, dy, ctx.interpret)
        return dx, (dweight if ctx.needs_input_grad[1] else None), None, None


# --------------------------------------------------------------------------------------------
# The public op
# --------------------------------------------------------------------------------------------


def _check(x, weight, eps) -> None:
    for t, name in ((x, "x"), (weight, "weight")):
        require_tensor(t, name)
        require_dtype(t, name)
    if x.dim() < 1 or x.shape[-1] < 1:
        raise ValueError(
            f"x: expected shape (..., d_model) with d_model >= 1, got {tuple(x.shape)}"
        )
    if weight.shape != (x.shape[-1],):
        raise ValueError(
            f"weight: expected shape ({x.shape[-1]},) to match x's last dim, "
            f"got {tuple(weight.shape)}"
        )
    if weight.device != x.device:
        raise ValueError(f"weight: expected the device of x ({x.device}), got {weight.device}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"eps: expected a number >= 0, got {eps!r}")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm of ``x`` (``(..., d_model)``) scaled by ``weight`` (``(d_model,)``); differentiable.

    Equals :class:`llmlab.nn.norms.RMSNorm` and transformers' ``LlamaRMSNorm`` (see the module
    docstring for the rounding), in the dtype ``torch.result_type(x, weight)``.

    Runs the fused Triton kernel on CUDA tensors when Triton and a GPU are present, the same
    kernel in Triton's CPU interpreter when ``TRITON_INTERPRET=1`` (float32 only), and
    :func:`reference` otherwise (see :func:`llmlab.kernels.backend`).
    """
    _check(x, weight, eps)
    path = dispatch((x, "x"), (weight, "weight"))
    if path == "reference":
        return reference(x, weight, eps)
    if x.shape[-1] > MAX_COLS:
        raise ValueError(
            f"x: the kernel holds a row in registers, expected d_model <= {MAX_COLS}, "
            f"got {x.shape[-1]}"
        )
    return RMSNormFunction.apply(x, weight, float(eps), path == "interpreter")


__all__ = [
    "MAX_COLS",
    "RMSNormFunction",
    "TritonKernel",
    "reference",
    "reference_backward",
    "rms_norm",
]
