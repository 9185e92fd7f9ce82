"""A labelled text task that ships with Python: which package does this docstring come from?

Chapter 04 fine-tunes SmolLM2 as a classifier, and needs a real labelled task that every machine
has offline. The standard library supplies one: its docstrings (``docstring_corpus()``),
labelled by the top-level package whose source holds them. ``docstring_packages()`` builds it:

1. every docstring of a file under one of ``packages`` (``asyncio/tasks.py`` -> ``asyncio``);
   single-file modules (``inspect.py``) are never a class;
2. whitespace collapsed to single spaces, then cut to at most ``max_chars`` characters at a word
   boundary (short inputs keep fine-tuning a 135M model affordable on a CPU);
3. exact and near-duplicate texts grouped (word 3-gram Jaccard >= ``NEAR_DUPLICATE_JACCARD``,
   on the *cut* texts: two docstrings that differ only after ``max_chars`` become identical);
   a group whose members all carry one label keeps its first member, a group that spans two
   packages (the same text in ``email`` and ``xml``) is dropped: its label is ambiguous;
4. ``per_class`` texts drawn per package with a seeded shuffle (balanced by sampling), each
   class split into train/validation/test by ``fractions`` (stratified, so every split is
   balanced too), each split shuffled.

Because step 3 runs before any split, no text in one split has a near-duplicate in another.
The dataset is a pure function of its arguments and the Python version (the docstrings change
between versions): a later notebook rebuilds exactly the same splits from the same call.

    >>> data = docstring_packages(seed=0)
    >>> print(data.describe())
    >>> data.train.texts[0], data.label_names[data.train.labels[0]]

Only the standard library is imported here.
"""

from __future__ import annotations

import ast
import math
import random
import sys
import textwrap
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from llmlab.data.corpora import code_corpus, docstring_corpus
from llmlab.data.dedup import near_duplicate_pairs

__all__ = [
    "PACKAGES",
    "NEAR_DUPLICATE_JACCARD",
    "LabelledTexts",
    "ClassificationDataset",
    "docstring_packages",
    "function_packages",
    "package_of",
    "other_docstrings",
]

# Six packages with >= 130 distinct docstrings each on Python 3.11, in three confusable pairs of
# themes: concurrency (asyncio, multiprocessing), text formats (email, xml), tooling (logging,
# unittest).
PACKAGES = ("asyncio", "email", "logging", "multiprocessing", "unittest", "xml")
NEAR_DUPLICATE_JACCARD = 0.5  # on word 3-grams: "Return the value of x." vs "... of y." differ
_SHINGLE_WORDS = 3


@dataclass(frozen=True)
class LabelledTexts:
    """One split: ``texts[i]`` has label ``labels[i]`` (an index into the label names) and came
    from ``sources[i]`` (``"email/message.py:Message.get"``)."""

    texts: tuple[str, ...]
    labels: tuple[int, ...]
    sources: tuple[str, ...] = field(repr=False)

    def __post_init__(self):
        if not len(self.texts) == len(self.labels) == len(self.sources):
            raise ValueError(
                f"texts, labels and sources: expected equal lengths, got {len(self.texts)}, "
                f"{len(self.labels)} and {len(self.sources)}"
            )

    def __len__(self) -> int:
        return len(self.texts)

    def counts(self, n_classes: int) -> list[int]:
        """How many texts carry each label ``0 .. n_classes - 1``."""
        counter = Counter(self.labels)
        return [counter[c] for c in range(n_classes)]


@dataclass(frozen=True)
class ClassificationDataset:
    """A labelled text task in three splits, with the arguments that rebuild it."""

    name: str
    label_names: tuple[str, ...]
    train: LabelledTexts
    val: LabelledTexts
    test: LabelledTexts
    settings: dict = field(default_factory=dict)  # the builder's arguments: rebuilds the splits
    python_version: str = field(default_factory=lambda: "{}.{}.{}".format(*sys.version_info[:3]))

    @property
    def n_classes(self) -> int:
        return len(self.label_names)

    @property
    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}

    def describe(self) -> str:
        """A few lines for a notebook: sizes, class counts per split, text lengths."""
        splits = {"train": self.train, "val": self.val, "test": self.test}
        width = max(len(n) for n in self.label_names)
        lines = [
            f"{self.name}: {self.n_classes} classes, "
            + ", ".join(f"{k} {v}" for k, v in self.sizes.items())
            + f" (Python {self.python_version})",
            f"{'class':{width}s} " + " ".join(f"{k:>6s}" for k in splits),
        ]
        for c, label in enumerate(self.label_names):
            lines.append(
                f"{label:{width}s} "
                + " ".join(f"{s.counts(self.n_classes)[c]:6d}" for s in splits.values())
            )
        chars = [len(t) for s in splits.values() for t in s.texts]
        lines.append(
            f"characters per text: mean {sum(chars) / len(chars):.0f}, min {min(chars)}, max {max(chars)}"
        )
        return "\n".join(lines)


