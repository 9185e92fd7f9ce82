"""llmlab.rag.metrics and llmlab.rag.fusion on hand-computed examples."""

import numpy as np
import pytest

from llmlab.rag.fusion import min_max_fusion, reciprocal_rank_fusion
from llmlab.rag.metrics import evaluate, hit_at_k, recall_at_k, reciprocal_rank

# ----------------------------------------------------------------------------------- metrics

RANKED = [3, 1, 4, 5, 9]
GOLD = {1, 5, 7}  # 1 at rank 2, 5 at rank 4, 7 not retrieved


def test_recall_hit_and_reciprocal_rank_by_hand():
    assert recall_at_k(RANKED, GOLD, 1) == 0.0
    assert recall_at_k(RANKED, GOLD, 2) == pytest.approx(1 / 3)
    assert recall_at_k(RANKED, GOLD, 4) == pytest.approx(2 / 3)
    assert recall_at_k(RANKED, GOLD, 100) == pytest.approx(2 / 3)
    assert hit_at_k(RANKED, GOLD, 1) == 0.0
    assert hit_at_k(RANKED, GOLD, 2) == 1.0
    assert reciprocal_rank(RANKED, GOLD) == 0.5
    assert reciprocal_rank(RANKED, {7}) == 0.0
    assert reciprocal_rank([], {7}) == 0.0
    assert reciprocal_rank(["a", "b"], ["a"]) == 1.0  # any collection of gold ids
    assert recall_at_k(np.array([3, 1, 4]), GOLD, 2) == pytest.approx(1 / 3)


def test_evaluate_averages_over_queries():
    rankings = [RANKED, ["a", "b", "c"], [10, 11, 12, 13, 14, 15]]
    golds = [GOLD, {"a"}, {15, 99}]
    result = evaluate(rankings, golds, ks=(1, 5))
    assert list(result) == ["recall@1", "recall@5", "hit@1", "hit@5", "mrr"]
    # recall@1: 0, 1, 0; recall@5: 2/3, 1, 0; hit@1: 0, 1, 0; hit@5: 1, 1, 0;
    # reciprocal ranks: 1/2, 1, 1/6 (15 is sixth).
    assert result["recall@1"] == pytest.approx(1 / 3)
    assert result["recall@5"] == pytest.approx((2 / 3 + 1) / 3)
    assert result["hit@1"] == pytest.approx(1 / 3)
    assert result["hit@5"] == pytest.approx(2 / 3)
    assert result["mrr"] == pytest.approx((1 / 2 + 1 + 1 / 6) / 3)
    assert set(evaluate([RANKED], [GOLD])) == {
        "recall@1", "recall@5", "recall@10", "hit@1", "hit@5", "hit@10", "mrr",
    }  # fmt: skip


def test_metric_errors_name_the_argument():
    with pytest.raises(ValueError, match="k"):
        recall_at_k(RANKED, GOLD, 0)
    with pytest.raises(ValueError, match="k"):
        hit_at_k(RANKED, GOLD, 0)
    with pytest.raises(ValueError, match="gold_ids"):
        recall_at_k(RANKED, set(), 5)
    with pytest.raises(ValueError, match="gold_ids"):
        reciprocal_rank(RANKED, [])
    with pytest.raises(ValueError, match="appears twice"):
        hit_at_k([1, 2, 1], {1}, 3)
    with pytest.raises(TypeError, match="ranked_ids"):
        recall_at_k("abc", {"a"}, 1)
    with pytest.raises(ValueError, match="golds"):
        evaluate([RANKED], [GOLD, GOLD])
    with pytest.raises(ValueError, match=r"golds\[1\]"):
        evaluate([RANKED, RANKED], [GOLD, set()])
    with pytest.raises(ValueError, match=r"rankings\[0\]"):
        evaluate([[1, 1]], [GOLD])
    with pytest.raises(ValueError, match="rankings"):
        evaluate([], [])


# ------------------------------------------------------------------------------------ fusion

BM25_RANKING = ["a", "b", "c"]
DENSE_RANKING = ["b", "d", "a"]


