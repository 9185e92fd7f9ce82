"""The checks of chapter 07's ReAct lab (llmlab.checks.rag_and_agents.react).

For every check: the reference passes, other correct answers pass too (a hand-written brace
scanner, ``json.JSONDecoder().raw_decode`` from the first "{", regular expressions for the
thought and the answer, errors worded differently, a dispatch that adds words to the registry's
error, a step that writes its own error observations), plausible wrong answers (mutants) fail on
the case that exposes them with words that say what is wrong, a NotImplementedError stub
reports "not implemented", garbage never raises, answers that call ``llmlab.agents.react`` are
flagged, and the global seed does not move. The cases' inputs travel to the grader's sandbox
(they pickle) and the answers' results come back.
"""

from __future__ import annotations

import ast
import io
import json
import pickle
import re

import pytest
from check_contract import CheckContract

from llmlab.agents.react import parse_step, run_agent
from llmlab.checks.rag_and_agents import react as rc
from llmlab.course.grade_worker import encode, load_reply

CHECKS = {
    "check_parse_action": (rc.check_parse_action, rc.reference_parse_action),
    "check_dispatch": (rc.check_dispatch, rc.reference_dispatch),
    "check_agent_step": (rc.check_agent_step, rc.reference_agent_step),
}


class _Weird:
    """An object that breaks comparisons: == raises, and it cannot be hashed."""

    def __eq__(self, other):
        raise RuntimeError("no comparing me")

    __hash__ = None


def _divide_by_zero(*args, **kwargs):
    return 1 / 0


GARBAGE = {
    "returns a number": lambda *a, **k: 0.5,
    "returns a string": lambda *a, **k: "Final Answer: 391",
    "returns 'error: '": lambda *a, **k: "error: ",
    "returns a list": lambda *a, **k: ["calculator", {"expression": "1"}],
    "returns its first input": lambda x, *a, **k: x,
    "returns an empty dict": lambda *a, **k: {},
    "returns a dict of weird values": lambda *a, **k: dict.fromkeys(rc.KEYS, _Weird()),
    "returns a dict with a weird error": lambda *a, **k: {
        **dict.fromkeys(rc.KEYS),
        "error": _Weird(),
    },
    "returns a tuple of Nones": lambda *a, **k: (None, None),
    "returns a pair of weird objects": lambda *a, **k: (_Weird(), _Weird()),
    "returns a bool": lambda *a, **k: True,
    "returns a generator": lambda *a, **k: (i for i in range(3)),
    "raises ZeroDivisionError": _divide_by_zero,
    "takes no arguments": lambda: "",
    "is not a function (a string)": "parse",
}


class TestContract(CheckContract):
    MODULES = (rc,)
    CHECKS = CHECKS
    GARBAGE = GARBAGE
    MIN_CASES = 7


PARSE, DISPATCH, STEP = CHECKS


def _case_names(cases):
    return [case.name for case in cases]


P_FIRST, P_FINAL, P_NO_THOUGHT, P_EMPTY_THOUGHT, P_TWO_LINES, P_FINAL_LINES = _case_names(
    rc._parse_cases()
)[:6]
(
    P_FINAL_FIRST,
    P_ACTION_FIRST,
    P_TRAILING,
    P_TWO_ACTIONS,
    P_FENCE,
    P_BRACE,
    P_ESCAPE,
    P_NOT_JSON,
    P_QUOTES,
    P_UNCLOSED,
    P_ARGUMENTS,
    P_NO_TOOL,
    P_TOOL_TYPE,
    P_NEITHER,
    P_EMPTY_FINAL,
    P_NEXT_LINE,
) = _case_names(rc._parse_cases())[6:]
(
    D_FIRST,
    D_UNKNOWN,
    D_SCHEMA,
    D_MAXIMUM,
    D_RAISES,
    D_UNREADABLE,
    D_CODE,
    D_EMPTY,
    D_REPEAT,
    D_ZERO,
) = _case_names(rc._dispatch_cases())
S_ACTION, S_FINAL, S_BLANKS, S_INVENTED, S_UNREADABLE, S_UNKNOWN, S_FINAL_FIRST = _case_names(
    rc._step_cases()
)

# --------------------------------------------------------------------------------------------
# parse_action: one parser with switches for the slips

