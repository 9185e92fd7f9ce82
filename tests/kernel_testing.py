"""What every kernel test file shares: the CUDA skip mark and seeded generators.

The ``interpret`` fixture (Triton's CPU interpreter for one test) lives in conftest.py.
"""

from __future__ import annotations

import pytest
import torch

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def gen(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``: inputs that do not move the global RNG."""
    return torch.Generator().manual_seed(seed)
