"""A seeded fictional knowledge base: documents about people, towns, companies and rivers that
never existed, with questions whose answers only those documents hold.

Chapter 07 measures retrieval-augmented generation. On real facts a pretrained model answers
many questions "closed-book", from what it memorised, and retrieval then gets credit it did not
earn. Here every name is invented from syllables by ``random.Random(seed)`` (Karreith
Zellisell, Orvihaven, Ormost & Zellenworth), so closed-book accuracy is near 0 and the accuracy
with retrieved documents measures retrieval and reading alone.

    >>> kb = make_kb(n_entities=240, seed=0)
    >>> len(kb.documents), len(kb.questions)           # one document per entity
    (240, 1056)
    >>> q = kb.split("test")[0]
    >>> q.question, q.answer
    ('What did Karreith Zellisell do for a living?', 'chemist')
    >>> q.evidence                                      # the one sentence that says it
    'Karreith Zellisell worked as a chemist for most of her long life.'
    >>> q.evidence in kb.document(q.doc_id).text
    True
    >>> exact_match("A chemist.", q), exact_match("She was a chemist.", q)
    (True, False)
    >>> contains_match("She was a chemist.", q)
    True

The data:

    Document   doc_id ("d0007"), title (the entity's name), text (7 or 8 sentences, about 60 to
               110 words of plain encyclopedic English)
    Question   qid, question, answer, aliases (other accepted forms: "48200" for "48,200", a
               surname for a person), doc_id (the gold document), evidence (the sentence of the
               gold document that states the answer), relation ("birth_year"), split
    entities   the records the text is written from: Person, Town, Company, River

Each fact is stated in exactly one sentence of its entity's document, and the answer appears
in no other sentence of that document. Retrieval is not trivial: documents name each other (a
person's birth town and employer, a town's notable visitors, a company's founder), and
distractor sentences repeat a fact's wording with other values ("Zellisell's elder brother was
born in 1929", "The wider district has about 91,200 inhabitants") without contradicting
any fact. Questions come from several paraphrases per relation, and evidence sentences from
several phrasings, so the words a question shares with its evidence vary. Splits are by
entity: every question about one entity is in the same split (about 25% dev, 75% test).

The metrics: :func:`normalize_answer` (lowercase, no punctuation or articles, "48,200" ->
"48200"), :func:`exact_match` and :func:`contains_match`. Only the standard library is used
(no torch, no network).
"""

from __future__ import annotations

import json
import math
import random
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import ClassVar

from llmlab.validate import require_int, require_real

__all__ = [
    "Document",
    "Question",
    "Person",
    "Town",
    "Company",
    "River",
    "KnowledgeBase",
    "RELATIONS",
    "SPLITS",
    "make_kb",
    "save_kb",
    "load_kb",
    "normalize_answer",
    "exact_match",
    "contains_match",
]

SPLITS = ("dev", "test")
MIN_ENTITIES, MAX_ENTITIES = 10, 1000
_FORMAT, _VERSION = "llmlab.rag.kb", 1

#: The relations a question can ask about, by entity kind.
RELATIONS = {
    "person": ("profession", "birth_year", "birth_town", "notable_work", "employer"),
    "town": ("founding_year", "population", "river", "known_for"),
    "company": ("founding_year", "founder", "headquarters", "product", "employees"),
    "river": ("length", "source", "mouth"),
}


# ---------------------------------------------------------------------------------------------
# The records


@dataclass(frozen=True)
class Document:
    """One entity's article: ``doc_id`` ("d0007"), ``title`` (the entity's name), ``text``."""

    doc_id: str
    title: str
    text: str

    @property
    def sentences(self) -> list[str]:
        """The text's sentences, in order (no sentence contains a full stop before its end)."""
        return _SENTENCE_END.split(self.text)


@dataclass(frozen=True)
class Question:
    """A question about one fact, answerable from one sentence of one document.

    answer: the short canonical answer, verbatim in ``evidence``; aliases: other accepted
    surface forms; doc_id: the gold document; evidence: the sentence of it that states the
    answer; relation: what is asked ("birth_year"); split: "dev" or "test".
    """

    qid: str
    question: str
    answer: str
    aliases: tuple[str, ...]
    doc_id: str
    evidence: str
    relation: str
    split: str


@dataclass(frozen=True)
class Person:
    """A person. ``company``: the one they led (``founder`` True) or worked for."""

    kind: ClassVar[str] = "person"
    doc_id: str
    name: str
    split: str
    pronoun: str  # "she" or "he"
    profession: str
    birth_year: int
    birth_town: str
    notable_work: str
    company: str
    founder: bool

    @property
    def surname(self) -> str:
        """The last word of ``name`` (unique in the knowledge base, so an accepted answer)."""
        return self.name.split()[-1]


@dataclass(frozen=True)
class Town:
    """A town on a river, known for a festival or a local product."""

    kind: ClassVar[str] = "town"
    doc_id: str
    name: str
    split: str
    founding_year: int
    population: int
    river: str
    known_for: str


@dataclass(frozen=True)
class Company:
    """A company, founded by one of the people, headquartered in one of the towns."""

    kind: ClassVar[str] = "company"
    doc_id: str
    name: str
    split: str
    founding_year: int
    founder: str
    headquarters: str
    product: str
    employees: int


@dataclass(frozen=True)
class River:
    """A river: its length, the hills where it rises and the lake it flows into."""

    kind: ClassVar[str] = "river"
    doc_id: str
    name: str
    split: str
    length_km: int
    source: str
    mouth: str


Entity = Person | Town | Company | River
_KINDS: dict[str, type] = {cls.kind: cls for cls in (Person, Town, Company, River)}


