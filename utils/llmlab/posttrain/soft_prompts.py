"""Soft prompts: classification as completion, prompt tuning and prefix tuning, equal to ``peft``.

Seed 004 §4 calls it prompt learning: a prompt turns the task into the pretraining task
(next-token prediction), "sentence: 'the weather is nice today'; sentiment: __", the model
completes the label word, and only a few parameters tied to the prompt are trained while the
model itself stays frozen. This module builds the three steps from their definitions.

**Verbalised classification** (the model's own LM head, no new head). A template turns a text
into a prompt that stops where the label should follow (``"Docstring: {text}\\nPackage:"``);
class ``c`` is scored by the first token ``t_c`` of its label word with the leading space
(``" asyncio"``), the *verbaliser*. The scores are the LM's next-token logits at the prompt's
last position, restricted to the label tokens:

    score(x)_c = logits(prompt(x))[last, t_c],      p(c | x) = softmax_c score(x)_c

(:func:`label_token_ids`, :func:`build_prompt`, :func:`class_logits`). A hand-written prompt is
zero-shot, or few-shot with solved examples rendered before the question.

**Prompt tuning** (Lester et al. 2021, :class:`PromptTuning`): ``n`` trainable vectors
``P`` (n, d) are put in front of the token embeddings ``E(x)`` (seq, d); the frozen model reads
``[P; E(x)]`` with the attention mask ``[1 ... 1; mask]``. ``n * d`` parameters (SmolLM2,
d = 576: 5,760 for n = 10).

**Prefix tuning** (Li & Liang 2021, :class:`PrefixTuning`): every layer ``l`` gets ``n``
trainable keys and values per KV head, ``K_l^p, V_l^p`` (kv_heads, n, head_dim), in front of
the keys and values it computes from the text, so each query attends over ``[K_l^p; K_l]`` and
mixes ``[V_l^p; V_l]``. They enter the model as a pre-filled KV cache (transformers'
``DynamicCache``): the text is read as the continuation of ``n`` positions whose keys and values
were learned, in every layer. ``2 * n_layers * kv_heads * head_dim * n`` parameters (SmolLM2,
30 layers, 3 KV heads of 64 under grouped-query attention: 11,520 per virtual position).
Optionally reparameterised (Li & Liang §4.3, peft's ``prefix_projection``): the prefix is
``MLP(E)`` for a trainable ``E`` (n, kv_dim) and ``MLP = Linear(kv_dim, h) -> tanh ->
Linear(h, 2 * n_layers * kv_dim)``, which they found trains more stably; only its output is
needed after training.

Positions, as peft counts them: the virtual positions are 0 .. n-1 and the text continues at
n, n+1, ...; a prefix key carries no rotation of its own (it is stored as a key in the cache,
where keys are already rotated). Initialisation: peft's rules (``random``: N(0, 1) as
``nn.Embedding`` draws; ``text``: the embeddings of a tokenised text, repeated and cut to n;
``vocab``: embeddings of random tokens), plus, for prefix tuning, Li & Liang's initialisation
from the keys and values a real text produces (§7.2). Both ``text`` inits start exactly where
the hard prompt ``text`` would (tested).

Batches are padded on the left by default: every prompt ends in the last column, so only the
last position's logits are computed (``logits_to_keep=1``), and position ids count from each
row's first real token, so padding changes nothing (tested: batched == one at a time, for
padding on either side).

    >>> label_ids = label_token_ids(tokenizer, data.label_names)
    >>> prompts = [build_prompt(t, "Docstring: {text}\\nPackage:") for t in data.train.texts]
    >>> wrapper = PromptTuning(model, 10, init="text", text="Which package?", tokenizer=tokenizer)
    >>> result = train_soft_prompt(wrapper, tokenizer, prompts, data.train.labels, label_ids)
    >>> results.save_tensors("04_post_training/prompt_tuning", peft_state_dict(wrapper))
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.env import default_precision
from llmlab.posttrain.finetune import epoch_batches, trainable_parameters
from llmlab.posttrain.logprobs import _pad
from llmlab.posttrain.reward import last_token_index
from llmlab.training import IGNORE_INDEX, TrainConfig, autocast, train
from llmlab.validate import require_positive_int

__all__ = [
    "label_token_ids",
    "build_prompt",
    "encode_prompts",
    "class_logits",
    "text_init_ids",
    "PromptTuning",
    "PrefixTuning",
    "trainable_parameters",
    "peft_state_dict",
    "load_peft_state_dict",
    "SoftPromptResult",
    "train_soft_prompt",
]

PADDING_SIDES = ("left", "right")
PRECISIONS = (None, "fp32", "bf16")
PROMPT_INITS = ("random", "text", "vocab")
PREFIX_INITS = ("random", "text")
#: The key of a prompt-learning adapter in peft's saved state (``adapter_model.safetensors``).
PEFT_KEY = "prompt_embeddings"


# --------------------------------------------------------------------------------------------
# Verbalised classification


def _strings(values, name: str) -> list[str]:
    if isinstance(values, str) or not all(isinstance(v, str) and v for v in values):
        raise TypeError(f"{name}: expected a sequence of non-empty strings, got {values!r:.80}")
    values = list(values)
    if not values:
        raise ValueError(f"{name}: expected at least one string, got none")
    return values


def label_token_ids(tokenizer, label_names: Sequence[str], prefix: str = " ") -> list[int]:
    """The token id that scores each class: the first token of ``prefix + name``, (n_classes,).

    A label should be one token after the prompt's last token, with its leading space
    (``" asyncio"``); SmolLM2's tokenizer has one token for each of the six packages of
    notebook 04/01. A label of several tokens is scored by its **first** token only, and the
    first tokens of all labels must differ (ValueError otherwise). Why the first token and not
    the sum of the label's token log-probabilities: the first token is the model's whole
    decision among labels whose first tokens differ (the rest of a word is then nearly
    determined), it costs one forward pass per text instead of one per text and class, and a
    sum of log-probabilities penalises longer labels. For one-token labels the two agree.
    """
    names = _strings(label_names, "label_names")
    if not isinstance(prefix, str):
        raise TypeError(f"prefix: expected a string, got {type(prefix).__name__}")
    firsts = []
    for name in names:
        ids = tokenizer(prefix + name, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"label_names: {prefix + name!r} encodes to no token")
        firsts.append(ids[0])
    if len(set(firsts)) != len(firsts):
        shared = {n: t for n, t in zip(names, firsts, strict=True) if firsts.count(t) > 1}
        raise ValueError(
            f"label_names: expected labels whose first tokens differ, got shared first tokens "
            f"{shared} (rename the labels or choose another prefix)"
        )
    return firsts


def build_prompt(
    text: str,
    template: str,
    examples: Sequence[tuple[str, str]] = (),
    *,
    prefix: str = " ",
    separator: str = "\n\n",
) -> str:
    """The prompt for ``text``: ``template`` with ``{text}`` replaced, after the few-shot examples.

    template: e.g. ``"Docstring: {text}\\nPackage:"``; it holds ``{text}`` once and ends where
        the label follows, without trailing whitespace (the label token carries its own space).
    examples: ``(text, label_name)`` pairs, each rendered as the template followed by
        ``prefix + label_name``, joined by ``separator``, before the question (few-shot).

        >>> build_prompt("Run the loop.", "Docstring: {text}\\nPackage:", [("Log it.", "logging")])
        'Docstring: Log it.\\nPackage: logging\\n\\nDocstring: Run the loop.\\nPackage:'
    """
    if not isinstance(text, str):
        raise TypeError(f"text: expected a string, got {type(text).__name__}")
    if not isinstance(template, str) or template.count("{text}") != 1:
        raise ValueError(f"template: expected a string holding '{{text}}' once, got {template!r}")
    if template != template.rstrip():
        raise ValueError(
            f"template: expected no trailing whitespace (the label token carries its own space), "
            f"got {template!r}"
        )
    shots = []
    for i, example in enumerate(examples):
        if not (
            isinstance(example, (tuple, list))
            and len(example) == 2
            and all(isinstance(s, str) for s in example)
        ):
            raise TypeError(f"examples[{i}]: expected a (text, label_name) pair, got {example!r}")
        shots.append(template.replace("{text}", example[0]) + prefix + example[1])
    return separator.join([*shots, template.replace("{text}", text)])


def encode_prompts(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt, as the tokenizer encodes a text by default (with the special
    tokens it adds; SmolLM2's adds none)."""
    return [list(row) for row in tokenizer(_strings(prompts, "prompts"))["input_ids"]]


