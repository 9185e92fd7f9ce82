"""One evaluation protocol for every number of chapter 04: greedy answers, exact match, splits.

Every accuracy the chapter prints comes from :func:`evaluate_tasks` under a :class:`Protocol`:

- **greedy** decoding (deterministic: the same model gives the same number), batched with left
  padding, with a **token cap** (``max_new_tokens``): an answer that has not ended by then is
  judged as it stands;
- the prompt is the chat template's (:func:`llmlab.posttrain.sft.prompt_ids`, exactly what SFT
  trains on), or for a model that has not learned our format, a **few-shot** prompt: ``shots``
  solved tasks of the same kind, as earlier chat turns (``style="chat"``) or as plain
  ``Question: ... / Answer: ...`` text (``style="text"``, for a base model);
- the **task's own checker** (:meth:`llmlab.data.tasks.Task.check`) judges the response;
  ``lenient=True`` first cuts the response to its first line (after an "Answer:" marker), so
  that a right answer followed by chatter, or by the next made-up question of a few-shot
  continuation, still counts. The un-tuned model is measured this way, so that SFT cannot
  win on format alone;
- accuracy per task kind with a 95% **Wilson** interval and the counts.

:func:`split_tasks` makes the data: training tasks, held-out tasks of the same kinds whose
prompts are neither equal to nor a near-copy of any training prompt (the same inputs in another
order: "37 + 58" and "58 + 37"), and held-out tasks of kinds never trained on.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from llmlab.data.tasks import ANSWER_MARKER, Task, make_tasks, task_kinds
from llmlab.posttrain.sft import prompt_ids
from llmlab.validate import require_int, require_positive_int

__all__ = [
    "Protocol",
    "few_shot_text",
    "generate_answers",
    "CHAT_PROBES",
    "chat_samples",
    "sample_answers",
    "lenient_answer",
    "wilson_interval",
    "Score",
    "ExactMatch",
    "exact_match",
    "pass_at_k",
    "evaluate_tasks",
    "prompt_key",
    "TaskSplit",
    "split_tasks",
]

STYLES = ("chat", "text")


# --------------------------------------------------------------------------------------------
# Prompts and generation


def few_shot_text(prompt: str, shots: Sequence[tuple[str, str]] = ()) -> str:
    """A plain-text few-shot prompt for a base model (no chat template)::

        Question: What is 12 + 30? Answer with the number only.
        Answer: 42

        Question: <prompt>
        Answer:

    The model continues after "Answer:"; its first line is its answer.
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt: expected a str, got {type(prompt).__name__}")
    blocks = [f"Question: {q}\nAnswer: {a}\n\n" for q, a in shots]
    return "".join(blocks) + f"Question: {prompt}\nAnswer:"


def _prompt_ids(
    tokenizer: Any, prompt: str, shots: Sequence[tuple[str, str]], style: str, system: str | None
) -> list[int]:
    if style == "chat":
        return prompt_ids(tokenizer, prompt, system=system, shots=shots)
    return tokenizer(few_shot_text(prompt, shots), add_special_tokens=False)["input_ids"]


