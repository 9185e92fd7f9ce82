"""llmlab.rag.bm25: the formula by hand, parity with rank_bm25 (okapi) and bm25s (lucene), top-k
ordering, and the edge cases (empty documents, unknown words, bad arguments)."""

import math

import numpy as np
import pytest

from llmlab.rag.bm25 import BM25, STOPWORDS, tokenize

# A tiny corpus where "the" is in 4 of 5 documents and "bm25" in 3: Okapi's raw idf is negative
# for both, so rank_bm25's epsilon floor applies.
TINY = [
    "the cat sat on the mat",
    "the dog chased the cat",
    "bm25 ranks the documents by bm25 score",
    "bm25 is a bag of words model",
    "the bm25 formula saturates term frequency",
]
TINY_QUERIES = [
    ["the", "cat"],
    ["bm25", "formula"],
    ["the"],
    ["bm25", "bm25", "score"],
    ["dog", "unknown", "the", "mat"],
]
PARAMS = [(1.5, 0.75, 0.25), (1.2, 0.5, 0.5), (2.0, 1.0, 0.1), (0.5, 0.0, 0.25)]


def _zipf_corpus(n_docs=200, vocab=300, seed=0):
    """Documents of 0 to 40 words drawn with Zipf-like frequencies (p ~ 1 / rank^1.1), so the
    commonest words are in more than half the documents and the rarest in one or none."""
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(vocab)]
    p = 1.0 / np.arange(1, vocab + 1) ** 1.1
    p /= p.sum()
    lengths = rng.integers(0, 41, size=n_docs)
    lengths[:3] = 0  # a few empty documents
    corpus = [[words[j] for j in rng.choice(vocab, size=n, p=p)] for n in lengths]
    queries = [
        [words[j] for j in rng.choice(vocab, size=rng.integers(1, 6), p=p)] for _ in range(12)
    ]
    queries += [["w0", "w0", "w5"], ["w3", "not_a_word"], [words[-1], "w150", "w1"]]
    return corpus, queries


ZIPF_CORPUS, ZIPF_QUERIES = _zipf_corpus()


# ------------------------------------------------------------------------------ the formula


def test_lucene_score_by_hand():
    corpus = [["a", "b", "c"], ["a", "a", "d"], ["b", "e"], []]
    bm = BM25(corpus, k1=1.2, b=0.75, variant="lucene")
    # N = 4, n(a) = 2: idf = ln(1 + 2.5 / 2.5) = ln 2; avgdl = 8 / 4 = 2.
    assert bm.idf["a"] == pytest.approx(math.log(2))
    assert bm.avgdl == 2.0
    # doc 0: tf 1, |d| 3 -> 1 * 2.2 / (1 + 1.2 * (0.25 + 0.75 * 1.5)) = 2.2 / 2.65
    # doc 1: tf 2, |d| 3 -> 2 * 2.2 / (2 + 1.65) = 4.4 / 3.65
    expected = [math.log(2) * 2.2 / 2.65, math.log(2) * 4.4 / 3.65, 0.0, 0.0]
    np.testing.assert_allclose(bm.scores(["a"]), expected, rtol=1e-12)


def test_okapi_idf_is_zero_at_half_and_floored_above_half():
    corpus = [["a", "b", "c"], ["a", "a", "d"], ["b", "e"], []]
    bm = BM25(corpus, variant="okapi", epsilon=0.25)
    assert bm.idf["a"] == 0.0  # n = N / 2: ln(2.5 / 2.5) = 0, not negative, so not floored
    tiny = BM25([tokenize(t) for t in TINY], epsilon=0.25)
    raw_the = math.log((5 - 4 + 0.5) / (4 + 0.5))
    assert raw_the < 0
    assert tiny.idf["the"] == pytest.approx(0.25 * tiny.average_idf)
    assert tiny.idf["bm25"] == tiny.idf["the"]  # both floored to the same value
    assert tiny.idf["cat"] == pytest.approx(math.log((5 - 2 + 0.5) / (2 + 0.5)))
    # The mean is over the raw idfs, the negative ones included.
    raw = [math.log((5 - n + 0.5) / (n + 0.5)) for n in tiny.doc_freq.values()]
    assert tiny.average_idf == pytest.approx(sum(raw) / len(raw))


def test_lucene_idf_is_never_negative():
    bm = BM25([tokenize(t) for t in TINY], variant="lucene")
    assert min(bm.idf.values()) > 0
    assert bm.average_idf is None


def test_repeated_query_terms_count_once_per_occurrence():
    bm = BM25([tokenize(t) for t in TINY])
    np.testing.assert_allclose(bm.scores(["cat", "cat"]), 2 * bm.scores(["cat"]))


def test_k1_zero_ignores_term_frequency():
    bm = BM25([["x", "x", "x", "y"], ["x", "z"], ["z"]], k1=0.0, variant="lucene")
    scores = bm.scores(["x"])
    assert scores[0] == scores[1] == pytest.approx(bm.idf["x"])
    assert scores[2] == 0.0
    assert np.isfinite(scores).all()


# ---------------------------------------------------------------------- library parity


