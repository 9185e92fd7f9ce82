"""llmlab.posttrain.ppo: GAE equals hand-computed returns and its closed forms (trl 1.16 ships no
PPO to compare with), the per-token KL-penalised reward, whitening, the clipped surrogate and
clipped value loss by hand (values and gradients), and a few PPO iterations on a tiny GPT that
raise the mean score of a programmatic reward."""

from __future__ import annotations

import contextlib

import pytest
import torch

from llmlab.models import GPT, GPTConfig
from llmlab.posttrain import ppo
from llmlab.posttrain.grpo import completion_mask


@contextlib.contextmanager
def one_thread():
    """Tensors this small run fastest on one thread (more only add synchronisation)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def tiny_gpt(seed=0, vocab=12):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab, max_seq=16, d_model=32, n_layers=2, n_heads=4))


# --------------------------------------------------------------------------------------------
# GAE


def test_gae_by_hand():
    # row 0: three real tokens; row 1: two, then padding holding values that must be ignored
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.2, 1.0, 99.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [0.1, 0.4, 99.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv, ret = ppo.gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # row 0: delta = (0.9*0.6 - 0.5, 0.9*0.7 - 0.6, 1 - 0.7) = (0.04, 0.03, 0.3); A_t = delta_t + 0.72 A_{t+1}
    a1 = 0.03 + 0.72 * 0.3
    a0 = 0.04 + 0.72 * a1
    # row 1: the state after the last real token is worth 0: delta_1 = 1 - 0.4
    b0 = 0.2 + 0.9 * 0.4 - 0.1 + 0.72 * 0.6
    torch.testing.assert_close(adv, torch.tensor([[a0, a1, 0.3], [b0, 0.6, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[a0 + 0.5, a1 + 0.6, 1.0], [b0 + 0.1, 1.0, 0.0]]))


def _random_episode(seed=0, batch=5, T=7):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(batch, T, generator=g, dtype=torch.float64)
    values = torch.randn(batch, T, generator=g, dtype=torch.float64)
    lengths = torch.tensor([7, 1, 4, 6, 3])
    mask = (torch.arange(T)[None] < lengths[:, None]).double()
    return rewards, values, mask


@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 0.95), (0.9, 0.5), (0.99, 1.0), (0.8, 0.0)])
def test_gae_equals_the_sum_of_discounted_td_errors(gamma, lam):
    # A_t = sum_l (gamma lam)^l delta_{t+l}, written as one matrix product instead of a loop
    rewards, values, mask = _random_episode()
    r, v = rewards * mask, values * mask
    next_v = torch.cat([v[:, 1:], torch.zeros_like(v[:, :1])], dim=1)
    delta = (r + gamma * next_v - v) * mask
    T = rewards.shape[1]
    lag = torch.arange(T)[None] - torch.arange(T)[:, None]  # l = s - t
    weights = torch.where(lag >= 0, (gamma * lam) ** lag.clamp(min=0).double(), 0.0)
    expected = delta @ weights.T * mask
    adv, ret = ppo.gae(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, (expected + v) * mask)
    if lam == 1.0:  # Monte Carlo: the return is the discounted reward-to-go
        to_go = r @ torch.where(lag >= 0, gamma ** lag.clamp(min=0).double(), 0.0).T * mask
        torch.testing.assert_close(ret, to_go)
    if lam == 0.0:  # one-step TD error
        torch.testing.assert_close(adv, delta)


def test_gae_errors_name_the_argument():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"values: expected shape \(2, 3\)"):
        ppo.gae(x, torch.zeros(2, 4), x)
    with pytest.raises(ValueError, match="gamma, lam: expected numbers in"):
        ppo.gae(x, x, x, lam=1.5)


# --------------------------------------------------------------------------------------------
# Rewards, whitening, the loss


def test_kl_penalised_rewards_put_the_score_on_the_last_real_token():
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -5.0]])
    ref = torch.tensor([[-1.5, -2.0, -2.0], [-2.0, -1.0, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards = ppo.kl_penalised_rewards(logprobs, ref, torch.tensor([2.0, -1.0]), mask, kl_coef=0.1)
    expected = torch.tensor([[-0.05, 0.0, 0.1 + 2.0], [-0.1, 0.0 - 1.0, 0.0]])
    torch.testing.assert_close(rewards, expected)
    with pytest.raises(ValueError, match=r"scores: expected shape \(2,\)"):
        ppo.kl_penalised_rewards(logprobs, ref, torch.zeros(3), mask, 0.1)


def test_whiten_over_real_tokens_only():
    _, x, mask = _random_episode(1)
    w = ppo.whiten(x * 3 + 5, mask)
    real = w[mask.bool()]
    assert abs(real.mean().item()) < 1e-6 and real.std().item() == pytest.approx(1.0, abs=1e-6)
    assert (w[~mask.bool()] == 0).all()
    kept = ppo.whiten(x * 3 + 5, mask, shift_mean=False)[mask.bool()]
    torch.testing.assert_close(kept, real + (x * 3 + 5)[mask.bool()].mean())  # rescaled only


def test_ppo_loss_by_hand():
    # token 0: A > 0, ratio e^0.5 > 1.2 -> clipped, no policy gradient
    # token 1: A < 0, ratio e^0.5 -> unclipped side (max picks -A r), gradient -A r
    logprobs = torch.tensor([[0.5, 0.5]], requires_grad=True)
    old = torch.zeros(1, 2)
    adv = torch.tensor([[1.0, -1.0]])
    values = torch.tensor([[1.0, 0.0]], requires_grad=True)
    old_values = torch.tensor([[0.5, 0.0]])
    returns = torch.tensor([[0.0, 0.1]])
    mask = torch.ones(1, 2)
    loss, stats = ppo.ppo_loss(logprobs, old, values, old_values, adv, returns, mask, 0.2, 0.2, 0.5)
    r = torch.tensor(0.5).exp().item()
    policy = (-1.2 * 1.0 + r * 1.0) / 2
    # value 1.0 moved 0.5 from 0.5: clipped to 0.7; max((1 - 0)^2, (0.7 - 0)^2) = 1; token 1: 0.01
    value = 0.5 * (1.0 + 0.01) / 2
    assert stats["policy_loss"] == pytest.approx(policy) and stats["value_loss"] == pytest.approx(
        value
    )
    assert loss.item() == pytest.approx(policy + 0.5 * value)
    assert stats["clip_fraction"] == 1.0 and stats["approx_kl"] == pytest.approx(0.125)
    loss.backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([[0.0, r / 2]]))
    # value gradient: vf_coef * 0.5 * 2 (V - R) / 2 on the unclipped branch of both tokens
    torch.testing.assert_close(values.grad, torch.tensor([[0.5 * 1.0 / 2, 0.5 * -0.1 / 2]]))


def test_clipped_value_loss_keeps_the_larger_error():
    # the value moved towards the return by more than the clip: the clipped (larger) error wins
    values = torch.tensor([[0.9]], requires_grad=True)
    zero = torch.zeros(1, 1)
    loss, stats = ppo.ppo_loss(zero, zero, values, zero, zero, torch.ones(1, 1), torch.ones(1, 1))
    assert stats["value_loss"] == pytest.approx(0.5 * 0.8**2)  # clip(0.9, -0.2, 0.2) = 0.2
    loss.backward()
    assert values.grad.item() == 0.0  # the clipped branch does not move the value


# --------------------------------------------------------------------------------------------
# The policy, rollouts, updates


def test_policy_with_value_keeps_the_lm_and_scores_responses():
    lm = tiny_gpt()
    policy = ppo.PolicyWithValue(lm)
    ids = torch.randint(0, 12, (3, 7))
    logits, values = policy(ids)
    torch.testing.assert_close(logits, lm(ids))
    assert values.shape == (3, 7) and (values == 0).all()  # zero-initialised head
    logprobs, v = ppo.response_logprobs(policy, ids[:, :4], ids[:, 4:], temperature=0.5)
    expected = (lm(ids)[:, 3:6] / 0.5).log_softmax(-1).gather(-1, ids[:, 4:, None]).squeeze(-1)
    torch.testing.assert_close(logprobs, expected)
    assert v.shape == (3, 3)
    ref_logprobs, none = ppo.response_logprobs(lm, ids[:, :4], ids[:, 4:], temperature=0.5)
    assert none is None and torch.equal(ref_logprobs, logprobs)
    with pytest.raises(TypeError, match="lm: expected an llmlab.models causal LM"):
        ppo.PolicyWithValue(torch.nn.Linear(2, 2))


def test_rollout_masks_after_eos_and_rewards_add_up():
    lm = tiny_gpt()
    policy, ref = ppo.PolicyWithValue(lm), ppo.frozen_copy(lm)
    config = ppo.PPOConfig(max_new_tokens=6, eos_token_id=0, kl_coef=0.1)
    queries = torch.randint(1, 12, (16, 3), generator=torch.Generator().manual_seed(0))
    with one_thread():
        batch = ppo.rollout(policy, ref, queries, lambda q, r: (r == 5).float().sum(1), config, 1)
    assert batch.response.shape[0] == 16 and batch.mask.shape == batch.response.shape
    torch.testing.assert_close(batch.mask, completion_mask(batch.response, 0).float())
    # policy = reference: no KL penalty, so the rewards of a response sum to its score
    torch.testing.assert_close(batch.rewards.sum(1), batch.scores)
    assert (batch.advantages[batch.mask == 0] == 0).all()


def test_config_errors_name_the_argument():
    with pytest.raises(ValueError, match="epochs: expected a positive int"):
        ppo.PPOConfig(epochs=0)
    with pytest.raises(ValueError, match="kl_coef: expected a number >= 0"):
        ppo.PPOConfig(kl_coef=-0.1)


def test_ppo_raises_the_mean_score_of_a_programmatic_reward():
    # reward: the share of response tokens equal to 7 (1/12 for the random start)
    lm = tiny_gpt()
    policy, ref = ppo.PolicyWithValue(lm), ppo.frozen_copy(lm)
    config = ppo.PPOConfig(max_new_tokens=6, epochs=4, minibatch_size=16, kl_coef=0.05)
    opt = torch.optim.AdamW(policy.parameters(), lr=3e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    with one_thread():
        stats = [
            ppo.ppo_step(
                policy,
                ref,
                opt,
                torch.randint(0, 12, (32, 3), generator=g),
                lambda q, r: (r == 7).float().mean(1),
                config,
                g,
            )  # fmt: skip
            for _ in range(6)
        ]
    scores = [s.score for s in stats]
    assert scores[0] < 0.15 and min(scores[-2:]) > scores[0] + 0.2, scores
    assert stats[0].kl == 0.0 and stats[-1].kl > 0  # drifting from the reference, measured
