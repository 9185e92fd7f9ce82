"""Vector search: exact search written out, then FAISS's Flat, IVF and HNSW indexes.

Retrieval by embedding is nearest-neighbour search: given a query vector, find the k stored
vectors with the largest inner product (for unit vectors, the largest cosine similarity).

- **Exact search** compares the query with every vector: one matrix product and a top-k. It is
  the ground truth, and at 10k vectors of 384 dims it is fast enough; its cost grows with n.
- **IVF** (inverted file) clusters the vectors with k-means into ``nlist`` lists and, at query
  time, scans only the ``nprobe`` lists whose centroids are closest to the query. Recall
  rises with ``nprobe`` and so does the time; ``nprobe = 1`` (FAISS's default) misses
  neighbours that sit just across a cluster border, which is why IVF can look broken.
- **HNSW** (hierarchical navigable small world graph) links each vector to ``M`` neighbours
  on several layers and answers a query by greedy walks from the top layer down, keeping
  ``efSearch`` candidates: sub-linear time, recall set by ``efSearch``.

Cosine similarity needs **normalised vectors and an inner-product index**: FAISS's flat index
is L2 by default, and HNSW built for inner product on unnormalised vectors loses recall. Every
builder here takes vectors, checks they are float32 and 2-D, and uses ``METRIC_INNER_PRODUCT``
unless told ``metric="l2"``.

    >>> index = hnsw_index(vectors, m=32)
    >>> scores, ids = search(index, queries, k=10, ef_search=64)
    >>> recall_at_k_vs_exact(ids, exact_search(queries, vectors, 10)[1])
"""

from __future__ import annotations

import statistics
import time

import numpy as np

METRICS = ("ip", "l2")


def _as_matrix(x, name: str) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name}: expected a non-empty (n, d) array, got shape {x.shape}")
    return x


def _check_k(k: int, n: int) -> None:
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k: expected an int >= 1, got {k!r}")
    if k > n:
        raise ValueError(f"k: expected at most the number of vectors ({n}), got {k}")


def normalize(x) -> np.ndarray:
    """Rows of ``x`` scaled to unit length (zero rows stay zero), float32."""
    x = _as_matrix(x, "x")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def exact_search(queries, vectors, k: int, metric: str = "ip") -> tuple[np.ndarray, np.ndarray]:
    """The true k nearest neighbours: ``(scores, ids)``, each ``(n_queries, k)``, best first.

    ``metric="ip"``: largest inner product; ``"l2"``: smallest squared distance (returned as
    distances). One matrix product scores every pair; ``argpartition`` finds the k best of each
    row without sorting all n, then only those k are sorted.
    """
    queries, vectors = _as_matrix(queries, "queries"), _as_matrix(vectors, "vectors")
    if queries.shape[1] != vectors.shape[1]:
        raise ValueError(
            f"queries, vectors: dimensions differ ({queries.shape[1]} vs {vectors.shape[1]})"
        )
    if metric not in METRICS:
        raise ValueError(f"metric: expected one of {METRICS}, got {metric!r}")
    _check_k(k, len(vectors))
    scores = queries @ vectors.T
    if metric == "l2":  # ||q - v||^2 = ||q||^2 - 2 q.v + ||v||^2; smaller is better
        scores = (queries**2).sum(1)[:, None] - 2 * scores + (vectors**2).sum(1)[None, :]
        scores = -scores
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    top_scores = np.take_along_axis(scores, top, axis=1)
    order = np.argsort(-top_scores, axis=1, kind="stable")
    ids = np.take_along_axis(top, order, axis=1)
    best = np.take_along_axis(top_scores, order, axis=1)
    return (-best if metric == "l2" else best), ids.astype(np.int64)


def _faiss():
    try:
        import faiss
    except ImportError as err:  # pragma: no cover - faiss-cpu is in requirements.lock
        raise ImportError(
            "FAISS is not installed: `pip install faiss-cpu` (or `make setup`, which installs "
            "the course's pinned packages)"
        ) from err
    return faiss


def _metric(metric: str):
    if metric not in METRICS:
        raise ValueError(f"metric: expected one of {METRICS}, got {metric!r}")
    faiss = _faiss()
    return faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2


def flat_index(vectors, metric: str = "ip"):
    """FAISS's exact index (``IndexFlatIP`` or ``IndexFlatL2``) holding ``vectors``."""
    vectors = _as_matrix(vectors, "vectors")
    index = _faiss().IndexFlat(vectors.shape[1], _metric(metric))
    index.add(vectors)
    return index


def ivf_index(vectors, nlist: int, metric: str = "ip", seed: int = 0):
    """An ``IndexIVFFlat`` with ``nlist`` k-means lists, trained on ``vectors`` and holding them.

    Rule of thumb: ``nlist`` about ``sqrt(n)`` to ``4 sqrt(n)``; k-means wants ~40 training
    vectors per list (FAISS warns below 39)."""
    vectors = _as_matrix(vectors, "vectors")
    if not isinstance(nlist, int) or not 1 <= nlist <= len(vectors):
        raise ValueError(f"nlist: expected an int in [1, {len(vectors)}], got {nlist!r}")
    faiss = _faiss()
    metric_type = _metric(metric)
    quantizer = faiss.IndexFlat(vectors.shape[1], metric_type)  # finds each vector's list
    index = faiss.IndexIVFFlat(quantizer, vectors.shape[1], nlist, metric_type)
    index.cp.seed = seed
    index.train(vectors)
    index.add(vectors)
    return index


