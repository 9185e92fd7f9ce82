"""Data for the course: two text corpora read from Python itself, and verifiable tasks.

Corpora. Every machine that runs the course has a Python standard library, so it is our offline
text source (no downloads, no licences to check beyond the PSF's):

- ``docstring_corpus()``: English prose, one document per docstring (module, class, function)
  of the standard library's ``.py`` files. Chapter 03 trains a small GPT on it.
- ``code_corpus()``: source code, one document per ``.py`` file. Chapter 02 compares tokens
  per byte on prose and code with it.

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

Verifiable tasks. ``make_tasks()`` draws small instruction tasks ("What is 37 + 58? Answer with
the number only.") whose answers a program can check. Chapter 04 fine-tunes on them (SFT) and
uses ``Task.check`` as the reward of GRPO; chapter 09 scores models with it. Later chapters add
their own kinds with ``register_task_kind``.

Only the standard library is imported here, so ``import llmlab.data`` is cheap.
"""

from __future__ import annotations

import ast
import functools
import inspect
import math
import os
import random
import re
import sys
import sysconfig
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

__all__ = [
    "Corpus",
    "docstring_corpus",
    "code_corpus",
    "Task",
    "make_tasks",
    "register_task_kind",
    "task_kinds",
    "BUILTIN_TASK_KINDS",
    "MAX_DIFFICULTY",
    "check_exact",
    "check_number",
    "check_numbers",
    "check_word",
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
        fractions = _check_fractions(fractions)
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
            picked = sorted(order[lo:hi])
            parts.append(
                Corpus(
                    name=f"{self.name}/{part}",
                    documents=[self.documents[i] for i in picked],
                    sources=[self.sources[i] for i in picked],
                    python_version=self.python_version,
                )
            )
        return tuple(parts)

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

    return _collect("stdlib-docstrings", documents(), _check_max_bytes(max_bytes))


def code_corpus(max_bytes: int | None = None) -> Corpus:
    """Source code: the standard library's ``.py`` files, one document per file.

    The same files as ``docstring_corpus`` (same walk, same skips), decoded as UTF-8; empty
    files (some ``__init__.py``) are left out.

    max_bytes: keep only the longest prefix of whole files whose ``n_bytes`` fits.
    """
    documents = ((f.text, f.path) for f in _stdlib_files() if f.text.strip())
    return _collect("stdlib-code", documents, _check_max_bytes(max_bytes))


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


def _check_max_bytes(max_bytes):
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


def _check_fractions(fractions) -> tuple[float, float, float]:
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


# -----------------------------------------------------------------------------
# Verifiable tasks

MAX_DIFFICULTY = 5  # generators grow numbers and words with difficulty; 5 is already hard


def check_exact(response: str, answer: str) -> bool:
    """The whole response equals the answer, ignoring case and runs of whitespace."""
    return _normalise(response) == _normalise(answer)


def check_number(response: str, answer: str) -> bool:
    """The response's final number equals ``answer``.

    The final number is the first one after the last "answer is" / "Answer:" / "####" marker
    when there is one, else the last number in the text (the GSM8K convention). "1,234" reads
    as 1234 and "95.0" as 95.
    """
    span, marked = _answer_span(response)
    numbers = _NUMBER.findall(span)
    if not numbers:
        return False
    found = numbers[0] if marked else numbers[-1]
    return float(found.replace(",", "")) == float(answer)


def check_numbers(response: str, answer: str) -> bool:
    """The response's final list of numbers equals ``answer``'s ("7, 19, 42"), in order.

    With k numbers expected: the first k after an answer marker, else the last k in the text.
    """
    expected = [int(x) for x in _INTEGER.findall(answer)]
    span, marked = _answer_span(response)
    found = [int(x) for x in _INTEGER.findall(span)]
    found = found[: len(expected)] if marked else found[len(found) - len(expected) :]
    return found == expected


def check_word(response: str, answer: str, case_sensitive: bool = False) -> bool:
    """The response's final word equals ``answer``: first word after a marker, else the last.

    Quotes and punctuation around the word are ignored ("The reversed word is 'olleh'.").
    """
    span, marked = _answer_span(response)
    words = _WORD.findall(span)
    if not words:
        return False
    found = words[0] if marked else words[-1]
    return found == answer if case_sensitive else found.casefold() == answer.casefold()


_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")  # "1,234" is one number ...
_INTEGER = re.compile(r"-?\d+")  # ... but in a list "7,190" is two
_WORD = re.compile(r"[^\W\d_]+")  # letters only
_MARKER = re.compile(r"answer\s*(?:is\b|:|=)|####", re.IGNORECASE)


def _answer_span(response: str) -> tuple[str, bool]:
    """The text after the last answer marker (and True), or the whole response (and False)."""
    if not isinstance(response, str):
        raise TypeError(f"response must be a str, got {type(response).__name__}")
    markers = list(_MARKER.finditer(response))
    if markers:
        return response[markers[-1].end() :], True
    return response, False


def _normalise(text: str) -> str:
    if not isinstance(text, str):
        raise TypeError(f"response must be a str, got {type(text).__name__}")
    return " ".join(text.split()).casefold()


@dataclass(frozen=True)
class Task:
    """One instruction with an answer that a program can check.

    kind: the generator's registered name ("addition").
    prompt: the instruction a model sees ("What is 37 + 58? Answer with the number only.").
    answer: the canonical reference answer ("95"); ``to_chat`` uses it as the target.
    checker: ``checker(response, answer) -> bool``; ``check_exact`` unless the kind needs a
        more lenient reading of free-form responses (``check_number``, ``check_word`` ...).
    """

    kind: str
    prompt: str
    answer: str
    checker: Callable[[str, str], bool] = field(default=check_exact, compare=False, repr=False)

    def __post_init__(self):
        for name in ("kind", "prompt", "answer"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise TypeError(f"Task.{name} must be a str, got {type(value).__name__} {value!r}")
        if not callable(self.checker):
            raise TypeError(f"Task.checker must be callable, got {self.checker!r}")

    def check(self, response: str) -> bool:
        """Whether a free-form model response contains the right answer (see ``checker``)."""
        if not isinstance(response, str):
            raise TypeError(f"response must be a str, got {type(response).__name__}")
        return bool(self.checker(response, self.answer))

    def to_chat(self) -> list[dict[str, str]]:
        """The task as a two-turn conversation, the input format of SFT chat templates."""
        return [
            {"role": "user", "content": self.prompt},
            {"role": "assistant", "content": self.answer},
        ]


TaskGenerator = Callable[[random.Random, int], Task]
_TASK_KINDS: dict[str, TaskGenerator] = {}


def register_task_kind(name: str, generator_fn: TaskGenerator, *, replace: bool = False) -> None:
    """Make ``name`` a task kind: ``generator_fn(rng, difficulty) -> Task`` draws one task.

    The generator must draw all its randomness from ``rng`` (a ``random.Random``) so that
    ``make_tasks`` stays reproducible, and return a Task whose ``kind`` is ``name``.
    Registering a taken name raises ValueError; ``replace=True`` overwrites a kind that a
    chapter registered (handy when a notebook cell runs twice), never a built-in one.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty str, got {name!r}")
    if not callable(generator_fn):
        raise TypeError(
            f"generator_fn must be callable(rng, difficulty) -> Task, got {generator_fn!r}"
        )
    if name in _BUILTIN_GENERATORS and name in _TASK_KINDS:
        raise ValueError(
            f"task kind {name!r} is built in and cannot be replaced; pick another name"
        )
    if name in _TASK_KINDS and not replace:
        raise ValueError(
            f"task kind {name!r} is already registered; pick another name or pass replace=True"
        )
    _TASK_KINDS[name] = generator_fn


def task_kinds() -> list[str]:
    """Every registered task kind: the built-in ones first, then in registration order."""
    return list(_TASK_KINDS)


def make_tasks(
    n: int, seed: int = 0, kinds: Sequence[str] | str | None = None, difficulty: int = 1
) -> list[Task]:
    """``n`` tasks drawn from a ``random.Random(seed)``, kinds mixed evenly in a seeded order.

    kinds: names from ``task_kinds()``; ``None`` means ``BUILTIN_TASK_KINDS`` (not every
        registered kind, so that the default set does not change when a chapter registers one).
    difficulty: 1 (easy) to ``MAX_DIFFICULTY``; larger numbers, longer words and lists.

    The same arguments always give the same tasks; the global ``random`` state is not touched.
    Every kind appears ``n // len(kinds)`` or one more times.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
    if (
        not isinstance(difficulty, int)
        or isinstance(difficulty, bool)
        or not 1 <= difficulty <= MAX_DIFFICULTY
    ):
        raise ValueError(
            f"difficulty must be an int from 1 to {MAX_DIFFICULTY}, got {difficulty!r}"
        )
    if kinds is None:
        kinds = BUILTIN_TASK_KINDS
    elif isinstance(kinds, str):
        kinds = [kinds]  # one kind
    kinds = list(kinds)
    if not kinds:
        raise ValueError(f"kinds must name at least one kind; registered kinds: {task_kinds()}")
    unknown = [k for k in kinds if k not in _TASK_KINDS]
    if unknown:
        raise ValueError(
            f"kinds has unknown task kinds {unknown}; registered kinds: {task_kinds()}"
        )
    if len(set(kinds)) != len(kinds):
        raise ValueError(f"kinds must not repeat a kind, got {kinds}")

    rng = random.Random(seed)
    rng.shuffle(kinds)  # which kinds get the extra task when len(kinds) does not divide n
    schedule = [kinds[i % len(kinds)] for i in range(n)]
    rng.shuffle(schedule)
    tasks = []
    for kind in schedule:
        task = _TASK_KINDS[kind](rng, difficulty)
        if not isinstance(task, Task) or task.kind != kind:
            raise TypeError(
                f"the generator of task kind {kind!r} must return a Task with kind={kind!r}, got {task!r}"
            )
        tasks.append(task)
    return tasks


# Built-in kinds. Each grows with difficulty d: numbers of about d + 1 digits, longer lists and
# words. Words are pronounceable pseudo-words ("bamote"): no model has memorised their reversal,
# there is an endless supply, and their length is ours to choose.

_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


def _pseudo_word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(syllables))


def _digits(rng: random.Random, n_digits: int) -> int:
    return rng.randint(10 ** (n_digits - 1), 10**n_digits - 1)


def _addition(rng: random.Random, difficulty: int) -> Task:
    a, b = _digits(rng, difficulty + 1), _digits(rng, difficulty + 1)
    return Task(
        "addition", f"What is {a} + {b}? Answer with the number only.", str(a + b), check_number
    )


def _multiplication(rng: random.Random, difficulty: int) -> Task:
    a = rng.randint(max(2, 10 ** (difficulty - 1)), 10**difficulty - 1)  # never "1 * 37"
    b = _digits(rng, difficulty + 1)
    return Task(
        "multiplication",
        f"What is {a} * {b}? Answer with the number only.",
        str(a * b),
        check_number,
    )


def _reverse_word(rng: random.Random, difficulty: int) -> Task:
    word = _pseudo_word(rng, rng.randint(difficulty + 1, difficulty + 2))
    prompt = f"Reverse the letters of the word '{word}'. Answer with the reversed word only."
    return Task("reverse_word", prompt, word[::-1], check_word)


def _uppercase_word(rng: random.Random, difficulty: int) -> Task:
    word = _pseudo_word(rng, rng.randint(difficulty + 1, difficulty + 2))
    prompt = f"Write the word '{word}' in capital letters. Answer with the word only."
    return Task(
        "uppercase_word", prompt, word.upper(), functools.partial(check_word, case_sensitive=True)
    )


def _sort_numbers(rng: random.Random, difficulty: int) -> Task:
    numbers = rng.sample(range(10 ** (difficulty + 1)), 2 + 2 * difficulty)
    prompt = (
        f"Sort these numbers from smallest to largest: {', '.join(map(str, numbers))}. "
        "Answer with the numbers separated by commas."
    )
    return Task("sort_numbers", prompt, ", ".join(map(str, sorted(numbers))), check_numbers)


def _count_letter(rng: random.Random, difficulty: int) -> Task:
    word = _pseudo_word(rng, rng.randint(difficulty + 2, difficulty + 3))
    absent = sorted(set(_CONSONANTS + _VOWELS) - set(word))
    # One time in five ask for a letter that is not there: "0" must be a possible answer.
    letter = rng.choice(absent) if absent and rng.random() < 0.2 else rng.choice(sorted(set(word)))
    prompt = (
        f"How many times does the letter '{letter}' appear in the word '{word}'? "
        "Answer with the number only."
    )
    return Task("count_letter", prompt, str(word.count(letter)), check_number)


def _next_in_sequence(rng: random.Random, difficulty: int) -> Task:
    start = rng.randint(1, 10**difficulty)
    step = rng.randint(2, 3 + 3 * difficulty)
    if difficulty > 1 and rng.random() < 0.5:
        step = -step  # decreasing sequences, possibly below zero
    terms = [start + i * step for i in range(4)]
    prompt = (
        f"What number comes next in the sequence {', '.join(map(str, terms))}? "
        "Answer with the number only."
    )
    return Task("next_in_sequence", prompt, str(start + 4 * step), check_number)


_BUILTIN_GENERATORS: dict[str, TaskGenerator] = {
    "addition": _addition,
    "multiplication": _multiplication,
    "reverse_word": _reverse_word,
    "uppercase_word": _uppercase_word,
    "sort_numbers": _sort_numbers,
    "count_letter": _count_letter,
    "next_in_sequence": _next_in_sequence,
}
BUILTIN_TASK_KINDS: tuple[str, ...] = tuple(_BUILTIN_GENERATORS)
for _name, _fn in _BUILTIN_GENERATORS.items():
    register_task_kind(_name, _fn)
del _name, _fn