def _batch(
    rows: Sequence[Sequence[int]], pad_id: int, padding_side: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, attention_mask, position_ids), each (batch, longest) int64, padded on
    ``padding_side``; positions count from each row's first real token."""
    rows = [list(r) for r in rows]
    ids = _pad(rows, pad_id, padding_side)
    mask = _pad([[1] * len(r) for r in rows], 0, padding_side)
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def _scores(
    model: nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor,
    positions: torch.Tensor,
    label_ids: torch.Tensor,
    padding_side: str,
) -> torch.Tensor:
    """Label-token logits at each row's last real position: (batch, seq) -> (batch, n_classes)."""
    if padding_side == "left":  # every prompt ends in the last column: compute only its logits
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1)
        last = out.logits[:, -1]
    else:
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions)
        last = out.logits[torch.arange(ids.shape[0], device=ids.device), last_token_index(mask)]
    return last[:, label_ids].float()


def _pad_id(tokenizer) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    return pad if pad is not None else 0  # any id: padding is masked out


def _precision(precision: str | None) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    return precision or default_precision("cpu")


def _label_tensor(label_ids: Sequence[int], vocab_size: int) -> torch.Tensor:
    ids = list(label_ids)
    if len(ids) < 2 or not all(
        isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab_size for t in ids
    ):
        raise ValueError(
            f"label_ids: expected at least 2 token ids in [0, {vocab_size}), got {label_ids!r}"
        )
    return torch.tensor(ids)


