"""Checks of chapter 02's BPE lab (``solutions/02_model_families/01_bpe.ipynb``): pair counts,
one merge, the training loop, encode, decode.

The lab's BPE is the plain textbook version: tokens are ids, the 256 byte values are ids 0-255,
and merge ``i`` (a pair of ids) creates id ``256 + i``. Text is pre-tokenized with GPT-2's
pattern (:func:`llmlab.tokenization.pretokenize`) and merges never cross a piece. Training picks
the most frequent pair; a tie goes to the smallest pair ``(left, right)``.

    lab 01_bpe: get_pair_counts, merge_pair, train_bpe, encode, decode

The references are written out: :class:`llmlab.tokenization.BPETokenizer` numbers its ids
differently (special tokens first, the bytes in GPT-2's :func:`~llmlab.tokenization.byte_order`,
tokens stored as strings of byte characters), so its merges are not the lab's ``256 + i`` ids.

Each ``check_NAME(fn)`` compares ``fn`` with ``reference_NAME`` on named cases (empty input,
ties, "aaaa" where merges must not overlap, multi-byte UTF-8 split over tokens ...), prints one
line and returns a :class:`llmlab.checks.CheckResult` whose ``.fn`` the lab keeps using.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from llmlab.checks import Case, CheckResult, describe, run_check
from llmlab.tokenization import CHINESE_PROSE, pretokenize

Pair = tuple[int, int]

#: Library tokenizers that train, encode or decode for the student: an answer that calls one is
#: flagged. ``pretokenize`` stays allowed (the lab uses it).
FORBID_TOKENIZERS = (
    "llmlab.tokenization.BPETokenizer",
    "llmlab.tokenization.train_bpe",
    "llmlab.tokenization.train_bpe_with_tokenizers",
    "llmlab.tokenization.tokenizers_merges",
    "tokenizers",
)

# --------------------------------------------------------------------------------------------
# References


def reference_get_pair_counts(words: dict[tuple[int, ...], int]) -> dict[Pair, int]:
    """How often each adjacent pair occurs, over words given as ``{ids: frequency}``.

    Every adjacent position counts, so the word (7, 7, 7) holds the pair (7, 7) twice, and a
    word that occurs ``n`` times adds ``n`` per position. Pairs never span two words.
    """
    counts: dict[Pair, int] = {}
    for word, freq in words.items():
        for pair in zip(word, word[1:], strict=False):
            counts[pair] = counts.get(pair, 0) + freq
    return counts


def reference_merge_pair(word: list[int], pair: Pair, new_id: int) -> list[int]:
    """A new list where each occurrence of ``pair`` is replaced by ``new_id``, left to right.

    Occurrences do not overlap: [7, 7, 7] with (7, 7) gives [new_id, 7].
    """
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == pair[0] and word[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def reference_train_bpe(text: str, n_merges: int) -> list[Pair]:
    """The first ``n_merges`` merges of byte-level BPE on ``text`` (fewer if no pair is left).

    Merge ``i`` creates id ``256 + i``. Each step merges the most frequent pair; ties go to the
    smallest pair ``(left, right)``.
    """
    words: dict[tuple[int, ...], int] = {}
    for piece in pretokenize(text):
        key = tuple(piece.encode("utf-8"))
        words[key] = words.get(key, 0) + 1
    merges: list[Pair] = []
    for i in range(n_merges):
        counts = reference_get_pair_counts(words)
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        merged: dict[tuple[int, ...], int] = {}
        for word, freq in words.items():
            key = tuple(reference_merge_pair(list(word), best, 256 + i))
            merged[key] = merged.get(key, 0) + freq
        words = merged
        merges.append(best)
    return merges


def reference_encode(text: str, merges: list[Pair]) -> list[int]:
    """The ids of ``text``: each pre-token's UTF-8 bytes, then merges applied by rank.

    In each piece, repeatedly merge the adjacent pair of lowest rank (its index in ``merges``)
    until no adjacent pair is a merge. Merge ``i`` creates id ``256 + i``.
    """
    ranks = {tuple(pair): rank for rank, pair in enumerate(merges)}
    ids: list[int] = []
    for piece in pretokenize(text):
        word = list(piece.encode("utf-8"))
        while len(word) > 1:
            pairs = [(ranks.get(p, len(ranks)), p) for p in zip(word, word[1:], strict=False)]
            rank, pair = min(pairs)
            if rank == len(ranks):
                break
            word = reference_merge_pair(word, pair, 256 + rank)
        ids.extend(word)
    return ids


def reference_decode(ids: list[int], vocab: dict[int, bytes]) -> str:
    """The text of ``ids``: all their bytes joined first, then decoded as UTF-8.

    Broken UTF-8 (a sequence cut inside a character) decodes to U+FFFD ("replace").
    """
    return b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")


def build_vocab(merges: list[Pair]) -> dict[int, bytes]:
    """Id -> bytes for the 256 bytes and every merge (merge ``i`` is id ``256 + i``)."""
    vocab = {i: bytes([i]) for i in range(256)}
    for i, (left, right) in enumerate(merges):
        vocab[256 + i] = vocab[left] + vocab[right]
    return vocab


# --------------------------------------------------------------------------------------------
# Comparing results in words


def _compare_counts(received: Any, expected: dict[Pair, int]) -> str | None:
    if not isinstance(received, dict):
        return f"expected a dict {{pair: count}}, received {describe(received)}"
    got = {}
    for pair, count in received.items():
        if not isinstance(pair, tuple) or len(pair) != 2:
            return f"keys must be pairs (a, b) of ids, received the key {pair!r}"
        got[pair] = count
    for pair, count in expected.items():
        if pair not in got:
            return f"the pair {pair} is missing (expected count {count})"
        if got[pair] != count:
            return f"the pair {pair}: expected count {count}, received {got[pair]!r}"
    extra = [p for p in got if p not in expected and got[p] != 0]
    if extra:
        return f"the pair {extra[0]} does not occur in any word, yet has count {got[extra[0]]!r}"
    return None


def _compare_ids(received: Any, expected: list[int]) -> str | None:
    if not isinstance(received, (list, tuple)):
        return f"expected a list of ids, received {describe(received)}"
    received = list(received)
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in received):
        bad = next(i for i in received if not isinstance(i, int) or isinstance(i, bool))
        return f"expected ints, received an element {bad!r}"
    if received == expected:
        return None
    at = next(
        (k for k, (a, b) in enumerate(zip(received, expected, strict=False)) if a != b),
        min(len(received), len(expected)),
    )
    return (
        f"expected {_short_list(expected)}, received {_short_list(received)} "
        f"(first difference at position {at})"
    )


def _compare_merges(received: Any, expected: list[Pair]) -> str | None:
    if not isinstance(received, (list, tuple)):
        return f"expected a list of pairs, received {describe(received)}"
    got = []
    for item in received:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            return f"expected pairs (a, b) of ids, received an element {item!r}"
        got.append(tuple(item))
    if len(got) != len(expected):
        return f"expected {len(expected)} merges, received {len(got)}"
    for rank, (a, b) in enumerate(zip(got, expected, strict=True)):
        if a != b:
            return f"merge {rank} (id {256 + rank}): expected the pair {b}, received {a}"
    return None


def _compare_text(received: Any, expected: str) -> str | None:
    if not isinstance(received, str):
        return f"expected a str, received {describe(received)}"
    if received == expected:
        return None
    return f"expected {_short_text(expected)}, received {_short_text(received)}"


def _short_list(values: list[Any], limit: int = 12) -> str:
    if len(values) <= limit:
        return str(values)
    return f"[{', '.join(map(str, values[:limit]))}, ...] ({len(values)} ids)"


def _short_text(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


# --------------------------------------------------------------------------------------------
# Inputs


def _words(text: str) -> dict[tuple[int, ...], int]:
    words: dict[tuple[int, ...], int] = {}
    for piece in pretokenize(text):
        key = tuple(piece.encode("utf-8"))
        words[key] = words.get(key, 0) + 1
    return words


_PARAGRAPH = (
    "A tokenizer turns text into ids. The ids index a table of vectors, and the model never "
    "sees the text again. Byte pair encoding starts from bytes and merges the most frequent "
    "pair, again and again, until the vocabulary is as large as we want it to be."
)


# --------------------------------------------------------------------------------------------
# Checks


def check_get_pair_counts(get_pair_counts: Callable) -> CheckResult:
    """Check ``get_pair_counts(words) -> {(a, b): count}``; words maps id tuples to counts."""
    rng = random.Random(0)
    many = {
        tuple(rng.randrange(6) for _ in range(rng.randint(0, 8))): rng.randint(1, 9)
        for _ in range(40)
    }
    overlap_hint = (
        "count every adjacent position: the word (7, 7, 7) holds (7, 7) twice "
        "(zip(word, word[1:]) gives all of them)."
    )
    cases = [
        Case("one word, frequency 1", ({(1, 2, 3): 1},)),
        Case(
            "frequencies multiply",
            ({(1, 2): 5, (2, 1): 2, (1, 2, 1): 3},),
            hint="a word that occurs n times adds n for each of its pairs.",
        ),
        Case("(7, 7, 7): a repeated pair overlaps", ({(7, 7, 7): 1},), hint=overlap_hint),
        Case("(7, 7, 7, 7) three times", ({(7, 7, 7, 7): 3, (7,): 2},), hint=overlap_hint),
        Case(
            "pairs never span two words",
            ({(1, 2): 1, (3, 4): 1},),
            hint="count pairs inside each word only: words are separate sequences.",
        ),
        Case("words of one id or none", ({(5,): 4, (): 2},)),
        Case("empty input", ({},)),
        Case("the bytes of 'héllo wörld héllo'", (_words("héllo wörld héllo"),)),
        Case("40 random words", (many,)),
    ]
    return run_check(
        "get_pair_counts",
        get_pair_counts,
        reference_get_pair_counts,
        cases,
        compare=_compare_counts,
        hint="loop over words and their frequencies, then over adjacent pairs.",
    )


def check_merge_pair(merge_pair: Callable) -> CheckResult:
    """Check ``merge_pair(word, pair, new_id) -> list``: non-overlapping, left to right."""
    rng = random.Random(1)
    long_word = [rng.randrange(3) for _ in range(60)]
    overlap_hint = (
        "scan left to right and skip BOTH ids of a merged pair: [7, 7, 7] becomes "
        "[new_id, 7], [7, 7, 7, 7] becomes [new_id, new_id]."
    )
    cases = [
        Case("pair in the middle", ([1, 2, 3, 4], (2, 3), 99)),
        Case(
            "several occurrences",
            ([1, 2, 5, 1, 2], (1, 2), 9),
            hint="replace every occurrence, not only the first.",
        ),
        Case("[7, 7, 7]: leftmost occurrence first", ([7, 7, 7], (7, 7), 256), hint=overlap_hint),
        Case("[7, 7, 7, 7]: no overlap", ([7, 7, 7, 7], (7, 7), 256), hint=overlap_hint),
        Case("[7, 7, 7, 7, 7]", ([7, 7, 7, 7, 7], (7, 7), 256), hint=overlap_hint),
        Case("pair at both ends", ([1, 2, 3, 1, 2], (1, 2), 300)),
        Case("the reversed pair is a different pair", ([2, 1, 2, 1], (1, 2), 300)),
        Case("pair absent", ([4, 5, 6], (5, 4), 300)),
        Case("one id", ([4], (4, 4), 300)),
        Case("empty word", ([], (1, 2), 300)),
        Case("60 ids from 3 values", (long_word, (1, 1), 500)),
    ]
    return run_check(
        "merge_pair",
        merge_pair,
        reference_merge_pair,
        cases,
        compare=_compare_ids,
        hint="build a new list; do not change the word you were given.",
    )


def check_train_bpe(train_bpe: Callable) -> CheckResult:
    """Check ``train_bpe(text, n_merges) -> [(a, b), ...]``: merge i creates id 256 + i."""
    tie_hint = (
        "on a tie in count, take the smallest pair: min(counts, key=lambda p: "
        "(-counts[p], p)). max(counts, key=counts.get) picks whichever came first."
    )
    cases = [
        Case("'aaabdaaabac', 3 merges", ("aaabdaaabac", 3), hint=tie_hint),
        Case("a tie: 'ba ab', 1 merge", ("ba ab", 1), hint=tie_hint),
        Case(
            "overlaps count: 'aaa xy', 1 merge",
            ("aaa xy", 1),
            hint="count every adjacent position: 'aaa' holds the pair (a, a) twice.",
        ),
        Case(
            "'aaaa aaaa', 3 merges",
            ("aaaa aaaa", 3),
            hint="merges do not overlap: after merging (a, a), 'aaaa' is two tokens.",
        ),
        Case(
            "words never merge across pieces: 'ab ab ab', 4 merges",
            ("ab ab ab", 4),
            hint="pre-tokenize with pretokenize(text) and count pairs inside pieces only.",
        ),
        Case(
            "stops when no pair is left: 'ab', 5 merges",
            ("ab", 5),
            hint="stop early when no word has two tokens left (no pairs to count).",
        ),
        Case("empty text", ("", 3)),
        Case(
            "no merge asked: 'abc abc', 0 merges",
            ("abc abc", 0),
            hint="n_merges = 0 asks for no merge at all: test the count BEFORE merging "
            "(for i in range(n_merges)), not after.",
        ),
        Case(
            "multi-byte UTF-8: 'héllo héllo wörld', 5 merges",
            ("héllo héllo wörld", 5),
            hint="work on the UTF-8 bytes of each piece: list(piece.encode('utf-8')).",
        ),
        Case("a paragraph, 40 merges", (_PARAGRAPH, 40)),
        Case("Chinese, 20 merges", (CHINESE_PROSE[:150], 20)),
    ]
    return run_check(
        "train_bpe",
        train_bpe,
        reference_train_bpe,
        cases,
        compare=_compare_merges,
        hint="count pairs, take the most frequent, merge it into every word, "
        "give it id 256 + i, repeat.",
        forbid=FORBID_TOKENIZERS,
    )


def check_encode(encode: Callable) -> CheckResult:
    """Check ``encode(text, merges) -> ids``: bytes per pre-token, merges applied by rank."""
    trained = reference_train_bpe(_PARAGRAPH, 40)
    rank_hint = (
        "apply the merge of LOWEST RANK present in the piece first (its index in "
        "merges), not the leftmost pair and not the most frequent one."
    )
    cases = [
        Case("no merges", ("hi!", [])),
        Case("one merge", ("hello", [(108, 108)])),
        Case("rank decides: 'abc'", ("abc", [(98, 99), (97, 98)]), hint=rank_hint),
        Case("rank, not frequency: 'ababc'", ("ababc", [(98, 99), (97, 98)]), hint=rank_hint),
        Case("'aaa' merges from the left", ("aaa", [(97, 97)])),
        Case("merges that build on merges: 'aaaa'", ("aaaa", [(97, 97), (256, 256)])),
        Case(
            "merges stay inside pieces: 'the cat'",
            ("the cat", [(101, 32)]),
            hint="pre-tokenize first (pretokenize(text)) and encode each piece on its own.",
        ),
        Case(
            "multi-byte UTF-8: 'é'",
            ("é", [(0xC3, 0xA9)]),
            hint="start from the UTF-8 bytes (piece.encode('utf-8')), not from ord(char).",
        ),
        Case("empty text", ("", [(97, 98)])),
        Case("trained merges on new text", ("The model merges bytes into tokens.", trained)),
    ]
    return run_check(
        "encode",
        encode,
        reference_encode,
        cases,
        compare=_compare_ids,
        hint="for each piece: bytes, then repeatedly merge the lowest-rank pair.",
        forbid=FORBID_TOKENIZERS,
    )


def check_decode(decode: Callable) -> CheckResult:
    """Check ``decode(ids, vocab) -> str``: bytes joined, then UTF-8 with errors="replace"."""
    merges = reference_train_bpe(_PARAGRAPH + " héllo 字节 😀", 40)
    vocab = build_vocab(merges)
    join_hint = (
        "join the BYTES of all tokens first, then decode once: one character may be "
        "split over several tokens (b''.join(...).decode('utf-8', errors='replace'))."
    )
    emoji = list("😀".encode())
    cases = [
        Case("ASCII bytes", ([104, 105, 33], vocab)),
        Case("merged tokens", (reference_encode(_PARAGRAPH, merges), vocab)),
        Case("'é' split over two tokens", ([0xC3, 0xA9], vocab), hint=join_hint),
        Case("an emoji over four tokens", (emoji, vocab), hint=join_hint),
        Case("Chinese", (reference_encode("字节编码", merges), vocab), hint=join_hint),
        Case(
            "cut in the middle of a character",
            ([104, 0xE5, 0xAD], vocab),
            hint="broken UTF-8 becomes U+FFFD: decode with errors='replace'.",
        ),
        Case(
            "an invalid byte",
            ([0xFF, 104], vocab),
            hint="broken UTF-8 becomes U+FFFD: decode with errors='replace'.",
        ),
        Case("no ids", ([], vocab)),
    ]
    return run_check(
        "decode",
        decode,
        reference_decode,
        cases,
        compare=_compare_text,
        hint=join_hint,
        forbid=FORBID_TOKENIZERS,
    )
