"""The checks of chapter 04's SFT loss-masking lab (llmlab.checks.post_training.sft_loss_mask).

The references pass and equal the library (labels: ``format_example`` + ``collate`` on real
tokenized chats; loss: ``sft_loss``); other correct answers pass; each plausible wrong answer
(mutant) fails on the case that exposes it, with a message that names the mistake; the
contract (stub, garbage, global seed) holds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from check_contract import CheckContract, student_copy

from llmlab.checks.post_training import sft_loss_mask as co
from llmlab.posttrain import sft

CHECKS = {
    "check_sft_labels": (co.check_sft_labels, co.reference_sft_labels),
    "check_sft_loss": (co.check_sft_loss, co.reference_sft_loss),
}

GARBAGE = {
    "returns a number": lambda *a, **k: 3,
    "returns a list": lambda *a, **k: [1, 2],
    "returns a float tensor": lambda x, *a, **k: x.float(),
    "returns a string": lambda *a, **k: "labels",
    "takes no arguments": lambda: None,
    "is not a function": None,
}


class TestContract(CheckContract):
    MODULES = (co,)
    CHECKS = CHECKS
    GARBAGE = GARBAGE
    MIN_CASES = 5


def test_reference_labels_equal_the_library_on_real_chats():
    from llmlab.assets import tiny_smollm2
    from llmlab.data.tasks import make_tasks

    _, tokenizer = tiny_smollm2()
    header = tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    assert header == co.HEADER and tokenizer.pad_token_id == co.PAD
    examples = [sft.format_example(tokenizer, t.prompt, t.answer) for t in make_tasks(6, seed=1)]
    shots = [("What is 1 + 1?", "2"), ("Say hi.", "hi")]  # a few-shot chat: labels on the end only
    ids = sft.prompt_ids(tokenizer, "What is 2 + 2?", shots=shots)
    full = sft.format_example(tokenizer, "What is 2 + 2?", "4", system="Be brief.")
    few_shot = tokenizer.apply_chat_template(
        sft.chat_messages("What is 2 + 2?", "4", shots=shots), tokenize=False
    )
    few_ids = torch.tensor(tokenizer(few_shot, add_special_tokens=False)["input_ids"])
    few_labels = few_ids.clone()
    few_labels[: len(ids)] = -100
    batch = sft.collate([*examples, full, (few_ids, few_labels)], tokenizer.pad_token_id)
    ours = co.reference_sft_labels(batch["input_ids"], batch["attention_mask"], header)
    assert torch.equal(ours, batch["labels"])


def test_reference_loss_is_the_library_loss():
    logits = torch.randn(2, 7, 9, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([[-100, -100, 3, 4, 5, -100, -100], [-100, 1, 2, 3, 4, 5, 6]])
    torch.testing.assert_close(co.reference_sft_loss(logits, labels), sft.sft_loss(logits, labels))


# --------------------------------------------------------------------------------------------
# Correct variants


def labels_with_mask_arithmetic(input_ids, attention_mask, header):
    labels = torch.full_like(input_ids, -100)
    h = len(header)
    for row in range(input_ids.shape[0]):
        n = int(attention_mask[row].sum())
        windows = input_ids[row, :n].unfold(0, h, 1)  # (n - h + 1, h)
        hits = (windows == torch.tensor(header)).all(1).nonzero()
        start = int(hits[-1]) + h
        labels[row, start:n] = input_ids[row, start:n]
    return labels


def labels_by_reverse_search(input_ids, attention_mask, header):
    labels = input_ids.clone()
    h = len(header)
    for row in range(input_ids.shape[0]):
        ids = input_ids[row].tolist()
        n = int(attention_mask[row].sum())
        start = next(i for i in range(n - h, -1, -1) if ids[i : i + h] == header) + h
        labels[row, :start] = -100
        labels[row, n:] = -100
    return labels


def loss_by_hand(logits, labels):
    logp = logits[:, :-1].log_softmax(-1)
    target = labels[:, 1:]
    keep = target != -100
    picked = logp.gather(-1, target.clamp(min=0)[..., None])[..., 0]
    return -(picked * keep).sum() / keep.sum()


def loss_with_cross_entropy(logits, labels):
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())


def loss_with_shifted_labels(logits, labels):  # pad the labels left instead of cutting logits
    shifted = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], dim=1)
    return F.cross_entropy(logits.transpose(1, 2), shifted, ignore_index=-100)


CORRECT_VARIANTS = [
    ("check_sft_labels", labels_with_mask_arithmetic),
    ("check_sft_labels", labels_by_reverse_search),
    ("check_sft_loss", loss_by_hand),
    ("check_sft_loss", loss_with_cross_entropy),
    ("check_sft_loss", loss_with_shifted_labels),
]


# --------------------------------------------------------------------------------------------
# Mutants: one slip each


def make_labels(name, *, occurrence=-1, offset=0, padding="position", keep_eot=True, prompt=False):
    def sft_labels(input_ids, attention_mask, header):
        labels = torch.full_like(input_ids, -100)
        h = len(header)
        for row in range(input_ids.shape[0]):
            ids = input_ids[row].tolist()
            n = int(attention_mask[row].sum()) if padding == "position" else len(ids)
            starts = [i for i in range(n - h + 1) if ids[i : i + h] == header]
            start = 0 if prompt else starts[occurrence] + h + offset
            labels[row, start:n] = input_ids[row, start:n]
        if padding == "by id":  # padding found by its id, <|im_end|>: the real one goes too
            labels[input_ids == co.PAD] = -100
        if not keep_eot:
            labels[input_ids == co.IM_END] = -100
        return labels

    sft_labels.__name__ = name
    return sft_labels


ONE = "one conversation, a 3-token answer, no padding"
PADDED = "4 conversations right-padded with <|im_end|> (id 2)"
FEW_SHOT = "few-shot: earlier assistant turns are demonstrations"


def labels_then_shift(input_ids, attention_mask, header):
    labels = make_labels("skeleton")(input_ids, attention_mask, header)
    return labels[:, 1:]


def labels_as_floats(input_ids, attention_mask, header):
    return make_labels("skeleton")(input_ids, attention_mask, header).float()


MUTANTS = [
    ("check_sft_labels", make_labels("labels_everywhere", prompt=True), ONE, "prompt positions carry a label"),
    ("check_sft_labels", make_labels("end_of_turn_masked", keep_eot=False), ONE, "<|im_end|> is masked"),
    ("check_sft_labels", make_labels("padding_labelled", padding="none"), PADDED, "padding positions carry a label"),
    ("check_sft_labels", make_labels("padding_found_by_id", padding="by id"), ONE, "mask padding by position"),
    ("check_sft_labels", make_labels("first_header", occurrence=0), FEW_SHOT, "few-shot demonstration"),
    ("check_sft_labels", make_labels("header_labelled", offset=-1), ONE, "last token of the header"),
    ("check_sft_labels", make_labels("first_answer_token_masked", offset=1), ONE, "first answer token"),
    ("check_sft_labels", labels_then_shift, ONE, "do not shift the labels here"),
    ("check_sft_labels", labels_as_floats, ONE, "expected int64 labels"),
]  # fmt: skip


def test_the_skeleton_of_the_label_mutants_is_correct():
    assert co.check_sft_labels(make_labels("skeleton")).passed


def loss_not_shifted(logits, labels):
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten())


def loss_shifted_twice(logits, labels):
    return F.cross_entropy(logits[:, :-2].flatten(0, 1), labels[:, 2:].flatten())


def loss_shifted_backwards(logits, labels):
    return F.cross_entropy(logits[:, 1:].flatten(0, 1), labels[:, :-1].flatten())


def loss_mean_over_all_positions(logits, labels):
    per_token = F.cross_entropy(
        logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), reduction="none"
    )
    return per_token.mean()  # ignored positions are 0 but still counted


def loss_mean_of_row_means(logits, labels):
    rows = [F.cross_entropy(logits[b, :-1], labels[b, 1:]) for b in range(logits.shape[0])]
    return torch.stack(rows).mean()


def loss_summed(logits, labels):
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), reduction="sum")


def loss_ignores_no_label(logits, labels):  # -100 replaced by 0: every position scored
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].clamp(min=0).flatten())


FIRST_LOSS = "one row, the last 4 of 10 positions labelled"
ROWS = "3 rows with different answer lengths and padding"
MUTANTS += [
    ("check_sft_loss", loss_not_shifted, FIRST_LOSS, "not shifted"),
    ("check_sft_loss", loss_shifted_twice, FIRST_LOSS, "shifted twice"),
    ("check_sft_loss", loss_shifted_backwards, FIRST_LOSS, "shifted the wrong way"),
    ("check_sft_loss", loss_mean_over_all_positions, FIRST_LOSS, "mean over ALL positions"),
    ("check_sft_loss", loss_mean_of_row_means, ROWS, "mean of per-row means"),
    ("check_sft_loss", loss_summed, FIRST_LOSS, "the loss is a sum"),
    ("check_sft_loss", loss_ignores_no_label, FIRST_LOSS, "max abs error"),
]


# --------------------------------------------------------------------------------------------
# Answers that call the library: flagged


def labels_from_library(input_ids, attention_mask, header):
    lengths = attention_mask.sum(1).tolist()
    rows = [(ids[:n], ids[:n]) for ids, n in zip(input_ids, lengths, strict=True)]
    return sft.collate(rows, co.PAD)["labels"]


def loss_from_library(logits, labels):
    return sft.sft_loss(logits, labels)


FORBIDDEN = [
    ("check_sft_labels", labels_from_library, "llmlab.posttrain.sft.collate"),
    ("check_sft_loss", loss_from_library, "llmlab.posttrain.sft.sft_loss"),
    ("check_sft_loss", student_copy(co.reference_sft_loss), "llmlab.posttrain.sft.sft_loss"),
]


def test_a_value_of_the_wrong_type_is_told_so():
    message = co.check_sft_labels(lambda input_ids, attention_mask, header: header).message
    assert "expected a tensor of labels, received a list of length 4" in message
    message = co.check_sft_loss(lambda logits, labels: 0.5).message
    assert "expected a torch.Tensor, received float 0.5" in message
