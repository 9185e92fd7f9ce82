"""What a check needs to trust a pass: whose function it was given, what that function called,
and how long one case may take.

- :func:`not_students` says when a function is not the student's own code: the reference a
  failed check handed back, any ``llmlab`` function, or a function of an installed library
  (``torch.softmax`` given as the answer to the softmax exercise).
- :class:`CallRecorder` records, while one case runs, the calls that the student's code makes
  to the check's own reference and to the functions a check forbids (the library op that *is*
  the answer, e.g. ``torch.softmax``). References of *other* exercises stay allowed: after a
  failed check the lab hands them back, and a later exercise may use them. A forbidden call
  counts only when its caller is the student's code or the standard library running what the
  student handed it (a thread pool), so a library calling its own helpers is never blamed on
  the student.
- :func:`time_limit` stops a case after a budget with :class:`CaseTimeout` (a signal timer on
  Linux and macOS; where the platform has none, :data:`TIME_LIMITS_WORK` is False and cases
  run unbounded).

"Student code" is any code whose file lies outside the ``llmlab`` package, the Python standard
library and installed packages: a notebook cell, a script, a test. The grader runs the same
functions in its sandbox and re-checks their reports in the trusted process.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import signal
import sys
import sysconfig
import threading
import types
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../llmlab


@functools.cache
def _library_dirs() -> tuple[str, ...]:
    """Folders whose code is never the student's: llmlab, the standard library, packages."""
    dirs = {_PACKAGE_DIR, os.path.dirname(os.__file__), os.path.dirname(torch.__file__)}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        path = sysconfig.get_paths().get(key)
        if path:
            dirs.add(path)
    for path in sys.path:
        if path.endswith(("site-packages", "dist-packages")):
            dirs.add(path)
    return tuple(sorted(os.path.abspath(d) + os.sep for d in dirs))


@functools.lru_cache(maxsize=4096)
def is_student_file(filename: str) -> bool:
    """Whether code compiled from ``filename`` is the student's (not llmlab, stdlib, packages).

    ``<cell 3>``, ``/tmp/ipykernel_81/2716.py`` and a test file are; ``<frozen ...>`` and
    ``<string>`` (code built by a library) are not.
    """
    if filename.startswith("<"):
        return filename.startswith("<cell") or filename.startswith("<ipython-input")
    return not os.path.abspath(filename).startswith(_library_dirs())


@functools.cache
def _stdlib_dirs() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The standard library's folders, and the package folders that may lie inside them."""
    paths = sysconfig.get_paths()
    stdlib = {os.path.dirname(os.__file__)} | {
        paths[k] for k in ("stdlib", "platstdlib") if k in paths
    }
    packages = {paths[k] for k in ("purelib", "platlib") if k in paths}
    packages |= {p for p in sys.path if p.endswith(("site-packages", "dist-packages"))}
    norm = lambda dirs: tuple(sorted(os.path.abspath(d) + os.sep for d in dirs))  # noqa: E731
    return norm(stdlib), norm(packages)


@functools.lru_cache(maxsize=4096)
def acts_for_student(filename: str) -> bool:
    """Whether a call made from ``filename`` is made on the student's behalf: from the
    student's code, or from the standard library running what the student handed it (a thread
    pool's worker, ``functools.reduce``, ``contextlib``), never from ``llmlab`` or a package.
    """
    if is_student_file(filename):
        return True
    path = os.path.abspath(filename)
    stdlib, packages = _stdlib_dirs()
    return path.startswith(stdlib) and not path.startswith(packages)


def _qualified_name(fn: Any) -> str:
    """``module.qualname`` of a function, method or builtin, as well as Python can tell."""
    if isinstance(fn, functools.partial):
        return f"functools.partial({_qualified_name(fn.func)})"
    try:
        name = torch.overrides.resolve_name(fn)
    except Exception:
        name = None
    if name:
        return name
    module = getattr(fn, "__module__", None)
    self = getattr(fn, "__self__", None)
    if module is None and self is not None:
        module = getattr(self, "__module__", None) or getattr(self, "__name__", None)
    qualname = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    return f"{module}.{qualname}" if module else str(qualname)


def _target(fn: Any) -> Any:
    """The function a callable stands for: a partial's function, a bound method's function."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "__func__", fn)


def _code_of(fn: Any) -> types.CodeType | None:
    """The code object a callable runs: a function's, a bound method's or a partial's."""
    # a decorated function (e.g. @torch.no_grad) runs the original
    return getattr(inspect.unwrap(_target(fn)), "__code__", None)


def not_students(fn: Any, reference_fn: Callable, name: str) -> str | None:
    """Why ``fn`` is not the student's own function, in words; None when it is.

    ``name`` is the exercise's function name, as the lab calls it (``softmax``).
    """
    target = _target(fn)
    rerun = f"re-run the cell that defines `{name}`, then this check"
    if target is reference_fn:
        return (
            f"`{name}` is the reference implementation that this check handed back after an "
            f"earlier failure, not your function: {rerun}"
        )
    code = _code_of(target)
    if code is None:
        return (
            f"`{name}` is `{_qualified_name(target)}`, which is not a function written in this "
            f"notebook: write `{name}` yourself (a `def` in the exercise cell), then {rerun[3:]}"
        )
    if not is_student_file(code.co_filename):
        if code.co_filename.startswith(_PACKAGE_DIR):
            where = "llmlab"
        elif code.co_filename.startswith("<"):
            where = f"code built outside this notebook ({code.co_filename})"
        else:
            where = "an installed library"
        return (
            f"`{name}` is `{_qualified_name(target)}` from {where}, not a function written in "
            f"this notebook: write `{name}` yourself, then {rerun[3:]}"
        )
    return None


