"""The reader: the generation half of retrieval-augmented generation.

The retriever finds passages; the reader answers the question from them. Notebook 07.2 gives
SmolLM2 the passages as **numbered sources** in the user turn and asks for a short answer with
the number of the source it came from:

    system  Answer the question from the numbered sources. Reply with the short answer and the
            number of its source in brackets, like: 1952 [2]. If no source answers it, reply:
            not in the sources.
    user    Sources:
            [1] Karreith Zellisell worked as a chemist for most of her long life. She ...
            [2] ...
            [3] ...

            Question: What did Karreith Zellisell do for a living?
    model   chemist [1]

:func:`rag_prompt` writes the user turn (no sources: the closed-book prompt),
:func:`parse_response` splits a reply into its answer and its citations, and
:func:`score_responses` measures answers (exact and contains match), abstentions and citations
(does the cited source contain the gold answer). :func:`reading_examples` builds the
fine-tuning data that teaches this format on a *different* seeded knowledge base (its entities
never appear in the test questions): a retrieved context with the gold passage in it
(:func:`gold_context`, also the oracle context of the evaluation) and the answer with its
source's number; a share of contexts hold no answer (:func:`answerless_context`) or no source
at all, and teach the reply "not in the sources".
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from llmlab.rag import kb as kbase
from llmlab.validate import require_positive_int, require_real

__all__ = [
    "SYSTEM",
    "ABSTAIN",
    "rag_prompt",
    "Response",
    "parse_response",
    "is_abstention",
    "cites_answer",
    "score_responses",
    "gold_context",
    "answerless_context",
    "ReadingExample",
    "reading_examples",
    "CHUNKING",
    "holds_evidence",
    "KBRetrieval",
    "kb_retriever",
    "gold_passages",
    "training_examples",
    "ReaderFit",
    "cached_reader",
    "conflicting_passage",
]

#: The reader's instruction: short answer, its source's number, or an abstention.
SYSTEM = (
    "Answer the question from the numbered sources. Reply with the short answer and the number "
    "of its source in brackets, like: 1952 [2]. If no source answers it, reply: not in the sources."
)
#: What a reader says when no source holds the answer.
ABSTAIN = "not in the sources"

_CITATION = re.compile(r"\[(\d+)\]")


def rag_prompt(question: str, sources: Sequence[str] = ()) -> str:
    """The user turn: the numbered ``sources`` (each on one line), then the question.
    With no sources it reads ``Sources: none``: the closed-book prompt."""
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"question: expected a non-empty str, got {question!r}")
    if isinstance(sources, str) or not all(isinstance(s, str) for s in sources):
        raise TypeError("sources: expected a list of passage strings")
    if not sources:
        return f"Sources: none\n\nQuestion: {question.strip()}"
    lines = [f"[{i}] {' '.join(text.split())}" for i, text in enumerate(sources, 1)]
    return "Sources:\n" + "\n".join(lines) + f"\n\nQuestion: {question.strip()}"


@dataclass(frozen=True)
class Response:
    """A reply split in two: ``answer`` (the text without its ``[n]`` markers) and
    ``citations`` (the source numbers it cites, in order, without repeats)."""

    text: str
    answer: str
    citations: tuple[int, ...]


def parse_response(text: str) -> Response:
    """Split a reply such as ``"chemist [1]"`` into answer ``"chemist"`` and citations (1,)."""
    if not isinstance(text, str):
        raise TypeError(f"text: expected the model's reply as a str, got {type(text).__name__}")
    citations = tuple(dict.fromkeys(int(n) for n in _CITATION.findall(text)))
    answer = " ".join(_CITATION.sub(" ", text).split())
    return Response(text=text, answer=answer.strip(" .,;:"), citations=citations)


def is_abstention(answer: str) -> bool:
    """Whether a reply declines to answer ("not in the sources", "Not in the sources.")."""
    return kbase.normalize_answer(answer).startswith(kbase.normalize_answer(ABSTAIN))


def cites_answer(response: Response, sources: Sequence[str], question: kbase.Question) -> bool:
    """Whether the reply cites at least one source and every cited source contains the gold
    answer (or an alias), by :func:`llmlab.rag.kb.contains_match`."""
    if not response.citations:
        return False
    return all(
        1 <= n <= len(sources) and kbase.contains_match(sources[n - 1], question)
        for n in response.citations
    )


def score_responses(
    questions: Sequence[kbase.Question],
    replies: Sequence[str],
    sources: Sequence[Sequence[str]] | None = None,
) -> dict[str, float]:
    """Answer metrics over ``replies`` (one per question), as shares of all questions.

    ``exact``/``contains``: :func:`llmlab.rag.kb.exact_match` / ``contains_match`` of the answer
    without its citations. ``abstain``: replies that decline (:func:`is_abstention`).
    ``wrong``: replies that answer (do not abstain) and do not contain the gold answer: the
    confident errors. With ``sources`` (the passages each question was given): ``cited``, the
    replies that cite a source, and ``citation_ok``, the correct (contains) answers whose cited
    sources all contain the answer, as a share of the correct answers; ``n`` is the count."""
    if len(questions) != len(replies):
        raise ValueError(
            f"replies: expected one per question ({len(questions)}), got {len(replies)}"
        )
    if sources is not None and len(sources) != len(questions):
        raise ValueError(
            f"sources: expected one list per question ({len(questions)}), got {len(sources)}"
        )
    if not questions:
        raise ValueError("questions: expected at least one question, got none")
    n = len(questions)
    parsed = [parse_response(r) for r in replies]
    exact = [kbase.exact_match(p.answer, q) for p, q in zip(parsed, questions, strict=True)]
    contains = [kbase.contains_match(p.answer, q) for p, q in zip(parsed, questions, strict=True)]
    abstain = [is_abstention(p.answer) for p in parsed]
    out = {
        "n": n,
        "exact": sum(exact) / n,
        "contains": sum(contains) / n,
        "abstain": sum(abstain) / n,
        "wrong": sum(not a and not c for a, c in zip(abstain, contains, strict=True)) / n,
    }
    if sources is not None:
        out["cited"] = sum(bool(p.citations) for p in parsed) / n
        correct = [i for i in range(n) if contains[i]]
        ok = sum(cites_answer(parsed[i], sources[i], questions[i]) for i in correct)
        out["citation_ok"] = ok / len(correct) if correct else float("nan")
    return out


def _answerless(question: kbase.Question, passages: Sequence[str]) -> list[str]:
    return [p for p in dict.fromkeys(passages) if not kbase.contains_match(p, question)]


def gold_context(
    question: kbase.Question,
    gold: str,
    passages: Sequence[str],
    n_sources: int = 3,
    rng: random.Random | None = None,
) -> list[str]:
    """The oracle context: the ``gold`` passage and the first ``n_sources - 1`` of ``passages``
    (retrieved, best first) that do not contain the answer, so exactly one source holds it;
    shuffled by ``rng`` when given (otherwise the gold passage is first)."""
    n_sources = require_positive_int(n_sources, "n_sources")
    if not kbase.contains_match(gold, question):
        raise ValueError(f"gold: expected a passage that contains the answer to {question.qid}")
    chosen = [gold] + _answerless(question, passages)[: n_sources - 1]
    if len(chosen) < n_sources:
        raise ValueError(
            f"passages: question {question.qid} has {len(chosen) - 1} passages without the "
            f"answer, expected {n_sources - 1}: retrieve deeper"
        )
    if rng is not None:
        rng.shuffle(chosen)
    return chosen


def answerless_context(
    question: kbase.Question, passages: Sequence[str], n_sources: int = 3
) -> list[str]:
    """An irrelevant context: the first ``n_sources`` of ``passages`` (retrieved, best first)
    that do not contain the answer: close to the question, useless for answering it."""
    n_sources = require_positive_int(n_sources, "n_sources")
    chosen = _answerless(question, passages)[:n_sources]
    if len(chosen) < n_sources:
        raise ValueError(
            f"passages: question {question.qid} has {len(chosen)} passages without the answer, "
            f"expected {n_sources}: retrieve deeper"
        )
    return chosen


@dataclass(frozen=True)
class ReadingExample:
    """One fine-tuning example: the user turn (:func:`rag_prompt`), the target reply, and
    which kind it is: "answer", "irrelevant" (no source holds the answer) or "closed" (none)."""

    question: kbase.Question
    prompt: str
    target: str
    kind: str


def reading_examples(
    questions: Sequence[kbase.Question],
    golds: Sequence[str],
    retrieved: Sequence[Sequence[str]],
    *,
    n_sources: int = 3,
    irrelevant_fraction: float = 0.15,
    closed_fraction: float = 0.05,
    seed: int = 0,
) -> list[ReadingExample]:
    """Reading examples, one per question (``golds[i]``: a passage that holds question i's
    answer; ``retrieved[i]``: the retriever's passages for it, best first, deep enough to
    leave ``n_sources`` without the answer).

    Each example is, by a seeded draw: with probability ``closed_fraction`` no source at all,
    and with ``irrelevant_fraction`` an :func:`answerless_context`, both with the target
    :data:`ABSTAIN`; otherwise a :func:`gold_context` in random order and the target
    ``"<answer> [n]"``, n the gold passage's position.
    """
    if not len(questions) == len(golds) == len(retrieved):
        raise ValueError(
            "questions, golds, retrieved: expected equal lengths, got "
            f"{len(questions)}, {len(golds)}, {len(retrieved)}"
        )
    for name, share in (
        ("irrelevant_fraction", irrelevant_fraction),
        ("closed_fraction", closed_fraction),
    ):
        share = require_real(share, name)
        if not 0 <= share <= 1:
            raise ValueError(f"{name}: expected a share in [0, 1], got {share}")
    if irrelevant_fraction + closed_fraction > 1:
        raise ValueError(
            "irrelevant_fraction, closed_fraction: expected shares that sum to at most 1, got "
            f"{irrelevant_fraction} + {closed_fraction}"
        )
    rng = random.Random(seed)
    out = []
    for q, gold, passages in zip(questions, golds, retrieved, strict=True):
        draw = rng.random()
        if draw < closed_fraction:
            out.append(ReadingExample(q, rag_prompt(q.question), ABSTAIN, "closed"))
        elif draw < closed_fraction + irrelevant_fraction:
            sources = answerless_context(q, passages, n_sources)
            out.append(ReadingExample(q, rag_prompt(q.question, sources), ABSTAIN, "irrelevant"))
        else:
            sources = gold_context(q, gold, passages, n_sources, rng)
            target = f"{q.answer} [{sources.index(gold) + 1}]"
            out.append(ReadingExample(q, rag_prompt(q.question, sources), target, "answer"))
    return out


def conflicting_passage(passage: str, question: kbase.Question, other_answer: str) -> str:
    """``passage`` with the gold answer replaced by ``other_answer``: a source that contradicts
    the true one. The answer must appear in the passage verbatim."""
    if question.answer not in passage:
        raise ValueError(
            f"passage: expected it to state the answer {question.answer!r} verbatim, it does not"
        )
    if not isinstance(other_answer, str) or not other_answer or other_answer == question.answer:
        raise ValueError(
            f"other_answer: expected a different non-empty answer, got {other_answer!r}"
        )
    return passage.replace(question.answer, other_answer)


# --------------------------------------------------------------------------------------------
# The fine-tuned reader, shared by the chapter's notebooks

#: How the chapter's notebooks cut the knowledge base: sentences packed up to 60 words, one
#: sentence of overlap (07.1: hybrid hit@3 about 0.93 on the dev split, passages of ~45 words).
CHUNKING = ("sentences", {"max_words": 60, "overlap": 1})


def holds_evidence(kb: kbase.KnowledgeBase, chunk, question: kbase.Question) -> bool:
    """Whether ``chunk`` (a :class:`~llmlab.rag.chunking.Chunk`) contains the whole evidence
    sentence of ``question``: a span test on its document, as in notebook 07.1."""
    start = kb.document(question.doc_id).text.index(question.evidence)
    return chunk.doc_id == question.doc_id and chunk.covers(start, start + len(question.evidence))


@dataclass
class KBRetrieval:
    """What :func:`kb_retriever` returns: the knowledge base, its chunks, the retriever, and
    the dev split's hit@k for each RRF constant tried (the retriever uses the best)."""

    kb: kbase.KnowledgeBase
    chunks: list
    retriever: object
    dev_hits: dict


