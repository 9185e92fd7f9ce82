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

import copy
import inspect
import json
import os
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

LOG_ENV_VAR = "LLMLAB_CHECK_LOG"

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
    """A short description of ``value``: ``tensor of shape (2, 3) float32``, ``None``, ..."""
    if isinstance(value, torch.Tensor):
        return f"tensor of shape {tuple(value.shape)} {str(value.dtype).removeprefix('torch.')}"
    if value is None:
        return "None"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of length {len(value)}"
    if isinstance(value, (bool, int, float)):
        return f"{type(value).__name__} {value!r}"
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"a {type(value).__module__}.{type(value).__name__} of shape {tuple(shape)}"
    return f"a {type(value).__name__}"


def _short(text: str, limit: int = 160) -> str:
    """``text`` on one line, cut to ``limit`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_inputs(args: Sequence[Any], kwargs: dict[str, Any], names: Sequence[str] = ()) -> str:
    """The inputs of a case in words: ``x: shape (2, 3, 5) float32, dim=1``.

    ``names`` are the parameter names of the positional arguments (``arg0``... otherwise).
    """
    parts = []
    for i, arg in enumerate(args):
        name = names[i] if i < len(names) else f"arg{i}"
        if isinstance(arg, torch.Tensor):
            dtype = str(arg.dtype).removeprefix("torch.")
            parts.append(f"{name}: shape {tuple(arg.shape)} {dtype}")
        else:
            parts.append(f"{name}={_short(repr(arg), 40)}")
    parts += [f"{key}={_short(repr(val), 40)}" for key, val in kwargs.items()]
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


def _check_case(
    case: Case,
    student_fn: Callable,
    reference_fn: Callable,
    compare: Callable[[Any, Any], str | None],
) -> str | None:
    """Run one case; None when the student's function passes, else what went wrong (words)."""
    args, kwargs = _copy(case.args), _copy(case.kwargs)
    expected = None if case.raises else reference_fn(*_copy(case.args), **_copy(case.kwargs))
    try:
        received = student_fn(*args, **kwargs)
    except NotImplementedError:
        raise  # reported once for the whole check, not per case
    except Exception as exc:
        if case.raises is not None and isinstance(exc, case.raises):
            return None
        expected_exc = f" (expected {case.raises.__name__})" if case.raises else ""
        error = _short(f"{type(exc).__name__}: {exc}")
        return f"your function raised {error}{_where_raised(exc)}{expected_exc}"
    if case.raises is not None:
        return f"expected your function to raise {case.raises.__name__}, it returned {describe(received)}"
    if not (_same(args, case.args) and _same(kwargs, case.kwargs)):
        return "your function changed its input in place; compute the result in a new tensor"
    try:
        return compare(received, expected)
    except Exception as exc:  # garbage that even the comparison cannot handle
        error = _short(f"{type(exc).__name__}: {exc}")
        return f"could not compare your output ({describe(received)}): {error}"


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


def _driven(run: Callable[..., Any], fn: Callable) -> Callable[..., Any]:
    """``fn`` as a case sees it: ``run(fn, *args, **kwargs)``."""

    def driven(*args: Any, **kwargs: Any) -> Any:
        return run(fn, *args, **kwargs)

    return driven


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
) -> CheckResult:
    """Run ``student_fn`` on every case, stopping at the first failure. Records nothing.

    A case calls ``fn(*args, **kwargs)``, or ``run(fn, *args, **kwargs)`` when ``run`` is given
    (a driver that calls ``fn`` over many steps and returns what to compare). The expected
    value is the reference's, or ``expect(*args, **kwargs)`` when given. ``arg_names`` name
    the case's arguments in a failure message (default: the reference's parameters).

    The message is one line: ``✅ NAME: passed all N cases.`` or ``❌ NAME: case 'CASE'
    (INPUTS): WHAT WENT WRONG. Hint: ... The rest of the lab uses the reference.``
    Either way the result's ``.fn`` is a plain function for the lab: the student's on a pass,
    ``reference_fn`` otherwise (never a driver).
    """
    if not cases:
        raise ValueError(f"check {exercise!r} has no cases: a check that cannot fail is a defect")
    fallback = " The rest of the lab uses the reference implementation."

    def failed(message: str, case: str | None) -> CheckResult:
        return CheckResult(
            exercise,
            False,
            f"❌ {exercise}: {message}{fallback}",
            len(cases),
            failed_case=case,
            fn=reference_fn,
        )

    if not callable(student_fn):
        return failed(f"expected a function, received {describe(student_fn)}.", None)
    student = student_fn if run is None else _driven(run, student_fn)
    reference = expect or (reference_fn if run is None else _driven(run, reference_fn))
    names = list(arg_names) if arg_names is not None else _parameter_names(reference_fn)
    for case in cases:
        try:
            problem = _check_case(case, student, reference, compare)
        except NotImplementedError:
            return failed(f"{NOT_IMPLEMENTED}.", case.name)
        if problem is not None:
            case_hint = case.hint or hint
            hint_text = f" Hint: {case_hint}" if case_hint else ""
            inputs = describe_inputs(case.args, case.kwargs, names)
            return failed(f"case {case.name!r} ({inputs}): {problem}.{hint_text}", case.name)
    message = f"✅ {exercise}: passed all {len(cases)} cases."
    return CheckResult(exercise, True, message, len(cases), fn=student_fn)


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
) -> CheckResult:
    """:func:`evaluate`, then record the result (registry and log) and print its message.

    Every ``check_NAME`` of the labs is one call of this function.
    """
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
    )
    record(result)
    print(result.message)
    return result
