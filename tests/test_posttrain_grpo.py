"""llmlab.posttrain.grpo: group advantages and the GRPO loss equal trl 1.16's own code on the same
tensors (loss and gradients, every loss type we implement), batched sampling with left padding
scores each completion as an unpadded forward would, and a few GRPO steps raise the probability
of the token the reward favours on tiny_smollm2."""

from __future__ import annotations

import copy
import math
import tempfile

import pytest
import torch

from llmlab.assets import tiny_smollm2
from llmlab.posttrain import grpo

TEMPERATURE = 0.7


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """A 3M-parameter model runs fastest on one thread (more only add synchronisation)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny():
    return tiny_smollm2(seed=0, device="cpu")


# --------------------------------------------------------------------------------------------
# Advantages, by hand


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0, 0.0, 0.0, 0.0, 3.0])
    a = grpo.group_advantages(rewards, 4)
    std = math.sqrt(1 / 3)  # unbiased std of (1, 0, 0, 1): sum of squares 1, n - 1 = 3
    first = torch.tensor([0.5, -0.5, -0.5, 0.5]) / (std + 1e-4)
    torch.testing.assert_close(a[:4], first)
    assert torch.equal(a[4:8], torch.zeros(4))  # equal rewards: A = 0, not 0/0
    assert a[8:].sum().abs() < 1e-6 and a[11] > 0 > a[8]
    # the batch's other groups never enter a group's mean or std
    torch.testing.assert_close(grpo.group_advantages(rewards[8:], 4), a[8:])
    # Dr. GRPO: centred only
    torch.testing.assert_close(
        grpo.group_advantages(rewards, 4, scale=False),
        rewards - rewards.view(3, 4).mean(1).repeat_interleave(4),
    )
    assert grpo.zero_variance_share(rewards, 4) == pytest.approx(1 / 3)
    assert grpo.zero_variance_share([1, 1, 0, 0], 2) == 1.0  # lists of ints work too


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (
            lambda: grpo.group_advantages(torch.ones(5), 2),
            "rewards: expected a multiple of group_size=2",
        ),
        (lambda: grpo.group_advantages(torch.ones(4), 1), "group_size: expected >= 2"),
        (lambda: grpo.group_advantages(torch.ones(2, 2), 2), "rewards: expected 1 dim"),
        (lambda: grpo.group_advantages(torch.ones(4), 2, eps=-1.0), "eps: expected a number >= 0"),
        (lambda: grpo.zero_variance_share(torch.ones(3), 2), "rewards: expected a multiple"),
    ],
)
def test_advantage_errors_name_the_argument(call, words):
    with pytest.raises(ValueError, match=words):
        call()


# --------------------------------------------------------------------------------------------
# The loss, from its definition


def _loss_inputs(batch=4, T=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    logps = -torch.rand(batch, T, generator=g) * 3
    old = logps + 0.4 * torch.randn(batch, T, generator=g)  # ratios well outside [0.8, 1.2]
    ref = logps + 0.5 * torch.randn(batch, T, generator=g)
    adv = torch.randn(batch, generator=g)
    mask = (torch.arange(T)[None] < torch.tensor([6, 2, 4, 1])[:batch, None]).float()
    return logps, old, ref, adv, mask


def test_loss_by_hand_on_one_token():
    # one token, ratio e^0.5 = 1.65 > 1.2: with A > 0 the clipped term 1.2 A is the min
    logps, old, ref = (
        torch.tensor([[0.0]], requires_grad=True),
        torch.tensor([[-0.5]]),
        torch.tensor([[-1.0]]),
    )
    loss = grpo.grpo_loss(logps, old, ref, torch.tensor([2.0]), torch.ones(1, 1), 0.2, 0.1)
    kl = math.exp(-1.0) + 1.0 - 1  # exp(ref - logp) - (ref - logp) - 1
    assert loss.item() == pytest.approx(-1.2 * 2.0 + 0.1 * kl)
    loss.backward()  # the clipped surrogate has no gradient: only the KL term's is left
    assert logps.grad.item() == pytest.approx(0.1 * (1 - math.exp(-1.0)))
    # with A < 0 the unclipped term -1.65 * 2 is the min: the ratio keeps its gradient
    logps.grad = None
    grpo.grpo_loss(logps, old, ref, torch.tensor([-2.0]), torch.ones(1, 1), 0.2, 0.0).backward()
    assert logps.grad.item() == pytest.approx(2.0 * math.exp(0.5))


def test_padding_is_ignored_and_kl_is_non_negative():
    logps, old, ref, adv, mask = _loss_inputs()
    loss = grpo.grpo_loss(logps, old, ref, adv, mask)
    noisy = [t.masked_fill(mask == 0, 123.0) for t in (logps, old, ref)]
    assert grpo.grpo_loss(*noisy, adv, mask) == loss
    assert (grpo.k3_kl(logps, ref) >= 0).all() and grpo.k3_kl(logps, logps).abs().max() == 0
    # on-policy (old = logps) and beta = 0: the loss is minus the mean advantage
    on_policy = grpo.grpo_loss(logps, logps, None, adv, mask, beta=0.0)
    assert on_policy.item() == pytest.approx(-adv.mean().item())


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        (dict(loss_type="ppo"), "loss_type: expected one of"),
        (dict(ref_logps=None), "ref_logps: expected a tensor when beta != 0"),
        (dict(mask=torch.ones(4, 5)), r"mask: expected shape \(4, 6\)"),
        (dict(advantages=torch.ones(3)), r"advantages: expected a tensor of shape \(4,\)"),
        (dict(clip_eps=1.5), "clip_eps: expected 0 < clip_eps < 1"),
    ],
)
def test_loss_errors_name_the_argument(kwargs, words):
    logps, old, ref, adv, mask = _loss_inputs()
    args = dict(logps=logps, old_logps=old, ref_logps=ref, advantages=adv, mask=mask) | kwargs
    with pytest.raises(ValueError, match=words):
        grpo.grpo_loss(**args)


def test_completion_mask_stops_after_the_first_eos():
    ids = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [2, 2, 2, 2]])
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    assert torch.equal(grpo.completion_mask(ids, 2), expected)


# --------------------------------------------------------------------------------------------
# Sampling with left padding


def test_sample_groups_left_pads_and_scores_like_an_unpadded_forward(tiny):
    model, tok = tiny
    prompts = ["Hi", "What is the capital of France? Answer in one word."]
    before = torch.random.get_rng_state()
    batch = grpo.sample_groups(model, tok, prompts, 3, 4, TEMPERATURE, seed=0)
    assert torch.equal(torch.random.get_rng_state(), before)  # seeded: global RNG untouched
    assert batch.prompts == [prompts[0]] * 3 + [prompts[1]] * 3
    assert batch.completion_ids.shape == batch.logps.shape == (6, 4) and len(batch.texts) == 6
    short, long = batch.prompt_mask[0], batch.prompt_mask[3]
    assert short[0] == 0 and short[-1] == 1 and long.all()  # left padding
    again = grpo.sample_groups(model, tok, prompts, 3, 4, TEMPERATURE, seed=0)
    assert torch.equal(again.completion_ids, batch.completion_ids)
    # each row scored alone, without padding, gives the same log-probs
    for row in (0, 4):
        keep = batch.attention_mask[row].bool()
        ids = batch.input_ids[row][keep][None]
        with torch.no_grad():
            alone = grpo.completion_token_logps(model, ids, torch.ones_like(ids), 4, TEMPERATURE)
        torch.testing.assert_close(alone[0], batch.logps[row], atol=1e-4, rtol=0)


# --------------------------------------------------------------------------------------------
# Equal to trl 1.16's GRPOTrainer on the same tensors


@pytest.fixture(scope="module")
def trainer(tiny):
    pytest.importorskip("trl")
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    model, tok = tiny
    holder = {"rewards": []}
    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=8, num_generations=4,
        max_completion_length=5, temperature=TEMPERATURE, report_to=[], use_cpu=True,
        bf16=False, beta=0.0,  # beta is set per test: 0 here spares loading a reference model
    )  # fmt: skip
    trainer = GRPOTrainer(
        model=copy.deepcopy(model),
        reward_funcs=lambda completions, **kwargs: holder["rewards"][: len(completions)],
        args=args,
        train_dataset=Dataset.from_dict({"prompt": ["a", "b"]}),
        processing_class=tok,
    )
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop in trl
    trainer.model.train()
    return trainer, holder


@pytest.mark.parametrize("scale", [True, False])
def test_advantages_equal_trl(trainer, scale):
    trainer, holder = trainer
    holder["rewards"] = [1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5]
    trainer.scale_rewards = "group" if scale else "none"
    out = trainer._generate_and_score_completions([{"prompt": p} for p in "ab" for _ in range(4)])
    rewards = torch.tensor(holder["rewards"])
    torch.testing.assert_close(out["advantages"], grpo.group_advantages(rewards, 4, scale=scale))
    trl_share = trainer._metrics["train"]["frac_reward_zero_std"][-1]
    assert grpo.zero_variance_share(rewards, 4) == pytest.approx(trl_share) == 0.5


# Every reduction with trl's defaults (KL corrected by the ratio), then the per-token variants
# (DAPO's clip-higher, the plain k3 KL, no KL) with GRPO's reduction.
SETTINGS = [(loss_type, 0.04, 0.2, True) for loss_type in grpo.LOSS_TYPES] + [
    ("grpo", 0.1, 0.28, False),
    ("grpo", 0.0, 0.2, True),
]


@pytest.mark.parametrize(("loss_type", "beta", "eps_high", "kl_correction"), SETTINGS)
def test_loss_and_gradients_equal_trl(trainer, loss_type, beta, eps_high, kl_correction):
    trainer, _ = trainer
    model = trainer.model
    trainer.loss_type, trainer.beta, trainer.epsilon_high = loss_type, beta, eps_high
    trainer.args.use_bias_correction_kl = kl_correction
    g = torch.Generator().manual_seed(0)
    enc = trainer.processing_class(["Hi there", "a longer prompt here"] * 4, padding_side="left",
                                   padding=True, return_tensors="pt")  # fmt: skip
    prompt_ids, prompt_mask = enc["input_ids"], enc["attention_mask"]
    B, T = prompt_ids.shape[0], 5
    completion_ids = torch.randint(3, 5000, (B, T), generator=g)
    lengths = torch.tensor([5, 3, 1, 4, 5, 2, 5, 4])
    completion_mask = (torch.arange(T)[None] < lengths[:, None]).long()
    ids = torch.cat([prompt_ids, completion_ids], 1)
    attention = torch.cat([prompt_mask, completion_mask], 1)
    with torch.no_grad():
        now = grpo.completion_token_logps(model, ids, attention, T, TEMPERATURE)
    old = now + 0.3 * torch.randn(B, T, generator=g)  # off-policy: the clip acts both ways
    ref = now + 0.5 * torch.randn(B, T, generator=g)
    advantages = torch.randn(B, generator=g)
    inputs = dict(
        prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids,
        completion_mask=completion_mask, advantages=advantages, old_per_token_logps=old,
        ref_per_token_logps=ref, num_items_in_batch=completion_mask.sum(),
    )  # fmt: skip

    def loss_and_grads(compute):
        model.zero_grad(set_to_none=True)
        loss = compute()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    theirs, their_grads = loss_and_grads(lambda: trainer._compute_loss(model, inputs))
    ours, our_grads = loss_and_grads(
        lambda: grpo.grpo_loss(
            grpo.completion_token_logps(model, ids, attention, T, TEMPERATURE),
            old,
            ref if beta else None,
            advantages,
            completion_mask,
            0.2,
            beta,
            loss_type,
            clip_eps_high=eps_high,
            max_completion_length=trainer.max_completion_length,
            kl_ratio_correction=kl_correction,
        )  # fmt: skip
    )
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)
    assert len(our_grads) == len(their_grads) and their_grads[0].abs().max() > 0
    for a, b in zip(our_grads, their_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


# --------------------------------------------------------------------------------------------
# End to end


def test_grpo_steps_raise_the_probability_of_the_rewarded_token(tiny):
    model, tok = tiny
    model = copy.deepcopy(model)
    with torch.no_grad():  # sharpen the random model so that its top token has p ~ 0.3
        model.model.norm.weight.fill_(10.0)
    ref = copy.deepcopy(model).eval()
    prompts = ["Say a word.", "Pick one."]
    probe = grpo.sample_groups(model, tok, prompts, 1, 1, seed=0)

    def p_first():
        with torch.no_grad():
            logits = model(input_ids=probe.prompt_ids, attention_mask=probe.prompt_mask).logits
        return logits[:, -1].softmax(-1)

    target = int(p_first()[0].argmax())
    word = tok.decode([target])
    before = p_first()[:, target]
    assert (0.1 < before).all() and (before < 0.5).all()  # rewards vary within a group

    def reward(prompts, completions):
        return [float(c.startswith(word)) for c in completions]

    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    stats = [
        grpo.grpo_step(
            model, ref, opt, tok, prompts, reward, group_size=8, max_new_tokens=1, seed=s
        )
        for s in range(3)
    ]
    after = p_first()[:, target]
    assert (after > before + 0.2).all(), (before, after)
    assert stats[0].zero_variance < 1 and stats[0].kl == 0.0  # first update: still the reference
    assert stats[-1].kl > 0
