"""The ReAct loop: the model thinks, calls a tool, reads what it returned, and repeats.

ReAct (Yao et al., 2023) interleaves reasoning and acting in one transcript. Each step the model
writes a thought and either an action or a final answer; the program, not the model, runs the
action and appends what the tool returned as an observation:

    Thought: I need the product first.
    Action: {"tool": "calculator", "arguments": {"expression": "17 * 23"}}
    Observation: 391                                  <- written by the loop, not the model
    Thought: Now I can answer.
    Final Answer: 391

The action is JSON that the tool's schema validates (:mod:`llmlab.agents.tools`), so a call is
data, never code. Everything that can go wrong is a recorded step, not a crash: text with
neither an action nor a final answer, JSON that does not parse, an unknown tool, arguments the
schema rejects, a tool that raises or hangs. The error goes back to the model as the step's
observation ("error: ..."), which gives it a chance to fix the call, and the run stops after
``max_steps``. A model that writes its own "Observation:" (inventing the tool's answer) is cut
off there: only the loop writes observations.

    >>> run = run_agent(generate, registry, "What is 17 * 23?")
    >>> run.answer, run.stopped, [s.action["tool"] for s in run.steps if s.action]
    ('391', 'final', ['calculator'])

``generate(transcript) -> text`` is any function that continues the transcript: a scripted one
in the tests, SmolLM2 greedy decoding in the chapter.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

FINAL = "Final Answer:"
ACTION = "Action:"
OBSERVATION = "Observation:"

PROMPT = """You solve tasks step by step. You can use these tools:
{tools}

Answer in this format:
Thought: what you will do next
Action: {{"tool": "<tool name>", "arguments": {{<arguments as JSON>}}}}
Then wait: the tool's result comes back as "Observation: ...". Repeat as needed, and finish with:
Thought: I know the answer
Final Answer: <the answer>

Task: {task}
"""


@dataclass(frozen=True)
class ParsedStep:
    """What one model turn says: a thought, and an action (tool and arguments) or a final
    answer, or an error saying why neither could be read."""

    thought: str | None
    tool: str | None = None
    arguments: dict | None = None
    final: str | None = None
    error: str | None = None


@dataclass
class Step:
    """One step of a run: the model's text, what was parsed, and the observation."""

    text: str
    thought: str | None
    action: dict | None
    observation: str | None
    final: str | None
    error: str | None


@dataclass
class AgentRun:
    """A finished run: its steps, the final answer (None if none came), why it stopped
    (``"final"`` or ``"max_steps"``) and the whole transcript."""

    task: str
    steps: list[Step] = field(default_factory=list)
    answer: str | None = None
    stopped: str = "max_steps"
    transcript: str = ""

    @property
    def tool_calls(self) -> list[dict]:
        return [s.action for s in self.steps if s.action is not None]

    @property
    def failed_steps(self) -> int:
        return sum(1 for s in self.steps if s.error is not None)


def _first_json_object(text: str) -> tuple[str | None, str | None]:
    """``(the first balanced {...} in text, None)`` or ``(None, why not)``; braces inside JSON
    strings are skipped."""
    start = text.find("{")
    if start < 0:
        return None, "no '{' after 'Action:'"
    depth, in_string, escaped = 0, False, False
    for i in range(start, len(text)):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start : i + 1], None
    return None, "the JSON object is not closed"


