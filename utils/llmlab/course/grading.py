"""Grade students' lab notebooks: run each student's answers in a sandbox, check them here.

    python -m llmlab grade submissions/ --lab labs/00_start_here/01_warmup.ipynb -j 2

How a submission is graded (learnt from nbgrader's autograde and otter-grader):

1. The lab's exercises come from the lab itself (:func:`llmlab.course.labs.lab_structure`):
   each check cell ``F = check_X(F).fn`` and the exercise cell before it. The student's
   exercise cells are found by the mark the lab generator put on them (their metadata), or by
   the function they define when the mark was lost.
2. A fresh worker process starts in a sandbox (:mod:`llmlab.sandbox`: a temporary folder, a
   scrubbed environment, no network, ``solutions/`` and the other submissions hidden, memory,
   CPU and process limits, the whole process tree killed at the end). It runs the INSTRUCTOR'S
   copy of the lab's cells, with the student's exercise cells (and added cells that only
   define functions) in their places.
3. At each check cell the check runs HERE, in the grader: it sends each case's inputs to the
   worker, the worker calls the student's function and sends the output back as plain data,
   and the reference and the comparison run here. No expected value ever exists in the
   worker. Nothing the student's kernel recorded is read.
4. A case has a time budget (the check's); an exercise (its cell and its check) has
   ``--exercise-timeout``; other cells have ``--cell-timeout``; the notebook has
   ``--timeout``. A worker that hangs is killed and restarted, the cells before are replayed,
   and grading goes on: a hang costs only its exercise.
5. An exercise is **flagged** (0 points, reason shown, pending your review) when its answer
   is not the student's own function (a reference, an ``llmlab`` or library function), when
   its code called the check's reference or the library op that is the answer (directly, in
   a thread or a thread pool), when it started a process while a case ran, when it
   interfered with the check machinery, when its cell uses a tampering tool (stack frames,
   ``sys.setprofile``, imports from ``llmlab.checks``, the check log, ``exec`` or
   ``__import__`` of a computed name ...), or when its check
   cell was changed or deleted. ``--accept STUDENT:EXERCISE`` re-scores a flagged exercise
   by its check's verdict.

Writes to ``--out`` (default ``./grades``): ``grades.md`` (a table, then a summary per
exercise), ``grades.csv`` (status and reason per exercise, points, total), ``feedback/`` (one
Markdown file per student), ``executed/`` (each graded notebook with its outputs) and
``results/`` (one JSON per student; the tables are rebuilt from all of them, so ``--only``
re-grades one student and keeps the others).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import csv
import io
import json
import math
import os
import pickle
import re
import select
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nbformat
from nbformat import NotebookNode

from llmlab.course import labs
from llmlab.course.labs import METADATA_KEY, Exercise, LabInfo, lab_structure
from llmlab.results import write_atomic

PASSED, WRONG, NOT_IMPLEMENTED, ERROR = "passed", "wrong", "not implemented", "error"
TIMED_OUT, NOT_RUN, FLAGGED = "timed out", "not run", "flagged"
STATUSES = (PASSED, WRONG, NOT_IMPLEMENTED, ERROR, TIMED_OUT, NOT_RUN, FLAGGED)
_SYMBOL = {PASSED: "✅", WRONG: "❌", NOT_IMPLEMENTED: "·", ERROR: "💥", TIMED_OUT: "⏱"}
_SYMBOL |= {NOT_RUN: "–", FLAGGED: "🚩"}

_MAX_REPLY = 256 * 2**20  # bytes of one worker reply


# --------------------------------------------------------------------------------------------
# Results


@dataclass
class ExerciseResult:
    """One exercise of one submission: its status, why, and the check's own verdict."""

    status: str = NOT_RUN
    reason: str = ""
    check_passed: bool = False  # what the check said, before any flag
    points: float = 0.0


@dataclass
class Grade:
    """One submission: each exercise's result, the points and a note."""

    student: str
    lab: str = ""
    exercises: dict[str, ExerciseResult] = field(default_factory=dict)
    note: str = ""
    seconds: float = 0.0

    @property
    def score(self) -> float:
        return sum(result.points for result in self.exercises.values())

    @property
    def status(self) -> dict[str, str]:
        return {name: result.status for name, result in self.exercises.items()}


# --------------------------------------------------------------------------------------------
# Finding notebooks and their lab


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


def read_notebook(path: Path) -> NotebookNode | None:
    """The notebook at ``path``, or None when it is not a readable notebook."""
    try:
        return nbformat.read(path, as_version=4)
    except Exception:
        return None


def find_lab(notebook: NotebookNode | None, path: Path, root: Path) -> Path | None:
    """The instructor's lab for a submission: by the lab id in its metadata, else by its file
    name under ``root/solutions``; None when neither finds exactly one."""
    lab_id = (notebook.metadata.get(METADATA_KEY, {}).get("lab") if notebook else None) or ""
    if lab_id:
        for folder in ("solutions", "labs"):
            candidate = root / folder / f"{lab_id}.ipynb"
            if candidate.is_file():
                return candidate
    matches = sorted((root / "solutions").rglob(path.name))
    return matches[0] if len(matches) == 1 else None


