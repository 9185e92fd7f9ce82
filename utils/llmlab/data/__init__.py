"""Data for the course: corpora, verifiable tasks, toy tasks, and the pretraining data pipeline.

- :mod:`llmlab.data.corpora`: the two offline corpora read from Python itself
  (``docstring_corpus``, ``code_corpus``).
- :mod:`llmlab.data.tasks`: seeded verifiable tasks (``make_tasks``) and their graders
  (``grade_number`` ...), for SFT, GRPO rewards and evaluation.
- :mod:`llmlab.data.toy`: toy sequence-to-sequence tasks (copy, reverse, sort) for chapter
  01's encoder-decoder.
- :mod:`llmlab.data.clean`: quality signals and filters (length, symbol ratio, repetition).
- :mod:`llmlab.data.dedup`: exact dedup by hash, n-gram overlap and contamination, MinHash +
  LSH near-duplicate detection, planted near-duplicates to measure precision and recall.
- :mod:`llmlab.data.pii`: scrubbing e-mails, IPs, phone numbers, card numbers and keys; the
  k-anonymity of a table.
- :mod:`llmlab.data.packing`: token ids packed into a memory-mapped file and a random-batch
  sampler whose batch ``i`` is a pure function of ``i`` (so training resumes exactly).

Everything but the toy tasks is re-exported here (``from llmlab.data import minhash_signatures``). Only the
standard library is imported at module level, so ``import llmlab.data`` stays cheap; numpy
and torch load inside the functions that need them.
"""

from __future__ import annotations

from llmlab.data.clean import QualityFilter, normalize_text, quality_signals
from llmlab.data.corpora import (
    MIN_DOCSTRING_CHARS,
    SEPARATOR,
    Corpus,
    code_corpus,
    docstring_corpus,
)
from llmlab.data.dedup import (
    LSHIndex,
    contamination,
    exact_dedup,
    jaccard,
    lsh_params,
    minhash_signatures,
    near_duplicate_pairs,
    ngram_overlap,
    plant_near_duplicates,
    precision_recall,
    shingle_hashes,
    shingles,
)
from llmlab.data.packing import RandomBatchSampler, TokenFile, write_token_file
from llmlab.data.pii import PII_KINDS, k_anonymity, scrub_pii
from llmlab.data.tasks import (
    _TASK_KINDS,  # noqa: F401  (tests swap task kinds in and out)
    BUILTIN_TASK_KINDS,
    MAX_DIFFICULTY,
    Task,
    grade_exact,
    grade_number,
    grade_numbers,
    grade_word,
    make_tasks,
    register_task_kind,
    task_kinds,
)

__all__ = [
    "Corpus",
    "docstring_corpus",
    "code_corpus",
    "SEPARATOR",
    "Task",
    "make_tasks",
    "register_task_kind",
    "task_kinds",
    "BUILTIN_TASK_KINDS",
    "MAX_DIFFICULTY",
    "MIN_DOCSTRING_CHARS",
    "grade_exact",
    "grade_number",
    "grade_numbers",
    "grade_word",
    "quality_signals",
    "QualityFilter",
    "normalize_text",
    "exact_dedup",
    "shingles",
    "shingle_hashes",
    "jaccard",
    "ngram_overlap",
    "contamination",
    "minhash_signatures",
    "lsh_params",
    "LSHIndex",
    "near_duplicate_pairs",
    "plant_near_duplicates",
    "precision_recall",
    "scrub_pii",
    "PII_KINDS",
    "k_anonymity",
    "write_token_file",
    "TokenFile",
    "RandomBatchSampler",
]
