"""The checks of chapter 02's BPE lab (llmlab.checks.model_families.bpe).

For every check: the reference passes, other correct answers pass too, plausible wrong answers
(mutants) fail on the case that exposes them, a NotImplementedError stub reports "not
implemented", garbage never raises, and the notebook's global seed does not move.
"""

from __future__ import annotations

from collections import Counter

from check_contract import CheckContract

from llmlab.checks.model_families import bpe as tk
from llmlab.tokenization import BPETokenizer, bytes_to_unicode, pretokenize, train_bpe

CHECKS = {
    "check_get_pair_counts": (tk.check_get_pair_counts, tk.reference_get_pair_counts),
    "check_merge_pair": (tk.check_merge_pair, tk.reference_merge_pair),
    "check_train_bpe": (tk.check_train_bpe, tk.reference_train_bpe),
    "check_encode": (tk.check_encode, tk.reference_encode),
    "check_decode": (tk.check_decode, tk.reference_decode),
}


GARBAGE = {
    "returns a number": lambda *a, **k: 3,
    "returns a string": lambda *a, **k: "tokens",
    "returns bytes": lambda *a, **k: b"tokens",
    "returns a list of str": lambda *a, **k: ["a", "b"],
    "returns a list of None": lambda *a, **k: [None, None],
    "returns a dict of str": lambda *a, **k: {"ab": 1},
    "returns an empty dict": lambda *a, **k: {},
    "returns a set": lambda *a, **k: {1, 2},
    "returns its first input": lambda x, *a, **k: x,
    "takes no arguments": lambda: [],
    "is not a function (a list)": [1, 2],
}


class TestContract(CheckContract):
    MODULES = (tk,)
    CHECKS = CHECKS
    GARBAGE = GARBAGE
    MIN_CASES = 8


# --------------------------------------------------------------------------------------------
# get_pair_counts


def counts_counter(words):
    counts = Counter()
    for word, freq in words.items():
        for pair in zip(word, word[1:], strict=False):
            counts[pair] += freq
    return counts


def counts_ignore_frequency(words):
    counts = {}
    for word in words:
        for pair in zip(word, word[1:], strict=False):
            counts[pair] = counts.get(pair, 0) + 1
    return counts


def counts_once_per_word(words):
    counts = {}
    for word, freq in words.items():
        for pair in set(zip(word, word[1:], strict=False)):
            counts[pair] = counts.get(pair, 0) + freq
    return counts


def counts_non_overlapping(words):
    counts = {}
    for word, freq in words.items():
        i = 0
        while i + 1 < len(word):
            pair = (word[i], word[i + 1])
            counts[pair] = counts.get(pair, 0) + freq
            i += 2 if word[i] == word[i + 1] else 1
    return counts


def counts_across_words(words):
    flat = [i for word in words for i in word]
    return {
        p: sum(1 for q in zip(flat, flat[1:], strict=False) if q == p)
        for p in zip(flat, flat[1:], strict=False)
    }


def counts_reversed_pairs(words):
    counts = {}
    for word, freq in words.items():
        for a, b in zip(word, word[1:], strict=False):
            counts[b, a] = counts.get((b, a), 0) + freq
    return counts


# --------------------------------------------------------------------------------------------
# merge_pair


def merge_list_comprehension(word, pair, new_id):
    out, skip = [], False
    for i, token in enumerate(word):
        if skip:
            skip = False
        elif i + 1 < len(word) and (token, word[i + 1]) == tuple(pair):
            out.append(new_id)
            skip = True
        else:
            out.append(token)
    return out


def merge_first_only(word, pair, new_id):
    for i in range(len(word) - 1):
        if (word[i], word[i + 1]) == pair:
            return word[:i] + [new_id] + word[i + 2 :]
    return list(word)


def merge_right_to_left(word, pair, new_id):
    out, i = [], len(word) - 1
    while i >= 0:
        if i > 0 and (word[i - 1], word[i]) == pair:
            out.append(new_id)
            i -= 2
        else:
            out.append(word[i])
            i -= 1
    return out[::-1]


def merge_step_one(word, pair, new_id):
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(new_id)
        else:
            out.append(word[i])
        i += 1
    return out


