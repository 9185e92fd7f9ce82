"""Deduplication: exact (by hash) and near-duplicate (MinHash + LSH), written from scratch.

Duplicated text wastes compute, makes a model memorise (and regurgitate) it, and leaks test
data into training. Two levels:

**Exact.** Hash each normalised document (SHA-1 here); keep the first of each hash. Linear
time, no false positives in practice.

**Near-duplicates.** Two documents are near-duplicates when their sets of *shingles* (here
word k-grams) overlap a lot: Jaccard similarity J(A, B) = |A & B| / |A | B| above a
threshold (0.8 is common). Comparing all pairs is O(n^2); MinHash and LSH make it linear:

- *MinHash* (Broder 1997). For a random hash function h, P[min h(A) == min h(B)] = J(A, B):
  the shingle with the smallest hash in A | B is equally likely to be any of them, and the two
  minima agree exactly when it lies in A & B. With k independent hash functions, the fraction
  of agreeing minima estimates J with standard error sqrt(J (1 - J) / k). A document becomes a
  signature of k integers whatever its length. Our hash family is h(x) = (a x + b) mod p with
  p = 2^32 + 15 (prime) over 32-bit shingle hashes, a and b drawn from a seeded RNG.
- *Locality-sensitive hashing*. Cut the signature into b bands of r rows; two documents become
  a *candidate pair* if all r rows of some band agree. That happens with probability
  1 - (1 - J^r)^b: an S-curve in J, steep around (1/b)^(1/r). Bucketing each band by its
  values finds candidates without comparing pairs. :func:`lsh_params` picks (b, r) for a
  threshold; candidates are then verified on their signatures.

To measure precision and recall without an O(n^2) ground truth, :func:`plant_near_duplicates`
adds edited copies of known documents; recall is the share of planted pairs found, and
precision is checked on the found pairs' exact Jaccard similarity.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence

from llmlab.data.clean import normalize_text
from llmlab.validate import require_positive_int

__all__ = [
    "exact_dedup",
    "shingles",
    "shingle_hashes",
    "jaccard",
    "ngram_overlap",
    "contamination",
    "decontaminate",
    "minhash_signatures",
    "lsh_params",
    "LSHIndex",
    "near_duplicate_pairs",
    "plant_near_duplicates",
    "precision_recall",
]

HASH_PRIME = (1 << 32) + 15  # a prime just above every 32-bit shingle hash (not a Mersenne prime)
_WORD = re.compile(r"\w+", re.UNICODE)


def exact_dedup(documents: Sequence[str]) -> tuple[list[int], dict[int, int]]:
    """(indices kept, {dropped index: index of the kept copy}) by SHA-1 of normalised text."""
    first: dict[bytes, int] = {}
    kept, dropped = [], {}
    for i, doc in enumerate(documents):
        if not isinstance(doc, str):
            raise TypeError(f"documents[{i}]: expected a str, got {type(doc).__name__}")
        digest = hashlib.sha1(normalize_text(doc).encode("utf-8")).digest()
        if digest in first:
            dropped[i] = first[digest]
        else:
            first[digest] = i
            kept.append(i)
    return kept, dropped


def shingles(text: str, k: int = 5) -> set[str]:
    """The set of word k-grams of ``text`` (lower-cased words; a shorter text gives one shingle)."""
    require_positive_int(k, "k")
    words = _WORD.findall(text.lower())
    if len(words) < k:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + k]) for i in range(len(words) - k + 1)}


def jaccard(a: set, b: set) -> float:
    """|a & b| / |a | b| (1.0 for two empty sets)."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def ngram_overlap(text: str, reference: str, n: int = 8) -> float:
    """Share of ``text``'s word n-grams that also occur in ``reference`` (contamination check)."""
    return contamination([text], [reference], n)[0]


def contamination(documents: Iterable[str], reference: Iterable[str], n: int = 8) -> list[float]:
    """For each of ``documents``, the share of its word n-grams found in *any* ``reference``
    document (0 for a document too short to have one).

    Against a whole training split this flags validation or test documents that measure
    memory rather than generalisation (GPT-3's paper flagged benchmark items by 13-gram
    overlap). Each share is >= :func:`ngram_overlap` against any single reference document.
    """
    seen: set[str] = set()
    for text in reference:
        seen |= shingles(text, n)
    shares = []
    for text in documents:
        mine = shingles(text, n)
        shares.append(len(mine & seen) / len(mine) if mine else 0.0)
    return shares


