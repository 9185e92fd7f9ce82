"""llmlab.data's pipeline: quality filter, exact and MinHash dedup, PII scrubbing, packing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llmlab import data

PROSE = (
    "The quick brown fox jumps over the lazy dog while the farmer watches from the old "
    "wooden fence and wonders whether rain will come before the harvest is finished."
)


def test_quality_filter_keeps_prose_and_says_why_it_drops():
    f = data.QualityFilter()
    assert f.check(PROSE) == []
    assert "fewer than 8 words" in f.check("Return self.")
    assert "too many symbols" in f.check("{}[]()<>;:=+-*/ " * 10 + " word " * 10)
    assert "repeated lines" in f.check("\n".join(["same line here please"] * 5 + [PROSE]))
    assert "a repeated 2-gram dominates" in f.check("buy now " * 30)
    kept, reasons = f.filter([PROSE, "Return self."])
    assert kept == [PROSE] and reasons["fewer than 8 words"] == 1
    s = data.quality_signals("Ab 12")
    assert s["n_words"] == 2 and s["digit_ratio"] == pytest.approx(2 / 5)


def test_normalize_and_exact_dedup():
    assert data.normalize_text("a  b\t c \r\nd  ") == "a b c\nd"
    docs = ["Hello  world", "Hello world", "other", "Hello world\n"]
    kept, dropped = data.exact_dedup(docs)
    assert kept == [0, 2] and dropped == {1: 0, 3: 0}


def test_shingles_jaccard_overlap():
    a = data.shingles("one two three four", k=2)
    assert a == {"one two", "two three", "three four"}
    b = data.shingles("one two three five", k=2)
    assert data.jaccard(a, b) == pytest.approx(2 / 4)
    assert data.ngram_overlap("one two three four", "x one two three y", n=2) == pytest.approx(
        2 / 3
    )
    # against a whole split: n-grams found in any reference document count
    shares = data.contamination(
        ["one two three four", "five six", "seven"], ["x one two y", "three four z"], n=2
    )
    assert shares == pytest.approx([2 / 3, 0.0, 0.0])
    assert shares[0] > max(
        data.ngram_overlap("one two three four", r, n=2) for r in ["x one two y", "three four z"]
    )
    assert data.shingles("hi", k=5) == {"hi"}
    with pytest.raises(ValueError, match="k: expected"):
        data.shingles("x", k=0)


def test_minhash_estimates_jaccard():
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(400)]
    base = list(rng.choice(words, 300))
    other = base[:240] + list(rng.choice(words, 60))
    a, b = " ".join(base), " ".join(other)
    true = data.jaccard(data.shingles(a, 3), data.shingles(b, 3))
    sigs = data.minhash_signatures([a, b], num_perm=512, k=3, seed=1)
    est = float(np.mean(sigs[0] == sigs[1]))
    assert abs(est - true) < 4 * math.sqrt(true * (1 - true) / 512) + 1e-9
    assert sigs.shape == (2, 512) and sigs.dtype == np.uint64
    again = data.minhash_signatures([a, b], num_perm=512, k=3, seed=1)
    assert np.array_equal(sigs, again)


def test_lsh_params_put_the_s_curve_at_the_threshold():
    for threshold in (0.5, 0.8, 0.9):
        bands, rows = data.lsh_params(128, threshold)
        assert bands * rows <= 128
        knee = (1 / bands) ** (1 / rows)
        assert abs(knee - threshold) < 0.12, (threshold, bands, rows, knee)


def test_near_duplicates_found_with_high_precision_and_recall():
    rng = np.random.default_rng(0)
    vocab = [f"t{i}" for i in range(2000)]
    docs = [" ".join(rng.choice(vocab, 80)) for _ in range(300)]
    all_docs, planted = data.plant_near_duplicates(docs, 30, edit_rate=0.01, seed=0)
    found = data.near_duplicate_pairs(all_docs, threshold=0.7, num_perm=128, k=3)
    precision, recall = data.precision_recall(found, planted)
    assert precision == 1.0 and recall >= 0.9
    assert data.precision_recall(set(), set()) == (1.0, 1.0)
    with pytest.raises(ValueError, match="n_copies"):
        data.plant_near_duplicates(docs[:2], 5)


def test_lsh_index_validates():
    index = data.LSHIndex(4, 8)
    with pytest.raises(ValueError, match="signature"):
        index.add(0, np.zeros(10, dtype=np.uint64))
    with pytest.raises(ValueError, match="bands"):
        data.LSHIndex(0, 4)


@pytest.mark.parametrize(
    "text, kind",
    [
        ("write to jane.doe+news@mail.example.org today", "EMAIL"),
        ("server at 10.0.0.255 is down", "IP"),
        ("v6 2001:0db8:85a3:0000:0000:8a2e:0370:7334 ok", "IP"),
        ("call +44 20 7946 0958 now", "PHONE"),
        ("call (617) 555-0123 now", "PHONE"),
        ("card 4111 1111 1111 1111 expires", "CARD"),
        ("aws AKIAIOSFODNN7EXAMPLE key", "KEY"),
        ("token ghp_" + "a" * 36 + " here", "KEY"),
    ],
)
def test_scrub_pii_finds_each_kind(text, kind):
    out, counts = data.scrub_pii(text)
    assert counts[kind] == 1 and f"<{kind}>" in out


def test_scrub_pii_leaves_ordinary_text():
    text = "Version 3.11 added 256 features; 1234 5678 9012 3456 is not a valid card; 999.1.1.1 is no IP."
    out, counts = data.scrub_pii(text)
    assert out == text and not counts


def test_k_anonymity():
    rows = [{"zip": "021**", "age": "30-39"}] * 3 + [{"zip": "100**", "age": "20-29"}] * 2
    assert data.k_anonymity(rows, ["zip", "age"]) == 2
    with pytest.raises(ValueError, match="quasi_identifiers"):
        data.k_anonymity(rows, ["name"])


def test_token_file_round_trip_and_sampler(tmp_path):
    docs = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    path = data.write_token_file(tmp_path / "train.bin", docs, eos_id=0, vocab_size=50)
    tf = data.TokenFile(path)
    assert tf.tokens.dtype == np.uint16 and list(tf.tokens) == [1, 2, 3, 0, 4, 5, 0, 6, 7, 8, 9, 0]
    assert "12 tokens" in repr(tf)
    sampler = data.RandomBatchSampler(tf, batch_size=3, seq_len=4, seed=7)
    x, y = sampler(5)
    assert x.shape == y.shape == (3, 4) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])  # targets are inputs shifted by one
    assert all(torch.equal(a, b) for a, b in zip(sampler(5), sampler(5), strict=True))
    assert not torch.equal(sampler(5)[0], sampler(6)[0])
    windows = list(sampler.sequential())
    assert sum(len(w[0]) for w in windows) == (12 - 1) // 4
    with pytest.raises(ValueError, match="ids must be"):
        data.write_token_file(tmp_path / "bad.bin", [[99]], eos_id=0, vocab_size=50)
    assert not (tmp_path / "bad.bin").exists()
    with pytest.raises(FileNotFoundError, match="write_token_file"):
        data.TokenFile(tmp_path / "missing.bin")
    big = data.write_token_file(tmp_path / "big.bin", [[70_000]], eos_id=None, vocab_size=100_000)
    assert data.TokenFile(big).tokens.dtype == np.uint32


def test_loose_lsh_with_exact_verification_finds_every_planted_pair():
    rng = np.random.default_rng(1)
    vocab = [f"t{i}" for i in range(2000)]
    docs = [" ".join(rng.choice(vocab, 60)) for _ in range(200)]
    all_docs, planted = data.plant_near_duplicates(docs, 20, edit_rate=0.03, seed=1)
    truth = {
        p
        for p in planted
        if data.jaccard(data.shingles(all_docs[p[0]], 3), data.shingles(all_docs[p[1]], 3)) >= 0.6
    }
    found = data.near_duplicate_pairs(
        all_docs, threshold=0.6, k=3, lsh_threshold=0.4, verify="exact"
    )
    precision, recall = data.precision_recall(found, truth)
    assert precision == 1.0 and recall == 1.0
    assert data.shingle_hashes("a b c", k=2) == data.shingle_hashes("A b C", k=2)
    with pytest.raises(ValueError, match="verify"):
        data.near_duplicate_pairs(all_docs, verify="fuzzy")


# --------------------------------------------------------------------------------------------
# Chapter 03's training data: normalise, filter, dedup, split, decontaminate, cache.


def test_normalize_text_can_keep_indentation():
    text = "def f():\r\n    x  =  1   \r\n\tif  y:\n\n"
    assert data.normalize_text(text, keep_indent=True) == "def f():\n    x = 1\n\tif y:"
    assert data.normalize_text(text) == "def f():\n x = 1\n if y:"


def test_decontaminate_drops_the_fewest_training_documents():
    words = [f"w{i}" for i in range(200)]
    held = " ".join(words[:40])
    train = [
        " ".join(words[100:140]),  # unrelated
        " ".join(words[:30]),  # holds most of the held-out document's 8-grams
        " ".join(words[25:40]),  # holds a few
        " ".join(words[150:190]),
    ]
    assert data.contamination([held], train)[0] > 0.5
    drop = data.decontaminate(train, [held])
    assert drop == [1]
    kept = [d for i, d in enumerate(train) if i not in drop]
    assert data.contamination([held], kept)[0] <= 0.5
    assert data.decontaminate(train, [held], max_share=0.0) == [1, 2]
    assert data.decontaminate(train, ["nothing shared here at all"]) == []
    with pytest.raises(ValueError, match="max_share"):
        data.decontaminate(train, [held], max_share=1.0)


@pytest.fixture
def course_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMLAB_CACHE", str(tmp_path))
    return tmp_path


def test_pretraining_corpus_is_clean_split_and_cached(course_cache):
    clean = data.pretraining_corpus(120_000)
    assert not clean.cached
    names = [s.name for s in clean.stages]
    assert names == [
        "raw",
        "normalised",
        "quality filter",
        "exact dedup",
        "near dedup",
        "PII scrubbed",
        "split",
        "decontaminated",
    ]
    counts = [s.n_documents for s in clean.stages]
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]
    assert clean.stages[0].n_documents == data.docstring_corpus(120_000).n_documents
    parts = (clean.train, clean.val, clean.test)
    assert counts[-1] == sum(p.n_documents for p in parts)
    assert counts[-2] == counts[-1] + clean.near_copies_removed
    texts = [d for p in (*parts, clean.near_copies) for d in p.documents]
    assert len(texts) == len(set(texts)) == counts[-2]  # every document in one part
    # (not sources: a function defined twice, per platform, has two docstrings and one name)
    quality = data.QualityFilter()
    assert all(quality.keep(d) for p in parts for d in p.documents)
    every = [d for p in parts for d in p.documents]
    assert data.exact_dedup(every)[1] == {}
    assert data.near_duplicate_pairs(every, 0.8, lsh_threshold=0.6, verify="exact") == set()
    held_out = clean.val.documents + clean.test.documents
    assert max(data.contamination(held_out, clean.train.documents)) <= 0.5
    before = clean.train.documents + clean.near_copies.documents
    if clean.near_copies_removed:
        assert max(data.contamination(held_out, before)) > 0.5
    assert "train" in clean.describe() and "near_copies_removed" in repr(clean)

    files = list((course_cache / "corpora").iterdir())
    assert len(files) == 1 and files[0].suffix == ".json"  # no temporary file left behind
    again = data.pretraining_corpus(120_000)
    assert again.cached
    for a, b in zip(
        (*parts, clean.near_copies),
        (again.train, again.val, again.test, again.near_copies),
        strict=True,
    ):
        assert (a.name, a.documents, a.sources) == (b.name, b.documents, b.sources)
    assert again.stages == clean.stages
    fresh = data.pretraining_corpus(120_000, cache=False)
    assert not fresh.cached and fresh.train.documents == clean.train.documents
    other = data.pretraining_corpus(120_000, seed=1)
    assert not other.cached and other.val.sources != clean.val.sources
    assert len(list((course_cache / "corpora").iterdir())) == 2


def test_pretraining_corpus_rebuilds_a_broken_cache_file(course_cache):
    clean = data.pretraining_corpus(60_000)
    (path,) = (course_cache / "corpora").iterdir()
    path.write_text("{not json")
    rebuilt = data.pretraining_corpus(60_000)
    assert not rebuilt.cached and rebuilt.train.documents == clean.train.documents
    assert data.pretraining_corpus(60_000).cached


def test_pretraining_corpus_validates():
    with pytest.raises(ValueError, match="max_bytes"):
        data.pretraining_corpus(0)
    with pytest.raises(ValueError, match="sum to 1"):
        data.pretraining_corpus(10_000, fractions=(0.5, 0.1, 0.1), cache=False)
    with pytest.raises(TypeError, match="seed"):
        data.pretraining_corpus(10_000, seed="0", cache=False)
