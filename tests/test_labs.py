"""The lab generator (llmlab.course.labs), and every lab of the course run end to end.

The slow tests cover every ``solutions/**/*.ipynb`` automatically:

- the solution, executed headless with papermill, passes ALL the checks it calls;
- its generated lab runs to the end headless (answers missing) and fails ALL of them.

Results are read from the ``LLMLAB_CHECK_LOG`` file each run writes. Sizes: when a notebook's
``parameters`` cell defines ``SMOKE``, it is run with ``SMOKE = True`` so it can shrink itself;
otherwise it runs with its own parameters (labs are meant to be small). Executed notebooks are
kept under ``artifacts/notebooks/`` for inspection.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from llmlab.checks import LOG_ENV_VAR, read_log
from llmlab.course import labs
from llmlab.course.grading import expected_exercises

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = labs.solution_notebooks(ROOT)
ARTIFACTS = ROOT / "artifacts" / "notebooks"


def _id(path: Path) -> str:
    return str(path.relative_to(ROOT / "solutions"))


# --------------------------------------------------------------------------------------------
# The committed labs


def test_there_are_solutions():
    assert SOLUTIONS, "no solutions/**/*.ipynb found"


def test_committed_labs_are_up_to_date():
    stale = labs.generate_all(ROOT, check=True)
    assert not stale, "labs out of date (run `python -m llmlab labs`): " + ", ".join(
        str(p.relative_to(ROOT)) for p in stale
    )


def test_every_lab_has_a_solution():
    lab_files = [p for p in (ROOT / "labs").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts]
    orphans = [
        p for p in lab_files if not (ROOT / "solutions" / p.relative_to(ROOT / "labs")).is_file()
    ]
    assert not orphans, f"labs without a solution: {orphans}"


@pytest.mark.parametrize("solution", SOLUTIONS, ids=_id)
def test_no_solution_left_in_the_lab(solution):
    lab_text = labs.lab_path(solution, ROOT).read_text(encoding="utf-8")
    assert labs.BEGIN not in lab_text and labs.END not in lab_text
    assert labs.BEGIN in solution.read_text(encoding="utf-8"), "a solution without an exercise"


@pytest.mark.parametrize("solution", SOLUTIONS, ids=_id)
def test_solutions_are_committed_clean(solution):
    nb = nbformat.read(solution, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


# --------------------------------------------------------------------------------------------
# strip_solutions and generate_lab

SOLVED_CELL = '''\
class Model:
    def forward(self, x):
        ### BEGIN SOLUTION
        # HINT: double it.
        y = x + x
        return y
        ### END SOLUTION

def f(x):
    """Docstring stays."""
    ### BEGIN SOLUTION
    return x
    ### END SOLUTION
'''

LAB_CELL = f'''\
class Model:
    def forward(self, x):
        # HINT: double it.
        {labs.STUB}

def f(x):
    """Docstring stays."""
    {labs.GENERIC_HINT}
    {labs.STUB}
'''


def test_blocks_are_replaced_at_their_indentation():
    assert labs.strip_solutions(SOLVED_CELL) == LAB_CELL


def test_only_hints_right_after_begin_are_kept():
    source = "### BEGIN SOLUTION\nx = 1\n# HINT: too late, this is the answer's comment\n### END SOLUTION"
    assert labs.strip_solutions(source) == f"{labs.GENERIC_HINT}\n{labs.STUB}"


def test_several_hint_lines_are_kept():
    source = (
        "    ### BEGIN SOLUTION\n    # HINT: one\n    # HINT: two\n    pass\n    ### END SOLUTION"
    )
    assert labs.strip_solutions(source) == f"    # HINT: one\n    # HINT: two\n    {labs.STUB}"


def test_source_without_markers_is_unchanged():
    assert labs.strip_solutions("x = 1\n# a comment\n") == "x = 1\n# a comment\n"


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("### BEGIN SOLUTION\nx = 1", "line 1: '### BEGIN SOLUTION' is never closed"),
        ("x = 1\n### END SOLUTION", "line 2: '### END SOLUTION' without"),
        (
            "### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION",
            "line 2: '### BEGIN SOLUTION' inside",
        ),
    ],
)
def test_unbalanced_markers_name_notebook_and_cell(source, words):
    nb = new_notebook(cells=[new_markdown_cell("# title"), new_code_cell(source)])
    with pytest.raises(ValueError, match=re.escape(f"demo.ipynb, cell 1, {words}")):
        labs.generate_lab(nb, name="demo.ipynb")


def _solution_notebook() -> nbformat.NotebookNode:
    cell = new_code_cell(SOLVED_CELL, metadata={"tags": ["exercise"]})
    cell.execution_count = 3
    cell.outputs = [nbformat.v4.new_output("stream", text="hello\n")]
    nb = new_notebook(cells=[new_markdown_cell("### BEGIN SOLUTION in prose is left alone"), cell])
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    return nb


def test_generate_lab_clears_outputs_keeps_metadata_and_input():
    solution = _solution_notebook()
    before = nbformat.writes(solution)
    lab = labs.generate_lab(solution)
    assert nbformat.writes(solution) == before  # the solution is not modified
    code = lab.cells[1]
    assert code.source == LAB_CELL and code.outputs == [] and code.execution_count is None
    assert code.metadata == {"tags": ["exercise"]} and code.id == solution.cells[1].id
    assert lab.metadata == solution.metadata
    assert lab.cells[0] == solution.cells[0]


def test_rendering_is_byte_stable():
    solution = _solution_notebook()
    first = labs.render(labs.generate_lab(solution))
    assert first == labs.render(labs.generate_lab(nbformat.reads(first, as_version=4)))
    assert first.endswith("}\n") and not first.endswith("\n\n")


def test_generate_all_and_main(tmp_path, capsys):
    solution = tmp_path / "solutions" / "01_chapter" / "01_lab.ipynb"
    solution.parent.mkdir(parents=True)
    nbformat.write(_solution_notebook(), solution)
    lab = tmp_path / "labs" / "01_chapter" / "01_lab.ipynb"

    assert labs.main(["--check", "--root", str(tmp_path)]) == 1
    assert "out of date: labs/01_chapter/01_lab.ipynb" in capsys.readouterr().out
    assert not lab.exists()  # --check writes nothing

    assert labs.generate_all(tmp_path) == [lab]
    assert nbformat.read(lab, as_version=4).cells[1].source == LAB_CELL
    assert labs.generate_all(tmp_path) == []
    assert labs.main(["--check", "--root", str(tmp_path)]) == 0

    lab.write_text(lab.read_text(encoding="utf-8") + " ", encoding="utf-8")  # hand-edited
    assert labs.generate_all(tmp_path, check=True) == [lab]


def test_main_reports_unbalanced_markers(tmp_path, capsys):
    solution = tmp_path / "solutions" / "bad.ipynb"
    solution.parent.mkdir(parents=True)
    nbformat.write(new_notebook(cells=[new_code_cell("### BEGIN SOLUTION")]), solution)
    assert labs.main(["--root", str(tmp_path)]) == 2
    assert "solutions/bad.ipynb, cell 0" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Every solution passes all its checks; every lab runs to the end and fails them all


def _parameters(notebook: Path) -> dict:
    """``{"SMOKE": True}`` when the notebook's parameters cell defines SMOKE, else {}."""
    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:
        if "parameters" in cell.metadata.get("tags", []):
            return {"SMOKE": True} if re.search(r"^SMOKE\s*=", cell.source, re.M) else {}
    return {}


