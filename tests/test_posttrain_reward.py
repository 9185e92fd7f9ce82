"""llmlab.posttrain.reward: the Bradley-Terry loss equals trl's, the reward model equals
transformers' LlamaForSequenceClassification, and both train.

trl 1.16 computes the reward loss inside ``RewardTrainer.compute_loss``; the tests build a real
trainer offline (a tiny random SmolLM2-shaped classifier, a 2-row conversational data set) and
call that method, once with a stand-in model that returns given rewards (every option of the
loss on non-trivial values) and once end to end on trl's own collated batch.
"""

from __future__ import annotations

import copy
import re
import tempfile

import pytest
import torch
from torch import nn

from llmlab.assets import tiny_smollm2
from llmlab.models import Llama
from llmlab.posttrain.logprobs import preference_batch
from llmlab.posttrain.reward import (
    RewardModel,
    bradley_terry_loss,
    pair_accuracy,
    reward_batch_loss,
)

SYSTEM = "Be brief."
PROMPTS = ["What is 2+2?", "Name a colour."]
CHOSEN = ["4", "Blue, like the sky."]
REJECTED = ["5, I think", "Seven."]


@pytest.fixture(scope="module")
def tiny():
    return tiny_smollm2(seed=0)


def _reward_model(lm: nn.Module, seed: int = 0) -> RewardModel:
    torch.manual_seed(seed)
    return RewardModel(copy.deepcopy(lm), init_std=0.5)  # a head large enough to matter


def _classifier(model: RewardModel, tokenizer):
    """transformers' LlamaForSequenceClassification (one label) with ``model``'s weights."""
    from transformers import LlamaForSequenceClassification

    config = copy.deepcopy(model.backbone.config)
    config.num_labels = 1
    config.pad_token_id = tokenizer.pad_token_id
    classifier = LlamaForSequenceClassification(config)
    classifier.model.load_state_dict(model.backbone.model.state_dict())
    with torch.no_grad():
        classifier.score.weight.copy_(model.score.weight)
    return classifier


def _trainer(classifier, tokenizer, **config):
    """A real trl RewardTrainer (CPU, offline, no logging) and one collated batch of it."""
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    rows = {
        "prompt": [
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": p}] for p in PROMPTS
        ],
        "chosen": [[{"role": "assistant", "content": c}] for c in CHOSEN],
        "rejected": [[{"role": "assistant", "content": r}] for r in REJECTED],
    }
    args = RewardConfig(
        output_dir=tempfile.mkdtemp(),
        report_to=[],
        use_cpu=True,
        logging_strategy="no",
        save_strategy="no",
        disable_tqdm=True,
        **config,
    )
    trainer = RewardTrainer(
        model=classifier,
        args=args,
        train_dataset=Dataset.from_dict(rows),
        processing_class=tokenizer,
    )
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    return trainer, batch


class GivenRewards(nn.Module):
    """Stands in for a reward model: returns ``rewards`` as (2 * pairs, 1) logits."""

    def __init__(self, rewards: torch.Tensor):
        super().__init__()
        self.rewards = rewards

    def forward(self, **inputs):
        from types import SimpleNamespace

        return SimpleNamespace(logits=self.rewards[:, None])


# --------------------------------------------------------------------------------------------
# The loss against trl


@pytest.mark.parametrize("center", [None, 0.01])
@pytest.mark.parametrize("with_margin", [False, True])
def test_bradley_terry_loss_and_gradients_equal_trl(tiny, center, with_margin):
    lm, tokenizer = tiny
    trainer, batch = _trainer(
        _classifier(_reward_model(lm), tokenizer), tokenizer, center_rewards_coefficient=center
    )
    gen = torch.Generator().manual_seed(0)
    pairs = 2
    rewards = (3 * torch.randn(2 * pairs, generator=gen)).requires_grad_(True)
    inputs = dict(batch)
    margin = None
    if with_margin:
        margin = torch.rand(pairs, generator=gen) * 2
        inputs["margin"] = margin
    theirs = trainer.compute_loss(GivenRewards(rewards), inputs)
    r_chosen, r_rejected = rewards.chunk(2)
    mine = bradley_terry_loss(r_chosen, r_rejected, margin, center_rewards_coefficient=center)
    assert torch.allclose(mine, theirs, atol=1e-6)
    (g_mine,) = torch.autograd.grad(mine, rewards)
    (g_theirs,) = torch.autograd.grad(theirs, rewards)
    assert torch.allclose(g_mine, g_theirs, atol=1e-7) and g_mine.abs().min() > 0
    expected_accuracy = trainer._metrics["train"]["accuracy"][-1]
    assert pair_accuracy(r_chosen, r_rejected) == pytest.approx(expected_accuracy)


