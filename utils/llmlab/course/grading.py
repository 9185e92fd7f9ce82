"""Grade students' lab notebooks: run each headless and collect its checks' results.

    python -m llmlab grade submissions/ --lab solutions/00_start_here/01_warmup.ipynb

Each notebook runs in its own kernel with ``LLMLAB_CHECK_LOG`` pointing at a fresh file, so
every check it reaches appends its result there (see ``llmlab.checks``). The exercises expected
are the ``check_NAME(`` calls of the lab's notebook (``--lab``; by default the solution with the
same file name under ``solutions/``, else the student's notebook itself), so an exercise the
student never reached is listed and scores 0. A notebook that cannot run to the end (invalid
JSON, a syntax error, a crash, a timeout) is scored on what it reached, with a short note.

Writes ``grades.md`` (a Markdown table) and ``grades.csv`` to ``--out`` (default ``./grades``),
keeps each executed notebook under ``OUT/executed/``, and prints the table. Student code runs
with your permissions: grade untrusted submissions in a container.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from llmlab.checks import LOG_ENV_VAR, read_log

_CHECK_CALL = re.compile(r"(?<![\w.])(?:\w+\.)*check_(\w+)\s*\(")
_DEFINITION = re.compile(r"^\s*def\s+check_", re.MULTILINE)

PASS, FAIL, NOT_RUN = "pass", "fail", "not run"


@dataclass
class Grade:
    """One student's notebook: each expected exercise's status, the score and a note."""

    student: str
    status: dict[str, str] = field(default_factory=dict)  # exercise -> pass / fail / not run
    note: str = ""

    @property
    def score(self) -> int:
        """How many exercises passed."""
        return sum(status == PASS for status in self.status.values())

    @property
    def total(self) -> int:
        """How many exercises the notebook's lab has."""
        return len(self.status)


def expected_exercises(notebook: str | Path) -> list[str]:
    """The exercises a lab checks, in order: NAME for every ``check_NAME(`` call in its code."""
    nb = nbformat.read(notebook, as_version=4)
    names: list[str] = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        source = _DEFINITION.sub("", cell.source)  # a helper defined in the lab is no exercise
        for name in _CHECK_CALL.findall(source):
            if name not in names:
                names.append(name)
    return names


def find_notebooks(paths: list[Path]) -> list[Path]:
    """The .ipynb files named by ``paths`` (files, or folders searched recursively), sorted."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += [
                p for p in sorted(path.rglob("*.ipynb")) if ".ipynb_checkpoints" not in p.parts
            ]
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"no such notebook or folder: {path}")
    return list(dict.fromkeys(found))


def find_lab(student_notebook: Path, root: Path) -> Path:
    """The solution under ``root/solutions`` with the student's file name, when exactly one
    exists; otherwise the student's notebook itself."""
    matches = sorted((root / "solutions").rglob(student_notebook.name))
    return matches[0] if len(matches) == 1 else student_notebook


def _artifact_name(notebook: Path) -> str:
    """A flat file name for a student's executed notebook, unique per path:
    ``submissions/alice/01_warmup.ipynb`` -> ``submissions__alice__01_warmup.ipynb``."""
    path = notebook.resolve()
    try:
        path = path.relative_to(Path.cwd().resolve())
    except ValueError:
        path = path.relative_to(path.anchor)
    return "__".join(re.sub(r"[^\w.-]", "_", part) for part in path.parts)


