"""The learning-rate schedule: linear warmup, then cosine decay."""

from __future__ import annotations

import math

from llmlab.validate import require_positive_int

__all__ = ["warmup_cosine"]


def warmup_cosine(
    step: int, total_steps: int, warmup_frac: float = 0.1, min_ratio: float = 0.0
) -> float:
    """The learning-rate multiplier at ``step`` (0-based): linear warmup, then cosine decay.

    Rises linearly from 1/warmup to 1 over the first ``warmup_frac`` of ``total_steps``, then
    follows half a cosine from 1 down to ``min_ratio`` at the last step. Multiply the peak
    learning rate by it (``torch.optim.lr_scheduler.LambdaLR`` does exactly that).
    """
    require_positive_int(total_steps, "total_steps")
    if not 0.0 <= warmup_frac < 1.0:
        raise ValueError(f"warmup_frac: expected a float in [0, 1), got {warmup_frac!r}")
    if not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"min_ratio: expected a float in [0, 1], got {min_ratio!r}")
    warmup = round(warmup_frac * total_steps)
    if step < warmup:
        return (step + 1) / warmup
    decay_steps = max(1, total_steps - 1 - warmup)
    progress = min(1.0, (step - warmup) / decay_steps)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
