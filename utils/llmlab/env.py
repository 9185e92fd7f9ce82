"""Where code runs: device choice, seeding, what is installed, and the memory a call takes.

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


def peak_allocated_bytes(fn, device: str = "cpu") -> int:
    """Most bytes PyTorch held allocated at once while ``fn()`` ran, above what it held before.

    On CUDA: ``torch.cuda.max_memory_allocated`` after a reset. On the CPU PyTorch keeps no
    running peak, but its profiler records every allocation and free (``profile_memory=True``):
    replaying them in time order gives the peak. Counts tensors only (not Python objects, not
    memory the allocator keeps cached), so it is the number a formula from the shapes predicts.
    """
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    from torch.profiler import ProfilerActivity, profile

    stderr = os.dup(2)  # the profiler's C++ side logs a line or two to stderr: hide them
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                fn()
        finally:
            os.dup2(stderr, 2)
            os.close(stderr)
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()  # positive when allocated, negative when freed
        peak = max(peak, live)
    return peak


def cpu_has_fast_bf16() -> bool:
    """True when this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX), read from its flags.

    Without those units PyTorch emulates bf16 and a bf16 matmul is *slower* than fp32, so the
    course trains in bf16 autocast on a CPU only when this is True. Reads ``/proc/cpuinfo``
    (Linux); elsewhere (macOS, Windows) it answers False.
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def default_precision(device: str = "cpu") -> str:
    """The course's precision name for training on ``device``: ``"bf16"``, ``"fp16"`` or
    ``"fp32"``, i.e. :func:`autocast_dtype` as a ``TrainConfig.precision`` string."""
    import torch

    dtype = autocast_dtype(device)
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


def autocast_dtype(device: str = "cpu"):
    """The dtype to autocast training to on ``device``: bf16 where it is fast, else None (fp32).

    CUDA: bf16 when the GPU supports it. CPU: bf16 when :func:`cpu_has_fast_bf16`. Others: None.
    """
    import torch

    kind = str(device).split(":")[0]
    if kind == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if kind == "cpu":
        return torch.bfloat16 if cpu_has_fast_bf16() else None
    return None
