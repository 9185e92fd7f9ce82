"""llmlab.agents.tasks: seeded agent tasks, solvable by their plans, scored strictly."""

from __future__ import annotations

import collections
import datetime
import re
from types import SimpleNamespace

import pytest

from llmlab.agents.react import run_agent
from llmlab.agents.tasks import (
    KINDS,
    TODAY,
    AgentTask,
    make_tasks,
    run_plan,
    score_answer,
    score_run,
    summarize,
)
from llmlab.agents.tools import default_registry
from llmlab.rag import bm25
from llmlab.rag.kb import make_kb, normalize_answer


@pytest.fixture(scope="module")
def kb():
    return make_kb(240, seed=0)


@pytest.fixture(scope="module")
def tasks(kb):
    return make_tasks(kb)


@pytest.fixture(scope="module")
def registry(kb):
    """The real tools: calculator, date (fixed today), Python in the sandbox, BM25 search."""
    docs = kb.documents
    index = bm25.BM25([bm25.tokenize(d.text, bm25.STOPWORDS) for d in docs])

    def search(query, k):
        hits = index.top_k(bm25.tokenize(query, bm25.STOPWORDS), k)
        return [(docs[i].doc_id, docs[i].text) for i, _ in hits]

    return default_registry(search, today=TODAY)


def _task(prompt, answer, plan, kind="arithmetic", aliases=()):
    plan = tuple({"tool": tool, "arguments": args} for tool, args in plan)
    tools = tuple(call["tool"] for call in plan)
    return AgentTask("t-00", kind, prompt, answer, aliases, tools, plan, "test")


ARITH = _task(
    "What is 347 * 29 + 1183?", "11246", [("calculator", {"expression": "347 * 29 + 1183"})]
)
WEEKDAY = _task(
    "What day of the week was 2019-08-23?",
    "Friday",
    [("date", {"operation": "weekday", "date": "2019-08-23"})],
    kind="date",
)
ADD_DAYS = _task(
    "What date is 45 days after 2024-11-30?",
    "2025-01-14",
    [("date", {"operation": "add_days", "date": "2024-11-30", "days": 45})],
    kind="date",
)
BETWEEN = _task(
    "How many days are there from 2023-02-10 to 2023-09-01?",
    "203",
    [("date", {"operation": "days_between", "date": "2023-02-10", "other_date": "2023-09-01"})],
    kind="date",
)
LOOKUP_ARITH = _task(
    "How many years after Orvihaven was founded was Karreith Zellisell born?",
    "471",
    [
        ("search", {"query": "When was Orvihaven founded?"}),
        ("search", {"query": "When was Karreith Zellisell born?"}),
        ("calculator", {"expression": "1873 - 1402"}),
    ],
    kind="lookup_arith",
)


# --- generation ------------------------------------------------------------------------------


def test_deterministic_by_seed(kb, tasks):
    assert make_tasks(kb) == tasks
    assert make_tasks(kb, seed=1) != tasks
    # one kind's tasks do not depend on which other kinds are drawn
    only_dates = make_tasks(kb, kinds=["date"])
    assert only_dates == [t for t in tasks if t.kind == "date"]


def test_kinds_and_splits_balanced(kb, tasks):
    assert len(tasks) == 4 * len(KINDS)
    assert collections.Counter(t.kind for t in tasks) == {kind: 4 for kind in KINDS}
    assert len({t.task_id for t in tasks}) == len(tasks)
    for kind in KINDS:
        splits = collections.Counter(t.split for t in tasks if t.kind == kind)
        assert splits == {"dev": 1, "test": 3}
    six = make_tasks(kb, n_per_kind=6)
    for kind in KINDS:
        assert collections.Counter(t.split for t in six if t.kind == kind) == {"dev": 2, "test": 4}
    # templates take turns: four tasks of a kind are four different kinds of question
    arith = [re.sub(r"\d+", "N", t.prompt) for t in tasks if t.kind == "arithmetic"]
    assert len(set(arith)) == 4


def test_lookups_follow_the_kb_split(kb):
    by_question = {q.question: q for q in kb.questions}
    for task in make_tasks(kb, n_per_kind=9, kinds=["lookup", "lookup_arith"]):
        for call in task.plan:
            if call["tool"] == "search":
                assert by_question[call["arguments"]["query"]].split == task.split