def lab_info(path: Path) -> LabInfo:
    """The structure of the instructor's lab at ``path`` (its id from its place or metadata)."""
    nb = nbformat.read(path, as_version=4)
    lab_id = nb.metadata.get(METADATA_KEY, {}).get("lab", "")
    solutions = [p for p in path.resolve().parents if p.name == "solutions"]
    if not lab_id and solutions:
        lab_id = labs.lab_id(path.resolve(), solutions[0].parent)
    return lab_structure(nb, lab_id=lab_id)


def expected_exercises(notebook: str | Path) -> list[str]:
    """The exercises a lab checks, in order (see :func:`llmlab.course.labs.lab_structure`)."""
    return [exercise.name for exercise in lab_info(Path(notebook)).exercises]


# --------------------------------------------------------------------------------------------
# What the student wrote: exercise cells, added cells, tampering seen in the code


#: Names whose use in an exercise cell is flagged: they reach into the check machinery.
_TAMPER_NAMES = {
    "setprofile": "replaces the profiler the checks record calls with",
    "settrace": "installs a tracer over the checks",
    "monitoring": "uses sys.monitoring over the checks",
    "_getframe": "reads the caller's stack frames",
    "currentframe": "reads the caller's stack frames",
    "f_back": "reads the caller's stack frames",
    "f_locals": "reads another frame's variables",
    "get_referrers": "searches the garbage collector's objects",
    "get_objects": "searches the garbage collector's objects",
    "ctypes": "uses ctypes",
    "setitimer": "changes the timers the checks use",
    "alarm": "changes the timers the checks use",
    "LLMLAB_CHECK_LOG": "writes to the check log",
    "_RESULTS": "writes into the checks' results",
    "run_check": "calls the check machinery",
    "CheckResult": "makes check results by hand",
    "__torch_function__": "overrides torch functions",
    "TorchFunctionMode": "overrides torch functions",
}


# Builtins that run or import code whose names no reading of the cell can see.
_HIDING_BUILTINS = ("eval", "exec", "compile", "__import__")


def tampering(source: str) -> list[str]:
    """What in an exercise cell's code reaches into the check machinery, in words (line N)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    found: list[str] = []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            modules += [alias.name for alias in node.names]
            if any(m == "llmlab.checks" or m.startswith("llmlab.checks.") for m in modules):
                found.append(f"imports from llmlab.checks (line {line})")
            roots = ("inspect", "gc", "ctypes", "signal", "threading", "_thread")
            roots += ("multiprocessing", "concurrent", "subprocess")  # calls no recorder sees
            roots += ("importlib", "builtins")  # imports by a computed name
            if any(m.split(".")[0] in roots for m in modules):
                found.append(f"imports {modules[-1].split('.')[0]} (line {line})")
            names = [alias.name for alias in node.names]
            if any(name.startswith("reference_") for name in names):
                found.append(f"imports a reference implementation (line {line})")
        name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", None)
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if "solutions" in node.value:
                found.append(f"reaches for the solutions folder: {node.value[:40]!r} (line {line})")
            if "LLMLAB_CHECK_LOG" in node.value:
                found.append(f"writes to the check log (line {line})")
        if isinstance(node, ast.Name) and node.id in _HIDING_BUILTINS:  # `model.eval()` is fine
            found.append(f"runs code built at run time: `{node.id}` (line {line})")
        if name in _TAMPER_NAMES:
            found.append(f"{_TAMPER_NAMES[name]}: `{name}` (line {line})")
        elif isinstance(name, str) and name.startswith("reference_"):
            found.append(f"uses the reference implementation `{name}` (line {line})")
    return list(dict.fromkeys(found))


def _defines_only(source: str) -> bool:
    """Whether a cell only imports and defines functions or classes (a student's helper)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return False
    allowed = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef, ast.Expr)
    return all(
        isinstance(node, allowed)
        and (not isinstance(node, ast.Expr) or isinstance(node.value, ast.Constant))
        for node in tree.body
    )


def _defined_functions(source: str) -> set[str]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set(re.findall(r"^def\s+(\w+)", source, re.M))
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}


@dataclass
class Step:
    """One thing the grader does, in notebook order: run a cell, or check an exercise."""

    kind: str  # "cell" or "check"
    source: str = ""
    cell: int = 0  # index in the graded notebook
    exercise: Exercise | None = None


@dataclass
class Plan:
    """The graded notebook (the lab with the student's answers) and the steps to grade it."""

    notebook: NotebookNode
    steps: list[Step]
    flags: dict[str, list[str]]  # exercise -> tampering seen in the student's notebook
    notes: list[str]


