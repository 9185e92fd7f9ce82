"""What every check in llmlab.checks promises, tested once for every lab's check module.

A test file subclasses :class:`CheckContract` (its name must start with ``Test``)::

    class TestContract(CheckContract):
        MODULES = (attention_masks, rope)        # the llmlab.checks modules it covers
        CHECKS = {"check_x": (check_x, reference_x), ...}
        GARBAGE = {"returns a list": lambda *a, **k: [0.1, 0.9], ...}  # + BASE_GARBAGE
        MIN_CASES = 6

and gets, for every check: the reference passes (and is handed back), a NotImplementedError
stub reports "not implemented", garbage fails without raising, and the global seed stays put.

The test file also defines, at module level, ``CORRECT_VARIANTS`` (``[(check name, another
correct answer)]``: each must pass) and ``MUTANTS`` (``[(check name, plausible wrong answer,
the case that must expose it, words the message must contain)]``: each must fail on exactly
that case, with a hint, and hand back the reference). Every check needs at least one of each.

A check that forbids library ops (``run_check(..., forbid=...)``) also needs an entry in the
module's ``FORBIDDEN`` (``[(check name, an answer that calls a forbidden op, the op's name as
the message writes it)]``): each is flagged. And for every check, a function that calls the
check's own reference is flagged.

Functions defined in a test file are student code to the checks (their file is outside llmlab,
the standard library and site-packages). :func:`student_copy` turns a reference into such a
function: the reference as if a student had typed it into a cell, for mutants built on it.
"""

from __future__ import annotations

import contextlib
import inspect
import types
from collections.abc import Callable

import pytest
import torch

import llmlab.checks as checks


def _raise_value_error(*args, **kwargs):
    raise ValueError("boom")


#: Garbage every check must survive; a chapter's GARBAGE adds its own kinds of wrong answers.
BASE_GARBAGE = {
    "returns None": lambda *a, **k: None,
    "raises ValueError": _raise_value_error,
    "is not a function (None)": None,
}


