"""Byte-level BPE, the tokenizer of GPT-2, LLaMA 3 and SmolLM2, written from scratch.

    >>> from llmlab.tokenization import BPETokenizer, train_bpe
    >>> tok = train_bpe(text, vocab_size=4096, special_tokens=["<|endoftext|>"])
    >>> ids = tok.encode("héllo wörld<|endoftext|>")
    >>> tok.decode(ids)                                  # the same text, always
    >>> smol = BPETokenizer.from_tokenizer_json(llmlab.assets.prepare("smollm2") / "tokenizer.json")

How text becomes ids, in four steps:

1. **Special tokens** (``<|endoftext|>``, ``<|im_start|>`` ...) are cut out of the text first
   and map to their own id; the text around them is tokenized as if they were not there, and
   a special token is never split into pieces.
2. **Pre-tokenization** cuts the rest into pieces with GPT-2's regular expression
   (:data:`GPT2_PATTERN`): contractions (``'s``), words with one optional leading space
   (`` hello``), numbers, runs of punctuation, runs of whitespace. A merge never crosses a
   piece boundary, so " the" is learned once instead of once per neighbour.
3. **Bytes.** Each piece becomes its UTF-8 bytes. Any text, in any script, is a sequence of
   the 256 byte values, so a byte-level vocabulary has no unknown token. For readability each
   byte is shown as one printable character (:func:`bytes_to_unicode`: a space becomes "Ġ",
   a newline "Ċ"), the form in which GPT-2 and SmolLM2 store their vocabularies.
4. **Merges.** BPE training learned an ordered list of merges ("Ġ" + "t" -> "Ġt"). Encoding a
   piece applies them by rank: repeatedly merge the adjacent pair with the lowest rank (all of
   its non-overlapping occurrences, left to right) until no adjacent pair has a rank.

Training (:func:`train_bpe`) counts the pieces of the corpus once, then repeats: take the most
frequent adjacent pair, add it to the vocabulary, merge it in every word that contains it.
Only those words are touched and the pair counts are updated by the difference, so one merge
costs time proportional to the words it changes, not to the corpus. A heap finds the best pair.

**Ties** between pairs with the same count go to the pair with the smallest ids
``(left id, right id)``, where ids are given in this order: special tokens, the 256 bytes in
the order of their printable characters (:func:`byte_order`), then the merged tokens in the
order they were learned. This is the rule of the ``tokenizers`` library's ``BpeTrainer``;
together with the same vocabulary order and the same bookkeeping (each heap entry remembers the
words where its pair was seen, and a count found stale is pushed back with the current count),
our trainer learns the same merges as ``tokenizers`` on the same corpus and settings
(``tests/test_tokenizers.py`` and chapter 02 check it). One difference by design: special
tokens found inside the training text are left out of the counts here, while ``tokenizers``
does not look for them when it trains and counts their characters as text.

Loaded with SmolLM2's vocabulary and merges, :class:`BPETokenizer` gives exactly the ids of
SmolLM2's own tokenizer. One known difference lies outside the text the course uses: the
``regex`` package knows a newer Unicode version than the regular-expression engine inside
``tokenizers``, so letters added to Unicode most recently (about 1,500 below U+32000, in rare
scripts) are pre-tokenized as letters here and as "other" there. The pieces differ; the ids
could too (chapter 02 found no such case in SmolLM2's vocabulary).

``import llmlab.tokenization`` loads only ``regex`` and the standard library; the ``tokenizers``
library is imported inside the functions that compare with it.
"""

from __future__ import annotations

import codecs
import heapq
import json
import os
import random
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import regex

from llmlab.validate import require_int, require_positive_int

__all__ = [
    "GPT2_PATTERN",
    "FORMAT",
    "bytes_to_unicode",
    "byte_order",
    "pretokenize",
    "BPETokenizer",
    "count_pretokens",
    "train_bpe",
    "TrainStats",
    "train_bpe_with_tokenizers",
    "tokenizers_merges",
    "CHINESE_PROSE",
    "EDGE_CASES",
    "mixed_text",
]

#: GPT-2's pre-tokenization pattern (also SmolLM2's: ``ByteLevel(use_regex=True)``). In order:
#: English contractions; letters with an optional leading space; digits likewise; other
#: symbols likewise; whitespace not followed by a non-space (so the last space of a run is left
#: to start the next word); any remaining whitespace.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

#: The ``format`` field of the JSON files written by :meth:`BPETokenizer.save`.
FORMAT = "llmlab-bpe"
_FORMAT_VERSION = 1


# --------------------------------------------------------------------------------------------
# Bytes as printable characters


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte value (0-255) to one printable character.

    Bytes that are already printable, visible Latin-1 characters keep their character ("!" to
    "~", "¡" to "¬", "®" to "ÿ"); the other 68 (control characters, space, DEL, no-break space,
    soft hyphen) are moved to U+0100 onwards in byte order, so the space (byte 32) becomes
    "Ġ" (U+0120) and the newline (byte 10) "Ċ" (U+010A). The map is a bijection: every token
    of a byte-level vocabulary is a string over these 256 characters.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shifted)
            shifted += 1
    return mapping


