"""llmlab.data.augment: EDA's synonym replacement from a curated offline table."""

from __future__ import annotations

import pytest

from llmlab import data

TEXT = (
    "Create a new socket and return it. Returns the current value, or None if the list is "
    "empty; removes nothing.\n"
    "Use ``create()`` to create one: os.create, get_create and create(x) are code.\n"
    ">>> create the thing\n"
    "... remove it\n"
    "See `remove` too. Remove it."
)


def test_only_prose_words_are_replaceable():
    found = data.replaceable_words(TEXT)
    words = [w for _, w in found]
    assert words == ["Create", "Returns", "current", "empty", "removes", "create", "Remove"]
    assert all(TEXT[i : i + len(w)] == w for i, w in found)
    # "return" is a verb and a noun ("the return value"): not in the table
    assert "return" not in data.SYNONYMS


def test_synonym_replace_is_seeded_and_keeps_case():
    a = data.synonym_replace(TEXT, rate=0.2, seed=1)
    assert a == data.synonym_replace(TEXT, rate=0.2, seed=1)
    new, replacements = a
    n_words = len(TEXT.split())
    assert len(replacements) == min(7, max(1, round(0.2 * n_words)))
    for r in replacements:
        assert r.new.lower() in data.SYNONYMS[r.old.lower()]
        assert r.new[0].isupper() == r.old[0].isupper()
    # everything else is untouched: undo the replacements from the end
    undone = new
    shift = sum(len(r.new) - len(r.old) for r in replacements)
    for r in reversed(replacements):
        shift -= len(r.new) - len(r.old)
        start = r.start + shift
        assert undone[start : start + len(r.new)] == r.new
        undone = undone[:start] + r.old + undone[start + len(r.new) :]
    assert undone == TEXT
    for kept in ("``create()``", "os.create", "get_create", "create(x)", ">>> create the thing"):
        assert kept in new
    outcomes = {data.synonym_replace(TEXT, rate=0.2, seed=s)[0] for s in range(8)}
    assert len(outcomes) > 1


def test_synonym_replace_edge_cases():
    assert data.synonym_replace("Nothing to see here.", seed=0) == ("Nothing to see here.", [])
    assert data.synonym_replace(TEXT, rate=0.0) == (TEXT, [])
    assert data.synonym_replace("CREATE it", rate=1.0, seed=0)[0] in {"MAKE it", "BUILD it"}
    new, reps = data.synonym_replace("Returns x.", rate=0.01, seed=0)
    assert new == "Gives back x." and len(reps) == 1  # at least one word when one is possible
    with pytest.raises(ValueError, match="rate"):
        data.synonym_replace(TEXT, rate=1.5)
    with pytest.raises(TypeError, match="text"):
        data.replaceable_words(b"bytes")
    custom = {"socket": ("plug",)}
    assert data.synonym_replace("a socket", rate=1.0, table=custom)[0] == "a plug"


def test_tables_are_consistent():
    for word, synonyms in data.SYNONYMS.items():
        assert word == word.lower() and synonyms and word not in synonyms
        assert not set(synonyms) & set(data.ANTONYMS.get(word, ())), word
    for word, opposites in data.ANTONYMS.items():
        for other in opposites:
            assert word in data.ANTONYMS[other]  # symmetric
    assert data.ANTONYMS["true"] == ("false",)
