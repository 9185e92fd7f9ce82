"""A full-precision language model the course owns, for the quantization experiments.

The offline SmolLM2 weights are de-quantised Q4_1 (every block of 32 weights already sits on a
4-bit grid), so a 4-bit method tested on them starts from weights that 4 bits once held: its
error is not the error it would make on a model trained in full precision. Chapter 05 runs
every quantization experiment also on this model: chapter 03's recipe (a LLaMA-layout GPT,
a byte-level BPE of 2,048 ids, Muon, bf16 autocast with fp32 weights) trained on the standard
library's docstrings, widths chosen so that groups of 64 divide every matrix.

:func:`docstring_lm` returns it from the course cache, training it (a few minutes at full size)
and saving it atomically the first time. :class:`TokenizerAdapter` gives the course's
:class:`~llmlab.tokenization.BPETokenizer` the small part of the transformers tokenizer
interface that :mod:`llmlab.compress.evaluate` uses, so the chapter's protocol scores this model
as it scores SmolLM2 (with this model's own tokens).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmlab.validate import require_int, require_positive_int

__all__ = [
    "RECIPE",
    "OPTIONS",
    "recipe_with",
    "SMOKE_RECIPE",
    "TokenizerAdapter",
    "ReferenceLM",
    "docstring_lm",
    "train_batches",
]

EOT = "<|endoftext|>"
RECIPE = dict(
    corpus_bytes=None,  # every cleaned docstring of the standard library
    vocab=2048,
    d_model=128,
    n_layers=4,
    n_heads=4,
    d_ff=384,  # 3 d: divisible by 64, so groups of 64 fit down_proj's inputs
    seq=128,
    batch=8,
    steps=1200,
    lr=3e-3,
    muon_lr=0.02,
    weight_decay=0.1,
    seed=0,
)
OPTIONS = ("d_model", "n_layers", "n_heads", "d_ff", "steps", "lr", "muon_lr", "seed", "optimizer")
_OPTIMIZERS = {"muon": "muon", "adamw": "llmlab"}  # recipe name -> llmlab.training's name
SMOKE_RECIPE = dict(RECIPE, corpus_bytes=250_000, vocab=512, d_model=64, n_layers=2, n_heads=2,
                    d_ff=192, steps=5)  # fmt: skip


class TokenizerAdapter:
    """A :class:`~llmlab.tokenization.BPETokenizer` with the calls chapter 05's protocol makes:
    ``tok(text, add_special_tokens=False)["input_ids"]``, ``eos_token_id``, ``decode``."""

    def __init__(self, bpe):
        self.bpe = bpe
        self.eos_token_id = bpe.encode(EOT)[0]
        self.vocab_size = bpe.vocab_size

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": self.bpe.encode(text, allow_special=False)}

    def decode(self, ids) -> str:
        return self.bpe.decode(list(ids))


@dataclass
class ReferenceLM:
    model: Any
    tokenizer: TokenizerAdapter
    info: dict


def _names(smoke: bool, recipe: dict) -> tuple[str, str, str]:
    """Cache names of the model of ``recipe``: the course's, plus each option it changes."""
    course = SMOKE_RECIPE if smoke else RECIPE
    changed = {k: v for k, v in recipe.items() if course.get(k) != v}
    base = "05_compression/docstring-lm" + ("-smoke" if smoke else "")
    base += "".join(f"-{k}-{v}" for k, v in sorted(changed.items()))
    return base, base + "-tokenizer", base + "-info"


def _changes(smoke: bool, changes: dict) -> dict:
    """``changes`` checked, without those that leave the recipe as it is (the default
    optimizer is Muon)."""
    unknown = sorted(set(changes) - set(OPTIONS))
    if unknown:
        raise ValueError(f"{unknown[0]}: not a recipe option; expected one of {OPTIONS}")
    if changes.get("optimizer", "muon") not in _OPTIMIZERS:
        raise ValueError(f"optimizer: expected 'muon' or 'adamw', got {changes['optimizer']!r}")
    for key, value in changes.items():
        if key in ("lr", "muon_lr"):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{key}: expected a positive number, got {value!r}")
        elif key == "seed":
            require_int(value, key, 0)
        elif key != "optimizer":
            require_positive_int(value, key)
    base = dict(SMOKE_RECIPE if smoke else RECIPE, optimizer="muon")
    return {k: v for k, v in changes.items() if base[k] != v}


def recipe_with(smoke: bool = False, **changes) -> dict:
    """:data:`RECIPE` (or :data:`SMOKE_RECIPE`) with ``changes`` (names in :data:`OPTIONS`;
    ``optimizer``: ``"muon"``, the default, or ``"adamw"``)."""
    recipe = dict(SMOKE_RECIPE if smoke else RECIPE, **_changes(smoke, changes))
    if recipe["d_model"] % recipe["n_heads"]:
        raise ValueError(
            f"n_heads: expected a divisor of d_model {recipe['d_model']}, got {recipe['n_heads']}"
        )
    return recipe


