"""GPU kernels in Triton, each beside the PyTorch reference it must equal.

Every kernel module reads top to bottom in the same order:

1. ``reference`` (and often ``reference_backward``): the definition of correct, in PyTorch;
2. the Triton kernels, plain functions wrapped in :class:`launch.TritonKernel`, and the
   Python that launches them;
3. a ``torch.autograd.Function`` whose forward and backward launch those kernels;
4. the public op: it validates its arguments, asks :func:`_common.dispatch` for the path, and
   calls the reference or the Function.

Shared pieces (the Triton import, dtypes, shape helpers, dispatch) live in ``_common``; the
benchmarks live in ``llmlab.bench.specs``. Which path an op takes depends on :func:`backend`:

- ``native``: Triton is importable and a CUDA device is present: the Triton kernel runs.
- ``interpreter``: ``TRITON_INTERPRET=1`` is set: the kernel runs in Triton's CPU interpreter
  (fp32 only, slow; used by the test suite to check kernels without a GPU).
- ``reference``: otherwise: the PyTorch reference runs, so every notebook works on a laptop.

Kernel modules announce themselves with :func:`register`, under their module's name, so that
``python -m llmlab doctor`` lists them and the shared contract test checks every one.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

_REGISTRY: dict[str, str] = {}


@dataclass(frozen=True)
class Backend:
    """How Triton kernels run on this machine, and why."""

    name: str  # "native" | "interpreter" | "reference"
    reason: str

    def describe(self, kernel: str) -> str:
        if self.name == "native":
            return f"Triton kernel on the GPU ({_REGISTRY[kernel]})"
        if self.name == "interpreter":
            return f"Triton interpreter on the CPU ({_REGISTRY[kernel]})"
        return f"falls back to the PyTorch reference ({_REGISTRY[kernel]})"


def register(name: str, summary: str) -> None:
    """Record kernel ``name`` (one line ``summary``) for the doctor and the benchmarks."""
    _REGISTRY[name] = summary


def registry() -> dict[str, str]:
    """``{kernel name: summary}`` of the kernels registered so far."""
    return dict(_REGISTRY)


def modules() -> list:
    """Every kernel module of this package, imported (importing one registers its kernel)."""
    import pkgutil

    return [
        importlib.import_module(f"{__name__}.{info.name}")
        for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name)
        if not info.name.startswith("_") and info.name != "launch"
    ]


def load_all() -> dict[str, str]:
    """Import every kernel module (each registers itself); return the registry."""
    modules()
    return registry()


def backend() -> Backend:
    """Decide where Triton kernels run: see the module docstring."""
    if importlib.util.find_spec("triton") is None:
        return Backend("reference", "Triton is not installed")
    if os.environ.get("TRITON_INTERPRET") == "1":
        return Backend("interpreter", "TRITON_INTERPRET=1")
    import torch

    if torch.cuda.is_available():
        return Backend("native", f"CUDA device {torch.cuda.get_device_name()}")
    return Backend("reference", "no CUDA device (set TRITON_INTERPRET=1 to run kernels on the CPU)")
