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
import torch.nn.functional as F
from check_contract import CheckContract, student_copy
from nbformat.v4 import new_code_cell, new_notebook

import llmlab.checks as checks
from llmlab.checks import Case, compare_tensors, describe, describe_inputs, evaluate, run_check
from llmlab.checks.start_here import warmup as sh
from llmlab.inference import generation

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
    z = x.float() - x.float().amax(dim=dim, keepdim=True)
    return z.exp() / z.exp().sum(dim=dim, keepdim=True)


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
    return x - torch.logsumexp(x, dim=0, keepdim=True)


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
    return cross_entropy_by_gather(logits, targets).reshape(1)


#: The reference as if a student had typed it: mutants build on it without calling the check's
#: own reference (which the check flags).
apply_temperature_copy = student_copy(sh.reference_apply_temperature)


def temperature_multiplies(logits, temperature):
    apply_temperature_copy(logits, temperature)  # validation right, formula wrong
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


def temperature_allows_nan(logits, temperature):
    if temperature <= 0 or math.isinf(temperature):  # NaN passes both tests
        raise ValueError("temperature must be a finite number > 0")
    return logits / temperature


def temperature_floats_only(logits, temperature):
    if not isinstance(temperature, float):
        raise TypeError("temperature must be a float")
    return apply_temperature_copy(logits, temperature)


def temperature_in_place(logits, temperature):
    apply_temperature_copy(logits, temperature)
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
    ("check_cross_entropy", cross_entropy_sum, "(4, 10) logits", "4 times the expected value"),
    ("check_cross_entropy", cross_entropy_wrong_axis, "(4, 10) logits", "max abs error"),
    ("check_cross_entropy", cross_entropy_unstable, "large logits (x1000)", "inf"),
    ("check_cross_entropy", cross_entropy_no_minus, "(4, 10) logits", "with the wrong sign"),
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
    ("check_apply_temperature", temperature_allows_nan, "NaN temperature is rejected", "isfinite"),
    ("check_apply_temperature", temperature_floats_only, "integer temperature 3", "TypeError"),
    ("check_apply_temperature", temperature_in_place, "temperature 0.5 sharpens", "in place"),
]


# --------------------------------------------------------------------------------------------
# Answers that call the library op the exercise asks for: flagged


def softmax_functional(x, dim=-1):
    return F.softmax(x, dim=dim)


def softmax_method(x, dim=-1):
    return x.softmax(dim)


def log_softmax_functional(x, dim=-1):
    return F.log_softmax(x, dim=dim)


def cross_entropy_nll(logits, targets):
    vocab = logits.shape[-1]
    return F.nll_loss(torch.log_softmax(logits, -1).reshape(-1, vocab), targets.reshape(-1))


def cross_entropy_module(logits, targets):
    vocab = logits.shape[-1]
    return torch.nn.CrossEntropyLoss()(logits.reshape(-1, vocab), targets.reshape(-1))


def temperature_library(logits, temperature):
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError("temperature must be a finite number > 0")
    return generation.apply_temperature(logits, temperature)


FORBIDDEN = [
    # (check, an answer that calls a forbidden op, the op as the message names it)
    ("check_stable_softmax", student_copy(sh.reference_softmax), "torch.softmax"),
    ("check_stable_softmax", softmax_functional, "torch.nn.functional.softmax"),
    ("check_stable_softmax", softmax_method, "torch.Tensor.softmax"),
    ("check_log_softmax", student_copy(sh.reference_log_softmax), "torch.log_softmax"),
    ("check_log_softmax", log_softmax_functional, "torch.nn.functional.log_softmax"),
    (
        "check_cross_entropy",
        student_copy(sh.reference_cross_entropy),
        "torch.nn.functional.cross_entropy",
    ),
    ("check_cross_entropy", cross_entropy_nll, "torch.nn.functional.nll_loss"),
    (
        "check_cross_entropy",
        cross_entropy_module,
        "torch.nn.modules.loss.CrossEntropyLoss.__init__",
    ),
    (
        "check_apply_temperature",
        temperature_library,
        "llmlab.inference.generation.apply_temperature",
    ),
]


