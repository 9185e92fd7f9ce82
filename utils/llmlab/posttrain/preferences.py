"""Preference pairs from a model's own samples, judged by a checker; training on pairs.

InstructGPT's reward model learned from people who ranked several answers the model itself had
sampled. Our tasks have a checker instead of people (:class:`llmlab.data.tasks.Task.check`), so a
preference pair is made the same way with the labels for free:

1. sample ``k`` answers to each prompt from the model (temperature 1: its own distribution);
2. judge each with the task's checker;
3. where a prompt got both a right and a wrong answer, pair a right one (*chosen*) with a wrong
   one (*rejected*).

The rejected answers are the model's real mistakes ("119" for 39 + 79, "bbora" for "bora"),
not strawmen written to lose, so a reward model must learn what makes this model's answers
wrong. A prompt whose ``k`` samples are all right or all wrong gives no pair: preference data
exists only where the model is uncertain, the same fact that makes GRPO's zero-variance groups
useless (notebook 7).

:func:`train_on_pairs` runs the course loop (:func:`llmlab.training.train`) over shuffled
batches of pairs with any pairwise loss: the reward model's Bradley-Terry loss
(:func:`llmlab.posttrain.reward.train_reward_model`) and DPO's
(:func:`llmlab.posttrain.dpo.train_dpo`) both use it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from llmlab.posttrain.logprobs import preference_batch
from llmlab.training.loop import History, TrainConfig, train
from llmlab.validate import require_int, require_positive_int, require_real

__all__ = [
    "PreferencePair",
    "pairs_from_samples",
    "SampledPairs",
    "sample_pairs",
    "draw_pair_sets",
    "pairs_to_json",
    "pairs_from_json",
    "pair_batch",
    "train_on_pairs",
]

_KEYS = ("input_ids", "attention_mask", "completion_mask")


@dataclass(frozen=True)
class PreferencePair:
    """One prompt, a preferred answer and a dispreferred one (``kind``: the task kind)."""

    prompt: str
    chosen: str
    rejected: str
    kind: str = ""


def _distinct(answers: Sequence[str]) -> list[str]:
    """The answers in first-seen order, each once (after stripping surrounding spaces)."""
    seen, out = set(), []
    for answer in answers:
        key = answer.strip()
        if key and key not in seen:
            seen.add(key)
            out.append(key)
    return out


def pairs_from_samples(
    tasks: Sequence[Any], samples: Sequence[Sequence[str]], per_prompt: int = 2
) -> list[PreferencePair]:
    """Pairs (a right answer, a wrong answer) from each task's sampled answers.

    ``tasks[i].check(answer)`` judges ``samples[i]``. A task with distinct right answers
    ``R`` and distinct wrong ones ``W`` (first-seen order, empty answers dropped) gives
    ``min(per_prompt, len(W))`` pairs: wrong answer ``j`` against right answer ``j mod |R|``.
    Tasks whose answers are all right or all wrong give none.
    """
    if len(samples) != len(tasks):
        raise ValueError(
            f"samples: expected one list of answers per task ({len(tasks)}), got {len(samples)}"
        )
    per_prompt = require_positive_int(per_prompt, "per_prompt")
    pairs = []
    for task, answers in zip(tasks, samples, strict=True):
        distinct = _distinct(answers)
        right = [a for a in distinct if task.check(a)]
        wrong = [a for a in distinct if not task.check(a)]
        if not right:
            continue
        for j, rejected in enumerate(wrong[:per_prompt]):
            pairs.append(PreferencePair(task.prompt, right[j % len(right)], rejected, task.kind))
    return pairs


@dataclass
class SampledPairs:
    """What :func:`sample_pairs` drew: the pairs, every sample and its verdict."""

    pairs: list[PreferencePair]
    samples: list[list[str]] = field(repr=False)
    correct: list[list[bool]] = field(repr=False)
    kinds: list[str] = field(repr=False)
    seconds: float = 0.0

    def table(self) -> str:
        """Per task kind: prompts, the share of right samples, prompts with a pair, pairs."""
        prompts, right, total, mixed, pairs = Counter(), Counter(), Counter(), Counter(), Counter()
        for kind, verdicts in zip(self.kinds, self.correct, strict=True):
            prompts[kind] += 1
            right[kind] += sum(verdicts)
            total[kind] += len(verdicts)
            mixed[kind] += 0 < sum(verdicts) < len(verdicts)
        for pair in self.pairs:
            pairs[pair.kind] += 1
        lines = [f"{'kind':16s} {'prompts':>7s} {'right samples':>13s} {'mixed':>7s} {'pairs':>6s}"]
        for kind in sorted(prompts):
            lines.append(
                f"{kind:16s} {prompts[kind]:7d} {right[kind] / total[kind]:13.1%} "
                f"{mixed[kind]:7d} {pairs[kind]:6d}"
            )
        n_total = sum(total.values())
        lines.append(
            f"{'all':16s} {sum(prompts.values()):7d} {sum(right.values()) / n_total:13.1%} "
            f"{sum(mixed.values()):7d} {len(self.pairs):6d}"
        )
        return "\n".join(lines)


def sample_pairs(
    model: nn.Module,
    tokenizer: Any,
    tasks: Sequence[Any],
    k: int = 4,
    per_prompt: int = 2,
    *,
    max_new_tokens: int = 16,
    batch_size: int = 8,
    temperature: float = 1.0,
    seed: int = 0,
    with_answer: bool = False,
) -> SampledPairs:
    """Sample ``k`` answers per task from ``model`` (chat template, nucleus 1.0), judge them with
    each task's checker, and pair right with wrong (:func:`pairs_from_samples`).

    ``with_answer``: also put each task's reference answer among its samples (last), so every
    prompt has a right answer: pairs of the gold answer against the model's own mistakes, for
    a model that is almost never right (the tiny random model of smoke runs).
    """
    import time

    from llmlab.posttrain.evaluate import sample_answers

    if not tasks:
        raise ValueError("tasks: expected at least one task, got none")
    started = time.perf_counter()
    samples = sample_answers(
        model,
        tokenizer,
        [t.prompt for t in tasks],
        k=k,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        temperature=temperature,
        top_p=1.0,
        seed=seed,
    )
    if with_answer:
        samples = [[*answers, t.answer] for t, answers in zip(tasks, samples, strict=True)]
    correct = [
        [bool(t.check(s)) for s in answers] for t, answers in zip(tasks, samples, strict=True)
    ]
    return SampledPairs(
        pairs=pairs_from_samples(tasks, samples, per_prompt),
        samples=[list(s) for s in samples],
        correct=correct,
        kinds=[t.kind for t in tasks],
        seconds=time.perf_counter() - started,
    )


def draw_pair_sets(
    model: nn.Module,
    tokenizer: Any,
    sets: dict[str, tuple[Sequence[Any], int]],
    *,
    k: int = 4,
    per_prompt: int = 2,
    max_new_tokens: int = 16,
    batch_size: int = 8,
    with_answer: bool = False,
) -> dict[str, Any]:
    """:func:`sample_pairs` for each named set ``name -> (tasks, seed)``, as one JSON-ready dict.

    The result (for :func:`llmlab.results.cached_json`) holds the settings (``k``,
    ``per_prompt``, ``max_new_tokens``, ``with_answer``) and, per set, its ``pairs`` (as
    :func:`pairs_to_json`), every sample and verdict, the prompts, kinds, the per-kind
    :meth:`SampledPairs.table` and the seconds sampling took.
    """
    if not isinstance(sets, dict) or not sets:
        raise ValueError("sets: expected a dict name -> (tasks, seed) with at least one entry")
    out: dict[str, Any] = {
        "k": k,
        "per_prompt": per_prompt,
        "max_new_tokens": max_new_tokens,
        "with_answer": with_answer,
    }
    for name, (tasks, seed) in sets.items():
        drawn = sample_pairs(
            model,
            tokenizer,
            tasks,
            k=k,
            per_prompt=per_prompt,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            seed=seed,
            with_answer=with_answer,
        )
        out[name] = {
            "pairs": pairs_to_json(drawn.pairs),
            "samples": drawn.samples,
            "correct": drawn.correct,
            "prompts": [t.prompt for t in tasks],
            "kinds": drawn.kinds,
            "table": drawn.table(),
            "seconds": drawn.seconds,
        }
    return out


def pairs_to_json(pairs: Sequence[PreferencePair]) -> list[dict[str, str]]:
    """Pairs as plain dicts (for :func:`llmlab.results.save_json`)."""
    return [asdict(p) for p in pairs]


def pairs_from_json(rows: Sequence[dict[str, str]]) -> list[PreferencePair]:
    """The inverse of :func:`pairs_to_json`, with a clear error on a malformed row."""
    out = []
    for i, row in enumerate(rows):
        try:
            out.append(PreferencePair(**row))
        except TypeError as err:
            raise ValueError(
                f"rows[{i}]: expected keys prompt, chosen, rejected (and kind), got {sorted(row)}"
            ) from err
    return out


def _check_pairs(pairs: Sequence[PreferencePair]) -> list[PreferencePair]:
    if not pairs:
        raise ValueError("pairs: expected at least one preference pair, got none")
    for i, p in enumerate(pairs):
        if not isinstance(p, PreferencePair):
            raise TypeError(f"pairs[{i}]: expected a PreferencePair, got {type(p).__name__}")
    return list(pairs)


def pair_batch(tokenizer: Any, pairs: Sequence[PreferencePair]) -> dict[str, torch.Tensor]:
    """:func:`llmlab.posttrain.logprobs.preference_batch` of ``pairs`` (chosen rows first)."""
    pairs = _check_pairs(pairs)
    return preference_batch(
        tokenizer, [p.prompt for p in pairs], [p.chosen for p in pairs], [p.rejected for p in pairs]
    )


def train_on_pairs(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[PreferencePair],
    loss_fn: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor],
    *,
    steps: int,
    batch_size: int = 8,
    lr: float = 1e-4,
    per_pair: dict[str, torch.Tensor] | None = None,
    warmup_frac: float = 0.1,
    min_lr_ratio: float = 0.1,
    weight_decay: float = 0.0,
    clip_norm: float | None = 1.0,
    seed: int = 0,
    progress: bool = False,
) -> History:
    """Train the parameters of ``model`` that require grad on batches of preference pairs.

    Step ``s`` takes ``batch_size`` pairs from a seeded shuffle of ``pairs`` (a fresh shuffle
    per epoch; an epoch's last short batch is kept) and calls ``loss_fn(model, batch)`` with
    :func:`pair_batch`'s tensors plus, for each ``per_pair[name]`` ((pairs,) tensors such as
    the reference's log-probs), the entries of the batch's pairs. The course loop runs it:
    AdamW, linear warmup then cosine decay to ``min_lr_ratio * lr``, gradients clipped to
    ``clip_norm``, bf16 autocast where the device has fast bf16.
    """
    from llmlab.env import default_precision
    from llmlab.posttrain.finetune import epoch_batches

    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn: expected a function (model, batch) -> loss, got {loss_fn!r}")
    pairs = _check_pairs(pairs)
    steps = require_positive_int(steps, "steps")
    batch_size = require_positive_int(batch_size, "batch_size")
    lr = require_real(lr, "lr")
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr: expected a finite learning rate > 0, got {lr!r}")
    seed = require_int(seed, "seed", 0)
    per_pair = dict(per_pair or {})
    for name, values in per_pair.items():
        if not isinstance(values, torch.Tensor) or values.shape != (len(pairs),):
            raise ValueError(
                f"per_pair[{name!r}]: expected a ({len(pairs)},) tensor, one entry per pair, got "
                f"{getattr(values, 'shape', type(values).__name__)}"
            )
        if name in _KEYS:
            raise ValueError(f"per_pair: {name!r} is a batch key already; choose another name")
    per_epoch = math.ceil(len(pairs) / batch_size)
    order = epoch_batches(len(pairs), batch_size, math.ceil(steps / per_epoch), seed)[:steps]
    names = list(per_pair)

    def batch_fn(i: int) -> tuple[torch.Tensor, ...]:
        picked = order[i]
        batch = pair_batch(tokenizer, [pairs[j] for j in picked])
        return (*(batch[k] for k in _KEYS), *(per_pair[n][picked] for n in names))

    def loop_loss(model: nn.Module, batch: tuple[torch.Tensor, ...], config: TrainConfig):
        return loss_fn(model, dict(zip((*_KEYS, *names), batch, strict=True)))

    device = next(model.parameters()).device
    config = TrainConfig(
        steps=steps,
        lr=lr,
        warmup_frac=warmup_frac,
        min_lr_ratio=min_lr_ratio,
        weight_decay=weight_decay,
        clip_norm=clip_norm,
        label_smoothing=0.0,
        precision=default_precision(device.type),
        seed=seed,
    )
    return train(model, batch_fn, config, loss_fn=loop_loss, progress=progress)
