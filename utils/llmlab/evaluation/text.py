"""Text metrics: how diverse a set of texts is, how much a text repeats itself, and how many
outputs of a sequence-to-sequence model are exactly right."""

from __future__ import annotations

import math
from typing import Any

import torch

from llmlab.validate import require_positive_int

__all__ = ["distinct_n", "repetition_rate", "exact_match"]


def _as_sequences(ids: Any, name: str) -> list[list[int]]:
    """One sequence (list/1-D tensor of ids) or several (list of them, or a 2-D tensor)."""
    if isinstance(ids, torch.Tensor):
        if ids.dim() not in (1, 2):
            raise ValueError(f"{name}: expected 1 or 2 dims, got shape {tuple(ids.shape)}")
        ids = ids.tolist()
    if not isinstance(ids, (list, tuple)):
        raise TypeError(f"{name}: expected token ids (list or tensor), got {type(ids).__name__}")
    if all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        return [list(ids)]
    if all(isinstance(s, (list, tuple)) for s in ids):
        return [list(s) for s in ids]
    raise TypeError(f"{name}: expected a list of ints or a list of lists of ints")


def _ngrams(seq: list[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]


def distinct_n(ids: Any, n: int) -> float:
    """Distinct-n (Li et al. 2016): unique n-grams / all n-grams, pooled over the sequences.

    ids: one sequence of token ids or several (pooled: texts that repeat each other score low,
    which is how distinct-n measures the diversity of a set of samples). 1.0 = no n-gram occurs
    twice. NaN when there is no n-gram at all (every text shorter than n).
    """
    require_positive_int(n, "n")
    grams = [g for seq in _as_sequences(ids, "ids") for g in _ngrams(seq, n)]
    return len(set(grams)) / len(grams) if grams else math.nan


def repetition_rate(ids: Any, n: int = 4) -> float:
    """The share of a text's n-grams that repeat an earlier n-gram of the same text.

    Welleck et al. (2019)'s seq-rep-n: 0.0 for a text without repeats, close to 1.0 for a text
    stuck in a loop. Several sequences: the mean of their rates (each text is judged on its
    own, unlike :func:`distinct_n`). NaN when no text has an n-gram.
    """
    require_positive_int(n, "n")
    rates = []
    for seq in _as_sequences(ids, "ids"):
        grams = _ngrams(seq, n)
        if grams:
            rates.append(1.0 - len(set(grams)) / len(grams))
    return sum(rates) / len(rates) if rates else math.nan


def exact_match(model, dataset, batch_size: int = 500) -> float:
    """Share of the dataset's inputs whose greedy output equals the target exactly (EOS included).

    ``model``: an encoder-decoder; ``dataset``: a :class:`llmlab.data.toy.Seq2SeqDataset`.
    """
    from llmlab.data.toy import Seq2SeqDataset
    from llmlab.inference.generation import greedy_decode

    if not isinstance(dataset, Seq2SeqDataset):
        raise TypeError(f"dataset: expected a Seq2SeqDataset, got {type(dataset).__name__}")
    if not len(dataset):
        raise ValueError("dataset: expected at least one pair, got an empty dataset")
    task = dataset.task
    device = next(model.parameters()).device
    correct = 0
    for src, _, tgt_out in dataset.batches(batch_size):
        out = greedy_decode(model, src.to(device), tgt_out.shape[1], task.BOS, task.EOS).cpu()
        want = tgt_out[:, : out.shape[1]]
        # Right: every position up to the target's EOS matches (the rest is padding in both).
        complete = out.shape[1] >= (tgt_out != task.PAD).sum(1)
        matches = ((out == want) | (want == task.PAD)).all(dim=1) & complete
        correct += int(matches.sum())
    return correct / len(dataset)
