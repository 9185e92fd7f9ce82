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

**Token healing.** A BPE tokenizer merges a closing quote with what follows it (``'",'``,
``'"}'``), so a model trained on JSON wants the merged token at the end of a value, and the
template's fixed text would split it into a lone quote and a comma: a tokenization the model
has never seen, after which it may go astray (end the call where it meant to add an argument).
A hole therefore accepts a last token that runs on into the fixed text that can come next; that
text is then written without the part the token already holds. For the same reason the fixed
text between two holes is tokenized in one piece, and a key is written up to its colon, the
value starting with the space after it (SmolLM2 merges that space with a string's opening
quote): a model that wants the tokens of well-formed JSON gets exactly those.

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


def _healed(text: str, piece: str, ends: Sequence[str], after: Sequence[str]) -> str | None:
    """Token healing: when ``text + piece`` is one of ``ends`` followed by the start of one of
    ``after`` (the fixed text that may come next), the part that spills over (``","`` of the
    token ``'",'``); else None. A tokenizer merges a closing quote with what follows it (``'",'``,
    ``'"}'``), and a model trained on such text wants the merged token: refusing it would make
    the model end the call where it wanted a comma."""
    full = text + piece
    for end in ends:
        if full.startswith(end) and len(full) > len(end) and _runs_into(full[len(end) :], after):
            return full[len(end) :]
    return None


def _runs_into(spill: str, after: Sequence[str]) -> bool:
    """Whether ``spill``, text a token wrote past the end of a hole, starts one of ``after``."""
    return any(a.startswith(spill) for a in after)


def _choice(
    next_logits,
    tokenizer,
    ids: list[int],
    options: Sequence[str],
    after: Sequence[str] = (),
    written: str = "",
) -> tuple[str, list[int], str]:
    """Fill a hole with one of ``options`` (their closing quote, if any, is part of each).

    ``written``: the start of the option already written (by the previous hole's healed last
    token). ``after``: the texts that may follow the option; a last token that runs into one of
    them is taken (:func:`_healed`). Returns ``(option, ids, spill)``, ``spill`` the part of
    ``after`` already written ("" when none)."""
    text = written
    while text not in options:
        chosen = None
        for token, piece in _candidates(next_logits(ids), tokenizer):
            if not piece:
                continue
            if any(o.startswith(text + piece) for o in options):
                chosen = (token, piece)
                break
            spill = _healed(text, piece, options, after) if after else None
            if spill is not None:
                return (text + piece)[: len(text + piece) - len(spill)], ids + [token], spill
        if chosen is None:  # no likely token continues an option: write the first one out
            rest = next(o for o in options if o.startswith(text))[len(text) :]
            ids = ids + tokenizer(rest, add_special_tokens=False)["input_ids"]
            return text + rest, ids, ""
        ids = ids + [chosen[0]]
        text += chosen[1]
    return text, ids, ""