def merge_drops_last(word, pair, new_id):
    out, i = [], 0
    while i + 1 < len(word):
        if (word[i], word[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def merge_in_place(word, pair, new_id):
    i = 0
    while i + 1 < len(word):
        if (word[i], word[i + 1]) == pair:
            word[i : i + 2] = [new_id]
        i += 1
    return word


def merge_unordered_pair(word, pair, new_id):
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and {word[i], word[i + 1]} == set(pair):
            out.append(new_id)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


# --------------------------------------------------------------------------------------------
# train_bpe


def _train(
    text,
    n_merges,
    pick=None,
    pre=True,
    count=tk.reference_get_pair_counts,
    merge=tk.reference_merge_pair,
    first_id=256,
):
    pieces = pretokenize(text) if pre else [text]
    words = Counter(tuple(p.encode("utf-8")) for p in pieces if p)
    merges = []
    for i in range(n_merges):
        counts = count(dict(words))
        if not counts:
            break
        best = pick(counts) if pick else min(counts, key=lambda p: (-counts[p], p))
        new = Counter()
        for word, freq in words.items():
            new[tuple(merge(list(word), best, first_id + i))] += freq
        words = new
        merges.append(best)
    return merges


def train_correct_variant(text, n_merges):
    return [list(p) for p in _train(text, n_merges)]  # lists instead of tuples are fine


def train_max_first_seen(text, n_merges):
    return _train(text, n_merges, pick=lambda c: max(c, key=c.get))


def train_largest_pair_on_tie(text, n_merges):
    return _train(text, n_merges, pick=lambda c: max(c, key=lambda p: (c[p], p)))


def train_no_pretokenization(text, n_merges):
    return _train(text, n_merges, pre=False)


def train_split_on_spaces(text, n_merges):
    words = Counter(tuple(w.encode("utf-8")) for w in text.split())
    merges = []
    for i in range(n_merges):
        counts = tk.reference_get_pair_counts(dict(words))
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        words = Counter(
            {tuple(tk.reference_merge_pair(list(w), best, 256 + i)): f for w, f in words.items()}
        )
        merges.append(best)
    return merges


def train_ids_from_255(text, n_merges):
    return _train(text, n_merges, first_id=255)


def train_overlapping_counts_off(text, n_merges):
    return _train(text, n_merges, count=counts_non_overlapping)


def train_keeps_going_with_empty_pairs(text, n_merges):
    merges = _train(text, n_merges)
    return merges + [(0, 0)] * (n_merges - len(merges))


def train_counts_after_merging(text, n_merges):
    # Tests the number of merges after adding one: n_merges = 0 still gets one merge.
    words = Counter(tuple(p.encode("utf-8")) for p in pretokenize(text))
    merges = []
    while True:
        counts = tk.reference_get_pair_counts(dict(words))
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        new_id = 256 + len(merges)
        words = Counter(
            {tuple(tk.reference_merge_pair(list(w), best, new_id)): f for w, f in words.items()}
        )
        merges.append(best)
        if len(merges) >= n_merges:
            break
    return merges


def train_chars_not_bytes(text, n_merges):
    words = Counter(tuple(ord(c) for c in p) for p in pretokenize(text))
    merges = []
    for i in range(n_merges):
        counts = tk.reference_get_pair_counts(dict(words))
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        new = Counter()
        for w, f in words.items():
            new[tuple(tk.reference_merge_pair(list(w), best, 256 + i))] += f
        words = new
        merges.append(best)
    return merges


# --------------------------------------------------------------------------------------------
# encode


def encode_rank_loop(text, merges):
    """Correct too: apply every merge in rank order over the whole piece."""
    ids = []
    for piece in pretokenize(text):
        word = list(piece.encode("utf-8"))
        for rank, pair in enumerate(merges):
            word = tk.reference_merge_pair(word, tuple(pair), 256 + rank)
        ids.extend(word)
    return ids


def _encode_pick(text, merges, choose):
    ranks = {tuple(p): r for r, p in enumerate(merges)}
    ids = []
    for piece in pretokenize(text):
        word = list(piece.encode("utf-8"))
        while True:
            candidates = [p for p in zip(word, word[1:], strict=False) if p in ranks]
            if not candidates:
                break
            pair = choose(candidates)
            word = tk.reference_merge_pair(word, pair, 256 + ranks[pair])
        ids.extend(word)
    return ids


def encode_leftmost_pair(text, merges):
    return _encode_pick(text, merges, lambda c: c[0])


def encode_most_frequent_pair(text, merges):
    return _encode_pick(text, merges, lambda c: Counter(c).most_common(1)[0][0])


def encode_no_pretokenization(text, merges):
    ranks = {tuple(p): r for r, p in enumerate(merges)}
    word = list(text.encode("utf-8"))
    while len(word) > 1:
        rank, pair = min((ranks.get(p, len(ranks)), p) for p in zip(word, word[1:], strict=False))
        if rank == len(ranks):
            break
        word = tk.reference_merge_pair(word, pair, 256 + rank)
    return word


def encode_chars(text, merges):
    return [ord(c) for c in text]


def encode_one_pass(text, merges):
    """Merges each pair only once, in rank order, but with a single scan: misses chains."""
    ids = []
    for piece in pretokenize(text):
        word = list(piece.encode("utf-8"))
        ranks = {tuple(p): r for r, p in enumerate(merges)}
        if len(word) > 1:
            rank, pair = min(
                (ranks.get(p, len(ranks)), p) for p in zip(word, word[1:], strict=False)
            )
            if rank < len(ranks):
                word = tk.reference_merge_pair(word, pair, 256 + rank)
        ids.extend(word)
    return ids


# --------------------------------------------------------------------------------------------
# decode


def decode_join_then_decode(ids, vocab):
    data = bytearray()
    for i in ids:
        data += vocab[i]
    return bytes(data).decode("utf-8", "replace")


def decode_per_token(ids, vocab):
    return "".join(vocab[i].decode("utf-8", errors="replace") for i in ids)


def decode_ignore_errors(ids, vocab):
    return b"".join(vocab[i] for i in ids).decode("utf-8", errors="ignore")


def decode_strict(ids, vocab):
    return b"".join(vocab[i] for i in ids).decode("utf-8")


def decode_latin1(ids, vocab):
    return b"".join(vocab[i] for i in ids).decode("latin-1")


def decode_chr(ids, vocab):
    return "".join(chr(i) for i in ids)


# --------------------------------------------------------------------------------------------
# Correct variants pass; each mutant fails on the case that exposes it

CORRECT_VARIANTS = [
    ("check_get_pair_counts", counts_counter),
    ("check_merge_pair", merge_list_comprehension),
    ("check_train_bpe", train_correct_variant),
    ("check_encode", encode_rank_loop),
    ("check_decode", decode_join_then_decode),
]


MUTANTS = [
    # (check, mutant, the first case that must fail, words the message must contain)
    ("check_get_pair_counts", counts_ignore_frequency, "frequencies multiply", "expected count"),
    (
        "check_get_pair_counts",
        counts_once_per_word,
        "(7, 7, 7): a repeated pair overlaps",
        "expected count 2, received 1",
    ),
    (
        "check_get_pair_counts",
        counts_non_overlapping,
        "(7, 7, 7): a repeated pair overlaps",
        "expected count 2, received 1",
    ),
    ("check_get_pair_counts", counts_across_words, "frequencies multiply", "expected count"),
    ("check_get_pair_counts", counts_reversed_pairs, "one word, frequency 1", "missing"),
    ("check_merge_pair", merge_first_only, "several occurrences", "expected [9, 5, 9]"),
    (
        "check_merge_pair",
        merge_right_to_left,
        "[7, 7, 7]: leftmost occurrence first",
        "expected [256, 7]",
    ),
    ("check_merge_pair", merge_step_one, "pair in the middle", "expected [1, 99, 4]"),
    ("check_merge_pair", merge_drops_last, "pair in the middle", "expected [1, 99, 4]"),
    ("check_merge_pair", merge_in_place, "pair in the middle", "in place"),
    (
        "check_merge_pair",
        merge_unordered_pair,
        "the reversed pair is a different pair",
        "expected [2, 300, 1]",
    ),
    (
        "check_train_bpe",
        train_max_first_seen,
        "'aaabdaaabac', 3 merges",
        "expected the pair (97, 98)",
    ),
    (
        "check_train_bpe",
        train_largest_pair_on_tie,
        "'aaabdaaabac', 3 merges",
        "expected the pair (97, 98)",
    ),
    (
        "check_train_bpe",
        train_no_pretokenization,
        "words never merge across pieces: 'ab ab ab', 4 merges",
        "expected",
    ),
    (
        "check_train_bpe",
        train_split_on_spaces,
        "a tie: 'ba ab', 1 merge",
        "expected the pair (32, 97)",
    ),
    ("check_train_bpe", train_ids_from_255, "'aaabdaaabac', 3 merges", "expected the pair"),
    (
        "check_train_bpe",
        train_overlapping_counts_off,
        "overlaps count: 'aaa xy', 1 merge",
        "expected the pair (97, 97)",
    ),
    (
        "check_train_bpe",
        train_keeps_going_with_empty_pairs,
        "words never merge across pieces: 'ab ab ab', 4 merges",
        "expected 2 merges, received 4",
    ),
    (
        "check_train_bpe",
        train_counts_after_merging,
        "no merge asked: 'abc abc', 0 merges",
        "expected 0 merges, received 1",
    ),
    (
        "check_train_bpe",
        train_chars_not_bytes,
        "multi-byte UTF-8: 'héllo héllo wörld', 5 merges",
        "expected the pair",
    ),
    ("check_encode", encode_leftmost_pair, "rank decides: 'abc'", "expected [97, 256]"),
    ("check_encode", encode_most_frequent_pair, "rank decides: 'abc'", "expected [97, 256]"),
    ("check_encode", encode_no_pretokenization, "merges stay inside pieces: 'the cat'", "expected"),
    ("check_encode", encode_chars, "one merge", "expected"),
    ("check_encode", encode_one_pass, "rank, not frequency: 'ababc'", "expected [257, 97, 256]"),
    ("check_decode", decode_per_token, "'é' split over two tokens", "expected 'é'"),
    ("check_decode", decode_ignore_errors, "cut in the middle of a character", "expected"),
    ("check_decode", decode_strict, "cut in the middle of a character", "UnicodeDecodeError"),
    ("check_decode", decode_latin1, "'é' split over two tokens", "expected 'é'"),
    ("check_decode", decode_chr, "merged tokens", "expected"),
]


# --------------------------------------------------------------------------------------------
# Answers that call a library tokenizer: flagged (each translates between the library's
# byte-character tokens and the lab's ids, so they would otherwise pass)

BYTE_CHARS = bytes_to_unicode()


def train_with_the_library(text, n_merges):
    tokenizer = train_bpe(text, 256 + n_merges)
    ids = {BYTE_CHARS[b]: b for b in range(256)}
    merges = []
    for left, right in tokenizer.merges:
        merges.append((ids[left], ids[right]))
        ids[left + right] = 255 + len(merges)
    return merges


def _library_tokenizer(merges):
    tokens = {i: BYTE_CHARS[i] for i in range(256)}
    pairs = []
    for i, (left, right) in enumerate(merges):
        tokens[256 + i] = tokens[left] + tokens[right]
        pairs.append((tokens[left], tokens[right]))
    return BPETokenizer({t: i for i, t in tokens.items()}, pairs)


def encode_with_the_library(text, merges):
    return _library_tokenizer(merges).encode(text)


def decode_with_the_library(ids, vocab):
    chars = {i: "".join(BYTE_CHARS[b] for b in token) for i, token in vocab.items()}
    return BPETokenizer({c: i for i, c in chars.items()}, []).decode(ids)


FORBIDDEN = [
    # (check, an answer that calls a forbidden op, the op as the message names it)
    ("check_train_bpe", train_with_the_library, "llmlab.tokenization.train_bpe"),
    ("check_encode", encode_with_the_library, "llmlab.tokenization.BPETokenizer.__init__"),
    ("check_decode", decode_with_the_library, "llmlab.tokenization.BPETokenizer.__init__"),
]


def test_the_library_answers_would_pass_unflagged(monkeypatch):
    # What FORBIDDEN flags is a real shortcut: without the forbid lists, these pass.
    monkeypatch.setattr(tk, "FORBID_TOKENIZERS", ())
    assert tk.check_encode(encode_with_the_library).passed
    assert tk.check_decode(decode_with_the_library).passed


def test_case_hints_point_at_the_mistake():
    assert "(7, 7, 7) holds (7, 7) twice" in tk.check_get_pair_counts(counts_once_per_word).message
    assert "skip BOTH ids" in tk.check_merge_pair(merge_right_to_left).message
    assert "smallest pair" in tk.check_train_bpe(train_max_first_seen).message
    assert "LOWEST RANK" in tk.check_encode(encode_most_frequent_pair).message
    assert "join the BYTES" in tk.check_decode(decode_per_token).message


def test_reference_examples():
    assert tk.reference_get_pair_counts({(7, 7, 7): 2, (1, 2): 1}) == {(7, 7): 4, (1, 2): 1}
    assert tk.reference_merge_pair([7, 7, 7, 7, 7], (7, 7), 256) == [256, 256, 7]
    assert tk.reference_train_bpe("aaabdaaabac", 3) == [(97, 97), (97, 98), (256, 257)]
    assert tk.reference_encode("ababc", [(98, 99), (97, 98)]) == [257, 97, 256]
    vocab = tk.build_vocab([(97, 97), (256, 97)])
    assert vocab[257] == b"aaa"
    assert tk.reference_decode([0xC3, 0xA9, 257, 0xE5], vocab) == "éaaa\ufffd"
