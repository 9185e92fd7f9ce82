"""Checks for lab exercises: run a student's function on named cases against a reference.

A lab cell calls a chapter's check right after the exercise, for example::

    softmax = check_stable_softmax(softmax).fn

The check runs ``softmax`` and a reference implementation on several named cases (odd shapes,
a non-last ``dim``, huge logits ...), prints ONE line (pass, or the first failing case in plain
words with a hint) and returns a :class:`CheckResult`. Its ``.fn`` is the student's function
when it passed and the reference otherwise, so the rest of the lab still runs on a wrong or
missing answer. A check never raises because of the student's code.

Every result is recorded twice:

- in this process, readable with :func:`results` (the latest result per exercise);
- as one JSON line appended to the file named by the environment variable ``LLMLAB_CHECK_LOG``
  when it is set: ``{"exercise", "passed", "message", "n_cases", "failed_case", "time"}``.
  ``llmlab.course.grading`` reads that file to grade notebooks run headless.

Every check is one call of :func:`run_check` with a reference and a list of :class:`Case`::

    def check_rms_norm(rms_norm) -> CheckResult:
        cases = [Case("(3, 7)", (randn(3, 7),)), Case("large values", (1e4 * randn(2, 5),))]
        return run_check("rms_norm", rms_norm, reference_rms_norm, cases, hint="...")

A function that only shows a bug over many calls (an optimizer step, a schedule) gets a
``run=`` driver that calls it the way a lab would and returns what to compare; a case whose
answer is known exactly (the law a fit must recover) gets ``expect=`` instead of the
reference's output.

Layout: one module per lab, grouped by chapter, named after the solution notebook without its
number: ``llmlab.checks.transformer.attention_masks`` holds the checks of
``solutions/01_transformer/01_attention_masks.ipynb``. Random inputs come from
:mod:`llmlab.checks._inputs`.

Convention: ``check_NAME`` records the exercise ``NAME`` (``llmlab.course.grading`` finds the
exercises of a lab from the ``check_NAME(`` calls in its cells).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import os
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from llmlab.checks._guard import (
    CallRecorder,
    CaseTimeout,
    _code_of,
    forbidden_message,
    is_student_file,
    not_students,
    time_limit,
    time_limits_apply,
)

LOG_ENV_VAR = "LLMLAB_CHECK_LOG"

#: Seconds one case may run before it fails as "timed out" (a check may give its own).
CASE_TIME_S = 20.0

#: Seconds a case runs before a check says it is still working (then again at each multiple).
PROGRESS_AFTER_S = 5.0

NOT_IMPLEMENTED = "not implemented yet: fill in the function above"

#: Default (atol, rtol) per dtype when comparing floating-point tensors.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (1e-2, 1e-2),
    torch.float32: (1e-5, 1e-5),
    torch.float64: (1e-9, 1e-9),
}


# --------------------------------------------------------------------------------------------
# Results and where they are recorded


@dataclass(repr=False)
class CheckResult:
    """The outcome of one check.

    ``fn`` is what the lab should use from now on: the student's function when it passed, the
    reference otherwise. ``bool(result)`` is ``result.passed``.
    """

    exercise: str
    passed: bool
    message: str
    n_cases: int
    failed_case: str | None = None
    fn: Callable | None = None
    kind: str = ""  # passed / wrong / error / timed out / not implemented / not yours / flagged

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        status = "passed" if self.passed else f"failed at {self.failed_case!r}"
        return f"<CheckResult {self.exercise}: {status}>"

    def _ipython_display_(self) -> None:
        """Show nothing: the check already printed the message (it would appear twice)."""

    def to_record(self) -> dict[str, Any]:
        """The JSON-serialisable fields written to the check log."""
        return {
            "exercise": self.exercise,
            "passed": self.passed,
            "message": self.message,
            "n_cases": self.n_cases,
            "failed_case": self.failed_case,
            "kind": self.kind,
        }


_RESULTS: dict[str, CheckResult] = {}


def results() -> dict[str, CheckResult]:
    """The latest result of every check run in this process, keyed by exercise name."""
    return dict(_RESULTS)


def clear_results() -> None:
    """Forget the results recorded in this process (the log file is left alone)."""
    _RESULTS.clear()


def record(result: CheckResult) -> None:
    """Store ``result`` in the registry and append it to ``$LLMLAB_CHECK_LOG`` when set."""
    _RESULTS[result.exercise] = result
    log_path = os.environ.get(LOG_ENV_VAR)
    if not log_path:
        return
    line = json.dumps({**result.to_record(), "time": time.time()})
    try:
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(line + "\n")
    except OSError as exc:  # a bad log path must not stop the lab
        warnings.warn(f"could not write the check log {log_path!r}: {exc}", stacklevel=2)


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a check log, in the order they were written; a missing file gives []."""
    try:
        with open(path, encoding="utf-8") as log:
            lines = log.read().splitlines()
    except FileNotFoundError:
        return []
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a crash mid-write
    return records