def test_reward_model_loss_and_gradients_equal_trl_end_to_end(tiny):
    lm, tokenizer = tiny
    model = _reward_model(lm)
    classifier = _classifier(model, tokenizer)
    trainer, batch = _trainer(classifier, tokenizer)
    classifier.train()
    theirs = trainer.compute_loss(classifier, dict(batch))
    mine, r_chosen, r_rejected = reward_batch_loss(model, batch)
    assert torch.allclose(mine, theirs, atol=1e-6) and abs(mine.item() - 0.6931) > 1e-3
    ours = dict(model.backbone.model.named_parameters()) | {"score.weight": model.score.weight}
    theirs_params = dict(classifier.model.named_parameters()) | {
        "score.weight": classifier.score.weight
    }
    names = list(ours)
    g_mine = torch.autograd.grad(mine, [ours[n] for n in names])
    g_theirs = torch.autograd.grad(theirs, [theirs_params[n] for n in names])
    for name, a, b in zip(names, g_mine, g_theirs, strict=True):
        assert b.abs().max() > 0, name
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4), name


# --------------------------------------------------------------------------------------------
# The reward model


def _batch(tokenizer, side="right"):
    return preference_batch(tokenizer, PROMPTS, CHOSEN, REJECTED, system=SYSTEM, padding_side=side)


def test_rewards_do_not_depend_on_padding(tiny):
    lm, tokenizer = tiny
    model = _reward_model(lm)
    right, left = _batch(tokenizer, "right"), _batch(tokenizer, "left")
    assert (right["attention_mask"] == 0).any()  # rows of different lengths
    with torch.no_grad():
        r_right = model(right["input_ids"], right["attention_mask"])
        r_left = model(left["input_ids"], left["attention_mask"])
        alone = torch.cat(
            [
                model(ids[mask.bool()][None])
                for ids, mask in zip(right["input_ids"], right["attention_mask"], strict=True)
            ]
        )
    assert r_right.shape == (4,) and r_right.dtype == torch.float32
    assert torch.allclose(r_right, alone, atol=1e-5) and torch.allclose(r_left, alone, atol=1e-5)


def test_reward_is_read_at_the_last_real_token_even_when_pad_is_end_of_turn(tiny):
    # SmolLM2 pads with <|im_end|>, the token that ends every answer (followed by the
    # template's newline): where a row ends must come from the attention mask, not the pad id.
    lm, tokenizer = tiny
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    model = _reward_model(lm)
    batch = _batch(tokenizer)
    with torch.no_grad():
        hidden = model.hidden_states(batch["input_ids"], batch["attention_mask"])
        rewards = model(batch["input_ids"], batch["attention_mask"])
    last = batch["attention_mask"].sum(dim=1) - 1
    assert (batch["input_ids"][torch.arange(4), last - 1] == tokenizer.eos_token_id).all()
    assert tokenizer.decode(batch["input_ids"][0, last[0]]) == "\n"
    expected = hidden[torch.arange(4), last] @ model.score.weight[0]
    assert torch.allclose(rewards, expected, atol=1e-6)


def test_reward_model_equals_transformers_sequence_classification(tiny):
    lm, tokenizer = tiny
    model = _reward_model(lm)
    classifier = _classifier(model, tokenizer).eval()
    # transformers finds the last token that is not the pad id: give it rows that end with a
    # different token, padded on the right
    batch = preference_batch(tokenizer, PROMPTS, CHOSEN, REJECTED, system=SYSTEM)
    ids, mask = batch["input_ids"].clone(), batch["attention_mask"]
    ids[torch.arange(4), mask.sum(dim=1) - 1] = tokenizer.convert_tokens_to_ids(".")
    with torch.no_grad():
        mine = model(ids, mask)
        theirs = classifier(input_ids=ids, attention_mask=mask).logits.squeeze(-1)
    assert torch.allclose(mine, theirs, atol=1e-5)


