"""The checks of chapter 07's ranking lab (llmlab.checks.rag_and_agents.ranking).

For every check: the reference passes, other correct answers pass too (numpy logs and arrays, a
loop over the documents, a vectorised BM25, loops instead of sets, ``list.index``, a
``defaultdict`` and ``reverse=True``), plausible wrong answers (mutants) fail on the case that
exposes them with words that say what is wrong, a NotImplementedError stub reports "not
implemented", garbage never raises, answers that call ``llmlab.rag`` or ``rank_bm25`` are
flagged, and the global seed does not move. The answers' numpy results survive the grader's
trip back from its sandbox.
"""

from __future__ import annotations

import io
import math
from collections import Counter, defaultdict

import numpy as np
import pytest
import torch
from check_contract import CheckContract
from rank_bm25 import BM25Okapi

from llmlab.checks.rag_and_agents import ranking as rk
from llmlab.course.grade_worker import encode, load_reply
from llmlab.rag import fusion, metrics
from llmlab.rag.bm25 import BM25

CHECKS = {
    "check_bm25_idf": (rk.check_bm25_idf, rk.reference_bm25_idf),
    "check_bm25_scores": (rk.check_bm25_scores, rk.reference_bm25_scores),
    "check_recall_at_k": (rk.check_recall_at_k, rk.reference_recall_at_k),
    "check_reciprocal_rank": (rk.check_reciprocal_rank, rk.reference_reciprocal_rank),
    "check_reciprocal_rank_fusion": (
        rk.check_reciprocal_rank_fusion,
        rk.reference_reciprocal_rank_fusion,
    ),
}


class _Weird:
    """An object that breaks comparisons: == raises, and it cannot be hashed."""

    def __eq__(self, other):
        raise RuntimeError("no comparing me")

    __hash__ = None


def _divide_by_zero(*args, **kwargs):
    return 1 / 0


GARBAGE = {
    "returns a number": lambda *a, **k: 0.5,
    "returns a string": lambda *a, **k: "bm25",
    "returns a list of numbers": lambda *a, **k: [0.1, 0.9],
    "returns its first input": lambda x, *a, **k: x,
    "returns a dict": lambda *a, **k: {"a": 1.0},
    "returns a tuple of Nones": lambda *a, **k: (None, None),
    "returns NaN": lambda *a, **k: float("nan"),
    "returns inf": lambda *a, **k: math.inf,
    "returns a bool": lambda *a, **k: True,
    "returns a numpy array of strings": lambda *a, **k: np.array(["a", "b"]),
    "returns a numpy array of objects": lambda *a, **k: np.array([None, _Weird()], dtype=object),
    "returns a 2-d numpy array": lambda *a, **k: np.zeros((2, 3)),
    "returns a tensor": lambda *a, **k: torch.zeros(3),
    "returns a 0-dim tensor": lambda *a, **k: torch.tensor(0.25),
    "returns a generator": lambda *a, **k: (i for i in range(3)),
    "returns objects that refuse comparison": lambda *a, **k: [_Weird(), (_Weird(), 0.5)],
    "returns pairs with NaN scores": lambda *a, **k: [("a", float("nan"))],
    "raises ZeroDivisionError": _divide_by_zero,
    "takes no arguments": lambda: 0.0,
    "is not a function (a string)": "bm25",
}


class TestContract(CheckContract):
    MODULES = (rk,)
    CHECKS = CHECKS
    GARBAGE = GARBAGE
    MIN_CASES = 7


IDF, SCO, REC, RR, RRF = CHECKS

IDF_FIRST = "N = 10 documents, the word in n = 3, lucene"
IDF_OKAPI = "the same word, okapi"
IDF_NEGATIVE = "a word in 3 of 4 documents, okapi: a negative idf, returned as it is"
IDF_NONE = "a word in no document, 0 of 5, lucene"
SCO_FIRST = (
    "5 documents of different lengths, query ['velmora', 'bridge'], the defaults "
    "(k1=1.5, b=0.75, lucene)"
)
SCO_OKAPI = "variant='okapi', each query word in 2 of the 5 documents"
SCO_NEGATIVE = "variant='okapi', 'the' in 4 of the 5 documents: a negative idf, no floor"
SCO_REPEAT = "a query that repeats a word, ['mill', 'mill', 'river']: 'mill' counts twice"
SCO_UNKNOWN = "a query word in no document, 'harbour', adds nothing"
REC_FIRST = "15 ranked ids, 6 gold ids (2 never ranked), k = 5: 2 gold in the top 5"
REC_SMALL_K = "k = 2 with 4 gold ids: recall is at most 2 / 4"
REC_REPEATS = "gold_ids given as a list that repeats an id, [4, 9, 4]: 2 distinct gold ids"
REC_LONG_K = "k larger than the ranking: 8 ids, k = 20"
RR_FIRST = "the first gold id at rank 3, another at rank 5"
RR_TOP = "the first id is gold: 1.0"
RR_NONE = "no gold id ranked: 0.0"
RR_ORDER = "gold_ids listed in another order than the ranking's, ['d7', 'd2']"
RRF_FIRST = "two rankings of 5 ids, 2 ids in both, the default k = 60"
RRF_TIES = "ties: ids with mirrored ranks keep the order they first appear in"

