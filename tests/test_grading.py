"""Grading students' notebooks (llmlab.course.grading): honest, broken and adversarial
submissions of the warm-up lab, graded by the real command line, with the expected table.

The corpus is built from the generated lab (its cells carry the exercise marks) with the
solution's answers filled in, then one thing changed per submission. A student who wants the
points without solving the exercise is the threat: every trick must score 0 for what it did
not solve, and be flagged where the grader can see it.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from llmlab.course import grading
from llmlab.course.grade_worker import encode, load_reply
from llmlab.course.grading import (
    ERROR,
    FLAGGED,
    NOT_IMPLEMENTED,
    NOT_RUN,
    PASSED,
    TIMED_OUT,
    WRONG,
    ExerciseResult,
    Grade,
)
from llmlab.course.labs import METADATA_KEY

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "solutions" / "00_start_here" / "01_warmup.ipynb"
LAB = ROOT / "labs" / "00_start_here" / "01_warmup.ipynb"
OTHER_LAB = ROOT / "solutions" / "01_transformer" / "03_rope.ipynb"
EXERCISES = ["stable_softmax", "log_softmax", "cross_entropy", "apply_temperature"]
FUNCTIONS = dict(
    zip(EXERCISES, ["softmax", "log_softmax", "cross_entropy", "apply_temperature"], strict=True)
)


# --------------------------------------------------------------------------------------------
# The lab's structure


def test_exercises_come_from_the_lab_cells():
    assert grading.expected_exercises(SOLUTION) == EXERCISES
    assert grading.expected_exercises(LAB) == EXERCISES
    info = grading.lab_info(SOLUTION)
    assert info.lab_id == "00_start_here/01_warmup" == grading.lab_info(LAB).lab_id
    assert [e.function for e in info.exercises] == list(FUNCTIONS.values())


def test_a_lookalike_call_is_no_exercise(tmp_path):
    # Only a check cell `F = check_X(F).fn` with check_X imported from llmlab.checks counts.
    nb = new_notebook(
        cells=[
            new_code_cell("from llmlab.checks.start_here.warmup import check_stable_softmax"),
            new_code_cell(
                "def softmax(x):\n    ### BEGIN SOLUTION\n    pass\n    ### END SOLUTION"
            ),
            new_code_cell("softmax = check_stable_softmax(softmax).fn"),
            new_code_cell("def check_mine(f):\n    pass\ncheck_mine(softmax)\nprecheck_x(1)"),
        ]
    )
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    assert grading.expected_exercises(path) == ["stable_softmax"]


def test_generated_labs_mark_their_exercise_cells():
    nb = nbformat.read(LAB, as_version=4)
    assert nb.metadata[METADATA_KEY] == {"lab": "00_start_here/01_warmup", "exercises": EXERCISES}
    marks = [c.metadata[METADATA_KEY] for c in nb.cells if METADATA_KEY in c.metadata]
    assert [(m["role"], m["exercise"]) for m in marks] == [
        (role, e) for e in EXERCISES for role in ("answer", "check")
    ]


# --------------------------------------------------------------------------------------------
# Pieces: tampering seen in code, values sent back by the worker, limits, reports


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("from llmlab.checks.start_here.warmup import reference_softmax", "llmlab.checks"),
        ("import llmlab.checks as c\nc.compare_tensors = None", "llmlab.checks"),
        ("def f(x):\n    import sys\n    return sys._getframe(1).f_locals['expected']", "stack"),
        ("import inspect\ndef f(x):\n    return inspect.stack()", "inspect"),
        ("def f(x):\n    return CheckResult('f', True, 'ok', 1)", "by hand"),
        ("import sys\nsys.setprofile(None)", "profiler"),
        ("open(os.environ['LLMLAB_CHECK_LOG'], 'a')", "check log"),
        ("p = '../../solutions/00_start_here/01_warmup.ipynb'", "solutions"),
        ("import gc\ngc.get_objects()", "garbage collector"),
        ("import threading\nthreading.Thread(target=print).start()", "threading"),
        ("t = __import__('thr' + 'eading')", "built at run time"),
        ("import importlib\nm = importlib.import_module('sub' + 'process')", "importlib"),
        ("exec(bytes.fromhex('7072696e74282931').decode())", "built at run time"),
    ],
)
def test_tampering_is_seen_in_the_code(source, words):
    assert any(words in found for found in grading.tampering(source)), grading.tampering(source)


@pytest.mark.parametrize("solution", sorted((ROOT / "solutions").rglob("*.ipynb")), ids=str)
def test_honest_code_is_not_tampering(solution):
    # Every answer of every lab (torch.stack, a variable named `record` ...) is clean.
    for cell in nbformat.read(solution, as_version=4).cells:
        if "BEGIN SOLUTION" in cell.source:
            assert grading.tampering(cell.source) == [], cell.source[:200]


def test_a_method_named_like_a_builtin_is_not_tampering():
    assert grading.tampering("model.eval()\nfn = torch.compile(fn)") == []


def test_values_come_back_as_plain_data():
    import collections

    import numpy as np
    import torch

    sent = {
        "tensor": torch.nn.Parameter(torch.ones(2)),
        "pairs": {(1, 2): 3},
        "set": {1, 2},
        "counter": collections.Counter("aab"),
        "array": np.zeros(3),
        "object": object(),
    }
    buffer = io.BytesIO()
    torch.save({"v": encode(sent)}, buffer)
    back = load_reply(buffer.getvalue())["v"]
    assert type(back["tensor"]) is torch.Tensor and back["pairs"] == {(1, 2): 3}
    assert back["set"] == {1, 2} and back["counter"] == collections.Counter("aab")
    assert type(back["array"]).__name__ == "ndarray" and back["array"].shape == (3,)
    assert type(back["object"]).__name__ == "object"


def test_a_reply_that_would_run_code_is_refused(tmp_path):
    import torch

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    buffer = io.BytesIO()
    torch.save({"v": Evil()}, buffer)
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        load_reply(buffer.getvalue())
    assert not marker.exists()


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon"])
def test_bad_time_limits_are_rejected(value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        grading.main([str(SOLUTION), "--timeout", value])
    assert exit_info.value.code == 2
    assert "--timeout" in capsys.readouterr().err


def test_limits_validate():
    with pytest.raises(ValueError, match="exercise_timeout must be a finite number > 0"):
        grading.Limits(exercise_timeout=0)


def test_help_says_what_each_limit_covers_and_the_isolation(capsys):
    with pytest.raises(SystemExit):
        grading.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "seconds for a whole notebook" in text
    assert "one exercise: its cell and all its check's cases" in text
    assert "Isolation on this machine" in text


def test_reports(tmp_path):
    grades = [
        Grade("alice.ipynb", "lab", {"a": ExerciseResult(PASSED), "b": ExerciseResult(PASSED)}),
        Grade(
            "bob | x.ipynb",
            "lab",
            {"a": ExerciseResult(WRONG, "case 'x': off"), "b": ExerciseResult(FLAGGED, "copied")},
            note="ZeroDivisionError in cell 3",
        ),
    ]
    for grade in grades:
        grading.apply_points(grade, {"a": 2}, set())
    table = grading.markdown_report(grades, ["a", "b"], {"a": 2})
    lines = table.splitlines()
    assert lines[0] == "| student | a | b | score | notes |"
    assert lines[2] == "| alice.ipynb | ✅ | ✅ | 3/3 |  |"
    assert (
        lines[3] == "| bob \\| x.ipynb | ❌ | 🚩 | 0/3 | ZeroDivisionError in cell 3; b: copied |"
    )
    assert "| a | 2 | 1/2 | wrong (1) |" in lines
    grading.write_csv(tmp_path / "grades.csv", grades, ["a", "b"], {"a": 2})
    rows = list(csv.reader(open(tmp_path / "grades.csv", encoding="utf-8")))
    assert rows[0] == [
        "student",
        "lab",
        "a",
        "a reason",
        "b",
        "b reason",
        "score",
        "total",
        "notes",
    ]
    assert rows[2][2:6] == ["wrong", "case 'x': off", "flagged", "copied"]
    # The instructor accepts bob's flagged b, whose check had passed.
    grades[1].exercises["b"].check_passed = True
    grading.apply_points(grades[1], {}, {("bob", "b")})
    assert grades[1].score == 1 and "accepted by the instructor" in grades[1].exercises["b"].reason


# --------------------------------------------------------------------------------------------
# The corpus, graded by the real command line


def _answers() -> dict[str, str]:
    """The solution's exercise cells, by function name."""
    nb = nbformat.read(SOLUTION, as_version=4)
    answers = {}
    for cell in nb.cells:
        match = re.search(r"^def (\w+)", cell.source, re.M)
        if match and "BEGIN SOLUTION" in cell.source:
            answers[match.group(1)] = cell.source
    return answers


