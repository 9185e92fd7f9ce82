"""Data augmentation by synonym replacement (seed 002, §2.1), written from scratch.

Seed 002 lists "back-translation and synonym replacement" to enlarge a data set. Synonym
replacement is the first operation of EDA (Wei & Zou 2019): pick ``n = rate * words`` words
of a text and replace each with a synonym drawn at random; the text keeps its meaning and
gains new surface forms. EDA draws synonyms from WordNet; this course runs offline, so
:data:`SYNONYMS` is a small table curated for the English of docstrings and shipped as code.

Curating is the point. Two cheap sources fail in ways a table avoids:

- *Word-vector neighbours* (the nearest words by cosine similarity) are distributional: words
  used in the same contexts. "true" and "false", "read" and "write", "encode" and "decode"
  share their contexts, so a neighbour is often an antonym. Chapter 03's data notebook
  measures how often, with :data:`ANTONYMS`.
- *Word senses and parts of speech*: "return" is a verb and a noun ("the return value"),
  "instance" is a synonym of "example" in English and a technical term in Python, "multiple"
  means "several" except in "a multiple of 8". The table lists only words whose replacement
  reads correctly in docstrings, and every inflected form explicitly (it never guesses one).

Only prose is touched: never a word inside ``code`` or `code` spans, on a doctest line
(``>>>`` or ``...``), in an identifier (``get_value``, ``os.path``) or before a call
parenthesis (``get(``).
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from dataclasses import dataclass

from llmlab.validate import require_int

__all__ = ["SYNONYMS", "ANTONYMS", "Replacement", "replaceable_words", "synonym_replace"]

# word -> replacements that read correctly wherever the word occurs in a docstring
SYNONYMS: dict[str, tuple[str, ...]] = {
    # verbs, each form listed
    "create": ("make", "build"),
    "creates": ("makes", "builds"),
    "created": ("made", "built"),
    "creating": ("making", "building"),
    "remove": ("delete",),
    "removes": ("deletes",),
    "removed": ("deleted",),
    "removing": ("deleting",),
    "delete": ("remove", "erase"),
    "deletes": ("removes", "erases"),
    "deleted": ("removed", "erased"),
    "returns": ("gives back",),
    "specified": ("given",),
    "supplied": ("given", "provided"),
    "check": ("verify",),
    "checks": ("verifies",),
    "checked": ("verified",),
    "contain": ("hold", "include"),
    "contains": ("holds", "includes"),
    "containing": ("holding", "including"),
    "convert": ("transform",),
    "converts": ("transforms",),
    "converted": ("transformed",),
    "show": ("display",),
    "shows": ("displays",),
    "begin": ("start",),
    "begins": ("starts",),
    "stops": ("halts",),
    "allow": ("permit",),
    "allows": ("permits",),
    "allowed": ("permitted",),
    "ignore": ("disregard",),
    "ignores": ("disregards",),
    "ignored": ("disregarded",),
    "attempt": ("try",),
    "attempts": ("tries",),
    "modify": ("change", "alter"),
    "modifies": ("changes", "alters"),
    "modified": ("changed", "altered"),
    "generate": ("produce",),
    "generates": ("produces",),
    "generated": ("produced",),
    "produce": ("generate",),
    "produces": ("generates",),
    "construct": ("build",),
    "constructs": ("builds",),
    "requires": ("needs",),
    "obtain": ("get",),
    "retrieve": ("fetch", "get"),
    "retrieves": ("fetches", "gets"),
    "sends": ("transmits",),
    "indicates": ("shows", "signals"),
    "indicating": ("showing",),
    "terminate": ("end",),
    "terminates": ("ends",),
    "execute": ("run",),
    "executes": ("runs",),
    "invoke": ("call",),
    "invokes": ("calls",),
    "invoked": ("called",),
    "compute": ("calculate",),
    "computes": ("calculates",),
    "computed": ("calculated",),
    "calculate": ("compute",),
    "ensure": ("make sure",),
    "ensures": ("makes sure",),
    "determine": ("establish",),
    "determines": ("establishes",),
    # adjectives and adverbs
    "current": ("present",),
    "empty": ("blank",),
    "valid": ("acceptable",),
    "possible": ("feasible",),
    "simple": ("plain", "basic"),
    "different": ("distinct",),
    "additional": ("extra", "further"),
    "specific": ("particular",),
    "appropriate": ("suitable",),
    "entire": ("whole",),
    "initial": ("starting",),
    "previous": ("earlier", "prior"),
    "useful": ("handy",),
    "immediately": ("at once", "right away"),
    "currently": ("at present",),
    "usually": ("normally", "typically"),
    "typically": ("usually",),
    "normally": ("usually",),
    "exactly": ("precisely",),
    "completely": ("fully", "entirely"),
    "whether": ("if",),
}

# pairs of opposites common in docstrings (each listed both ways); a replacement that lands on
# one of these has reversed the meaning
_OPPOSITES = (
    ("true", "false"),
    ("read", "write"),
    ("encode", "decode"),
    ("open", "close"),
    ("start", "stop"),
    ("first", "last"),
    ("get", "set"),
    ("add", "remove"),
    ("enable", "disable"),
    ("minimum", "maximum"),
    ("input", "output"),
    ("before", "after"),
    ("begin", "end"),
    ("left", "right"),
    ("upper", "lower"),
    ("send", "receive"),
    ("positive", "negative"),
    ("valid", "invalid"),
    ("success", "failure"),
    ("client", "server"),
    ("acquire", "release"),
    ("show", "hide"),
    ("increase", "decrease"),
    ("above", "below"),
    ("compress", "decompress"),
    ("connect", "disconnect"),
    ("empty", "full"),
    ("top", "bottom"),
    ("next", "previous"),
    ("old", "new"),
    ("local", "remote"),
    ("lock", "unlock"),
    ("push", "pop"),
    ("import", "export"),
    ("load", "dump"),
    ("enter", "exit"),
    ("accept", "reject"),
    ("include", "exclude"),
    ("insert", "delete"),
    ("absolute", "relative"),
    ("major", "minor"),
    ("yes", "no"),
)
ANTONYMS: dict[str, tuple[str, ...]] = {}
for _a, _b in _OPPOSITES:
    ANTONYMS[_a] = (*ANTONYMS.get(_a, ()), _b)
    ANTONYMS[_b] = (*ANTONYMS.get(_b, ()), _a)
del _a, _b

_CODE_SPAN = re.compile(r"``.*?``|`[^`\n]*`", re.DOTALL)
_DOCTEST_LINE = re.compile(r"^[ \t]*(?:>>>|\.\.\.)[^\n]*$", re.MULTILINE)
_WORD = re.compile(r"(?<![\w.])[A-Za-z]+(?![\w(]|\.\w)")


@dataclass(frozen=True)
class Replacement:
    """One replaced word: its character offset in the original text, the old and new words."""

    start: int
    old: str
    new: str


def replaceable_words(
    text: str, table: Mapping[str, tuple[str, ...]] = SYNONYMS
) -> list[tuple[int, str]]:
    """(offset, word) of every word of ``text`` that the table can replace, in prose only."""
    if not isinstance(text, str):
        raise TypeError(f"text: expected a str, got {type(text).__name__}")
    masked = _DOCTEST_LINE.sub(lambda m: " " * len(m.group()), text)
    masked = _CODE_SPAN.sub(lambda m: " " * len(m.group()), masked)
    return [(m.start(), m.group()) for m in _WORD.finditer(masked) if m.group().lower() in table]


def _same_case(new: str, old: str) -> str:
    if len(old) > 1 and old.isupper():
        return new.upper()
    if old[0].isupper():
        return new[0].upper() + new[1:]
    return new


def synonym_replace(
    text: str,
    rate: float = 0.1,
    seed: int = 0,
    table: Mapping[str, tuple[str, ...]] = SYNONYMS,
) -> tuple[str, list[Replacement]]:
    """EDA's synonym replacement: (new text, the replacements made), seeded.

    ``n = max(1, round(rate * words))`` of the replaceable words (:func:`replaceable_words`;
    fewer if fewer are replaceable) are drawn without replacement, and each becomes one of its
    synonyms drawn at random, in the original word's case. A text with no replaceable word
    comes back unchanged, with no replacements. The same ``(text, rate, seed)`` always gives
    the same result.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate: expected a share in [0, 1], got {rate!r}")
    require_int(seed, "seed", None)
    candidates = replaceable_words(text, table)
    if not candidates or rate == 0.0:
        return text, []
    n = min(len(candidates), max(1, round(rate * len(text.split()))))
    rng = random.Random(seed)
    chosen = sorted(rng.sample(candidates, n))
    replacements = [
        Replacement(start, word, _same_case(rng.choice(table[word.lower()]), word))
        for start, word in chosen
    ]
    pieces, end = [], 0
    for r in replacements:
        pieces += [text[end : r.start], r.new]
        end = r.start + len(r.old)
    pieces.append(text[end:])
    return "".join(pieces), replacements