def _vocab_size(model: nn.Module) -> int:
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is None:
        raise TypeError(
            f"model: expected a causal LM with get_input_embeddings() (a transformers "
            f"LlamaForCausalLM or a soft-prompt wrapper), got {type(model).__name__}"
        )
    return embeddings.num_embeddings


@torch.no_grad()
def class_logits(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    label_ids: Sequence[int],
    *,
    batch_size: int = 16,
    padding_side: str = "left",
    precision: str | None = None,
) -> torch.Tensor:
    """The LM logits of the label tokens after each prompt: (n_prompts, n_classes) float32.

    model: a transformers causal LM (``LlamaForCausalLM``) or a :class:`PromptTuning` /
        :class:`PrefixTuning` around one; called with ``input_ids``, ``attention_mask``,
        ``position_ids`` (and ``logits_to_keep=1`` for left padding).
    label_ids: :func:`label_token_ids`. ``argmax(-1)`` is the predicted class;
        ``log_softmax(-1)`` the class log-probabilities given that the answer is a label.
    padding_side: ``"left"`` (only the last column's logits are computed) or ``"right"``
        (each row's last real token is gathered); both give what each prompt gives alone.
    precision: ``"fp32"``, ``"bf16"`` (autocast) or None (bf16 where the CPU has bf16 units).
    """
    label_ids = _label_tensor(label_ids, _vocab_size(model))
    rows = encode_prompts(tokenizer, prompts)
    batch_size = require_positive_int(batch_size, "batch_size")
    if padding_side not in PADDING_SIDES:
        raise ValueError(f"padding_side: expected one of {PADDING_SIDES}, got {padding_side!r}")
    precision = _precision(precision)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for b in range(0, len(rows), batch_size):
        batch = _batch(rows[b : b + batch_size], _pad_id(tokenizer), padding_side)
        ids, mask, positions = (t.to(device) for t in batch)
        with autocast(precision):
            out.append(_scores(model, ids, mask, positions, label_ids, padding_side).cpu())
    model.train(was_training)
    return torch.cat(out)


