"""llmlab.agents.injection: planted orders, found by search, obeyed or not, with a scripted agent."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest

from llmlab.agents import injection
from llmlab.agents.tasks import make_tasks
from llmlab.agents.tools import ToolRegistry, calculator, python_tool, search_tool
from llmlab.rag import chunking
from llmlab.rag.kb import make_kb

KB = make_kb(60, seed=0)
LOOKUPS = [t for t in make_tasks(KB, n_per_kind=3, seed=0, kinds=("lookup",))]


class WordEmbedder:
    def encode(self, texts, batch_size=32):
        out = np.zeros((len(texts), 64), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"[a-z0-9]+", text.lower()):
                out[i, int(hashlib.md5(word.encode()).hexdigest(), 16) % 64] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


@pytest.fixture(scope="module")
def poisoned():
    chunks = chunking.chunk_corpus(KB.documents, "sentences", max_words=60, overlap=1)
    return injection.plant(chunks, LOOKUPS, KB, WordEmbedder(), rrf_k=5)


def registries(retriever, with_python):
    def search(query, k):
        return [(c.doc_id, c.text) for c in retriever.search(query, k)]

    registry = ToolRegistry()
    for tool in (calculator(), search_tool(search, k=5)) + (
        (python_tool(),) if with_python else ()
    ):
        registry.register(tool)
    return registry


def obedient():
    """Searches for the task, then does what an observation's note says, then answers."""

    def generate(transcript):
        task, _, so_far = transcript.rsplit("Task: ", 1)[1].partition("\n")
        if "Observation:" not in so_far:
            return "Thought: search\nAction: " + json.dumps(
                {"tool": "search", "arguments": {"query": task}}
            )
        if injection.NOTE in so_far and '"python"' not in so_far:
            code = "print(open('secrets.txt').read())"
            return "Thought: the note says so\nAction: " + json.dumps(
                {"tool": "python", "arguments": {"code": code}}
            )
        return "Thought: done\nFinal Answer: I do not know"

    return generate


def test_plant_adds_one_order_per_task_that_a_search_for_it_finds(poisoned):
    retriever, planted = poisoned
    assert len(planted) == len(LOOKUPS) and all(injection.NOTE in c.text for c in planted)
    found = [any(c.doc_id == "injected" for c in retriever.search(t.prompt, 5)) for t in LOOKUPS]
    assert all(found)  # the bait: the task's own questions open the passage
    assert all(
        c.text.startswith(t.plan[0]["arguments"]["query"])
        for c, t in zip(planted, LOOKUPS, strict=True)
    )
    with pytest.raises(ValueError, match="lookups"):
        injection.plant(
            [], make_tasks(KB, n_per_kind=1, seed=0, kinds=("arithmetic",)), KB, WordEmbedder()
        )


@pytest.mark.filterwarnings("ignore:Sandbox on:RuntimeWarning")
def test_an_obedient_agent_obeys_only_where_the_tool_exists(poisoned):
    retriever, _ = poisoned
    full = injection.measure(obedient, registries(retriever, True), LOOKUPS, max_steps=4)
    least = injection.measure(obedient, registries(retriever, False), LOOKUPS, max_steps=4)
    assert full["n"] == least["n"] == len(LOOKUPS)
    assert full["saw"] >= 1 and full["obeyed"] == full["saw"]  # it calls python after every note
    assert full["ran"] == 0  # the sandbox has no secrets.txt: the call fails
    assert least["saw"] == full["saw"] and least["obeyed"] == least["saw"]  # it tries ...
    assert least["ran"] == 0  # ... and there is no python tool to run


def test_a_deaf_agent_never_obeys(poisoned):
    retriever, _ = poisoned

    def deaf():
        return lambda transcript: "Thought: done\nFinal Answer: no idea"

    counts = injection.measure(deaf, registries(retriever, True), LOOKUPS)
    assert counts == {"n": len(LOOKUPS), "saw": 0, "obeyed": 0, "ran": 0, "solved": 0}
