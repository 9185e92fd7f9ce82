"""llmlab.rag.kb: the fictional knowledge base is seeded, self-consistent (every answer in one
sentence of its gold document), its names never overlap, splits are by entity, it round-trips
through JSON atomically, and the answer metrics normalize as documented."""

from __future__ import annotations

import json
import os
import random
import re
from collections import Counter, defaultdict

import pytest

import llmlab.results
from llmlab.rag import kb as kbmod
from llmlab.rag.kb import (
    RELATIONS,
    Company,
    KnowledgeBase,
    Person,
    Question,
    River,
    Town,
    contains_match,
    exact_match,
    load_kb,
    make_kb,
    normalize_answer,
    save_kb,
)


@pytest.fixture(scope="module")
def kb() -> KnowledgeBase:
    return make_kb(240, seed=0)


def _has(sentence: str, phrase: str) -> bool:
    """``phrase`` in ``sentence`` as whole words ("1873" is not in "18730" nor in "1,873")."""
    return re.search(rf"(?<![\w,]){re.escape(phrase)}(?!\w|,\d)", sentence) is not None


def _check_consistent(kb: KnowledgeBase) -> None:
    """The invariants every knowledge base must hold, whatever its size and seed."""
    docs = {d.doc_id: d for d in kb.documents}
    assert len(docs) == len(kb.documents)
    for q in kb.questions:
        doc = docs[q.doc_id]
        assert q.answer in q.evidence, q
        assert q.evidence in doc.sentences, q
        # the answer is in exactly one sentence of the gold document: the evidence
        assert [s for s in doc.sentences if _has(s, q.answer)] == [q.evidence], q
        assert q.split in ("dev", "test") and q.question.endswith("?")
    # one sentence per fact: a document's facts sit in different sentences
    by_doc = defaultdict(list)
    for q in kb.questions:
        by_doc[q.doc_id].append(q)
    for doc_id, qs in by_doc.items():
        assert len({q.evidence for q in qs}) == len(qs), doc_id
        assert len({q.relation for q in qs}) == len(qs), doc_id
    for doc in kb.documents:
        assert 4 <= len(doc.sentences) <= 8, doc
        assert " ".join(doc.sentences) == doc.text
    assert len({q.question for q in kb.questions}) == len(kb.questions)
    assert len({q.qid for q in kb.questions}) == len(kb.questions)


