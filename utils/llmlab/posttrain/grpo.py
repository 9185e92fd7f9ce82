"""GRPO: group-relative policy optimisation with verifiable rewards (Shao et al. 2024,
DeepSeekMath; used for DeepSeek-R1).

For each prompt q the policy samples a *group* of G completions o_1..o_G and a reward
function scores them (r_1..r_G: 1 if the answer checks out, else 0). Instead of a learned
value model (PPO's critic), the baseline is the group itself:

    A_i = (r_i - mean(r_1..r_G)) / (std(r_1..r_G) + eps)

and every token of completion i gets the same advantage A_i. The policy then maximises PPO's
clipped surrogate with a KL penalty towards a frozen reference model, per token t of o_i:

    ratio_it = pi_theta(o_it | q, o_i<t) / pi_old(o_it | q, o_i<t) = exp(logp - old_logp)
    L_it     = -min(ratio_it * A_i, clip(ratio_it, 1 - eps, 1 + eps) * A_i) + beta * KL_it
    KL_it    = exp(ref_logp - logp) - (ref_logp - logp) - 1      (the k3 estimator, >= 0)

averaged over each completion's tokens, then over the completions (``loss_type="grpo"``).
k3 (Schulman 2020) is an unbiased, always non-negative estimate of KL(pi_theta || pi_ref)
from samples of pi_theta. A group whose rewards are all equal has A = 0 for every member:
it teaches nothing (:func:`zero_variance_share` measures how much of a batch that is).

Variants trl implements, selected by ``loss_type`` (equal to trl 1.16's
``GRPOTrainer._compute_loss`` on the same tensors, tested):

- ``"grpo"``: per-sequence token mean, then the mean over sequences (the paper). Long
  completions weigh each of their tokens less.
- ``"bnpo"`` / ``"dapo"``: one mean over every real token of the batch (DAPO, Yu et al. 2025).
  Both equal ``sum(L * mask) / sum(mask)`` on one batch; trl differs only in what it divides
  by when gradients are accumulated over several batches.
- ``"dr_grpo"``: ``sum(L * mask) / (batch * max_completion_length)``, a constant
  (Dr. GRPO, Liu et al. 2025), with advantages not divided by the std
  (``group_advantages(..., scale=False)``): no length or difficulty bias.

DAPO's "clip-higher" (``clip_eps_high`` > ``clip_eps``) lets unlikely tokens grow faster.

:func:`sample_groups` draws the completions (left-padded batched generation of a transformers
causal LM) with their token log-probs; :func:`grpo_step` is one whole update.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from llmlab.posttrain.logprobs import gather_logprobs, k3_kl
from llmlab.validate import require_dims, require_float, require_positive_int, require_real

__all__ = [
    "LOSS_TYPES",
    "group_advantages",
    "zero_variance_share",
    "k3_kl",
    "grpo_loss",
    "completion_mask",
    "completion_token_logps",
    "GroupBatch",
    "sample_groups",
    "sample_group",
    "GRPOStats",
    "grpo_step",
]

#: The reductions :func:`grpo_loss` implements (trl's names).
LOSS_TYPES = ("grpo", "bnpo", "dapo", "dr_grpo")


# --------------------------------------------------------------------------------------------
# Advantages


def _as_rewards(rewards: Any) -> torch.Tensor:
    """``rewards`` (a list, numpy array or tensor of n numbers) as a 1-d float tensor."""
    if not isinstance(rewards, torch.Tensor):
        try:
            rewards = torch.as_tensor(rewards)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(f"rewards: expected a sequence of numbers, got {rewards!r}") from exc
    if rewards.dim() != 1:
        raise ValueError(
            f"rewards: expected 1 dim (n_prompts * group_size,), got shape {tuple(rewards.shape)}"
        )
    return rewards if rewards.is_floating_point() else rewards.float()


def _grouped(rewards: Any, group_size: int) -> torch.Tensor:
    rewards = _as_rewards(rewards)
    group_size = require_positive_int(group_size, "group_size")
    if group_size < 2:
        raise ValueError(f"group_size: expected >= 2 (a group's std needs two), got {group_size}")
    if rewards.numel() % group_size:
        raise ValueError(
            f"rewards: expected a multiple of group_size={group_size} values (each prompt's "
            f"group side by side), got {rewards.numel()}"
        )
    return rewards.view(-1, group_size)


def group_advantages(
    rewards: Any, group_size: int, scale: bool = True, eps: float = 1e-4
) -> torch.Tensor:
    """GRPO's advantages: each reward minus its group's mean, over the group's std + ``eps``.

    rewards: (n_prompts * group_size,), the completions of prompt 0 first, then prompt 1's ...
    Returns (n_prompts * group_size,) ``A_i = (r_i - mean_g) / (std_g + eps)`` with the
    unbiased std (``torch.std``, as trl); ``eps`` keeps a group of equal rewards at A = 0
    instead of 0/0 = NaN. ``scale=False`` is Dr. GRPO's ``A_i = r_i - mean_g``: dividing by
    the std weights groups that are almost all right or all wrong (small std) more.
    Equal to trl's ``scale_rewards="group"`` / ``"none"``.
    """
    groups = _grouped(rewards, group_size)
    eps = require_real(eps, "eps")
    if eps < 0:
        raise ValueError(f"eps: expected a number >= 0, got {eps!r}")
    centred = groups - groups.mean(dim=1, keepdim=True)
    if scale:
        centred = centred / (groups.std(dim=1, keepdim=True) + eps)
    return centred.reshape(-1)


def zero_variance_share(rewards: Any, group_size: int) -> float:
    """The share of groups whose rewards are all equal (A = 0 for all: no learning signal).

    rewards: (n_prompts * group_size,) as in :func:`group_advantages`. A task that is too hard
    (every completion wrong) or too easy (every one right) shows up here, close to 1.
    """
    groups = _grouped(rewards, group_size)
    return (groups == groups[:, :1]).all(dim=1).float().mean().item()


# --------------------------------------------------------------------------------------------
# The loss


def _require_same_shape(name: str, x: Any, like: torch.Tensor) -> None:
    require_dims(x, 2, name, "(batch, completion)")
    if x.shape != like.shape:
        raise ValueError(
            f"{name}: expected shape {tuple(like.shape)} (as logps), got {tuple(x.shape)}"
        )


def grpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    ref_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    beta: float = 0.04,
    loss_type: str = "grpo",
    clip_eps_high: float | None = None,
    max_completion_length: int | None = None,
    kl_ratio_correction: bool = False,
) -> torch.Tensor:
    """The GRPO loss (a scalar to minimise) from per-token log-probabilities.

    logps: (batch, T) log pi_theta of each completion token (with gradient); old_logps: (batch,
    T) the same under the policy that sampled them (no gradient; equal to logps.detach() on the
    first update after sampling); ref_logps: (batch, T) under the frozen reference, or None when
    ``beta == 0``; advantages: (batch,) one per completion (or (batch, T)); mask: (batch, T) 1 on
    real completion tokens, 0 on padding (values of the other tensors there are ignored).

    Per token: ``-min(r A, clip(r, 1 - clip_eps, 1 + clip_eps_high) A) + beta * k3_kl`` with
    ``r = exp(logps - old_logps)`` (``clip_eps_high`` defaults to ``clip_eps``), reduced as
    ``loss_type`` says (see the module docstring); ``max_completion_length`` is Dr. GRPO's
    constant denominator (default: T). ``kl_ratio_correction`` multiplies the KL term by the
    ratio r (DeepSeek-V3.2): off-policy (r != 1) the KL is then estimated for pi_theta rather
    than for the sampling policy, and its gradient is the unbiased gradient of KL(pi_theta ||
    ref) even at r = 1. trl 1.16 does this by default (``use_bias_correction_kl=True``); the
    GRPO paper does not.
    """
    require_dims(logps, 2, "logps", "(batch, completion)")
    require_float(logps, "logps")
    _require_same_shape("old_logps", old_logps, logps)
    _require_same_shape("mask", mask, logps)
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type: expected one of {LOSS_TYPES}, got {loss_type!r}")
    if not isinstance(advantages, torch.Tensor) or advantages.shape not in (
        logps.shape[:1],
        logps.shape,
    ):
        got = tuple(advantages.shape) if isinstance(advantages, torch.Tensor) else advantages
        raise ValueError(
            f"advantages: expected a tensor of shape ({logps.shape[0]},) or {tuple(logps.shape)}, "
            f"got {got!r}"
        )
    low = require_real(clip_eps, "clip_eps")
    high = low if clip_eps_high is None else require_real(clip_eps_high, "clip_eps_high")
    if not (0 < low < 1 and high > 0):
        raise ValueError(
            f"clip_eps: expected 0 < clip_eps < 1 and clip_eps_high > 0, got {clip_eps!r}, "
            f"{clip_eps_high!r}"
        )
    beta = require_real(beta, "beta")
    if beta != 0.0:
        if ref_logps is None:
            raise ValueError("ref_logps: expected a tensor when beta != 0, got None")
        _require_same_shape("ref_logps", ref_logps, logps)

    adv = advantages[:, None] if advantages.dim() == 1 else advantages
    ratio = torch.exp(logps - old_logps)
    clipped = torch.clamp(ratio, 1 - low, 1 + high)
    per_token = -torch.min(ratio * adv, clipped * adv)
    if beta != 0.0:
        kl = k3_kl(logps, ref_logps)
        per_token = per_token + beta * (kl * ratio if kl_ratio_correction else kl)
    mask = mask.to(per_token.dtype)
    masked = per_token * mask
    if loss_type == "grpo":
        return (masked.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if loss_type in ("bnpo", "dapo"):
        return masked.sum() / mask.sum().clamp(min=1.0)
    length = logps.shape[1] if max_completion_length is None else max_completion_length
    length = require_positive_int(length, "max_completion_length")
    return masked.sum() / (logps.shape[0] * length)


# --------------------------------------------------------------------------------------------
# Completions and their log-probabilities


def completion_mask(
    completion_ids: torch.Tensor, eos_token_id: int | Sequence[int]
) -> torch.Tensor:
    """(batch, T) int64 mask: 1 up to and including each row's first eos, 0 after it.

    A row without an eos (cut at the token budget) is all ones.
    """
    require_dims(completion_ids, 2, "completion_ids", "(batch, completion)")
    eos = torch.as_tensor(eos_token_id, device=completion_ids.device).reshape(-1)
    is_eos = torch.isin(completion_ids, eos)
    # eos positions before t (exclusive cumsum): 0 up to and including the first eos
    before = is_eos.long().cumsum(dim=1) - is_eos.long()
    return (before == 0).long()


def completion_token_logps(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    n_completion: int,
    temperature: float = 1.0,
) -> torch.Tensor:
    """log pi(token) of the last ``n_completion`` tokens of each row: (batch, n_completion).

    input_ids, attention_mask: (batch, seq), prompt (left-padded) then completion. The logits at
    position t predict token t + 1; they are divided by ``temperature`` (the distribution the
    tokens were sampled from, as trl scores them). ``model`` is a transformers causal LM; only
    the last ``n_completion + 1`` positions go through its head (``logits_to_keep``).
    """
    n_completion = require_positive_int(n_completion, "n_completion")
    if require_real(temperature, "temperature") <= 0:
        raise ValueError(f"temperature: expected a number > 0, got {temperature!r}")
    logits = model(
        input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=n_completion + 1
    ).logits[:, :-1]
    return gather_logprobs(logits.float() / temperature, input_ids[:, -n_completion:])


@dataclass
class GroupBatch:
    """Sampled completions, ``group_size`` per prompt, prompt by prompt.

    prompt_ids, prompt_mask: (n, P) left-padded prompts (each repeated ``group_size`` times);
    completion_ids, completion_mask: (n, T) completions, mask 1 up to and including the eos;
    logps: (n, T) float32 token log-probs under the sampling policy (the ``old_logps``);
    texts: the n completions decoded (special tokens dropped); prompts: the n prompt strings.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    logps: torch.Tensor
    texts: list[str]
    prompts: list[str]
    group_size: int

    @property
    def input_ids(self) -> torch.Tensor:
        """(n, P + T) prompt then completion."""
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        """(n, P + T): the prompt's mask, then the completion's."""
        return torch.cat([self.prompt_mask, self.completion_mask], dim=1)


