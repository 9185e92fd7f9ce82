"""Verifiable tasks: ``make_tasks()`` draws small instruction tasks ("What is 37 + 58? Answer with
the number only.") whose answers a program can check. Chapter 04 fine-tunes on them (SFT) and
uses ``Task.check`` as the reward of GRPO; chapter 09 scores models with it. Later chapters add
their own kinds with ``register_task_kind``.

Each task carries its grader: ``grade_exact``, ``grade_number``, ``grade_numbers`` or
``grade_word`` (named ``grade_``, not ``check_``: the labs' checks are something else).
Only the standard library is imported here.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "Task",
    "make_tasks",
    "register_task_kind",
    "task_kinds",
    "BUILTIN_TASK_KINDS",
    "EASY_TASK_KINDS",
    "MAX_DIFFICULTY",
    "ANSWER_MARKER",
    "grade_exact",
    "grade_number",
    "grade_numbers",
    "grade_word",
]

MAX_DIFFICULTY = 5  # generators grow numbers and words with difficulty; 5 is already hard


def grade_exact(response: str, answer: str) -> bool:
    """The whole response equals the answer, ignoring case and runs of whitespace."""
    return _normalise(response) == _normalise(answer)


def grade_number(response: str, answer: str) -> bool:
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


def grade_numbers(response: str, answer: str) -> bool:
    """The response's final list of numbers equals ``answer``'s ("7, 19, 42"), in order.

    With k numbers expected: the first k after an answer marker, else the last k in the text.
    """
    expected = [int(x) for x in _INTEGER.findall(answer)]
    span, marked = _answer_span(response)
    found = [int(x) for x in _INTEGER.findall(span)]
    found = found[: len(expected)] if marked else found[len(found) - len(expected) :]
    return found == expected


def grade_word(response: str, answer: str, case_sensitive: bool = False) -> bool:
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
#: Where a free-form response announces its answer: "The answer is 95", "Answer: 95", "#### 95".
ANSWER_MARKER = re.compile(r"answer\s*(?:is\b|:|=)|####", re.IGNORECASE)


def _answer_span(response: str) -> tuple[str, bool]:
    """The text after the last answer marker (and True), or the whole response (and False)."""
    if not isinstance(response, str):
        raise TypeError(f"response must be a str, got {type(response).__name__}")
    markers = list(ANSWER_MARKER.finditer(response))
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
    checker: ``checker(response, answer) -> bool``; ``grade_exact`` unless the kind needs a
        more lenient reading of free-form responses (``grade_number``, ``grade_word`` ...).
    """

    kind: str
    prompt: str
    answer: str
    checker: Callable[[str, str], bool] = field(default=grade_exact, compare=False, repr=False)

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
    if name in _LIBRARY_KINDS and name in _TASK_KINDS:
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
        "addition", f"What is {a} + {b}? Answer with the number only.", str(a + b), grade_number
    )


def _multiplication(rng: random.Random, difficulty: int) -> Task:
    a = rng.randint(max(2, 10 ** (difficulty - 1)), 10**difficulty - 1)  # never "1 * 37"
    b = _digits(rng, difficulty + 1)
    return Task(
        "multiplication",
        f"What is {a} * {b}? Answer with the number only.",
        str(a * b),
        grade_number,
    )


def _reverse_word(rng: random.Random, difficulty: int) -> Task:
    word = _pseudo_word(rng, rng.randint(difficulty + 1, difficulty + 2))
    prompt = f"Reverse the letters of the word '{word}'. Answer with the reversed word only."
    return Task("reverse_word", prompt, word[::-1], grade_word)


def _uppercase_word(rng: random.Random, difficulty: int) -> Task:
    word = _pseudo_word(rng, rng.randint(difficulty + 1, difficulty + 2))
    prompt = f"Write the word '{word}' in capital letters. Answer with the word only."
    return Task(
        "uppercase_word", prompt, word.upper(), functools.partial(grade_word, case_sensitive=True)
    )


def _sort_numbers(rng: random.Random, difficulty: int) -> Task:
    numbers = rng.sample(range(10 ** (difficulty + 1)), 2 + 2 * difficulty)
    prompt = (
        f"Sort these numbers from smallest to largest: {', '.join(map(str, numbers))}. "
        "Answer with the numbers separated by commas."
    )
    return Task("sort_numbers", prompt, ", ".join(map(str, sorted(numbers))), grade_numbers)


def _count_letter(rng: random.Random, difficulty: int) -> Task:
    word = _pseudo_word(rng, rng.randint(difficulty + 2, difficulty + 3))
    absent = sorted(set(_CONSONANTS + _VOWELS) - set(word))
    # One time in five ask for a letter that is not there: "0" must be a possible answer.
    letter = rng.choice(absent) if absent and rng.random() < 0.2 else rng.choice(sorted(set(word)))
    prompt = (
        f"How many times does the letter '{letter}' appear in the word '{word}'? "
        "Answer with the number only."
    )
    return Task("count_letter", prompt, str(word.count(letter)), grade_number)


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
    return Task("next_in_sequence", prompt, str(start + 4 * step), grade_number)


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


# Easy kinds (chapter 04): a lookup, a comparison, a letter. A 135M model answers them only now
# and then out of the box and can learn them within a few hundred SFT steps, and they share the
# built-in kinds' answer formats, so they also serve as held-out kinds never trained on.


def _larger_number(rng: random.Random, difficulty: int) -> Task:
    a, b = rng.sample(range(10**difficulty, 10 ** (difficulty + 1)), 2)
    prompt = f"Which number is larger, {a} or {b}? Answer with the number only."
    return Task("larger_number", prompt, str(max(a, b)), grade_number)


def _list_item(rng: random.Random, difficulty: int) -> Task:
    words = [_pseudo_word(rng, 2) for _ in range(3 + difficulty)]
    k = rng.randint(1, len(words))
    listed = ", ".join(f"'{w}'" for w in words)  # quoted, as every kind writes its inputs
    prompt = f"What is item number {k} in the list {listed}? Answer with the word only."
    return Task("list_item", prompt, words[k - 1], grade_word)


def _first_letter(rng: random.Random, difficulty: int) -> Task:
    word = _pseudo_word(rng, rng.randint(difficulty + 1, difficulty + 2))
    prompt = f"What is the first letter of the word '{word}'? Answer with the letter only."
    return Task("first_letter", prompt, word[0], grade_word)


_EASY_GENERATORS: dict[str, TaskGenerator] = {
    "larger_number": _larger_number,
    "list_item": _list_item,
    "first_letter": _first_letter,
}
#: Registered after the built-in kinds and, like them, never replaced; not in ``make_tasks``'
#: default set (``BUILTIN_TASK_KINDS``), whose tasks stay what they were.
EASY_TASK_KINDS: tuple[str, ...] = tuple(_EASY_GENERATORS)
_LIBRARY_KINDS = frozenset(BUILTIN_TASK_KINDS + EASY_TASK_KINDS)
for _name, _fn in {**_BUILTIN_GENERATORS, **_EASY_GENERATORS}.items():
    register_task_kind(_name, _fn)
del _name, _fn
