"""llmlab.rag.retriever and llmlab.rag.reader: hybrid search, prompts, replies, scores and the
reading examples, with a toy embedder (no model is loaded)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmlab.rag import bm25, chunking, fusion, index, reader
from llmlab.rag import kb as kbase
from llmlab.rag.retriever import HybridRetriever


class ToyEmbedder:
    """Bag-of-words vectors hashed into 64 dimensions, normalised: a deterministic stand-in."""

    dim = 64

    def encode(self, texts, batch_size=32):
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for token in bm25.tokenize(text):
                out[row, sum(map(ord, token)) % self.dim] += 1.0
        return index.normalize(out + 1e-6)


@pytest.fixture(scope="module")
def small():
    kb = kbase.make_kb(24, seed=3)
    chunks = chunking.chunk_corpus(kb.documents, "sentences", max_words=40, overlap=1)
    return kb, chunks, HybridRetriever(chunks, ToyEmbedder(), rrf_k=5, depth=10)


def test_hybrid_is_rrf_of_dense_and_bm25(small):
    kb, chunks, retriever = small
    questions = [q.question for q in kb.questions[:12]]
    dense = retriever.rankings(questions, "dense")
    lexical = retriever.rankings(questions, "bm25")
    hybrid = retriever.rankings(questions, "hybrid")
    for d, b, h in zip(dense, lexical, hybrid, strict=True):
        assert len(d) == len(b) == 10
        assert h == [i for i, _ in fusion.reciprocal_rank_fusion([d, b], k=5)]
    # the dense ranking is exact inner-product search over the chunk vectors
    vecs = ToyEmbedder().encode([c.text for c in chunks])
    _, ids = index.exact_search(ToyEmbedder().encode(questions[:1]), vecs, 10)
    assert dense[0] == ids[0].tolist()
    found = retriever.search(questions[0], k=3)
    assert [c.chunk_id for c in found] == [chunks[i].chunk_id for i in hybrid[0][:3]]
    assert retriever.search_many(questions[:2], k=2, mode="bm25") == [
        [chunks[i] for i in r[:2]] for r in lexical[:2]
    ]
    assert retriever.rankings([]) == [] and len(retriever) == len(chunks)


def test_retriever_bad_input(small):
    _, chunks, retriever = small
    with pytest.raises(ValueError, match="chunks: expected at least one chunk"):
        HybridRetriever([], ToyEmbedder())
    with pytest.raises(TypeError, match=r"chunks\[0\]: expected a Chunk"):
        HybridRetriever(["text"], ToyEmbedder())
    with pytest.raises(ValueError, match="vectors: expected one row per chunk"):
        HybridRetriever(chunks, ToyEmbedder(), vectors=np.zeros((2, 64)))
    with pytest.raises(ValueError, match="mode: expected one of"):
        retriever.rankings(["q"], mode="sparse")
    with pytest.raises(TypeError, match="queries: expected a list of strings"):
        retriever.rankings("a question")
    with pytest.raises(ValueError, match="k: expected"):
        retriever.search("q", k=0)


def test_prompt_and_parse():
    prompt = reader.rag_prompt("Who?", ["one\n two", "three"])
    assert prompt == "Sources:\n[1] one two\n[2] three\n\nQuestion: Who?"
    assert reader.rag_prompt(" Who? ") == "Sources: none\n\nQuestion: Who?"
    r = reader.parse_response("chemist [2][2] [1].")
    assert r.answer == "chemist" and r.citations == (2, 1)
    assert reader.parse_response("1952").citations == ()
    assert reader.is_abstention("Not in the sources.") and not reader.is_abstention("1952 [1]")
    with pytest.raises(ValueError, match="question: expected a non-empty str"):
        reader.rag_prompt("  ", [])
    with pytest.raises(TypeError, match="sources: expected a list of passage strings"):
        reader.rag_prompt("Who?", "one source")
    with pytest.raises(TypeError, match="text: expected the model's reply"):
        reader.parse_response(None)


def test_scores_count_answers_abstentions_and_citations():
    kb = kbase.make_kb(24, seed=3)
    qs = kb.questions[:4]
    gold = [q.evidence for q in qs]
    other = kb.documents[-1].text
    sources = [[other, g] for g in gold]
    replies = [
        f"{qs[0].answer} [2]",  # right, cites the right source
        f"{qs[1].answer} [1]",  # right, cites a source without the answer
        "not in the sources",  # abstains
        "Zzyzx [2]",  # wrong
    ]
    s = reader.score_responses(qs, replies, sources)
    assert s["n"] == 4 and s["exact"] == s["contains"] == 0.5
    assert s["abstain"] == 0.25 and s["wrong"] == 0.25 and s["cited"] == 0.75
    assert s["citation_ok"] == 0.5
    assert "cited" not in reader.score_responses(qs, replies)
    with pytest.raises(ValueError, match="replies: expected one per question"):
        reader.score_responses(qs, replies[:2])
    bad = reader.parse_response(f"{qs[0].answer} [7]")  # a source that does not exist
    assert not reader.cites_answer(bad, sources[0], qs[0])


def _golds(kb, chunks, questions):
    docs = {d.doc_id: d for d in kb.documents}
    out = []
    for q in questions:
        start = docs[q.doc_id].text.index(q.evidence)
        end = start + len(q.evidence)
        out.append(next(c.text for c in chunks if c.doc_id == q.doc_id and c.covers(start, end)))
    return out


def test_reading_examples_hold_exactly_one_answer(small):
    kb, chunks, retriever = small
    qs = kb.questions[:60]
    golds = _golds(kb, chunks, qs)
    retrieved = [[c.text for c in r] for r in retriever.search_many([q.question for q in qs], 10)]

    def make(seed):
        return reader.reading_examples(
            qs, golds, retrieved, irrelevant_fraction=0.25, closed_fraction=0.1, seed=seed
        )

    examples = make(1)
    kinds = [e.kind for e in examples]
    assert {"answer", "irrelevant", "closed"} == set(kinds)
    for e, q in zip(examples, qs, strict=True):
        head = e.prompt.split("\n\nQuestion: ")[0]
        if e.kind == "closed":
            assert head == "Sources: none" and e.target == reader.ABSTAIN
            continue
        lines = head.split("\n")[1:]
        assert len(lines) == 3
        holding = [i + 1 for i, line in enumerate(lines) if kbase.contains_match(line, q)]
        if e.kind == "answer":
            assert e.target == f"{q.answer} [{holding[0]}]" and len(holding) == 1
        else:
            assert e.target == reader.ABSTAIN and holding == []
    assert make(1) == examples and make(2) != examples
    # the gold passage's position is spread over the sources, not always first
    positions = {e.target.rsplit("[", 1)[1] for e in examples if e.kind == "answer"}
    assert positions == {"1]", "2]", "3]"}
    with pytest.raises(ValueError, match="expected equal lengths"):
        reader.reading_examples(qs, [], retrieved)
    with pytest.raises(ValueError, match=r"irrelevant_fraction: expected a share in \[0, 1\]"):
        reader.reading_examples(qs, golds, retrieved, irrelevant_fraction=2)
    with pytest.raises(ValueError, match="sum to at most 1"):
        reader.reading_examples(qs, golds, retrieved, irrelevant_fraction=0.6, closed_fraction=0.6)


def test_contexts(small):
    kb, chunks, retriever = small
    q = kb.questions[0]
    gold = _golds(kb, chunks, [q])[0]
    retrieved = [c.text for c in retriever.search(q.question, 10)]
    oracle = reader.gold_context(q, gold, retrieved, 3)
    assert oracle[0] == gold and len(oracle) == 3
    assert sum(kbase.contains_match(p, q) for p in oracle) == 1
    useless = reader.answerless_context(q, retrieved, 3)
    assert len(useless) == 3 and not any(kbase.contains_match(p, q) for p in useless)
    with pytest.raises(ValueError, match="gold: expected a passage that contains the answer"):
        reader.gold_context(q, useless[0], retrieved)
    with pytest.raises(ValueError, match="passages: .* retrieve deeper"):
        reader.answerless_context(q, retrieved[:1], 3)


def test_conflicting_passage():
    q = kbase.make_kb(24, seed=3).questions[0]
    swapped = reader.conflicting_passage(q.evidence, q, "Zzyzx")
    assert "Zzyzx" in swapped and q.answer not in swapped
    with pytest.raises(ValueError, match="other_answer: expected a different"):
        reader.conflicting_passage(q.evidence, q, q.answer)
    with pytest.raises(ValueError, match="passage: expected it to state the answer"):
        reader.conflicting_passage("nothing here", q, "Zzyzx")


def test_cached_reader_trains_once_then_reads_the_cache(tmp_path, monkeypatch):
    from llmlab.assets import tiny_smollm2

    base, tokenizer = tiny_smollm2(seed=0)  # from the real cache: the asset is prepared there
    monkeypatch.setenv("LLMLAB_CACHE", str(tmp_path))  # results go to a fresh cache
    before = {k: v.clone() for k, v in base.state_dict().items()}
    options = dict(
        name="07_rag/test_reader", n_train=6, steps=1, batch_size=2, n_entities=12, rank=2
    )
    first = reader.cached_reader(base, tokenizer, ToyEmbedder(), **options)
    assert first.trained and len(first.loss) == 1 and first.n_examples == 6
    again = reader.cached_reader(base, tokenizer, ToyEmbedder(), **options)
    assert not again.trained and again.loss == first.loss
    for (key, a), b in zip(
        first.model.state_dict().items(), again.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), key
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in before.items())  # base untouched
    changed = reader.cached_reader(base, tokenizer, ToyEmbedder(), **{**options, "lr": 5e-4})
    assert changed.trained  # a new recipe is a new cache entry
    with pytest.raises(ValueError, match="name: expected the reader's course-cache name"):
        reader.cached_reader(base, tokenizer, ToyEmbedder(), **{**options, "name": ""})


def test_kb_retriever_tunes_rrf_on_dev(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMLAB_CACHE", str(tmp_path))
    setup = reader.kb_retriever(ToyEmbedder(), n_entities=24, seed=3, k=3, rrf_ks=(1, 60))
    assert set(setup.dev_hits) == {1, 60}
    best = max(setup.dev_hits, key=lambda r: (setup.dev_hits[r], -r))
    assert setup.retriever.rrf_k == best
    kb, chunks = setup.kb, setup.chunks
    q = kb.questions[0]
    golds = reader.gold_passages(kb, chunks, [q])
    holding = [c for c in chunks if reader.holds_evidence(kb, c, q)]
    assert holding and golds == [holding[0].text] and q.evidence in golds[0]
    assert not reader.holds_evidence(kb, next(c for c in chunks if c.doc_id != q.doc_id), q)
    with pytest.raises(ValueError, match="chunks: no chunk holds the whole evidence"):
        reader.gold_passages(kb, [c for c in chunks if c.doc_id != q.doc_id], [q])
