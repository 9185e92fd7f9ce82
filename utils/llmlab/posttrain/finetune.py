"""Fine-tuning a causal LM as a classifier: full, lower layers frozen, or the head only.

Seed 004 §4 names two ways to adapt a pretrained model to a labelled task: freeze the lower
layers (they hold general knowledge) and train the upper ones, or train *all* parameters with a
smaller learning rate. This module builds both, and the cheapest case, a linear head on frozen
features:

- :class:`SequenceClassifier`: a decoder's backbone (transformers' ``LlamaModel``, i.e.
  ``LlamaForCausalLM.model``) and a linear head on the final hidden state of the **last real
  token**: logits = W · norm(h_L)[last], W of shape (n_classes, d). In a causal model only the
  last token has attended to the whole text, so it is the summary; this is the pooling of
  transformers' ``LlamaForSequenceClassification`` (equal logits, tested).
- :func:`freeze`: ``"full"`` (everything trains), ``"lower:k"`` (embeddings and blocks
  ``0 .. k-1`` frozen), ``"head"`` (only the head trains), ``"adapters"`` (the head and
  whatever adapters were injected, e.g. LoRA).
- :func:`frozen_states`: what a frozen part computes never changes, so it is computed once:
  the hidden states after block k (``"lower:k"``), or the pooled final features (``"head"``).
  Training from them is the same computation as training the whole model with those parts
  frozen (the frozen part's output is identical every epoch), and costs a fraction.
- :func:`finetune`: a run through the course's training loop (:func:`llmlab.training.train`:
  AdamW, linear warmup then cosine decay, gradient clipping, bf16 autocast where the CPU has
  bf16 units), batches padded per batch, fixed seed; returns accuracy, step time, peak memory
  and trainable parameters.
- :func:`lm_loss_on_texts`: the backbone's language-model loss (with the model's own LM head)
  on held-out text, before and after: how much the model *forgot*.

Inputs are padded on the right: with causal attention a real token never sees the padding
after it, so the last real token's state does not depend on how much padding a batch has.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from llmlab.env import default_precision
from llmlab.training import TrainConfig, autocast, lm_loss, train
from llmlab.training.losses import IGNORE_INDEX
from llmlab.training.objectives import pad_sequences

__all__ = [
    "SequenceClassifier",
    "frozen_blocks",
    "freeze",
    "trainable_parameters",
    "encode_texts",
    "pad_batch",
    "epoch_batches",
    "frozen_states",
    "FinetuneConfig",
    "FinetuneResult",
    "finetune",
    "predict",
    "lm_loss_on_texts",
]


class SequenceClassifier(nn.Module):
    """A causal LM's backbone with a linear head on the last real token's final hidden state.

    backbone: a transformers ``LlamaModel`` (``LlamaForCausalLM.model``): ``embed_tokens``,
        ``layers`` (the blocks), ``norm``, ``rotary_emb`` and ``config``. It is *shared*, not
        copied: training the classifier changes the causal LM it came from, which is how
        :func:`lm_loss_on_texts` measures forgetting.
    n_classes: the head's outputs. The head is ``nn.Linear(d, n_classes, bias=False)`` drawn
        from N(0, ``config.initializer_range``^2), as transformers initialises its ``score``.

    Shapes: ids and attention_mask (batch, seq), 1 for real tokens, padding on the right;
    hidden states (batch, seq, d); logits (batch, n_classes).
    """

    def __init__(self, backbone: nn.Module, n_classes: int):
        super().__init__()
        for name in ("embed_tokens", "layers", "norm", "rotary_emb", "config"):
            if not hasattr(backbone, name):
                raise TypeError(
                    f"backbone: expected a transformers LlamaModel (LlamaForCausalLM.model) with "
                    f"`{name}`, got {type(backbone).__name__}"
                )
        if not isinstance(n_classes, int) or isinstance(n_classes, bool) or n_classes < 2:
            raise ValueError(f"n_classes: expected an int >= 2, got {n_classes!r}")
        self.backbone = backbone
        d = backbone.config.hidden_size
        self.head = nn.Linear(d, n_classes, bias=False)
        nn.init.normal_(self.head.weight, std=backbone.config.initializer_range)
        self.head.to(backbone.embed_tokens.weight.device, backbone.embed_tokens.weight.dtype)

    @property
    def n_layers(self) -> int:
        return len(self.backbone.layers)

    def blocks(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        start: int = 0,
        stop: int | None = None,
    ) -> torch.Tensor:
        """Blocks ``start .. stop-1`` applied to ``hidden`` (batch, seq, d), the state after
        block ``start - 1`` (the embeddings for 0): causal attention over the real tokens,
        rotary positions 0 .. seq-1."""
        from transformers.masking_utils import create_causal_mask

        positions = torch.arange(hidden.shape[1], device=hidden.device)[None]
        mask = create_causal_mask(
            config=self.backbone.config,
            inputs_embeds=hidden,
            attention_mask=attention_mask,
            past_key_values=None,
            position_ids=positions,
        )
        rotary = self.backbone.rotary_emb(hidden, positions)
        for block in self.backbone.layers[start:stop]:
            hidden = block(
                hidden, attention_mask=mask, position_embeddings=rotary, position_ids=positions
            )
        return hidden

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The final norm of the last real token's state: (batch, seq, d) -> (batch, d)."""
        positions = torch.arange(hidden.shape[1], device=hidden.device)
        last = (positions * attention_mask).argmax(-1)  # the rightmost 1 of each row
        return self.backbone.norm(hidden[torch.arange(hidden.shape[0]), last])

    def features(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor,
        *,
        hidden: torch.Tensor | None = None,
        start: int = 0,
    ) -> torch.Tensor:
        """Pooled final features (batch, d), from ids or from ``hidden``, the state after
        ``start`` blocks (:func:`frozen_states`)."""
        if hidden is None:
            hidden = self.backbone.embed_tokens(input_ids)
        return self.pool(self.blocks(hidden, attention_mask, start), attention_mask)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor,
        *,
        hidden: torch.Tensor | None = None,
        start: int = 0,
    ) -> torch.Tensor:
        """Class logits (batch, n_classes) = head(features)."""
        return self.head(self.features(input_ids, attention_mask, hidden=hidden, start=start))


