"""Checks of chapter 04's SFT loss-masking lab, ``solutions/04_post_training/02_sft_loss_mask.ipynb``.

    lab 02_sft_loss_mask: sft_labels, sft_loss

``sft_labels(input_ids, attention_mask, header)``: labels for a right-padded batch of ChatML
conversations (SmolLM2's chat template), each ending with one answered assistant turn. ``header``
is the ids of ``<|im_start|>assistant\\n``. In each row, the answer starts right after the
row's LAST header among its real tokens (earlier headers belong to few-shot demonstrations);
labels are the input ids from there to the row's last real token (the answer, its end-of-turn
``<|im_end|>`` and the template's newline after it), and -100 everywhere else: the system and
user turns, every header, earlier turns, and the padding. Padding is told by the attention mask,
never by its id: SmolLM2 pads with ``<|im_end|>``, the token every answer ends with.

``sft_loss(logits, labels)``: the completion-only loss, mean next-token cross-entropy of
``logits[:, t]`` against ``labels[:, t + 1]`` over the positions whose label is not -100, per
token across the batch (as trl computes it). The reference is
:func:`llmlab.posttrain.sft.sft_loss`.

The cases are ChatML-shaped id sequences built with SmolLM2's real special ids and random
content ids (no tokenizer needed, so the check runs in milliseconds);
``tests/test_checks_post_training_sft_loss_mask.py`` shows the reference labels equal
:func:`llmlab.posttrain.sft.format_example` + :func:`llmlab.posttrain.sft.collate` on real
tokenized chats. The labels check first explains, in words, the first rule a wrong answer
breaks (prompt labelled, end-of-turn masked, padding labelled, a demonstration labelled, the
boundary off by one); the loss check names the slip its value matches (no shift, a double
shift, a mean over masked positions, a mean of per-row means).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from llmlab.checks import Case, CheckResult, compare_tensors, describe, run_check
from llmlab.checks._inputs import generator, randn
from llmlab.posttrain import sft
from llmlab.training.losses import IGNORE_INDEX

#: An answer that calls the library's SFT code (or trl's) is flagged.
FORBID = ("llmlab.posttrain.sft", "trl")

# SmolLM2's special ids: <|im_start|> 1, <|im_end|> 2 (also its pad token), and the ids of
# "system", "user", "assistant" and "\n" after <|im_start|>.
IM_START, IM_END, NEWLINE = 1, 2, 198
SYSTEM, USER, ASSISTANT = 9690, 4093, 520
HEADER = [IM_START, ASSISTANT, 9531, NEWLINE]  # "<|im_start|>assistant\n" is 4 tokens
PAD = IM_END


# --------------------------------------------------------------------------------------------
# References


def _answer_labels(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    header: Sequence[int],
    occurrence: int = -1,
    offset: int = 0,
) -> torch.Tensor:
    """Labels from the ``occurrence``-th header's end (+ ``offset``) to each row's last real token."""
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    h = len(header)
    for row in range(input_ids.shape[0]):
        ids = input_ids[row, : int(attention_mask[row].sum())].tolist()
        starts = [i for i in range(len(ids) - h + 1) if ids[i : i + h] == list(header)]
        start = starts[occurrence] + h + offset
        labels[row, start : len(ids)] = input_ids[row, start : len(ids)]
    return labels


def reference_sft_labels(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, header: Sequence[int]
) -> torch.Tensor:
    """Labels of a right-padded ChatML batch: the last assistant turn's tokens, -100 elsewhere."""
    return _answer_labels(input_ids, attention_mask, header)


