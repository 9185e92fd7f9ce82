"""Training (chapter 03): the pieces of the loop, each in its own module, and the loop.

- :mod:`llmlab.training.optim`: AdamW and Muon from their definitions, gradient clipping.
- :mod:`llmlab.training.schedule`: warmup + cosine.
- :mod:`llmlab.training.losses`: the language-model loss (label smoothing, ``IGNORE_INDEX``).
- :mod:`llmlab.training.loop`: :class:`TrainConfig`, :class:`History`, :func:`train`
  (accumulation, mixed precision, evaluation, checkpoints). Every other trainer of the
  course (the encoder-decoder of chapter 01, SFT, DPO, GRPO in chapter 04) runs through it
  with its own loss.
- :mod:`llmlab.training.checkpoints`: atomic checkpoints that resume exactly.
- :mod:`llmlab.training.objectives`: causal LM, MLM, NSP and span-corruption batches.
- :mod:`llmlab.training.scaling`: power-law fits and compute-optimal sizes.
- :mod:`llmlab.training.seq2seq`: chapter 01's encoder-decoder trained on a toy task.

The loop's public names are re-exported here (``from llmlab.training import train, TrainConfig``).
"""

from llmlab.training.checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint
from llmlab.training.loop import History, TrainConfig, autocast, make_optimizer, train
from llmlab.training.losses import IGNORE_INDEX, lm_loss
from llmlab.training.optim import (
    NS_COEFFICIENTS,
    AdamW,
    Muon,
    clip_grad_norm,
    grad_norm,
    muon_param_groups,
    orthogonalize,
)
from llmlab.training.schedule import warmup_cosine

__all__ = [
    "AdamW",
    "Muon",
    "NS_COEFFICIENTS",
    "orthogonalize",
    "muon_param_groups",
    "grad_norm",
    "clip_grad_norm",
    "warmup_cosine",
    "IGNORE_INDEX",
    "lm_loss",
    "TrainConfig",
    "History",
    "make_optimizer",
    "autocast",
    "train",
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
]