def _chat_text(tokenizer: Any, prompt: str, chat: bool) -> str:
    if not chat:
        return prompt
    messages = [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


@contextlib.contextmanager
def _seeded(seed: int | None):
    """Seed torch's global RNG inside the block (transformers samples from it), then restore."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@torch.no_grad()
def sample_groups(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    group_size: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    *,
    chat: bool = True,
    seed: int | None = None,
) -> GroupBatch:
    """Sample ``group_size`` completions of every prompt in one batched generation.

    The prompts (wrapped as one user message by the chat template when ``chat``) are
    left-padded, so every row's last prompt token sits at the same column and generation
    continues all rows together; each prompt appears ``group_size`` times in a row. Sampling is
    pure (no top-k / top-p) at ``temperature``, from torch's global RNG, or from ``seed`` with
    the global RNG left as it was. Completions stop at the tokenizer's eos or after
    ``max_new_tokens``; their log-probs come from one forward pass of ``model``.
    """
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts) or not prompts:
        raise TypeError(f"prompts: expected a non-empty list of strings, got {prompts!r}")
    group_size = require_positive_int(group_size, "group_size")
    max_new_tokens = require_positive_int(max_new_tokens, "max_new_tokens")
    temperature = require_real(temperature, "temperature")
    if temperature <= 0:
        raise ValueError(f"temperature: expected a number > 0, got {temperature!r}")
    repeated = [p for p in prompts for _ in range(group_size)]
    texts = [_chat_text(tokenizer, p, chat) for p in repeated]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = side
    device = next(model.parameters()).device
    prompt_ids, prompt_mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    was_training = model.training
    model.eval()
    try:
        with _seeded(seed):
            out = model.generate(
                input_ids=prompt_ids,
                attention_mask=prompt_mask,
                do_sample=True,
                temperature=temperature,
                top_k=0,
                top_p=1.0,
                max_new_tokens=max_new_tokens,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.eos_token_id
                if tokenizer.pad_token_id is None
                else tokenizer.pad_token_id,
            )
        completion_ids = out[:, prompt_ids.shape[1] :]
        mask = completion_mask(completion_ids, tokenizer.eos_token_id)
        full_mask = torch.cat([prompt_mask, mask], dim=1)
        logps = completion_token_logps(model, out, full_mask, completion_ids.shape[1], temperature)
    finally:
        model.train(was_training)
    decoded = [
        tokenizer.decode(ids[:n], skip_special_tokens=True)
        for ids, n in zip(completion_ids, mask.sum(1).tolist(), strict=True)
    ]
    return GroupBatch(
        prompt_ids, prompt_mask, completion_ids, mask, logps, decoded, repeated, group_size
    )


def sample_group(
    model: nn.Module,
    tokenizer: Any,
    prompt: str,
    group_size: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    **kwargs: Any,
) -> GroupBatch:
    """:func:`sample_groups` for one prompt: ``group_size`` completions of ``prompt``."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt: expected a str, got {type(prompt).__name__}")
    return sample_groups(
        model, tokenizer, [prompt], group_size, max_new_tokens, temperature, **kwargs
    )