def student_copy(fn: Callable) -> Callable:
    """A copy of ``fn`` whose code comes from the file ``<cell test>``: the same function, as if a
    student had typed it into a notebook cell (a decorator such as ``@torch.no_grad()`` is
    dropped). The checks see it as the student's own code, not as their reference.

    Functions it calls stay what they are: a copy of a reference that delegates to a library
    op (``torch.softmax``) calls that op from student code, which a check that forbids the op
    flags.
    """
    fn = inspect.unwrap(fn)
    code = fn.__code__.replace(co_filename="<cell test>")
    copy = types.FunctionType(code, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    copy.__kwdefaults__ = fn.__kwdefaults__
    copy.__qualname__ = fn.__qualname__
    copy.__doc__ = fn.__doc__
    return copy


def calls_the_reference(reference: Callable) -> Callable:
    """A student function (see :func:`student_copy`) that returns what ``reference`` returns."""

    def answer(*args, **kwargs):
        return reference(*args, **kwargs)

    answer.__name__ = f"calls_{reference.__name__}"
    return student_copy(answer)


def forbid_lists(module) -> dict[str, tuple[str, ...]]:
    """``{check name: its forbid list}`` for the ``check_*`` functions of ``module``.

    Each check is run once with ``run_check`` replaced by a stub that records its arguments.
    """
    found: dict[str, tuple[str, ...]] = {}
    for name, check in inspect.getmembers(module, inspect.isfunction):
        if not name.startswith("check_"):
            continue

        def record(exercise, student_fn, reference_fn, cases, *, _name=name, **kwargs):
            found[_name] = tuple(kwargs.get("forbid", ()))
            return checks.CheckResult(exercise, False, "", len(cases))

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(module, "run_check", record)
            check(None)
    return found


@contextlib.contextmanager
def trusting_references():
    """Let a check accept its own reference as if the student had written it.

    A check refuses its reference (the function it hands back after a failure); the contract
    still needs to know the reference passes every case.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(checks, "not_students", lambda fn, reference, name: None)
        yield


class CheckContract:
    MODULES: tuple = ()
    CHECKS: dict = {}
    GARBAGE: dict = {}
    MIN_CASES = 5

    def pytest_generate_tests(self, metafunc):
        if "name" in metafunc.fixturenames:
            metafunc.parametrize("name", list(self.CHECKS))
        if "garbage" in metafunc.fixturenames:
            metafunc.parametrize("garbage", list({**BASE_GARBAGE, **self.GARBAGE}))
        if "variant" in metafunc.fixturenames:
            variants = getattr(metafunc.module, "CORRECT_VARIANTS", [])
            metafunc.parametrize("variant", variants, ids=[fn.__name__ for _, fn in variants])
        if "mutant" in metafunc.fixturenames:
            mutants = getattr(metafunc.module, "MUTANTS", [])
            metafunc.parametrize("mutant", mutants, ids=[m[1].__name__ for m in mutants])
        if "forbidden" in metafunc.fixturenames:
            forbidden = getattr(metafunc.module, "FORBIDDEN", [])
            metafunc.parametrize("forbidden", forbidden, ids=[f[1].__name__ for f in forbidden])

    def test_every_check_of_the_module_is_tested(self):
        defined = {
            name
            for module in self.MODULES
            for name, _ in inspect.getmembers(module, inspect.isfunction)
            if name.startswith("check_")
        }
        assert defined == set(self.CHECKS)

    def test_reference_passes(self, name, capsys):
        check, reference = self.CHECKS[name]
        with trusting_references():
            result = check(reference)
        assert result.passed, result.message
        assert result.fn is reference
        assert result.exercise == name.removeprefix("check_")  # the convention grading relies on
        assert capsys.readouterr().out == result.message + "\n"
        assert result.message.startswith("✅")
        assert f"passed all {result.n_cases} cases" in result.message
        assert result.n_cases >= self.MIN_CASES

    def test_not_implemented_stub_fails(self, name):
        check, reference = self.CHECKS[name]

        def stub(*args, **kwargs):
            raise NotImplementedError("exercise not done yet: replace this line with your code")

        result = check(stub)
        assert not result.passed
        assert "not implemented yet: fill in the function above" in result.message
        assert result.fn is reference

    def test_the_handed_back_reference_is_refused(self, name):
        # Re-running a check cell after a failure passes it the reference: that is no pass.
        check, reference = self.CHECKS[name]
        result = check(reference)
        assert not result.passed and result.kind == "not yours"
        assert "handed back" in result.message and "re-run the cell" in result.message
        assert result.fn is reference

    def test_garbage_fails_without_raising(self, name, garbage):
        check, reference = self.CHECKS[name]
        result = check({**BASE_GARBAGE, **self.GARBAGE}[garbage])
        assert not result.passed
        assert result.message.startswith("❌") and "\n" not in result.message
        assert result.fn is reference

    def test_checks_leave_the_global_seed_alone(self, name):
        check, reference = self.CHECKS[name]
        torch.manual_seed(1234)
        before = torch.random.get_rng_state()
        with trusting_references():
            check(reference)
        assert torch.equal(torch.random.get_rng_state(), before)

    def test_correct_variants_pass(self, variant):
        name, fn = variant
        check, _ = self.CHECKS[name]
        result = check(fn)
        assert result.passed, result.message
        assert result.fn is fn

    def test_mutant_fails_on_the_case_that_exposes_it(self, mutant):
        name, fn, case, words = mutant
        check, reference = self.CHECKS[name]
        result = check(fn)
        assert not result.passed, f"{fn.__name__} passed {name}"
        assert result.failed_case == case, result.message
        assert f"case {case!r}" in result.message and words in result.message, result.message
        assert "Hint:" in result.message
        assert result.fn is reference

    def test_a_function_that_calls_the_reference_is_flagged(self, name):
        # The student's function must not get its answer from the check's own reference.
        check, reference = self.CHECKS[name]
        result = check(calls_the_reference(reference))
        assert not result.passed and result.kind == "flagged", result.message
        assert f"`{reference.__module__}.{reference.__qualname__}`" in result.message
        assert "the check's own code" in result.message
        assert result.failed_case is not None and result.fn is reference

    def test_a_forbidden_op_is_flagged(self, forbidden):
        # A check that asks for an op written by hand flags an answer that calls the op.
        name, fn, op = forbidden
        check, reference = self.CHECKS[name]
        result = check(fn)
        assert not result.passed and result.kind == "flagged", result.message
        assert f"`{op}`" in result.message and "computes the answer for you" in result.message
        assert result.failed_case is not None and result.fn is reference

    def test_every_forbid_list_has_a_flagged_example(self, request):
        forbid = {}
        for module in self.MODULES:
            forbid.update(forbid_lists(module))
        assert set(forbid) == set(self.CHECKS)
        examples = {name for name, *_ in getattr(request.module, "FORBIDDEN", [])}
        assert examples == {name for name, names in forbid.items() if names}
        for name, _, op in getattr(request.module, "FORBIDDEN", []):
            assert any(op == f or op.startswith(f + ".") for f in forbid[name]), (name, op)

    def test_every_check_has_a_mutant_and_a_correct_variant(self, request):
        module = request.module
        assert {name for name, *_ in getattr(module, "MUTANTS", [])} == set(self.CHECKS)
        assert {name for name, *_ in getattr(module, "CORRECT_VARIANTS", [])} == set(self.CHECKS)
