"""Checks of chapter 07's ReAct lab (``solutions/07_rag_and_agents/02_react.ipynb``).

    lab 02_react: parse_action, dispatch, agent_step

A model turn is text in the ReAct format of :mod:`llmlab.agents.react`::

    Thought: I need the product first.
    Action: {"tool": "calculator", "arguments": {"expression": "17 * 23"}}

- ``parse_action(text) -> dict``: the keys ``thought``, ``tool``, ``arguments``, ``final`` and
  ``error``, None where they do not apply, read as :func:`llmlab.agents.react.parse_step` reads
  them. The thought is the rest of the line after the first "Thought:", stripped (None when
  there is no "Thought:" or the rest of its line is blank). Of "Final Answer:" and "Action:",
  the one written first wins. The final answer is the first non-blank line after "Final
  Answer:", stripped; an empty one is an error. The action is the first balanced JSON object
  after "Action:" (it starts at the first "{" after it; braces inside JSON strings do not
  count, and a backslash escapes the next character of a string), which ``json.loads`` must
  read as an object with a string "tool" and an object "arguments". Everything else is an
  error: a non-empty message in ``error`` (worded as you like), ``tool``, ``arguments`` and
  ``final`` None, the thought as read. The function never raises for the model's text.
- ``dispatch(registry, parsed) -> str``: the observation the loop writes back for a parsed step
  that is not a final answer: ``"error: " + parsed["error"]`` for a step that could not be read
  (no tool runs); else the output of ``registry.call(tool, arguments)`` when the call succeeds,
  and ``"error: " + result.error`` when it fails (an unknown tool, arguments the tool's JSON
  schema rejects, a tool that raises). An error observation may add words of its own; it must
  start with "error: " and pass the message on.
- ``agent_step(generate, registry, transcript) -> (transcript, final)``: one step of the loop.
  The model's text, ``generate(transcript)``, is cut at "Observation:" (only the loop writes
  observations) and stripped at its end. A final answer returns ``(transcript + text + "\\n",
  final)``; anything else returns ``(transcript + text + "\\nObservation: " + observation +
  "\\n", None)`` with the observation of ``dispatch`` (an error observation may be worded
  differently from the reference's, as long as it starts with "error: ").

The cases catch the usual slips, and the message names the slip when the answer matches it: in
``parse_action``, the JSON cut at its first "}" (which closes the nested arguments), a greedy
regex ``\\{.*\\}`` that runs to the last "}" of the text, braces inside JSON strings counted, an
escaped quote taken for the end of a string, a JSON object expected right after "Action:" (the
model put it on the next line, in a code fence), the last of two actions taken, ``json.loads``
left to raise, single-quoted pseudo-JSON accepted (``ast.literal_eval``, ``eval``), "tool" and
"arguments" not type-checked (or read with ``call["tool"]``, which raises), an action preferred
to a final answer written before it, a final answer preferred to an action written before it,
the lines after the final answer's kept, the answer on the line after "Final Answer:" missed,
an empty final answer accepted, a turn with neither an action nor an answer returned without an
error, the thought's following lines kept, an empty thought returned as "", the labels kept,
both an action and a final answer returned, an error next to an action, five keys not all
there; in ``dispatch``, an exception let out on an unknown tool, the error without its
"error: " prefix (or with "Error:"), the tool's function called directly (so its JSON schema is
never checked), errors swallowed as an empty string, the output's truthiness tested instead of
``result.ok`` (an empty output is a success), a step that could not be parsed dispatched
anyway, the ToolResult (or its ``str``) returned instead of its text; in ``agent_step``, the
model's invented "Observation:" kept, the text not stripped at its end, the observation written
without its space or its newline, a final answer dispatched or given an observation, the new
step returned without the old transcript, ``generate`` called more than once or with something
else than the transcript.

Each ``check_NAME(fn)`` prints one line and returns a :class:`llmlab.checks.CheckResult`
whose ``.fn`` the lab keeps using::

    parse_action = check_parse_action(parse_action).fn

The references delegate to :mod:`llmlab.agents.react` (``parse_step``; the dispatch and the
step are those of ``run_agent``); an answer that calls :mod:`llmlab.agents` to parse, or
``llmlab.agents.react`` in the other two exercises, is flagged (``dispatch`` must call the
registry's ``call``, which is :mod:`llmlab.agents.tools`). The registry of the ``dispatch`` and
``agent_step`` cases, :func:`case_registry` (the calculator, and three small tools: repeat,
echo and a weather tool that always fails), is built by the case's driver where the answer
runs: its tools are functions, which cannot travel to the grader's sandbox as inputs.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llmlab.agents.react import ACTION, FINAL, OBSERVATION, parse_step
from llmlab.agents.tools import Tool, ToolRegistry, calculator
from llmlab.checks import Case, CheckResult, describe, run_check

#: The package's parser computes the answer: an answer that calls it is flagged.
FORBID_PARSE = ("llmlab.agents",)
#: Dispatch goes through the registry (llmlab.agents.tools); the loop itself is off limits.
FORBID_LOOP = ("llmlab.agents.react",)

KEYS = ("thought", "tool", "arguments", "final", "error")
THOUGHT = "Thought:"
ERROR = "error: "

# --------------------------------------------------------------------------------------------
# References


def reference_parse_action(text: str) -> dict:
    """``llmlab.agents.react.parse_step(text)`` as a dict of its five fields."""
    step = parse_step(text)
    return {
        "thought": step.thought,
        "tool": step.tool,
        "arguments": step.arguments,
        "final": step.final,
        "error": step.error,
    }


def reference_dispatch(registry: ToolRegistry, parsed: dict) -> str:
    """The observation of a parsed step, as ``run_agent`` writes it: the tool's output, or
    ``"error: ..."`` for a step that could not be read or a call that failed."""
    if parsed["error"] is not None:
        return ERROR + parsed["error"]
    result = registry.call(parsed["tool"], parsed["arguments"])
    return result.output if result.ok else ERROR + result.error


def reference_agent_step(
    generate: Callable[[str], str], registry: ToolRegistry, transcript: str
) -> tuple[str, str | None]:
    """One step of ``run_agent``: the model's turn, cut at "Observation:" and stripped, then
    either the final answer or the observation of its action."""
    text = str(generate(transcript)).split(OBSERVATION, 1)[0].rstrip()
    parsed = reference_parse_action(text)
    if parsed["error"] is None and parsed["final"] is not None:
        return transcript + text + "\n", parsed["final"]
    observation = reference_dispatch(registry, parsed)
    return f"{transcript}{text}\n{OBSERVATION} {observation}\n", None


# --------------------------------------------------------------------------------------------
# The registry of the cases


def _repeat(text: str, times: int) -> str:
    return text * times


def _echo(text: str) -> str:
    return text


def _weather(city: str) -> str:
    raise ConnectionError(f"the weather service did not answer for {city}")


def _object(**properties: dict) -> dict:
    """The JSON schema of an object with these (all required) properties, nothing else."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def case_registry() -> ToolRegistry:
    """The registry of the ``dispatch`` and ``agent_step`` cases: the package's calculator,
    ``repeat(text, times)`` (times an integer from 1 to 5), ``echo(text)`` and ``weather(city)``,
    which always raises ConnectionError."""
    registry = ToolRegistry()
    registry.register(calculator())
    registry.register(
        Tool(
            "repeat",
            "Repeat a text 1 to 5 times.",
            _object(text={"type": "string"}, times={"type": "integer", "minimum": 1, "maximum": 5}),
            _repeat,
        )
    )
    registry.register(
        Tool("echo", "Return the text as it is.", _object(text={"type": "string"}), _echo)
    )
    registry.register(
        Tool("weather", "Today's weather in a city.", _object(city={"type": "string"}), _weather)
    )
    return registry


