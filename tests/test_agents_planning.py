"""llmlab.agents.planning: plans parsed, run in lock step, and the gold plans of lookup tasks."""

import pytest

from llmlab.agents import planning
from llmlab.agents.planning import Plan, PlanStep, execute_plan, execute_plans, parse_plan
from llmlab.agents.tasks import make_tasks
from llmlab.agents.tools import ToolRegistry, calculator
from llmlab.rag.kb import make_kb

KB = make_kb(60, seed=0)
PLAN = """Plan:
#1 = ask("How many employees does A have?")
#2 = ask("How many employees does B have?")
#3 = calculator("#1 - #2")

Task: something else
#1 = ask("x")"""


def calculate(expressions):
    registry = ToolRegistry()
    registry.register(calculator())
    results = [registry.call("calculator", {"expression": e}) for e in expressions]
    return [r.output if r.ok else ValueError(r.error) for r in results]


def facts(questions):
    table = {
        "How many employees does A have?": "6,330 people",
        "How many employees does B have?": "40",
    }
    return [table.get(q, "not in the sources") for q in questions]


TOOLS = {"ask": facts, "calculator": calculate}


def test_parse_reads_numbered_steps_and_stops_at_the_first_other_line():
    plan = parse_plan(PLAN)
    assert plan.error is None
    assert [(s.ref, s.tool) for s in plan.steps] == [(1, "ask"), (2, "ask"), (3, "calculator")]
    assert plan.steps[2].argument == "#1 - #2"
    assert str(plan.steps[0]) == '#1 = ask("How many employees does A have?")'
    assert parse_plan(str(plan)) == plan
    # Out of order, or no step at all
    assert len(parse_plan('#1 = ask("a")\n#3 = ask("b")').steps) == 1
    for text in ("", "I will look it up.", '#2 = ask("a")', "#1 = ask(a)"):
        assert parse_plan(text).steps == () and "no step" in parse_plan(text).error
    with pytest.raises(TypeError, match="text"):
        parse_plan(None)


def test_execute_substitutes_numbers_for_the_calculator_and_text_elsewhere():
    run = execute_plan(parse_plan(PLAN), TOOLS)
    assert run.error is None
    assert run.outputs == ["6,330 people", "40", "6290"]
    assert run.answer == "6290"
    echo = execute_plan(
        Plan(
            (PlanStep(1, "ask", "How many employees does B have?"), PlanStep(2, "echo", "was #1"))
        ),
        {"ask": facts, "echo": lambda xs: xs},
    )
    assert echo.answer == "was 40"


@pytest.mark.parametrize(
    "steps, message",
    [
        ([PlanStep(1, "calculator", "#2 + 1")], "has not run"),
        ([PlanStep(1, "ask", "unknown?"), PlanStep(2, "calculator", "#1 + 1")], "needs a number"),
        ([PlanStep(1, "search", "x")], "unknown tool"),
        ([PlanStep(1, "calculator", "import os")], "calculator failed"),
    ],
)
def test_execute_records_errors_per_plan(steps, message):
    good = parse_plan(PLAN)
    bad, ok = execute_plans([Plan(tuple(steps)), good], TOOLS)
    assert bad.answer is None and message in bad.error
    assert ok.error is None and ok.answer == "6290"  # the other plan in the batch goes on


def test_a_tool_that_raises_fails_its_batch_only():
    def broken(_):
        raise RuntimeError("down")

    runs = execute_plans(
        [parse_plan('#1 = ask("q")'), parse_plan('#1 = calculator("1 + 1")')],
        {"ask": broken, "calculator": calculate},
    )
    assert "ask failed: RuntimeError: down" in runs[0].error
    assert runs[1].answer == "2"
    short = execute_plans([parse_plan('#1 = ask("q")')], {"ask": lambda xs: []})
    assert "returned 0 outputs for 1 calls" in short[0].error
    unparsed = execute_plans([parse_plan("nothing")], TOOLS)[0]
    assert unparsed.answer is None and "no step" in unparsed.error


def test_execute_rejects_bad_arguments():
    with pytest.raises(TypeError, match="plans"):
        execute_plans(parse_plan(PLAN), TOOLS)
    with pytest.raises(TypeError, match="tools"):
        execute_plans([parse_plan(PLAN)], {"ask": "not callable"})


def test_gold_plans_answer_every_lookup_arith_task_with_true_facts():
    answers = {q.question: q.answer for q in KB.questions}
    tasks = make_tasks(KB, n_per_kind=6, seed=0, kinds=("lookup_arith",))
    for task in tasks:
        plan = planning.gold_plan(task, KB)
        assert [s.tool for s in plan.steps] == ["ask", "ask", "calculator"]
        assert "#1" in plan.steps[2].argument and "#2" in plan.steps[2].argument
        run = execute_plan(
            plan, {"ask": lambda qs: [answers[q] for q in qs], "calculator": calculate}
        )
        assert run.answer == task.answer, (task.prompt, run)


def test_gold_plan_rejects_other_tasks_and_other_knowledge_bases():
    arithmetic = make_tasks(KB, n_per_kind=1, seed=0, kinds=("arithmetic",))[0]
    with pytest.raises(ValueError, match="lookup_arith"):
        planning.gold_plan(arithmetic, KB)
    with pytest.raises(TypeError, match="task"):
        planning.gold_plan("task", KB)
    task = make_tasks(KB, n_per_kind=1, seed=0, kinds=("lookup_arith",))[0]
    with pytest.raises(ValueError, match="kb"):
        planning.gold_plan(task, make_kb(60, seed=5))
