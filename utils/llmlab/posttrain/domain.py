"""Domain adaptation by continued pretraining: train further on the domain's raw text.

A pretrained model has seen a little of everything. Before it is fine-tuned for a task of one
domain (medicine, law, code), seed 004 trains it further on that domain's *unlabelled* text with
its own pretraining objective, next-token prediction, "to learn the domain's own knowledge, then
fine-tune for the task" (Gururangan et al. 2020 call it DAPT). Chapter 04's domain is the
standard library's source code. This module holds what notebook 10 needs:

- :func:`domain_corpora`: the files continued pretraining may read, and the files held out from
  it (a seeded share, every file a task's test set came from, and the Language Reference);
- :func:`token_stream`: documents as one stream of ids, an end-of-text token after each (what
  :class:`llmlab.data.packing.RandomBatchSampler` cuts training windows from);
- :func:`score_code`: the next-token loss, top-1 accuracy and **greedy line completion** on
  held-out windows, from one forward pass each. A line is completed exactly by greedy decoding
  (in the reference's tokens) when the model's top-1 prediction is right at every token of the
  line, given the true text before it: no generation loop is needed to count it;
- :func:`heldout_docstrings`: prose from held-out files that no training file repeats;
- :func:`lora_cpt_model`: LoRA continued pretraining with the course loop, cached with its
  training history.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from llmlab.data.corpora import REFERENCE_FILE, Corpus
from llmlab.validate import require_positive_int

__all__ = [
    "domain_corpora",
    "token_stream",
    "newline_tokens",
    "line_spans",
    "eval_windows",
    "CodeScore",
    "score_code",
    "heldout_docstrings",
    "lora_cpt_model",
]


def _path(source: str) -> str:
    """The file of a source: ``"email/message.py:Message.get"`` -> ``"email/message.py"``."""
    return source.split(":", 1)[0]


def domain_corpora(
    code: Corpus,
    exclude: Iterable[str] = (),
    heldout: float = 0.1,
    seed: int = 0,
) -> tuple[Corpus, Corpus]:
    """``(train, held_out)``: the files of ``code`` that continued pretraining reads, and the rest.

    A seeded share ``heldout`` of the files (:meth:`Corpus.split`) is held out for measuring;
    so is every file named in ``exclude`` (paths, or sources such as a task's test set's
    ``"asyncio/tasks.py:Task.cancel"``) and the Language Reference's file (its prose is the
    general text that forgetting is measured on). The held-out corpus is the seeded share only:
    the excluded files are kept out of training, not added to the measurement.
    """
    if not isinstance(code, Corpus):
        raise TypeError(f"code: expected a Corpus (llmlab.data.corpora), got {type(code).__name__}")
    if not (isinstance(heldout, float) and 0.0 < heldout < 1.0):
        raise ValueError(f"heldout: expected a float share in (0, 1), got {heldout!r}")
    if isinstance(exclude, str):
        raise TypeError("exclude: expected an iterable of paths or sources, got one str")
    banned = {_path(s) for s in exclude} | {REFERENCE_FILE}
    train, _, held = code.split((1.0 - heldout, 0.0, heldout), seed=seed)
    return train.subset([i for i, s in enumerate(train.sources) if s not in banned]), held


def token_stream(tokenizer: Any, documents: Sequence[str]) -> torch.Tensor:
    """1-D int64 ids: each document's tokens (no special tokens) followed by the tokenizer's
    end-of-text token, which tells the model that what follows is unrelated."""
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ValueError("tokenizer: expected one with an eos_token_id (the document separator)")
    if isinstance(documents, str) or not all(isinstance(d, str) and d for d in documents):
        raise TypeError("documents: expected a sequence of non-empty strings")
    if not documents:
        raise ValueError("documents: expected at least one document")
    rows = tokenizer(list(documents), add_special_tokens=False)["input_ids"]
    return torch.tensor([i for row in rows for i in (*row, eos)], dtype=torch.long)


def newline_tokens(tokenizer: Any) -> torch.Tensor:
    """Bool (vocab,): True for the tokens whose text holds a line break. SmolLM2's tokenizer
    joins a line break to the next line's indentation (``"\\n   "``), so these tokens are where
    one line ends and the next begins."""
    n = len(tokenizer)
    texts = tokenizer.convert_ids_to_tokens(list(range(n)))
    decoded = [tokenizer.convert_tokens_to_string([t]) if t is not None else "" for t in texts]
    return torch.tensor(["\n" in t for t in decoded], dtype=torch.bool)


def line_spans(ids: torch.Tensor, is_newline: torch.Tensor) -> list[tuple[int, int]]:
    """``(start, end)`` token positions (inclusive) of every complete, non-blank line in ``ids``.

    A line starts right after a line-break token and ends at the next one, which it includes
    (predicting it is predicting that the line ends there). The text before the first break and
    after the last one is not a complete line; a span of one token is a blank line and skipped.
    """
    if ids.dim() != 1:
        raise ValueError(f"ids: expected a 1-D tensor of token ids, got shape {tuple(ids.shape)}")
    breaks = is_newline[ids].nonzero().flatten().tolist()
    return [(a + 1, b) for a, b in zip(breaks[:-1], breaks[1:], strict=True) if b - a > 1]


def eval_windows(tokens: torch.Tensor, n: int, seq_len: int) -> torch.Tensor:
    """(n, seq_len + 1): ``n`` non-overlapping windows spread evenly over ``tokens`` (a 1-D
    stream), the same every time: a measurement set that samples the whole held-out text."""
    n, seq_len = require_positive_int(n, "n"), require_positive_int(seq_len, "seq_len")
    if not (isinstance(tokens, torch.Tensor) and tokens.dim() == 1):
        raise ValueError("tokens: expected a 1-D tensor of token ids (token_stream)")
    width = seq_len + 1
    if n * width > len(tokens):
        raise ValueError(
            f"n: {n} windows of {width} tokens need {n * width:,} tokens, the stream has "
            f"{len(tokens):,}"
        )
    gap = (len(tokens) - n * width) // max(n - 1, 1)
    return torch.stack([tokens[i * (width + gap) : i * (width + gap) + width] for i in range(n)])


@dataclass(frozen=True)
class CodeScore:
    """What :func:`score_code` measured on held-out windows: totals, and per window and per
    line, so that two models measured on the same windows can be compared pair by pair."""

    loss: float  # nats per token
    token_accuracy: float  # top-1 next-token accuracy
    tokens: int
    lines: int  # complete non-blank lines scored
    exact_lines: int  # lines greedy decoding completes exactly
    window_loss: tuple[float, ...] = dataclasses.field(default=(), repr=False)
    line_exact: tuple[bool, ...] = dataclasses.field(default=(), repr=False)  # in window order

    @property
    def line_accuracy(self) -> float:
        return self.exact_lines / self.lines if self.lines else 0.0

    def __str__(self) -> str:
        return (
            f"loss {self.loss:.3f} nats/token, next token {self.token_accuracy:.1%}, "
            f"lines completed exactly {self.exact_lines}/{self.lines} ({self.line_accuracy:.1%})"
        )


@torch.no_grad()
def score_code(
    model: nn.Module,
    windows: torch.Tensor,
    is_newline: torch.Tensor,
    batch_size: int = 4,
) -> CodeScore:
    """Loss, top-1 accuracy and greedy line completion of a causal LM on ``windows``.

    windows: (n, seq + 1) int64 token ids; position t is predicted from positions < t, so the
        first token of each window is context only. A line (:func:`line_spans`, inside one
        window, starting at position >= 1) counts as completed exactly when the model's argmax
        equals the true token at every one of its positions.
    The model runs in whatever autocast the caller sets; the loss is computed in fp32.
    """
    if not (isinstance(windows, torch.Tensor) and windows.dim() == 2 and windows.shape[1] >= 2):
        raise ValueError(
            "windows: expected a (n, seq + 1) tensor of token ids with seq >= 1, got "
            f"{tuple(windows.shape) if isinstance(windows, torch.Tensor) else type(windows).__name__}"
        )
    batch_size = require_positive_int(batch_size, "batch_size")
    was_training = model.training
    model.eval()
    nll, correct_tokens, tokens, window_loss, line_exact = 0.0, 0, 0, [], []
    for lo in range(0, len(windows), batch_size):
        ids = windows[lo : lo + batch_size]
        out = model(input_ids=ids[:, :-1], use_cache=False)
        logits = (out.logits if hasattr(out, "logits") else out).float()
        targets = ids[:, 1:]
        per_token = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), targets, reduction="none"
        )  # (batch, seq)
        nll += per_token.sum().item()
        window_loss += per_token.mean(1).tolist()
        right = logits.argmax(-1) == targets  # right[b, t]: token t + 1 of the window
        correct_tokens += int(right.sum())
        tokens += targets.numel()
        for row, ok in zip(ids, right, strict=True):
            line_exact += [bool(ok[a - 1 : b].all()) for a, b in line_spans(row, is_newline)]
    model.train(was_training)
    return CodeScore(
        loss=nll / tokens,
        token_accuracy=correct_tokens / tokens,
        tokens=tokens,
        lines=len(line_exact),
        exact_lines=sum(line_exact),
        window_loss=tuple(window_loss),
        line_exact=tuple(line_exact),
    )


def heldout_docstrings(
    docstrings: Corpus, held: Corpus, train: Corpus, min_chars: int = 80
) -> list[str]:
    """Docstrings (of :func:`llmlab.data.corpora.docstring_corpus`) from the held-out files,
    at least ``min_chars`` long, except those whose first line a training file also holds (an
    overriding method often repeats its parent's docstring): English prose about code that
    continued pretraining has not read."""
    held_files = set(held.sources)
    seen = {_unquoted(line) for doc in train.documents for line in doc.splitlines()}
    out = []
    for doc, source in zip(docstrings.documents, docstrings.sources, strict=True):
        first = _unquoted(doc.splitlines()[0])
        if _path(source) in held_files and len(doc) >= min_chars and first not in seen:
            out.append(doc)
    return out


def _unquoted(line: str) -> str:
    """A source line without indentation, string prefix and quotes: ``r\"\"\"Text.\"\"\"`` -> ``Text.``"""
    line = line.strip()
    if line[:1] in "rRuU" and line[1:2] in "\"'":
        line = line[1:]
    return line.strip("\"'").strip()


def lora_cpt_model(
    base: nn.Module,
    tokens: torch.Tensor,
    *,
    name: str,
    steps: int,
    batch_size: int = 8,
    seq_len: int = 128,
    lr: float = 5e-4,
    rank: int = 16,
    seed: int = 0,
    precision: str = "fp32",
    evaluate: Callable[[nn.Module], float] | None = None,
    eval_every: int = 0,
    merge: bool = True,
):
    """Continued pretraining with LoRA: ``(model, history, trained)``.

    Adapters of rank ``rank`` on every linear layer of a copy of ``base``
    (:func:`llmlab.posttrain.lora.cached_lora`), trained with the course loop
    (:func:`llmlab.training.train`) on the next-token loss (no label smoothing, no weight decay)
    over ``steps`` batches of ``batch_size`` random windows of ``seq_len`` tokens from
    ``tokens`` (:class:`llmlab.data.packing.RandomBatchSampler`, seeded), AdamW at ``lr`` with
    the loop's warm-up and cosine decay. ``evaluate(model)`` is called every ``eval_every``
    steps (a held-out loss for the curve). The adapter and the :class:`History` are saved in
    the course cache under ``name + "-history"`` and ``name`` (in that order); when the adapter
    exists nothing trains (``trained`` is False) and the saved history is returned (None if it
    is missing).
    """
    from llmlab import results
    from llmlab.data.packing import RandomBatchSampler
    from llmlab.posttrain.lora import cached_lora
    from llmlab.posttrain.sft import ALL_LINEAR
    from llmlab.training import History, TrainConfig, train

    if not (isinstance(tokens, torch.Tensor) and tokens.dim() == 1):
        raise ValueError("tokens: expected a 1-D tensor of token ids (token_stream)")
    config = TrainConfig(
        steps=steps,
        lr=lr,
        weight_decay=0.0,
        label_smoothing=0.0,
        precision=precision,
        eval_every=eval_every,
        seed=seed,
    )
    sampler = RandomBatchSampler(tokens, batch_size=batch_size, seq_len=seq_len, seed=seed)
    log_name = f"{name}-history"
    fitted = {}

    def fit(model):
        history = train(model, sampler, config, evaluate=evaluate, progress=False)
        results.save_json(log_name, dataclasses.asdict(history))  # before the adapter is saved
        fitted["history"] = history

    model, trained = cached_lora(
        base, name, fit, target_modules=ALL_LINEAR, rank=rank, seed=seed, merge=merge
    )
    if trained:
        return model, fitted["history"], True
    try:
        saved = History(**results.load_json(log_name))
    except results.ResultMissingError:
        saved = None  # an adapter saved without its log (by hand): the model, without a curve
    return model, saved, trained
