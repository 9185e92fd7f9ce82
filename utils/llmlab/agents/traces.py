"""Tool-use traces: the transcripts a good agent would write, for fine-tuning a small one.

Notebook 07.3 found that constrained decoding fixes the *form* of a tool call but not the
judgement: which tool, which arguments, when to stop. Notebook 07.4 teaches the judgement by
supervised fine-tuning on **traces**: for each training task (drawn, like the test tasks, by
:func:`llmlab.agents.tasks.make_tasks`, but from another knowledge base and another seed), the
gold plan is run through the real tools, and the loop's transcript is written as the agent
should have written it:

    Thought: I will search for the founding of Haldostead.
    Action: {"tool": "search", "arguments": {"query": "When was Haldostead founded?"}}
    Observation: [1] (d0085) ... founded in 1176 ...          <- the tool's real output
    Thought: I will search for the birth of Bexeron Rheomore.
    Action: {"tool": "search", "arguments": {"query": "When was Bexeron Rheomore born?"}}
    Observation: [1] (d0139) ... born in 1919 ...
    Thought: I will compute 1919 - 1176.
    Action: {"tool": "calculator", "arguments": {"expression": "1919 - 1176"}}
    Observation: 743
    Thought: I have the answer.
    Final Answer: 743

Each model turn (a thought and an action, or a thought and the final answer) is one training
example: the transcript before it is the context (no loss), the turn and its newline are the
target, exactly what :func:`llmlab.agents.react.run_agent` will ask the model to continue.
Observations are never targets: the model must read them, not learn to write them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from llmlab.agents.react import OBSERVATION, PROMPT
from llmlab.agents.tasks import AgentTask, plan_outputs

__all__ = ["Trace", "thought_for", "make_trace", "grounded", "trace_examples", "cached_agent"]

#: What the agent thinks before each kind of call (filled with the call's arguments).
_THOUGHTS = {
    "calculator": "I will compute {expression}.",
    "python": "I will write Python code to compute it.",
    "search": "I will search the knowledge base: {query}",
    "date": "I will use the date tool ({operation}).",
}
FINAL_THOUGHT = "I have the answer."


@dataclass(frozen=True)
class Trace:
    """A solved task: its ``turns`` (what the model writes, one str per step) and the
    ``transcript`` the loop builds from them with the tools' real observations."""

    task: AgentTask
    turns: tuple[str, ...]
    transcript: str
    starts: tuple[int, ...]  # where each turn begins in the transcript


def thought_for(call: dict) -> str:
    """The thought written before ``call`` (``{"tool", "arguments"}``)."""
    template = _THOUGHTS.get(call.get("tool"))
    if template is None:
        raise ValueError(f"call: no thought for the tool {call.get('tool')!r}")
    try:
        return template.format(**call.get("arguments", {}))
    except KeyError as err:
        raise ValueError(f"call: {call['tool']} call without the argument {err}") from None


def make_trace(task: AgentTask, registry, prompt: str = PROMPT) -> Trace:
    """Run ``task.plan`` through ``registry`` and write the transcript a good agent would:
    one turn per call, then the final answer (``task.answer``). RuntimeError, naming the
    step, if a call of the plan fails; ValueError if the last output does not contain the
    answer for a task that a tool answers directly (arithmetic, dates, Python)."""
    if not isinstance(task, AgentTask):
        raise TypeError(f"task: expected an AgentTask, got {type(task).__name__}")
    transcript = prompt.format(tools=registry.describe(), task=task.prompt)
    turns, starts = [], []
    output = ""
    for call, output in zip(task.plan, plan_outputs(task, registry), strict=True):
        turn = f"Thought: {thought_for(call)}\nAction: {json.dumps(call)}"
        turns.append(turn)
        starts.append(len(transcript))
        transcript += f"{turn}\n{OBSERVATION} {output}\n"
    if task.kind not in ("lookup",) and task.answer not in output:
        raise ValueError(f"{task.task_id}: the plan's last output {output!r} lacks {task.answer!r}")
    final = f"Thought: {FINAL_THOUGHT}\nFinal Answer: {task.answer}"
    turns.append(final)
    starts.append(len(transcript))
    transcript += final + "\n"
    return Trace(task, tuple(turns), transcript, tuple(starts))