KEYS = ("thought", "tool", "arguments", "final", "error")


def _step(**fields):
    return {**dict.fromkeys(KEYS), **fields}


def _scan(text, start, strings=True, escapes=True):
    depth, quoted, skip = 0, False, False
    i = start
    while i < len(text):
        ch = text[i]
        if quoted:
            if skip:
                skip = False
            elif ch == "\\" and escapes:
                skip = True
            elif ch == '"':
                quoted = False
        elif ch == '"' and strings:
            quoted = True
        elif ch in "{}":
            depth += 1 if ch == "{" else -1
            if depth == 0:
                return text[start : i + 1]
        i += 1
    return None


def _parse(
    text,
    *,
    blob="scan",
    action_first=False,
    final_first=False,
    final_rest=False,
    final_same_line=False,
    empty_final_ok=False,
    thought="line",
    empty_thought="none",
    loads="json",
    type_check=True,
    neither_error=True,
    last_action=False,
):
    """A parser with one part changed (a slip): ``blob`` is how the JSON is cut out."""
    out = _step()
    if "Thought:" in text:
        rest = text.split("Thought:", 1)[1]
        if thought == "line":
            rest = rest.split("\n", 1)[0]
        elif thought == "until label":
            rest = re.split(r"Action:|Final Answer:", rest)[0]
        rest = rest.strip()
        out["thought"] = rest or (None if empty_thought == "none" else "")
    final_at, action_at = text.find("Final Answer:"), text.find("Action:")
    is_final = final_at >= 0 and (action_at < 0 or final_at < action_at)
    if action_first:
        is_final = final_at >= 0 and action_at < 0
    if final_first:
        is_final = final_at >= 0
    if is_final:
        after = text[final_at + len("Final Answer:") :]
        if final_rest:
            answer = after.strip()
        elif final_same_line:
            answer = after.split("\n", 1)[0].strip()
        else:
            answer = after.strip().split("\n", 1)[0].strip()
        if answer or empty_final_ok:
            out["final"] = answer
        else:
            out["error"] = "empty answer"
        return out
    if action_at < 0:
        if neither_error:
            out["error"] = "no action and no answer"
        return out
    if last_action:
        action_at = text.rfind("Action:")
    after = text[action_at + len("Action:") :]
    if blob == "scan":
        start = after.find("{")
        found = _scan(after, start) if start >= 0 else None
    elif blob == "no strings":
        found = _scan(after, after.find("{"), strings=False)
    elif blob == "no escapes":
        found = _scan(after, after.find("{"), escapes=False)
    elif blob == "greedy":
        match = re.search(r"\{.*\}", after, re.S)
        found = match.group(0) if match else None
    elif blob == "greedy line":
        match = re.search(r"\{.*\}", after)
        found = match.group(0) if match else None
    elif blob == "first close":
        start = after.find("{")
        found = after[start : after.find("}", start) + 1] if start >= 0 else None
    elif blob == "right after":
        rest = after.strip()
        found = _scan(rest, 0) if rest.startswith("{") else None
    if found is None:
        out["error"] = "no JSON object"
        return out
    if loads == "json":
        try:
            call = json.loads(found)
        except json.JSONDecodeError as err:
            out["error"] = f"bad JSON: {err}"
            return out
    elif loads == "raise":
        call = json.loads(found)
    elif loads == "literal_eval":
        try:
            call = json.loads(found)
        except json.JSONDecodeError:
            try:
                call = ast.literal_eval(found)
            except (ValueError, SyntaxError):
                out["error"] = "bad JSON"
                return out
    if type_check == "subscript":
        tool, arguments = call["tool"], call["arguments"]  # KeyError for a missing key
        if isinstance(tool, str) and isinstance(arguments, dict):
            out["tool"], out["arguments"] = tool, arguments
        else:
            out["error"] = "expected a str tool and a dict of arguments"
        return out
    if type_check and not (
        isinstance(call.get("tool"), str) and isinstance(call.get("arguments"), dict)
    ):
        out["error"] = "expected a str tool and a dict of arguments"
        return out
    out["tool"], out["arguments"] = call.get("tool"), call.get("arguments")
    return out


def parse_scanner(text):
    return _parse(text)


