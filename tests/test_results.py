"""llmlab.results: atomic saves in the course cache, clear errors, rebuild when missing."""

from __future__ import annotations

import pytest
import torch

from llmlab import results


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMLAB_CACHE", str(tmp_path))
    return tmp_path


def test_json_round_trip_and_location(cache):
    path = results.save_json("04_post_training/finetune", {"full": 0.91, "seeds": [0, 1]})
    assert path == cache / "results" / "04_post_training" / "finetune.json"
    assert results.load_json("04_post_training/finetune") == {"full": 0.91, "seeds": [0, 1]}
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_missing_result_says_which_notebook():
    with pytest.raises(results.ResultMissingError, match="run 04_post_training/01"):
        results.load_json("04_post_training/nothing", made_by="04_post_training/01")


@pytest.mark.parametrize("bad", ["", "../x", "A/b", "a//b", "a/../b", 3, "/abs"])
def test_bad_names_are_refused(bad):
    with pytest.raises(ValueError, match="name"):
        results.result_path(bad)


def test_cached_json_builds_once():
    calls = []

    def build():
        calls.append(1)
        return {"x": 1}

    assert results.cached_json("ch/x", build) == {"x": 1}
    assert results.cached_json("ch/x", build) == {"x": 1}
    assert len(calls) == 1
    results.cached_json("ch/x", build, rebuild=True)
    assert len(calls) == 2
    with pytest.raises(TypeError, match="build"):
        results.cached_json("ch/y", {"x": 1})


def test_failed_write_keeps_the_old_file(monkeypatch):
    results.save_json("ch/keep", {"v": 1})

    class Boom(Exception):
        pass

    def explode(*args, **kwargs):
        raise Boom

    with monkeypatch.context() as patch:
        patch.setattr(results.os, "replace", explode)
        with pytest.raises(Boom):
            results.save_json("ch/keep", {"v": 2})
    assert results.load_json("ch/keep") == {"v": 1}
    folder = results.result_path("ch/keep").parent
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_tensors_round_trip():
    state = {"a.weight": torch.randn(3, 4), "b": torch.arange(5)}
    results.save_tensors("ch/adapter", state, metadata={"rank": "8"})
    back = results.load_tensors("ch/adapter")
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)
    with pytest.raises(ValueError, match="tensors"):
        results.save_tensors("ch/empty", {})
    with pytest.raises(results.ResultMissingError):
        results.load_tensors("ch/none")


def test_recipe_name_fingerprints_the_recipe_and_the_texts():
    import hashlib

    recipe = (224, 56, 4, 1e-3, 16)
    old_reader = f"r-{hashlib.sha256(repr(recipe).encode()).hexdigest()[:10]}"
    assert results.recipe_name("r", recipe) == old_reader  # the names cached so far stay valid
    digest = hashlib.sha256(repr(recipe).encode())
    for text in ("first trace", "second trace"):
        digest.update(text.encode())
    old_agent = f"a-{digest.hexdigest()[:10]}"
    assert results.recipe_name("a", recipe, "first trace", "second trace") == old_agent
    assert results.recipe_name("a", recipe, "first trace") != old_agent
    assert results.recipe_name("a", (224, 56, 4, 1e-3, 8)) != results.recipe_name("a", recipe)
    with pytest.raises(ValueError, match="name"):
        results.recipe_name("", recipe)
    with pytest.raises(TypeError, match="texts: expected strings"):
        results.recipe_name("a", recipe, b"bytes")
