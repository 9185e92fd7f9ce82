"""Two text corpora read from Python itself: English prose and source code.

Corpora. Every machine that runs the course has a Python standard library, so it is our offline
text source (no downloads, no licences to check beyond the PSF's):

- ``docstring_corpus()``: English prose, one document per docstring (module, class, function)
  of the standard library's ``.py`` files. Chapter 03 trains a small GPT on it.
- ``code_corpus()``: source code, one document per ``.py`` file. Chapter 02 compares tokens
  per byte on prose and code with it.
- ``reference_corpus()``: the Python Language Reference, as the standard library ships it for
  ``help()`` (``pydoc_data/topics.py``), one document per topic: prose edited by the
  documentation team, the "good text" that chapter 03's LM quality filter learns from (the
  role Wikipedia plays for CCNet).

Files are found by walking ``sysconfig.get_paths()["stdlib"]`` in sorted order and parsed with
``ast`` (never imported: no side effects, and fast). Skipped: site-packages, test directories
(``test``, ``tests``, ``idle_test``: much of it deliberately odd, and lib2to3's test data does
not even parse), ``__pycache__``, build-specific files (``config-*/``, ``_sysconfigdata_*``,
which hold this machine's paths), and files that are not UTF-8 or do not parse.

The corpora are identical across runs on the same Python installation, but they change with
the Python version (and slightly between builds of one version: some Linux distributions ship
distutils or lib2to3 separately). Measured on Python 3.11.7, on the course's 2-core machine:

    corpus              documents  bytes (UTF-8, joined with blank lines)
    docstring_corpus()      6,992   1,741,867  (1.7 MB of English prose)
    code_corpus()             729  12,081,192  (12.1 MB of Python)

The prose is a little larger than the 1.1 MB tiny-Shakespeare file that nanoGPT's char-level
demo learns from: enough for the CPU-sized models of chapter 03. The first call parses about
730 files in about 2.4 s; the parse is memoised per file, so later calls (of either function)
take a few milliseconds, and a ``max_bytes`` prefix only parses the files it needs
(``max_bytes=200_000``: about 0.3 s).

Only the standard library is imported here, so ``import llmlab.data`` is cheap.
"""

from __future__ import annotations

import ast
import functools
import inspect
import math
import os
import random
import sys
import sysconfig
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

__all__ = [
    "Corpus",
    "docstring_corpus",
    "code_corpus",
    "reference_corpus",
]

# -----------------------------------------------------------------------------
# Corpora

MIN_DOCSTRING_CHARS = 40  # shorter docstrings are mostly "Return self." and friends: no prose
SEPARATOR = "\n\n"  # between documents in Corpus.text

# Directories never walked: third-party code, tests (much of it deliberately broken or odd:
# lib2to3/tests/data holds files that do not parse), caches, and build artefacts.
_SKIP_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
)
# Files and directories whose content depends on how this Python was built (absolute paths,
# compiler flags), not on its version: skipped so two machines with the same Python agree.
_SKIP_PREFIXES = ("config-", "_sysconfigdata_")


