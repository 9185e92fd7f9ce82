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
import ast
import copy
import re
import sys
from dataclasses import dataclass
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


# --------------------------------------------------------------------------------------------
# A lab's structure: which cells are exercises, which check each, and the lab's identity

#: A check cell, the one form the labs use: ``softmax = check_stable_softmax(softmax).fn``.
_CHECK_CELL = re.compile(r"^\s*(\w+)\s*=\s*(check_(\w+))\(\s*(\w+)\s*\)\.fn\s*$")
METADATA_KEY = "llmlab"


@dataclass(frozen=True)
class Exercise:
    """One exercise of a lab: the function the student writes and the check that judges it.

    ``answer_cell`` and ``check_cell`` index the lab's cells; ``check`` is the check's module
    and function name (``("llmlab.checks.start_here.warmup", "check_stable_softmax")``).
    """

    name: str  # the exercise, as checks record it: "stable_softmax"
    function: str  # the function the student defines: "softmax"
    check: tuple[str, str]
    answer_cell: int
    check_cell: int


@dataclass(frozen=True)
class LabInfo:
    """A lab's identity (``"00_start_here/01_warmup"``) and its exercises, in order."""

    lab_id: str
    exercises: tuple[Exercise, ...]


def _check_imports(nb: NotebookNode) -> dict[str, str]:
    """``{check name: module}`` for every ``from llmlab.checks.X import check_...`` of ``nb``."""
    found: dict[str, str] = {}
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        try:
            tree = ast.parse(cell.source)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("llmlab.checks"):
                for alias in node.names:
                    if alias.name.startswith("check_"):
                        found[alias.asname or alias.name] = node.module
    return found


def _is_answer_cell(cell: NotebookNode) -> bool:
    """A solution's cell with an answer block, or a generated lab's marked answer cell."""
    role = cell.get("metadata", {}).get(METADATA_KEY, {}).get("role")
    return cell.cell_type == "code" and (role == "answer" or BEGIN in cell.source)


def lab_structure(nb: NotebookNode, lab_id: str = "") -> LabInfo:
    """The exercises of a lab or solution notebook, read from its cells (never from names
    that other functions could match): each check cell ``F = check_X(F).fn`` whose check is
    imported from ``llmlab.checks``, paired with the nearest answer cell before it.

    ``lab_id`` defaults to the notebook's own ``metadata.llmlab.lab``. Raises ValueError when a
    check cell has no answer cell before it or its check is not imported.
    """
    imports = _check_imports(nb)
    exercises: list[Exercise] = []
    last_answer: int | None = None
    for index, cell in enumerate(nb.cells):
        if _is_answer_cell(cell):
            last_answer = index
            continue
        match = _CHECK_CELL.match(cell.source) if cell.cell_type == "code" else None
        if match is None:
            continue
        target, check, name, argument = match.groups()
        if check not in imports:
            raise ValueError(f"cell {index}: {check} is not imported from llmlab.checks")
        if last_answer is None:
            raise ValueError(f"cell {index}: the check {check} has no exercise cell before it")
        if target != argument:
            raise ValueError(f"cell {index}: {target} = {check}({argument}).fn mixes two names")
        exercises.append(Exercise(name, argument, (imports[check], check), last_answer, index))
        last_answer = None
    lab_id = lab_id or nb.metadata.get(METADATA_KEY, {}).get("lab", "")
    return LabInfo(lab_id, tuple(exercises))


def mark_cells(nb: NotebookNode, info: LabInfo) -> None:
    """Write ``info`` into ``nb``'s metadata: the lab's id and exercises, and on each answer and
    check cell its role and exercise, so a grader finds a student's answers by their mark."""
    nb.metadata[METADATA_KEY] = {
        "lab": info.lab_id,
        "exercises": [exercise.name for exercise in info.exercises],
    }
    for exercise in info.exercises:
        for index, role in ((exercise.answer_cell, "answer"), (exercise.check_cell, "check")):
            nb.cells[index].metadata[METADATA_KEY] = {
                "role": role,
                "exercise": exercise.name,
                "function": exercise.function,
            }


def generate_lab(
    solution_nb: NotebookNode, name: str = "notebook", lab_id: str = ""
) -> NotebookNode:
    """The lab for ``solution_nb``: answers replaced by stubs, outputs cleared, metadata kept,
    and the lab's id and exercises marked in the metadata (:func:`mark_cells`).

    name: names the notebook in error messages. ``solution_nb`` is not modified.
    """
    info = lab_structure(solution_nb, lab_id=lab_id)
    lab = copy.deepcopy(solution_nb)
    for index, cell in enumerate(lab.cells):
        if cell.cell_type != "code":
            continue
        cell.source = strip_solutions(cell.source, where=f"{name}, cell {index}")
        cell.outputs = []
        cell.execution_count = None
    if info.exercises:
        mark_cells(lab, info)
    return lab


def lab_id(solution: Path, root: Path) -> str:
    """``"00_start_here/01_warmup"`` for ``root/solutions/00_start_here/01_warmup.ipynb``."""
    return solution.relative_to(root / "solutions").with_suffix("").as_posix()


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
        solution_nb = nbformat.read(solution, as_version=4)
        lab = generate_lab(solution_nb, name=name, lab_id=lab_id(solution, root))
        text = render(lab)
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
