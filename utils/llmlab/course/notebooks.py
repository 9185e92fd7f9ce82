"""Run a notebook headless with papermill and turn its failures into readable errors.

    nb = execute_notebook("solutions/00_start_here/01_warmup.ipynb", "artifacts/warmup.ipynb",
                          env={"LLMLAB_CHECK_LOG": "checks.jsonl"})
    print(text_outputs(nb))

The kernel is a separate process that inherits ``os.environ``: ``env`` is set there for the
duration of the run (and restored afterwards), and ``PYTHONPATH`` is extended so the kernel
imports the same ``llmlab`` as the caller, installed or not.
"""

from __future__ import annotations

import contextlib
import os
import re
import site
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import nbformat
from nbformat import NotebookNode

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def strip_ansi(text: str) -> str:
    """``text`` without terminal colour codes (IPython colours its tracebacks)."""
    return _ANSI.sub("", text)


class NotebookError(RuntimeError):
    """A notebook failed to run: unreadable, a cell raised, a cell timed out, or the kernel died.

    ``summary`` is one short line for tables (``ZeroDivisionError in cell 7: division by
    zero``); ``str(error)`` adds the notebook, the cell's first lines, the end of the traceback
    and where the executed notebook was saved. Cells are counted from 1 in the executed
    notebook (papermill's injected-parameters cell included); ``cell_index`` counts from 0.
    """

    def __init__(
        self,
        summary: str,
        *,
        path: str | os.PathLike,
        output_path: str | os.PathLike | None = None,
        cell_index: int | None = None,
        details: str = "",
    ):
        self.summary = summary
        self.path = Path(path)
        self.output_path = Path(output_path) if output_path else None
        self.cell_index = cell_index
        self.details = details
        lines = [f"notebook {self.path} failed: {summary}"]
        if details:
            lines.append(details)
        if self.output_path:
            lines.append(f"executed notebook saved to {self.output_path}")
        super().__init__("\n".join(lines))


@contextlib.contextmanager
def patched_environ(overrides: Mapping[str, str] | None) -> Iterator[None]:
    """Set the variables of ``overrides`` in ``os.environ`` for the block, then restore them."""
    overrides = dict(overrides or {})
    saved = {key: os.environ.get(key) for key in overrides}
    os.environ.update({key: str(value) for key, value in overrides.items()})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _kernel_pythonpath() -> str:
    """``PYTHONPATH`` for the kernel: the current one, plus the folder holding ``llmlab`` when
    that folder is a source checkout (``utils/``) rather than site-packages."""
    from llmlab.course import package_dir

    package_parent = str(package_dir().parent)
    current = os.environ.get("PYTHONPATH", "")
    entries = [entry for entry in current.split(os.pathsep) if entry]
    site_dirs = {
        str(Path(d).resolve()) for d in site.getsitepackages() + [site.getusersitepackages()]
    }
    if package_parent in site_dirs or package_parent in entries:
        return current
    return os.pathsep.join([package_parent, *entries])


def _cell_name(index: int | None, exec_count: int | None = None) -> str:
    """``cell 9 (In [5])``: the 1-based position of the cell, and its prompt when it ran."""
    if index is None:
        return "a cell"
    prompt = f" (In [{exec_count}])" if exec_count else ""
    return f"cell {index + 1}{prompt}"


def _source_excerpt(source: str, n_lines: int = 3) -> str:
    """The first lines of a cell's source, indented under a heading."""
    lines = source.splitlines()[:n_lines]
    return "\n".join(["cell source:", *[f"    {line}" for line in lines]])


def _traceback_tail(traceback_lines: list[str], n_lines: int = 12) -> str:
    """The last ``n_lines`` lines of a kernel traceback, colour codes removed."""
    text = strip_ansi("\n".join(traceback_lines))
    lines = [line for line in text.splitlines() if line.strip()]
    return "\n".join(["traceback (last lines):", *lines[-n_lines:]])


def _read_output(path: Path | None) -> NotebookNode | None:
    """The notebook papermill saved at ``path``, or None."""
    if path is None or not path.is_file():
        return None
    try:
        return nbformat.read(path, as_version=4)
    except Exception:
        return None


def _last_started_cell(nb: NotebookNode | None) -> tuple[int | None, str]:
    """The index and source of the last cell papermill started (the one that timed out)."""
    started = [
        (index, cell.source)
        for index, cell in enumerate(nb.cells if nb is not None else [])
        if cell.get("metadata", {}).get("papermill", {}).get("start_time")
    ]
    return started[-1] if started else (None, "")