def softmax_in_a_thread_pool(x, dim=-1):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(torch.softmax, x, dim).result()


def softmax_in_a_thread(x, dim=-1):
    import threading

    out = {}
    worker = threading.Thread(target=lambda: out.setdefault("y", torch.softmax(x, dim)))
    worker.start()
    worker.join()
    return out["y"]


def softmax_after_a_process(x, dim=-1):
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return softmax_by_hand(x, dim)


@pytest.mark.parametrize("answer", [softmax_in_a_thread_pool, softmax_in_a_thread])
def test_a_forbidden_call_moved_to_another_thread_is_still_seen(answer):
    result = sh.check_stable_softmax(answer)
    assert result.kind == "flagged" and "`torch.softmax`" in result.message


def test_a_case_that_starts_a_process_is_flagged():
    result = sh.check_stable_softmax(softmax_after_a_process)
    assert result.kind == "flagged"
    assert "started a process" in result.message and "no recorder sees" in result.message


def test_a_slow_case_says_it_is_still_running(monkeypatch, capsys):
    import time

    monkeypatch.setattr(checks, "PROGRESS_AFTER_S", 0.05)

    def slow_softmax(x, dim=-1):
        time.sleep(0.12)
        return softmax_by_hand(x, dim)

    result = sh.check_stable_softmax(slow_softmax)
    out = capsys.readouterr().out
    assert result.passed
    assert "⏳ stable_softmax: case" in out and "still running after 0.05 s" in out
    assert "timed out at 20 s" in out


def test_where_cases_cannot_be_time_limited_the_check_says_so_once(monkeypatch, capsys):
    import threading

    monkeypatch.setattr(checks, "_SAID_UNLIMITED", False)
    results = []

    def run_two() -> None:  # outside the main thread no signal timer can stop a case
        results.extend(sh.check_stable_softmax(softmax_by_hand) for _ in range(2))

    worker = threading.Thread(target=run_two)
    worker.start()
    worker.join()
    out = capsys.readouterr().out
    assert all(r.passed for r in results)
    assert out.count("cannot time-limit your functions here") == 1


def test_cross_entropy_names_a_sum_and_a_sign_only_when_they_are_the_slip():
    assert "4 times the expected value" in sh.check_cross_entropy(cross_entropy_sum).message
    assert "wrong sign" in sh.check_cross_entropy(cross_entropy_no_minus).message
    message = sh.check_cross_entropy(cross_entropy_wrong_axis).message
    assert "wrong sign" not in message and "times the expected" not in message


def test_check_does_not_move_the_global_seed():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    assert sh.check_stable_softmax(softmax_by_hand).passed
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
    sh.check_stable_softmax(softmax_by_hand)
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
    second = sh.check_cross_entropy(cross_entropy_by_gather)
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
        result = sh.check_stable_softmax(softmax_by_hand)
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
                "from llmlab.checks.start_here.warmup import check_stable_softmax\n"
                "def softmax(x, dim=-1):\n"
                "    e = (x - x.amax(dim=dim, keepdim=True)).exp()\n"
                "    return e / e.sum(dim=dim, keepdim=True)\n"
                "check_stable_softmax(softmax)"
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


# --------------------------------------------------------------------------------------------
# Case inputs in words: never a number cut short, long values summarised


