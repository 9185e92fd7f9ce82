"""Packing tokens for pretraining: one flat memory-mapped file, and random windows from it.

Documents have all lengths; a training batch wants (batch, seq_len) tokens. GPT-style
pretraining *packs*: it concatenates every document's token ids, with an end-of-text token
between documents, into one long array, and cuts training examples as windows of seq_len + 1
tokens at random offsets (inputs = the first seq_len, targets = the same shifted by one). No
padding is wasted; a window may span a document boundary, and the end-of-text token tells the
model that what follows is unrelated.

The array lives in a binary file read through ``numpy.memmap``: the operating system pages in
only the windows a batch touches, so a corpus far larger than RAM trains the same way (this is
how nanoGPT's ``train.bin`` works). Ids are stored as uint16 when the vocabulary fits (< 65,536,
as SmolLM2's 49,152 does), else uint32.

:class:`RandomBatchSampler` makes batch ``i`` a pure function of ``(seed, i)``: a run that
resumes from a checkpoint at step s sees exactly the batches an unbroken run would (see
:func:`llmlab.training.train`).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from llmlab.validate import require_positive_int

__all__ = ["write_token_file", "TokenFile", "RandomBatchSampler"]


def write_token_file(
    path: str | os.PathLike,
    sequences: Iterable[Sequence[int]],
    eos_id: int | None,
    vocab_size: int,
) -> Path:
    """Write documents' ids, each followed by ``eos_id``, to ``path`` (+ ``path.json`` metadata).

    Written to a temporary file and renamed, so a crash never leaves a half-written file under
    the final name. Returns ``path``.
    """
    import numpy as np

    require_positive_int(vocab_size, "vocab_size")
    if eos_id is not None and not 0 <= eos_id < vocab_size:
        raise ValueError(f"eos_id: expected None or an id in [0, {vocab_size}), got {eos_id!r}")
    dtype = np.uint16 if vocab_size <= 1 << 16 else np.uint32
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n_tokens = n_docs = 0
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            for i, ids in enumerate(sequences):
                arr = np.asarray(list(ids) + ([] if eos_id is None else [eos_id]), dtype=np.int64)
                if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
                    raise ValueError(
                        f"sequences[{i}]: ids must be in [0, {vocab_size}), got {arr.min()}..{arr.max()}"
                    )
                arr.astype(dtype).tofile(f)
                n_tokens += arr.size
                n_docs += 1
        meta = {
            "dtype": np.dtype(dtype).name,
            "n_tokens": n_tokens,
            "n_documents": n_docs,
            "eos_id": eos_id,
            "vocab_size": vocab_size,
        }
        meta_tmp = path.with_name(path.name + ".json.tmp")
        meta_tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, path)
        os.replace(meta_tmp, path.with_name(path.name + ".json"))
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class TokenFile:
    """A packed token file opened read-only as a 1-D numpy memmap (``.tokens``)."""

    def __init__(self, path: str | os.PathLike):
        import numpy as np

        self.path = Path(path)
        meta_path = self.path.with_name(self.path.name + ".json")
        if not self.path.is_file() or not meta_path.is_file():
            raise FileNotFoundError(
                f"path: {self.path} (and its .json) not found; write it with write_token_file()"
            )
        self.meta = json.loads(meta_path.read_text())
        self.tokens = np.memmap(self.path, dtype=self.meta["dtype"], mode="r")
        if len(self.tokens) != self.meta["n_tokens"]:
            raise ValueError(
                f"path: {self.path} holds {len(self.tokens)} tokens, its metadata says "
                f"{self.meta['n_tokens']} (a partial copy?)"
            )

    def __len__(self) -> int:
        return len(self.tokens)

    def __repr__(self) -> str:
        return (
            f"TokenFile({self.path.name!r}, {len(self):,} tokens, "
            f"{self.meta['n_documents']:,} documents, {self.meta['dtype']})"
        )


class RandomBatchSampler:
    """Batch ``i`` = ``batch_size`` random windows of ``seq_len + 1`` tokens, a function of (seed, i).

    ``sampler(i)`` returns ``(inputs, targets)``, int64 tensors of shape (batch_size, seq_len),
    targets shifted by one: usable directly as :func:`llmlab.training.train`'s ``batch_fn``.
    ``tokens``: a :class:`TokenFile`, a numpy array or a 1-D tensor of ids.
    """

    def __init__(self, tokens, batch_size: int, seq_len: int, seed: int = 0):
        for value, name in ((batch_size, "batch_size"), (seq_len, "seq_len")):
            require_positive_int(value, name)
        self.tokens = tokens.tokens if isinstance(tokens, TokenFile) else tokens
        if len(self.tokens) < seq_len + 1:
            raise ValueError(
                f"tokens: need at least seq_len + 1 = {seq_len + 1} tokens, got {len(self.tokens)}"
            )
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed

    def offsets(self, i: int):
        import numpy as np

        rng = np.random.default_rng([self.seed, i])
        return rng.integers(0, len(self.tokens) - self.seq_len, size=self.batch_size)

    def __call__(self, i: int):
        if isinstance(i, bool) or not isinstance(i, int) or i < 0:
            raise ValueError(f"i: expected a batch index >= 0, got {i!r}")
        return self._windows(self.offsets(i))

    def _windows(self, starts):
        """(inputs, targets) from windows of seq_len + 1 tokens beginning at ``starts``."""
        import numpy as np
        import torch

        rows = np.stack(
            [np.asarray(self.tokens[s : s + self.seq_len + 1], dtype=np.int64) for s in starts]
        )
        window = torch.from_numpy(rows)
        return window[:, :-1], window[:, 1:]

    def sequential(self, max_batches: int | None = None):
        """Non-overlapping windows in order, batched: for a deterministic validation loss."""
        n_windows = (len(self.tokens) - 1) // self.seq_len
        starts = [w * self.seq_len for w in range(n_windows)]
        for b, lo in enumerate(range(0, len(starts), self.batch_size)):
            if max_batches is not None and b >= max_batches:
                return
            yield self._windows(starts[lo : lo + self.batch_size])
