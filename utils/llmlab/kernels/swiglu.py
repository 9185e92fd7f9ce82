"""Fused SwiGLU gate: ``silu(gate) * up`` in one pass, and both gradients in one pass back.

    >>> from llmlab.kernels.swiglu import swiglu, reference
    >>> hidden = swiglu(ffn.gate_proj(x), ffn.up_proj(x))     # each (..., d_ff)
    >>> out = ffn.down_proj(hidden)                           # = FeedForward(activation="swiglu")
    >>> torch.testing.assert_close(hidden, reference(gate, up))

LLaMA's feed-forward (:class:`llmlab.nn.ffn.FeedForward` with ``activation="swiglu"``) computes
``down_proj(silu(gate_proj(x)) * up_proj(x))``. The three matrix products are compute bound;
the elementwise gate between them is *memory bound*: a sigmoid, two multiplies, and three
tensors of ``(tokens, d_ff)`` to move, the largest activations of the block (d_ff is about
2.7 times d_model).

**Bytes per element of ``(tokens, d_ff)``** (one unit = one element of the dtype):

- eager forward: ``silu`` reads ``gate`` and writes ``s`` (2), ``s * up`` reads two and
  writes ``h`` (3): 5 units, and autograd keeps ``s`` alive for the backward (an extra
  activation of ``(tokens, d_ff)`` per layer).
- fused forward: read ``gate`` and ``up``, write ``h``: 3 units. Nothing extra is saved:
  the backward recomputes the sigmoid from ``gate``, which costs flops, not bytes.
- eager backward: ``dh * s`` -> ``d_up`` (3), ``dh * up`` -> ``ds`` (3), silu's backward
  reads ``ds`` and ``gate``, writes ``d_gate`` (3): 9 units.
- fused backward: read ``gate``, ``up``, ``dh``, write ``d_gate`` and ``d_up``: 5 units.

**The gradients.** With ``sig = sigmoid(g)`` and ``h = g * sig * u``::

    d_up   = dh * g * sig                       (= dh * silu(g))
    d_gate = dh * u * sig * (1 + g * (1 - sig)) (d silu/dg = sig + g * sig * (1 - sig))

Shapes: ``gate`` and ``up`` of one shape ``(..., d_ff)``; leading dims are flattened into
rows, and rows may be strided (e.g. the two halves of a fused ``gate_up`` projection from
``chunk(2, dim=-1)`` are read in place); a last dim that is not contiguous is copied first.
Dtypes: float32, float16, bfloat16 on the GPU with the math in float32; float32 in the
interpreter.

Grid: ``(rows, column blocks)``; every program handles ``BLOCK`` columns of one row.
:class:`llmlab.kernels.launch.TritonKernel` decides at each launch whether the kernel runs
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
    interpreter_meta,
    require_dtype,
    require_tensor,
    tl,
)
from llmlab.kernels.launch import TritonKernel

kernels.register("swiglu", "fused SwiGLU gate silu(gate) * up, forward and backward")

#: Columns per program in the interpreter (small: many programs, quick tests); the GPU tunes it.
INTERPRETER_BLOCK = 64


# --------------------------------------------------------------------------------------------
# The reference: the definition of correct
# --------------------------------------------------------------------------------------------


def reference(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` in plain PyTorch, in the inputs' dtype: LLaMA's (and
    :class:`llmlab.nn.ffn.FeedForward`'s) hidden activation. ``silu(g) = g * sigmoid(g)``."""
    return F.silu(gate) * up