def test_sizes_and_shape(kb):
    assert len(kb.documents) == len(kb.entities) == 240
    kinds = Counter(e.kind for e in kb.entities)
    assert kinds == {"person": 120, "town": 48, "company": 48, "river": 24}
    founders = sum(isinstance(e, Person) and e.founder for e in kb.entities)
    assert founders == 48  # one per company; founders get no employer question
    expected = sum(len(RELATIONS[k]) * n for k, n in kinds.items()) - founders
    assert len(kb.questions) == expected == 1056
    words = sorted(len(d.text.split()) for d in kb.documents)
    assert 50 <= words[0] and words[-1] <= 170 and 60 <= words[len(words) // 2] <= 120
    assert [d.doc_id for d in kb.documents] == [f"d{i:04d}" for i in range(240)]
    assert {d.title for d in kb.documents} == {e.name for e in kb.entities}
    assert isinstance(kb.questions[0], Question) and isinstance(kb.questions[0].aliases, tuple)


def test_deterministic_for_a_seed():
    a, b = make_kb(40, seed=3), make_kb(40, seed=3)
    assert a == b
    c = make_kb(40, seed=4)
    assert a != c
    assert not {d.title for d in a.documents} & {d.title for d in c.documents}
    state = random.getstate()
    make_kb(10, seed=1)
    assert random.getstate() == state  # the global random state is not touched


def test_answers_in_evidence_in_gold_docs(kb):
    _check_consistent(kb)


@pytest.mark.parametrize("n, seed", [(10, 0), (10, 7), (37, 5), (240, 1), (320, 2)])
def test_consistent_across_sizes_and_seeds(n, seed):
    kb = make_kb(n, seed=seed)
    assert len(kb.documents) == n
    _check_consistent(kb)


def test_questions_match_the_entities(kb):
    """Each question's answer is the entity's recorded value, and each fact is asked once."""
    by_doc = {e.doc_id: e for e in kb.entities}
    asked = Counter((q.doc_id, q.relation) for q in kb.questions)
    assert set(asked.values()) == {1}
    for e in kb.entities:
        relations = set(RELATIONS[e.kind])
        if isinstance(e, Person) and e.founder:
            relations.discard("employer")
        assert {r for (d, r) in asked if d == e.doc_id} == relations
    for q in kb.questions:
        e = by_doc[q.doc_id]
        expected = {
            (Person, "profession"): getattr(e, "profession", None),
            (Person, "birth_year"): str(getattr(e, "birth_year", "")),
            (Person, "birth_town"): getattr(e, "birth_town", None),
            (Person, "notable_work"): getattr(e, "notable_work", None),
            (Person, "employer"): getattr(e, "company", None),
            (Town, "founding_year"): str(getattr(e, "founding_year", "")),
            (Town, "population"): f"{getattr(e, 'population', 0):,}",
            (Town, "river"): getattr(e, "river", None),
            (Town, "known_for"): getattr(e, "known_for", None),
            (Company, "founding_year"): str(getattr(e, "founding_year", "")),
            (Company, "founder"): getattr(e, "founder", None),
            (Company, "headquarters"): getattr(e, "headquarters", None),
            (Company, "product"): getattr(e, "product", None),
            (Company, "employees"): f"{getattr(e, 'employees', 0):,}",
            (River, "length"): f"{getattr(e, 'length_km', 0)} kilometres",
            (River, "source"): getattr(e, "source", None),
            (River, "mouth"): getattr(e, "mouth", None),
        }[type(e), q.relation]
        assert q.answer == expected, (q, e)


def test_facts_are_consistent_across_entities(kb):
    people = {e.name: e for e in kb.entities if isinstance(e, Person)}
    towns = {e.name: e for e in kb.entities if isinstance(e, Town)}
    companies = {e.name: e for e in kb.entities if isinstance(e, Company)}
    rivers = {e.name for e in kb.entities if isinstance(e, River)}
    for p in people.values():
        assert 1780 <= p.birth_year <= 1990 and p.birth_town in towns
        assert p.company in companies
        assert p.birth_year > towns[p.birth_town].founding_year
        assert (companies[p.company].founder == p.name) == p.founder
    for c in companies.values():
        assert c.headquarters in towns and c.founder in people
        assert people[c.founder].birth_year + 18 <= c.founding_year
    for t in towns.values():
        assert t.river in rivers


def test_only_the_gold_sentence_pairs_subject_and_answer(kb):
    """No sentence of another document names the question's subject with its answer."""
    titles = {d.doc_id: d.title for d in kb.documents}
    sentences = [(d.doc_id, s) for d in kb.documents for s in d.sentences]
    by_subject = defaultdict(list)
    for doc_id, s in sentences:
        for title in titles.values():
            if title in s:
                by_subject[title].append((doc_id, s))
    for q in kb.questions:
        subject = titles[q.doc_id]
        for doc_id, s in by_subject[subject]:
            if doc_id != q.doc_id:
                assert not _has(s, q.answer), (q, s)


def test_names_unique_and_no_substrings(kb):
    names = [n.casefold() for n in kb.names()]
    assert len(names) == len(set(names)) > 500
    joined = "\n".join(names)
    for name in names:
        assert joined.count(name) == 1, name  # in no other name (and no name twice)


def test_cross_references(kb):
    """Entity names appear in other documents, so a name alone does not find the gold one."""
    texts = {d.doc_id: d.text for d in kb.documents}
    elsewhere = {
        e.name: sum(e.name in t for doc_id, t in texts.items() if doc_id != e.doc_id)
        for e in kb.entities
    }
    for e in kb.entities:
        if isinstance(e, Town | Company):
            assert elsewhere[e.name] >= 1, e.name
    assert sum(n >= 1 for n in elsewhere.values()) >= 0.8 * len(kb.entities)
    assert sum(elsewhere.values()) / len(kb.entities) >= 2


def test_paraphrases_vary(kb):
    templates = defaultdict(set)
    for q in kb.questions:
        subject = kb.document(q.doc_id).title
        templates[q.relation].add(q.question.replace(subject, "X"))
    assert all(len(t) >= 3 for r, t in templates.items() if r != "notable_work"), templates


def test_splits_by_entity(kb):
    splits = defaultdict(set)
    for q in kb.questions:
        splits[q.doc_id].add(q.split)
    assert all(len(s) == 1 for s in splits.values())
    for e in kb.entities:
        assert splits[e.doc_id] == {e.split}
    dev, test = kb.split("dev"), kb.split("test")
    assert len(dev) + len(test) == len(kb.questions)
    assert 0.2 <= len(dev) / len(kb.questions) <= 0.3
    assert 0.2 <= sum(e.split == "dev" for e in kb.entities) / len(kb.entities) <= 0.3
    for kind in RELATIONS:  # every kind is in both splits
        assert {e.split for e in kb.entities if e.kind == kind} == {"dev", "test"}
    with pytest.raises(ValueError, match="name: expected one of"):
        kb.split("train")


def test_save_load_round_trip(kb, tmp_path):
    path = save_kb(kb, tmp_path / "kb.json")
    assert path == tmp_path / "kb.json"
    assert json.loads(path.read_text())["format"] == "llmlab.rag.kb"
    again = load_kb(path)
    assert again == kb
    assert again.document("d0007") == kb.document("d0007")
    assert isinstance(again.questions[0].aliases, tuple)
    assert [type(e) for e in again.entities] == [type(e) for e in kb.entities]
    (tmp_path / "other.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="not a knowledge base"):
        load_kb(tmp_path / "other.json")


def test_save_is_atomic(tmp_path, monkeypatch):
    small = make_kb(10, seed=0)
    path = save_kb(small, tmp_path / "kb.json")
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    other = make_kb(10, seed=1)
    monkeypatch.setattr(json, "dumps", boom)  # failing before anything is written
    with pytest.raises(OSError, match="disk full"):
        save_kb(other, path)
    monkeypatch.undo()
    monkeypatch.setattr(llmlab.results.os, "fsync", boom)  # failing after a partial write
    with pytest.raises(OSError, match="disk full"):
        save_kb(other, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["kb.json"]  # no temporary file left behind
    assert load_kb(path) == small


def _question(answer: str, aliases: tuple[str, ...] = ()) -> Question:
    return Question("q0", "?", answer, aliases, "d0000", answer, "relation", "test")


def test_normalize_answer():
    assert normalize_answer("48,200") == normalize_answer("48200") == "48200"
    assert normalize_answer("1,234,567 people") == "1234567 people"
    assert normalize_answer("The Brunnholt") == normalize_answer("brunnholt") == "brunnholt"
    assert normalize_answer("  An  Ossel\tlily! ") == "ossel lily"
    assert normalize_answer("Kessar & Tolwick") == "kessar tolwick"
    assert normalize_answer("Ossingrove's loom") == "ossingroves loom"
    assert normalize_answer("3.5 km.") == "3.5 km"
    assert normalize_answer("Theodora, Anna") == "theodora anna"  # articles as words only
    assert normalize_answer("") == ""
    with pytest.raises(TypeError, match="text: expected a str"):
        normalize_answer(48200)


def test_exact_and_contains_match(kb):
    population = _question("48,200", ("48200",))
    assert exact_match("48200", population) and exact_match("48,200.", population)
    assert not exact_match("about 48,200", population)
    assert contains_match("It has about 48,200 people.", population)
    assert not exact_match("48,300", population) and not contains_match("482,000", population)
    assert exact_match("The Brunnholt", "brunnholt")
    assert not exact_match("Brunnholtby", "Brunnholt")
    assert not contains_match("Brunnholtby is a town.", "Brunnholt")  # whole words only
    year = _question("1873", ("in 1873",))
    assert exact_match("In 1873.", year) and contains_match("He was born in 1873.", year)
    assert not contains_match("He was born in 18730.", year)
    assert not exact_match("1874", year) and not contains_match("born in 1874", year)
    assert not exact_match("", year) and not contains_match("", year)
    # on the real questions: the answer and its aliases match, another answer does not
    q = next(q for q in kb.questions if q.relation == "employer" and "&" in q.answer)
    assert exact_match(q.answer.replace("&", "and"), q) and exact_match(q.answer.upper(), q)
    other = next(x for x in kb.questions if x.relation == "employer" and x.answer != q.answer)
    assert not exact_match(other.answer, q) and not contains_match(other.answer, q)
    assert contains_match(q.evidence, q)
    founder = next(q for q in kb.questions if q.relation == "founder")
    assert exact_match(founder.answer.split()[-1], founder)  # the surname alone
    with pytest.raises(TypeError, match="question: expected a Question"):
        exact_match("x", 3)
    with pytest.raises(TypeError, match="text: expected a str"):
        contains_match(None, q)


def test_argument_errors():
    with pytest.raises(ValueError, match=r"n_entities: expected an int >= 10, got 3"):
        make_kb(3)
    with pytest.raises(ValueError, match=r"n_entities: expected an int from 10 to 1000"):
        make_kb(5000)
    with pytest.raises(TypeError, match="n_entities: expected an int"):
        make_kb(24.0)
    with pytest.raises(TypeError, match="n_entities: expected an int"):
        make_kb(True)
    with pytest.raises(TypeError, match="seed: expected an int"):
        make_kb(20, seed="0")
    for bad in (0, 1, 1.5, -0.1):
        with pytest.raises(ValueError, match="dev_fraction: expected a number in"):
            make_kb(20, dev_fraction=bad)
    with pytest.raises(TypeError, match="kb: expected a KnowledgeBase"):
        save_kb({"documents": []}, "kb.json")
    with pytest.raises(KeyError, match="doc_id"):
        make_kb(10).document("d9999")


def test_public_names():
    for name in kbmod.__all__:
        assert getattr(kbmod, name).__doc__ or name in ("RELATIONS", "SPLITS"), name


def test_module_docstring_example_holds():
    import doctest

    result = doctest.testmod(kbmod, verbose=False)
    assert result.attempted > 0 and result.failed == 0


def test_paraphrases_are_the_other_wordings_of_the_same_fact():
    kb = make_kb(24, seed=3)
    for q in kb.questions:
        others = kb.paraphrases(q)
        assert len(others) >= 2 and q.question not in others
        name = kb.document(q.doc_id).title
        assert all(name in o and o.endswith("?") for o in others)
    with pytest.raises(TypeError, match="question: expected a Question"):
        kb.paraphrases("When was it founded?")