@torch.no_grad()
def _generate(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int,
    batch_size: int,
    shots: Sequence[tuple[str, str]],
    style: str,
    system: str | None,
    **settings: Any,
) -> list[list[str]]:
    """Each prompt's responses (``settings['num_return_sequences']`` of them, default 1)."""
    if not isinstance(prompts, Sequence) or isinstance(prompts, str) or not prompts:
        raise ValueError(f"prompts: expected a non-empty list of str, got {prompts!r}")
    max_new_tokens = require_positive_int(max_new_tokens, "max_new_tokens")
    batch_size = require_positive_int(batch_size, "batch_size")
    if style not in STYLES:
        raise ValueError(f"style: expected one of {STYLES}, got {style!r}")
    shots = [tuple(shot) for shot in shots]
    encoded = [_prompt_ids(tokenizer, p, shots, style, system) for p in prompts]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[list[str]] = [[] for _ in prompts]
    # Similar lengths together: less padding. The order is restored at the end.
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in chunk)
        input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row, i in enumerate(chunk):  # left padding: every prompt ends at the last column
            input_ids[row, width - len(encoded[i]) :] = torch.tensor(encoded[i])
            attention_mask[row, width - len(encoded[i]) :] = 1
        new = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            max_new_tokens=max_new_tokens,
            pad_token_id=pad_id,
            eos_token_id=tokenizer.eos_token_id,
            **settings,
        )[:, width:]
        per_prompt = new.shape[0] // len(chunk)
        for row, ids in enumerate(new):
            out[chunk[row // per_prompt]].append(tokenizer.decode(ids, skip_special_tokens=True))
    model.train(was_training)
    return out


def generate_answers(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int = 32,
    batch_size: int = 8,
    few_shot: Sequence[tuple[str, str]] | None = None,
    *,
    style: str = "chat",
    system: str | None = None,
) -> list[str]:
    """Greedy responses to ``prompts`` (a transformers causal LM), one str per prompt.

    Prompts are rendered by the chat template (``style="chat"``), after the ``few_shot``
    (prompt, answer) demonstrations as earlier turns when given; ``style="text"`` writes them
    as :func:`few_shot_text` instead. Batches of ``batch_size`` left-padded prompts; each
    response stops at the end-of-turn token or after ``max_new_tokens`` tokens, and is decoded
    without special tokens.
    """
    responses = _generate(
        model,
        tokenizer,
        prompts,
        max_new_tokens,
        batch_size,
        few_shot or (),
        style,
        system,
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
    )
    return [r[0] for r in responses]


#: Two everyday chat prompts, far from any task of the chapter: what a method did to the chat
#: model it started from shows in the answers to these.
CHAT_PROBES = (
    "What is the capital of France?",
    "Give me one tip for writing clear Python code.",
)


def chat_samples(
    models: dict[str, nn.Module],
    tokenizer: Any,
    prompts: Sequence[str] = CHAT_PROBES,
    max_new_tokens: int = 32,
) -> str:
    """Each model's greedy chat answer to each prompt (:func:`generate_answers`), as text to
    print: the prompt, then one line per model, whitespace collapsed. A notebook's before/after
    samples: ``print(chat_samples({"before": base, "after": tuned}, tokenizer))``."""
    if not isinstance(models, dict) or not models:
        raise ValueError("models: expected a non-empty dict of name -> causal LM")
    if isinstance(prompts, str) or not prompts:
        raise ValueError("prompts: expected a non-empty sequence of prompts")
    answers = {
        name: generate_answers(model, tokenizer, list(prompts), max_new_tokens=max_new_tokens)
        for name, model in models.items()
    }
    width = max(len(name) for name in models)
    lines = []
    for i, prompt in enumerate(prompts):
        lines.append(prompt)
        lines += [f"  {name:<{width}}  {' '.join(answers[name][i].split())}" for name in models]
    return "\n".join(lines)


def sample_answers(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    k: int,
    max_new_tokens: int = 32,
    batch_size: int = 8,
    few_shot: Sequence[tuple[str, str]] | None = None,
    *,
    temperature: float = 0.7,
    top_p: float = 0.95,
    seed: int = 0,
    style: str = "chat",
    system: str | None = None,
) -> list[list[str]]:
    """``k`` sampled responses per prompt (temperature, nucleus ``top_p``), for pass@k.

    Same prompts, cap and padding as :func:`generate_answers`; seeded with ``seed``.
    ``batch_size`` counts prompts: a batch generates ``batch_size * k`` sequences.
    """
    k = require_positive_int(k, "k")
    if not temperature > 0:
        raise ValueError(f"temperature: expected > 0, got {temperature!r}")
    torch.manual_seed(require_int(seed, "seed", 0))
    return _generate(
        model,
        tokenizer,
        prompts,
        max_new_tokens,
        batch_size,
        few_shot or (),
        style,
        system,
        do_sample=True,
        temperature=temperature,
        top_p=top_p,
        top_k=None,
        num_return_sequences=k,
    )


# --------------------------------------------------------------------------------------------
# Scoring


def lenient_answer(response: str) -> str:
    """What a lenient reader takes as the answer: the response's first non-empty line, or
    what follows an answer marker ("Answer:", "The answer is") on it (the next line when the
    marker ends it: "Here is the answer:\\n95").

    "95\\n\\nQuestion: What is 3 + 4?\\nAnswer: 7" -> "95" (a few-shot model inventing the next
    question); "The reversed word is 'olleh'. Explanation: ..." on one line stays whole, and the
    task's checker reads the word it needs from it.
    """
    if not isinstance(response, str):
        raise TypeError(f"response: expected a str, got {type(response).__name__}")
    lines = [line.strip() for line in response.splitlines() if line.strip()]
    if not lines:
        return ""
    markers = list(ANSWER_MARKER.finditer(lines[0]))
    if not markers:
        return lines[0]
    rest = lines[0][markers[-1].end() :].strip()
    return rest or (lines[1] if len(lines) > 1 else "")


def wilson_interval(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``correct / total`` (95% for z = 1.96).

    With p = correct / total, n = total:
    center = (p + z^2 / 2n) / (1 + z^2 / n), half = z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2 / n).
    Unlike p +- z sqrt(p(1-p)/n) it stays inside [0, 1] and is not empty at p = 0 or 1.
    """
    correct = require_int(correct, "correct", 0)
    total = require_positive_int(total, "total")
    if correct > total:
        raise ValueError(f"correct: expected <= total ({total}), got {correct}")
    p, n = correct / total, total
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, center - half), min(1.0, center + half)


@dataclass(frozen=True)
class Score:
    """Exact match of one group of tasks: counts, accuracy and its 95% Wilson interval."""

    correct: int
    total: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.total

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.correct, self.total)

    def __str__(self) -> str:
        low, high = self.interval
        return f"{self.accuracy:6.1%} [{low:.0%}, {high:.0%}] ({self.correct}/{self.total})"


@dataclass(frozen=True)
class ExactMatch:
    """Exact match per task kind (in the order kinds first appear) and over all tasks.

    ``correct[i]`` says whether response i was right.
    """

    per_kind: dict[str, Score]
    overall: Score
    correct: list[bool] = field(repr=False)

    def table(self) -> str:
        """One line per kind and a total line: accuracy [95% interval] (correct/total)."""
        width = max(len(k) for k in [*self.per_kind, "overall"])
        lines = [f"{kind:<{width}}  {score}" for kind, score in self.per_kind.items()]
        return "\n".join([*lines, f"{'overall':<{width}}  {self.overall}"])


def _check_pairs(tasks: Sequence[Task], responses: Sequence[Any], what: str) -> None:
    if not tasks:
        raise ValueError("tasks: expected at least one Task, got none")
    bad = next((t for t in tasks if not isinstance(t, Task)), None)
    if bad is not None:
        raise TypeError(f"tasks: expected Task objects, got {type(bad).__name__}")
    if len(responses) != len(tasks):
        raise ValueError(f"{what}: expected one per task ({len(tasks)}), got {len(responses)}")


def exact_match(
    tasks: Sequence[Task], responses: Sequence[str], lenient: bool = False
) -> ExactMatch:
    """Score responses with each task's own checker; ``lenient`` reads :func:`lenient_answer`."""
    _check_pairs(tasks, responses, "responses")
    correct = [
        task.check(lenient_answer(r) if lenient else r)
        for task, r in zip(tasks, responses, strict=True)
    ]
    per_kind: dict[str, list[bool]] = {}
    for task, ok in zip(tasks, correct, strict=True):
        per_kind.setdefault(task.kind, []).append(ok)
    return ExactMatch(
        per_kind={k: Score(sum(v), len(v)) for k, v in per_kind.items()},
        overall=Score(sum(correct), len(correct)),
        correct=correct,
    )


def pass_at_k(
    tasks: Sequence[Task], samples: Sequence[Sequence[str]], k: int, lenient: bool = False
) -> dict[str, float]:
    """pass@k per kind: the chance that at least one of k samples is right, from n >= k samples.

    Per task with c right out of n: 1 - C(n - c, k) / C(n, k) (the unbiased estimator of Chen
    et al. 2021), averaged over the kind's tasks. A kind at pass@8 = 0 gives an RL method
    (GRPO) nothing to learn from: every group of 8 has the same reward.
    """
    _check_pairs(tasks, samples, "samples")
    k = require_positive_int(k, "k")
    per_kind: dict[str, list[float]] = {}
    for task, group in zip(tasks, samples, strict=True):
        n = len(group)
        if n < k:
            raise ValueError(f"samples: expected >= k = {k} samples per task, got {n}")
        c = sum(task.check(lenient_answer(s) if lenient else s) for s in group)
        value = 1.0 - math.comb(n - c, k) / math.comb(n, k)
        per_kind.setdefault(task.kind, []).append(value)
    return {kind: sum(v) / len(v) for kind, v in per_kind.items()}


# --------------------------------------------------------------------------------------------
# The protocol


@dataclass(frozen=True)
class Protocol:
    """How every accuracy is measured (see the module docstring).

    shots: solved tasks of the same kind shown before each prompt (0: zero-shot).
    style: "chat" (the chat template) or "text" (:func:`few_shot_text`, for a base model).
    lenient: judge :func:`lenient_answer` instead of the whole response.
    """

    max_new_tokens: int = 32
    batch_size: int = 8
    shots: int = 0
    style: str = "chat"
    lenient: bool = False

    def __post_init__(self):
        require_positive_int(self.max_new_tokens, "max_new_tokens")
        require_positive_int(self.batch_size, "batch_size")
        require_int(self.shots, "shots", 0)
        if self.style not in STYLES:
            raise ValueError(f"style: expected one of {STYLES}, got {self.style!r}")


def evaluate_tasks(
    model: nn.Module,
    tokenizer: Any,
    tasks: Sequence[Task],
    protocol: Protocol = Protocol(),
    demos: Sequence[Task] = (),
) -> tuple[ExactMatch, list[str]]:
    """Exact match of ``model`` on ``tasks`` under ``protocol``, and the raw responses.

    With ``protocol.shots > 0`` each kind's prompts follow the first ``shots`` tasks of that
    kind in ``demos`` (take them from the training split, never from ``tasks``).
    """
    _check_pairs(tasks, tasks, "tasks")
    responses: list[str] = [""] * len(tasks)
    by_kind: dict[str, list[int]] = {}
    for i, task in enumerate(tasks):
        by_kind.setdefault(task.kind, []).append(i)
    for kind, members in by_kind.items():
        shots = [(d.prompt, d.answer) for d in demos if d.kind == kind][: protocol.shots]
        if len(shots) < protocol.shots:
            raise ValueError(
                f"demos: expected >= {protocol.shots} tasks of kind {kind!r}, got {len(shots)}"
            )
        answers = generate_answers(
            model,
            tokenizer,
            [tasks[i].prompt for i in members],
            protocol.max_new_tokens,
            protocol.batch_size,
            shots,
            style=protocol.style,
        )
        for i, answer in zip(members, answers, strict=True):
            responses[i] = answer
    return exact_match(tasks, responses, lenient=protocol.lenient), responses


# --------------------------------------------------------------------------------------------
# Splits

ROUNDS = 8  # rounds of draws split_tasks makes before it gives up on a kind
_PAYLOAD = re.compile(r"'[^']*'|-?\d+")  # the quoted words and the numbers of a prompt


def prompt_key(task: Task) -> tuple[str, tuple[str, ...]]:
    """What makes two prompts the same question: the kind and the prompt's inputs (its numbers
    and quoted words), as a sorted tuple.

    Prompts of one kind share their template word for word, so text similarity (n-gram
    overlap, MinHash) would call them all near-copies; what differs is the inputs. Sorting
    them makes "37 + 58" and "58 + 37", or one list of numbers in two orders, the same key.
    """
    return task.kind, tuple(sorted(_PAYLOAD.findall(task.prompt)))


@dataclass(frozen=True)
class TaskSplit:
    """train: tasks to fine-tune on. test: held-out tasks of the training kinds, none with the
    key (:func:`prompt_key`) of a training task. unseen: tasks of kinds never trained on."""

    train: list[Task]
    test: list[Task]
    unseen: list[Task]


def _draw(n_per_kind: int, kinds: list[str], seed: int, difficulty: int, taken: set) -> list[Task]:
    """``n_per_kind`` tasks of each kind whose keys are not in ``taken`` (which they join).

    Draws rounds of ``4 * n_per_kind`` tasks per kind (seeds ``seed``, ``seed + 1``, ...) until
    every kind has enough; a kind whose tasks are nearly all taken runs out of rounds.
    """
    chosen: list[Task] = []
    counts = dict.fromkeys(kinds, 0)
    for round_ in range(ROUNDS):
        pool = make_tasks(4 * n_per_kind * len(kinds), seed + round_, kinds, difficulty)
        for task in pool:
            key = prompt_key(task)
            if counts[task.kind] < n_per_kind and key not in taken:
                taken.add(key)
                counts[task.kind] += 1
                chosen.append(task)
        if min(counts.values()) == n_per_kind:
            return chosen
    short = {k: c for k, c in counts.items() if c < n_per_kind}
    raise ValueError(
        f"n_test: only {short} distinct new tasks found for these kinds at difficulty "
        f"{difficulty}; ask for fewer or raise the difficulty"
    )


def split_tasks(
    train_kinds: Sequence[str],
    unseen_kinds: Sequence[str],
    n_train: int,
    n_test: int,
    seed: int = 0,
    difficulty: int = 1,
) -> TaskSplit:
    """Training tasks, deduplicated held-out tasks of the same kinds, and tasks of unseen kinds.

    train: ``make_tasks(n_train, seed, train_kinds, difficulty)`` (repeats kept: a data set may
    hold a question twice). test: ``n_test`` per training kind, drawn from another seed, each
    prompt's key new to both the training set and the test set. unseen: ``n_test`` per kind of
    ``unseen_kinds``, which must not overlap ``train_kinds``.
    """
    train_kinds, unseen_kinds = list(train_kinds), list(unseen_kinds)
    if not train_kinds:
        raise ValueError("train_kinds: expected at least one task kind, got none")
    unknown = [k for k in train_kinds + unseen_kinds if k not in task_kinds()]
    if unknown:
        raise ValueError(f"train_kinds, unseen_kinds: unknown kinds {unknown}; see task_kinds()")
    both = sorted(set(train_kinds) & set(unseen_kinds))
    if both:
        raise ValueError(f"unseen_kinds: expected kinds never trained on, got {both} in both")
    require_int(n_train, "n_train", 0)
    require_positive_int(n_test, "n_test")
    train = make_tasks(n_train, seed=seed, kinds=train_kinds, difficulty=difficulty)
    taken = {prompt_key(t) for t in train}
    test = _draw(n_test, train_kinds, seed + 1_000_003, difficulty, taken)
    unseen = (
        _draw(n_test, unseen_kinds, seed + 2_000_003, difficulty, set()) if unseen_kinds else []
    )
    return TaskSplit(train, test, unseen)
