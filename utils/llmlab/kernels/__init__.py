"""GPU kernels in Triton, each beside the PyTorch reference it must equal.

Every kernel module follows one shape (see STYLE.md): ``reference`` -> Triton kernel ->
``torch.autograd.Function`` -> one public op that dispatches. Which path the op takes depends
on :func:`backend`:

- ``native``: Triton is importable and a CUDA device is present: the Triton kernel runs.
- ``interpreter``: ``TRITON_INTERPRET=1`` is set: the kernel runs in Triton's CPU interpreter
  (fp32 only, slow; used by the test suite to check kernels without a GPU).
- ``reference``: otherwise: the PyTorch reference runs, so every notebook works on a laptop.

Kernel modules announce themselves with :func:`register` so that ``python -m llmlab doctor``
and the benchmark harness can list them.
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
