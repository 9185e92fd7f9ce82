"""Memory for a chat agent: a short-term window of the latest messages, and a long-term store
searched by meaning.

A chat model knows only what is in its prompt. Three ways to fill the prompt of a long
conversation:

    full history    every message so far: nothing is forgotten, but the prompt (and the cost
                    of every reply) grows with the conversation, and the context window ends it
    window          the last ``window`` messages: a fixed cost, and whatever was said before
                    them is gone
    window + store  the window, plus the ``k`` earlier messages most similar to the new one,
                    found in a :class:`llmlab.rag.store.VectorStore` on disk (long-term memory:
                    it survives the end of the session)

To measure them we need conversations where memory matters: :func:`make_dialogue` writes a
seeded conversation in which the user states facts about themselves ("My sister is called
Brenwen.") among everyday requests, and :class:`Probe` questions at its end ask for each fact
("What is my sister called?"), with the fact's position, so that accuracy can be read against
how long ago the fact was said. The names are invented (as in :mod:`llmlab.rag.kb`): no model
can answer from what it already knows.

    >>> dialogue = make_dialogue(n_facts=6, n_chat=24, seed=0)
    >>> memory = Memory(window=8, long_term=LongTermMemory.create(folder, embedder), k=3)
    >>> memory.extend(dialogue.messages)
    >>> probe = dialogue.probes[0]
    >>> chat = memory.prompt(probe.question)      # [{"role": ..., "content": ...}, ...]
    >>> any(m["content"] == probe.statement for m in chat)

Only the user's messages go into the long-term store (the assistant's "Noted." holds nothing
to recall); recalled messages are put back in the prompt in the order they were said, before
the window.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmlab.rag import kb as kbase
from llmlab.validate import require_int, require_positive_int

__all__ = [
    "ROLES",
    "Dialogue",
    "LongTermMemory",
    "Memory",
    "Message",
    "Probe",
    "make_dialogue",
]

ROLES = ("user", "assistant")


@dataclass(frozen=True)
class Message:
    """One message of a conversation: ``role`` ("user" or "assistant"), its ``text``, and
    ``turn``, its position (0 for the first message)."""

    role: str
    text: str
    turn: int

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role: expected one of {ROLES}, got {self.role!r}")
        if not isinstance(self.text, str) or not self.text.strip():
            raise ValueError(f"text: expected a non-empty string, got {self.text!r}")
        require_int(self.turn, "turn", 0)


@dataclass(frozen=True)
class Probe:
    """A question about a fact the user stated: the ``statement`` (a user message) at
    ``fact_turn``, the ``question`` and its ``answer``."""

    question: str
    answer: str
    statement: str
    fact_turn: int
    kind: str


@dataclass(frozen=True)
class Dialogue:
    """A scripted conversation (``messages``) and the ``probes`` to ask at its end."""

    messages: tuple[Message, ...]
    probes: tuple[Probe, ...]

    def distance(self, probe: Probe) -> int:
        """How many messages came after the probe's fact (1: it was the last message)."""
        return len(self.messages) - probe.fact_turn


# ---------------------------------------------------------------------------------------------
# Facts a user might tell an assistant: (kind, statement, question, reply). {given} {town}
# {company} {surname} {word} are invented names, {n} a number, {date} a date in words.
_FACTS = (
    ("sister", "My sister is called {given}.", "What is my sister called?", "{given}"),
    ("dog", "We named our new dog {given}.", "What is the name of our dog?", "{given}"),
    ("hometown", "I grew up in {town}.", "Where did I grow up?", "{town}"),
    ("employer", "I started a new job at {company} this week.", "Where do I work now?",
     "{company}"),
    ("doctor", "My doctor is Dr {surname}.", "What is my doctor's name?", "{surname}"),
    ("locker", "My locker at the gym is number {n}.", "What is my locker number at the gym?",
     "{n}"),
    ("flight", "My flight to {town2} leaves on {date}.", "When does my flight to {town2} leave?",
     "{date}"),
    ("wifi", "The wifi password at home is {word}{n2}.", "What is the wifi password at home?",
     "{word}{n2}"),
    ("novel", "I am reading a novel called The {word2} Ferry.", "What novel am I reading?",
     "The {word2} Ferry"),
    ("street", "We moved to {surname2} Street last year.", "Which street do we live on?",
     "{surname2} Street"),
)  # fmt: skip
FACT_KINDS = tuple(f[0] for f in _FACTS)

