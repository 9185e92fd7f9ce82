"""Input checks shared by llmlab's modules: each error names the argument, what was expected
and what was received, so a shape mistake reads as a sentence, not a stack of torch internals."""

from __future__ import annotations

import torch


def check_positive_int(value, name: str) -> None:
    """``value`` must be an int >= 1 (a bool is not an int here)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name}: expected >= 1, got {value}")


def check_dims(x, ndim: int, name: str, layout: str) -> None:
    """``x`` must be a tensor with ``ndim`` dims; ``layout`` names them, e.g. ``(batch, seq)``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != ndim:
        raise ValueError(f"{name}: expected {ndim} dims {layout}, got shape {tuple(x.shape)}")


def check_float(x: torch.Tensor, name: str) -> None:
    """``x`` must be a floating-point tensor."""
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")