@dataclass(frozen=True)
class CaseTools:
    """Stands for :func:`case_registry` among a case's inputs; the case's driver builds the
    registry where the answer runs (a registry holds functions, which the grader cannot send
    to its sandbox)."""

    def __repr__(self) -> str:
        return "ToolRegistry(calculator, repeat, echo, weather)"


# --------------------------------------------------------------------------------------------
# Drivers: what a case sends back


def _run(fn: Callable, *args: Any) -> dict:
    """``parse_action``: what it returned, and the input."""
    return {"out": fn(*args), "args": args}


def _run_dispatch(fn: Callable, tools: CaseTools, parsed: dict) -> dict:
    """``dispatch`` on a fresh :func:`case_registry`."""
    return {"out": fn(case_registry(), parsed), "args": (tools, parsed)}


def _run_step(fn: Callable, generate_returns: str, transcript: str) -> dict:
    """``agent_step`` with a model that returns ``generate_returns`` and records what it was
    shown, on a fresh :func:`case_registry`."""
    shown: list = []

    def generate(text: Any) -> str:
        shown.append(text if isinstance(text, str) else describe(text))
        return generate_returns

    out = fn(generate, case_registry(), transcript)
    return {"out": out, "shown": shown, "args": (generate_returns, transcript)}


# --------------------------------------------------------------------------------------------
# Reading model text: the pieces the messages need


