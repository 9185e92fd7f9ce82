"""Verifiable agent tasks: problems that need a tool (one to three calls), whose answers a program
checks, with the tools a correct solution calls and a gold plan of those calls.

Chapter 07 measures an agent (the ReAct loop of :mod:`llmlab.agents.react`, free text or with
constrained tool calls, against the same model without tools) on tasks that a small model
cannot do in its head but can do with the right tool:

    kind          tools                               example
    arithmetic    calculator                          What is 347 * 29 + 1183?
    date          date (twice for "today")            What day of the week was 2019-08-23?
    lookup        search                              When was Karreith Zellisell born?
    lookup_arith  search, search, calculator          How many more employees does A have than B?
    python        python                              How many prime numbers are there below 5000?

    >>> tasks = make_tasks(make_kb(240, seed=0), n_per_kind=4, seed=0)
    >>> task = tasks[0]
    >>> task.prompt, task.answer, task.tools, task.split
    ('What is 628 * 71 - 686?', '43902', ('calculator',), 'test')
    >>> task.plan
    ({'tool': 'calculator', 'arguments': {'expression': '628 * 71 - 686'}},)
    >>> run_plan(task, default_registry(search, today=TODAY))
    '43902'
    >>> score_answer(task, "The answer is 43,902."), score_answer(task, "43903")
    (True, False)

Every prompt is self-contained: a date is written in ISO (YYYY-MM-DD), and "today" appears
only in the date tasks that ask the date tool for it (the tool's fixed ``today``, so the answer
is the same every run). Facts come from the fictional knowledge base of :mod:`llmlab.rag.kb`,
whose questions state where each fact is written; a lookup_arith task takes its numbers from
those questions' answers, never from hidden fields, so a search can find every one. The plan,
run through the real tools (:func:`run_plan`), produces the answer: the tests check every task
that way, and the gold calls are also what tool-use training traces are built from.

Scoring (:func:`score_answer`), by the answer's form:

- a number: the answer's value must be among the numbers of the reply ("The answer is 11,246."
  and "11246.0" are right for "11246"; "112460" is not), and every other number in the reply
  must be one the prompt or a gold call mentions (the operands of "1873 - 1402 = 471"): so a
  hedge ("11245 or 11246") or a wrong intermediate result fails;
- a date: the same rule over dates, ISO or "January 14, 2025";
- a weekday: the weekday names of the reply, case-insensitive, are exactly the answer's;
- a knowledge-base fact (lookup): the answer or an alias appears as whole words in the reply
  (:func:`llmlab.rag.kb.contains_match`).

:func:`score_run` adds the tools used (see its docstring for what counts as the right ones) and
how many steps parsed; :func:`summarize` turns a list of those into rates.
"""

from __future__ import annotations

import datetime
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from llmlab.rag.kb import SPLITS, KnowledgeBase, contains_match
from llmlab.validate import require_int, require_positive_int, require_real

__all__ = [
    "AgentTask",
    "KINDS",
    "TODAY",
    "make_tasks",
    "plan_outputs",
    "run_plan",
    "score_answer",
    "score_run",
    "summarize",
]

KINDS = ("arithmetic", "date", "lookup", "lookup_arith", "python")
TODAY = datetime.date(2026, 3, 14)
_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_MONTHS = "january february march april may june july august september october november december"


@dataclass(frozen=True)
class AgentTask:
    """One task. ``prompt``: the task in plain English; ``answer``: the canonical answer and
    ``aliases`` other accepted forms; ``tools``: the tools a correct solution calls, in order;
    ``plan``: those calls, ``{"tool": name, "arguments": {...}}``, which run through a registry
    give the answer; ``split``: "dev" or "test"."""

    task_id: str
    kind: str
    prompt: str
    answer: str
    aliases: tuple[str, ...]
    tools: tuple[str, ...]
    plan: tuple[dict, ...]
    split: str


def _call(tool: str, **arguments) -> dict:
    return {"tool": tool, "arguments": arguments}


def _number_task(prompt: str, value: int, *plan: dict):
    aliases = (f"{value:,}",) if abs(value) >= 1000 else ()
    return prompt, str(value), aliases, tuple(c["tool"] for c in plan), plan


# ---------------------------------------------------------------------------------------------
# The kinds: each draws one task of template ``which`` from ``rng``.