def package_of(source: str) -> str | None:
    """The top-level package of a docstring's source (``"email/message.py:Message"`` ->
    ``"email"``), or None for a single-file module (``"inspect.py:getdoc"``)."""
    path = source.split(":", 1)[0]
    return path.split("/", 1)[0] if "/" in path else None


def docstring_packages(
    packages: Sequence[str] = PACKAGES,
    per_class: int = 130,
    fractions: Sequence[float] = (0.6, 0.1, 0.3),
    max_chars: int = 160,
    seed: int = 0,
) -> ClassificationDataset:
    """Docstrings of the standard library labelled by their top-level package (module docstring).

    packages: two or more distinct top-level packages of the standard library (the classes, in
        this order: label ``i`` is ``packages[i]``).
    per_class: texts drawn per class (the same for all: balanced); ValueError when a package has
        fewer distinct texts after deduplication.
    fractions: (train, val, test) shares of each class; split sizes are rounded from the
        cumulative shares, per class.
    max_chars: texts longer than this are cut at the last space before it (or at it, for one
        long word).
    seed: the sampling and shuffling seed; the same arguments give the same dataset.
    """
    packages, shares = _require_builder_arguments(
        packages, per_class, fractions, max_chars, seed, min_chars=20, unit="a sentence"
    )

    corpus = docstring_corpus()
    label_of = {p: i for i, p in enumerate(packages)}
    texts, labels, sources = [], [], []
    for doc, source in zip(corpus.documents, corpus.sources, strict=True):
        package = package_of(source)
        if package in label_of:
            texts.append(_cut(" ".join(doc.split()), max_chars))
            labels.append(label_of[package])
            sources.append(source)
    found = Counter(package_of(s) for s in sources)
    missing = [p for p in packages if found[p] == 0]
    if missing:
        raise ValueError(f"packages: {missing} have no docstrings in this standard library")

    keep = _one_per_near_duplicate_group(texts, labels)
    rng = random.Random(seed)
    splits = {"train": [], "val": [], "test": []}
    for label, package in enumerate(packages):
        members = [i for i in keep if labels[i] == label]
        if len(members) < per_class:
            raise ValueError(
                f"per_class: expected at most {len(members)} (the distinct texts of {package!r} "
                f"after deduplication), got {per_class}"
            )
        rng.shuffle(members)
        members = members[:per_class]
        bounds = [0] + [round(math.fsum(shares[: i + 1]) * per_class) for i in range(3)]
        for part, lo, hi in zip(splits, bounds[:-1], bounds[1:], strict=True):
            splits[part] += members[lo:hi]
    settings = dict(per_class=per_class, fractions=list(shares), max_chars=max_chars, seed=seed)
    return _assemble(
        "stdlib-docstring-packages", packages, splits, texts, labels, sources, rng, settings
    )


