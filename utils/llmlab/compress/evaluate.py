"""Chapter 05's one perplexity protocol, so every compressed variant is scored the same way.

Perplexity depends on how it is measured (window length, stride, how documents are joined),
so chapter 05 fixes one protocol and states it beside every number:

- **text**: the Python Language Reference (``llmlab.data.corpora.reference_corpus``: the
  ``help()`` topics, real English prose with code), topics in sorted order, each followed by
  the end-of-text token, tokenized with SmolLM2's tokenizer (shared by every model of the
  chapter);
- **windows**: the first ``n_windows`` non-overlapping windows of ``window`` tokens; each is
  scored on its own (no context carried over), every token but the first predicted;
- **score**: mean next-token NLL per window; perplexity = exp(mean over windows). Two models
  are compared window by window (:func:`paired_difference`): the mean difference with its
  standard error over windows, so a change smaller than that is reported as not measurable.

Full size: 16 windows of 512 tokens (8,176 predicted tokens); smoke runs use fewer.
Speed: :func:`generation_speed`, tokens per second of greedy generation at a given batch, and
:func:`compare_speed`, several models timed in turns on a machine that other work shares.
Methods that look at data first (calibration, GPTQ, AWQ, Wanda) read other text:
:func:`calibration_windows` cuts them from the standard library's docstrings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from llmlab.validate import require_positive_int

__all__ = [
    "Protocol",
    "PROTOCOL",
    "heldout_windows",
    "calibration_windows",
    "document_windows",
    "window_nll",
    "paired_difference",
    "gap_closed",
    "generation_speed",
    "compare_speed",
    "peak_memory_during",
]


@dataclass(frozen=True)
class Protocol:
    n_windows: int = 16
    window: int = 512

    def describe(self) -> str:
        return (
            f"Python Language Reference (help() topics), {self.n_windows} non-overlapping windows "
            f"of {self.window} tokens, each scored alone: {self.n_windows * (self.window - 1):,} "
            "predicted tokens"
        )


PROTOCOL = Protocol()


def document_windows(
    tokenizer: Any, documents, n: int, w: int, what: str = "documents"
) -> torch.Tensor:
    """The first ``n`` windows of ``w`` tokens of ``documents`` (strings, in order, each followed by
    the end-of-text token), (n, w) int64; ``what`` names the argument in the error raised when
    the text is too short."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for text in documents:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        ids.append(eos)
        if len(ids) >= n * w:
            break
    if len(ids) < n * w:
        raise ValueError(f"{what}: the text has {len(ids)} tokens, fewer than {n} x {w}")
    return torch.tensor(ids[: n * w], dtype=torch.long).view(n, w)


def heldout_windows(tokenizer: Any, protocol: Protocol = PROTOCOL) -> torch.Tensor:
    """The protocol's token windows, (n_windows, window) int64."""
    from llmlab.data.corpora import reference_corpus

    n = require_positive_int(protocol.n_windows, "protocol.n_windows")
    w = require_positive_int(protocol.window, "protocol.window")
    return document_windows(tokenizer, reference_corpus().documents, n, w, "protocol")


def calibration_windows(tokenizer: Any, n_windows: int = 8, window: int = 512) -> torch.Tensor:
    """Calibration text, (n_windows, window) int64: standard-library docstrings, never the
    evaluation text, in the corpus's order (a fixed, reproducible sample)."""
    from llmlab.data.corpora import docstring_corpus

    n = require_positive_int(n_windows, "n_windows")
    w = require_positive_int(window, "window")
    return document_windows(
        tokenizer, docstring_corpus(max_bytes=100_000 + 8 * n * w).documents, n, w, "n_windows"
    )


def _logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    out = model(ids)
    return out if isinstance(out, torch.Tensor) else out.logits


def window_nll(model: Any, windows: torch.Tensor, batch_size: int = 4) -> torch.Tensor:
    """Mean next-token NLL (nats) of each window, float64 (n_windows,)."""
    batch_size = require_positive_int(batch_size, "batch_size")
    if not isinstance(windows, torch.Tensor) or windows.dim() != 2 or windows.shape[1] < 2:
        raise ValueError("windows: expected an int tensor (n_windows, window) with window >= 2")
    out = []
    with torch.no_grad():
        for start in range(0, windows.shape[0], batch_size):
            ids = windows[start : start + batch_size]
            logits = _logits(model, ids).float()
            nll = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]),
                ids[:, 1:].reshape(-1),
                reduction="none",
            )
            out.append(nll.view(ids.shape[0], -1).double().mean(dim=1))
    return torch.cat(out)