@pytest.mark.parametrize("k1, b, epsilon", PARAMS)
def test_okapi_equals_rank_bm25_on_a_tiny_corpus(k1, b, epsilon):
    from rank_bm25 import BM25Okapi

    corpus = [tokenize(t) for t in TINY]
    ours = BM25(corpus, k1=k1, b=b, variant="okapi", epsilon=epsilon)
    ref = BM25Okapi(corpus, k1=k1, b=b, epsilon=epsilon)
    assert ours.average_idf == pytest.approx(ref.average_idf, abs=1e-12)
    assert ours.idf == pytest.approx(ref.idf, abs=1e-12)
    for query in TINY_QUERIES:
        np.testing.assert_allclose(ours.scores(query), ref.get_scores(query), rtol=0, atol=1e-9)


@pytest.mark.parametrize("k1, b, epsilon", PARAMS)
def test_okapi_equals_rank_bm25_on_a_zipf_corpus(k1, b, epsilon):
    from rank_bm25 import BM25Okapi

    ours = BM25(ZIPF_CORPUS, k1=k1, b=b, variant="okapi", epsilon=epsilon)
    ref = BM25Okapi(ZIPF_CORPUS, k1=k1, b=b, epsilon=epsilon)
    assert min(ours.doc_freq.values()) == 1 and max(ours.doc_freq.values()) > len(ZIPF_CORPUS) / 2
    empty = ours.doc_len == 0
    for query in ZIPF_QUERIES:
        with np.errstate(invalid="ignore"):
            expected = ref.get_scores(query)
        # rank_bm25 computes 0 / 0 = nan for an empty document when b = 1; here it scores 0.
        assert (np.isnan(expected) == (empty & (b == 1))).all()
        expected[empty] = 0.0
        np.testing.assert_allclose(ours.scores(query), expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("k1, b", [(1.5, 0.75), (1.2, 0.5), (2.0, 1.0), (0.9, 0.0)])
def test_lucene_equals_bm25s_up_to_the_k1_plus_1_factor(k1, b):
    # bm25s (like Lucene >= 8) leaves out the constant factor (k1 + 1) of the tf part: the same
    # ranking, every score divided by k1 + 1. It stores scores in float32.
    import bm25s

    ref = bm25s.BM25(method="lucene", k1=k1, b=b)
    ref.index(ZIPF_CORPUS, show_progress=False)
    ours = BM25(ZIPF_CORPUS, k1=k1, b=b, variant="lucene")
    for query in ZIPF_QUERIES:
        expected = ref.get_scores(query).astype(np.float64) * (k1 + 1)
        np.testing.assert_allclose(ours.scores(query), expected, rtol=1e-5, atol=1e-5)


# -------------------------------------------------------------------- top-k and edge cases


def test_top_k_is_sorted_and_agrees_with_scores():
    bm = BM25(ZIPF_CORPUS)
    query = ZIPF_QUERIES[0]
    top = bm.top_k(query, 10)
    scores = bm.scores(query)
    assert [s for _, s in top] == sorted((s for _, s in top), reverse=True)
    assert top[0][1] == scores.max()
    assert all(scores[i] == s for i, s in top)
    assert len(bm.top_k(query, 10_000)) == len(ZIPF_CORPUS)


def test_top_k_breaks_ties_by_lower_index():
    corpus = [["x", "y"], ["a", "b"], ["a", "b"], ["q"], ["a", "b"]]
    bm = BM25(corpus)
    top = bm.top_k(["a"], 5)
    assert [i for i, _ in top] == [1, 2, 4, 0, 3]
    assert top[0][1] == top[1][1] == top[2][1] > 0
    assert top[3][1] == top[4][1] == 0.0


def test_unknown_words_and_empty_queries_score_zero():
    bm = BM25([tokenize(t) for t in TINY])
    assert not bm.scores(["zebra", "quokka"]).any()
    assert not bm.scores([]).any()
    assert bm.scores([]).shape == (len(TINY),)


def test_empty_documents_are_allowed():
    bm = BM25([["a", "b"], [], ["b", "c"]])
    assert bm.doc_len.tolist() == [2, 0, 2]
    assert bm.scores(["b", "c"])[1] == 0.0
    empty = BM25([[], []], variant="lucene")
    assert empty.avgdl == 0.0
    assert empty.scores(["a"]).tolist() == [0.0, 0.0]


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="corpus_tokens: expected at least one document, got 0"):
        BM25([])
    with pytest.raises(ValueError, match="k1"):
        BM25([["a"]], k1=-0.1)
    with pytest.raises(ValueError, match=r"b: expected a number in \[0, 1\]"):
        BM25([["a"]], b=1.5)
    with pytest.raises(ValueError, match="b"):
        BM25([["a"]], b=-0.01)
    with pytest.raises(ValueError, match="variant"):
        BM25([["a"]], variant="bm25+")
    with pytest.raises(TypeError, match=r"corpus_tokens\[1\]"):
        BM25([["a"], "a raw string"])
    with pytest.raises(TypeError, match="corpus_tokens"):
        BM25("a raw string")
    bm = BM25([["a"], ["b"]])
    with pytest.raises(ValueError, match="k"):
        bm.top_k(["a"], 0)
    with pytest.raises(TypeError, match="query_tokens"):
        bm.scores("a")


def test_tokenize():
    text = "The GPT-4 model's naïve Tokenizer, and the tokenizers."
    assert tokenize(text) == [
        "the", "gpt", "4", "model", "s", "naïve", "tokenizer", "and", "the", "tokenizers",
    ]  # fmt: skip
    assert tokenize(text, stopwords=STOPWORDS) == [
        "gpt", "4", "model", "s", "naïve", "tokenizer", "tokenizers",
    ]  # fmt: skip
    assert tokenize("") == []
    with pytest.raises(TypeError, match="text"):
        tokenize(["not", "a", "string"])