def _submission(
    answers: dict[str, str] | None = None, checks: dict[str, str] | None = None, extra=()
):
    """The lab with the solution's answers, ``answers`` replacing some (by function name) and
    ``checks`` replacing check cells (by exercise); ``extra`` cells go before the first."""
    nb = nbformat.read(LAB, as_version=4)
    filled = {**_answers(), **(answers or {})}
    for cell in nb.cells:
        mark = cell.metadata.get(METADATA_KEY, {})
        if mark.get("role") == "answer":
            cell.source = filled[mark["function"]]
        elif mark.get("role") == "check" and mark["exercise"] in (checks or {}):
            cell.source = checks[mark["exercise"]]
    first = next(i for i, c in enumerate(nb.cells) if c.metadata.get(METADATA_KEY))
    for offset, source in enumerate(extra):
        nb.cells.insert(first + offset, new_code_cell(source))
    return nb


SOFTMAX_HEAD = "def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:\n"
CE_HEAD = "def cross_entropy(logits, targets):\n"

#: name -> (notebook or text, {exercise: expected status}, words expected in the notes/reasons)
CORPUS = {
    # honest
    "right": (_submission(), dict.fromkeys(EXERCISES, PASSED), ""),
    "unfilled": (nbformat.read(LAB, as_version=4), dict.fromkeys(EXERCISES, NOT_IMPLEMENTED), ""),
    "one_wrong": (
        _submission({"cross_entropy": _answers()["cross_entropy"].replace(".mean()", ".sum()")}),
        {**dict.fromkeys(EXERCISES, PASSED), "cross_entropy": WRONG},
        "mean, not sum",
    ),
    "syntax_error": (
        _submission({"log_softmax": "def log_softmax(x, dim=-1):\n    return x -"}),
        {**dict.fromkeys(EXERCISES, PASSED), "log_softmax": ERROR},
        "SyntaxError",
    ),
    "loops_in_exercise_3": (
        _submission({"cross_entropy": CE_HEAD + "    while True:\n        pass"}),
        {**dict.fromkeys(EXERCISES, PASSED), "cross_entropy": TIMED_OUT},
        "timed out after",
    ),
    "hangs_hard_in_exercise_1": (  # eats the timeout: the grader kills and restarts it
        _submission(
            {
                "softmax": SOFTMAX_HEAD + "    import time\n    while True:\n        try:\n"
                "            time.sleep(60)\n        except BaseException:\n            pass"
            }
        ),
        {**dict.fromkeys(EXERCISES, PASSED), "stable_softmax": TIMED_OUT},
        "timed out after",
    ),
    "cell_loops_at_top_level": (
        _submission({"apply_temperature": "while True:\n    pass"}),
        {**dict.fromkeys(EXERCISES, PASSED), "apply_temperature": TIMED_OUT},
        "its cell timed out",
    ),
    "helper_in_added_cell": (
        _submission(
            {"softmax": SOFTMAX_HEAD + "    return _normalise(x - x.amax(dim, keepdim=True), dim)"},
            extra=[
                "def _normalise(z, dim):\n    e = z.exp()\n    return e / e.sum(dim, keepdim=True)"
            ],
        ),
        dict.fromkeys(EXERCISES, PASSED),
        "",
    ),
    "invalid_json": ("{not json", dict.fromkeys(EXERCISES, NOT_RUN), "invalid notebook"),
    "wrong_lab": (
        nbformat.read(OTHER_LAB, as_version=4),
        dict.fromkeys(EXERCISES, NOT_RUN),
        "wrong lab",
    ),
    # adversarial
    "imports_the_reference": (
        _submission(
            {"softmax": "from llmlab.checks.start_here.warmup import reference_softmax as softmax"}
        ),
        {**dict.fromkeys(EXERCISES, PASSED), "stable_softmax": FLAGGED},
        "reference",
    ),
    "wraps_the_reference": (
        _submission(
            {
                # `__import__` reached through a computed name: no reading of the cell sees it,
                # the call recorder does.
                "softmax": SOFTMAX_HEAD
                + "    b = getattr(__builtins__, '__dict__', __builtins__)\n"
                "    w = b['__imp' + 'ort__']('llmlab.checks.start_here.warmup', fromlist=['w'])\n"
                "    return getattr(w, 'reference_' + 'softmax')(x, dim)"
            }
        ),
        {**dict.fromkeys(EXERCISES, PASSED), "stable_softmax": FLAGGED},
        "the check's own code",
    ),
    "hands_back_the_reference": (  # gets the reference by failing a check on purpose
        _submission({"softmax": "softmax = check_stable_softmax(None).fn"}),
        {**dict.fromkeys(EXERCISES, PASSED), "stable_softmax": FLAGGED},
        "reference",
    ),
    "library_op": (
        _submission({"softmax": SOFTMAX_HEAD + "    return torch.softmax(x, dim)"}),
        {**dict.fromkeys(EXERCISES, PASSED), "stable_softmax": FLAGGED},
        "torch.softmax",
    ),
    "library_op_hidden_from_the_profiler": (
        _submission(
            {
                "softmax": SOFTMAX_HEAD
                + "    import sys\n    getattr(sys, 'set' + 'profile')(None)"
                "\n    return torch.softmax(x, dim)"
            }
        ),
        {**dict.fromkeys(EXERCISES, PASSED), "stable_softmax": FLAGGED},
        "profile",
    ),
    "walks_the_stack_for_expected": (
        _submission(
            {
                "softmax": SOFTMAX_HEAD + "    import sys\n    f = sys._getframe(1)\n"
                "    while f is not None:\n        if 'expected' in f.f_locals:\n"
                "            return f.f_locals['expected']\n        f = f.f_back\n"
                "    return x"
            }
        ),
        {**dict.fromkeys(EXERCISES, PASSED), "stable_softmax": FLAGGED},
        "stack frames",
    ),
    "patches_the_checks_and_writes_the_log": (
        _submission(
            {
                "log_softmax": "import json, os, llmlab.checks as c\n"
                "c.compare_tensors = lambda *a, **k: None\n"
                "c.evaluate = lambda *a, **k: c.CheckResult('log_softmax', True, 'ok', 1)\n"
                "with open(os.environ.get('LLMLAB_CHECK_LOG', 'checks.jsonl'), 'a') as f:\n"
                "    f.write(json.dumps({'exercise': 'log_softmax', 'passed': True}))\n"
                "def log_softmax(x, dim=-1):\n    return x"
            }
        ),
        {**dict.fromkeys(EXERCISES, PASSED), "log_softmax": FLAGGED},
        "llmlab.checks",
    ),
    "reads_the_solutions": (
        _submission(
            {
                "cross_entropy": "import json, llmlab.course as lc\n"
                "nb = json.load(open(lc.repo_root() / 'solutions/00_start_here/01_warmup.ipynb'))\n"
                "exec(''.join(nb['cells'][18]['source']))"
            }
        ),
        {**dict.fromkeys(EXERCISES, PASSED), "cross_entropy": FLAGGED},
        "solutions",
    ),
    "fakes_the_check_cell": (
        _submission(
            {"softmax": SOFTMAX_HEAD + "    return x"},
            checks={"stable_softmax": "print('✅ stable_softmax: passed all 10 cases.')"},
        ),
        {**dict.fromkeys(EXERCISES, PASSED), "stable_softmax": FLAGGED},
        "check cell was changed",
    ),
}


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """Grade the corpus in one CLI run with -j 2; returns (exit code, printed table, out dir)."""
    tmp = tmp_path_factory.mktemp("grading")
    students = tmp / "submissions"
    for name, (notebook, _, _) in CORPUS.items():
        (students / name).mkdir(parents=True)
        path = students / name / "01_warmup.ipynb"
        if isinstance(notebook, str):
            path.write_text(notebook, encoding="utf-8")
        else:
            nbformat.write(notebook, path)
    out = tmp / "grades"
    printed = io.StringIO()
    os.environ["LLMLAB_TEST_SECRET"] = "instructor-only"
    try:
        with contextlib.redirect_stdout(printed):
            code = grading.main(
                [str(students), "--lab", str(LAB), "--out", str(out), "-j", "2"]
                + ["--exercise-timeout", "6", "--timeout", "120"]
            )
    finally:
        del os.environ["LLMLAB_TEST_SECRET"]
    return code, printed.getvalue(), out