@dataclass(frozen=True)
class KnowledgeBase:
    """What :func:`make_kb` returns: documents, questions and the entities behind them."""

    documents: list[Document]
    questions: list[Question]
    entities: list[Entity]
    seed: int
    dev_fraction: float
    _by_id: dict[str, Document] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_by_id", {d.doc_id: d for d in self.documents})

    def split(self, name: str) -> list[Question]:
        """The questions of split ``name`` ("dev" or "test"), in order."""
        if name not in SPLITS:
            raise ValueError(f"name: expected one of {SPLITS}, got {name!r}")
        return [q for q in self.questions if q.split == name]

    def document(self, doc_id: str) -> Document:
        """The document with id ``doc_id`` (KeyError if there is none)."""
        try:
            return self._by_id[doc_id]
        except KeyError:
            raise KeyError(f"doc_id: no document {doc_id!r} in this knowledge base") from None

    def paraphrases(self, question: Question) -> list[str]:
        """The other wordings of ``question`` that the generator could have drawn for the same
        fact ("When was X born?" -> "In which year was X born?", ...): questions with the same
        answer, for testing a semantic cache's true hits. Empty when none is known."""
        if not isinstance(question, Question):
            raise TypeError(f"question: expected a Question, got {type(question).__name__}")
        name = self.document(question.doc_id).title
        for templates in (*_QUESTIONS.values(), *_WORK_QUESTIONS.values()):
            wordings = [t.format(name=name) for t in templates]
            if question.question in wordings:
                return [w for w in wordings if w != question.question]
        return []

    def names(self) -> list[str]:
        """Every invented proper name: entities, works, products, festivals, hills and lakes."""
        out = []
        for e in self.entities:
            out.append(e.name)
            if isinstance(e, Person):
                out.append(e.notable_work)
            elif isinstance(e, Town):
                out.append(e.known_for)
            elif isinstance(e, Company):
                out.append(e.product)
            else:
                out += [e.source, e.mouth]
        return out


# ---------------------------------------------------------------------------------------------
# Metrics

_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_THOUSANDS = re.compile(r"(?<=\d)[,_](?=\d{3}(?!\d))")  # "48,200" -> "48200"
_DECIMAL = re.compile(r"(?<=\d)\.(?=\d)")


def normalize_answer(text: str) -> str:
    """``text`` lowercased, without punctuation, articles or extra spaces, for comparing answers.

    Thousands separators between digits go ("48,200" -> "48200", a decimal point stays),
    apostrophes are dropped ("Ossingrove's" -> "ossingroves"), other punctuation and symbols
    become spaces ("Kessar & Tolwick" -> "kessar tolwick"), then "a", "an" and "the" are removed
    and runs of whitespace collapse to one space.
    """
    if not isinstance(text, str):
        raise TypeError(f"text: expected a str, got {type(text).__name__}")
    text = _THOUSANDS.sub("", text.casefold())
    text = _DECIMAL.sub("\0", text)  # keep "3.5" whole through the punctuation pass
    chars = []
    for ch in text:
        if ch in "'\u2019":
            continue
        cat = unicodedata.category(ch)
        chars.append(" " if cat[0] in "PS" else ch)
    text = "".join(chars).replace("\0", ".")
    return " ".join(_ARTICLES.sub(" ", text).split())


def _references(question: Question | str) -> list[str]:
    if isinstance(question, Question):
        refs = [question.answer, *question.aliases]
    elif isinstance(question, str):
        refs = [question]
    else:
        raise TypeError(
            f"question: expected a Question (or a reference answer str), "
            f"got {type(question).__name__}"
        )
    return [r for r in (normalize_answer(r) for r in refs) if r]


def exact_match(prediction: str, question: Question | str) -> bool:
    """Whether the normalized ``prediction`` equals the normalized answer or one of its aliases.

    ``question`` is a :class:`Question` or a reference answer string.
    """
    pred = normalize_answer(prediction)
    return any(pred == ref for ref in _references(question))


def contains_match(prediction: str, question: Question | str) -> bool:
    """Whether the normalized answer or an alias appears, as whole words, in the normalized
    ``prediction``: "He was born in 1873." contains "1873", "18730" does not."""
    pred = f" {normalize_answer(prediction)} "
    return any(f" {ref} " in pred for ref in _references(question))


# ---------------------------------------------------------------------------------------------
# Names

# Pieces of invented words. A word must be new, 5 to 12 letters long, and neither contain nor
# be contained in any word drawn before (nor in a word of the templates): so no name is a
# substring of another, and a name found in a text is that entity.
_HEADS = (
    "Abr Ard Aug Bex Blen Bran Brun Bryth Cael Cald Corv Cwen Dav Dorr Dren Dyff Egr Eir Elst "
    "Esk Fal Fenn Frey Fyr Gald Grav Gwyl Hald Harr Hesk Hroth Ilv Isk Ith Jass Jeth Jor Karr "
    "Ked Keld Kess Kyl Lorr Lund Lyth Mald Mord Myrr Nesb Norr Nyv Orm Orv Oss Ostr Oth Pell "
    "Prae Pryd Quar Quen Rask Renn Rhe Rhod Sarn Stavr Syl Tarv Tess Thal Trev Tyr Ulm Umb "
    "Uth Varr Vel Vosk Vyr Wend Wrax Wyth Yarr Yev Yss Zell Zor"
).split()
# Real words and names these pieces can spell (found against a 30,000-word vocabulary).
_BLOCKLIST = frozenset(
    "abraham arden ardent brunette bruno calderon caldwell corvette davis gravel harriet "
    "harris harrisburg harrison lorraine norris tessa wendell".split()
)
_MIDS = ("", "", "a", "e", "i", "o", "an", "en", "er", "in", "or", "is", "ul")
_GIVEN_ENDS = "a ia ine et on as ric win ora elle ard en ys ith o is wen and mar ette".split()
_SURNAME_ENDS = (
    "grove wick mere holt ley worth mond ric ane ell ton ard by stead ford dale ham croft well more"
).split()
_TOWN_ENDS = "holt by wick mere stead ford dale thorpe haven burg moor fell garth ness wold".split()
_RIVER_ENDS = "an en ire ell ome ay is ura ent ock ava".split()
_WORD_ENDS = "el in ar ett is os ander ivar ost une aro im".split()

_PROFESSIONS = {
    # profession -> what the notable work is
    "engineer": "invention",
    "clockmaker": "invention",
    "instrument maker": "invention",
    "chemist": "element",
    "geologist": "mineral",
    "astronomer": "comet",
    "botanist": "flower",
    "novelist": "novel",
    "poet": "poems",
    "historian": "history",
    "composer": "symphony",
}
_DEVICES = "engine loom press valve lens dynamo gauge turbine pump".split()
_NOVEL_NOUNS = "Lantern Orchard Harbour Winter Ledger Ferry Mill Salt Glass Tide".split()
_FESTIVALS = "Lantern Harvest Ribbon Boat Bell Kite Apple Candle".split()
_GOODS = "cheese lace pottery cider glass wool honey rope".split()
_PRODUCTS = (
    "stove",
    "lamp",
    "bicycle",
    "typewriter",
    "barometer",
    "sewing machine",
    "clock",
    "telescope",
    "plough",
)
_SEASONS = ("spring", "summer", "autumn", "winter")


