"""llmlab.models.ngram: counts, smoothing (MLE, add-k, interpolated Kneser-Ney), perplexity, sampling."""

from __future__ import annotations

import math
import random

import pytest

from llmlab.models import ngram
from llmlab.models.ngram import BOS, NGramLM

TOY = [["a", "b", "a", "c"], ["a", "b", "b"]]


def test_mle_bigram_is_counts_over_context_counts():
    lm = NGramLM(2, "mle").fit(TOY)
    # bigrams: <s>a x2, ab x2, ba, ac, bb
    assert lm.prob("a", [BOS]) == 1.0
    assert lm.prob("b", ["a"]) == pytest.approx(2 / 3)
    assert lm.prob("c", ["a"]) == pytest.approx(1 / 3)
    assert lm.prob("a", ["b"]) == pytest.approx(1 / 2)
    assert lm.prob("c", ["b"]) == 0.0
    assert lm.prob("a", ["c"]) == 0.0  # "c" never starts a context: 0/0 counts as 0


def test_add_k_formula():
    lm = NGramLM(2, "add_k", k=0.5).fit(TOY)
    v = lm.vocab_size
    assert v == 4  # a, b, c + one unseen
    assert lm.prob("b", ["a"]) == pytest.approx((2 + 0.5) / (3 + 0.5 * v))
    assert lm.prob("zzz", ["a"]) == pytest.approx(0.5 / (3 + 0.5 * v))


def test_kneser_ney_bigram_by_hand():
    d = 0.5
    lm = NGramLM(2, "kneser_ney", discount=d).fit(TOY)
    v = lm.vocab_size
    # unigram continuation counts: distinct left contexts of a: {<s>, b}; b: {a, b}; c: {a}
    cont = {"a": 2, "b": 2, "c": 1}
    total, distinct = 5, 3

    def p1(w):
        return (max(cont.get(w, 0) - d, 0) + d * distinct / v) / total

    # P(b | a): c(a b) = 2, c(a) = 3, a is followed by 2 distinct tokens
    assert lm.prob("b", ["a"]) == pytest.approx((2 - d + d * 2 * p1("b")) / 3)
    assert lm.prob("a", ["a"]) == pytest.approx(d * 2 * p1("a") / 3)
    assert lm.prob("zzz", ["c"]) == pytest.approx(p1("zzz"))  # context c never seen


@pytest.mark.parametrize("n", [1, 2, 3, 4])
@pytest.mark.parametrize("smoothing", ["kneser_ney", "add_k"])
def test_conditionals_sum_to_one(n, smoothing):
    rng = random.Random(n)
    words = [f"w{i}" for i in range(12)]
    train = [[rng.choice(words[:10]) for _ in range(rng.randint(1, 30))] for _ in range(20)]
    lm = NGramLM(n, smoothing, vocab_size=len(words)).fit(train)
    contexts = [(), ("w1",), ("w2", "w3"), ("w11", "w10", "w9"), tuple(train[0][:3])]
    for context in contexts:
        total = sum(lm.prob(w, context) for w in words)
        assert total == pytest.approx(1.0, abs=1e-12), (context, total)


def test_mle_gives_infinite_perplexity_to_an_unseen_bigram():
    lm = NGramLM(2, "mle").fit(TOY)
    result = lm.evaluate([["a", "c", "b"]])
    assert result.zero_prob_tokens == 1
    assert math.isinf(result.perplexity) and math.isinf(result.bits_per_byte(3))
    assert math.isfinite(NGramLM(2).fit(TOY).perplexity([["a", "c", "b"]]))


def test_perplexity_of_a_uniform_unigram_is_the_number_of_choices():
    seq = [["x", "y", "z", "w"] * 25]
    lm = NGramLM(1, "mle").fit(seq)
    assert lm.perplexity(seq) == pytest.approx(4.0)
    result = lm.evaluate(seq)
    assert result.n_tokens == 100
    assert result.bits_per_byte(100) == pytest.approx(2.0)  # log2(4) bits per 1-byte token


