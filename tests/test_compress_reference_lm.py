"""llmlab.compress.reference_lm: the course's full-precision LM, trained once and cached."""

from __future__ import annotations

import torch

from llmlab import results
from llmlab.compress import evaluate as E
from llmlab.compress import reference_lm as R


def test_docstring_lm_trains_once_then_loads_the_same_model(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMLAB_CACHE", str(tmp_path))
    first = R.docstring_lm(smoke=True)
    assert first.info["recipe"] == R.SMOKE_RECIPE
    assert first.info["parameters"] == sum(p.numel() for p in first.model.parameters())
    assert results.result_path("05_compression/docstring-lm-smoke", ".safetensors").exists()
    again = R.docstring_lm(smoke=True)
    for (name, a), (_, b) in zip(
        first.model.state_dict().items(), again.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert (
        again.tokenizer("Return the value")["input_ids"]
        == first.tokenizer("Return the value")["input_ids"]
    )


def test_a_run_stopped_before_the_model_was_written_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMLAB_CACHE", str(tmp_path))
    R.docstring_lm(smoke=True)
    results.result_path("05_compression/docstring-lm-smoke", ".safetensors").unlink()
    rebuilt = R.docstring_lm(smoke=True)  # the tokenizer and info exist, the model does not
    assert results.result_path("05_compression/docstring-lm-smoke", ".safetensors").exists()
    assert rebuilt.info["recipe"]["steps"] == R.SMOKE_RECIPE["steps"]


def test_the_chapter_protocol_scores_it_with_its_own_tokens(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMLAB_CACHE", str(tmp_path))
    ref = R.docstring_lm(smoke=True)
    windows = E.heldout_windows(ref.tokenizer, E.Protocol(2, 32))
    assert windows.shape == (2, 32) and int(windows.max()) < ref.tokenizer.vocab_size
    nll = E.window_nll(ref.model, windows)
    assert nll.shape == (2,) and torch.isfinite(nll).all()
    assert ref.tokenizer.decode(ref.tokenizer("def f(x):")["input_ids"]) == "def f(x):"
    x, y = R.train_batches(ref)(0)
    assert x.shape == (ref.info["recipe"]["batch"], ref.info["recipe"]["seq"]) and torch.equal(
        x[:, 1:], y[:, :-1]
    )


def test_test_and_calibration_windows_come_from_their_splits(tmp_path, monkeypatch):
    from llmlab.data import pretraining_corpus

    monkeypatch.setenv("LLMLAB_CACHE", str(tmp_path))
    ref = R.docstring_lm(smoke=True)
    test = R.test_windows(ref, 2, 16)
    calib = R.calibration_windows(ref, 2, 16)
    corpus = pretraining_corpus(R.SMOKE_RECIPE["corpus_bytes"])
    first_test = ref.tokenizer(corpus.test.documents[0])["input_ids"][:16]
    first_train = ref.tokenizer(corpus.train.documents[0])["input_ids"][:16]
    assert test[0, : len(first_test)].tolist() == first_test
    assert calib[0, : len(first_train)].tolist() == first_train
    import pytest

    with pytest.raises(ValueError, match="n_windows"):
        R.test_windows(ref, 0, 16)


def test_a_model_saved_from_another_recipe_is_retrained(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMLAB_CACHE", str(tmp_path))
    R.docstring_lm(smoke=True)
    monkeypatch.setitem(R.SMOKE_RECIPE, "steps", 3)
    again = R.docstring_lm(smoke=True)
    assert again.info["recipe"]["steps"] == 3


def test_a_changed_recipe_is_cached_under_its_own_name(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMLAB_CACHE", str(tmp_path))
    course = R.docstring_lm(smoke=True)
    wide = R.docstring_lm(smoke=True, d_model=128, d_ff=384, optimizer="adamw")
    assert wide.info["recipe"] == dict(R.SMOKE_RECIPE, d_model=128, d_ff=384, optimizer="adamw")
    assert wide.model.config.d_model == 128 and course.model.config.d_model == 64
    name = "05_compression/docstring-lm-smoke-d_ff-384-d_model-128-optimizer-adamw"
    assert results.result_path(name, ".safetensors").exists()
    # the defaults named explicitly are the course's model, not a new one
    same = R.docstring_lm(smoke=True, optimizer="muon", d_model=64)
    assert same.info == course.info
    assert R.recipe_with(optimizer="muon") == R.RECIPE


def test_recipe_changes_are_checked():
    import pytest

    with pytest.raises(ValueError, match="width: not a recipe option"):
        R.recipe_with(width=256)
    with pytest.raises(ValueError, match="optimizer: expected 'muon' or 'adamw'"):
        R.recipe_with(optimizer="sgd")
    with pytest.raises(ValueError, match="n_heads: expected a divisor of d_model 128"):
        R.recipe_with(n_heads=5)
    with pytest.raises(TypeError, match="d_model: expected an int"):
        R.recipe_with(d_model="256")
    with pytest.raises(ValueError, match="lr: expected a positive number"):
        R.recipe_with(lr=0.0)
    with pytest.raises(ValueError, match="steps"):
        R.recipe_with(steps=0)
    with pytest.raises(ValueError, match="vocab: not a recipe option"):
        R.docstring_lm(smoke=True, vocab=4096)  # the tokenizer is fixed by the recipe
