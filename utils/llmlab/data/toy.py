"""Toy sequence-to-sequence tasks for chapter 01's encoder-decoder: copy, reverse, sort.

    >>> task = ToyTask("reverse")                  # "3 1 4 1 5" -> "5 1 4 1 3", lengths 1..16
    >>> src, tgt_in, tgt_out = task.collate(task.draw(64, random.Random(0)))

The task splits every possible input into train (90%) and test (10%) by a hash of the input,
so held-out inputs are never trained on, whatever the seeds. Training draws fresh random
inputs; :meth:`ToyTask.dataset` fixes a set of distinct held-out inputs to evaluate on.
Only the standard library is imported at module level (torch loads inside ``collate``).
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass, field

from llmlab.validate import require_positive_int

__all__ = ["ToyTask", "Seq2SeqDataset", "copy_batch"]

_SYMBOLS = "0123456789abcdefghijklmnopqrstuvwxyz"
_KINDS = ("copy", "reverse", "sort")


@dataclass(frozen=True)
class ToyTask:
    """Sequences of ``n_symbols`` symbols, lengths ``min_len``..``max_len``, and a rule.

    kind: ``"copy"`` (output = input), ``"reverse"``, ``"sort"`` (ascending). Token ids:
    PAD = 0, BOS = 1, EOS = 2, symbol s = 3 + s, so ``vocab_size = n_symbols + 3``.
    """

    kind: str = "reverse"
    n_symbols: int = 10
    min_len: int = 1
    max_len: int = 16
    test_fraction: float = 0.1  # share of all possible inputs reserved for evaluation

    PAD = 0
    BOS = 1
    EOS = 2
    OFFSET = 3

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise ValueError(f"kind: expected one of {_KINDS}, got {self.kind!r}")
        if not 1 <= self.n_symbols <= len(_SYMBOLS):
            raise ValueError(f"n_symbols: expected 1..{len(_SYMBOLS)}, got {self.n_symbols}")
        if not 1 <= self.min_len <= self.max_len:
            raise ValueError(
                f"min_len, max_len: expected 1 <= min_len <= max_len, got {self.min_len}, {self.max_len}"
            )
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction: expected a float in (0, 1), got {self.test_fraction}")

    @property
    def vocab_size(self) -> int:
        return self.n_symbols + self.OFFSET

    def target(self, src: list[int]) -> list[int]:
        """The correct output ids for input ids ``src`` (no BOS/EOS)."""
        if self.kind == "reverse":
            return src[::-1]
        if self.kind == "sort":
            return sorted(src)
        return list(src)

    def split_of(self, src: list[int]) -> str:
        """``"train"`` or ``"test"``: fixed for each input by a hash, independent of any seed."""
        return "test" if zlib.crc32(bytes(src)) % 10_000 < self.test_fraction * 10_000 else "train"

    def draw(
        self, n: int, rng: random.Random, split: str = "train"
    ) -> list[tuple[list[int], list[int]]]:
        """``n`` random (src, tgt) pairs from ``split``; lengths uniform in min_len..max_len."""
        if split not in ("train", "test"):
            raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
        pairs = []
        while len(pairs) < n:
            length = rng.randint(self.min_len, self.max_len)
            src = [self.OFFSET + rng.randrange(self.n_symbols) for _ in range(length)]
            if self.split_of(src) == split:
                pairs.append((src, self.target(src)))
        return pairs

    def dataset(self, n: int, split: str = "test", seed: int = 0) -> Seq2SeqDataset:
        """``n`` distinct inputs from ``split`` (seeded), as a :class:`Seq2SeqDataset`."""
        require_positive_int(n, "n")
        rng = random.Random(seed)
        seen: set[tuple[int, ...]] = set()
        pairs = []
        for _ in range(100 * n):  # bounded: tiny tasks may have fewer than n distinct inputs
            src, tgt = self.draw(1, rng, split)[0]
            if tuple(src) not in seen:
                seen.add(tuple(src))
                pairs.append((src, tgt))
                if len(pairs) == n:
                    break
        if len(pairs) < n:
            raise ValueError(
                f"n: the {split} split has fewer than {n} distinct inputs, found {len(pairs)}"
            )
        return Seq2SeqDataset(self, pairs)

    def collate(self, pairs: list[tuple[list[int], list[int]]]):
        """Pairs -> right-padded (src, tgt_in = BOS + tgt, tgt_out = tgt + EOS), int64 tensors."""
        import torch

        src_len = max(len(s) for s, _ in pairs)
        tgt_len = max(len(t) for _, t in pairs) + 1
        src = torch.full((len(pairs), src_len), self.PAD, dtype=torch.long)
        tgt_in = torch.full((len(pairs), tgt_len), self.PAD, dtype=torch.long)
        tgt_out = torch.full((len(pairs), tgt_len), self.PAD, dtype=torch.long)
        for i, (s, t) in enumerate(pairs):
            src[i, : len(s)] = torch.tensor(s)
            tgt_in[i, : len(t) + 1] = torch.tensor([self.BOS, *t])
            tgt_out[i, : len(t) + 1] = torch.tensor([*t, self.EOS])
        return src, tgt_in, tgt_out

    def decode(self, ids) -> str:
        """Ids -> readable text, e.g. ``"3 1 4 <eos>"``; PAD is dropped."""
        names = {self.BOS: "<bos>", self.EOS: "<eos>"}
        ids = ids.tolist() if hasattr(ids, "tolist") else ids
        return " ".join(names.get(i) or _SYMBOLS[i - self.OFFSET] for i in ids if i != self.PAD)

    def encode(self, text: str) -> list[int]:
        """``"3 1 4"`` (or ``"314"``) -> symbol ids."""
        chars = text.replace(" ", "")
        bad = [c for c in chars if c not in _SYMBOLS[: self.n_symbols]]
        if bad:
            raise ValueError(
                f"text: expected symbols from {_SYMBOLS[: self.n_symbols]!r}, got {bad[0]!r}"
            )
        return [self.OFFSET + _SYMBOLS.index(c) for c in chars]


@dataclass
class Seq2SeqDataset:
    """A fixed list of (src, tgt) id pairs of a :class:`ToyTask`."""

    task: ToyTask
    pairs: list[tuple[list[int], list[int]]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[list[int], list[int]]:
        return self.pairs[i]

    def batches(self, batch_size: int):
        """Yield collated (src, tgt_in, tgt_out) batches in order."""
        for start in range(0, len(self.pairs), batch_size):
            yield self.task.collate(self.pairs[start : start + batch_size])


def copy_batch(generator, batch: int, gap: int = 20, n_symbols: int = 4, n_noise: int = 8):
    """A long-range dependency in its purest form, (batch, gap + 3) token ids.

    Each row is [symbol, ``gap`` noise tokens, query, symbol]: the last token copies the first.
    Symbols are ids 0 .. n_symbols-1, noise n_symbols .. n_symbols+n_noise-1, the query the next
    id (vocabulary n_symbols + n_noise + 1). A model that cannot see ``gap + 2`` tokens back
    scores log(n_symbols) nats on the last token at best. ``generator``: a torch.Generator.
    """
    import torch

    symbol = torch.randint(0, n_symbols, (batch, 1), generator=generator)
    noise = torch.randint(n_symbols, n_symbols + n_noise, (batch, gap), generator=generator)
    query = torch.full((batch, 1), n_symbols + n_noise)
    return torch.cat([symbol, noise, query, symbol], dim=1)
