"""llmlab.agents.traces: gold transcripts from the tasks' plans, and their SFT examples."""

from __future__ import annotations

import json

import pytest

from llmlab.agents.react import OBSERVATION, PROMPT, parse_step, run_agent
from llmlab.agents.tasks import TODAY, make_tasks, score_run
from llmlab.agents.tools import default_registry
from llmlab.agents.traces import (
    FINAL_THOUGHT,
    grounded,
    make_trace,
    thought_for,
    trace_examples,
)
from llmlab.rag import bm25
from llmlab.rag.kb import make_kb
from llmlab.training.losses import IGNORE_INDEX


@pytest.fixture(scope="module")
def setup():
    kb = make_kb(240, seed=1)
    docs = kb.documents
    index = bm25.BM25([bm25.tokenize(d.text, bm25.STOPWORDS) for d in docs])

    def search(query, k):
        hits = index.top_k(bm25.tokenize(query, bm25.STOPWORDS), k)
        return [(docs[i].doc_id, docs[i].text) for i, _ in hits]

    registry = default_registry(search, today=TODAY)
    tasks = [t for t in make_tasks(kb, n_per_kind=2, seed=1) if t.kind != "python"]
    return registry, tasks, [make_trace(t, registry) for t in tasks]


def _replay(turns):
    """A stand-in model that writes the given turns, one per call."""
    remaining = iter(turns)
    return lambda transcript: next(remaining)


def test_a_trace_replayed_through_the_loop_solves_its_task(setup):
    registry, tasks, traces = setup
    for task, trace in zip(tasks, traces, strict=True):
        run = run_agent(_replay(trace.turns), registry, task.prompt, max_steps=8)
        assert run.transcript == trace.transcript  # the loop writes the same observations
        scored = score_run(task, run)
        assert scored["success"] and scored["correct_tools"] and run.failed_steps == 0
        assert trace.turns[-1] == f"Thought: {FINAL_THOUGHT}\nFinal Answer: {task.answer}"
        for turn, start in zip(trace.turns, trace.starts, strict=True):
            assert trace.transcript[start:].startswith(turn)
            assert parse_step(turn).error is None


def test_examples_train_the_turns_only(setup):
    from llmlab.assets import tiny_smollm2

    _, tokenizer = tiny_smollm2(seed=0)
    _, _, traces = setup
    examples = trace_examples(traces[:3], tokenizer)
    assert len(examples) == sum(len(t.turns) for t in traces[:3])
    turns = [turn for t in traces[:3] for turn in t.turns]
    for (ids, labels), turn in zip(examples, turns, strict=True):
        target = labels[labels != IGNORE_INDEX]
        assert tokenizer.decode(target) == turn + "\n"
        assert (labels[: len(ids) - len(target)] == IGNORE_INDEX).all()
        assert OBSERVATION not in tokenizer.decode(target)
    first = tokenizer.decode(examples[0][0][examples[0][1] == IGNORE_INDEX])
    assert first.startswith(PROMPT.split("{tools}")[0])


def test_thoughts_and_errors():
    call = {"tool": "calculator", "arguments": {"expression": "1 + 2"}}
    assert thought_for(call) == "I will compute 1 + 2."
    with pytest.raises(ValueError, match="no thought for the tool 'weather'"):
        thought_for({"tool": "weather", "arguments": {}})
    with pytest.raises(ValueError, match="without the argument 'expression'"):
        thought_for({"tool": "calculator", "arguments": {}})
    with pytest.raises(TypeError, match="task: expected an AgentTask"):
        make_trace(json.dumps(call), None)


def test_grounded_traces_have_their_facts_in_the_observations(setup):
    from dataclasses import replace

    _, tasks, traces = setup
    for trace in traces:
        assert grounded(trace) or trace.task.kind in ("lookup", "lookup_arith")
    lookup = next(t for t in traces if t.task.kind == "lookup" and grounded(t))
    missed = replace(lookup, transcript=lookup.transcript.replace(lookup.task.answer, "Zzyzx"))
    assert not grounded(missed)
    arith = next(t for t in traces if t.task.kind == "lookup_arith" and grounded(t))
    number = arith.task.plan[-1]["arguments"]["expression"].split()[0]
    head, tail = arith.transcript.rsplit("Action:", 1)
    assert not grounded(
        replace(arith, transcript=head.replace(number, "999999") + "Action:" + tail)
    )


def test_cached_agent_trains_once(setup, tmp_path, monkeypatch):
    import torch

    from llmlab.agents.traces import cached_agent
    from llmlab.assets import tiny_smollm2

    base, tokenizer = tiny_smollm2(seed=0)  # from the real cache: the asset is prepared there
    monkeypatch.setenv("LLMLAB_CACHE", str(tmp_path))
    _, _, traces = setup
    first, trained, record = cached_agent(
        base, tokenizer, traces[:2], name="07_rag/test_agent", steps=1, batch_size=2, rank=2
    )
    assert trained and len(record["loss"]) == 1
    again, trained, record2 = cached_agent(
        base, tokenizer, traces[:2], name="07_rag/test_agent", steps=1, batch_size=2, rank=2
    )
    assert not trained and record2["loss"] == record["loss"]
    for a, b in zip(first.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    _, trained, _ = cached_agent(
        base, tokenizer, traces[:3], name="07_rag/test_agent", steps=1, batch_size=2, rank=2
    )
    assert trained  # other traces, another agent
    with pytest.raises(ValueError, match="traces: expected at least one trace"):
        cached_agent(base, tokenizer, [], name="07_rag/test_agent")
