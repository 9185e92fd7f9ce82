"""N-gram language models: counting, smoothing, perplexity, sampling.

An n-gram model predicts a token from the ``n - 1`` tokens before it, by counting:

    P_MLE(w | h) = c(h, w) / c(h)          h = the previous n - 1 tokens

Counting is exact but brittle. Most n-grams of a held-out text never occurred in training
(the *sparsity problem*: the share grows quickly with n), and a single zero makes the whole
text impossible (infinite perplexity). Smoothing moves probability mass to unseen events:

- **add-k** (Laplace for k = 1): ``(c(h, w) + k) / (c(h) + k V)``. Simple, and poor: with a
  large vocabulary V almost all mass goes to the unseen.
- **interpolated Kneser-Ney** (Kneser & Ney 1995; Chen & Goodman 1998): subtract a discount D
  from every seen count and give the freed mass to a lower-order model; lower orders count in
  how many *different contexts* a word appears ("continuation counts"), not how often:

      P(w | h) = max(c(h, w) - D, 0) / c(h)  +  D N1+(h .) / c(h)  *  P_lower(w | h')

  where h' drops the oldest token of h, N1+(h .) is the number of distinct words seen after h,
  and the recursion ends in a uniform distribution over the vocabulary, so every token has
  a probability > 0 and each conditional sums to exactly 1.

Tokens are any hashable values: words (``word_tokenize``), bytes, or the integer ids of a
subword tokenizer. Each sequence (document) is padded on the left with ``n - 1`` begin
markers, so its first tokens are predicted from "start of text".

Perplexity is ``exp(mean negative log-likelihood per token)``: the effective number of equally
likely choices the model hesitates between. It depends on the tokenization; to compare models
that tokenize differently use bits per byte (total NLL in bits / UTF-8 bytes of the text).

    >>> lm = NGramLM(3).fit(train_sequences)
    >>> lm.perplexity(test_sequences)

Chapter 02 teaches with it; chapter 03 uses it as the baseline its GPT must beat.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

from llmlab.evaluation.perplexity import bits_per_byte, perplexity
from llmlab.validate import require_int, require_positive_int

__all__ = [
    "BOS",
    "NGramLM",
    "Evaluation",
    "word_tokenize",
    "build_vocab",
    "apply_vocab",
    "ngrams",
    "unseen_fraction",
]

#: The begin-of-sequence marker used to pad contexts (never predicted).
BOS = "<s>"
#: The unknown-word marker of ``build_vocab``/``apply_vocab``.
UNK = "<unk>"
SMOOTHINGS = ("kneser_ney", "add_k", "mle")

_WORD = re.compile(r"[A-Za-z]+(?:'[a-z]+)?|\d+|[^\sA-Za-z\d]")


def word_tokenize(text: str, lower: bool = True) -> list[str]:
    """Split ``text`` into words, numbers and single punctuation marks ("don't" stays one word)."""
    if not isinstance(text, str):
        raise TypeError(f"text: expected a str, got {type(text).__name__}")
    return _WORD.findall(text.lower() if lower else text)


def build_vocab(sequences: Iterable[Sequence[Hashable]], min_count: int = 2) -> set:
    """The tokens seen at least ``min_count`` times (others become ``UNK`` in ``apply_vocab``)."""
    require_positive_int(min_count, "min_count")
    counts = Counter(token for seq in sequences for token in seq)
    return {token for token, c in counts.items() if c >= min_count}


def apply_vocab(sequences: Iterable[Sequence[Hashable]], vocab: set) -> list[list[Hashable]]:
    """Replace tokens outside ``vocab`` by ``UNK``."""
    return [[t if t in vocab else UNK for t in seq] for seq in sequences]


def ngrams(sequence: Sequence[Hashable], n: int, pad: bool = True) -> Iterable[tuple]:
    """The n-grams of ``sequence`` (left-padded with ``n - 1`` BOS markers when ``pad``)."""
    _require_n(n)
    seq = ([BOS] * (n - 1) if pad else []) + list(sequence)
    return (tuple(seq[i : i + n]) for i in range(len(seq) - n + 1))


def unseen_fraction(
    train: Iterable[Sequence[Hashable]], test: Iterable[Sequence[Hashable]], n: int
) -> float:
    """Share of the test's n-gram occurrences that never occur in ``train`` (sparsity)."""
    seen = {g for seq in train for g in ngrams(seq, n)}
    total = unseen = 0
    for seq in test:
        for g in ngrams(seq, n):
            total += 1
            unseen += g not in seen
    if total == 0:
        raise ValueError("test: expected at least one token")
    return unseen / total


