"""llmlab.posttrain.evaluate: one protocol (greedy, capped, the task's checker), intervals, splits."""

from __future__ import annotations

import math

import pytest
import torch

from llmlab.assets import tiny_smollm2
from llmlab.data import tasks as data_tasks
from llmlab.data.tasks import Task, grade_number, grade_word, make_tasks
from llmlab.posttrain import evaluate as ev
from llmlab.posttrain.sft import prompt_ids


@pytest.fixture(scope="module")
def tiny():
    return tiny_smollm2(seed=0)


# --------------------------------------------------------------------------------------------
# Generation


def test_batched_left_padded_greedy_equals_one_prompt_at_a_time(tiny):
    model, tokenizer = tiny
    prompts = [t.prompt for t in make_tasks(5, seed=0)]  # different lengths
    assert len({len(prompt_ids(tokenizer, p)) for p in prompts}) > 1
    batched = ev.generate_answers(model, tokenizer, prompts, max_new_tokens=6, batch_size=5)
    alone = ev.generate_answers(model, tokenizer, prompts, max_new_tokens=6, batch_size=1)
    assert batched == alone and all(isinstance(r, str) and r for r in batched)
    # Greedy means the argmax continuation of the chat prompt, token by token.
    ids = torch.tensor([prompt_ids(tokenizer, prompts[0])])
    with torch.no_grad():
        for _ in range(6):
            ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], 1)
    expected = tokenizer.decode(ids[0, -6:], skip_special_tokens=True)
    assert batched[0] == expected


def test_few_shot_prompts(tiny):
    _, tokenizer = tiny
    shots = [("What is 1 + 1?", "2"), ("What is 2 + 5?", "7")]
    text = ev.few_shot_text("What is 3 + 4?", shots)
    assert text == (
        "Question: What is 1 + 1?\nAnswer: 2\n\nQuestion: What is 2 + 5?\nAnswer: 7\n\n"
        "Question: What is 3 + 4?\nAnswer:"
    )
    chat = tokenizer.decode(prompt_ids(tokenizer, "What is 3 + 4?", shots=shots))
    assert chat.count("<|im_start|>assistant\n") == 3 and chat.endswith("<|im_start|>assistant\n")
    assert "<|im_start|>assistant\n7<|im_end|>\n<|im_start|>user\nWhat is 3 + 4?" in chat


def test_sampling_is_seeded_and_gives_k_per_prompt(tiny):
    model, tokenizer = tiny
    prompts = ["Say hi.", "What is 2 + 2? Answer with the number only."]
    a = ev.sample_answers(model, tokenizer, prompts, k=3, max_new_tokens=4, seed=1)
    b = ev.sample_answers(model, tokenizer, prompts, k=3, max_new_tokens=4, seed=1)
    assert a == b and [len(x) for x in a] == [3, 3]
    assert len(set(a[0])) > 1  # a random model at temperature 0.7: the samples differ


# --------------------------------------------------------------------------------------------
# Scoring


@pytest.mark.parametrize(
    ("response", "answer"),
    [
        ("95", "95"),
        (" 95\n\nQuestion: What is 3 + 4?\nAnswer: 7", "95"),  # a few-shot continuation
        ("Answer: 95. Because 37 + 58 = 95.", "95. Because 37 + 58 = 95."),
        ("Here is the answer:\n95\nExplanation: ...", "95"),
        ("The reversed word is 'olleh'.\nLet me explain.", "The reversed word is 'olleh'."),
        ("\n\n", ""),
    ],
)
def test_lenient_answer(response, answer):
    assert ev.lenient_answer(response) == answer


def test_wilson_interval():
    low, high = ev.wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(1.96**2 / (10 + 1.96**2))
    assert ev.wilson_interval(10, 10) == pytest.approx((1 - high, 1.0))
    low, high = ev.wilson_interval(5, 10)
    assert (low, high) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    narrow = ev.wilson_interval(500, 1000)
    assert narrow[0] > low and narrow[1] < high  # more data, tighter
    for bad, match in (((11, 10), "correct: expected <= total"), ((1, 0), "total")):
        with pytest.raises(ValueError, match=match):
            ev.wilson_interval(*bad)