# --------------------------------------------------------------------------------------------
# Describing values and comparing tensors in plain words


def describe(value: Any) -> str:
    """A short description of ``value``: ``a tensor of shape (2, 3) float32``, ``None``, ..."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)} {str(value.dtype).removeprefix('torch.')}"
    if value is None:
        return "None"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of length {len(value)}"
    if isinstance(value, (bool, int, float)):
        return f"{type(value).__name__} {value!r}"
    if isinstance(value, str):
        return f"a str {value!r}" if len(value) <= 40 else f"a str of {len(value)} characters"
    if isinstance(value, dict):
        keys = "key" if len(value) == 1 else "keys"
        return f"{_a(value)} with {len(value)} {keys}"
    if isinstance(value, (set, frozenset)):
        items = "item" if len(value) == 1 else "items"
        return f"{_a(value)} of {len(value)} {items}"
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"a {type(value).__module__}.{type(value).__name__} of shape {tuple(shape)}"
    return _a(value)


def _short(text: str, limit: int = 160) -> str:
    """``text`` on one line, cut to ``limit`` characters at a space (never inside a number)."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[: limit - 3]
    if text[limit - 3] != " " and " " in cut:  # the cut falls inside a word: drop that word
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip(",;: ") + "..."


def describe_inputs(args: Sequence[Any], kwargs: dict[str, Any], names: Sequence[str] = ()) -> str:
    """The inputs of a case in words: ``x: shape (2, 3, 5) float32, dim=1``.

    ``names`` are the parameter names of the positional arguments (``arg0``... otherwise).
    Numbers, None and short values are shown whole (``clip_norm=0.05``); a tensor by its shape
    and dtype; a long list, dict, set or string by what it holds (``weights: a dict with 9 keys
    ('input_layernorm.weight', ...)``, ``signatures: a list of 30 lists``); an object with its
    own ``repr`` (a case's settings) by that repr, cut only between its comma-separated parts.
    """
    limit = 60
    plural = {str: "strings", int: "ints", float: "floats", bool: "bools", bytes: "bytes"}

    def kind_of(items: list) -> str:
        kinds = set()
        for item in items:
            if isinstance(item, torch.Tensor):
                kinds.add("tensors")
            elif type(item) in plural:
                kinds.add(plural[type(item)])
            else:
                kinds.add(f"{type(item).__name__}s")
        return kinds.pop() if len(kinds) == 1 else "items"

    def preview(items: list) -> str:
        """`` (1, 2, 3, ...)``: the first items that fit, each whole; "" if none fits."""
        shown: list[str] = []
        for item in items:
            if isinstance(item, (torch.Tensor, list, tuple, dict, set, frozenset)):
                return ""  # nested containers: the count says enough
            text = repr(item)
            if len(", ".join([*shown, text])) > limit - 20:
                break
            shown.append(text)
        if not shown:
            return ""
        more = ", ..." if len(shown) < len(items) else ""
        return f" ({', '.join(shown)}{more})"

    def has_tensor(value: Any) -> bool:
        if isinstance(value, torch.Tensor):
            return True
        if isinstance(value, dict):
            return any(has_tensor(v) for v in value.values())
        if isinstance(value, (list, tuple, set, frozenset)):
            return any(has_tensor(v) for v in value)
        return False

    def container(value: Any) -> str:
        """A list, tuple, dict or set too long (or too tensor-filled) to show whole."""
        name = _a(value)
        if isinstance(value, dict):
            keys = list(value)
            word = "key" if len(keys) == 1 else "keys"
            return f"{name} with {len(keys)} {word}{preview(keys)}"
        items = list(value)
        if isinstance(value, (set, frozenset)):
            try:
                items = sorted(items)
            except TypeError:
                items = sorted(items, key=repr)
        if not items:
            return f"an empty {type(value).__name__}"
        kind = kind_of(items)
        if len(items) == 1 and kind.endswith("s"):
            kind = kind[:-1]
        return f"{name} of {len(items)} {kind}{preview(items)}"

    def show(name: str, value: Any) -> str:
        if isinstance(value, torch.Tensor):
            dtype = str(value.dtype).removeprefix("torch.")
            return f"{name}: shape {tuple(value.shape)} {dtype}"
        if value is None or isinstance(value, (bool, int, float, complex)):
            return f"{name}={value!r}"
        if isinstance(value, (str, bytes)):
            text = repr(value)
            if len(text) <= limit:
                return f"{name}={text}"
            start = value[: limit - 10]
            space = " " if isinstance(value, str) else b" "
            if space in start:
                start = start[: start.rindex(space)]
            unit = "characters" if isinstance(value, str) else "bytes"
            return f"{name}={start!r}... ({len(value)} {unit})"
        if isinstance(value, (list, tuple, dict, set, frozenset)):
            text = " ".join(repr(value).split())
            if len(text) <= limit and not has_tensor(value):
                return f"{name}={text}"
            return f"{name}: {container(value)}"
        if type(value).__repr__ is object.__repr__:  # <Foo object at 0x...> says nothing
            return f"{name}: {describe(value)}"
        text = " ".join(repr(value).split())
        if len(text) > 2 * limit:  # cut between parts "a, b, c", never inside one
            parts = text.split(", ")
            while len(parts) > 1 and len(", ".join(parts)) > 2 * limit - 5:
                parts.pop()
            text = ", ".join(parts) + ", ..."
        return f"{name}={text}"

    parts = [show(names[i] if i < len(names) else f"arg{i}", arg) for i, arg in enumerate(args)]
    parts += [show(key, val) for key, val in kwargs.items()]
    return ", ".join(parts)


