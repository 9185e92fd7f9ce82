"""PPO-RLHF: the policy-gradient loop of InstructGPT (Ouyang et al. 2022), from its definition,
with the details of "The N+ implementation details of RLHF with PPO" (Huang et al. 2024).

One iteration:

1. **Rollout.** The policy samples a response to each query (prompt); a score function rates
   each whole response (a reward model, or here a program).
2. **Per-token reward.** Every response token t gets ``-kl_coef * (logp_t - ref_logp_t)``, a
   penalty for leaving the frozen reference policy (the per-token KL estimate), and the last
   real token also gets the score:

       r_t = -kl_coef * (log pi(y_t) - log pi_ref(y_t)) + [t = last] * score

3. **Advantages by GAE** (Schulman et al. 2016), computed backwards from a value head's
   estimates V_t (the expected return from the state before token t):

       delta_t = r_t + gamma * V_{t+1} - V_t           (V after the last token = 0)
       A_t     = delta_t + gamma * lam * A_{t+1}
       R_t     = A_t + V_t                             (the value head's regression target)

   then whitened over the batch (zero mean, unit variance over real tokens).
4. **Several epochs of minibatches** on the same rollout, each minimising

       L = mean_t max(-A_t r_t, -A_t clip(r_t, 1 - eps, 1 + eps))                (policy)
         + vf_coef * 0.5 * mean_t max((V_t - R_t)^2, (clip(V_t, V_old +- eps_v) - R_t)^2)

   with ``r_t = exp(logp_t - old_logp_t)``: the clipped surrogate and the clipped value loss.

The policy is a causal LM of :mod:`llmlab.models` (chapter 03's :class:`~llmlab.models.GPT`)
with a scalar value head on its final hidden states (:class:`PolicyWithValue`); queries have
one length (no padding), responses stop at ``eos_token_id`` when given. trl 1.16 no longer
ships a PPO trainer (neither in ``trl`` nor in ``trl.experimental``), so the tests check GAE
against hand-computed returns and the closed forms at lam = 0 and lam = 1.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
from torch import nn

from llmlab.inference.generation import generate
from llmlab.models.causal_lm import CausalLM
from llmlab.posttrain.grpo import completion_mask
from llmlab.posttrain.logprobs import gather_logprobs
from llmlab.validate import require_dims, require_positive_int, require_real, require_token_ids

__all__ = [
    "PolicyWithValue",
    "response_logprobs",
    "kl_penalised_rewards",
    "gae",
    "whiten",
    "masked_mean",
    "ppo_loss",
    "PPOConfig",
    "Rollout",
    "rollout",
    "ppo_update",
    "PPOStats",
    "ppo_step",
    "frozen_copy",
]


# --------------------------------------------------------------------------------------------
# The policy and its value head


class PolicyWithValue(nn.Module):
    """A causal LM and a scalar value head on its final hidden states (a shared trunk).

    ``forward(ids) -> (logits (batch, seq, vocab), values (batch, seq))``: values[:, t] is the
    head's estimate of the return from the state that ends at token t. ``self.lm`` is the
    language model itself (what :func:`~llmlab.inference.generation.generate` samples from).
    The head starts at zero output so that early value errors do not swamp the trunk.
    """

    def __init__(self, lm: CausalLM):
        super().__init__()
        if not isinstance(lm, CausalLM):
            raise TypeError(f"lm: expected an llmlab.models causal LM, got {type(lm).__name__}")
        self.lm = lm
        self.value_head = nn.Linear(lm.config.d_model, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.lm.hidden_states(input_ids)
        return self.lm.lm_head(hidden), self.value_head(hidden).squeeze(-1)


def _response_slice(x: torch.Tensor, n_query: int, n_response: int) -> torch.Tensor:
    # position t predicts token t + 1: the response tokens are predicted from n_query - 1 on
    return x[:, n_query - 1 : n_query - 1 + n_response]


def response_logprobs(
    model: nn.Module,
    query: torch.Tensor,
    response: torch.Tensor,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(response token) (batch, R) under ``model``, and its values (batch, R) or None.

    query: (batch, P), response: (batch, R). ``model`` is a :class:`PolicyWithValue` (values
    returned) or a plain causal LM (None). Logits are divided by ``temperature``, the
    distribution the responses were sampled from (N+ detail: score at the sampling temperature).
    """
    ids = torch.cat([query, response], dim=1)
    out = model(ids)
    logits, values = out if isinstance(out, tuple) else (out, None)
    n_query, n_response = query.shape[1], response.shape[1]
    logits = _response_slice(logits, n_query, n_response).float() / temperature
    logprobs = gather_logprobs(logits, response)
    if values is not None:
        values = _response_slice(values, n_query, n_response)
    return logprobs, values


