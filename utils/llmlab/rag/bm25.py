"""BM25: the lexical ranking function that search engines have used since the 1990s.

BM25 (Robertson et al., "Okapi at TREC-3", 1994) scores a document d for a query q by the
query's words that d contains, each weighted by how rare it is in the corpus (idf) and by how
often it occurs in d (tf), with diminishing returns and a correction for the document's length:

    score(q, d) = sum over query terms t of
                  idf(t) * tf(t, d) * (k1 + 1) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl))

N is the number of documents, n(t) how many contain t, |d| the length of d in tokens and avgdl
the mean length over the corpus. A query term that occurs twice counts twice (rank_bm25 and
bm25s both loop over the query's tokens as given); a term absent from d adds nothing.

Two idfs, both from the same odds, (N - n + 0.5) / (n + 0.5):

    "okapi":   idf = ln((N - n + 0.5) / (n + 0.5))          (Robertson-Sparck Jones)
    "lucene":  idf = ln(1 + (N - n + 0.5) / (n + 0.5))      (Lucene, bm25s's default)

Okapi's idf is 0 for a term in exactly half of the documents and negative for one in more than
half: in a corpus of 4 documents, a word in 3 of them has idf ln(1.5 / 3.5) = -0.85, so a
document that contains it scores *below* one that does not. On a large corpus only stopwords
get there; on the tiny corpora of a course (or a team's wiki) ordinary words do. rank_bm25's
``BM25Okapi`` floors it: every negative idf becomes epsilon * (the mean of the raw idfs over the
whole vocabulary, negative ones included, before any flooring). This module does the same, so its
scores equal rank_bm25's. Lucene's ``1 +`` inside the log keeps every idf positive (it tends to
0 as n tends to N) and needs no floor. The two differ little for the rare terms that carry a
query's weight: their odds x are large, and ln(1 + x) is close to ln(x).

k1 (typically 1.2 to 2) sets how fast the tf term saturates: each extra occurrence of a word
adds less, and no number of occurrences can make tf(t, d) * (k1 + 1) / (tf + k1 ...) exceed
k1 + 1. k1 = 0 ignores tf altogether (a document either contains t or not); a large k1 makes
the score close to linear in tf. b in [0, 1] sets the length normalisation: b = 1 divides tf
by the document's length relative to the mean (a long document mentions everything more
often), b = 0 ignores length.

The libraries, compared with the formula above:

- rank_bm25 ``BM25Okapi`` (k1=1.5, b=0.75, epsilon=0.25): this formula with the okapi idf and
  the floor. It computes tf / (tf + ...) for every document, so a document without the term
  gets 0 / 0 = nan when k1 = 0, or when b = 1 and the document is empty (|d| = 0); here only the
  documents that contain a term are scored, so those cases score 0. Elsewhere the two agree to
  rounding (1e-9 in the tests).
- bm25s ``BM25(method="lucene")`` (k1=1.5, b=0.75): the lucene idf, and the tf part *without*
  the factor (k1 + 1), as in Lucene since version 8. That multiplies every score by the same
  constant 1 / (k1 + 1), so the ranking is the same; here the factor stays, and
  ``BM25(corpus, variant="lucene").scores(q) / (k1 + 1)`` equals bm25s's ``get_scores(q)`` (to
  float32 precision: bm25s stores its scores in float32).

Everything above operates on tokens, and the tokeniser decides what a "term" is: see
:func:`tokenize`.
"""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np

from llmlab.validate import require_positive_int, require_real

__all__ = ["STOPWORDS", "VARIANTS", "tokenize", "BM25"]

VARIANTS = ("okapi", "lucene")

# A small English list: articles, pronouns, auxiliaries, prepositions, conjunctions.
STOPWORDS = frozenset(
    """
    a about above after again against all am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further
    had has have having he her here hers herself him himself his how i if in into is it its
    itself just me more most my myself no nor not of off on once only or other our ours
    ourselves out over own same she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up very was we were
    what when where which while who whom why will with would you your yours yourself yourselves
    """.split()
)

_WORD = re.compile(r"\w+")


def tokenize(text: str, stopwords: frozenset[str] | set[str] | None = None) -> list[str]:
    """Lowercase ``text`` and split it into runs of word characters (``re.findall(r"\\w+")``),
    dropping the words in ``stopwords`` if given (e.g. :data:`STOPWORDS`).

    BM25 only ever compares these tokens for equality, so the tokeniser, more than k1, b or the
    idf variant, decides what BM25 can find. Here "Tokenizer" and "tokenizers" are different
    terms (no stemming), "GPT-4" becomes ``["gpt", "4"]``, "don't" becomes ``["don", "t"]``, and
    ``\\w`` is Unicode-aware, so "naïve" stays one token. Stopwords matter less than one might
    think (their idf is small), but with Okapi's idf on a small corpus they are the terms whose
    idf goes negative.
    """
    if not isinstance(text, str):
        raise TypeError(f"text: expected a str, got {type(text).__name__}")
    tokens = _WORD.findall(text.lower())
    if stopwords:
        tokens = [token for token in tokens if token not in stopwords]
    return tokens


def _require_tokens(tokens, name: str) -> list[str]:
    """``tokens`` must be a list (or tuple) of str; a bare string is refused, since iterating
    over it would index its characters."""
    if isinstance(tokens, str) or not isinstance(tokens, (list, tuple)):
        raise TypeError(
            f"{name}: expected a list of str tokens (see tokenize), got {type(tokens).__name__}"
        )
    for token in tokens:
        if not isinstance(token, str):
            raise TypeError(f"{name}: expected str tokens, got {type(token).__name__} {token!r}")
    return list(tokens)