def test_exact_match_strict_and_lenient():
    tasks = [
        Task("addition", "What is 1 + 2?", "3", grade_number),
        Task("addition", "What is 2 + 2?", "4", grade_number),
        Task("reverse_word", "Reverse 'ab'.", "ba", grade_word),
    ]
    responses = ["3", "4\n\nQuestion: What is 5 + 5?\nAnswer: 10", "ba"]
    strict = ev.exact_match(tasks, responses)
    lenient = ev.exact_match(tasks, responses, lenient=True)
    assert strict.correct == [True, False, True] and lenient.correct == [True, True, True]
    assert strict.per_kind["addition"] == ev.Score(1, 2)
    assert strict.overall.accuracy == pytest.approx(2 / 3)
    assert strict.per_kind["addition"].interval == ev.wilson_interval(1, 2)
    table = strict.table()
    assert table.splitlines()[0].startswith("addition") and "(1/2)" in table
    assert table.splitlines()[-1].startswith("overall") and "(2/3)" in table
    with pytest.raises(ValueError, match="responses: expected one per task"):
        ev.exact_match(tasks, responses[:2])


def test_pass_at_k():
    task = Task("addition", "What is 1 + 2?", "3", grade_number)
    samples = [["3", "5", "5", "3", "5", "5", "5", "5"]]  # 2 of 8 right
    assert ev.pass_at_k([task], samples, 1) == {"addition": pytest.approx(2 / 8)}
    assert ev.pass_at_k([task], samples, 2)["addition"] == pytest.approx(
        1 - math.comb(6, 2) / math.comb(8, 2)
    )
    assert ev.pass_at_k([task], samples, 8)["addition"] == 1.0
    assert ev.pass_at_k([task], [["5"] * 8], 8)["addition"] == 0.0
    with pytest.raises(ValueError, match="expected >= k = 8 samples"):
        ev.pass_at_k([task], [["3"] * 4], 8)


def test_evaluate_tasks_shows_each_kind_its_own_demos(tiny, monkeypatch):
    model, tokenizer = tiny
    split = ev.split_tasks(["addition", "reverse_word"], [], n_train=12, n_test=3, seed=0)
    seen = []

    def fake_generate(model, tokenizer, prompts, max_new_tokens, batch_size, shots, style):
        seen.append((prompts, shots, style))
        return [next(t.answer for t in split.test if t.prompt == p) for p in prompts]

    monkeypatch.setattr(ev, "generate_answers", fake_generate)
    protocol = ev.Protocol(shots=2, style="text", lenient=True)
    score, responses = ev.evaluate_tasks(model, tokenizer, split.test, protocol, split.train)
    assert score.overall == ev.Score(6, 6) and responses == [t.answer for t in split.test]
    for prompts, shots, style in seen:
        kind = next(t.kind for t in split.test if t.prompt == prompts[0])
        demos = [(t.prompt, t.answer) for t in split.train if t.kind == kind][:2]
        assert shots == demos and style == "text"
    with pytest.raises(ValueError, match="demos: expected >= 2 tasks of kind"):
        ev.evaluate_tasks(model, tokenizer, split.test, protocol, split.train[:1])


# --------------------------------------------------------------------------------------------
# Splits


def test_prompt_key_catches_near_copies():
    a = Task("addition", "What is 37 + 58? Answer with the number only.", "95")
    b = Task("addition", "What is 58 + 37? Answer with the number only.", "95")
    c = Task("addition", "What is 37 + 59? Answer with the number only.", "96")
    assert ev.prompt_key(a) == ev.prompt_key(b) != ev.prompt_key(c)
    w1 = Task("reverse_word", "Reverse the letters of the word 'bamo'.", "omab")
    w2 = Task("reverse_word", "Reverse the letters of the word 'moba'.", "abom")
    assert ev.prompt_key(w1) != ev.prompt_key(w2)


