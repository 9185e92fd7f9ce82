"""llmlab.rag.frameworks, and the LangChain behaviour notebook 07.5 relies on, on tiny inputs.

The second half pins what the chapter measures about LangChain's defaults (L2 distance in its
FAISS store, whitespace tokens in its BM25, RRF with c and dedup by text in its ensemble), so
that an upgrade that changes them fails here rather than silently changing the chapter.
"""

import numpy as np
import pytest

from llmlab.rag import bm25, fusion, index
from llmlab.rag.chunking import Chunk
from llmlab.rag.frameworks import agreement, documents_from_chunks, latency_ms, ranking_of

CHUNKS = [
    Chunk("d0", "d0-0", "Ada was born in Orvihaven.", 0, 26),
    Chunk("d0", "d0-1", "She worked as a chemist.", 27, 51),
    Chunk("d1", "d1-0", "Orvihaven is a market town.", 0, 27),
]


# ------------------------------------------------------------------------------- the helpers


def test_documents_carry_the_chunk_and_map_back():
    pytest.importorskip("langchain_core")
    docs = documents_from_chunks(CHUNKS)
    assert [d.page_content for d in docs] == [c.text for c in CHUNKS]
    assert [d.id for d in docs] == ["d0-0", "d0-1", "d1-0"]
    assert docs[1].metadata == {"chunk_id": "d0-1", "doc_id": "d0", "start": 27, "end": 51}
    positions = {c.chunk_id: i for i, c in enumerate(CHUNKS)}
    assert ranking_of([docs[2], docs[0]], positions) == [2, 0]
    assert ranking_of([], positions) == []


def test_documents_from_chunks_errors():
    with pytest.raises(TypeError, match="chunks"):
        documents_from_chunks("not chunks")
    with pytest.raises(TypeError, match=r"chunks\[1\]"):
        documents_from_chunks([CHUNKS[0], "text"])
    with pytest.raises(ValueError, match="appears twice"):
        documents_from_chunks([CHUNKS[0], CHUNKS[0]])


def test_ranking_of_errors_name_the_document():
    class Doc:
        def __init__(self, metadata):
            self.metadata = metadata

    positions = {"a": 0}
    with pytest.raises(ValueError, match=r"documents\[1\].*chunk_id"):
        ranking_of([Doc({"chunk_id": "a"}), Doc({})], positions)
    with pytest.raises(ValueError, match="not in positions"):
        ranking_of([Doc({"chunk_id": "b"})], positions)
    with pytest.raises(TypeError, match="positions"):
        ranking_of([Doc({"chunk_id": "a"})], [("a", 0)])
    with pytest.raises(TypeError, match="documents"):
        ranking_of("a", positions)
    assert ranking_of([Doc({"id": "a"})], positions, key="id") == [0]


def test_agreement_by_hand():
    a = [[1, 2, 3], [4, 5, 6]]
    b = [[1, 2, 3], [5, 4, 9]]
    assert agreement(a, b, 1) == {"overlap": 0.5, "identical": 0.5}
    # query 0: same 2, same order; query 1: {4, 5} both, order swapped
    assert agreement(a, b, 2) == {"overlap": 1.0, "identical": 0.5}
    assert agreement(a, b, 3) == pytest.approx({"overlap": (1 + 2 / 3) / 2, "identical": 0.5})
    assert agreement(a, a, 3) == {"overlap": 1.0, "identical": 1.0}
    assert agreement([np.array([1, 2])], [(1, 2)], 2) == {"overlap": 1.0, "identical": 1.0}


def test_agreement_errors():
    with pytest.raises(ValueError, match="rankings_b"):
        agreement([[1]], [[1], [2]], 1)
    with pytest.raises(ValueError, match="at least one query"):
        agreement([], [], 1)
    with pytest.raises(ValueError, match=r"rankings\[0\].*k=3"):
        agreement([[1, 2]], [[1, 2, 3]], 3)
    with pytest.raises(ValueError, match="k"):
        agreement([[1]], [[1]], 0)
    with pytest.raises(TypeError, match="rankings_a"):
        agreement("ab", ["ab"], 1)


def test_latency_ms_calls_once_per_query_after_warmup():
    calls = []
    ms = latency_ms(calls.append, ["a", "b", "c"], warmup=2)
    assert calls == ["a", "b", "a", "b", "c"] and ms >= 0
    with pytest.raises(ValueError, match="queries"):
        latency_ms(calls.append, [])
    with pytest.raises(TypeError, match="fn"):
        latency_ms("not callable", ["a"])
    with pytest.raises(ValueError, match="warmup"):
        latency_ms(calls.append, ["a"], warmup=-1)


# ------------------------------------------------------------ LangChain, as the chapter uses it


