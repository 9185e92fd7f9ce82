"""Pretraining objectives: the collators that turn token ids into training batches.

A pretraining objective is a rule for hiding part of a text and asking the model to recover it.
The model and the loss barely change between objectives; the *collator* (the function that
builds a batch from documents) is where they differ:

- **Causal LM** (GPT, LLaMA): predict every token from the tokens before it. Inputs are the ids
  without the last one, targets the ids without the first; every position is scored.
  :func:`causal_lm_batch`.
- **Masked LM** (BERT): pick 15% of the positions at random, never special tokens or padding.
  Of the picked positions, 80% are replaced by ``[MASK]``, 10% by a random ordinary token and
  10% keep their token; the model must predict the original token at the picked positions
  only (labels are ``-100``, "not scored", everywhere else). The 10% random and 10% unchanged
  exist because ``[MASK]`` never occurs at fine-tuning time: the model must build a good
  representation of every token, not only of the masks. :func:`mlm_mask`.
- **Next-sentence prediction** (BERT's second task): a pair "[CLS] A [SEP] B [SEP]" where B
  follows A in the same document half the time and is a sentence from another document
  otherwise; the model classifies the pair from its [CLS] position. :func:`nsp_pairs`,
  :func:`bert_pair_batch`.
- **Span corruption** (T5): drop about 15% of the tokens in spans of mean length 3; each span
  becomes one sentinel in the encoder input (``Thank you <X> me to your party <Y> week``), and
  the decoder writes the spans after their sentinels (``<X> for inviting <Y> last <Z>``).
  :func:`span_corruption_mask`, :func:`span_corruption`, :func:`undo_span_corruption`,
  :func:`span_corruption_batch`.

Every random collator takes a ``torch.Generator`` and is a pure function of its inputs and of
the generator's state: the same seed gives the same batch, on any machine. The order in which
each function draws its random numbers is part of its contract (documented below), so that a
from-scratch version (chapter 03's lab) can reproduce it exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from llmlab.training.losses import IGNORE_INDEX
from llmlab.validate import require_int, require_positive_int, require_real

__all__ = [
    "IGNORE_INDEX",
    "pad_sequences",
    "causal_lm_batch",
    "mlm_mask",
    "nsp_pairs",
    "bert_pair_batch",
    "random_segmentation",
    "span_corruption_mask",
    "span_corruption",
    "undo_span_corruption",
    "span_corruption_batch",
]


# --------------------------------------------------------------------------------------------
# Argument checks


def _require_prob(value: Any, name: str, low_open: bool = False) -> float:
    value = require_real(value, name)
    ok = (0.0 < value <= 1.0) if low_open else (0.0 <= value <= 1.0)
    if not ok:
        interval = "(0, 1]" if low_open else "[0, 1]"
        raise ValueError(f"{name}: expected a probability in {interval}, got {value!r}")
    return value


def _require_generator(generator: Any) -> torch.Generator | None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator: expected a torch.Generator or None, got {type(generator).__name__}"
        )
    return generator


def _as_ids(seq: Any, name: str) -> list[int]:
    """A sequence of token ids (list, tuple or 1-D integer tensor) as a list of ints."""
    if isinstance(seq, torch.Tensor):
        if seq.dim() != 1 or seq.is_floating_point() or seq.dtype == torch.bool:
            raise ValueError(
                f"{name}: expected a 1-D integer tensor, got shape {tuple(seq.shape)} {seq.dtype}"
            )
        return seq.tolist()
    if isinstance(seq, (str, bytes)) or not isinstance(seq, Sequence):
        raise TypeError(f"{name}: expected a sequence of token ids, got {type(seq).__name__}")
    return [require_int(x, name, None) for x in seq]  # numpy ids become Python ints


def _id_set(ids: Any, name: str, vocab_size: int | None = None) -> list[int]:
    if isinstance(ids, int) and not isinstance(ids, bool):
        raise TypeError(f"{name}: expected a collection of ids (e.g. a list), got one int")
    try:
        values = sorted({int(i) for i in ids})
    except TypeError as exc:
        raise TypeError(
            f"{name}: expected a collection of int ids, got {type(ids).__name__}"
        ) from exc
    if vocab_size is not None and any(not 0 <= i < vocab_size for i in values):
        raise ValueError(f"{name}: expected ids in [0, vocab_size={vocab_size}), got {values}")
    return values


# --------------------------------------------------------------------------------------------
# Padding and causal LM


def pad_sequences(
    sequences: Sequence[Sequence[int]], pad_value: int, length: int | None = None
) -> torch.Tensor:
    """Stack id sequences into one (n, length) int64 tensor, padding on the right.

    ``length`` defaults to the longest sequence; a longer sequence raises ValueError.
    """
    pad_value = require_int(pad_value, "pad_value", None)
    rows = [_as_ids(s, f"sequences[{i}]") for i, s in enumerate(sequences)]
    if not rows:
        raise ValueError("sequences: expected at least one sequence, got none")
    longest = max(len(r) for r in rows)
    if length is None:
        length = longest
    length = require_int(length, "length", 0)
    if longest > length:
        raise ValueError(f"length: {length} is shorter than the longest sequence ({longest})")
    out = torch.full((len(rows), length), pad_value, dtype=torch.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.int64)
    return out


def causal_lm_batch(
    documents: Sequence[Sequence[int]], pad_id: int = 0, max_len: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token prediction: (inputs, targets), both (batch, seq) int64.

    Document ``d`` (at least 2 ids; cut to its first ``max_len + 1`` ids when ``max_len`` is
    given) gives inputs ``d[:-1]`` and targets ``d[1:]``: position t's target is token t + 1.
    Shorter rows are padded with ``pad_id`` in the inputs and :data:`IGNORE_INDEX` in the
    targets, so padding is never scored. No randomness: the same documents, the same batch.
    """
    if max_len is not None:
        max_len = require_int(max_len, "max_len", 1)
    docs = [_as_ids(d, f"documents[{i}]") for i, d in enumerate(documents)]
    if not docs:
        raise ValueError("documents: expected at least one document, got none")
    for i, d in enumerate(docs):
        if len(d) < 2:
            raise ValueError(f"documents[{i}]: expected at least 2 token ids, got {len(d)}")
    if max_len is not None:
        docs = [d[: max_len + 1] for d in docs]
    inputs = pad_sequences([d[:-1] for d in docs], pad_id)
    targets = pad_sequences([d[1:] for d in docs], IGNORE_INDEX)
    return inputs, targets