@dataclass
class Corpus:
    """A list of text documents with their provenance.

    ``sources[i]`` says where ``documents[i]`` came from: a path relative to the standard
    library, plus the qualified name for a docstring (``"email/message.py:Message.get"``).
    """

    name: str
    documents: list[str] = field(repr=False)
    sources: list[str] = field(repr=False)
    python_version: str = field(default_factory=lambda: "{}.{}.{}".format(*sys.version_info[:3]))

    def __post_init__(self):
        if len(self.documents) != len(self.sources):
            raise ValueError(
                f"documents and sources must have the same length, got {len(self.documents)} "
                f"documents and {len(self.sources)} sources"
            )

    @property
    def n_documents(self) -> int:
        return len(self.documents)

    @property
    def n_bytes(self) -> int:
        """UTF-8 size of ``text`` (documents joined with a blank line), without building it."""
        n_separators = max(len(self.documents) - 1, 0)
        return sum(len(d.encode("utf-8")) for d in self.documents) + n_separators * len(SEPARATOR)

    @property
    def text(self) -> str:
        """All documents as one string, separated by a blank line."""
        return SEPARATOR.join(self.documents)

    def describe(self) -> str:
        """One line for a notebook: name, size and the Python it was read from."""
        return (
            f"{self.name}: {self.n_documents:,} documents, {self.n_bytes / 1e6:.2f} MB "
            f"(Python {self.python_version})"
        )

    def split(
        self, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
    ) -> tuple[Corpus, Corpus, Corpus]:
        """Train, validation and test corpora: a seeded shuffle of whole documents.

        Splitting by document (not by byte offset) keeps a docstring or a file on one side, so
        the validation loss measures text the model has not seen. Part sizes are rounded from
        the cumulative fractions, so they always add up to ``n_documents``; inside each part
        the documents keep the library's order, which keeps ``sources`` easy to read.
        """
        fractions = _require_fractions(fractions)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
        order = list(range(self.n_documents))
        random.Random(seed).shuffle(order)
        bounds = [0]
        for i in range(len(fractions)):
            bounds.append(round(math.fsum(fractions[: i + 1]) * self.n_documents))
        bounds[-1] = self.n_documents
        parts = []
        for part, lo, hi in zip(("train", "val", "test"), bounds[:-1], bounds[1:], strict=True):
            parts.append(self.subset(sorted(order[lo:hi]), f"{self.name}/{part}"))
        return tuple(parts)

    def subset(self, indices: Sequence[int], name: str | None = None) -> Corpus:
        """The documents at ``indices`` (in that order) with their sources, as a new corpus
        named ``name`` (this one's name when None), read from the same Python."""
        return Corpus(
            name=self.name if name is None else name,
            documents=[self.documents[i] for i in indices],
            sources=[self.sources[i] for i in indices],
            python_version=self.python_version,
        )

    def __repr__(self) -> str:  # the default repr would print megabytes into the notebook
        return (
            f"Corpus(name={self.name!r}, n_documents={self.n_documents}, "
            f"n_bytes={self.n_bytes}, python_version={self.python_version!r})"
        )


def docstring_corpus(max_bytes: int | None = None) -> Corpus:
    """English prose: the docstrings of the running Python's standard library.

    One document per module, class or function docstring, cleaned with ``inspect.cleandoc``
    (common indentation removed) and without spaces at line ends. Docstrings shorter than 40 characters are dropped, and so are
    exact duplicates (the first one in library order wins: overridden methods often repeat
    their parent's docstring, and duplicates would leak between train and validation).

    max_bytes: keep only the longest prefix of whole documents whose ``n_bytes`` fits, for
        small runs (CI, smoke tests); files after the prefix are not even parsed. ``None``
        keeps everything.
    """

    def documents():
        seen = set()
        for file in _stdlib_files():
            for qualname, doc in file.docstrings:
                if len(doc) >= MIN_DOCSTRING_CHARS and doc not in seen:
                    seen.add(doc)
                    yield doc, f"{file.path}:{qualname}"

    return _collect("stdlib-docstrings", documents(), _require_max_bytes(max_bytes))


def code_corpus(max_bytes: int | None = None) -> Corpus:
    """Source code: the standard library's ``.py`` files, one document per file.

    The same files as ``docstring_corpus`` (same walk, same skips), decoded as UTF-8; empty
    files (some ``__init__.py``) are left out.

    max_bytes: keep only the longest prefix of whole files whose ``n_bytes`` fits.
    """
    documents = ((f.text, f.path) for f in _stdlib_files() if f.text.strip())
    return _collect("stdlib-code", documents, _require_max_bytes(max_bytes))


REFERENCE_FILE = "pydoc_data/topics.py"  # the Language Reference's text, for help("topics")


def reference_corpus() -> Corpus:
    """Curated prose: the Python Language Reference's topics, one document per topic.

    ``help("assert")`` prints these texts; the standard library keeps them as one dict literal
    in ``pydoc_data/topics.py`` (about 80 topics, 0.47 MB on Python 3.11), read here with
    ``ast.literal_eval``, never imported. Each text is cleaned like a docstring. The file is
    generated from the documentation by Sphinx, so it is not a docstring and never appears in
    ``docstring_corpus()``; a few topics do repeat docstrings (the ``pdb`` commands).

    Raises FileNotFoundError when this Python was installed without ``pydoc_data``.
    """
    stdlib = sysconfig.get_paths()["stdlib"]
    path = os.path.join(stdlib, *REFERENCE_FILE.split("/"))
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=REFERENCE_FILE)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"reference_corpus: this Python has no {REFERENCE_FILE} (some distributions ship "
            "the pydoc topics in a separate package); install it or use another reference"
        ) from None
    topics = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "topics" for t in node.targets)
    )
    names = sorted(name for name, text in topics.items() if text.strip())
    return Corpus(
        "pydoc-topics",
        [_clean(topics[name]) for name in names],
        [f"{REFERENCE_FILE}:{name}" for name in names],
    )