def _parameter_names(fn: Callable) -> list[str]:
    """The names of ``fn``'s parameters, or [] when Python cannot tell."""
    try:
        return list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return []


def _at(flat_index: int, shape: torch.Size) -> str:
    """`` at index (i, j, ...)`` for ``flat_index`` in a tensor of ``shape`` ("" when 0-dim)."""
    if len(shape) == 0:
        return ""
    index = []
    for size in reversed(shape):
        index.append(flat_index % size)
        flat_index //= size
    return f" at index {tuple(reversed(index))}"


def compare_tensors(
    received: Any,
    expected: torch.Tensor,
    *,
    atol: float | None = None,
    rtol: float | None = None,
) -> str | None:
    """Compare a received value with the expected tensor; None when they match.

    Otherwise returns what differs, in words: not a tensor, the shapes, the dtypes, NaN or inf
    where finite values were expected, or the max abs error against the tolerance
    ``|received - expected| <= atol + rtol * |expected|`` (defaults from :data:`TOLERANCES`).
    Infinities must match exactly (e.g. ``-inf`` log-probabilities of masked entries).
    """
    if not isinstance(received, torch.Tensor):
        return f"expected a torch.Tensor, received {describe(received)}"
    if received.shape != expected.shape:
        return f"expected shape {tuple(expected.shape)}, received shape {tuple(received.shape)}"
    if received.dtype != expected.dtype:
        return (
            f"expected dtype {str(expected.dtype).removeprefix('torch.')}, "
            f"received {str(received.dtype).removeprefix('torch.')}"
        )
    if not expected.is_floating_point():
        if torch.equal(received.cpu(), expected.cpu()):
            return None
        n_wrong = int((received.cpu() != expected.cpu()).sum())
        return f"{n_wrong} of {expected.numel()} values differ (exact match expected)"

    default_atol, default_rtol = TOLERANCES.get(expected.dtype, (1e-5, 1e-5))
    atol = default_atol if atol is None else atol
    rtol = default_rtol if rtol is None else rtol
    got = received.detach().cpu().double().reshape(-1)
    want = expected.detach().cpu().double().reshape(-1)

    checks = (
        (got.isnan() & ~want.isnan(), "NaN"),
        (got.isinf() & (want != got), "inf"),
        (want.isinf() & (want != got), "a finite value where inf was expected"),
        (want.isnan() & ~got.isnan(), "a number where NaN was expected"),
    )
    for bad, what in checks:
        if bad.any():
            i = int(bad.nonzero()[0])
            if what == "inf":
                what = f"{got[i].item():g}"
            return (
                f"received {what} at {int(bad.sum())} of {want.numel()} positions; "
                f"first{_at(i, expected.shape)}: expected {want[i].item():.6g}, "
                f"received {got[i].item():.6g}"
            )

    finite = want.isfinite()
    error = torch.zeros_like(want)
    error[finite] = (got[finite] - want[finite]).abs()
    bad = error > atol + rtol * want.abs()
    if bad.any():
        i = int(bad.nonzero()[0])
        return (
            f"max abs error {error.max().item():.3g} exceeds the tolerance (atol={atol:g}, "
            f"rtol={rtol:g}); first mismatch{_at(i, expected.shape)}: "
            f"expected {want[i].item():.6g}, received {got[i].item():.6g}"
        )
    return None