# --------------------------------------------------------------------------------------------
# Masked LM


def mlm_mask(
    input_ids: torch.Tensor,
    vocab_size: int,
    mask_id: int,
    special_ids: Sequence[int],
    mlm_prob: float = 0.15,
    generator: torch.Generator | None = None,
    *,
    mask_frac: float = 0.8,
    random_frac: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: (inputs, labels), both shaped like ``input_ids`` (any shape), int64.

    Exactly three draws, each of the full shape, in this order (on the CPU, from ``generator``):

    1. ``select = torch.rand(shape) < mlm_prob``, then special positions are removed: a
       position whose id is in ``special_ids`` or is ``mask_id`` (padding included: put the
       pad id in ``special_ids``) is never selected;
    2. ``u = torch.rand(shape)``: a selected position becomes ``mask_id`` when
       ``u < mask_frac``, a random token when ``mask_frac <= u < mask_frac + random_frac``,
       and keeps its id otherwise (80% / 10% / 10% by default);
    3. ``torch.randint(n_ordinary, shape)`` indexes the sorted list of ordinary ids (those in
       ``[0, vocab_size)`` that are not special and not ``mask_id``): the random tokens are
       never special.

    ``labels`` hold the original id at selected positions and :data:`IGNORE_INDEX` (-100)
    elsewhere. ``input_ids`` is not modified.
    """
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids: expected a torch.Tensor, got {type(input_ids).__name__}")
    if input_ids.is_floating_point() or input_ids.dtype == torch.bool or input_ids.is_complex():
        raise TypeError(f"input_ids: expected an integer tensor, got dtype {input_ids.dtype}")
    vocab_size = require_int(vocab_size, "vocab_size", 2)
    mask_id = require_int(mask_id, "mask_id", 0)
    if mask_id >= vocab_size:
        raise ValueError(f"mask_id: expected an id in [0, vocab_size={vocab_size}), got {mask_id}")
    specials = _id_set(special_ids, "special_ids", vocab_size)
    mlm_prob = _require_prob(mlm_prob, "mlm_prob")
    mask_frac = _require_prob(mask_frac, "mask_frac")
    random_frac = _require_prob(random_frac, "random_frac")
    if mask_frac + random_frac > 1.0 + 1e-12:
        raise ValueError(f"mask_frac + random_frac: expected <= 1, got {mask_frac} + {random_frac}")
    _require_generator(generator)
    if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= vocab_size):
        raise ValueError(
            f"input_ids: expected ids in [0, vocab_size={vocab_size}), got values in "
            f"[{int(input_ids.min())}, {int(input_ids.max())}]"
        )
    never = torch.tensor(sorted({*specials, mask_id}), dtype=torch.int64)
    ordinary = torch.ones(vocab_size, dtype=torch.bool)
    ordinary[never] = False
    ordinary_ids = ordinary.nonzero().flatten()
    if len(ordinary_ids) == 0:
        raise ValueError("special_ids: every id of the vocabulary is special; nothing to mask")

    ids = input_ids.detach().cpu().long()
    shape = ids.shape
    selected = torch.rand(shape, generator=generator) < mlm_prob
    selected &= ~torch.isin(ids, never)
    u = torch.rand(shape, generator=generator)
    to_mask = selected & (u < mask_frac)
    to_random = selected & (u >= mask_frac) & (u < mask_frac + random_frac)
    random_ids = ordinary_ids[torch.randint(len(ordinary_ids), shape, generator=generator)]
    inputs = torch.where(to_mask, torch.full_like(ids, mask_id), ids)
    inputs = torch.where(to_random, random_ids, inputs)
    labels = torch.where(selected, ids, torch.full_like(ids, IGNORE_INDEX))
    return inputs.to(input_ids.device), labels.to(input_ids.device)


# --------------------------------------------------------------------------------------------
# Next-sentence prediction


def nsp_pairs(
    documents: Sequence[Sequence[Any]],
    generator: torch.Generator | None = None,
    next_prob: float = 0.5,
) -> tuple[list[Any], list[Any], torch.Tensor]:
    """Sentence pairs for next-sentence prediction: (sentences_a, sentences_b, is_next).

    ``documents`` is a list of documents, each a list of sentences (a sentence is anything:
    usually a list of ids). Every pair of consecutive sentences ``(doc[i], doc[i + 1])`` gives
    one example, in document order. Per example the draws are: ``u = torch.rand(1)``; if
    ``u < next_prob`` then B is ``doc[i + 1]`` and ``is_next`` is 1; otherwise B is a random
    sentence of a random OTHER document (``torch.randint(n_docs - 1, (1,))``, shifted past the
    current document, then ``torch.randint(len(that_doc), (1,))``) and ``is_next`` is 0.
    A negative never comes from the same document, so it cannot be the true next sentence.
    ``is_next`` is an int64 tensor of shape (n_examples,).
    """
    _require_generator(generator)
    next_prob = _require_prob(next_prob, "next_prob")
    if isinstance(documents, (str, bytes)) or not isinstance(documents, Sequence):
        raise TypeError(f"documents: expected a list of documents, got {type(documents).__name__}")
    docs = list(documents)
    if len(docs) < 2:
        raise ValueError(
            f"documents: expected at least 2 documents (negatives come from "
            f"other documents), got {len(docs)}"
        )
    for d, doc in enumerate(docs):
        if isinstance(doc, (str, bytes)) or not isinstance(doc, Sequence):
            raise TypeError(
                f"documents[{d}]: expected a list of sentences, got {type(doc).__name__}"
            )
        if len(doc) == 0:
            raise ValueError(f"documents[{d}]: expected at least one sentence, got none")
    sentences_a, sentences_b, labels = [], [], []
    for d, doc in enumerate(docs):
        for i in range(len(doc) - 1):
            sentences_a.append(doc[i])
            if torch.rand(1, generator=generator).item() < next_prob:
                sentences_b.append(doc[i + 1])
                labels.append(1)
            else:
                other = int(torch.randint(len(docs) - 1, (1,), generator=generator))
                other += other >= d  # skip the current document
                j = int(torch.randint(len(docs[other]), (1,), generator=generator))
                sentences_b.append(docs[other][j])
                labels.append(0)
    return sentences_a, sentences_b, torch.tensor(labels, dtype=torch.int64)


def bert_pair_batch(
    sentences_a: Sequence[Sequence[int]],
    sentences_b: Sequence[Sequence[int]],
    cls_id: int,
    sep_id: int,
    pad_id: int,
    max_len: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BERT's input for sentence pairs: (input_ids, token_type_ids, attention_mask).

    Row i is ``[CLS] a_i [SEP] b_i [SEP]`` padded with ``pad_id`` to the longest row; token
    types are 0 up to and including the first [SEP], 1 after it; the attention mask is 1 on
    real tokens. Pairs longer than ``max_len`` are cut as BERT does: one token at a time from
    the end of the longer sentence. All three are (batch, seq) int64.
    """
    for name, value in (("cls_id", cls_id), ("sep_id", sep_id), ("pad_id", pad_id)):
        require_int(value, name, 0)
    max_len = require_int(max_len, "max_len", 5)
    if len(sentences_a) != len(sentences_b):
        raise ValueError(
            f"sentences_b: expected {len(sentences_a)} sentences (one per "
            f"sentence of sentences_a), got {len(sentences_b)}"
        )
    if len(sentences_a) == 0:
        raise ValueError("sentences_a: expected at least one pair, got none")
    rows, types = [], []
    for i, (a, b) in enumerate(zip(sentences_a, sentences_b, strict=True)):
        a, b = _as_ids(a, f"sentences_a[{i}]"), _as_ids(b, f"sentences_b[{i}]")
        while len(a) + len(b) + 3 > max_len:
            if len(a) >= len(b):
                a = a[:-1]
            else:
                b = b[:-1]
        rows.append([cls_id, *a, sep_id, *b, sep_id])
        types.append([0] * (len(a) + 2) + [1] * (len(b) + 1))
    input_ids = pad_sequences(rows, pad_id)
    token_type_ids = pad_sequences(types, 0)
    attention_mask = pad_sequences([[1] * len(r) for r in rows], 0)
    return input_ids, token_type_ids, attention_mask


# --------------------------------------------------------------------------------------------
# Span corruption (T5)


def random_segmentation(n: int, k: int, generator: torch.Generator | None) -> list[int]:
    """``k`` positive lengths summing to ``n``, uniformly among such splits (k - 1 cuts).

    Always one draw, ``torch.randperm(n - 1)``, even when k == 1 (chapter 03's lab matches it).
    """
    n = require_positive_int(n, "n")
    k = require_positive_int(k, "k")
    if k > n:
        raise ValueError(f"k: expected at most n={n} segments, got {k}")
    cuts = sorted((torch.randperm(n - 1, generator=generator)[: k - 1] + 1).tolist())
    edges = [0, *cuts, n]
    return [b - a for a, b in zip(edges, edges[1:], strict=False)]


def span_corruption_mask(
    length: int,
    noise_density: float = 0.15,
    mean_span: float = 3.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Which of ``length`` positions are noise: a bool tensor (length,), as T5 draws it.

    ``round(length * noise_density)`` noise tokens (at least 1, at most length - 1) in
    ``k = round(n_noise / mean_span)`` spans (at least 1, at most min(n_noise, n_kept)).
    Draws: the noise tokens are split into k non-empty spans (``torch.randperm(n_noise - 1)``,
    its first k - 1 values + 1 are the cut points), then the kept tokens into k non-empty
    runs the same way. The text alternates kept run 0, noise span 0, kept run 1, ...: it
    always starts with kept tokens and ends with a noise span, and spans never touch.
    """
    length = require_int(length, "length", 2)
    noise_density = _require_prob(noise_density, "noise_density", low_open=True)
    if isinstance(mean_span, bool) or not isinstance(mean_span, (int, float)) or mean_span < 1:
        raise ValueError(f"mean_span: expected a number >= 1, got {mean_span!r}")
    _require_generator(generator)
    n_noise = min(max(round(length * noise_density), 1), length - 1)
    n_kept = length - n_noise
    k = min(max(round(n_noise / mean_span), 1), n_noise, n_kept)
    noise_lengths = random_segmentation(n_noise, k, generator)
    kept_lengths = random_segmentation(n_kept, k, generator)
    mask = torch.zeros(length, dtype=torch.bool)
    start = 0
    for kept, noise in zip(kept_lengths, noise_lengths, strict=True):
        start += kept
        mask[start : start + noise] = True
        start += noise
    return mask


def _require_sentinels(sentinel_ids: Any) -> list[int]:
    if isinstance(sentinel_ids, torch.Tensor):
        sentinel_ids = sentinel_ids.tolist()
    ids = _as_ids(sentinel_ids, "sentinel_ids")
    if len(set(ids)) != len(ids):
        raise ValueError(f"sentinel_ids: expected distinct ids, got {ids}")
    return ids


def span_corruption(
    ids: Sequence[int] | torch.Tensor,
    sentinel_ids: Sequence[int],
    noise_density: float = 0.15,
    mean_span: float = 3.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """T5's objective on one sequence: (encoder_inputs, decoder_targets), 1-D int64.

    The noise mask comes from :func:`span_corruption_mask` (same draws). Noise span j is
    replaced by ``sentinel_ids[j]`` in the inputs; the targets are ``sentinel_ids[0] span_0
    sentinel_ids[1] span_1 ... sentinel_ids[k]`` (a closing sentinel, as in the T5 paper's
    figure). So ``len(sentinel_ids)`` must exceed the number of spans, and the sentinels must
    not occur in ``ids``. :func:`undo_span_corruption` splices the spans back.
    """
    tokens = _as_ids(ids, "ids")
    sentinels = _require_sentinels(sentinel_ids)
    if set(tokens) & set(sentinels):
        raise ValueError("ids: contains sentinel ids; sentinels must be reserved tokens")
    mask = span_corruption_mask(len(tokens), noise_density, mean_span, generator).tolist()
    n_spans = sum(1 for i, m in enumerate(mask) if m and (i == 0 or not mask[i - 1]))
    if len(sentinels) < n_spans + 1:
        raise ValueError(
            f"sentinel_ids: expected at least {n_spans + 1} sentinels ({n_spans} spans + a "
            f"closing one), got {len(sentinels)}"
        )
    inputs, targets, span = [], [], -1
    for i, (token, noise) in enumerate(zip(tokens, mask, strict=True)):
        if noise:
            if i == 0 or not mask[i - 1]:
                span += 1
                inputs.append(sentinels[span])
                targets.append(sentinels[span])
            targets.append(token)
        else:
            inputs.append(token)
    targets.append(sentinels[span + 1])
    return torch.tensor(inputs, dtype=torch.int64), torch.tensor(targets, dtype=torch.int64)


def undo_span_corruption(
    inputs: Sequence[int] | torch.Tensor,
    targets: Sequence[int] | torch.Tensor,
    sentinel_ids: Sequence[int],
) -> torch.Tensor:
    """The original ids from (encoder_inputs, decoder_targets): each sentinel in the inputs
    is replaced by the tokens that follow it in the targets, up to the next sentinel."""
    inputs, targets = _as_ids(inputs, "inputs"), _as_ids(targets, "targets")
    sentinels = set(_require_sentinels(sentinel_ids))
    spans: dict[int, list[int]] = {}
    current = None
    for token in targets:
        if token in sentinels:
            current = token
            spans[current] = []
        elif current is None:
            raise ValueError("targets: expected to start with a sentinel id")
        else:
            spans[current].append(token)
    out = []
    for token in inputs:
        if token in sentinels:
            if token not in spans:
                raise ValueError(f"targets: no span for the sentinel {token} found in inputs")
            out.extend(spans[token])
        else:
            out.append(token)
    return torch.tensor(out, dtype=torch.int64)


def span_corruption_batch(
    documents: Sequence[Sequence[int]],
    sentinel_ids: Sequence[int],
    pad_id: int,
    noise_density: float = 0.15,
    mean_span: float = 3.0,
    generator: torch.Generator | None = None,
    start_id: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A T5 batch: (input_ids, attention_mask, decoder_input_ids, labels), all (batch, *).

    Each document goes through :func:`span_corruption` in order (one generator). The decoder
    is teacher-forced: its input is the target shifted right behind ``start_id`` (T5 uses the
    pad id, the default); ``labels`` are the targets, :data:`IGNORE_INDEX` on padding.
    """
    pad_id = require_int(pad_id, "pad_id", 0)
    start_id = pad_id if start_id is None else require_int(start_id, "start_id", 0)
    if len(documents) == 0:
        raise ValueError("documents: expected at least one document, got none")
    pairs = [
        span_corruption(d, sentinel_ids, noise_density, mean_span, generator) for d in documents
    ]
    inputs = pad_sequences([p[0] for p in pairs], pad_id)
    attention_mask = pad_sequences([[1] * len(p[0]) for p in pairs], 0)
    decoder_inputs = pad_sequences([[start_id, *p[1][:-1].tolist()] for p in pairs], pad_id)
    labels = pad_sequences([p[1] for p in pairs], IGNORE_INDEX)
    return inputs, attention_mask, decoder_inputs, labels