# --------------------------------------------------------------------------------------------
# What trains


def frozen_blocks(mode: str, n_layers: int) -> int:
    """How many blocks ``mode`` freezes: ``"full"`` and ``"adapters"`` 0, ``"lower:k"`` k,
    ``"head"`` all of them (and the final norm). ValueError for an unknown mode or k outside
    0 .. n_layers."""
    if mode in ("full", "adapters"):
        return 0
    if mode == "head":
        return n_layers
    if isinstance(mode, str) and mode.startswith("lower:"):
        k = mode.removeprefix("lower:")
        if k.isdigit() and 0 <= int(k) <= n_layers:
            return int(k)
    raise ValueError(
        f"mode: expected 'full', 'adapters', 'head' or 'lower:k' with 0 <= k <= {n_layers}, "
        f"got {mode!r}"
    )


def freeze(model: SequenceClassifier, mode: str) -> SequenceClassifier:
    """Set ``requires_grad`` for ``mode`` and return ``model``.

    ``"full"``: every parameter trains. ``"lower:k"``: the token embeddings and blocks
    ``0 .. k-1`` are frozen; blocks ``k ..``, the final norm and the head train. ``"head"``:
    only the head trains. ``"adapters"``: the backbone's flags are left as they are (set by
    :func:`llmlab.posttrain.lora.inject_lora` or a soft prompt: only the adapters train) and the
    head trains. (SmolLM2 ties its embeddings to its LM head: "full" changes the LM head too,
    the frozen modes do not.)
    """
    if not isinstance(model, SequenceClassifier):
        raise TypeError(f"model: expected a SequenceClassifier, got {type(model).__name__}")
    k = frozen_blocks(mode, model.n_layers)
    if mode == "adapters":
        flags = [p.requires_grad for p in model.backbone.parameters()]
        if all(flags) or not any(flags):
            raise ValueError(
                "mode: 'adapters' trains the backbone's parameters that require gradients and "
                f"expects the rest frozen, but {'all' if all(flags) else 'none'} of them require "
                "gradients (inject adapters first, e.g. llmlab.posttrain.lora.inject_lora)"
            )
        model.head.requires_grad_(True)
        return model
    model.requires_grad_(mode == "full")
    if mode != "full":
        for block in model.backbone.layers[k:]:
            block.requires_grad_(True)
        model.backbone.norm.requires_grad_(mode != "head")
    model.head.requires_grad_(True)
    return model