def parse_raw_decode(text):
    thought = None
    if "Thought:" in text:
        thought = text.split("Thought:", 1)[1].partition("\n")[0].strip() or None
    final_at, action_at = text.find("Final Answer:"), text.find("Action:")
    if final_at != -1 and (action_at == -1 or final_at < action_at):
        lines = [line.strip() for line in text[final_at + 13 :].splitlines()]
        answer = next((line for line in lines if line), None)
        if answer is None:
            return _step(thought=thought, error="Final Answer is empty")
        return _step(thought=thought, final=answer)
    if action_at == -1:
        return _step(thought=thought, error="Write an Action or a Final Answer.")
    start = text.find("{", action_at)
    if start == -1:
        return _step(thought=thought, error="Action without JSON")
    try:
        call, _ = json.JSONDecoder().raw_decode(text, start)
    except json.JSONDecodeError as err:
        return _step(thought=thought, error=f"Action: {err.msg}")
    tool, arguments = call.get("tool"), call.get("arguments")
    if type(tool) is not str or type(arguments) is not dict:
        return _step(thought=thought, error='need {"tool": str, "arguments": {...}}')
    return _step(thought=thought, tool=tool, arguments=arguments)


def parse_regex_lines(text):
    thought = re.search(r"Thought:(.*)", text)
    thought = (thought.group(1).strip() or None) if thought else None
    final = re.search(r"Final Answer:\s*(.*)", text)
    action = text.find("Action:")
    if final and (action < 0 or final.start() < action):
        if final.group(1).strip():
            return _step(thought=thought, final=final.group(1).strip())
        return _step(thought=thought, error="the final answer is empty")
    step = _parse(text)
    return {**step, "thought": thought}


def parse_first_close(text):
    return _parse(text, blob="first close")


def parse_greedy(text):
    return _parse(text, blob="greedy")


def parse_greedy_one_line(text):
    return _parse(text, blob="greedy line")


def parse_counts_braces_in_strings(text):
    return _parse(text, blob="no strings")


def parse_ignores_escapes(text):
    return _parse(text, blob="no escapes")


def parse_right_after_label(text):
    return _parse(text, blob="right after")


def parse_last_action(text):
    return _parse(text, last_action=True)


def parse_lets_json_raise(text):
    return _parse(text, loads="raise")


def parse_literal_eval(text):
    return _parse(text, loads="literal_eval")


def parse_eval(text):
    step = _parse(text)
    if step["error"] and "bad JSON" in step["error"]:
        blob = _scan(text, text.find("{"))
        call = eval(blob)  # noqa: S307 - the slip under test
        return _step(thought=step["thought"], tool=call["tool"], arguments=call["arguments"])
    return step


def parse_no_type_check(text):
    return _parse(text, type_check=False)


def parse_subscripts(text):
    return _parse(text, type_check="subscript")


def parse_action_first(text):
    return _parse(text, action_first=True)


def parse_final_first(text):
    return _parse(text, final_first=True)


def parse_final_rest(text):
    return _parse(text, final_rest=True)


def parse_final_same_line(text):
    return _parse(text, final_same_line=True)


def parse_empty_final_ok(text):
    return _parse(text, empty_final_ok=True)


def parse_thought_until_label(text):
    return _parse(text, thought="until label")


def parse_thought_rest(text):
    return _parse(text, thought="rest")


def parse_empty_thought(text):
    return _parse(text, empty_thought="empty")


def parse_no_error_for_neither(text):
    return _parse(text, neither_error=False)


def parse_keeps_labels(text):
    step = _parse(text)
    if step["final"] is not None:
        step["final"] = "Final Answer: " + step["final"]
    return step


def parse_both(text):
    step = _parse(text, action_first=True)
    if "Final Answer:" in text and step["tool"] is not None:
        step["final"] = text.split("Final Answer:", 1)[1].strip().split("\n")[0]
    return step


def parse_error_and_action(text):
    step = _parse(text)
    step["error"] = step["error"] or ""
    return step


def parse_four_keys(text):
    step = _parse(text)
    del step["error"]
    return step


def parse_tuple(text):
    step = _parse(text)
    return tuple(step.values())


def parse_empty_error(text):
    step = _parse(text)
    if step["error"] is not None:
        step["error"] = ""
    return step


