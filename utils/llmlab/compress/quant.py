"""Integer quantization of weights: absmax and zero-point, per tensor, per channel, per group.

A b-bit quantizer stores each weight as an integer code and keeps, for each block of weights
that share them, a float **scale** (and for the asymmetric scheme an integer **zero point**):

- **absmax** (symmetric): ``scale = max|w| / (2^(b-1) - 1)``, ``q = round(w / scale)`` in
  ``[-(2^(b-1) - 1), 2^(b-1) - 1]``, ``w ~ q * scale``. Zero stays exactly zero; the range is
  set by the largest magnitude, so one outlier coarsens the grid for the whole block.
- **zero-point** (asymmetric): ``scale = (max - min) / (2^b - 1)``,
  ``zero = round(-min / scale)``, ``q = clamp(round(w / scale) + zero, 0, 2^b - 1)``,
  ``w ~ (q - zero) * scale``. All 2^b codes cover [min, max], which suits skewed blocks.

The block that shares a scale is the **granularity**: the whole tensor, each output channel
(a row of an ``nn.Linear`` weight), or each group of ``group_size`` consecutive inputs in a row
(GPTQ's and AWQ's groups of 128; SmolLM2's width 576 is not a multiple of 128, so 64 or 32
there). Finer blocks cost one scale each and follow the weights' local range more closely.

Rounding is ``torch.round`` (half to even), as ``torch.quantize_per_channel`` rounds: the codes
equal PyTorch's for the same scales and zero points (``tests/test_compress_quant.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmlab.validate import require_int

__all__ = [
    "SCHEMES",
    "GRANULARITIES",
    "Quantized",
    "quantize",
    "fake_quantize",
    "distinct_values_per_block",
]

SCHEMES = ("absmax", "zeropoint")
GRANULARITIES = ("tensor", "channel", "group")


@dataclass(frozen=True)
class Quantized:
    """A quantized weight: ``codes`` (int16 storage, the weight's shape), and per block its
    ``scale`` (float32) and, for the zero-point scheme, ``zero`` (int16), shaped to broadcast
    against the blocked weight: (1, 1) per tensor, (rows, 1) per channel, (rows, groups, 1) per
    group."""

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor | None
    bits: int
    scheme: str
    granularity: str
    group_size: int | None
    dtype: torch.dtype  # of the weight it came from

    def dequantize(self) -> torch.Tensor:
        """The weight the codes stand for, in the original dtype and shape."""
        codes = _blocked(self.codes, self.granularity, self.group_size).float()
        if self.zero is not None:
            codes = codes - self.zero.float()
        return (codes * self.scale).reshape(self.codes.shape).to(self.dtype)

    @property
    def n_scales(self) -> int:
        return self.scale.numel()

    def bits_per_weight(self) -> float:
        """Storage per weight: the code plus each block's float32 scale (and a b-bit zero
        point) spread over the block's weights."""
        extra = 32 + (self.bits if self.zero is not None else 0)
        return self.bits + extra * self.n_scales / self.codes.numel()


def _blocked(w: torch.Tensor, granularity: str, group_size: int | None) -> torch.Tensor:
    """``w`` (rows, cols) viewed so that each block is the last axis: (1, n), (rows, cols) or
    (rows, cols / group_size, group_size)."""
    if granularity == "tensor":
        return w.reshape(1, -1)
    if granularity == "channel":
        return w
    rows, cols = w.shape
    return w.reshape(rows, cols // group_size, group_size)


def quantize(
    w: torch.Tensor,
    bits: int = 8,
    *,
    scheme: str = "absmax",
    granularity: str = "channel",
    group_size: int | None = None,
) -> Quantized:
    """Quantize a weight matrix ``w`` (rows = output channels, cols = inputs) to ``bits`` bits.

    scheme: ``"absmax"`` (symmetric) or ``"zeropoint"`` (asymmetric); granularity:
    ``"tensor"``, ``"channel"`` (one scale per row) or ``"group"`` (one per ``group_size``
    consecutive inputs of a row; ``group_size`` must divide the number of columns). A block of
    zeros gets scale 1 and codes 0 (it dequantizes to exact zeros).
    """
    if not isinstance(w, torch.Tensor) or w.dim() != 2 or not w.is_floating_point():
        shape = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
        raise ValueError(f"w: expected a 2-D float tensor (out, in), got {shape}")
    bits = require_int(bits, "bits", 2)
    if bits > 8:
        raise ValueError(f"bits: expected 2 to 8, got {bits}")
    if scheme not in SCHEMES:
        raise ValueError(f"scheme: expected one of {SCHEMES}, got {scheme!r}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity: expected one of {GRANULARITIES}, got {granularity!r}")
    if granularity == "group":
        if group_size is None:
            raise ValueError("group_size: expected an int for granularity='group', got None")
        group_size = require_int(group_size, "group_size")
        if w.shape[1] % group_size:
            raise ValueError(
                f"group_size: expected a divisor of the {w.shape[1]} input columns, got "
                f"{group_size}"
            )
    elif group_size is not None:
        raise ValueError(f"group_size: only for granularity='group', got {group_size!r}")

    x = _blocked(w.detach().float(), granularity, group_size)
    if scheme == "absmax":
        top = 2 ** (bits - 1) - 1
        scale = x.abs().amax(-1, keepdim=True) / top
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        codes = torch.round(x / scale).clamp(-top, top)
        zero = None
    else:
        top = 2**bits - 1
        low = x.amin(-1, keepdim=True).clamp(max=0.0)  # the range always holds 0
        high = x.amax(-1, keepdim=True).clamp(min=0.0)
        scale = (high - low) / top
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero = torch.round(-low / scale).clamp(0, top)
        codes = (torch.round(x / scale) + zero).clamp(0, top)
        zero = zero.to(torch.int16)
    return Quantized(
        codes=codes.to(torch.int16).reshape(w.shape),
        scale=scale,
        zero=zero,
        bits=bits,
        scheme=scheme,
        granularity=granularity,
        group_size=group_size,
        dtype=w.dtype,
    )


def fake_quantize(w: torch.Tensor, bits: int = 8, **kwargs) -> torch.Tensor:
    """``quantize(w, bits, **kwargs).dequantize()``: the weight a quantized model computes
    with, in floating point (what "fake-quantized" rows of the chapter's table run)."""
    return quantize(w, bits, **kwargs).dequantize()


def distinct_values_per_block(w: torch.Tensor, block: int = 32) -> torch.Tensor:
    """How many distinct values each block of ``block`` consecutive inputs of each row holds:
    (rows, cols / block) int64. A weight de-quantized from a 4-bit format (SmolLM2's offline
    Q4_1, blocks of 32) holds at most 16 per block; a full-precision weight holds ``block``."""
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        raise ValueError("w: expected a 2-D tensor (out, in)")
    block = require_int(block, "block")
    if w.shape[1] % block:
        raise ValueError(
            f"block: expected a divisor of the {w.shape[1]} input columns, got {block}"
        )
    x = w.detach().reshape(w.shape[0], -1, block)
    ordered = x.sort(-1).values
    return 1 + (ordered[..., 1:] != ordered[..., :-1]).sum(-1)
