"""Plan, then act: the model writes the whole plan first, and a program runs it.

ReAct (:mod:`llmlab.agents.react`) decides one step at a time and reads every observation
before the next step. Plan-and-execute agents (ReWOO, Xu et al., 2023; Plan-and-Solve, Wang et
al., 2023) split the work instead: a **planner** decomposes the task into steps once, each step
a tool call whose argument may refer to an earlier step's result as ``#n``; a **worker** runs
the steps in order and substitutes the results. A task that needs two facts and a sum:

    #1 = ask("How many employees does Verrow Mills have?")
    #2 = ask("How many employees does Tansel Works have?")
    #3 = calculator("#1 + #2")

``ask`` answers one question from the knowledge base (retrieval and a reader, chapter 07.2);
``calculator`` does the arithmetic. The model is called once per task, not once per step, and
each part of the task goes to the component that can do it: one fact per question for the
reader, the arithmetic for the calculator. The cost: the plan cannot react to what a step
returned (a failed step fails the plan).

Substitution: in a ``calculator`` argument, ``#n`` becomes the first number of step n's
result ("6,330 people" gives 6330); elsewhere it becomes step n's whole result. A reference to
a step that has not run, or a number that is not there, is an error of the run, recorded.

:func:`execute_plans` runs many plans in lock step, so that each tool is called once per step
with every plan's argument (a batch for the reader). :func:`gold_plan` writes the plan a good
planner would for a task of :mod:`llmlab.agents.tasks` (its lookup_arith kind).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from llmlab.agents.tasks import AgentTask

__all__ = [
    "PLANNER",
    "Plan",
    "PlanRun",
    "PlanStep",
    "execute_plan",
    "execute_plans",
    "gold_plan",
    "parse_plan",
]

#: The planner's instructions, with two worked plans (names invented, in no knowledge base).
PLANNER = """Break the task into steps. Each step calls one tool:
ask("<one simple question>") looks up one fact, calculator("<arithmetic>") computes.
Write #n for the result of step n. Write a plan in this form:

Task: How many more employees does Verrow Mills have than Tansel Works?
Plan:
#1 = ask("How many employees does Verrow Mills have?")
#2 = ask("How many employees does Tansel Works have?")
#3 = calculator("#1 - #2")

Task: How many years after Dunmere was founded was Ola Brisk born?
Plan:
#1 = ask("When was Dunmere founded?")
#2 = ask("When was Ola Brisk born?")
#3 = calculator("#2 - #1")"""

_STEP = re.compile(r'#(\d+)\s*=\s*([A-Za-z_]\w*)\(\s*"(.*)"\s*\)\s*$')
_REF = re.compile(r"#(\d+)")
_FIRST_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


@dataclass(frozen=True)
class PlanStep:
    """Step ``ref`` (1, 2, ...): call ``tool`` with ``argument``, which may hold ``#n``."""

    ref: int
    tool: str
    argument: str

    def __str__(self) -> str:
        return f'#{self.ref} = {self.tool}("{self.argument}")'


@dataclass(frozen=True)
class Plan:
    """What :func:`parse_plan` read: the ``steps``, or an ``error`` saying why none could be."""

    steps: tuple[PlanStep, ...]
    error: str | None = None

    def __str__(self) -> str:
        return "\n".join(map(str, self.steps))


@dataclass
class PlanRun:
    """A plan run by :func:`execute_plans`: each step's ``outputs`` (as far as it got), the
    ``answer`` (the last step's output; None when a step failed) and the ``error``."""

    plan: Plan
    outputs: list[str] = field(default_factory=list)
    answer: str | None = None
    error: str | None = None


def parse_plan(text: str) -> Plan:
    """Read the steps ``#1 = tool("argument")``, one per line, numbered 1, 2, ... from the
    first step line on; reading stops at the first line that is not the next step (a model
    that goes on to write another "Task:" is cut there). No step: a Plan with an error."""
    if not isinstance(text, str):
        raise TypeError(f"text: expected a str, got {type(text).__name__}")
    steps: list[PlanStep] = []
    for line in text.strip().splitlines():
        line = line.strip()
        if not steps and not line.startswith("#"):
            continue  # "Plan:" or a sentence before the first step
        match = _STEP.fullmatch(line)
        if match is None or int(match.group(1)) != len(steps) + 1:
            break
        steps.append(PlanStep(len(steps) + 1, match.group(2), match.group(3)))
    if not steps:
        return Plan((), error='no step of the form #1 = tool("argument")')
    return Plan(tuple(steps))