# --------------------------------------------------------------------------------------------
# dispatch


def dispatch_reference_like(registry, parsed):
    if parsed["error"] is not None:
        return "error: " + parsed["error"]
    result = registry.call(parsed["tool"], parsed["arguments"])
    if result.ok:
        return result.output
    return f"error: {result.error}"


def dispatch_with_advice(registry, parsed):
    if parsed.get("error"):
        return f"error: {parsed['error']} (write one Action with JSON)"
    result = registry.call(parsed["tool"], parsed["arguments"])
    return result.output if result.ok else f"error: {result.error}. Fix the call and try again."


def dispatch_raises_on_unknown_tool(registry, parsed):
    if parsed["error"] is not None:
        return "error: " + parsed["error"]
    registry.get(parsed["tool"])  # KeyError for an unknown tool
    result = registry.call(parsed["tool"], parsed["arguments"])
    return result.output if result.ok else "error: " + result.error


def dispatch_no_prefix(registry, parsed):
    if parsed["error"] is not None:
        return parsed["error"]
    result = registry.call(parsed["tool"], parsed["arguments"])
    return result.output if result.ok else result.error


def dispatch_capital_prefix(registry, parsed):
    if parsed["error"] is not None:
        return "Error: " + parsed["error"]
    result = registry.call(parsed["tool"], parsed["arguments"])
    return result.output if result.ok else "Error: " + result.error


def dispatch_skips_the_schema(registry, parsed):
    if parsed["error"] is not None:
        return "error: " + parsed["error"]
    try:
        tool = registry.get(parsed["tool"])
    except KeyError as err:
        return f"error: {err.args[0]}"
    try:
        return tool.fn(**parsed["arguments"])
    except Exception as err:
        return f"error: {type(err).__name__}: {err}"


def dispatch_skips_the_bounds(registry, parsed):
    # Checks the argument names by hand, not the schema's bounds.
    if parsed["error"] is not None:
        return "error: " + parsed["error"]
    if parsed["tool"] == "repeat" and set(parsed["arguments"]) == {"text", "times"}:
        return registry.get("repeat").fn(**parsed["arguments"])
    result = registry.call(parsed["tool"], parsed["arguments"])
    return result.output if result.ok else "error: " + result.error


def dispatch_swallows_errors(registry, parsed):
    if parsed["error"] is not None:
        return "error: " + parsed["error"]
    return registry.call(parsed["tool"], parsed["arguments"]).output


def dispatch_tests_the_output(registry, parsed):
    if parsed["error"] is not None:
        return "error: " + parsed["error"]
    result = registry.call(parsed["tool"], parsed["arguments"])
    return result.output if result.output else f"error: {result.error}"


def dispatch_ignores_parse_errors(registry, parsed):
    result = registry.call(parsed["tool"], parsed["arguments"])
    return result.output if result.ok else "error: " + result.error


def dispatch_returns_the_result(registry, parsed):
    return registry.call(parsed["tool"], parsed["arguments"])


def dispatch_returns_its_str(registry, parsed):
    return str(registry.call(parsed["tool"], parsed["arguments"]))


def dispatch_returns_a_dict(registry, parsed):
    result = registry.call(parsed["tool"], parsed["arguments"])
    return {"ok": result.ok, "output": result.output, "error": result.error}


def dispatch_own_words(registry, parsed):
    if parsed["error"] is not None:
        return "error: " + parsed["error"]
    result = registry.call(parsed["tool"], parsed["arguments"])
    return result.output if result.ok else "error: the call failed"


# --------------------------------------------------------------------------------------------
# agent_step


def step_reference_like(generate, registry, transcript):
    text = generate(transcript).split("Observation:", 1)[0].rstrip()
    parsed = parse_scanner(text)
    if parsed["error"] is None and parsed["final"] is not None:
        return transcript + text + "\n", parsed["final"]
    return transcript + text + "\nObservation: " + dispatch_reference_like(
        registry, parsed
    ) + "\n", None


def step_own_error_words(generate, registry, transcript):
    # Its own parser (other error messages) and an f-string.
    text = re.split("Observation:", generate(transcript), maxsplit=1)[0].rstrip()
    parsed = parse_raw_decode(text)
    if parsed["final"] is not None:
        return f"{transcript}{text}\n", parsed["final"]
    return f"{transcript}{text}\nObservation: {dispatch_with_advice(registry, parsed)}\n", None