# --------------------------------------------------------------------------------------------
# Rewards, GAE, whitening


def _require_pair(name: str, x: torch.Tensor, like: torch.Tensor) -> None:
    require_dims(x, 2, name, "(batch, response)")
    if x.shape != like.shape:
        raise ValueError(f"{name}: expected shape {tuple(like.shape)}, got {tuple(x.shape)}")


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1 (any shape)."""
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def kl_penalised_rewards(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    scores: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
) -> torch.Tensor:
    """Per-token rewards (batch, R): ``-kl_coef * (logprobs - ref_logprobs)`` on real tokens,
    plus each row's score on its last real token; 0 on padding.

    logprobs, ref_logprobs, mask: (batch, R) (mask 1 on the response's tokens, a prefix of
    ones); scores: (batch,). Summed over a response, the penalty is -kl_coef times the
    sampled estimate of KL(pi || pi_ref) for that response.
    """
    _require_pair("ref_logprobs", ref_logprobs, logprobs)
    _require_pair("mask", mask, logprobs)
    if scores.shape != logprobs.shape[:1]:
        raise ValueError(
            f"scores: expected shape ({logprobs.shape[0]},), got {tuple(scores.shape)}"
        )
    mask = mask.to(logprobs.dtype)
    rewards = -require_real(kl_coef, "kl_coef") * (logprobs - ref_logprobs) * mask
    last = (mask.sum(1).long() - 1).clamp(min=0)
    return rewards.index_put(
        (torch.arange(len(last)), last), scores.to(rewards.dtype), accumulate=True
    )


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation, backwards over the response: (advantages, returns).

    rewards, values, mask: (batch, R), mask a prefix of ones (real tokens) then zeros. With
    values and rewards zeroed on padding, the state after the last real token is worth 0:
    ``delta_t = r_t + gamma V_{t+1} - V_t``, ``A_t = delta_t + gamma lam A_{t+1}``,
    ``returns = A + V``; both are 0 on padding. lam = 0 gives the one-step TD error, lam = 1
    the Monte-Carlo return minus V.
    """
    _require_pair("values", values, rewards)
    _require_pair("mask", mask, rewards)
    gamma, lam = require_real(gamma, "gamma"), require_real(lam, "lam")
    if not (0 <= gamma <= 1 and 0 <= lam <= 1):
        raise ValueError(f"gamma, lam: expected numbers in [0, 1], got {gamma!r}, {lam!r}")
    mask = mask.to(rewards.dtype)
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    n = rewards.shape[1]
    for t in reversed(range(n)):
        next_value = values[:, t + 1] if t + 1 < n else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """``(x - mean) / std`` over the positions where ``mask`` is 1 (unbiased variance); 0
    elsewhere. ``shift_mean=False`` keeps the mean (only rescales), as for rewards."""
    mask = mask.to(x.dtype)
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask) * mask.sum() / (mask.sum() - 1).clamp(min=1.0)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask


# --------------------------------------------------------------------------------------------
# The loss