def test_reward_model_on_an_llmlab_backbone(tiny):
    lm, tokenizer = tiny
    hf_model = _reward_model(lm)
    ours = RewardModel(Llama.from_hf(lm))
    with torch.no_grad():
        ours.score.weight.copy_(hf_model.score.weight)
    batch = _batch(tokenizer)
    with torch.no_grad():
        assert torch.allclose(
            ours(batch["input_ids"], batch["attention_mask"]),
            hf_model(batch["input_ids"], batch["attention_mask"]),
            atol=1e-4,
        )
    left = _batch(tokenizer, "left")
    with pytest.raises(ValueError, match="may only be padded on the right"):
        ours(left["input_ids"], left["attention_mask"])


def test_twenty_steps_rank_the_training_pairs(tiny):
    lm, tokenizer = tiny
    model = _reward_model(lm).train()
    batch = _batch(tokenizer)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(20):
        loss, r_chosen, r_rejected = reward_batch_loss(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        _, r_chosen, r_rejected = reward_batch_loss(model, batch)
    assert losses[-1] < 0.5 * losses[0] and pair_accuracy(r_chosen, r_rejected) == 1.0


# --------------------------------------------------------------------------------------------
# The loss from its definition, and input checks


def test_loss_values_and_stability():
    r_c = torch.tensor([1.0, 0.0, -2.0])
    r_r = torch.tensor([0.0, 0.0, 1.0])
    expected = -torch.log(torch.sigmoid(r_c - r_r)).mean()
    assert torch.allclose(bradley_terry_loss(r_c, r_r), expected)
    # only the differences matter
    assert torch.allclose(bradley_terry_loss(r_c + 7, r_r + 7), expected)
    # a huge wrong-way gap: log(sigmoid) would give inf, logsigmoid gives the gap itself
    far = bradley_terry_loss(torch.tensor([-200.0]), torch.tensor([0.0]))
    assert far.item() == pytest.approx(200.0)
    assert bradley_terry_loss(r_c, r_r, 1.0) > bradley_terry_loss(r_c, r_r)
    assert pair_accuracy(r_c, r_r) == pytest.approx(1 / 3)  # the tie counts as wrong


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "words"),
    [
        ((torch.zeros(3), torch.zeros(2)), {}, ValueError, "r_rejected: expected the shape"),
        ((torch.zeros(3, 1), torch.zeros(3, 1)), {}, ValueError, "r_chosen: expected shape"),
        (([0.0], torch.zeros(1)), {}, TypeError, "r_chosen: expected a torch.Tensor"),
        ((torch.zeros(3), torch.zeros(3), torch.zeros(2)), {}, ValueError, "margin: expected"),
        (
            (torch.zeros(3), torch.zeros(3)),
            {"center_rewards_coefficient": -1.0},
            ValueError,
            "center_rewards_coefficient: expected a number >= 0",
        ),
    ],
)
def test_loss_input_checks(args, kwargs, error, words):
    with pytest.raises(error, match=re.escape(words)):
        bradley_terry_loss(*args, **kwargs)


def test_reward_model_input_checks(tiny):
    lm, tokenizer = tiny
    with pytest.raises(TypeError, match="backbone: expected an nn.Module"):
        RewardModel("smollm2")
    with pytest.raises(TypeError, match="backbone: expected a transformers causal LM"):
        RewardModel(nn.Linear(2, 2))
    model = _reward_model(lm)
    batch = _batch(tokenizer)
    with pytest.raises(ValueError, match="at least one real token in every row"):
        model(batch["input_ids"], torch.zeros_like(batch["attention_mask"]))
    with pytest.raises(ValueError, match="attention_mask: expected shape"):
        model(batch["input_ids"], batch["attention_mask"][:, 1:])
    with pytest.raises(ValueError, match="batch: expected an even number of rows"):
        reward_batch_loss(model, {k: v[:3] for k, v in batch.items()})