def _run_and_read_checks(notebook: Path, kind: str, tmp_path: Path) -> dict[str, dict]:
    """Execute ``notebook``; the last check-log record of each exercise."""
    from llmlab.course.notebooks import execute_notebook

    log = tmp_path / "checks.jsonl"
    dst = ARTIFACTS / kind / notebook.relative_to(ROOT / kind)
    execute_notebook(
        notebook, dst, parameters=_parameters(notebook), timeout=600, env={LOG_ENV_VAR: str(log)}
    )
    return {record["exercise"]: record for record in read_log(log)}


@pytest.mark.slow
@pytest.mark.parametrize("solution", SOLUTIONS, ids=_id)
def test_solution_passes_all_its_checks(solution, tmp_path):
    expected = expected_exercises(solution)
    assert expected, f"{solution} calls no check_NAME(...)"
    recorded = _run_and_read_checks(solution, "solutions", tmp_path)
    for exercise in expected:
        assert exercise in recorded, f"check of {exercise!r} never ran"
        assert recorded[exercise]["passed"], recorded[exercise]["message"]


@pytest.mark.slow
@pytest.mark.parametrize("solution", SOLUTIONS, ids=_id)
def test_lab_runs_to_the_end_and_fails_all_its_checks(solution, tmp_path):
    lab = labs.lab_path(solution, ROOT)
    expected = expected_exercises(lab)
    assert expected == expected_exercises(solution)
    recorded = _run_and_read_checks(lab, "labs", tmp_path)
    for exercise in expected:
        assert exercise in recorded, f"check of {exercise!r} never ran"
        assert not recorded[exercise]["passed"], f"the unfilled {exercise!r} passed its check"
        assert "not implemented yet" in recorded[exercise]["message"]


