"""The kernels' benchmarks: one module per kernel, each defining ``benchmarks()``.

:func:`llmlab.bench.registry` imports every module of this package and collects the
:class:`llmlab.bench.Benchmark` objects its ``benchmarks()`` returns: a new kernel's benchmark
is a new module here. The kernel modules themselves hold no benchmark code.
"""

from __future__ import annotations

import importlib
import pkgutil


def modules() -> list:
    """Every benchmark module of this package, imported, in name order."""
    return [
        importlib.import_module(f"{__name__}.{info.name}")
        for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name)
        if not info.name.startswith("_")
    ]


def lazily(ops: dict, build) -> dict:
    """``{provider: builder}`` where ``builder()`` returns ``build(make())``.

    ``ops`` maps a provider to a function *making* its op, so that ``torch.compile`` (slow,
    and impossible on some machines) only happens for the providers a run times.
    """
    return {name: (lambda make=make: build(make())) for name, make in ops.items()}


def forward_or_backward(
    ops: dict, direction: str, inputs: tuple, n_grad: int | None = None
) -> dict:
    """:func:`lazily` builders that time one call of each provider's op on ``inputs``
    (``direction="forward"``), or the backward of one call with respect to the first
    ``n_grad`` inputs (default: all of them) against random output gradients, the same for
    every provider (drawn from a fixed seed), so that their gradients can be compared."""
    import torch

    n_grad = len(inputs) if n_grad is None else n_grad

    def forward(op):
        return lambda: op(*inputs)

    def backward(op):
        leaves = tuple(t.detach().requires_grad_() for t in inputs[:n_grad])
        outs = op(*leaves, *inputs[n_grad:])
        outs = outs if isinstance(outs, tuple) else (outs,)
        g = torch.Generator(device=outs[0].device).manual_seed(0)
        grads = tuple(
            torch.randn(o.shape, generator=g, device=o.device, dtype=o.dtype) for o in outs
        )
        return lambda: torch.autograd.grad(outs, leaves, grads, retain_graph=True)

    return lazily(ops, forward if direction == "forward" else backward)


def row_cases(
    scale: str,
    rows: int,
    cols: tuple[int, ...],
    quick_cols: tuple[int, ...],
    cpu_cols: tuple[int, ...],
) -> list:
    """Cases of a row-wise kernel (softmax, RMSNorm, SwiGLU): ``rows`` x each width in ``cols``.

    Forward and backward in float16 and bfloat16 (``"quick"``: bfloat16 and ``quick_cols``
    only); the CPU smoke scale runs 8 float32 rows of each of ``cpu_cols``, forward only.
    """
    from llmlab.bench import Case

    if scale == "cpu":
        return [
            Case(
                "float32, forward",
                n,
                {"rows": 8, "cols": n, "dtype": "float32", "direction": "forward"},
            )
            for n in cpu_cols
        ]
    dtypes = ("bfloat16",) if scale == "quick" else ("float16", "bfloat16")
    return [
        Case(
            f"{dtype}, {direction}",
            n,
            {"rows": rows, "cols": n, "dtype": dtype, "direction": direction},
        )
        for dtype in dtypes
        for direction in ("forward", "backward")
        for n in (quick_cols if scale == "quick" else cols)
    ]
