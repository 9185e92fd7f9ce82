"""Grading students' notebooks (llmlab.course.grading): right, unfilled, one wrong, broken, timed out."""

from __future__ import annotations

import contextlib
import csv
import io
import shutil
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from llmlab.course import grading
from llmlab.course.grading import FAIL, NOT_RUN, PASS, Grade

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "solutions" / "00_start_here" / "01_warmup.ipynb"
LAB = ROOT / "labs" / "00_start_here" / "01_warmup.ipynb"
EXERCISES = ["stable_softmax", "log_softmax", "cross_entropy", "apply_temperature"]


def test_expected_exercises_come_from_the_check_calls():
    assert grading.expected_exercises(SOLUTION) == EXERCISES
    assert grading.expected_exercises(LAB) == EXERCISES


def test_expected_exercises_ignore_definitions(tmp_path):
    nb = new_notebook(
        cells=[
            new_code_cell(
                "def check_mine(f):\n    pass\nchecks.check_b(f)\ncheck_a(g)\nprecheck_x(h)\ncheck_b(f)"
            )
        ]
    )
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    assert grading.expected_exercises(path) == ["b", "a"]


def test_table_and_csv(tmp_path):
    grades = [
        Grade("alice.ipynb", {"a": PASS, "b": PASS}),
        Grade("bob | x.ipynb", {"a": FAIL, "b": NOT_RUN}, note="ZeroDivisionError in cell 3"),
    ]
    table = grading.markdown_table(grades, ["a", "b"])
    assert table.splitlines() == [
        "| student | a | b | score | notes |",
        "|---|---|---|---|---|",
        "| alice.ipynb | pass | pass | 2/2 |  |",
        "| bob \\| x.ipynb | fail | not run | 0/2 | ZeroDivisionError in cell 3 |",
    ]
    grading.write_csv(tmp_path / "grades.csv", grades, ["a", "b"])
    rows = list(csv.reader(open(tmp_path / "grades.csv", encoding="utf-8")))
    assert rows[0] == ["student", "a", "b", "score", "total", "notes"]
    assert rows[2] == ["bob | x.ipynb", "fail", "not run", "0", "2", "ZeroDivisionError in cell 3"]


def test_find_notebooks_and_lab(tmp_path):
    (tmp_path / "s" / "alice" / ".ipynb_checkpoints").mkdir(parents=True)
    for path in [
        "s/alice/01_warmup.ipynb",
        "s/alice/.ipynb_checkpoints/01_warmup.ipynb",
        "s/bob.ipynb",
        "solutions/00/01_warmup.ipynb",
    ]:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("{}", encoding="utf-8")
    found = grading.find_notebooks([tmp_path / "s", tmp_path / "s" / "bob.ipynb"])
    assert found == [tmp_path / "s/alice/01_warmup.ipynb", tmp_path / "s/bob.ipynb"]
    assert grading.find_lab(found[0], tmp_path) == tmp_path / "solutions/00/01_warmup.ipynb"
    assert grading.find_lab(found[1], tmp_path) == found[1]
    with pytest.raises(FileNotFoundError, match="no such notebook"):
        grading.find_notebooks([tmp_path / "missing"])


def test_main_rejects_a_missing_path(tmp_path, capsys):
    assert grading.main([str(tmp_path / "missing.ipynb")]) == 2
    assert "no such notebook" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Grading real notebooks


def _with_cell_after(source_nb: Path, marker: str, new_source: str) -> nbformat.NotebookNode:
    """A copy of ``source_nb`` with a code cell inserted after the cell containing ``marker``."""
    nb = nbformat.read(source_nb, as_version=4)
    index = next(i for i, cell in enumerate(nb.cells) if marker in cell.source)
    nb.cells.insert(index + 1, new_code_cell(new_source))
    return nb


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """Grade five submissions in one run; returns (exit code, printed table, out dir)."""
    tmp = tmp_path_factory.mktemp("grading")
    students = tmp / "submissions"
    for name in ["right", "unfilled", "one_wrong", "crashed", "invalid"]:
        (students / name).mkdir(parents=True)
    shutil.copy(SOLUTION, students / "right" / "01_warmup.ipynb")
    shutil.copy(LAB, students / "unfilled" / "01_warmup.ipynb")

    one_wrong = SOLUTION.read_text(encoding="utf-8").replace("-picked.mean()", "-picked.sum()")
    assert one_wrong != SOLUTION.read_text(encoding="utf-8")
    (students / "one_wrong" / "01_warmup.ipynb").write_text(one_wrong, encoding="utf-8")

    crashed = _with_cell_after(
        SOLUTION, "check_log_softmax(log_softmax)", 'raise RuntimeError("student broke this")'
    )
    nbformat.write(crashed, students / "crashed" / "01_warmup.ipynb")
    (students / "invalid" / "01_warmup.ipynb").write_text("{not json", encoding="utf-8")

    out = tmp / "grades"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = grading.main(
            [str(students), "--lab", str(LAB), "--out", str(out), "--timeout", "300"]
        )
    return code, printed.getvalue(), out


def _rows(out: Path) -> dict[str, dict[str, str]]:
    """grades.csv as {student folder name: row}."""
    with open(out / "grades.csv", encoding="utf-8") as file:
        return {Path(row["student"]).parent.name: row for row in csv.DictReader(file)}


@pytest.mark.slow
def test_grading_completes_and_prints_the_table(graded):
    code, printed, out = graded
    assert code == 0
    table = (out / "grades.md").read_text(encoding="utf-8")
    assert printed == table
    assert table.splitlines()[0] == "| student | " + " | ".join(EXERCISES) + " | score | notes |"
    assert len(table.splitlines()) == 2 + 5
    assert len(list((out / "executed").glob("*.ipynb"))) == 4  # the invalid one never ran


@pytest.mark.slow
@pytest.mark.parametrize(
    ("student", "statuses", "note"),
    [
        ("right", [PASS, PASS, PASS, PASS], ""),
        ("unfilled", [FAIL, FAIL, FAIL, FAIL], ""),
        ("one_wrong", [PASS, PASS, FAIL, PASS], ""),
        ("crashed", [PASS, PASS, NOT_RUN, NOT_RUN], "RuntimeError in cell"),
        ("invalid", [NOT_RUN] * 4, "invalid notebook"),
    ],
)
def test_each_submission_is_scored(graded, student, statuses, note):
    row = _rows(graded[2])[student]
    assert [row[e] for e in EXERCISES] == statuses
    assert row["score"] == str(statuses.count(PASS)) and row["total"] == "4"
    assert note in row["notes"] and (note or row["notes"] == "")


@pytest.mark.slow
def test_a_notebook_that_hangs_is_stopped_and_scored(tmp_path):
    # Every cell is short, but together they outlast the limit: the limit is per notebook.
    nb = new_notebook(
        cells=[new_code_cell("print('started')")]
        + [new_code_cell("import time\ntime.sleep(1)") for _ in range(30)]
    )
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, tmp_path / "slow.ipynb")
    out = tmp_path / "grades"
    with contextlib.redirect_stdout(io.StringIO()):
        code = grading.main(
            [
                str(tmp_path / "slow.ipynb"),
                "--lab",
                str(SOLUTION),
                "--out",
                str(out),
                "--timeout",
                "6",
            ]
        )
    assert code == 0
    row = next(iter(_rows(out).values()))
    assert [row[e] for e in EXERCISES] == [NOT_RUN] * 4 and row["score"] == "0"
    assert "timed out: the notebook ran longer than 6 s" in row["notes"]