def paired_difference(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """``(mean of a - b, its standard error)`` over windows scored by both models."""
    if a.shape != b.shape or a.dim() != 1 or a.numel() < 2:
        raise ValueError(
            f"a, b: expected two per-window NLL vectors of the same length >= 2, got "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )
    d = (a - b).double()
    return float(d.mean()), float(d.std(unbiased=True) / math.sqrt(d.numel()))


def gap_closed(
    base: torch.Tensor, rtn: torch.Tensor, nll: torch.Tensor, draws: int = 4000, seed: int = 0
) -> tuple[float, float, float]:
    """The share of ``rtn``'s mean NLL increase over ``base`` that ``nll`` takes back (1: all of
    it, 0: none, below 0: worse than RTN), and its 95% bootstrap interval: ``draws`` resamples of
    the windows with replacement, the same windows for all three (their differences are
    paired). ``(share, low, high)``; per-window NLL vectors as :func:`window_nll` returns."""
    draws = require_positive_int(draws, "draws")
    shape = getattr(base, "shape", None)
    for name, t in (("rtn", rtn), ("nll", nll)):
        if not isinstance(t, torch.Tensor) or t.shape != shape or t.dim() != 1:
            raise ValueError(f"{name}: expected a per-window NLL vector shaped like base")
    if base.numel() < 2:
        raise ValueError(f"base: expected at least 2 windows, got {base.numel()}")
    gap = (rtn.double().mean() - base.double().mean()).item()
    if gap == 0:
        raise ValueError("rtn: its mean NLL equals base's; there is no gap to close")
    share = (rtn.double().mean() - nll.double().mean()).item() / gap
    idx = torch.randint(base.numel(), (draws, base.numel()),
                        generator=torch.Generator().manual_seed(seed))  # fmt: skip
    b, r, m = (t.double()[idx].mean(dim=1) for t in (base, rtn, nll))
    shares = (r - m) / (r - b)
    low, high = torch.nanquantile(shares, torch.tensor([0.025, 0.975], dtype=torch.double)).tolist()
    return share, low, high


SPEED_PROMPT = "The history of the Python programming language begins"


def generation_speed(
    model: Any, tokenizer: Any, batch: int = 1, new_tokens: int = 32, repeats: int = 3
) -> float:
    """Tokens per second of greedy generation: ``batch`` copies of one prompt (no padding), each
    run making exactly ``new_tokens`` tokens after one warm-up; the median of ``repeats`` runs
    (a run slowed down by another program on the machine does not set the number)."""
    batch = require_positive_int(batch, "batch")
    new_tokens = require_positive_int(new_tokens, "new_tokens")
    repeats = require_positive_int(repeats, "repeats")
    import time

    inputs = tokenizer([SPEED_PROMPT] * batch, return_tensors="pt")
    pad = tokenizer.eos_token_id
    with torch.no_grad():
        model.generate(**inputs, max_new_tokens=2, do_sample=False, pad_token_id=pad)  # warm-up
        rates = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                           do_sample=False, pad_token_id=pad)  # fmt: skip
            rates.append(batch * new_tokens / (time.perf_counter() - t0))
    return sorted(rates)[len(rates) // 2]


def compare_speed(
    models: dict[str, Any],
    tokenizer: Any,
    batches: tuple[int, ...] = (1, 8),
    new_tokens: int = 32,
    repeats: int = 3,
) -> dict[str, dict[int, float]]:
    """:func:`generation_speed` of several models, measured in turns (every model once, then
    every model again, ``repeats`` times) so that a slow spell of the machine falls on all of
    them alike; the median per model and batch: ``{name: {batch: tokens/s}}``."""
    if not models:
        raise ValueError("models: expected at least one model")
    repeats = require_positive_int(repeats, "repeats")
    runs: dict[str, dict[int, list[float]]] = {name: {b: [] for b in batches} for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            for b in batches:
                runs[name][b].append(generation_speed(model, tokenizer, b, new_tokens, repeats=1))
    return {n: {b: sorted(r)[len(r) // 2] for b, r in per.items()} for n, per in runs.items()}


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_memory_during(fn: Any) -> tuple[Any, float | None, float | None]:
    """Run ``fn()`` and return ``(its result, MB resident before, peak MB resident during)``.

    Linux only (the peak is the kernel's high-water mark ``VmHWM``, reset through
    ``/proc/self/clear_refs`` before the call); elsewhere both numbers are None. The numbers
    are the whole process's, so measure one model per process to compare models.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the high-water mark to the current resident size
    except OSError:
        return fn(), None, None
    before = _status_kb("VmRSS")
    result = fn()
    peak = _status_kb("VmHWM")
    if before is None or peak is None:
        return result, None, None
    return result, before / 1024, peak / 1024