def _rows(out: Path) -> dict[str, dict[str, str]]:
    """grades.csv as {student folder name: row}."""
    with open(out / "grades.csv", encoding="utf-8") as file:
        return {Path(row["student"]).parent.name: row for row in csv.DictReader(file)}


@pytest.mark.slow
def test_grading_completes_and_writes_every_report(graded):
    code, printed, out = graded
    assert code == 0
    table = (out / "grades.md").read_text(encoding="utf-8")
    assert printed == table
    assert table.splitlines()[0] == "| student | " + " | ".join(EXERCISES) + " | score | notes |"
    assert len(list((out / "feedback").glob("*.md"))) == len(CORPUS)
    assert len(list((out / "results").glob("*.json"))) == len(CORPUS)
    assert "| stable_softmax | 1 |" in table  # the per-exercise summary


@pytest.mark.slow
@pytest.mark.parametrize("student", list(CORPUS))
def test_each_submission_gets_exactly_its_score(graded, student):
    row = _rows(graded[2])[student]
    _, statuses, words = CORPUS[student]
    assert {e: row[e] for e in EXERCISES} == statuses, row
    assert row["score"] == str(list(statuses.values()).count(PASSED))
    reasons = " ".join(row[f"{e} reason"] for e in EXERCISES) + " " + row["notes"]
    assert words in reasons, reasons
    for exercise, status in statuses.items():  # every failure says why
        assert status == PASSED or row[f"{exercise} reason"] or row["notes"]


