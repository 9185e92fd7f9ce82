"""The checks of chapter 03's MinHash lab (llmlab.checks.pretraining.minhash).

For every check (through CheckContract): the reference passes, other correct answers
(CORRECT_VARIANTS) pass too, plausible wrong answers (MUTANTS) fail on the named case that
exposes them with the right hint, a NotImplementedError stub reports "not implemented",
garbage never raises, and the global seed does not move. The references also agree with
llmlab.data.dedup, so a student's MinHash equals the library's.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
from check_contract import CheckContract, student_copy

from llmlab import data
from llmlab.checks.pretraining import minhash as dd

CHECKS = {
    "check_shingle": (dd.check_shingle, dd.reference_shingle),
    "check_jaccard": (dd.check_jaccard, dd.reference_jaccard),
    "check_minhash_signature": (dd.check_minhash_signature, dd.reference_minhash_signature),
    "check_estimate_jaccard": (dd.check_estimate_jaccard, dd.reference_estimate_jaccard),
    "check_lsh_buckets": (dd.check_lsh_buckets, dd.reference_lsh_buckets),
}


GARBAGE = {
    "returns a number": lambda *a, **k: 3,
    "returns a bool": lambda *a, **k: True,
    "returns a string": lambda *a, **k: "shingles",
    "returns a list of str": lambda *a, **k: ["a", "b"],
    "returns a list of None": lambda *a, **k: [None, None],
    "returns an empty dict": lambda *a, **k: {},
    "returns a set of ints": lambda *a, **k: {1, 2},
    "returns its first input": lambda x, *a, **k: x,
    "takes no arguments": lambda: set(),
    "is not a function (a list)": [1, 2],
}


class TestContract(CheckContract):
    MODULES = (dd,)
    CHECKS = CHECKS
    GARBAGE = GARBAGE
    MIN_CASES = 7


def _fails(check, fn, case: str | None = None):
    result = check(fn)
    assert not result.passed, f"the mutant passed: {result.message}"
    if case is not None:
        assert result.failed_case == case, result.message
    return result


# --------------------------------------------------------------------------------------------
# shingle

WORD = re.compile(r"\w+")


def shingle_tuples(text, k):
    words = WORD.findall(text.lower())
    if len(words) < k:
        return {tuple(words)} if words else set()
    return {tuple(words[i : i + k]) for i in range(len(words) - k + 1)}


def shingle_characters(text, k):
    text = text.lower()
    return {text[i : i + k] for i in range(len(text) - k + 1)}


def shingle_list(text, k):  # overlapping count: a k-gram that repeats appears twice
    words = WORD.findall(text.lower())
    if len(words) < k:
        return [" ".join(words)] if words else []
    return [" ".join(words[i : i + k]) for i in range(len(words) - k + 1)]


def shingle_counter(text, k):
    return Counter(shingle_list(text, k))


def shingle_off_by_one(text, k):
    words = WORD.findall(text.lower())
    if len(words) < k:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + k]) for i in range(len(words) - k)}


def shingle_split_on_spaces(text, k):
    words = text.lower().split()
    if len(words) < k:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + k]) for i in range(len(words) - k + 1)}


def shingle_no_lower(text, k):
    words = WORD.findall(text)
    if len(words) < k:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + k]) for i in range(len(words) - k + 1)}


def shingle_short_text_empty(text, k):
    words = WORD.findall(text.lower())
    return {" ".join(words[i : i + k]) for i in range(len(words) - k + 1)}


def shingle_empty_string_shingle(text, k):
    words = WORD.findall(text.lower())
    if len(words) < k:
        return {" ".join(words)}
    return {" ".join(words[i : i + k]) for i in range(len(words) - k + 1)}


def shingle_concatenated(text, k):
    words = WORD.findall(text.lower())
    if len(words) < k:
        return {"".join(words)} if words else set()
    return {"".join(words[i : i + k]) for i in range(len(words) - k + 1)}


def test_shingle_equals_the_library():
    for text in (dd._PARAGRAPH, dd._SENTENCE, "short", ""):
        for k in (1, 3, 5):
            assert dd.reference_shingle(text, k) == data.shingles(text, k)


def test_shingle_list_mutant_is_told_about_sets():
    result = _fails(dd.check_shingle, shingle_list)
    assert "a set holds each once" in result.message


# --------------------------------------------------------------------------------------------
# jaccard


def jaccard_sum_denominator(a, b):
    return len(a & b) / (len(a) + len(b)) if a or b else 1.0


def jaccard_over_min(a, b):
    return len(a & b) / min(len(a), len(b)) if a and b else float(not a and not b)


def jaccard_zero_for_empty(a, b):
    return len(a & b) / len(a | b) if a | b else 0.0


def jaccard_divides_by_zero(a, b):
    return len(a & b) / len(a | b)


def jaccard_dice(a, b):
    return 2 * len(a & b) / (len(a) + len(b)) if a or b else 1.0


def jaccard_integer_division(a, b):
    return len(a & b) // len(a | b) if a | b else 1


def jaccard_as_distance(a, b):
    return 1 - len(a & b) / len(a | b) if a | b else 0.0


def jaccard_frozensets(a, b):  # a correct answer written differently
    union = frozenset(a) | frozenset(b)
    return 1.0 if not union else sum(1 for x in a if x in b) / len(union)


def test_jaccard_equals_the_library():
    for a, b in [({1, 2, 3}, {2, 3, 4}), (set(), set()), ({1}, set())]:
        assert dd.reference_jaccard(a, b) == data.jaccard(a, b)


# --------------------------------------------------------------------------------------------
# minhash_signature


def minhash_max(shingle_hashes, a, b, p):
    if not shingle_hashes:
        return [p] * len(a)
    return [max((ai * x + bi) % p for x in shingle_hashes) for ai, bi in zip(a, b, strict=True)]


def minhash_no_modulo(shingle_hashes, a, b, p):
    if not shingle_hashes:
        return [p] * len(a)
    return [min(ai * x + bi for x in shingle_hashes) for ai, bi in zip(a, b, strict=True)]


def minhash_modulo_after_min(shingle_hashes, a, b, p):
    if not shingle_hashes:
        return [p] * len(a)
    return [min(ai * x + bi for x in shingle_hashes) % p for ai, bi in zip(a, b, strict=True)]


def minhash_one_function(shingle_hashes, a, b, p):
    if not shingle_hashes:
        return [p] * len(a)
    value = min((a[0] * x + b[0]) % p for x in shingle_hashes)
    return [value] * len(a)


def minhash_without_b(shingle_hashes, a, b, p):
    if not shingle_hashes:
        return [p] * len(a)
    return [min((ai * x) % p for x in shingle_hashes) for ai in a]


def minhash_min_hash_value(shingle_hashes, a, b, p):  # hashes the smallest shingle hash only
    if not shingle_hashes:
        return [p] * len(a)
    x = min(shingle_hashes)
    return [(ai * x + bi) % p for ai, bi in zip(a, b, strict=True)]


def minhash_empty_list(shingle_hashes, a, b, p):
    return (
        [min((ai * x + bi) % p for x in shingle_hashes) for ai, bi in zip(a, b, strict=True)]
        if shingle_hashes
        else []
    )


def minhash_argmin(shingle_hashes, a, b, p):  # the index of the minimum, not its value
    if not shingle_hashes:
        return [p] * len(a)
    out = []
    for ai, bi in zip(a, b, strict=True):
        values = [(ai * x + bi) % p for x in shingle_hashes]
        out.append(values.index(min(values)))
    return out


def minhash_numpy(shingle_hashes, a, b, p):  # a correct vectorised answer
    if not shingle_hashes:
        return np.full(len(a), p, dtype=np.uint64)
    x = np.array(shingle_hashes, dtype=np.uint64)
    return (
        (np.array(a, dtype=np.uint64)[:, None] * x[None, :] + np.array(b, dtype=np.uint64)[:, None])
        % np.uint64(p)
    ).min(axis=1)


def test_reference_signatures_equal_the_library():
    texts = [dd._PARAGRAPH, dd._SENTENCE, "a b c", "..."]
    lib = data.minhash_signatures(texts, num_perm=16, k=3, seed=4)
    a, b = dd.hash_family(16, seed=4)
    for text, expected in zip(texts, lib, strict=True):
        hashes = data.shingle_hashes(text, 3)
        assert dd.reference_minhash_signature(hashes, a, b, dd.PRIME) == expected.tolist()


# --------------------------------------------------------------------------------------------
# estimate_jaccard


def estimate_as_sets(sig1, sig2):
    s1, s2 = set(sig1), set(sig2)
    return len(s1 & s2) / len(s1 | s2)


def estimate_count_not_share(sig1, sig2):
    return sum(x == y for x, y in zip(sig1, sig2, strict=True))


def estimate_disagreement(sig1, sig2):
    return sum(x != y for x, y in zip(sig1, sig2, strict=True)) / len(sig1)


def estimate_off_by_one(sig1, sig2):
    return sum(x == y for x, y in zip(sig1, sig2, strict=True)) / max(len(sig1) - 1, 1)


def estimate_membership(sig1, sig2):  # counts values of sig1 found anywhere in sig2
    return sum(x in sig2 for x in sig1) / len(sig1)


def estimate_numpy(sig1, sig2):  # a correct answer
    return float(np.mean(np.asarray(sig1) == np.asarray(sig2)))


# --------------------------------------------------------------------------------------------
# lsh_buckets


def _pairs(buckets):
    out = set()
    for members in buckets.values():
        for x in range(len(members)):
            for y in range(x + 1, len(members)):
                out.add((members[x], members[y]))
    return out


def lsh_first_band_only(signatures, bands, rows):
    buckets = {}
    for doc, sig in enumerate(signatures):
        buckets.setdefault(tuple(sig[:rows]), []).append(doc)
    return _pairs(buckets)


def _banded(name, key_fn):
    def lsh(signatures, bands, rows):
        pairs = set()
        for band in range(bands):
            buckets = {}
            for doc, sig in enumerate(signatures):
                buckets.setdefault(key_fn(sig, band, rows), []).append(doc)
            pairs |= _pairs(buckets)
        return pairs

    lsh.__name__ = name
    return lsh


lsh_slice_short = _banded("lsh_slice_short", lambda sig, t, r: tuple(sig[t * r : (t + 1) * r - 1]))
lsh_slice_shifted = _banded(
    "lsh_slice_shifted", lambda sig, t, r: tuple(sig[t * r + 1 : (t + 1) * r + 1])
)
lsh_slice_wrong_stride = _banded("lsh_slice_wrong_stride", lambda sig, t, r: tuple(sig[t : t + r]))
lsh_key_sum = _banded("lsh_key_sum", lambda sig, t, r: sum(sig[t * r : (t + 1) * r]))
lsh_key_set = _banded("lsh_key_set", lambda sig, t, r: frozenset(sig[t * r : (t + 1) * r]))
lsh_key_first_value = _banded("lsh_key_first_value", lambda sig, t, r: sig[t * r])
lsh_whole_signature = _banded("lsh_whole_signature", lambda sig, t, r: tuple(sig))


def lsh_one_dict_for_all_bands(signatures, bands, rows):
    buckets = {}
    for band in range(bands):
        for doc, sig in enumerate(signatures):
            buckets.setdefault(tuple(sig[band * rows : (band + 1) * rows]), []).append(doc)
    return _pairs({k: sorted(set(v)) for k, v in buckets.items()})


def lsh_any_row(signatures, bands, rows):  # a pair if ANY row of a band agrees
    pairs = set()
    for i in range(len(signatures)):
        for j in range(i + 1, len(signatures)):
            if any(signatures[i][x] == signatures[j][x] for x in range(bands * rows)):
                pairs.add((i, j))
    return pairs


def lsh_with_self_pairs(signatures, bands, rows):
    return set(lsh_all_pairs_compared(signatures, bands, rows)) | {
        (i, i) for i in range(len(signatures))
    }


def lsh_all_pairs_compared(signatures, bands, rows):  # correct, without buckets
    pairs = set()
    for i in range(len(signatures)):
        for j in range(i + 1, len(signatures)):
            if any(
                signatures[i][t * rows : (t + 1) * rows] == signatures[j][t * rows : (t + 1) * rows]
                for t in range(bands)
            ):
                pairs.add((j, i))  # the order inside a pair does not matter
    return list(pairs)


def test_reference_lsh_agrees_with_the_library_index():
    rng = np.random.default_rng(0)
    sigs = rng.integers(0, 3, size=(40, 12)).astype(np.uint64)
    index = data.LSHIndex(4, 3)
    for i, sig in enumerate(sigs):
        index.add(i, sig)
    assert dd.reference_lsh_buckets(sigs.tolist(), 4, 3) == index.candidates()


# --------------------------------------------------------------------------------------------
# What the contract runs: (check, correct variant) and (check, mutant, case, words in message)

CORRECT_VARIANTS = [
    ("check_shingle", shingle_tuples),
    ("check_jaccard", jaccard_frozensets),
    ("check_minhash_signature", minhash_numpy),
    ("check_estimate_jaccard", estimate_numpy),
    ("check_lsh_buckets", lsh_all_pairs_compared),
]

MUTANTS = [
    ("check_shingle", shingle_characters, "five words, k=2", "WORD k-grams"),
    ("check_shingle", shingle_list, "five words, k=2", "a set holds each once"),
    ("check_shingle", shingle_counter, "five words, k=2", "received a Counter"),
    ("check_shingle", shingle_off_by_one, "five words, k=2", "missing e.g. 'four five'"),
    ("check_shingle", shingle_split_on_spaces, "case and punctuation ignored", "re.findall"),
    ("check_shingle", shingle_no_lower, "case and punctuation ignored", "text.lower()"),
    ("check_shingle", shingle_concatenated, "five words, k=2", "' '.join"),
    (
        "check_shingle",
        shingle_short_text_empty,
        "fewer words than k: one shingle",
        "shorter than k words is one shingle",
    ),
    ("check_shingle", shingle_empty_string_shingle, "no words at all", "return set()"),
    ("check_jaccard", jaccard_sum_denominator, "half shared", "not len(a) + len(b)"),
    ("check_jaccard", jaccard_over_min, "half shared", "UNION"),
    ("check_jaccard", jaccard_dice, "half shared", "UNION"),
    ("check_jaccard", jaccard_integer_division, "half shared", "expected 0.5, received 0"),
    ("check_jaccard", jaccard_as_distance, "identical sets", "not a distance"),
    ("check_jaccard", jaccard_zero_for_empty, "two empty sets", "return 1.0"),
    ("check_jaccard", jaccard_divides_by_zero, "two empty sets", "raised ZeroDivisionError"),
    ("check_minhash_signature", minhash_max, "tiny: p = 7, one function", "MINIMUM"),
    ("check_minhash_signature", minhash_no_modulo, "tiny: p = 7, one function", "% p"),
    ("check_minhash_signature", minhash_modulo_after_min, "tiny: p = 7, one function", "% p"),
    ("check_minhash_signature", minhash_without_b, "tiny: p = 7, one function", "+ b[i]"),
    ("check_minhash_signature", minhash_min_hash_value, "tiny: p = 7, one function", "MINIMUM"),
    (
        "check_minhash_signature",
        minhash_argmin,
        "tiny: p = 7, one function",
        "expected 0, received 1",
    ),
    (
        "check_minhash_signature",
        minhash_one_function,
        "tiny: p = 11, two functions",
        "EACH hash function",
    ),
    ("check_minhash_signature", minhash_empty_list, "no shingles: p everywhere", "[p] * len(a)"),
    ("check_estimate_jaccard", estimate_count_not_share, "identical", "divide by len(sig1)"),
    ("check_estimate_jaccard", estimate_disagreement, "identical", "expected 1, received 0"),
    ("check_estimate_jaccard", estimate_off_by_one, "identical", "expected 1, received 1.33333"),
    ("check_estimate_jaccard", estimate_as_sets, "half agree", "position by position"),
    (
        "check_estimate_jaccard",
        estimate_membership,
        "same values, other positions",
        "position by position",
    ),
    (
        "check_lsh_buckets",
        lsh_with_self_pairs,
        "two identical signatures",
        "a document paired with itself",
    ),
    (
        "check_lsh_buckets",
        lsh_whole_signature,
        "match in the first band only",
        "the pair (0, 1) is missing",
    ),
    (
        "check_lsh_buckets",
        lsh_key_first_value,
        "agree on all but the band's last row",
        "should not be a candidate",
    ),
    ("check_lsh_buckets", lsh_first_band_only, "match in the LAST band only", "every band"),
    ("check_lsh_buckets", lsh_slice_wrong_stride, "match in the LAST band only", "every band"),
    (
        "check_lsh_buckets",
        lsh_slice_short,
        "agree on all but the band's last row",
        "ALL must agree",
    ),
    ("check_lsh_buckets", lsh_slice_shifted, "match in the first band only", "is missing"),
    ("check_lsh_buckets", lsh_any_row, "agree on all but the band's last row", "ALL must agree"),
    (
        "check_lsh_buckets",
        lsh_one_dict_for_all_bands,
        "same values in different bands",
        "one dict of buckets per band",
    ),
    ("check_lsh_buckets", lsh_key_sum, "same values in another order", "not their sum or set"),
    ("check_lsh_buckets", lsh_key_set, "same values in another order", "not their sum or set"),
]


# --------------------------------------------------------------------------------------------
# Answers that call llmlab.data's deduplication: flagged


def lsh_with_the_library(signatures, bands, rows):
    index = data.LSHIndex(bands, rows)
    for doc, sig in enumerate(signatures):
        index.add(doc, np.asarray(sig, dtype=np.int64))
    return index.candidates()


FORBIDDEN = [
    # (check, an answer that calls a forbidden op, the op as the message names it)
    ("check_shingle", student_copy(dd.reference_shingle), "llmlab.data.dedup.shingles"),
    ("check_jaccard", student_copy(dd.reference_jaccard), "llmlab.data.dedup.jaccard"),
    ("check_lsh_buckets", lsh_with_the_library, "llmlab.data.dedup.LSHIndex.__init__"),
]


def test_a_counter_of_shingles_is_told_to_return_a_set():
    message = dd.check_shingle(shingle_counter).message
    assert "received a Counter" in message and "Hint: return a set" in message
