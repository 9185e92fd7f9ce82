"""Generate the labs (exercises without answers) from the solution notebooks.

``solutions/**/X.ipynb`` is the source of truth; ``labs/**/X.ipynb`` is generated from it and
never edited by hand. In a code cell, each block::

    def softmax(x, dim=-1):
        ### BEGIN SOLUTION
        # HINT: subtract the max along dim before exp.
        z = x - x.amax(dim=dim, keepdim=True)
        ...
        ### END SOLUTION

becomes, at the indentation of the BEGIN line::

    def softmax(x, dim=-1):
        # HINT: subtract the max along dim before exp.
        raise NotImplementedError("...")

``# HINT:`` lines right after BEGIN SOLUTION are kept (a generic hint otherwise). Outputs and
execution counts are cleared; metadata is kept. The markers are nbgrader's, so an instructor
can also use nbgrader or otter-grader on the solutions.

    python -m llmlab labs            # regenerate labs/ from solutions/
    python -m llmlab labs --check    # exit 1 listing the labs that are out of date
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import nbformat
from nbformat import NotebookNode

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
HINT_PREFIX = "# HINT:"
GENERIC_HINT = "# TODO: write your answer here (replace the line below)."
STUB = 'raise NotImplementedError("exercise not done yet: replace this line with your code")'


def strip_solutions(source: str, where: str = "cell") -> str:
    """``source`` with each BEGIN/END SOLUTION block replaced by its hint and a raise.

    where: names the cell in error messages. Raises ValueError on unbalanced markers.
    """
    lab_lines: list[str] = []
    begin_line: int | None = None  # line number of the open BEGIN marker
    indent = ""
    hints: list[str] = []
    for number, line in enumerate(source.splitlines(), start=1):
        marker = line.strip()
        if marker == BEGIN:
            if begin_line is not None:
                raise ValueError(
                    f"{where}, line {number}: {BEGIN!r} inside the block opened "
                    f"at line {begin_line}; add {END!r} first"
                )
            begin_line, indent, hints = number, line[: len(line) - len(line.lstrip())], []
        elif marker == END:
            if begin_line is None:
                raise ValueError(f"{where}, line {number}: {END!r} without a {BEGIN!r} before it")
            lab_lines += [indent + hint for hint in hints or [GENERIC_HINT]]
            lab_lines.append(indent + STUB)
            begin_line = None
        elif begin_line is not None:
            # Hint lines directly follow BEGIN: collect them until the first answer line.
            if marker.startswith(HINT_PREFIX) and len(hints) == number - begin_line - 1:
                hints.append(marker)
        else:
            lab_lines.append(line)
    if begin_line is not None:
        raise ValueError(f"{where}, line {begin_line}: {BEGIN!r} is never closed by {END!r}")
    return "\n".join(lab_lines) + ("\n" if source.endswith("\n") else "")


def generate_lab(solution_nb: NotebookNode, name: str = "notebook") -> NotebookNode:
    """The lab for ``solution_nb``: answers replaced by stubs, outputs cleared, metadata kept.

    name: names the notebook in error messages. ``solution_nb`` is not modified.
    """
    lab = copy.deepcopy(solution_nb)
    for index, cell in enumerate(lab.cells):
        if cell.cell_type != "code":
            continue
        cell.source = strip_solutions(cell.source, where=f"{name}, cell {index}")
        cell.outputs = []
        cell.execution_count = None
    return lab


def render(nb: NotebookNode) -> str:
    """The exact text a notebook is saved as: nbformat's JSON, ending with one newline."""
    return nbformat.writes(nb).rstrip("\n") + "\n"


def lab_path(solution: Path, root: Path) -> Path:
    """``root/labs/A/B.ipynb`` for ``root/solutions/A/B.ipynb``."""
    return root / "labs" / solution.relative_to(root / "solutions")


def solution_notebooks(root: Path) -> list[Path]:
    """Every ``solutions/**/*.ipynb`` under ``root``, sorted, checkpoints excluded."""
    found = (root / "solutions").rglob("*.ipynb")
    return sorted(p for p in found if ".ipynb_checkpoints" not in p.parts)


def generate_all(root: Path, check: bool = False) -> list[Path]:
    """Generate every lab under ``root`` from its solution; returns the labs that changed.

    With ``check=True`` nothing is written: the returned labs are those out of date.
    """
    root = Path(root)
    changed = []
    for solution in solution_notebooks(root):
        target = lab_path(solution, root)
        name = str(solution.relative_to(root))
        text = render(generate_lab(nbformat.read(solution, as_version=4), name=name))
        current = target.read_text(encoding="utf-8") if target.is_file() else None
        if text == current:
            continue
        changed.append(target)
        if not check:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
    return changed


def default_root() -> Path:
    """The course checkout: the current folder when it has solutions/, else llmlab's repo."""
    from llmlab.course import repo_root

    cwd = Path.cwd()
    return cwd if (cwd / "solutions").is_dir() else (repo_root() or cwd)


def main(argv: list[str] | None = None) -> int:
    """``python -m llmlab labs [--check] [--root DIR]``; argv excludes the word ``labs``."""
    parser = argparse.ArgumentParser(
        prog="python -m llmlab labs",
        description="Generate labs/ from solutions/ (answers replaced by stubs).",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 listing the labs that are out of date",
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help="the course checkout (default: the current folder or llmlab's)",
    )
    args = parser.parse_args(argv)
    root = args.root or default_root()
    try:
        changed = generate_all(root, check=args.check)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in changed:
        shown = path.relative_to(root)
        print(f"out of date: {shown}" if args.check else f"wrote {shown}")
    if args.check and changed:
        print("run `python -m llmlab labs` (or `make labs`) to regenerate them", file=sys.stderr)
        return 1
    if not changed:
        print(f"labs up to date ({len(solution_notebooks(root))} solutions)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