def reference_sft_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits[:, t] against labels[:, t + 1] over labelled positions."""
    return sft.sft_loss(logits, labels)


# --------------------------------------------------------------------------------------------
# Cases: ChatML conversations in ids


def _content(g: torch.Generator, n: int, newlines: bool = False) -> list[int]:
    ids = torch.randint(300, 49_000, (n,), generator=g).tolist()
    if newlines and n > 3:  # a multi-line answer: "\n" inside it is not the turn's end
        ids[n // 2] = NEWLINE
    return ids


def _conversation(
    g: torch.Generator,
    answer_len: int,
    shots: int = 0,
    system: bool = True,
    newlines: bool = False,
) -> list[int]:
    def turn(role: list[int], content: list[int]) -> list[int]:
        return [IM_START, *role, NEWLINE, *content, IM_END, NEWLINE]

    ids = turn([SYSTEM], _content(g, 12)) if system else []
    for _ in range(shots):  # few-shot demonstrations: earlier, answered turns
        ids += turn([USER], _content(g, 9)) + turn([ASSISTANT, 9531], _content(g, 3))
    return (
        ids
        + turn([USER], _content(g, 10))
        + [*HEADER, *_content(g, answer_len, newlines)]
        + [
            IM_END,
            NEWLINE,
        ]
    )


def _batch(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), PAD, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for i, r in enumerate(rows):
        input_ids[i, : len(r)] = torch.tensor(r)
        attention_mask[i, : len(r)] = 1
    return input_ids, attention_mask


def _label_cases() -> list[Case]:
    g = generator(0)
    one = _batch([_conversation(g, 3)])
    padded = _batch([_conversation(g, n) for n in (1, 6, 2, 9)])
    few_shot = _batch([_conversation(g, 2, shots=2), _conversation(g, 4, shots=1)])
    mixed = _batch(
        [
            _conversation(g, n, shots=s, system=s != 1, newlines=True)
            for n, s in ((5, 0), (7, 1), (8, 3))
        ]
    )
    no_system = _batch([_conversation(g, 4, system=False), _conversation(g, 1, system=False)])
    return [
        Case("one conversation, a 3-token answer, no padding", (*one, HEADER)),
        Case("4 conversations right-padded with <|im_end|> (id 2)", (*padded, HEADER)),
        Case("few-shot: earlier assistant turns are demonstrations", (*few_shot, HEADER)),
        Case("no system turn", (*no_system, HEADER)),
        Case("multi-line answers, 0 to 3 demonstrations, padded", (*mixed, HEADER)),
    ]


def _loss_cases() -> list[Case]:
    g = generator(1)

    def labels(rows: int, seq: int, vocab: int, answer: Sequence[int], pad: Sequence[int]):
        out = torch.randint(0, vocab, (rows, seq), generator=g)
        for r in range(rows):
            out[r, : seq - answer[r] - pad[r]] = IGNORE_INDEX  # the prompt
            if pad[r]:
                out[r, seq - pad[r] :] = IGNORE_INDEX
        return out

    return [
        Case("one row, the last 4 of 10 positions labelled", (randn(1, 10, 7, seed=2), labels(1, 10, 7, [4], [0]))),
        Case(
            "3 rows with different answer lengths and padding",
            (randn(3, 12, 11, seed=3, scale=3.0), labels(3, 12, 11, [2, 7, 4], [3, 0, 1])),
        ),
        Case(
            "2 rows, one answer of 1 token, one of 9",
            (randn(2, 16, 50, seed=4, scale=2.0), labels(2, 16, 50, [1, 9], [5, 0])),
        ),
        Case(
            "a batch of 8 x 64 over a vocabulary of 1000",
            (randn(8, 64, 1000, seed=5), labels(8, 64, 1000, [3, 10, 20, 5, 1, 30, 8, 12], [0, 5, 0, 9, 20, 0, 2, 1])),
        ),
        Case(
            "every position after the first labelled",
            (randn(2, 6, 5, seed=6), torch.cat([torch.full((2, 1), IGNORE_INDEX), torch.randint(0, 5, (2, 5), generator=g)], 1)),
        ),
    ]  # fmt: skip


# --------------------------------------------------------------------------------------------
# Comparing: what a wrong answer got wrong, in words


def _labels_problem(received, expected, input_ids, attention_mask, header) -> str | None:
    if not isinstance(received, torch.Tensor):
        return f"expected a tensor of labels, received {describe(received)}"
    if received.shape != expected.shape:
        return (
            f"expected labels of shape {tuple(expected.shape)} (that of input_ids), received "
            f"{tuple(received.shape)}: do not shift the labels here, the loss shifts them"
        )
    if received.dtype != torch.int64:
        return f"expected int64 labels, received {str(received.dtype).removeprefix('torch.')}"
    if torch.equal(received, expected):
        return None
    kept, want = received != IGNORE_INDEX, expected != IGNORE_INDEX
    if (received[kept] != input_ids[kept]).any():
        return (
            "a labelled position holds another value than its input id: labels are the input "
            "ids themselves (the loss shifts them), -100 where nothing is scored"
        )
    padding = attention_mask == 0
    if (kept & padding).any():
        return (
            f"{int((kept & padding).sum())} padding positions carry a label: padding must be "
            "-100 (find it with attention_mask, not with the pad id)"
        )
    if (want & (input_ids == IM_END) & ~kept).any():
        return (
            "the answer's end-of-turn token <|im_end|> is masked: keep its label, or the model "
            "never learns to stop (SmolLM2 pads with the same id: mask padding by position)"
        )
    slips = (
        (
            dict(occurrence=0),
            "an earlier assistant turn (a few-shot demonstration) is labelled: only the answer "
            "after the LAST <|im_start|>assistant\\n is the model's to learn",
        ),
        (
            dict(offset=-1),
            "the last token of the header <|im_start|>assistant\\n is labelled: the answer "
            "starts right AFTER the header",
        ),
        (
            dict(offset=1),
            "the first answer token is masked: the answer starts right after the header",
        ),
    )
    for how, message in slips:
        if torch.equal(received, _answer_labels(input_ids, attention_mask, header, **how)):
            return message
    extra, lost = kept & ~want, want & ~kept
    if extra.any():
        return (
            f"{int(extra.sum())} prompt positions carry a label (the system or user turn, or "
            "the header): the loss must be on the assistant's answer only, -100 on the prompt"
        )
    return (
        f"{int(lost.sum())} answer positions are masked: label every token from the one after "
        "the header to the row's last real token (the answer, <|im_end|> and the newline after it)"
    )


def _run_labels(fn: Callable, input_ids, attention_mask, header) -> dict:
    return {
        "out": fn(input_ids.clone(), attention_mask.clone(), list(header)),
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "header": header,
    }


def check_sft_labels(sft_labels: Callable) -> CheckResult:
    """Check ``sft_labels(input_ids, attention_mask, header) -> labels`` (batch, seq) int64."""
    return run_check(
        "sft_labels",
        sft_labels,
        reference_sft_labels,
        _label_cases(),
        hint="per row: n = attention_mask[row].sum(); find the LAST i with "
        "input_ids[row, i:i+len(header)].tolist() == header among the first n tokens; "
        "labels[row, i+len(header):n] = input_ids[row, i+len(header):n]; -100 elsewhere.",
        run=_run_labels,
        compare=lambda received, expected: _labels_problem(
            received["out"],
            expected["out"],
            received["input_ids"],
            received["attention_mask"],
            received["header"],
        ),
        arg_names=("input_ids", "attention_mask", "header"),
        forbid=FORBID,
    )


def _loss_variants(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """The values of the usual slips on this case, to name the one a wrong answer made."""
    import torch.nn.functional as F

    def ce(lg, lb, reduction="mean"):
        return F.cross_entropy(lg.flatten(0, 1).float(), lb.flatten(), reduction=reduction)

    out = {
        "the loss is not shifted: logits[:, t] must predict labels[:, t + 1], the NEXT token": ce(
            logits, labels
        ),
        "the loss is shifted twice: shift once, by one position (labels[:, 1:] against logits[:, :-1])": ce(
            logits[:, :-2], labels[:, 2:]
        ),
        "the loss is shifted the wrong way: logits[:, :-1] predict labels[:, 1:], not the reverse": ce(
            logits[:, 1:], labels[:, :-1]
        ),
    }
    per_token = ce(logits[:, :-1], labels[:, 1:], "none")
    out[
        "the loss is a mean over ALL positions, masked ones counted as 0: divide by the number "
        "of labelled tokens only"
    ] = per_token.sum() / per_token.numel()
    scored = labels[:, 1:] != IGNORE_INDEX
    rows = per_token.view(labels.shape[0], -1).sum(1) / scored.sum(1).clamp(min=1)
    out[
        "the loss is a mean of per-row means: average per token across the whole batch (as trl "
        "does), so a long answer weighs more than a short one"
    ] = rows[scored.any(1)].mean()
    out["the loss is a sum: take the mean over the labelled tokens"] = per_token.sum()
    return out


def _loss_problem(received, expected) -> str | None:
    problem = compare_tensors(received["out"], expected["out"])
    if problem is None:
        return None
    value = received["out"]
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point():
        for slip, wrong in _loss_variants(*received["inputs"]).items():
            if torch.isclose(value.detach().float().reshape(()), wrong, rtol=1e-4, atol=1e-6):
                return slip
    return problem


def _run_loss(fn: Callable, logits, labels) -> dict:
    return {"out": fn(logits.clone(), labels.clone()), "inputs": (logits, labels)}


def check_sft_loss(sft_loss: Callable) -> CheckResult:
    """Check ``sft_loss(logits, labels) -> 0-dim tensor``, the completion-only loss."""
    return run_check(
        "sft_loss",
        sft_loss,
        reference_sft_loss,
        _loss_cases(),
        hint="F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), "
        "ignore_index=-100) is the whole loss: shift once, and let -100 drop out of the mean.",
        run=_run_loss,
        compare=_loss_problem,
        arg_names=("logits", "labels"),
        forbid=FORBID,
    )