# --------------------------------------------------------------------------------------------
# bm25_idf


def idf_math(n_docs, doc_freq, variant):
    odds = (n_docs - doc_freq + 0.5) / (doc_freq + 0.5)
    return math.log(odds) if variant == "okapi" else math.log(1 + odds)


def idf_numpy(n_docs, doc_freq, variant):  # returns a numpy float64
    odds = np.float64(n_docs - doc_freq + 0.5) / (doc_freq + 0.5)
    return np.log1p(odds) if variant == "lucene" else np.log(odds)


def idf_log_difference(n_docs, doc_freq, variant):  # rank_bm25's way of writing it
    if variant == "okapi":
        return math.log(n_docs - doc_freq + 0.5) - math.log(doc_freq + 0.5)
    return math.log(n_docs + 1) - math.log(doc_freq + 0.5)  # 1 + odds = (N + 1) / (n + 0.5)


def idf_no_half(n_docs, doc_freq, variant):
    odds = (n_docs - doc_freq) / doc_freq
    return math.log(odds) if variant == "okapi" else math.log(1 + odds)


def idf_tf_idf(n_docs, doc_freq, variant):
    return math.log(n_docs / doc_freq)


def idf_log10(n_docs, doc_freq, variant):
    odds = (n_docs - doc_freq + 0.5) / (doc_freq + 0.5)
    return math.log10(odds) if variant == "okapi" else math.log10(1 + odds)


def idf_log2(n_docs, doc_freq, variant):
    odds = (n_docs - doc_freq + 0.5) / (doc_freq + 0.5)
    return np.log2(odds) if variant == "okapi" else np.log2(1 + odds)


def idf_inverted_odds(n_docs, doc_freq, variant):
    odds = (doc_freq + 0.5) / (n_docs - doc_freq + 0.5)
    return math.log(odds) if variant == "okapi" else math.log(1 + odds)


def idf_literal_swap(n_docs, doc_freq, variant):
    n_docs, doc_freq = doc_freq, n_docs
    odds = (n_docs - doc_freq + 0.5) / (doc_freq + 0.5)
    return np.log(odds) if variant == "okapi" else np.log(1 + odds)


def idf_always_okapi(n_docs, doc_freq, variant):  # lucene without its 1 +
    return math.log((n_docs - doc_freq + 0.5) / (doc_freq + 0.5))


def idf_always_lucene(n_docs, doc_freq, variant):
    return math.log(1 + (n_docs - doc_freq + 0.5) / (doc_freq + 0.5))


def idf_one_outside(n_docs, doc_freq, variant):
    odds = (n_docs - doc_freq + 0.5) / (doc_freq + 0.5)
    return math.log(odds) if variant == "okapi" else 1 + math.log(odds)


def idf_no_minus_n(n_docs, doc_freq, variant):
    odds = (n_docs + 0.5) / (doc_freq + 0.5)
    return math.log(odds) if variant == "okapi" else math.log(1 + odds)


def idf_floored(n_docs, doc_freq, variant):
    return max(0.0, idf_math(n_docs, doc_freq, variant))


def idf_abs(n_docs, doc_freq, variant):
    return abs(idf_math(n_docs, doc_freq, variant))


def idf_string(n_docs, doc_freq, variant):
    return f"{idf_math(n_docs, doc_freq, variant):.3f}"


# --------------------------------------------------------------------------------------------
# bm25_scores: one written-out BM25, with switches for the slips


def _bm25(
    corpus,
    query,
    k1,
    b,
    variant,
    *,
    idf=idf_math,
    dedupe=False,
    saturate=True,
    tf_below=True,
    norm="right",
    factor=True,
    distinct=False,
    occurrences=False,
    dtype=float,
):
    n_docs = len(corpus)
    lengths = [len(set(d)) if distinct else len(d) for d in corpus]
    avgdl = sum(lengths) / n_docs
    df = Counter(t for d in corpus for t in (d if occurrences else set(d)))
    scores = np.zeros(n_docs, dtype=dtype)
    for t in dict.fromkeys(query) if dedupe else query:
        if df[t] == 0:
            continue
        w = idf(n_docs, df[t], variant)
        for i, doc in enumerate(corpus):
            tf = doc.count(t)
            if tf == 0:
                continue
            rel = lengths[i] / avgdl
            length = {
                "right": k1 * (1 - b + b * rel),
                "inverted": k1 * (1 - b + b / rel),
                "none": k1,
                "b swapped": k1 * (b + (1 - b) * rel),
                "k1 first": k1 * (1 - b) + b * rel,
                "no k1": 1 - b + b * rel,
            }[norm]
            if not saturate:
                part = tf
            elif tf_below:
                part = tf * (k1 + 1) / (tf + length)
            else:
                part = tf * (k1 + 1) / length
            scores[i] += w * (part if factor else part / (k1 + 1))
    return scores


def scores_loop(corpus_tokens, query_tokens, k1=1.5, b=0.75, variant="lucene"):
    return _bm25(corpus_tokens, query_tokens, k1, b, variant)