# --------------------------------------------------------------------------------------------
# Running named cases


@dataclass
class Case:
    """One input on which the student's function is compared with the reference.

    ``args``/``kwargs`` are passed to both (each gets its own copy). With ``raises`` set, the
    student's function must raise that exception type instead (e.g. ``ValueError`` for a bad
    argument) and the reference is not called. ``hint`` replaces the check's hint when this
    case is the first to fail.
    """

    name: str
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    raises: type[Exception] | None = None
    hint: str = ""


def _copy(value: Any) -> Any:
    """A deep copy, so that a function that writes into its input cannot spoil the next call."""
    return copy.deepcopy(value)


def _same(a: Any, b: Any) -> bool:
    """Whether two inputs are identical (tensors compared elementwise, NaN equal to NaN)."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        both_nan = a.isnan() & b.isnan() if a.is_floating_point() else False
        return bool(((a == b) | both_nan).all())
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return True  # numbers and other immutable values cannot have been changed


def _where_raised(exc: BaseException) -> str:
    """`` at `line of code` `` for the innermost frame of ``exc`` outside torch, if known."""
    torch_dir = os.path.dirname(torch.__file__)
    frames = [
        f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(torch_dir)
    ]
    if frames and frames[-1].line:
        return f" at `{_short(frames[-1].line, 80)}`"
    return ""


def _raised_in_student_code(exc: BaseException) -> bool:
    """Whether the student's code was running when ``exc`` was raised (on its traceback)."""
    return any(is_student_file(frame.filename) for frame in traceback.extract_tb(exc.__traceback__))


@dataclass
class Outcome:
    """What one call of the student's function did, as the check needs to judge it.

    The same record comes from a call in this process (:func:`call_student`) and from the
    grader's sandbox, where the student's code runs apart from the check.
    """

    value: Any = None
    error: str = ""  # "ValueError: boom" when the call raised
    error_types: tuple[str, ...] = ()  # names of the exception's classes, most derived first
    where: str = ""  # " at `line`" where it raised
    in_student: bool = True  # raised inside the student's code (else in the check's driver)
    not_implemented: bool = False
    timed_out: float | None = None  # the budget, when the call ran out of it
    calls: tuple[str, ...] = ()  # forbidden calls the student's code made
    tampered: str = ""  # how the student's code interfered with the recording
    mutated: bool = False  # the call changed its inputs in place


def call_student(
    fn: Callable,
    args: tuple,
    kwargs: dict[str, Any],
    *,
    time_s: float | None,
    forbid: Sequence[str] = (),
    reference: Callable | None = None,
) -> Outcome:
    """Call ``fn`` on a copy of ``args``/``kwargs`` under a time budget, recording forbidden
    calls. ``args``/``kwargs`` stay untouched: against them, a function that writes into its
    input is noticed.
    """
    call_args, call_kwargs = _copy(args), _copy(kwargs)
    recorder = CallRecorder(forbid, reference)
    outcome = Outcome()
    try:
        with time_limit(time_s) as alarm, recorder:
            outcome.value = fn(*call_args, **call_kwargs)
    except CaseTimeout:
        outcome.timed_out = time_s
    except NotImplementedError:
        outcome.not_implemented = True
    except Exception as exc:
        outcome.error = _short(f"{type(exc).__name__}: {exc}")
        outcome.error_types = tuple(cls.__name__ for cls in type(exc).__mro__)
        outcome.where = _where_raised(exc)
        outcome.in_student = _raised_in_student_code(exc)
    if alarm["fired"]:
        outcome.timed_out = time_s  # the student's code caught the timeout and went on
    outcome.calls = tuple(recorder.calls)
    # A timer that fires inside the recorder switches it off: that is the timeout, not tampering.
    outcome.tampered = "" if outcome.timed_out is not None else recorder.tampered
    outcome.mutated = not (_same(call_args, args) and _same(call_kwargs, kwargs))
    return outcome


