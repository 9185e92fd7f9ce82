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
        agent.heal = True
        step = parse_step(agent(transcript))
        assert step.error is None and (step.tool is None) != (step.final is None)
        if expected is not None:
            assert (step.tool, step.final) == expected
    with pytest.raises(ValueError, match="schemas: expected at least one"):
        ConstrainedReAct(None, CharTokenizer(), [])


# ---------------------------------------------------------------------------------------------
# Token healing: a tokenizer that merges a closing quote with what follows it, and a model that
# has only ever seen text tokenized that way.

MERGED = ['", ', '",', '"}}', '"}']


class MergedTokenizer:
    """ASCII characters (ids 0-127) and the merged tokens of MERGED (ids 128-131), encoded
    greedily longest first, as a BPE tokenizer would merge them."""

    vocab = [chr(i) for i in range(128)] + MERGED

    def __call__(self, text, add_special_tokens=False):
        ids, i = [], 0
        while i < len(text):
            merged = next((m for m in MERGED if text.startswith(m, i)), None)
            ids.append(128 + MERGED.index(merged) if merged else ord(text[i]))
            i += len(merged) if merged else 1
        return {"input_ids": ids}

    def decode(self, ids):
        return "".join(self.vocab[i] for i in ids)


def canonical_model(prompt_len, wish):
    """Wants the canonical tokens of ``wish``; on ids that are not the canonical tokenization of
    their own text (a quote written apart from the comma it is merged with) it is lost and
    prefers to close the call, as a model trained on canonical text may."""
    tok = MergedTokenizer()

    def next_logits(ids):
        written = tok.decode(ids[prompt_len:])
        logits = torch.linspace(0, 1, len(tok.vocab))
        if ids[prompt_len:] != tok(written)["input_ids"] or not wish.startswith(written):
            logits[ord("}")] = 10.0
        elif len(written) < len(wish):
            logits[tok(wish[len(written) :])["input_ids"][0]] = 10.0
        return logits

    return next_logits


def _healed_call(wish, schemas=OPTIONAL):
    tok = MergedTokenizer()
    prompt = tok("Task: ")["input_ids"]
    seen = []
    model = canonical_model(len(prompt), wish)

    def next_logits(ids):
        seen.append(list(ids))
        return model(ids)

    call, text = constrained_tool_call(next_logits, tok, prompt, schemas)
    return call, text, seen


def test_a_closing_quote_merged_with_what_follows_is_taken():
    for wish in (
        '{"tool": "date", "arguments": {"operation": "add_days", "date": "2024-11-30", "days": 45}}',
        '{"tool": "date", "arguments": {"operation": "weekday", "date": "2024-11-30"}}',
        '{"tool": "clock", "arguments": {"zone": "UTC"}}',
    ):
        call, text, seen = _healed_call(wish)
        assert text == wish and call == json.loads(wish)
        # the model was fed the merged tokens, never a quote split from its comma
        tok = MergedTokenizer()
        fed = seen[-1][len(tok("Task: ")["input_ids"]) :]
        assert fed == tok(wish)["input_ids"][: len(fed)] and any(t >= 128 for t in fed)


def test_a_merged_token_that_cannot_come_next_is_refused():
    pair = [
        {
            "name": "pair",
            "description": "two required strings",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
                "required": ["a", "b"],
            },
        }
    ]
    # The model wants to close the call after "a" ('"}}'); "b" is required, so it comes anyway.
    call, text, _ = _healed_call('{"tool": "pair", "arguments": {"a": "x"}}', pair)
    assert set(call["arguments"]) == {"a", "b"} and call["arguments"]["a"] == "x"
    assert json.loads(text) == call


def test_without_healing_the_split_quote_derails_the_model():
    # heal=False is the measurement's control: the merged token is refused, the model is fed a
    # lone quote and a comma, and (as this toy model does) ends the call early.
    tok = MergedTokenizer()
    wish = (
        '{"tool": "date", "arguments": {"operation": "add_days", "date": "2024-11-30", "days": 45}}'
    )
    prompt = tok("Task: ")["input_ids"]
    healed, _ = constrained_tool_call(canonical_model(len(prompt), wish), tok, prompt, OPTIONAL)
    unhealed, text = constrained_tool_call(
        canonical_model(len(prompt), wish), tok, prompt, OPTIONAL, heal=False
    )
    assert healed == json.loads(wish)
    assert unhealed != healed and json.loads(text) == unhealed


@pytest.mark.parametrize(
    "wish",
    [
        '{"tool": "date", "arguments": {"operation": "add_days", "date": "2009-01-01", "days": 86}}',
        '{"tool": "date", "arguments": {"operation": "today"}}',
        '{"tool": "date", "arguments": {"operation": "days_between", "date": "2009-01-01", '
        '"other_date": "2010-01-01"}}',
        '{"tool": "search", "arguments": {"query": "How many people live in Orvane?"}}',
        '{"tool": "calculator", "arguments": {"expression": "17 * 23"}}',
    ],
)
def test_with_smollm2s_tokenizer_a_model_gets_the_tokens_it_was_trained_on(wish):
    # A model that wants the canonical tokens of a call (as SmolLM2's tokenizer cuts it) is fed
    # exactly those: no quote split from its comma, no space split from a quote.
    from llmlab import assets
    from llmlab.agents.tools import ToolRegistry, calculator, date_tool, search_tool

    _, tokenizer = assets.tiny_smollm2()
    registry = ToolRegistry()
    for tool in (calculator(), date_tool(), search_tool(lambda q, k: [], k=2)):
        registry.register(tool)
    canonical = tokenizer(wish, add_special_tokens=False)["input_ids"]
    prompt = tokenizer("Task: x\nAction: ", add_special_tokens=False)["input_ids"]
    fed = []

    def next_logits(ids):
        fed[:] = ids[len(prompt) :]
        logits = torch.zeros(len(tokenizer))
        if fed == canonical[: len(fed)] and len(fed) < len(canonical):
            logits[canonical[len(fed)]] = 10.0
        else:  # lost: wants to close the call
            logits[tokenizer.convert_tokens_to_ids("}")] = 5.0
        return logits

    call, text = constrained_tool_call(next_logits, tokenizer, prompt, registry.schemas())
    assert text == wish and fed == canonical[: len(fed)]