def scores_vectorised(corpus_tokens, query_tokens, k1=1.5, b=0.75, variant="lucene"):
    lengths = np.array([len(d) for d in corpus_tokens], dtype=float)
    norm = k1 * (1 - b + b * lengths / lengths.mean())
    counts = [Counter(d) for d in corpus_tokens]
    scores = np.zeros(len(corpus_tokens))
    for t in query_tokens:
        tf = np.array([c[t] for c in counts], dtype=float)
        n = int((tf > 0).sum())
        if n:
            scores += idf_numpy(len(corpus_tokens), n, variant) * tf * (k1 + 1) / (tf + norm)
    return scores


def scores_float32(corpus_tokens, query_tokens, k1=1.5, b=0.75, variant="lucene"):
    return _bm25(corpus_tokens, query_tokens, k1, b, variant, dtype=np.float32)


def scores_no_factor(corpus_tokens, query_tokens, k1=1.5, b=0.75, variant="lucene"):
    return _bm25(corpus_tokens, query_tokens, k1, b, variant, factor=False)


def scores_always_lucene(corpus_tokens, query_tokens, k1=1.5, b=0.75, variant="lucene"):
    return _bm25(corpus_tokens, query_tokens, k1, b, "lucene")


def scores_always_okapi(corpus_tokens, query_tokens, k1=1.5, b=0.75, variant="lucene"):
    return _bm25(corpus_tokens, query_tokens, k1, b, "okapi")


def scores_floored(corpus_tokens, query_tokens, k1=1.5, b=0.75, variant="lucene"):
    return _bm25(corpus_tokens, query_tokens, k1, b, variant, idf=idf_floored)


def scores_occurrences(corpus_tokens, query_tokens, k1=1.5, b=0.75, variant="lucene"):
    return _bm25(corpus_tokens, query_tokens, k1, b, variant, occurrences=True)


def scores_deduplicated(corpus_tokens, query_tokens, k1=1.5, b=0.75, variant="lucene"):
    return _bm25(corpus_tokens, query_tokens, k1, b, variant, dedupe=True)


def scores_linear_tf(corpus_tokens, query_tokens, k1=1.5, b=0.75, variant="lucene"):
    return _bm25(corpus_tokens, query_tokens, k1, b, variant, tf_below=False)


def scores_tf_idf(corpus_tokens, query_tokens, k1=1.5, b=0.75, variant="lucene"):
    return _bm25(corpus_tokens, query_tokens, k1, b, variant, saturate=False)


def scores_inverted_length(corpus_tokens, query_tokens, k1=1.5, b=0.75, variant="lucene"):
    return _bm25(corpus_tokens, query_tokens, k1, b, variant, norm="inverted")


def scores_no_length(corpus_tokens, query_tokens, k1=1.5, b=0.75, variant="lucene"):
    return _bm25(corpus_tokens, query_tokens, k1, b, variant, norm="none")


def scores_b_swapped(corpus_tokens, query_tokens, k1=1.5, b=0.75, variant="lucene"):
    return _bm25(corpus_tokens, query_tokens, k1, b, variant, norm="b swapped")


def scores_k1_on_first_term(corpus_tokens, query_tokens, k1=1.5, b=0.75, variant="lucene"):
    return _bm25(corpus_tokens, query_tokens, k1, b, variant, norm="k1 first")


def scores_no_k1(corpus_tokens, query_tokens, k1=1.5, b=0.75, variant="lucene"):
    return _bm25(corpus_tokens, query_tokens, k1, b, variant, norm="no k1")


def scores_distinct_length(corpus_tokens, query_tokens, k1=1.5, b=0.75, variant="lucene"):
    return _bm25(corpus_tokens, query_tokens, k1, b, variant, distinct=True)


def scores_idf_no_half(corpus_tokens, query_tokens, k1=1.5, b=0.75, variant="lucene"):
    return _bm25(corpus_tokens, query_tokens, k1, b, variant, idf=idf_no_half)


def scores_int_array(corpus_tokens, query_tokens, k1=1.5, b=0.75, variant="lucene"):
    scores = np.zeros(len(corpus_tokens), dtype=int)
    scores[:] = _bm25(corpus_tokens, query_tokens, k1, b, variant)  # cut to ints
    return scores


def scores_list(corpus_tokens, query_tokens, k1=1.5, b=0.75, variant="lucene"):
    return _bm25(corpus_tokens, query_tokens, k1, b, variant).tolist()


def scores_tensor(corpus_tokens, query_tokens, k1=1.5, b=0.75, variant="lucene"):
    return torch.from_numpy(_bm25(corpus_tokens, query_tokens, k1, b, variant))


def scores_matching_only(corpus_tokens, query_tokens, k1=1.5, b=0.75, variant="lucene"):
    scores = _bm25(corpus_tokens, query_tokens, k1, b, variant)
    return scores[scores != 0]


def scores_doubled(corpus_tokens, query_tokens, k1=1.5, b=0.75, variant="lucene"):
    return 2 * _bm25(corpus_tokens, query_tokens, k1, b, variant)


def scores_lookup(corpus_tokens, query_tokens, k1=1.5, b=0.75, variant="lucene"):
    df = Counter(t for d in corpus_tokens for t in set(d))
    lookup = {t: idf_math(len(corpus_tokens), n, variant) for t, n in df.items()}
    for t in query_tokens:
        lookup[t]  # noqa: B018 - a KeyError for a word in no document
    return _bm25(corpus_tokens, query_tokens, k1, b, variant)