def grounded(trace: Trace) -> bool:
    """Whether every fact the trace's answer rests on was in an observation: for a lookup, the
    answer in the search's output; for a lookup with arithmetic, each number of the calculator's
    expression in an earlier search's output. A trace whose search missed would teach the
    model to answer without evidence: leave it out of training."""
    import re

    from llmlab.rag.kb import contains_match

    observations = [
        line[len(OBSERVATION) :]
        for line in trace.transcript.splitlines()
        if line.startswith(OBSERVATION)
    ]
    if trace.task.kind == "lookup":
        return contains_match(observations[-1], trace.task.answer) or any(
            contains_match(observations[-1], alias) for alias in trace.task.aliases
        )
    if trace.task.kind == "lookup_arith":
        expression = trace.task.plan[-1]["arguments"]["expression"]
        searched = " ".join(observations[:-1]).replace(",", "")
        return all(
            re.search(rf"(?<![\d.]){n}(?![\d])", searched) for n in re.findall(r"\d+", expression)
        )
    return True


def trace_examples(traces: Sequence[Trace], tokenizer) -> list[tuple]:
    """SFT examples ``(input_ids, labels)`` (int64 tensors), one per turn of each trace: the
    transcript up to the turn with labels -100, then the turn and its newline as the target.
    Plain text, no chat template: the loop feeds the model its transcript as text."""
    import torch

    from llmlab.training.losses import IGNORE_INDEX

    out = []
    for trace in traces:
        for turn, start in zip(trace.turns, trace.starts, strict=True):
            before = tokenizer(trace.transcript[:start], add_special_tokens=False)["input_ids"]
            target = tokenizer(turn + "\n", add_special_tokens=False)["input_ids"]
            ids = torch.tensor(before + target, dtype=torch.long)
            labels = ids.clone()
            labels[: len(before)] = IGNORE_INDEX
            out.append((ids, labels))
    return out


def cached_agent(
    base,
    tokenizer,
    traces: Sequence[Trace],
    *,
    name: str,
    steps: int = 45,
    batch_size: int = 4,
    lr: float = 1e-3,
    rank: int = 16,
    seed: int = 0,
    packing: bool = False,
    max_len: int | None = None,
):
    """Notebook 07.4's tool-using SmolLM2: from the course cache (``name``), or trained now on
    :func:`trace_examples` of ``traces``. LoRA of rank ``rank`` on every linear layer of a copy
    of ``base``, :func:`llmlab.posttrain.sft.train_sft` for ``steps`` steps of ``batch_size``
    turns (with ``packing``: rows of ``max_len`` tokens) at ``lr``, merged. Returns ``(model, trained, record)`` (:func:`llmlab.posttrain.sft.cached_lora_sft`); the adapter and the loss curve
    are saved atomically under ``name`` and a fingerprint of the recipe and the traces."""
    from llmlab.posttrain import sft
    from llmlab.results import recipe_name

    if not isinstance(name, str) or not name:
        raise ValueError(f"name: expected the agent's course-cache name, got {name!r}")
    if not traces:
        raise ValueError("traces: expected at least one trace to learn from")
    recipe = (steps, batch_size, lr, rank, seed) + ((packing, max_len) if packing else ())
    return sft.cached_lora_sft(
        base,
        recipe_name(name, recipe, *(trace.transcript for trace in traces)),
        lambda: trace_examples(traces, tokenizer),
        tokenizer.pad_token_id,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        rank=rank,
        seed=seed,
        packing=packing,
        max_len=max_len,
    )
