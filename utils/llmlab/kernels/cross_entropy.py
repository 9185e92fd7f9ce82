"""Cross-entropy of an LM head without the full logits: chunked, with the gradient made in place.

    >>> from llmlab.kernels.cross_entropy import fused_linear_cross_entropy, reference
    >>> loss = fused_linear_cross_entropy(h, lm_head.weight, targets)   # h: (tokens, d_model)
    >>> loss.backward()                       # h.grad, lm_head.weight.grad as from reference
    >>> torch.testing.assert_close(loss, reference(h, lm_head.weight, targets))

**The problem.** The last layer of a language model turns each token's hidden state ``h``
(``d_model`` numbers) into ``V`` logits, ``logits = h @ W.T``, and the loss is the
cross-entropy of those logits against the next token. ``V`` is large (SmolLM2: 49152,
LLaMA-3: 128256) and ``d_model`` is small next to it (576 and 4096), so the logits are by far
the largest tensor of a training step: 8192 tokens of LLaMA-3 make ``8192 x 128256`` logits,
2 GB in bf16, while ``h`` is 64 MB. Eager PyTorch keeps the logits, upcasts them to float32
(transformers does, for an accurate loss: 4 GB more), saves ``log_softmax`` for the backward
(4 GB) and in the backward makes a gradient of the same size for each of those steps. Those
``(tokens, V)`` tensors, not the model, decide the peak memory.

**The idea** (as in Liger-Kernel's fused linear cross-entropy and Apple's "Cut Your Losses"):
the gradient of the loss with respect to a row of logits needs nothing but that row::

    p        = softmax(z)                       z: one row of logits, t: its target
    loss     = logsumexp(z) - z[t]
    dz       = (p - onehot(t)) / n_valid        n_valid: rows that are not ignored
    dh       = dz @ W                           dW += dz.T @ h

so the forward can compute the loss *and* both gradients chunk by chunk of rows: for each
chunk, ``logits = h_chunk @ W.T`` (a torch matmul), a Triton kernel computes each row's
logsumexp and loss and overwrites the logits with ``dz`` *in place*, then ``dh_chunk = dz @ W``
and ``dW += dz.T @ h_chunk``. Only one chunk of logits ever exists; what is kept for the
backward is ``dh`` and ``dW``, the size of ``h`` and ``W``. The backward of the autograd
function only multiplies them by the incoming gradient (1.0 for a plain ``loss.backward()``).
The matmuls are the same three as eager's (``6 * tokens * d_model * V`` flops), so the time
stays close to eager's while the ``(tokens, V)`` tensors shrink to ``(chunk, V)``.

**The kernel**, one program per row of the chunk, streams the row twice (``BLOCK`` columns at
a time, so any V fits): pass 1 keeps a running max ``m`` and a running sum ``s`` of
``exp(z - m)`` (the online softmax of :mod:`llmlab.kernels.softmax`), plus ``sum(z)`` when
smoothing; then ``logsumexp = m + log(s)``. Pass 2 writes ``dz`` over ``z``. In bytes: two
reads and one write of the chunk, against eager's upcast, log_softmax, its gradient and the
softmax backward, each a full read and write.

**Label smoothing** ``eps`` (as ``torch.nn.functional.cross_entropy``) mixes the one-hot target
with the uniform distribution: target ``q = (1 - eps) onehot(t) + eps / V``, so::

    loss = (1 - eps) (logsumexp(z) - z[t]) + eps (logsumexp(z) - mean(z))
    dz   = (p - q) / n_valid

**ignore_index** (-100, as PyTorch): rows with that target add nothing to the loss or the
gradients and are not counted in ``n_valid`` (the mean is over the rest). If every row is
ignored the loss is 0/0 = nan and the gradients are zero, as in PyTorch.

Precision: the loss and ``dz`` are computed in float32 from the logits in the inputs' dtype;
``dz`` is stored in that dtype (as eager's gradient of bf16 logits is); ``dW`` accumulates in
the weight's dtype, one rounding per chunk (a float32 accumulator would cost ``4 V d_model``
bytes, 2 GB for LLaMA-3-8B's head). The loss is float32.

Also here: :func:`cross_entropy`, the same kernel on logits you already have (``(N, V)`` ->
loss): the forward keeps no ``log_softmax``, and the backward writes ``dlogits`` in one pass.

Shapes: ``h`` of ``(..., d_model)``, ``weight`` of ``(V, d_model)`` (an LM head without bias),
``targets`` of ``h.shape[:-1]`` (int64). Dtypes: float32, float16, bfloat16 on the GPU;
float32 in the interpreter. Without a GPU the same chunked algorithm runs with the kernel's
work done by PyTorch (:func:`reference_chunk_step`), so the memory saving holds on the CPU too.
:class:`llmlab.kernels.launch.TritonKernel` decides at each launch whether the kernel runs
compiled on the GPU or in Triton's CPU interpreter.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from llmlab import kernels
from llmlab.kernels._common import (
    as_rows,
    dispatch,
    interpreter_meta,
    require_dtype,
    require_tensor,
    tl,
)
from llmlab.kernels.launch import TritonKernel
from llmlab.validate import require_positive_int

kernels.register(
    "cross_entropy",
    "chunked LM-head cross-entropy (no full logits), ignore_index, label smoothing, fwd + bwd",
)

#: Columns per step of the kernel's loops in the interpreter; the GPU tunes it.
INTERPRETER_BLOCK = 256
#: Smallest default chunk (rows): fewer rows would make the matmuls too thin to be fast.
MIN_CHUNK = 256


# --------------------------------------------------------------------------------------------
# The references: the definition of correct
# --------------------------------------------------------------------------------------------


def reference(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """The eager loss: full logits ``h @ weight.T``, upcast to float32, then F.cross_entropy.

    This is what transformers' causal-LM loss does (``logits.float()`` before the loss), and
    what the chunked op must equal in value and in the gradients of ``h`` and ``weight``.
    """
    logits = h @ weight.T
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
    )


def reference_logits(
    logits: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """F.cross_entropy of float32 ``logits`` ``(..., V)`` against ``targets`` ``(...)``."""
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
    )


def reference_chunk_step(
    logits: torch.Tensor,
    targets: torch.Tensor,
    loss_out: torch.Tensor,
    scale: torch.Tensor,
    write_grad: bool,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
) -> None:
    """What the kernel does to one chunk, in PyTorch: row losses, and ``dz`` over the logits.

    ``logits`` ``(rows, V)``; ``loss_out`` ``(rows,)`` float32 receives each row's loss (0 for
    ignored rows); when ``write_grad``, ``logits`` is overwritten with
    ``(softmax - q) * scale`` (``q`` the smoothed target, see the module docstring; zero rows
    for ignored targets). ``scale`` is a one-element float32 tensor (``1 / n_valid``).
    """
    z = logits.float()
    valid = targets != ignore_index
    safe = torch.where(valid, targets, 0)[:, None]
    lse = torch.logsumexp(z, dim=-1)
    loss = lse - z.gather(1, safe)[:, 0]
    if label_smoothing:
        loss = (1 - label_smoothing) * loss + label_smoothing * (lse - z.mean(dim=-1))
    loss_out.copy_(torch.where(valid, loss, 0.0))
    if write_grad:
        dz = torch.exp(z - lse[:, None]) - label_smoothing / z.shape[-1]
        dz.scatter_add_(1, safe, torch.full_like(lse[:, None], label_smoothing - 1.0))
        dz *= torch.where(valid, scale, 0.0)[:, None]
        logits.copy_(dz)


# --------------------------------------------------------------------------------------------
# The Triton kernel
# --------------------------------------------------------------------------------------------
# A plain function; TritonKernel (below) compiles it for the GPU or hands it to the interpreter
# when it is launched.


def _cross_entropy_kernel(
    X,
    DX,
    TARGETS,
    LOSS,
    SCALE,
    stride_x,
    stride_dx,
    n_cols,
    ignore_index,
    smoothing,
    BLOCK: tl.constexpr,
    WRITE_GRAD: tl.constexpr,
    SMOOTHING: tl.constexpr,
):
    # One program per row. DX may be X itself: each block of columns is read before the same
    # block is written, so the gradient can replace the logits in place.
    row = tl.program_id(0).to(tl.int64)  # int64: row * stride can pass 2**31 (8192 x 128k)
    target = tl.load(TARGETS + row).to(tl.int64)
    valid = target != ignore_index
    x_row = X + row * stride_x
    cols = tl.arange(0, BLOCK)

    # Pass 1: running max m and sum s of exp(x - m) (online softmax); an ignored row skips it.
    n_read = tl.where(valid, n_cols, 0)
    m = -float("inf")
    s = 0.0
    total = 0.0
    for start in range(0, n_read, BLOCK):
        mask = start + cols < n_cols
        x = tl.load(x_row + start + cols, mask=mask, other=-float("inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        shift = tl.where(m_new == -float("inf"), 0.0, m_new)  # a block of -inf: no nan
        s = s * tl.exp(m - shift) + tl.sum(tl.exp(x - shift), axis=0)
        m = m_new
        if SMOOTHING:
            total += tl.sum(tl.where(mask, x, 0.0), axis=0)
    # An ignored row read nothing (m = -inf, s = 0): give it harmless values, no inf or nan.
    m = tl.where(valid, m, 0.0)
    s = tl.where(valid, s, 1.0)
    lse = m + tl.log(s)
    x_target = tl.load(x_row + target, mask=valid, other=0.0).to(tl.float32)
    loss = lse - x_target
    if SMOOTHING:
        loss = (1.0 - smoothing) * loss + smoothing * (lse - total / n_cols)
    tl.store(LOSS + row, tl.where(valid, loss, 0.0))

    # Pass 2: dz = (softmax - q) * scale, written over the logits (or into DX).
    if WRITE_GRAD:
        scale = tl.where(valid, tl.load(SCALE), 0.0)
        inv_s = 1.0 / s
        dx_row = DX + row * stride_dx
        for start in range(0, n_cols, BLOCK):
            offs = start + cols
            mask = offs < n_cols
            x = tl.load(x_row + offs, mask=mask & valid, other=0.0).to(tl.float32)
            dz = tl.exp(x - m) * inv_s - smoothing / n_cols
            dz = tl.where(offs == target, dz - (1.0 - smoothing), dz)
            dz = tl.where(valid, dz * scale, 0.0)  # ignored rows: zeros
            tl.store(dx_row + offs, dz.to(DX.dtype.element_ty), mask=mask)


# Block and warps are tuned on the GPU once per vocabulary size: a thread should hold 4..32
# values of a block (a 16-byte load of bf16 is 8).
def _configs(triton):
    return [
        triton.Config({"BLOCK": block}, num_warps=w)
        for block in (1024, 2048, 4096, 8192)
        for w in (4, 8, 16)
        if 4 <= block // (32 * w) <= 32
    ]


# The kernel writes the gradient over the logits (DX is X) and the loss into LOSS: both are
# restored after each tuning trial, or the call that tunes a new vocabulary size would read
# gradients left by the trials as its logits (seen on an H200: losses near ln V).
_kernel = TritonKernel(
    _cross_entropy_kernel,
    autotune=(_configs, ["n_cols", "WRITE_GRAD", "SMOOTHING"], None),
    restore=("X", "LOSS"),
)


def _launch(
    logits: torch.Tensor,
    dlogits: torch.Tensor,
    targets: torch.Tensor,
    loss_out: torch.Tensor,
    scale: torch.Tensor,
    write_grad: bool,
    ignore_index: int,
    label_smoothing: float,
    interpret: bool,
) -> None:
    _kernel.launch(
        (logits.shape[0],),
        logits,
        dlogits,
        targets,
        loss_out,
        scale,
        logits.stride(0),
        dlogits.stride(0),
        logits.shape[1],
        ignore_index,
        float(label_smoothing),
        interpret=interpret,
        WRITE_GRAD=write_grad,
        SMOOTHING=label_smoothing > 0,
        **interpreter_meta(interpret, BLOCK=INTERPRETER_BLOCK),
    )


def _chunk_step(path: str, ignore_index: int, label_smoothing: float):
    """``step(logits, targets, loss_out, scale, write_grad)`` for one chunk, on ``path``."""
    if path == "reference":
        return lambda z, t, out, scale, grad: reference_chunk_step(
            z, t, out, scale, grad, ignore_index, label_smoothing
        )
    interpret = path == "interpreter"
    return lambda z, t, out, scale, grad: _launch(
        z, z, t, out, scale, grad, ignore_index, label_smoothing, interpret
    )


# --------------------------------------------------------------------------------------------
# The chunked forward (loss and both gradients) and its autograd function
# --------------------------------------------------------------------------------------------


def default_chunk_size(n_rows: int, d_model: int, vocab: int) -> int:
    """Rows per chunk: a chunk of logits about as large as ``h`` itself (``rows * V ~
    n_rows * d_model``), rounded up to a power of two, at least :data:`MIN_CHUNK` rows (for
    fast matmuls) and at most ``n_rows``."""
    rows = 1 << max(0, math.ceil(math.log2(max(1.0, n_rows * d_model / vocab))))
    return max(1, min(n_rows, max(MIN_CHUNK, rows)))


def _chunked_loss_and_grads(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    need_dh: bool,
    need_dw: bool,
    chunk_size: int,
    step,
    ignore_index: int,
):
    """Loss and, when asked, dh and dW, one chunk of logits at a time (module docstring)."""
    n_rows = h.shape[0]
    n_valid = (targets != ignore_index).sum()
    # A device tensor, not a Python float: no wait for the GPU. 1/0 = inf when every row is
    # ignored; the kernel zeroes ignored rows, so the gradients stay 0 and the loss is nan.
    scale = (1.0 / n_valid.float()).reshape(1)
    loss_rows = torch.empty(n_rows, dtype=torch.float32, device=h.device)
    dh = torch.empty_like(h) if need_dh else None
    dw = torch.zeros_like(weight) if need_dw else None
    for start in range(0, n_rows, chunk_size):
        end = min(start + chunk_size, n_rows)
        h_chunk = h[start:end]
        logits = h_chunk @ weight.T  # (chunk, V): the only logits that ever exist
        step(logits, targets[start:end], loss_rows[start:end], scale, need_dh or need_dw)
        if need_dh:
            torch.matmul(logits, weight, out=dh[start:end])
        if need_dw:
            dw.addmm_(logits.T, h_chunk)
    return loss_rows.sum() / n_valid, dh, dw


class FusedLinearCrossEntropyFunction(torch.autograd.Function):
    """Loss of ``h @ weight.T`` computed chunk by chunk; the forward also computes dh and dW,
    the backward only scales them by the incoming gradient."""

    @staticmethod
    def forward(ctx, h, weight, targets, ignore_index, label_smoothing, chunk_size, path):
        need_dh, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        step = _chunk_step(path, ignore_index, label_smoothing)
        loss, dh, dw = _chunked_loss_and_grads(
            h, weight, targets, need_dh, need_dw, chunk_size, step, ignore_index
        )
        ctx.save_for_backward(dh, dw)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        dh, dw = ctx.saved_tensors
        # Out of place: a second backward (retain_graph=True) must find dh and dW unscaled.
        dh = dh * grad_loss if dh is not None else None
        dw = dw * grad_loss if dw is not None else None
        return dh, dw, None, None, None, None, None


class CrossEntropyFunction(torch.autograd.Function):
    """The kernel on given logits: the forward keeps only the logits (no log_softmax); the
    backward runs the kernel again and writes ``dlogits`` in one pass."""

    @staticmethod
    def forward(ctx, logits, targets, ignore_index, label_smoothing, interpret):
        loss_rows = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        n_valid = (targets != ignore_index).sum()
        scale = torch.ones(1, dtype=torch.float32, device=logits.device)  # unused: no gradient
        _launch(
            logits,
            logits,
            targets,
            loss_rows,
            scale,
            False,
            ignore_index,
            label_smoothing,
            interpret,
        )
        ctx.save_for_backward(logits, targets, n_valid)
        ctx.options = (ignore_index, label_smoothing, interpret)
        return loss_rows.sum() / n_valid

    @staticmethod
    def backward(ctx, grad_loss):
        logits, targets, n_valid = ctx.saved_tensors
        ignore_index, label_smoothing, interpret = ctx.options
        scale = (grad_loss.float() / n_valid.float()).reshape(1)
        dlogits = torch.empty_like(logits)
        loss_rows = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        _launch(
            logits,
            dlogits,
            targets,
            loss_rows,
            scale,
            True,
            ignore_index,
            label_smoothing,
            interpret,
        )
        return dlogits, None, None, None, None


# --------------------------------------------------------------------------------------------
# The public ops
# --------------------------------------------------------------------------------------------


def _require_targets(targets, rows_shape: tuple, vocab: int, ignore_index, device) -> None:
    require_tensor(targets, "targets")
    if targets.dtype != torch.int64:
        raise TypeError(f"targets: expected dtype torch.int64 (class indices), got {targets.dtype}")
    if tuple(targets.shape) != tuple(rows_shape):
        raise ValueError(
            f"targets: expected shape {tuple(rows_shape)} (one class per row), "
            f"got {tuple(targets.shape)}"
        )
    if targets.device != device:
        raise ValueError(
            f"targets: expected the device of the inputs ({device}), got {targets.device}"
        )
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index: expected an int, got {type(ignore_index).__name__}")
    # An out-of-range index would make the kernel read outside the row: refuse it here.
    bad = (targets != ignore_index) & ((targets < 0) | (targets >= vocab))
    if targets.numel() and bool(bad.any()):
        raise ValueError(
            f"targets: expected class indices in [0, {vocab}) or ignore_index={ignore_index}, "
            f"got {targets[bad][0].item()}"
        )


def _require_smoothing(label_smoothing) -> None:
    if (
        isinstance(label_smoothing, bool)
        or not isinstance(label_smoothing, (int, float))
        or not 0.0 <= label_smoothing <= 1.0
    ):
        raise ValueError(f"label_smoothing: expected a number in [0, 1], got {label_smoothing!r}")


def fused_linear_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of ``h @ weight.T`` against ``targets``, never holding all logits.

    ``h``: ``(..., d_model)`` hidden states; ``weight``: ``(V, d_model)``, the LM head;
    ``targets``: ``h.shape[:-1]`` class indices (int64), ``ignore_index`` rows left out of
    the mean; ``label_smoothing`` as in ``F.cross_entropy``. ``chunk_size`` rows of logits
    exist at a time (default :func:`default_chunk_size`). Returns a float32 scalar equal to
    :func:`reference`, differentiable with respect to ``h`` and ``weight``.

    The per-chunk work (loss, gradient of the logits in place) runs in the Triton kernel on
    CUDA tensors when Triton and a GPU are present, in Triton's CPU interpreter when
    ``TRITON_INTERPRET=1`` (float32 only), and in PyTorch (:func:`reference_chunk_step`)
    otherwise: the chunking, hence the memory saving, is the same on every path.
    """
    for t, name in ((h, "h"), (weight, "weight")):
        require_tensor(t, name)
        require_dtype(t, name)
    if h.dim() < 1 or h.shape[-1] < 1:
        raise ValueError(
            f"h: expected shape (..., d_model) with d_model >= 1, got {tuple(h.shape)}"
        )
    if weight.dim() != 2 or weight.shape[1] != h.shape[-1] or weight.shape[0] < 1:
        raise ValueError(
            f"weight: expected shape (V, d_model={h.shape[-1]}) with V >= 1, "
            f"got {tuple(weight.shape)}"
        )
    if weight.dtype != h.dtype:
        raise TypeError(f"weight: expected the dtype of h ({h.dtype}), got {weight.dtype}")
    if weight.device != h.device:
        raise ValueError(f"weight: expected the device of h ({h.device}), got {weight.device}")
    _require_targets(targets, h.shape[:-1], weight.shape[0], ignore_index, h.device)
    _require_smoothing(label_smoothing)
    h2, t2 = h.reshape(-1, h.shape[-1]), targets.reshape(-1)
    if chunk_size is None:
        chunk_size = default_chunk_size(max(1, h2.shape[0]), h2.shape[1], weight.shape[0])
    else:
        require_positive_int(chunk_size, "chunk_size")
    if h2.shape[0] == 0:
        return reference(h, weight, targets, ignore_index, label_smoothing)
    path = dispatch((h, "h"), (weight, "weight"))
    if not (torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)):
        # No gradient can be asked for (inference, evaluation): the loss alone, no dh or dW.
        step = _chunk_step(path, ignore_index, float(label_smoothing))
        loss, _, _ = _chunked_loss_and_grads(
            h2, weight, t2, False, False, chunk_size, step, ignore_index
        )
        return loss
    return FusedLinearCrossEntropyFunction.apply(
        h2, weight, t2, ignore_index, float(label_smoothing), chunk_size, path
    )


def cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Mean cross-entropy of ``logits`` ``(..., V)`` against ``targets`` ``(...)``, fused.

    Equals :func:`reference_logits` (float32 ``F.cross_entropy``). The kernel runs on CUDA
    tensors (or in the interpreter with ``TRITON_INTERPRET=1``, float32 only); otherwise the
    reference does. Use :func:`fused_linear_cross_entropy` when the logits come from an LM
    head: it never makes them all.
    """
    require_tensor(logits, "logits")
    require_dtype(logits, "logits")
    if logits.dim() < 1 or logits.shape[-1] < 1:
        raise ValueError(f"logits: expected shape (..., V) with V >= 1, got {tuple(logits.shape)}")
    _require_targets(targets, logits.shape[:-1], logits.shape[-1], ignore_index, logits.device)
    _require_smoothing(label_smoothing)
    path = dispatch((logits, "logits"))
    if path == "reference":
        return reference_logits(logits, targets, ignore_index, label_smoothing)
    return CrossEntropyFunction.apply(
        as_rows(logits),
        targets.reshape(-1),
        ignore_index,
        float(label_smoothing),
        path == "interpreter",
    )


__all__ = [
    "CrossEntropyFunction",
    "FusedLinearCrossEntropyFunction",
    "MIN_CHUNK",
    "TritonKernel",
    "cross_entropy",
    "default_chunk_size",
    "fused_linear_cross_entropy",
    "reference",
    "reference_chunk_step",
    "reference_logits",
]