def scores_no_defaults(corpus_tokens, query_tokens, k1, b, variant):
    return _bm25(corpus_tokens, query_tokens, k1, b, variant)


def scores_nan(corpus_tokens, query_tokens, k1=1.5, b=0.75, variant="lucene"):
    scores = _bm25(corpus_tokens, query_tokens, k1, b, variant)
    scores[scores == 0] = np.nan  # 0 / 0 for the documents without a query word
    return scores


# --------------------------------------------------------------------------------------------
# recall_at_k


def recall_sets(ranked_ids, gold_ids, k):
    gold = set(gold_ids)
    return len(gold & set(ranked_ids[:k])) / len(gold)


def recall_loop(ranked_ids, gold_ids, k):
    gold = set(gold_ids)
    found = 0
    for doc in ranked_ids[:k]:
        if doc in gold:
            found += 1
    return found / len(gold)


def recall_over_k(ranked_ids, gold_ids, k):
    return len(set(gold_ids) & set(ranked_ids[:k])) / k


def recall_capped(ranked_ids, gold_ids, k):
    gold = set(gold_ids)
    return len(gold & set(ranked_ids[:k])) / min(k, len(gold))


def recall_count(ranked_ids, gold_ids, k):
    return len(set(gold_ids) & set(ranked_ids[:k]))


def recall_hit(ranked_ids, gold_ids, k):
    return float(any(doc in gold_ids for doc in ranked_ids[:k]))


def recall_over_ranking(ranked_ids, gold_ids, k):
    return len(set(gold_ids) & set(ranked_ids[:k])) / len(ranked_ids)


def recall_k_plus_1(ranked_ids, gold_ids, k):
    return recall_sets(ranked_ids, gold_ids, k + 1)


def recall_k_minus_1(ranked_ids, gold_ids, k):
    gold = set(gold_ids)
    return len(gold & set(ranked_ids[: k - 1])) / len(gold)


def recall_ignores_k(ranked_ids, gold_ids, k):
    return recall_sets(ranked_ids, gold_ids, len(ranked_ids))


def recall_list_length(ranked_ids, gold_ids, k):
    return len(set(gold_ids) & set(ranked_ids[:k])) / len(gold_ids)


def recall_counts_repeats(ranked_ids, gold_ids, k):
    return sum(g in ranked_ids[:k] for g in gold_ids) / len(set(gold_ids))


def recall_indexes(ranked_ids, gold_ids, k):
    gold = set(gold_ids)
    return sum(ranked_ids[i] in gold for i in range(k)) / len(gold)


# --------------------------------------------------------------------------------------------
# reciprocal_rank


def rr_loop(ranked_ids, gold_ids):
    gold = set(gold_ids)
    for rank, doc in enumerate(ranked_ids, start=1):
        if doc in gold:
            return 1 / rank
    return 0.0


def rr_index(ranked_ids, gold_ids):
    ranks = [ranked_ids.index(g) + 1 for g in gold_ids if g in ranked_ids]
    return 1 / min(ranks) if ranks else 0


def rr_zero_based(ranked_ids, gold_ids):
    for i, doc in enumerate(ranked_ids):
        if doc in gold_ids:
            return 1 / i
    return 0.0


def rr_rank(ranked_ids, gold_ids):
    for rank, doc in enumerate(ranked_ids, start=1):
        if doc in gold_ids:
            return rank
    return 0.0


def rr_position(ranked_ids, gold_ids):
    for i, doc in enumerate(ranked_ids):
        if doc in gold_ids:
            return i
    return 0.0


def rr_plus_one(ranked_ids, gold_ids):
    for rank, doc in enumerate(ranked_ids, start=1):
        if doc in gold_ids:
            return 1 / (rank + 1)
    return 0.0


def rr_last(ranked_ids, gold_ids):
    ranks = [r for r, doc in enumerate(ranked_ids, start=1) if doc in gold_ids]
    return 1 / ranks[-1] if ranks else 0.0


def rr_mean(ranked_ids, gold_ids):
    ranks = [r for r, doc in enumerate(ranked_ids, start=1) if doc in gold_ids]
    return sum(1 / r for r in ranks) / len(ranks) if ranks else 0.0


def rr_sum(ranked_ids, gold_ids):
    return sum(1 / r for r, doc in enumerate(ranked_ids, start=1) if doc in gold_ids)


def rr_gold_order(ranked_ids, gold_ids):
    for g in gold_ids:
        if g in ranked_ids:
            return 1 / (ranked_ids.index(g) + 1)
    return 0.0


def rr_none(ranked_ids, gold_ids):
    for rank, doc in enumerate(ranked_ids, start=1):
        if doc in gold_ids:
            return 1 / rank
    return None


def rr_minus_one(ranked_ids, gold_ids):
    for rank, doc in enumerate(ranked_ids, start=1):
        if doc in gold_ids:
            return 1 / rank
    return -1


def rr_raises(ranked_ids, gold_ids):
    return 1 / (min(ranked_ids.index(g) for g in gold_ids) + 1)


# --------------------------------------------------------------------------------------------
# reciprocal_rank_fusion


def _rrf_scores(rankings, k, score=lambda k, rank: 1 / (k + rank)):
    scores = {}
    for ranking in rankings:
        for rank, doc in enumerate(ranking, start=1):
            scores[doc] = scores.get(doc, 0.0) + score(k, rank)
    return scores


def rrf_dict(rankings, k=60):
    return sorted(_rrf_scores(rankings, k).items(), key=lambda p: -p[1])


def rrf_defaultdict_reverse(rankings, k=60):
    scores = defaultdict(float)
    for ranking in rankings:
        for rank, doc in enumerate(ranking, start=1):
            scores[doc] += 1 / (k + rank)
    return [[doc, score] for doc, score in sorted(scores.items(), key=lambda p: p[1], reverse=True)]


def rrf_zero_based(rankings, k=60):
    return sorted(
        _rrf_scores(rankings, k, lambda k, r: 1 / (k + r - 1)).items(), key=lambda p: -p[1]
    )


def rrf_no_k(rankings, k=60):
    return sorted(_rrf_scores(rankings, k, lambda k, r: 1 / r).items(), key=lambda p: -p[1])


def rrf_summed_ranks(rankings, k=60):
    return sorted(_rrf_scores(rankings, k, lambda k, r: k + r).items(), key=lambda p: p[1])


def rrf_reciprocal_of_sum(rankings, k=60):
    sums = _rrf_scores(rankings, k, lambda k, r: k + r)
    return sorted(((d, 1 / s) for d, s in sums.items()), key=lambda p: -p[1])


def rrf_mean(rankings, k=60):
    scores = _rrf_scores(rankings, k)
    return sorted(((d, s / len(rankings)) for d, s in scores.items()), key=lambda p: -p[1])


def rrf_intersection(rankings, k=60):
    scores = _rrf_scores(rankings, k)
    common = set.intersection(*(set(r) for r in rankings))
    return sorted(((d, s) for d, s in scores.items() if d in common), key=lambda p: -p[1])


def rrf_ascending(rankings, k=60):
    return sorted(_rrf_scores(rankings, k).items(), key=lambda p: p[1])


def rrf_ties_by_id(rankings, k=60):
    return sorted(_rrf_scores(rankings, k).items(), key=lambda p: (-p[1], p[0]))


def rrf_ties_by_id_reversed(rankings, k=60):
    return sorted(_rrf_scores(rankings, k).items(), key=lambda p: (p[1], p[0]), reverse=True)


def rrf_unsorted(rankings, k=60):
    return list(_rrf_scores(rankings, k).items())


def rrf_returns_dict(rankings, k=60):
    return _rrf_scores(rankings, k)


def rrf_ids_only(rankings, k=60):
    return [doc for doc, _ in rrf_dict(rankings, k)]


def rrf_swapped_pairs(rankings, k=60):
    return [(score, doc) for doc, score in rrf_dict(rankings, k)]


def rrf_not_merged(rankings, k=60):
    pairs = [(doc, 1 / (k + r)) for ranking in rankings for r, doc in enumerate(ranking, 1)]
    return sorted(pairs, key=lambda p: -p[1])


# --------------------------------------------------------------------------------------------
# What the contract runs

CORRECT_VARIANTS = [
    (IDF, idf_math),
    (IDF, idf_numpy),
    (IDF, idf_log_difference),
    (SCO, scores_loop),
    (SCO, scores_vectorised),
    (SCO, scores_float32),
    (REC, recall_sets),
    (REC, recall_loop),
    (RR, rr_loop),
    (RR, rr_index),
    (RRF, rrf_dict),
    (RRF, rrf_defaultdict_reverse),
]

