"""Hybrid retrieval: merge the rankings of several retrievers (say BM25 and a dense embedder).

Their scores are not comparable (a BM25 score of 12 and a cosine similarity of 0.8 are on
different scales, and neither scale is calibrated), so the simplest robust way to combine them
uses only the ranks. Reciprocal rank fusion (Cormack, Clarke and Buettcher, SIGIR 2009):

    RRF(d) = sum over rankings i of  w_i / (k + rank_i(d))          ranks start at 1

A document that a ranking does not list gets nothing from it. k (60 in the paper, and the
default of most hybrid-search engines) flattens the curve: with k = 60 the first place is worth
1/61 and the tenth 1/70, so a document ranked well by *both* retrievers beats one ranked first
by one and absent from the other. With k = 0 the first place (1/1) outweighs everything else.

The common alternative keeps the scores: min-max normalise each retriever's scores to [0, 1]
(best -> 1, worst returned -> 0) and take a weighted mean (:func:`min_max_fusion`). It uses
more information than the ranks, and it depends on how many and which documents each retriever
returned, since those set the min and the max.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from llmlab.rag.metrics import _check_ranking
from llmlab.validate import require_positive_int, require_real

__all__ = ["reciprocal_rank_fusion", "min_max_fusion"]


def _check_weights(weights, n: int) -> list[float]:
    """One non-negative number per ranking, not all zero; None means 1.0 each."""
    if weights is None:
        return [1.0] * n
    weights = [require_real(w, "weights") for w in weights]
    if len(weights) != n:
        raise ValueError(f"weights: expected one weight per ranking ({n}), got {len(weights)}")
    if any(not w >= 0 for w in weights):
        raise ValueError(f"weights: expected numbers >= 0, got {weights}")
    if sum(weights) == 0:
        raise ValueError("weights: expected at least one weight > 0, got all zeros")
    return weights


def _sorted(scores: dict, top: int | None) -> list[tuple]:
    """``scores`` (in first-appearance order) as (id, score) pairs, best first; ties keep the
    order of first appearance (Python's sort is stable)."""
    ranked = sorted(scores.items(), key=lambda item: -item[1])
    if top is not None:
        ranked = ranked[: require_positive_int(top, "top")]
    return ranked


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence],
    k: float = 60,
    weights: Sequence[float] | None = None,
    top: int | None = None,
) -> list[tuple]:
    """Fuse ``rankings`` (lists of ids, best first) into one: (id, RRF score) pairs, best first.

    score(d) = sum_i weights[i] / (k + rank_i(d)), ranks from 1, over the rankings that list d.
    Equal scores keep the order in which the ids first appear (ranking 0 top to bottom, then
    ranking 1, ...). ``weights`` defaults to 1 each; ``top`` keeps only the first ``top``.
    """
    if isinstance(rankings, (str, bytes)) or not isinstance(rankings, Sequence):
        raise TypeError(f"rankings: expected a list of rankings, got {type(rankings).__name__}")
    if len(rankings) == 0:
        raise ValueError("rankings: expected at least one ranking, got 0")
    k = require_real(k, "k")
    if not k >= 0:
        raise ValueError(f"k: expected a number >= 0, got {k}")
    weights = _check_weights(weights, len(rankings))

    scores: dict = {}
    for i, (ranking, weight) in enumerate(zip(rankings, weights, strict=True)):
        for rank, doc_id in enumerate(_check_ranking(ranking, f"rankings[{i}]"), start=1):
            scores[doc_id] = scores.get(doc_id, 0.0) + weight / (k + rank)
    return _sorted(scores, top)


def _as_score_dict(scores, name: str) -> dict:
    """A mapping id -> score, or a sequence of (id, score) pairs (as ``BM25.top_k`` returns)."""
    if isinstance(scores, Mapping):
        items = list(scores.items())
    elif isinstance(scores, Sequence) and not isinstance(scores, (str, bytes)):
        items = list(scores)
        if any(not (isinstance(p, (tuple, list)) and len(p) == 2) for p in items):
            raise TypeError(f"{name}: expected (id, score) pairs")
    else:
        raise TypeError(
            f"{name}: expected a dict id -> score or a list of (id, score) pairs, "
            f"got {type(scores).__name__}"
        )
    result: dict = {}
    for doc_id, score in items:
        if doc_id in result:
            raise ValueError(f"{name}: id {doc_id!r} appears twice")
        result[doc_id] = require_real(score, name)
    return result


def min_max_fusion(
    score_lists: Sequence,
    weights: Sequence[float] | None = None,
    top: int | None = None,
) -> list[tuple]:
    """Fuse scored results by a weighted mean of min-max normalised scores, best first.

    Each element of ``score_lists`` is a dict id -> score or a list of (id, score) pairs from one
    retriever. Its scores are mapped to (s - min) / (max - min), so its best document gets 1 and
    its worst 0 (all 1 if its scores are all equal); a document it did not return gets 0 from
    it. The fused score is sum_i w_i * norm_i(d) / sum_i w_i, in [0, 1] (``weights`` default:
    equal). Equal scores keep the order of first appearance, as in
    :func:`reciprocal_rank_fusion`.
    """
    if isinstance(score_lists, (str, bytes, Mapping)) or not isinstance(score_lists, Sequence):
        raise TypeError(
            f"score_lists: expected a list of score lists, got {type(score_lists).__name__}"
        )
    if len(score_lists) == 0:
        raise ValueError("score_lists: expected at least one list of scores, got 0")
    weights = _check_weights(weights, len(score_lists))
    total = sum(weights)

    fused: dict = {}
    for i, (scores, weight) in enumerate(zip(score_lists, weights, strict=True)):
        scores = _as_score_dict(scores, f"score_lists[{i}]")
        if not scores:
            continue
        low, high = min(scores.values()), max(scores.values())
        for doc_id, score in scores.items():
            norm = (score - low) / (high - low) if high > low else 1.0
            fused[doc_id] = fused.get(doc_id, 0.0) + weight * norm / total
    return _sorted(fused, top)