def grade_notebook(
    notebook: Path,
    exercises: list[str],
    out_dir: Path,
    timeout: float,
    kernel_name: str = "python3",
) -> Grade:
    """Run ``notebook`` headless and grade it on ``exercises`` (the last result of each counts).

    The notebook runs in a process of its own, so ``timeout`` bounds the whole notebook: when
    it runs out, the process and its kernel are stopped and what the checks logged so far counts.
    """
    from llmlab.course.notebooks import SUMMARY_PREFIX, _kernel_pythonpath

    grade = Grade(student=str(notebook))
    executed = out_dir / "executed" / _artifact_name(notebook)
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "checks.jsonl"
        command = [
            sys.executable,
            "-m",
            "llmlab.course.notebooks",
            str(notebook),
            str(executed),
            "--timeout",
            f"{timeout:g}",
            "--kernel",
            kernel_name,
        ]
        env = {**os.environ, LOG_ENV_VAR: str(log), "PYTHONPATH": _kernel_pythonpath()}
        run = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            _, stderr = run.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGKILL)  # the kernel is in the same process group
            run.communicate()
            grade.note = f"timed out: the notebook ran longer than {timeout:g} s"
        else:
            if run.returncode != 0:
                summaries = [
                    line[len(SUMMARY_PREFIX) :]
                    for line in stderr.splitlines()
                    if line.startswith(SUMMARY_PREFIX)
                ]
                grade.note = summaries[-1] if summaries else f"exit status {run.returncode}"
        latest = {record["exercise"]: record for record in read_log(log)}
    for exercise in exercises:
        record = latest.get(exercise)
        grade.status[exercise] = NOT_RUN if record is None else (PASS if record["passed"] else FAIL)
    return grade


def _cell(text: str) -> str:
    """``text`` safe inside a Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def markdown_table(grades: list[Grade], exercises: list[str]) -> str:
    """A Markdown table: student, one column per exercise, score, notes.

    An exercise that is not part of a student's lab (grading several labs at once) is blank.
    """
    header = ["student", *exercises, "score", "notes"]
    rows = [
        [
            grade.student,
            *(grade.status.get(e, "") for e in exercises),
            f"{grade.score}/{grade.total}",
            grade.note,
        ]
        for grade in grades
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(str(value)) for value in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, grades: list[Grade], exercises: list[str]) -> None:
    """``grades`` as CSV: student, one column per exercise, score, total, notes."""
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["student", *exercises, "score", "total", "notes"])
        for grade in grades:
            writer.writerow(
                [
                    grade.student,
                    *(grade.status.get(e, "") for e in exercises),
                    grade.score,
                    grade.total,
                    grade.note,
                ]
            )


def main(argv: list[str] | None = None) -> int:
    """``python -m llmlab grade PATH... [--lab NB] [--out DIR] [--timeout S]``.

    argv excludes the word ``grade``. Exits 0 once grading completed, whatever the scores;
    2 on a usage error (a path that does not exist, a lab without checks).
    """
    parser = argparse.ArgumentParser(
        prog="python -m llmlab grade", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "paths", nargs="+", type=Path, help="students' notebooks or folders of them"
    )
    parser.add_argument(
        "--lab",
        type=Path,
        default=None,
        help="the lab or solution notebook whose check calls list the exercises",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("grades"),
        help="folder for grades.md, grades.csv and executed/ (default: ./grades)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=300,
        help="seconds any one cell may run before the notebook is stopped",
    )
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel name")
    args = parser.parse_args(argv)

    try:
        notebooks = find_notebooks(args.paths)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not notebooks:
        print("error: no .ipynb files found", file=sys.stderr)
        return 2

    from llmlab.course.labs import default_root

    root = default_root()
    grades, exercises = [], []
    for notebook in notebooks:
        lab = args.lab or find_lab(notebook, root)
        try:
            expected = expected_exercises(lab)
        except Exception as exc:  # an unreadable student notebook used as its own lab
            if args.lab:
                print(f"error: cannot read the lab {lab}: {exc}", file=sys.stderr)
                return 2
            expected = []
        if args.lab and not expected:
            print(f"error: the lab {lab} calls no check_NAME(...)", file=sys.stderr)
            return 2
        exercises += [name for name in expected if name not in exercises]
        print(f"grading {notebook} ...", file=sys.stderr)
        grades.append(grade_notebook(notebook, expected, args.out, args.timeout, args.kernel))

    args.out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(grades, exercises)
    (args.out / "grades.md").write_text(table, encoding="utf-8")
    write_csv(args.out / "grades.csv", grades, exercises)
    print(table, end="")
    print(f"wrote {args.out / 'grades.md'} and {args.out / 'grades.csv'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