_TYPE_HINTS = {
    "none": "your function returned None: is a `return` missing?",
    "type": "return {expected}, as the exercise's docstring says.",
    "error": "the error is in your code, at the line shown; call your function on the inputs "
    "above to reproduce it.",
    # Raised in a check's driver (run=), whose output is not what the function returns: the
    # error says what the check received, the docstring what it expects.
    "check error": "return what the exercise's docstring asks for, of the type it names (the "
    "error above says what the check received instead).",
}


def _a(value: Any) -> str:
    """``value``'s kind with an article: ``a bool torch.Tensor``, ``a float``, ``a list`` ..."""
    if isinstance(value, torch.Tensor):
        dtype = str(value.dtype).removeprefix("torch.")
        return f"{'an' if dtype[0] in 'aeiou' else 'a'} {dtype} torch.Tensor"
    if value is None:
        return "None"
    name = type(value).__name__
    return f"an {name}" if name[0].lower() in "aeiou" else f"a {name}"


def _mismatch_kind(received: Any, expected: Any) -> str:
    """``"none"``, ``"type"`` or ``"value"``: which hint fits a failed comparison."""
    if received is None and expected is not None:
        return "none"
    numbers = (int, float, bool)
    if isinstance(expected, torch.Tensor) != isinstance(received, torch.Tensor):
        return "type"
    if isinstance(expected, torch.Tensor) and expected.dtype != received.dtype:

        def kind(t: torch.Tensor) -> str:
            if t.dtype == torch.bool:
                return "bool"
            return "float" if t.is_floating_point() or t.is_complex() else "int"

        # A float mask for a bool one is the wrong kind of tensor; float32 for float64 is a
        # precision slip, which the case's own hint (if any) names.
        if kind(expected) != kind(received):
            return "type"
    if isinstance(expected, numbers) and not isinstance(received, numbers):
        return "type"
    for kind in (list, tuple, dict, set, frozenset, str):
        if isinstance(expected, kind) != isinstance(received, kind) and not (
            isinstance(expected, (list, tuple)) and isinstance(received, (list, tuple))
        ):
            return "type"
    return "value"


def _check_case(
    case: Case,
    call: Callable[[tuple, dict], Outcome],
    reference_fn: Callable,
    compare: Callable[[Any, Any], str | None],
) -> tuple[str, str, str, Any] | None:
    """Run one case; None when it passes, else (kind, problem, hint kind, expected value).

    The student's function runs first and the reference only afterwards, so no expected value
    exists while the student's code runs. Raises NotImplementedError for an unfilled stub.
    """
    outcome = call(case.args, case.kwargs)  # the call works on copies
    if outcome.calls or outcome.tampered:
        return "flagged", forbidden_message(outcome.calls, outcome.tampered), "", None
    if outcome.timed_out is not None:
        return "timed out", f"timed out after {outcome.timed_out:g} s", "", None
    if outcome.not_implemented:
        raise NotImplementedError
    if outcome.error and case.raises is not None and case.raises.__name__ in outcome.error_types:
        return None
    if outcome.error and outcome.in_student:
        expected_exc = f" (expected {case.raises.__name__})" if case.raises else ""
        problem = f"your function raised {outcome.error}{outcome.where}{expected_exc}"
        return "error", problem, "error", None
    if case.raises is not None:
        problem = (
            f"expected your function to raise {case.raises.__name__}, it returned "
            f"{describe(outcome.value)}"
        )
        return "wrong", problem, "value", None
    expected = reference_fn(*_copy(case.args), **_copy(case.kwargs))
    if outcome.error:  # raised in the check's driver, on what the student's code returned
        problem = f"the check could not use what your function returned ({outcome.error})"
        return "wrong", problem, "check error", expected
    if outcome.mutated:
        problem = "your function changed its input in place; compute the result in a new tensor"
        return "wrong", problem, "value", expected
    received = outcome.value
    try:
        problem = compare(received, expected)
    except Exception as exc:  # garbage that even the comparison cannot handle
        error = _short(f"{type(exc).__name__}: {exc}")
        problem = f"could not compare your output ({describe(received)}): {error}"
    if problem is None:
        return None
    return "wrong", problem, _mismatch_kind(received, expected), expected