# --------------------------------------------------------------------------------------------
# The wrappers


def text_init_ids(tokenizer, text: str, n_virtual: int) -> list[int]:
    """peft's ``TEXT`` rule: the ids of ``text`` (encoded as the tokenizer does by default),
    repeated until there are at least ``n_virtual``, then cut to ``n_virtual``."""
    n_virtual = require_positive_int(n_virtual, "n_virtual")
    if not isinstance(text, str) or not text:
        raise ValueError(f"text: expected a non-empty string for init='text', got {text!r}")
    if tokenizer is None:
        raise ValueError("tokenizer: init='text' needs the tokenizer that encodes `text`")
    ids = list(tokenizer(text)["input_ids"])
    if not ids:
        raise ValueError(f"text: {text!r} encodes to no token")
    return (ids * math.ceil(n_virtual / len(ids)))[:n_virtual]


def _require_causal_lm(model: nn.Module) -> nn.Module:
    config = getattr(model, "config", None)
    needed = ("num_hidden_layers", "num_attention_heads", "hidden_size")
    if (
        not isinstance(model, nn.Module)
        or not hasattr(model, "get_input_embeddings")
        or any(not hasattr(config, key) for key in needed)
    ):
        raise TypeError(
            f"model: expected a transformers causal LM (e.g. LlamaForCausalLM) with a config "
            f"and get_input_embeddings(), got {type(model).__name__}"
        )
    return model


def _virtual_inputs(n: int, attention_mask, position_ids, batch: int):
    """The attention mask with ``n`` ones in front (the virtual positions), and the text's
    position ids shifted by n (None stays None: the model then counts 0, 1, ... over the
    columns, the virtual ones included)."""
    if attention_mask is not None:
        attention_mask = torch.cat([attention_mask.new_ones(batch, n), attention_mask], 1)
    if position_ids is not None:
        position_ids = position_ids + n
    return attention_mask, position_ids


class PromptTuning(nn.Module):
    """A frozen causal LM reading ``n_virtual`` trainable embeddings before its input.

    ``model(inputs_embeds=[P; E(input_ids)], attention_mask=[1; mask])`` with ``P`` =
    :attr:`prompt` (n_virtual, d), float32 (cast to the embeddings' dtype in the forward).

    model: a transformers causal LM; frozen here (``requires_grad_(False)``), not copied.
    n_virtual: the number of virtual tokens n.
    init: ``"random"``: P ~ N(0, 1), drawn from the global RNG as ``nn.Embedding`` draws
        (peft's ``PromptTuningInit.RANDOM``; the same seed gives peft's numbers);
        ``"text"``: the embeddings of :func:`text_init_ids` (``text``, ``tokenizer``) (peft's
        ``TEXT``: the wrapper then starts as the hard prompt ``text``); ``"vocab"``: the
        embeddings of n token ids drawn uniformly from the vocabulary (peft's
        ``SAMPLE_VOCAB``; Lester et al. §3.2).

    Forward: input_ids (batch, seq); attention_mask (batch, seq) or None; position_ids
    (batch, seq) counted from 0 at each row's first real token, or None (0, 1, ... per
    column, as peft, which ignores position ids here); labels (batch, seq) for the
    model's LM loss (the virtual positions get ``IGNORE_INDEX``, as peft gives them);
    logits_to_keep (the model's: 0 = all). Returns the model's output; with
    ``logits_to_keep=0`` its logits are the real tokens' only, (batch, seq, vocab) (peft
    returns (batch, n + seq, vocab): its ``logits[:, n:]`` are ours).
    """

    def __init__(
        self,
        model: nn.Module,
        n_virtual: int,
        *,
        init: str = "random",
        text: str | None = None,
        tokenizer=None,
    ):
        super().__init__()
        self.model = _require_causal_lm(model).requires_grad_(False)
        self.n_virtual = require_positive_int(n_virtual, "n_virtual")
        if init not in PROMPT_INITS:
            raise ValueError(f"init: expected one of {PROMPT_INITS}, got {init!r}")
        embeddings = model.get_input_embeddings()
        weight = embeddings.weight
        if init == "random":
            prompt = torch.randn(n_virtual, embeddings.embedding_dim)
        else:
            if init == "text":
                ids = text_init_ids(tokenizer, text, n_virtual)
            else:
                ids = torch.randint(0, embeddings.num_embeddings, (n_virtual,)).tolist()
            prompt = weight.detach()[torch.tensor(ids, device=weight.device)]
        self.prompt = nn.Parameter(prompt.float().to(weight.device))

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        logits_to_keep: int = 0,
    ):
        batch, n = input_ids.shape[0], self.n_virtual
        embeds = self.model.get_input_embeddings()(input_ids)
        prompt = self.prompt.to(embeds.dtype).expand(batch, -1, -1)
        attention_mask, position_ids = _virtual_inputs(n, attention_mask, position_ids, batch)
        if position_ids is not None:
            virtual = torch.arange(n, device=position_ids.device).expand(batch, -1)
            position_ids = torch.cat([virtual, position_ids], 1)
        if labels is not None:
            labels = torch.cat([labels.new_full((batch, n), IGNORE_INDEX), labels], 1)
        out = self.model(
            inputs_embeds=torch.cat([prompt, embeds], 1),
            attention_mask=attention_mask,
            position_ids=position_ids,
            labels=labels,
            logits_to_keep=logits_to_keep,
        )
        if logits_to_keep == 0:
            out.logits = out.logits[:, n:]
        return out