def decontaminate(
    train: Sequence[str], held_out: Iterable[str], n: int = 8, max_share: float = 0.5
) -> list[int]:
    """Indices of ``train`` documents to drop so that no ``held_out`` document has more than
    ``max_share`` of its word n-grams in the rest of ``train`` (:func:`contamination`).

    For each held-out document in turn, while its share is above ``max_share``, the training
    document that holds most of its n-grams (the lowest index on a tie) is dropped: the fewest
    documents that a greedy choice can find, deterministically. Afterwards
    ``max(contamination(held_out, kept, n)) <= max_share``.
    """
    if not 0.0 <= max_share < 1.0:
        raise ValueError(f"max_share: expected a float in [0, 1), got {max_share!r}")
    owners: dict[str, list[int]] = defaultdict(list)
    for i, text in enumerate(train):
        for gram in shingles(text, n):
            owners[gram].append(i)
    removed: set[int] = set()
    for text in held_out:
        grams = shingles(text, n)
        while grams:
            held: dict[int, int] = defaultdict(int)  # train index -> how many of the n-grams
            covered = 0
            for gram in grams:
                alive = [i for i in owners.get(gram, ()) if i not in removed]
                covered += bool(alive)
                for i in alive:
                    held[i] += 1
            if covered <= max_share * len(grams):
                break
            removed.add(min(held, key=lambda i: (-held[i], i)))
    return sorted(removed)


def shingle_hashes(text: str, k: int = 5) -> list[int]:
    """32-bit hashes (BLAKE2b) of the word k-shingles of ``text``: the input of MinHash."""
    return [
        int.from_bytes(hashlib.blake2b(s.encode("utf-8"), digest_size=4).digest(), "little")
        for s in shingles(text, k)
    ]


def minhash_signatures(documents: Sequence[str], num_perm: int = 128, k: int = 5, seed: int = 0):
    """(n_documents, num_perm) uint64 numpy array: the MinHash signature of each document.

    An empty document (no words) gets a signature of p (larger than any hash), which matches
    only other empty documents.
    """
    import numpy as np

    require_positive_int(num_perm, "num_perm")
    rng = random.Random(seed)
    a = np.array([rng.randrange(1, 1 << 31) for _ in range(num_perm)], dtype=np.uint64)
    b = np.array([rng.randrange(0, 1 << 32) for _ in range(num_perm)], dtype=np.uint64)
    p = np.uint64(HASH_PRIME)
    out = np.full((len(documents), num_perm), HASH_PRIME, dtype=np.uint64)
    for i, doc in enumerate(documents):
        hashes = np.array(shingle_hashes(doc, k), dtype=np.uint64)
        if hashes.size:
            # (a x + b) mod p for every hash function (rows) and shingle (columns): < 2^63
            out[i] = ((a[:, None] * hashes[None, :] + b[:, None]) % p).min(axis=1)
    return out


def lsh_params(num_perm: int, threshold: float, fp_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows) with bands * rows <= num_perm whose S-curve best splits at ``threshold``.

    Minimises fp_weight * (area under the curve below the threshold: false positives) +
    (1 - fp_weight) * (area above the curve beyond it: false negatives), numerically.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold: expected a float in (0, 1), got {threshold!r}")

    def area(f, lo, hi, steps=200):
        width = (hi - lo) / steps
        return sum(f(lo + (i + 0.5) * width) for i in range(steps)) * width

    best, best_cost = (1, num_perm), float("inf")
    for bands in range(1, num_perm + 1):
        rows = num_perm // bands
        if rows < 1:
            break

        def prob(s, b=bands, r=rows):
            return 1 - (1 - s**r) ** b

        fp = area(prob, 0.0, threshold)
        fn = area(lambda s, f=prob: 1 - f(s), threshold, 1.0)
        cost = fp_weight * fp + (1 - fp_weight) * fn
        if cost < best_cost:
            best, best_cost = (bands, rows), cost
    return best