class _Namer:
    """Draws invented words from ``rng``, none a substring of another or of a template word."""

    def __init__(self, rng: random.Random, reserved: str):
        self.rng = rng
        self.lengths: set[int] = set()
        self.used: set[str] = set()
        self.joined = "\n" + reserved + "\n"  # "w in joined": w is inside a word seen before

    def word(self, ends: Sequence[str], mids: Sequence[str] = _MIDS) -> str:
        for _ in range(10_000):
            word = self.rng.choice(_HEADS) + self.rng.choice(mids) + self.rng.choice(ends)
            low = word.lower()
            if (
                not 5 <= len(low) <= 12
                or low in _BLOCKLIST
                or re.search(r"(.)\1\1|ii|uu|aa|yy", low)
            ):
                continue
            if low in self.joined:
                continue
            inner = (low[i : i + n] for n in self.lengths for i in range(len(low) - n + 1))
            if any(part in self.used for part in inner):
                continue  # an earlier word is inside this one
            self.used.add(low)
            self.lengths.add(len(low))
            self.joined += low + "\n"
            return word
        raise RuntimeError("ran out of invented names; use fewer entities")


# ---------------------------------------------------------------------------------------------
# Templates. In person templates {Subj}/{subj} is a pronoun or the surname, {Poss}/{poss} its
# possessive; {name} is always the full name.

_PERSON_FACTS = {
    "profession": (
        "{name} was {a_prof} whose work was followed closely by {poss} contemporaries.",
        "By profession, {name} was {a_prof}, and a careful one.",
        "{name} worked as {a_prof} for most of {poss} long life.",
        "{name} was {a_prof} of considerable reputation in {poss} own lifetime.",
    ),
    "birth_year": (
        "{Subj} was born in {year}.",
        "{Subj} was born in the year {year}, the second of four children.",
        "The year of {poss} birth was {year}, a year of poor harvests.",
        "{Subj} came into the world in {year}, during a long, cold winter.",
    ),
    "birth_town": (
        "{Subj} was born in the town of {town}, in a house near the market.",
        "{Poss} birthplace was {town}, where {pron} also went to school.",
        "{Subj} was a native of {town} and spoke fondly of it all {poss} life.",
        "{town} was {poss} place of birth.",
    ),
    "employer": (
        "{Subj} worked for {company} for many years and rarely took a holiday.",
        "For most of {poss} career {subj} was employed by {company}.",
        "{Subj} later joined {company}, where {pron} stayed until retirement.",
        "{Poss} employer for more than two decades was {company}.",
    ),
    "led": (
        "{Subj} led {company} for {n} years and knew every worker by name.",
        "For {n} years {subj} ran {company} from a small office above the workshop.",
    ),
}
_WORK_FACTS = {
    "invention": (
        "{Subj} invented the {work} in {year}, after years of failed trials.",
        "{Poss} best-known invention is the {work}, first shown to the public in {year}.",
        "{Subj} is remembered as the maker of the {work}.",
    ),
    "element": (
        "{Subj} discovered the element {work} in {year} while studying mine water.",
        "{Poss} most famous discovery was the element {work}.",
        "{Subj} is credited with the discovery of {work}, a soft grey metal.",
    ),
    "mineral": (
        "{Subj} discovered the mineral {work} in {year}.",
        "{Poss} most famous discovery was {work}, a pale green mineral.",
        "{Subj} is credited with the discovery of the mineral {work}.",
    ),
    "comet": (
        "{Subj} discovered {work} in {year}, on a clear night in late autumn.",
        "{Poss} most famous discovery was {work}, first seen through a small telescope.",
        "{Subj} is credited with the discovery of {work}.",
    ),
    "flower": (
        "{Subj} discovered the {work} on a mountain walk in {year}.",
        "{Poss} most famous discovery was the {work}, a small alpine flower.",
        "{Subj} is credited with the discovery of the {work}.",
    ),
    "novel": (
        "{Subj} wrote the novel {work}, published in {year}.",
        "{Poss} best-known novel is {work}, a story of two rival families.",
        "{Subj} is remembered as the author of the novel {work}.",
    ),
    "poems": (
        "{Subj} wrote the collection of poems {work}, published in {year}.",
        "{Poss} best-known book of poems is {work}.",
        "{Subj} is remembered as the author of the poems {work}.",
    ),
    "history": (
        "{Subj} wrote {work}, published in {year}.",
        "{Poss} best-known book is {work}, a history in three volumes.",
        "{Subj} is remembered as the author of {work}.",
    ),
    "symphony": (
        "{Subj} composed the {work} in {year}.",
        "{Poss} best-known work is the {work}, first performed in {year}.",
        "{Subj} is remembered above all for the {work}.",
    ),
}
_PERSON_DISTRACTORS = {
    "sibling": ("{Poss} {rel} {sibling} was born in {y}.",),
    "parent": (
        "{Poss} {parent} was {a_prof2}.",
        "{Poss} {parent} came from {town2}.",
        "{Poss} {parent}, {a_prof2}, came from {town2}.",
    ),
    "visit": (
        "In {y}, {subj} visited {town2} and stayed there for a month.",
        "{Subj} travelled to {town2} in {y} to give a series of talks.",
    ),
    "letters": (
        "{Subj} corresponded for many years with {other}.",
        "{Subj} exchanged long letters with {other}.",
    ),
    "declined": (
        "{Subj} once turned down a post at {company2}.",
        "In {y}, {subj} declined an offer from {company2}.",
    ),
}
_PERSON_FILLERS = (
    "{Poss} notebooks, full of small sketches and careful lists, are kept in a private archive.",
    "Contemporaries described {obj} as patient and exacting, and sometimes hard to work with.",
    "{Subj} rarely spoke about {poss} early years, even to close friends.",
    "Several of {poss} letters were printed after {poss} death and are still read today.",
    "{Subj} kept a large garden and spent most evenings reading by the fire.",
    "In later life {pron} gave much of {poss} money to the local library.",
)

