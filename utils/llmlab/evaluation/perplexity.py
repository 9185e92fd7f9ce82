"""Perplexity and the likelihoods it is made of, the same way for every model of the course.

Perplexity is exp(mean negative log-likelihood per token, in nats): the number of equally
likely tokens the model is, on average, choosing between. Bits per byte divides the total NLL,
in bits, by the text's UTF-8 size, so models with different tokenizers can be compared.
:func:`sliding_window_nll` scores a token stream with a causal LM (every target exactly once),
:func:`token_log_probs` scores a continuation given a prompt; the n-gram models of
:mod:`llmlab.models.ngram` report through :func:`perplexity` and :func:`bits_per_byte` too.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from llmlab.validate import require_positive_int, require_token_ids

__all__ = ["perplexity", "bits_per_byte", "sliding_window_nll", "token_log_probs"]


def perplexity(mean_nll: float) -> float:
    """exp(``mean_nll``), the mean NLL per token in nats; inf when it would overflow a float."""
    return math.inf if math.isinf(mean_nll) or mean_nll > 700 else math.exp(mean_nll)


def bits_per_byte(total_nll: float, n_bytes: int) -> float:
    """Total NLL (nats) converted to bits, divided by ``n_bytes``, the text's UTF-8 size."""
    if n_bytes <= 0:
        raise ValueError(f"n_bytes: expected > 0, got {n_bytes}")
    return total_nll / math.log(2) / n_bytes


def sliding_window_nll(
    model: Callable[[torch.Tensor], torch.Tensor],
    tokens,
    window: int,
    stride: int | None = None,
    batch_size: int = 32,
) -> torch.Tensor:
    """NLL (nats, float64) of every token of a stream but the first, as a causal LM scores it.

    ``model(ids)`` maps (batch, seq <= window) ids to (batch, seq, vocab) logits. The stream is
    read in windows of ``window`` inputs starting every ``stride`` tokens; each window scores
    only the targets that no earlier window scored, so every target ``tokens[1:]`` is scored
    exactly once. ``stride == window`` (the default) gives non-overlapping windows, where a
    target sees only the tokens before it in its own window (none at a window's start);
    a smaller stride gives every target at least ``window - stride`` tokens of context, at
    ``window / stride`` times the compute (the "sliding window" perplexity of fixed-length
    models). Returns a tensor of ``len(tokens) - 1`` values in stream order.
    """
    tokens = torch.as_tensor(tokens, dtype=torch.long).flatten()
    for name, value in (("window", window), ("batch_size", batch_size)):
        require_positive_int(value, name)
    stride = window if stride is None else stride
    if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= window:
        raise ValueError(f"stride: expected an int in [1, window={window}], got {stride!r}")
    if tokens.numel() < 2:
        raise ValueError(f"tokens: expected at least 2 tokens, got {tokens.numel()}")
    was_training = getattr(model, "training", False)
    if was_training:
        model.eval()
    n_targets = tokens.numel() - 1
    # window k reads inputs [b, b + window) and scores targets b + 1 .. b + window whose
    # index is past what window k - 1 scored; the first window that reaches the end is the last
    last = next(b for b in range(0, n_targets, stride) if b + window >= n_targets)
    begins = list(range(0, last + 1, stride))
    short = last + window > n_targets  # the last window is cut by the end of the stream
    full = begins[:-1] if short else begins
    groups = [full[i : i + batch_size] for i in range(0, len(full), batch_size)]
    groups += [[last]] if short else []
    out = torch.empty(n_targets, dtype=torch.float64)
    for group in groups:
        length = min(window, n_targets - group[0])
        x = torch.stack([tokens[b : b + length] for b in group])
        y = torch.stack([tokens[b + 1 : b + length + 1] for b in group])
        logp = model(x).float().log_softmax(-1)
        nll = -logp.gather(-1, y[..., None]).squeeze(-1).double()
        for row, b in zip(nll, group, strict=True):
            first_new = 0 if b == 0 else window - stride  # targets earlier windows did not score
            out[b + first_new : b + length] = row[first_new:]
    if was_training:
        model.train()
    return out


@torch.no_grad()
def token_log_probs(
    model: Callable, prompt_ids: torch.Tensor, new_ids: torch.Tensor
) -> torch.Tensor:
    """log p(new token t | prompt, earlier new tokens) for each new token: (batch, n_new) float32.

    One forward pass over prompt + continuation (teacher forcing). The mean is a text's average
    log-probability; ``exp(-mean)`` its perplexity under the model.
    """
    require_token_ids(prompt_ids, "prompt_ids", min_seq=1)  # the first new token needs a context
    require_token_ids(new_ids, "new_ids", batch=prompt_ids.shape[0])
    if new_ids.shape[1] == 0:
        return torch.zeros(prompt_ids.shape[0], 0)
    ids = torch.cat([prompt_ids.long(), new_ids.long()], dim=1)
    logits = model(ids)[:, prompt_ids.shape[1] - 1 : -1, :].float()
    return logits.log_softmax(dim=-1).gather(-1, new_ids.long()[..., None]).squeeze(-1)
