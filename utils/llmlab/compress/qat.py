"""Quantization-aware training (QAT): train with the rounding in the forward pass.

Post-training quantization (PTQ: RTN, GPTQ, AWQ) rounds a model that was trained without
knowing it would be rounded. QAT runs the forward pass on the quantized weights, so the loss
sees the rounding error and the optimiser can move the float weights to where their rounded
values work well. Rounding has zero gradient almost everywhere, so the backward pass uses the
**straight-through estimator** (Bengio et al. 2013): treat ``round`` as the identity, i.e.

    forward:  w_q = Q(w)              backward:  dL/dw = dL/dw_q

written in one line as ``w + (Q(w) - w).detach()`` (:func:`fake_quant_ste`). The float weights
are the ones the optimiser keeps; only their quantized values are ever used in a forward pass,
and at the end ``Q(w)`` is what gets stored.

The grid itself (each group's scale and zero point) is fixed when training starts, from the
float weights: recomputed from every step's min and max, it would move all the levels of a
block whenever the block's extreme weight moves, which the straight-through gradient does not
see. With a fixed grid, weights beyond its ends are clipped, and their gradient is zero (the
"clipped" straight-through estimator). On a 2-bit linear regression with correlated inputs,
QAT from the float solution ends about 20% below rounding it (``tests/test_compress_qat.py``);
with independent inputs rounding is already the best 2-bit answer and QAT cannot beat it. Seed 004 §5 names QAT as the remedy when low
precision costs too much accuracy.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.compress.int8 import _linears, _set_module
from llmlab.compress.quant import fake_quantize, quantize

__all__ = ["fake_quant_ste", "QATLinear", "prepare_qat", "freeze_qat"]


def fake_quant_ste(
    w: torch.Tensor, bits: int, group_size: int | None = None, scheme: str = "zeropoint"
) -> torch.Tensor:
    """``Q(w)`` in the forward pass, the identity in the backward pass (straight-through)."""
    granularity = "channel" if group_size is None else "group"
    q = fake_quantize(
        w.detach(), bits, scheme=scheme, granularity=granularity, group_size=group_size
    )
    return w + (q.to(w.dtype) - w).detach()


class QATLinear(nn.Module):
    """A linear layer whose forward pass uses its weight on a fixed quantization grid.

    It holds the original layer's float ``weight`` and ``bias`` (the optimiser trains those)
    and, as buffers, each block's ``scale`` and ``zero`` (zero-point scheme, one per row or per
    group of ``group_size`` inputs) computed from the weights it started with. Forward:
    ``w_q = (clamp(round(w / scale) + zero, 0, 2^bits - 1) - zero) * scale`` with a clipped
    straight-through gradient (identity inside the grid's range, zero outside).
    """

    def __init__(self, linear: nn.Linear, bits: int = 4, group_size: int | None = None):
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear: expected an nn.Linear, got {type(linear).__name__}")
        granularity = "channel" if group_size is None else "group"
        grid = quantize(
            linear.weight.detach(),
            bits,
            scheme="zeropoint",
            granularity=granularity,
            group_size=group_size,
        )
        self.weight, self.bias = linear.weight, linear.bias  # the same parameters, trained in place
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bits, self.group_size = bits, group_size
        self.register_buffer("scale", grid.scale.float())
        self.register_buffer("zero", grid.zero.float())

    def quantized_weight(self) -> torch.Tensor:
        """The weight on its grid, with the clipped straight-through gradient."""
        top = 2**self.bits - 1
        rows = self.weight.shape[0]
        w = (
            self.weight
            if self.group_size is None
            else self.weight.reshape(rows, -1, self.group_size)
        )
        codes = w / self.scale + self.zero
        inside = (codes >= -0.5) & (codes <= top + 0.5)
        q = (torch.clamp(torch.round(codes), 0, top) - self.zero) * self.scale
        # forward: q; backward: the identity where w lies inside the grid, zero outside
        ste = torch.where(inside, w, w.detach()) + (q - w).detach()
        return ste.reshape(self.weight.shape).to(self.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bits={self.bits}, group_size={self.group_size}"
        )


def _swap(model: nn.Module, skip: tuple[str, ...], make) -> nn.Module:
    targets = _linears(model, skip)
    if not targets:
        raise ValueError("model: found no nn.Linear to replace")
    for name, m in targets:
        _set_module(model, name, make(m))
    return model


def prepare_qat(
    model: nn.Module,
    bits: int = 4,
    group_size: int | None = None,
    skip: Iterable[str] = ("lm_head",),
) -> nn.Module:
    """Make every ``nn.Linear`` of ``model`` (in place, but those named with a string of
    ``skip``) a :class:`QATLinear` on the same parameters, its grid fixed from the current
    weights; return the model."""
    return _swap(model, tuple(skip), lambda m: QATLinear(m, bits, group_size))


def freeze_qat(model: nn.Module) -> nn.Module:
    """After training: every :class:`QATLinear` becomes a plain ``nn.Linear`` holding its
    quantized weight (what would be stored), in place; return the model."""

    def frozen(m):
        out = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
        with torch.no_grad():
            out.weight.copy_(m.quantized_weight())
            if m.bias is not None:
                out.bias.copy_(m.bias)
        return out.to(m.weight.device, m.weight.dtype)

    qat = [(n, m) for n, m in model.named_modules() if isinstance(m, QATLinear)]
    if not qat:
        raise ValueError("model: found no QATLinear (call prepare_qat first)")
    for name, m in qat:
        _set_module(model, name, frozen(m))
    return model