class PrefixTuning(nn.Module):
    """A frozen causal LM whose every layer attends to ``n_virtual`` trainable keys and values
    first.

    The prefix of layer l is ``keys, values = key_values()[l]``, each (kv_heads, n_virtual,
    head_dim): the shape of the model's KV heads (SmolLM2: 3 KV heads of 64 for its 9 query
    heads). It is handed to the model as a ``DynamicCache`` holding n positions, with the
    attention mask extended by n ones; the text's positions continue at n.

    Parameters, laid out as peft lays them out (so they load into peft and back):

    - ``projection=False``: :attr:`prefix` (n_virtual, 2 * n_layers * kv_dim), each row
      ``[K_0 | V_0 | K_1 | V_1 | ...]`` with ``K_l`` the (kv_heads * head_dim) key of one
      virtual position in layer l.
    - ``projection=True``: :attr:`embedding` (n_virtual, kv_dim) and :attr:`mlp`, ``Linear(
      kv_dim, hidden_size) -> Tanh -> Linear(hidden_size, 2 * n_layers * kv_dim)``; the prefix
      is ``mlp(embedding)`` (peft's ``prefix_projection``; ``hidden_size`` defaults to kv_dim,
      peft's ``encoder_hidden_size`` default).

    init: ``"random"``: N(0, 1) for the prefix (or the embedding), nn.Linear's default for the
        MLP, drawn from the global RNG in peft's order (the same seed gives peft's numbers);
        ``"text"`` (no projection): the keys and values the frozen model computes for the
        tokens :func:`text_init_ids` (``text``, ``tokenizer``) at positions 0 .. n-1 (Li &
        Liang §7.2, "initialise with the activations of real words"): the wrapper then starts
        exactly as the hard prompt ``text``.

    Forward: as :class:`PromptTuning`'s (position ids shifted by n, as peft shifts them);
    labels go to the model unchanged. Returns the model's output (its logits are the real
    tokens': the prefix is a cache, not an input).
    """

    def __init__(
        self,
        model: nn.Module,
        n_virtual: int,
        *,
        projection: bool = False,
        hidden_size: int | None = None,
        init: str = "random",
        text: str | None = None,
        tokenizer=None,
    ):
        super().__init__()
        self.model = _require_causal_lm(model).requires_grad_(False)
        self.n_virtual = require_positive_int(n_virtual, "n_virtual")
        config = model.config
        self.n_layers = config.num_hidden_layers
        self.kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        self.head_dim = getattr(config, "head_dim", None) or (
            config.hidden_size // config.num_attention_heads
        )
        kv_dim = self.kv_heads * self.head_dim
        width = 2 * self.n_layers * kv_dim
        if init not in PREFIX_INITS:
            raise ValueError(f"init: expected one of {PREFIX_INITS}, got {init!r}")
        if not isinstance(projection, bool):
            raise TypeError(f"projection: expected a bool, got {type(projection).__name__}")
        self.projection = projection
        device = model.get_input_embeddings().weight.device
        if projection:
            if init != "random":
                raise ValueError(
                    f"init: {init!r} sets the prefix itself, which projection=True computes "
                    f"from an MLP; use init='random' or projection=False"
                )
            hidden = (
                kv_dim if hidden_size is None else require_positive_int(hidden_size, "hidden_size")
            )
            # drawn on the CPU, as peft draws them, then moved
            self.embedding = nn.Parameter(torch.randn(n_virtual, kv_dim).to(device))
            self.mlp = nn.Sequential(
                nn.Linear(kv_dim, hidden), nn.Tanh(), nn.Linear(hidden, width)
            ).to(device)
        else:
            if hidden_size is not None:
                raise ValueError("hidden_size: only used with projection=True")
            if init == "random":
                prefix = torch.randn(n_virtual, width).to(device)
            else:
                prefix = self._text_prefix(text_init_ids(tokenizer, text, n_virtual))
            self.prefix = nn.Parameter(prefix.float())

    @torch.no_grad()
    def _text_prefix(self, ids: list[int]) -> torch.Tensor:
        """The keys and values of the tokens ``ids`` in every layer, as (n, width) rows."""
        device = self.model.get_input_embeddings().weight.device
        cache = self.model(input_ids=torch.tensor([ids], device=device), use_cache=True)
        layers = cache.past_key_values.layers
        kv = torch.stack([torch.stack([layer.keys[0], layer.values[0]]) for layer in layers])
        # (n_layers, 2, kv_heads, n, head_dim) -> (n, n_layers * 2 * kv_heads * head_dim)
        return kv.permute(3, 0, 1, 2, 4).reshape(len(ids), -1)

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def flat_prefix(self) -> torch.Tensor:
        """The prefix as peft stores it: (n_virtual, 2 * n_layers * kv_dim)."""
        return self.mlp(self.embedding) if self.projection else self.prefix

    def key_values(self) -> torch.Tensor:
        """Keys and values of every layer: (n_layers, 2, kv_heads, n_virtual, head_dim)."""
        n, shape = self.n_virtual, (self.n_layers, 2, self.kv_heads, self.head_dim)
        return self.flat_prefix().view(n, *shape).permute(1, 2, 3, 0, 4)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        logits_to_keep: int = 0,
    ):
        from transformers import DynamicCache

        batch = input_ids.shape[0]
        kv = self.key_values().to(self.model.dtype)
        cache = DynamicCache(
            [
                (keys.expand(batch, -1, -1, -1), values.expand(batch, -1, -1, -1))
                for keys, values in kv
            ]
        )
        attention_mask, position_ids = _virtual_inputs(
            self.n_virtual, attention_mask, position_ids, batch
        )
        return self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            labels=labels,
            logits_to_keep=logits_to_keep,
        )