_BYTE_TO_CHAR = bytes_to_unicode()
_CHAR_TO_BYTE = {c: b for b, c in _BYTE_TO_CHAR.items()}
_BYTE_CHARS = [_BYTE_TO_CHAR[b] for b in range(256)]


def byte_order() -> list[int]:
    """The 256 byte values sorted by their printable character: the order of their ids.

    This is the order the ``tokenizers`` library gives the initial alphabet (it sorts
    characters by code point), and also the order of GPT-2's first 256 ids.
    """
    return sorted(range(256), key=lambda b: ord(_BYTE_TO_CHAR[b]))


def _to_byte_chars(text: str) -> str:
    """The UTF-8 bytes of ``text``, each shown as its printable character."""
    return "".join([_BYTE_CHARS[b] for b in text.encode("utf-8")])


def _from_byte_chars(token: str) -> bytes:
    try:
        return bytes(_CHAR_TO_BYTE[c] for c in token)
    except KeyError as exc:
        raise ValueError(
            f"token {token!r} is not a byte-level token: {exc.args[0]!r} is none of the 256 "
            "byte characters of bytes_to_unicode()"
        ) from None


# --------------------------------------------------------------------------------------------
# Pre-tokenization and special tokens


def pretokenize(text: str, pattern: str = GPT2_PATTERN) -> list[str]:
    """The pieces of ``text`` that BPE works on separately (joined, they give ``text`` back).

    >>> pretokenize("Hello  world's 2024!!")
    ['Hello', ' ', ' world', "'s", ' 2024', '!!']
    """
    if not isinstance(text, str):
        raise TypeError(f"text: expected a str, got {type(text).__name__}")
    return _compile(pattern).findall(text)


def _compile(pattern: str) -> regex.Pattern:
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"pattern: expected a non-empty regular expression str, got {pattern!r}")
    try:
        return regex.compile(pattern)
    except regex.error as exc:
        raise ValueError(f"pattern: not a valid regular expression ({exc}): {pattern!r}") from None


def _require_special_tokens(special_tokens: Any) -> list[str]:
    if isinstance(special_tokens, str):
        raise TypeError(
            f"special_tokens: expected a list of str, got the str {special_tokens!r} "
            "(wrap it in a list)"
        )
    try:
        tokens = list(special_tokens)
    except TypeError:
        raise TypeError(
            f"special_tokens: expected a list of str, got {type(special_tokens).__name__}"
        ) from None
    for token in tokens:
        if not isinstance(token, str) or not token:
            raise ValueError(f"special_tokens: expected non-empty strs, got {token!r}")
    if len(set(tokens)) != len(tokens):
        raise ValueError(f"special_tokens: expected distinct tokens, got {tokens}")
    return tokens


class _SpecialSplitter:
    """Cuts text at special tokens: the longest one wins where two start at the same place."""

    def __init__(self, tokens: Iterable[str]):
        self.tokens = sorted(tokens, key=lambda t: (-len(t), t))
        self.pattern = (
            regex.compile("|".join(regex.escape(t) for t in self.tokens)) if self.tokens else None
        )
        # Every proper prefix of a special token: where a stream chunk may end mid-token.
        self.prefixes = {t[:i] for t in self.tokens for i in range(1, len(t))}
        self.max_len = max((len(t) for t in self.tokens), default=0)

    def split(self, text: str) -> Iterator[tuple[str, bool]]:
        """(segment, is_special) pairs that join to ``text``; empty segments are skipped."""
        if self.pattern is None:
            if text:
                yield text, False
            return
        start = 0
        for match in self.pattern.finditer(text):
            if match.start() > start:
                yield text[start : match.start()], False
            yield match.group(), True
            start = match.end()
        if start < len(text):
            yield text[start:], False

    def partial_suffix_start(self, text: str) -> int:
        """Where the longest suffix of ``text`` that could begin a special token starts."""
        for i in range(max(0, len(text) - self.max_len + 1), len(text)):
            if text[i:] in self.prefixes:
                return i
        return len(text)


# --------------------------------------------------------------------------------------------
# The tokenizer