# --------------------------------------------------------------------------------------------
# llmlab.course.notebooks: readable failures, environment passed to the kernel


def test_patched_environ_restores(monkeypatch):
    from llmlab.course.notebooks import patched_environ

    monkeypatch.setenv("LLMLAB_A", "before")
    monkeypatch.delenv("LLMLAB_B", raising=False)
    with patched_environ({"LLMLAB_A": "during", "LLMLAB_B": "new"}):
        assert os.environ["LLMLAB_A"] == "during" and os.environ["LLMLAB_B"] == "new"
    assert os.environ["LLMLAB_A"] == "before" and "LLMLAB_B" not in os.environ


def _notebook(tmp_path: Path, *sources: str) -> Path:
    nb = new_notebook(cells=[new_markdown_cell("# test"), *map(new_code_cell, sources)])
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    path = tmp_path / "test.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.mark.slow
def test_execute_notebook_passes_env_and_returns_text(tmp_path):
    from llmlab.course.notebooks import execute_notebook, text_outputs

    path = _notebook(tmp_path, "import os, llmlab\nprint(os.environ['LLMLAB_TEST_VAR'])", "6 * 7")
    nb = execute_notebook(path, tmp_path / "out.ipynb", env={"LLMLAB_TEST_VAR": "from-the-caller"})
    assert text_outputs(nb) == "from-the-caller\n42\n"
    assert "LLMLAB_TEST_VAR" not in os.environ
    assert (tmp_path / "out.ipynb").is_file()


@pytest.mark.slow
def test_execute_notebook_failure_is_readable(tmp_path):
    from llmlab.course.notebooks import NotebookError, execute_notebook

    path = _notebook(tmp_path, "x = 1", "def f():\n    return 1 / 0\n\nf()", "print('never')")
    with pytest.raises(NotebookError) as info:
        execute_notebook(path, tmp_path / "out.ipynb")
    error = info.value
    message = str(error)
    assert error.summary == "ZeroDivisionError in cell 3 (In [2]): division by zero"
    assert f"notebook {path} failed" in message
    assert "    def f():" in message  # the cell's source
    assert "return 1 / 0" in message and "\x1b[" not in message  # traceback, no colours
    assert f"executed notebook saved to {tmp_path / 'out.ipynb'}" in message
    assert error.cell_index == 2 and (tmp_path / "out.ipynb").is_file()


def test_execute_notebook_invalid_file(tmp_path):
    from llmlab.course.notebooks import NotebookError, execute_notebook

    path = tmp_path / "broken.ipynb"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(NotebookError, match="invalid notebook"):
        execute_notebook(path)
    with pytest.raises(NotebookError, match="file not found"):
        execute_notebook(tmp_path / "missing.ipynb")
