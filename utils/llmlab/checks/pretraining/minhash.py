"""Checks of chapter 03's MinHash lab (``solutions/03_pretraining/01_minhash.ipynb``): shingles,
Jaccard, MinHash signatures, LSH buckets.

The lab finds near-duplicate documents the way large pretraining pipelines do, from scratch:

- ``shingle(text, k)``: the SET of word k-grams of a text. Words are ``re.findall(r"\\w+",
  text.lower())``; a k-gram is its words joined by one space. A text with fewer than k words
  (but at least one) gives one shingle, all its words; a text without words gives the empty set.
- ``jaccard(a, b)``: ``|a & b| / |a | b|``, and 1.0 for two empty sets.
- ``minhash_signature(shingle_hashes, a, b, p)``: for each hash function i, the minimum over
  the shingle hashes x of ``(a[i] * x + b[i]) % p``; a document without shingles gets ``p`` in
  every position.
- ``estimate_jaccard(sig1, sig2)``: the share of positions where two signatures agree.
- ``lsh_buckets(signatures, bands, rows)``: the candidate pairs ``(i, j)``, i < j, whose
  signatures agree on ALL ``rows`` values of at least one band (band ``t`` is the slice
  ``[t * rows, (t + 1) * rows)``).

These are the conventions of :mod:`llmlab.data.dedup` too, so a student's signatures equal
``llmlab.data.minhash_signatures`` for the same hash family, and ``shingle``, ``jaccard`` and
``lsh_buckets`` delegate to the library. ``minhash_signature`` and ``estimate_jaccard`` stay
written out: the library hashes whole documents with its own hash family and compares
signatures inside :func:`~llmlab.data.near_duplicate_pairs`, while the lab takes the shingle
hashes and the hash family as arguments.

Each ``check_NAME(fn)`` compares ``fn`` with ``reference_NAME`` on named cases, prints one line
and returns a :class:`llmlab.checks.CheckResult` whose ``.fn`` the lab keeps using.

    lab 01_minhash: shingle, jaccard, minhash_signature, estimate_jaccard, lsh_buckets
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from llmlab.checks import Case, CheckResult, describe, run_check
from llmlab.data import dedup

#: The prime of the hash family, just above every 32-bit shingle hash.
PRIME = dedup.HASH_PRIME

Pair = tuple[int, int]

#: Library near-duplicate detection: an answer that calls it is flagged. (minhash_signature and
#: estimate_jaccard have no library twin: the library hashes whole documents with its own family.)
FORBID_DEDUP = ("llmlab.data.dedup",)

# --------------------------------------------------------------------------------------------
# References


def reference_shingle(text: str, k: int) -> set[str]:
    """The set of word k-grams of ``text`` (lower-cased ``\\w+`` words joined by one space)."""
    return dedup.shingles(text, k)


def reference_jaccard(a: set, b: set) -> float:
    """|a & b| / |a | b|; two empty sets are identical (1.0)."""
    return dedup.jaccard(a, b)


def reference_minhash_signature(
    shingle_hashes: Sequence[int], a: Sequence[int], b: Sequence[int], p: int
) -> list[int]:
    """[min over x of (a[i] * x + b[i]) % p for each i]; [p] * len(a) without shingles."""
    if not shingle_hashes:
        return [p] * len(a)
    return [min((ai * x + bi) % p for x in shingle_hashes) for ai, bi in zip(a, b, strict=True)]


def reference_estimate_jaccard(sig1: Sequence[int], sig2: Sequence[int]) -> float:
    """The share of positions where the two signatures hold the same value."""
    return sum(x == y for x, y in zip(sig1, sig2, strict=True)) / len(sig1)


def reference_lsh_buckets(signatures: Sequence[Sequence[int]], bands: int, rows: int) -> set[Pair]:
    """Pairs (i, j), i < j, whose signatures agree on every row of at least one band."""
    index = dedup.LSHIndex(bands, rows)
    for doc, sig in enumerate(signatures):
        # the index keys a band by its bytes: int64 holds every value below PRIME exactly
        index.add(doc, np.asarray(sig, dtype=np.int64))
    return index.candidates()


def hash_family(num_perm: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """(a, b): ``num_perm`` hash functions h_i(x) = (a[i] x + b[i]) mod PRIME, drawn as
    :func:`llmlab.data.minhash_signatures` draws them (so signatures can be compared)."""
    rng = random.Random(seed)
    a = [rng.randrange(1, 1 << 31) for _ in range(num_perm)]
    b = [rng.randrange(0, 1 << 32) for _ in range(num_perm)]
    return a, b


# --------------------------------------------------------------------------------------------
# Comparing results in words


def _compare_shingles(received: Any, expected: set[str]) -> str | None:
    if not isinstance(received, (set, frozenset)):
        hint = (
            " (a list may repeat a k-gram; a set holds each once)"
            if isinstance(received, (list, tuple))
            else ""
        )
        return f"expected a set of shingles, received {describe(received)}{hint}"
    got = set()
    for item in received:
        if isinstance(item, tuple) and all(isinstance(w, str) for w in item):
            item = " ".join(item)  # tuples of words are fine too
        if not isinstance(item, str):
            return f"expected shingles as str (words joined by a space), received {item!r}"
        got.add(item)
    if got == expected:
        return None
    missing = sorted(expected - got)
    extra = sorted(got - expected)
    parts = [f"expected {len(expected)} shingles, received {len(got)}"]
    if missing:
        parts.append(f"missing e.g. {missing[0]!r}")
    if extra:
        parts.append(f"unexpected e.g. {extra[0]!r}")
    return "; ".join(parts)


def _compare_float(received: Any, expected: float) -> str | None:
    if isinstance(received, bool) or not isinstance(received, (int, float)):
        if hasattr(received, "item") and getattr(received, "ndim", 1) == 0:
            received = received.item()  # a numpy or torch scalar
        else:
            return f"expected a float, received {describe(received)}"
    if abs(float(received) - expected) <= 1e-9:
        return None
    return f"expected {expected:.6g}, received {float(received):.6g}"


def _as_int_list(values: Any) -> list[int] | str:
    if hasattr(values, "tolist"):  # numpy array or tensor
        values = values.tolist()
    if not isinstance(values, (list, tuple)):
        return f"expected a list of ints, received {describe(values)}"
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int):
            return f"expected ints, received an element {v!r}"
        out.append(v)
    return out


def _compare_signature(received: Any, expected: list[int]) -> str | None:
    got = _as_int_list(received)
    if isinstance(got, str):
        return got
    if len(got) != len(expected):
        return f"expected {len(expected)} values (one per hash function), received {len(got)}"
    for i, (x, y) in enumerate(zip(got, expected, strict=True)):
        if x != y:
            return f"position {i} (hash function {i}): expected {y}, received {x}"
    return None


def _compare_pairs(received: Any, expected: set[Pair]) -> str | None:
    if not isinstance(received, (set, frozenset, list, tuple)):
        return f"expected a set of pairs (i, j), received {describe(received)}"
    got = set()
    for item in received:
        if (
            not isinstance(item, (tuple, list))
            or len(item) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in item)
        ):
            return f"expected pairs (i, j) of document indices, received an element {item!r}"
        i, j = item
        if i == j:
            return f"a document paired with itself: {tuple(item)}"
        got.add((min(i, j), max(i, j)))
    missing = sorted(expected - got)
    extra = sorted(got - expected)
    if missing:
        return f"the pair {missing[0]} is missing ({len(expected)} expected, {len(got)} received)"
    if extra:
        return f"the pair {extra[0]} should not be a candidate ({len(expected)} expected, {len(got)} received)"
    return None


# --------------------------------------------------------------------------------------------
# Inputs

_SENTENCE = "The quick brown fox jumps over the lazy dog, and the quick brown fox sleeps."
_PARAGRAPH = (
    "MinHash turns a document into a short signature. Two signatures agree in a position with "
    "probability equal to the Jaccard similarity of the documents' shingle sets, so counting "
    "agreements estimates the similarity without comparing the sets themselves."
)


def _random_hashes(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(0, 1 << 32) for _ in range(n)]


# --------------------------------------------------------------------------------------------
# Checks


def check_shingle(shingle: Callable) -> CheckResult:
    """Check ``shingle(text, k) -> set[str]``: word k-grams, lower-cased, as a set."""
    word_hint = (
        "return the SET of WORD k-grams: words = re.findall(r'\\w+', text.lower()), "
        "then {' '.join(words[i:i + k]) for every start i}."
    )
    cases = [
        Case("five words, k=2", ("one two three four five", 2), hint=word_hint),
        Case(
            "every start position, k=3",
            ("a b c d e f", 3),
            hint="there are len(words) - k + 1 k-grams: range(len(words) - k + 1).",
        ),
        Case("k=1: the set of words", ("to be or not to be", 1)),
        Case(
            "a repeated k-gram counts once",
            ("to be or not to be or not", 2),
            hint="return a set: a k-gram that occurs twice is one shingle.",
        ),
        Case("case and punctuation ignored", (_SENTENCE, 3), hint=word_hint),
        Case("a paragraph, k=5", (_PARAGRAPH, 5)),
        Case(
            "fewer words than k: one shingle",
            ("only three words", 5),
            hint="a text shorter than k words is one shingle: all its words joined.",
        ),
        Case("exactly k words", ("exactly four words here", 4)),
        Case(
            "no words at all",
            ("... !!! ---", 3),
            hint="a text without words has no shingles: return set().",
        ),
        Case("empty text", ("", 2), hint="a text without words has no shingles: return set()."),
    ]
    return run_check(
        "shingle",
        shingle,
        reference_shingle,
        cases,
        compare=_compare_shingles,
        hint=word_hint,
        forbid=FORBID_DEDUP,
    )


def check_jaccard(jaccard: Callable) -> CheckResult:
    """Check ``jaccard(a, b) -> float``: intersection over union, 1.0 for two empty sets."""
    rng = random.Random(3)
    big_a = set(rng.sample(range(200), 80))
    big_b = set(rng.sample(range(200), 60))
    union_hint = "divide by the size of the UNION, len(a | b), not len(a) + len(b)."
    cases = [
        Case("half shared", ({1, 2, 3}, {2, 3, 4}), hint=union_hint),
        Case(
            "identical sets",
            ({"a b", "b c"}, {"a b", "b c"}),
            hint="identical sets have Jaccard 1.0: it is a similarity, not a distance.",
        ),
        Case("disjoint sets", ({1, 2}, {3, 4})),
        Case(
            "one inside the other",
            ({1, 2, 3, 4}, {1, 2}),
            hint="not the overlap over the smaller set: |a & b| / |a | b|.",
        ),
        Case("different sizes", ({"x", "y", "z", "w", "v"}, {"x", "q"}), hint=union_hint),
        Case("one empty set", ({1, 2}, set())),
        Case(
            "two empty sets",
            (set(), set()),
            hint="two empty sets are identical: return 1.0 (and never divide by zero).",
        ),
        Case("random sets of 80 and 60", (big_a, big_b), hint=union_hint),
    ]
    return run_check(
        "jaccard",
        jaccard,
        reference_jaccard,
        cases,
        compare=_compare_float,
        hint="len(a & b) / len(a | b).",
        forbid=FORBID_DEDUP,
    )


def check_minhash_signature(minhash_signature: Callable) -> CheckResult:
    """Check ``minhash_signature(shingle_hashes, a, b, p) -> list[int]``."""
    rng = random.Random(5)
    a8, b8 = hash_family(8, seed=1)
    a64, b64 = hash_family(64, seed=2)
    min_hint = (
        "for each hash function i: min((a[i] * x + b[i]) % p for x in shingle_hashes): "
        "the MINIMUM over the shingles, one value per hash function."
    )
    mod_hint = (
        "compute (a[i] * x + b[i]) % p for EACH hash function i, then the minimum over "
        "the shingles x: the modulo comes before the minimum (it reorders the values)."
    )
    cases = [
        Case("tiny: p = 7, one function", ([1, 2, 3], [3], [1], 7), hint=min_hint),
        Case("tiny: p = 11, two functions", ([4, 9], [2, 5], [3, 1], 11), hint=mod_hint),
        Case("one shingle, 8 functions", ([12345], a8, b8, PRIME)),
        Case("5 shingles, 8 functions", (_random_hashes(rng, 5), a8, b8, PRIME), hint=mod_hint),
        Case(
            "50 shingles, 64 functions", (_random_hashes(rng, 50), a64, b64, PRIME), hint=min_hint
        ),
        Case("repeated shingle hashes", ([7, 7, 7, 99], a8, b8, PRIME)),
        Case(
            "no shingles: p everywhere",
            ([], a8, b8, PRIME),
            hint="a document without shingles gets p in every position: [p] * len(a).",
        ),
    ]
    return run_check(
        "minhash_signature",
        minhash_signature,
        reference_minhash_signature,
        cases,
        compare=_compare_signature,
        hint=min_hint,
    )


def check_estimate_jaccard(estimate_jaccard: Callable) -> CheckResult:
    """Check ``estimate_jaccard(sig1, sig2) -> float``: the share of equal positions."""
    rng = random.Random(7)
    long1 = [rng.randrange(5) for _ in range(128)]
    long2 = [v if rng.random() < 0.6 else rng.randrange(5) for v in long1]
    position_hint = (
        "compare position by position: sum(x == y for x, y in zip(sig1, sig2)) / "
        "len(sig1), not the sets of values."
    )
    cases = [
        Case(
            "identical",
            ([1, 2, 3, 4], [1, 2, 3, 4]),
            hint="identical signatures estimate 1.0: count the agreeing positions, divide by "
            "len(sig1).",
        ),
        Case("half agree", ([1, 2, 3, 4], [1, 2, 9, 9])),
        Case("same values, other positions", ([1, 2, 3, 4], [4, 3, 2, 1]), hint=position_hint),
        Case("repeated values", ([5, 5, 5, 7], [5, 6, 6, 7]), hint=position_hint),
        Case("none agree", ([1, 2, 3], [4, 5, 6])),
        Case("one position", ([42], [42])),
        Case("128 positions from 5 values", (long1, long2), hint=position_hint),
    ]
    return run_check(
        "estimate_jaccard",
        estimate_jaccard,
        reference_estimate_jaccard,
        cases,
        compare=_compare_float,
        hint=position_hint,
    )


def check_lsh_buckets(lsh_buckets: Callable) -> CheckResult:
    """Check ``lsh_buckets(signatures, bands, rows) -> set of (i, j)`` with i < j."""
    rng = random.Random(11)
    band_hint = (
        "band t is sig[t * rows:(t + 1) * rows]; use the whole tuple of its values "
        "as the bucket key, with one dict of buckets per band."
    )
    many = [[rng.randrange(3) for _ in range(8)] for _ in range(30)]
    cases = [
        Case("two identical signatures", ([[1, 2, 3, 4], [1, 2, 3, 4]], 2, 2)),
        Case("match in the first band only", ([[1, 2, 3, 4], [1, 2, 8, 9], [7, 7, 7, 7]], 2, 2)),
        Case(
            "match in the LAST band only",
            ([[1, 2, 3, 4], [8, 9, 3, 4]], 2, 2),
            hint="loop over every band, not only the first.",
        ),
        Case(
            "agree on all but the band's last row",
            ([[1, 2, 3, 4, 5, 6], [1, 2, 9, 4, 5, 8]], 2, 3),
            hint="a band has exactly `rows` values: sig[t * rows:(t + 1) * rows]; ALL must agree.",
        ),
        Case(
            "agree on all but the band's first row",
            ([[1, 2, 3, 4, 5, 6], [9, 2, 3, 8, 5, 6]], 2, 3),
            hint="a band has exactly `rows` values: sig[t * rows:(t + 1) * rows]; ALL must agree.",
        ),
        Case(
            "same values in different bands",
            ([[1, 2, 3, 4], [3, 4, 1, 2]], 2, 2),
            hint="equal values in band 0 of one document and band 1 of another are no match: "
            "keep one dict of buckets per band.",
        ),
        Case(
            "same values in another order",
            ([[1, 2, 3, 4], [2, 1, 4, 3]], 2, 2),
            hint="the key is the tuple of the band's values in order, not their sum or set.",
        ),
        Case("three in one bucket", ([[5, 5, 1, 1], [5, 5, 2, 2], [5, 5, 3, 3]], 2, 2)),
        Case(
            "longer signature than bands * rows",
            ([[1, 2, 3, 4, 5], [0, 0, 0, 0, 5]], 2, 2),
            hint="only the first bands * rows values are used.",
        ),
        Case("one band of all rows", ([[1, 2, 3], [1, 2, 3], [1, 2, 4]], 1, 3)),
        Case("no documents", ([], 4, 2)),
        Case("30 random signatures, 4 bands of 2", (many, 4, 2), hint=band_hint),
    ]
    return run_check(
        "lsh_buckets",
        lsh_buckets,
        reference_lsh_buckets,
        cases,
        compare=_compare_pairs,
        hint=band_hint,
        forbid=FORBID_DEDUP,
    )