# --------------------------------------------------------------------------------------------
# One update


@dataclass
class GRPOStats:
    """What one :func:`grpo_step` saw and did.

    reward: mean reward of the sampled completions; zero_variance: share of groups with equal
    rewards; length: mean completion length (tokens). Measured in the last inner update,
    before its optimizer step: loss; kl, the mean k3 KL to the reference over real tokens (0
    when beta = 0); clip_fraction, the share of real tokens whose ratio was clipped against
    their advantage (0 on the first update, where every ratio is 1).
    """

    reward: float
    zero_variance: float
    loss: float
    kl: float
    clip_fraction: float
    length: float


def grpo_step(
    model: nn.Module,
    ref_model: nn.Module | None,
    optimizer: torch.optim.Optimizer,
    tokenizer: Any,
    prompts: Sequence[str],
    reward_fn: Callable[[list[str], list[str]], Sequence[float]],
    *,
    group_size: int = 8,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    clip_eps: float = 0.2,
    beta: float = 0.04,
    loss_type: str = "grpo",
    scale_rewards: bool = True,
    n_updates: int = 1,
    max_grad_norm: float | None = 1.0,
    seed: int | None = None,
) -> GRPOStats:
    """One GRPO iteration: sample, score, then ``n_updates`` gradient steps on that batch.

    ``reward_fn(prompts, completions) -> rewards``: the n prompt strings (each repeated
    ``group_size`` times) and the n completion texts, one reward each. ``ref_model`` is the
    frozen reference for the KL term (None only with ``beta == 0``). The first update has
    ratio = 1 (the sampling policy is the current one); later ones (``n_updates`` > 1, the
    paper's mu) see the ratio move and the clipping act.
    """
    if beta != 0 and ref_model is None:
        raise ValueError("ref_model: expected a model when beta != 0, got None")
    n_updates = require_positive_int(n_updates, "n_updates")
    batch = sample_groups(
        model, tokenizer, list(prompts), group_size, max_new_tokens, temperature, seed=seed
    )
    rewards = reward_fn(batch.prompts, batch.texts)
    rewards = _as_rewards(rewards).to(batch.logps.device)
    if rewards.numel() != len(batch.texts):
        raise ValueError(
            f"reward_fn: expected {len(batch.texts)} rewards (one per completion), "
            f"got {rewards.numel()}"
        )
    advantages = group_advantages(rewards, group_size, scale=scale_rewards)
    input_ids, attention_mask = batch.input_ids, batch.attention_mask
    n_completion = batch.completion_ids.shape[1]
    ref_logps = None
    if beta != 0:
        with torch.no_grad():
            ref_logps = completion_token_logps(
                ref_model, input_ids, attention_mask, n_completion, temperature
            )
    mask = batch.completion_mask.float()
    model.train()
    for _ in range(n_updates):
        logps = completion_token_logps(model, input_ids, attention_mask, n_completion, temperature)
        loss = grpo_loss(
            logps, batch.logps, ref_logps, advantages, mask, clip_eps, beta, loss_type,
            max_completion_length=max_new_tokens,
        )  # fmt: skip
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
    model.eval()
    with torch.no_grad():
        ratio = torch.exp(logps.detach() - batch.logps)
        adv = advantages[:, None]
        clipped = ((ratio < 1 - clip_eps) & (adv < 0)) | ((ratio > 1 + clip_eps) & (adv > 0))
        tokens = mask.sum().clamp(min=1.0)
        kl = 0.0
        if ref_logps is not None:
            kl = ((k3_kl(logps.detach(), ref_logps) * mask).sum() / tokens).item()
    return GRPOStats(
        reward=rewards.mean().item(),
        zero_variance=zero_variance_share(rewards, group_size),
        loss=loss.item(),
        kl=kl,
        clip_fraction=((clipped.float() * mask).sum() / tokens).item(),
        length=mask.sum(1).mean().item(),
    )
