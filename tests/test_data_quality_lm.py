"""llmlab.data's LM-based quality filter (CCNet's recipe from our parts) and planted junk."""

from __future__ import annotations

import math
import random

import pytest

from llmlab import data

SUBJECTS = ["the parser", "this function", "the server", "a new socket", "the method", "the file"]
VERBS = ["returns", "reads", "writes", "opens", "closes", "checks", "creates", "removes"]
OBJECTS = ["the value", "a list of names", "the current line", "an empty string", "the header"]


def sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [
        " ".join(
            f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(VERBS)} {rng.choice(OBJECTS)}."
            for _ in range(4)
        )
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def lm_filter():
    return data.LMQualityFilter(order=3, vocab_size=300).fit(sentences(200, seed=0))


def test_lm_filter_scores_prose_below_shuffled_words_and_junk(lm_filter):
    prose = sentences(20, seed=1)
    rng = random.Random(2)
    salad = []
    for text in prose:
        words = text.split()
        rng.shuffle(words)
        salad.append(" ".join(words))
    ppl_prose = lm_filter.perplexities(prose)
    ppl_salad = lm_filter.perplexities(salad)
    # same words, another order: the n-gram model sees it
    assert all(p < s for p, s in zip(ppl_prose, ppl_salad, strict=True))
    assert max(ppl_prose) < lm_filter.perplexity("Zq9 xkcd 0x1f77 @@!! ~~ vvw qqq")
    assert lm_filter.perplexity("") == math.inf
    assert lm_filter.perplexity(prose[0]) == pytest.approx(ppl_prose[0])


def test_lm_filter_calibrates_and_filters_like_the_heuristic_filter(lm_filter):
    docs = sentences(40, seed=3) + ["Zq9 xkcd 0x1f77 @@!! ~~ vvw qqq"] * 2
    threshold = lm_filter.calibrate(docs, keep=0.9)
    ranked = sorted(lm_filter.perplexities(docs))
    assert threshold == ranked[math.ceil(0.9 * len(docs)) - 1]
    kept, reasons = lm_filter.filter(docs)
    assert len(kept) == sum(p <= threshold for p in ranked) >= math.ceil(0.9 * len(docs))
    assert reasons["perplexity too high"] == len(docs) - len(kept)
    assert docs[-1] not in kept
    assert lm_filter.check(docs[-1]) == ["perplexity too high"] and not lm_filter.keep(docs[-1])
    assert lm_filter.keep(kept[0])
    lm_filter.calibrate(docs, keep=1.0)
    assert len(lm_filter.filter(docs)[0]) == len(docs)


def test_lm_filter_validates():
    with pytest.raises(RuntimeError, match="fit"):
        data.LMQualityFilter().perplexities(["x"])
    f = data.LMQualityFilter(vocab_size=260).fit(["a b c d e f"])
    with pytest.raises(RuntimeError, match="calibrate"):
        f.keep("a b")
    with pytest.raises(ValueError, match="keep"):
        f.calibrate(["a b"], keep=0.0)
    with pytest.raises(ValueError, match="reference"):
        data.LMQualityFilter().fit(["", "   "])
    with pytest.raises(ValueError, match="vocab_size"):
        data.LMQualityFilter(vocab_size=100).fit(["a b"])


def test_plant_junk_takes_turns_and_is_seeded():
    docs = sentences(30, seed=4)
    out, planted = data.plant_junk(docs, 14, seed=5)
    assert out[: len(docs)] == docs and len(out) == len(docs) + 14
    assert sorted(planted) == list(range(len(docs), len(out)))
    counts = {k: sum(v == k for v in planted.values()) for k in data.JUNK_KINDS}
    assert counts == {k: 3 if i < 2 else 2 for i, k in enumerate(data.JUNK_KINDS)}
    assert data.plant_junk(docs, 14, seed=5) == (out, planted)
    assert data.plant_junk(docs, 14, seed=6)[0] != out
    by_kind = {kind: out[i] for i, kind in planted.items()}
    salad = by_kind["word salad"]
    assert any(sorted(salad.split()) == sorted(d.split()) for d in docs)  # the same words
    assert by_kind["encoded blob"].startswith("data:application/octet-stream;base64,")
    only_tables, kinds = data.plant_junk([], 2, kinds=["number table"], seed=0)
    assert set(kinds.values()) == {"number table"}
    with pytest.raises(ValueError, match="kinds"):
        data.plant_junk(docs, 2, kinds=["poetry"])
    with pytest.raises(ValueError, match="words"):
        data.plant_junk(["too short"], 2, kinds=["word salad"])


def test_heuristics_miss_what_the_lm_filter_catches(lm_filter):
    # the motivation of LM filtering in one check: scrambled letters keep prose's statistics
    docs = sentences(30, seed=7)
    out, planted = data.plant_junk(docs, 10, kinds=["scrambled letters"], min_words=5, seed=8)
    junk = [out[i] for i in planted]
    assert sum(data.QualityFilter().keep(d) for d in junk) >= 8
    lm_filter.calibrate(docs, keep=1.0)
    assert not any(lm_filter.keep(d) for d in junk)


def test_reference_corpus_is_the_language_reference():
    ref = data.reference_corpus()
    assert ref.n_documents > 50 and ref.n_bytes > 200_000
    assert all(s.startswith("pydoc_data/topics.py:") for s in ref.sources)
    assert "assert" in {s.rsplit(":", 1)[1] for s in ref.sources}
    assert all(d == d.strip() and d for d in ref.documents)