def ppo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    values: torch.Tensor,
    old_values: torch.Tensor,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    clip_value: float = 0.2,
    vf_coef: float = 0.1,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's loss on one minibatch: clipped surrogate + vf_coef * clipped value loss.

    All tensors (batch, R); ``mask`` 1 on real response tokens, means are over those.
    ``old_*`` come from the rollout (no gradient). Returns the loss and statistics:
    ``policy_loss``, ``value_loss``, ``clip_fraction`` (tokens whose ratio was clipped),
    ``approx_kl`` (0.5 * mean (logp - old)^2, how far this epoch moved the policy).
    """
    for name, x in (("old_logprobs", old_logprobs), ("values", values), ("old_values", old_values),
                    ("advantages", advantages), ("returns", returns), ("mask", mask)):  # fmt: skip
        _require_pair(name, x, logprobs)
    mask = mask.to(logprobs.dtype)
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    pg = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip_eps, 1 + clip_eps))
    policy_loss = masked_mean(pg, mask)
    clipped_values = old_values + (values - old_values).clamp(-clip_value, clip_value)
    vf = 0.5 * torch.max((values - returns) ** 2, (clipped_values - returns) ** 2)
    value_loss = masked_mean(vf, mask)
    with torch.no_grad():
        stats = {
            "policy_loss": policy_loss.item(),
            "value_loss": value_loss.item(),
            "clip_fraction": masked_mean(((ratio - 1).abs() > clip_eps).float(), mask).item(),
            "approx_kl": masked_mean(0.5 * log_ratio**2, mask).item(),
        }
    return policy_loss + vf_coef * value_loss, stats


# --------------------------------------------------------------------------------------------
# Rollouts and updates


@dataclass
class PPOConfig:
    """Hyper-parameters of :func:`ppo_step` (defaults: the N+ paper's, for a small policy).

    max_new_tokens: response length; temperature: sampling temperature (also used to score);
    kl_coef: beta of the per-token KL penalty; gamma, lam: GAE; clip_eps, clip_value: the
    ratio's and the value's clip ranges; vf_coef: weight of the value loss; epochs: passes
    over each rollout; minibatch_size: rollouts per gradient step; max_grad_norm: global
    clipping (None: off); whiten_advantages: normalise A over the rollout; eos_token_id:
    responses stop there (None: always max_new_tokens).
    """

    max_new_tokens: int = 8
    temperature: float = 1.0
    kl_coef: float = 0.05
    gamma: float = 1.0
    lam: float = 0.95
    clip_eps: float = 0.2
    clip_value: float = 0.2
    vf_coef: float = 0.1
    epochs: int = 4
    minibatch_size: int = 16
    max_grad_norm: float | None = 1.0
    whiten_advantages: bool = True
    eos_token_id: int | None = None

    def __post_init__(self):
        for name in ("max_new_tokens", "epochs", "minibatch_size"):
            require_positive_int(getattr(self, name), name)
        for name in ("temperature", "clip_eps", "clip_value"):
            if require_real(getattr(self, name), name) <= 0:
                raise ValueError(f"{name}: expected a number > 0, got {getattr(self, name)!r}")
        for name in ("kl_coef", "vf_coef"):
            if require_real(getattr(self, name), name) < 0:
                raise ValueError(f"{name}: expected a number >= 0, got {getattr(self, name)!r}")


@dataclass
class Rollout:
    """One batch of experience, all (batch, R) except query (batch, P) and scores (batch,).

    response, mask: sampled tokens and 1 on real ones (up to and including eos); logprobs,
    values: the policy's at sampling time; ref_logprobs: the reference's; rewards: per-token
    (KL penalty + score); advantages (whitened when configured), returns: from :func:`gae`.
    """

    query: torch.Tensor
    response: torch.Tensor
    mask: torch.Tensor
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    scores: torch.Tensor
    rewards: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor

    def __getitem__(self, index: torch.Tensor) -> Rollout:
        """The rows ``index`` of every tensor (a minibatch)."""
        return Rollout(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def __len__(self) -> int:
        return self.query.shape[0]


@torch.no_grad()
def rollout(
    policy: PolicyWithValue,
    ref_model: nn.Module,
    queries: torch.Tensor,
    score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    config: PPOConfig,
    generator: torch.Generator | int | None = None,
) -> Rollout:
    """Sample a response to each query and compute everything the updates need.

    queries: (batch, P) token ids, all of one length. ``score_fn(queries, responses) ->
    (batch,)`` rates each response (the tokens after its eos are the eos id, or whatever the
    policy sampled when ``eos_token_id`` is None). ``generator`` seeds the sampling.
    """
    require_token_ids(queries, "queries", policy.lm.config.vocab_size, min_seq=1)
    was_training = policy.training
    policy.eval()
    response = generate(
        policy.lm, queries, config.max_new_tokens, do_sample=True,
        temperature=config.temperature, eos_token_id=config.eos_token_id, generator=generator,
    )  # fmt: skip
    if config.eos_token_id is None:
        mask = torch.ones_like(response, dtype=torch.float32)
    else:
        mask = completion_mask(response, config.eos_token_id).float()
    logprobs, values = response_logprobs(policy, queries, response, config.temperature)
    ref_logprobs, _ = response_logprobs(ref_model, queries, response, config.temperature)
    scores = torch.as_tensor(score_fn(queries, response), dtype=torch.float32)
    if scores.shape != (len(queries),):
        raise ValueError(
            f"score_fn: expected {len(queries)} scores (one per response), "
            f"got shape {tuple(scores.shape)}"
        )
    scores = scores.to(logprobs.device)
    rewards = kl_penalised_rewards(logprobs, ref_logprobs, scores, mask, config.kl_coef)
    advantages, returns = gae(rewards, values, mask, config.gamma, config.lam)
    if config.whiten_advantages:
        advantages = whiten(advantages, mask)
    policy.train(was_training)
    return Rollout(
        queries, response, mask, logprobs, ref_logprobs, values * mask, scores, rewards,
        advantages, returns,
    )  # fmt: skip


def ppo_update(
    policy: PolicyWithValue,
    optimizer: torch.optim.Optimizer,
    batch: Rollout,
    config: PPOConfig,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """``config.epochs`` passes over ``batch`` in shuffled minibatches, one step each.

    Returns the statistics of :func:`ppo_loss` averaged over every minibatch of the last epoch.
    """
    policy.train()
    size = min(config.minibatch_size, len(batch))
    for _ in range(config.epochs):
        order = torch.randperm(len(batch), generator=generator, device="cpu")
        epoch_stats: list[dict[str, float]] = []
        for start in range(0, len(batch), size):
            mb = batch[order[start : start + size].to(batch.query.device)]
            logprobs, values = response_logprobs(policy, mb.query, mb.response, config.temperature)
            loss, stats = ppo_loss(
                logprobs, mb.logprobs, values, mb.values, mb.advantages, mb.returns, mb.mask,
                config.clip_eps, config.clip_value, config.vf_coef,
            )  # fmt: skip
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.max_grad_norm is not None:
                nn.utils.clip_grad_norm_(policy.parameters(), config.max_grad_norm)
            optimizer.step()
            epoch_stats.append(stats)
    policy.eval()
    return {k: sum(s[k] for s in epoch_stats) / len(epoch_stats) for k in epoch_stats[0]}


@dataclass
class PPOStats:
    """One :func:`ppo_step`: mean score of the rollout, mean KL to the reference per response
    (sum over its tokens of logp - ref_logp), and the last epoch's :func:`ppo_loss` stats."""

    score: float
    kl: float
    policy_loss: float
    value_loss: float
    clip_fraction: float
    approx_kl: float


def ppo_step(
    policy: PolicyWithValue,
    ref_model: nn.Module,
    optimizer: torch.optim.Optimizer,
    queries: torch.Tensor,
    score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    config: PPOConfig,
    generator: torch.Generator | None = None,
) -> PPOStats:
    """One PPO iteration: :func:`rollout` then :func:`ppo_update`; ``generator`` (a CPU
    torch.Generator) seeds both the sampling and the minibatch order."""
    batch = rollout(policy, ref_model, queries, score_fn, config, generator)
    stats = ppo_update(policy, optimizer, batch, config, generator)
    kl = ((batch.logprobs - batch.ref_logprobs) * batch.mask).sum(1).mean().item()
    return PPOStats(score=batch.scores.mean().item(), kl=kl, **stats)


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode with no gradients: the reference policy."""
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref
