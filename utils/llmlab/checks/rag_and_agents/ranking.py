"""Checks of chapter 07's ranking lab (``solutions/07_rag_and_agents/01_ranking.ipynb``).

    lab 01_ranking: bm25_idf, bm25_scores, recall_at_k, reciprocal_rank, reciprocal_rank_fusion

A corpus is a list of documents, each a list of str tokens; a query is a list of tokens. A
ranking is a list of distinct document ids, best first; ``gold_ids`` are the ids that hold the
answer (a set or a list; an id listed twice is still one relevant document).

- ``bm25_idf(n_docs, doc_freq, variant) -> float``: with N = n_docs documents, n = doc_freq of
  them containing the word, and odds = (N - n + 0.5) / (n + 0.5): ``ln(odds)`` for
  ``"okapi"``, ``ln(1 + odds)`` for ``"lucene"``. No floor: okapi's idf is negative for a word in
  more than half the documents, and that is the answer here (rank_bm25 floors it; the lab
  explains how and asks why).
- ``bm25_scores(corpus_tokens, query_tokens, k1=1.5, b=0.75, variant="lucene") -> np.ndarray``:
  one float per document, the sum over the query's tokens (a repeated token counts each time)
  of ``idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * |d| / avgdl))``, the idf from
  ``bm25_idf`` with n the number of documents that contain the token.
- ``recall_at_k(ranked_ids, gold_ids, k) -> float``: the share of the distinct gold ids found
  among the first k ranked ids.
- ``reciprocal_rank(ranked_ids, gold_ids) -> float``: 1 / (the 1-based rank of the first gold id
  in the ranking), 0.0 when none is ranked.
- ``reciprocal_rank_fusion(rankings, k=60) -> list[(id, score)]``: score(d) = the sum over the
  rankings that list d of 1 / (k + rank), ranks from 1; best first, equal scores in the order
  the ids first appear (ranking 0 top to bottom, then ranking 1, ...).

The cases catch the usual slips, and the message names the slip when the answer matches it: in
``bm25_idf``, the log without the 0.5s (for lucene that is tf-idf's ln(N / n)), a log in base
10 or 2, N and n swapped (inverted odds, or the literal swap), the wrong variant (okapi for
lucene: no ``1 +``; lucene for okapi), ``1 + ln(odds)`` with the 1 outside the log, N instead
of N - n in the numerator, a negative okapi idf floored at 0 or made positive with abs; in
``bm25_scores``, scores that are right up to the factor (k1 + 1) (Lucene 8's and bm25s's
convention: it only rescales, but this lab keeps the factor, so it fails), the other variant's
idf, a floored okapi idf, n(t) counting occurrences instead of documents, query tokens
deduplicated, tf without saturation (no tf in the denominator, or plain idf * tf), the length
normalisation inverted (avgdl / |d|) or missing, b and 1 - b swapped, k1 on the first term
only or missing, |d| counting distinct words, an idf without the 0.5s, in base 10 or with the
odds inverted, an integer array (floats cut to ints), NaN from a 0 / 0, a list or tensor where
a numpy array is asked, a constant factor; in ``recall_at_k``, a division by k (precision@k;
by min(k, |gold|), capped recall, where k is the smaller), a count, hit@k, a division by the
ranking's length, the first k + 1 or k - 1 ids, k ignored, gold ids counted with their repeats;
in ``reciprocal_rank``, 0-based ranks, the rank instead of 1 / rank, 1 / (rank + 1), the last
gold id, the mean or the sum over all gold ids, the gold id listed first in ``gold_ids``
rather than ranked first, -1 or None when no gold id is ranked; in
``reciprocal_rank_fusion``, 0-based ranks, no k (1 / rank), the ranks summed (k + rank, or
rank) instead of their reciprocals, the reciprocal of the summed ranks, a mean instead of a
sum, ids listed in only some rankings dropped, the list sorted ascending, equal scores ordered
by id instead of by first appearance, (score, id) pairs, ids without scores, a dict.

Each ``check_NAME(fn)`` prints one line and returns a :class:`llmlab.checks.CheckResult`
whose ``.fn`` the lab keeps using::

    bm25_scores = check_bm25_scores(bm25_scores).fn

The references delegate to :mod:`llmlab.rag` (``BM25``, ``metrics``, ``fusion``), except the
idf, which the package computes inside ``BM25`` (the same formulas, written out here; okapi
without the package's floor); an answer that calls :mod:`llmlab.rag`, ``rank_bm25`` or
``bm25s`` is flagged. Random corpora come from :mod:`llmlab.checks._inputs`, so a check never
moves the notebook's seed. Every answer runs through a driver that turns numpy and torch
results into plain Python data before they are compared, so the grader's sandbox can send them
back.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from llmlab.checks import Case, CheckResult, describe, run_check
from llmlab.checks._inputs import token_ids
from llmlab.rag import fusion, metrics
from llmlab.rag.bm25 import BM25, VARIANTS

#: The package's retrieval code computes the answers: an answer that calls it is flagged.
FORBID = ("llmlab.rag",)
#: For BM25, the libraries that implement it too.
FORBID_BM25 = ("llmlab.rag", "rank_bm25", "bm25s")

#: Tolerances on one number (an idf, a recall, a reciprocal rank, an RRF score).
ATOL, RTOL = 1e-9, 1e-9
#: Tolerances on BM25 scores (float32 arithmetic stays well inside).
SCORE_ATOL, SCORE_RTOL = 1e-6, 1e-6

TERM_PART = "tf * (k1 + 1) / (tf + k1 * (1 - b + b * |d| / avgdl))"

# --------------------------------------------------------------------------------------------
# References


def reference_bm25_idf(n_docs: int, doc_freq: int, variant: str) -> float:
    """okapi: ln((N - n + 0.5) / (n + 0.5)); lucene: ln(1 + (N - n + 0.5) / (n + 0.5)).

    ``llmlab.rag.bm25.BM25`` computes the same idfs inside its index (and floors okapi's
    negative ones, as rank_bm25 does); this lab's okapi idf has no floor.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {VARIANTS}, got {variant!r}")
    odds = (n_docs - doc_freq + 0.5) / (doc_freq + 0.5)
    return math.log(odds) if variant == "okapi" else math.log(1 + odds)