def test_prompts_are_self_contained(kb, tasks):
    names = {d.title for d in kb.documents}
    for task in make_tasks(kb, n_per_kind=8, seed=3):
        assert task.prompt.endswith("?") and len(task.prompt) < 120, task.prompt
        assert task.tools == tuple(call["tool"] for call in task.plan)
        asks_today = task.plan[0]["arguments"].get("operation") == "today"
        assert ("today" in task.prompt.lower()) == asks_today, task.prompt
        assert not re.search(r"\b(yesterday|tomorrow|now|this year|last year)\b", task.prompt)
        for date in re.findall(r"\d{4}-\d{2}-\d{2}", task.prompt):
            datetime.date.fromisoformat(date)
        assert not re.search(r"\d{1,2}/\d{1,2}", task.prompt)  # no ambiguous dates
        if task.kind == "lookup_arith":
            assert sum(name in task.prompt for name in names) >= 2, task.prompt


def test_today_is_the_date_tools(kb):
    other = datetime.date(2030, 1, 1)
    for task in make_tasks(kb, n_per_kind=8, today=other, kinds=["date"]):
        if "today" in task.prompt:
            days = int(re.search(r"(\d+) days", task.prompt).group(1))
            assert task.answer == (other + datetime.timedelta(days=days)).isoformat()
            assert task.plan[1]["arguments"]["date"] == other.isoformat()
            reply = f"Today is {other}, so {days} days later it is {task.answer}."
            assert score_answer(task, reply)  # today's date comes from the plan's calls


def test_every_plan_gives_the_answer(kb, tasks, registry):
    by_question = {q.question: q for q in kb.questions}
    for task in tasks:
        output = run_plan(task, registry)
        assert score_answer(task, output), (task, output)
        if task.kind != "lookup":
            assert output == task.answer, (task, output)  # tools' outputs are exact
        for call in task.plan:
            if call["tool"] == "search":  # the fact is in what the search returns
                found = registry.call("search", call["arguments"]).output
                assert by_question[call["arguments"]["query"]].answer in found, (task, found)
                assert "cut:" not in found


def test_plans_without_search_for_other_seeds(kb, registry):
    # python plans run in the sandbox: a handful only
    kinds = ["arithmetic", "date", "python"]
    for seed in range(1, 6):
        for task in make_tasks(kb, n_per_kind=4 if seed == 1 else 8, seed=seed, kinds=kinds):
            if task.kind != "python" or seed == 1:
                assert run_plan(task, registry) == task.answer, task


def test_small_kb_runs_out_of_facts():
    small = make_kb(10, seed=0)
    with pytest.raises(ValueError, match="kb: too few facts"):
        make_tasks(small, n_per_kind=20, kinds=["lookup_arith"])


# --- scoring ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply",
    ["11246", "11,246", "The answer is 11,246.", "11246.0", "347 * 29 + 1183 = 11246", "=11246"],
)
def test_number_accepted(reply):
    assert score_answer(ARITH, reply)


@pytest.mark.parametrize(
    "reply",
    [
        "11245",
        "11247",
        "112460",  # contains the answer
        "1124",
        "11246.5",
        "11245 or 11246",
        "347 * 29 = 10063, so 11246",  # a number from nowhere
        "eleven thousand",
        "",
        "   ",
        None,
    ],
)
def test_number_rejected(reply):
    assert not score_answer(ARITH, reply)


def test_numbers_with_dates_and_operands():
    assert score_answer(BETWEEN, "There are 203 days from 2023-02-10 to 2023-09-01.")
    assert not score_answer(BETWEEN, "204 days")
    assert not score_answer(BETWEEN, "2023-09-01")
    assert score_answer(LOOKUP_ARITH, "1873 - 1402 = 471")
    assert score_answer(LOOKUP_ARITH, "471 years")
    assert not score_answer(LOOKUP_ARITH, "470")
    assert not score_answer(LOOKUP_ARITH, "471 or 472")


def test_weekday():
    for reply in ["Friday", "friday.", "It was a FRIDAY.", "2019-08-23 was a Friday"]:
        assert score_answer(WEEKDAY, reply), reply
    for reply in ["Thursday", "Friday or Saturday", "Fridays", "Fri", None]:
        assert not score_answer(WEEKDAY, reply), reply


def test_dates():
    for reply in [
        "2025-01-14",
        "It is 2025-01-14.",
        "45 days after 2024-11-30 is 2025-01-14",
        "January 14, 2025",
        "14 January 2025",
        "2025-1-14",
    ]:
        assert score_answer(ADD_DAYS, reply), reply
    for reply in ["2025-01-15", "2025-01-13", "2025-01-14 or 2025-01-15", "2024-11-30", "14"]:
        assert not score_answer(ADD_DAYS, reply), reply


