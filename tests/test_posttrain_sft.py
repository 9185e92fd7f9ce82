"""llmlab.posttrain.sft: chat examples, the completion-only loss, packing and the SFT loop.

The labels and the loss are compared with trl 1.16's own code path: a real ``SFTTrainer``
built offline on a tiny random SmolLM2-shaped model and a prompt-completion conversational
data set with ``completion_only_loss=True``; its prepared data set, its collator and its
``compute_loss`` must agree with ours token by token, in value and in every weight's gradient.
"""

from __future__ import annotations

import copy
import tempfile

import pytest
import torch

from llmlab.assets import tiny_smollm2
from llmlab.data.tasks import make_tasks
from llmlab.posttrain.sft import (
    as_model_mask,
    collate,
    format_example,
    pack_examples,
    prompt_ids,
    sft_loss,
    train_sft,
)
from llmlab.training.losses import IGNORE_INDEX

# Answers of different lengths (one word, a number, a list), so padding and masks differ.
TASKS = make_tasks(5, seed=3, kinds=["addition", "reverse_word", "sort_numbers"])


@pytest.fixture(scope="module")
def tiny():
    return tiny_smollm2(seed=0)


@pytest.fixture(scope="module")
def examples(tiny):
    _, tokenizer = tiny
    return [format_example(tokenizer, t.prompt, t.answer) for t in TASKS]


def test_labels_keep_the_answer_and_its_end_of_turn_only(tiny):
    _, tokenizer = tiny
    ids, labels = format_example(tokenizer, "What is 2 + 3?", "5")
    assert ids.dtype == labels.dtype == torch.long and ids.shape == labels.shape
    kept = labels != IGNORE_INDEX
    assert torch.equal(labels[kept], ids[kept])
    assert tokenizer.decode(ids[kept]) == "5<|im_end|>\n"
    # Everything before is masked: the default system turn, the user turn, the header.
    n_prompt = len(prompt_ids(tokenizer, "What is 2 + 3?"))
    assert (labels[:n_prompt] == IGNORE_INDEX).all() and kept[n_prompt:].all()
    prompt_text = tokenizer.decode(ids[:n_prompt])
    assert prompt_text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert prompt_text.endswith("What is 2 + 3?<|im_end|>\n<|im_start|>assistant\n")


def test_a_system_prompt_replaces_the_default_one(tiny):
    _, tokenizer = tiny
    ids, labels = format_example(tokenizer, "Say hi.", "hi", system="Be brief.")
    text = tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n") and "SmolLM" not in text
    assert tokenizer.decode(ids[labels != IGNORE_INDEX]) == "hi<|im_end|>\n"


# --------------------------------------------------------------------------------------------
# Equal to trl's SFTTrainer with completion_only_loss