def execute_notebook(
    src: str | os.PathLike,
    dst: str | os.PathLike | None = None,
    parameters: dict[str, Any] | None = None,
    timeout: float = 600,
    cwd: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    kernel_name: str = "python3",
) -> NotebookNode:
    """Execute the notebook ``src`` headless and return the executed notebook.

    dst: where to save the executed notebook (kept on failure as an artifact); None saves it
        in a temporary folder that is deleted afterwards.
    parameters: values papermill injects after the cell tagged ``parameters``.
    timeout: seconds any one cell may run.
    cwd: the kernel's working folder; defaults to the notebook's folder.
    env: extra environment variables for the kernel (e.g. ``LLMLAB_CHECK_LOG``).

    Raises NotebookError (readable message, ``.summary`` one line) on any failure.
    """
    import papermill  # slow to import; only needed here
    from papermill.exceptions import PapermillExecutionError

    src = Path(src)
    if not src.is_file():
        raise NotebookError("file not found", path=src)
    try:
        nbformat.read(src, as_version=4)
    except Exception as exc:
        raise NotebookError(
            f"invalid notebook: {type(exc).__name__}: {exc}"[:300], path=src
        ) from exc

    with contextlib.ExitStack() as stack:
        artifact = dst is not None  # a temporary dst is gone once this function returns
        if dst is None:
            dst = Path(stack.enter_context(tempfile.TemporaryDirectory())) / src.name
        dst = Path(dst)
        saved = dst if artifact else None
        dst.parent.mkdir(parents=True, exist_ok=True)
        kernel_env = {**(env or {}), "PYTHONPATH": _kernel_pythonpath()}
        try:
            with patched_environ(kernel_env):
                return papermill.execute_notebook(
                    str(src),
                    str(dst),
                    parameters=parameters or {},
                    kernel_name=kernel_name,
                    cwd=str(cwd if cwd is not None else src.parent),
                    progress_bar=False,
                    execution_timeout=timeout,
                )
        except PapermillExecutionError as exc:
            evalue = strip_ansi(exc.evalue)
            summary = f"{exc.ename} in {_cell_name(exc.cell_index, exc.exec_count)}" + (
                f": {evalue}" if evalue else ""
            )
            details = "\n".join([_source_excerpt(exc.source), _traceback_tail(exc.traceback)])
            raise NotebookError(
                " ".join(summary.split())[:300],
                path=src,
                output_path=saved,
                cell_index=exc.cell_index,
                details=details,
            ) from None
        except TimeoutError as exc:  # nbclient's CellTimeoutError
            index, source = _last_started_cell(_read_output(dst))
            raise NotebookError(
                f"timed out: {_cell_name(index)} ran longer than {timeout:g} s",
                path=src,
                output_path=saved,
                cell_index=index,
                details=_source_excerpt(source),
            ) from exc
        except Exception as exc:  # the kernel died, could not start, ...
            raise NotebookError(
                f"{type(exc).__name__}: {strip_ansi(str(exc))}"[:300], path=src, output_path=saved
            ) from exc


def cell_text(cell: NotebookNode) -> str:
    """The text a code cell printed or displayed: streams, text/plain results, errors."""
    parts = []
    for output in cell.get("outputs", []):
        kind = output.get("output_type")
        if kind == "stream":
            parts.append(output.get("text", ""))
        elif kind in ("execute_result", "display_data"):
            text = output.get("data", {}).get("text/plain")
            if text:
                parts.append(text if text.endswith("\n") else text + "\n")
        elif kind == "error":
            parts.append(strip_ansi("\n".join(output.get("traceback", []))) + "\n")
    return "".join(parts)


def text_outputs(nb: NotebookNode) -> str:
    """Everything the code cells of an executed notebook printed, in order, as one string."""
    return "".join(cell_text(cell) for cell in nb.cells if cell.cell_type == "code")


SUMMARY_PREFIX = "NOTEBOOK-ERROR: "


def main(argv: list[str] | None = None) -> int:
    """``python -m llmlab.course.notebooks SRC DST [--timeout S] [--kernel NAME]``.

    Executes one notebook (grading runs each submission this way, in its own process, so that
    a whole-notebook time limit can stop it). On failure the readable error goes to stderr,
    ending with one line ``NOTEBOOK-ERROR: <summary>``, and the exit status is 1.
    """
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m llmlab.course.notebooks")
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per cell")
    parser.add_argument("--kernel", default="python3")
    args = parser.parse_args(argv)
    try:
        execute_notebook(args.src, args.dst, timeout=args.timeout, kernel_name=args.kernel)
    except NotebookError as exc:
        print(f"{exc}\n{SUMMARY_PREFIX}{exc.summary}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