class BPETokenizer:
    """A byte-level BPE tokenizer: a vocabulary, ranked merges, special tokens, a pattern.

    vocab: byte-level token string (see :func:`bytes_to_unicode`) -> id. It must hold every
        single byte and the result of every merge.
    merges: ``(left, right)`` token strings, in rank order (rank 0 is applied first). If a pair
        appears twice, its last rank counts (as in ``tokenizers``).
    special_tokens: text -> id, for tokens that are cut out before pre-tokenization and never
        split. Their ids must not collide with ``vocab``'s, unless they name the same token.
    pattern: the pre-tokenization regular expression (``regex`` syntax).
    cache_size: how many pieces the per-piece cache keeps (it is emptied when full); 0 turns
        it off. Text repeats its words, so most pieces are found in the cache.
    """

    def __init__(
        self,
        vocab: dict[str, int],
        merges: Sequence[tuple[str, str]],
        special_tokens: dict[str, int] | None = None,
        pattern: str = GPT2_PATTERN,
        cache_size: int = 100_000,
    ):
        if not isinstance(vocab, dict) or not vocab:
            raise TypeError(
                f"vocab: expected a non-empty dict str -> int, got {type(vocab).__name__}"
            )
        for token, i in vocab.items():
            if not isinstance(token, str) or isinstance(i, bool) or not isinstance(i, int) or i < 0:
                raise ValueError(f"vocab: expected str -> non-negative int, got {token!r}: {i!r}")
        if len(set(vocab.values())) != len(vocab):
            raise ValueError("vocab: two tokens share an id")
        special_tokens = dict(special_tokens or {})
        vocab_ids = set(vocab.values())
        for token, i in special_tokens.items():
            if (
                not isinstance(token, str)
                or not token
                or isinstance(i, bool)
                or not isinstance(i, int)
            ):
                raise ValueError(f"special_tokens: expected str -> int, got {token!r}: {i!r}")
            if i in vocab_ids and vocab.get(token) != i:
                raise ValueError(f"special_tokens: id {i} of {token!r} is already a vocab token")
        require_int(cache_size, "cache_size", 0)

        self.vocab = dict(vocab)
        self.merges = [tuple(m) for m in merges]
        self.special_tokens = special_tokens
        self.pattern = pattern
        self.cache_size = cache_size
        self._regex = _compile(pattern)
        self._specials = _SpecialSplitter(special_tokens)

        #: Byte values without a token of their own. Encoding drops them, as ``tokenizers``
        #: does (SmolLM2 lacks 21: six rare control characters and lead bytes that valid
        #: UTF-8 never or almost never uses); a trained tokenizer has all 256.
        self.missing_bytes = [b for b in range(256) if _BYTE_CHARS[b] not in self.vocab]
        self._byte_ids = [self.vocab.get(c) for c in _BYTE_CHARS]
        # (left id, right id) -> (rank, merged id); a repeated pair keeps its last rank.
        self._ranks: dict[tuple[int, int], tuple[int, int]] = {}
        for rank, merge in enumerate(self.merges):
            if len(merge) != 2 or not all(isinstance(t, str) for t in merge):
                raise ValueError(f"merges[{rank}]: expected a pair of str, got {merge!r}")
            left, right = merge
            for part in (left, right, left + right):
                if part not in self.vocab:
                    raise ValueError(f"merges[{rank}] = {merge!r}: {part!r} is not in vocab")
            self._ranks[self.vocab[left], self.vocab[right]] = (rank, self.vocab[left + right])
        self._id_to_bytes: dict[int, bytes] = {
            i: _from_byte_chars(t) for t, i in self.vocab.items()
        }
        self._id_to_bytes.update({i: t.encode("utf-8") for t, i in special_tokens.items()})
        self._cache: dict[str, tuple[int, ...]] = {}
        self._id_to_token: dict[int, str] | None = None

    # ---- sizes and lookups

    @property
    def vocab_size(self) -> int:
        """Number of distinct ids: vocabulary plus special tokens (``max id + 1`` when dense)."""
        return len(set(self.vocab.values()) | set(self.special_tokens.values()))

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return (
            f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
            f"special_tokens={len(self.special_tokens)})"
        )

    def id_to_token(self, i: int) -> str:
        """The token string of id ``i`` (byte-level form; special tokens as written)."""
        if self._id_to_token is None:
            self._id_to_token = {j: t for t, j in self.vocab.items()}
            self._id_to_token.update({j: t for t, j in self.special_tokens.items()})
        try:
            return self._id_to_token[i]
        except KeyError:
            raise KeyError(f"id {i} is not in the vocabulary") from None

    def token_bytes(self, i: int) -> bytes:
        """The bytes that id ``i`` stands for."""
        try:
            return self._id_to_bytes[i]
        except KeyError:
            raise KeyError(f"id {i} is not in the vocabulary") from None

    # ---- encoding

    def _bpe(self, piece: str) -> tuple[int, ...]:
        """Apply the merges to one pre-token, lowest rank first, and return its ids."""
        byte_ids = self._byte_ids
        ids = [byte_ids[b] for b in piece.encode("utf-8")]
        if self.missing_bytes and None in ids:
            ids = [i for i in ids if i is not None]
        ranks = self._ranks
        while len(ids) > 1:
            best_rank, best_at = None, -1
            for at in range(len(ids) - 1):
                found = ranks.get((ids[at], ids[at + 1]))
                if found is not None and (best_rank is None or found[0] < best_rank):
                    best_rank, best_at = found[0], at
            if best_rank is None:
                break
            left, right = ids[best_at], ids[best_at + 1]
            merged = ranks[left, right][1]
            out = ids[:best_at]  # no occurrence of the pair before the first one
            at, n = best_at, len(ids)
            while at < n:
                if at + 1 < n and ids[at] == left and ids[at + 1] == right:
                    out.append(merged)
                    at += 2
                else:
                    out.append(ids[at])
                    at += 1
            ids = out
        return tuple(ids)

    def _encode_ordinary(self, text: str, out: list[int]) -> None:
        """Append the ids of ``text`` (no special tokens in it) to ``out``."""
        self._encode_pieces(self._regex.findall(text), out)

    def _encode_pieces(self, pieces: Iterable[str], out: list[int]) -> None:
        """Append the ids of pre-tokens to ``out``, through the cache."""
        cache = self._cache
        for piece in pieces:
            ids = cache.get(piece)
            if ids is None:
                ids = self._bpe(piece)
                if self.cache_size:
                    if len(cache) >= self.cache_size:
                        cache.clear()
                    cache[piece] = ids
            out.extend(ids)

    def encode(self, text: str, allow_special: bool = True) -> list[int]:
        """The ids of ``text``.

        allow_special: when True (the default, as in ``tokenizers``), special tokens written in
            the text become their ids; when False they are tokenized as ordinary text (safer
            for untrusted input: a user cannot type a control token).
        """
        if not isinstance(text, str):
            raise TypeError(f"text: expected a str, got {type(text).__name__}")
        out: list[int] = []
        if not allow_special:
            self._encode_ordinary(text, out)
            return out
        for segment, special in self._specials.split(text):
            if special:
                out.append(self.special_tokens[segment])
            else:
                self._encode_ordinary(segment, out)
        return out

    def encode_batch(self, texts: Sequence[str], allow_special: bool = True) -> list[list[int]]:
        """``[encode(t) for t in texts]`` (one thread: Python's regex and dicts hold the GIL)."""
        if isinstance(texts, str):
            raise TypeError("texts: expected a list of str, got one str (use encode)")
        return [self.encode(t, allow_special) for t in texts]

    def encode_stream(
        self, source: Any, chunk_size: int = 1 << 16, allow_special: bool = True
    ) -> Iterator[list[int]]:
        """Encode a large text in bounded memory: yields lists of ids, chunk by chunk.

        source: a file object opened for reading (text or binary: ``read(chunk_size)`` is
            called until it returns nothing), or any iterable of str or bytes chunks. Bytes
            are decoded as UTF-8 incrementally, so a character may be split between chunks.
        chunk_size: characters (or bytes) read at a time from a file object.

        The concatenated lists are exactly ``encode(whole text)``. Text is only cut after a
        complete pre-token: the last piece of a chunk is held back (more text might extend it,
        e.g. a run of spaces, or change it: a space before a letter joins the letter), and so
        is an end that could be the start of a special token. Memory stays bounded by the
        chunk size plus the longest pre-token. Files opened in text mode translate "\\r\\n" to
        "\\n" unless opened with ``newline=""``.
        """
        require_positive_int(chunk_size, "chunk_size")
        if isinstance(source, (str, bytes)):
            raise TypeError(
                "source: expected a file object or an iterable of chunks, got one "
                f"{type(source).__name__} (use encode, or wrap it in a list)"
            )
        specials = self._specials if allow_special else _SpecialSplitter(())
        carry = ""
        for chunk in _text_chunks(source, chunk_size):
            carry += chunk
            out: list[int] = []
            segments = list(specials.split(carry))
            # Everything up to the last special token is final.
            last = len(segments)
            while last and not segments[last - 1][1]:
                last -= 1
            if last == len(segments) and last and segments[-1][0] in specials.prefixes:
                last -= 1  # a special token at the very end might grow into a longer one
            for segment, special in segments[:last]:
                if special:
                    out.append(self.special_tokens[segment])
                else:
                    self._encode_ordinary(segment, out)
            tail = "".join(s for s, _ in segments[last:])
            # The tail may end with the start of a special token: never cut inside it, and
            # hold back the last complete piece before it too.
            hold = specials.partial_suffix_start(tail)
            # Encode the pieces as found in context: pre-tokenizing tail[:cut] again on its own
            # could change its last piece ("\t\t" + "\t" before a letter, "\t\t\t" at the end).
            pieces = self._regex.findall(tail[:hold])
            keep = len(pieces.pop()) if pieces else 0
            self._encode_pieces(pieces, out)
            carry = tail[hold - keep :]
            if out:
                yield out
        if carry:
            yield self.encode(carry, allow_special)

    # ---- decoding

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """The text of ``ids``: their bytes joined, then decoded as UTF-8.

        Bytes are joined before decoding because one character may be split over several
        tokens. A sequence that ends mid-character (or any invalid UTF-8) decodes with U+FFFD
        for the broken bytes under ``errors="replace"``, like ``tokenizers``; pass
        ``errors="strict"`` to raise instead.
        """
        try:
            data = b"".join([self._id_to_bytes[i] for i in ids])
        except KeyError as exc:
            raise ValueError(f"ids: {exc.args[0]!r} is not an id of this tokenizer") from None
        except TypeError:
            raise TypeError(f"ids: expected an iterable of int, got {type(ids).__name__}") from None
        return data.decode("utf-8", errors=errors)

    # ---- saving and loading

    def to_dict(self) -> dict[str, Any]:
        """The tokenizer as plain JSON data (what :meth:`save` writes)."""
        return {
            "format": FORMAT,
            "version": _FORMAT_VERSION,
            "pattern": self.pattern,
            "special_tokens": self.special_tokens,
            "vocab": self.vocab,
            "merges": [list(m) for m in self.merges],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BPETokenizer:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"data: expected a dict with format {FORMAT!r}")
        if data.get("version") != _FORMAT_VERSION:
            raise ValueError(
                f"data: format version {data.get('version')!r} is not supported "
                f"(expected {_FORMAT_VERSION})"
            )
        return cls(
            data["vocab"],
            [tuple(m) for m in data["merges"]],
            data["special_tokens"],
            data["pattern"],
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write the tokenizer as JSON. Atomic: a temporary file is written, then renamed, so
        a crash never leaves a half-written tokenizer behind."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self.to_dict(), f, ensure_ascii=False)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> BPETokenizer:
        """Read a tokenizer written by :meth:`save`."""
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    @classmethod
    def from_tokenizer_json(cls, source: str | os.PathLike | dict[str, Any]) -> BPETokenizer:
        """A tokenizer from a ``tokenizers`` ``tokenizer.json`` file (or its parsed dict).

        Only what this class implements is accepted: a BPE model, no normalizer, and a
        ``ByteLevel`` pre-tokenizer with ``use_regex=True`` and ``add_prefix_space=False``
        (GPT-2, SmolLM2). Added tokens become special tokens (never split).
        """
        if isinstance(source, dict):
            data = source
        else:
            with open(source, encoding="utf-8") as f:
                data = json.load(f)
        model = data.get("model") or {}
        if model.get("type") != "BPE":
            raise ValueError(f"source: expected a BPE model, got {model.get('type')!r}")
        if data.get("normalizer") is not None:
            raise ValueError(f"source: a normalizer is not supported, got {data['normalizer']!r}")
        pre = data.get("pre_tokenizer") or {}
        if (pre.get("type"), pre.get("use_regex"), pre.get("add_prefix_space")) != (
            "ByteLevel",
            True,
            False,
        ):
            raise ValueError(
                "source: expected a ByteLevel pre-tokenizer with use_regex=True and "
                f"add_prefix_space=False, got {pre!r}"
            )
        for key in ("continuing_subword_prefix", "end_of_word_suffix"):
            if model.get(key):
                raise ValueError(f"source: model.{key} is not supported, got {model[key]!r}")
        added = data.get("added_tokens") or []
        for token in added:
            if token.get("lstrip") or token.get("rstrip") or token.get("single_word"):
                raise ValueError(f"source: added token options are not supported: {token!r}")
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        specials = {t["content"]: t["id"] for t in added}
        vocab = {t: i for t, i in model["vocab"].items() if t not in specials}
        return cls(vocab, merges, specials, GPT2_PATTERN)

    @classmethod
    def from_tokenizers(cls, tokenizer: Any) -> BPETokenizer:
        """A tokenizer from a ``tokenizers.Tokenizer`` object (through its JSON form)."""
        return cls.from_tokenizer_json(json.loads(tokenizer.to_str()))


def _text_chunks(source: Any, chunk_size: int) -> Iterator[str]:
    """str chunks from a file object or an iterable of str/bytes chunks."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    if hasattr(source, "read"):
        chunks: Iterable[Any] = iter(lambda: source.read(chunk_size), None)
    else:
        try:
            chunks = iter(source)
        except TypeError:
            raise TypeError(
                f"source: expected a file object or an iterable of chunks, got {type(source).__name__}"
            ) from None
    for chunk in chunks:
        if isinstance(chunk, (bytes, bytearray)):
            if not chunk and hasattr(source, "read"):
                break
            text = decoder.decode(bytes(chunk))
        elif isinstance(chunk, str):
            if not chunk and hasattr(source, "read"):
                break
            text = chunk
        else:
            raise TypeError(f"source: chunks must be str or bytes, got {type(chunk).__name__}")
        if text:
            yield text
    tail = decoder.decode(b"", final=True)
    if tail:
        yield tail


# --------------------------------------------------------------------------------------------
# Training


class TrainStats(dict):
    """Timings and counts of one :func:`train_bpe` run (a dict: ``stats["merge_s"]``)."""


def _sequences(text_or_iterable: Any) -> Iterator[str]:
    if isinstance(text_or_iterable, str):
        yield text_or_iterable
        return
    try:
        iterator = iter(text_or_iterable)
    except TypeError:
        raise TypeError(
            "text_or_iterable: expected a str or an iterable of str, got "
            f"{type(text_or_iterable).__name__}"
        ) from None
    for i, text in enumerate(iterator):
        if not isinstance(text, str):
            raise TypeError(f"text_or_iterable: item {i} is a {type(text).__name__}, expected str")
        yield text


def count_pretokens(
    text_or_iterable: str | Iterable[str],
    pattern: str = GPT2_PATTERN,
    special_tokens: Sequence[str] = (),
) -> Counter[str]:
    """How often each pre-token occurs, special tokens cut out first (they are not counted).

    An iterable is read one text at a time, each pre-tokenized on its own (like
    ``tokenizers``' ``train_from_iterator``): pieces never span two texts.
    """
    compiled = _compile(pattern)
    splitter = _SpecialSplitter(_require_special_tokens(special_tokens))
    counts: Counter[str] = Counter()
    for text in _sequences(text_or_iterable):
        for segment, special in splitter.split(text):
            if not special:
                counts.update(compiled.findall(segment))
    return counts


def train_bpe(
    text_or_iterable: str | Iterable[str],
    vocab_size: int,
    special_tokens: Sequence[str] = (),
    *,
    pattern: str = GPT2_PATTERN,
    min_frequency: int = 0,
    show_progress: bool = False,
    stats: TrainStats | None = None,
) -> BPETokenizer:
    """Learn a byte-level BPE tokenizer of ``vocab_size`` ids from text.

    text_or_iterable: one str, or an iterable of str (documents; pieces never span two).
    vocab_size: the total number of ids: special tokens + 256 bytes + merges. Training stops
        earlier when no pair occurs at least ``max(1, min_frequency)`` times.
    special_tokens: get the first ids, in this order; they are never split and not counted.
    stats: a :class:`TrainStats` to fill with timings (``count_s``, ``merge_s``) and counts.

    Ids: special tokens, then the 256 bytes in :func:`byte_order`, then merges as learned.
    Ties between equally frequent pairs go to the smallest ``(left id, right id)``.
    """
    vocab_size = require_int(vocab_size, "vocab_size", None)
    specials = _require_special_tokens(special_tokens)
    if vocab_size < 256 + len(specials):
        raise ValueError(
            f"vocab_size: expected >= 256 + {len(specials)} special tokens = "
            f"{256 + len(specials)}, got {vocab_size}"
        )
    min_frequency = require_int(min_frequency, "min_frequency", 0)

    t0 = time.perf_counter()
    word_counts = count_pretokens(text_or_iterable, pattern, specials)
    t1 = time.perf_counter()

    # Ids: special tokens, then the alphabet sorted by character, then merges.
    id_to_token: list[str] = []
    token_to_id: dict[str, int] = {}
    for token in [*specials, *(_BYTE_TO_CHAR[b] for b in byte_order())]:
        if token not in token_to_id:
            token_to_id[token] = len(id_to_token)
            id_to_token.append(token)
    byte_ids = [token_to_id[c] for c in _BYTE_CHARS]

    words = [[byte_ids[b] for b in w.encode("utf-8")] for w in word_counts]
    counts = list(word_counts.values())
    pair_counts: defaultdict[tuple[int, int], int] = defaultdict(int)
    where: defaultdict[tuple[int, int], set[int]] = defaultdict(set)
    for i, (word, count) in enumerate(zip(words, counts, strict=True)):
        for pair in zip(word, word[1:], strict=False):
            pair_counts[pair] += count
            where[pair].add(i)
    # Max-heap by (count, then smallest pair) via negated counts. An entry carries the words
    # where its pair was seen when it was pushed; a stale count is fixed when it reaches the top.
    serial = 0
    heap = []
    for pair, positions in where.items():
        heap.append((-pair_counts[pair], pair[0], pair[1], serial, positions))
        serial += 1
    heapq.heapify(heap)
    del where

    merges: list[tuple[int, int]] = []
    n_target = vocab_size - len(token_to_id)
    bar = None
    if show_progress:
        from llmlab.progress import progress

        bar = progress(total=n_target, desc="BPE merges")
    threshold = max(1, min_frequency)
    while len(token_to_id) < vocab_size and heap:
        negative, left, right, entry, positions = heapq.heappop(heap)
        count = pair_counts[left, right]
        if -negative != count:
            heapq.heappush(heap, (-count, left, right, entry, positions))
            continue
        if count < threshold:
            break
        token = id_to_token[left] + id_to_token[right]
        new = token_to_id.get(token)
        if new is None:  # two different merges can spell the same token: it keeps one id
            new = token_to_id[token] = len(id_to_token)
            id_to_token.append(token)
            if bar is not None:
                bar.update(1)
        merges.append((left, right))

        gained: defaultdict[tuple[int, int], set[int]] = defaultdict(set)
        for i in positions:
            word = words[i]
            if left not in word:
                continue
            c = counts[i]
            out: list[int] = []
            at, n = 0, len(word)
            changed = False
            while at < n:
                if at + 1 < n and word[at] == left and word[at + 1] == right:
                    changed = True
                    if out:
                        before = out[-1]
                        pair_counts[before, left] -= c
                        pair_counts[before, new] += c
                        gained[before, new].add(i)
                    if at + 2 < n:
                        after = word[at + 2]
                        pair_counts[right, after] -= c
                        pair_counts[new, after] += c
                        gained[new, after].add(i)
                    out.append(new)
                    at += 2
                else:
                    out.append(word[at])
                    at += 1
            if changed:
                words[i] = out
        for pair, where_gained in gained.items():
            count = pair_counts[pair]
            if count > 0:
                heapq.heappush(heap, (-count, pair[0], pair[1], serial, where_gained))
                serial += 1
    if bar is not None:
        bar.close()
    t2 = time.perf_counter()

    if stats is not None:
        stats.update(
            count_s=t1 - t0,
            merge_s=t2 - t1,
            total_s=t2 - t0,
            n_words=len(words),
            n_pieces=sum(counts),
            n_merges=len(merges),
        )
    vocab = {t: i for t, i in token_to_id.items() if t not in specials}
    special_ids = {t: token_to_id[t] for t in specials}
    merge_tokens = [(id_to_token[a], id_to_token[b]) for a, b in merges]
    return BPETokenizer(vocab, merge_tokens, special_ids, pattern)


# --------------------------------------------------------------------------------------------
# The same training with the `tokenizers` library, for comparison


def train_bpe_with_tokenizers(
    text_or_iterable: str | Iterable[str],
    vocab_size: int,
    special_tokens: Sequence[str] = (),
    min_frequency: int = 0,
) -> Any:
    """A ``tokenizers.Tokenizer`` trained with the settings :func:`train_bpe` uses.

    BPE model, ``ByteLevel(add_prefix_space=False, use_regex=True)`` pre-tokenizer and decoder,
    all 256 bytes in the initial alphabet, no normalizer. Its number of threads follows
    ``RAYON_NUM_THREADS`` / ``TOKENIZERS_PARALLELISM`` (set them before the first call).
    """
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, trainers

    specials = _require_special_tokens(special_tokens)
    tokenizer = tokenizers.Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = [text_or_iterable] if isinstance(text_or_iterable, str) else text_or_iterable
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def tokenizers_merges(tokenizer: Any) -> list[tuple[str, str]]:
    """The merges of a ``tokenizers.Tokenizer`` BPE model, in rank order."""
    model = json.loads(tokenizer.to_str())["model"]
    return [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]


# --------------------------------------------------------------------------------------------
# Test text: every script and edge case a byte-level tokenizer must survive

#: A few paragraphs of Chinese prose written for this course (no Chinese corpus ships offline).
CHINESE_PROSE = """\
清晨的小镇还没有完全醒来，河面上飘着一层薄薄的雾。卖豆浆的老人把炉子点着，火苗轻轻地跳动，像是在\
和早起的鸟儿说话。街角的书店要到九点才开门，可是门口已经坐着一个背书包的孩子，手里捧着一本翻旧了的\
字典。

我们学习语言模型的时候，第一件事不是写神经网络，而是决定怎样把文字切成小块。英文有空格，单词之间\
的界限一目了然；中文却没有空格，一句话里的每个字紧紧挨在一起。如果按字来切，序列会变得很长；如果按\
词来切，又需要一本很大的词典，而且总会遇到词典里没有的新词。

字节级的字节对编码给出了一个折中的办法。它先把每个字符写成若干个字节，一个汉字通常占三个字节。然后\
它统计哪两个相邻的片段最常一起出现，就把它们合并成一个新的片段。重复几千次以后，常见的汉字和词语都\
有了自己的编号，而罕见的字仍然可以用几个字节拼出来，所以永远不会出现无法表示的符号。

傍晚下了一场小雨。雨停以后，石板路亮得像镜子，倒映着两旁的灯笼。有人在桥上拉二胡，曲子很慢，听的人\
却越来越多。孩子合上字典，抬头看了看天上的月亮，心想：明天要把今天认识的二十个新字再写一遍。

数字和标点也要小心处理：二〇二四年，温度是百分之三十七点五，价格是１２８元。问号？感叹号！省略号……\
还有书名号《红楼梦》和引号「你好」，它们都是模型必须学会的符号。
"""

#: Named texts on which byte-level tokenizers tend to go wrong: multi-byte characters, emoji
#: sequences, combining marks, whitespace runs, digits, special tokens inside text.
EDGE_CASES: dict[str, str] = {
    "empty": "",
    "english": "The quick brown fox can't jump over 2 lazy dogs; it's 1,024.5% sure.",
    "contractions": "I'm, you're, we've, they'll, she'd, it's, DON'T, O'Neil's 'quote'",
    "chinese": "字节级编码不会遇到未知字符。你好，世界！",
    "japanese": "東京は晴れ、カタカナとひらがな。",
    "korean": "안녕하세요, 토크나이저입니다.",
    "arabic": "مرحبا بالعالم، هذا نص عربي.",
    "devanagari": "नमस्ते दुनिया, यह हिन्दी है।",
    "emoji": "I ❤️ BPE 😀👍🏽 🇫🇷🇯🇵 👩‍💻 👨‍👩‍👧‍👦 🏳️‍🌈 1️⃣ 🧑🏿‍🚀",
    "combining marks": "e\u0301 n\u0303 Zalgo: Z\u0351\u0352\u0353a\u0300\u0301l\u0302go; Tiếng Việt",
    "whitespace": "a  b   c\t\td\n\ne\r\nf \n g    \n\n\n   h\u00a0i\u3000j\u2028k\x0b\x0cl   ",
    "only spaces": "     ",
    "leading and trailing": "  \n hello world \t ",
    "digits": "0 12 345 6789 3.14159 1e-10 ١٢٣ ４５６ ½ ² Ⅻ",
    "code": 'def f(x):\n\tif x >= 0:\n\t\treturn x ** 2  # square\n    return {"k": [1, 2]}\n',
    "special tokens": "<|im_start|>user\nHi!<|im_end|>\n<|endoftext|><|endoftext|>x<|im_end",
    "lone surrogate-free odd": "\x00\x01\x7f\u200b\u200d\ufeff\ufffd",
}

# Letter and mark ranges (all assigned since Unicode 6 or earlier) for random "words".
_SCRIPTS: dict[str, list[tuple[int, int]]] = {
    "cjk": [(0x4E00, 0x9FA5)],
    "hangul": [(0xAC00, 0xD7A3)],
    "arabic": [(0x0621, 0x063A), (0x0641, 0x064A), (0x064B, 0x0652)],
    "devanagari": [(0x0905, 0x0939), (0x093E, 0x094D)],
    "cyrillic": [(0x0410, 0x044F)],
    "greek": [(0x0391, 0x03A1), (0x03A3, 0x03C9)],
    "thai": [(0x0E01, 0x0E3A)],
}
_EMOJI_SEQUENCES = [
    "😀",
    "😂",
    "🤖",
    "🚀",
    "❤️",
    "👍🏻",
    "👍🏽",
    "👍🏿",
    "👩‍💻",
    "👨‍👩‍👧‍👦",
    "🏳️‍🌈",
    "🇫🇷",
    "🇯🇵",
    "🇧🇷",
    "1️⃣",
    "#️⃣",
    "🧑🏾‍🚀",
    "👁️‍🗨️",
    "🐍",
    "✨",
    "☕",
]
_WHITESPACE = [
    " ",
    "  ",
    "    ",
    "\t",
    "\t\t",
    "\n",
    "\n\n",
    "\n\n\n",
    "\r\n",
    " \n",
    "\u00a0",
    "\u3000",
]
_PUNCTUATION = [
    ", ",
    ". ",
    "，",
    "。",
    "！",
    "？",
    "、",
    " - ",
    "...",
    ": ",
    "; ",
    "() ",
    "«»",
    "\"'",
]


def mixed_text(
    n_bytes: int,
    seed: int = 0,
    special_tokens: Sequence[str] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
) -> str:
    """At least ``n_bytes`` of UTF-8 text mixing everything a tokenizer must handle.

    Blocks drawn with a ``random.Random(seed)``: English (slices of the standard library's
    docstrings), Python code (slices of its source files), Chinese (:data:`CHINESE_PROSE`
    paragraphs), random words in CJK, Hangul, Arabic, Devanagari, Cyrillic, Greek and Thai,
    emoji sequences (ZWJ families, skin tones, flags, keycaps), whitespace runs (tabs,
    ``\\r\\n``, no-break and ideographic spaces), numbers, the :data:`EDGE_CASES` and the
    given special tokens. The same arguments give the same text on the same Python (the
    English and code come from its standard library).
    """
    n_bytes = require_positive_int(n_bytes, "n_bytes")
    seed = require_int(seed, "seed", None)  # random.Random takes no numpy ints
    specials = _require_special_tokens(special_tokens)
    from llmlab.data import code_corpus, docstring_corpus

    budget = max(200_000, 2 * n_bytes)  # parse only what we might use
    prose = docstring_corpus(max_bytes=budget).documents
    code = code_corpus(max_bytes=budget).documents
    paragraphs = [p for p in CHINESE_PROSE.split("\n\n") if p.strip()]
    # Special tokens come only from ``special_tokens``: the "special tokens" edge case is left out.
    edge_cases = [t for name, t in EDGE_CASES.items() if t and name != "special tokens"]
    rng = random.Random(seed)

    def slice_of(doc: str, lo: int, hi: int) -> str:
        if len(doc) <= lo:
            return doc
        length = rng.randint(lo, min(hi, len(doc)))
        start = rng.randint(0, len(doc) - length)
        return doc[start : start + length]

    def random_words() -> str:
        spans = _SCRIPTS[rng.choice(sorted(_SCRIPTS))]
        words = []
        for _ in range(rng.randint(3, 30)):
            word = "".join(chr(rng.randint(*rng.choice(spans))) for _ in range(rng.randint(1, 6)))
            words.append(word + (rng.choice(_PUNCTUATION) if rng.random() < 0.2 else " "))
        return "".join(words)

    def numbers() -> str:
        return " ".join(
            rng.choice(
                [
                    str(rng.randint(0, 10 ** rng.randint(1, 12))),
                    f"{rng.random() * 1e3:.4f}",
                    f"{rng.randint(1, 31)}/{rng.randint(1, 12)}/{rng.randint(1900, 2100)}",
                ]
            )
            for _ in range(rng.randint(2, 12))
        )

    makers = [
        (34, lambda: slice_of(rng.choice(prose), 100, 2000)),
        (30, lambda: slice_of(rng.choice(code), 100, 3000)),
        (10, lambda: rng.choice(paragraphs)),
        (12, random_words),
        (4, lambda: " ".join(rng.choice(_EMOJI_SEQUENCES) for _ in range(rng.randint(1, 12)))),
        (3, lambda: "".join(rng.choice(_WHITESPACE) for _ in range(rng.randint(1, 8)))),
        (3, numbers),
        (2, lambda: rng.choice(edge_cases)),
        (2, lambda: rng.choice(specials) if specials else ""),
    ]
    weights = [w for w, _ in makers]
    parts: list[str] = []
    size = 0
    while size < n_bytes:
        ((_, make),) = rng.choices(makers, weights=weights)
        block = make() + rng.choice(["", " ", "\n", "\n\n"])
        parts.append(block)
        size += len(block.encode("utf-8"))
    return "".join(parts)
