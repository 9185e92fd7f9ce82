"""A semantic cache: answer a question again without the pipeline when a similar one was asked.

An exact cache (a dict from question text to answer) hits only on the same string. A semantic
cache embeds each question and, for a new one, finds the most similar cached question (a
k-nearest-neighbour search over their embeddings, here k = 1 and exact); above a cosine
``threshold`` it returns that question's answer instead of running retrieval and generation.

The threshold trades hits for **false hits**. "When was Karreith Zellisell born?" and "What
year was Karreith Zellisell born in?" should share an answer; "When was Karreith Zellisell
born?" and "Where was Karreith Zellisell born?" must not, yet their embeddings are nearly the
same (one word apart), as are a question and its negation, or the same question about another
person. Chapter 07 measures both rates against the threshold.

    >>> cache = SemanticCache(embedder.encode, threshold=0.95)
    >>> answer, hit = cache.get_or_compute(question, pipeline)   # pipeline(question) -> answer
    >>> cache.stats()                                             # hits, misses, entries
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Lookup:
    """The result of :meth:`SemanticCache.lookup`: the answer (None on a miss), the cosine of
    the nearest cached question (None when the cache is empty) and that question."""

    answer: object
    similarity: float | None
    matched: str | None

    @property
    def hit(self) -> bool:
        return self.answer is not None


class SemanticCache:
    """Questions, their unit embeddings and their answers; a lookup is one matrix-vector
    product over the stored embeddings. ``embed(texts) -> (n, d) array`` must return unit
    vectors (as :meth:`llmlab.rag.embed.Embedder.encode` does); ``max_entries`` evicts the
    oldest entry beyond that many (None: no limit)."""

    def __init__(
        self,
        embed: Callable[[Sequence[str]], np.ndarray],
        threshold: float = 0.95,
        max_entries: int | None = None,
    ):
        if not callable(embed):
            raise TypeError("embed: expected a function from a list of texts to an (n, d) array")
        if not isinstance(threshold, (int, float)) or not -1.0 <= threshold <= 1.0:
            raise ValueError(f"threshold: expected a cosine in [-1, 1], got {threshold!r}")
        if max_entries is not None and (not isinstance(max_entries, int) or max_entries < 1):
            raise ValueError(f"max_entries: expected None or an int >= 1, got {max_entries!r}")
        self.embed = embed
        self.threshold = float(threshold)
        self.max_entries = max_entries
        self.questions: list[str] = []
        self.answers: list[object] = []
        self._buffer: np.ndarray | None = None  # rows [_start, _end) are the cached vectors
        self._start = self._end = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self.questions)

    @property
    def _vectors(self) -> np.ndarray | None:
        """The cached questions' unit vectors, one row each (None before the first put)."""
        return None if self._buffer is None else self._buffer[self._start : self._end]

    def _append(self, row: np.ndarray) -> None:
        """Add a row in amortised O(d): the buffer doubles when full (after moving the live rows
        to its front), instead of copying every row at every put."""
        if self._buffer is None:
            self._buffer = np.empty((16, row.shape[0]), dtype=np.float32)
        if self._end == self._buffer.shape[0]:
            live = self._end - self._start
            grown = np.empty((max(16, 2 * live), self._buffer.shape[1]), dtype=np.float32)
            grown[:live] = self._buffer[self._start : self._end]
            self._buffer, self._start, self._end = grown, 0, live
        self._buffer[self._end] = row
        self._end += 1

    def _embed_one(self, question: str) -> np.ndarray:
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"question: expected a non-empty string, got {question!r}")
        vector = np.asarray(self.embed([question]), dtype=np.float32).reshape(-1)
        if self._vectors is not None and vector.shape[0] != self._vectors.shape[1]:
            raise ValueError(
                f"embed: returned {vector.shape[0]} dims, the cache holds {self._vectors.shape[1]}"
            )
        return vector

    def nearest(self, question: str, vector: np.ndarray | None = None) -> tuple[int, float] | None:
        """``(index, cosine)`` of the most similar cached question, or None if empty."""
        if not self.questions:
            return None
        vector = self._embed_one(question) if vector is None else vector
        sims = self._vectors @ vector
        best = int(np.argmax(sims))
        return best, float(sims[best])

    def lookup(self, question: str, vector: np.ndarray | None = None) -> Lookup:
        """The cached answer of the nearest question if its cosine is at least the threshold."""
        found = self.nearest(question, vector)
        if found is None:
            self.misses += 1
            return Lookup(None, None, None)
        best, similarity = found
        if similarity >= self.threshold:
            self.hits += 1
            return Lookup(self.answers[best], similarity, self.questions[best])
        self.misses += 1
        return Lookup(None, similarity, self.questions[best])

    def put(self, question: str, answer: object, vector: np.ndarray | None = None) -> None:
        """Cache ``answer`` for ``question`` (an answer of None cannot be cached: it means a miss)."""
        if answer is None:
            raise ValueError("answer: None marks a miss and cannot be cached")
        vector = self._embed_one(question) if vector is None else vector
        self._append(np.asarray(vector, dtype=np.float32).reshape(-1))
        self.questions.append(question)
        self.answers.append(answer)
        if self.max_entries is not None and len(self.questions) > self.max_entries:
            self._start += 1  # the oldest entry goes
            self.questions.pop(0)
            self.answers.pop(0)

    def get_or_compute(
        self, question: str, compute: Callable[[str], object]
    ) -> tuple[object, bool]:
        """``(answer, hit)``: the cached answer on a hit, else ``compute(question)``, cached.
        The question is embedded once for both the lookup and the insertion."""
        vector = self._embed_one(question)
        found = self.lookup(question, vector)
        if found.hit:
            return found.answer, True
        answer = compute(question)
        self.put(question, answer, vector)
        return answer, False

    def stats(self) -> dict:
        total = self.hits + self.misses
        return {
            "entries": len(self),
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": self.hits / total if total else 0.0,
        }


def threshold_sweep(similarities, should_hit, thresholds) -> list[dict]:
    """For pairs (cached question, new question) with cosine ``similarities`` and a flag
    ``should_hit`` (True when the cached answer is right for the new question), the share of
    true hits (pairs that should hit and do) and of false hits (pairs that must not hit, yet
    do) at each threshold."""
    sims = np.asarray(similarities, dtype=np.float64)
    good = np.asarray(should_hit, dtype=bool)
    if sims.shape != good.shape or sims.ndim != 1 or sims.size == 0:
        raise ValueError("similarities, should_hit: expected two equal-length non-empty 1-D arrays")
    rows = []
    for t in thresholds:
        hit = sims >= t
        rows.append(
            {
                "threshold": float(t),
                "true_hit_rate": float(hit[good].mean()) if good.any() else float("nan"),
                "false_hit_rate": float(hit[~good].mean()) if (~good).any() else float("nan"),
            }
        )
    return rows