def build_plan(lab: NotebookNode, info: LabInfo, student: NotebookNode) -> Plan:
    """The lab's cells with the student's exercise cells in their places, and what to flag."""
    marked: dict[str, list[int]] = {}
    for index, cell in enumerate(student.cells):
        mark = cell.get("metadata", {}).get(METADATA_KEY, {})
        if cell.cell_type == "code" and mark.get("exercise"):
            marked.setdefault(f"{mark.get('role')}:{mark['exercise']}", []).append(index)
    by_function: dict[str, int] = {}
    for index, cell in enumerate(student.cells):
        if cell.cell_type == "code":
            for name in _defined_functions(cell.source):
                by_function[name] = index

    answers: dict[int, tuple[Exercise, int | None]] = {}
    flags: dict[str, list[str]] = {}
    used: set[int] = set()
    for exercise in info.exercises:
        found = marked.get(f"answer:{exercise.name}") or []
        index = found[-1] if found else by_function.get(exercise.function)
        answers[exercise.answer_cell] = (exercise, index)
        if index is not None:
            used.add(index)
            flags[exercise.name] = tampering(student.cells[index].source)
        checks = marked.get(f"check:{exercise.name}") or []
        lab_check = lab.cells[exercise.check_cell].source.strip()
        if not checks and not any(
            c.cell_type == "code" and c.source.strip() == lab_check for c in student.cells
        ):
            flags.setdefault(exercise.name, []).append("its check cell was deleted")
        elif checks and any(student.cells[i].source.strip() != lab_check for i in checks):
            flags.setdefault(exercise.name, []).append("its check cell was changed")

    graded = nbformat.v4.new_notebook(metadata=lab.metadata)
    steps: list[Step] = []
    check_cells = {exercise.check_cell: exercise for exercise in info.exercises}
    lab_sources = {cell.source.strip() for cell in lab.cells}
    added = [
        i
        for i, cell in enumerate(student.cells)
        if cell.cell_type == "code"
        and i not in used
        and not cell.get("metadata", {}).get(METADATA_KEY)
        and cell.source.strip()
        and cell.source.strip() not in lab_sources
    ]
    helpers = [i for i in added if _defines_only(student.cells[i].source)]
    notes = []
    if len(helpers) < len(added):
        notes.append(
            f"{len(added) - len(helpers)} added cell(s) that do more than define were not run"
        )
    for index, cell in enumerate(lab.cells):
        if index in answers:
            exercise, student_index = answers[index]
            for helper in [h for h in helpers if student_index is None or h < student_index]:
                helpers.remove(helper)
                steps.append(Step("cell", student.cells[helper].source, len(graded.cells)))
                graded.cells.append(nbformat.v4.new_code_cell(student.cells[helper].source))
                flags.setdefault(exercise.name, []).extend(tampering(student.cells[helper].source))
            source = student.cells[student_index].source if student_index is not None else ""
            steps.append(Step("cell", source, len(graded.cells), exercise))
            graded.cells.append(nbformat.v4.new_code_cell(source, metadata=cell.metadata))
        elif index in check_cells:
            steps.append(Step("check", cell.source, len(graded.cells), check_cells[index]))
            graded.cells.append(nbformat.v4.new_code_cell(cell.source, metadata=cell.metadata))
        else:
            if cell.cell_type == "code":
                steps.append(Step("cell", cell.source, len(graded.cells)))
            graded.cells.append(_fresh(cell))
    return Plan(graded, steps, {k: v for k, v in flags.items() if v}, notes)


def _fresh(cell: NotebookNode) -> NotebookNode:
    """A copy of a lab cell without outputs."""
    if cell.cell_type == "code":
        return nbformat.v4.new_code_cell(cell.source, metadata=cell.metadata)
    if cell.cell_type == "markdown":
        return nbformat.v4.new_markdown_cell(cell.source, metadata=cell.metadata)
    return nbformat.v4.new_raw_cell(cell.source, metadata=cell.metadata)


# --------------------------------------------------------------------------------------------
# The worker, seen from the grader


class WorkerDied(RuntimeError):
    """The worker did not answer in time, or its answer could not be read; it was killed."""