def _step_with(
    generate,
    registry,
    transcript,
    *,
    cut=True,
    strip=True,
    sep="\nObservation: ",
    end="\n",
    final_obs=False,
    never_final=False,
    whole=True,
    calls=1,
    shown=None,
):
    for _ in range(calls):
        text = generate(transcript if shown is None else shown)
    if cut:
        text = text.split("Observation:", 1)[0]
    if strip:
        text = text.rstrip()
    parsed = parse_scanner(text)
    start = transcript if whole else ""
    if parsed["final"] is not None and not never_final:
        if final_obs:
            observation = dispatch_reference_like(registry, parsed)
            return f"{start}{text}{sep}{observation}{end}", parsed["final"]
        return start + text + "\n", parsed["final"]
    return f"{start}{text}{sep}{dispatch_reference_like(registry, parsed)}{end}", None


def step_no_cut(generate, registry, transcript):
    return _step_with(generate, registry, transcript, cut=False)


def step_no_strip(generate, registry, transcript):
    return _step_with(generate, registry, transcript, strip=False)


def step_no_space(generate, registry, transcript):
    return _step_with(generate, registry, transcript, sep="\nObservation:")


def step_no_newline(generate, registry, transcript):
    return _step_with(generate, registry, transcript, end="")


def step_final_observed(generate, registry, transcript):
    return _step_with(generate, registry, transcript, final_obs=True)


def step_never_final(generate, registry, transcript):
    return _step_with(generate, registry, transcript, never_final=True)


def step_new_part_only(generate, registry, transcript):
    return _step_with(generate, registry, transcript, whole=False)


def step_calls_twice(generate, registry, transcript):
    return _step_with(generate, registry, transcript, calls=2)


def step_shows_the_task_only(generate, registry, transcript):
    return _step_with(generate, registry, transcript, shown=transcript.splitlines()[-1])


def step_returns_the_transcript(generate, registry, transcript):
    return _step_with(generate, registry, transcript)[0]


# --------------------------------------------------------------------------------------------
# What the contract runs

CORRECT_VARIANTS = [
    (PARSE, parse_scanner),
    (PARSE, parse_raw_decode),
    (PARSE, parse_regex_lines),
    (DISPATCH, dispatch_reference_like),
    (DISPATCH, dispatch_with_advice),
    (STEP, step_reference_like),
    (STEP, step_own_error_words),
]

