"""Where code runs: device choice, seeding, and what is installed.

    >>> from llmlab import env
    >>> env.pick_device()            # cuda > mps > cpu, or $LLMLAB_DEVICE
    >>> env.seed_everything(0)

The doctor, which reports on all of it, is course machinery: :mod:`llmlab.course.doctor`
(``python -m llmlab doctor``).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import random

DEVICE_ENV = "LLMLAB_DEVICE"
_DEVICE_KINDS = ("cuda", "mps", "cpu")


def pick_device(prefer: str | None = None):
    """The ``torch.device`` the course should use.

    Order: ``prefer`` if given, else the environment variable ``LLMLAB_DEVICE``, else the best
    available of cuda > mps > cpu. Asking for a device that is not available is an error rather
    than a silent fall-back, so a notebook never measures the CPU while claiming the GPU.
    """
    import torch

    choice = prefer if prefer is not None else os.environ.get(DEVICE_ENV, "").strip()
    source = "prefer" if prefer is not None else DEVICE_ENV
    if not choice:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind = choice.split(":")[0]
    if kind not in _DEVICE_KINDS:
        raise ValueError(f"{source}={choice!r}: expected one of {', '.join(_DEVICE_KINDS)}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{source}={choice!r}, but torch sees no CUDA device on this machine")
    if kind == "mps" and not _mps_available():
        raise ValueError(f"{source}={choice!r}, but the MPS backend is not available here")
    return torch.device(choice)


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def seed_everything(seed: int) -> int:
    """Seed Python's, NumPy's and torch's generators (all devices) with ``seed``; return it.

    Also sets ``PYTHONHASHSEED`` for subprocesses (data-loader workers, papermill kernels).
    It does not make every CUDA kernel deterministic; chapters that need bitwise equality on a
    GPU say so and call ``torch.use_deterministic_algorithms`` themselves.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed: expected 0 <= seed < 2**32, got {seed}")
    random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:
        pass
    import torch

    torch.manual_seed(seed)  # seeds every CUDA device too
    return seed


# --------------------------------------------------------------------------------------------
# What is installed


def package_version(dist: str) -> str | None:
    """The installed version of distribution ``dist``, or None; never imports the package."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def has_module(name: str) -> bool:
    """True when ``import name`` would find a module, without importing it."""
    return importlib.util.find_spec(name) is not None