def _require_wrapper(wrapper) -> None:
    if not isinstance(wrapper, (PromptTuning, PrefixTuning)):
        raise TypeError(
            f"wrapper: expected a PromptTuning or PrefixTuning, got {type(wrapper).__name__}"
        )


def peft_state_dict(wrapper: PromptTuning | PrefixTuning) -> dict[str, torch.Tensor]:
    """The soft prompt as peft saves it: ``{"prompt_embeddings": tensor}``, a copy on the CPU.

    PromptTuning: P (n_virtual, d). PrefixTuning: the prefix (n_virtual, 2 * n_layers *
    kv_dim), i.e. the MLP's output with ``projection=True`` (peft keeps only that, too).
    ``peft.set_peft_model_state_dict`` loads it into peft's model; :func:`load_peft_state_dict`
    into ours; :func:`llmlab.results.save_tensors` saves it for a later notebook.
    """
    _require_wrapper(wrapper)
    flat = wrapper.prompt if isinstance(wrapper, PromptTuning) else wrapper.flat_prefix()
    return {PEFT_KEY: flat.detach().float().cpu().clone()}


@torch.no_grad()
def load_peft_state_dict(
    wrapper: PromptTuning | PrefixTuning, state: dict[str, torch.Tensor]
) -> PromptTuning | PrefixTuning:
    """Load a soft prompt saved by peft (``get_peft_model_state_dict``) or
    :func:`peft_state_dict` into ``wrapper``; returns it. A PrefixTuning with ``projection=True``
    cannot take one (the MLP's input cannot be recovered from its output): load it into a
    ``PrefixTuning(model, n, projection=False)`` instead, which then computes the same."""
    _require_wrapper(wrapper)
    if not isinstance(state, dict) or set(state) != {PEFT_KEY}:
        raise ValueError(
            f"state: expected a dict with the one key {PEFT_KEY!r}, got "
            f"{sorted(state) if isinstance(state, dict) else type(state).__name__}"
        )
    if isinstance(wrapper, PrefixTuning) and wrapper.projection:
        raise ValueError(
            "wrapper: a PrefixTuning with projection=True computes its prefix from an MLP and "
            "cannot load a saved prefix; load it into a PrefixTuning with projection=False"
        )
    target = wrapper.prompt if isinstance(wrapper, PromptTuning) else wrapper.prefix
    if state[PEFT_KEY].shape != target.shape:
        raise ValueError(
            f"state: expected {PEFT_KEY!r} of shape {tuple(target.shape)}, got "
            f"{tuple(state[PEFT_KEY].shape)}"
        )
    target.copy_(state[PEFT_KEY])
    return wrapper


