"""llmlab.rag.store: add, delete, search, reopen; a crash at any point leaves the last commit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from llmlab.rag.store import VectorStore


def _vectors(n, dim=8, seed=0):
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_add_search_delete_and_reopen(tmp_path):
    store = VectorStore.create(tmp_path / "s", dim=8)
    vecs = _vectors(20)
    ids = store.add([f"chunk {i}" for i in range(20)], vecs, [{"i": i} for i in range(20)])
    assert ids == list(range(20)) and len(store) == 20
    hits = store.search(vecs[[3, 7]], k=3)
    assert [h[0][0] for h in hits] == [3, 7] and hits[0][0][2] == "chunk 3"
    assert hits[1][0][3] == {"i": 7} and hits[0][0][1] == pytest.approx(1.0, abs=1e-5)
    assert store.delete([3, 999]) == 1 and len(store) == 19
    assert store.search(vecs[[3]], k=1)[0][0][0] != 3
    more = store.add(["late"], _vectors(1, seed=5))
    assert more == [20]  # ids only grow: 3 is not given again
    store.close()
    again = VectorStore.open(tmp_path / "s")
    assert len(again) == 20 and again.get(20) == ("late", {})
    with pytest.raises(KeyError, match="chunk_id: no chunk 3"):
        again.get(3)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [
        f"index-{again.generation}.faiss",
        "store.sqlite",
    ]


def test_a_large_search_reads_every_hit_right(tmp_path):
    # More hits than one SQL query's parameters: every (id, text, metadata) still matches get().
    store = VectorStore.create(tmp_path / "s", dim=8)
    vecs = _vectors(1200)
    store.add([f"chunk {i}" for i in range(1200)], vecs, [{"i": i} for i in range(1200)])
    store.delete(list(range(0, 1200, 7)))
    hits = store.search(vecs[:3], k=1000)  # of 1,028 left
    assert [len(h) for h in hits] == [1000] * 3
    for row in hits:
        assert [s for _, s, _, _ in row] == sorted((s for _, s, _, _ in row), reverse=True)
        for i, _, text, meta in row:
            assert (text, meta) == store.get(i) == (f"chunk {i}", {"i": i})
    store.close()


def test_errors_name_the_argument(tmp_path):
    store = VectorStore.create(tmp_path / "s", dim=4)
    with pytest.raises(ValueError, match=r"vectors: expected shape \(2, 4\)"):
        store.add(["a", "b"], np.zeros((2, 3)))
    with pytest.raises(ValueError, match="texts: expected a non-empty list"):
        store.add([], np.zeros((0, 4)))
    with pytest.raises(TypeError):
        store.add(["a"], np.zeros((1, 4)), [{"x": object()}])  # not JSON: nothing written
    assert len(store) == 0 and store.generation == 0
    assert store.search(np.zeros((1, 4)), k=3) == [[]]
    with pytest.raises(FileExistsError, match="already holds a store"):
        VectorStore.create(tmp_path / "s", dim=4)
    with pytest.raises(FileNotFoundError, match="no store in"):
        VectorStore.open(tmp_path / "nothing")
    with pytest.raises(ValueError, match="dim: expected an int >= 1"):
        VectorStore.create(tmp_path / "t", dim=0)


def test_a_failure_before_the_commit_keeps_the_last_state(tmp_path, monkeypatch):
    store = VectorStore.create(tmp_path / "s", dim=8)
    store.add(["a", "b"], _vectors(2))
    generation = store.generation

    def broken(db):
        raise RuntimeError("power cut")

    with pytest.raises(RuntimeError, match="power cut"):
        store._commit(store._copy_index(), broken)
    assert store.generation == generation and len(store) == 2
    # The process dies after writing the next index file and before the commit:
    next_index = store._copy_index()
    next_index.add_with_ids(_vectors(1, seed=3), np.array([50], dtype=np.int64))
    store._write_index(next_index, generation + 1)
    store.close()
    reopened = VectorStore.open(tmp_path / "s")
    assert len(reopened) == 2 and reopened.generation == generation
    assert not (tmp_path / "s" / f"index-{generation + 1}.faiss").exists()  # the orphan is gone


@pytest.mark.slow
def test_killed_in_the_middle_of_adds_reopens_consistent(tmp_path, root):
    """A child process adds batches in a loop and is killed at random moments; every reopen
    finds rows and vectors agreeing, and a count of chunks that only grows."""
    folder = tmp_path / "s"
    VectorStore.create(folder, dim=16).close()
    child = textwrap.dedent(
        f"""
        import numpy as np
        from llmlab.rag.store import VectorStore
        store = VectorStore.open({str(folder)!r})
        rng = np.random.default_rng()
        while True:
            store.add([f"t{{i}}" for i in range(50)], rng.standard_normal((50, 16)))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(root / "utils")}
    counts = []
    for delay in (0.8, 1.1, 1.3, 0.9):
        proc = subprocess.Popen([sys.executable, "-c", child], env=env)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        store = VectorStore.open(folder)  # raises if rows and vectors disagree
        counts.append(len(store))
        assert len(store) % 50 == 0
        texts = [store.get(row[0])[0] for row in store._db.execute("SELECT id FROM chunks LIMIT 3")]
        assert all(t.startswith("t") for t in texts)
        store.close()
    assert counts == sorted(counts) and counts[-1] > 0