MUTANTS = [
    (IDF, idf_no_half, IDF_FIRST, "your idf lacks the 0.5s"),
    (IDF, idf_tf_idf, IDF_FIRST, "tf-idf's ln(N / n)"),
    (IDF, idf_log10, IDF_FIRST, "the log in base 10"),
    (IDF, idf_log2, IDF_FIRST, "the log in base 2"),
    (IDF, idf_inverted_odds, IDF_FIRST, "N and n are swapped"),
    (IDF, idf_literal_swap, IDF_FIRST, "N and n are swapped"),
    (IDF, idf_always_okapi, IDF_FIRST, "you computed okapi's idf"),
    (IDF, idf_always_lucene, IDF_OKAPI, "you added lucene's 1 + inside the log"),
    (IDF, idf_one_outside, IDF_FIRST, "the 1 goes INSIDE the log"),
    (IDF, idf_no_minus_n, IDF_FIRST, "the numerator is N - n + 0.5"),
    (IDF, idf_floored, IDF_NEGATIVE, "you floored the negative idf at 0"),
    (IDF, idf_abs, IDF_NEGATIVE, "you made the negative idf positive"),
    (IDF, idf_string, IDF_FIRST, "expected a float (the idf), received a str"),
    (SCO, scores_no_factor, SCO_FIRST, "right up to the factor (k1 + 1) = 2.5"),
    (SCO, scores_always_okapi, SCO_FIRST, "you used the okapi idf for variant='lucene'"),
    (SCO, scores_always_lucene, SCO_OKAPI, "you used the lucene idf for variant='okapi'"),
    (SCO, scores_floored, SCO_NEGATIVE, "you floored the negative okapi idf at 0"),
    (SCO, scores_occurrences, SCO_FIRST, "counts the word's occurrences"),
    (SCO, scores_deduplicated, SCO_REPEAT, "you counted each query word once"),
    (SCO, scores_linear_tf, SCO_FIRST, "grows linearly with tf and never saturates"),
    (SCO, scores_tf_idf, SCO_FIRST, "your score is idf * tf, tf-idf"),
    (SCO, scores_inverted_length, SCO_FIRST, "your length normalisation is inverted"),
    (SCO, scores_no_length, SCO_FIRST, "your scores ignore the documents' lengths"),
    (SCO, scores_b_swapped, SCO_FIRST, "b and 1 - b are swapped"),
    (SCO, scores_k1_on_first_term, SCO_FIRST, "not only its first term"),
    (SCO, scores_no_k1, SCO_FIRST, "k1 is missing from the denominator"),
    (SCO, scores_distinct_length, SCO_FIRST, "your |d| counts distinct words"),
    (SCO, scores_idf_no_half, SCO_FIRST, "your idf lacks the 0.5s"),
    (SCO, scores_int_array, SCO_FIRST, "cut to an integer"),
    (SCO, scores_list, SCO_FIRST, "expected a numpy array, received a list of length 5"),
    (SCO, scores_tensor, SCO_FIRST, "received a torch tensor of shape (5,) float64"),
    (SCO, scores_matching_only, SCO_FIRST, "expected shape (5,), one score per document"),
    (SCO, scores_doubled, SCO_FIRST, "the expected ones times 2"),
    (SCO, scores_lookup, SCO_UNKNOWN, "your function raised KeyError"),
    (SCO, scores_no_defaults, SCO_FIRST, "missing 3 required positional arguments"),
    (SCO, scores_nan, SCO_FIRST, "a 0 / 0 or a division by 0"),
    (REC, recall_over_k, REC_FIRST, "you divided by k = 5"),
    (REC, recall_capped, REC_FIRST, "BEIR's capped recall"),
    (REC, recall_count, REC_FIRST, "the number of gold ids found"),
    (REC, recall_hit, REC_FIRST, "that is hit@k"),
    (REC, recall_over_ranking, REC_FIRST, "the length of the ranking (15)"),
    (REC, recall_k_plus_1, REC_FIRST, "the first k + 1 ids"),
    (REC, recall_k_minus_1, REC_FIRST, "the first k - 1 ids"),
    (REC, recall_ignores_k, REC_FIRST, "you ignored k"),
    (REC, recall_list_length, REC_REPEATS, "gold_ids repeats an id"),
    (REC, recall_counts_repeats, REC_REPEATS, "gold_ids repeats an id"),
    (REC, recall_indexes, REC_LONG_K, "your function raised IndexError"),
    (RR, rr_zero_based, RR_FIRST, "your ranks start at 0"),
    (RR, rr_rank, RR_FIRST, "you returned the rank, 3"),
    (RR, rr_position, RR_FIRST, "you returned the 0-based position, 2"),
    (RR, rr_plus_one, RR_FIRST, "you added 1 to a rank that starts at 1"),
    (RR, rr_last, RR_FIRST, "the LAST gold id in the ranking"),
    (RR, rr_mean, RR_FIRST, "you averaged 1 / rank over the gold ids"),
    (RR, rr_sum, RR_FIRST, "you summed 1 / rank over the gold ids"),
    (RR, rr_gold_order, RR_ORDER, "the gold id listed first in gold_ids"),
    (RR, rr_none, RR_NONE, "received None where no gold id is ranked"),
    (RR, rr_minus_one, RR_NONE, "the reciprocal rank is then 0.0"),
    (RR, rr_raises, RR_NONE, "your function raised ValueError"),
    (RRF, rrf_zero_based, RRF_FIRST, "your ranks start at 0"),
    (RRF, rrf_no_k, RRF_FIRST, "you left k out"),
    (RRF, rrf_summed_ranks, RRF_FIRST, "you summed the ranks themselves"),
    (RRF, rrf_reciprocal_of_sum, RRF_FIRST, "the reciprocal of the summed ranks"),
    (RRF, rrf_mean, RRF_FIRST, "you averaged over the rankings"),
    (RRF, rrf_intersection, RRF_FIRST, "only the ids that every ranking lists"),
    (RRF, rrf_ascending, RRF_FIRST, "sorted worst first"),
    (RRF, rrf_ties_by_id_reversed, RRF_FIRST, "equal scores keep the order of first appearance"),
    (RRF, rrf_ties_by_id, RRF_TIES, "equal scores keep the order of first appearance"),
    (RRF, rrf_unsorted, RRF_FIRST, "sort the pairs by score, best first"),
    (RRF, rrf_returns_dict, RRF_FIRST, "a dict has no ranking"),
    (RRF, rrf_ids_only, RRF_FIRST, "you returned the ids alone"),
    (RRF, rrf_swapped_pairs, RRF_FIRST, "your pairs are (score, id)"),
    (RRF, rrf_not_merged, RRF_FIRST, "is listed twice"),
]


# --------------------------------------------------------------------------------------------
# Answers that call the package's retrieval code (or rank_bm25): flagged


def idf_with_the_package(n_docs, doc_freq, variant):
    corpus = [["t"]] * doc_freq + [["u"]] * (n_docs - doc_freq)
    return BM25(corpus, variant="lucene").idf["t"]


