"""Constrained decoding: a tool call that parses by construction.

A small model asked for ``{"tool": ..., "arguments": {...}}`` often writes something close to
JSON but not JSON: a missing brace, single quotes, a tool that does not exist, an argument with
the wrong name. Constrained decoding removes the possibility. The output is built from a
**template** that the tools' JSON schemas determine: the fixed parts (braces, quotes, key names)
are written by the program, and the model only fills the **holes**, choosing at each step the
most likely token among those that keep the hole valid:

    {"tool": "<one of the tool names>", "arguments": {"<arg>": <a value of the arg's type>, ...}}

- a *choice* hole (the tool name, an ``enum``, a boolean) accepts a token only if the text so far
  is still a prefix of one of the options;
- a *string* hole accepts any token without a quote, a backslash or a newline, and ends when the
  model's best valid token closes the quote (or at ``max_chars``);
- an *integer* or *number* hole accepts digits (a leading minus, one point for a number) and ends
  when the model prefers a delimiter.

Taking the most likely *valid* token at each step is greedy decoding with every invalid token's
logit masked to minus infinity, computed without scoring the whole vocabulary: the candidates are
visited in the order of their logits and the first valid one wins. The result always parses, and
its tool and argument names always exist; whether the model chose the *right* tool and values is
what chapter 07 measures. Required arguments are written in the schema's order; then the model
chooses, token by token, the key of an optional argument it has not written yet or the closing
brace (a *choice* hole over those options).

    >>> next_logits = NextTokenLogits(model)            # a transformers causal LM, KV-cached
    >>> call, text = constrained_tool_call(next_logits, tokenizer, prompt_ids, registry.schemas())
    >>> call                                            # {"tool": "calculator", "arguments": {...}}
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import torch

#: Candidates visited per step, in the order of their logits, before falling back.
TOP_CANDIDATES = 200


class NextTokenLogits:
    """``next_logits(ids) -> (vocab,)`` logits of the token after ``ids``, for a transformers
    causal LM, reusing the KV cache while each call's ids extend the previous call's."""

    def __init__(self, model):
        self.model = model
        self._ids: list[int] = []
        self._past = None

    @torch.no_grad()
    def __call__(self, ids: Sequence[int]) -> torch.Tensor:
        ids = list(ids)
        if not ids:
            raise ValueError("ids: expected at least one token")
        n = len(self._ids)
        if self._past is None or len(ids) <= n or ids[:n] != self._ids:
            self._past, n = None, 0  # not an extension: start again
        new = torch.tensor([ids[n:]])
        out = self.model(input_ids=new, past_key_values=self._past, use_cache=True)
        self._ids, self._past = ids, out.past_key_values
        return out.logits[0, -1].float()


def _candidates(logits: torch.Tensor, tokenizer, k: int = TOP_CANDIDATES):
    """(token id, its text) of the ``k`` most likely tokens, most likely first, each decoded
    only when reached: the first valid one usually comes first, and the search stops there."""
    for t in torch.topk(logits, min(k, logits.shape[-1])).indices.tolist():
        yield t, tokenizer.decode([t])


def _choice(
    next_logits, tokenizer, ids: list[int], options: Sequence[str]
) -> tuple[str, list[int]]:
    """Fill a hole with one of ``options`` (their closing quote, if any, is part of each)."""
    text = ""
    while text not in options:
        chosen = None
        for token, piece in _candidates(next_logits(ids), tokenizer):
            if piece and any(o.startswith(text + piece) for o in options):
                chosen = (token, piece)
                break
        if chosen is None:  # no likely token continues an option: write the first one out
            rest = next(o for o in options if o.startswith(text))[len(text) :]
            ids = ids + tokenizer(rest, add_special_tokens=False)["input_ids"]
            return text + rest, ids
        ids = ids + [chosen[0]]
        text += chosen[1]
    return text, ids


def _string(next_logits, tokenizer, ids: list[int], max_chars: int) -> tuple[str, list[int]]:
    """Fill a string hole up to its closing quote (written as part of the result)."""
    text = ""
    while len(text) < max_chars:
        chosen = None
        for token, piece in _candidates(next_logits(ids), tokenizer):
            body, quote, after = piece.partition('"')
            if any(c in body for c in "\\\n\r\t") or (quote and after.strip(" ")):
                continue  # escapes, control characters, or text after the closing quote
            chosen = (token, body, bool(quote))
            break
        if chosen is None:
            break
        token, body, closes = chosen
        ids = ids + [token]
        text += body
        if closes:
            return text, ids
    ids = ids + tokenizer('"', add_special_tokens=False)["input_ids"]
    return text, ids


def _number(next_logits, tokenizer, ids, integer: bool, max_chars: int = 12):
    """Fill an integer or number hole: digits, a leading minus, one point for a number."""
    text = ""
    while len(text) < max_chars:
        chosen = None
        for token, piece in _candidates(next_logits(ids), tokenizer):
            candidate = text + piece
            if _numeric_prefix(candidate, integer):
                chosen = (token, piece)
                break
            if text and text != "-" and piece[:1] in ",} \n":
                return text, ids  # the model prefers to end the number here
        if chosen is None:
            break
        ids = ids + [chosen[0]]
        text += chosen[1]
    if not text or text == "-" or text.endswith("."):  # not yet a number: complete it with 0
        ids = ids + tokenizer("0", add_special_tokens=False)["input_ids"]
        text += "0"
    return text, ids


def _numeric_prefix(text: str, integer: bool) -> bool:
    body = text[1:] if text.startswith("-") else text
    if not body:
        return text == "-"
    if integer:
        return body.isdigit()
    whole, _, frac = body.partition(".")
    return whole.isdigit() and (frac.isdigit() or frac == "") and body.count(".") <= 1


def constrained_tool_call(
    next_logits: Callable[[list[int]], torch.Tensor],
    tokenizer,
    prompt_ids: Sequence[int],
    schemas: Sequence[dict],
    max_string_chars: int = 80,
) -> tuple[dict, str]:
    """Decode one tool call after ``prompt_ids`` that parses by construction.

    ``schemas``: OpenAI-style specs ``{"name", "description", "parameters"}`` (what
    :meth:`llmlab.agents.tools.ToolRegistry.schemas` returns). Returns ``(call, text)``: the call
    as a dict ``{"tool", "arguments"}`` and its JSON text.
    """
    specs = {s["name"]: s.get("parameters", {}) for s in schemas}
    if not specs:
        raise ValueError("schemas: expected at least one tool")
    ids = list(prompt_ids)

    def write(text: str) -> None:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])

    out = '{"tool": "'
    write(out)
    name, ids = _choice(next_logits, tokenizer, ids, [n + '"' for n in specs])
    out += name
    name = name[:-1]
    params = specs[name]
    out_args = ', "arguments": {'
    write(out_args)
    out += out_args
    properties = params.get("properties", {})
    required = list(params.get("required", []))

    def fill(arg: str) -> str:
        """The value of ``arg``, decoded by the hole its schema asks for."""
        nonlocal ids
        spec = properties.get(arg, {})
        kind = spec.get("type")
        if "enum" in spec:
            value, ids = _choice(next_logits, tokenizer, ids, [json.dumps(v) for v in spec["enum"]])
        elif kind == "boolean":
            value, ids = _choice(next_logits, tokenizer, ids, ["true", "false"])
        elif kind in ("integer", "number"):
            value, ids = _number(next_logits, tokenizer, ids, integer=kind == "integer")
        else:  # a string (and anything else, written as a string)
            write('"')
            body, ids = _string(next_logits, tokenizer, ids, max_string_chars)
            value = '"' + body + '"'
        return value

    for i, arg in enumerate(required):
        key = ("" if i == 0 else ", ") + json.dumps(arg) + ": "
        write(key)
        out += key + fill(arg)
    # Optional arguments: the model chooses the next one's key, or the closing brace.
    optional = [a for a in properties if a not in required]
    while optional:
        comma = ", " if out[-1] != "{" else ""
        keys = {comma + json.dumps(a) + ": ": a for a in optional}
        picked, ids = _choice(next_logits, tokenizer, ids, [*keys, "}"])
        if picked == "}":
            out += "}}"
            return json.loads(out), out
        out += picked + fill(keys[picked])
        optional.remove(keys[picked])
    out += "}}"
    return json.loads(out), out


def _greedy_line(next_logits, tokenizer, ids: list[int], max_tokens: int) -> tuple[str, list[int]]:
    """Greedy tokens up to the end of the line (or ``max_tokens``): the text without the
    newline, and the ids with it."""
    text = ""
    for _ in range(max_tokens):
        token = int(torch.argmax(next_logits(ids)))
        piece = tokenizer.decode([token])
        if "\n" in piece:
            text += piece.split("\n", 1)[0]
            break
        ids = ids + [token]
        text += piece
    return text, ids + tokenizer("\n", add_special_tokens=False)["input_ids"]


class ConstrainedReAct:
    """A ``generate(transcript) -> text`` for :func:`llmlab.agents.react.run_agent` whose every
    step parses: the model writes a thought freely (to the end of its line), then chooses
    between ``Action:`` and ``Final Answer:`` (a choice hole); an action is decoded by
    :func:`constrained_tool_call` over ``schemas``, a final answer is free text to the end of
    its line. ``model``: a transformers causal LM; the transcript is read as plain text."""

    def __init__(
        self,
        model,
        tokenizer,
        schemas: Sequence[dict],
        thought_tokens: int = 32,
        answer_tokens: int = 24,
    ):
        if not schemas:
            raise ValueError("schemas: expected at least one tool's schema")
        self.next_logits = NextTokenLogits(model)
        self.tokenizer = tokenizer
        self.schemas = list(schemas)
        self.thought_tokens = thought_tokens
        self.answer_tokens = answer_tokens

    def __call__(self, transcript: str) -> str:
        tokenizer = self.tokenizer
        ids = tokenizer(transcript + "Thought:", add_special_tokens=False)["input_ids"]
        thought, ids = _greedy_line(self.next_logits, tokenizer, ids, self.thought_tokens)
        for label in ("Action:", "Final Answer:", "Observation:"):  # the labels belong to the loop
            if label in thought:
                thought = thought.split(label, 1)[0]
                ids = tokenizer(transcript + "Thought:" + thought + "\n", add_special_tokens=False)[
                    "input_ids"
                ]
        label, ids = _choice(self.next_logits, tokenizer, ids, ["Action: ", "Final Answer: "])
        if label == "Action: ":
            _, text = constrained_tool_call(self.next_logits, tokenizer, ids, self.schemas)
        else:
            text, _ = _greedy_line(self.next_logits, tokenizer, ids, self.answer_tokens)
        return f"Thought:{thought}\n{label}{text.strip()}"
