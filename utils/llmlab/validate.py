"""Input checks for llmlab's configs and public entry points.

Each error names the argument, what was expected and what was received, so a shape mistake
reads as a sentence, not a stack of torch internals. Numbers are accepted as Python or numpy
numbers alike (``np.int64(100)`` is an int here; a bool is not). The names say ``require``:
nothing here is a lab's check (those live in :mod:`llmlab.checks`).

Validate at the boundary: configs and the functions a user calls check their inputs once;
the ``forward`` of an inner layer is the math only.
"""

from __future__ import annotations

import numbers

# No module-level torch import: llmlab.data and the tokenizer use these checks and stay
# importable (and fast to import) without torch.

__all__ = [
    "require_int",
    "require_positive_int",
    "require_real",
    "require_dims",
    "require_float",
    "require_token_ids",
]


def require_int(value, name: str, minimum: int | None = 1) -> int:
    """``value`` must be an integer >= ``minimum`` (any integer when None); returns it as an int.

    Python and numpy integers count; a bool does not. A value of the wrong type raises
    TypeError, one out of range ValueError; both name the argument and what was expected.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        what = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{name}: expected {what}, got {value}")
    return value


def require_positive_int(value, name: str) -> int:
    """``value`` must be an integer >= 1 (Python or numpy; a bool is not); returns it as an int."""
    return require_int(value, name, 1)


def require_real(value, name: str) -> float:
    """``value`` must be a real number (Python or numpy; a bool is not); returns it as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__} {value!r}")
    return float(value)


def require_dims(x, ndim: int, name: str, layout: str) -> None:
    """``x`` must be a tensor with ``ndim`` dims; ``layout`` names them, e.g. ``(batch, seq)``."""
    import torch

    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != ndim:
        raise ValueError(f"{name}: expected {ndim} dims {layout}, got shape {tuple(x.shape)}")


def require_float(x, name: str) -> None:
    """``x`` must be a floating-point tensor."""
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")


def require_token_ids(
    ids,
    name: str = "input_ids",
    vocab_size: int | None = None,
    *,
    batch: int | None = None,
    min_seq: int = 0,
    max_seq: int | None = None,
) -> None:
    """``ids`` must be a (batch, seq) tensor of int64/int32 token ids: the one token-id check.

    With ``batch``, ``min_seq`` or ``max_seq`` the shape must fit them. With ``vocab_size``
    every id must lie in [0, vocab_size), checked for ids on the CPU only: reading a GPU
    tensor's min and max waits for the device (at every decoding step), and an out-of-range id
    there trips the embedding's own device assert anyway.
    """
    import torch

    if isinstance(ids, torch.Tensor) and ids.dim() == 1:
        raise ValueError(
            f"{name}: expected 2 dims (batch, seq), got shape {tuple(ids.shape)}; "
            f"add a batch dim with {name}[None]"
        )
    require_dims(ids, 2, name, "(batch, seq)")
    if ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name}: expected token ids of dtype int64, got {ids.dtype}")
    if batch is not None and ids.shape[0] != batch:
        raise ValueError(f"{name}: expected batch {batch}, got shape {tuple(ids.shape)}")
    if ids.shape[1] < min_seq:
        raise ValueError(f"{name}: expected seq >= {min_seq}, got shape {tuple(ids.shape)}")
    if max_seq is not None and ids.shape[1] > max_seq:
        raise ValueError(f"{name}: expected seq <= max_seq={max_seq}, got shape {tuple(ids.shape)}")
    if vocab_size is not None and ids.is_cpu and ids.numel():
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= vocab_size:
            raise ValueError(
                f"{name}: expected ids in [0, {vocab_size}), got min {low}, max {high}"
            )