MUTANTS = [
    (PARSE, parse_first_close, P_FIRST, "the first '}' closes them, not the action"),
    (PARSE, parse_thought_rest, P_FIRST, "the rest of the 'Thought:' line only"),
    (PARSE, parse_tuple, P_FIRST, "expected a dict with the keys"),
    (PARSE, parse_four_keys, P_FIRST, "your dict lacks 'error'"),
    (PARSE, parse_error_and_action, P_FIRST, "'error' is an empty string"),
    (PARSE, parse_empty_thought, P_EMPTY_THOUGHT, "an empty thought is None, not ''"),
    (PARSE, parse_keeps_labels, P_FINAL, "without the label"),
    (PARSE, parse_thought_until_label, P_TWO_LINES, "you kept the lines after it"),
    (PARSE, parse_final_rest, P_FINAL_LINES, "the final answer is one line"),
    (PARSE, parse_action_first, P_FINAL_FIRST, "'Final Answer:' comes before 'Action:'"),
    (PARSE, parse_both, P_FINAL_FIRST, "never both"),
    (PARSE, parse_final_first, P_ACTION_FIRST, "'Action:' comes before 'Final Answer:'"),
    (PARSE, parse_greedy, P_TRAILING, "not at the last '}' of the text"),
    (PARSE, parse_greedy_one_line, P_TRAILING, "a greedy regex"),
    (PARSE, parse_last_action, P_TWO_ACTIONS, "you took a later one"),
    (PARSE, parse_right_after_label, P_FENCE, "wherever it is"),
    (PARSE, parse_counts_braces_in_strings, P_BRACE, "a '}' inside a JSON string"),
    (PARSE, parse_ignores_escapes, P_ESCAPE, "an escaped quote"),
    (PARSE, parse_lets_json_raise, P_NOT_JSON, "your function raised JSONDecodeError"),
    (PARSE, parse_eval, P_NOT_JSON, "the action is not valid JSON"),
    (PARSE, parse_literal_eval, P_QUOTES, "a Python dict in single quotes, not JSON"),
    (PARSE, parse_empty_error, P_NOT_JSON, "'error' is an empty string"),
    (PARSE, parse_no_type_check, P_ARGUMENTS, 'its "arguments" is a string'),
    (PARSE, parse_subscripts, P_NO_TOOL, "your function raised KeyError"),
    (PARSE, parse_no_error_for_neither, P_NEITHER, "neither 'Action:' nor 'Final Answer:'"),
    (PARSE, parse_empty_final_ok, P_EMPTY_FINAL, "an empty final answer is an error"),
    (PARSE, parse_final_same_line, P_NEXT_LINE, "the first non-blank line after it"),
    (DISPATCH, dispatch_returns_the_result, D_FIRST, "you returned the ToolResult itself"),
    (DISPATCH, dispatch_returns_its_str, D_FIRST, "the ToolResult itself (its str)"),
    (DISPATCH, dispatch_returns_a_dict, D_FIRST, "expected the observation as a str"),
    (DISPATCH, dispatch_raises_on_unknown_tool, D_UNKNOWN, "your function raised KeyError"),
    (DISPATCH, dispatch_no_prefix, D_UNKNOWN, "starts with 'error: ', then the message"),
    (DISPATCH, dispatch_capital_prefix, D_UNKNOWN, "starts with exactly 'error: '"),
    (DISPATCH, dispatch_swallows_errors, D_UNKNOWN, "received an empty string"),
    (DISPATCH, dispatch_own_words, D_UNKNOWN, "pass the registry's message on"),
    (DISPATCH, dispatch_skips_the_schema, D_SCHEMA, "the arguments break the tool's JSON schema"),
    (DISPATCH, dispatch_skips_the_bounds, D_MAXIMUM, "not the tool's function"),
    (DISPATCH, dispatch_ignores_parse_errors, D_UNREADABLE, "this step could not be parsed"),
    (DISPATCH, dispatch_tests_the_output, D_EMPTY, "test result.ok"),
    (STEP, step_new_part_only, S_ACTION, "return the whole transcript"),
    (STEP, step_calls_twice, S_ACTION, "called generate 2 times"),
    (STEP, step_shows_the_task_only, S_ACTION, "not the transcript"),
    (STEP, step_no_space, S_ACTION, "write a space after the label"),
    (STEP, step_no_newline, S_ACTION, "end the step with a newline"),
    (STEP, step_returns_the_transcript, S_ACTION, "expected a pair (new_transcript, final)"),
    (STEP, step_never_final, S_FINAL, "return it second"),
    (STEP, step_final_observed, S_FINAL, "a final answer gets no observation"),
    (STEP, step_no_strip, S_BLANKS, "strip the end of the model's text"),
    (STEP, step_no_cut, S_INVENTED, "cut its text at the first 'Observation:'"),
]


# --------------------------------------------------------------------------------------------
# Answers that call the package's loop: flagged


def parse_with_the_package(text):
    step = parse_step(text)
    return {key: getattr(step, key) for key in KEYS}


def dispatch_with_the_loop(registry, parsed):
    if parsed["error"] is not None:
        return "error: " + parsed["error"]
    turn = "Action: " + json.dumps({"tool": parsed["tool"], "arguments": parsed["arguments"]})
    return run_agent(lambda transcript: turn, registry, "x", max_steps=1).steps[0].observation


def step_with_the_loop(generate, registry, transcript):
    run = run_agent(
        generate,
        registry,
        "x",
        max_steps=1,
        prompt=transcript.replace("{", "{{").replace("}", "}}"),
    )
    step = run.steps[0]
    return run.transcript, step.final


FORBIDDEN = [
    (PARSE, parse_with_the_package, "llmlab.agents.react.parse_step"),
    (DISPATCH, dispatch_with_the_loop, "llmlab.agents.react.run_agent"),
    (STEP, step_with_the_loop, "llmlab.agents.react.run_agent"),
]


