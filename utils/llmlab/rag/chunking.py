"""Chunking: cutting documents into the passages a retriever indexes.

An embedder gives one vector per text, and a reader model has a short context, so documents
are cut into chunks before indexing. How they are cut decides what can be found:

- **fixed-size** windows of ``size`` words, each starting ``size - overlap`` words after the
  last. Simple and uniform, but a window may cut a sentence, and the fact a question needs may
  end up split across two chunks, fully in neither;
- **by sentence**: whole sentences packed greedily up to ``max_words``, optionally repeating
  the last ``overlap`` sentences of a chunk at the start of the next;
- **by paragraph**: one chunk per blank-line-separated paragraph (long ones split by sentence).

Overlap lets a fact near a border appear whole in some chunk, at the price of more, partly
redundant chunks. Every :class:`Chunk` records the character span it covers in its document, so
an evaluation can ask whether a chunk contains the gold evidence (a span test, not a string
search that might match elsewhere).

    >>> chunks = chunk_corpus(docs, "sentences", max_words=60, overlap=1)
    >>> chunks[0].doc_id, chunks[0].start, chunks[0].end, chunks[0].text
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

METHODS = ("fixed", "sentences", "paragraphs")

# A sentence ends at . ! or ? followed by whitespace and an uppercase letter, a digit or a
# quote; abbreviations such as "Dr." before a name are rare in the course's corpora.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class Chunk:
    """A passage of document ``doc_id``: ``text == document[start:end]``."""

    doc_id: str
    chunk_id: str
    text: str
    start: int
    end: int

    def covers(self, start: int, end: int) -> bool:
        """Whether the span ``[start, end)`` of the document lies wholly inside this chunk."""
        return self.start <= start and end <= self.end


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of each sentence of ``text``, trailing whitespace excluded."""
    spans, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        spans.append((start, match.start()))
        start = match.end()
    if text[start:].strip():
        end = len(text.rstrip())
        spans.append((start, end))
    return [(s, e) for s, e in spans if text[s:e].strip()]


def _check_int(value, name: str, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")


def chunk_fixed(doc_id: str, text: str, size: int, overlap: int = 0) -> list[Chunk]:
    """Windows of ``size`` words, consecutive windows sharing ``overlap`` words."""
    _check_int(size, "size", 1)
    _check_int(overlap, "overlap", 0)
    if overlap >= size:
        raise ValueError(f"overlap: expected less than size ({size}), got {overlap}")
    words = [m.span() for m in _WORD.finditer(text)]
    chunks, step = [], size - overlap
    for first in range(0, max(1, len(words)), step):
        window = words[first : first + size]
        if not window:
            break
        start, end = window[0][0], window[-1][1]
        chunks.append(Chunk(doc_id, f"{doc_id}#{len(chunks)}", text[start:end], start, end))
        if first + size >= len(words):
            break
    return chunks


def chunk_sentences(doc_id: str, text: str, max_words: int, overlap: int = 0) -> list[Chunk]:
    """Whole sentences packed up to ``max_words`` (a longer sentence is a chunk of its own);
    each chunk after the first repeats the previous chunk's last ``overlap`` sentences."""
    _check_int(max_words, "max_words", 1)
    _check_int(overlap, "overlap", 0)
    spans = sentence_spans(text)
    lengths = [len(_WORD.findall(text[s:e])) for s, e in spans]
    chunks, first = [], 0
    while first < len(spans):
        last, words = first, lengths[first]
        while last + 1 < len(spans) and words + lengths[last + 1] <= max_words:
            last += 1
            words += lengths[last]
        start, end = spans[first][0], spans[last][1]
        chunks.append(Chunk(doc_id, f"{doc_id}#{len(chunks)}", text[start:end], start, end))
        if last + 1 >= len(spans):
            break
        # Step on, repeating up to `overlap` sentences but always advancing by at least one.
        first = max(first + 1, last + 1 - overlap)
    return chunks


def chunk_paragraphs(doc_id: str, text: str, max_words: int = 200) -> list[Chunk]:
    """One chunk per paragraph (blank-line separated); a paragraph over ``max_words`` is split
    by :func:`chunk_sentences`."""
    _check_int(max_words, "max_words", 1)
    chunks = []
    for match in re.finditer(r"\S(?:.*?\S)?(?=\n\s*\n|\s*\Z)", text, flags=re.S):
        start, para = match.start(), match.group()
        if len(_WORD.findall(para)) <= max_words:
            pieces = [Chunk(doc_id, "", para, start, match.end())]
        else:
            pieces = [
                Chunk(doc_id, "", c.text, start + c.start, start + c.end)
                for c in chunk_sentences(doc_id, para, max_words)
            ]
        for piece in pieces:
            chunks.append(
                Chunk(doc_id, f"{doc_id}#{len(chunks)}", piece.text, piece.start, piece.end)
            )
    return chunks


def chunk_corpus(documents: Iterable, method: str, **options) -> list[Chunk]:
    """Chunks of every document (objects with ``doc_id`` and ``text``, or ``(doc_id, text)``
    pairs) by ``method`` in :data:`METHODS`, with that method's options (``size``/``overlap``,
    ``max_words``/``overlap``, ``max_words``)."""
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    cut = {"fixed": chunk_fixed, "sentences": chunk_sentences, "paragraphs": chunk_paragraphs}
    chunks = []
    for doc in documents:
        doc_id, text = (doc.doc_id, doc.text) if hasattr(doc, "doc_id") else doc
        chunks.extend(cut[method](doc_id, text, **options))
    if not chunks:
        raise ValueError("documents: expected at least one document with text, got none")
    return chunks