def test_lookup_answers(kb, tasks):
    lookups = [t for t in tasks if t.kind == "lookup"]
    for task in lookups:
        assert score_answer(task, task.answer)
        assert score_answer(task, f"The answer is {task.answer}.")
        for alias in task.aliases:
            assert score_answer(task, alias)
        question = next(q for q in kb.questions if q.question == task.prompt)
        other = next(
            q
            for q in kb.questions
            if q.relation == question.relation
            and q.doc_id != question.doc_id
            and normalize_answer(q.answer) != normalize_answer(question.answer)
        )
        assert not score_answer(task, other.answer), (task, other.answer)


# --- runs ------------------------------------------------------------------------------------


def _scripted(*turns):
    replies = iter(turns)
    return lambda transcript: next(replies)


def test_score_run_with_the_react_loop(registry):
    run = run_agent(
        _scripted(
            'Thought: compute\nAction: {"tool": "calculator", "arguments": {"expression": "347 * 29 + 1183"}}',
            "Thought: done\nFinal Answer: 11,246",
        ),
        registry,
        ARITH.prompt,
    )
    score = score_run(ARITH, run)
    assert score == {
        "task_id": "t-00",
        "kind": "arithmetic",
        "success": True,
        "used_tools": ["calculator"],
        "correct_tools": True,
        "steps": 2,
        "parsed_steps": 2,
        "failed_steps": 0,
    }
    bad = run_agent(
        _scripted(
            "Thought: hmm\nAction: {calculator}",  # does not parse
            'Action: {"tool": "calculator", "arguments": {"expr": "1"}}',  # parses, tool fails
            "Final Answer: 11245",
        ),
        registry,
        ARITH.prompt,
    )
    score = score_run(ARITH, bad)
    assert not score["success"] and score["correct_tools"]  # the right tool, badly called
    assert (score["steps"], score["parsed_steps"], score["failed_steps"]) == (3, 2, 2)


def test_correct_tools_is_an_ordered_subsequence():
    def run(*tools, answer="471"):
        return SimpleNamespace(
            answer=answer, tool_calls=[{"tool": t, "arguments": {}} for t in tools]
        )

    assert score_run(LOOKUP_ARITH, run("search", "search", "calculator"))["correct_tools"]
    assert score_run(LOOKUP_ARITH, run("search", "search", "search", "calculator"))["correct_tools"]
    assert not score_run(LOOKUP_ARITH, run("calculator", "search", "search"))["correct_tools"]
    assert not score_run(LOOKUP_ARITH, run("search", "calculator"))["correct_tools"]
    no_tools = score_run(LOOKUP_ARITH, run())
    assert no_tools["success"] and not no_tools["correct_tools"]
    assert (no_tools["steps"], no_tools["parsed_steps"]) == (1, 1)  # no .steps: calls + answer


def test_summarize():
    scores = [
        {"success": True, "correct_tools": True, "used_tools": ["calculator"], "steps": 2,
         "parsed_steps": 2, "failed_steps": 0},
        {"success": False, "correct_tools": True, "used_tools": ["calculator", "calculator"],
         "steps": 4, "parsed_steps": 3, "failed_steps": 2},
    ]  # fmt: skip
    assert summarize(scores) == {
        "n": 2,
        "success": 0.5,
        "correct_tools": 1.0,
        "parse_rate": 5 / 6,
        "failed_step_rate": 2 / 6,
        "tool_calls_per_run": 1.5,
    }


# --- bad input -------------------------------------------------------------------------------


def test_bad_input_names_the_argument(kb, registry):
    cases = [
        (lambda: make_tasks("kb"), TypeError, "kb:"),
        (lambda: make_tasks(kb, n_per_kind=0), ValueError, "n_per_kind:"),
        (lambda: make_tasks(kb, seed="0"), TypeError, "seed:"),
        (lambda: make_tasks(kb, today="2026-03-14"), TypeError, "today:"),
        (lambda: make_tasks(kb, kinds=["chess"]), ValueError, "kinds:"),
        (lambda: make_tasks(kb, kinds="date"), ValueError, "kinds:"),
        (lambda: make_tasks(kb, dev_fraction=1.5), ValueError, "dev_fraction:"),
        (lambda: score_answer("What is 2 + 2?", "4"), TypeError, "task:"),
        (lambda: score_answer(ARITH, 11246), TypeError, "answer_text:"),
        (lambda: score_run(ARITH, "11246"), TypeError, "run:"),
        (lambda: summarize([]), ValueError, "scores:"),
        (lambda: run_plan(ARITH, None), TypeError, "registry:"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()
    broken = _task("What is 1 / 0?", "0", [("calculator", {"expression": "1 / 0"})])
    with pytest.raises(RuntimeError, match=r"t-00: plan step 0 \(calculator\): ZeroDivision"):
        run_plan(broken, registry)