def function_packages(
    packages: Sequence[str] = PACKAGES,
    per_class: int = 100,
    fractions: Sequence[float] = (0.6, 0.1, 0.3),
    max_chars: int = 240,
    seed: int = 0,
) -> ClassificationDataset:
    """The same question asked of *code*: which package does this function come from?

    Chapter 04's domain task. Every function and method (``def`` and ``async def``, nested ones
    too) of the ``.py`` files under ``packages``, as its source without decorators and without
    its docstring (so the docstring task's text is not in it), blank lines removed, dedented
    (a method reads like a function), then cut to the whole lines that fit in ``max_chars``.
    Functions with fewer than two lines left (``def f(self): pass``) are skipped.

    The splits are drawn **by file**: each package's files are shuffled (``seed``) and given to
    test, then validation, until each holds its share of the package's functions (at least one
    file each for test); the rest train. A test function's file is therefore never one a
    training function came from, and :func:`llmlab.posttrain.domain.domain_corpora` can keep
    every test file out of continued pretraining (``sources`` name the files). Near-duplicates
    are grouped as in :func:`docstring_packages` (a group spanning packages is dropped; one of
    the others is kept, in its file's split). Then ``per_class`` functions are drawn per class,
    split by ``fractions`` from the functions of each side.

    Raises ValueError when a package has too few functions on one side for its share.
    """
    packages, shares = _require_builder_arguments(
        packages, per_class, fractions, max_chars, seed, min_chars=40, unit="a signature and a line"
    )

    code = code_corpus()
    label_of = {p: i for i, p in enumerate(packages)}
    files: dict[str, list[tuple[str, str]]] = {}  # path -> [(text, source)]
    for text, path in zip(code.documents, code.sources, strict=True):
        if package_of(path) in label_of:
            files[path] = [(t, f"{path}:{q}") for q, t in _functions(text, max_chars)]
    sizes = [round(math.fsum(shares[: i + 1]) * per_class) for i in range(3)]
    wanted = dict(zip(_PARTS, [sizes[0], sizes[1] - sizes[0], sizes[2] - sizes[1]], strict=True))
    rng = random.Random(seed)
    side_of: dict[str, str] = {}
    for package in packages:
        paths = sorted(p for p in files if package_of(p) == package and files[p])
        if not paths:
            raise ValueError(f"packages: {package!r} has no functions in this standard library")
        side_of.update(_split_files(paths, {p: len(files[p]) for p in paths}, shares, wanted, rng))

    texts, labels, sources, parts = [], [], [], []
    for path in sorted(files):
        for text, source in files[path]:
            texts.append(text)
            labels.append(label_of[package_of(path)])
            sources.append(source)
            parts.append(side_of[path])
    keep = _one_per_near_duplicate_group(texts, labels)
    splits = {"train": [], "val": [], "test": []}
    for label, package in enumerate(packages):
        for part, n in wanted.items():
            members = [i for i in keep if labels[i] == label and parts[i] == part]
            if len(members) < n:
                raise ValueError(
                    f"per_class: {package!r} has {len(members)} distinct functions in its {part} "
                    f"files, fewer than the {n} that per_class={per_class} asks for"
                )
            rng.shuffle(members)
            splits[part] += members[:n]
    settings = dict(per_class=per_class, fractions=list(shares), max_chars=max_chars, seed=seed)
    return _assemble(
        "stdlib-function-packages", packages, splits, texts, labels, sources, rng, settings
    )


def _assemble(
    name, packages, splits, texts, labels, sources, rng, settings
) -> ClassificationDataset:
    """The dataset of the chosen indices: each split shuffled (``rng``), its texts, labels and
    sources gathered; ``settings`` (the builder's arguments, ``packages`` added) rebuild it."""
    parts = {}
    for part, indices in splits.items():
        rng.shuffle(indices)
        parts[part] = LabelledTexts(
            tuple(texts[i] for i in indices),
            tuple(labels[i] for i in indices),
            tuple(sources[i] for i in indices),
        )
    settings = {"packages": list(packages), **settings}
    return ClassificationDataset(name=name, label_names=packages, settings=settings, **parts)


_PARTS = ("train", "val", "test")


def _split_files(paths, counts, shares, wanted, rng, attempts: int = 100) -> dict[str, str]:
    """Each file's part: the files in a seeded order, each given to the part furthest below
    its share of the functions; the first order (of ``attempts``) whose parts each hold at
    least ``wanted[part]`` functions, else the last one tried (the caller reports the gap)."""
    total = sum(counts.values())
    for _ in range(attempts):
        order = list(paths)
        rng.shuffle(order)
        got = dict.fromkeys(_PARTS, 0)
        side = {}
        for path in order:
            part = max(_PARTS, key=lambda k: shares[_PARTS.index(k)] * total - got[k])
            side[path] = part
            got[part] += counts[path]
        if all(got[k] >= wanted[k] for k in _PARTS):
            break
    return side