def _fake_embeddings(table: dict):
    """An Embeddings whose vectors come from ``table`` (text -> vector): no model needed."""
    from langchain_core.embeddings import Embeddings

    class Lookup(Embeddings):
        def embed_documents(self, texts):
            return [list(map(float, table[t])) for t in texts]

        def embed_query(self, text):
            return list(map(float, table[text]))

    return Lookup()


def _store(vectors, **kwargs):
    from langchain_community.vectorstores import FAISS

    texts = [f"passage {i}" for i in range(len(vectors))]
    table = dict(zip(texts, vectors, strict=True))
    docs = documents_from_chunks([Chunk("d", str(i), t, 0, len(t)) for i, t in enumerate(texts)])
    return FAISS.from_documents(docs, _fake_embeddings(table), **kwargs)


def _search(store, queries, k):
    positions = {str(i): i for i in range(store.index.ntotal)}
    return [
        ranking_of(store.similarity_search_by_vector(q.tolist(), k=k), positions) for q in queries
    ]


def test_faiss_store_default_is_l2_which_ranks_unit_vectors_like_inner_product():
    pytest.importorskip("langchain_community")
    pytest.importorskip("faiss")
    from langchain_community.vectorstores.utils import DistanceStrategy

    rng = np.random.default_rng(0)
    raw = rng.standard_normal((40, 8)).astype(np.float32) * rng.uniform(0.2, 5, (40, 1))
    queries = rng.standard_normal((10, 8)).astype(np.float32)
    unit, unit_queries = index.normalize(raw), index.normalize(queries)
    store = _store(unit)
    assert type(store.index).__name__ == "IndexFlatL2"
    exact = [row.tolist() for row in index.exact_search(unit_queries, unit, 10)[1]]
    assert _search(store, unit_queries, 10) == exact
    # raw vectors: normalize_L2 makes L2 rank by cosine; the inner-product store by raw dot
    cosine = _search(_store(raw, normalize_L2=True), queries, 10)
    assert cosine == exact
    dot = _search(_store(raw, distance_strategy=DistanceStrategy.MAX_INNER_PRODUCT), queries, 10)
    assert dot == [row.tolist() for row in index.exact_search(queries, raw, 10)[1]]
    assert dot != exact  # lengths this unequal change the ranking


def test_bm25_retriever_tokens_and_scores():
    pytest.importorskip("langchain_community")
    pytest.importorskip("rank_bm25")
    from langchain_community.retrievers import BM25Retriever

    docs = documents_from_chunks(CHUNKS)
    default = BM25Retriever.from_documents(docs)
    assert default.k == 4
    assert default.preprocess_func("Where was Ada born?") == ["Where", "was", "Ada", "born?"]
    ours = BM25Retriever.from_documents(docs, preprocess_func=bm25.tokenize)
    reference = bm25.BM25([bm25.tokenize(c.text) for c in CHUNKS], variant="okapi")
    for query in ("Where was Ada born?", "orvihaven market", "chemist"):
        tokens = bm25.tokenize(query)
        np.testing.assert_allclose(ours.vectorizer.get_scores(tokens), reference.scores(tokens))


def test_ensemble_is_weighted_rrf_and_dedups_by_text_unless_told_an_id():
    pytest.importorskip("langchain")
    from langchain.retrievers import EnsembleRetriever
    from langchain_community.retrievers import BM25Retriever
    from langchain_core.documents import Document

    docs = documents_from_chunks(CHUNKS)
    stub = BM25Retriever.from_documents(docs)
    default = EnsembleRetriever(retrievers=[stub, stub])
    assert default.c == 60 and default.weights == [0.5, 0.5] and default.id_key is None
    rng = np.random.default_rng(1)
    many = [Document(page_content=f"text {i}", metadata={"chunk_id": i}) for i in range(30)]
    for c in (1, 5, 60):
        ensemble = EnsembleRetriever(retrievers=[stub, stub], c=c, id_key="chunk_id")
        for _ in range(20):
            a, b = (rng.permutation(30)[: rng.integers(1, 30)].tolist() for _ in range(2))
            fused = ensemble.weighted_reciprocal_rank([[many[i] for i in a], [many[i] for i in b]])
            ours = [i for i, _ in fusion.reciprocal_rank_fusion([a, b], k=c)]
            assert [d.metadata["chunk_id"] for d in fused] == ours
    twins = [Document(page_content="same", metadata={"chunk_id": i}) for i in range(2)]
    assert len(default.weighted_reciprocal_rank([[twins[0]], [twins[1]]])) == 1
    by_id = EnsembleRetriever(retrievers=[stub, stub], id_key="chunk_id")
    assert len(by_id.weighted_reciprocal_rank([[twins[0]], [twins[1]]])) == 2