class BM25:
    """A BM25 index over ``corpus_tokens``, one list of tokens per document.

    ``variant`` is "okapi" (rank_bm25's BM25Okapi, with negative idfs floored at ``epsilon``
    times the mean idf) or "lucene" (idf = ln(1 + odds), never negative; ``epsilon`` is unused).
    Attributes: ``idf`` (term -> idf, after the floor), ``doc_freq`` (term -> number of documents
    that contain it), ``doc_len`` (N,), ``avgdl``, ``average_idf`` (okapi: the mean raw idf the
    floor is taken from; None for lucene).

    The index is an inverted one: for each term, the documents that contain it and how often.
    Scoring a query touches only those documents, with numpy arrays.
    """

    def __init__(
        self,
        corpus_tokens: list[list[str]],
        k1: float = 1.5,
        b: float = 0.75,
        variant: str = "okapi",
        epsilon: float = 0.25,
    ) -> None:
        if isinstance(corpus_tokens, str) or not isinstance(corpus_tokens, (list, tuple)):
            raise TypeError(
                "corpus_tokens: expected a list of documents, each a list of str tokens, "
                f"got {type(corpus_tokens).__name__}"
            )
        if len(corpus_tokens) == 0:
            raise ValueError("corpus_tokens: expected at least one document, got 0")
        k1 = require_real(k1, "k1")
        if not k1 >= 0:
            raise ValueError(f"k1: expected a number >= 0, got {k1}")
        b = require_real(b, "b")
        if not 0 <= b <= 1:
            raise ValueError(f"b: expected a number in [0, 1], got {b}")
        if variant not in VARIANTS:
            raise ValueError(f"variant: expected one of {VARIANTS}, got {variant!r}")
        self.k1, self.b, self.variant = k1, b, variant
        self.epsilon = require_real(epsilon, "epsilon")

        # Term frequencies per document, then the inverted index: term -> (doc ids, tfs).
        counts = [
            Counter(_require_tokens(doc, f"corpus_tokens[{i}]"))
            for i, doc in enumerate(corpus_tokens)
        ]
        postings: dict[str, tuple[list[int], list[int]]] = {}
        for doc_id, tf in enumerate(counts):
            for term, count in tf.items():
                ids, tfs = postings.setdefault(term, ([], []))
                ids.append(doc_id)
                tfs.append(count)
        self._postings = {
            term: (np.array(ids, dtype=np.int64), np.array(tfs, dtype=np.float64))
            for term, (ids, tfs) in postings.items()
        }

        self.n_docs = len(corpus_tokens)
        self.doc_len = np.array([len(doc) for doc in corpus_tokens], dtype=np.float64)
        self.avgdl = float(self.doc_len.sum()) / self.n_docs
        self.doc_freq = {term: len(ids) for term, (ids, _) in self._postings.items()}
        self.idf, self.average_idf = self._compute_idf()

        # The length part of the denominator, k1 * (1 - b + b * |d| / avgdl), once per document.
        # If every document is empty (avgdl = 0) no term occurs and it is never used.
        relative_len = self.doc_len / self.avgdl if self.avgdl > 0 else np.ones(self.n_docs)
        self._length_norm = k1 * (1 - b + b * relative_len)

    def _compute_idf(self) -> tuple[dict[str, float], float | None]:
        """The idf of every term in the corpus, and (okapi) the mean raw idf used by the floor."""
        n_docs = self.n_docs
        if self.variant == "lucene":
            idf = {
                term: math.log(1 + (n_docs - n + 0.5) / (n + 0.5))
                for term, n in self.doc_freq.items()
            }
            return idf, None
        # Okapi, computed as rank_bm25 does: the log of a difference, the mean over all terms
        # of the raw idfs, then every strictly negative idf replaced by epsilon * that mean.
        raw = {
            term: math.log(n_docs - n + 0.5) - math.log(n + 0.5)
            for term, n in self.doc_freq.items()
        }
        average_idf = sum(raw.values()) / len(raw) if raw else 0.0
        floor = self.epsilon * average_idf
        idf = {term: (floor if value < 0 else value) for term, value in raw.items()}
        return idf, average_idf

    def scores(self, query_tokens: list[str]) -> np.ndarray:
        """The BM25 score of every document for ``query_tokens``: float64 array (N,).

        Terms that are in no document add nothing (a query of only such terms scores all
        zeros); a term repeated in the query is added once per occurrence.
        """
        query_tokens = _require_tokens(query_tokens, "query_tokens")
        scores = np.zeros(self.n_docs, dtype=np.float64)
        for term in query_tokens:
            if term not in self._postings:
                continue
            doc_ids, tf = self._postings[term]
            saturation = tf * (self.k1 + 1) / (tf + self._length_norm[doc_ids])
            scores[doc_ids] += self.idf[term] * saturation
        return scores

    def top_k(self, query_tokens: list[str], k: int) -> list[tuple[int, float]]:
        """The ``k`` best documents (or all N if fewer) as (document index, score), best first;
        equal scores in order of index. Documents that score 0 are included if k reaches them."""
        k = require_positive_int(k, "k")
        scores = self.scores(query_tokens)
        order = np.argsort(-scores, kind="stable")[:k]  # stable: ties stay in index order
        return [(int(i), float(scores[i])) for i in order]

    def __len__(self) -> int:
        return self.n_docs

    def __repr__(self) -> str:
        return (
            f"BM25(n_docs={self.n_docs}, vocab={len(self.idf)}, variant={self.variant!r}, "
            f"k1={self.k1}, b={self.b})"
        )
