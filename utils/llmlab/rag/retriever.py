"""A hybrid retriever: dense (MiniLM, exact inner product) and BM25 rankings fused by RRF.

Notebook 07.1 built the pieces one at a time and found that, on the fictional knowledge base,
fusing the two rankings finds more gold passages than either alone. :class:`HybridRetriever`
packages that pipeline for the notebooks that use retrieval rather than study it (07.2's
reader, 07.3's search tool):

    >>> chunks = chunking.chunk_corpus(kb.documents, "sentences", max_words=60, overlap=1)
    >>> retriever = HybridRetriever(chunks, embedder, rrf_k=5, cache_name="07_rag/kb_chunks")
    >>> [c.chunk_id for c in retriever.search("Where was Karreith Zellisell born?", k=3)]

Both first-stage rankings go ``depth`` deep; :func:`llmlab.rag.fusion.reciprocal_rank_fusion`
merges them. ``mode`` "dense" or "bm25" returns one ranking alone, for comparison.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llmlab.rag import bm25, embed, fusion, index
from llmlab.rag.chunking import Chunk
from llmlab.validate import require_positive_int, require_real

__all__ = ["HybridRetriever", "MODES"]

MODES = ("hybrid", "dense", "bm25")


class HybridRetriever:
    """Dense + BM25 retrieval over ``chunks`` (module docstring).

    ``vectors``: the chunks' unit embeddings when already computed; otherwise they are
    embedded with ``embedder`` (kept in the course cache under ``cache_name`` when given).
    ``variant``: the BM25 idf ("lucene" or "okapi"), over :func:`llmlab.rag.bm25.tokenize`.
    """

    def __init__(
        self,
        chunks: Sequence[Chunk],
        embedder: embed.Embedder,
        *,
        vectors: np.ndarray | None = None,
        rrf_k: float = 60,
        depth: int = 20,
        variant: str = "lucene",
        cache_name: str | None = None,
    ) -> None:
        if isinstance(chunks, (str, bytes)) or not isinstance(chunks, Sequence):
            raise TypeError(f"chunks: expected a list of Chunk, got {type(chunks).__name__}")
        if not chunks:
            raise ValueError("chunks: expected at least one chunk to search, got an empty list")
        for i, chunk in enumerate(chunks):
            if not isinstance(chunk, Chunk):
                raise TypeError(f"chunks[{i}]: expected a Chunk, got {type(chunk).__name__}")
        if not hasattr(embedder, "encode"):
            raise TypeError(f"embedder: expected an Embedder (with .encode), got {embedder!r}")
        self.chunks = list(chunks)
        self.embedder = embedder
        self.rrf_k = require_real(rrf_k, "rrf_k")
        if not self.rrf_k >= 0:
            raise ValueError(f"rrf_k: expected a number >= 0, got {rrf_k}")
        self.depth = min(require_positive_int(depth, "depth"), len(self.chunks))
        texts = [c.text for c in self.chunks]
        if vectors is None:
            if cache_name is not None:
                vectors = embed.cached_embeddings(texts, cache_name, embedder)
            else:
                vectors = embedder.encode(texts)
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape[0] != len(self.chunks):
            raise ValueError(
                f"vectors: expected one row per chunk ({len(self.chunks)}), got {vectors.shape[0]}"
            )
        self.vectors = vectors
        self.lexical = bm25.BM25([bm25.tokenize(t) for t in texts], variant=variant)

    def rankings(self, queries: Sequence[str], mode: str = "hybrid") -> list[list[int]]:
        """For each query, chunk indices best first (``depth`` of them for one retriever,
        up to ``2 * depth`` fused). Queries are embedded in one batch."""
        if isinstance(queries, str) or not all(isinstance(q, str) for q in queries):
            raise TypeError("queries: expected a list of strings")
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        if not queries:
            return []
        dense = lexical = None
        if mode != "bm25":
            _, ids = index.exact_search(
                self.embedder.encode(list(queries)), self.vectors, self.depth
            )
            dense = [row.tolist() for row in ids]
        if mode != "dense":
            lexical = [
                [i for i, _ in self.lexical.top_k(bm25.tokenize(q), self.depth)] for q in queries
            ]
        if mode == "dense":
            return dense
        if mode == "bm25":
            return lexical
        return [
            [i for i, _ in fusion.reciprocal_rank_fusion([a, b], k=self.rrf_k)]
            for a, b in zip(dense, lexical, strict=True)
        ]

    def search_many(
        self, queries: Sequence[str], k: int, mode: str = "hybrid"
    ) -> list[list[Chunk]]:
        """The ``k`` best chunks for each query."""
        k = require_positive_int(k, "k")
        return [[self.chunks[i] for i in r[:k]] for r in self.rankings(queries, mode)]

    def search(self, query: str, k: int, mode: str = "hybrid") -> list[Chunk]:
        """The ``k`` best chunks for ``query``, best first."""
        if not isinstance(query, str):
            raise TypeError(f"query: expected a str, got {type(query).__name__}")
        return self.search_many([query], k, mode)[0]

    def __len__(self) -> int:
        return len(self.chunks)

    def __repr__(self) -> str:
        return f"HybridRetriever({len(self.chunks)} chunks, rrf_k={self.rrf_k}, depth={self.depth})"
