"""Fused rotary position embedding (RoPE): one read and one write of q and k, both directions.

    >>> from llmlab.kernels.rope import rope, rope_qk, reference
    >>> cos, sin = RotaryEmbedding(head_dim)(positions)   # (batch, seq, head_dim) each
    >>> q_rot = rope(q, cos, sin)                         # q: (batch, heads, seq, head_dim)
    >>> q_rot, k_rot = rope_qk(q, k, cos, sin)            # both in one launch (GQA: fewer k heads)
    >>> torch.testing.assert_close(q_rot, reference(q, cos, sin))

What it computes is chapter 01's :func:`llmlab.nn.positional.apply_rotary`, in the rotate-half
layout of transformers' LLaMA (and SmolLM2): dim ``i`` is paired with dim ``i + head_dim/2``,
and with ``x = (x1, x2)`` split into those halves and ``(c1, c2)``, ``(s1, s2)`` the halves of
the cos and sin rows of the token's position::

    y = x * cos + rotate_half(x) * sin        rotate_half(x1, x2) = (-x2, x1)
    y1 = x1 * c1 - x2 * s1
    y2 = x2 * c2 + x1 * s2

For tables built from angles (``c1 = c2 = cos(theta)``, ``s1 = s2 = sin(theta)``) each pair
``(x1_i, x2_i)`` is turned by ``theta_i``.

Only this layout. The interleaved layout (adjacent pairs ``(2i, 2i+1)``: RoFormer, Meta's
LLaMA, GPT-J; ``apply_rotary(..., layout="interleaved")``) needs no second kernel: permute the
rows of the checkpoint's q and k projections once at load time with
:func:`llmlab.nn.positional.interleaved_to_half`, and this kernel computes the same scores.

**Why a kernel.** RoPE does four multiplies and two adds per pair of elements but must read
and write every element of q and k: it is *memory bound*, and its speed is the bytes it moves.
Eager PyTorch writes the formula as five kernels (``x * cos``, the negation and the
concatenation inside ``rotate_half``, ``* sin``, ``+``), each reading its inputs from GPU
memory and writing a full-size intermediate: about ten element-passes over x where one read and
one write would do. The fused kernel holds a token's heads in registers, loads its cos and sin
row once for all heads (of q *and* k in :func:`rope_qk`), and writes the result once.

**Backward: rotate back.** ``y = x * cos + R x * sin`` is linear in ``x``, with ``R`` the
matrix of ``rotate_half``. ``R`` is a 90-degree turn of every pair, so ``R^T = -R`` and::

    dx = (dL/dy)^T dy/dx = dy * cos + R^T (dy * sin) = dy * cos - R (dy * sin)
    dx1 = dy1 * c1 + dy2 * s2
    dx2 = dy2 * c2 - dy1 * s1

which is the forward formula with ``(s1, s2)`` replaced by ``(-s2, -s1)``: for angle tables,
the rotation by ``-theta`` (a rotation's inverse is its transpose). The backward needs no saved
activation, only cos and sin, and it is the same kernel with ``BACKWARD=True``. cos and sin are
treated as constants (they come from positions, not from learned weights): they get no
gradient, and passing ones that require a gradient is an error.

Shapes: ``x`` is ``(batch, heads, seq, head_dim)`` with an even ``head_dim``, any strides
(a ``(batch, seq, heads, head_dim)`` tensor transposed to this layout is read in place, no
copy); the result is contiguous. ``cos`` and ``sin`` are a table ``(max_seq, head_dim)``
whose first ``seq`` rows are used (as from :func:`llmlab.nn.positional.rope_frequencies`) or
per-sequence values ``(batch, seq, head_dim)`` or ``(1, seq, head_dim)`` (as from
:class:`llmlab.nn.positional.RotaryEmbedding`). Dtypes: float32, float16, bfloat16 on the GPU
with the math in float32 (one rounding, at the store); float32 in the interpreter.

Grid: one program per token ``(batch, position)``; it rotates all heads of that token.
:class:`llmlab.kernels.launch.TritonKernel` decides at each launch whether the kernel runs
compiled on the GPU or in Triton's CPU interpreter.
"""

from __future__ import annotations

import torch

from llmlab import kernels
from llmlab.kernels._common import dispatch, next_power_of_2, require_dtype, require_tensor, tl
from llmlab.kernels.launch import TritonKernel
from llmlab.nn.positional import apply_rotary, rotate_half