def _show(value: Any, limit: int = 70) -> str:
    """``repr(value)``, cut to ``limit`` characters."""
    try:
        text = repr(value)
    except Exception:
        text = describe(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _balanced_end(text: str, start: int, strings: bool = True, escapes: bool = True) -> int | None:
    """The index after the "}" that balances the "{" at ``text[start]``, None when none does.

    ``strings=False`` counts the braces inside JSON strings too, ``escapes=False`` ends a
    string at any double quote (two slips, for the messages).
    """
    depth, in_string, escaped = 0, False, False
    for i in range(start, len(text)):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\" and escapes:
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"' and strings:
            in_string = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def _actions(text: str) -> list[tuple[str, dict]]:
    """Every well-formed action of ``text``, one per "Action:", in order."""
    found = []
    at = text.find(ACTION)
    while at >= 0:
        start = text.find("{", at + len(ACTION))
        end = _balanced_end(text, start) if start >= 0 else None
        if end is not None:
            try:
                call = json.loads(text[start:end])
            except json.JSONDecodeError:
                call = None
            if (
                isinstance(call, dict)
                and isinstance(call.get("tool"), str)
                and isinstance(call.get("arguments"), dict)
            ):
                found.append((call["tool"], call["arguments"]))
        at = text.find(ACTION, at + len(ACTION))
    return found


_JSON_KIND = {str: "a string", int: "a number", float: "a number", bool: "a boolean"}


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return _JSON_KIND.get(type(value), type(value).__name__)


def _why_error(text: str) -> str:
    """Why ``text`` is an error step, in words."""
    final_at, action_at = text.find(FINAL), text.find(ACTION)
    if final_at >= 0 and (action_at < 0 or final_at < action_at):
        return (
            "its 'Final Answer:' is empty (nothing but blanks after it), and an empty answer is "
            "no answer"
        )
    if action_at < 0:
        return (
            "the text has neither 'Action:' nor 'Final Answer:' (the error reminds the model of "
            "the format it must follow)"
        )
    start = text.find("{", action_at + len(ACTION))
    if start < 0:
        return "there is no JSON object after 'Action:'"
    end = _balanced_end(text, start)
    if end is None:
        return "the action's JSON object is never closed: no '}' balances its first '{'"
    blob = text[start:end]
    try:
        call = json.loads(blob)
    except json.JSONDecodeError as err:
        try:
            literal = ast.literal_eval(blob)
        except Exception:
            literal = None
        if isinstance(literal, dict):
            return (
                "the action is a Python dict in single quotes, not JSON: json.loads refuses it, "
                "and so must your parser (ast.literal_eval would accept it, and eval would also "
                "run any code the model wrote; the error tells the model to write JSON)"
            )
        return (
            f"the action is not valid JSON (json.loads says: {err.msg} at column {err.colno}); "
            "catch json.JSONDecodeError and return it as the error"
        )
    if "tool" not in call:
        keys = ", ".join(repr(k) for k in call) or "none"
        return f'its JSON object has no "tool" (its keys: {keys})'
    if not isinstance(call["tool"], str):
        return f'its "tool" is {_json_kind(call["tool"])} ({_show(call["tool"])}), not a string'
    if "arguments" not in call:
        return 'its JSON object has no "arguments"'
    return (
        f'its "arguments" is {_json_kind(call["arguments"])} ({_show(call["arguments"])}), not '
        "a JSON object"
    )


def _blob_slip(text: str) -> str:
    """What a parser that found no valid action in ``text`` (which holds one) got wrong."""
    action_at = text.find(ACTION) + len(ACTION)
    start = text.find("{", action_at)
    end = _balanced_end(text, start)
    before = text[action_at:start].strip()
    if before:
        return (
            f"the JSON object starts at the first '{{' after 'Action:', wherever it is: here it "
            f"comes on the next line, after {before!r} (a code fence), and it is valid"
        )
    if _balanced_end(text, start, escapes=False) != end:
        return (
            "the JSON is valid: its string holds an escaped quote \\\" followed by a '}'; a "
            'backslash escapes the next character, so \\" does not end the string, and the '
            "'}' after it is text"
        )
    if _balanced_end(text, start, strings=False) != end:
        return (
            "the JSON is valid: a '}' inside a JSON string (\"...\") is text, not the end of an "
            "object; skip the braces while you are inside a string"
        )
    if text.rfind("}") + 1 != end:
        return (
            "the object ends at the '}' that balances its first '{', not at the last '}' of the "
            f"text: here {text[end:].strip()[:40]!r} follows it (a greedy regex like \\{{.*\\}} "
            "runs on to the last '}')"
        )
    if text.find("}", start) + 1 != end:
        return (
            "the arguments are a nested object, so the first '}' closes them, not the action: "
            "count the depth, +1 at '{' and -1 at '}', and stop where it is back to 0"
        )
    return 'the action is a valid JSON object with a string "tool" and an object "arguments"'


def _same_json(a: Any, b: Any) -> bool:
    """Whether two values are the same JSON: same types (1 is not 1.0 nor True), same items."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_json(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


# --------------------------------------------------------------------------------------------
# parse_action


def _parse_cases() -> list[Case]:
    first_object = (
        "the action is the first BALANCED JSON object after 'Action:': from the first '{', "
        "count +1 at '{' and -1 at '}' outside strings, and stop where the depth is back to 0."
    )
    order = (
        "find both labels, text.find('Final Answer:') and text.find('Action:'): the one "
        "written first (the smaller index, -1 meaning absent) decides what the step is."
    )
    strings = (
        "inside a JSON string (from one unescaped '\"' to the next) braces are text; a "
        "backslash escapes the character after it."
    )
    error = (
        "Return an error, {'error': 'what is wrong', 'thought': ..., the others None}: never "
        "raise for the model's text, and never eval it."
    )
    thought_line = (
        "thought = text.split('Thought:', 1)[1].split('\\n', 1)[0].strip(), or None when that "
        "is empty or there is no 'Thought:'."
    )
    final_line = (
        "the final answer is the first non-blank line after 'Final Answer:': "
        "text[at + len('Final Answer:'):].strip().split('\\n', 1)[0].strip()."
    )
    calc = '{"tool": "calculator", "arguments": {"expression": "17 * 23"}}'
    cases = [
        (
            "a thought and an action whose arguments are a nested object",
            f"Thought: I need the product of 17 and 23.\nAction: {calc}",
            first_object,
        ),
        (
            "a thought and a final answer",
            "Thought: The tool says 391, so I know the answer.\nFinal Answer: 391",
            final_line,
        ),
        (
            "no 'Thought:' line: the thought is None; an integer argument stays an integer",
            'Action: {"tool": "date", "arguments": {"operation": "add_days", "date": '
            '"2025-03-14", "days": -30}}',
            thought_line,
        ),
        (
            "an empty 'Thought:' line: the thought is None",
            "Thought:   \nFinal Answer: 42",
            thought_line,
        ),
        (
            "a thought that goes on over a second line: only its first line counts",
            "Thought: I need today's date.\nThe date tool knows it.\n"
            'Action: {"tool": "date", "arguments": {"operation": "today"}}',
            thought_line,
        ),
        (
            "text after the final answer's line: only that line counts",
            "Thought: Done.\nFinal Answer: 391\nThe product of 17 and 23 is 391, computed with "
            "the calculator.",
            final_line,
        ),
        (
            "a final answer written before an action: the final answer wins",
            "Thought: I know this one.\nFinal Answer: Paris\n"
            'Action: {"tool": "search", "arguments": {"query": "capital of France"}}',
            order,
        ),
        (
            "an action written before an invented observation and a final answer: the action wins",
            'Thought: Let me compute it.\nAction: {"tool": "calculator", "arguments": '
            '{"expression": "2 ** 10"}}\nObservation: 1000\nThought: So it is 1000.\n'
            "Final Answer: 1000",
            order,
        ),
        (
            "text with a '}' after the JSON, on the same line",
            'Thought: Compute it.\nAction: {"tool": "calculator", "arguments": {"expression": '
            '"(2 + 3) * 4"}} and I will store the result in {total}',
            first_object,
        ),
        (
            "two actions in one turn: the first one is the step's action",
            'Thought: Two things to do.\nAction: {"tool": "calculator", "arguments": '
            '{"expression": "6 * 7"}}\nAction: {"tool": "date", "arguments": {"operation": '
            '"today"}}',
            "the step's action is the first one: the model wrote the second before it had seen "
            "the first one's observation.",
        ),
        (
            "the JSON on the line after 'Action:', in a code fence",
            'Thought: Which day is it?\nAction:\n```json\n{"tool": "date", "arguments": '
            '{"operation": "weekday", "date": "2025-03-14"}}\n```',
            "start at the first '{' after 'Action:', text.find('{', at + len('Action:')), "
            "wherever it is.",
        ),
        (
            "a '}' inside a JSON string",
            'Action: {"tool": "echo", "arguments": {"text": "a closing brace } inside"}}',
            strings,
        ),
        (
            "an escaped quote and a '}' inside a JSON string",
            'Action: {"tool": "echo", "arguments": {"text": "she said \\"hi}\\" and left"}}',
            strings,
        ),
        (
            "not JSON: the expression is not in quotes",
            'Thought: Multiply.\nAction: {"tool": "calculator", "arguments": {"expression": '
            "17 * 23}}",
            "json.loads raises json.JSONDecodeError on it: catch it and return the error. " + error,
        ),
        (
            "single quotes are not JSON",
            "Thought: I will call the calculator.\nAction: {'tool': 'calculator', "
            "'arguments': {'expression': '12 / 4'}}",
            "JSON strings are in double quotes: json.loads refuses single quotes, and so must "
            "you (no ast.literal_eval, no eval). " + error,
        ),
        (
            "a JSON object that is never closed",
            f"Thought: Multiply.\nAction: {calc[:-1]}",
            error,
        ),
        (
            '"arguments" is a string, not an object',
            'Action: {"tool": "calculator", "arguments": "17 * 23"}',
            'check isinstance(call.get("tool"), str) and isinstance(call.get("arguments"), dict); '
            "anything else is an error.",
        ),
        (
            'no "tool" key: the model wrote "name"',
            'Action: {"name": "calculator", "arguments": {"expression": "17 * 23"}}',
            'read the keys with call.get("tool"), which gives None for a missing key, and check '
            "the types; anything else is an error.",
        ),
        (
            '"tool" is a list, not a string',
            'Action: {"tool": ["calculator"], "arguments": {"expression": "17 * 23"}}',
            'check isinstance(call.get("tool"), str); anything else is an error.',
        ),
        ("neither 'Action:' nor 'Final Answer:'", "I think the answer is probably 391.", error),
        (
            "an empty final answer",
            "Thought: I am done.\nFinal Answer:   ",
            final_line + " " + error,
        ),
        (
            "the final answer on the line after 'Final Answer:'",
            "Thought: Got it.\nFinal Answer:\n391",
            final_line,
        ),
    ]
    return [Case(name, (text,), hint=hint) for name, text, hint in cases]


def _kind(step: dict) -> str:
    """What a parsed step says: "action", "final", "error", "nothing" or a mixture."""
    parts = [
        name
        for name, present in (
            ("error", step["error"] is not None),
            ("final", step["final"] is not None),
            ("action", step["tool"] is not None or step["arguments"] is not None),
        )
        if present
    ]
    return "+".join(parts) or "nothing"


def _keys_problem(got: Any) -> str | None:
    keys = ", ".join(KEYS)
    if got is None:
        return f"expected a dict with the keys {keys}, received None: is a `return` missing?"
    if not isinstance(got, dict):
        return (
            f"expected a dict with the keys {keys} (None for those that do not apply), received "
            f"{describe(got)}"
        )
    missing = [key for key in KEYS if key not in got]
    if missing:
        names = ", ".join(repr(key) for key in missing)
        return (
            f"your dict lacks {names}: return all five keys, {keys}, with None for those that "
            "do not apply"
        )
    extra = [key for key in got if key not in KEYS]
    if extra:
        return f"unexpected key {_show(extra[0])}: the dict has exactly the keys {keys}"
    return None


def _types_problem(got: dict) -> str | None:
    for key in ("thought", "tool", "final", "error"):
        if got[key] is not None and not isinstance(got[key], str):
            return f"{key!r} must be a str or None, received {describe(got[key])}"
    if got["arguments"] is not None and not isinstance(got["arguments"], dict):
        return (
            "'arguments' must be a dict (the JSON object) or None, received "
            f"{describe(got['arguments'])}"
        )
    if got["error"] == "":
        return (
            "'error' is an empty string: an error is a message that says what is wrong (and "
            "None when nothing is)"
        )
    return None


def _received(got: dict, kind: str) -> str:
    """What a parsed step holds, in words."""
    if kind == "final":
        return f"the final answer {_show(got['final'])}"
    if kind == "action":
        return f"an action (tool {_show(got['tool'])}, arguments {_show(got['arguments'])})"
    if kind == "nothing":
        return "no error: every field None"
    return f"{kind.replace('+', ' and ')} ({_show({k: got[k] for k in KEYS}, 120)})"


def _should_be_error(text: str, got: dict, kind: str) -> str:
    why = _why_error(text)
    if kind == "final" and isinstance(got["final"], str) and not got["final"].strip():
        return f"an empty final answer is an error: {why}; set 'error' and leave 'final' None"
    return (
        f"this turn is an error: {why}. You returned {_received(got, kind)}; return an error "
        "instead, which goes back to the model so that it can fix its next turn"
    )


def _order_words(text: str, want: dict) -> str:
    if text.find(FINAL) < text.find(ACTION):
        return (
            f"'Final Answer:' comes before 'Action:' in this turn, so the step is the final "
            f"answer, {want['final']!r}: of the two, the one written first wins, and a model "
            "that has answered is done"
        )
    return (
        f"'Action:' comes before 'Final Answer:' in this turn, so the step is the action (tool "
        f"{want['tool']!r}): what the model wrote after its action (an observation, an answer) "
        "it wrote before the tool ran, and it is ignored"
    )


def _thought_problem(text: str, got: str | None, want: str | None) -> str | None:
    if got == want:
        return None
    if want is None:
        if THOUGHT not in text:
            return f"this turn has no 'Thought:': the thought is None, received {_show(got)}"
        return (
            f"the 'Thought:' line is blank, so the thought is None; received {_show(got)} (an "
            "empty thought is None, not '')"
        )
    if got is None:
        return f"the thought is the rest of the 'Thought:' line, {want!r}; received None"
    if got.startswith(want) and "\n" in got:
        return (
            f"the thought is the rest of the 'Thought:' line only, {want!r}: you kept the lines "
            "after it (cut at the first newline)"
        )
    if THOUGHT in got:
        return f"the thought is what follows 'Thought:', {want!r}, without the label"
    if got.strip() == want:
        return f"strip the thought: expected {want!r}, received {got!r}"
    later = [part.split("\n", 1)[0].strip() for part in text.split(THOUGHT)[2:]]
    if got in later:
        return f"the thought is after the FIRST 'Thought:', {want!r}; you took a later one, {got!r}"
    return f"'thought': expected {want!r}, received {_show(got)}"


def _parse_problem(received: dict, expected: dict) -> str | None:
    got, want = received["out"], expected["out"]
    (text,) = expected["args"]
    problem = _keys_problem(got)
    if problem is not None:
        return problem
    want_kind, got_kind = _kind(want), _kind(got)
    if want_kind == "error" and "error" not in got_kind:
        return _should_be_error(text, got, got_kind)
    problem = _types_problem(got)
    if problem is not None:
        return problem
    if got_kind.startswith("error+"):
        return (
            f"when 'error' is set, 'tool', 'arguments' and 'final' are None: an error step has "
            f"nothing else to use (received {_received(got, got_kind)})"
        )
    if got_kind == "final+action":
        return "a step is an action or a final answer, never both: " + _order_words(text, want)
    if want_kind == "action":
        if got_kind == "final":
            return _order_words(text, want)
        if got_kind == "error":
            return (
                f"expected the action (tool {want['tool']!r}, arguments "
                f"{_show(want['arguments'])}), received an error ({_show(got['error'])}): "
                + _blob_slip(text)
            )
        if got_kind == "nothing":
            return (
                f"expected the action (tool {want['tool']!r}), received no action, final "
                "answer or error (every field None)"
            )
        call = (got["tool"], got["arguments"])
        if got["tool"] != want["tool"] or not _same_json(got["arguments"], want["arguments"]):
            actions = _actions(text)
            if any(call[0] == t and _same_json(call[1], a) for t, a in actions[1:]):
                return (
                    f"this turn holds {len(actions)} actions: the step's action is the FIRST one "
                    f"(tool {want['tool']!r}), since the model wrote the others before it saw "
                    f"the first one's observation; you took a later one (tool {got['tool']!r})"
                )
            if got["tool"] != want["tool"]:
                return f"'tool': expected {want['tool']!r}, received {_show(got['tool'])}"
            return (
                f"'arguments': expected {_show(want['arguments'])}, received "
                f"{_show(got['arguments'])} (json.loads keeps the JSON's own types)"
            )
    elif want_kind == "final":
        if got_kind == "action":
            return _order_words(text, want)
        if got_kind == "error":
            line = text[text.find(FINAL) + len(FINAL) :].split("\n", 1)[0]
            if not line.strip():
                return (
                    f"the answer may start on the line after 'Final Answer:': it is the first "
                    f"non-blank line after it, {want['final']!r}; strip what follows 'Final "
                    "Answer:' before you take its first line"
                )
            return (
                f"expected the final answer {want['final']!r}, received an error "
                f"({_show(got['error'])})"
            )
        if got_kind == "nothing":
            return (
                f"expected the final answer {want['final']!r}, received no action, final answer "
                "or error (every field None)"
            )
        final, answer = got["final"], want["final"]
        if final != answer:
            if FINAL in final:
                return (
                    f"the final answer is what follows 'Final Answer:', {answer!r}, without the "
                    "label"
                )
            if "\n" in final.strip() and final.strip().startswith(answer):
                return (
                    f"the final answer is one line, the first non-blank one after 'Final "
                    f"Answer:', {answer!r}: you kept the lines after it"
                )
            if final.strip() == answer:
                return f"strip the final answer: expected {answer!r}, received {final!r}"
            return f"'final': expected {answer!r}, received {_show(final)}"
    return _thought_problem(text, got["thought"], want["thought"])


def check_parse_action(parse_action: Callable) -> CheckResult:
    """Check ``parse_action(text) -> {"thought", "tool", "arguments", "final", "error"}``."""
    return run_check(
        "parse_action",
        parse_action,
        reference_parse_action,
        _parse_cases(),
        hint="thought: the rest of the first 'Thought:' line; whichever of 'Final Answer:' and "
        "'Action:' comes first decides; the action is the first balanced JSON object after "
        "'Action:', json.loads-ed inside try/except, with a str 'tool' and a dict 'arguments'; "
        "anything else is an error message.",
        run=_run,
        compare=_parse_problem,
        arg_names=("text",),
        forbid=FORBID_PARSE,
    )


# --------------------------------------------------------------------------------------------
# dispatch


def _action(tool: Any, arguments: Any, thought: str | None = None) -> dict:
    return {"thought": thought, "tool": tool, "arguments": arguments, "final": None, "error": None}


def _dispatch_cases() -> list[Case]:
    tools = CaseTools()
    call = (
        "result = registry.call(parsed['tool'], parsed['arguments']); return result.output if "
        "result.ok else 'error: ' + result.error."
    )
    failed = (
        "registry.call never raises: a failed call is a ToolResult with ok=False and the "
        "message in result.error; the observation is 'error: ' + result.error."
    )
    unreadable = reference_parse_action("Thought: I will multiply.\nAction: {'tool': 'calculator'}")
    cases = [
        (
            "the calculator on '17 * 23': the observation is the tool's output",
            _action("calculator", {"expression": "17 * 23"}, "I need the product."),
            call,
        ),
        (
            "an unknown tool, 'calculater' (a typo)",
            _action("calculater", {"expression": "17 * 23"}),
            failed,
        ),
        (
            "arguments the schema rejects: 'expr' where the calculator takes 'expression'",
            _action("calculator", {"expr": "17 * 23"}),
            "registry.call checks the arguments against the tool's JSON schema before the tool "
            "runs, and says what is wrong. " + failed,
        ),
        (
            "repeat with times=9, above its schema's maximum of 5",
            _action("repeat", {"text": "ab", "times": 9}),
            "the schema bounds times to 1..5; registry.call checks it (calling the tool's "
            "function yourself skips the check). " + failed,
        ),
        (
            "a tool that raises: the weather service is down",
            _action("weather", {"city": "Oslo"}),
            failed,
        ),
        (
            "a step the parser could not read: no tool runs",
            unreadable,
            "when parsed['error'] is set, return 'error: ' + parsed['error'] without calling "
            "the registry.",
        ),
        (
            "the calculator refuses code: __import__('os')",
            _action("calculator", {"expression": "__import__('os').getcwd()"}),
            failed,
        ),
        (
            "an empty output is still a success: echo ''",
            _action("echo", {"text": ""}),
            "a call succeeded when result.ok is True, whatever its output (here ''); test "
            "result.ok, not the output.",
        ),
        ("repeat 'ab' 3 times: 'ababab'", _action("repeat", {"text": "ab", "times": 3}), call),
        (
            "a division by zero in the calculator",
            _action("calculator", {"expression": "1 / 0"}),
            failed,
        ),
    ]
    return [Case(name, (tools, parsed), hint=hint) for name, parsed, hint in cases]


def _dispatch_problem(received: dict, expected: dict) -> str | None:
    got, want = received["out"], expected["out"]
    _, parsed = expected["args"]
    if got is None:
        return "expected the observation, a str, received None: is a `return` missing?"
    if type(got).__name__ == "ToolResult":
        return (
            "you returned the ToolResult itself: the observation is text, result.output when "
            "result.ok, else 'error: ' + result.error"
        )
    if not isinstance(got, str):
        return f"expected the observation as a str, received {describe(got)}"
    if "ToolResult(" in got:
        return (
            "you wrote the ToolResult itself (its str) into the observation: the observation is "
            "result.output when result.ok, else 'error: ' + result.error"
        )
    if not want.startswith(ERROR):
        if got == want:
            return None
        if got.startswith("error") or got.startswith("Error"):
            empty = (
                ": an empty output is still a success; test result.ok, not whether the output "
                "is empty"
                if want == ""
                else ""
            )
            return (
                f"this call succeeds (ok=True, output {want!r}), so the observation is the "
                f"tool's output; received {_show(got)}{empty}"
            )
        return f"expected the tool's output {want!r}, received {_show(got)}"
    message = want[len(ERROR) :]
    if got.startswith(ERROR) and message in got:
        return None
    if got == "":
        return (
            "received an empty string: a failed call's result.output is '', which tells the "
            f"model nothing; the observation is 'error: ' + result.error, {want!r}"
        )
    if got == message:
        return (
            f"the observation of a failure starts with 'error: ', then the message: {want!r}; "
            "the prefix tells the model that this is an error, not the tool's output"
        )
    if got.lower().startswith("error") and not got.startswith(ERROR):
        return (
            f"an error observation starts with exactly 'error: ' (lower case, a colon, a space); "
            f"received {_show(got)}"
        )
    if parsed["error"] is not None:
        return (
            f"this step could not be parsed (parsed['error'] = {parsed['error']!r}): no tool "
            f"runs, and the observation is 'error: ' + parsed['error']; received {_show(got)}"
        )
    if message.startswith("arguments"):
        return (
            f"the arguments break the tool's JSON schema ({message}): registry.call checks "
            "them before the tool runs and says what is wrong; call registry.call(tool, "
            f"arguments), not the tool's function; received {_show(got)}"
        )
    if not got.startswith(ERROR):
        return (
            f"this call fails ({message}): the observation is 'error: ' + result.error; "
            f"received {_show(got)}"
        )
    return (
        f"pass the registry's message on after 'error: ', so that the model can fix its call: "
        f"expected {want!r}, received {_show(got)}"
    )


def check_dispatch(dispatch: Callable) -> CheckResult:
    """Check ``dispatch(registry, parsed) -> str``, the observation of a parsed step."""
    return run_check(
        "dispatch",
        dispatch,
        reference_dispatch,
        _dispatch_cases(),
        hint="if parsed['error'] is not None: return 'error: ' + parsed['error']; else result = "
        "registry.call(parsed['tool'], parsed['arguments']) and return result.output if "
        "result.ok else 'error: ' + result.error.",
        run=_run_dispatch,
        compare=_dispatch_problem,
        arg_names=("registry", "parsed"),
        forbid=FORBID_LOOP,
    )


# --------------------------------------------------------------------------------------------
# agent_step

_PROMPT = "You solve tasks with tools: calculator, repeat, echo, weather.\nTask: What is 17 * 23?\n"


def _step_cases() -> list[Case]:
    calc = '{"tool": "calculator", "arguments": {"expression": "17 * 23"}}'
    first = f"Thought: I need the product.\nAction: {calc}"
    after_first = f"{_PROMPT}{first}\n{OBSERVATION} 391\n"
    observation = (
        "text = generate(transcript).split('Observation:', 1)[0].rstrip(); then return "
        "(transcript + text + '\\nObservation: ' + dispatch(registry, parse_action(text)) + "
        "'\\n', None)."
    )
    final = (
        "a final answer ends the run: return (transcript + text + '\\n', parsed['final']), "
        "with no observation."
    )
    cases = [
        ("an action: the calculator's output is the observation", first, _PROMPT, observation),
        (
            "a final answer ends the run",
            "Thought: The tool says 391.\nFinal Answer: 391",
            after_first,
            final,
        ),
        (
            "blank lines and spaces after the action",
            'Thought: And the text once more.\nAction: {"tool": "repeat", "arguments": '
            '{"text": "391 ", "times": 2}}\n\n   ',
            after_first,
            "strip the end of the model's text (.rstrip()) before you append it.",
        ),
        (
            "the model invents its own observation: cut its text there",
            'Thought: Multiply.\nAction: {"tool": "calculator", "arguments": {"expression": '
            '"6 * 7"}}\nObservation: 40\nThought: So it is 40.\nFinal Answer: 40',
            _PROMPT,
            "only the loop writes observations: cut the model's text at the first "
            "'Observation:', text.split('Observation:', 1)[0].",
        ),
        (
            "a turn the parser cannot read: its error is the observation",
            "I think it is 391.",
            _PROMPT,
            observation,
        ),
        (
            "an unknown tool: the registry's error is the observation",
            'Action: {"tool": "calculater", "arguments": {"expression": "17 * 23"}}',
            _PROMPT,
            observation,
        ),
        (
            "a final answer written before an action: the run ends",
            'Thought: I know it.\nFinal Answer: 391\nAction: {"tool": "echo", "arguments": '
            '{"text": "x"}}',
            after_first,
            final,
        ),
    ]
    return [Case(name, (turn, transcript), hint=hint) for name, turn, transcript, hint in cases]


def _first_difference(got: str, want: str) -> str:
    i = next(
        (i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b),
        min(len(got), len(want)),
    )
    start = max(0, i - 15)
    return (
        f"from character {i} on, expected {want[start : i + 35]!r}, received "
        f"{got[start : i + 35]!r}"
    )


def _step_problem(received: dict, expected: dict) -> str | None:
    got, shown = received["out"], received["shown"]
    turn, transcript = expected["args"]
    want_t, want_f = expected["out"]
    if not shown:
        return (
            "your function never called generate(transcript): a step starts with the model's "
            "turn, text = generate(transcript)"
        )
    if len(shown) > 1:
        return (
            f"your function called generate {len(shown)} times: one step is one turn of the "
            "model, one call (keep its text in a variable)"
        )
    if shown[0] != transcript:
        return (
            f"generate was called with {_show(shown[0], 50)}, not the transcript: the model "
            "continues the whole transcript, as it is"
        )
    if got is None:
        return "expected a pair (new_transcript, final), received None: is a `return` missing?"
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return f"expected a pair (new_transcript, final), received {describe(got)}"
    got_t, got_f = got
    if not isinstance(got_t, str):
        return f"expected the new transcript as a str first, received {describe(got_t)}"
    if got_f is not None and not isinstance(got_f, str):
        return f"expected the final answer (a str) or None second, received {describe(got_f)}"
    text = turn.split(OBSERVATION, 1)[0].rstrip()
    if want_f is not None:
        if got_f is None:
            return (
                f"this turn is a final answer, {want_f!r}: return it second, (transcript + text "
                "+ '\\n', final), so that the run stops"
            )
        if got_f != want_f:
            return f"the final answer: expected {want_f!r}, received {_show(got_f)}"
        if got_t == want_t:
            return None
        if got_t.startswith(transcript + text) and OBSERVATION in got_t[len(transcript) :]:
            return (
                "a final answer gets no observation: no tool runs; append the text and a "
                "newline, transcript + text + '\\n'"
            )
    elif got_f is not None:
        return (
            f"this turn is not a final answer (its text: {_show(text, 60)}): return None "
            f"second, the run goes on; received {_show(got_f)}"
        )
    if got_t == want_t:
        return None
    prefix = f"{transcript}{text}\n{OBSERVATION} "
    if want_f is None and want_t[len(prefix) :].startswith(ERROR):
        body = got_t[len(prefix) : -1] if got_t.startswith(prefix) else ""
        if got_t.endswith("\n") and body.startswith(ERROR) and body[len(ERROR) :].strip():
            if OBSERVATION not in body:
                return None  # an error observation in the answer's own words
    if not got_t.startswith(transcript):
        if transcript and want_t.endswith(got_t):
            return (
                "return the whole transcript, the old one and then the new step (transcript + "
                "text + ...), not the new step alone"
            )
        return "the new transcript starts with the old one, unchanged: transcript + text + ..."
    if OBSERVATION in turn:
        invented = turn.split(OBSERVATION, 1)[1].split("\n", 1)[0]
        if OBSERVATION + invented in got_t[len(transcript) :]:
            return (
                f"the model wrote its own 'Observation:{invented}' (inventing the tool's "
                "answer): cut its text at the first 'Observation:', before you parse it, so "
                "that only the loop writes observations"
            )
    if got_t + "\n" == want_t:
        return (
            "end the step with a newline, transcript + text + '\\nObservation: ' + observation "
            "+ '\\n', so that the model's next turn starts on a line of its own"
        )
    new, want_new = got_t[len(transcript) :], want_t[len(transcript) :]
    if new.replace(OBSERVATION, OBSERVATION + " ") == want_new:
        return (
            "write a space after the label, 'Observation: ' + observation, as the model writes "
            "'Thought: ' and 'Action: '"
        )
    raw = turn.split(OBSERVATION, 1)[0]
    if raw != text and got_t.startswith(transcript + raw):
        return (
            f"strip the end of the model's text before you append it (text.rstrip()): it ends "
            f"with {raw[len(text) :]!r}"
        )
    return (
        "append the step as text + '\\nObservation: ' + observation + '\\n' (a space after "
        "the colon, a newline at the end): " + _first_difference(got_t, want_t)
    )


def check_agent_step(agent_step: Callable) -> CheckResult:
    """Check ``agent_step(generate, registry, transcript) -> (new_transcript, final)``."""
    return run_check(
        "agent_step",
        agent_step,
        reference_agent_step,
        _step_cases(),
        hint="text = generate(transcript).split('Observation:', 1)[0].rstrip(); parsed = "
        "parse_action(text); a final answer returns (transcript + text + '\\n', final); else "
        "(transcript + text + '\\nObservation: ' + dispatch(registry, parsed) + '\\n', None).",
        run=_run_step,
        compare=_step_problem,
        arg_names=("generate_returns", "transcript"),
        forbid=FORBID_LOOP,
    )
