"""LLM Lab's shared package: models, training code, graders and kernels for the course.

``import llmlab`` is kept fast: submodules load on first use (``llmlab.env``,
``llmlab.assets`` ...), and heavy libraries such as transformers are imported only inside the
functions that need them.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_SUBMODULES = {
    "assets",
    "bench",
    "checks",
    "course",
    "data",
    "env",
    "grading",
    "kernels",
    "labs",
    "notebooks",
    "plotting",
    "progress",
    "attention", "blocks", "ffn", "norms", "positional", "seq2seq",  # chapter 01
    "generation", "models", "ngram", "tokenizers",  # chapter 02
    "objectives", "scaling", "train",  # chapter 03
}


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'llmlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _SUBMODULES)