def _arithmetic(rng: random.Random, which: int, **_):
    a, b, c = rng.randint(100, 999), rng.randint(13, 99), rng.randint(1000, 9999)
    expression, value = [
        (f"{a} * {b} + {c}", a * b + c),
        (f"{a} * {b} - {c // 10}", a * b - c // 10),  # a * b >= 1300 > c // 10
        (f"({a} + {c}) * {b}", (a + c) * b),
        (f"{c} * {a}", c * a),
    ][which]
    return _number_task(f"What is {expression}?", value, _call("calculator", expression=expression))


def _date(rng: random.Random, which: int, today: datetime.date, **_):
    first = datetime.date(1990, 1, 1).toordinal()
    day = datetime.date.fromordinal(rng.randint(first, first + 45 * 365))
    n = rng.randint(20, 400)
    if which == 0:
        verb = "was" if day < today else "is"
        plan = (_call("date", operation="weekday", date=day.isoformat()),)
        return f"What day of the week {verb} {day}?", day.strftime("%A"), (), ("date",), plan
    if which == 1:
        end = day + datetime.timedelta(days=n)
        plan = (_call("date", operation="add_days", date=day.isoformat(), days=n),)
        return f"What date is {n} days after {day}?", end.isoformat(), _long(end), ("date",), plan
    if which == 2:
        other = day + datetime.timedelta(days=n + rng.randint(0, 600))
        prompt = f"How many days are there from {day} to {other}?"
        call = _call("date", operation="days_between", date=str(day), other_date=str(other))
        return _number_task(prompt, (other - day).days, call)
    end = today + datetime.timedelta(days=n)
    plan = (
        _call("date", operation="today"),
        _call("date", operation="add_days", date=today.isoformat(), days=n),
    )
    prompt = f"What date will it be {n} days from today?"
    return prompt, end.isoformat(), _long(end), ("date", "date"), plan


def _long(day: datetime.date) -> tuple[str, ...]:
    return (f"{day:%B} {day.day}, {day.year}",)


def _python(rng: random.Random, which: int, **_):
    if which == 0:
        n = rng.randint(20, 90) * 100
        code = (
            f"n = {n}\nsieve = [True] * n\nsieve[0] = sieve[1] = False\n"
            "for i in range(2, int(n ** 0.5) + 1):\n    if sieve[i]:\n"
            "        sieve[i * i :: i] = [False] * len(range(i * i, n, i))\nprint(sum(sieve))"
        )
        value = sum(all(p % d for d in range(2, math.isqrt(p) + 1)) for p in range(2, n))
        prompt = f"How many prime numbers are there below {n}?"
    elif which == 1:
        base, exponent = rng.randint(2, 9), rng.randint(60, 200)
        code = f"print(sum(int(digit) for digit in str({base} ** {exponent})))"
        value = sum(int(digit) for digit in str(base**exponent))
        prompt = f"What is the sum of the digits of {base}**{exponent}?"
    elif which == 2:
        n, a, b = rng.randint(20, 99) * 100, rng.randint(3, 9), rng.randint(11, 19)
        code = f"print(sum(1 for i in range(1, {n} + 1) if i % {a} == 0 or i % {b} == 0))"
        value = n // a + n // b - n // math.lcm(a, b)
        prompt = f"How many integers from 1 to {n} are divisible by {a} or by {b}?"
    else:
        k = rng.randint(50, 90)
        code = f"a, b = 0, 1\nfor _ in range({k}):\n    a, b = b, a + b\nprint(a)"
        value, b = 0, 1
        for _ in range(k):
            value, b = b, value + b
        prompt = f"What is the Fibonacci number F({k}), where F(1) = F(2) = 1?"
    return _number_task(prompt, value, _call("python", code=code))


def _lookup(rng: random.Random, which: int, pool, used: set, **_):
    candidates = [q for q in pool if q.doc_id not in used]
    if not candidates:
        return None
    question = rng.choice(candidates)
    used.add(question.doc_id)
    plan = (_call("search", query=question.question),)
    return question.question, question.answer, question.aliases, ("search",), plan


#: (fact a, fact b, the calculation, the prompt); a fact is "<entity kind> <relation>"
_LOOKUP_ARITH = (
    ("town founding_year", "person birth_year", "{b} - {a}",
     "How many years after {a} was founded was {b} born?"),
    ("company employees", "company employees", "{a} - {b}",
     "How many more employees does {a} have than {b}?"),
    ("town population", "town population", "{a} - {b}",
     "How many more people live in {a} than in {b}?"),
    ("river length", "river length", "{a} - {b}",
     "How many kilometres longer is the {a} than the {b}?"),
    ("company employees", "company employees", "{a} + {b}",
     "How many people do {a} and {b} employ together?"),
)  # fmt: skip


def _lookup_arith(rng: random.Random, which: int, facts, names, used: set, **_):
    fact_a, fact_b, calculation, template = _LOOKUP_ARITH[which]
    pairs = [
        (qa, qb)
        for qa in facts.get(fact_a, [])
        for qb in facts.get(fact_b, [])
        if qa.doc_id != qb.doc_id and not {qa.doc_id, qb.doc_id} & used
    ]
    pairs = [(qa, qb) for qa, qb in pairs if _signed(calculation, qa, qb) > 0]
    if not pairs:
        return None
    qa, qb = rng.choice(pairs)
    used.update((qa.doc_id, qb.doc_id))
    expression = calculation.format(a=_value(qa), b=_value(qb))
    return _number_task(
        template.format(a=names[qa.doc_id], b=names[qb.doc_id]),
        _signed(calculation, qa, qb),
        _call("search", query=qa.question),
        _call("search", query=qb.question),
        _call("calculator", expression=expression),
    )


def _value(question) -> int:
    return int(re.match(r"\d[\d,]*", question.answer).group().replace(",", ""))


def _signed(calculation: str, qa, qb) -> int:
    a, b = _value(qa), _value(qb)
    return {"{b} - {a}": b - a, "{a} - {b}": a - b, "{a} + {b}": a + b}[calculation]


_GENERATORS = {
    "arithmetic": (_arithmetic, 4),
    "date": (_date, 4),
    "lookup": (_lookup, 1),
    "lookup_arith": (_lookup_arith, len(_LOOKUP_ARITH)),
    "python": (_python, 4),
}


def make_tasks(
    kb: KnowledgeBase,
    n_per_kind: int = 4,
    seed: int = 0,
    today: datetime.date = TODAY,
    *,
    kinds: Sequence[str] = KINDS,
    dev_fraction: float = 1 / 3,
) -> list[AgentTask]:
    """``n_per_kind`` tasks of each of ``kinds`` (all of :data:`KINDS` by default), in that
    order, drawn from ``random.Random`` seeded by ``seed`` and the kind: the same arguments give
    the same tasks, and one kind's tasks do not depend on the others.

    ``kb``: the knowledge base of the lookup tasks (:func:`llmlab.rag.kb.make_kb`). ``today``:
    the date the date tool will be given (the "N days from today" tasks depend on it).
    Within each kind, ``round(n_per_kind * dev_fraction)`` tasks are "dev" and the rest "test",
    by a seeded draw; a lookup task of a split asks about entities of the same split of ``kb``.
    Templates take turns within a kind (in a seeded order), so 4 tasks of a kind are 4
    different templates.
    """
    if not isinstance(kb, KnowledgeBase):
        raise TypeError(f"kb: expected a KnowledgeBase (see make_kb), got {type(kb).__name__}")
    n_per_kind = require_positive_int(n_per_kind, "n_per_kind")
    seed = require_int(seed, "seed", None)
    if isinstance(today, datetime.datetime):
        today = today.date()
    if not isinstance(today, datetime.date):
        raise TypeError(f"today: expected a datetime.date, got {type(today).__name__} {today!r}")
    if isinstance(kinds, str) or not kinds or any(k not in KINDS for k in kinds):
        raise ValueError(f"kinds: expected a non-empty list of {KINDS}, got {kinds!r}")
    dev_fraction = require_real(dev_fraction, "dev_fraction")
    if not 0.0 <= dev_fraction <= 1.0:
        raise ValueError(f"dev_fraction: expected a number in [0, 1], got {dev_fraction}")

    kind_of = {e.doc_id: e.kind for e in kb.entities}
    by_split = {s: [q for q in kb.questions if q.split == s] for s in SPLITS}
    names = {d.doc_id: d.title for d in kb.documents}
    facts: dict[str, dict] = {s: {} for s in SPLITS}
    for split, questions in by_split.items():
        for q in questions:
            facts[split].setdefault(f"{kind_of[q.doc_id]} {q.relation}", []).append(q)
    tasks: list[AgentTask] = []
    for kind in dict.fromkeys(kinds):
        rng = random.Random(f"llmlab.agents.tasks/{seed}/{kind}")
        generate, n_templates = _GENERATORS[kind]
        n_dev = round(n_per_kind * dev_fraction)
        splits = ["dev"] * n_dev + ["test"] * (n_per_kind - n_dev)
        rng.shuffle(splits)
        order = rng.sample(range(n_templates), n_templates)
        used: dict[str, set] = {s: set() for s in SPLITS}
        for i, split in enumerate(splits):
            drawn = None
            for which in order[i % n_templates :] + order[: i % n_templates]:
                drawn = generate(
                    rng,
                    which,
                    today=today,
                    pool=by_split[split],
                    facts=facts[split],
                    names=names,
                    used=used[split],
                )
                if drawn is not None:
                    break
            if drawn is None:
                raise ValueError(
                    f"kb: too few facts in its {split!r} split for {n_per_kind} {kind} tasks "
                    f"(use a larger knowledge base, e.g. make_kb(240))"
                )
            prompt, answer, aliases, tools, plan = drawn
            task_id = f"{kind}-{i:02d}"
            tasks.append(AgentTask(task_id, kind, prompt, answer, aliases, tools, plan, split))
    return tasks


# ---------------------------------------------------------------------------------------------
# Scoring

_ISO = re.compile(r"(?<![\d-])(\d{4})-(\d{1,2})-(\d{1,2})(?![\d-])")
_MONTH_FIRST = re.compile(rf"\b({_MONTHS.replace(' ', '|')})\s+(\d{{1,2}}),?\s+(\d{{4}})\b", re.I)
_DAY_FIRST = re.compile(rf"\b(\d{{1,2}})\s+({_MONTHS.replace(' ', '|')}),?\s+(\d{{4}})\b", re.I)
_NUMBER = re.compile(r"(?<![\w.,-])-?\d+(?:,\d{3})*(?:\.\d+)?(?!\w|[.,]\d)")
_WEEKDAY = re.compile(rf"\b({'|'.join(_WEEKDAYS)})\b", re.I)


def _dates(text: str) -> list[datetime.date]:
    months = _MONTHS.split()
    found = [(y, m, d) for y, m, d in _ISO.findall(text)]
    found += [(y, months.index(m.lower()) + 1, d) for m, d, y in _MONTH_FIRST.findall(text)]
    found += [(y, months.index(m.lower()) + 1, d) for d, m, y in _DAY_FIRST.findall(text)]
    out = []
    for y, m, d in found:
        try:
            out.append(datetime.date(int(y), int(m), int(d)))
        except ValueError:
            pass  # "2025-02-30" is no date
    return out


def _numbers(text: str) -> list[Decimal]:
    return [Decimal(n.replace(",", "")) for n in _NUMBER.findall(_ISO.sub(" ", text))]


def _mentioned(task: AgentTask) -> str:
    """The text whose numbers and dates a reply may repeat: the prompt and the gold calls'
    arguments (the operands), but not code."""
    arguments = [v for c in task.plan for k, v in c["arguments"].items() if k != "code"]
    return " ".join([task.prompt, *map(str, arguments)])


def _only(expected, found: list, allowed: list) -> bool:
    return expected in found and all(x == expected or x in allowed for x in found)


def score_answer(task: AgentTask, answer_text: str | None) -> bool:
    """Whether ``answer_text`` answers ``task`` (module docstring: the rule per answer form).
    None or an empty string is wrong."""
    if not isinstance(task, AgentTask):
        raise TypeError(f"task: expected an AgentTask, got {type(task).__name__}")
    if answer_text is None:
        return False
    if not isinstance(answer_text, str):
        raise TypeError(f"answer_text: expected a str or None, got {type(answer_text).__name__}")
    if not answer_text.strip():
        return False
    if task.kind == "lookup":
        return any(contains_match(answer_text, ref) for ref in (task.answer, *task.aliases))
    if task.answer.lower() in _WEEKDAYS:
        return {w.lower() for w in _WEEKDAY.findall(answer_text)} == {task.answer.lower()}
    if _ISO.fullmatch(task.answer):
        expected = datetime.date.fromisoformat(task.answer)
        return _only(expected, _dates(answer_text), _dates(_mentioned(task)))
    return _only(Decimal(task.answer), _numbers(answer_text), _numbers(_mentioned(task)))


def _is_subsequence(needed: Sequence[str], used: Sequence[str]) -> bool:
    calls = iter(used)
    return all(any(tool == name for name in calls) for tool in needed)


def score_run(task: AgentTask, run) -> dict:
    """How a run did on ``task``. ``run``: an :class:`llmlab.agents.react.AgentRun`, or any
    object with ``answer`` (str or None) and ``tool_calls`` (``[{"tool", "arguments"}]``), and
    optionally ``steps`` (each with ``action``, ``final``, ``error``).

    Returns ``{"task_id", "kind", "success", "used_tools", "correct_tools", "steps",
    "parsed_steps", "failed_steps"}``. ``correct_tools``: ``task.tools`` is a subsequence of
    the tools called, in order; a call counts as a choice of its tool even when the tool then
    failed (wrong arguments show in ``failed_steps`` and ``success``). Extra calls are allowed
    (a retry after a bad query is still the right tool), but order matters (a calculator call
    before the searches cannot use their facts), and a missing call is wrong. ``parsed_steps``:
    steps whose text gave an action or a final answer; ``failed_steps``: steps with an error,
    from parsing or from the tool. Without ``steps``, each call and the answer count as one
    parsed step.
    """
    if not isinstance(task, AgentTask):
        raise TypeError(f"task: expected an AgentTask, got {type(task).__name__}")
    if not hasattr(run, "answer") or not hasattr(run, "tool_calls"):
        raise TypeError(
            f"run: expected an AgentRun (with .answer and .tool_calls), got {type(run).__name__}"
        )
    used = [call.get("tool") if isinstance(call, dict) else None for call in run.tool_calls]
    steps = getattr(run, "steps", None)
    if steps is None:
        n_steps = parsed = len(used) + (run.answer is not None)
        failed = 0
    else:
        n_steps = len(steps)
        parsed = sum(s.action is not None or s.final is not None for s in steps)
        failed = sum(s.error is not None for s in steps)
    return {
        "task_id": task.task_id,
        "kind": task.kind,
        "success": score_answer(task, run.answer),
        "used_tools": used,
        "correct_tools": _is_subsequence(task.tools, used),
        "steps": n_steps,
        "parsed_steps": parsed,
        "failed_steps": failed,
    }


def summarize(scores: Sequence[dict]) -> dict:
    """Rates over the :func:`score_run` results ``scores``: ``{"n", "success",
    "correct_tools", "parse_rate", "failed_step_rate", "tool_calls_per_run"}``. The step rates
    are over all steps of all runs (NaN when there were none)."""
    if isinstance(scores, dict) or not isinstance(scores, Sequence) or not scores:
        raise ValueError(f"scores: expected a non-empty list of score_run results, got {scores!r}")
    n = len(scores)
    steps = sum(s["steps"] for s in scores)
    return {
        "n": n,
        "success": sum(bool(s["success"]) for s in scores) / n,
        "correct_tools": sum(bool(s["correct_tools"]) for s in scores) / n,
        "parse_rate": sum(s["parsed_steps"] for s in scores) / steps if steps else math.nan,
        "failed_step_rate": sum(s["failed_steps"] for s in scores) / steps if steps else math.nan,
        "tool_calls_per_run": sum(len(s["used_tools"]) for s in scores) / n,
    }


def plan_outputs(task: AgentTask, registry) -> list[str]:
    """Run ``task.plan`` through ``registry.call`` (a :class:`llmlab.agents.tools.ToolRegistry`
    with the tools the plan names, the date tool given ``make_tasks``'s ``today``) and return
    each call's output, in order. RuntimeError, naming the call, if one fails."""
    if not isinstance(task, AgentTask):
        raise TypeError(f"task: expected an AgentTask, got {type(task).__name__}")
    if not callable(getattr(registry, "call", None)):
        raise TypeError(f"registry: expected a ToolRegistry, got {type(registry).__name__}")
    outputs = []
    for i, call in enumerate(task.plan):
        result = registry.call(call["tool"], call["arguments"])
        if not result.ok:
            raise RuntimeError(f"{task.task_id}: plan step {i} ({call['tool']}): {result.error}")
        outputs.append(result.output)
    return outputs


def run_plan(task: AgentTask, registry) -> str:
    """The last output of :func:`plan_outputs`: what the plan answers ("" for an empty plan)."""
    outputs = plan_outputs(task, registry)
    return outputs[-1] if outputs else ""
