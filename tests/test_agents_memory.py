"""llmlab.agents.memory: the scripted dialogues, the short-term window and the long-term store."""

import hashlib

import numpy as np
import pytest

from llmlab.agents.memory import (
    FACT_KINDS,
    Dialogue,
    LongTermMemory,
    Memory,
    Message,
    make_dialogue,
)
from llmlab.rag.kb import contains_match


class WordEmbedder:
    """Unit bag-of-words vectors (hashed into 64 dimensions): texts sharing words are close."""

    dim = 64

    def encode(self, texts):
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().replace("?", " ").replace(".", " ").split():
                out[i, int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dim] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def test_dialogue_is_seeded_and_every_probe_points_at_its_fact():
    a, b = make_dialogue(6, 20, seed=3), make_dialogue(6, 20, seed=3)
    assert a == b
    assert a != make_dialogue(6, 20, seed=4)
    assert isinstance(a, Dialogue) and len(a.messages) == 2 * (6 + 20) and len(a.probes) == 6
    assert [m.turn for m in a.messages] == list(range(len(a.messages)))
    assert [m.role for m in a.messages[:2]] == ["user", "assistant"]
    assert len({p.kind for p in a.probes}) == 6
    for p in a.probes:
        said = a.messages[p.fact_turn]
        assert said.role == "user" and said.text == p.statement
        assert contains_match(p.statement, p.answer)
        assert not contains_match(p.question, p.answer)  # the question does not give it away
        assert 1 <= a.distance(p) <= len(a.messages)


def test_dialogue_answers_differ_when_sister_and_dog_both_appear():
    for seed in range(40):
        d = make_dialogue(len(FACT_KINDS), 0, seed=seed)
        answers = [p.answer for p in d.probes]
        assert len(set(answers)) == len(answers), seed


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_facts": 0}, "n_facts"),
        ({"n_facts": len(FACT_KINDS) + 1}, "n_facts"),
        ({"n_chat": -1}, "n_chat"),
        ({"n_chat": 10_000}, "n_chat"),
        ({"seed": "x"}, "seed"),
    ],
)
def test_dialogue_rejects_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make_dialogue(**kwargs)


def test_message_checks_its_fields():
    with pytest.raises(ValueError, match="role"):
        Message("system", "hi", 0)
    with pytest.raises(ValueError, match="text"):
        Message("user", "  ", 0)
    with pytest.raises((ValueError, TypeError), match="turn"):
        Message("user", "hi", -1)


def test_window_keeps_the_last_messages_and_none_keeps_all():
    d = make_dialogue(4, 6, seed=0)
    full, window, none = Memory(window=None), Memory(window=4), Memory(window=0)
    for m in (full, window, none):
        m.extend(d.messages)
    assert full.recent() == list(d.messages)
    assert window.recent() == list(d.messages[-4:])
    assert none.recent() == []
    chat = window.prompt("What is my sister called?")
    assert chat[-1] == {"role": "user", "content": "What is my sister called?"}
    assert [c["content"] for c in chat[:-1]] == [m.text for m in d.messages[-4:]]


def test_long_term_memory_recalls_the_fact_outside_the_window_and_survives_reopening(tmp_path):
    d = make_dialogue(6, 16, seed=1)
    embedder = WordEmbedder()
    memory = Memory(window=2, long_term=LongTermMemory.create(tmp_path, embedder, dim=64), k=2)
    memory.extend(d.messages)
    assert len(memory.long_term) == sum(m.role == "user" for m in d.messages)
    found = 0
    for p in d.probes:
        context = memory.context(p.question)
        turns = [m.turn for m in context]
        assert len(turns) == len(set(turns))  # a recalled message is not repeated from the window
        assert turns[-2:] == [m.turn for m in d.messages[-2:]]
        assert turns[:-2] == sorted(turns[:-2])
        found += any(m.text == p.statement for m in context)
    assert found >= len(d.probes) - 1  # bag-of-words finds nearly every fact
    memory.long_term.close()
    # A new session: an empty window, the same store on disk.
    later = Memory(window=2, long_term=LongTermMemory.open(tmp_path, embedder), k=2)
    p = d.probes[0]
    assert later.recent() == []
    assert any(m.text == p.statement for m in later.context(p.question))
    later.long_term.close()


def test_long_term_memory_rejects_bad_input(tmp_path):
    memory = LongTermMemory.create(tmp_path, WordEmbedder(), dim=64)
    assert memory.recall("anything", 3) == []
    assert memory.remember([]) == 0
    with pytest.raises(TypeError, match="messages"):
        memory.remember(["not a message"])
    with pytest.raises(ValueError, match="query"):
        memory.recall("", 1)
    with pytest.raises((ValueError, TypeError), match="k"):
        memory.recall("x", 0)
    memory.close()
    with pytest.raises(TypeError, match="embedder"):
        LongTermMemory(None, object())
    with pytest.raises(FileNotFoundError, match="folder"):
        LongTermMemory.open(tmp_path / "none", WordEmbedder())


def test_memory_rejects_bad_arguments():
    with pytest.raises((ValueError, TypeError), match="window"):
        Memory(window=-1)
    with pytest.raises(TypeError, match="long_term"):
        Memory(long_term="store")
    with pytest.raises((ValueError, TypeError), match="k"):
        Memory(k=0)
    with pytest.raises(TypeError, match="messages"):
        Memory().extend(["hello"])