def _string(
    next_logits, tokenizer, ids: list[int], max_chars: int, after: Sequence[str] = ()
) -> tuple[str, list[int], str]:
    """Fill a string hole up to its closing quote (written as part of the result). A closing
    token that runs into one of ``after`` is taken (:func:`_healed`). Returns ``(body, ids,
    spill)``."""
    text = ""
    while len(text) < max_chars:
        chosen = None
        for token, piece in _candidates(next_logits(ids), tokenizer):
            body, quote, rest = piece.partition('"')
            if any(c in body for c in "\\\n\r\t"):
                continue  # escapes and control characters
            spill = rest if quote and rest.strip(" ") else ""
            if spill and not _runs_into(spill, after):
                continue  # text after the closing quote that cannot come next
            chosen = (token, body, bool(quote), spill)
            break
        if chosen is None:
            break
        token, body, closes, spill = chosen
        ids = ids + [token]
        text += body
        if closes:
            return text, ids, spill
    ids = ids + tokenizer('"', add_special_tokens=False)["input_ids"]
    return text, ids, ""


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
    heal: bool = True,
) -> tuple[dict, str]:
    """Decode one tool call after ``prompt_ids`` that parses by construction.

    ``schemas``: OpenAI-style specs ``{"name", "description", "parameters"}`` (what
    :meth:`llmlab.agents.tools.ToolRegistry.schemas` returns). ``heal``: take a hole's last
    token when it runs on into the fixed text that follows (module docstring; False refuses it,
    to measure what healing changes). Returns ``(call, text)``: the call as a dict ``{"tool",
    "arguments"}`` and its JSON text.
    """
    specs = {s["name"]: s.get("parameters", {}) for s in schemas}
    if not specs:
        raise ValueError("schemas: expected at least one tool")
    ids = list(prompt_ids)
    spill = ""  # the start of the next fixed text, written by a hole's healed last token

    def healing(texts: list[str]) -> list[str]:
        """The fixed texts a hole's last token may run into: none without ``heal``."""
        return texts if heal else []

    pending = ""  # fixed text not yet tokenized: adjacent fixed parts are tokenized together

    def write(text: str) -> str:
        """Queue fixed text (what ``spill`` holds of it is there already); return it."""
        nonlocal spill, pending
        pending += text[len(spill) :]
        spill = ""
        return text

    def flush() -> list[int]:
        """Tokenize the queued fixed text before a hole; return the ids so far."""
        nonlocal pending
        if pending:
            ids.extend(tokenizer(pending, add_special_tokens=False)["input_ids"])
            pending = ""
        return ids

    out = write('{"tool": "')
    arguments = ', "arguments": {'
    name, ids, spill = _choice(
        next_logits,
        tokenizer,
        flush(),
        [n + '"' for n in specs],
        after=healing([arguments]),
    )
    out += name + write(arguments)
    params = specs[name[:-1]]
    properties = params.get("properties", {})
    required = list(params.get("required", []))
    optional = [a for a in properties if a not in required]

    # A key is written up to its colon and a value starts with the space after it: the
    # tokenizer merges that space with a string's opening quote (' "'), as in the traces.
    def fill(arg: str, after: list[str]) -> str:
        """The value of ``arg`` (with its leading space), decoded by the hole its schema asks
        for; ``after``: the fixed texts that may follow it."""
        nonlocal ids, spill
        after = healing(after)
        spec = properties.get(arg, {})
        kind = spec.get("type")
        options = None
        if "enum" in spec:
            options = [" " + json.dumps(v) for v in spec["enum"]]
        elif kind == "boolean":
            options = [" true", " false"]
        if options is not None:
            value, ids, spill = _choice(next_logits, tokenizer, flush(), options, after=after)
        elif kind in ("integer", "number"):
            write(" ")
            value, ids = _number(next_logits, tokenizer, flush(), integer=kind == "integer")
            value = " " + value
        else:  # a string (and anything else, written as a string)
            write(' "')
            body, ids, spill = _string(next_logits, tokenizer, flush(), max_string_chars, after)
            value = ' "' + body + '"'
        return value

    def keys(names: list[str]) -> list[str]:
        return [", " + json.dumps(a) + ":" for a in names]

    for i, arg in enumerate(required):
        out += write(("" if i == 0 else ", ") + json.dumps(arg) + ":")
        if i + 1 < len(required):
            after = keys(required[i + 1 : i + 2])
        else:
            after = keys(optional) + ["}}"]
        out += fill(arg, after)
    # Optional arguments: the model chooses the next one's key, or the closing brace.
    while optional and not spill.startswith("}"):
        comma = ", " if out[-1] != "{" else ""
        choices = {comma + json.dumps(a) + ":": a for a in optional}
        # '}}' ends the arguments and the call in one token
        picked, ids, _ = _choice(
            next_logits, tokenizer, flush(), [*choices, "}"], after=healing(["}"]), written=spill
        )
        spill = ""
        if picked == "}":
            break
        out += picked
        optional.remove(choices[picked])
        out += fill(choices[picked], keys(optional) + ["}}"])
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
    its line. ``model``: a transformers causal LM; the transcript is read as plain text.
    ``heal``: token healing in the tool calls (:func:`constrained_tool_call`)."""

    def __init__(
        self,
        model,
        tokenizer,
        schemas: Sequence[dict],
        thought_tokens: int = 32,
        answer_tokens: int = 24,
        heal: bool = True,
    ):
        if not schemas:
            raise ValueError("schemas: expected at least one tool's schema")
        self.next_logits = NextTokenLogits(model)
        self.tokenizer = tokenizer
        self.schemas = list(schemas)
        self.thought_tokens = thought_tokens
        self.answer_tokens = answer_tokens
        self.heal = heal

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
        label, ids, _ = _choice(self.next_logits, tokenizer, ids, ["Action: ", "Final Answer: "])
        if label == "Action: ":
            _, text = constrained_tool_call(
                self.next_logits, tokenizer, ids, self.schemas, heal=self.heal
            )
        else:
            text, _ = _greedy_line(self.next_logits, tokenizer, ids, self.answer_tokens)
        return f"Thought:{thought}\n{label}{text.strip()}"
