"""Input checks shared by llmlab's modules: each error names the argument, what was expected
and what was received, so a shape mistake reads as a sentence, not a stack of torch internals."""

from __future__ import annotations

# No module-level torch import: llmlab.data and the tokenizers use these checks and stay
# importable (and fast to import) without torch.


def check_int(value, name: str, minimum: int | None = 1) -> int:
    """``value`` must be an int >= ``minimum`` (any int when None; a bool is not an int here).

    A value of the wrong type raises TypeError, one out of range ValueError; both name the
    argument and what was expected. Returns ``value``.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        what = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{name}: expected {what}, got {value}")
    return value


def check_positive_int(value, name: str) -> int:
    """``value`` must be an int >= 1 (a bool is not an int here); returns it."""
    return check_int(value, name, 1)


def check_dims(x, ndim: int, name: str, layout: str) -> None:
    """``x`` must be a tensor with ``ndim`` dims; ``layout`` names them, e.g. ``(batch, seq)``."""
    import torch

    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != ndim:
        raise ValueError(f"{name}: expected {ndim} dims {layout}, got shape {tuple(x.shape)}")


def check_float(x, name: str) -> None:
    """``x`` must be a floating-point tensor."""
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")
