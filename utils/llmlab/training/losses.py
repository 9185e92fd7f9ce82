"""The language-model loss: next-token cross-entropy, optionally label-smoothed."""

from __future__ import annotations

import torch

__all__ = ["IGNORE_INDEX", "lm_loss"]

IGNORE_INDEX = -100  # targets with this id are not scored (PyTorch's and transformers' convention)


def lm_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    label_smoothing: float = 0.0,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Mean cross-entropy of next-token predictions, optionally label-smoothed.

    logits: (..., vocab); targets: (...) token ids, ``ignore_index`` where nothing is scored.
    With smoothing eps the target distribution is (1 - eps) on the true token plus eps spread
    uniformly over the vocabulary: loss = (1 - eps) * NLL + eps * mean_over_vocab(-log p).
    Equal to ``F.cross_entropy(..., label_smoothing=eps)``.
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"targets: expected shape {tuple(logits.shape[:-1])} (logits without the vocab dim), "
            f"got {tuple(targets.shape)}"
        )
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing: expected a float in [0, 1), got {label_smoothing!r}")
    logp = logits.float().log_softmax(-1).flatten(0, -2)
    targets = targets.flatten()
    keep = targets != ignore_index
    if not keep.any():
        return logp.sum() * 0.0  # nothing scored: a zero that still has a graph
    # Pick each row's target first and drop the ignored rows after: logp[keep] would copy the
    # whole (tokens, vocab) matrix, and its backward write another (a tenth of a CPU step).
    nll = -logp.gather(1, torch.where(keep, targets, 0)[:, None]).squeeze(1)
    if label_smoothing == 0.0:
        return nll[keep].mean()
    uniform = -logp.mean(-1)
    return ((1 - label_smoothing) * nll + label_smoothing * uniform)[keep].mean()