def compare_with(
    atol: float, rtol: float, dtypes: Sequence[torch.dtype] | None = None
) -> Callable[[Any, torch.Tensor], str | None]:
    """:func:`compare_tensors` with this tolerance, for expected tensors of ``dtypes`` (all
    when None); other dtypes keep their default from :data:`TOLERANCES`."""

    def compare(received: Any, expected: torch.Tensor) -> str | None:
        if dtypes is None or expected.dtype in dtypes:
            return compare_tensors(received, expected, atol=atol, rtol=rtol)
        return compare_tensors(received, expected)

    return compare


@contextlib.contextmanager
def _progress(
    say: Callable[[str], None] | None, exercise: str, case: str, time_s: float | None
) -> Iterator[None]:
    """While a case runs, ``say`` every :data:`PROGRESS_AFTER_S` seconds that it still runs.

    The message comes from a timer thread started before the student's code runs, so the call
    recorder does not watch it; it says how long the case may still take.
    """
    if say is None:
        yield
        return
    limited = time_s is not None and time_limits_apply()
    stop = threading.Event()

    def report() -> None:
        waited = 0.0
        while not stop.wait(PROGRESS_AFTER_S):
            waited += PROGRESS_AFTER_S
            limit = (
                f"it fails as timed out at {time_s:g} s"
                if limited
                else "no time limit here: interrupt the kernel to stop it"
            )
            say(f"⏳ {exercise}: case {case!r} still running after {waited:g} s ({limit})")

    timer = threading.Thread(target=report, name="llmlab-check-progress", daemon=True)
    timer.start()
    try:
        yield
    finally:
        stop.set()
        timer.join()


def _driven(run: Callable[..., Any], fn: Callable) -> Callable[..., Any]:
    """``fn`` as a case sees it: ``run(fn, *args, **kwargs)``."""

    def driven(*args: Any, **kwargs: Any) -> Any:
        return run(fn, *args, **kwargs)

    return driven


def _exercise_function_name(reference_fn: Callable, exercise: str) -> str:
    """The lab's name for the exercise's function: the reference's, minus ``reference_``."""
    name = getattr(reference_fn, "__name__", "") or exercise
    return name.removeprefix("reference_")