def test_rrf_by_hand():
    fused = reciprocal_rank_fusion([BM25_RANKING, DENSE_RANKING], k=60)
    # a: 1/61 + 1/63 = 0.0322664   b: 1/62 + 1/61 = 0.0325225
    # c: 1/63 (only in BM25) = 0.0158730   d: 1/62 (only in dense) = 0.0161290
    assert [d for d, _ in fused] == ["b", "a", "d", "c"]
    expected = {"a": 1 / 61 + 1 / 63, "b": 1 / 62 + 1 / 61, "c": 1 / 63, "d": 1 / 62}
    for doc_id, score in fused:
        assert score == pytest.approx(expected[doc_id], rel=1e-12)
    assert dict(fused)["b"] == pytest.approx(0.0325225, abs=1e-7)
    assert reciprocal_rank_fusion([BM25_RANKING, DENSE_RANKING], top=2) == fused[:2]


def test_rrf_weights_and_k():
    fused = reciprocal_rank_fusion([BM25_RANKING, DENSE_RANKING], k=60, weights=[3, 1])
    # a: 3/61 + 1/63 = 0.0650532   b: 3/62 + 1/61 = 0.0647805
    # c: 3/63 = 0.0476190          d: 1/62 = 0.0161290
    assert [d for d, _ in fused] == ["a", "b", "c", "d"]
    assert dict(fused)["a"] == pytest.approx(3 / 61 + 1 / 63)
    assert dict(fused)["d"] == pytest.approx(1 / 62)
    # k = 0: the first place is worth 1, the second 1/2.
    assert reciprocal_rank_fusion([["a", "b"], ["b", "c"]], k=0) == [
        ("b", 1.5), ("a", 1.0), ("c", 0.5),
    ]  # fmt: skip
    # A zero weight switches a ranking off (its documents still appear, with score 0).
    assert reciprocal_rank_fusion([["a", "b"], ["c"]], k=0, weights=[0, 1])[0] == ("c", 1.0)


def test_rrf_ties_keep_first_appearance_and_a_single_ranking_keeps_its_order():
    assert [d for d, _ in reciprocal_rank_fusion([["x", "y"], ["y", "x"]])] == ["x", "y"]
    assert [d for d, _ in reciprocal_rank_fusion([["p"], ["q"]])] == ["p", "q"]
    ranking = np.random.default_rng(0).permutation(50).tolist()
    assert [d for d, _ in reciprocal_rank_fusion([ranking])] == ranking
    assert reciprocal_rank_fusion([[], []]) == []


def test_rrf_errors():
    with pytest.raises(ValueError, match="k"):
        reciprocal_rank_fusion([["a"]], k=-1)
    with pytest.raises(ValueError, match="weights"):
        reciprocal_rank_fusion([["a"], ["b"]], weights=[1.0])
    with pytest.raises(ValueError, match="weights"):
        reciprocal_rank_fusion([["a"], ["b"]], weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="rankings"):
        reciprocal_rank_fusion([])
    with pytest.raises(ValueError, match=r"rankings\[1\].*appears twice"):
        reciprocal_rank_fusion([["a"], ["b", "b"]])
    with pytest.raises(ValueError, match="top"):
        reciprocal_rank_fusion([["a"]], top=0)


def test_min_max_fusion_by_hand():
    bm25 = {"a": 10.0, "b": 6.0, "c": 2.0}  # normalised: a 1, b 0.5, c 0
    dense = [("b", 0.9), ("d", 0.5), ("a", 0.1)]  # normalised: b 1, d 0.5, a 0
    # Equal weights: a (1 + 0) / 2, b (0.5 + 1) / 2, c 0, d (0 + 0.5) / 2.
    assert min_max_fusion([bm25, dense]) == [("b", 0.75), ("a", 0.5), ("d", 0.25), ("c", 0.0)]
    fused = dict(min_max_fusion([bm25, dense], weights=[3, 1]))
    assert fused == pytest.approx({"a": 0.75, "b": 0.625, "d": 0.125, "c": 0.0})
    assert min_max_fusion([{"x": 2.0, "y": 2.0}]) == [("x", 1.0), ("y", 1.0)]
    assert min_max_fusion([bm25, dense], top=1) == [("b", 0.75)]
    with pytest.raises(ValueError, match="weights"):
        min_max_fusion([bm25, dense], weights=[1])
    with pytest.raises(ValueError, match="appears twice"):
        min_max_fusion([[("a", 1.0), ("a", 2.0)]])