def kb_retriever(
    embedder,
    n_entities: int = 240,
    seed: int = 0,
    k: int = 3,
    rrf_ks: Sequence[float] = (1, 5, 20, 60),
) -> KBRetrieval:
    """The chapter's retrieval over the fictional knowledge base (``n_entities``, ``seed``):
    chunks by :data:`CHUNKING`, embedded once (course cache), and a hybrid retriever whose RRF
    constant is the one of ``rrf_ks`` with the best dev hit@``k`` (ties: the smaller)."""
    from llmlab.rag import chunking, embed
    from llmlab.rag.retriever import HybridRetriever

    k = require_positive_int(k, "k")
    kb = kbase.make_kb(n_entities, seed=seed)
    chunks = chunking.chunk_corpus(kb.documents, CHUNKING[0], **CHUNKING[1])
    name = f"07_rag/kb{n_entities}_seed{seed}_chunks"
    vectors = embed.cached_embeddings([c.text for c in chunks], name, embedder)
    dev = kb.split("dev")
    dev_hits = {}
    for rrf_k in rrf_ks:
        retriever = HybridRetriever(chunks, embedder, vectors=vectors, rrf_k=rrf_k)
        found = retriever.search_many([q.question for q in dev], k)
        dev_hits[rrf_k] = sum(
            any(holds_evidence(kb, c, q) for c in f) for q, f in zip(dev, found, strict=True)
        ) / max(len(dev), 1)
    best = max(dev_hits, key=lambda r: (dev_hits[r], -r))
    retriever = HybridRetriever(chunks, embedder, vectors=vectors, rrf_k=best)
    return KBRetrieval(kb, chunks, retriever, dev_hits)