# --------------------------------------------------------------------------------------------
# The references are the package's parser and loop


def test_the_parse_reference_is_the_package_parser():
    for case in rc._parse_cases():
        (text,) = case.args
        step = parse_step(text)
        assert rc.reference_parse_action(text) == {key: getattr(step, key) for key in KEYS}


def test_the_step_reference_writes_what_run_agent_writes():
    # One scripted run through reference_agent_step and through run_agent: the same transcript.
    turns = [case.args[0] for case in rc._step_cases()[2:6]] + ["Final Answer: 7"]
    registry = rc.case_registry()

    def scripted():
        calls = iter(turns)
        return lambda transcript: next(calls)

    run = run_agent(scripted(), registry, "What is 17 * 23?", max_steps=len(turns))
    generate, transcript = scripted(), run.transcript.split("Task: What is 17 * 23?\n")[0]
    transcript += "Task: What is 17 * 23?\n"
    finals = []
    for _ in turns:
        transcript, final = rc.reference_agent_step(generate, registry, transcript)
        finals.append(final)
    assert transcript == run.transcript and finals[-1] == run.answer == "7"
    assert finals[:-1] == [None] * (len(turns) - 1)


def test_the_dispatch_reference_writes_what_run_agent_writes():
    registry = rc.case_registry()
    for case in rc._dispatch_cases():
        _, parsed = case.args
        if parsed["error"] is not None:
            continue
        turn = "Action: " + json.dumps({"tool": parsed["tool"], "arguments": parsed["arguments"]})
        run = run_agent(lambda transcript, turn=turn: turn, registry, "x", max_steps=1)
        assert rc.reference_dispatch(registry, parsed) == run.steps[0].observation


# --------------------------------------------------------------------------------------------
# The cases hold what their names say


def _case(cases, name):
    (case,) = [c for c in cases if c.name == name]
    return case


def test_the_parse_cases_hold_what_they_say():
    kinds = {}
    for case in rc._parse_cases():
        kinds[case.name] = rc._kind(rc.reference_parse_action(*case.args))
    for name in (P_QUOTES, P_NOT_JSON, P_UNCLOSED, P_ARGUMENTS, P_NO_TOOL, P_TOOL_TYPE):
        assert kinds[name] == "error", name
    assert kinds[P_NEITHER] == kinds[P_EMPTY_FINAL] == "error"
    assert kinds[P_FINAL_FIRST] == "final" and kinds[P_ACTION_FIRST] == "action"
    (text,) = _case(rc._parse_cases(), P_QUOTES).args
    blob = _scan(text, text.find("{"))
    assert isinstance(ast.literal_eval(blob), dict)  # ast.literal_eval would accept it
    (text,) = _case(rc._parse_cases(), P_NOT_JSON).args
    with pytest.raises(ValueError):
        ast.literal_eval(_scan(text, text.find("{")))  # only eval would
    assert len(rc._actions(_case(rc._parse_cases(), P_TWO_ACTIONS).args[0])) == 2
    assert "{" in _case(rc._parse_cases(), P_TRAILING).args[0].rsplit("}}", 1)[1]
    step = rc.reference_parse_action(*_case(rc._parse_cases(), P_NO_THOUGHT).args)
    assert step["arguments"]["days"] == -30 and step["thought"] is None


def test_the_dispatch_cases_hold_what_they_say():
    registry = rc.case_registry()
    observations = {
        c.name: rc.reference_dispatch(registry, c.args[1]) for c in rc._dispatch_cases()
    }
    assert observations[D_FIRST] == "391" and observations[D_REPEAT] == "ababab"
    assert observations[D_EMPTY] == ""
    for name in (D_UNKNOWN, D_SCHEMA, D_MAXIMUM, D_RAISES, D_UNREADABLE, D_CODE, D_ZERO):
        assert observations[name].startswith("error: "), name
    assert "maximum of 5" in observations[D_MAXIMUM]
    # The tool's function itself would take times=9 without a complaint.
    assert registry.get("repeat").fn(text="ab", times=9) == "ab" * 9