@dataclass(frozen=True)
class _SourceFile:
    path: str  # relative to the standard library, with "/" on every OS
    text: str
    docstrings: tuple[tuple[str, str], ...]  # (qualified name, cleaned docstring)


def _stdlib_files() -> Iterator[_SourceFile]:
    """Every parseable ``.py`` file of the standard library, in sorted path order, lazily."""
    stdlib = sysconfig.get_paths()["stdlib"]
    for path in _stdlib_paths(stdlib):
        file = _read_source(stdlib, path)
        if file is not None:
            yield file


@functools.cache
def _stdlib_paths(stdlib: str) -> tuple[str, ...]:
    paths = []
    for dirpath, dirnames, filenames in os.walk(stdlib):
        dirnames[:] = [
            d for d in dirnames if d not in _SKIP_DIRS and not d.startswith(_SKIP_PREFIXES)
        ]
        for name in filenames:
            if name.endswith(".py") and not name.startswith(_SKIP_PREFIXES):
                paths.append(
                    os.path.relpath(os.path.join(dirpath, name), stdlib).replace(os.sep, "/")
                )
    return tuple(sorted(paths))


@functools.cache  # parsing is the slow part: about 3 ms per file
def _read_source(stdlib: str, path: str) -> _SourceFile | None:
    """One file's text and docstrings, or None when it is not UTF-8 or does not parse."""
    try:
        with open(os.path.join(stdlib, path), encoding="utf-8") as f:
            text = f.read()
        with warnings.catch_warnings():  # old files have invalid escapes: not our problem
            warnings.simplefilter("ignore")
            tree = ast.parse(text, filename=path)
    except (UnicodeDecodeError, SyntaxError, ValueError):
        return None
    return _SourceFile(path, text, tuple(_docstrings(tree)))


def _docstrings(tree: ast.Module) -> Iterator[tuple[str, str]]:
    """(qualified name, docstring) for the module and each class and function, in source order.

    Qualified names follow Python's ``__qualname__``: ``Outer.method``, ``func.<locals>.inner``;
    the module's own docstring is named ``<module>``.
    """

    def visit(node: ast.AST, prefix: str):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                qualname = prefix + child.name
                doc = ast.get_docstring(child, clean=False)
                if doc is not None:
                    yield qualname, _clean(doc)
                inner = "." if isinstance(child, ast.ClassDef) else ".<locals>."
                yield from visit(child, qualname + inner)
            else:
                yield from visit(child, prefix)

    doc = ast.get_docstring(tree, clean=False)
    if doc is not None:
        yield "<module>", _clean(doc)
    yield from visit(tree, "")


def _clean(doc: str) -> str:
    """``inspect.cleandoc``, then spaces at line ends removed (3.11's cleandoc keeps them)."""
    return "\n".join(line.rstrip() for line in inspect.cleandoc(doc).splitlines()).strip()


def _require_max_bytes(max_bytes):
    if max_bytes is None:
        return None
    if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 1:
        raise ValueError(f"max_bytes must be a positive int or None, got {max_bytes!r}")
    return max_bytes


def _collect(name: str, pairs: Iterable[tuple[str, str]], max_bytes: int | None) -> Corpus:
    """A Corpus of the (document, source) pairs: all, or the longest prefix within max_bytes."""
    documents, sources, size = [], [], 0
    for document, source in pairs:
        if max_bytes is not None:
            size += len(document.encode("utf-8")) + (len(SEPARATOR) if documents else 0)
            if size > max_bytes:
                break  # stop here, so the files after the prefix are never parsed
        documents.append(document)
        sources.append(source)
    return Corpus(name, documents, sources)


def _require_fractions(fractions) -> tuple[float, float, float]:
    try:
        values = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        raise TypeError(
            f"fractions must be three numbers (train, val, test), got {fractions!r}"
        ) from None
    if len(values) != 3:
        raise ValueError(
            f"fractions must be three numbers (train, val, test), got {len(values)}: {fractions!r}"
        )
    if any(not math.isfinite(v) or v < 0 for v in values):
        raise ValueError(f"fractions must be non-negative, got {fractions!r}")
    if abs(math.fsum(values) - 1.0) > 1e-6:
        raise ValueError(f"fractions must sum to 1, got {fractions!r} (sum {math.fsum(values):g})")
    return values
