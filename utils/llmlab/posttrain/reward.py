"""Reward models and the Bradley-Terry loss.

A reward model reads a prompt and an answer and returns one number, higher for the answer
people prefer. It is trained on pairs (chosen, rejected) of answers to the same prompt with
the Bradley-Terry model of a preference: the chance that the chosen answer wins is

    P(chosen > rejected) = sigmoid(r_chosen - r_rejected),

so maximum likelihood minimises the mean of ``-log sigmoid(r_c - r_r)`` over the pairs
(Ouyang et al. 2022, eq. 1). Only differences of rewards are learned: adding a constant to
every reward changes nothing, which is why trl offers a penalty that centres them.

:class:`RewardModel` is a causal LM's backbone with a scalar head read at each row's last real
token (LlamaForSequenceClassification with one label, which trl's RewardTrainer trains; tests
show the two equal with the same weights). :func:`bradley_terry_loss` equals trl 1.16's
``RewardTrainer.compute_loss`` on the same rewards, margin and centring coefficient included.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from llmlab.posttrain.logprobs import _forward_kwargs, _require_mask, chat_batch
from llmlab.posttrain.preferences import PreferencePair, train_on_pairs
from llmlab.training.loop import History
from llmlab.validate import require_positive_int, require_real, require_token_ids

__all__ = [
    "RewardModel",
    "bradley_terry_loss",
    "pair_accuracy",
    "last_token_index",
    "reward_batch_loss",
    "train_reward_model",
    "pair_rewards",
    "score_answers",
]


def _require_pair(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> None:
    for name, r in (("r_chosen", r_chosen), ("r_rejected", r_rejected)):
        if not isinstance(r, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(r).__name__}")
        if r.dim() != 1 or r.numel() == 0:
            raise ValueError(f"{name}: expected shape (pairs,), got {tuple(r.shape)}")
    if r_rejected.shape != r_chosen.shape:
        raise ValueError(
            f"r_rejected: expected the shape of r_chosen {tuple(r_chosen.shape)}, "
            f"got {tuple(r_rejected.shape)}"
        )


def bradley_terry_loss(
    r_chosen: torch.Tensor,
    r_rejected: torch.Tensor,
    margin: torch.Tensor | float | None = None,
    *,
    center_rewards_coefficient: float | None = None,
) -> torch.Tensor:
    """The Bradley-Terry loss of reward pairs: (pairs,), (pairs,) -> a 0-dim tensor.

        loss = mean(-log sigmoid(r_c - r_r - margin)) + c * mean((r_c + r_r)^2)

    ``margin`` (a number or (pairs,)): how much better the chosen answer was rated (Llama 2's
    margin loss); ``center_rewards_coefficient`` ``c`` (Eisenstein et al. 2023): pulls the
    rewards of each pair towards a zero sum. ``-log sigmoid`` is computed as ``logsigmoid``,
    which stays finite where ``sigmoid`` underflows to 0.
    """
    _require_pair(r_chosen, r_rejected)
    diff = r_chosen - r_rejected
    if margin is not None:
        if isinstance(margin, torch.Tensor):
            if margin.shape not in (torch.Size([]), r_chosen.shape):
                raise ValueError(
                    f"margin: expected a number or shape {tuple(r_chosen.shape)}, "
                    f"got {tuple(margin.shape)}"
                )
        else:
            margin = require_real(margin, "margin")
        diff = diff - margin
    loss = -nn.functional.logsigmoid(diff).mean()
    if center_rewards_coefficient is not None:
        c = require_real(center_rewards_coefficient, "center_rewards_coefficient")
        if c < 0 or not math.isfinite(c):
            raise ValueError(f"center_rewards_coefficient: expected a number >= 0, got {c!r}")
        loss = loss + c * ((r_chosen + r_rejected) ** 2).mean()
    return loss


def pair_accuracy(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> float:
    """The share of pairs whose chosen answer gets the strictly higher reward (ties count 0)."""
    _require_pair(r_chosen, r_rejected)
    return (r_chosen > r_rejected).float().mean().item()


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """The position of each row's last real token: (batch, seq) 0/1 mask -> (batch,) int64.

    Works for padding on either side (the largest position whose mask is 1), and never looks
    at token ids: SmolLM2 pads with ``<|im_end|>``, the very token that ends every answer.
    """
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 2:
        raise ValueError(
            "attention_mask: expected a (batch, seq) tensor, got "
            f"{getattr(attention_mask, 'shape', type(attention_mask).__name__)}"
        )
    mask = attention_mask.bool()
    if not mask.any(dim=1).all():
        raise ValueError("attention_mask: expected at least one real token in every row")
    positions = torch.arange(mask.shape[1], device=mask.device)
    return torch.where(mask, positions, -1).amax(dim=1)


class RewardModel(nn.Module):
    """A causal LM's backbone and a linear head that maps one hidden state to a reward.

        r(x) = w . h_last(x),   h_last = the final hidden state at the row's last real token

    ``backbone``: a transformers causal LM (its ``.model`` gives hidden states; called with the
    attention mask and position ids counted from each row's first real token, so padding on
    either side leaves a row's reward unchanged) or a :mod:`llmlab.models` model (its
    ``hidden_states(input_ids)``; right padding only). Its LM head is not used. The head
    ``score`` is ``nn.Linear(d_model, 1, bias=False)`` drawn from N(0, init_std^2), as
    transformers initialises LlamaForSequenceClassification's.

    The last real token is found from ``attention_mask``, not from the pad id: SmolLM2 pads
    with ``<|im_end|>``, the very token that ends every answer.
    """

    def __init__(self, backbone: nn.Module, init_std: float = 0.02):
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"backbone: expected an nn.Module, got {type(backbone).__name__}")
        self.is_transformers = hasattr(backbone, "model") and hasattr(backbone, "config")
        if self.is_transformers:
            d_model = backbone.config.hidden_size
        elif hasattr(backbone, "hidden_states"):
            d_model = backbone.config.d_model
        else:
            raise TypeError(
                "backbone: expected a transformers causal LM (with .model) or an llmlab model "
                f"(with .hidden_states), got {type(backbone).__name__}"
            )
        init_std = require_real(init_std, "init_std")
        if init_std < 0:
            raise ValueError(f"init_std: expected a number >= 0, got {init_std!r}")
        self.backbone = backbone
        self.score = nn.Linear(d_model, 1, bias=False)
        nn.init.normal_(self.score.weight, std=init_std)

    def hidden_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The backbone's final (normed) hidden states: (batch, seq) -> (batch, seq, d_model)."""
        if not self.is_transformers:
            if (
                attention_mask is not None
                and (attention_mask[:, 1:] > attention_mask[:, :-1]).any()
            ):
                raise ValueError(
                    "attention_mask: an llmlab backbone takes no attention mask, so the batch "
                    "may only be padded on the right"
                )
            return self.backbone.hidden_states(input_ids)
        return self.backbone.model(**_forward_kwargs(input_ids, attention_mask)).last_hidden_state

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """input_ids, attention_mask: (batch, seq) -> rewards (batch,), float32."""
        require_token_ids(input_ids, "input_ids", min_seq=1)
        if attention_mask is None:
            last = torch.full((input_ids.shape[0],), input_ids.shape[1] - 1)
        else:
            last = last_token_index(_require_mask(attention_mask, "attention_mask", input_ids))
        hidden = self.hidden_states(input_ids, attention_mask)
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        h_last = hidden[rows, last.to(input_ids.device)]
        return self.score(h_last.to(self.score.weight.dtype)).squeeze(-1).float()