def _functions(text: str, max_chars: int) -> list[tuple[str, str]]:
    """(qualified name, prepared source) of each function of a file, in source order."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return []
    lines = text.splitlines()
    found = []

    def visit(node: ast.AST, prefix: str):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                qualname = prefix + child.name
                if not isinstance(child, ast.ClassDef):
                    body = _function_source(child, lines, max_chars)
                    if body is not None:
                        found.append((qualname, body))
                inner = "." if isinstance(child, ast.ClassDef) else ".<locals>."
                visit(child, qualname + inner)
            else:
                visit(child, prefix)

    visit(tree, "")
    return found


def _function_source(node, lines: list[str], max_chars: int) -> str | None:
    """A function's lines (``def`` to its end) less its docstring and blank lines, dedented and
    cut to the whole lines within ``max_chars``; None when fewer than two lines are left."""
    skip = set()
    first = node.body[0]
    if (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        skip = set(range(first.lineno, first.end_lineno + 1))
    kept = [
        lines[n - 1]
        for n in range(node.lineno, node.end_lineno + 1)
        if n not in skip and lines[n - 1].strip()
    ]
    kept = textwrap.dedent("\n".join(kept)).splitlines()
    out, size = [], 0
    for line in kept:
        size += len(line) + (1 if out else 0)
        if size > max_chars:
            break
        out.append(line)
    return "\n".join(out) if len(out) >= 2 else None


def other_docstrings(
    packages: Sequence[str] = PACKAGES, n: int = 64, max_chars: int = 160, seed: int = 0
) -> list[str]:
    """``n`` docstrings from everywhere *but* ``packages``, prepared like the task's texts.

    General text the classifier never trains on: the language-model loss on it, before and
    after fine-tuning, measures what the model forgot. Single-file modules (``inspect.py``)
    and the other packages are drawn from, with a seeded sample; texts shorter than 40
    characters (after the cut) are skipped.
    """
    packages = set(_require_packages(packages))
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n: expected a positive int, got {n!r}")
    corpus = docstring_corpus()
    pool = sorted(
        {
            _cut(" ".join(doc.split()), max_chars)
            for doc, source in zip(corpus.documents, corpus.sources, strict=True)
            if package_of(source) not in packages
        }
    )
    pool = [t for t in pool if len(t) >= 40]
    if n > len(pool):
        raise ValueError(f"n: expected at most {len(pool)} (the docstrings available), got {n}")
    return random.Random(seed).sample(pool, n)


def _cut(text: str, max_chars: int) -> str:
    """``text`` if it fits, else its longest prefix of whole words within ``max_chars``."""
    if len(text) <= max_chars:
        return text
    head = text[: max_chars + 1]
    space = head.rfind(" ")
    return head[:space] if space > 0 else text[:max_chars]


def _one_per_near_duplicate_group(texts: list[str], labels: list[int]) -> list[int]:
    """Indices kept: the first of each group of (near-)duplicates with one label, none of a
    group with several labels. Groups are the connected components of the near-duplicate pairs
    (exact copies included: their Jaccard is 1)."""
    parent = list(range(len(texts)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    lowered = [t.lower() for t in texts]
    pairs = near_duplicate_pairs(
        lowered,
        threshold=NEAR_DUPLICATE_JACCARD,
        k=_SHINGLE_WORDS,
        verify="exact",
        lsh_threshold=0.3,
    )
    first: dict[str, int] = {}
    for i, text in enumerate(lowered):  # exact copies too, whatever LSH happened to find
        pairs.add((first.setdefault(text, i), i))
    for i, j in pairs:
        parent[max(root(i), root(j))] = min(root(i), root(j))
    groups: dict[int, list[int]] = {}
    for i in range(len(texts)):
        groups.setdefault(root(i), []).append(i)
    return sorted(
        members[0] for members in groups.values() if len({labels[i] for i in members}) == 1
    )


def _require_builder_arguments(packages, per_class, fractions, max_chars, seed, min_chars, unit):
    """The checks both dataset builders make: ``(packages, shares)``, or an error that names the
    argument (``max_chars`` must leave at least ``min_chars``, ``unit``)."""
    packages = _require_packages(packages)
    for value, name in ((per_class, "per_class"), (max_chars, "max_chars")):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    if max_chars < min_chars:
        raise ValueError(f"max_chars: expected at least {min_chars} ({unit}), got {max_chars!r}")
    shares = _require_fractions(fractions)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__} {seed!r}")
    return packages, shares


def _require_packages(packages) -> tuple[str, ...]:
    if isinstance(packages, str) or not isinstance(packages, Sequence):
        raise TypeError(f"packages: expected a sequence of package names, got {packages!r}")
    packages = tuple(packages)
    if len(packages) < 2 or not all(isinstance(p, str) and p for p in packages):
        raise ValueError(f"packages: expected two or more package names, got {packages!r}")
    if len(set(packages)) != len(packages):
        raise ValueError(f"packages: expected distinct names, got {packages!r}")
    return packages


def _require_fractions(fractions) -> tuple[float, float, float]:
    try:
        values = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        raise TypeError(
            f"fractions: expected three numbers (train, val, test), got {fractions!r}"
        ) from None
    if len(values) != 3 or any(not math.isfinite(v) or v < 0 for v in values):
        raise ValueError(
            f"fractions: expected three non-negative numbers (train, val, test), got {fractions!r}"
        )
    if abs(math.fsum(values) - 1.0) > 1e-6 or values[0] == 0 or values[2] == 0:
        raise ValueError(
            f"fractions: expected shares summing to 1 with train and test > 0, got {fractions!r}"
        )
    return values