kernels.register("rope", "fused rotary position embedding of q and k, forward and backward")


# --------------------------------------------------------------------------------------------
# The reference: the definition of correct
# --------------------------------------------------------------------------------------------


def reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE in plain PyTorch: chapter 01's :func:`llmlab.nn.positional.apply_rotary`.

    ``x * cos + rotate_half(x) * sin``, computed in x's dtype as transformers does (the kernel
    computes in float32, so in half precision it rounds once where this rounds five times).
    """
    return apply_rotary(x, cos, sin)


def reference_backward(dy: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Gradient of RoPE with respect to x, given the upstream gradient ``dy`` (x's shape).

    ``dx = dy * cos - rotate_half(dy * sin)`` (see the module docstring): the rotation run
    backwards. Same shapes and table conventions as :func:`reference`.
    """
    seq = dy.shape[2]
    if cos.dim() == 2:
        cos, sin = cos[:seq], sin[:seq]
    else:
        cos, sin = cos[:, None], sin[:, None]  # broadcast over heads
    cos, sin = cos.to(dy.dtype), sin.to(dy.dtype)
    return dy * cos - rotate_half(dy * sin)


# --------------------------------------------------------------------------------------------
# The Triton kernel
# --------------------------------------------------------------------------------------------
# A plain function; TritonKernel (below) compiles it for the GPU or hands it to the interpreter
# when it is launched.


