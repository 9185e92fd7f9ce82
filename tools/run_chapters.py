"""Execute chapter notebooks in place, at full size, so they can be committed with outputs.

    python tools/run_chapters.py [NOTEBOOK ...]     (default: every chapter; `make chapters`)

Runs each notebook top to bottom in its own folder with a fresh kernel, then saves it with
clean metadata (no timings, no widget state) so that nbval's checked cells compare what the
chapter claims and the diff shows only what changed.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def run(path: Path) -> float:
    nb = nbformat.read(path, as_version=4)
    os.environ.pop("LLMLAB_SMOKE", None)  # full size: what a student sees
    os.environ["HF_HUB_OFFLINE"] = "1"  # as in CI: the course never needs the hub
    start = time.perf_counter()
    NotebookClient(
        nb,
        timeout=1800,
        kernel_name="python3",
        record_timing=False,
        resources={"metadata": {"path": str(path.parent)}},
    ).execute()
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = merge_streams(cell.outputs)
        for key in ("execution", "ExecuteTime", "collapsed", "scrolled"):
            cell.metadata.pop(key, None)
    nb.metadata.pop("widgets", None)
    nbformat.write(nb, path)
    return time.perf_counter() - start


def merge_streams(outputs: list) -> list:
    """Join consecutive writes to one stream (a streamed reply arrives token by token)."""
    merged: list = []
    for out in outputs:
        last = merged[-1] if merged else None
        if (
            out.output_type == "stream"
            and last is not None
            and last.output_type == "stream"
            and last.name == out.name
        ):
            last.text += out.text
        else:
            merged.append(out)
    return merged


def main(paths: list[str]) -> None:
    notebooks = [Path(p).resolve() for p in paths] or sorted((ROOT / "chapters").rglob("*.ipynb"))
    for path in notebooks:
        if ".ipynb_checkpoints" in path.parts:
            continue
        seconds = run(path)
        print(f"{path.relative_to(ROOT)}: executed in {seconds:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