def reference_backward(
    gate: torch.Tensor, up: torch.Tensor, dh: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(d_gate, d_up)`` of ``h = silu(gate) * up`` given the upstream gradient ``dh``.

    Computed in float32 from the formulas in the module docstring, returned in the dtype of
    ``gate``. Only ``gate``, ``up`` and ``dh`` are needed: the sigmoid is recomputed.
    """
    g, u, d = gate.float(), up.float(), dh.float()
    sig = torch.sigmoid(g)
    d_up = d * g * sig
    d_gate = d * u * sig * (1 + g * (1 - sig))
    return d_gate.to(gate.dtype), d_up.to(gate.dtype)


# --------------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------------
# Plain functions; TritonKernel (below) compiles them for the GPU or hands them to the
# interpreter when they are launched.


def _swiglu_fwd_kernel(G, U, H, stride_g, stride_u, stride_h, n_cols, BLOCK: tl.constexpr):
    # Read gate and up once, write h once; the sigmoid lives only in registers.
    row = tl.program_id(0).to(tl.int64)  # int64: row * stride can pass 2**31 on big inputs
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    g = tl.load(G + row * stride_g + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(U + row * stride_u + cols, mask=mask, other=0.0).to(tl.float32)
    h = g * tl.sigmoid(g) * u
    tl.store(H + row * stride_h + cols, h.to(H.dtype.element_ty), mask=mask)


def _swiglu_bwd_kernel(
    G,
    U,
    DH,
    DG,
    DU,
    stride_g,
    stride_u,
    stride_dh,
    stride_dg,
    stride_du,
    n_cols,
    BLOCK: tl.constexpr,
):
    # Read gate, up and dh once, write both gradients once. The sigmoid is recomputed rather
    # than saved by the forward: an exp per element is free next to a tensor's worth of bytes.
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    g = tl.load(G + row * stride_g + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(U + row * stride_u + cols, mask=mask, other=0.0).to(tl.float32)
    dh = tl.load(DH + row * stride_dh + cols, mask=mask, other=0.0).to(tl.float32)
    sig = tl.sigmoid(g)
    silu = g * sig
    d_up = dh * silu
    d_gate = dh * u * (sig + silu * (1.0 - sig))
    tl.store(DG + row * stride_dg + cols, d_gate.to(DG.dtype.element_ty), mask=mask)
    tl.store(DU + row * stride_du + cols, d_up.to(DU.dtype.element_ty), mask=mask)


# Block length and warps are tuned on the GPU once per d_ff. Each thread should hold 4-16
# elements of a row: a 16-byte vector load of bf16 is 8 of them.
def _configs(triton):
    return [
        triton.Config({"BLOCK": block}, num_warps=w)
        for block in (1024, 2048, 4096)
        for w in (4, 8)
        if 4 <= block // (32 * w) <= 16
    ]


def _prune_blocks(configs, named_args, **kwargs):
    # A block much longer than the row only adds masked lanes: keep the blocks up to the
    # row length rounded up (and always the smallest).
    n_cols = named_args["n_cols"]
    smallest = min(c.kwargs["BLOCK"] for c in configs)
    kept = [c for c in configs if c.kwargs["BLOCK"] <= max(smallest, n_cols)]
    return kept or configs


_fwd = TritonKernel(_swiglu_fwd_kernel, autotune=(_configs, ["n_cols"], _prune_blocks))
_bwd = TritonKernel(_swiglu_bwd_kernel, autotune=(_configs, ["n_cols"], _prune_blocks))


def _grid(n_rows: int, n_cols: int, interpret: bool):
    if interpret:
        return (n_rows, cdiv(n_cols, INTERPRETER_BLOCK))
    return lambda meta: (n_rows, cdiv(n_cols, meta["BLOCK"]))


def _forward(gate: torch.Tensor, up: torch.Tensor, interpret: bool) -> torch.Tensor:
    g2, u2 = as_rows(gate), as_rows(up)
    n_rows, n_cols = g2.shape
    h2 = torch.empty((n_rows, n_cols), dtype=gate.dtype, device=gate.device)
    _fwd.launch(
        _grid(n_rows, n_cols, interpret),
        g2,
        u2,
        h2,
        g2.stride(0),
        u2.stride(0),
        h2.stride(0),
        n_cols,
        interpret=interpret,
        **interpreter_meta(interpret, BLOCK=INTERPRETER_BLOCK),
    )
    return h2.view(gate.shape)


def _backward(
    gate: torch.Tensor, up: torch.Tensor, dh: torch.Tensor, interpret: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    g2, u2, dh2 = as_rows(gate), as_rows(up), as_rows(dh)
    n_rows, n_cols = g2.shape
    dg2 = torch.empty((n_rows, n_cols), dtype=gate.dtype, device=gate.device)
    du2 = torch.empty_like(dg2)
    _bwd.launch(
        _grid(n_rows, n_cols, interpret),
        g2,
        u2,
        dh2,
        dg2,
        du2,
        g2.stride(0),
        u2.stride(0),
        dh2.stride(0),
        dg2.stride(0),
        du2.stride(0),
        n_cols,
        interpret=interpret,
        **interpreter_meta(interpret, BLOCK=INTERPRETER_BLOCK),
    )
    return dg2.view(gate.shape), du2.view(gate.shape)


# --------------------------------------------------------------------------------------------
# Autograd
# --------------------------------------------------------------------------------------------


class SwiGLUFunction(torch.autograd.Function):
    """Triton SwiGLU gate with a Triton backward; saves the inputs, not ``silu(gate)``."""

    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor, interpret: bool) -> torch.Tensor:
        h = _forward(gate, up, interpret)
        ctx.save_for_backward(gate, up)
        ctx.interpret = interpret
        return h

    @staticmethod
    def backward(ctx, dh: torch.Tensor):
        gate, up = ctx.saved_tensors
        d_gate, d_up = _backward(gate, up, dh, ctx.interpret)
        return d_gate, d_up, None


# --------------------------------------------------------------------------------------------
# The public op
# --------------------------------------------------------------------------------------------


def _check(gate, up) -> None:
    for t, name in ((gate, "gate"), (up, "up")):
        require_tensor(t, name)
        if t.dim() < 1:
            raise ValueError(
                f"{name}: expected at least 1 dimension (..., d_ff), got shape {tuple(t.shape)}"
            )
        require_dtype(t, name)
    if up.shape != gate.shape:
        raise ValueError(
            f"up: expected the shape of gate {tuple(gate.shape)}, got {tuple(up.shape)}"
        )
    if up.dtype != gate.dtype:
        raise TypeError(f"up: expected the dtype of gate ({gate.dtype}), got {up.dtype}")
    if up.device != gate.device:
        raise ValueError(f"up: expected the device of gate ({gate.device}), got {up.device}")


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` for ``gate``, ``up`` of one shape ``(..., d_ff)``; differentiable.

    A drop-in for the hidden activation of :class:`llmlab.nn.ffn.FeedForward` (``swiglu``):
    ``ffn.down_proj(swiglu(ffn.gate_proj(x), ffn.up_proj(x)))``.

    Runs the fused Triton kernels on CUDA tensors when Triton and a GPU are present, the same
    kernels in Triton's CPU interpreter when ``TRITON_INTERPRET=1`` (float32 only), and
    :func:`reference` otherwise (see :func:`llmlab.kernels.backend`).
    """
    _check(gate, up)
    path = dispatch((gate, "gate"))
    if path == "reference":
        return reference(gate, up)
    return SwiGLUFunction.apply(gate, up, path == "interpreter")


__all__ = [
    "SwiGLUFunction",
    "TritonKernel",
    "reference",
    "reference_backward",
    "swiglu",
]
