"""Random inputs for the checks, drawn from private generators.

A check runs inside a student's notebook: drawing from the global RNG would move the
notebook's seed and change every cell after the check. So every helper here seeds its own
``torch.Generator``, and the same ``seed`` always gives the same tensor, whichever lab asks.
"""

from __future__ import annotations

import torch


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (the global RNG is left alone)."""
    return torch.Generator().manual_seed(seed)


def randn(
    *shape: int, dtype: torch.dtype = torch.float32, seed: int = 0, scale: float = 1.0
) -> torch.Tensor:
    """Normal values of ``shape`` with standard deviation ``scale``, from ``generator(seed)``."""
    return scale * torch.randn(*shape, generator=generator(seed), dtype=dtype)


def token_ids(*shape: int, vocab: int, seed: int) -> torch.Tensor:
    """Random int64 token ids in [0, vocab) of ``shape``, from ``generator(seed)``."""
    return torch.randint(0, vocab, shape, generator=generator(seed))


def lengths(*values: int) -> torch.Tensor:
    """Sequence lengths as an int64 tensor, e.g. for a padding mask."""
    return torch.tensor(values, dtype=torch.int64)


class SeededGenerator(torch.Generator):
    """A CPU ``torch.Generator`` seeded with ``seed`` that a check message can name.

    A case passed to a sampling function holds one; each call gets a deep copy in the same
    state, so the student's function and the reference draw the same random numbers.
    """

    def __new__(cls, seed: int):
        return super().__new__(cls)

    def __init__(self, seed: int):
        super().__init__()
        self.seed_value = seed
        self.manual_seed(seed)

    def __deepcopy__(self, memo) -> SeededGenerator:
        twin = SeededGenerator(self.seed_value)
        twin.set_state(self.get_state())
        return twin

    def __repr__(self) -> str:
        return f"Generator(seed={self.seed_value})"