def evaluate(
    exercise: str,
    student_fn: Any,
    reference_fn: Callable,
    cases: Sequence[Case],
    *,
    hint: str = "",
    compare: Callable[[Any, Any], str | None] = compare_tensors,
    run: Callable[..., Any] | None = None,
    expect: Callable[..., Any] | None = None,
    arg_names: Sequence[str] | None = None,
    forbid: Sequence[str] = (),
    time_s: float | None = CASE_TIME_S,
    progress: Callable[[str], None] | None = None,
) -> CheckResult:
    """Run ``student_fn`` on every case, stopping at the first failure. Records nothing.

    A case calls ``fn(*args, **kwargs)``, or ``run(fn, *args, **kwargs)`` when ``run`` is given
    (a driver that calls ``fn`` over many steps and returns what to compare). The expected
    value is the reference's, or ``expect(*args, **kwargs)`` when given, and is computed only
    after the student's function returned. ``arg_names`` name the case's arguments in a
    failure message (default: the reference's parameters).

    Before any case, a function that is not the student's own (the reference handed back by
    an earlier failure, an ``llmlab`` or library function) fails with what to re-run. Each case
    runs within ``time_s`` seconds and records the calls the student's code makes: a call into
    ``llmlab.checks`` or into ``forbid`` (e.g. ``"torch.softmax"``) flags the case. A case
    still running after :data:`PROGRESS_AFTER_S` seconds is reported through ``progress``.

    The message is one line: ``✅ NAME: passed all N cases.`` or ``❌ NAME: case 'CASE'
    (INPUTS): WHAT WENT WRONG. Hint: ... The rest of the lab uses the reference.`` The hint
    fits the failure: a case's own hint for wrong values, others for None, a wrong type, an
    exception in the student's code or one the check hit on what the student returned.
    Either way the result's ``.fn`` is a plain function for the lab: the student's on a pass,
    ``reference_fn`` otherwise (never a driver).
    """
    if not cases:
        raise ValueError(f"check {exercise!r} has no cases: a check that cannot fail is a defect")
    fallback = " The rest of the lab uses the reference implementation."

    def failed(message: str, case: str | None, kind: str) -> CheckResult:
        return CheckResult(
            exercise,
            False,
            f"❌ {exercise}: {message}{fallback}",
            len(cases),
            failed_case=case,
            fn=reference_fn,
            kind=kind,
        )

    if not callable(student_fn):
        return failed(f"expected a function, received {describe(student_fn)}.", None, "wrong")
    name = _exercise_function_name(reference_fn, exercise)
    remote = getattr(student_fn, "llmlab_remote", None)
    if remote is not None:  # the grader: the student's function runs in its sandbox
        not_yours = remote.provenance(reference_fn, name)

        def call(args: tuple, kwargs: dict) -> Outcome:
            return remote.call(
                run, args, kwargs, time_s=time_s, forbid=forbid, reference=reference_fn
            )

    else:
        not_yours = not_students(student_fn, reference_fn, name)
        student = student_fn if run is None else _driven(run, student_fn)
        # The reference running counts against the student, unless the student's function is
        # the reference: only where provenance was waived (the checks' own tests).
        watched = None if _code_of(student_fn) is _code_of(reference_fn) else reference_fn

        def call(args: tuple, kwargs: dict) -> Outcome:
            return call_student(
                student, args, kwargs, time_s=time_s, forbid=forbid, reference=watched
            )

    if not_yours is not None:
        return failed(f"{not_yours}.", None, "not yours")

    reference = expect or (reference_fn if run is None else _driven(run, reference_fn))
    names = list(arg_names) if arg_names is not None else _parameter_names(reference_fn)
    for case in cases:
        try:
            with _progress(progress, exercise, case.name, time_s):
                problem = _check_case(case, call, reference, compare)
        except NotImplementedError:
            return failed(f"{NOT_IMPLEMENTED}.", case.name, "not implemented")
        if problem is None:
            continue
        kind, what, hint_kind, expected = problem
        if hint_kind == "value":
            case_hint = case.hint or hint
        elif hint_kind:
            wanted = (
                _a(expected)
                if expect is None and expected is not None
                else ("what the exercise's docstring asks for")
            )
            case_hint = _TYPE_HINTS[hint_kind].format(expected=wanted)
            if hint_kind == "error" and case.hint:  # the case may be there to provoke it
                case_hint = f"{case_hint} {case.hint}"
        else:
            case_hint = ""
        hint_text = f" Hint: {case_hint}" if case_hint else ""
        inputs = describe_inputs(case.args, case.kwargs, names)
        message = f"case {case.name!r} ({inputs}): {what}.{hint_text}"
        return failed(message, case.name, kind)
    message = f"✅ {exercise}: passed all {len(cases)} cases."
    return CheckResult(exercise, True, message, len(cases), fn=student_fn, kind="passed")


UNLIMITED_NOTE = (
    "ℹ️ Checks cannot time-limit your functions here (no signal timer on this platform, or "
    "the check runs outside the main thread): a function that never returns keeps its check "
    "cell running; interrupt the kernel to stop it."
)
_SAID_UNLIMITED = False


def run_check(
    exercise: str,
    student_fn: Any,
    reference_fn: Callable,
    cases: Sequence[Case],
    *,
    hint: str = "",
    compare: Callable[[Any, Any], str | None] = compare_tensors,
    run: Callable[..., Any] | None = None,
    expect: Callable[..., Any] | None = None,
    arg_names: Sequence[str] | None = None,
    forbid: Sequence[str] = (),
    time_s: float | None = CASE_TIME_S,
) -> CheckResult:
    """:func:`evaluate`, then record the result (registry and log) and print its message.

    Every ``check_NAME`` of the labs is one call of this function. It prints, while a case runs
    long, that it is still running; and once per session, where cases cannot be time-limited
    (no signal timer on Windows, or a check run outside the main thread), that they are not.
    """
    global _SAID_UNLIMITED
    if time_s is not None and not time_limits_apply() and not _SAID_UNLIMITED:
        _SAID_UNLIMITED = True
        print(UNLIMITED_NOTE, flush=True)
    result = evaluate(
        exercise,
        student_fn,
        reference_fn,
        cases,
        hint=hint,
        compare=compare,
        run=run,
        expect=expect,
        arg_names=arg_names,
        forbid=forbid,
        time_s=time_s,
        progress=lambda line: print(line, flush=True),
    )
    record(result)
    print(result.message)
    return result