def _rope_kernel(
    Q,
    K,
    QO,
    KO,
    COS,
    SIN,
    stride_qb,
    stride_qh,
    stride_qs,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_ks,
    stride_kd,
    stride_cb,
    stride_cs,
    stride_cd,
    stride_sb,
    stride_ss,
    stride_sd,
    seq,
    n_q_heads,
    n_k_heads,
    HALF: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_HQ: tl.constexpr,
    BLOCK_HK: tl.constexpr,
    HAS_K: tl.constexpr,
    BACKWARD: tl.constexpr,
):
    # One program per token. Its cos/sin row is loaded once and used for every head of q and
    # k; each head's two halves are loaded as (heads, HALF) tiles, so the pairs (i, i + HALF)
    # meet in registers and nothing is shuffled in memory. BLOCK_D is HALF rounded up to a
    # power of two (tl.arange needs one); the extra lanes are masked.
    token = tl.program_id(0).to(tl.int64)  # int64: offsets can pass 2**31 on big inputs
    b = token // seq
    s = token % seq
    d = tl.arange(0, BLOCK_D)
    d_mask = d < HALF
    cs = COS + b * stride_cb + s * stride_cs
    sn = SIN + b * stride_sb + s * stride_ss
    c1 = tl.load(cs + d * stride_cd, mask=d_mask, other=0.0).to(tl.float32)[None, :]
    c2 = tl.load(cs + (d + HALF) * stride_cd, mask=d_mask, other=0.0).to(tl.float32)[None, :]
    s1 = tl.load(sn + d * stride_sd, mask=d_mask, other=0.0).to(tl.float32)[None, :]
    s2 = tl.load(sn + (d + HALF) * stride_sd, mask=d_mask, other=0.0).to(tl.float32)[None, :]
    if BACKWARD:  # the inverse rotation: (s1, s2) -> (-s2, -s1), see the module docstring
        s1, s2 = -s2, -s1

    # q (or dy of q): read both halves, rotate in float32, write once. The output is
    # contiguous (batch, heads, seq, head_dim), so its offsets follow from the shape.
    h = tl.arange(0, BLOCK_HQ)[:, None]
    mask = (h < n_q_heads) & d_mask[None, :]
    src = Q + b * stride_qb + s * stride_qs + h * stride_qh
    x1 = tl.load(src + d[None, :] * stride_qd, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + (d[None, :] + HALF) * stride_qd, mask=mask, other=0.0).to(tl.float32)
    y1 = (x1 * c1 - x2 * s1).to(QO.dtype.element_ty)
    y2 = (x2 * c2 + x1 * s2).to(QO.dtype.element_ty)
    dst = QO + ((b * n_q_heads + h) * seq + s) * (2 * HALF) + d[None, :]
    tl.store(dst, y1, mask=mask)
    tl.store(dst + HALF, y2, mask=mask)

    if HAS_K:  # k in the same program: the cos/sin row above is reused, not read again
        h = tl.arange(0, BLOCK_HK)[:, None]
        mask = (h < n_k_heads) & d_mask[None, :]
        src = K + b * stride_kb + s * stride_ks + h * stride_kh
        x1 = tl.load(src + d[None, :] * stride_kd, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(src + (d[None, :] + HALF) * stride_kd, mask=mask, other=0.0).to(tl.float32)
        y1 = (x1 * c1 - x2 * s1).to(KO.dtype.element_ty)
        y2 = (x2 * c2 + x1 * s2).to(KO.dtype.element_ty)
        dst = KO + ((b * n_k_heads + h) * seq + s) * (2 * HALF) + d[None, :]
        tl.store(dst, y1, mask=mask)
        tl.store(dst + HALF, y2, mask=mask)


# How many warps share a token is tuned on the GPU, once per tile shape: a LLaMA token with 32
# q heads, 8 k heads and head_dim 128 holds 5120 values, enough for 8 warps; SmolLM2-135M's
# (9 + 3 heads of 64) wants fewer.
def _warps_configs(triton):
    return [triton.Config({}, num_warps=w) for w in (1, 2, 4, 8)]


def _prune_warps(configs, named_args, **kwargs):
    # Keep configs whose threads hold 4..32 values of each half of q: fewer wastes lanes,
    # more spills registers (checked with ptxas for sm_90, see the tests).
    half_d = kwargs.get("BLOCK_D", named_args.get("BLOCK_D"))
    heads = kwargs.get("BLOCK_HQ", named_args.get("BLOCK_HQ"))
    kept = [c for c in configs if 4 <= heads * half_d // (32 * c.num_warps) <= 32]
    if kept:
        return kept
    fewest, most = (
        min(configs, key=lambda c: c.num_warps),
        max(configs, key=lambda c: c.num_warps),
    )
    return [fewest if heads * half_d < 4 * 32 * fewest.num_warps else most]


_kernel = TritonKernel(
    _rope_kernel,
    autotune=(_warps_configs, ["BLOCK_D", "BLOCK_HQ", "BLOCK_HK", "HAS_K"], _prune_warps),
)


def _table_strides(t: torch.Tensor) -> tuple[int, int, int]:
    """(batch, seq, dim) strides of a cos/sin table; batch stride 0 when it is broadcast."""
    if t.dim() == 2:
        return 0, t.stride(0), t.stride(1)
    return (0 if t.shape[0] == 1 else t.stride(0)), t.stride(1), t.stride(2)


def _launch(
    q: torch.Tensor,
    k: torch.Tensor | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
    backward: bool,
    interpret: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    batch, n_q_heads, seq, head_dim = q.shape
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device) if k is not None else None
    # Without k, q stands in for it: the HAS_K=False branch never touches those pointers.
    k_in, k_dst = (k, k_out) if k is not None else (q, q_out)
    _kernel.launch(
        (batch * seq,),
        q,
        k_in,
        q_out,
        k_dst,
        cos,
        sin,
        *q.stride(),
        *k_in.stride(),
        *_table_strides(cos),
        *_table_strides(sin),
        seq,
        n_q_heads,
        k_in.shape[1],
        interpret=interpret,
        HALF=head_dim // 2,
        BLOCK_D=next_power_of_2(head_dim // 2),
        BLOCK_HQ=next_power_of_2(n_q_heads),
        BLOCK_HK=next_power_of_2(k_in.shape[1]),
        HAS_K=k is not None,
        BACKWARD=backward,
    )
    return q_out, k_out


# --------------------------------------------------------------------------------------------
# Autograd
# --------------------------------------------------------------------------------------------


class RopeFunction(torch.autograd.Function):
    """Triton RoPE of q (and optionally k); the backward is the same kernel rotating back.

    Saves only cos and sin: the backward needs no activation.
    """

    @staticmethod
    def forward(ctx, q, k, cos, sin, interpret: bool):
        q_out, k_out = _launch(q, k, cos, sin, backward=False, interpret=interpret)
        ctx.save_for_backward(cos, sin)
        ctx.interpret = interpret
        ctx.has_k = k is not None
        return (q_out, k_out) if ctx.has_k else q_out

    @staticmethod
    def backward(ctx, dq, dk=None):
        # Autograd materialises the gradient of an output that did not reach the loss as
        # zeros (set_materialize_grads defaults to True), so dq and dk are tensors here.
        cos, sin = ctx.saved_tensors
        dq, dk = _launch(dq, dk, cos, sin, backward=True, interpret=ctx.interpret)
        return dq, dk, None, None, None


# --------------------------------------------------------------------------------------------
# The public ops
# --------------------------------------------------------------------------------------------


def _require_x(x, name: str) -> None:
    require_tensor(x, name)
    if x.dim() != 4:
        raise ValueError(
            f"{name}: expected 4 dims (batch, heads, seq, head_dim), got shape {tuple(x.shape)}"
        )
    require_dtype(x, name)
    if x.shape[-1] % 2:
        raise ValueError(f"{name}: expected an even head_dim, got shape {tuple(x.shape)}")


def _require_tables(x: torch.Tensor, cos, sin) -> None:
    batch, _, seq, head_dim = x.shape
    for t, name in ((cos, "cos"), (sin, "sin")):
        require_tensor(t, name)
        require_dtype(t, name)
        if t.dim() == 2:
            ok = t.shape[0] >= seq and t.shape[1] == head_dim
        else:
            ok = t.dim() == 3 and t.shape[0] in (1, batch) and t.shape[1:] == (seq, head_dim)
        if not ok:
            raise ValueError(
                f"{name}: expected (max_seq >= {seq}, {head_dim}) or ({batch}, {seq}, "
                f"{head_dim}), got shape {tuple(t.shape)}"
            )
        if t.device != x.device:
            raise ValueError(f"{name}: expected the device of q ({x.device}), got {t.device}")
        if t.requires_grad and torch.is_grad_enabled():
            raise ValueError(
                f"{name}: the fused kernel treats cos and sin as constants, got a tensor that "
                "requires grad (use llmlab.nn.positional.apply_rotary to differentiate them)"
            )
    if cos.shape != sin.shape:
        raise ValueError(
            f"sin: expected the shape of cos {tuple(cos.shape)}, got {tuple(sin.shape)}"
        )


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (q or k, ``(batch, heads, seq, head_dim)``) by its positions; differentiable.

    ``cos``, ``sin``: ``(max_seq, head_dim)`` tables (the first ``seq`` rows are used) or
    ``(batch or 1, seq, head_dim)`` values. Equals :func:`llmlab.nn.positional.apply_rotary`.

    Runs the fused Triton kernel on CUDA tensors when Triton and a GPU are present, the same
    kernel in Triton's CPU interpreter when ``TRITON_INTERPRET=1`` (float32 only), and
    :func:`reference` otherwise (see :func:`llmlab.kernels.backend`).
    """
    _require_x(x, "x")
    _require_tables(x, cos, sin)
    path = dispatch((x, "x"), (cos, "cos"), (sin, "sin"))
    if path == "reference":
        return reference(x, cos, sin)
    return RopeFunction.apply(x, None, cos, sin, path == "interpreter")


def rope_qk(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q and k in one launch: ``(rope(q, cos, sin), rope(k, cos, sin))``.

    ``q: (batch, q_heads, seq, head_dim)``, ``k: (batch, kv_heads, seq, head_dim)``: the head
    counts may differ (grouped-query attention). Each token's cos/sin row is read once for both.
    Dispatches like :func:`rope`.
    """
    _require_x(q, "q")
    _require_x(k, "k")
    batch, _, seq, head_dim = q.shape
    if k.shape[0] != batch or k.shape[2:] != (seq, head_dim):
        raise ValueError(
            f"k: expected shape ({batch}, kv_heads, {seq}, {head_dim}) to match q "
            f"{tuple(q.shape)}, got {tuple(k.shape)}"
        )
    if k.dtype != q.dtype:
        raise TypeError(f"k: expected the dtype of q ({q.dtype}), got {k.dtype}")
    if k.device != q.device:
        raise ValueError(f"k: expected the device of q ({q.device}), got {k.device}")
    _require_tables(q, cos, sin)
    path = dispatch((q, "q"), (cos, "cos"), (sin, "sin"))
    if path == "reference" or k.numel() == 0:
        return reference(q, cos, sin), reference(k, cos, sin)
    return RopeFunction.apply(q, k, cos, sin, path == "interpreter")


__all__ = [
    "RopeFunction",
    "TritonKernel",
    "reference",
    "reference_backward",
    "rope",
    "rope_qk",
]