def gold_passages(
    kb: kbase.KnowledgeBase, chunks: Sequence, questions: Sequence[kbase.Question]
) -> list[str]:
    """For each question, the text of the first chunk that holds its whole evidence sentence."""
    by_doc: dict[str, list] = {}
    for chunk in chunks:
        by_doc.setdefault(chunk.doc_id, []).append(chunk)
    out = []
    for q in questions:
        found = [c for c in by_doc.get(q.doc_id, []) if holds_evidence(kb, c, q)]
        if not found:
            raise ValueError(f"chunks: no chunk holds the whole evidence of question {q.qid}")
        out.append(found[0].text)
    return out


def training_examples(
    embedder,
    n_train: int,
    *,
    n_entities: int = 240,
    kb_seed: int = 1,
    n_sources: int = 3,
    seed: int = 0,
) -> list[ReadingExample]:
    """The reader's fine-tuning data: a knowledge base drawn with ``kb_seed`` (never the
    evaluation's), cut and searched by :func:`kb_retriever`; ``n_train`` of its questions (a
    seeded sample) become :func:`reading_examples` with ``n_sources`` sources and the default
    shares of irrelevant and closed-book contexts."""
    n_train = require_positive_int(n_train, "n_train")
    setup = kb_retriever(embedder, n_entities, kb_seed, k=n_sources)
    kb, chunks, retriever = setup.kb, setup.chunks, setup.retriever
    questions = random.Random(seed).sample(kb.questions, min(n_train, len(kb.questions)))
    retrieved = [
        [c.text for c in r] for r in retriever.search_many([q.question for q in questions], 10)
    ]
    golds = gold_passages(kb, chunks, questions)
    return reading_examples(questions, golds, retrieved, n_sources=n_sources, seed=seed)


