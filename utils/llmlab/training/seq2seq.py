"""Chapter 01's encoder-decoder trained on a toy task, through the course's one training loop.

    >>> from llmlab import env
    >>> from llmlab.data.toy import ToyTask
    >>> from llmlab.evaluation import exact_match
    >>> from llmlab.models import EncoderDecoder, EncoderDecoderConfig
    >>> from llmlab.training.seq2seq import train_seq2seq
    >>> task = ToyTask("reverse")                  # "3 1 4 1 5" -> "5 1 4 1 3", lengths 1..16
    >>> env.seed_everything(0)
    >>> model = EncoderDecoder(EncoderDecoderConfig(vocab_size=task.vocab_size, pad_id=task.PAD))
    >>> history = train_seq2seq(model, task, steps=800, batch_size=64, lr=2e-3, seed=0)
    >>> exact_match(model, task.dataset(1000, split="test", seed=1))
    1.0

Teacher forcing: the decoder reads the target shifted right (BOS first) and predicts it (EOS
last); the loss is the cross-entropy over real target tokens (padding is not scored). Every
step draws a fresh batch from the task's train split; batch ``i`` is a pure function of
``(seed, i)``, as :func:`llmlab.training.train` requires, so a run is reproducible and
resumable. The optimizer, schedule and clipping are the loop's (:class:`TrainConfig`) with
Vaswani et al.'s betas (0.9, 0.98).
"""

from __future__ import annotations

import random

from torch import nn

from llmlab.data.toy import ToyTask
from llmlab.models.encoder_decoder import EncoderDecoder
from llmlab.training.loop import History, TrainConfig, train
from llmlab.training.losses import lm_loss
from llmlab.validate import require_positive_int

__all__ = ["seq2seq_loss", "train_seq2seq"]


def seq2seq_loss(model: nn.Module, batch, config: TrainConfig):
    """The loss of one (src, tgt_in, tgt_out) batch: cross-entropy over the non-PAD targets."""
    src, tgt_in, tgt_out = batch
    return lm_loss(model(src, tgt_in), tgt_out, config.label_smoothing, ignore_index=ToyTask.PAD)


def train_seq2seq(
    model: EncoderDecoder,
    task: ToyTask,
    steps: int = 800,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    progress: bool = True,
    warmup_frac: float = 0.1,
    weight_decay: float = 0.01,
    clip_norm: float = 1.0,
) -> History:
    """Train ``model`` on fresh batches of ``task``'s train split; returns the loop's History.

    AdamW (betas 0.9/0.98), linear warmup over ``warmup_frac`` of the steps then cosine decay
    to 0, gradient clipping at ``clip_norm``, no label smoothing. ``seed`` fixes the batches;
    seed the model's initialisation yourself before building it
    (``llmlab.env.seed_everything``).
    """
    if not isinstance(model, EncoderDecoder):
        raise TypeError(f"model: expected an EncoderDecoder, got {type(model).__name__}")
    if not isinstance(task, ToyTask):
        raise TypeError(f"task: expected a ToyTask, got {type(task).__name__}")
    if model.config.vocab_size < task.vocab_size:
        raise ValueError(
            f"model: expected vocab_size >= task.vocab_size={task.vocab_size}, "
            f"got {model.config.vocab_size}"
        )
    batch_size = require_positive_int(batch_size, "batch_size")
    config = TrainConfig(
        steps=steps, lr=lr, betas=(0.9, 0.98), weight_decay=weight_decay,
        warmup_frac=warmup_frac, min_lr_ratio=0.0, clip_norm=clip_norm, label_smoothing=0.0,
        seed=seed,
    )  # fmt: skip

    def batch_fn(i: int):
        return task.collate(task.draw(batch_size, random.Random(f"{seed}:{i}")))

    return train(model, batch_fn, config, loss_fn=seq2seq_loss, progress=progress)
