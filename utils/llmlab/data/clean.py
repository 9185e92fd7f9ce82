"""Quality signals and filters for pretraining text.

Web-scale corpora are mostly noise: menus, boilerplate, spam, tables of numbers, the same line
a hundred times. Pretraining pipelines (C4, Gopher's MassiveText, RefinedWeb, FineWeb) keep a
document only if a handful of cheap statistics look like prose. Seed 001 (§3.1) claims that
"filtering low-quality text lowers a model's perplexity by 15-20%"; chapter 03 measures what
filtering does on our corpus.

Signals (each a number per document; :func:`quality_signals`):

- ``n_words``, ``mean_word_len``: too short says nothing; very long "words" are URLs or hashes.
- ``symbol_ratio``: characters that are neither letters, digits nor whitespace, per character
  (code, markup, ASCII art).
- ``alpha_word_ratio``: share of words that contain a letter (Gopher keeps >= 80%).
- ``digit_ratio``, ``upper_ratio``: tables of numbers, SHOUTING.
- ``duplicate_line_frac``: share of lines that repeat an earlier line (boilerplate).
- ``top_2gram_frac``, ``top_3gram_frac``: share of characters covered by the most frequent word
  2-gram / 3-gram (Gopher's repetition filter: "buy now buy now buy now").

:class:`QualityFilter` holds thresholds (defaults adapted from Gopher's rules to short
documents such as docstrings) and says, for each document, whether to keep it and why not.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass

__all__ = ["normalize_text", "quality_signals", "QualityFilter"]

_WORDS = re.compile(r"\S+")
_SPACES = re.compile(r"[ \t]+")


def normalize_text(text: str) -> str:
    """NFC-normalise, unify line ends, collapse runs of spaces/tabs, strip each line's end."""
    if not isinstance(text, str):
        raise TypeError(f"text: expected a str, got {type(text).__name__}")
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    lines = [_SPACES.sub(" ", line).rstrip() for line in text.split("\n")]
    return "\n".join(lines).strip()


def _top_ngram_frac(words: list[str], n: int) -> float:
    if len(words) < n + 1:
        return 0.0
    grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    gram, count = grams.most_common(1)[0]
    if count < 2:
        return 0.0
    total_chars = sum(len(w) for w in words)
    return min(1.0, count * sum(len(w) for w in gram) / total_chars)


def quality_signals(text: str) -> dict[str, float]:
    """The signals listed in the module docstring, for one document."""
    if not isinstance(text, str):
        raise TypeError(f"text: expected a str, got {type(text).__name__}")
    words = _WORDS.findall(text)
    chars = len(text)
    non_space = [c for c in text if not c.isspace()]
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    seen: set[str] = set()
    repeated = 0
    for line in lines:
        repeated += line in seen
        seen.add(line)
    lowered = [w.lower() for w in words]
    return {
        "n_chars": chars,
        "n_words": len(words),
        "mean_word_len": sum(map(len, words)) / len(words) if words else 0.0,
        "symbol_ratio": sum(not c.isalnum() for c in non_space) / chars if chars else 0.0,
        "alpha_word_ratio": sum(any(c.isalpha() for c in w) for w in words) / len(words)
        if words
        else 0.0,
        "digit_ratio": sum(c.isdigit() for c in text) / chars if chars else 0.0,
        "upper_ratio": sum(c.isupper() for c in non_space) / len(non_space) if non_space else 0.0,
        "duplicate_line_frac": repeated / len(lines) if lines else 0.0,
        "top_2gram_frac": _top_ngram_frac(lowered, 2),
        "top_3gram_frac": _top_ngram_frac(lowered, 3),
    }


@dataclass
class QualityFilter:
    """Keep a document only if every signal is within bounds (see :meth:`check`)."""

    min_words: int = 8
    max_mean_word_len: float = 12.0
    max_symbol_ratio: float = 0.25
    min_alpha_word_ratio: float = 0.7
    max_digit_ratio: float = 0.2
    max_upper_ratio: float = 0.5
    max_duplicate_line_frac: float = 0.3
    max_top_2gram_frac: float = 0.2
    max_top_3gram_frac: float = 0.18

    def check(self, text: str) -> list[str]:
        """The reasons to drop ``text`` (an empty list means keep it)."""
        s = quality_signals(text)
        rules = [
            (s["n_words"] < self.min_words, f"fewer than {self.min_words} words"),
            (s["mean_word_len"] > self.max_mean_word_len, "words too long on average"),
            (s["symbol_ratio"] > self.max_symbol_ratio, "too many symbols"),
            (s["alpha_word_ratio"] < self.min_alpha_word_ratio, "too few words with letters"),
            (s["digit_ratio"] > self.max_digit_ratio, "too many digits"),
            (s["upper_ratio"] > self.max_upper_ratio, "too much upper case"),
            (s["duplicate_line_frac"] > self.max_duplicate_line_frac, "repeated lines"),
            (s["top_2gram_frac"] > self.max_top_2gram_frac, "a repeated 2-gram dominates"),
            (s["top_3gram_frac"] > self.max_top_3gram_frac, "a repeated 3-gram dominates"),
        ]
        return [reason for failed, reason in rules if failed]

    def keep(self, text: str) -> bool:
        return not self.check(text)

    def filter(self, documents: list[str]) -> tuple[list[str], Counter]:
        """(kept documents, Counter of drop reasons: a document can have several)."""
        kept, reasons = [], Counter()
        for doc in documents:
            why = self.check(doc)
            reasons.update(why)
            if not why:
                kept.append(doc)
        return kept, reasons