_TOWN_INTROS = (
    "{T} is a market town with a busy weekly market and a long tradition of trade.",
    "{T} is an old town in hilly country, reached by a single winding road.",
    "{T} is a town of narrow streets, steep lanes and tall stone houses.",
    "{T} is a small town surrounded by farms, orchards and low wooded hills.",
)
_TOWN_FACTS = {
    "founding_year": (
        "{T} was founded in {year}.",
        "The town was established in {year} around a ford.",
        "The first settlement at {T} dates from {year}, when a mill was built by the water.",
        "{T} has existed since its founding in {year}.",
    ),
    "population": (
        "{T} has a population of {pop}.",
        "About {pop} people live in {T}.",
        "The town is home to roughly {pop} residents.",
        "At the last census, {T} had {pop} inhabitants, most of them in the old centre.",
    ),
    "river": (
        "{T} lies on the {river}, which is wide and shallow at this point.",
        "The town stands on the banks of the {river}.",
        "The {river} flows through the middle of {T}.",
        "{T} was built where the old road crosses the {river}.",
    ),
    "known_for": (
        "{T} is known for its {thing}, a source of much local pride.",
        "{T} is famous for the {thing}, which draws visitors every {season}.",
        "Visitors come to {T} above all for its {thing}.",
    ),
}
_TOWN_DISTRACTORS = {
    "resident": (
        "{other} lived in {T} for several years.",
        "The town was for some years the home of {other}.",
    ),
    "visit": (
        "In {y}, {other} visited the town.",
        "{other} gave a public lecture in {T} in {y}.",
    ),
    "depot": ("{company2} opened a depot in {T} in {y}.",),
    "village": ("A neighbouring village was founded in {y}.",),
    "district": ("The wider district has about {pop2} inhabitants.",),
    "canal": ("A canal dug by hand links the town to the {river2}.",),
}
_TOWN_FILLERS = (
    "The old market square is lined with timber houses and small shops.",
    "Many of the town's houses are built from grey stone quarried nearby.",
    "A narrow-gauge railway once served the town, but the line closed long ago.",
    "The parish church, with its square tower, can be seen from far away.",
    "Most people in the town work in farming, trade or small workshops.",
)

_COMPANY_INTROS = (
    "{C} is a family-owned manufacturing company with a reputation for sturdy goods.",
    "{C} is an engineering firm with a long history of careful work.",
    "{C} is a manufacturing company with a loyal base of customers.",
)
_COMPANY_FILLERS = (
    "The firm has changed owners several times but has kept its original name.",
    "The company's catalogues were widely copied by competitors.",
    "The company still keeps the ledgers of its first years in a fireproof room.",
    "Apprentices are trained in its own workshop school.",
)
_COMPANY_FACTS = {
    "founding_year": (
        "{C} was founded in {year}.",
        "The company was established in {year} in a rented barn.",
        "{C} began trading in {year}.",
        "{C} opened its first workshop in {year}.",
    ),
    "founder": (
        "The company was started by {person}.",
        "{C} was founded by {person}.",
        "The firm's founder was {person}.",
    ),
    "headquarters": (
        "{C} has its headquarters in {T}.",
        "The company is based in {T}, in a brick building near the station.",
        "The company's head office stands in the centre of {T}.",
    ),
    "product": (
        "{C} is best known for the {product}.",
        "The company's main product is the {product}.",
        "The company's workshops make the {product}, sold across the region.",
    ),
    "employees": (
        "{C} employs about {n} people.",
        "The company has {n} employees, most of them at its main works.",
        "Around {n} people work for {C}.",
    ),
}
_COMPANY_DISTRACTORS = {
    "branch": ("In {y}, the company opened a branch in {town2}.",),
    "toured": ("{other} toured the company's works in {y}.",),
    "rival": ("A rival firm founded in {y} makes a similar {item}.",),
    "peak": ("At its peak in {y}, the company employed {n2} people.",),
}

_RIVER_INTROS = (
    "The {R} is a river in the northern uplands, known for its clear water.",
    "The {R} is a slow river that winds through wide farmland and marshes.",
    "The {R} is a fast-flowing river with many small falls and rapids.",
)
_RIVER_FACTS = {
    "length": (
        "The {R} is {length} long.",
        "The river runs for {length} from source to mouth.",
        "The river's total length is {length}, one of the longest in the region.",
    ),
    "source": (
        "The {R} rises in the {hills}.",
        "The river's source lies high in the {hills}.",
        "The river begins as a spring in the {hills}.",
    ),
    "mouth": (
        "The {R} flows into {lake} after passing through a deep gorge.",
        "The river empties into {lake}.",
        "The river's mouth is at the northern end of {lake}.",
    ),
}
_RIVER_DISTRACTORS = {
    "mapped": ("The upper course of the river was first mapped by {other} in {y}.",),
    "tributary": ("A tributary about {length2} long joins the river from the {side}.",),
    "dam": ("A dam was built across the river in {y} to supply water to the lowland farms.",),
}
_RIVER_FILLERS = (
    "The water is cold and clear in the upper reaches, where it runs over smooth stones.",
    "Salmon were once common in its lower course, and fishing rights were fiercely guarded.",
    "The valley is narrow near the source and opens into broad meadows further down.",
    "In dry summers the river can be crossed on foot at several places.",
)

_QUESTIONS = {
    ("person", "profession"): (
        "What was {name}'s profession?",
        "What did {name} do for a living?",
        "What was {name} by profession?",
    ),
    ("person", "birth_year"): (
        "In which year was {name} born?",
        "What year was {name} born in?",
        "When was {name} born?",
        "What is the birth year of {name}?",
    ),
    ("person", "birth_town"): (
        "Where was {name} born?",
        "In which town was {name} born?",
        "What is the birthplace of {name}?",
        "Which town was {name} born in?",
    ),
    ("person", "employer"): (
        "Which company did {name} work for?",
        "For which company did {name} work?",
        "Which firm employed {name}?",
        "Who was {name}'s employer?",
    ),
    ("town", "founding_year"): (
        "When was {name} founded?",
        "In which year was {name} founded?",
        "What year was {name} established?",
    ),
    ("town", "population"): (
        "What is the population of {name}?",
        "How many people live in {name}?",
        "How many inhabitants does {name} have?",
    ),
    ("town", "river"): (
        "Which river does {name} lie on?",
        "On which river is {name}?",
        "What river flows through {name}?",
    ),
    ("town", "known_for"): (
        "What is {name} known for?",
        "What is {name} famous for?",
        "For what is {name} best known?",
    ),
    ("company", "founding_year"): (
        "When was {name} founded?",
        "In which year was {name} founded?",
        "What year was {name} established?",
    ),
    ("company", "founder"): (
        "Who founded {name}?",
        "Who was the founder of {name}?",
        "Which person started {name}?",
    ),
    ("company", "headquarters"): (
        "Where is {name} headquartered?",
        "In which town is {name} based?",
        "Where is the head office of {name}?",
    ),
    ("company", "product"): (
        "What is {name}'s main product?",
        "What does {name} make?",
        "Which product is {name} best known for?",
    ),
    ("company", "employees"): (
        "How many employees does {name} have?",
        "How many people work for {name}?",
        "How many people does {name} employ?",
    ),
    ("river", "length"): (
        "How long is the {name}?",
        "What is the length of the {name}?",
        "How many kilometres long is the {name}?",
    ),
    ("river", "source"): (
        "Where does the {name} rise?",
        "In which hills does the {name} have its source?",
        "Where is the source of the {name}?",
    ),
    ("river", "mouth"): (
        "Into which lake does the {name} flow?",
        "Which lake does the {name} empty into?",
        "Where does the {name} end?",
    ),
}
_WORK_QUESTIONS = {
    "invention": (
        "What did {name} invent?",
        "Which device did {name} invent?",
        "What is {name}'s best-known invention?",
    ),
    "element": (
        "Which element did {name} discover?",
        "What did {name} discover?",
        "What is {name}'s most famous discovery?",
    ),
    "mineral": (
        "Which mineral did {name} discover?",
        "What did {name} discover?",
        "What is {name}'s most famous discovery?",
    ),
    "comet": (
        "Which comet did {name} discover?",
        "What did {name} discover?",
        "What is {name}'s most famous discovery?",
    ),
    "flower": (
        "Which flower did {name} discover?",
        "What did {name} discover?",
        "What is {name}'s most famous discovery?",
    ),
    "novel": (
        "Which novel did {name} write?",
        "What is the title of {name}'s best-known novel?",
        "Which novel is {name} remembered for?",
    ),
    "poems": (
        "Which book of poems did {name} write?",
        "What is the title of {name}'s best-known book of poems?",
        "Which collection of poems is {name} remembered for?",
    ),
    "history": (
        "Which history did {name} write?",
        "What is the title of {name}'s best-known book?",
        "Which book is {name} remembered for?",
    ),
    "symphony": (
        "Which symphony did {name} compose?",
        "What is {name}'s best-known work?",
        "Which symphony is {name} remembered for?",
    ),
}


