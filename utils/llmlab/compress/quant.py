"""Integer quantization of weights: absmax and zero-point, per tensor, per channel, per group.

A b-bit quantizer stores each weight as an integer code and keeps, for each block of weights
that share them, a float **scale** (and for the asymmetric scheme an integer **zero point**):

- **absmax** (symmetric): ``scale = max|w| / (2^(b-1) - 1)``, ``q = round(w / scale)`` in
  ``[-(2^(b-1) - 1), 2^(b-1) - 1]``, ``w ~ q * scale``. Zero stays exactly zero; the range is
  set by the largest magnitude, so one outlier coarsens the grid for the whole block.
- **zero-point** (asymmetric): ``scale = (max - min) / (2^b - 1)``,
  ``zero = round(-min / scale)``, ``q = clamp(round(w / scale) + zero, 0, 2^b - 1)``,
  ``w ~ (q - zero) * scale``. All 2^b codes cover [min, max], which suits skewed blocks; the
  range is widened to hold 0, so that zero is exactly representable (an integer zero point).
- **min-max** (llama.cpp's Q4_1): ``scale = (max - min) / (2^b - 1)``,
  ``q = round((w - min) / scale)``, ``w ~ min + q * scale``, with ``min`` kept as a float
  offset: the grid spans exactly [min, max] and need not contain 0.

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
    "NF4_OFFSET",
    "nf4_values",
    "NF4",
    "quantize_nf4",
    "pack_4bit",
    "unpack_4bit",
]

SCHEMES = ("absmax", "zeropoint", "minmax")
GRANULARITIES = ("tensor", "channel", "group")


@dataclass(frozen=True)
class Quantized:
    """A quantized weight: ``codes`` (int16 storage, the weight's shape), and per block its
    ``scale`` (float32) and, for the zero-point scheme, ``zero`` (int16, in codes) or, for the
    min-max scheme, ``zero`` (float32, the block's minimum), shaped to broadcast against the
    blocked weight: (1, 1) per tensor, (rows, 1) per channel, (rows, groups, 1) per group."""

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
        if self.scheme == "minmax":
            values = self.zero + codes * self.scale
        elif self.zero is not None:
            values = (codes - self.zero.float()) * self.scale
        else:
            values = codes * self.scale
        return values.reshape(self.codes.shape).to(self.dtype)

    @property
    def n_scales(self) -> int:
        return self.scale.numel()

    def bits_per_weight(self) -> float:
        """Storage per weight: the code plus each block's float32 scale (and a b-bit zero
        point) spread over the block's weights."""
        extra = 32 + {"absmax": 0, "zeropoint": self.bits, "minmax": 32}[self.scheme]
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


def _require_divisor(value, name: str, total: int, what: str) -> int:
    """``value`` as a positive int that divides ``total`` (the ``what`` it cuts into blocks)."""
    value = require_int(value, name)
    if total % value:
        raise ValueError(f"{name}: expected a divisor of the {total} {what}, got {value}")
    return value


def _nonzero(scale: torch.Tensor) -> torch.Tensor:
    """Each block's scale, or 1 for a block of equal values (a zero range): its codes are then
    all the same and it dequantizes exactly, without a division by zero."""
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def quantize(
    w: torch.Tensor,
    bits: int = 8,
    *,
    scheme: str = "absmax",
    granularity: str = "channel",
    group_size: int | None = None,
) -> Quantized:
    """Quantize a weight matrix ``w`` (rows = output channels, cols = inputs) to ``bits`` bits.

    scheme: ``"absmax"`` (symmetric), ``"zeropoint"`` (asymmetric, an integer zero point) or
    ``"minmax"`` (asymmetric, a float minimum: Q4_1); granularity:
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
        group_size = _require_divisor(group_size, "group_size", w.shape[1], "input columns")
    elif group_size is not None:
        raise ValueError(f"group_size: only for granularity='group', got {group_size!r}")

    x = _blocked(w.detach().float(), granularity, group_size)
    if scheme == "absmax":
        top = 2 ** (bits - 1) - 1
        scale = _nonzero(x.abs().amax(-1, keepdim=True) / top)
        codes = torch.round(x / scale).clamp(-top, top)
        zero = None
    elif scheme == "minmax":
        top = 2**bits - 1
        zero = x.amin(-1, keepdim=True)  # a float offset: the block's minimum
        scale = _nonzero((x.amax(-1, keepdim=True) - zero) / top)
        codes = torch.round((x - zero) / scale).clamp(0, top)
    else:
        top = 2**bits - 1
        low = x.amin(-1, keepdim=True).clamp(max=0.0)  # the range always holds 0
        high = x.amax(-1, keepdim=True).clamp(min=0.0)
        scale = _nonzero((high - low) / top)
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
    block = _require_divisor(block, "block", w.shape[1], "input columns")
    x = w.detach().reshape(w.shape[0], -1, block)
    ordered = x.sort(-1).values
    return 1 + (ordered[..., 1:] != ordered[..., :-1]).sum(-1)


# --------------------------------------------------------------------------------------------
# NF4: 4-bit NormalFloat (QLoRA, Dettmers et al. 2023)

#: Where NF4's outermost quantiles sit: the mean of 1 - 1/(2*15) and 1 - 1/(2*16) (0.96770833...),
#: so that the extreme quantiles are finite; bitsandbytes writes it as 0.9677083, and its table is
#: built from that rounded number, so ours is too (the levels then agree to the last bit).
NF4_OFFSET = 0.9677083


def nf4_values() -> torch.Tensor:
    """The 16 NF4 levels, from their definition: quantiles of a standard normal, 8 for the
    positive half and 7 for the negative half (from ``NF4_OFFSET`` in to the median), plus an
    exact 0, all divided by the largest so that they span [-1, 1]. Normally distributed
    weights, scaled by their block's absmax, then fill the 16 codes about equally often."""
    # float32 points, float64 quantiles, float32 levels: the arithmetic of bitsandbytes' table
    positive = torch.special.ndtri(torch.linspace(NF4_OFFSET, 0.5, 9)[:-1].double()).float()
    negative = -torch.special.ndtri(torch.linspace(NF4_OFFSET, 0.5, 8)[:-1].double()).float()
    values = torch.cat([positive, torch.zeros(1), negative]).sort().values
    return values / values.max()


@dataclass(frozen=True)
class NF4:
    """A weight in NF4: ``codes`` (uint8 0-15, one per weight, flattened row-major), ``absmax``
    (float32, one per block of ``blocksize`` consecutive weights), and the original shape."""

    codes: torch.Tensor
    absmax: torch.Tensor
    blocksize: int
    shape: tuple[int, ...]
    dtype: torch.dtype

    def dequantize(self) -> torch.Tensor:
        levels = nf4_values()[self.codes.long()].view(-1, self.blocksize)
        return (levels * self.absmax[:, None]).reshape(self.shape).to(self.dtype)


def quantize_nf4(w: torch.Tensor, blocksize: int = 64) -> NF4:
    """NF4 as bitsandbytes stores it: the weight flattened, cut into blocks of ``blocksize``,
    each divided by its absmax and rounded to the nearest of the 16 :func:`nf4_values` (a value
    exactly halfway between two levels takes the lower). The codes equal bitsandbytes'
    ``quantize_4bit(..., quant_type="nf4")`` bit for bit (tested)."""
    if not isinstance(w, torch.Tensor) or not w.is_floating_point():
        raise ValueError("w: expected a float tensor")
    blocksize = _require_divisor(blocksize, "blocksize", w.numel(), "weights")
    x = w.detach().float().reshape(-1, blocksize)
    absmax = x.abs().amax(-1)
    # times the reciprocal, as bitsandbytes computes it (x / absmax can differ in the last bit)
    normalised = (x * (1.0 / absmax.clamp(min=1e-38))[:, None]).clamp(-1, 1)
    levels = nf4_values()
    midpoints = (levels[1:] + levels[:-1]) / 2  # the nearest level; a tie goes to the lower one
    codes = torch.bucketize(normalised, midpoints)
    return NF4(codes.flatten().to(torch.uint8), absmax, blocksize, tuple(w.shape), w.dtype)


def pack_4bit(codes: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes per byte, the first in the high nibble (bitsandbytes' layout)."""
    if codes.numel() % 2:
        raise ValueError(f"codes: expected an even number of codes, got {codes.numel()}")
    pairs = codes.flatten().to(torch.uint8).view(-1, 2)
    return (pairs[:, 0] << 4) | pairs[:, 1]


def unpack_4bit(packed: torch.Tensor) -> torch.Tensor:
    """The codes :func:`pack_4bit` packed, in order."""
    flat = packed.flatten().to(torch.uint8)
    return torch.stack([flat >> 4, flat & 0x0F], dim=1).flatten()