def _substitute(step: PlanStep, outputs: Sequence[str]) -> str:
    """``step.argument`` with each ``#n`` replaced (module docstring); ValueError if it can't."""

    def value(match: re.Match) -> str:
        n = int(match.group(1))
        if not 1 <= n <= len(outputs):
            raise ValueError(f"step #{step.ref} refers to #{n}, which has not run")
        if step.tool != "calculator":
            return outputs[n - 1]
        number = _FIRST_NUMBER.search(outputs[n - 1])
        if number is None:
            raise ValueError(f"step #{step.ref} needs a number from #{n}: {outputs[n - 1]!r}")
        return number.group().replace(",", "")

    return _REF.sub(value, step.argument)


def execute_plans(
    plans: Sequence[Plan], tools: dict[str, Callable[[list[str]], list[str]]]
) -> list[PlanRun]:
    """Run ``plans`` in lock step: at step i, each tool is called once with the arguments of
    every plan still running (``tools[name](arguments) -> outputs``, one output per argument,
    as strings, or an Exception for a call that failed). A plan stops at its first error
    (unknown tool, bad reference, a failed call, a tool that raised: then every plan of that
    batch fails), recorded in its :class:`PlanRun`; the others go on."""
    if isinstance(plans, Plan) or not all(isinstance(p, Plan) for p in plans):
        raise TypeError("plans: expected a list of Plan (see parse_plan)")
    if not isinstance(tools, dict) or not all(callable(t) for t in tools.values()):
        raise TypeError("tools: expected a dict of tool name -> function(list of arguments)")
    runs = [PlanRun(p, error=p.error) for p in plans]
    for i in range(max((len(p.steps) for p in plans), default=0)):
        calls: dict[str, list[tuple[PlanRun, str]]] = {}
        for run in runs:
            if run.error is not None or i >= len(run.plan.steps):
                continue
            step = run.plan.steps[i]
            if step.tool not in tools:
                run.error = f"step #{step.ref}: unknown tool {step.tool!r} (have {sorted(tools)})"
                continue
            try:
                calls.setdefault(step.tool, []).append((run, _substitute(step, run.outputs)))
            except ValueError as err:
                run.error = str(err)
        for name, batch in calls.items():
            try:
                outputs = list(tools[name]([argument for _, argument in batch]))
                if len(outputs) != len(batch):
                    raise ValueError(f"returned {len(outputs)} outputs for {len(batch)} calls")
            except Exception as err:  # a failing tool fails these plans, not the run
                for run, _ in batch:
                    run.error = f"step #{i + 1}: {name} failed: {type(err).__name__}: {err}"
                continue
            for (run, _), output in zip(batch, outputs, strict=True):
                if isinstance(output, Exception):  # this call failed, the batch's others not
                    run.error = f"step #{i + 1}: {name} failed: {output}"
                else:
                    run.outputs.append(str(output))
    for run in runs:
        if run.error is None and run.outputs:
            run.answer = run.outputs[-1]
    return runs


def execute_plan(plan: Plan, tools: dict[str, Callable[[list[str]], list[str]]]) -> PlanRun:
    """:func:`execute_plans` for one plan."""
    return execute_plans([plan], tools)[0]


def gold_plan(task: AgentTask, kb) -> Plan:
    """The plan a good planner writes for a lookup_arith ``task``: one ``ask`` per fact (the
    knowledge base's own question for it, as the task's gold plan searches), then the gold
    calculation with each fact's number replaced by its step. ``kb``: the task's knowledge
    base (to read each fact's answer)."""
    if not isinstance(task, AgentTask):
        raise TypeError(f"task: expected an AgentTask, got {type(task).__name__}")
    if task.kind != "lookup_arith":
        raise ValueError(f"task: expected a lookup_arith task, got a {task.kind} task")
    answers = {q.question: q.answer for q in kb.questions}
    asks = [c["arguments"]["query"] for c in task.plan if c["tool"] == "search"]
    expression = next(c["arguments"]["expression"] for c in task.plan if c["tool"] == "calculator")
    values = []
    for query in asks:
        if query not in answers:
            raise ValueError(f"kb: no question {query!r}: is it the knowledge base of the task?")
        values.append(_FIRST_NUMBER.search(answers[query]).group().replace(",", ""))
    refs = iter(range(1, len(asks) + 1))
    # Each number of the expression is the answer of the step it came from, in plan order
    # (the calculation may use them in either order: "{b} - {a}").
    by_value: dict[str, list[int]] = {}
    for ref, v in zip(refs, values, strict=True):
        by_value.setdefault(v, []).append(ref)
    expression = re.sub(r"\d+", lambda m: f"#{by_value[m.group()].pop(0)}", expression)
    steps = [PlanStep(i + 1, "ask", q) for i, q in enumerate(asks)]
    steps.append(PlanStep(len(steps) + 1, "calculator", expression))
    return Plan(tuple(steps))
