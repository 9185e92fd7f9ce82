"""Sentence embeddings from scratch: MiniLM's mean pooling, equal to sentence-transformers.

A sentence embedder is a BERT-style encoder plus a rule that turns its per-token vectors into
one vector per text. ``all-MiniLM-L6-v2`` (6 layers, width 384, trained contrastively on a
billion sentence pairs) uses the simplest rule that works:

1. tokenize (WordPiece, at most 256 tokens; longer texts are cut);
2. run the encoder: one 384-d vector per token, ``last_hidden_state`` ``(batch, tokens, 384)``;
3. **mean pooling**: average the vectors of the real tokens (the attention mask is 1), so
   padding added to batch texts of different lengths changes nothing;
4. **L2-normalise**: every embedding gets length 1, so a dot product *is* the cosine
   similarity, and an inner-product index (FAISS ``IndexFlatIP``) ranks by cosine.

:class:`Embedder` does exactly these steps with ``transformers`` alone; the chapter shows it
equal to ``sentence_transformers.SentenceTransformer.encode`` on the same model. Embedding is
the slow part of indexing (MiniLM embeds ~80 passages/s on 2 CPU cores), so
:func:`cached_embeddings` keeps each corpus's vectors in the course cache.

    >>> embedder = Embedder.load()                          # the offline MiniLM
    >>> vectors = embedder.encode(["a cat sat", "a dog ran"])  # (2, 384) float32, unit length
    >>> float(vectors[0] @ vectors[1])                       # cosine similarity
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average ``hidden`` ``(batch, tokens, d)`` over the tokens whose mask is 1.

    The mask zeroes padding before the sum, and the divisor counts only real tokens (at least
    one, so an all-padding row gives zeros instead of a division by zero).
    """
    if hidden.dim() != 3 or attention_mask.shape != hidden.shape[:2]:
        raise ValueError(
            "hidden, attention_mask: expected (batch, tokens, d) and (batch, tokens), got "
            f"{tuple(hidden.shape)} and {tuple(attention_mask.shape)}"
        )
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * mask).sum(dim=1)
    counts = mask.sum(dim=1).clamp(min=1.0)
    return summed / counts


class Embedder:
    """A sentence embedder built from a tokenizer and an encoder: tokenize, encode, mean-pool,
    normalise (module docstring). ``Embedder.load()`` gives the offline all-MiniLM-L6-v2."""

    def __init__(self, tokenizer, model, max_length: int = 256, device=None, name=None):
        self.tokenizer = tokenizer
        self.model = model.eval()
        self.max_length = int(max_length)
        self.device = (
            torch.device(device) if device is not None else next(model.parameters()).device
        )
        self.dim = int(model.config.hidden_size)
        #: names the model in cache keys: vectors of another model are never read as these
        self.name = name or str(getattr(model.config, "_name_or_path", "") or type(model).__name__)

    @classmethod
    def load(cls, path=None, device=None) -> Embedder:
        """MiniLM from ``path`` (a sentence-transformers model folder; default: the course's
        offline copy, see :func:`llmlab.assets.prepare`), with its own ``max_seq_length``."""
        import json
        from pathlib import Path

        from transformers import AutoModel, AutoTokenizer

        from llmlab import assets

        folder = Path(path) if path is not None else assets.prepare("minilm")
        config = folder / "sentence_bert_config.json"
        max_length = json.loads(config.read_text())["max_seq_length"] if config.exists() else 256
        with assets._quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(folder)
            model = AutoModel.from_pretrained(folder)
        if device is not None:
            model = model.to(device)
        name = "minilm" if path is None else f"minilm:{folder.name}"
        return cls(tokenizer, model, max_length=max_length, device=device, name=name)

    @torch.no_grad()
    def encode(
        self, texts: Sequence[str], batch_size: int = 32, normalize: bool = True
    ) -> np.ndarray:
        """Embeddings of ``texts``: a ``(len(texts), dim)`` float32 array, unit rows when
        ``normalize``. Texts are batched by length (less padding, the same result) and
        returned in the order given."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts: expected a list of strings")
        if batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = self.tokenizer(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**batch).last_hidden_state
            pooled = mean_pool(hidden, batch["attention_mask"])
            if normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
            out[idx] = pooled.float().cpu().numpy()
        return out


def corpus_key(texts: Sequence[str], model_name: str = "minilm") -> str:
    """A short fingerprint of ``texts`` (and the model), naming a corpus's cached vectors."""
    digest = hashlib.sha256(model_name.encode())
    for text in texts:
        digest.update(len(text).to_bytes(8, "little"))
        digest.update(text.encode())
    return digest.hexdigest()[:16]


def cached_embeddings(
    texts: Sequence[str], name: str, embedder: Embedder | None = None, batch_size: int = 32
) -> np.ndarray:
    """``embedder.encode(texts)``, computed once and kept in the course cache.

    ``name`` is a results name such as ``"07_rag/kb_chunks"``; the fingerprint of the texts and
    of the embedder (its ``name``, e.g. "minilm"; the default embedder when None) is part of the
    file name, so a changed corpus or another model is embedded afresh instead of read stale.
    The write is atomic (:mod:`llmlab.results`)."""
    from llmlab import results

    model_name = "minilm" if embedder is None else getattr(embedder, "name", None)
    key = f"{name}-{corpus_key(texts, model_name or type(embedder).__qualname__)}"
    try:
        return results.load_tensors(key)["embeddings"].numpy()
    except results.ResultMissingError:
        pass
    embedder = embedder if embedder is not None else Embedder.load()
    vectors = embedder.encode(texts, batch_size=batch_size)
    results.save_tensors(key, {"embeddings": torch.from_numpy(vectors)})
    return vectors