def hnsw_index(vectors, m: int = 32, ef_construction: int = 40, metric: str = "ip"):
    """An ``IndexHNSWFlat``: a graph with ``m`` links per vector per layer, built with
    ``ef_construction`` candidates (more: a better graph, a slower build)."""
    vectors = _as_matrix(vectors, "vectors")
    if not isinstance(m, int) or m < 2:
        raise ValueError(f"m: expected an int >= 2, got {m!r}")
    if not isinstance(ef_construction, int) or ef_construction < 1:
        raise ValueError(f"ef_construction: expected an int >= 1, got {ef_construction!r}")
    faiss = _faiss()
    index = faiss.IndexHNSWFlat(vectors.shape[1], m, _metric(metric))
    index.hnsw.efConstruction = ef_construction
    index.add(vectors)
    return index


def search(index, queries, k: int, nprobe: int | None = None, ef_search: int | None = None):
    """``(scores, ids)`` of ``index.search`` after setting IVF's ``nprobe`` or HNSW's
    ``efSearch`` when given (they stay set on the index). Missing neighbours come back as
    id -1 (an IVF search that probed lists holding fewer than k vectors)."""
    queries = _as_matrix(queries, "queries")
    if queries.shape[1] != index.d:
        raise ValueError(f"queries: expected dimension {index.d}, got {queries.shape[1]}")
    _check_k(k, index.ntotal)
    if nprobe is not None:
        if not hasattr(index, "nprobe"):
            raise ValueError("nprobe: only an IVF index has lists to probe")
        if not isinstance(nprobe, int) or not 1 <= nprobe <= index.nlist:
            raise ValueError(f"nprobe: expected an int in [1, {index.nlist}], got {nprobe!r}")
        index.nprobe = nprobe
    if ef_search is not None:
        if not hasattr(index, "hnsw"):
            raise ValueError("ef_search: only an HNSW index has efSearch")
        if not isinstance(ef_search, int) or ef_search < 1:
            raise ValueError(f"ef_search: expected an int >= 1, got {ef_search!r}")
        index.hnsw.efSearch = ef_search
    scores, ids = index.search(queries, k)
    return scores, ids


def recall_at_k_vs_exact(found_ids, exact_ids) -> float:
    """Share of the true k nearest neighbours (``exact_ids``, ``(q, k)``) that ``found_ids``
    (``(q, k)``) contains, averaged over queries: an approximate index's recall@k."""
    found, exact = np.asarray(found_ids), np.asarray(exact_ids)
    if found.shape != exact.shape or found.ndim != 2:
        raise ValueError(
            f"found_ids, exact_ids: expected equal (queries, k) shapes, got {found.shape} and "
            f"{exact.shape}"
        )
    hits = [len(set(f.tolist()) & set(e.tolist())) for f, e in zip(found, exact, strict=True)]
    return float(np.mean(hits) / exact.shape[1])


def latency_ms(fn, queries, repeats: int = 3) -> float:
    """Milliseconds per query when queries come one at a time: ``fn(query_row)`` over every
    row of ``queries``, the pass's time divided by the number of queries, median of
    ``repeats`` passes (a single user's latency, not a batch's throughput)."""
    queries = _as_matrix(queries, "queries")
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats: expected an int >= 1, got {repeats!r}")
    passes = []
    for _ in range(repeats):
        start = time.perf_counter()
        for row in queries:
            fn(row[None, :])
        passes.append((time.perf_counter() - start) * 1e3 / len(queries))
    return statistics.median(passes)


def clustered_vectors(
    n: int, dim: int = 384, n_clusters: int = 100, spread: float = 0.35, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``(vectors, labels)``: ``n`` unit vectors in ``n_clusters`` Gaussian clusters around
    random unit centres (``spread``: the noise's norm relative to a centre's), float32.

    Real embeddings are clustered by topic rather than uniform on the sphere: on uniform random
    vectors every index looks bad, because nearest neighbours are barely nearer than the rest.
    Draw the queries in the same call as the vectors (then split) so they share the centres.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected an int >= 1, got {n!r}")
    if not isinstance(n_clusters, int) or n_clusters < 1:
        raise ValueError(f"n_clusters: expected an int >= 1, got {n_clusters!r}")
    rng = np.random.default_rng(seed)
    centres = normalize(rng.standard_normal((n_clusters, dim)).astype(np.float32))
    labels = rng.integers(0, n_clusters, size=n)
    noise = rng.standard_normal((n, dim)).astype(np.float32) * (spread / np.sqrt(dim))
    return normalize(centres[labels] + noise), labels.astype(np.int64)
