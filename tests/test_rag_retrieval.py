"""llmlab.rag: chunking spans, MiniLM mean pooling equal to sentence-transformers, exact search
and FAISS indexes against it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmlab.rag import chunking, embed, index

TEXT = (
    "Veltra Ossingrove was born in 1873 in Brunnholt. She trained as a glassmaker. "
    "In 1901 she founded Quarrel Works. The company made lenses!\n\n"
    "Brunnholt lies on the river Aske. Its population is 48,200. Is it large? Not very."
)


def test_sentence_spans_and_chunk_covers():
    spans = chunking.sentence_spans(TEXT)
    sentences = [TEXT[s:e] for s, e in spans]
    assert sentences[0] == "Veltra Ossingrove was born in 1873 in Brunnholt."
    assert sentences[3] == "The company made lenses!"
    assert sentences[-1] == "Not very."
    assert len(spans) == 8


@pytest.mark.parametrize(
    "method, options",
    [
        ("fixed", {"size": 7, "overlap": 0}),
        ("fixed", {"size": 7, "overlap": 3}),
        ("sentences", {"max_words": 12, "overlap": 0}),
        ("sentences", {"max_words": 12, "overlap": 1}),
        ("paragraphs", {"max_words": 200}),
        ("paragraphs", {"max_words": 10}),
    ],
)
def test_chunks_are_spans_of_their_document_and_cover_every_word(method, options):
    chunks = chunking.chunk_corpus([("d1", TEXT)], method, **options)
    for c in chunks:
        assert TEXT[c.start : c.end] == c.text and c.doc_id == "d1"
    covered = set()
    for c in chunks:
        covered.update(range(c.start, c.end))
    words = [m.span() for m in chunking._WORD.finditer(TEXT)]
    assert all(set(range(s, e)) <= covered for s, e in words)  # nothing lost
    assert len({c.chunk_id for c in chunks}) == len(chunks)


def test_overlap_repeats_text_and_fixed_windows_have_the_size():
    fixed = chunking.chunk_fixed("d", TEXT, size=7, overlap=3)
    assert all(len(c.text.split()) == 7 for c in fixed[:-1])
    assert fixed[0].text.split()[-3:] == fixed[1].text.split()[:3]
    plain = chunking.chunk_sentences("d", TEXT, max_words=12)
    over = chunking.chunk_sentences("d", TEXT, max_words=12, overlap=1)
    assert len(over) > len(plain)
    evidence = TEXT.index("In 1901"), TEXT.index("Works.") + len("Works.")
    assert any(c.covers(*evidence) for c in plain)


def test_chunking_errors():
    with pytest.raises(ValueError, match="overlap: expected less than size"):
        chunking.chunk_fixed("d", TEXT, size=3, overlap=3)
    with pytest.raises(ValueError, match="method: expected one of"):
        chunking.chunk_corpus([("d", TEXT)], "pages")
    with pytest.raises(ValueError, match="documents: expected at least one"):
        chunking.chunk_corpus([("d", "   ")], "sentences", max_words=5)
    with pytest.raises(ValueError, match="max_words: expected an int >= 1"):
        chunking.chunk_sentences("d", TEXT, max_words=0)


def test_mean_pool_ignores_padding():
    hidden = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    pooled = embed.mean_pool(hidden, mask)
    assert torch.allclose(pooled[0], hidden[0, :2].mean(0))
    assert torch.allclose(pooled[1], hidden[1].mean(0))
    assert torch.equal(embed.mean_pool(hidden, torch.zeros(2, 4)), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="hidden, attention_mask"):
        embed.mean_pool(hidden, mask[:, :3])


@pytest.mark.slow
def test_embedder_equals_sentence_transformers():
    from llmlab import assets

    ours = embed.Embedder.load(device="cpu")
    theirs = assets.load_minilm(device="cpu")
    texts = [
        "Veltra Ossingrove was born in 1873.",
        "Where was Veltra Ossingrove born?",
        "A much longer passage about a town on a river, its festivals and its glassworks. " * 12,
        "",
    ]
    a = ours.encode(texts, batch_size=2)
    b = theirs.encode(texts, batch_size=2, convert_to_numpy=True, normalize_embeddings=False)
    assert a.shape == (4, 384) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-6)
    with pytest.raises(TypeError, match="texts: expected a list of strings"):
        ours.encode("one string")


def test_cached_embeddings_reuses_and_refreshes(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMLAB_CACHE", str(tmp_path))
    calls = []

    class Fake:
        def encode(self, texts, batch_size=32):
            calls.append(list(texts))
            return np.arange(len(texts) * 2, dtype=np.float32).reshape(len(texts), 2)

    first = embed.cached_embeddings(["a", "b"], "07_rag/test", Fake())
    again = embed.cached_embeddings(["a", "b"], "07_rag/test", Fake())
    other = embed.cached_embeddings(["a", "c"], "07_rag/test", Fake())
    np.testing.assert_array_equal(first, again)
    assert calls == [["a", "b"], ["a", "c"]] and other.shape == (2, 2)

    class Other(Fake):
        name = "another-model"

    # the same texts under the same cache name, embedded by another model: not read stale
    embed.cached_embeddings(["a", "b"], "07_rag/test", Other())
    assert calls[-1] == ["a", "b"] and len(calls) == 3


def _data(n=2000, q=50, dim=32, seed=0):
    both, labels = index.clustered_vectors(n + q, dim=dim, n_clusters=20, seed=seed)
    assert both.shape == (n + q, dim) and labels.max() < 20
    return both[:n], both[n:]


def test_exact_search_ranks_by_inner_product_and_l2():
    vectors, queries = _data(300, 5)
    scores, ids = index.exact_search(queries, vectors, k=7)
    full = queries @ vectors.T
    for row in range(5):
        expected = np.argsort(-full[row], kind="stable")[:7]
        np.testing.assert_array_equal(ids[row], expected)
        np.testing.assert_allclose(scores[row], full[row, expected], rtol=1e-6)
    _, l2_ids = index.exact_search(queries, vectors, k=7, metric="l2")
    # Unit vectors: the nearest by L2 are the largest by inner product.
    np.testing.assert_array_equal(l2_ids, ids)


def test_faiss_flat_equals_exact_and_ivf_hnsw_reach_it():
    vectors, queries = _data()
    _, exact = index.exact_search(queries, vectors, k=10)
    _, flat = index.search(index.flat_index(vectors), queries, k=10)
    assert index.recall_at_k_vs_exact(flat, exact) == 1.0
    ivf = index.ivf_index(vectors, nlist=16)
    low = index.recall_at_k_vs_exact(index.search(ivf, queries, 10, nprobe=1)[1], exact)
    full = index.recall_at_k_vs_exact(index.search(ivf, queries, 10, nprobe=16)[1], exact)
    assert full == 1.0 and low <= full  # probing every list is exact search
    hnsw = index.hnsw_index(vectors, m=16)
    recall = index.recall_at_k_vs_exact(index.search(hnsw, queries, 10, ef_search=128)[1], exact)
    assert recall >= 0.95


def test_index_errors():
    vectors, queries = _data(100, 3)
    flat = index.flat_index(vectors)
    with pytest.raises(ValueError, match="k: expected at most the number of vectors"):
        index.search(flat, queries, k=101)
    with pytest.raises(ValueError, match="nprobe: only an IVF index"):
        index.search(flat, queries, k=3, nprobe=2)
    with pytest.raises(ValueError, match="queries: expected dimension"):
        index.search(flat, queries[:, :5], k=3)
    with pytest.raises(ValueError, match="vectors: expected a non-empty"):
        index.flat_index(np.zeros((0, 4)))
    with pytest.raises(ValueError, match="nlist: expected an int in"):
        index.ivf_index(vectors, nlist=1000)
    with pytest.raises(ValueError, match="found_ids, exact_ids"):
        index.recall_at_k_vs_exact(np.zeros((2, 3)), np.zeros((2, 4)))


def test_latency_is_per_query():
    vectors, queries = _data(200, 10)
    flat = index.flat_index(vectors)
    ms = index.latency_ms(lambda q: flat.search(q, 5), queries, repeats=2)
    assert ms > 0


def test_stdlib_documents_are_distinct_docstrings_in_a_fixed_order():
    from llmlab.rag import corpora

    docs = corpora.stdlib_documents(max_docs=60)
    again = corpora.stdlib_documents(max_docs=60)
    assert [d.doc_id for d in docs] == [d.doc_id for d in again] and len(docs) == 60
    assert len({d.text for d in docs}) == len(docs)  # no docstring twice
    assert all(len(d.text.split()) >= 8 and d.title == d.doc_id for d in docs)
    assert not any(d.doc_id.split(".")[0] in corpora.SKIP for d in docs)
    chunks = chunking.chunk_corpus(docs, "paragraphs", max_words=120)
    assert len(chunks) >= len(docs)
    with pytest.raises(ValueError, match="min_words: expected an int >= 1"):
        corpora.stdlib_documents(min_words=0)
