"""Data for the course: corpora, verifiable tasks, toy tasks, and the pretraining data pipeline.

- :mod:`llmlab.data.corpora`: the offline corpora read from Python itself
  (``docstring_corpus``, ``code_corpus``, and ``reference_corpus``: the Language Reference's
  prose, the "good text" of the LM quality filter).
- :mod:`llmlab.data.tasks`: seeded verifiable tasks (``make_tasks``) and their graders
  (``grade_number`` ...), for SFT, GRPO rewards and evaluation.
- :mod:`llmlab.data.toy`: toy sequence-to-sequence tasks (copy, reverse, sort) for chapter
  01's encoder-decoder.
- :mod:`llmlab.data.clean`: quality signals and filters (length, symbol ratio, repetition),
  the LM-based filter (perplexity under a reference-trained n-gram model, as CCNet), and
  planted junk to measure them.
- :mod:`llmlab.data.dedup`: exact dedup by hash, n-gram overlap, contamination and
  decontamination, MinHash + LSH near-duplicate detection, planted near-duplicates to
  measure precision and recall.
- :mod:`llmlab.data.augment`: synonym replacement (EDA) from a curated offline table.
- :mod:`llmlab.data.pipeline`: ``pretraining_corpus()``, chapter 03's training data: the
  docstrings normalised, filtered, deduplicated, scrubbed, split and decontaminated, cached.
- :mod:`llmlab.data.pii`: scrubbing e-mails, IPs, phone numbers, card numbers and keys; the
  k-anonymity of a table.
- :mod:`llmlab.data.packing`: token ids packed into a memory-mapped file and a random-batch
  sampler whose batch ``i`` is a pure function of ``i`` (so training resumes exactly).

Everything but the toy tasks is re-exported here (``from llmlab.data import minhash_signatures``). Only the
standard library is imported at module level, so ``import llmlab.data`` stays cheap; numpy
and torch load inside the functions that need them.
"""

from __future__ import annotations

from llmlab.data.augment import (
    ANTONYMS,
    SYNONYMS,
    Replacement,
    replaceable_words,
    synonym_replace,
)
from llmlab.data.clean import (
    JUNK_KINDS,
    LMQualityFilter,
    QualityFilter,
    normalize_text,
    plant_junk,
    quality_signals,
)
from llmlab.data.corpora import (
    MIN_DOCSTRING_CHARS,
    SEPARATOR,
    Corpus,
    code_corpus,
    docstring_corpus,
    reference_corpus,
)
from llmlab.data.dedup import (
    LSHIndex,
    contamination,
    decontaminate,
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
from llmlab.data.pipeline import PretrainingCorpus, Stage, clean_and_split, pretraining_corpus
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
    "reference_corpus",
    "pretraining_corpus",
    "clean_and_split",
    "PretrainingCorpus",
    "Stage",
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
    "LMQualityFilter",
    "plant_junk",
    "JUNK_KINDS",
    "normalize_text",
    "exact_dedup",
    "decontaminate",
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
    "synonym_replace",
    "replaceable_words",
    "Replacement",
    "SYNONYMS",
    "ANTONYMS",
    "write_token_file",
    "TokenFile",
    "RandomBatchSampler",
]