def reference_bm25_scores(
    corpus_tokens: list[list[str]],
    query_tokens: list[str],
    k1: float = 1.5,
    b: float = 0.75,
    variant: str = "lucene",
) -> np.ndarray:
    """The BM25 score of every document, float64 (N,): ``llmlab.rag.bm25.BM25``'s, with the
    okapi idf unfloored (this lab's ``bm25_idf``)."""
    index = BM25(corpus_tokens, k1=k1, b=b, variant=variant)
    if variant == "okapi":
        index.idf = {
            term: reference_bm25_idf(index.n_docs, n, "okapi") for term, n in index.doc_freq.items()
        }
    return index.scores(query_tokens)


def reference_recall_at_k(ranked_ids: Sequence, gold_ids: Sequence | set, k: int) -> float:
    """The share of the distinct ``gold_ids`` among the first ``k`` of ``ranked_ids``."""
    return metrics.recall_at_k(ranked_ids, gold_ids, k)


def reference_reciprocal_rank(ranked_ids: Sequence, gold_ids: Sequence | set) -> float:
    """1 / (1-based rank of the first gold id in ``ranked_ids``); 0.0 when none is ranked."""
    return metrics.reciprocal_rank(ranked_ids, gold_ids)


def reference_reciprocal_rank_fusion(rankings: Sequence[Sequence], k: float = 60) -> list[tuple]:
    """(id, sum over rankings of 1 / (k + rank)) pairs, best first, ties by first appearance."""
    return fusion.reciprocal_rank_fusion(rankings, k=k)


# --------------------------------------------------------------------------------------------
# What a case sends back: plain Python data


_ARRAY = "llmlab_array"  # the key that marks an array turned into plain data


def _plain(value: Any, depth: int = 0) -> Any:
    """``value`` as plain data: numpy scalars and 0-dim arrays or tensors as Python numbers,
    arrays and tensors as ``{_ARRAY: kind, "dtype", "shape", "values"}``, lists and tuples
    item by item. (The grader's worker sends back plain data only: a numpy array or a numpy
    float would not survive the trip.)"""
    if depth > 6:
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (np.ndarray, torch.Tensor)):
        if value.ndim == 0:
            return value.item()
        if isinstance(value, torch.Tensor):
            kind, dtype = "torch tensor", str(value.dtype).removeprefix("torch.")
            values = value.detach().cpu().tolist()
        else:
            kind, dtype, values = "numpy array", str(value.dtype), value.tolist()
        return {_ARRAY: kind, "dtype": dtype, "shape": list(value.shape), "values": values}
    if type(value) in (list, tuple):
        return type(value)(_plain(item, depth + 1) for item in value)
    return value


def _run(fn: Callable, *args: Any, **kwargs: Any) -> dict:
    """Call ``fn`` the way the lab does; what it returned as plain data, and the inputs."""
    return {"out": _plain(fn(*args, **kwargs)), "args": args, "kwargs": kwargs}


def _is_array(value: Any) -> bool:
    return isinstance(value, dict) and _ARRAY in value


