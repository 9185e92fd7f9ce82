"""LLM Lab's shared package: models, training code, graders and kernels for the course.

``import llmlab`` is kept fast: submodules load on first use (``llmlab.env``,
``llmlab.assets`` ...), and heavy libraries such as transformers are imported only inside the
functions that need them.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_SUBMODULES = {
    # the basics, importable by everything
    "assets",
    "env",
    "plotting",
    "progress",
    "validate",
    # what the course teaches, by concept
    "nn",
    "models",
    "tokenization",
    "data",
    "training",
    "inference",
    "evaluation",
    "kernels",
    # the labs' checks, and the machinery (never imported by the teaching code)
    "checks",
    "course",
    "bench",
}


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'llmlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _SUBMODULES)
