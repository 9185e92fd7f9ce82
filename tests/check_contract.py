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
"""

from __future__ import annotations

import inspect

import torch


def _raise_value_error(*args, **kwargs):
    raise ValueError("boom")


#: Garbage every check must survive; a chapter's GARBAGE adds its own kinds of wrong answers.
BASE_GARBAGE = {
    "returns None": lambda *a, **k: None,
    "raises ValueError": _raise_value_error,
    "is not a function (None)": None,
}


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

    def test_every_check_has_a_mutant_and_a_correct_variant(self, request):
        module = request.module
        assert {name for name, *_ in getattr(module, "MUTANTS", [])} == set(self.CHECKS)
        assert {name for name, *_ in getattr(module, "CORRECT_VARIANTS", [])} == set(self.CHECKS)
