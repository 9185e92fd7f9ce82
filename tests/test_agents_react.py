"""llmlab.agents.react: the step parser and the loop, with a scripted model."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from llmlab.agents.react import parse_step, run_agent


@dataclass(frozen=True)
class _Result:
    ok: bool
    output: str
    error: str | None
    seconds: float = 0.0


class FakeRegistry:
    """A registry with one tool, add(a, b), whose calls are recorded."""

    def __init__(self):
        self.calls = []

    def describe(self):
        return "add(a: number, b: number): the sum"

    def call(self, name, arguments):
        self.calls.append((name, arguments))
        if name != "add":
            return _Result(False, "", f"unknown tool {name!r}; known: add")
        if set(arguments) != {"a", "b"}:
            return _Result(False, "", "arguments: expected a and b")
        return _Result(True, str(arguments["a"] + arguments["b"]), None)


def scripted(*turns):
    """A model that answers each call with the next turn, and records what it was shown."""
    seen = []

    def generate(transcript):
        seen.append(transcript)
        return turns[len(seen) - 1]

    generate.seen = seen
    return generate


def test_parse_step_reads_actions_and_answers():
    p = parse_step('Thought: add them\nAction: {"tool": "add", "arguments": {"a": 2, "b": "}"}}')
    assert (p.thought, p.tool, p.arguments, p.error) == (
        "add them",
        "add",
        {"a": 2, "b": "}"},
        None,
    )
    assert parse_step("Thought: done\nFinal Answer: 4\nmore").final == "4"
    assert parse_step('Final Answer: 4\nAction: {"tool": "add", "arguments": {}}').final == "4"
    assert "expected 'Action" in parse_step("I think it is 4").error
    assert "not valid JSON" in parse_step("Action: {'tool': 'add'}").error
    assert "not closed" in parse_step('Action: {"tool": "add", "arguments": {').error
    assert "expected {" in parse_step('Action: {"name": "add"}').error
    assert "empty" in parse_step("Final Answer:   ").error
    with pytest.raises(TypeError, match="text: expected a str"):
        parse_step(None)


def test_a_run_calls_the_tool_and_finishes():
    registry = FakeRegistry()
    model = scripted(
        'Thought: add\nAction: {"tool": "add", "arguments": {"a": 2, "b": 3}}',
        "Thought: I know it\nFinal Answer: 5",
    )
    run = run_agent(model, registry, "What is 2 + 3?")
    assert run.answer == "5" and run.stopped == "final" and run.failed_steps == 0
    assert run.tool_calls == [{"tool": "add", "arguments": {"a": 2, "b": 3}}]
    assert model.seen[1].endswith("Observation: 5\n")  # the loop wrote the observation
    assert "Task: What is 2 + 3?" in model.seen[0] and "add(a: number" in model.seen[0]


def test_failures_are_steps_the_model_sees():
    registry = FakeRegistry()
    model = scripted(
        "I will just guess",  # neither an action nor an answer
        'Action: {"tool": "ad", "arguments": {"a": 1, "b": 1}}',  # unknown tool
        'Action: {"tool": "add", "arguments": {"a": 1}}',  # arguments rejected
        'Action: {"tool": "add", "arguments": {"a": 1, "b": 1}}\nObservation: 3\nFinal Answer: 3',
        "Final Answer: 2",
    )
    run = run_agent(model, registry, "1 + 1?")
    assert run.answer == "2" and run.failed_steps == 3
    assert [s.error is None for s in run.steps] == [False, False, False, True, True]
    assert "unknown tool 'ad'" in model.seen[2] and "Observation: error:" in model.seen[1]
    # The invented "Observation: 3" was cut: the loop ran the tool and wrote the real one.
    assert run.steps[3].observation == "2" and "Observation: 3" not in model.seen[4]


def test_max_steps_and_a_failing_model():
    def broken(transcript):
        raise ConnectionError("server down")

    run = run_agent(broken, FakeRegistry(), "anything", max_steps=2)
    assert run.stopped == "max_steps" and run.answer is None
    assert all("generate failed: ConnectionError" in s.error for s in run.steps)
    with pytest.raises(ValueError, match="max_steps: expected an int >= 1"):
        run_agent(broken, FakeRegistry(), "x", max_steps=0)
    with pytest.raises(ValueError, match="task: expected a non-empty string"):
        run_agent(broken, FakeRegistry(), " ")


def test_with_the_real_tools():
    from llmlab.agents.tools import default_registry

    registry = default_registry()
    model = scripted(
        'Thought: multiply\nAction: {"tool": "calculator", "arguments": {"expression": "17 * 23"}}',
        'Action: {"tool": "calculator", "arguments": {"expression": "__import__(\'os\')"}}',
        "Final Answer: 391",
    )
    run = run_agent(model, registry, "What is 17 * 23?")
    assert run.steps[0].observation == "391" and run.answer == "391"
    assert run.steps[1].error and "allowed" in run.steps[1].error  # refused, never evaluated
    assert "calculator(expression: string)" in model.seen[0]


def test_greedy_generator_continues_the_transcript():
    from llmlab.agents.react import greedy_generator
    from llmlab.assets import tiny_smollm2

    model, tokenizer = tiny_smollm2(seed=0)
    generate = greedy_generator(model, tokenizer, max_new_tokens=5)
    text = generate("Task: What is 2 + 2?\nThought:")
    assert isinstance(text, str) and text == generate("Task: What is 2 + 2?\nThought:")
    assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= 6
    with pytest.raises(ValueError, match="max_new_tokens: expected an int >= 1"):
        greedy_generator(model, tokenizer, max_new_tokens=0)