def test_split_tasks_holds_out_new_prompts_and_unseen_kinds():
    split = ev.split_tasks(
        ["addition", "sort_numbers", "count_letter"], ["reverse_word"], 300, 20, seed=3
    )
    assert len(split.train) == 300 and {t.kind for t in split.train} == {
        "addition",
        "sort_numbers",
        "count_letter",
    }
    train_keys = {ev.prompt_key(t) for t in split.train}
    test_keys = [ev.prompt_key(t) for t in split.test]
    assert len(set(test_keys)) == len(test_keys) == 60
    assert not train_keys & set(test_keys)
    assert {t.prompt for t in split.train}.isdisjoint(t.prompt for t in split.test)
    assert [t.kind for t in split.unseen] == ["reverse_word"] * 20
    assert split == ev.split_tasks(
        ["addition", "sort_numbers", "count_letter"], ["reverse_word"], 300, 20, seed=3
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(train_kinds=[], unseen_kinds=[]), "train_kinds: expected at least one"),
        (dict(train_kinds=["addition"], unseen_kinds=["addition"]), "never trained on"),
        (dict(train_kinds=["nope"], unseen_kinds=[]), "unknown kinds"),
        (dict(train_kinds=["addition"], unseen_kinds=[], n_test=0), "n_test"),
        (dict(train_kinds=["coin"], unseen_kinds=[], n_test=3), r"n_test: only \{'coin': 0\}"),
    ],
)
def test_split_tasks_rejects_bad_arguments(kwargs, message, monkeypatch):
    def coin(rng, difficulty):  # two distinct prompts in all
        side = rng.choice(["heads", "tails"])
        return Task("coin", f"Say '{side}'.", side, grade_word)

    monkeypatch.setitem(data_tasks._TASK_KINDS, "coin", coin)
    kwargs = {"n_train": 10, "n_test": 5, **kwargs}
    with pytest.raises(ValueError, match=message):
        ev.split_tasks(**kwargs)


def test_protocol_and_generation_arguments_are_checked(tiny):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match="style: expected one of"):
        ev.Protocol(style="markdown")
    with pytest.raises(ValueError, match="max_new_tokens"):
        ev.Protocol(max_new_tokens=0)
    with pytest.raises(ValueError, match="prompts: expected a non-empty list"):
        ev.generate_answers(model, tokenizer, "What is 1 + 1?")
    with pytest.raises(ValueError, match="temperature"):
        ev.sample_answers(model, tokenizer, ["Hi."], k=2, temperature=0.0)


def test_every_kind_has_twenty_distinct_held_out_prompts():
    # Regression: list_item once wrote its words unquoted, so its prompt keys (the numbers and
    # quoted words) collapsed to the item number and split_tasks ran out of distinct prompts.
    from llmlab.data.tasks import BUILTIN_TASK_KINDS, EASY_TASK_KINDS

    kinds = list(BUILTIN_TASK_KINDS + EASY_TASK_KINDS)
    split = ev.split_tasks(kinds, [], 60, 20, seed=0)
    assert len(split.test) == 20 * len(kinds)
    assert len({ev.prompt_key(t) for t in split.test}) == len(split.test)


def test_chat_samples_lists_each_models_greedy_answer(tiny):
    model, tokenizer = tiny
    other = tiny_smollm2(seed=1)[0]
    text = ev.chat_samples({"before": model, "after": other}, tokenizer, ["Hi?", "Why?"], 4)
    lines = text.splitlines()
    assert lines[0] == "Hi?" and lines[3] == "Why?" and len(lines) == 6
    expected = ev.generate_answers(model, tokenizer, ["Hi?", "Why?"], max_new_tokens=4)
    assert lines[1] == "  before  " + " ".join(expected[0].split())
    assert lines[2].startswith("  after   ")
    with pytest.raises(ValueError, match="models: expected a non-empty dict"):
        ev.chat_samples({}, tokenizer)
    with pytest.raises(ValueError, match="prompts: expected a non-empty sequence"):
        ev.chat_samples({"m": model}, tokenizer, "Hi?")
