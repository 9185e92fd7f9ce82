"""A persistent vector store: a FAISS index and an SQLite table that never disagree.

A RAG system's index outlives the process that built it: documents are added and deleted over
weeks, and a crash in the middle of an add must not leave vectors without their text, or text
without its vector. :class:`VectorStore` keeps, in one folder:

- ``store.sqlite``: one row per chunk (id, text, JSON metadata) and one ``generation`` number;
- ``index-<generation>.faiss``: the vectors, in an ``IndexIDMap2`` over an exact inner-product
  index, so that a vector's FAISS id *is* its row id and deletion is ``remove_ids``.

Every change writes a new index file under the next generation's name (a temporary file, then
an atomic rename), and only then commits, in one SQLite transaction, the rows and the new
generation number. A crash before the commit leaves the old generation in SQLite, and the old
index file is still there: reopening finds the two as they were before the change (the orphan
file of the unfinished generation is deleted). A crash after the commit finds the new pair. The
commit is the one atomic step, and SQLite guarantees it.

    >>> store = VectorStore.create("kb_store", dim=384)
    >>> ids = store.add(texts, vectors, [{"doc_id": c.doc_id} for c in chunks])
    >>> store.delete(ids[:3])
    >>> store = VectorStore.open("kb_store")          # after a restart
    >>> store.search(query_vectors, k=5)[0][0]       # (id, score, text, metadata)

The index is exact (a flat index): ``remove_ids`` on an HNSW graph is not supported by FAISS,
and at the sizes of this chapter exact search takes well under a millisecond (notebook 1).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from pathlib import Path

import numpy as np

from llmlab.rag.index import _faiss  # imports faiss on first use, or says how to install it

_INDEX_FILE = re.compile(r"^index-(\d+)\.faiss$")


class VectorStore:
    """Chunks with their vectors and metadata in a folder (module docstring). Use
    :meth:`create` or :meth:`open`, not the constructor."""

    def __init__(self, folder: Path, connection: sqlite3.Connection, index, generation: int):
        self.folder = folder
        self._db = connection
        self._index = index
        self.generation = generation
        self.dim = index.d

    # ------------------------------------------------------------------ opening
    @classmethod
    def create(cls, folder, dim: int) -> VectorStore:
        """A new empty store in ``folder`` (created if needed; it must not hold a store)."""
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim: expected an int >= 1, got {dim!r}")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if (folder / "store.sqlite").exists():
            raise FileExistsError(f"folder: {folder} already holds a store; use VectorStore.open")
        db = sqlite3.connect(folder / "store.sqlite")
        with db:
            db.execute(
                "CREATE TABLE chunks (id INTEGER PRIMARY KEY, text TEXT NOT NULL, meta TEXT)"
            )
            db.execute("CREATE TABLE state (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
            db.execute(
                "INSERT INTO state VALUES ('generation', 0), ('dim', ?), ('next_id', 0)", (dim,)
            )
        faiss = _faiss()
        store = cls(folder, db, faiss.IndexIDMap2(faiss.IndexFlatIP(dim)), 0)
        store._write_index(store._index, 0)
        return store

    @classmethod
    def open(cls, folder) -> VectorStore:
        """The store saved in ``folder``, as of its last committed change."""
        folder = Path(folder)
        if not (folder / "store.sqlite").exists():
            raise FileNotFoundError(
                f"folder: no store in {folder} (expected store.sqlite; create one with "
                "VectorStore.create)"
            )
        db = sqlite3.connect(folder / "store.sqlite")
        generation = db.execute("SELECT value FROM state WHERE key = 'generation'").fetchone()[0]
        path = folder / f"index-{generation}.faiss"
        if not path.exists():
            raise FileNotFoundError(f"folder: {path.name} is missing: the store is damaged")
        index = _faiss().read_index(str(path))
        store = cls(folder, db, index, generation)
        store._remove_orphans()
        rows = db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
        if rows != index.ntotal:  # cannot happen through this class; say so if it does
            raise RuntimeError(f"folder: {rows} rows but {index.ntotal} vectors: damaged store")
        return store

    # ------------------------------------------------------------------ changing
    def add(self, texts, vectors, metadata=None) -> list[int]:
        """Add chunks: ``texts`` (n strings), ``vectors`` (n, dim) and optional ``metadata``
        (n JSON-serialisable dicts). Returns their new ids. All or nothing (module docstring)."""
        texts = list(texts)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError("texts: expected a non-empty list of strings")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(texts), self.dim):
            raise ValueError(
                f"vectors: expected shape ({len(texts)}, {self.dim}), got {vectors.shape}"
            )
        metadata = [{}] * len(texts) if metadata is None else list(metadata)
        if len(metadata) != len(texts):
            raise ValueError(f"metadata: expected {len(texts)} dicts, got {len(metadata)}")
        encoded = [json.dumps(m) for m in metadata]  # fails here, before anything is written
        # Ids only grow (a deleted id is never given again), counted in the same transaction.
        start = self._db.execute("SELECT value FROM state WHERE key = 'next_id'").fetchone()[0]
        ids = np.arange(start, start + len(texts), dtype=np.int64)
        index = self._copy_index()
        index.add_with_ids(vectors, ids)
        rows = [(int(i), t, m) for i, t, m in zip(ids, texts, encoded, strict=True)]

        def change(db):
            db.executemany("INSERT INTO chunks VALUES (?, ?, ?)", rows)
            db.execute("UPDATE state SET value = ? WHERE key = 'next_id'", (int(ids[-1]) + 1,))

        self._commit(index, change)
        return ids.tolist()

    def delete(self, ids) -> int:
        """Delete the chunks with these ids (unknown ids are ignored); returns how many went."""
        ids = np.asarray(list(ids), dtype=np.int64)
        if ids.size == 0:
            return 0
        index = self._copy_index()
        removed = int(index.remove_ids(ids))
        params = [(int(i),) for i in ids]
        self._commit(index, lambda db: db.executemany("DELETE FROM chunks WHERE id = ?", params))
        return removed

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return int(self._index.ntotal)

    def get(self, chunk_id: int) -> tuple[str, dict]:
        """``(text, metadata)`` of a chunk; KeyError if there is none with that id."""
        row = self._db.execute("SELECT text, meta FROM chunks WHERE id = ?", (chunk_id,)).fetchone()
        if row is None:
            raise KeyError(f"chunk_id: no chunk {chunk_id}")
        return row[0], json.loads(row[1])

    def search(self, queries, k: int) -> list[list[tuple[int, float, str, dict]]]:
        """For each query vector, the ``k`` best chunks (fewer if the store holds fewer) as
        ``(id, inner product, text, metadata)``, best first."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries: expected shape (n, {self.dim}), got {queries.shape}")
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k: expected an int >= 1, got {k!r}")
        if len(self) == 0:
            return [[] for _ in queries]
        scores, ids = self._index.search(queries, min(k, len(self)))
        rows = self._rows({int(i) for i in ids.ravel() if i >= 0})
        return [
            [
                (int(i), float(score), *rows[int(i)])
                for score, i in zip(row_scores, row_ids, strict=True)
                if i >= 0
            ]
            for row_scores, row_ids in zip(scores, ids, strict=True)
        ]

    def _rows(self, chunk_ids: set[int]) -> dict[int, tuple[str, dict]]:
        """``{id: (text, metadata)}`` for ``chunk_ids``, read in one query per 500 ids (not one
        per hit)."""
        out: dict[int, tuple[str, dict]] = {}
        wanted = sorted(chunk_ids)
        for start in range(0, len(wanted), 500):  # SQLite limits the parameters of a query
            part = wanted[start : start + 500]
            marks = ",".join("?" * len(part))
            query = f"SELECT id, text, meta FROM chunks WHERE id IN ({marks})"
            for i, text, meta in self._db.execute(query, part):
                out[i] = (text, json.loads(meta))
        missing = set(wanted) - set(out)
        if missing:  # the index and the table disagree: cannot happen through this class
            raise RuntimeError(f"ids {sorted(missing)[:5]} are in the index but not the table")
        return out

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------------ the atomic step
    def _copy_index(self):
        faiss = _faiss()
        return faiss.deserialize_index(faiss.serialize_index(self._index))

    def _write_index(self, index, generation: int) -> None:
        final = self.folder / f"index-{generation}.faiss"
        tmp = self.folder / f".index-{generation}.faiss.tmp"
        _faiss().write_index(index, str(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)

    def _commit(self, index, change) -> None:
        """Write ``index`` as the next generation, then commit ``change(db)`` and the new
        generation number in one transaction; only then does this object see the change."""
        new = self.generation + 1
        self._write_index(index, new)
        try:
            with self._db:  # one transaction: the rows and the generation, or neither
                change(self._db)
                self._db.execute("UPDATE state SET value = ? WHERE key = 'generation'", (new,))
        except BaseException:
            (self.folder / f"index-{new}.faiss").unlink(missing_ok=True)
            raise
        old = self.generation
        self._index, self.generation = index, new
        (self.folder / f"index-{old}.faiss").unlink(missing_ok=True)

    def _remove_orphans(self) -> None:
        """Delete index files of generations other than the committed one (a crash between
        writing the next index and committing leaves one) and stray temporary files."""
        for path in self.folder.iterdir():
            match = _INDEX_FILE.match(path.name)
            if (match and int(match.group(1)) != self.generation) or path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)
