"""The check machinery (llmlab.checks) and every check of the warm-up lab
(llmlab.checks.start_here.warmup).

For every check: the reference passes, plausible wrong answers (mutants) fail on the case that
exposes them, a NotImplementedError stub reports "not implemented", and garbage never raises.
"""

from __future__ import annotations

import json
import math

import nbformat
import pytest
import torch
from check_contract import CheckContract
from nbformat.v4 import new_code_cell, new_notebook

import llmlab.checks as checks
from llmlab.checks import Case, compare_tensors, evaluate, run_check
from llmlab.checks.start_here import warmup as sh

CHECKS = {
    "check_stable_softmax": (sh.check_stable_softmax, sh.reference_softmax),
    "check_log_softmax": (sh.check_log_softmax, sh.reference_log_softmax),
    "check_cross_entropy": (sh.check_cross_entropy, sh.reference_cross_entropy),
    "check_apply_temperature": (sh.check_apply_temperature, sh.reference_apply_temperature),
}


def _raise_value_error(*args, **kwargs):
    raise ValueError("boom")


def _divide_by_zero(*args, **kwargs):
    return 1 / 0


GARBAGE = {
    "returns a list": lambda *a, **k: [0.1, 0.9],
    "returns a number": lambda *a, **k: 0.5,
    "returns a numpy array": lambda x, *a, **k: x.numpy(),
    "returns the wrong shape": lambda x, *a, **k: torch.zeros(3, 2, 1),
    "returns the wrong dtype": lambda x, *a, **k: torch.zeros_like(x, dtype=torch.int64),
    "raises ZeroDivisionError": _divide_by_zero,
    "takes no arguments": lambda: torch.zeros(1),
    "is not a function (a string)": "softmax",
}


class TestContract(CheckContract):
    MODULES = (sh,)
    CHECKS = CHECKS
    GARBAGE = GARBAGE
    MIN_CASES = 5


def test_exception_message_names_type_and_message():
    result = sh.check_stable_softmax(_raise_value_error)
    assert "raised ValueError: boom" in result.message
    assert 'at `raise ValueError("boom")`' in result.message  # the student's line


# --------------------------------------------------------------------------------------------
# Plausible wrong answers: each must fail, naming the case that exposes it


def softmax_naive(x, dim=-1):
    e = x.exp()
    return e / e.sum(dim=dim, keepdim=True)


def softmax_last_axis_only(x, dim=-1):
    z = x - x.amax(dim=-1, keepdim=True)
    return z.exp() / z.exp().sum(dim=-1, keepdim=True)


def softmax_global_max(x, dim=-1):
    z = x - x.max()
    return z.exp() / z.exp().sum(dim=dim, keepdim=True)


def softmax_unnormalised(x, dim=-1):
    return (x - x.amax(dim=dim, keepdim=True)).exp()


def softmax_sum_over_everything(x, dim=-1):
    e = (x - x.amax(dim=dim, keepdim=True)).exp()
    return e / e.sum()


def softmax_float32(x, dim=-1):
    return torch.softmax(x.float(), dim=dim)


def softmax_in_place(x, dim=-1):
    x -= x.amax(dim=dim, keepdim=True)
    return x.exp_() / x.sum(dim=dim, keepdim=True)


def log_softmax_of_softmax(x, dim=-1):
    return torch.softmax(x, dim=dim).log()


def log_softmax_unstable(x, dim=-1):
    return x - x.exp().sum(dim=dim, keepdim=True).log()


def log_softmax_forgets_max(x, dim=-1):
    m = x.amax(dim=dim, keepdim=True)
    return x - (x - m).exp().sum(dim=dim, keepdim=True).log()


def log_softmax_wrong_axis(x, dim=-1):
    return torch.log_softmax(x, dim=0)


def cross_entropy_sum(logits, targets):
    log_probs = torch.log_softmax(logits, dim=-1)
    return -log_probs.gather(-1, targets.unsqueeze(-1)).sum()


def cross_entropy_wrong_axis(logits, targets):
    log_probs = torch.log_softmax(logits, dim=0)
    return -log_probs.gather(-1, targets.unsqueeze(-1)).mean()


def cross_entropy_unstable(logits, targets):
    log_probs = torch.softmax(logits, dim=-1).log()
    return -log_probs.gather(-1, targets.unsqueeze(-1)).mean()


def cross_entropy_no_minus(logits, targets):
    log_probs = torch.log_softmax(logits, dim=-1)
    return log_probs.gather(-1, targets.unsqueeze(-1)).mean()


def cross_entropy_2d_only(logits, targets):
    log_probs = torch.log_softmax(logits, dim=-1)
    return -log_probs[torch.arange(len(targets)), targets].mean()


def cross_entropy_shape_1(logits, targets):
    return sh.reference_cross_entropy(logits, targets).reshape(1)


def temperature_multiplies(logits, temperature):
    sh.reference_apply_temperature(logits, temperature)  # validation right, formula wrong
    return logits * temperature


def temperature_no_validation(logits, temperature):
    return logits / temperature


def temperature_allows_zero(logits, temperature):
    if temperature < 0:
        raise ValueError("temperature must be >= 0")
    return logits / temperature


