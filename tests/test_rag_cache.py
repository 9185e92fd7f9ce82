"""llmlab.rag.cache: semantic lookups, thresholds, eviction, and the false-hit sweep."""

from __future__ import annotations

import numpy as np
import pytest

from llmlab.rag.cache import SemanticCache, threshold_sweep

# A toy embedder: fixed unit vectors per text, so similarities are known exactly.
_TABLE = {
    "when was ada born?": [1.0, 0.0, 0.0],
    "what year was ada born in?": [0.96, 0.28, 0.0],
    "where was ada born?": [0.8, 0.6, 0.0],
    "who founded the mill?": [0.0, 0.0, 1.0],
}


def toy_embed(texts):
    return np.array([_TABLE[t] for t in texts], dtype=np.float32)


def test_hits_above_the_threshold_only():
    cache = SemanticCache(toy_embed, threshold=0.95)
    calls = []

    def pipeline(q):
        calls.append(q)
        return f"answer to {q}"

    assert cache.get_or_compute("when was ada born?", pipeline) == (
        "answer to when was ada born?",
        False,
    )
    answer, hit = cache.get_or_compute("what year was ada born in?", pipeline)  # cosine 0.96
    assert hit and answer == "answer to when was ada born?"
    answer, hit = cache.get_or_compute("where was ada born?", pipeline)  # cosine 0.8: a miss
    assert not hit and answer == "answer to where was ada born?"
    found = cache.lookup("who founded the mill?")
    assert not found.hit and found.similarity == pytest.approx(0.0) and found.matched is not None
    assert calls == ["when was ada born?", "where was ada born?"]
    assert cache.stats() == {"entries": 2, "hits": 1, "misses": 3, "hit_rate": 0.25}


def test_eviction_and_errors():
    cache = SemanticCache(toy_embed, threshold=0.5, max_entries=1)
    cache.put("when was ada born?", "1815")
    cache.put("who founded the mill?", "Bo")
    assert len(cache) == 1 and cache.questions == ["who founded the mill?"]
    assert not cache.lookup("when was ada born?").hit
    with pytest.raises(ValueError, match="answer: None marks a miss"):
        cache.put("when was ada born?", None)
    with pytest.raises(ValueError, match="question: expected a non-empty string"):
        cache.lookup("  ")
    with pytest.raises(ValueError, match=r"threshold: expected a cosine in \[-1, 1\]"):
        SemanticCache(toy_embed, threshold=1.5)
    with pytest.raises(TypeError, match="embed: expected a function"):
        SemanticCache("not a function")
    empty = SemanticCache(toy_embed)
    assert empty.lookup("when was ada born?").similarity is None


def test_dimension_mismatch_is_caught():
    cache = SemanticCache(
        lambda texts: np.ones((1, 3)) / np.sqrt(3) if texts[0] == "a" else np.ones((1, 2))
    )
    cache.put("a", "x")
    with pytest.raises(ValueError, match="embed: returned 2 dims, the cache holds 3"):
        cache.lookup("b")


def test_threshold_sweep_counts_true_and_false_hits():
    sims = [0.99, 0.97, 0.90, 0.98, 0.80]
    should = [True, True, True, False, False]
    rows = threshold_sweep(sims, should, [0.95, 0.985])
    assert rows[0] == {
        "threshold": 0.95,
        "true_hit_rate": pytest.approx(2 / 3),
        "false_hit_rate": 0.5,
    }
    assert rows[1] == {
        "threshold": 0.985,
        "true_hit_rate": pytest.approx(1 / 3),
        "false_hit_rate": 0.0,
    }
    with pytest.raises(ValueError, match="similarities, should_hit"):
        threshold_sweep([0.9], [True, False], [0.5])


def test_many_entries_and_evictions_keep_every_vector_in_order():
    # The buffer grows by doubling and evicts by moving its start: what it holds must be exactly
    # the last max_entries vectors, in order, through several growths and evictions.
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((300, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    table = {f"q{i}": vectors[i] for i in range(300)}
    for max_entries in (None, 1, 5, 37):
        cache = SemanticCache(lambda texts: np.stack([table[t] for t in texts]), 0.99, max_entries)
        for i in range(300):
            cache.put(f"q{i}", i)
            kept = (
                range(i + 1) if max_entries is None else range(max(0, i + 1 - max_entries), i + 1)
            )
            if i % 17 == 0 or i == 299:
                np.testing.assert_array_equal(cache._vectors, vectors[list(kept)])
                assert cache.questions == [f"q{j}" for j in kept]
        for j in kept:
            found = cache.lookup(f"q{j}")
            assert found.hit and found.answer == j
