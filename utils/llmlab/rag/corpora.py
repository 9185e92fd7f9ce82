"""A real corpus that ships with every Python: the standard library's documentation strings.

Chapter 07's fictional knowledge base (:mod:`llmlab.rag.kb`) is small and regular. To time
vector indexes on real text at a realistic size, the chapter also indexes the docstrings of the
standard library, read from the running interpreter: no download, and the same on every machine
with the same Python version (a different version gives a slightly different corpus).

:func:`stdlib_documents` imports each public standard-library module (skipping those that open
windows, print on import, or belong to tooling: :data:`SKIP`) and returns one document per
module, class and function that has a docstring of at least ``min_words`` words, titled by its
dotted name; a docstring identical to one already taken is skipped. Chunk them with
:func:`llmlab.rag.chunking.chunk_corpus` as any other documents.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import sys
import warnings
from dataclasses import dataclass

#: Modules not imported: GUI toolkits and games, modules that print or open things on import,
#: test and build tooling, and platform-specific ones that fail elsewhere.
SKIP = frozenset(
    """
    antigravity this idlelib tkinter turtle turtledemo lib2to3 ensurepip venv pydoc_data test
    msvcrt winreg winsound _winapi nt ossaudiodev spwd crypt nis sqlite3.test distutils
    __phello__ __hello__ xxsubtype xxlimited xxlimited_35 _xxtestfuzz _testcapi
    """.split()
)


@dataclass(frozen=True)
class StdlibDoc:
    """One docstring: ``doc_id`` and ``title`` are the dotted name (``json.dumps``)."""

    doc_id: str
    title: str
    text: str


def _public_modules() -> list[str]:
    names = getattr(sys, "stdlib_module_names", ())
    return sorted(n for n in names if not n.startswith("_") and n not in SKIP)


def stdlib_documents(min_words: int = 8, max_docs: int | None = None) -> list[StdlibDoc]:
    """Docstrings of the standard library's public modules and of the classes and functions
    they define (not those they import), in a fixed order; ``max_docs`` keeps the first ones."""
    if not isinstance(min_words, int) or min_words < 1:
        raise ValueError(f"min_words: expected an int >= 1, got {min_words!r}")
    if max_docs is not None and (not isinstance(max_docs, int) or max_docs < 1):
        raise ValueError(f"max_docs: expected None or an int >= 1, got {max_docs!r}")
    docs: list[StdlibDoc] = []
    seen: set[str] = set()
    texts: set[str] = set()

    def add(name: str, obj) -> None:
        # A docstring seen before (an inherited method's, an alias's) is skipped: duplicate
        # texts give tied vectors, and tied neighbours make recall against exact search noisy.
        text = inspect.getdoc(obj)
        if not text or name in seen or text in texts or len(text.split()) < min_words:
            return
        seen.add(name)
        texts.add(text)
        docs.append(StdlibDoc(name, name, text))

    for module_name in _public_modules():
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                module = importlib.import_module(module_name)
        except Exception:  # a platform-specific module: skip it  # noqa: BLE001
            continue
        add(module_name, module)
        for attr, obj in sorted(vars(module).items()):
            if attr.startswith("_") or getattr(obj, "__module__", None) != module_name:
                continue
            if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj):
                add(f"{module_name}.{attr}", obj)
            if inspect.isclass(obj):
                for method, member in sorted(vars(obj).items()):
                    if not method.startswith("_") and callable(member):
                        add(f"{module_name}.{attr}.{method}", member)
        if max_docs is not None and len(docs) >= max_docs:
            return docs[:max_docs]
    return docs