def temperature_wrong_exception(logits, temperature):
    if not (math.isfinite(temperature) and temperature > 0):
        raise TypeError("bad temperature")
    return logits / temperature


def temperature_allows_inf(logits, temperature):
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    return logits / temperature


def temperature_floats_only(logits, temperature):
    if not isinstance(temperature, float):
        raise TypeError("temperature must be a float")
    return sh.reference_apply_temperature(logits, temperature)


def temperature_in_place(logits, temperature):
    sh.reference_apply_temperature(logits, temperature)
    return logits.div_(temperature)


def softmax_by_hand(x, dim=-1):
    e = (x - x.amax(dim=dim, keepdim=True)).exp()
    return e / e.sum(dim=dim, keepdim=True)


def log_softmax_by_logsumexp(x, dim=-1):
    return x - torch.logsumexp(x, dim=dim, keepdim=True)


def cross_entropy_by_gather(logits, targets):
    logp = torch.log_softmax(logits, dim=-1)
    return -logp.gather(-1, targets.unsqueeze(-1)).mean()


def temperature_checked(logits, temperature):
    if not (
        isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0
    ):
        raise ValueError(f"temperature: expected a finite number > 0, got {temperature!r}")
    return logits / temperature


CORRECT_VARIANTS = [
    ("check_stable_softmax", softmax_by_hand),
    ("check_log_softmax", log_softmax_by_logsumexp),
    ("check_cross_entropy", cross_entropy_by_gather),
    ("check_apply_temperature", temperature_checked),
]


MUTANTS = [
    # (check, mutant, the failing case named in the message, other words expected)
    ("check_stable_softmax", softmax_naive, "large logits (around 1000)", "NaN"),
    ("check_stable_softmax", softmax_last_axis_only, "(2, 3, 5) along dim=1", "max abs error"),
    ("check_stable_softmax", softmax_global_max, "rows on very different scales", "NaN"),
    ("check_stable_softmax", softmax_unnormalised, "1-D vector of 5", "max abs error"),
    ("check_stable_softmax", softmax_sum_over_everything, "(3, 7) rows", "max abs error"),
    ("check_stable_softmax", softmax_float32, "float64 input", "expected dtype float64"),
    ("check_stable_softmax", softmax_in_place, "1-D vector of 5", "in place"),
    ("check_log_softmax", log_softmax_of_softmax, "entries far below the max", "-inf"),
    ("check_log_softmax", log_softmax_unstable, "large logits (around 1000)", "inf"),
    ("check_log_softmax", log_softmax_forgets_max, "1-D vector of 5", "max abs error"),
    ("check_log_softmax", log_softmax_wrong_axis, "(3, 7) rows", "max abs error"),
    ("check_cross_entropy", cross_entropy_sum, "(4, 10) logits", "mean, not sum"),
    ("check_cross_entropy", cross_entropy_wrong_axis, "(4, 10) logits", "max abs error"),
    ("check_cross_entropy", cross_entropy_unstable, "large logits (x1000)", "inf"),
    ("check_cross_entropy", cross_entropy_no_minus, "(4, 10) logits", "max abs error"),
    (
        "check_cross_entropy",
        cross_entropy_2d_only,
        "(2, 3, 7) logits, (2, 3) targets",
        "raised IndexError",
    ),
    ("check_cross_entropy", cross_entropy_shape_1, "(4, 10) logits", "expected shape ()"),
    (
        "check_apply_temperature",
        temperature_multiplies,
        "temperature 0.5 sharpens",
        "max abs error",
    ),
    (
        "check_apply_temperature",
        temperature_no_validation,
        "temperature 0 is rejected",
        "expected your function to raise ValueError",
    ),
    (
        "check_apply_temperature",
        temperature_allows_zero,
        "temperature 0 is rejected",
        "raise ValueError",
    ),
    (
        "check_apply_temperature",
        temperature_wrong_exception,
        "temperature 0 is rejected",
        "raised TypeError",
    ),
    (
        "check_apply_temperature",
        temperature_allows_inf,
        "infinite temperature is rejected",
        "ValueError",
    ),
    ("check_apply_temperature", temperature_floats_only, "integer temperature 3", "TypeError"),
    ("check_apply_temperature", temperature_in_place, "temperature 0.5 sharpens", "in place"),
]


def test_check_does_not_move_the_global_seed():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    sh.check_stable_softmax(sh.reference_softmax)
    assert torch.equal(torch.rand(3), before)


# --------------------------------------------------------------------------------------------
# Generic helpers


def test_compare_tensors_match_and_inf():
    x = torch.tensor([0.5, float("-inf")])
    assert compare_tensors(x.clone(), x) is None
    assert compare_tensors(x + 1e-7, x) is None