@pytest.fixture(scope="module")
def trl_trainer(tiny):
    """A real trl SFTTrainer on prompt-completion chat data (CPU, offline, no logging)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    model, tokenizer = tiny
    data = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": t.prompt}],
                "completion": [{"role": "assistant", "content": t.answer}],
            }
            for t in TASKS
        ]
    )
    args = SFTConfig(
        output_dir=tempfile.mkdtemp(),
        report_to=[],
        use_cpu=True,
        completion_only_loss=True,
        shuffle_dataset=False,
        disable_tqdm=True,
        logging_strategy="no",
        save_strategy="no",
    )
    return SFTTrainer(
        model=copy.deepcopy(model), args=args, train_dataset=data, processing_class=tokenizer
    )


def test_examples_equal_trl_prepared_dataset(trl_trainer, examples):
    prepared = list(trl_trainer.train_dataset)
    assert len(prepared) == len(examples)
    for row, (ids, labels) in zip(prepared, examples, strict=True):
        assert row["input_ids"] == ids.tolist()
        assert row["labels"] == labels.tolist()


def test_batch_loss_and_gradients_equal_trl(trl_trainer, examples, tiny):
    _, tokenizer = tiny
    theirs = trl_trainer.data_collator(list(trl_trainer.train_dataset))
    ours = collate(examples, tokenizer.pad_token_id)
    assert ours["input_ids"].shape[0] == len(TASKS) and (ours["attention_mask"] == 0).any()
    for key in ("input_ids", "labels", "attention_mask"):
        assert torch.equal(ours[key], theirs[key]), key

    model = trl_trainer.model.train()
    model.zero_grad()
    trl_loss = trl_trainer.compute_loss(model, dict(theirs))
    trl_loss.backward()
    trl_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    logits = model(input_ids=ours["input_ids"], attention_mask=ours["attention_mask"]).logits
    loss = sft_loss(logits, ours["labels"])
    loss.backward()
    model.eval()
    torch.testing.assert_close(loss, trl_loss, rtol=1e-5, atol=1e-6)
    for name, param in model.named_parameters():
        assert param.grad.abs().sum() > 0, name
        torch.testing.assert_close(param.grad, trl_grads[name], rtol=1e-4, atol=1e-7)


# --------------------------------------------------------------------------------------------
# The loss


def test_sft_loss_is_the_shifted_mean_over_labelled_tokens():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    labels = torch.tensor([[-100, -100, 3, 4, -100], [-100, 7, 8, 9, 10]])
    logp = logits.log_softmax(-1)
    terms = [
        -logp[b, t - 1, labels[b, t]] for b in range(2) for t in range(1, 5) if labels[b, t] >= 0
    ]
    torch.testing.assert_close(sft_loss(logits, labels), torch.stack(terms).mean())
    # With the step's token count, micro-batches add up to the whole batch's per-token mean.
    total = sft_loss(logits[:1], labels[:1], 6) + sft_loss(logits[1:], labels[1:], 6)
    torch.testing.assert_close(total, sft_loss(logits, labels))
    # Per token, not per example: the mean of the two rows' means is a different number.
    row_means = (sft_loss(logits[:1], labels[:1]) + sft_loss(logits[1:], labels[1:])) / 2
    assert not torch.isclose(row_means, sft_loss(logits, labels))


def test_padding_is_masked_by_position_even_though_pad_is_end_of_turn(tiny, examples):
    _, tokenizer = tiny
    assert tokenizer.pad_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    batch = collate(examples, tokenizer.pad_token_id)
    for row, (ids, labels) in enumerate(examples):
        n = len(ids)
        assert torch.equal(batch["labels"][row, :n], labels)
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
        assert (batch["input_ids"][row, n:] == tokenizer.pad_token_id).all()
        assert batch["attention_mask"][row].sum() == n
        assert (batch["labels"][row] == tokenizer.pad_token_id).sum() == 1  # its own <|im_end|>


# --------------------------------------------------------------------------------------------
# Packing


def test_pack_examples_layout(examples, tiny):
    _, tokenizer = tiny
    lengths = [len(ids) for ids, _ in examples]
    packed = pack_examples(examples, max(lengths) * 2, tokenizer.pad_token_id)
    rows, width = packed.input_ids.shape
    assert width == max(lengths) * 2 and rows < len(examples)  # fewer rows than examples
    used = torch.zeros(rows, width, dtype=torch.bool)
    for (ids, labels), (row, start) in zip(examples, packed.placement, strict=True):
        span = slice(start, start + len(ids))
        assert not used[row, span].any()  # no two examples overlap
        used[row, span] = True
        assert torch.equal(packed.input_ids[row, span], ids)
        assert torch.equal(packed.labels[row, span], labels)
        assert torch.equal(packed.position_ids[row, span], torch.arange(len(ids)))
        block = packed.attention_mask[row, 0, span, span]
        assert torch.equal(block, torch.ones_like(block).tril())  # causal inside the example
        assert packed.attention_mask[row, 0, span].sum() == block.sum()  # nothing outside it
    assert (packed.labels[~used] == IGNORE_INDEX).all()
    assert packed.attention_mask[:, 0].diagonal(dim1=-2, dim2=-1).all()  # no empty query row


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_packed_forward_equals_each_example_alone(tiny, examples, implementation):
    """Per-token outputs of the last layer (the logits are a function of them alone)."""
    model, tokenizer = tiny
    model = copy.deepcopy(model)
    model.config._attn_implementation = implementation
    packed = pack_examples(examples, 160, tokenizer.pad_token_id)
    mask = as_model_mask(packed.attention_mask, model)

    def hidden(ids, **kwargs):
        return model.model(input_ids=ids, **kwargs).last_hidden_state

    with torch.no_grad():
        with_mask = hidden(packed.input_ids, attention_mask=mask, position_ids=packed.position_ids)
        # transformers also finds the boundaries itself where the position ids restart, but
        # only without a cache: with the default use_cache=True the examples see each other.
        from_positions = hidden(packed.input_ids, position_ids=packed.position_ids, use_cache=False)
        if implementation == "sdpa":
            leaking = hidden(packed.input_ids, position_ids=packed.position_ids)
            assert not torch.allclose(leaking, from_positions, atol=1e-3)
        for (ids, _), (row, start) in zip(examples, packed.placement, strict=True):
            alone = hidden(ids[None])[0]
            span = slice(start, start + len(ids))
            torch.testing.assert_close(with_mask[row, span], alone, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(from_positions[row, span], alone, atol=1e-5, rtol=1e-5)
        if implementation == "eager":  # eager adds the mask to the scores: a bool one is wrong
            raw = hidden(
                packed.input_ids,
                attention_mask=packed.attention_mask,
                position_ids=packed.position_ids,
            )
            assert not torch.allclose(raw, with_mask, atol=1e-3)


def test_packed_loss_equals_padded_loss(tiny, examples):
    model, tokenizer = tiny
    packed = pack_examples(examples, 160, tokenizer.pad_token_id)
    padded = collate(examples, tokenizer.pad_token_id)
    with torch.no_grad():
        packed_logits = model(
            input_ids=packed.input_ids,
            attention_mask=as_model_mask(packed.attention_mask, model),
            position_ids=packed.position_ids,
        ).logits
        padded_logits = model(
            input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]
        ).logits
    torch.testing.assert_close(
        sft_loss(packed_logits, packed.labels), sft_loss(padded_logits, padded["labels"])
    )


# --------------------------------------------------------------------------------------------
# The loop


def _data_loss(model, examples, pad_id):
    batch = collate(examples, pad_id)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return sft_loss(logits, batch["labels"]).item()


def test_train_sft_learns_and_is_seeded(tiny, examples):
    model, tokenizer = tiny
    pad = tokenizer.pad_token_id
    runs, students = [], []
    for _ in range(2):
        student = copy.deepcopy(model)
        history = train_sft(
            student, examples, pad, steps=3, batch_size=2, lr=1e-2, warmup_frac=0.0,
            progress=False,
        )  # fmt: skip
        runs.append(history.loss)
        students.append(student)
    assert runs[0] == runs[1]
    before, after = _data_loss(model, examples, pad), _data_loss(students[0], examples, pad)
    assert after < before - 1.0, (before, after)
    assert not students[0].training


def _first_step(model, examples, pad_id, **settings):
    history = train_sft(
        copy.deepcopy(model), examples, pad_id, steps=1, lr=1e-3, progress=False, **settings
    )
    return history.loss[0], history.grad_norm[0]


def test_accumulation_and_packing_change_nothing_but_memory(tiny, examples):
    """One step on the same examples: 4 at once vs 2 + 2 accumulated; all 5 padded vs all 5
    packed in one row. Same per-token loss and same gradient (its norm, before clipping), to
    bf16 autocast rounding; a mean of the micro-batches' means would differ."""
    model, tokenizer = tiny
    pad = tokenizer.pad_token_id
    pairs = [
        (_first_step(model, examples, pad, batch_size=4), _first_step(model, examples, pad, batch_size=2, grad_accum=2)),
        (_first_step(model, examples, pad, batch_size=5), _first_step(model, examples, pad, batch_size=1, packing=True, max_len=500)),
    ]  # fmt: skip
    for (loss_a, norm_a), (loss_b, norm_b) in pairs:
        assert abs(loss_a - loss_b) < 1e-2 * loss_a, (loss_a, loss_b)
        assert abs(norm_a - norm_b) < 2e-2 * norm_a, (norm_a, norm_b)