class LSHIndex:
    """Band buckets of MinHash signatures; :meth:`candidates` lists pairs sharing a bucket."""

    def __init__(self, bands: int, rows: int):
        for value, name in ((bands, "bands"), (rows, "rows")):
            require_positive_int(value, name)
        self.bands, self.rows = bands, rows
        self.buckets: list[dict[bytes, list[int]]] = [defaultdict(list) for _ in range(bands)]

    def add(self, index: int, signature) -> None:
        if len(signature) < self.bands * self.rows:
            raise ValueError(
                f"signature: expected >= bands * rows = {self.bands * self.rows} values, "
                f"got {len(signature)}"
            )
        for band in range(self.bands):
            key = signature[band * self.rows : (band + 1) * self.rows].tobytes()
            self.buckets[band][key].append(index)

    def candidates(self) -> set[tuple[int, int]]:
        pairs = set()
        for table in self.buckets:
            for members in table.values():
                for x in range(len(members)):
                    for y in range(x + 1, len(members)):
                        pairs.add((members[x], members[y]))
        return pairs


def near_duplicate_pairs(
    documents: Sequence[str],
    threshold: float = 0.8,
    num_perm: int = 128,
    k: int = 5,
    seed: int = 0,
    lsh_threshold: float | None = None,
    verify: str = "signature",
) -> set[tuple[int, int]]:
    """Pairs (i < j) whose Jaccard similarity of word k-shingles is >= ``threshold``.

    MinHash signatures, LSH candidates, then each candidate verified. ``lsh_threshold``
    (default ``threshold``) places the LSH S-curve: a lower one finds more true pairs (recall)
    at the price of more candidates to verify. ``verify``: ``"signature"`` (estimated Jaccard,
    cheap) or ``"exact"`` (the shingle sets themselves: no false positives).
    """
    import numpy as np

    if verify not in ("signature", "exact"):
        raise ValueError(f"verify: expected 'signature' or 'exact', got {verify!r}")
    sigs = minhash_signatures(documents, num_perm=num_perm, k=k, seed=seed)
    bands, rows = lsh_params(num_perm, threshold if lsh_threshold is None else lsh_threshold)
    index = LSHIndex(bands, rows)
    for i, sig in enumerate(sigs):
        index.add(i, sig)
    sets: dict[int, set[str]] = {}

    def shingle_set(i: int) -> set[str]:
        if i not in sets:
            sets[i] = shingles(documents[i], k)
        return sets[i]

    found = set()
    for i, j in index.candidates():
        if verify == "exact":
            similar = jaccard(shingle_set(i), shingle_set(j)) >= threshold
        else:
            similar = float(np.mean(sigs[i] == sigs[j])) >= threshold
        if similar:
            found.add((min(i, j), max(i, j)))
    return found


def plant_near_duplicates(
    documents: Sequence[str],
    n_copies: int,
    edit_rate: float = 0.05,
    min_words: int = 30,
    seed: int = 0,
) -> tuple[list[str], set[tuple[int, int]]]:
    """``documents`` plus ``n_copies`` edited copies; returns (all documents, planted pairs).

    Each copy takes a document of at least ``min_words`` words and changes about
    ``edit_rate`` of its words (replace, delete or insert one, at random). Pair (i, j): j is
    the copy of i.
    """
    if not 0.0 <= edit_rate < 1.0:
        raise ValueError(f"edit_rate: expected a float in [0, 1), got {edit_rate!r}")
    rng = random.Random(seed)
    eligible = [i for i, d in enumerate(documents) if len(d.split()) >= min_words]
    if len(eligible) < n_copies:
        raise ValueError(
            f"n_copies: only {len(eligible)} documents have >= {min_words} words, asked for {n_copies}"
        )
    out = list(documents)
    pairs = set()
    vocabulary = [w for d in (documents[i] for i in eligible[:200]) for w in d.split()]
    for source in rng.sample(eligible, n_copies):
        words = documents[source].split()
        for _ in range(max(1, round(edit_rate * len(words)))):
            op, pos = rng.random(), rng.randrange(len(words))
            if op < 1 / 3:
                words[pos] = rng.choice(vocabulary)
            elif op < 2 / 3 and len(words) > 1:
                del words[pos]
            else:
                words.insert(pos, rng.choice(vocabulary))
        pairs.add((source, len(out)))
        out.append(" ".join(words))
    return out, pairs


def precision_recall(
    found: Iterable[tuple[int, int]], truth: Iterable[tuple[int, int]]
) -> tuple[float, float]:
    """(precision, recall) of ``found`` pairs against ``truth`` pairs (order within a pair ignored)."""
    found = {tuple(sorted(p)) for p in found}
    truth = {tuple(sorted(p)) for p in truth}
    hits = len(found & truth)
    precision = hits / len(found) if found else 1.0
    recall = hits / len(truth) if truth else 1.0
    return precision, recall