@dataclass(frozen=True)
class Evaluation:
    """What :meth:`NGramLM.evaluate` measured on a text."""

    n_tokens: int
    nll: float  # total negative log-likelihood, nats
    zero_prob_tokens: int  # tokens the model gave probability 0 (MLE only)

    @property
    def cross_entropy(self) -> float:
        """Mean NLL per token, nats (inf if some token had probability 0)."""
        return math.inf if self.zero_prob_tokens else self.nll / self.n_tokens

    @property
    def perplexity(self) -> float:
        return perplexity(self.cross_entropy)

    def bits_per_byte(self, n_bytes: int) -> float:
        """Total NLL in bits divided by ``n_bytes``, the UTF-8 size of the evaluated text."""
        bits = bits_per_byte(self.nll, n_bytes)  # validates n_bytes
        return math.inf if self.zero_prob_tokens else bits


class NGramLM:
    """An n-gram language model over any hashable tokens.

    n: the order (1 = unigram, 2 = bigram, 3 = trigram ...). smoothing: ``"kneser_ney"``
    (interpolated, default), ``"add_k"`` or ``"mle"`` (no smoothing: unseen events get 0).
    discount: Kneser-Ney's D (default: estimated per order as n1 / (n1 + 2 n2) from the counts
    of n-grams seen once and twice). k: add-k's pseudo-count. vocab_size: how many distinct
    tokens can occur (default: those seen in training, + 1 for an unseen one); pass the size
    of the tokenizer's vocabulary when tokens are ids.
    """

    def __init__(
        self,
        n: int,
        smoothing: str = "kneser_ney",
        discount: float | None = None,
        k: float = 1.0,
        vocab_size: int | None = None,
    ):
        _require_n(n)
        if smoothing not in SMOOTHINGS:
            raise ValueError(f"smoothing: expected one of {SMOOTHINGS}, got {smoothing!r}")
        if discount is not None and not 0.0 < discount < 1.0:
            raise ValueError(f"discount: expected a float in (0, 1), got {discount!r}")
        if not (isinstance(k, (int, float)) and k > 0):
            raise ValueError(f"k: expected a number > 0, got {k!r}")
        if vocab_size is not None:
            require_positive_int(vocab_size, "vocab_size")
        self.n = n
        self.smoothing = smoothing
        self.k = float(k)
        self._discount_arg = discount
        self._vocab_size_arg = vocab_size
        self.fitted = False

    # ----------------------------------------------------------------------------------------
    # Counting

    def fit(self, sequences: Iterable[Sequence[Hashable]]) -> NGramLM:
        """Count the n-grams of ``sequences`` (each a list of tokens, e.g. one document)."""
        n = self.n
        top: dict[tuple, Counter] = defaultdict(Counter)  # c(h, w) at the highest order
        vocab: set = set()
        for i, seq in enumerate(sequences):
            if isinstance(seq, (str, bytes)) or not isinstance(seq, Sequence):
                raise TypeError(
                    f"sequences[{i}]: expected a list of tokens, got {type(seq).__name__} "
                    "(split text into tokens first, e.g. with word_tokenize)"
                )
            vocab.update(seq)
            for gram in ngrams(seq, n):
                top[gram[:-1]][gram[-1]] += 1
        if not top:
            raise ValueError("sequences: expected at least one token to count")
        vocab.discard(BOS)
        self.vocab = vocab
        self.vocab_size = self._vocab_size_arg or len(vocab) + 1
        if self.vocab_size < len(vocab):
            raise ValueError(
                f"vocab_size: {self.vocab_size} is smaller than the {len(vocab)} distinct tokens seen"
            )
        # counts[m]: {context of m - 1 tokens: Counter(next token)} for orders m = 1..n. The
        # top order holds raw counts; lower orders hold Kneser-Ney continuation counts (in how
        # many distinct one-token-longer contexts the n-gram appears) or, for add-k/MLE, raw
        # counts of the shorter n-grams.
        counts: dict[int, dict[tuple, Counter]] = {n: dict(top)}
        for m in range(n - 1, 0, -1):
            lower: dict[tuple, Counter] = defaultdict(Counter)
            for context, nexts in counts[m + 1].items():
                for w, c in nexts.items():
                    lower[context[1:]][w] += 1 if self.smoothing == "kneser_ney" else c
            counts[m] = dict(lower)
        self.counts = counts
        self._totals = {m: {h: sum(c.values()) for h, c in counts[m].items()} for m in counts}
        self._discounts = {m: self._estimate_discount(counts[m]) for m in counts}
        self._cache: dict[tuple, float] = {}
        self.fitted = True
        return self

    def _estimate_discount(self, table: dict[tuple, Counter]) -> float:
        if self._discount_arg is not None:
            return self._discount_arg
        n1 = n2 = 0
        for nexts in table.values():
            for c in nexts.values():
                n1 += c == 1
                n2 += c == 2
        return n1 / (n1 + 2 * n2) if n1 and n2 else 0.75

    @property
    def n_parameters(self) -> int:
        """How many counts the model stores (its 'size': it grows with the data)."""
        self._require_fitted()
        return sum(len(c) for table in self.counts.values() for c in table.values())

    # ----------------------------------------------------------------------------------------
    # Probabilities

    def prob(self, token: Hashable, context: Sequence[Hashable] = ()) -> float:
        """P(token | the last n - 1 tokens of ``context``), left-padded with BOS."""
        self._require_fitted()
        context = tuple(context)
        if len(context) < self.n - 1:
            context = (BOS,) * (self.n - 1 - len(context)) + context
        context = context[len(context) - (self.n - 1) :] if self.n > 1 else ()
        return self._prob(token, context, self.n)

    def _prob(self, w, h: tuple, m: int) -> float:
        key = (w, h, m)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        table, totals = self.counts[m], self._totals[m]
        nexts = table.get(h)
        total = totals.get(h, 0)
        if self.smoothing == "mle":
            p = nexts[w] / total if total else 0.0  # an unseen context: 0/0, counted as 0
        elif self.smoothing == "add_k":
            c = nexts[w] if nexts else 0
            p = (c + self.k) / (total + self.k * self.vocab_size)
        else:
            lower = self._prob(w, h[1:], m - 1) if m > 1 else 1.0 / self.vocab_size
            if total == 0:
                p = lower  # unseen context: all mass to the lower order
            else:
                d = self._discounts[m]
                p = (max(nexts[w] - d, 0.0) + d * len(nexts) * lower) / total
        if m < self.n and len(self._cache) < 500_000:  # lower orders are asked again and again
            self._cache[key] = p
        return p

    def distribution(self, context: Sequence[Hashable] = ()) -> dict[Hashable, float]:
        """{token: P(token | context)} over the training vocabulary (plus UNK mass if any)."""
        return {w: self.prob(w, context) for w in self.vocab}

    # ----------------------------------------------------------------------------------------
    # Evaluation and sampling

    def evaluate(self, sequences: Iterable[Sequence[Hashable]]) -> Evaluation:
        """Total NLL of ``sequences`` (every token predicted from its n - 1 predecessors)."""
        self._require_fitted()
        nll, n_tokens, zeros = 0.0, 0, 0
        for seq in sequences:
            for gram in ngrams(seq, self.n):
                p = self._prob(gram[-1], gram[:-1], self.n)
                n_tokens += 1
                if p <= 0.0:
                    zeros += 1
                else:
                    nll -= math.log(p)
        if n_tokens == 0:
            raise ValueError("sequences: expected at least one token to evaluate")
        return Evaluation(n_tokens, nll, zeros)

    def token_nll(self, tokens: Sequence[Hashable], start: int = 1) -> list[float]:
        """NLL (nats) of each of ``tokens[start:]``, predicted from the tokens before it.

        Token ``j`` is scored from ``tokens[j - n + 1 : j]``, padded with BOS where fewer
        precede it. So it scores exactly the targets a neural LM scores on the same window or
        stream (``start=1``: the first token has no context to be predicted from), and the
        two can be compared token by token.
        """
        self._require_fitted()
        if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start <= len(tokens):
            raise ValueError(
                f"start: expected an int in [0, len(tokens)={len(tokens)}], got {start!r}"
            )
        tokens = list(tokens)
        out = []
        for j in range(start, len(tokens)):
            p = self.prob(tokens[j], tokens[max(0, j - self.n + 1) : j])
            out.append(math.inf if p <= 0.0 else -math.log(p))
        return out

    def perplexity(self, sequences: Iterable[Sequence[Hashable]]) -> float:
        """exp(mean NLL per token) of ``sequences``; inf when some token has probability 0."""
        return self.evaluate(sequences).perplexity

    def sample(self, length: int, context: Sequence[Hashable] = (), seed: int = 0) -> list:
        """Draw ``length`` tokens after ``context`` (default: start of text)."""
        self._require_fitted()
        require_int(length, "length", 0)
        rng = random.Random(seed)
        vocab = sorted(self.vocab, key=repr)  # a fixed order, so a seed gives one text
        out = list(context)
        for _ in range(length):
            weights = [self.prob(w, out) for w in vocab]
            out.append(rng.choices(vocab, weights=weights)[0])
        return out[len(context) :]

    def _require_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError("NGramLM: call fit(sequences) first")

    def __repr__(self) -> str:
        state = f", vocab={len(self.vocab)}, counts={self.n_parameters}" if self.fitted else ""
        return f"NGramLM(n={self.n}, smoothing={self.smoothing!r}{state})"


def _require_n(n) -> None:
    require_positive_int(n, "n")