def reward_batch_loss(
    model: RewardModel,
    batch: dict[str, torch.Tensor],
    margin: torch.Tensor | float | None = None,
    *,
    center_rewards_coefficient: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, r_chosen, r_rejected) of a preference batch (chosen rows, then rejected rows).

    ``batch`` as :func:`llmlab.posttrain.logprobs.preference_batch` builds it (only
    ``input_ids`` and ``attention_mask`` are read); the loss is :func:`bradley_terry_loss`.
    """
    for key in ("input_ids", "attention_mask"):
        if key not in batch:
            raise ValueError(f"batch: expected a key {key!r}, got keys {sorted(batch)}")
    rows = batch["input_ids"].shape[0]
    if rows % 2:
        raise ValueError(f"batch: expected an even number of rows (chosen, rejected), got {rows}")
    rewards = model(batch["input_ids"], batch["attention_mask"])
    r_chosen, r_rejected = rewards.chunk(2)
    loss = bradley_terry_loss(
        r_chosen, r_rejected, margin, center_rewards_coefficient=center_rewards_coefficient
    )
    return loss, r_chosen, r_rejected


# --------------------------------------------------------------------------------------------
# Training and scoring on preference pairs


def train_reward_model(
    model: RewardModel,
    tokenizer: Any,
    pairs: Sequence[PreferencePair],
    *,
    steps: int,
    batch_size: int = 8,
    lr: float = 1e-4,
    center_rewards_coefficient: float | None = None,
    seed: int = 0,
    progress: bool = False,
) -> tuple[History, list[float]]:
    """Train ``model`` (its parameters that require grad) with the Bradley-Terry loss on pairs.

    Runs :func:`llmlab.posttrain.preferences.train_on_pairs`. Returns the loop's History and
    each step's pair accuracy on its own batch (the share of pairs ranked right, before the
    step's update).
    """
    if not isinstance(model, RewardModel):
        raise TypeError(f"model: expected a RewardModel, got {type(model).__name__}")
    accuracy: list[float] = []

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        loss, r_chosen, r_rejected = reward_batch_loss(
            model, batch, center_rewards_coefficient=center_rewards_coefficient
        )
        accuracy.append(pair_accuracy(r_chosen.detach(), r_rejected.detach()))
        return loss

    history = train_on_pairs(
        model,
        tokenizer,
        pairs,
        loss_fn,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        progress=progress,
    )
    return history, accuracy


@torch.no_grad()
def score_answers(
    model: RewardModel,
    tokenizer: Any,
    prompts: Sequence[str],
    answers: Sequence[str],
    batch_size: int = 16,
) -> torch.Tensor:
    """The reward of each (prompt, answer) in the chat template: (len(prompts),) float32.

    Runs in eval mode under the device's autocast (:func:`llmlab.env.default_precision`),
    ``batch_size`` answers at a time (right-padded). Use it to rank sampled answers (best-of-n).
    """
    from llmlab.env import default_precision
    from llmlab.training import autocast

    if not isinstance(model, RewardModel):
        raise TypeError(f"model: expected a RewardModel, got {type(model).__name__}")
    if len(answers) != len(prompts) or not prompts:
        raise ValueError(
            f"prompts, answers: expected equally many, at least one; got {len(prompts)} "
            f"and {len(answers)}"
        )
    batch_size = require_positive_int(batch_size, "batch_size")
    device = next(model.parameters()).device
    model.eval()
    out = []
    for start in range(0, len(prompts), batch_size):
        end = start + batch_size
        batch = chat_batch(tokenizer, prompts[start:end], answers[start:end])
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        with autocast(default_precision(device.type), device.type):
            out.append(model(ids, mask).float().cpu())
    return torch.cat(out)


def pair_rewards(
    model: RewardModel,
    tokenizer: Any,
    pairs: Sequence[PreferencePair],
    batch_size: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rewards of every pair's chosen and rejected answers: two (pairs,) float32 tensors."""
    pairs = list(pairs)
    if not pairs:
        raise ValueError("pairs: expected at least one preference pair, got none")
    prompts = [p.prompt for p in pairs]
    chosen = score_answers(model, tokenizer, prompts, [p.chosen for p in pairs], batch_size)
    rejected = score_answers(model, tokenizer, prompts, [p.rejected for p in pairs], batch_size)
    return chosen, rejected