def _template_words() -> str:
    """Every word of the templates and word lists, so invented words can avoid them."""
    texts: list[str] = [*_PROFESSIONS, *_DEVICES, *_NOVEL_NOUNS, *_FESTIVALS, *_GOODS]
    texts += [*_PRODUCTS, *_SEASONS, *_PERSON_FILLERS, *_TOWN_INTROS, *_TOWN_FILLERS]
    texts += [*_COMPANY_INTROS, *_COMPANY_FILLERS, *_RIVER_INTROS, *_RIVER_FILLERS]
    for group in (_PERSON_FACTS, _WORK_FACTS, _PERSON_DISTRACTORS, _TOWN_FACTS):
        texts += [t for ts in group.values() for t in ts]
    for group in (_TOWN_DISTRACTORS, _COMPANY_FACTS, _COMPANY_DISTRACTORS, _RIVER_FACTS):
        texts += [t for ts in group.values() for t in ts]
    for group in (_RIVER_DISTRACTORS, _QUESTIONS, _WORK_QUESTIONS):
        texts += [t for ts in group.values() for t in ts]
    extra = "lake hills river comet history songs symphony suite elder younger brother sister"
    words = set(re.findall(r"[a-z]+", " ".join(texts + [extra]).lower()))
    return "\n".join(sorted(words))


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


# ---------------------------------------------------------------------------------------------
# Generation


def make_kb(n_entities: int = 240, seed: int = 0, dev_fraction: float = 0.25) -> KnowledgeBase:
    """A fictional knowledge base of ``n_entities`` entities, one document each.

    n_entities: 10 to 1000; half are people, a fifth towns, a fifth companies, a tenth rivers.
    seed: the same seed always gives the same knowledge base (names, values, phrasings); the
        global ``random`` state is not touched.
    dev_fraction: the share of entities (and so of questions, roughly) in the "dev" split;
        the rest are "test". Drawn per kind, so both splits hold every kind.

    Every fact becomes one question (a person who founded a company gets no employer question:
    the founder is asked about from the company's side), so 240 entities give about 1,050.
    """
    n_entities = require_int(n_entities, "n_entities", MIN_ENTITIES)
    if n_entities > MAX_ENTITIES:
        raise ValueError(
            f"n_entities: expected an int from {MIN_ENTITIES} to {MAX_ENTITIES}, got {n_entities}"
        )
    seed = require_int(seed, "seed", None)
    dev_fraction = require_real(dev_fraction, "dev_fraction")
    if not 0.0 < dev_fraction < 1.0:
        raise ValueError(f"dev_fraction: expected a number in (0, 1), got {dev_fraction}")
    return _Builder(n_entities, seed, dev_fraction).build()


