"""llmlab.agents.constrained: tool calls that parse by construction, with a character-level
toy model whose wishes may be invalid."""

from __future__ import annotations

import json

import pytest
import torch

from llmlab.agents.constrained import NextTokenLogits, constrained_tool_call

SCHEMAS = [
    {
        "name": "calculator",
        "description": "arithmetic",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string"}},
            "required": ["expression"],
        },
    },
    {
        "name": "date",
        "description": "dates",
        "parameters": {
            "type": "object",
            "properties": {
                "operation": {"enum": ["today", "add_days"]},
                "days": {"type": "integer"},
                "exact": {"type": "boolean"},
                "scale": {"type": "number"},
            },
            "required": ["operation", "days", "exact", "scale"],
        },
    },
]


class CharTokenizer:
    """One token per ASCII character."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


def wishful_model(prompt_len, wish):
    """Logits that prefer the next character of ``wish`` (after what was written so far), then
    every other character in a fixed order: a model that wants to write ``wish``."""
    tok = CharTokenizer()

    def next_logits(ids):
        written = tok.decode(ids[prompt_len:])
        logits = torch.linspace(0, 1, 128)  # a fixed preference among the rest
        if len(written) < len(wish):
            logits[ord(wish[len(written)])] = 10.0
        return logits

    return next_logits


def _call(wish):
    prompt = [ord(c) for c in "Task: "]
    return constrained_tool_call(wishful_model(len(prompt), wish), CharTokenizer(), prompt, SCHEMAS)


def test_a_valid_wish_comes_out_unchanged():
    wish = '{"tool": "calculator", "arguments": {"expression": "17 * 23"}}'
    call, text = _call(wish)
    assert text == wish and call == {"tool": "calculator", "arguments": {"expression": "17 * 23"}}


def test_invalid_wishes_still_parse():
    # A misspelled tool, single quotes, a string with a backslash: whatever the model wants,
    # the text parses and names a real tool.
    for wish in (
        '{"tool": "calculater", "arguments": {"expression": "1+1"}}',
        "{'tool': 'calculator'}",
        '{"tool": "calculator", "arguments": {"expression": "a\\\\b"}}',
        "I think the answer is 4",
    ):
        call, text = _call(wish)
        assert json.loads(text) == call
        assert call["tool"] in {"calculator", "date"}
        assert set(call["arguments"]) == {"expression"} or set(call["arguments"]) == {
            "operation",
            "days",
            "exact",
            "scale",
        }


def test_typed_holes():
    wish = '{"tool": "date", "arguments": {"operation": "add_days", "days": -12, "exact": false, "scale": 2.5}}'
    call, text = _call(wish)
    assert call == {
        "tool": "date",
        "arguments": {"operation": "add_days", "days": -12, "exact": False, "scale": 2.5},
    }
    # A model that wants letters where a number goes still gives a number.
    call, _ = _call('{"tool": "date", "arguments": {"operation": "today", "days": many')
    assert isinstance(call["arguments"]["days"], int)


def test_errors_and_the_kv_cached_logits():
    with pytest.raises(ValueError, match="schemas: expected at least one tool"):
        constrained_tool_call(lambda ids: torch.zeros(128), CharTokenizer(), [1], [])

    calls = []

    class Model:
        def __call__(self, input_ids, past_key_values=None, use_cache=True):
            calls.append((input_ids.shape[1], past_key_values))
            past = (past_key_values or 0) + input_ids.shape[1]

            class Out:
                logits = torch.zeros(1, input_ids.shape[1], 5)
                past_key_values = past

            return Out()

    nxt = NextTokenLogits(Model())
    nxt([1, 2, 3])
    nxt([1, 2, 3, 4])  # an extension: only the new token is fed
    nxt([9, 9])  # not an extension: start again
    assert calls == [(3, None), (1, 3), (2, None)]
    with pytest.raises(ValueError, match="ids: expected at least one token"):
        nxt([])


OPTIONAL = [
    {
        "name": "date",
        "description": "dates",
        "parameters": {
            "type": "object",
            "properties": {
                "operation": {"enum": ["today", "add_days", "weekday"]},
                "date": {"type": "string"},
                "days": {"type": "integer"},
            },
            "required": ["operation"],
        },
    },
    {
        "name": "clock",
        "description": "no required arguments",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}},
    },
]


def _optional_call(wish):
    prompt = [ord(c) for c in "Task: "]
    next_logits = wishful_model(len(prompt), wish)
    return constrained_tool_call(next_logits, CharTokenizer(), prompt, OPTIONAL)


def test_optional_arguments_are_the_models_choice():
    for wish in (
        '{"tool": "date", "arguments": {"operation": "add_days", "date": "2024-11-30", "days": 45}}',
        '{"tool": "date", "arguments": {"operation": "add_days", "days": 45, "date": "2024-11-30"}}',
        '{"tool": "date", "arguments": {"operation": "today"}}',
        '{"tool": "clock", "arguments": {}}',
        '{"tool": "clock", "arguments": {"zone": "UTC"}}',
    ):
        call, text = _optional_call(wish)
        assert text == wish and call == json.loads(wish)
    # an optional argument the schema does not have, or one given twice, cannot come out
    call, text = _optional_call(
        '{"tool": "date", "arguments": {"operation": "weekday", "when": "2024-01-01"}}'
    )
    assert set(call["arguments"]) <= {"operation", "date", "days"}
    call, _ = _optional_call(
        '{"tool": "date", "arguments": {"operation": "weekday", "days": 1, "days": 2}}'
    )
    assert call["arguments"]["operation"] == "weekday" and set(call["arguments"]) <= {
        "operation",
        "date",
        "days",
    }


def test_constrained_react_steps_always_parse():
    from llmlab.agents.constrained import ConstrainedReAct
    from llmlab.agents.react import parse_step

    transcript = "Task: What is 17 * 23?\n"
    start = len(transcript + "Thought:")
    cases = {
        ' multiply\nAction: {"tool": "calculator", "arguments": {"expression": "17 * 23"}}': (
            "calculator",
            None,
        ),
        " done\nFinal Answer: 391\nmore": (None, "391"),
        " hmm\nI will call calculater(17*23)": None,  # neither label: still one of the two
    }
    for wish, expected in cases.items():
        agent = ConstrainedReAct.__new__(ConstrainedReAct)
        agent.next_logits, agent.tokenizer = wishful_model(start, wish), CharTokenizer()
        agent.schemas, agent.thought_tokens, agent.answer_tokens = SCHEMAS, 32, 24
        step = parse_step(agent(transcript))
        assert step.error is None and (step.tool is None) != (step.final is None)
        if expected is not None:
            assert (step.tool, step.final) == expected
    with pytest.raises(ValueError, match="schemas: expected at least one"):
        ConstrainedReAct(None, CharTokenizer(), [])