def test_the_step_cases_hold_what_they_say():
    for case in rc._step_cases():
        turn, transcript = case.args
        new, final = rc._run_step(rc.reference_agent_step, turn, transcript)["out"]
        assert new.startswith(transcript)
        assert (final is not None) == (case.name in (S_FINAL, S_FINAL_FIRST)), case.name
    turn, _ = _case(rc._step_cases(), S_INVENTED).args
    assert "Observation:" in turn and "Final Answer:" in turn
    assert (
        _case(rc._step_cases(), S_BLANKS).args[0]
        != _case(rc._step_cases(), S_BLANKS).args[0].rstrip()
    )


# --------------------------------------------------------------------------------------------
# Messages on shapes of answers the mutants do not cover


def test_an_error_observation_in_other_words_passes_but_not_any_text():
    turn, transcript = _case(rc._step_cases(), S_UNREADABLE).args
    want = rc._run_step(rc.reference_agent_step, turn, transcript)
    ok = {**want, "out": (f"{transcript}{turn}\nObservation: error: no idea what you mean\n", None)}
    assert rc._step_problem(ok, want) is None
    bare = {**want, "out": (f"{transcript}{turn}\nObservation: error: \n", None)}
    assert rc._step_problem(bare, want) is not None
    plain = {**want, "out": (f"{transcript}{turn}\nObservation: no idea\n", None)}
    assert rc._step_problem(plain, want) is not None


def test_the_parse_messages_name_types_and_mixtures():
    want = rc._run(rc.reference_parse_action, _case(rc._parse_cases(), P_FIRST).args[0])
    arguments = {**want["out"], "arguments": "17 * 23"}
    assert "must be a dict" in rc._parse_problem({**want, "out": arguments}, want)
    error_too = {**want["out"], "error": "odd"}
    assert "when 'error' is set" in rc._parse_problem({**want, "out": error_too}, want)
    extra = {**want["out"], "observation": None}
    assert "unexpected key 'observation'" in rc._parse_problem({**want, "out": extra}, want)
    later = {**want["out"], "thought": "  " + want["out"]["thought"]}
    assert "strip the thought" in rc._parse_problem({**want, "out": later}, want)


def test_an_empty_output_reported_as_an_error_is_named():
    want = rc._run_dispatch(rc.reference_dispatch, rc.CaseTools(), rc._action("echo", {"text": ""}))
    problem = rc._dispatch_problem({**want, "out": "error: None"}, want)
    assert "an empty output is still a success" in problem


# --------------------------------------------------------------------------------------------
# The grader's sandbox: the inputs are pickled there, the results come back as plain data


@pytest.mark.parametrize("cases", [rc._parse_cases, rc._dispatch_cases, rc._step_cases])
def test_case_inputs_travel_to_the_sandbox(cases):
    for case in cases():
        assert pickle.loads(pickle.dumps(case.args)) == case.args


@pytest.mark.parametrize(
    ("driver", "compare", "fn", "reference", "case"),
    [
        (rc._run, rc._parse_problem, parse_raw_decode, rc.reference_parse_action,
         _case(rc._parse_cases(), P_FIRST)),
        (rc._run_dispatch, rc._dispatch_problem, dispatch_with_advice, rc.reference_dispatch,
         _case(rc._dispatch_cases(), D_UNKNOWN)),
        (rc._run_step, rc._step_problem, step_own_error_words, rc.reference_agent_step,
         _case(rc._step_cases(), S_UNREADABLE)),
    ],
    ids=["parse_action", "dispatch", "agent_step"],
)  # fmt: skip
def test_answers_survive_the_trip_back_from_the_sandbox(driver, compare, fn, reference, case):
    received = driver(fn, *case.args)
    buffer = io.BytesIO()
    torch_save(received, buffer)
    back = load_reply(buffer.getvalue())["v"]
    assert compare(back, driver(reference, *case.args)) is None


def test_a_tool_result_sent_back_is_still_named():
    received = rc._run_dispatch(dispatch_returns_the_result, *rc._dispatch_cases()[0].args)
    buffer = io.BytesIO()
    torch_save(received, buffer)
    back = load_reply(buffer.getvalue())["v"]
    want = rc._run_dispatch(rc.reference_dispatch, *rc._dispatch_cases()[0].args)
    assert "you returned the ToolResult itself" in rc._dispatch_problem(back, want)


def torch_save(value, buffer):
    import torch

    torch.save({"v": encode(value)}, buffer)