class _Settings:
    """A case's settings with their own repr, as the driver-based checks have."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text


@pytest.mark.parametrize(
    ("args", "kwargs", "names", "expected"),
    [
        ((0.05, None), {"eps": 1e-5}, ["clip_norm", "lr"], "clip_norm=0.05, lr=None, eps=1e-05"),
        ((123456789012345678901234567890,), {}, ["n"], "n=123456789012345678901234567890"),
        (
            (torch.zeros(2, 3),),
            {"mask": torch.ones(3, dtype=torch.bool)},
            ["x"],
            "x: shape (2, 3) float32, mask: shape (3,) bool",
        ),
        (
            ([[1, 2, 3, 4], [1, 2, 3, 4]], 2),
            {},
            ["signatures", "bands"],
            "signatures=[[1, 2, 3, 4], [1, 2, 3, 4]], bands=2",
        ),
        (([[7] * 8] * 30,), {}, ["signatures"], "signatures: a list of 30 lists"),
        (([torch.zeros(1), torch.zeros(2)],), {}, ["xs"], "xs: a list of 2 tensors"),
        (
            ({f"layer.{i}.weight": torch.zeros(1) for i in range(9)},),
            {},
            ["weights"],
            "weights: a dict with 9 keys ('layer.0.weight', 'layer.1.weight', ...)",
        ),
        ((list(range(60)),), {}, ["word"], "word: a list of 60 ints (0, 1, 2, 3, 4, 5, 6"),
        (
            ({1 / 2**i for i in range(12)},),
            {},
            ["a"],
            "a: a set of 12 floats (0.00048828125, 0.0009765625, 0.001953125, ...)",
        ),
        ((["word"] * 3,), {}, ["words"], "words=['word', 'word', 'word']"),
        (("short text",), {}, ["text"], "text='short text'"),
        (("many words " * 20,), {}, ["text"], "text='many words many words many words many words "),
        (
            (_Settings("1 micro-batch of 4x6, clip_norm=None, sgd lr=0.5, 3 steps"),),
            {},
            ["steps"],
            "steps=1 micro-batch of 4x6, clip_norm=None, sgd lr=0.5, 3 steps",
        ),
    ],
)
def test_describe_inputs_shows_numbers_whole_and_summarises_long_values(
    args, kwargs, names, expected
):
    assert expected in describe_inputs(args, kwargs, names)


def test_describe_inputs_cuts_a_long_repr_between_its_parts_only():
    settings = _Settings(", ".join(f"value_{i}={i / 7:.6f}" for i in range(30)))
    text = describe_inputs((settings,), {}, ["case"])
    assert text.startswith("case=value_0=0.000000, value_1=0.142857") and text.endswith(", ...")
    shown = text.removeprefix("case=").removesuffix(", ...").split(", ")
    assert all(part in repr(settings).split(", ") for part in shown)  # no part cut in two
    assert len(text) < 130


def test_describe_inputs_never_calls_a_list_a_tensor():
    for value in ([1.0, 2.0], [[1.0], [2.0]], list(range(100)), (0.5,) * 40):
        assert "tensor" not in describe_inputs((value,), {}, ["x"])
        assert "tensor" not in describe(value)


def test_describe_says_what_a_value_holds():
    assert describe("0.5") == "a str '0.5'"
    assert describe("x" * 100) == "a str of 100 characters"
    assert describe({"a": 1}) == "a dict with 1 key"
    assert describe({1, 2}) == "a set of 2 items"
    assert describe([0.5]) == "a list of length 1"


def test_short_cuts_between_words_never_inside_a_number():
    text = "max abs error 0.123456789 exceeds the tolerance 0.000012345"
    assert checks._short(text, 40) == "max abs error 0.123456789 exceeds the..."
    assert checks._short(text, 200) == text


def test_a_case_hint_is_given_for_wrong_values_only():
    cases = [Case("ones", (torch.ones(3),), hint="double it")]

    def reference(x):
        return 2 * x

    def returns_none(x):
        return None

    def returns_a_list(x):
        return [2.0, 2.0, 2.0]

    def raises(x):
        raise RuntimeError("boom")

    def wrong(x):
        return 3 * x

    def hint_of(fn):
        return evaluate("double", fn, reference, cases).message.split("Hint: ")[1]

    assert hint_of(wrong).startswith("double it")
    assert hint_of(returns_none).startswith("your function returned None")
    assert hint_of(returns_a_list).startswith("return a float32 torch.Tensor")
    assert hint_of(raises).startswith("the error is in your code")
