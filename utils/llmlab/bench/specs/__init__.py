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
