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
    os.environ["LLMLAB_PROGRESS"] = "text"  # saved bars show their final state, not a widget
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
            cell.outputs = [static(out) for out in merge_streams(cell.outputs)]
        for key in ("execution", "ExecuteTime", "collapsed", "scrolled"):
            cell.metadata.pop(key, None)
    nb.metadata.pop("widgets", None)
    nbformat.write(nb, path)
    return time.perf_counter() - start


WIDGET = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = (
    "(An interactive widget was here; it needs a running kernel. Run the notebook to use it: "
    "the figure above shows its starting state.)"
)


def static(out):
    """An output as it reads without a kernel: a bar's final line, a widget as a note."""
    if out.output_type == "stream":
        out.text = final_lines(out.text)
    elif WIDGET in out.get("data", {}):
        out.data = {"text/plain": WIDGET_NOTE}
    return out


def final_lines(text: str) -> str:
    """What a terminal shows for ``text``: each line's last carriage-return rewrite."""
    rewrites = (line.split("\r") for line in text.split("\n"))
    return "\n".join(next((p for p in reversed(parts) if p), "") for parts in rewrites)


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