# --------------------------------------------------------------------------------------------
# Recording the calls the student's code makes


class CallRecorder:
    """Record, while active, the student's calls to the check's ``reference`` and to ``forbid``.

    ``forbid``: qualified names or prefixes (``"torch.softmax"``, ``"torch.Tensor.softmax"``,
    ``"torch.nn.functional.softmax"``, ``"llmlab.nn.attention"``). A name matches a forbidden
    entry equal to it or to one of its dotted prefixes. ``calls`` lists each forbidden name once,
    in the order first seen. ``tampered`` is set when the student's code removed the recorder
    (``sys.setprofile``) while it ran. Calls are seen through ``sys.setprofile``: a Python
    function's ``call`` event and a builtin's ``c_call`` (``torch.softmax``, ``Tensor.exp``).

    Work moved elsewhere is seen too: threads started through ``threading`` (thread pools
    included) run under the same recorder (``threading.setprofile``), and a case that starts
    a process (``os.fork``, ``subprocess``, ``multiprocessing``, ``os.system``) or a bare
    ``_thread`` thread, whose calls no recorder here sees, is ``tampered``.
    """

    def __init__(self, forbid: Sequence[str] = (), reference: Callable | None = None):
        self.forbid = tuple(forbid)
        self.reference = _code_of(reference) if reference is not None else None
        self.calls: list[str] = []
        self.tampered = ""
        self._previous_profile: Any = None
        self._previous_thread_profile: Any = None
        self._hook = self._profile  # one bound method, so that `is` can tell it was replaced

    def _note(self, name: str, always: bool = False) -> None:
        """Keep ``name`` once if it is forbidden (or ``always``: the check's reference)."""
        if name not in self.calls and (
            always or any(name == f or name.startswith(f + ".") for f in self.forbid)
        ):
            self.calls.append(name)

    def _profile(self, frame: types.FrameType, event: str, arg: Any) -> None:
        if event == "call":
            # The reference counts whoever calls it (a wrapper hides nothing); anything else
            # only when the student's code calls it.
            is_reference = frame.f_code is self.reference
            caller = frame.f_back
            if is_reference or (caller is not None and acts_for_student(caller.f_code.co_filename)):
                module = frame.f_globals.get("__name__", "?")
                self._note(f"{module}.{frame.f_code.co_qualname}", always=is_reference)
        elif event == "c_call" and acts_for_student(frame.f_code.co_filename):
            # Processes come from the stdlib (subprocess, multiprocessing) or the student.
            name = _qualified_name(arg)
            if name in _UNWATCHED_STARTS and (
                name not in _THREAD_STARTS or is_student_file(frame.f_code.co_filename)
            ):
                self.tampered = self.tampered or (
                    f"it started {_UNWATCHED_STARTS[name]} (`{name}`), where no recorder sees "
                    "its calls"
                )
            else:
                self._note(name)

    def __enter__(self) -> CallRecorder:
        self._previous_profile = sys.getprofile()
        self._previous_thread_profile = threading.getprofile()
        sys.setprofile(self._hook)
        threading.setprofile(self._hook)  # threads started while the case runs
        return self

    def __exit__(self, *exc: Any) -> None:
        if sys.getprofile() is not self._hook:
            self.tampered = "the profiler that records calls was replaced (sys.setprofile)"
        sys.setprofile(self._previous_profile)
        threading.setprofile(self._previous_thread_profile)


# Builtins that start work no profiler in this process sees. A process is flagged whoever
# starts it (subprocess's own code calls fork_exec); a bare thread only from the student's code
# (threading.Thread.start calls _thread too, and threading's threads are recorded).
_THREAD_STARTS = {
    "_thread.start_new_thread": "a thread",
    "_thread.start_joinable_thread": "a thread",
    "_thread.start_new": "a thread",
}
_UNWATCHED_STARTS = {
    **_THREAD_STARTS,
    **{
        f"posix.{name}": "a process"
        for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system", "execv")
    },
    "posix.execve": "a process",
    "_posixsubprocess.fork_exec": "a process",
}


def forbidden_message(calls: Sequence[str], tampered: str = "") -> str:
    """Why a case is flagged, in words."""
    if tampered:
        return f"{tampered} while your function ran; checks cannot trust this run"
    names = ", ".join(f"`{c}`" for c in calls[:3])
    if any(c.startswith("llmlab.checks.") for c in calls):
        return f"your function called {names}, the check's own code: write the answer yourself"
    return (
        f"your function called {names}, which computes the answer for you: this exercise asks "
        "you to write it from simpler operations"
    )


# --------------------------------------------------------------------------------------------
# Time limits


class CaseTimeout(BaseException):
    """A case ran past its time budget (a BaseException, so ``except Exception`` cannot eat it)."""


TIME_LIMITS_WORK = hasattr(signal, "setitimer") and hasattr(signal, "SIGALRM")


def time_limits_apply() -> bool:
    """Whether :func:`time_limit` can stop a case here: a signal timer, in the main thread."""
    return TIME_LIMITS_WORK and threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[dict[str, bool]]:
    """Raise :class:`CaseTimeout` in the block after ``seconds`` (None: no limit).

    Yields a dict whose ``"fired"`` turns True when the budget ran out, even if the student's
    code caught the exception and carried on. Works in the main thread on platforms with
    ``signal.setitimer``; elsewhere the block runs unbounded (see :data:`TIME_LIMITS_WORK`).
    """
    state = {"fired": False}
    if seconds is None or not time_limits_apply():
        yield state
        return

    def on_alarm(signum: int, frame: Any) -> None:
        state["fired"] = True
        raise CaseTimeout(f"timed out after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield state
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
