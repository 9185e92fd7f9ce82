"""Normalisation layers: LayerNorm (Ba et al. 2016) and RMSNorm (Zhang & Sennrich 2019).

    LayerNorm(x) = (x - mean(x)) / sqrt(var(x) + eps) * weight + bias
    RMSNorm(x)   = x / sqrt(mean(x^2) + eps) * weight

Both normalise each vector over its last dim (d_model). RMSNorm drops the mean subtraction and
the bias: fewer operations, same quality in practice, hence LLaMA, PaLM and SmolLM2 use it.
The statistics are computed in float32 whatever the input dtype, because a mean of squares in
bf16 or fp16 loses the digits that matter.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.validate import require_positive_int

__all__ = ["LayerNorm", "RMSNorm", "make_norm", "NORMS"]


class LayerNorm(nn.Module):
    """LayerNorm from scratch; equals ``torch.nn.LayerNorm(d_model, eps, bias=bias)``.

    x: (..., d_model) -> (..., d_model), same dtype. ``bias=False`` gives the bias-free
    variant (PaLM-style models without biases).
    """

    def __init__(self, d_model: int, eps: float = 1e-5, bias: bool = True):
        super().__init__()
        self.d_model = require_positive_int(d_model, "d_model")
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model)) if bias else None

    def formula(self, x: torch.Tensor) -> torch.Tensor:
        """The definition, step by step (what :meth:`forward` computes with one fused op)."""
        x32 = x.float()
        mean = x32.mean(dim=-1, keepdim=True)
        var = x32.var(dim=-1, keepdim=True, unbiased=False)  # the biased variance, as the paper
        y = (x32 - mean) * torch.rsqrt(var + self.eps) * self.weight.float()
        if self.bias is not None:
            y = y + self.bias.float()
        return y.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The same math as formula() in one kernel: training spends a tenth of its time in
        # normalisation when it is written as six separate ops (measured in chapter 03).
        bias = None if self.bias is None else self.bias.float()
        y = F.layer_norm(x.float(), (self.d_model,), self.weight.float(), bias, self.eps)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.d_model}, eps={self.eps}, bias={self.bias is not None}"


class RMSNorm(nn.Module):
    """RMSNorm as LLaMA computes it: weight * (x * rsqrt(mean(x^2) + eps)), stats in float32.

    x: (..., d_model) -> (..., d_model), same dtype. Equals ``torch.nn.RMSNorm`` (float32) and
    transformers' ``LlamaRMSNorm`` (every dtype: the normalised x is cast back to the input
    dtype *before* the weight multiplies it, as there).
    """

    def __init__(self, d_model: int, eps: float = 1e-6):
        super().__init__()
        self.d_model = require_positive_int(d_model, "d_model")
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.d_model}, eps={self.eps}"


NORMS = ("layer", "rms")


def make_norm(kind: str, d_model: int, eps: float | None = None, bias: bool = True) -> nn.Module:
    """``"layer"`` -> :class:`LayerNorm` (default eps 1e-5), ``"rms"`` -> :class:`RMSNorm` (1e-6).

    ``bias`` only matters for LayerNorm (RMSNorm has none).
    """
    if kind == "layer":
        return LayerNorm(d_model, eps=1e-5 if eps is None else eps, bias=bias)
    if kind == "rms":
        return RMSNorm(d_model, eps=1e-6 if eps is None else eps)
    raise ValueError(f"kind: expected one of {NORMS}, got {kind!r}")
