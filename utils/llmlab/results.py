"""Results one notebook saves for a later one, kept in the course cache and rebuilt when missing.

A later notebook reads what an earlier one measured (chapter 04's LoRA notebook divides its
accuracy by notebook 1's full fine-tuning accuracy) or trained (an adapter, a student model).
Everything lives under ``$LLMLAB_CACHE/results/`` (default ``~/.cache/llmlab/results``), and
every write is atomic: a temporary file in the same folder, flushed, then renamed into place, so
a crash or a second notebook writing at the same moment leaves the old file or the new one,
never half of one.

    >>> from llmlab import results
    >>> results.save_json("04_post_training/finetune", {"full": 0.91})
    >>> results.load_json("04_post_training/finetune")["full"]
    0.91
    >>> accuracy = results.cached_json("04_post_training/finetune", build=run_notebook_1_arms)

Names are ``chapter/what`` paths of lowercase letters, digits, ``_``, ``-`` and ``.``;
:func:`load_json` of a missing name raises :class:`ResultMissingError`, which says which
notebook to run (pass ``made_by``) or lets :func:`cached_json` rebuild it.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "ResultMissingError",
    "results_dir",
    "result_path",
    "save_json",
    "load_json",
    "cached_json",
    "save_tensors",
    "load_tensors",
    "write_atomic",
    "recipe_name",
]

_NAME = re.compile(r"^[a-z0-9_.-]+(/[a-z0-9_.-]+)*$")


class ResultMissingError(FileNotFoundError):
    """A saved result that a notebook needs is not in the cache yet; the message says how to get it."""


def results_dir() -> Path:
    """``$LLMLAB_CACHE/results`` (default ``~/.cache/llmlab/results``)."""
    from llmlab.assets import cache_dir

    return cache_dir() / "results"


def result_path(name: str, suffix: str = ".json") -> Path:
    """Where result ``name`` lives; ``name`` is like ``"04_post_training/finetune"``."""
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise ValueError(
            "name: expected a path like '04_post_training/finetune' "
            f"(lowercase letters, digits, '_', '-', '.', parts joined by '/'), got {name!r}"
        )
    return results_dir() / f"{name}{suffix}"


def recipe_name(name: str, recipe: Any, *texts: str) -> str:
    """``name`` with a fingerprint of ``recipe`` (its ``repr``) and of ``texts`` (training data
    whose content, not only its size, makes the result): ``"<name>-<10 hex digits>"``. A result
    saved under it is found again by the same recipe, and a changed recipe gets a new name
    instead of a stale result."""
    import hashlib

    if not isinstance(name, str) or not name:
        raise ValueError(f"name: expected a course-cache name, got {name!r}")
    digest = hashlib.sha256(repr(recipe).encode())
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"texts: expected strings, got {type(text).__name__}")
        digest.update(text.encode())
    return f"{name}-{digest.hexdigest()[:10]}"


def write_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache may be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_json(name: str, data: Any) -> Path:
    """Save ``data`` (anything ``json`` can write) as result ``name``; returns the file's path."""
    text = json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False, allow_nan=True)
    return write_atomic(result_path(name), text.encode("utf-8"))


def _missing(name: str, path: Path, made_by: str | None) -> ResultMissingError:
    how = f"run {made_by} first" if made_by else "run the notebook that saves it first"
    return ResultMissingError(f"result {name!r} is not in the course cache ({path.name}): {how}")


def load_json(name: str, made_by: str | None = None) -> Any:
    """Result ``name`` as saved by :func:`save_json`; :class:`ResultMissingError` if absent.

    ``made_by`` names the notebook that saves it, for the error message.
    """
    path = result_path(name)
    if not path.exists():
        raise _missing(name, path, made_by)
    return json.loads(path.read_text(encoding="utf-8"))


def cached_json(name: str, build: Callable[[], Any], *, rebuild: bool = False) -> Any:
    """Result ``name`` from the cache, or ``build()`` saved under that name when it is missing."""
    if not callable(build):
        raise TypeError(f"build: expected a function that returns the result, got {build!r}")
    path = result_path(name)
    if path.exists() and not rebuild:
        return json.loads(path.read_text(encoding="utf-8"))
    data = build()
    save_json(name, data)
    return json.loads(result_path(name).read_text(encoding="utf-8"))  # what a reader will get


def save_tensors(name: str, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    """Save a dict of tensors (a model or adapter state dict) as ``name.safetensors``, atomically."""
    from safetensors.torch import save

    if not isinstance(tensors, dict) or not tensors:
        raise ValueError("tensors: expected a non-empty dict of name -> tensor")
    blob = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata)
    return write_atomic(result_path(name, ".safetensors"), blob)


def load_tensors(name: str, made_by: str | None = None) -> dict:
    """The tensors saved by :func:`save_tensors` under ``name``; :class:`ResultMissingError` if absent."""
    from safetensors.torch import load

    path = result_path(name, ".safetensors")
    if not path.exists():
        raise _missing(name, path, made_by)
    return load(path.read_bytes())
