"""Supervised fine-tuning (SFT, "instruction tuning"): chat examples, a loss on the answer only,
packing, and the training loop.

An SFT example is a conversation rendered by the model's **chat template**. SmolLM2's is ChatML:

    <|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n
    <|im_start|>user\\nWhat is 37 + 58? Answer with the number only.<|im_end|>\\n
    <|im_start|>assistant\\n95<|im_end|>\\n

(the template adds that default system turn when the conversation has none). The model reads
every token but is trained to *produce* only the assistant's: the **labels** are the input ids
with -100 (``IGNORE_INDEX``) on the system turn, the user turn and the ``<|im_start|>assistant\\n``
header, and the real ids on the answer, its end-of-turn token ``<|im_end|>`` and the template's
newline after it. Keeping ``<|im_end|>`` teaches the model to stop; without it, it never learns
where an answer ends. The trailing newline is kept too: it is part of the rendered turn (the next
turn of a conversation starts after it), generation stops at ``<|im_end|>`` (the eos token)
before it could matter, and trl's SFTTrainer with ``completion_only_loss`` counts it, so our
loss and trl's are the same number (``tests/test_posttrain_sft.py`` checks token by token).

The loss is the next-token cross-entropy of position t's logits against the label at t + 1,
averaged over the tokens that carry a label (:func:`sft_loss`): the mean is **per token across
the whole batch**, not per example, as trl and transformers compute it. A long answer therefore
weighs more than a short one, and padding (labels -100) weighs nothing. With gradient
accumulation, :func:`train_sft` divides by the labelled tokens of the whole optimizer step
(transformers' ``num_items_in_batch``), so accumulation changes nothing but memory.

**Packing** (:func:`pack_examples`) puts several short examples in one row instead of padding
each: position ids restart at 0 for each example and a block-diagonal causal mask keeps each
example from seeing its neighbours, so every token's logits equal those of its example run alone.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from llmlab.training.loop import History, TrainConfig, train
from llmlab.training.losses import IGNORE_INDEX, lm_loss
from llmlab.validate import require_dims, require_int, require_positive_int, require_real

__all__ = [
    "chat_messages",
    "prompt_ids",
    "format_example",
    "sft_loss",
    "collate",
    "PackedBatch",
    "pack_examples",
    "as_model_mask",
    "train_sft",
    "ALL_LINEAR",
    "lora_sft_model",
    "cached_lora_sft",
]

Example = tuple[torch.Tensor, torch.Tensor]  # (input_ids, labels), both (seq,) int64


# --------------------------------------------------------------------------------------------
# Chat formatting


def chat_messages(
    prompt: str,
    answer: str | None = None,
    system: str | None = None,
    shots: Sequence[tuple[str, str]] = (),
) -> list[dict]:
    """The conversation ``[system?, (user, assistant) per shot, user, assistant?]`` as messages.

    ``system=None`` leaves the system turn to the template (SmolLM2's adds its default one).
    ``shots``: (prompt, answer) demonstrations, written as earlier turns of the conversation.
    """
    for name, value in (("prompt", prompt), ("answer", answer), ("system", system)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{name}: expected a str, got {type(value).__name__} {value!r}")
    messages = [] if system is None else [{"role": "system", "content": system}]
    for i, shot in enumerate(shots):
        if not (
            isinstance(shot, tuple) and len(shot) == 2 and all(isinstance(x, str) for x in shot)
        ):
            raise TypeError(f"shots[{i}]: expected a (prompt, answer) pair of str, got {shot!r}")
        messages += [
            {"role": "user", "content": shot[0]},
            {"role": "assistant", "content": shot[1]},
        ]
    messages.append({"role": "user", "content": prompt})
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages


def _render(tokenizer: Any, messages: list[dict], add_generation_prompt: bool) -> list[int]:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"tokenizer: expected a tokenizer with a chat template, {type(tokenizer).__name__} has none"
        )
    text = tokenizer.apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt, tokenize=False
    )
    # The template writes every special token itself: no BOS may be added in front.
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def prompt_ids(
    tokenizer: Any, prompt: str, system: str | None = None, shots: Sequence[tuple[str, str]] = ()
) -> list[int]:
    """The ids a model sees before it answers: the conversation up to ``<|im_start|>assistant\\n``.

    Training (:func:`format_example`) and evaluation (:mod:`llmlab.posttrain.evaluate`) both
    build their prompts here, so the model is tested on exactly the context it was trained on.
    """
    messages = chat_messages(prompt, system=system, shots=shots)
    return _render(tokenizer, messages, add_generation_prompt=True)


def format_example(
    tokenizer: Any, prompt: str, answer: str, system: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One SFT example: ``(input_ids, labels)``, both (seq,) int64.

    input_ids: the whole conversation rendered by the tokenizer's chat template.
    labels: -100 on the prompt (system turn, user turn, assistant header); the input id on the
    answer, its end-of-turn token and the newline after it (see the module docstring).

    The prompt's ids must be a prefix of the conversation's: if a template rendered the prompt
    differently alone, or a token merged across the boundary, the model would be trained on a
    context it never sees at inference, and a ValueError says so.
    """
    if not isinstance(answer, str) or not answer:
        raise ValueError(f"answer: expected a non-empty str, got {answer!r}")
    context = prompt_ids(tokenizer, prompt, system)
    full = _render(tokenizer, chat_messages(prompt, answer, system), add_generation_prompt=False)
    if full[: len(context)] != context:
        raise ValueError(
            "tokenizer: its chat template tokenizes the prompt differently alone than followed by "
            f"the answer (answer={answer!r}); the answer's tokens cannot be told from the prompt's"
        )
    input_ids = torch.tensor(full, dtype=torch.long)
    labels = input_ids.clone()
    labels[: len(context)] = IGNORE_INDEX
    return input_ids, labels


# --------------------------------------------------------------------------------------------
# The loss and the batch


def sft_loss(
    logits: torch.Tensor, labels: torch.Tensor, num_items: int | torch.Tensor | None = None
) -> torch.Tensor:
    """Completion-only cross-entropy: position t's logits predict the label at t + 1.

    logits: (batch, seq, vocab); labels: (batch, seq), -100 where nothing is scored.
    loss = sum over scored t of -log softmax(logits[:, t])[labels[:, t + 1]] / N, where N is
    the number of scored tokens in this batch (a mean per token, as trl computes it), or
    ``num_items`` when given: the scored tokens of every micro-batch of an optimizer step, so
    that accumulated micro-batches add up to one per-token mean.
    """
    require_dims(logits, 3, "logits", "(batch, seq, vocab)")
    require_dims(labels, 2, "labels", "(batch, seq)")
    if labels.shape != logits.shape[:2]:
        raise ValueError(
            f"labels: expected shape {tuple(logits.shape[:2])} (the logits' batch and seq), "
            f"got {tuple(labels.shape)}"
        )
    targets = labels[:, 1:]
    loss = lm_loss(logits[:, :-1], targets)
    if num_items is None:
        return loss
    num_items = int(num_items)
    if num_items < 1:
        raise ValueError(f"num_items: expected a positive count of scored tokens, got {num_items}")
    return loss * (targets != IGNORE_INDEX).sum() / num_items


def _check_example(example: Any, index: int) -> Example:
    if not (isinstance(example, (tuple, list)) and len(example) == 2):
        raise TypeError(
            f"examples[{index}]: expected an (input_ids, labels) pair, got {type(example).__name__}"
        )
    ids, labels = (torch.as_tensor(x, dtype=torch.long) for x in example)
    if ids.dim() != 1 or ids.shape != labels.shape or ids.numel() == 0:
        raise ValueError(
            f"examples[{index}]: expected input_ids and labels of the same shape (seq,), got "
            f"{tuple(ids.shape)} and {tuple(labels.shape)}"
        )
    return ids, labels


def _check_examples(examples: Sequence[Example]) -> list[Example]:
    if not isinstance(examples, Sequence) or not examples:
        raise ValueError(
            f"examples: expected a non-empty list of (input_ids, labels), got {examples!r}"
        )
    return [_check_example(example, i) for i, example in enumerate(examples)]


def collate(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad examples into a batch: ``input_ids``, ``labels``, ``attention_mask``, (batch, seq).

    Padding gets ``pad_id`` in input_ids, 0 in the attention mask and -100 in the labels. The
    labels are masked by *position*, not by id: SmolLM2 pads with ``<|im_end|>``, the very token
    the model must learn to produce at the end of each answer.
    """
    examples = _check_examples(examples)
    pad_id = require_int(pad_id, "pad_id", 0)
    length = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    attention_mask = torch.zeros_like(input_ids)
    for row, (ids, lab) in enumerate(examples):
        input_ids[row, : len(ids)] = ids
        labels[row, : len(ids)] = lab
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


# --------------------------------------------------------------------------------------------
# Packing


@dataclass
class PackedBatch:
    """Examples packed into rows of ``max_len`` tokens (see :func:`pack_examples`).

    input_ids, labels, position_ids: (rows, max_len) int64; position ids restart at 0 at each
    example (and at the padding that fills a row's end).
    attention_mask: (rows, 1, max_len, max_len) bool, True where query i may attend to key j:
    i and j in the same example (or both in the padding) and j <= i. Block-diagonal causal.
    placement: for example k, ``(row, start)``: its tokens are ``input_ids[row, start:start+len]``.
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor
    placement: list[tuple[int, int]]


def pack_examples(examples: Sequence[Example], max_len: int, pad_id: int) -> PackedBatch:
    """Pack examples into as few rows of ``max_len`` tokens as first-fit decreasing finds.

    Longest example first, each into the first row with room for it; an example is never split
    (its answer would lose its context), so one longer than ``max_len`` is a ValueError. Rows
    are ordered as they were opened. Each example gets its own positions (0, 1, ...) and sees
    only itself, so a packed forward gives every token the logits it gets alone. Padding (its
    own segment, so that no query row of the mask is empty) carries labels -100.

    The first token of each example is a prompt token, so the loss never asks a token to
    predict the start of the next example.
    """
    examples = _check_examples(examples)
    max_len = require_positive_int(max_len, "max_len")
    pad_id = require_int(pad_id, "pad_id", 0)
    too_long = [i for i, (ids, _) in enumerate(examples) if len(ids) > max_len]
    if too_long:
        raise ValueError(
            f"max_len: expected >= the longest example ({max(len(examples[i][0]) for i in too_long)} "
            f"tokens, examples {too_long[:5]}), got {max_len}"
        )
    order = sorted(range(len(examples)), key=lambda k: -len(examples[k][0]))
    rows: list[list[int]] = []  # example indices per row
    free: list[int] = []
    for k in order:
        n = len(examples[k][0])
        row = next((r for r, room in enumerate(free) if room >= n), None)
        if row is None:
            rows.append([])
            free.append(max_len)
            row = len(rows) - 1
        rows[row].append(k)
        free[row] -= n

    input_ids = torch.full((len(rows), max_len), pad_id, dtype=torch.long)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    position_ids = torch.zeros_like(input_ids)
    segment = torch.zeros_like(input_ids)  # which example of its row each token belongs to
    placement: list[tuple[int, int]] = [(0, 0)] * len(examples)
    for r, members in enumerate(rows):
        start = 0
        for s, k in enumerate(members):
            ids, lab = examples[k]
            end = start + len(ids)
            input_ids[r, start:end] = ids
            labels[r, start:end] = lab
            position_ids[r, start:end] = torch.arange(len(ids))
            segment[r, start:end] = s
            placement[k] = (r, start)
            start = end
        position_ids[r, start:] = torch.arange(max_len - start)
        segment[r, start:] = len(members)
    causal = torch.ones(max_len, max_len, dtype=torch.bool).tril()
    same = segment[:, :, None] == segment[:, None, :]
    attention_mask = (same & causal)[:, None]
    return PackedBatch(input_ids, labels, position_ids, attention_mask, placement)


def as_model_mask(mask: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """A packed boolean 4-D mask in the form ``model``'s attention implementation reads.

    transformers passes a 4-D mask to the attention function untouched: SDPA takes booleans
    (True = attend), the eager implementation *adds* the mask to the scores, so it needs 0 where
    attention is allowed and the dtype's minimum elsewhere (a boolean there would add 1 or 0 and
    mask nothing). FlashAttention and flex attention take no dense mask: pass them
    ``position_ids`` and ``use_cache=False`` but no mask. transformers then finds the example
    boundaries where the positions restart, but only without a cache: with the default
    ``use_cache=True`` it skips that search and the packed examples silently attend to each
    other (transformers 5.23; the tests check both).
    """
    require_dims(mask, 4, "mask", "(rows, 1, seq, seq)")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask: expected a bool tensor, got dtype {mask.dtype}")
    implementation = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if implementation == "sdpa":
        return mask
    if implementation == "eager":
        dtype = next(model.parameters()).dtype
        return torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, torch.finfo(dtype).min)
    raise ValueError(
        f"model: expected a transformers model with attn_implementation 'sdpa' or 'eager', got "
        f"{implementation!r}; pass position_ids without a mask to other implementations"
    )


# --------------------------------------------------------------------------------------------
# The loop


def train_sft(
    model: nn.Module,
    examples: Sequence[Example],
    pad_id: int,
    *,
    steps: int = 100,
    batch_size: int = 8,
    grad_accum: int = 1,
    lr: float = 1e-4,
    warmup_frac: float = 0.1,
    min_lr_ratio: float = 0.1,
    weight_decay: float = 0.0,
    clip_norm: float | None = 1.0,
    seed: int = 0,
    packing: bool = False,
    max_len: int | None = None,
    progress: bool = True,
    on_step: Callable[[int, History], None] | None = None,
) -> History:
    """Fine-tune ``model`` (a transformers causal LM) on SFT examples; returns the History.

    Runs :func:`llmlab.training.train`: AdamW on the parameters with ``requires_grad`` (so a
    LoRA-injected model trains its adapters only), linear warmup over ``warmup_frac`` of the
    steps then cosine decay to ``min_lr_ratio * lr``, gradients clipped to ``clip_norm``,
    ``grad_accum`` micro-batches of ``batch_size`` per step, bf16 autocast where
    :func:`llmlab.env.autocast_dtype` says the device has fast bf16, seeded throughout.

    examples: ``(input_ids, labels)`` pairs from :func:`format_example`. They are visited in a
    seeded random order, reshuffled each epoch; micro-batch i is a pure function of i. Without
    packing a micro-batch is ``batch_size`` examples right-padded by :func:`collate`; with
    ``packing=True`` it is ``batch_size`` rows of ``max_len`` tokens from :func:`pack_examples`.
    ``history.loss[s]`` is step s's mean loss per labelled token (over all its micro-batches).
    """
    from llmlab.env import default_precision

    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch nn.Module, got {type(model).__name__}")
    examples = _check_examples(examples)
    pad_id = require_int(pad_id, "pad_id", 0)
    batch_size = require_positive_int(batch_size, "batch_size")
    lr = require_real(lr, "lr")
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr: expected a finite learning rate > 0, got {lr!r}")
    if not isinstance(packing, bool):
        raise TypeError(f"packing: expected a bool, got {type(packing).__name__}")
    if packing and max_len is None:
        raise ValueError("max_len: expected the row length when packing=True, got None")
    device = next(model.parameters()).device
    precision = default_precision(device.type)
    config = TrainConfig(
        steps=steps,
        lr=lr,
        grad_accum=grad_accum,
        warmup_frac=warmup_frac,
        min_lr_ratio=min_lr_ratio,
        weight_decay=weight_decay,
        clip_norm=clip_norm,
        label_smoothing=0.0,
        precision=precision,
        seed=seed,
    )

    if packing:
        packed = pack_examples(examples, max_len, pad_id)
        mask = as_model_mask(packed.attention_mask, model)
        rows = [
            (packed.input_ids[r], packed.labels[r], packed.position_ids[r], mask[r])
            for r in range(len(packed.input_ids))
        ]
    else:
        rows = examples
    scored = [int((row[1][1:] != IGNORE_INDEX).sum()) for row in rows]

    @functools.lru_cache(maxsize=4)
    def permutation(epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        return torch.randperm(len(rows), generator=generator).tolist()

    def indices(micro: int) -> list[int]:
        """Rows of micro-batch ``micro``: consecutive slices of per-epoch seeded permutations."""
        positions = range(micro * batch_size, (micro + 1) * batch_size)
        return [permutation(p // len(rows))[p % len(rows)] for p in positions]

    def batch_fn(micro: int) -> tuple[torch.Tensor, ...]:
        first = micro - micro % config.grad_accum  # the step's first micro-batch
        step_rows = [k for m in range(first, first + config.grad_accum) for k in indices(m)]
        num_items = torch.tensor(max(1, sum(scored[k] for k in step_rows)))
        chosen = [rows[k] for k in indices(micro)]
        if packing:
            return (*(torch.stack(parts) for parts in zip(*chosen, strict=True)), num_items)
        batch = collate(chosen, pad_id)
        return batch["input_ids"], batch["labels"], batch["attention_mask"], num_items

    def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, ...], config: TrainConfig):
        if packing:
            input_ids, labels, position_ids, mask, num_items = batch
            out = model(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=position_ids,
                use_cache=False,
            )
        else:
            input_ids, labels, attention_mask, num_items = batch
            out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        # train() divides each micro-batch's loss by grad_accum; the division by the step's
        # token count already averages, so undo it.
        return sft_loss(out.logits, labels, num_items) * config.grad_accum

    return train(model, batch_fn, config, loss_fn=loss_fn, progress=progress, on_step=on_step)


#: Every linear layer of a Llama block: where notebook 4's LoRA SFT puts its adapters.
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def lora_sft_model(
    base: nn.Module,
    tokenizer: Any,
    tasks: Sequence[Any],
    *,
    name: str,
    rank: int = 16,
    steps: int = 60,
    batch_size: int = 8,
    lr: float = 1e-3,
    seed: int = 0,
    merge: bool = True,
) -> tuple[nn.Module, bool]:
    """Notebook 4's LoRA SFT model, from the course cache or trained again: ``(model, trained)``.

    A deep copy of ``base`` (a transformers causal LM) gets LoRA adapters of rank ``rank``
    (alpha ``2 * rank``) on :data:`ALL_LINEAR`, drawn with ``seed``. Their weights are the
    course-cache result ``name`` when it exists; otherwise they are trained on ``tasks`` with
    notebook 4's recipe (:func:`train_sft`: ``steps`` steps of ``batch_size`` examples at
    ``lr``) and saved under ``name`` (``trained`` is then True). With ``merge`` the adapters
    are folded into the weights and removed, so the result is a plain model that a later
    method (a reward head, DPO's own adapter) can build on.
    """
    rank = require_positive_int(rank, "rank")  # cached_lora checks base and name
    model, trained, _ = cached_lora_sft(
        base,
        name,
        lambda: [format_example(tokenizer, t.prompt, t.answer) for t in tasks],
        tokenizer.pad_token_id,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        rank=rank,
        seed=seed,
        merge=merge,
    )
    return model, trained


def cached_lora_sft(
    base: nn.Module,
    name: str,
    make_examples: Callable[[], Sequence[Example]],
    pad_id: int,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    rank: int = 16,
    seed: int = 0,
    packing: bool = False,
    max_len: int | None = None,
    merge: bool = True,
) -> tuple[nn.Module, bool, dict]:
    """LoRA SFT kept in the course cache, with its loss curve: ``(model, trained, record)``.

    A copy of ``base`` gets adapters of rank ``rank`` on
    :data:`ALL_LINEAR`; they are read from the course-cache result ``name``, or trained by
    :func:`train_sft` on ``make_examples()`` (called only then, so a cache hit builds no data)
    for ``steps`` steps of ``batch_size`` at ``lr`` and saved, then merged (unless ``merge`` is
    False). ``record`` holds the
    loss per step, the training seconds and the number of examples, saved as ``name + "-history"``
    (empty when an old cache entry has no history). ``packing``/``max_len``: as in
    :func:`train_sft` (rows of ``max_len`` tokens, ``batch_size`` rows a step). Put the recipe in ``name`` (a fingerprint):
    the cache cannot tell two recipes apart.
    """
    import time

    from llmlab import results
    from llmlab.posttrain.lora import cached_lora

    record: dict = {}

    def fit(model: nn.Module) -> None:
        examples = list(make_examples())
        started = time.perf_counter()
        history = train_sft(
            model,
            examples,
            pad_id,
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            packing=packing,
            max_len=max_len,
            progress=False,
        )
        record.update(
            loss=list(history.loss),
            seconds=time.perf_counter() - started,
            n_examples=len(examples),
        )
        results.save_json(f"{name}-history", record)

    model, trained = cached_lora(
        base, name, fit, target_modules=ALL_LINEAR, rank=rank, seed=seed, merge=merge
    )
    if not trained:
        try:
            record = results.load_json(f"{name}-history")
        except results.ResultMissingError:
            record = {"loss": [], "seconds": float("nan"), "n_examples": None}
    return model, trained, record