def _batches(documents, recipe: dict, bpe, seed: int):
    """``documents`` (the training split) as ``batch_fn(i) -> (x, y)``, tokenized by ``bpe``
    (kept in memory), and their number of tokens."""
    import numpy as np

    from llmlab.data.packing import RandomBatchSampler, TokenFile, write_token_file

    eot = bpe.encode(EOT)[0]
    with tempfile.TemporaryDirectory(prefix="llmlab_reference_lm_") as tmp:
        ids = bpe.encode_batch(documents)
        tokens = TokenFile(write_token_file(Path(tmp) / "train.bin", ids, eot, bpe.vocab_size))
        tokens.tokens = np.array(tokens.tokens)  # a copy in memory: the folder goes now
    return RandomBatchSampler(tokens, recipe["batch"], recipe["seq"], seed=seed), len(tokens.tokens)


def train_batches(ref: ReferenceLM, seed: int = 1):
    """Batches of the reference LM's training text, ``batch_fn(i) -> (x, y)``, for further
    training (notebook 6's quantization-aware training); ``seed`` picks another order than the
    one the model was trained with (seed 0)."""
    from llmlab.data import pretraining_corpus

    recipe = ref.info["recipe"]
    documents = pretraining_corpus(recipe["corpus_bytes"]).train.documents
    return _batches(documents, recipe, ref.tokenizer.bpe, seed)[0]


def _train(recipe: dict) -> tuple[Any, Any, dict]:
    import torch

    from llmlab.data import pretraining_corpus
    from llmlab.env import seed_everything
    from llmlab.models import Llama, LlamaConfig
    from llmlab.tokenization import train_bpe
    from llmlab.training import TrainConfig, train

    t0 = time.perf_counter()
    corpus = pretraining_corpus(recipe["corpus_bytes"])
    bpe = train_bpe(corpus.train.text, vocab_size=recipe["vocab"], special_tokens=[EOT])
    batches, n_tokens = _batches(corpus.train.documents, recipe, bpe, recipe["seed"])
    config = LlamaConfig(vocab_size=bpe.vocab_size, d_model=recipe["d_model"],
                         n_layers=recipe["n_layers"], n_heads=recipe["n_heads"],
                         d_ff=recipe["d_ff"], tie_embeddings=True)  # fmt: skip
    seed_everything(recipe["seed"])
    model = Llama(config)
    train_config = TrainConfig(
        steps=recipe["steps"],
        lr=recipe["lr"],
        optimizer=_OPTIMIZERS[recipe.get("optimizer", "muon")],
        muon_lr=recipe["muon_lr"],
        weight_decay=recipe["weight_decay"],
        min_lr_ratio=0.0,
        label_smoothing=0.0,
        precision="bf16",
        seed=recipe["seed"],
    )
    history = train(model, batches, train_config, progress=False)
    info = {
        "recipe": recipe,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_tokens": int(n_tokens),
        "final_train_loss": float(sum(history.loss[-50:]) / len(history.loss[-50:])),
        "seconds": time.perf_counter() - t0,
        "torch": torch.__version__,
    }
    return model.eval(), bpe, info


def docstring_lm(smoke: bool = False, rebuild: bool = False, **changes) -> ReferenceLM:
    """The course's full-precision reference LM (fp32 weights), from the course cache or trained
    now and saved (atomically: the model is written last, so a run stopped halfway is rebuilt).
    ``smoke``: a tiny version in a few seconds, for CI. ``changes``: another recipe (see
    :func:`recipe_with`, e.g. ``d_model=256, d_ff=768`` or ``optimizer="adamw"``), cached under
    its own name; the course's model is the one without changes."""
    from llmlab import results
    from llmlab.compress.distill import load_model, save_model
    from llmlab.tokenization import BPETokenizer

    recipe = recipe_with(bool(smoke), **changes)
    model_name, tok_name, info_name = _names(bool(smoke), recipe)
    tok_path = results.result_path(tok_name, ".json")
    have = all(results.result_path(n, s).exists() for n, s in
               ((model_name, ".safetensors"), (tok_name, ".json"), (info_name, ".json")))  # fmt: skip
    info = results.load_json(info_name) if have and not rebuild else None
    if info is not None and info.get("recipe") == recipe:
        return ReferenceLM(load_model(model_name), TokenizerAdapter(BPETokenizer.load(tok_path)),
                           info)  # fmt: skip
    model, bpe, info = _train(recipe)  # none saved, or saved from another recipe
    bpe.save(tok_path)
    results.save_json(info_name, info)
    save_model(model_name, model)
    return ReferenceLM(model, TokenizerAdapter(bpe), info)


def _split_windows(ref: ReferenceLM, split: str, n_windows: int, window: int) -> Any:
    from llmlab.compress.evaluate import document_windows
    from llmlab.data import pretraining_corpus
    from llmlab.validate import require_positive_int

    n = require_positive_int(n_windows, "n_windows")
    w = require_positive_int(window, "window")
    docs = getattr(pretraining_corpus(ref.info["recipe"]["corpus_bytes"]), split).documents
    return document_windows(ref.tokenizer, docs, n, w, "n_windows")


def test_windows(ref: ReferenceLM, n_windows: int = 64, window: int = 128) -> Any:
    """The reference LM's held-out text: the first ``n_windows`` windows of ``window`` tokens of
    its corpus's *test* split (documents it never saw), (n_windows, window) int64."""
    return _split_windows(ref, "test", n_windows, window)


def calibration_windows(ref: ReferenceLM, n_windows: int = 64, window: int = 128) -> Any:
    """Calibration text for the reference LM: windows of its *training* split, the distribution
    it was trained on (as GPTQ's authors calibrate on pretraining text)."""
    return _split_windows(ref, "train", n_windows, window)