def parse_step(text: str) -> ParsedStep:
    """Read one model turn (module docstring's format). A final answer wins over an action
    written after it; an action is the first balanced JSON object after ``Action:``, which must
    hold ``"tool"`` (a string) and ``"arguments"`` (an object)."""
    if not isinstance(text, str):
        raise TypeError(f"text: expected a str, got {type(text).__name__}")
    thought = None
    if "Thought:" in text:
        thought = text.split("Thought:", 1)[1].split("\n", 1)[0].strip() or None
    final_at, action_at = text.find(FINAL), text.find(ACTION)
    if final_at >= 0 and (action_at < 0 or final_at < action_at):
        answer = text[final_at + len(FINAL) :].strip().split("\n", 1)[0].strip()
        if answer:
            return ParsedStep(thought, final=answer)
        return ParsedStep(thought, error="'Final Answer:' is empty")
    if action_at < 0:
        return ParsedStep(
            thought,
            error="expected 'Action: {\"tool\": ..., \"arguments\": {...}}' or 'Final Answer: ...'",
        )
    blob, why = _first_json_object(text[action_at + len(ACTION) :])
    if blob is None:
        return ParsedStep(thought, error=f"Action: {why}")
    try:
        call = json.loads(blob)
    except json.JSONDecodeError as err:
        return ParsedStep(
            thought, error=f"Action: not valid JSON ({err.msg} at column {err.colno})"
        )
    if not isinstance(call.get("tool"), str) or not isinstance(call.get("arguments"), dict):
        return ParsedStep(
            thought,
            error='Action: expected {"tool": "<name>", "arguments": {...}}, got ' + blob[:120],
        )
    return ParsedStep(thought, tool=call["tool"], arguments=call["arguments"])


def run_agent(
    generate: Callable[[str], str],
    registry,
    task: str,
    max_steps: int = 6,
    prompt: str = PROMPT,
) -> AgentRun:
    """Run the loop on ``task`` with the tools of ``registry`` (a
    :class:`llmlab.agents.tools.ToolRegistry`) until a final answer or ``max_steps`` steps.

    ``generate(transcript)`` returns the model's next turn; anything it writes from
    ``Observation:`` on is dropped. Failed steps are recorded and reported to the model as
    ``Observation: error: ...``; the loop itself never raises for the model's or a tool's sake.
    """
    if not isinstance(task, str) or not task.strip():
        raise ValueError(f"task: expected a non-empty string, got {task!r}")
    if not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps: expected an int >= 1, got {max_steps!r}")
    run = AgentRun(task=task)
    transcript = prompt.format(tools=registry.describe(), task=task)
    for _ in range(max_steps):
        try:
            text = generate(transcript)
        except Exception as err:  # a model server that fails is a failed step, not a crash
            text = ""
            generation_error = f"generate failed: {type(err).__name__}: {err}"
        else:
            generation_error = None
        text = str(text).split(OBSERVATION, 1)[0].rstrip()
        parsed = parse_step(text)
        error = generation_error or parsed.error
        if error is None and parsed.final is not None:
            run.steps.append(Step(text, parsed.thought, None, None, parsed.final, None))
            run.answer, run.stopped = parsed.final, "final"
            transcript += text + "\n"
            break
        action = observation = None
        if error is None:
            action = {"tool": parsed.tool, "arguments": parsed.arguments}
            result = registry.call(parsed.tool, parsed.arguments)
            if result.ok:
                observation = result.output
            else:
                error = result.error
        if error is not None:
            observation = f"error: {error}"
        run.steps.append(Step(text, parsed.thought, action, observation, None, error))
        transcript += f"{text}\n{OBSERVATION} {observation}\n"
    run.transcript = transcript
    return run


def greedy_generator(model, tokenizer, max_new_tokens: int = 64) -> Callable[[str], str]:
    """``generate(transcript) -> text`` for :func:`run_agent` from a transformers causal LM:
    greedy decoding of the transcript read as plain text, stopped at ``Observation:`` (the loop
    writes those) or after ``max_new_tokens`` tokens. Free text: nothing makes it parse."""
    import torch

    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens: expected an int >= 1, got {max_new_tokens!r}")

    @torch.no_grad()
    def generate(transcript: str) -> str:
        ids = tokenizer(transcript, return_tensors="pt", add_special_tokens=False)["input_ids"]
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            stop_strings=[OBSERVATION],
            tokenizer=tokenizer,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        )
        return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)

    return generate