def test_higher_order_fits_a_deterministic_pattern_better():
    seq = [list("abcabcabcabc" * 10)]
    ppl = [NGramLM(n).fit(seq).perplexity(seq) for n in (1, 2, 3)]
    assert ppl[0] > ppl[1] > 1.0 and ppl[2] <= ppl[1]
    assert ppl[1] < 1.2


def test_unseen_fraction_and_ngrams():
    assert list(ngram.ngrams(["a", "b"], 2)) == [(BOS, "a"), ("a", "b")]
    assert list(ngram.ngrams(["a", "b"], 3, pad=False)) == []
    train, test = [["a", "b", "c"]], [["a", "b", "d"]]
    assert ngram.unseen_fraction(train, test, 1) == pytest.approx(1 / 3)
    assert ngram.unseen_fraction(train, test, 2) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="test"):
        ngram.unseen_fraction(train, [[]], 2)


def test_vocab_helpers_and_word_tokenize():
    assert ngram.word_tokenize("Don't split, 42 times!") == [
        "don't",
        "split",
        ",",
        "42",
        "times",
        "!",
    ]
    vocab = ngram.build_vocab([["a", "a", "b"]], min_count=2)
    assert vocab == {"a"}
    assert ngram.apply_vocab([["a", "b"]], vocab) == [["a", ngram.UNK]]


def test_sample_is_seeded_and_in_vocab():
    lm = NGramLM(2).fit(TOY)
    first, again = lm.sample(20, seed=3), lm.sample(20, seed=3)
    assert first == again and len(first) == 20
    assert set(first) <= lm.vocab
    assert lm.n_parameters > 0 and "NGramLM(n=2" in repr(lm)


def test_integer_token_ids_work():
    ids = [[1, 2, 3, 1, 2, 3], [3, 2, 1]]
    lm = NGramLM(3, vocab_size=10).fit(ids)
    assert sum(lm.prob(t, [1, 2]) for t in range(10)) == pytest.approx(1.0)
    assert lm.perplexity(ids) < 10


def test_token_nll_scores_each_target_from_its_own_prefix():
    ids = [1, 2, 3, 1, 2, 3, 3, 2, 1, 4]
    lm = NGramLM(3, vocab_size=10).fit([ids[:7]])
    # start=0 is evaluate() on the whole sequence (the first token from start-of-text)
    assert sum(lm.token_nll(ids, start=0)) == pytest.approx(lm.evaluate([ids]).nll)
    nll = lm.token_nll(ids)  # targets ids[1:], as a causal LM scores them
    assert len(nll) == len(ids) - 1
    assert nll[4] == pytest.approx(-math.log(lm.prob(ids[5], ids[3:5])))
    assert nll[0] == pytest.approx(-math.log(lm.prob(ids[1], [ids[0]])))
    assert lm.token_nll(ids, start=len(ids)) == []
    with pytest.raises(ValueError, match="start: expected an int in"):
        lm.token_nll(ids, start=11)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n": 0}, "n: expected"),
        ({"n": 2, "smoothing": "good_turing"}, "smoothing"),
        ({"n": 2, "discount": 1.5}, "discount"),
        ({"n": 2, "k": 0}, "k: expected"),
        ({"n": 2, "vocab_size": 0}, "vocab_size"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NGramLM(**kwargs)


def test_bad_data_is_explained():
    with pytest.raises(TypeError, match="word_tokenize"):
        NGramLM(2).fit(["a raw string"])
    with pytest.raises(ValueError, match="at least one token"):
        NGramLM(2).fit([])
    with pytest.raises(RuntimeError, match="fit"):
        NGramLM(2).prob("a")
    with pytest.raises(ValueError, match="vocab_size"):
        NGramLM(2, vocab_size=2).fit(TOY)