def test_train_sft_trains_only_what_requires_grad(tiny, examples):
    """A LoRA-injected model (peft's, standing in for any adapter): only the adapters move."""
    from peft import LoraConfig, get_peft_model

    model, tokenizer = tiny
    lora = get_peft_model(
        copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    before = {n: p.detach().clone() for n, p in lora.named_parameters()}
    train_sft(lora, examples, tokenizer.pad_token_id, steps=2, batch_size=2, progress=False)
    for name, param in lora.named_parameters():
        moved = not torch.equal(param, before[name])
        assert moved == param.requires_grad, name


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda t, e: format_example(t, "Hi.", ""), "answer: expected a non-empty str"),
        (lambda t, e: format_example(t, 3, "x"), "prompt: expected a str"),
        (lambda t, e: collate([], 0), "examples: expected a non-empty list"),
        (lambda t, e: collate([(torch.ones(3), torch.ones(2))], 0), r"examples\[0\]"),
        (lambda t, e: pack_examples(e, 10, 2), "max_len: expected >= the longest example"),
        (lambda t, e: sft_loss(torch.zeros(1, 3, 5), torch.zeros(1, 4).long()), "labels"),
        (lambda t, e: sft_loss(torch.zeros(1, 3, 5), torch.zeros(1, 3).long(), 0), "num_items"),
        (lambda t, e: train_sft(torch.nn.Linear(2, 2), e, 2, packing=True), "max_len"),
        (lambda t, e: train_sft(torch.nn.Linear(2, 2), e, 2, lr=0.0), "lr: expected"),
    ],
)
def test_bad_arguments_are_named(tiny, examples, call, message):
    _, tokenizer = tiny
    with pytest.raises((ValueError, TypeError), match=message):
        call(tokenizer, examples)


def test_as_model_mask_rejects_other_attention(tiny, examples):
    model, _ = tiny
    model = copy.deepcopy(model)
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="pass position_ids without a mask"):
        as_model_mask(pack_examples(examples, 500, 2).attention_mask, model)