@dataclass(frozen=True)
class Limits:
    """The grader's time limits, in seconds, and the sandbox's memory."""

    timeout: float = 600.0  # the whole notebook
    exercise_timeout: float = 120.0  # one exercise: its cell and its check
    cell_timeout: float = 120.0  # any other cell
    memory_mb: int = 8192

    def __post_init__(self) -> None:
        for name in ("timeout", "exercise_timeout", "cell_timeout", "memory_mb"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, received {value!r}")


class WorkerHandle:
    """A grade worker running in a sandbox; every request has a deadline."""

    GRACE_S = 5.0  # beyond a case's own budget, before the worker counts as hung

    def __init__(self, limits: Limits, hide: list[Path]):
        from llmlab import assets, sandbox
        from llmlab.course.notebooks import _kernel_pythonpath

        env = {
            "PYTHONPATH": _kernel_pythonpath(),
            "LLMLAB_SMOKE": os.environ.get("LLMLAB_SMOKE", "1"),
            "HF_HUB_OFFLINE": "1",
            "MPLBACKEND": "Agg",
            "PYTHONHASHSEED": "0",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
            "LLMLAB_CACHE": str(assets.cache_dir()),  # the offline models, read-only inside
            "LLMLAB_NO_DOWNLOAD": "1",
        }
        box_limits = sandbox.Limits(
            wall_s=limits.timeout, cpu_s=limits.timeout * 2, memory_mb=limits.memory_mb
        )
        self.box = sandbox.Sandbox(limits=box_limits, hide=hide, env=env)
        self.box.__enter__()
        self.stderr = open(self.box.workdir.parent / f"{self.box.workdir.name}.stderr", "wb")  # noqa: SIM115
        self.process = self.box.popen(
            [sys.executable, "-m", "llmlab.course.grade_worker"],
            stdin=-1,  # subprocess.PIPE
            stdout=-1,
            stderr=self.stderr,
        )
        self.alive = True

    def request(self, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send one order and wait at most ``timeout`` s for its reply; WorkerDied otherwise."""
        from llmlab.course.grade_worker import _FRAME, load_reply, write_frame

        if not self.alive:
            raise WorkerDied("the worker is not running")
        try:
            write_frame(self.process.stdin, pickle.dumps(message))
            deadline = time.monotonic() + timeout
            header = self._read(_FRAME.size, deadline)
            (size,) = _FRAME.unpack(header)
            if size > _MAX_REPLY:
                raise WorkerDied(f"the worker's reply is too large ({size:,} bytes)")
            reply = load_reply(self._read(size, deadline))
        except WorkerDied:
            self.close()
            raise
        except Exception as exc:
            self.close()
            raise WorkerDied(f"the worker failed: {type(exc).__name__}: {exc}") from exc
        return reply

    def _read(self, size: int, deadline: float) -> bytes:
        fd = self.process.stdout.fileno()
        chunks, got = [], 0
        while got < size:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise WorkerDied("timed out")
            chunk = os.read(fd, min(size - got, 1 << 20))
            if not chunk:
                raise WorkerDied("the worker exited")
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        """Kill the worker and everything it started; remove its folder."""
        if self.alive:
            self.alive = False
            self.box.__exit__(None, None, None)
            for stream in (self.process.stdin, self.process.stdout):
                try:
                    stream.close()
                except OSError:
                    pass
            self.process.wait()
            self.stderr.close()
            os.unlink(self.stderr.name)


def _location(fn: Any) -> tuple[str, str] | None:
    """``(module, qualname)``: how the worker finds a function of the checks (None: none)."""
    return None if fn is None else (fn.__module__, fn.__qualname__)


def _exec(step: Step, time_s: float) -> dict[str, Any]:
    """The worker's order to run a step's cell, named as the executed notebook numbers it."""
    return {
        "op": "exec",
        "source": step.source,
        "filename": f"<cell {step.cell}>",
        "time_s": time_s,
    }


class RemoteFunction:
    """The student's function as a check sees it in the grader: each call runs in the worker.

    ``llmlab.checks.evaluate`` finds ``llmlab_remote`` and asks it for the function's
    provenance and for each case's :class:`llmlab.checks.Outcome`.
    """

    def __init__(self, worker: WorkerHandle, name: str, deadline: float):
        self.worker, self.name, self.deadline = worker, name, deadline
        self.llmlab_remote = self
        self.missing = ""  # why the function is missing, when the notebook does not define it

    def __call__(self, *args: Any, **kwargs: Any) -> Any:  # a callable, as checks require
        raise TypeError("a RemoteFunction is called through llmlab.checks only")

    def provenance(self, reference: Any, name: str) -> str | None:
        message = {"op": "provenance", "name": self.name, "reference": _location(reference)}
        reply = self.worker.request(message, max(1.0, self.deadline - time.monotonic()))
        if reply.get("missing"):
            self.missing = reply["problem"]
        return reply.get("problem")

    def call(self, run: Any, args: tuple, kwargs: dict, *, time_s, forbid, reference) -> Any:
        from llmlab.checks import Outcome

        budget = min(time_s or math.inf, self.deadline - time.monotonic())
        message = {
            "op": "call",
            "name": self.name,
            "run": _location(run),
            "args": pickle.dumps(args),
            "kwargs": pickle.dumps(kwargs),
            "time_s": max(budget, 0.1),
            "forbid": list(forbid),
            "reference": _location(reference),
        }
        try:
            reply = self.worker.request(message, max(budget, 0.1) + WorkerHandle.GRACE_S)
        except WorkerDied:
            return Outcome(timed_out=round(max(budget, 0.1), 1))
        fields = reply["outcome"]
        fields["calls"] = tuple(fields.get("calls", ()))
        fields["error_types"] = tuple(fields.get("error_types", ()))
        return Outcome(**fields)


# --------------------------------------------------------------------------------------------
# Grading one submission


def _status_of(result: Any) -> str:
    """A check result's status for the grade table."""
    kind = getattr(result, "kind", "")
    if result.passed:
        return PASSED
    if kind in ("not yours", "flagged"):
        return FLAGGED
    return {"error": ERROR, "timed out": TIMED_OUT, "not implemented": NOT_IMPLEMENTED}.get(
        kind, WRONG
    )


def _reason(message: str) -> str:
    """A check's message without its emoji, name and closing sentence."""
    text = re.sub(r"^[✅❌]\s*\w+:\s*", "", message)
    return text.replace(" The rest of the lab uses the reference implementation.", "").strip()


def _check_function(exercise: Exercise) -> Any:
    import importlib

    module, name = exercise.check
    return getattr(importlib.import_module(module), name)


def _stream(text: str) -> NotebookNode:
    return nbformat.v4.new_output("stream", name="stdout", text=text)


def grade_submission(
    path: Path,
    lab_path: Path,
    limits: Limits = Limits(),
    hide: list[Path] | None = None,
    executed_dir: Path | None = None,
) -> Grade:
    """Grade the notebook at ``path`` against the instructor's lab at ``lab_path``."""
    start = time.monotonic()
    info = lab_info(lab_path)
    grade = Grade(student=str(path), lab=info.lab_id)
    grade.exercises = {exercise.name: ExerciseResult() for exercise in info.exercises}
    student = read_notebook(path)
    if student is None:
        grade.note = "invalid notebook: not a readable .ipynb file"
        return grade
    submitted_lab = student.metadata.get(METADATA_KEY, {}).get("lab", "")
    functions = {exercise.function for exercise in info.exercises}
    defined = set().union(
        *(_defined_functions(c.source) for c in student.cells if c.cell_type == "code")
    )
    if (submitted_lab and info.lab_id and submitted_lab != info.lab_id) or not functions & defined:
        what = f"the lab {submitted_lab}" if submitted_lab else "a different notebook"
        grade.note = (
            f"wrong lab: this is {what}, not {info.lab_id or lab_path.name} "
            f"(none of its exercises {', '.join(sorted(functions))} is here)"
            if not functions & defined
            else f"wrong lab: this is {what}, not {info.lab_id}"
        )
        return grade
    plan = build_plan(nbformat.read(lab_path, as_version=4), info, student)
    notes = list(plan.notes)
    deadline_all = start + limits.timeout
    bound: dict[str, tuple[str, str] | None] = {}  # function -> what it is bound to
    timed_out_cells: set[int] = set()  # never replayed
    cell_errors: dict[str, str] = {}  # exercise -> the error its cell raised
    started: dict[str, float] = {}  # exercise -> when its cell started
    worker: WorkerHandle | None = None
    hide = list(hide or [])

    def fresh_worker(upto: int) -> WorkerHandle:
        """A new worker with the cells before step ``upto`` replayed (checks as bindings)."""
        handle = WorkerHandle(limits, hide)
        for step in plan.steps[:upto]:
            if step.kind == "cell":
                if step.cell in timed_out_cells:
                    continue
                timeout = limits.cell_timeout
                handle.request(_exec(step, timeout), timeout + WorkerHandle.GRACE_S)
            else:
                fn = step.exercise.function
                handle.request({"op": "bind", "name": fn, "to": bound.get(fn)}, 30)
        return handle

    try:
        for number, step in enumerate(plan.steps):
            cell = plan.notebook.cells[step.cell]
            remaining = deadline_all - time.monotonic()
            if remaining <= 0:
                notes.append(f"the notebook time limit ({limits.timeout:g} s) ran out")
                break
            try:
                if worker is None or not worker.alive:
                    worker = fresh_worker(number)
            except WorkerDied as exc:
                notes.append(f"could not restart the notebook: {exc}")
                break
            exercise = step.exercise
            if step.kind == "cell":
                limit = limits.exercise_timeout if exercise else limits.cell_timeout
                limit = min(limit, remaining)
                if exercise:
                    started[exercise.name] = time.monotonic()
                try:
                    reply = worker.request(_exec(step, limit), limit + WorkerHandle.GRACE_S)
                except WorkerDied:
                    reply = {"timed_out": True, "stdout": "", "error": ""}
                text = reply.get("stdout", "")
                if reply.get("timed_out"):
                    timed_out_cells.add(step.cell)
                    text += f"\n[grader] this cell timed out after {limit:g} s\n"
                    if exercise:
                        grade.exercises[exercise.name] = ExerciseResult(
                            TIMED_OUT, f"its cell timed out after {limit:g} s"
                        )
                        bound[exercise.function] = None
                    else:
                        notes.append(f"cell {step.cell} timed out after {limit:g} s")
                    if worker.alive:
                        worker.close()
                elif reply.get("error"):
                    text += f"\n[grader] {reply['error']}\n"
                    if exercise:
                        cell_errors[exercise.name] = reply["error"]
                    else:
                        notes.append(f"{reply['error'].split(':')[0]} in cell {step.cell}")
                if text:
                    cell.outputs.append(_stream(text))
                continue
            # a check, run here against the worker
            if grade.exercises[exercise.name].status == TIMED_OUT:
                bound[exercise.function] = _location(_reference_of(exercise))
                _bind(worker, exercise.function, bound[exercise.function])
                continue
            check = _check_function(exercise)
            begun = started.get(exercise.name, time.monotonic())
            deadline = min(begun + limits.exercise_timeout, deadline_all)
            remote = RemoteFunction(worker, exercise.function, deadline)
            out = io.StringIO()
            try:
                with contextlib.redirect_stdout(out):
                    result = check(remote)
            except WorkerDied as exc:
                result = None
                grade.exercises[exercise.name] = ExerciseResult(
                    ERROR, f"the notebook stopped: {exc}"
                )
            if result is not None and remote.missing:
                why = cell_errors.get(exercise.name)
                reason = f"its cell raised {why}" if why else remote.missing
                grade.exercises[exercise.name] = ExerciseResult(ERROR, reason)
            elif result is not None:
                status = _status_of(result)
                grade.exercises[exercise.name] = ExerciseResult(
                    status, "" if status == PASSED else _reason(result.message), result.passed
                )
                cell.outputs.append(_stream(result.message + "\n"))
            if result is None:  # the worker died: no result to take the reference from
                bound[exercise.function] = _location(_reference_of(exercise))
            else:  # a failed check hands back its reference
                bound[exercise.function] = None if result.passed else _location(result.fn)
            _bind(worker, exercise.function, bound[exercise.function])
    finally:
        if worker is not None:
            worker.close()

    for name, reasons in plan.flags.items():
        check_passed = grade.exercises[name].check_passed
        grade.exercises[name] = ExerciseResult(FLAGGED, "; ".join(reasons), check_passed)
    for result in grade.exercises.values():
        result.points = 1.0 if result.status == PASSED else 0.0
    grade.note = "; ".join(notes)
    grade.seconds = round(time.monotonic() - start, 1)
    if executed_dir is not None:
        executed_dir.mkdir(parents=True, exist_ok=True)
        nbformat.write(plan.notebook, executed_dir / artifact_name(path))
    return grade


def _bind(worker: WorkerHandle, function: str, to: tuple[str, str] | None) -> None:
    """Point the notebook's ``function`` at the reference (``to``) or keep the student's."""
    if worker.alive:
        try:
            worker.request({"op": "bind", "name": function, "to": to}, 30)
        except WorkerDied:
            pass  # the next step starts a fresh worker and replays the bindings


def _reference_of(exercise: Exercise) -> Any:
    """The reference a check hands back: what the check returns for an unfilled stub."""

    def stub(*args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    with contextlib.redirect_stdout(io.StringIO()):
        return _check_function(exercise)(stub).fn


def artifact_name(notebook: Path, suffix: str = "") -> str:
    """A flat file name unique per path: ``submissions/alice/01_warmup.ipynb`` ->
    ``submissions__alice__01_warmup.ipynb`` (``suffix`` replaces ``.ipynb`` when given)."""
    path = notebook.resolve()
    try:
        path = path.relative_to(Path.cwd().resolve())
    except ValueError:
        path = path.relative_to(path.anchor)
    name = "__".join(re.sub(r"[^\w.-]", "_", part) for part in path.parts)
    return name[: -len(".ipynb")] + suffix if suffix and name.endswith(".ipynb") else name


# --------------------------------------------------------------------------------------------
# Reports


def apply_points(grade: Grade, points: dict[str, float], accepted: set[tuple[str, str]]) -> None:
    """Score each exercise: its points when it passed, or when it was flagged, its check
    passed and the instructor accepted it (``accepted`` holds (student, exercise) pairs)."""
    for name, result in grade.exercises.items():
        accept = any(
            exercise == name and (student in grade.student or student == "*")
            for student, exercise in accepted
        )
        if result.status == FLAGGED and accept:
            verdict = "its check passed" if result.check_passed else "its check failed"
            result.reason = f"{result.reason} (accepted by the instructor; {verdict})"
        counts = result.status == PASSED or (
            result.status == FLAGGED and accept and result.check_passed
        )
        result.points = points.get(name, 1.0) if counts else 0.0


def _cell(text: str) -> str:
    """``text`` safe inside a Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def markdown_report(grades: list[Grade], exercises: list[str], points: dict[str, float]) -> str:
    """A table (one row per student, a symbol per exercise, score, notes), a legend, and a
    summary per exercise (how many passed, and the commonest other status)."""
    total = sum(points.get(name, 1.0) for name in exercises)
    header = ["student", *exercises, "score", "notes"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for grade in grades:
        cells = [
            _SYMBOL.get(grade.exercises[e].status, "") if e in grade.exercises else ""
            for e in exercises
        ]
        notes = [grade.note] if grade.note else []
        notes += [
            f"{e}: {grade.exercises[e].reason}"
            for e in exercises
            if e in grade.exercises and grade.exercises[e].status == FLAGGED
        ]
        row = [grade.student, *cells, f"{grade.score:g}/{total:g}", "; ".join(notes)]
        lines.append("| " + " | ".join(_cell(value) for value in row) + " |")
    legend = ", ".join(f"{symbol} {status}" for status, symbol in _SYMBOL.items())
    lines += ["", f"Legend: {legend}. Reasons per exercise: grades.csv and feedback/.", ""]
    lines += ["| exercise | points | passed | not passed: most common |", "|---|---|---|---|"]
    for name in exercises:
        statuses = [g.exercises[name].status for g in grades if name in g.exercises]
        others = [s for s in statuses if s != PASSED]
        common = max(sorted(set(others)), key=others.count) if others else ""
        tally = f"{common} ({others.count(common)})" if others else ""
        passed = f"{statuses.count(PASSED)}/{len(statuses)}"
        lines.append(f"| {name} | {points.get(name, 1.0):g} | {passed} | {tally} |")
    return "\n".join(lines) + "\n"


def write_csv(
    path: Path, grades: list[Grade], exercises: list[str], points: dict[str, float]
) -> None:
    """One row per student: lab, each exercise's status and reason, score, total, notes."""
    total = sum(points.get(name, 1.0) for name in exercises)
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        columns = [c for name in exercises for c in (name, f"{name} reason")]
        writer.writerow(["student", "lab", *columns, "score", "total", "notes"])
        for grade in grades:
            values = []
            for name in exercises:
                result = grade.exercises.get(name)
                values += [result.status, result.reason] if result else ["", ""]
            writer.writerow(
                [grade.student, grade.lab, *values, f"{grade.score:g}", f"{total:g}", grade.note]
            )


def feedback(grade: Grade, points: dict[str, float]) -> str:
    """What a student reads: each exercise's status, points and reason."""
    total = sum(points.get(name, 1.0) for name in grade.exercises)
    lines = [
        f"# {grade.lab or 'lab'}: {grade.score:g}/{total:g}",
        "",
        f"Notebook: `{grade.student}`",
        "",
    ]
    if grade.note:
        lines += [f"Note: {grade.note}", ""]
    for name, result in grade.exercises.items():
        symbol = _SYMBOL.get(result.status, "")
        lines.append(
            f"- {symbol} **{name}** ({result.points:g}/{points.get(name, 1.0):g}): {result.status}"
        )
        if result.reason:
            lines.append(f"  {result.reason}")
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    write_atomic(path, text.encode("utf-8"))  # a unique temporary name, flushed, then renamed


def save_result(out: Path, grade: Grade) -> None:
    """``out/results/<student>.json``: one student's grade, the source of every table."""
    data = asdict(grade)
    _write_atomic(
        out / "results" / artifact_name(Path(grade.student), ".json"), json.dumps(data, indent=1)
    )


def load_results(out: Path) -> list[Grade]:
    """Every student's grade saved under ``out/results``, sorted by student."""
    grades = []
    for path in sorted((out / "results").glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        exercises = {k: ExerciseResult(**v) for k, v in data.pop("exercises").items()}
        grades.append(Grade(**data, exercises=exercises))
    return sorted(grades, key=lambda g: g.student)


# --------------------------------------------------------------------------------------------
# The command line


def _positive(name: str):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{name} must be a number of seconds, received {text!r}"
            ) from None
        if not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(
                f"{name} must be a finite number > 0, received {text!r}"
            )
        return value

    return parse


def _points(text: str) -> dict[str, float]:
    points = {}
    for part in filter(None, text.split(",")):
        name, _, value = part.partition("=")
        try:
            points[name.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--points wants NAME=NUMBER,..., received {part!r}"
            ) from None
    return points


def _accept(text: str) -> tuple[str, str]:
    student, sep, exercise = text.rpartition(":")
    if not sep or not student or not exercise:
        raise argparse.ArgumentTypeError(f"--accept wants STUDENT:EXERCISE, received {text!r}")
    return student, exercise


def _grade_one(job: tuple) -> Grade:
    """One submission, in a worker process of ``-j`` (or in this one)."""
    path, lab, limits, hide, executed = job
    if lab is None:
        return Grade(str(path), note="cannot tell which lab this is: pass --lab")
    return grade_submission(path, lab, limits, hide, executed)


def build_parser() -> argparse.ArgumentParser:
    from llmlab import sandbox

    parser = argparse.ArgumentParser(
        prog="python -m llmlab grade",
        description=__doc__.split("\n")[0],
        epilog="Isolation on this machine:\n" + sandbox.isolation().describe(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "paths", nargs="+", type=Path, help="students' notebooks or folders of them"
    )
    parser.add_argument(
        "--lab",
        type=Path,
        help="the instructor's lab or solution notebook (default: found from each submission's metadata, with a warning)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("grades"), help="output folder (default: ./grades)"
    )
    parser.add_argument(
        "--timeout",
        type=_positive("--timeout"),
        default=600,
        help="seconds for a whole notebook (default 600)",
    )
    parser.add_argument(
        "--exercise-timeout",
        type=_positive("--exercise-timeout"),
        default=120,
        help="seconds for one exercise: its cell and all its check's cases (default 120); each case also has the check's own budget (20 s unless the check says otherwise)",
    )
    parser.add_argument(
        "--cell-timeout",
        type=_positive("--cell-timeout"),
        default=120,
        help="seconds for any other cell (default 120)",
    )
    parser.add_argument(
        "--memory-mb",
        type=_positive("--memory-mb"),
        default=8192,
        help="memory limit of a submission's process (default 8192)",
    )
    parser.add_argument(
        "-j", "--jobs", type=int, default=1, help="grade N submissions at once (default 1)"
    )
    parser.add_argument(
        "--points",
        type=_points,
        default={},
        help="points per exercise, e.g. stable_softmax=2,log_softmax=1 (default 1 each)",
    )
    parser.add_argument(
        "--accept",
        type=_accept,
        action="append",
        default=[],
        help="STUDENT:EXERCISE: score a flagged exercise by its check's verdict (STUDENT matches part of the path, or *)",
    )
    parser.add_argument(
        "--only",
        help="re-grade only the submissions whose path contains this text; keep the others' results",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m llmlab grade PATH... [options]``; argv excludes the word ``grade``.

    Exits 0 once grading completed, whatever the scores; 2 on a usage error.
    """
    args = build_parser().parse_args(argv)
    if args.jobs < 1:
        print(f"error: -j must be at least 1, received {args.jobs}", file=sys.stderr)
        return 2
    try:
        notebooks = find_notebooks(args.paths)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.only:
        notebooks = [n for n in notebooks if args.only in str(n)]
    if not notebooks:
        print("error: no .ipynb files found", file=sys.stderr)
        return 2
    if args.lab is not None:
        try:
            info = lab_info(args.lab)
        except Exception as exc:
            print(f"error: cannot read the lab {args.lab}: {exc}", file=sys.stderr)
            return 2
        if not info.exercises:
            print(f"error: the lab {args.lab} has no checked exercise", file=sys.stderr)
            return 2
    else:
        print(
            "WARNING: no --lab given: each submission is graded against the lab named in its "
            "metadata (or the solution with its file name). Pass --lab to be sure every "
            "student is graded against the same lab.",
            file=sys.stderr,
        )
    from llmlab import sandbox

    root = labs.default_root()
    hide = [
        root / "solutions",
        args.out.resolve(),
        *(p.resolve() if p.is_dir() else p.resolve().parent for p in args.paths),
    ]
    if not sandbox.isolation().namespaces:
        print("WARNING: " + sandbox.isolation().describe(), file=sys.stderr)
    limits = Limits(args.timeout, args.exercise_timeout, args.cell_timeout, int(args.memory_mb))
    jobs = [
        (
            path,
            args.lab or find_lab(read_notebook(path), path, root),
            limits,
            hide,
            args.out / "executed",
        )
        for path in notebooks
    ]
    started = time.monotonic()
    if args.jobs == 1:
        grades = []
        for job in jobs:
            print(f"grading {job[0]} ...", file=sys.stderr)
            grades.append(_grade_one(job))
    else:
        import multiprocessing

        with ProcessPoolExecutor(
            args.jobs, mp_context=multiprocessing.get_context("spawn")
        ) as pool:
            grades = list(pool.map(_grade_one, jobs))
    for grade in grades:
        save_result(args.out, grade)
    grades = load_results(args.out)
    exercises: list[str] = []
    for grade in grades:
        exercises += [name for name in grade.exercises if name not in exercises]
    for grade in grades:
        apply_points(grade, args.points, set(args.accept))
        _write_atomic(
            args.out / "feedback" / artifact_name(Path(grade.student), ".md"),
            feedback(grade, args.points),
        )
    report = markdown_report(grades, exercises, args.points)
    _write_atomic(args.out / "grades.md", report)
    write_csv(args.out / "grades.csv", grades, exercises, args.points)
    print(report, end="")
    print(
        f"graded {len(jobs)} notebook(s) in {time.monotonic() - started:.1f} s; wrote "
        f"{args.out / 'grades.md'}, {args.out / 'grades.csv'} and feedback/",
        file=sys.stderr,
    )
    return 0


def self_check(argv: list[str] | None = None) -> int:
    """``python -m llmlab selfcheck NOTEBOOK``: the grader's verdict on your own notebook."""
    import tempfile

    parser = argparse.ArgumentParser(
        prog="python -m llmlab selfcheck",
        description="Grade your own lab notebook as the grader would, and print the feedback.",
    )
    parser.add_argument("notebook", type=Path)
    args = parser.parse_args(argv)

    if not args.notebook.is_file():
        print(f"error: no such notebook: {args.notebook}", file=sys.stderr)
        return 2
    root = labs.default_root()
    lab = find_lab(read_notebook(args.notebook), args.notebook, root)
    if lab is None:
        print(f"error: cannot tell which lab {args.notebook} is", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        grade = grade_submission(
            args.notebook, lab, hide=[root / "solutions"], executed_dir=Path(tmp)
        )
    apply_points(grade, {}, set())
    print(feedback(grade, {}), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