@pytest.mark.parametrize(
    ("received", "words"),
    [
        (None, "expected a torch.Tensor, received None"),
        ([1.0, 2.0], "received a list of length 2"),
        (torch.zeros(2, 2), "expected shape (2, 3), received shape (2, 2)"),
        (torch.zeros(2, 3, dtype=torch.float64), "expected dtype float32, received float64"),
        (torch.full((2, 3), float("nan")), "received NaN at 6 of 6 positions"),
        (torch.full((2, 3), float("inf")), "received inf at 6 of 6 positions"),
        (torch.ones(2, 3), "max abs error 1 exceeds the tolerance (atol=1e-05, rtol=1e-05)"),
    ],
)
def test_compare_tensors_says_what_differs(received, words):
    message = compare_tensors(received, torch.zeros(2, 3))
    assert message is not None and words in message, message


def test_compare_tensors_names_first_mismatch_and_tolerance():
    expected = torch.zeros(2, 3)
    received = expected.clone()
    received[1, 2] = 0.1
    message = compare_tensors(received, expected, atol=0.01, rtol=0)
    assert "at index (1, 2): expected 0, received 0.1" in message
    assert "atol=0.01" in message


def test_compare_tensors_expected_inf_and_integers():
    assert "finite value where inf was expected" in compare_tensors(
        torch.tensor([0.0]), torch.tensor([float("-inf")])
    )
    assert compare_tensors(torch.tensor([1, 2]), torch.tensor([1, 2])) is None
    assert "1 of 2 values differ" in compare_tensors(torch.tensor([1, 3]), torch.tensor([1, 2]))


def test_evaluate_records_nothing_and_run_check_records(capsys):
    cases = [Case("ones", (torch.ones(3),))]
    result = evaluate("double", lambda x: 2 * x, lambda x: x + x, cases)
    assert result.passed and checks.results() == {}
    assert capsys.readouterr().out == ""
    result = run_check("double", lambda x: 2 * x, lambda x: x + x, cases)
    assert checks.results() == {"double": result}
    assert capsys.readouterr().out.count("double") == 1


def test_case_that_must_raise():
    def reference(x):
        raise AssertionError("the reference is not called for a case that must raise")

    cases = [Case("negative", (-1,), raises=ValueError)]

    def raises(x):
        raise ValueError("negative")

    assert evaluate("positive", raises, reference, cases).passed
    result = evaluate("positive", lambda x: x, reference, cases)
    assert "expected your function to raise ValueError, it returned int -1" in result.message


def test_a_check_without_cases_is_a_defect():
    with pytest.raises(ValueError, match="no cases"):
        evaluate("nothing", lambda x: x, lambda x: x, [])


def test_result_shows_its_message_once():
    result = sh.check_stable_softmax(softmax_naive)
    assert result.message not in repr(result)
    assert result._ipython_display_() is None
    assert bool(result) is False


# --------------------------------------------------------------------------------------------
# Registry and JSON log


def test_registry_keeps_the_latest_result_per_exercise():
    sh.check_stable_softmax(softmax_naive)
    sh.check_stable_softmax(sh.reference_softmax)
    sh.check_log_softmax(log_softmax_of_softmax)
    recorded = checks.results()
    assert list(recorded) == ["stable_softmax", "log_softmax"]
    assert recorded["stable_softmax"].passed and not recorded["log_softmax"].passed
    checks.clear_results()
    assert checks.results() == {}


def test_log_gets_one_json_line_per_check_run(tmp_path, monkeypatch):
    log = tmp_path / "checks.jsonl"
    monkeypatch.setenv(checks.LOG_ENV_VAR, str(log))
    first = sh.check_stable_softmax(softmax_naive)
    second = sh.check_cross_entropy(sh.reference_cross_entropy)
    lines = log.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2
    records = [json.loads(line) for line in lines]
    assert records == checks.read_log(log)
    assert records[0]["exercise"] == "stable_softmax" and records[0]["passed"] is False
    assert records[0]["message"] == first.message
    assert records[0]["failed_case"] == first.failed_case
    assert records[1] | {"time": 0} == second.to_record() | {"time": 0}


def test_unwritable_log_warns_but_does_not_crash(tmp_path, monkeypatch):
    monkeypatch.setenv(checks.LOG_ENV_VAR, str(tmp_path / "missing" / "checks.jsonl"))
    with pytest.warns(UserWarning, match="could not write the check log"):
        result = sh.check_stable_softmax(sh.reference_softmax)
    assert result.passed


def test_read_log_skips_a_truncated_line_and_a_missing_file(tmp_path):
    log = tmp_path / "checks.jsonl"
    log.write_text('{"exercise": "a", "passed": true}\n{"exercise": "b", "pa', encoding="utf-8")
    assert checks.read_log(log) == [{"exercise": "a", "passed": True}]
    assert checks.read_log(tmp_path / "none.jsonl") == []


@pytest.mark.slow
def test_in_a_notebook_the_message_appears_once(tmp_path):
    from llmlab.course.notebooks import execute_notebook, text_outputs

    nb = new_notebook(
        cells=[
            new_code_cell(
                "from llmlab.checks.start_here.warmup import check_stable_softmax, reference_softmax\n"
                "check_stable_softmax(reference_softmax)"
            )
        ]
    )
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    path = tmp_path / "once.ipynb"
    nbformat.write(nb, path)
    output = text_outputs(execute_notebook(path, timeout=120))
    assert output.count("stable_softmax: passed") == 1, output