# --------------------------------------------------------------------------------------------
# Training


@dataclass
class SoftPromptResult:
    """What :func:`train_soft_prompt` measured. ``loss``: the cross-entropy of each step;
    ``step_seconds``: the median step; ``accuracy`` and ``predictions``: on the test prompts
    when given (None otherwise)."""

    method: str
    trainable: int
    total: int
    steps: int
    step_seconds: float
    train_seconds: float
    loss: list[float] = field(repr=False)
    accuracy: float | None = None
    predictions: list[int] | None = field(default=None, repr=False)


def _class_indices(labels, n_prompts: int, n_classes: int, name: str) -> list[int]:
    labels = list(labels)
    if len(labels) != n_prompts:
        raise ValueError(f"{name}: expected one label per prompt ({n_prompts}), got {len(labels)}")
    if not all(
        isinstance(y, int) and not isinstance(y, bool) and 0 <= y < n_classes for y in labels
    ):
        raise ValueError(f"{name}: expected class indices in [0, {n_classes})")
    return labels


def train_soft_prompt(
    wrapper: nn.Module,
    tokenizer,
    train_prompts: Sequence[str],
    train_labels: Sequence[int],
    label_ids: Sequence[int],
    *,
    lr: float = 3e-2,
    epochs: int = 3,
    batch_size: int = 8,
    seed: int = 0,
    precision: str | None = None,
    weight_decay: float = 0.0,
    warmup_frac: float = 0.1,
    clip_norm: float | None = 1.0,
    padding_side: str = "left",
    test_prompts: Sequence[str] | None = None,
    test_labels: Sequence[int] | None = None,
    progress: bool = False,
) -> SoftPromptResult:
    """Train ``wrapper``'s trainable parameters to complete each prompt with its label's token.

    The loss of a batch is the cross-entropy of the label-token logits at the last position
    (:func:`class_logits`' scores, with gradients), ``-log softmax_c(score(x))[y]``, averaged
    over the batch. The course loop (:func:`llmlab.training.train`) runs it: AdamW on the
    parameters that require gradients (the soft prompt; any module with some works, e.g. a
    model with LoRA injected), ``lr`` reached by a linear warmup over ``warmup_frac`` of the
    steps then a cosine decay to 0, gradients clipped to ``clip_norm``, bf16 autocast with
    ``precision="bf16"`` (None: where the CPU has bf16 units). Soft prompts train at learning
    rates far above full fine-tuning's (peft's examples use 3e-2 and 1e-2; Lester et al. 0.3).

    Batches: ``batch_size`` prompts, a fresh seeded shuffle per epoch (the same batches as
    :func:`llmlab.posttrain.finetune.finetune` with this seed), padded on ``padding_side``.
    Returns a :class:`SoftPromptResult`; with ``test_prompts`` / ``test_labels`` it holds the
    test accuracy. ``wrapper`` is trained in place and left in eval mode.
    """
    if not isinstance(wrapper, nn.Module):
        raise TypeError(f"wrapper: expected an nn.Module, got {type(wrapper).__name__}")
    if trainable_parameters(wrapper) == 0:
        raise ValueError("wrapper: expected some parameters that require gradients, found none")
    label_tensor = _label_tensor(label_ids, _vocab_size(wrapper))
    rows = encode_prompts(tokenizer, train_prompts)
    labels = _class_indices(train_labels, len(rows), len(label_tensor), "train_labels")
    if (test_prompts is None) != (test_labels is None):
        raise ValueError("test_prompts, test_labels: expected both or neither")
    if test_prompts is not None:
        test_labels = _class_indices(
            test_labels,
            len(_strings(test_prompts, "test_prompts")),
            len(label_tensor),
            "test_labels",
        )
    epochs = require_positive_int(epochs, "epochs")
    batch_size = require_positive_int(batch_size, "batch_size")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"lr: expected a positive number, got {lr!r}")
    if padding_side not in PADDING_SIDES:
        raise ValueError(f"padding_side: expected one of {PADDING_SIDES}, got {padding_side!r}")
    precision = _precision(precision)
    batches = epoch_batches(len(rows), batch_size, epochs, seed)
    pad_id, targets = _pad_id(tokenizer), torch.tensor(labels)

    def batch_fn(i):
        pick = batches[i]
        return (*_batch([rows[j] for j in pick], pad_id, padding_side), targets[pick])

    def loss_fn(model, batch, config):
        ids, mask, positions, y = batch
        return F.cross_entropy(_scores(model, ids, mask, positions, label_tensor, padding_side), y)

    config = TrainConfig(
        steps=len(batches),
        lr=lr,
        weight_decay=weight_decay,
        warmup_frac=warmup_frac,
        min_lr_ratio=0.0,
        clip_norm=clip_norm,
        label_smoothing=0.0,
        precision=precision,
        seed=seed,
    )
    started = time.perf_counter()
    history = train(wrapper, batch_fn, config, loss_fn=loss_fn, progress=progress)
    train_seconds = time.perf_counter() - started
    accuracy = predictions = None
    if test_prompts is not None:
        scores = class_logits(
            wrapper,
            tokenizer,
            test_prompts,
            label_ids,
            padding_side=padding_side,
            precision=precision,
        )
        predictions = scores.argmax(-1).tolist()
        accuracy = sum(p == y for p, y in zip(predictions, test_labels, strict=True)) / len(
            test_labels
        )
    return SoftPromptResult(
        method=type(wrapper).__name__,
        trainable=trainable_parameters(wrapper),
        total=sum(p.numel() for p in wrapper.parameters()),
        steps=len(batches),
        step_seconds=statistics.median(history.seconds),
        train_seconds=train_seconds,
        loss=history.loss,
        accuracy=accuracy,
        predictions=predictions,
    )