#: Everyday requests between the facts, with the assistant's (scripted) reply.
_CHAT = (
    ("How long should I boil an egg?", "About seven minutes for a firm yolk."),
    ("Can you suggest a name for a book club?", "How about The Chapter Circle?"),
    ("What is a good stretch for a stiff back?", "Try a slow cat-cow stretch, ten times."),
    ("Is it better to water plants in the morning?", "Yes, morning watering loses less to heat."),
    ("Give me a word that rhymes with orange.", "Door hinge is the usual near rhyme."),
    ("How many cups are in a litre?", "A little over four cups."),
    ("What should I pack for a weekend hike?", "Water, layers, a map, snacks and a first aid kit."),
    ("Any tips for falling asleep faster?", "Keep a regular bedtime and dim the screens an hour before."),
    ("How do I remove a coffee stain?", "Blot it, then rinse with cold water and a little soap."),
    ("What is a quick vegetarian dinner?", "A vegetable stir-fry with rice takes twenty minutes."),
    ("How often should I change my toothbrush?", "Every three months or so."),
    ("Can you recommend a board game for four people?", "Ticket to Ride works well for four."),
    ("What temperature should a fridge be?", "Between one and four degrees Celsius."),
    ("How do I keep bread fresh longer?", "Keep it in a bread box, or freeze slices."),
    ("Why is the sky blue?", "Air scatters blue light more than red light."),
    ("What is a polite way to decline an invitation?", "Thank them, say you cannot make it, and wish them well."),
    ("How long does it take to learn to juggle?", "Most people manage three balls within a week."),
    ("What is a good first houseplant?", "A pothos: it forgives missed waterings."),
    ("Should I stretch before or after running?", "Warm up before, stretch after."),
    ("How can I remember names better?", "Repeat the name aloud when you first hear it."),
    ("What is the difference between weather and climate?", "Weather is today; climate is the average over years."),
    ("How do I make my emails shorter?", "Put the request in the first line and cut the rest."),
    ("Is tea or coffee higher in caffeine?", "Coffee, cup for cup."),
    ("How do I stop my glasses fogging up?", "A drop of dish soap, rinsed and dried, helps."),
    ("What is a fun fact about octopuses?", "They have three hearts."),
    ("How do I sharpen a kitchen knife?", "Use a whetstone at about fifteen degrees."),
    ("What makes a good password?", "Length: four random words beat eight symbols."),
    ("How long can cooked rice stay in the fridge?", "About four days, cooled quickly."),
    ("Can you give me a short breathing exercise?", "Breathe in for four, hold for four, out for four."),
    ("What is a good way to start a speech?", "With a short story or a surprising fact."),
)  # fmt: skip
_NOTED = ("Noted.", "Got it, I will remember that.", "Thanks for telling me.", "Okay, noted.")
_MONTHS = (
    "January February March April May June July August September October November December"
).split()


def make_dialogue(n_facts: int = 6, n_chat: int = 24, seed: int = 0) -> Dialogue:
    """A conversation of ``n_facts`` user facts (of different kinds, at most
    ``len(FACT_KINDS)``) and ``n_chat`` everyday exchanges (at most ``len(_CHAT)``), each a user
    message and the assistant's reply, in a seeded order; and one probe per fact.

    The facts are spread over the conversation (in order of a seeded draw of positions), so
    the probes' distances range from the last exchanges to the first. The same arguments give
    the same dialogue.
    """
    n_facts = require_positive_int(n_facts, "n_facts")
    n_chat = require_int(n_chat, "n_chat", 0)
    seed = require_int(seed, "seed", None)
    if n_facts > len(_FACTS):
        raise ValueError(f"n_facts: expected at most {len(_FACTS)} (one per kind), got {n_facts}")
    if n_chat > len(_CHAT):
        raise ValueError(f"n_chat: expected at most {len(_CHAT)}, got {n_chat}")
    rng = random.Random(f"llmlab.agents.memory/{seed}")
    namer = kbase._Namer(rng, kbase._template_words())  # invented names, as the knowledge base's
    names = {
        "given": namer.word(kbase._GIVEN_ENDS),
        "town": namer.word(kbase._TOWN_ENDS),
        "town2": namer.word(kbase._TOWN_ENDS),
        "company": f"{namer.word(kbase._SURNAME_ENDS)} {rng.choice(('Works', 'Mills', 'Brothers'))}",
        "surname": namer.word(kbase._SURNAME_ENDS),
        "surname2": namer.word(kbase._SURNAME_ENDS),
        "word": namer.word(kbase._WORD_ENDS).lower(),
        "word2": namer.word(kbase._WORD_ENDS),
        "n": str(rng.randint(100, 999)),
        "n2": str(rng.randint(10, 99)),
        "date": f"{rng.choice(_MONTHS)} {rng.randint(2, 28)}",
    }
    kinds = rng.sample(range(len(_FACTS)), n_facts)
    if {"sister", "dog"} <= {_FACTS[i][0] for i in kinds}:  # both answers would be {given}
        names["given2"] = namer.word(kbase._GIVEN_ENDS)
    chats = rng.sample(range(len(_CHAT)), n_chat)
    # Slots: each exchange is a fact or a chat; the facts' slots are drawn, the order is kept.
    slots = ["chat"] * n_chat + ["fact"] * n_facts
    rng.shuffle(slots)
    messages: list[Message] = []
    probes: list[Probe] = []
    facts, chat = iter(kinds), iter(chats)
    for slot in slots:
        if slot == "chat":
            question, reply = _CHAT[next(chat)]
            messages.append(Message("user", question, len(messages)))
            messages.append(Message("assistant", reply, len(messages)))
            continue
        kind, statement, question, answer = _FACTS[next(facts)]
        fill = dict(names, given=names["given2"]) if kind == "dog" and "given2" in names else names
        statement, answer = statement.format(**fill), answer.format(**fill)
        probes.append(Probe(question.format(**fill), answer, statement, len(messages), kind))
        messages.append(Message("user", statement, len(messages)))
        messages.append(Message("assistant", rng.choice(_NOTED), len(messages)))
    return Dialogue(tuple(messages), tuple(probes))