def scores_with_the_package(corpus_tokens, query_tokens, k1=1.5, b=0.75, variant="lucene"):
    return BM25(corpus_tokens, k1=k1, b=b, variant=variant).scores(query_tokens)


def scores_with_rank_bm25(corpus_tokens, query_tokens, k1=1.5, b=0.75, variant="lucene"):
    return BM25Okapi(corpus_tokens, k1=k1, b=b).get_scores(query_tokens)


def recall_with_the_package(ranked_ids, gold_ids, k):
    return metrics.recall_at_k(ranked_ids, gold_ids, k)


def rr_with_the_package(ranked_ids, gold_ids):
    return metrics.reciprocal_rank(ranked_ids, gold_ids)


def rrf_with_the_package(rankings, k=60):
    return fusion.reciprocal_rank_fusion(rankings, k=k)


FORBIDDEN = [
    (IDF, idf_with_the_package, "llmlab.rag.bm25.BM25.__init__"),
    (SCO, scores_with_the_package, "llmlab.rag.bm25.BM25.__init__"),
    (SCO, scores_with_rank_bm25, "rank_bm25.BM25Okapi.__init__"),
    (REC, recall_with_the_package, "llmlab.rag.metrics.recall_at_k"),
    (RR, rr_with_the_package, "llmlab.rag.metrics.reciprocal_rank"),
    (RRF, rrf_with_the_package, "llmlab.rag.fusion.reciprocal_rank_fusion"),
]


# --------------------------------------------------------------------------------------------
# The references are the package's (and rank_bm25's) numbers


