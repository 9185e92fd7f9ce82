"""What every check in llmlab.checks promises, tested once for every chapter's check module.

A chapter's test file subclasses :class:`CheckContract` (its name must start with ``Test``)::

    class TestContract(CheckContract):
        MODULE = transformer                     # the llmlab.checks module
        CHECKS = {"check_x": (check_x, reference_x), ...}
        GARBAGE = {"returns None": lambda *a, **k: None, ...}
        MIN_CASES = 6

and gets, for every check: the reference passes (and is handed back), a NotImplementedError
stub reports "not implemented", garbage fails without raising, and the global seed stays put.
Mutants (plausible wrong answers) stay in the chapter's own file: they differ per check.
"""

from __future__ import annotations

import inspect

import torch


class CheckContract:
    MODULE = None
    CHECKS: dict = {}
    GARBAGE: dict = {}
    MIN_CASES = 5

    def pytest_generate_tests(self, metafunc):
        if "name" in metafunc.fixturenames:
            metafunc.parametrize("name", list(self.CHECKS))
        if "garbage" in metafunc.fixturenames:
            metafunc.parametrize("garbage", list(self.GARBAGE))

    def test_every_check_of_the_module_is_tested(self):
        defined = {name for name, _ in inspect.getmembers(self.MODULE, inspect.isfunction)
                   if name.startswith("check_")}
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
        result = check(self.GARBAGE[garbage])
        assert not result.passed
        assert result.message.startswith("❌") and "\n" not in result.message
        assert result.fn is reference

    def test_checks_leave_the_global_seed_alone(self, name):
        check, reference = self.CHECKS[name]
        torch.manual_seed(1234)
        before = torch.random.get_rng_state()
        check(reference)
        assert torch.equal(torch.random.get_rng_state(), before)