def _what(value: Any) -> str:
    """``value`` in words, arrays included."""
    if _is_array(value):
        return f"a {value[_ARRAY]} of shape {tuple(value['shape'])} {value['dtype']}"
    return describe(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _close(got: float, want: float, atol: float = ATOL, rtol: float = RTOL) -> bool:
    return abs(got - want) <= atol + rtol * abs(want)


def _number_problem(got: Any, what: str) -> str | None:
    """Why ``got`` is not one finite real number (``what`` names it); None when it is."""
    if got is None:
        return f"expected a float ({what}), received None: is a `return` missing?"
    if _is_array(got):
        return f"expected one float ({what}), received {_what(got)}"
    if not _is_number(got):
        return f"expected a float ({what}), received {describe(got)}"
    if math.isnan(got):
        return f"received nan for {what}"
    return None


def _first_slip(got: float, slips: Iterator[tuple[float | None, str]]) -> str | None:
    for value, words in slips:
        if value is not None and math.isfinite(value) and _close(got, value):
            return words
    return None


# --------------------------------------------------------------------------------------------
# bm25_idf


def _log(x: float, base: float = math.e) -> float | None:
    """ln(x) (or the log in ``base``), None where it is undefined."""
    return math.log(x, base) if x > 0 else None


def _idf_slips(n_docs: int, doc_freq: int, variant: str) -> Iterator[tuple[float | None, str]]:
    """(what a slip gives, the words that name it), for one (N, n, variant)."""
    N, n = n_docs, doc_freq
    odds = (N - n + 0.5) / (n + 0.5)
    okapi = variant == "okapi"

    def idf(x: float, base: float = math.e) -> float | None:
        return _log(x if okapi else 1 + x, base)

    formula = "ln((N - n + 0.5) / (n + 0.5))" if okapi else "ln(1 + (N - n + 0.5) / (n + 0.5))"
    true = idf(odds)
    if okapi and true is not None and true < 0:
        yield (
            0.0,
            "you floored the negative idf at 0: this exercise's okapi idf has no floor, "
            "ln(odds) is negative for a word in more than half the documents and that is the "
            "answer (rank_bm25 floors it; the lab asks what a floor changes)",
        )
        yield (
            -true,
            "you made the negative idf positive (abs, or the odds turned upside down): okapi's "
            "ln(odds) is negative for a word in more than half the documents, and this exercise "
            "returns it as it is",
        )
    if okapi:
        yield (
            _log(1 + odds),
            "variant='okapi' is ln(odds) itself, ln((N - n + 0.5) / (n + 0.5)): you added "
            "lucene's 1 + inside the log",
        )
    else:
        yield (
            _log(odds),
            "you computed okapi's idf, ln(odds): variant='lucene' adds 1 inside the log, "
            "ln(1 + (N - n + 0.5) / (n + 0.5)), which keeps every idf positive",
        )
        plain = _log(odds)
        yield (
            None if plain is None else 1 + plain,
            "1 + ln(odds): the 1 goes INSIDE the log, ln(1 + (N - n + 0.5) / (n + 0.5))",
        )
    if 0 < n < N:
        yield (
            idf((N - n) / n),
            f"your idf lacks the 0.5s: {formula} (without them the odds are infinite for a "
            "word in no document; for lucene the formula without them is tf-idf's ln(N / n))",
        )
    if n > 0:
        yield (
            _log(N / n),
            f"that is tf-idf's ln(N / n): BM25's {variant} idf is {formula}",
        )
    if true is not None and true != 0:
        yield (
            idf(odds, 10),
            f"that is the log in base 10: BM25 uses the natural log, math.log or np.log; {formula}",
        )
        yield (
            idf(odds, 2),
            f"that is the log in base 2: BM25 uses the natural log, math.log or np.log; {formula}",
        )
    swapped = (
        f"N and n are swapped: the odds are (N - n + 0.5) / (n + 0.5), the documents WITHOUT "
        f"the word over those WITH it (N = n_docs = {N}, n = doc_freq = {n}); {formula}"
    )
    yield idf((n + 0.5) / (N - n + 0.5)), swapped
    yield idf((n - N + 0.5) / (N + 0.5)), swapped
    if n > 0:
        yield (
            idf((N + 0.5) / (n + 0.5)),
            f"the numerator is N - n + 0.5, the number of documents WITHOUT the word: {formula}",
        )


def _idf_cases() -> list[Case]:
    lucene = "variant='lucene': math.log(1 + (N - n + 0.5) / (n + 0.5))."
    okapi = "variant='okapi': math.log((N - n + 0.5) / (n + 0.5)), without the 1 +."
    return [
        Case("N = 10 documents, the word in n = 3, lucene", (10, 3, "lucene"), hint=lucene),
        Case("the same word, okapi", (10, 3, "okapi"), hint=okapi),
        Case("a rare word: in 1 of 1000 documents, okapi", (1000, 1, "okapi"), hint=okapi),
        Case(
            "a word in 3 of 4 documents, okapi: a negative idf, returned as it is",
            (4, 3, "okapi"),
            hint="no floor in this exercise: math.log(1.5 / 3.5) is negative, and that is the "
            "answer.",
        ),
        Case("a word in exactly half the documents, 2 of 4, okapi: idf 0", (4, 2, "okapi")),
        Case(
            "a word in every document, 7 of 7, lucene: small but positive",
            (7, 7, "lucene"),
            hint=lucene,
        ),
        Case(
            "a word in no document, 0 of 5, lucene",
            (5, 0, "lucene"),
            hint="the 0.5s keep the odds finite when n = 0: (N - n + 0.5) / (n + 0.5).",
        ),
        Case(
            "a word in no document, 0 of 5, okapi",
            (5, 0, "okapi"),
            hint="the 0.5s keep the odds finite when n = 0: (N - n + 0.5) / (n + 0.5).",
        ),
        Case(
            "a large corpus: 1,000,000 documents, the word in 120, lucene",
            (1_000_000, 120, "lucene"),
            hint=lucene,
        ),
    ]


def _idf_problem(received: dict, expected: dict) -> str | None:
    got, want = received["out"], expected["out"]
    problem = _number_problem(got, "the idf")
    if problem is not None:
        if isinstance(got, float) and math.isnan(got):
            return (
                "received nan: the log of a negative number (np.log gives nan where math.log "
                "raises); the odds (N - n + 0.5) / (n + 0.5) are positive for 0 <= n <= N"
            )
        return problem
    if math.isinf(got):
        return f"received {got}: the log of 0 or a division by 0; use the 0.5s, (N - n + 0.5) / (n + 0.5)"
    if _close(got, want):
        return None
    slip = _first_slip(got, _idf_slips(*expected["args"]))
    if slip is not None:
        return slip
    return f"expected {want:.6g}, received {got:.6g}"


def check_bm25_idf(bm25_idf: Callable) -> CheckResult:
    """Check ``bm25_idf(n_docs, doc_freq, variant) -> float``."""
    return run_check(
        "bm25_idf",
        bm25_idf,
        reference_bm25_idf,
        _idf_cases(),
        hint="odds = (n_docs - doc_freq + 0.5) / (doc_freq + 0.5); return math.log(odds) for "
        "'okapi', math.log(1 + odds) for 'lucene'.",
        run=_run,
        compare=_idf_problem,
        arg_names=("n_docs", "doc_freq", "variant"),
        forbid=FORBID,
    )


# --------------------------------------------------------------------------------------------
# bm25_scores

_TOWN = [
    "the old bridge of velmora crosses the river",
    "velmora velmora velmora market day",
    "a long road runs from the river past the mill past the farms and past the hills to the "
    "sea at the far end of the valley",
    "the mill",
    "bridge builders from velmora repaired the bridge and the mill last spring",
]
TOWN = [doc.split() for doc in _TOWN]


def _random_corpus(n_docs: int, vocab: int, seed: int) -> list[list[str]]:
    """``n_docs`` documents of 3 to 30 tokens drawn from ``vocab`` words "w00", "w01", ..."""
    lengths = (token_ids(n_docs, vocab=28, seed=seed) + 3).tolist()
    words = token_ids(sum(lengths), vocab=vocab, seed=seed + 1).tolist()
    docs, start = [], 0
    for length in lengths:
        docs.append([f"w{w:02d}" for w in words[start : start + length]])
        start += length
    return docs


def _scores_cases() -> list[Case]:
    def case(name, corpus, query, hint="", **kwargs):
        return Case(name, (corpus, query), kwargs, hint=hint)

    formula = (
        f"score(d) = sum over the query's tokens t of bm25_idf(N, n(t), variant) * {TERM_PART}, "
        "with tf the count of t in d, n(t) the number of documents that contain t, |d| = "
        "len(d) and avgdl the mean length."
    )
    okapi = (
        "variant='okapi': bm25_idf(N, n, 'okapi'), ln((N - n + 0.5) / (n + 0.5)), as it is: "
        "negative for a word in more than half the documents (no floor)."
    )
    randoms = _random_corpus(40, 25, seed=700)
    query = [f"w{w:02d}" for w in token_ids(4, vocab=25, seed=702).tolist()]
    with_empty = [*TOWN[:3], [], TOWN[4]]
    return [
        case(
            "5 documents of different lengths, query ['velmora', 'bridge'], the defaults "
            "(k1=1.5, b=0.75, lucene)",
            TOWN, ["velmora", "bridge"], hint=formula,
        ),
        case(
            "variant='okapi', each query word in 2 of the 5 documents",
            TOWN, ["bridge", "river"], hint=okapi, variant="okapi",
        ),
        case(
            "variant='okapi', 'the' in 4 of the 5 documents: a negative idf, no floor",
            TOWN, ["the", "bridge"], hint=okapi, variant="okapi",
        ),
        case(
            "a query that repeats a word, ['mill', 'mill', 'river']: 'mill' counts twice",
            TOWN, ["mill", "mill", "river"],
            hint="loop over query_tokens as given: a repeated token adds its term again "
            "(not set(query_tokens)).",
        ),
        case("k1=1.2, b=0.3", TOWN, ["velmora", "mill", "sea"], hint=formula, k1=1.2, b=0.3),
        case(
            "b=0: no length normalisation", TOWN, ["velmora", "the"], hint=formula, k1=1.5, b=0.0
        ),
        case(
            "b=1, k1=2.0: full length normalisation",
            TOWN, ["river", "mill"], hint=formula, k1=2.0, b=1.0,
        ),
        case(
            "a query word in no document, 'harbour', adds nothing",
            TOWN, ["harbour", "bridge"],
            hint="a token that no document contains adds nothing to any score: skip it "
            "(doc_freq.get(t, 0) == 0) instead of looking it up.",
        ),
        case(
            "an empty query: every document scores 0",
            TOWN, [], hint="with no query tokens return np.zeros(len(corpus_tokens)).",
        ),
        case(
            "an empty document in the corpus scores 0",
            with_empty, ["river", "bridge"], hint=formula,
        ),
        case("a corpus of one document", [TOWN[4]], ["bridge", "mill"], hint=formula),
        case(
            "40 random documents of 3 to 30 tokens over 25 words, a 4-word query, okapi",
            randoms, query, hint=okapi, variant="okapi",
        ),
    ]  # fmt: skip


def _written_out(
    corpus: list[list[str]],
    query: list[str],
    k1: float,
    b: float,
    idf: Callable[[int, int], float | None],
    *,
    dedupe: bool = False,
    term: str = "bm25",
    norm: str = "bm25",
    factor: bool = True,
    distinct_len: bool = False,
    df_counts: bool = False,
) -> list[float] | None:
    """BM25 written out with one part changed (a slip), or None where that part is undefined."""
    n_docs = len(corpus)
    lengths = [len(set(doc)) if distinct_len else len(doc) for doc in corpus]
    avgdl = sum(lengths) / n_docs
    counts = [Counter(doc) for doc in corpus]
    if df_counts:  # occurrences in the corpus, not documents
        df = Counter(token for doc in corpus for token in doc)
    else:
        df = Counter(token for doc in corpus for token in set(doc))
    scores = [0.0] * n_docs
    for t in list(dict.fromkeys(query)) if dedupe else query:
        if df[t] == 0:
            continue
        weight = idf(n_docs, df[t])
        if weight is None:
            return None
        for i, (count, length) in enumerate(zip(counts, lengths, strict=True)):
            tf = count[t]
            if tf == 0:
                continue
            rel = length / avgdl
            norms = {
                "bm25": k1 * (1 - b + b * rel),
                "inverted": k1 * (1 - b + b / rel),
                "none": k1,
                "b swapped": k1 * (b + (1 - b) * rel),
                "k1 first only": k1 * (1 - b) + b * rel,
                "no k1": 1 - b + b * rel,
            }
            length_part = norms[norm]
            if term == "bm25":
                part = tf * (k1 + 1) / (tf + length_part)
            elif term == "no tf below":
                part = tf * (k1 + 1) / length_part if length_part else math.inf
            else:  # "tf": plain tf-idf
                part = tf
            if not factor:
                part /= k1 + 1
            scores[i] += weight * part
    return scores


def _scores_slips(
    corpus: list[list[str]], query: list[str], k1: float, b: float, variant: str
) -> Iterator[tuple[list[float] | None, str]]:
    other = "lucene" if variant == "okapi" else "okapi"

    def idf_of(kind: str = variant) -> Callable[[int, int], float]:
        return lambda n_docs, n: reference_bm25_idf(n_docs, n, kind)

    def slip(idf=None, **how) -> list[float] | None:
        return _written_out(corpus, query, k1, b, idf or idf_of(), **how)

    yield (
        slip(factor=False),
        f"your scores are right up to the factor (k1 + 1) = {k1 + 1:g}: every one is the "
        f"expected score divided by it. The factor only rescales (Lucene since version 8 and "
        f"bm25s drop it, and the ranking is the same), but this lab keeps it: {TERM_PART}",
    )
    yield (
        slip(idf_of(other)),
        f"you used the {other} idf for variant={variant!r}: pass variant on to bm25_idf",
    )
    if variant == "okapi":
        yield (
            slip(lambda n_docs, n: max(0.0, reference_bm25_idf(n_docs, n, "okapi"))),
            "you floored the negative okapi idf at 0: this lab's okapi idf has no floor, so a "
            "word in more than half the documents lowers the scores of the documents that "
            "contain it (rank_bm25 floors it; the lab asks what the floor changes)",
        )
    yield (
        slip(df_counts=True),
        "your n(t) counts the word's occurrences in the corpus: n(t) is the number of "
        "DOCUMENTS that contain it, a document that repeats the word counting once "
        "(count each document's set of tokens)",
    )
    yield (
        slip(dedupe=True),
        "you counted each query word once: a word the query repeats adds its term once per "
        "occurrence (loop over query_tokens as given, not over set(query_tokens))",
    )
    yield (
        slip(term="no tf below"),
        "your term part has no tf in the denominator, so it grows linearly with tf and never "
        f"saturates: {TERM_PART}",
    )
    yield (
        slip(term="tf", norm="none"),
        f"your score is idf * tf, tf-idf: linear in tf, with no saturation and no length "
        f"normalisation; BM25's term part is {TERM_PART}",
    )
    yield (
        slip(norm="inverted"),
        "your length normalisation is inverted: it uses |d| / avgdl, the document's length "
        "over the mean (not avgdl / |d|), so that a long document is penalised: "
        f"{TERM_PART}",
    )
    yield (
        slip(norm="none"),
        "your scores ignore the documents' lengths: the denominator is tf + k1 * (1 - b + b "
        "* |d| / avgdl), with |d| = len(doc) and avgdl the mean length over the corpus",
    )
    yield (
        slip(norm="b swapped"),
        "b and 1 - b are swapped: the length part is k1 * (1 - b + b * |d| / avgdl), b "
        "multiplies the relative length |d| / avgdl",
    )
    yield (
        slip(norm="k1 first only"),
        "k1 multiplies the whole length part, k1 * (1 - b + b * |d| / avgdl), not only "
        "its first term (k1 * (1 - b) + b * |d| / avgdl)",
    )
    yield (
        slip(norm="no k1"),
        f"k1 is missing from the denominator: {TERM_PART}",
    )
    yield (
        slip(distinct_len=True),
        "your |d| counts distinct words: a document's length is len(doc), every token, "
        "repeats included (and avgdl is the mean of those lengths)",
    )
    idf_words = "check it against exercise 1 (call your bm25_idf)"
    odds = lambda n_docs, n: (n_docs - n + 0.5) / (n + 0.5)  # noqa: E731
    okapi = variant == "okapi"

    def log_idf(ratio, base=math.e):
        return lambda n_docs, n: _log(ratio(n_docs, n) if okapi else 1 + ratio(n_docs, n), base)

    yield (
        slip(log_idf(lambda n_docs, n: (n_docs - n) / n if n else math.inf)),
        f"your idf lacks the 0.5s, (N - n + 0.5) / (n + 0.5): {idf_words}",
    )
    yield slip(log_idf(odds, 10)), f"your idf is a log in base 10, not the natural log: {idf_words}"
    yield (
        slip(log_idf(lambda n_docs, n: 1 / odds(n_docs, n))),
        f"your idf has N and n swapped (the odds inverted): {idf_words}",
    )


def _scores_problem(received: dict, expected: dict) -> str | None:
    got, want = received["out"], expected["out"]
    corpus, query = expected["args"]
    settings = {"k1": 1.5, "b": 0.75, "variant": "lucene", **expected["kwargs"]}
    n_docs = len(corpus)
    wanted = f"a numpy array of {n_docs} scores, one per document"
    if got is None:
        return f"expected {wanted}, received None: is a `return` missing?"
    if isinstance(got, (list, tuple)) and len(got) == n_docs and all(map(_is_number, got)):
        return (
            f"expected a numpy array, received {describe(got)} numbers: return "
            "np.array(scores) (the lab sorts it with np.argsort and negates it)"
        )
    if isinstance(got, dict) and not _is_array(got):
        return (
            f"expected {wanted}, received {describe(got)}: BM25 scores every document, the "
            "ones without a query word get 0; return np.array of length N"
        )
    if not _is_array(got):
        return f"expected {wanted}, received {describe(got)}"
    if got[_ARRAY] != "numpy array":
        return f"expected {wanted}, received {_what(got)}: return a numpy array"
    if got["shape"] != [n_docs]:
        return (
            f"expected shape ({n_docs},), one score per document, received shape "
            f"{tuple(got['shape'])}"
        )
    values, target = got["values"], want["values"]
    if not all(map(_is_number, values)):
        return f"expected float scores, received a numpy array of {got['dtype']}"
    if not got["dtype"].startswith("float"):
        truncated = [float(math.trunc(v)) for v in target]
        if all(
            _close(v, t, SCORE_ATOL, SCORE_RTOL) for v, t in zip(values, truncated, strict=True)
        ):
            return (
                f"your scores are {got['dtype']}: the array has an integer dtype, so every score "
                "written into it was cut to an integer; start from np.zeros(len(corpus_tokens)), "
                "which is float64"
            )
        return f"expected float scores, received a numpy array of {got['dtype']}"
    bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
    if bad:
        i = bad[0]
        return (
            f"document {i} scores {values[i]}: a 0 / 0 or a division by 0 somewhere (a "
            "document's length of 0, or a term computed for a document that lacks the word); "
            "a query word adds to a document's score only where tf > 0"
        )
    if all(_close(v, t, SCORE_ATOL, SCORE_RTOL) for v, t in zip(values, target, strict=True)):
        return None
    for slip, words in _scores_slips(corpus, query, **settings):
        if slip is not None and all(
            _close(v, s, SCORE_ATOL, SCORE_RTOL) for v, s in zip(values, slip, strict=True)
        ):
            return words
    nonzero = [(v, t) for v, t in zip(values, target, strict=True) if abs(t) > SCORE_ATOL]
    if nonzero:
        ratio = nonzero[0][0] / nonzero[0][1]
        zeros_right = all(
            abs(v) <= SCORE_ATOL
            for v, t in zip(values, target, strict=True)
            if abs(t) <= SCORE_ATOL
        )
        if zeros_right and all(_close(v, ratio * t, SCORE_ATOL, 1e-6) for v, t in nonzero):
            return (
                f"your scores are the expected ones times {ratio:.6g}: the same ranking, but "
                f"every score is scaled by a constant; {TERM_PART}, times the idf"
            )
    wrong = [
        i
        for i, (v, t) in enumerate(zip(values, target, strict=True))
        if not _close(v, t, SCORE_ATOL, SCORE_RTOL)
    ]
    i = wrong[0]
    others = f" ({len(wrong) - 1} other documents differ too)" if len(wrong) > 1 else ""
    return f"document {i}: expected {target[i]:.6g}, received {values[i]:.6g}{others}"


def check_bm25_scores(bm25_scores: Callable) -> CheckResult:
    """Check ``bm25_scores(corpus_tokens, query_tokens, k1=1.5, b=0.75, variant="lucene")``,
    a float numpy array of one score per document."""
    return run_check(
        "bm25_scores",
        bm25_scores,
        reference_bm25_scores,
        _scores_cases(),
        hint="N = len(corpus_tokens); avgdl = the mean of len(doc); df = Counter(t for doc in "
        "corpus_tokens for t in set(doc)); for each t in query_tokens with df[t] > 0, each "
        f"document with tf = doc.count(t) > 0 adds bm25_idf(N, df[t], variant) * {TERM_PART}.",
        run=_run,
        compare=_scores_problem,
        arg_names=("corpus_tokens", "query_tokens"),
        forbid=FORBID_BM25,
    )


# --------------------------------------------------------------------------------------------
# recall_at_k


_RANKED_15 = [14, 3, 27, 8, 11, 5, 19, 2, 30, 7, 22, 16, 25, 1, 9]


def _recall_cases() -> list[Case]:
    share = (
        "recall@k = len(set(gold_ids) & set(ranked_ids[:k])) / len(set(gold_ids)): the share "
        "of the gold ids found in the first k."
    )
    chunks = [f"chunk-{i}" for i in (4, 17, 2, 9, 30, 11, 6)]
    return [
        Case(
            "15 ranked ids, 6 gold ids (2 never ranked), k = 5: 2 gold in the top 5",
            (_RANKED_15, {3, 11, 5, 7, 40, 41}, 5),
            hint=share,
        ),
        Case(
            "k = 2 with 4 gold ids: recall is at most 2 / 4",
            ([3, 11, 5, 8, 2, 7], {3, 11, 2, 7}, 2),
            hint="divide by the number of gold ids, even when k is smaller: recall@2 with 4 "
            "gold ids is at most 0.5.",
        ),
        Case(
            "gold_ids given as a list that repeats an id, [4, 9, 4]: 2 distinct gold ids",
            ([4, 1, 2, 9, 6], [4, 9, 4], 3),
            hint="an id listed twice is one relevant document: count distinct ids, set(gold_ids).",
        ),
        Case("no gold id in the top k: 0.0", ([5, 6, 7, 8, 1, 2], {1, 2}, 4), hint=share),
        Case(
            "k larger than the ranking: 8 ids, k = 20",
            ([10, 20, 30, 40, 50, 60, 70, 80], {20, 80, 90}, 20),
            hint="ranked_ids[:k] is the whole ranking when k is larger: no error, no padding.",
        ),
        Case(
            "the only gold id at rank k = 4 exactly: 1.0",
            ([6, 2, 8, 5, 1], {5}, 4),
            hint="the first k ids are ranked_ids[:k], positions 0 to k - 1.",
        ),
        Case(
            "string ids (chunk names), gold as a list, k = 3",
            (chunks, ["chunk-2", "chunk-11", "chunk-5"], 3),
            hint=share,
        ),
        Case("k = 1, the top id is gold", ([7, 3, 9], {7, 9}, 1), hint=share),
    ]


def _recall_slips(
    ranked: Sequence, gold: Sequence | set, k: int
) -> Iterator[tuple[float | None, str]]:
    gold_set = set(gold)
    n_gold = len(gold_set)
    top = list(ranked[:k])
    hits = len(gold_set.intersection(top))
    if len(gold) != n_gold:  # the gold list repeats ids
        repeats = sum(g in top for g in gold)
        words = (
            f"gold_ids repeats an id ({list(gold)}): it is one relevant document; count "
            f"distinct ids, set(gold_ids), {n_gold} here"
        )
        yield hits / len(gold), words
        yield repeats / len(gold), words
        yield repeats / n_gold, words
    capped = " (and by min(k, |gold|) it is BEIR's capped recall)" if k < n_gold else ""
    yield (
        hits / k,
        f"you divided by k = {k}: recall divides by the number of gold ids, "
        f"len(set(gold_ids)) = {n_gold}; dividing by k gives precision@k{capped}",
    )
    yield (
        float(hits),
        f"that is the number of gold ids found: divide it by the number of gold ids, {n_gold}",
    )
    yield (
        float(hits > 0),
        "that is hit@k (1 if any gold id is in the top k): recall@k is the SHARE of the gold "
        "ids found there",
    )
    yield (
        hits / len(ranked),
        f"you divided by the length of the ranking ({len(ranked)}): recall divides by the "
        f"number of gold ids, {n_gold}",
    )
    yield (
        len(gold_set.intersection(ranked[: k + 1])) / n_gold,
        "you counted the first k + 1 ids: the first k are ranked_ids[:k]",
    )
    yield (
        len(gold_set.intersection(ranked[: max(k - 1, 0)])) / n_gold,
        "you counted the first k - 1 ids: the first k are ranked_ids[:k], positions 0 to k - 1",
    )
    yield (
        len(gold_set.intersection(ranked)) / n_gold,
        "you ignored k: count only the gold ids among the first k, ranked_ids[:k]",
    )


def _recall_problem(received: dict, expected: dict) -> str | None:
    got, want = received["out"], expected["out"]
    problem = _number_problem(got, "recall@k")
    if problem is not None:
        return problem
    if _close(got, want):
        return None
    slip = _first_slip(got, _recall_slips(*expected["args"]))
    if slip is not None:
        return slip
    return f"expected {want:.6g}, received {got:.6g}"


def check_recall_at_k(recall_at_k: Callable) -> CheckResult:
    """Check ``recall_at_k(ranked_ids, gold_ids, k) -> float``."""
    return run_check(
        "recall_at_k",
        recall_at_k,
        reference_recall_at_k,
        _recall_cases(),
        hint="gold = set(gold_ids); return len(gold & set(ranked_ids[:k])) / len(gold).",
        run=_run,
        compare=_recall_problem,
        arg_names=("ranked_ids", "gold_ids", "k"),
        forbid=FORBID,
    )


# --------------------------------------------------------------------------------------------
# reciprocal_rank


def _rr_cases() -> list[Case]:
    first = (
        "walk the ranking with ranks from 1, for rank, doc in enumerate(ranked_ids, start=1), "
        "and return 1 / rank at the first gold id."
    )
    docs = [f"d{i}" for i in (5, 2, 11, 8, 3, 7, 1)]
    long = [f"p{i:02d}" for i in range(50)]
    return [
        Case(
            "the first gold id at rank 3, another at rank 5",
            ([40, 17, 12, 9, 30, 4], {12, 30}),
            hint=first,
        ),
        Case(
            "the first id is gold: 1.0",
            ([9, 40, 20], {9, 20}),
            hint="ranks start at 1: the first position is rank 1 and scores 1 / 1 "
            "(enumerate(ranked_ids, start=1)).",
        ),
        Case(
            "no gold id ranked: 0.0",
            ([4, 5, 6], {1, 2}),
            hint="return 0.0 when no gold id is in the ranking (not None, and not the error "
            "of list.index).",
        ),
        Case(
            "gold_ids listed in another order than the ranking's, ['d7', 'd2']",
            (docs, ["d7", "d2"]),
            hint="what counts is the gold id ranked FIRST, wherever it is listed in gold_ids: "
            "walk the ranking, not the gold ids.",
        ),
        Case("string ids, the first gold at rank 4", (docs, {"d8", "d1"}), hint=first),
        Case("a ranking of one id that is not gold: 0.0", (["d5"], {"d2"}), hint=first),
        Case(
            "a long ranking: the first gold at rank 40 of 50",
            (long, {"p39", "p45"}),
            hint=first,
        ),
    ]


def _rr_slips(ranked: Sequence, gold: Sequence | set) -> Iterator[tuple[float | None, str]]:
    gold_set = set(gold)
    ranks = [r for r, doc in enumerate(ranked, start=1) if doc in gold_set]
    if not ranks:
        for value in (-1.0, math.inf):
            yield (
                value,
                "no gold id is ranked: the reciprocal rank is then 0.0 (the first gold id is "
                "infinitely far down)",
            )
        return
    r = ranks[0]
    if r > 1:
        yield (
            1 / (r - 1),
            f"your ranks start at 0: the first gold id is at position {r - 1} of the list, "
            f"which is rank {r}, so its reciprocal rank is 1 / {r} (enumerate(ranked_ids, "
            "start=1))",
        )
    yield float(r), f"you returned the rank, {r}: the reciprocal rank is 1 / rank, 1 / {r}"
    if r > 1:
        yield (
            float(r - 1),
            f"you returned the 0-based position, {r - 1}: the reciprocal rank is 1 / rank, "
            f"with ranks from 1: 1 / {r}",
        )
    yield 1 / (r + 1), f"you added 1 to a rank that starts at 1: the answer is 1 / {r}"
    if isinstance(gold, (list, tuple)):
        for g in gold:
            if g in ranked:
                listed = list(ranked).index(g) + 1
                if listed != r:
                    yield (
                        1 / listed,
                        f"you took the gold id listed first in gold_ids ({g!r}, rank {listed}): "
                        f"the one that counts is ranked first, {ranked[r - 1]!r} at rank {r}; "
                        "walk the ranking, not the gold ids",
                    )
                break
    if len(ranks) > 1:
        yield (
            1 / ranks[-1],
            f"you used the LAST gold id in the ranking (rank {ranks[-1]}): the reciprocal rank "
            f"is that of the first one, 1 / {r}",
        )
        yield (
            sum(1 / x for x in ranks) / len(ranks),
            "you averaged 1 / rank over the gold ids: only the FIRST gold id counts, 1 / "
            f"{r} (MRR is a mean over queries, not over gold ids)",
        )
        yield (
            sum(1 / x for x in ranks),
            f"you summed 1 / rank over the gold ids: only the FIRST gold id counts, 1 / {r}",
        )
    if len(ranks) < len(gold_set):
        yield (
            sum(1 / x for x in ranks) / len(gold_set),
            "you averaged 1 / rank over all the gold ids: only the FIRST gold id in the ranking "
            f"counts, 1 / {r}",
        )


def _rr_problem(received: dict, expected: dict) -> str | None:
    got, want = received["out"], expected["out"]
    if got is None and want == 0.0:
        return (
            "received None where no gold id is ranked: return 0.0 (the first gold id is "
            "infinitely far down)"
        )
    problem = _number_problem(got, "the reciprocal rank")
    if problem is not None:
        return problem
    if _close(got, want):
        return None
    slip = _first_slip(got, _rr_slips(*expected["args"]))
    if slip is None and math.isinf(got):
        slip = "received inf: a division by 0, or 1 / rank with no gold id ranked (return 0.0)"
    if slip is not None:
        return slip
    return f"expected {want:.6g}, received {got:.6g}"


def check_reciprocal_rank(reciprocal_rank: Callable) -> CheckResult:
    """Check ``reciprocal_rank(ranked_ids, gold_ids) -> float``."""
    return run_check(
        "reciprocal_rank",
        reciprocal_rank,
        reference_reciprocal_rank,
        _rr_cases(),
        hint="gold = set(gold_ids); for rank, doc in enumerate(ranked_ids, start=1): if doc in "
        "gold: return 1 / rank; after the loop return 0.0.",
        run=_run,
        compare=_rr_problem,
        arg_names=("ranked_ids", "gold_ids"),
        forbid=FORBID,
    )


# --------------------------------------------------------------------------------------------
# reciprocal_rank_fusion


def _rrf_cases() -> list[Case]:
    formula = (
        "score(d) = sum over the rankings that list d of 1 / (k + rank), ranks from 1; "
        "return the (id, score) pairs sorted best first."
    )
    ties = (
        "equal scores keep the order in which the ids first appear (ranking 0 top to bottom, "
        "then ranking 1, ...): accumulate the scores in a dict in that order and sort on the "
        "score alone, sorted(scores.items(), key=lambda p: -p[1]); Python's sort is stable."
    )
    bm25 = ["velmora", "bridge", "mill", "market", "river"]
    dense = ["bridge", "harbour", "velmora", "sea", "road"]
    return [
        Case(
            "two rankings of 5 ids, 2 ids in both, the default k = 60",
            ([bm25, dense],),
            hint=formula,
        ),
        Case("k = 1: the first places weigh much more", ([bm25, dense],), {"k": 1}, hint=formula),
        Case(
            "three rankings of different lengths, integer ids, k = 10",
            ([[3, 1, 4, 5], [9, 2, 6], [5, 3, 35, 8, 9, 7]],),
            {"k": 10},
            hint=formula,
        ),
        Case(
            "ties: ids with mirrored ranks keep the order they first appear in",
            ([["zeta", "alpha", "beta", "mu"], ["alpha", "zeta", "mu", "beta"]],),
            hint=ties,
        ),
        Case("a single ranking: RRF keeps its order", ([["c", "a", "b"]],), hint=formula),
        Case(
            "one of the two rankings is empty",
            ([[], ["x", "y", "z"]],),
            {"k": 5},
            hint=formula,
        ),
        Case(
            "an id in only one ranking still gets its 1 / (k + rank)",
            ([["a", "b", "c"], ["d", "b", "e"]],),
            {"k": 2},
            hint=formula,
        ),
    ]


def _rrf_slips(rankings: Sequence[Sequence], k: float) -> Iterator[tuple[dict, str]]:
    """(id -> what a slip scores it, the words that name it)."""
    ranks: dict = {}
    for ranking in rankings:
        for rank, doc in enumerate(ranking, start=1):
            ranks.setdefault(doc, []).append(rank)

    def scores(of: Callable[[list[int]], float]) -> dict:
        return {doc: of(r) for doc, r in ranks.items()}

    n = len(rankings)
    yield (
        scores(lambda r: sum(1 / (k + x - 1) for x in r)),
        f"your ranks start at 0: the first place is rank 1 and gets 1 / (k + 1) = 1 / {k + 1:g}, "
        "enumerate(ranking, start=1)",
    )
    if k != 0:
        yield (
            scores(lambda r: sum(1 / x for x in r)),
            f"you left k out: each ranking adds 1 / (k + rank), with k = {k:g} (the constant "
            "that keeps the first place from outweighing everything else)",
        )
    summed = (
        "you summed the ranks themselves: RRF sums their reciprocals, 1 / (k + rank), so "
        "that a smaller rank gives a larger score"
    )
    yield scores(lambda r: float(sum(k + x for x in r))), summed
    yield scores(lambda r: float(sum(r))), summed
    yield (
        scores(lambda r: 1 / sum(k + x for x in r)),
        "you took the reciprocal of the summed ranks: RRF sums the reciprocals, "
        "sum of 1 / (k + rank)",
    )
    yield (
        scores(lambda r: 1 / (k + sum(r))),
        "you took 1 / (k + the summed ranks): RRF sums 1 / (k + rank) over the rankings",
    )
    if n > 1:
        mean = (
            "you averaged over the rankings: RRF SUMS 1 / (k + rank), so that an id listed by "
            "several rankings gets more"
        )
        yield scores(lambda r: sum(1 / (k + x) for x in r) / n), mean
        yield scores(lambda r: sum(1 / (k + x) for x in r) / len(r)), mean


def _rrf_pairs(got: Any, ids: list) -> str | list[tuple]:
    """``got`` as a list of (id, score) pairs, or what is wrong with its form."""
    if got is None:
        return "expected a list of (id, score) pairs, received None: is a `return` missing?"
    if _is_array(got):
        return f"expected a list of (id, score) pairs, best first, received {_what(got)}"
    if isinstance(got, dict):
        return (
            f"expected a list of (id, score) pairs, best first, received {describe(got)}: a "
            "dict has no ranking; return sorted(scores.items(), key=lambda p: -p[1])"
        )
    if not isinstance(got, (list, tuple)):
        return f"expected a list of (id, score) pairs, best first, received {_what(got)}"
    known = set(ids)
    if got and all(
        not isinstance(item, (list, tuple)) and _hashable_in(item, known) for item in got
    ):
        return "you returned the ids alone: return (id, score) pairs, best first"
    pairs = []
    for item in got:
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            return f"expected (id, score) pairs, received an element {_what(item)}"
        doc, score = item
        if _is_number(doc) and not _hashable_in(doc, known) and _hashable_in(score, known):
            return "your pairs are (score, id): return (id, score)"
        if not _is_number(score):
            return f"expected a number as the score of {doc!r}, received {_what(score)}"
        pairs.append((doc, float(score)))
    return pairs


def _hashable_in(value: Any, known: set) -> bool:
    try:
        return value in known
    except TypeError:
        return False


def _rrf_problem(received: dict, expected: dict) -> str | None:
    want = expected["out"]
    (rankings,) = expected["args"]
    k = expected["kwargs"].get("k", 60)
    ids = [doc for doc, _ in want]
    pairs = _rrf_pairs(received["out"], ids)
    if isinstance(pairs, str):
        return pairs
    want_score = dict(want)
    got_ids = [doc for doc, _ in pairs]
    seen: set = set()
    for doc in got_ids:
        if not _hashable_in(doc, set(ids)):
            return f"{doc!r} is not an id of the rankings"
        if doc in seen:
            return (
                f"{doc!r} is listed twice: each id once, with its scores from all the rankings "
                "summed"
            )
        seen.add(doc)
    missing = [doc for doc in ids if doc not in seen]
    if missing:
        in_all = [doc for doc in ids if all(doc in ranking for ranking in rankings)]
        if set(got_ids) == set(in_all):
            return (
                f"you kept only the ids that every ranking lists: an id in some rankings (like "
                f"{missing[0]!r}) gets 1 / (k + rank) from each of those; fusion takes the "
                "union"
            )
        return (
            f"{len(missing)} of the {len(ids)} ids are missing, e.g. {missing[0]!r}: every id "
            "of every ranking is in the fused list"
        )
    got_score = dict(pairs)
    if not all(_close(got_score[doc], want_score[doc]) for doc in ids):
        for slip, words in _rrf_slips(rankings, k):
            if all(_close(got_score[doc], slip[doc]) for doc in ids):
                return words
        doc = next(doc for doc in ids if not _close(got_score[doc], want_score[doc]))
        return (
            f"the score of {doc!r}: expected {want_score[doc]:.6g}, received {got_score[doc]:.6g}"
        )
    if got_ids == ids:
        return None
    first = {doc: i for i, doc in enumerate(dict.fromkeys(d for r in rankings for d in r))}
    position = {doc: i for i, doc in enumerate(ids)}
    ascending = all(
        want_score[a] <= want_score[b] + ATOL for a, b in zip(got_ids, got_ids[1:], strict=False)
    )
    if ascending and len(set(want_score.values())) > 1:
        return (
            "your list is sorted worst first: RRF lists the best (largest) score first; sort "
            "with key=lambda p: -p[1] (or reverse=True)"
        )
    for a, b in zip(got_ids, got_ids[1:], strict=False):
        if want_score[a] < want_score[b] - ATOL * (1 + abs(want_score[b])):
            return (
                f"{a!r} (score {want_score[a]:.6g}) is listed before {b!r} (score "
                f"{want_score[b]:.6g}): sort the pairs by score, best first"
            )
        tied = _close(want_score[a], want_score[b])
        if tied and first[a] > first[b] and position[a] > position[b]:
            return (
                f"{a!r} and {b!r} have equal scores and {b!r} appears first in the rankings, "
                "so it comes first: equal scores keep the order of first appearance, not the "
                "order of the ids (sort on the score alone: Python's sort is stable)"
            )
    return None


def check_reciprocal_rank_fusion(reciprocal_rank_fusion: Callable) -> CheckResult:
    """Check ``reciprocal_rank_fusion(rankings, k=60) -> list[(id, score)]``, best first."""
    return run_check(
        "reciprocal_rank_fusion",
        reciprocal_rank_fusion,
        reference_reciprocal_rank_fusion,
        _rrf_cases(),
        hint="scores = {}; for ranking in rankings: for rank, doc in enumerate(ranking, "
        "start=1): scores[doc] = scores.get(doc, 0.0) + 1 / (k + rank); return "
        "sorted(scores.items(), key=lambda p: -p[1]).",
        run=_run,
        compare=_rrf_problem,
        arg_names=("rankings",),
        forbid=FORBID,
    )
