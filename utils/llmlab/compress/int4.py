"""A linear layer whose weight is stored in 4 bits (W4A16), to measure what 4 bits cost on a CPU.

:class:`Int4Linear` keeps the weight packed, two codes per byte, with a scale (and a zero point,
or NF4's table) per group of ``group_size`` inputs of a row: the layout of
:mod:`llmlab.kernels.w4a16`, whose ``w4a16_matmul`` it calls. On a GPU that is a Triton kernel
that dequantizes tile by tile on chip; on a CPU it is the kernel's reference, which dequantizes
the whole weight to float before every matmul. So on a CPU the layer saves memory (a quarter
of the weight's bytes at rest) and costs time (a float copy of the weight is written and read
at every call): notebook 6 measures both.

Formats (``fmt``): ``"zeropoint"`` (codes 0-15 and an integer zero point per group: GPTQ and
AWQ's format), ``"absmax"`` (symmetric codes -7..7 stored as 1..15), ``"nf4"`` (QLoRA's 16
normal quantiles times the group's absmax, equal to bitsandbytes' codes).
"""

from __future__ import annotations

import torch
from torch import nn

from llmlab.compress.int8 import _linears, _set_module
from llmlab.compress.quant import nf4_values, pack_4bit, quantize, quantize_nf4
from llmlab.validate import require_positive_int

__all__ = ["FORMATS", "Int4Linear", "quantize_linears_4bit", "nf4_bitsandbytes"]

FORMATS = ("zeropoint", "absmax", "nf4")


class Int4Linear(nn.Module):
    """``y = x W^T + b`` with ``W`` in 4 bits: ``packed`` uint8 (out, in/2), ``scales`` (out,
    in/group_size), ``zeros`` (same, or None) and ``lut`` (16 levels, or None): the layout of
    :func:`llmlab.kernels.w4a16.w4a16_matmul`. Inference only (the weight has no gradient)."""

    def __init__(self, packed, scales, group_size, zeros=None, lut=None, bias=None):
        super().__init__()
        self.out_features, self.in_features = packed.shape[0], packed.shape[1] * 2
        self.group_size = require_positive_int(group_size, "group_size")
        self.register_buffer("packed", packed)
        self.register_buffer("scales", scales)
        self.register_buffer("zeros", zeros)
        self.register_buffer("lut", lut)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, fmt: str = "zeropoint", group_size: int = 64
    ) -> Int4Linear:
        """Round ``linear``'s weight to nearest on the 4-bit ``fmt`` grid, groups of ``group_size``."""
        if fmt not in FORMATS:
            raise ValueError(f"fmt: expected one of {FORMATS}, got {fmt!r}")
        w = linear.weight.detach().float()
        out, cols = w.shape
        g = require_positive_int(group_size, "group_size")
        if cols % g or g % 2:
            raise ValueError(f"group_size: expected an even divisor of the {cols} inputs, got {g}")
        zeros = lut = None
        if fmt == "nf4":
            # blocks of the flattened row-major weight: with g dividing a row, groups of a row
            q = quantize_nf4(w, blocksize=g)
            codes, scales, lut = (
                q.codes.view(out, cols),
                q.absmax.view(out, cols // g),
                nf4_values(),
            )
        else:
            q = quantize(w, 4, scheme=fmt, granularity="group", group_size=g)
            codes, scales = q.codes.view(out, cols), q.scale.reshape(out, cols // g).float()
            if fmt == "zeropoint":
                zeros = q.zero.reshape(out, cols // g).float()
            else:
                codes = codes + 8  # signed -7..7 stored offset by 8
        packed = pack_4bit(codes.to(torch.uint8)).view(out, cols // 2)
        bias = None if linear.bias is None else linear.bias.detach().clone()
        return cls(packed, scales, g, zeros, lut, bias)

    def dequantized(self) -> torch.Tensor:
        """The float weight (out, in) that the layer multiplies by."""
        from llmlab.kernels.w4a16 import dequantize

        return dequantize(self.packed, self.scales, self.group_size, self.zeros, self.lut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from llmlab.kernels.w4a16 import w4a16_matmul

        return w4a16_matmul(
            x, self.packed, self.scales, self.group_size, self.zeros, self.lut, self.bias
        )

    def extra_repr(self) -> str:
        fmt = "nf4" if self.lut is not None else "zeropoint" if self.zeros is not None else "absmax"
        return f"in_features={self.in_features}, out_features={self.out_features}, {fmt}, group_size={self.group_size}"


def quantize_linears_4bit(
    model: nn.Module,
    fmt: str = "zeropoint",
    group_size: int = 64,
    skip: tuple[str, ...] = ("lm_head",),
) -> nn.Module:
    """Replace, in place, every ``nn.Linear`` of ``model`` (but ``skip``) by an
    :class:`Int4Linear` rounded to nearest; return the model."""
    for name, layer in list(_linears(model, skip)):
        _set_module(model, name, Int4Linear.from_linear(layer, fmt, group_size))
    return model


def nf4_bitsandbytes(
    model: nn.Module,
    compute_dtype: torch.dtype = torch.float32,
    blocksize: int = 64,
    skip: tuple[str, ...] = ("lm_head",),
) -> nn.Module:
    """Replace, in place, every ``nn.Linear`` of ``model`` (but ``skip``) by bitsandbytes'
    ``Linear4bit`` in NF4 (QLoRA's format: blocks of ``blocksize`` weights, one absmax each),
    which multiplies in ``compute_dtype``; return the model. Placing the weight
    (``Params4bit(...).to("cpu")``) is what quantizes it. bitsandbytes must be installed."""
    import bitsandbytes as bnb

    blocksize = require_positive_int(blocksize, "blocksize")
    if not isinstance(compute_dtype, torch.dtype) or not compute_dtype.is_floating_point:
        raise ValueError(f"compute_dtype: expected a float torch.dtype, got {compute_dtype!r}")
    for name, layer in list(_linears(model, skip)):
        new = bnb.nn.Linear4bit(layer.in_features, layer.out_features, bias=layer.bias is not None,
                                compute_dtype=compute_dtype, quant_type="nf4")  # fmt: skip
        new.weight = bnb.nn.Params4bit(layer.weight.data, requires_grad=False, quant_type="nf4",
                                       blocksize=blocksize).to("cpu")  # fmt: skip
        if layer.bias is not None:
            new.bias = nn.Parameter(layer.bias.data, requires_grad=False)
        _set_module(model, name, new)
    return model