# ---------------------------------------------------------------------------------------------
# Long-term memory


def _messages(messages: Iterable[Message]) -> list[Message]:
    """``messages`` as a list, each checked to be a :class:`Message`."""
    messages = list(messages)
    for i, m in enumerate(messages):
        if not isinstance(m, Message):
            raise TypeError(f"messages[{i}]: expected a Message, got {type(m).__name__}")
    return messages


class LongTermMemory:
    """Messages in a :class:`llmlab.rag.store.VectorStore` (on disk, atomic, reopened across
    sessions), searched with ``embedder`` (an object with ``encode(texts) -> (n, d)`` unit
    vectors, e.g. :class:`llmlab.rag.embed.Embedder`). Use :meth:`create` or :meth:`open`."""

    def __init__(self, store, embedder) -> None:
        if not hasattr(embedder, "encode"):
            raise TypeError(f"embedder: expected an Embedder (with .encode), got {embedder!r}")
        self.store = store
        self.embedder = embedder

    @classmethod
    def create(cls, folder, embedder, dim: int = 384) -> LongTermMemory:
        """An empty memory in ``folder`` (which must not hold one)."""
        from llmlab.rag.store import VectorStore

        return cls(VectorStore.create(Path(folder), dim), embedder)

    @classmethod
    def open(cls, folder, embedder) -> LongTermMemory:
        """The memory saved in ``folder`` by an earlier session."""
        from llmlab.rag.store import VectorStore

        return cls(VectorStore.open(Path(folder)), embedder)

    def remember(self, messages: Iterable[Message]) -> int:
        """Store ``messages`` (one atomic change, embedded in one batch); returns how many."""
        messages = _messages(messages)
        if not messages:
            return 0
        vectors = self.embedder.encode([m.text for m in messages])
        meta = [{"role": m.role, "turn": m.turn} for m in messages]
        self.store.add([m.text for m in messages], vectors, meta)
        return len(messages)

    def recall(self, query: str, k: int, exclude_turns: Iterable[int] = ()) -> list[Message]:
        """The ``k`` stored messages most similar to ``query`` whose turn is not in
        ``exclude_turns`` (those the prompt holds already), in the order they were said."""
        if not isinstance(query, str) or not query.strip():
            raise ValueError(f"query: expected a non-empty string, got {query!r}")
        k = require_positive_int(k, "k")
        exclude = set(exclude_turns)
        if len(self.store) == 0:
            return []
        vector = np.asarray(self.embedder.encode([query]), dtype=np.float32)
        hits = self.store.search(vector, min(len(self.store), k + len(exclude)))[0]
        found = [
            Message(meta["role"], text, meta["turn"])
            for _, _, text, meta in hits
            if meta["turn"] not in exclude
        ][:k]
        return sorted(found, key=lambda m: m.turn)

    def __len__(self) -> int:
        return len(self.store)

    def close(self) -> None:
        self.store.close()


class Memory:
    """What an agent keeps of a conversation (module docstring): the last ``window``
    messages (None: all of them, the full history), and, when ``long_term`` is given, the
    ``k`` earlier user messages most similar to the new question."""

    def __init__(
        self, window: int | None = 8, long_term: LongTermMemory | None = None, k: int = 3
    ) -> None:
        if window is not None:
            window = require_int(window, "window", 0)
        if long_term is not None and not isinstance(long_term, LongTermMemory):
            raise TypeError(
                f"long_term: expected None or a LongTermMemory, got {type(long_term).__name__}"
            )
        self.window = window
        self.long_term = long_term
        self.k = require_positive_int(k, "k")
        self.messages: list[Message] = []

    def extend(self, messages: Sequence[Message]) -> None:
        """Add messages said one after another; the user's go to long-term memory too."""
        messages = _messages(messages)
        self.messages.extend(messages)
        if self.long_term is not None:
            self.long_term.remember(m for m in messages if m.role == "user")

    def recent(self) -> list[Message]:
        """The short-term window: the last ``window`` messages (all when ``window`` is None)."""
        if self.window is None:
            return list(self.messages)
        return self.messages[-self.window :] if self.window else []

    def context(self, question: str) -> list[Message]:
        """The messages a prompt for ``question`` holds: the recalled ones (in the order they
        were said), then the window."""
        recent = self.recent()
        if self.long_term is None:
            return recent
        recalled = self.long_term.recall(question, self.k, exclude_turns={m.turn for m in recent})
        return recalled + recent

    def prompt(self, question: str) -> list[dict]:
        """Chat messages (``{"role", "content"}``) for a chat template: :meth:`context`, then
        ``question`` as the user's new message."""
        chat = [{"role": m.role, "content": m.text} for m in self.context(question)]
        return chat + [{"role": "user", "content": question}]
