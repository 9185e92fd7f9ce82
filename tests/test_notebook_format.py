"""Every notebook has the same shape: parameters first, the Colab cell second, one kernel, and
no stray execution noise. Chapters keep their outputs (nbval compares them); solutions and labs
are committed clean."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from llmlab import course

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(
    p
    for kind in ("chapters", "solutions", "labs")
    for p in (ROOT / kind).rglob("*.ipynb")
    if ".ipynb_checkpoints" not in p.parts
)
CHAPTERS = [p for p in NOTEBOOKS if p.relative_to(ROOT).parts[0] == "chapters"]


def _id(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def test_there_are_notebooks():
    assert CHAPTERS and len(NOTEBOOKS) > len(CHAPTERS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_id)
def test_notebook_shape(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec == {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    code = _code_cells(nb)
    assert "parameters" in code[0].metadata.get("tags", []), "first code cell must be `parameters`"
    assert code[1].source == course.COLAB_SETUP_CELL, "second code cell must be the Colab set-up"
    assert nb.cells[0].cell_type == "markdown", "open with what the reader will be able to do"
    for cell in nb.cells:
        # "llmlab": the exercise marks `make labs` puts on a lab's answer and check cells
        stray = set(cell.metadata) - {"tags", "id", "editable", "deletable", "llmlab"}
        assert not stray, f"stray cell metadata {stray} (papermill/execution noise)"
    assert "papermill" not in nb.metadata


@pytest.mark.parametrize("path", CHAPTERS, ids=_id)
def test_chapter_is_committed_executed_in_order(path):
    nb = nbformat.read(path, as_version=4)
    counts = [c.execution_count for c in _code_cells(nb)]
    assert counts == list(range(1, len(counts) + 1)), "re-run the chapter top to bottom, then save"
    errors = [o for c in _code_cells(nb) for o in c.outputs if o.output_type == "error"]
    assert not errors, f"committed with an error: {errors[0].ename}: {errors[0].evalue}"
    assert "LLMLAB_SMOKE" in _code_cells(nb)[0].source, (
        "parameters must shrink under LLMLAB_SMOKE=1"
    )


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if p not in CHAPTERS], ids=_id)
def test_solutions_and_labs_are_clean(path):
    nb = nbformat.read(path, as_version=4)
    for cell in _code_cells(nb):
        assert cell.outputs == [] and cell.execution_count is None, "commit labs without outputs"
