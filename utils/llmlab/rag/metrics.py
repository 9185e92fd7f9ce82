"""How good is a retriever? Three measures of one ranked list against the ids known to be relevant.

For one query, with ``ranked_ids`` the retriever's answer (best first) and ``gold_ids`` the
documents (or chunks) that hold the answer:

    recall@k   = |gold in the first k| / |gold|        the share of the evidence retrieved
    hit@k      = 1 if any gold is in the first k       "did the generator get something to go on?"
    reciprocal rank = 1 / (rank of the first gold)     1, 1/2, 1/3, ...; 0 if no gold is ranked

With a single gold id per query, recall@k and hit@k are the same number. A RAG system passes
the first k chunks to the model, so recall@k at that k is the figure that matters most: what
is not retrieved cannot be used. The reciprocal rank rewards putting the evidence first.

Each is a number per query; a benchmark reports its mean over the queries (MRR: the mean
reciprocal rank). :func:`evaluate` does that for a list of queries; for anything else, average
the per-query values with ``numpy.mean``.

Ranks start at 1. A ranking that lists an id twice is an error (a retriever that returns the
same chunk twice has a bug, and it would count twice in recall), as is an empty gold set (recall
would be 0 / 0).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

from llmlab.validate import require_positive_int

__all__ = ["recall_at_k", "hit_at_k", "reciprocal_rank", "evaluate"]


def _check_ranking(ranked_ids: Sequence, name: str = "ranked_ids") -> list:
    """``ranked_ids`` must be a sequence (or 1-D array) of distinct ids; returns it as a list."""
    if isinstance(ranked_ids, np.ndarray) and ranked_ids.ndim == 1:
        ranked_ids = ranked_ids.tolist()
    if isinstance(ranked_ids, (str, bytes)) or not isinstance(ranked_ids, Sequence):
        raise TypeError(f"{name}: expected a list of ids, got {type(ranked_ids).__name__}")
    first_rank: dict = {}
    for rank, doc_id in enumerate(ranked_ids, start=1):
        if doc_id in first_rank:
            raise ValueError(
                f"{name}: id {doc_id!r} appears twice (ranks {first_rank[doc_id]} and {rank}); "
                "a ranking lists each id once"
            )
        first_rank[doc_id] = rank
    return list(ranked_ids)


def _check_gold(gold_ids: Collection, name: str = "gold_ids") -> set:
    """``gold_ids`` must be a non-empty collection of ids; returns it as a set."""
    if isinstance(gold_ids, (str, bytes)) or not isinstance(gold_ids, Collection):
        raise TypeError(f"{name}: expected a set of ids, got {type(gold_ids).__name__}")
    gold = set(gold_ids)
    if not gold:
        raise ValueError(f"{name}: expected at least one relevant id, got none")
    return gold


def recall_at_k(ranked_ids: Sequence, gold_ids: Collection, k: int) -> float:
    """The share of ``gold_ids`` found among the first ``k`` of ``ranked_ids``, in [0, 1]."""
    k = require_positive_int(k, "k")
    ranked = _check_ranking(ranked_ids)
    gold = _check_gold(gold_ids)
    return len(gold.intersection(ranked[:k])) / len(gold)


def hit_at_k(ranked_ids: Sequence, gold_ids: Collection, k: int) -> float:
    """1.0 if any of ``gold_ids`` is among the first ``k`` of ``ranked_ids``, else 0.0."""
    k = require_positive_int(k, "k")
    ranked = _check_ranking(ranked_ids)
    gold = _check_gold(gold_ids)
    return 1.0 if gold.intersection(ranked[:k]) else 0.0


def reciprocal_rank(ranked_ids: Sequence, gold_ids: Collection) -> float:
    """1 / (rank of the first of ``gold_ids`` in ``ranked_ids``), ranks from 1; 0.0 if none is
    ranked."""
    ranked = _check_ranking(ranked_ids)
    gold = _check_gold(gold_ids)
    for rank, doc_id in enumerate(ranked, start=1):
        if doc_id in gold:
            return 1.0 / rank
    return 0.0


def evaluate(
    rankings: Sequence[Sequence], golds: Sequence[Collection], ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Mean recall@k and hit@k for each k in ``ks``, and MRR, over the queries.

    ``rankings[i]`` is the retriever's ranked ids for query i and ``golds[i]`` its relevant ids.
    Returns ``{"recall@1": ..., "recall@5": ..., ..., "hit@1": ..., ..., "mrr": ...}``.
    """
    if len(rankings) != len(golds):
        raise ValueError(
            f"golds: expected one gold set per ranking ({len(rankings)}), got {len(golds)}"
        )
    if len(rankings) == 0:
        raise ValueError("rankings: expected at least one query, got 0")
    ks = [require_positive_int(k, "ks") for k in ks]
    if not ks:
        raise ValueError("ks: expected at least one cutoff k, got none")
    rankings = [_check_ranking(r, f"rankings[{i}]") for i, r in enumerate(rankings)]
    golds = [_check_gold(g, f"golds[{i}]") for i, g in enumerate(golds)]

    pairs = list(zip(rankings, golds, strict=True))
    result = {}
    for k in ks:
        result[f"recall@{k}"] = float(np.mean([recall_at_k(r, g, k) for r, g in pairs]))
    for k in ks:
        result[f"hit@{k}"] = float(np.mean([hit_at_k(r, g, k) for r, g in pairs]))
    result["mrr"] = float(np.mean([reciprocal_rank(r, g) for r, g in pairs]))
    return result