def test_the_idf_reference_is_the_package_idf():
    for n_docs in (1, 4, 10, 1000):
        for doc_freq in range(1, n_docs + 1, max(1, n_docs // 7)):
            corpus = [["t"]] * doc_freq + [["u"]] * (n_docs - doc_freq)
            lucene = BM25(corpus, variant="lucene").idf["t"]
            assert rk.reference_bm25_idf(n_docs, doc_freq, "lucene") == pytest.approx(lucene)
            okapi = BM25(corpus, variant="okapi")
            raw = rk.reference_bm25_idf(n_docs, doc_freq, "okapi")
            if raw >= 0:  # the package floors the negative ones
                assert raw == pytest.approx(okapi.idf["t"], abs=1e-12)


def test_the_scores_reference_is_the_package_and_rank_bm25():
    for case in rk._scores_cases():
        corpus, query = case.args
        settings = {"k1": 1.5, "b": 0.75, "variant": "lucene", **case.kwargs}
        ours = rk.reference_bm25_scores(corpus, query, **case.kwargs)
        assert ours.dtype == np.float64 and ours.shape == (len(corpus),)
        written = _bm25(corpus, query, settings["k1"], settings["b"], settings["variant"])
        np.testing.assert_allclose(ours, written, rtol=1e-12, atol=1e-12)
        package = BM25(corpus, k1=settings["k1"], b=settings["b"], variant=settings["variant"])
        negative = any(
            rk.reference_bm25_idf(len(corpus), n, "okapi") < 0 for t, n in package.doc_freq.items()
        )
        if settings["variant"] == "lucene":
            np.testing.assert_allclose(ours, package.scores(query), rtol=1e-12)
        elif not negative:  # okapi: the same as the package and rank_bm25 where nothing floors
            np.testing.assert_allclose(ours, package.scores(query), rtol=1e-12)
            theirs = BM25Okapi(corpus, k1=settings["k1"], b=settings["b"]).get_scores(query)
            np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-12)


def test_the_metric_and_fusion_references_are_the_package():
    for case in rk._recall_cases():
        assert rk.reference_recall_at_k(*case.args) == metrics.recall_at_k(*case.args)
    for case in rk._rr_cases():
        assert rk.reference_reciprocal_rank(*case.args) == metrics.reciprocal_rank(*case.args)
    for case in rk._rrf_cases():
        want = fusion.reciprocal_rank_fusion(*case.args, **case.kwargs)
        assert rk.reference_reciprocal_rank_fusion(*case.args, **case.kwargs) == want


# --------------------------------------------------------------------------------------------
# The cases hold what their names say, and the first ones tell the slips apart


def _case(cases, name):
    (case,) = [c for c in cases if c.name == name]
    return case


def test_the_bm25_cases_hold_what_they_say():
    corpus, query = _case(rk._scores_cases(), SCO_NEGATIVE).args
    assert sum("the" in doc for doc in corpus) == 4 and len(corpus) == 5
    assert rk.reference_bm25_idf(5, 4, "okapi") < 0
    corpus, query = _case(rk._scores_cases(), SCO_OKAPI).args
    assert all(sum(t in doc for doc in corpus) == 2 for t in query)
    corpus, query = _case(rk._scores_cases(), SCO_UNKNOWN).args
    assert not any("harbour" in doc for doc in corpus)
    corpus, query = _case(rk._scores_cases(), SCO_FIRST).args
    assert len({len(doc) for doc in corpus}) == len(corpus)  # every length differs
    assert max(doc.count(t) for doc in corpus for t in query) > 1  # a tf above 1
    for case in rk._scores_cases():
        if "empty document" in case.name:
            assert [] in case.args[0]
        if "empty query" in case.name:
            assert case.args[1] == []


def test_the_first_scores_case_tells_every_slip_apart():
    # Every slip gives its own scores there, except the deduplicated query (no word repeats in
    # it; the case of a repeated word exposes that one).
    corpus, query = _case(rk._scores_cases(), SCO_FIRST).args
    seen = [rk.reference_bm25_scores(corpus, query)]
    for slip, words in rk._scores_slips(corpus, query, 1.5, 0.75, "lucene"):
        assert slip is not None, words
        if "each query word once" in words:
            assert np.allclose(slip, seen[0])
            continue
        assert all(not np.allclose(slip, other, rtol=1e-6, atol=1e-6) for other in seen), words
        seen.append(np.array(slip))


@pytest.mark.parametrize(
    ("slips", "args", "want"),
    [
        (rk._idf_slips, (10, 3, "lucene"), rk.reference_bm25_idf(10, 3, "lucene")),
        (rk._recall_slips, _case(rk._recall_cases(), REC_FIRST).args, 1 / 3),
        (rk._rr_slips, _case(rk._rr_cases(), RR_FIRST).args, 1 / 3),
    ],
    ids=["idf", "recall", "reciprocal rank"],
)
def test_the_first_case_gives_each_slip_its_own_number(slips, args, want):
    # (Lucene's idf without the 0.5s is tf-idf's ln(N / n): one number, and both messages
    # say so.)
    found = [(want, "the answer"), *((v, w) for v, w in slips(*args) if v is not None)]
    for i, (a, words_a) in enumerate(found):
        for b, words_b in found[i + 1 :]:
            if math.isclose(a, b, rel_tol=1e-9):
                assert "tf-idf" in words_a and "tf-idf" in words_b, (words_a, words_b)


def test_the_tie_case_has_exact_ties():
    (rankings,) = _case(rk._rrf_cases(), RRF_TIES).args
    fused = dict(rk.reference_reciprocal_rank_fusion(rankings))
    assert fused["zeta"] == fused["alpha"] and fused["beta"] == fused["mu"]
    assert sorted(fused) != [doc for doc, _ in rk.reference_reciprocal_rank_fusion(rankings)]


def test_the_random_corpus_comes_from_private_generators():
    np.random.seed(3)
    torch.manual_seed(3)
    state = np.random.get_state()[1].copy(), torch.random.get_rng_state()
    assert rk._random_corpus(40, 25, seed=700) == rk._random_corpus(40, 25, seed=700)
    assert np.array_equal(np.random.get_state()[1], state[0])
    assert torch.equal(torch.random.get_rng_state(), state[1])


# --------------------------------------------------------------------------------------------
# Messages on shapes of answers the mutants do not cover


def test_the_right_scores_in_a_worse_order_are_told_to_sort():
    # The order check reads the scores: an answer with the right scores in an order that
    # breaks a real difference is told to sort.
    (rankings,) = _case(rk._rrf_cases(), RRF_FIRST).args
    want = rk._run(rk.reference_reciprocal_rank_fusion, rankings)
    pairs = list(want["out"])
    pairs[0], pairs[-1] = pairs[-1], pairs[0]
    problem = rk._rrf_problem({**want, "out": pairs}, want)
    assert "sort the pairs by score, best first" in problem


def test_the_idf_check_names_nan_and_inf():
    want = rk._run(rk.reference_bm25_idf, 10, 3, "okapi")
    assert "the log of a negative number" in rk._idf_problem({**want, "out": math.nan}, want)
    assert "the log of 0" in rk._idf_problem({**want, "out": -math.inf}, want)


def test_a_numpy_float_or_0_dim_tensor_counts_as_a_float():
    for value in (np.float64(1 / 3), np.float32(1 / 3), torch.tensor(1 / 3, dtype=torch.float64)):
        assert isinstance(rk._plain(value), float)


# --------------------------------------------------------------------------------------------
# The grader's sandbox sends the drivers' results back as plain data


@pytest.mark.parametrize(
    ("check", "fn", "args", "kwargs"),
    [
        ("idf", idf_numpy, (10, 3, "okapi"), {}),
        ("scores", scores_vectorised, (rk.TOWN, ["velmora", "bridge"]), {"variant": "okapi"}),
        ("recall", lambda r, g, k: np.float64(recall_sets(r, g, k)), ([1, 2, 3], {2, 9}, 2), {}),
        ("rrf", lambda rs, k=60: [(np.int64(d), np.float64(s)) for d, s in rrf_dict(rs, k)],
         ([[1, 2], [2, 3]],), {"k": 60}),
    ],
    ids=["idf", "scores", "recall", "rrf"],
)  # fmt: skip
def test_numpy_answers_survive_the_trip_back_from_the_sandbox(check, fn, args, kwargs):
    compare, reference = {
        "idf": (rk._idf_problem, rk.reference_bm25_idf),
        "scores": (rk._scores_problem, rk.reference_bm25_scores),
        "recall": (rk._recall_problem, rk.reference_recall_at_k),
        "rrf": (rk._rrf_problem, rk.reference_reciprocal_rank_fusion),
    }[check]
    received = rk._run(fn, *args, **kwargs)
    buffer = io.BytesIO()
    torch.save({"v": encode(received)}, buffer)
    back = load_reply(buffer.getvalue())["v"]
    assert compare(back, rk._run(reference, *args, **kwargs)) is None
