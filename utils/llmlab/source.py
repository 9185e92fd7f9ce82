"""Show the code that runs: the real source of a function, class or method, in the notebook.

A chapter that teaches a piece shows the package's own code, not a copy that may drift:

    >>> from llmlab.source import show
    >>> show(RMSNorm)                      # the class, docstring included
    >>> show(AdamW.update_group, docstring=False)

In JupyterLab, Colab, GitHub and nbviewer the code renders highlighted (a Markdown code
block); the plain-text form, which CI compares, is the same code under a one-line header that
names the object, so a test can re-read every saved ``show`` output and check that it still
matches the package (tests/test_notebook_format.py).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import textwrap
from typing import Any

__all__ = ["Source", "show", "source_of", "resolve"]

HEADER = "# source: "


def _qualified(obj: Any) -> str:
    obj = inspect.unwrap(obj)
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not module or not qualname or "<" in qualname:
        raise TypeError(f"show() needs a module-level function, class or method; received {obj!r}")
    return f"{module}.{qualname}"


def resolve(name: str) -> Any:
    """The object a dotted name like ``llmlab.nn.norms.RMSNorm.forward`` stands for."""
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(f"cannot resolve {name!r}: expected a dotted path to an object")


def _without_docstring(code: str) -> str:
    """``code`` (one def or class) without the docstrings of it and of its methods."""
    tree = ast.parse(code)
    spans = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            first = node.body[0] if node.body else None
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
                and len(node.body) > 1
            ):
                spans.append((first.lineno, first.end_lineno))
    lines = code.splitlines()
    for start, end in sorted(spans, reverse=True):
        del lines[start - 1 : end]
    return "\n".join(lines)


def source_of(obj: Any, *, docstring: bool = True) -> str:
    """The text :func:`show` displays for ``obj``: a header line, then its source."""
    name = _qualified(obj)
    code = textwrap.dedent(inspect.getsource(inspect.unwrap(obj))).rstrip()
    if not docstring:
        code = _without_docstring(code)
    note = "" if docstring else "  (docstrings omitted)"
    return f"{HEADER}{name}{note}\n{code}"


class Source:
    """Source code that renders highlighted in a notebook and as plain text elsewhere."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text

    def _repr_markdown_(self) -> str:
        fence = "````" if "```" in self.text else "```"
        return f"{fence}python\n{self.text}\n{fence}"


def show(*objs: Any, docstring: bool = True) -> Source:
    """The source of each of ``objs`` (functions, classes, methods), to display in a notebook.

    ``docstring=False`` leaves out the docstrings (the prose around the cell says the same).
    Raises TypeError for something without source (a builtin, a lambda, a local function).
    """
    if not objs:
        raise TypeError("show() needs at least one function, class or method")
    parts = []
    for obj in objs:
        try:
            parts.append(source_of(obj, docstring=docstring))
        except (OSError, TypeError) as exc:
            raise TypeError(f"show(): no source for {obj!r} ({exc})") from None
    return Source("\n\n".join(parts))