class _Builder:
    def __init__(self, n: int, seed: int, dev_fraction: float):
        self.rng = random.Random(seed)
        self.seed, self.dev_fraction = seed, dev_fraction
        self.n_rivers = max(1, n // 10)
        self.n_towns = max(2, n // 5)
        self.n_companies = max(2, n // 5)
        self.n_people = n - self.n_rivers - self.n_towns - self.n_companies

    # -- entities ---------------------------------------------------------------------------

    def build(self) -> KnowledgeBase:
        rng = self.rng
        namer = _Namer(rng, _template_words())
        n_total = self.n_people + self.n_towns + self.n_companies + self.n_rivers
        order = list(range(n_total))
        rng.shuffle(order)  # document ids in a shuffled order: the id says nothing of the kind
        doc_ids = iter(f"d{i:04d}" for i in order)
        kinds = (
            ["person"] * self.n_people
            + ["town"] * self.n_towns
            + ["company"] * self.n_companies
            + ["river"] * self.n_rivers
        )
        splits = self._splits(kinds)

        rivers = []
        for _ in range(self.n_rivers):
            name = namer.word(_RIVER_ENDS)
            rivers.append(
                dict(
                    doc_id=next(doc_ids),
                    name=name,
                    length_km=int(math.exp(rng.uniform(math.log(40), math.log(900)))),
                    source=f"{namer.word(_WORD_ENDS)} Hills",
                    mouth=f"Lake {namer.word(_WORD_ENDS)}",
                )
            )
        towns = []
        for _ in range(self.n_towns):
            if rng.random() < 0.5:
                known_for = f"{namer.word(_WORD_ENDS)} {rng.choice(_FESTIVALS)} Festival"
            else:
                known_for = f"{namer.word(_WORD_ENDS)} {rng.choice(_GOODS)}"
            population = math.exp(rng.uniform(math.log(800), math.log(250_000)))
            towns.append(
                dict(
                    doc_id=next(doc_ids),
                    name=namer.word(_TOWN_ENDS),
                    founding_year=rng.randint(1040, 1760),
                    population=max(800, int(round(population, -2))),
                    river=rng.choice(rivers)["name"],
                    known_for=known_for,
                )
            )
        # People first get their company link: the first n_companies people found one each.
        people = []
        for i in range(self.n_people):
            profession = rng.choice(sorted(_PROFESSIONS))
            given = namer.word(_GIVEN_ENDS)
            people.append(
                dict(
                    doc_id=next(doc_ids),
                    name=f"{given} {namer.word(_SURNAME_ENDS)}",
                    pronoun=rng.choice(("she", "he")),
                    profession=profession,
                    notable_work=self._work(namer, _PROFESSIONS[profession]),
                    founder=i < self.n_companies,
                )
            )
        companies = []
        for i in range(self.n_companies):
            founder = people[i]
            founder["birth_year"] = rng.randint(1780, 1960)
            if rng.random() < 0.5:
                name = f"{namer.word(_WORD_ENDS)} & {namer.word(_SURNAME_ENDS)}"
            else:
                suffix = rng.choice(("Works", "Instruments", "Mills", "Brothers", "Company"))
                name = f"{namer.word(_SURNAME_ENDS)} {suffix}"
            founder["company"] = name
            companies.append(
                dict(
                    doc_id=next(doc_ids),
                    name=name,
                    founding_year=min(2012, founder["birth_year"] + rng.randint(22, 50)),
                    founder=founder["name"],
                    headquarters=rng.choice(towns)["name"],
                    product=f"{namer.word(_WORD_ENDS)} {rng.choice(_PRODUCTS)}",
                    employees=10 * rng.randint(4, 980),
                )
            )
        for person in people[self.n_companies :]:
            company = rng.choice(companies)
            founded = company["founding_year"]
            person["company"] = company["name"]
            person["birth_year"] = rng.randint(max(1780, founded - 45), min(1990, founded + 40))
        for person in people:
            person["birth_town"] = rng.choice(towns)["name"]

        entities: list[Entity] = []
        for cls, records in ((Person, people), (Town, towns), (Company, companies)):
            entities += [cls(split=next(splits), **r) for r in records]
        entities += [River(split=next(splits), **r) for r in rivers]
        entities.sort(key=lambda e: e.doc_id)
        self.entities = entities
        self.people = [e for e in entities if isinstance(e, Person)]
        self.towns = [e for e in entities if isinstance(e, Town)]
        self.companies = [e for e in entities if isinstance(e, Company)]
        self.rivers = [e for e in entities if isinstance(e, River)]

        documents, questions = [], []
        for entity in entities:
            doc, facts = self._document(entity)
            documents.append(doc)
            for relation, (evidence, answer, aliases) in facts.items():
                questions.append(
                    Question(
                        qid=f"q{len(questions):05d}",
                        question=self._question(entity, relation),
                        answer=answer,
                        aliases=aliases,
                        doc_id=entity.doc_id,
                        evidence=evidence,
                        relation=relation,
                        split=entity.split,
                    )
                )
        return KnowledgeBase(documents, questions, entities, self.seed, self.dev_fraction)

    def _splits(self, kinds: list[str]):
        """The split of each entity, in the order of ``kinds``: dev_fraction of each kind."""
        out = []
        for kind in dict.fromkeys(kinds):
            n = kinds.count(kind)
            n_dev = int(n * self.dev_fraction + 0.5)
            labels = ["dev"] * n_dev + ["test"] * (n - n_dev)
            self.rng.shuffle(labels)
            out += labels
        return iter(out)

    def _work(self, namer: _Namer, kind: str) -> str:
        rng = self.rng
        if kind == "invention":
            return f"{namer.word(_WORD_ENDS)} {rng.choice(_DEVICES)}"
        if kind == "element":
            return namer.word(("ium", "on", "ine")).lower()
        if kind == "mineral":
            return namer.word(("ite", "ine", "ase")).lower()
        if kind == "comet":
            return f"Comet {namer.word(_WORD_ENDS)}"
        if kind == "flower":
            return f"{namer.word(_WORD_ENDS)} {rng.choice(('lily', 'orchid', 'gentian'))}"
        if kind == "novel":
            return f"The {rng.choice(_NOVEL_NOUNS)} of {namer.word(_TOWN_ENDS)}"
        if kind == "poems":
            return f"Songs from {namer.word(_TOWN_ENDS)}"
        if kind == "history":
            return f"A History of {namer.word(_TOWN_ENDS)}"
        return f"{namer.word(_WORD_ENDS)} Symphony"

    # -- documents ------------------------------------------------------------------------

    def _document(self, entity: Entity) -> tuple[Document, dict]:
        """The entity's document and, per relation, (evidence, answer, aliases).

        Drafts until every answer appears in exactly one sentence (a clash of a drawn
        distractor value with an answer is rare; a redraw removes it).
        """
        draft = {
            Person: self._person,
            Town: self._town,
            Company: self._company,
            River: self._river,
        }[type(entity)]
        for _ in range(100):
            sentences, facts = draft(entity)
            if all(
                sum(_has_phrase(s, answer) for s in sentences) == 1
                and _has_phrase(evidence, answer)
                for evidence, answer, _ in facts.values()
            ):
                text = " ".join(sentences)
                assert _SENTENCE_END.split(text) == sentences, sentences
                return Document(entity.doc_id, entity.name, text), facts
        raise RuntimeError(f"could not draft a document for {entity.name!r}")

    def _lifetime_year(self, person: Person, earliest: int = 0) -> int | None:
        """A year in which ``person`` was an adult (18 to 75) and not before ``earliest``."""
        low = max(person.birth_year + 18, earliest)
        high = min(person.birth_year + 75, 2023)
        return self.rng.randint(low, high) if low <= high else None

    def _person(self, p: Person):
        rng = self.rng
        she = p.pronoun == "she"
        refs = dict(
            pron="she" if she else "he",
            poss="her" if she else "his",
            obj="her" if she else "him",
            name=p.name,
            surname=p.surname,
        )
        a_prof = _a(p.profession)
        work_kind = _PROFESSIONS[p.profession]
        work_year = rng.randint(
            p.birth_year + 20, max(p.birth_year + 20, min(2023, p.birth_year + 65))
        )

        # (template, values, relation or None, mentions another person of the same pronoun)
        parts: list[tuple[str, dict, str | None, bool]] = []
        parts.append(
            (rng.choice(_PERSON_FACTS["birth_year"]), {"year": p.birth_year}, "birth_year", False)
        )
        parts.append(
            (rng.choice(_PERSON_FACTS["birth_town"]), {"town": p.birth_town}, "birth_town", False)
        )
        parts.append(
            (
                rng.choice(_WORK_FACTS[work_kind]),
                {"work": p.notable_work, "year": work_year},
                "notable_work",
                False,
            )
        )
        if p.founder:
            age = (
                next(c.founding_year for c in self.companies if c.name == p.company) - p.birth_year
            )
            parts.append(
                (
                    rng.choice(_PERSON_FACTS["led"]),
                    {"company": p.company, "n": rng.randint(5, max(5, min(35, 80 - age)))},
                    None,
                    False,
                )
            )
        else:
            parts.append(
                (rng.choice(_PERSON_FACTS["employer"]), {"company": p.company}, "employer", False)
            )

        other_towns = [t.name for t in self.towns if t.name != p.birth_town]
        options = ["sibling", "parent", "visit", "letters", "declined"]
        rng.shuffle(options)
        n_distractors = rng.randint(1, 3)
        for kind in options:
            if n_distractors == 0:
                break
            template = rng.choice(_PERSON_DISTRACTORS[kind])
            values: dict = {}
            same_gender = False
            if kind == "sibling":
                y = p.birth_year + rng.choice((-1, 1)) * rng.randint(1, 9)
                values = {
                    "rel": "younger" if y > p.birth_year else "elder",
                    "sibling": "brother" if she else "sister",  # never "she ... she"
                    "y": y,
                }
            elif kind == "parent":
                values = {
                    "parent": "father" if she else "mother",
                    "a_prof2": _a(rng.choice([x for x in _PROFESSIONS if x != p.profession])),
                    "town2": rng.choice(other_towns),
                }
            elif kind == "visit":
                values = {"town2": rng.choice(other_towns), "y": self._lifetime_year(p)}
            elif kind == "letters":
                near = [
                    q for q in self.people if q is not p and abs(q.birth_year - p.birth_year) <= 30
                ]
                if not near:
                    continue
                other = rng.choice(near)
                values = {"other": other.name}
                same_gender = other.pronoun == p.pronoun
            else:
                others = [
                    c
                    for c in self.companies
                    if c.name != p.company and c.founding_year <= p.birth_year + 60
                ]
                if not others:
                    continue
                company = rng.choice(others)
                y = self._lifetime_year(p, company.founding_year + 1)
                if y is None:
                    continue
                values = {"company2": company.name, "y": y}
            parts.append((template, values, None, same_gender))
            n_distractors -= 1
        n_fillers = max(0, rng.randint(6, 7) - len(parts))  # 7 or 8 sentences with the intro
        parts += [(f, {}, None, False) for f in rng.sample(_PERSON_FILLERS, n_fillers)]
        rng.shuffle(parts)

        intro = rng.choice(_PERSON_FACTS["profession"]).format(
            name=p.name, a_prof=a_prof, poss=refs["poss"]
        )
        sentences, facts = [intro], {"profession": (intro, p.profession, ())}
        prev_same_gender = False
        for template, values, relation, same_gender in parts:
            use_pronoun = not prev_same_gender and rng.random() < 0.6
            subj = refs["pron"] if use_pronoun else p.surname
            poss = refs["poss"] if use_pronoun else f"{p.surname}'s"
            text = template.format(
                Subj=_cap(subj),
                subj=subj,
                Poss=_cap(poss),
                poss=refs["poss"],  # mid-sentence ("all her life") a pronoun reads better
                pron=refs["pron"],
                obj=refs["obj"],
                name=p.name,
                **values,
            )
            sentences.append(_cap(text))
            prev_same_gender = same_gender
            if relation is not None:
                facts[relation] = (text, *self._answer(relation, p))
        return sentences, facts

    def _town(self, t: Town):
        rng = self.rng
        parts: list[str] = [
            rng.choice(_TOWN_FACTS["founding_year"]).format(T=t.name, year=t.founding_year),
            rng.choice(_TOWN_FACTS["population"]).format(T=t.name, pop=f"{t.population:,}"),
            rng.choice(_TOWN_FACTS["river"]).format(T=t.name, river=t.river),
            rng.choice(_TOWN_FACTS["known_for"]).format(
                T=t.name, thing=t.known_for, season=rng.choice(_SEASONS)
            ),
        ]
        facts = {
            "founding_year": (parts[0], str(t.founding_year), (f"in {t.founding_year}",)),
            "population": (parts[1], f"{t.population:,}", _number_aliases(t.population)),
            "river": (parts[2], t.river, (f"{t.river} River", f"River {t.river}")),
            "known_for": (parts[3], t.known_for, _name_aliases(t.known_for)),
        }
        # A notable person always (so towns name people), then 0 to 2 other distractors.
        visitors = [p for p in self.people if p.birth_town != t.name]
        if visitors:
            other = rng.choice(visitors)
            kind = rng.choice(("resident", "visit"))
            template = rng.choice(_TOWN_DISTRACTORS[kind])
            parts.append(template.format(T=t.name, other=other.name, y=self._lifetime_year(other)))
        options = ["depot", "village", "district", "canal"]
        rng.shuffle(options)
        n_more = rng.randint(0, 2)
        for kind in options:
            if n_more == 0:
                break
            template = rng.choice(_TOWN_DISTRACTORS[kind])
            if kind == "depot":
                others = [c for c in self.companies if c.headquarters != t.name]
                if not others:
                    continue
                c = rng.choice(others)
                text = template.format(
                    T=t.name, company2=c.name, y=rng.randint(c.founding_year + 1, 2020)
                )
            elif kind == "village":
                y = rng.randint(1040, 1850)
                if y == t.founding_year:
                    continue
                text = template.format(y=y)
            elif kind == "district":
                pop2 = round(t.population * rng.uniform(1.6, 4.0), -2)
                text = template.format(pop2=f"{int(pop2):,}")
            else:
                others = [r.name for r in self.rivers if r.name != t.river]
                if not others:
                    continue
                text = template.format(river2=rng.choice(others))
            parts.append(text)
            n_more -= 1
        parts += rng.sample(_TOWN_FILLERS, max(0, rng.randint(6, 7) - len(parts)))
        rng.shuffle(parts)
        return [rng.choice(_TOWN_INTROS).format(T=t.name)] + parts, facts

    def _company(self, c: Company):
        rng = self.rng
        fmt = dict(C=c.name, T=c.headquarters)
        parts: list[str] = [
            rng.choice(_COMPANY_FACTS["founding_year"]).format(year=c.founding_year, **fmt),
            rng.choice(_COMPANY_FACTS["founder"]).format(person=c.founder, **fmt),
            rng.choice(_COMPANY_FACTS["headquarters"]).format(**fmt),
            rng.choice(_COMPANY_FACTS["product"]).format(product=c.product, **fmt),
            rng.choice(_COMPANY_FACTS["employees"]).format(n=f"{c.employees:,}", **fmt),
        ]
        surname = c.founder.split()[-1]
        facts = {
            "founding_year": (parts[0], str(c.founding_year), (f"in {c.founding_year}",)),
            "founder": (parts[1], c.founder, (surname,)),
            "headquarters": (parts[2], c.headquarters, (f"in {c.headquarters}",)),
            "product": (parts[3], c.product, _name_aliases(c.product)),
            "employees": (parts[4], f"{c.employees:,}", _number_aliases(c.employees)),
        }
        options = ["branch", "toured", "rival", "peak"]
        rng.shuffle(options)
        n_distractors = rng.randint(1, 2)
        item = c.product.split(" ", 1)[1]
        for kind in options:
            if n_distractors == 0:
                break
            template = rng.choice(_COMPANY_DISTRACTORS[kind])
            if kind == "branch":
                others = [t.name for t in self.towns if t.name != c.headquarters]
                text = template.format(
                    town2=rng.choice(others), y=rng.randint(c.founding_year + 1, 2020)
                )
            elif kind == "toured":
                visitors = [p for p in self.people if p.name != c.founder]
                other = rng.choice(visitors)
                y = self._lifetime_year(other, c.founding_year + 1)
                if y is None:
                    continue
                text = template.format(other=other.name, y=y)
            elif kind == "rival":
                y = rng.randint(1800, 2015)
                if y == c.founding_year:
                    continue
                text = template.format(y=y, item=item)
            else:
                n2 = c.employees + 10 * rng.randint(5, 400)
                text = template.format(y=rng.randint(c.founding_year + 1, 2020), n2=f"{n2:,}")
            parts.append(text)
            n_distractors -= 1
        parts += rng.sample(_COMPANY_FILLERS, max(0, 7 - len(parts)))
        rng.shuffle(parts)
        return [rng.choice(_COMPANY_INTROS).format(**fmt)] + parts, facts

    def _river(self, r: River):
        rng = self.rng
        length = f"{r.length_km} kilometres"
        parts: list[str] = [
            rng.choice(_RIVER_FACTS["length"]).format(R=r.name, length=length),
            rng.choice(_RIVER_FACTS["source"]).format(R=r.name, hills=r.source),
            rng.choice(_RIVER_FACTS["mouth"]).format(R=r.name, lake=r.mouth),
        ]
        facts = {
            "length": (
                parts[0],
                length,
                (f"{r.length_km} km", f"{r.length_km} kilometers", str(r.length_km)),
            ),
            "source": (parts[1], r.source, (r.source.split()[0],)),
            "mouth": (parts[2], r.mouth, (r.mouth.split()[1],)),
        }
        options = ["mapped", "tributary", "dam"]
        rng.shuffle(options)
        for kind in options[: rng.randint(1, 3)]:
            template = _RIVER_DISTRACTORS[kind][0]
            if kind == "mapped":
                other = rng.choice(self.people)
                text = template.format(other=other.name, y=self._lifetime_year(other))
            elif kind == "tributary":
                length2 = f"{rng.randint(5, max(6, r.length_km // 3))} kilometres"
                text = template.format(length2=length2, side=rng.choice(("east", "west")))
            else:
                text = template.format(y=rng.randint(1850, 2010))
            parts.append(text)
        parts += rng.sample(_RIVER_FILLERS, max(0, rng.randint(6, 7) - len(parts)))
        rng.shuffle(parts)
        return [rng.choice(_RIVER_INTROS).format(R=r.name)] + parts, facts

    # -- answers and questions --------------------------------------------------------------

    def _answer(self, relation: str, p: Person) -> tuple[str, tuple[str, ...]]:
        if relation == "birth_year":
            return str(p.birth_year), (f"in {p.birth_year}",)
        if relation == "birth_town":
            return p.birth_town, (f"in {p.birth_town}",)
        if relation == "notable_work":
            return p.notable_work, _name_aliases(p.notable_work)
        return p.company, _name_aliases(p.company)  # employer

    def _question(self, entity: Entity, relation: str) -> str:
        if relation == "notable_work":
            templates = _WORK_QUESTIONS[_PROFESSIONS[entity.profession]]
        else:
            templates = _QUESTIONS[entity.kind, relation]
        return self.rng.choice(templates).format(name=entity.name)


def _a(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _has_phrase(sentence: str, phrase: str) -> bool:
    """``phrase`` occurs in ``sentence`` as whole words (case-sensitive)."""
    return re.search(rf"(?<![\w,]){re.escape(phrase)}(?![\w]|,\d)", sentence) is not None


def _number_aliases(n: int) -> tuple[str, ...]:
    return (str(n),) if n >= 1000 else ()


def _name_aliases(name: str) -> tuple[str, ...]:
    """Other accepted forms of an invented name: "and" for "&", the title without "The"."""
    out = []
    if " & " in name:
        out.append(name.replace(" & ", " and "))
    for lead in ("The ", "A "):
        if name.startswith(lead):
            out.append(name[len(lead) :])
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# Saving and loading


def save_kb(kb: KnowledgeBase, path: str | Path) -> Path:
    """Write ``kb`` to ``path`` as JSON, atomically: readers see the old file or the whole new
    one (a temporary file in the same folder, then ``os.replace``). Returns the path."""
    from llmlab.results import write_atomic

    if not isinstance(kb, KnowledgeBase):
        raise TypeError(f"kb: expected a KnowledgeBase, got {type(kb).__name__}")
    data = {
        "format": _FORMAT,
        "version": _VERSION,
        "seed": kb.seed,
        "dev_fraction": kb.dev_fraction,
        "entities": [{"kind": e.kind, **asdict(e)} for e in kb.entities],
        "documents": [asdict(d) for d in kb.documents],
        "questions": [asdict(q) for q in kb.questions],
    }
    text = json.dumps(data, indent=1, ensure_ascii=False)
    return write_atomic(path, text.encode("utf-8"))


def load_kb(path: str | Path) -> KnowledgeBase:
    """The knowledge base that :func:`save_kb` wrote to ``path``."""
    path = Path(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise ValueError(f"path: {path} is not a knowledge base written by save_kb")
    if data.get("version") != _VERSION:
        raise ValueError(
            f"path: {path} has knowledge-base version {data.get('version')!r}, expected {_VERSION}"
        )
    entities = []
    for record in data["entities"]:
        record = dict(record)
        cls = _KINDS[record.pop("kind")]
        entities.append(cls(**{f.name: record[f.name] for f in fields(cls)}))
    documents = [Document(**d) for d in data["documents"]]
    questions = [Question(**{**q, "aliases": tuple(q["aliases"])}) for q in data["questions"]]
    return KnowledgeBase(documents, questions, entities, data["seed"], data["dev_fraction"])
