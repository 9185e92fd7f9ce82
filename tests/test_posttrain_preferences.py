"""Preference pairs from sampled answers, and the training helpers built on them: the reward
model's and DPO's loops over pairs, their scoring functions, and notebook 4's cached LoRA SFT
model. All on the tiny random SmolLM2 (seconds)."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import pytest
import torch

from llmlab.assets import tiny_smollm2
from llmlab.posttrain.dpo import implicit_rewards, pair_logps, train_dpo
from llmlab.posttrain.preferences import (
    PreferencePair,
    pair_batch,
    pairs_from_json,
    pairs_from_samples,
    pairs_to_json,
    sample_pairs,
    train_on_pairs,
)
from llmlab.posttrain.reward import (
    RewardModel,
    pair_rewards,
    score_answers,
    train_reward_model,
)


@dataclass(frozen=True)
class FakeTask:
    prompt: str
    answer: str
    kind: str = "fake"

    def check(self, response: str) -> bool:
        return response.strip() == self.answer


PAIRS = [
    PreferencePair("What is 2+2?", "4", "5", "addition"),
    PreferencePair("What is 3+5?", "8", "9 or so", "addition"),
    PreferencePair("First letter of 'cat'?", "c", "a", "first_letter"),
    PreferencePair("Name a colour.", "Blue", "Seven", "other"),
]


@pytest.fixture(scope="module")
def tiny():
    return tiny_smollm2(seed=0)


# --------------------------------------------------------------------------------------------
# Pairs


def test_pairs_from_samples_pairs_right_with_wrong():
    tasks = [FakeTask("a", "1"), FakeTask("b", "2"), FakeTask("c", "3"), FakeTask("d", "4")]
    samples = [
        ["1", "0", " 1 ", "7", "0", "9"],  # right "1"; wrong "0", "7", "9" (distinct, in order)
        ["2", "2"],  # all right: no pair
        ["5", "6"],  # all wrong: no pair
        ["", "4", "x", "4"],  # the empty answer is dropped
    ]
    pairs = pairs_from_samples(tasks, samples, per_prompt=2)
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [
        ("a", "1", "0"),
        ("a", "1", "7"),
        ("d", "4", "x"),
    ]
    assert all(p.kind == "fake" for p in pairs)
    assert len(pairs_from_samples(tasks, samples, per_prompt=1)) == 2


def test_pairs_from_samples_cycles_through_right_answers():
    class Even(FakeTask):
        def check(self, response):
            return int(response) % 2 == 0

    pairs = pairs_from_samples([Even("n", "")], [["2", "1", "4", "3", "5"]], per_prompt=3)
    assert [(p.chosen, p.rejected) for p in pairs] == [("2", "1"), ("4", "3"), ("2", "5")]


def test_pairs_from_samples_checks_its_input():
    with pytest.raises(ValueError, match="samples: expected one list of answers per task"):
        pairs_from_samples([FakeTask("a", "1")], [["1"], ["2"]])
    with pytest.raises(ValueError, match="per_prompt"):
        pairs_from_samples([FakeTask("a", "1")], [["1"]], per_prompt=0)


def test_pairs_round_trip_through_json():
    assert pairs_from_json(pairs_to_json(PAIRS)) == PAIRS
    with pytest.raises(ValueError, match=r"rows\[0\]: expected keys prompt, chosen, rejected"):
        pairs_from_json([{"prompt": "p", "good": "x"}])


def test_sample_pairs_on_the_tiny_model(tiny):
    model, tokenizer = tiny

    class NonEmptyEven(FakeTask):  # random tokens: about half the answers pass
        def check(self, response):
            return len(response.strip()) % 2 == 0

    tasks = [NonEmptyEven(f"Say something {i}.", "", kind=f"k{i % 2}") for i in range(4)]
    drawn = sample_pairs(model, tokenizer, tasks, k=4, max_new_tokens=4, batch_size=2, seed=0)
    assert len(drawn.samples) == 4 and all(len(s) == 4 for s in drawn.samples)
    assert drawn.correct == [
        [t.check(s) for s in ss] for t, ss in zip(tasks, drawn.samples, strict=True)
    ]
    assert drawn.pairs == pairs_from_samples(tasks, drawn.samples)
    assert drawn.pairs, "expected at least one prompt with a right and a wrong sample"
    table = drawn.table()
    assert table.splitlines()[0].split() == [
        "kind",
        "prompts",
        "right",
        "samples",
        "mixed",
        "pairs",
    ]
    assert table.splitlines()[-1].split()[-1] == str(len(drawn.pairs))
    again = sample_pairs(model, tokenizer, tasks, k=4, max_new_tokens=4, batch_size=2, seed=0)
    assert again.samples == drawn.samples  # seeded


def test_pair_batch_puts_chosen_rows_first(tiny):
    _, tokenizer = tiny
    batch = pair_batch(tokenizer, PAIRS[:2])
    assert batch["input_ids"].shape[0] == 4
    text = tokenizer.decode(batch["input_ids"][2][batch["completion_mask"][2].bool()])
    assert text.startswith("5")  # row pairs + 0 is pair 0's rejected answer
    with pytest.raises(ValueError, match="pairs: expected at least one"):
        pair_batch(tokenizer, [])
    with pytest.raises(TypeError, match=r"pairs\[0\]: expected a PreferencePair"):
        pair_batch(tokenizer, [("p", "c", "r")])


# --------------------------------------------------------------------------------------------
# The loop over pairs


def test_train_on_pairs_visits_every_pair_each_epoch_and_passes_per_pair_values(tiny):
    model, tokenizer = tiny
    model = copy.deepcopy(model)
    seen = []

    def loss_fn(m, batch):
        assert set(batch) == {"input_ids", "attention_mask", "completion_mask", "tag"}
        seen.append(batch["tag"].tolist())
        return m.lm_head.weight.sum() * 0.0 + batch["tag"].float().sum() * 0.0

    tags = torch.arange(len(PAIRS))
    train_on_pairs(model, tokenizer, PAIRS, loss_fn, steps=4, batch_size=3, per_pair={"tag": tags})
    assert sorted(seen[0] + seen[1]) == [0, 1, 2, 3] and len(seen[1]) == 1  # a short batch kept
    assert sorted(seen[2] + seen[3]) == [0, 1, 2, 3]  # a fresh shuffle for epoch 2


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"per_pair": {"x": torch.zeros(3)}}, ValueError, r"per_pair\['x'\]: expected a \(4,\)"),
        ({"per_pair": {"input_ids": torch.zeros(4)}}, ValueError, "a batch key already"),
        ({"lr": 0.0}, ValueError, "lr: expected a finite learning rate"),
        ({"steps": 0}, ValueError, "steps"),
    ],
)
def test_train_on_pairs_rejects_bad_settings(tiny, kwargs, error, words):
    model, tokenizer = tiny
    settings = {"steps": 1} | kwargs
    with pytest.raises(error, match=words):
        train_on_pairs(model, tokenizer, PAIRS, lambda m, b: None, **settings)


# --------------------------------------------------------------------------------------------
# Reward model


def test_a_reward_model_learns_the_training_pairs(tiny):
    model, tokenizer = tiny
    rm = RewardModel(copy.deepcopy(model))
    history, accuracy = train_reward_model(rm, tokenizer, PAIRS, steps=30, batch_size=4, lr=3e-3)
    assert len(history.loss) == 30 and len(accuracy) == 30
    assert history.loss[-1] < 0.5 * history.loss[0]
    chosen, rejected = pair_rewards(rm, tokenizer, PAIRS, batch_size=3)
    assert chosen.shape == rejected.shape == (len(PAIRS),)
    assert (chosen > rejected).all()


def test_score_answers_equals_the_model_on_one_row(tiny):
    model, tokenizer = tiny
    rm = RewardModel(copy.deepcopy(model)).eval()
    prompts = [p.prompt for p in PAIRS]
    answers = [p.rejected for p in PAIRS]
    batched = score_answers(rm, tokenizer, prompts, answers, batch_size=3)
    from llmlab.env import default_precision
    from llmlab.posttrain.logprobs import _chat_pair
    from llmlab.training import autocast

    with torch.no_grad(), autocast(default_precision("cpu"), "cpu"):  # as score_answers runs
        alone = torch.stack(
            [
                rm(torch.tensor([_chat_pair(tokenizer, p, a)[0]]))[0]
                for p, a in zip(prompts, answers, strict=True)
            ]
        )
    assert torch.allclose(batched, alone, atol=1e-5)
    with pytest.raises(ValueError, match="prompts, answers: expected equally many"):
        score_answers(rm, tokenizer, prompts, answers[:2])


# --------------------------------------------------------------------------------------------
# DPO on pairs


def test_train_dpo_starts_at_zero_margin_and_learns_the_pairs(tiny):
    ref, tokenizer = tiny
    policy = copy.deepcopy(ref)
    ref_c, ref_r = pair_logps(ref, tokenizer, PAIRS, batch_size=3)
    start_c, start_r = implicit_rewards(policy, tokenizer, PAIRS, ref_c, ref_r, beta=0.1)
    assert torch.equal(start_c, torch.zeros(4)) and torch.equal(start_r, torch.zeros(4))
    history, metrics = train_dpo(
        policy, tokenizer, PAIRS, ref_c, ref_r, steps=20, beta=0.1, batch_size=4, lr=1e-3
    )
    assert history.loss[0] == pytest.approx(math.log(2), abs=1e-5)
    assert metrics["margin"][0] == pytest.approx(0.0, abs=1e-6)
    chosen, rejected = implicit_rewards(policy, tokenizer, PAIRS, ref_c, ref_r, beta=0.1)
    assert (chosen > rejected).all() and metrics["accuracy"][-1] == 1.0


def test_train_dpo_checks_the_reference_logps(tiny):
    ref, tokenizer = tiny
    with pytest.raises(ValueError, match=r"ref_rejected_logps: expected a \(4,\) tensor"):
        train_dpo(ref, tokenizer, PAIRS, torch.zeros(4), torch.zeros(3), steps=1)
    with pytest.raises(ValueError, match=r"ref_chosen_logps: expected a \(4,\) tensor"):
        implicit_rewards(ref, tokenizer, PAIRS, torch.zeros(2), torch.zeros(4))


# --------------------------------------------------------------------------------------------
# Notebook 4's LoRA SFT model, cached


def test_lora_sft_model_trains_once_then_loads(tiny, tmp_path, monkeypatch):
    from llmlab.posttrain.sft import lora_sft_model

    monkeypatch.setenv("LLMLAB_CACHE", str(tmp_path))
    base, tokenizer = tiny
    tasks = [FakeTask(p.prompt, p.chosen) for p in PAIRS]
    settings = {"name": "test/sft-adapter", "rank": 2, "steps": 2, "batch_size": 2, "lr": 1e-2}
    first, trained = lora_sft_model(base, tokenizer, tasks, **settings)
    assert trained and (tmp_path / "results" / "test" / "sft-adapter.safetensors").exists()
    second, trained_again = lora_sft_model(base, tokenizer, tasks, **settings)
    assert not trained_again
    ids = pair_batch(tokenizer, PAIRS[:1])["input_ids"]
    with torch.no_grad():
        assert torch.equal(first(ids).logits, second(ids).logits)
        assert not torch.equal(first(ids).logits, base(ids).logits)  # the SFT update is in
    assert not any(p.requires_grad for p in second.parameters())
    assert type(second.model.layers[0].self_attn.q_proj) is torch.nn.Linear  # merged


def test_draw_pair_sets_with_the_reference_answer(tiny):
    from llmlab.posttrain.preferences import draw_pair_sets

    model, tokenizer = tiny
    tasks = [FakeTask("What is 2+2?", "4"), FakeTask("What is 3+3?", "6")]
    drawn = draw_pair_sets(
        model, tokenizer, {"a": (tasks, 0), "b": (tasks[:1], 1)}, k=2, max_new_tokens=3,
        with_answer=True,
    )  # fmt: skip
    assert {k: drawn[k] for k in ("k", "per_prompt", "max_new_tokens", "with_answer")} == {
        "k": 2, "per_prompt": 2, "max_new_tokens": 3, "with_answer": True,
    }  # fmt: skip
    assert [s[-1] for s in drawn["a"]["samples"]] == ["4", "6"]  # the answer joins, last
    assert all(row[-1] for row in drawn["a"]["correct"])
    pairs = pairs_from_json(drawn["a"]["pairs"])
    assert pairs and all(p.chosen == t.answer for p in pairs for t in tasks if t.prompt == p.prompt)
    assert drawn["b"]["prompts"] == ["What is 2+2?"]
    with pytest.raises(ValueError, match="sets: expected a dict"):
        draw_pair_sets(model, tokenizer, {})


def test_sampled_kl_is_zero_against_itself_and_positive_against_another_model(tiny):
    from llmlab.posttrain.logprobs import sampled_kl

    model, tokenizer = tiny
    prompts = [p.prompt for p in PAIRS]
    same, length = sampled_kl(model, model, tokenizer, prompts, max_new_tokens=4, batch_size=3)
    assert same.k1.item() == 0.0 and same.k3.item() == 0.0 and 1 <= length <= 6
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.lm_head.weight.mul_(1.5)  # tied: the embedding too
    kl, _ = sampled_kl(model, other, tokenizer, prompts, max_new_tokens=4, batch_size=3)
    assert kl.k3.item() > 0
    with pytest.raises(ValueError, match="prompts: expected at least one"):
        sampled_kl(model, model, tokenizer, [])