@pytest.mark.slow
def test_feedback_and_executed_notebook_show_the_reasons(graded):
    out = graded[2]
    feedback = next((out / "feedback").glob("*one_wrong*.md")).read_text(encoding="utf-8")
    assert "cross_entropy** (0/1): wrong" in feedback and "mean, not sum" in feedback
    executed = next((out / "executed").glob("*one_wrong*.ipynb"))
    text = executed.read_text(encoding="utf-8")
    assert "✅ stable_softmax: passed" in text and "❌ cross_entropy" in text


@pytest.mark.slow
def test_regrading_one_student_keeps_the_others(graded, tmp_path):
    out = graded[2]
    students = Path(next(iter(_rows(out).values()))["student"]).parents[1]
    with contextlib.redirect_stdout(io.StringIO()):
        code = grading.main(
            [str(students), "--lab", str(LAB), "--out", str(out), "--only", "right"]
            + ["--accept", "library_op:stable_softmax"]
        )
    assert code == 0
    rows = _rows(out)
    assert len(rows) == len(CORPUS) and rows["right"]["score"] == "4"
    assert rows["library_op"]["score"] == "3"  # flagged, and its check failed: not re-scored
    saved = json.loads(next((out / "results").glob("*library_op*.json")).read_text())
    assert saved["exercises"]["stable_softmax"]["status"] == FLAGGED


def test_a_missing_path_is_a_usage_error(tmp_path, capsys):
    assert grading.main([str(tmp_path / "missing.ipynb")]) == 2
    assert "no such notebook" in capsys.readouterr().err


def test_without_lab_the_grader_warns_and_never_grades_a_notebook_against_itself(tmp_path, capsys):
    nb = _submission()
    nb.metadata.pop(METADATA_KEY)
    nbformat.write(nb, tmp_path / "renamed.ipynb")
    with contextlib.redirect_stdout(io.StringIO()):
        assert grading.main([str(tmp_path / "renamed.ipynb"), "--out", str(tmp_path / "g")]) == 0
    assert "WARNING: no --lab given" in capsys.readouterr().err
    row = next(iter(_rows(tmp_path / "g").values()))
    assert "cannot tell which lab" in row["notes"] and row["score"] == "0"


@pytest.mark.slow
def test_selfcheck_gives_the_graders_verdict(tmp_path, capsys):
    nbformat.write(CORPUS["one_wrong"][0], tmp_path / "mine.ipynb")
    assert grading.self_check([str(tmp_path / "mine.ipynb")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# 00_start_here/01_warmup: 3/4") and "mean, not sum" in out