@dataclass
class ReaderFit:
    """What :func:`cached_reader` returns: the model (LoRA merged, eval mode), whether it was
    trained now (False: read from the course cache), the loss per step and the seconds taken."""

    model: object
    trained: bool
    loss: list[float]
    seconds: float
    n_examples: int


def cached_reader(
    base,
    tokenizer,
    embedder,
    *,
    name: str,
    n_train: int = 224,
    steps: int = 56,
    batch_size: int = 4,
    lr: float = 1e-3,
    rank: int = 16,
    n_entities: int = 240,
    kb_seed: int = 1,
    n_sources: int = 3,
    seed: int = 0,
) -> ReaderFit:
    """Notebook 07.2's fine-tuned reader: from the course cache (``name``), or trained now.

    The recipe: the :func:`training_examples` (``n_train`` questions of the knowledge base
    drawn with ``kb_seed``, ``n_sources`` sources each); LoRA of rank ``rank`` on every linear layer of ``base`` (a copy: ``base`` is not
    changed) is trained by :func:`llmlab.posttrain.sft.train_sft` for ``steps`` steps of
    ``batch_size`` examples at ``lr``, then merged. The adapter and the loss curve are saved
    atomically under ``name`` and a fingerprint of the recipe, so a later notebook reads the
    same reader instead of training it again, and a changed recipe trains a new one.
    """
    from llmlab.posttrain import sft
    from llmlab.results import recipe_name

    n_train = require_positive_int(n_train, "n_train")
    if not isinstance(name, str) or not name:
        raise ValueError(f"name: expected the reader's course-cache name, got {name!r}")
    recipe = (n_train, steps, batch_size, lr, rank, n_entities, kb_seed, n_sources, seed, SYSTEM)
    name = recipe_name(name, recipe)  # a new recipe, a new name

    def make_examples():
        examples = training_examples(
            embedder,
            n_train,
            n_entities=n_entities,
            kb_seed=kb_seed,
            n_sources=n_sources,
            seed=seed,
        )
        return [sft.format_example(tokenizer, e.prompt, e.target, system=SYSTEM) for e in examples]

    model, trained, record = sft.cached_lora_sft(
        base,
        name,
        make_examples,
        tokenizer.pad_token_id,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        rank=rank,
        seed=seed,
    )
    n_examples = record.get("n_examples") or n_train
    return ReaderFit(model, trained, record["loss"], record["seconds"], n_examples)
