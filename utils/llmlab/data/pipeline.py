"""The pretraining corpus of chapter 03: docstrings cleaned, deduplicated and split, cached.

:func:`pretraining_corpus` runs chapter 03's data pipeline (notebook 03/01) on
``docstring_corpus()`` and returns train, validation and test splits. Every stage is
deterministic, so two machines with the same Python get the same documents:

1. **normalise**: NFC, one kind of line end, runs of spaces collapsed inside lines, line ends
   stripped; indentation kept (``normalize_text(keep_indent=True)``);
2. **quality filter**: :class:`~llmlab.data.clean.QualityFilter` with its defaults;
3. **exact dedup**: SHA-1 of the normalised text, first copy kept;
4. **near dedup**: MinHash + LSH with a loose curve (threshold 0.6), each candidate verified
   on its exact Jaccard similarity of word 5-shingles; of each pair with J >= 0.8 the later
   document goes (chapter 03 measures this recipe at precision and recall 1.0 on planted
   copies);
5. **PII scrubbed**: ``scrub_pii`` placeholders (``<EMAIL>``, ``<IP>`` ...);
6. **split** 8:1:1 by document, seeded (``Corpus.split``);
7. **decontaminate**: training documents are dropped until no validation or test document
   has more than half of its word 8-grams in training (:func:`~llmlab.data.dedup.decontaminate`),
   so a validation loss measures text the model has not read.

The result is cached in the course cache (``$LLMLAB_CACHE``, default ``~/.cache/llmlab``)
under ``corpora/``, keyed by the pipeline's version, its arguments and a hash of the raw
documents (so another Python gets its own entry). The file is written under a temporary name
and renamed into place: two notebooks building it at once cannot leave half a file.

    >>> clean = pretraining_corpus()        # builds it (seconds) once, then reads the cache
    >>> clean.train.documents, clean.val.documents
    >>> for stage in clean.stages: print(stage)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from llmlab.data.clean import QualityFilter, normalize_text
from llmlab.data.corpora import (
    Corpus,
    _require_fractions,
    _require_max_bytes,
    docstring_corpus,
)
from llmlab.data.dedup import decontaminate, exact_dedup, near_duplicate_pairs
from llmlab.data.pii import scrub_pii
from llmlab.results import write_atomic

__all__ = [
    "Stage",
    "PretrainingCorpus",
    "pretraining_corpus",
    "clean_and_split",
    "PIPELINE_VERSION",
]

PIPELINE_VERSION = 1  # bump when a stage changes what it keeps: old cache entries are ignored
NEAR_DUP_THRESHOLD = 0.8  # Jaccard of word shingles from which two documents are near-copies
LOOSE_THRESHOLD = 0.6  # where the LSH S-curve sits: candidates for the exact check
SHINGLE_K = 5  # words per shingle
NUM_PERM = 128  # MinHash hash functions
OVERLAP_N = 8  # word n-grams of the contamination check


@dataclass(frozen=True)
class Stage:
    """What is left after one stage of the pipeline (all splits together)."""

    name: str
    n_documents: int
    n_bytes: int

    def __str__(self) -> str:
        return f"{self.name:<22} {self.n_documents:6,} documents {self.n_bytes / 1e6:7.3f} MB"


@dataclass
class PretrainingCorpus:
    """The splits, the stages that made them, and what decontamination removed.

    ``near_copies``: the training documents dropped because a validation or test document had
    more than half of its word 8-grams in them (``train`` plus these is the split before
    decontamination). ``cached``: read from the course cache.
    """

    train: Corpus
    val: Corpus
    test: Corpus
    stages: tuple[Stage, ...]
    near_copies: Corpus
    cached: bool = False

    @property
    def near_copies_removed(self) -> int:
        return self.near_copies.n_documents

    def describe(self) -> str:
        parts = ", ".join(
            f"{c.name.rsplit('/', 1)[-1]} {c.n_documents:,} ({c.n_bytes / 1e6:.2f} MB)"
            for c in (self.train, self.val, self.test)
        )
        return f"clean docstrings (pipeline v{PIPELINE_VERSION}): {parts}"

    def __repr__(self) -> str:
        return (
            f"PretrainingCorpus(train={self.train.n_documents}, val={self.val.n_documents}, "
            f"test={self.test.n_documents}, near_copies_removed={self.near_copies_removed})"
        )


def _subset(corpus: Corpus, indices: Sequence[int], name: str | None = None) -> Corpus:
    return Corpus(
        name or corpus.name,
        [corpus.documents[i] for i in indices],
        [corpus.sources[i] for i in indices],
        python_version=corpus.python_version,
    )


def clean_and_split(
    raw: Corpus, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> PretrainingCorpus:
    """Run the pipeline's stages (this module's docstring) on ``raw``; nothing is cached."""
    stages = [Stage("raw", raw.n_documents, raw.n_bytes)]

    def record(name: str, corpus: Corpus) -> Corpus:
        stages.append(Stage(name, corpus.n_documents, corpus.n_bytes))
        return corpus

    def rewrite(corpus: Corpus, fn) -> Corpus:  # every document through fn, sources kept
        return Corpus(corpus.name, [fn(d) for d in corpus.documents], corpus.sources)

    corpus = record("normalised", rewrite(raw, lambda d: normalize_text(d, keep_indent=True)))
    quality = QualityFilter()
    kept = [i for i, d in enumerate(corpus.documents) if quality.keep(d)]
    corpus = record("quality filter", _subset(corpus, kept))
    corpus = record("exact dedup", _subset(corpus, exact_dedup(corpus.documents)[0]))
    pairs = near_duplicate_pairs(
        corpus.documents,
        NEAR_DUP_THRESHOLD,
        num_perm=NUM_PERM,
        k=SHINGLE_K,
        lsh_threshold=LOOSE_THRESHOLD,  # a loose LSH curve for recall ...
        verify="exact",  # ... and each candidate's exact Jaccard for precision
    )
    later = {j for _, j in pairs}  # of each near-duplicate pair, the later document goes
    kept = [i for i in range(corpus.n_documents) if i not in later]
    corpus = record("near dedup", _subset(corpus, kept))
    corpus = record("PII scrubbed", rewrite(corpus, lambda d: scrub_pii(d)[0]))

    corpus.name, corpus.python_version = "stdlib-docstrings-clean", raw.python_version
    train, val, test = corpus.split(fractions, seed=seed)
    record("split", corpus)
    drop = set(decontaminate(train.documents, val.documents + test.documents, OVERLAP_N))
    near_copies = _subset(train, sorted(drop), f"{corpus.name}/near-copies")
    train = _subset(train, [i for i in range(train.n_documents) if i not in drop])
    record("decontaminated", Corpus("", *_joined(train, val, test)))
    return PretrainingCorpus(train, val, test, tuple(stages), near_copies)


def _joined(*corpora: Corpus) -> tuple[list[str], list[str]]:
    return [d for c in corpora for d in c.documents], [s for c in corpora for s in c.sources]


def _cache_path(raw: Corpus, max_bytes, fractions, seed) -> Path:
    from llmlab.assets import cache_dir

    digest = hashlib.sha256()
    for doc, source in zip(raw.documents, raw.sources, strict=True):
        digest.update(source.encode("utf-8") + b"\0" + doc.encode("utf-8") + b"\0")
    key = json.dumps(
        {
            "version": PIPELINE_VERSION,
            "max_bytes": max_bytes,
            "fractions": list(fractions),
            "seed": seed,
            "raw": digest.hexdigest(),
        },
        sort_keys=True,
    )
    name = hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]
    return cache_dir() / "corpora" / f"pretraining-v{PIPELINE_VERSION}-{name}.json"


def _to_json(corpus: PretrainingCorpus) -> dict:
    return {
        "version": PIPELINE_VERSION,
        "stages": [[s.name, s.n_documents, s.n_bytes] for s in corpus.stages],
        "splits": {
            part: {"name": c.name, "documents": c.documents, "sources": c.sources}
            for part, c in (
                ("train", corpus.train),
                ("val", corpus.val),
                ("test", corpus.test),
                ("near_copies", corpus.near_copies),
            )
        },
    }


def _from_json(blob: dict, python_version: str) -> PretrainingCorpus:
    splits = {
        part: Corpus(s["name"], s["documents"], s["sources"], python_version=python_version)
        for part, s in blob["splits"].items()
    }
    return PretrainingCorpus(
        splits["train"],
        splits["val"],
        splits["test"],
        tuple(Stage(*s) for s in blob["stages"]),
        splits["near_copies"],
        cached=True,
    )


def pretraining_corpus(
    max_bytes: int | None = None,
    *,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    cache: bool = True,
) -> PretrainingCorpus:
    """Chapter 03's training data: the docstrings, cleaned and deduplicated, split 8:1:1.

    max_bytes: clean only ``docstring_corpus(max_bytes)`` (a prefix of whole documents, for
        small runs); ``None`` takes every docstring.
    fractions, seed: the split (by document, seeded), as ``Corpus.split``.
    cache: read the result from the course cache when it is there, and store it when it is
        built; ``False`` always builds and stores nothing.

    Returns a :class:`PretrainingCorpus`: ``.train``, ``.val``, ``.test`` (each a ``Corpus``),
    ``.stages`` (documents and bytes left after each stage) and ``.near_copies`` (the
    training documents that decontamination removed).
    The stages are listed in this module's docstring.
    """
    max_bytes = _require_max_bytes(max_bytes)
    fractions = _require_fractions(fractions)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__} {seed!r}")
    raw = docstring_corpus(max_bytes)
    path = _cache_path(raw, max_bytes, fractions, seed) if cache else None
    if path is not None and path.is_file():
        try:
            with open(path, encoding="utf-8") as f:
                blob = json.load(f)
            if blob.get("version") == PIPELINE_VERSION:
                return _from_json(blob, raw.python_version)
        except (OSError, ValueError, KeyError, TypeError):
            pass  # unreadable or from another layout: build it again
    corpus = clean_and_split(raw, fractions, seed)
    if path is not None:
        write_atomic(path, json.dumps(_to_json(corpus), ensure_ascii=False).encode("utf-8"))
    return corpus