def trainable_parameters(model: nn.Module) -> int:
    """The number of parameters with ``requires_grad`` (each shared tensor counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --------------------------------------------------------------------------------------------
# Batches


def encode_texts(tokenizer, texts: Sequence[str], max_tokens: int) -> list[list[int]]:
    """Token ids of each text, cut to its first ``max_tokens`` tokens (no special tokens)."""
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise ValueError(f"max_tokens: expected a positive int, got {max_tokens!r}")
    if isinstance(texts, str) or not all(isinstance(t, str) and t for t in texts):
        raise TypeError("texts: expected a sequence of non-empty strings")
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [row[:max_tokens] for row in ids]


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention_mask), both (batch, longest) int64, padded on the right."""
    ids = pad_sequences(rows, pad_id)
    mask = pad_sequences([[1] * len(r) for r in rows], 0)
    return ids, mask


def _pad_states(states: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example hidden states (len_i, d) -> (batch, longest, d) zero-padded, and the mask."""
    longest = max(s.shape[0] for s in states)
    hidden = states[0].new_zeros(len(states), longest, states[0].shape[1])
    mask = torch.zeros(len(states), longest, dtype=torch.int64)
    for i, s in enumerate(states):
        hidden[i, : s.shape[0]] = s
        mask[i, : s.shape[0]] = 1
    return hidden, mask


@torch.no_grad()
def frozen_states(
    model: SequenceClassifier,
    ids: Sequence[Sequence[int]],
    pad_id: int,
    modes: Sequence[str],
    batch_size: int = 32,
    precision: str | None = None,
) -> dict[str, list[torch.Tensor] | torch.Tensor]:
    """What each frozen mode's frozen part outputs, for every text, in one forward pass.

    ``"lower:k"`` -> a list of (len_i, d) float32 tensors, the state after block k-1 (the
    embeddings for k = 0); ``"head"`` -> (n_texts, d), the pooled final features. ``"full"``
    freezes nothing and is not accepted. ``precision`` ("fp32" or "bf16" autocast; default:
    bf16 where the CPU has bf16 units) should be the one training uses.
    """
    precision = precision or default_precision("cpu")
    n = model.n_layers
    wanted = {mode: frozen_blocks(mode, n) for mode in modes}
    for mode in ("full", "adapters"):
        if mode in wanted:
            raise ValueError(f"modes: {mode!r} freezes no block, so it has no frozen states")
    out: dict[str, list] = {mode: [] for mode in wanted}
    model.eval()
    for b in range(0, len(ids), batch_size):
        rows = ids[b : b + batch_size]
        x, mask = pad_batch(rows, pad_id)
        with autocast(precision):
            hidden, done = model.backbone.embed_tokens(x), 0
            for k in sorted(set(wanted.values())):
                hidden, done = model.blocks(hidden, mask, done, k), k
                for mode, at in wanted.items():
                    if at != k:
                        continue
                    if mode == "head":
                        out[mode].append(model.pool(hidden, mask).float())
                    else:
                        out[mode] += [
                            h[: len(r)].float() for h, r in zip(hidden, rows, strict=True)
                        ]
    return {mode: torch.cat(v) if mode == "head" else v for mode, v in out.items()}


# --------------------------------------------------------------------------------------------
# Training and evaluation


@dataclass
class FinetuneConfig:
    """One fine-tuning run. ``lr`` is the peak rate for every trainable parameter; the course
    loop warms up linearly over ``warmup_frac`` of the steps, then decays by a cosine to 0."""

    mode: str = "full"
    lr: float = 5e-5
    epochs: int = 2
    batch_size: int = 16
    weight_decay: float = 0.01
    warmup_frac: float = 0.1
    clip_norm: float = 1.0
    seed: int = 0
    precision: str | None = None  # "fp32" | "bf16" (autocast); None: bf16 where the CPU has it
    cache: bool = True  # frozen modes train from frozen_states (False: through the frozen part)

    def __post_init__(self):
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"lr: expected a positive number, got {self.lr!r}")
        if self.precision not in (None, "fp32", "bf16"):
            raise ValueError(f"precision: expected None, 'fp32' or 'bf16', got {self.precision!r}")
        if not isinstance(self.mode, str):
            raise ValueError(f"mode: expected 'full', 'head' or 'lower:k', got {self.mode!r}")


@dataclass
class FinetuneResult:
    """What :func:`finetune` measured. ``peak_bytes``: the weights, plus the most memory one
    training step held above them (gradients, AdamW's two moments, activations), plus the
    frozen states the run trains from; ``step_seconds``: the median step."""

    mode: str
    accuracy: float
    trainable: int
    total: int
    steps: int
    step_seconds: float
    train_seconds: float
    peak_bytes: int
    loss: list[float] = field(repr=False)
    predictions: list[int] = field(repr=False)


def epoch_batches(n: int, batch_size: int, epochs: int, seed: int) -> list[list[int]]:
    """Indices of each batch: a fresh seeded shuffle per epoch; the last short batch is kept."""
    gen = torch.Generator().manual_seed(seed)
    order = []
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen).tolist()
        order += [perm[i : i + batch_size] for i in range(0, n, batch_size)]
    return order


def _batch_fn(start, ids, states, labels, pad_id, batches):
    """batch_fn(i) for the loop: the tensors of batch ``i``, from frozen states when given."""
    labels = torch.as_tensor(labels)

    def batch_fn(i):
        pick = batches[i]
        if states is None:
            return (*pad_batch([ids[j] for j in pick], pad_id), labels[pick])
        if isinstance(states, torch.Tensor):  # pooled features: the head alone trains
            return states[pick], labels[pick]
        return (*_pad_states([states[j] for j in pick]), labels[pick])

    return batch_fn


def _logits(model, batch, start):
    """Logits of a batch made by ``_batch_fn`` (its last tensor, the labels, excluded)."""
    if len(batch) == 2:
        return model.head(batch[0])
    first, mask = batch[:2]
    if first.is_floating_point():  # hidden states after block start - 1
        return model(None, mask, hidden=first, start=start)
    return model(first, mask)


def _loss_fn(start):
    def loss_fn(model, batch, config):
        return nn.functional.cross_entropy(_logits(model, batch, start).float(), batch[-1])

    return loss_fn


def finetune(
    model: SequenceClassifier,
    train_ids: Sequence[Sequence[int]],
    train_labels: Sequence[int],
    test_ids: Sequence[Sequence[int]],
    test_labels: Sequence[int],
    pad_id: int,
    config: FinetuneConfig,
    *,
    states: dict | None = None,
    measure_memory: bool = True,
    progress: bool = False,
) -> FinetuneResult:
    """Freeze ``model`` for ``config.mode``, train it on the training set, score the test set.

    train_ids / test_ids: token ids per text (:func:`encode_texts`); labels: class indices.
    states: :func:`frozen_states` of the training texts followed by the test texts, for the
        frozen modes (computed here when not given; pass them to share one forward pass
        between runs and seeds). ``"full"`` trains from the ids.
    measure_memory: time and profile one extra training step on a copy first (for ``peak_bytes``;
        0 when False).

    The model is changed in place (it is the trained model afterwards). Returns a
    :class:`FinetuneResult` with test accuracy, trainable and total parameters, the per-step
    training loss, the median step time and the peak memory.
    """
    if not isinstance(config, FinetuneConfig):
        raise TypeError(f"config: expected a FinetuneConfig, got {type(config).__name__}")
    if len(train_ids) != len(train_labels) or len(test_ids) != len(test_labels):
        raise ValueError(
            f"labels: expected one per text, got {len(train_labels)} for {len(train_ids)} training "
            f"texts and {len(test_labels)} for {len(test_ids)} test texts"
        )
    n_classes = model.head.out_features
    if not all(isinstance(y, int) and 0 <= y < n_classes for y in [*train_labels, *test_labels]):
        raise ValueError(f"labels: expected class indices in [0, {n_classes})")
    precision = config.precision or default_precision("cpu")
    mode, k = config.mode, frozen_blocks(config.mode, model.n_layers)
    freeze(model, mode)
    n_train = len(train_ids)
    cached = config.cache and (mode == "head" or k > 0)  # "lower:0" only freezes a lookup
    # ("adapters" caches nothing either: the adapters sit in every block)
    frozen = None
    if cached:
        if states is None:
            states = frozen_states(
                model, [*train_ids, *test_ids], pad_id, [mode], precision=precision
            )
        frozen = states[mode]
        if len(frozen) != n_train + len(test_ids):
            raise ValueError(
                f"states: expected {n_train + len(test_ids)} rows (training then test texts) for "
                f"{mode!r}, got {len(frozen)}"
            )
    start = k if cached and mode != "head" else 0
    train_states = frozen[:n_train] if cached else None
    batches = epoch_batches(n_train, config.batch_size, config.epochs, config.seed)
    batch_fn = _batch_fn(start, train_ids, train_states, train_labels, pad_id, batches)
    loss_fn = _loss_fn(start)
    loop_config = TrainConfig(
        steps=len(batches),
        lr=config.lr,
        weight_decay=config.weight_decay,
        warmup_frac=config.warmup_frac,
        min_lr_ratio=0.0,
        clip_norm=config.clip_norm,
        label_smoothing=0.0,
        precision=precision,
        seed=config.seed,
    )
    peak = 0
    if measure_memory:
        peak = _peak_step_bytes(model, batch_fn, loss_fn, loop_config)
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        cached = sum(s.numel() * s.element_size() for s in (frozen if frozen is not None else []))
        peak += weights + cached
    started = time.perf_counter()
    history = train(model, batch_fn, loop_config, loss_fn=loss_fn, progress=progress)
    train_seconds = time.perf_counter() - started
    test_states = frozen[n_train:] if cached else None
    predictions = predict(
        model, test_ids, pad_id, mode=mode, states=test_states, precision=precision
    )
    accuracy = sum(p == y for p, y in zip(predictions, test_labels, strict=True)) / len(test_labels)
    return FinetuneResult(
        mode=mode,
        accuracy=accuracy,
        trainable=trainable_parameters(model),
        total=sum(p.numel() for p in model.parameters()),
        steps=len(batches),
        step_seconds=statistics.median(history.seconds),
        train_seconds=train_seconds,
        peak_bytes=peak,
        loss=history.loss,
        predictions=predictions,
    )


def _peak_step_bytes(model, batch_fn, loss_fn, loop_config) -> int:
    """Peak bytes above the weights during one training step (on a copy of the model)."""
    from llmlab.env import peak_allocated_bytes

    probe = copy.deepcopy(model)
    one_step = TrainConfig(**{**loop_config.__dict__, "steps": 1})
    peak = peak_allocated_bytes(
        lambda: train(probe, batch_fn, one_step, loss_fn=loss_fn, progress=False)
    )
    return peak


@torch.no_grad()
def predict(
    model: SequenceClassifier,
    ids: Sequence[Sequence[int]],
    pad_id: int,
    *,
    mode: str = "full",
    states=None,
    batch_size: int = 32,
    precision: str | None = None,
) -> list[int]:
    """The predicted class of each text: from ids, or from ``mode``'s :func:`frozen_states`
    (the pooled features for ``"head"``, the states after block k for ``"lower:k"``)."""
    precision = precision or default_precision("cpu")
    start = frozen_blocks(mode, model.n_layers)
    model.eval()
    out = []
    for b in range(0, len(ids), batch_size):
        rows = range(b, min(b + batch_size, len(ids)))
        batch = _batch_fn(start, ids, states, [0] * len(ids), pad_id, [list(rows)])(0)
        with autocast(precision):
            out += _logits(model, batch, start).argmax(-1).tolist()
    return out


@torch.no_grad()
def lm_loss_on_texts(
    lm: nn.Module,
    ids: Sequence[Sequence[int]],
    pad_id: int,
    batch_size: int = 16,
    precision: str | None = None,
) -> float:
    """Mean next-token cross-entropy (nats per token) of a causal LM on the texts ``ids``.

    Every token but each text's first is a target; padding is never one. With the LM that a
    :class:`SequenceClassifier` shares its backbone with, before and after training, the
    difference is what fine-tuning made the model forget.
    """
    precision = precision or default_precision("cpu")
    if not ids or any(len(r) < 2 for r in ids):
        raise ValueError("ids: expected texts of at least 2 tokens each")
    lm.eval()
    total, count = 0.0, 0
    for b in range(0, len(ids), batch_size):
        x, mask = pad_batch(ids[b : b + batch_size], pad_id)
        targets = x[:, 1:].masked_fill(mask[:, 1:] == 0, IGNORE_INDEX)
        with autocast(precision):
            logits = lm(input_ids=x, attention_mask=mask).logits[:, :-1]
        n = int((targets != IGNORE_INDEX).sum())
        total += lm_loss(logits, targets).item() * n
        count += n
    return total / count
