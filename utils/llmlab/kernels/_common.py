"""What every kernel module shares: the Triton import, the dtypes, shape helpers and dispatch.

:func:`dispatch` is the one place that decides, per call, which path an op takes; the ops
only validate their arguments before it and call the reference or their autograd Function
after it.
"""

from __future__ import annotations

import torch

from llmlab import kernels

try:  # the reference path (laptops, CI without Triton) must import without Triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    tl = None

#: Dtypes the kernels accept on the GPU (their math runs in float32).
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
#: The interpreter runs the kernels in NumPy; they are checked there in float32 only.
INTERPRETER_DTYPE = torch.float32


def require_tensor(t, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")


def require_dtype(t: torch.Tensor, name: str) -> None:
    if t.dtype not in DTYPES:
        names = ", ".join(str(d) for d in DTYPES)
        raise TypeError(f"{name}: expected dtype {names}, got {t.dtype}")


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= ``n`` (``tl.arange`` only takes power-of-two lengths)."""
    return 1 << (n - 1).bit_length()


def cdiv(n: int, block: int) -> int:
    """How many blocks of ``block`` cover ``n``: the grid size along a blocked dim."""
    return -(-n // block)


def unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when its last dim is contiguous, else a contiguous copy.

    The kernels index the last dim with stride 1 (vectorised loads) and take every other
    stride as an argument, so views such as a transpose of the leading dims need no copy.
    """
    return t if t.stride(-1) == 1 else t.contiguous()


def as_rows(t: torch.Tensor) -> torch.Tensor:
    """View ``t`` as (rows, n_cols) with unit stride along the columns (copies only if needed)."""
    return unit_last_stride(t.reshape(-1, t.shape[-1]))


def interpreter_meta(interpret: bool, **meta) -> dict:
    """``meta`` in the interpreter, ``{}`` on the GPU, where the autotuner picks these values."""
    return meta if interpret else {}


def dispatch(*named: tuple[torch.Tensor, str]) -> str:
    """Which path an op runs for its ``(tensor, argument name)`` inputs, the first deciding.

    - ``"reference"``: the backend is ``reference``, the first tensor is empty (nothing to
      launch), or it is not on CUDA while the backend is ``native``;
    - ``"interpreter"``: ``TRITON_INTERPRET=1``; every named tensor must then be float32;
    - ``"native"``: the compiled Triton kernel on the GPU.

    See :func:`llmlab.kernels.backend` for how the backend is chosen.
    """
    backend = kernels.backend().name
    first = named[0][0]
    if first.numel() == 0 or backend == "reference" or (backend == "native" and not first.is_cuda):
        return "reference"
    if backend == "interpreter":
        for t, name in named:
            if t.dtype != INTERPRETER_DTYPE:
                raise TypeError(f"{name}: the Triton interpreter runs float32 only, got {t.dtype}")
    return backend


# --------------------------------------------------------------------------------------------
# Tiled matmul kernels: autotuning candidates from (rows, other, step, warps, stages) tuples
# --------------------------------------------------------------------------------------------


def tile_shape(config, names: tuple[str, str, str]) -> tuple:
    """``(tile rows, other tile dim, loop step, warps, stages)`` of a triton Config whose
    three block sizes are named ``names`` in that order."""
    k = config.kwargs
    return (k[names[0]], k[names[1]], k[names[2]], config.num_warps, config.num_stages)


def tile_configs(shapes_16: tuple, shapes_32: tuple, names: tuple[str, str, str]):
    """A factory ``configs(triton)`` of every distinct shape in ``shapes_16 + shapes_32``
    (tuples ``(a, b, c, warps, stages)``, block sizes named ``names``)."""

    def factory(triton):
        return [
            triton.Config(dict(zip(names, shape[:3], strict=True)), num_warps=w, num_stages=s)
            for *shape, w, s in dict.fromkeys(shapes_16 + shapes_32)
        ]

    return factory


def tile_pruner(
    first: str,
    shapes_16: tuple,
    shapes_32: tuple,
    names: tuple[str, str, str],
    rows_arg: str | None = None,
):
    """An early-prune function keeping the shapes for the dtype of argument ``first``
    (``shapes_32`` for float32, ``shapes_16`` otherwise; the first config if none fits).

    With ``rows_arg``, it also drops tiles taller than that argument rounded up to a power of
    two (at least 16): rows of a tile beyond M are masked work (always keeping one shape)."""

    def prune(configs, named_args, **kwargs):
        allowed = set(shapes_32 if named_args[first].dtype == torch.float32 else shapes_16)
        fitting = [c for c in configs if tile_shape(c, names) in allowed]
        if rows_arg is None:
            return fitting or configs[:1]
        rows = max(16, next_power_of_2(max(1, named_args[rows_arg])))
        return [c for c in fitting if c.kwargs[names[0]] <= rows] or fitting[:1]

    return prune
