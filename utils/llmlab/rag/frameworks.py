"""Our retrieval beside a framework's: the bridge to LangChain, and the measures that compare.

Notebook 07.5 rebuilds the chapter's retrieval (MiniLM + exact search, BM25, reciprocal rank
fusion) from LangChain's parts and asks whether it finds the same chunks. Three small pieces
make that comparison honest:

- :func:`documents_from_chunks` turns the course's :class:`~llmlab.rag.chunking.Chunk` objects
  into LangChain ``Document`` objects with the same text, carrying the chunk's id (as
  ``Document.id`` and in ``metadata``), its document and its character span, so whatever the
  framework returns can be traced back to the chunk it came from;
- :func:`ranking_of` maps a framework's answer (a list of ``Document``) back to chunk
  positions, the ids the course's metrics (:mod:`llmlab.rag.metrics`) and fusion work with;
- :func:`agreement` measures how alike two pipelines' rankings are, per query and at depth k:
  the share of the top k they have in common (overlap@k) and the share of queries whose top k
  is the same list in the same order.

:func:`latency_ms` times one call per query (a user's latency, not a batch's throughput).

    >>> docs = documents_from_chunks(chunks)
    >>> positions = {c.chunk_id: i for i, c in enumerate(chunks)}
    >>> found = ranking_of(retriever.invoke("Where was Karreith Zellisell born?"), positions)
    >>> agreement(ours, theirs, k=5)          # {"overlap": 0.98, "identical": 0.91}

LangChain is imported only inside :func:`documents_from_chunks` (``pip install
langchain-core``, the ``frameworks`` extra); everything else needs only the standard library
and numpy.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence

from llmlab.rag.chunking import Chunk
from llmlab.validate import require_int, require_positive_int

__all__ = ["documents_from_chunks", "ranking_of", "agreement", "latency_ms"]


def documents_from_chunks(chunks: Sequence[Chunk]) -> list:
    """One ``langchain_core.documents.Document`` per chunk, in order: ``page_content`` is the
    chunk's text, ``id`` its ``chunk_id``, and ``metadata`` holds ``chunk_id``, ``doc_id``,
    ``start`` and ``end`` (the span of the document the chunk covers).

    Chunk ids must be distinct: they are how a framework's answer is traced back."""
    if isinstance(chunks, (str, bytes)) or not isinstance(chunks, Sequence):
        raise TypeError(f"chunks: expected a list of Chunk, got {type(chunks).__name__}")
    seen: set[str] = set()
    for i, chunk in enumerate(chunks):
        if not isinstance(chunk, Chunk):
            raise TypeError(f"chunks[{i}]: expected a Chunk, got {type(chunk).__name__}")
        if chunk.chunk_id in seen:
            raise ValueError(
                f"chunks[{i}]: chunk_id {chunk.chunk_id!r} appears twice; ids must be distinct"
            )
        seen.add(chunk.chunk_id)
    try:
        from langchain_core.documents import Document
    except ImportError as err:  # pragma: no cover - langchain-core is in requirements.lock
        raise ImportError(
            "LangChain is not installed: `pip install langchain-core` (the `frameworks` extra, "
            "or `make setup` for the course's pinned packages)"
        ) from err
    return [
        Document(
            id=c.chunk_id,
            page_content=c.text,
            metadata={"chunk_id": c.chunk_id, "doc_id": c.doc_id, "start": c.start, "end": c.end},
        )
        for c in chunks
    ]


def ranking_of(documents: Sequence, positions: Mapping[str, int], key: str = "chunk_id") -> list:
    """The positions of ``documents`` (a framework's answer, best first): for each document,
    ``positions[document.metadata[key]]``.

    ``positions`` maps a chunk id to its index in the chunk list the metrics use. A document
    without ``key`` in its metadata, or with an id ``positions`` does not know, is an error
    (the framework returned something that was never indexed under that id)."""
    if isinstance(documents, (str, bytes)) or not isinstance(documents, Sequence):
        raise TypeError(f"documents: expected a list of Documents, got {type(documents).__name__}")
    if not isinstance(positions, Mapping):
        raise TypeError(
            f"positions: expected a dict chunk id -> index, got {type(positions).__name__}"
        )
    ranking = []
    for i, document in enumerate(documents):
        metadata = getattr(document, "metadata", None)
        if not isinstance(metadata, Mapping) or key not in metadata:
            raise ValueError(
                f"documents[{i}]: expected metadata with {key!r} (see documents_from_chunks), "
                f"got {metadata!r}"
            )
        if metadata[key] not in positions:
            raise ValueError(f"documents[{i}]: {key} {metadata[key]!r} is not in positions")
        ranking.append(positions[metadata[key]])
    return ranking


def agreement(
    rankings_a: Sequence[Sequence], rankings_b: Sequence[Sequence], k: int
) -> dict[str, float]:
    """How alike two pipelines' rankings of the same queries are at depth ``k``.

    ``rankings_a[i]`` and ``rankings_b[i]`` are two rankings (ids, best first) of query i, each
    at least ``k`` long. Returns the means over queries of

    - ``"overlap"``: |first k of a & first k of b| / k, in [0, 1]; order inside the k ignored;
    - ``"identical"``: 1 if the first k are the same ids in the same order, else 0.
    """
    for name, rankings in (("rankings_a", rankings_a), ("rankings_b", rankings_b)):
        if isinstance(rankings, (str, bytes)) or not isinstance(rankings, Sequence):
            raise TypeError(f"{name}: expected a list of rankings, got {type(rankings).__name__}")
    if len(rankings_a) != len(rankings_b):
        raise ValueError(
            f"rankings_b: expected one ranking per query of rankings_a ({len(rankings_a)}), "
            f"got {len(rankings_b)}"
        )
    if not rankings_a:
        raise ValueError("rankings_a: expected at least one query, got 0")
    k = require_positive_int(k, "k")
    overlap = identical = 0.0
    for i, (a, b) in enumerate(zip(rankings_a, rankings_b, strict=True)):
        a, b = list(a), list(b)
        if len(a) < k or len(b) < k:
            raise ValueError(
                f"rankings[{i}]: expected both rankings at least k={k} long, got {len(a)} "
                f"and {len(b)}"
            )
        overlap += len(set(a[:k]) & set(b[:k])) / k
        identical += float(a[:k] == b[:k])
    n = len(rankings_a)
    return {"overlap": overlap / n, "identical": identical / n}


def latency_ms(fn: Callable, queries: Sequence, warmup: int = 1) -> float:
    """Median milliseconds of one ``fn(query)`` call over ``queries``, after ``warmup`` untimed
    calls (on the first queries): the latency one user sees when queries come one at a time."""
    if not callable(fn):
        raise TypeError(f"fn: expected a function of one query, got {type(fn).__name__}")
    if isinstance(queries, (str, bytes)) or not isinstance(queries, Sequence) or not queries:
        raise ValueError("queries: expected a non-empty list of queries")
    warmup = require_int(warmup, "warmup", 0)
    for query in queries[:warmup]:
        fn(query)
    times = []
    for query in queries:
        start = time.perf_counter()
        fn(query)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)
