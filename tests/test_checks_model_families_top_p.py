"""The checks of chapter 02's decoding lab (llmlab.checks.model_families.top_p).

For every check: the reference passes, other correct answers pass too, plausible wrong answers
(mutants) fail on the case that exposes them, a NotImplementedError stub reports "not
implemented", garbage never raises, and the notebook's global seed does not move.
"""

from __future__ import annotations

import torch
from check_contract import CheckContract, student_copy
from transformers.generation.logits_process import TopPLogitsWarper

from llmlab.checks.model_families import top_p as dc

CHECKS = {
    "check_apply_temperature": (dc.check_apply_temperature, dc.reference_apply_temperature),
    "check_top_k_filter": (dc.check_top_k_filter, dc.reference_top_k_filter),
    "check_top_p_filter": (dc.check_top_p_filter, dc.reference_top_p_filter),
    "check_sample": (dc.check_sample, dc.reference_sample),
}


GARBAGE = {
    "returns a list": lambda *a, **k: [0.1, 0.9],
    "returns a number": lambda *a, **k: 0.5,
    "returns a string": lambda *a, **k: "token",
    "returns a numpy array": lambda x, *a, **k: x.numpy(),
    "returns the wrong shape": lambda *a, **k: torch.zeros(3, 2, 1),
    "returns a 0-dim tensor": lambda *a, **k: torch.tensor(1.0),
    "returns int64 zeros": lambda x, *a, **k: torch.zeros_like(x, dtype=torch.int64),
    "returns NaN": lambda x, *a, **k: torch.full_like(x, float("nan")),
    "returns all -inf": lambda x, *a, **k: torch.full_like(x, float("-inf")),
    "takes no arguments": lambda: torch.zeros(1),
}


class TestContract(CheckContract):
    MODULES = (dc,)
    CHECKS = CHECKS
    GARBAGE = GARBAGE
    MIN_CASES = 6


NEG_INF = float("-inf")

# --------------------------------------------------------------------------------------------
# apply_temperature


def temperature_out_of_place(logits, temperature):
    return torch.div(logits, temperature)


def temperature_multiplies(logits, temperature):
    return logits * temperature


def temperature_in_place(logits, temperature):
    logits /= temperature
    return logits


def temperature_returns_probs(logits, temperature):
    return (logits / temperature).softmax(-1)


def temperature_ignored(logits, temperature):
    return logits.clone()


def temperature_to_float32(logits, temperature):
    return logits.float() / temperature


# --------------------------------------------------------------------------------------------
# top_k_filter


def top_k_by_sorting(logits, k):
    kth = logits.sort(dim=-1, descending=True).values[..., k - 1 : k]
    return torch.where(logits >= kth, logits, torch.full_like(logits, NEG_INF))


def top_k_keeps_k_plus_one(logits, k):
    sorted_logits = logits.sort(dim=-1, descending=True).values
    kth = sorted_logits[..., min(k, logits.shape[-1] - 1)][..., None]  # off by one
    return logits.masked_fill(logits < kth, NEG_INF)


def top_k_keeps_k_minus_one(logits, k):
    kth = logits.topk(k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits <= kth, NEG_INF) if k < logits.shape[-1] else logits.clone()


def top_k_exactly_k_by_index(logits, k):
    out = torch.full_like(logits, NEG_INF)
    index = logits.topk(k, dim=-1).indices
    return out.scatter(-1, index, logits.gather(-1, index))


def top_k_zero_instead_of_minus_inf(logits, k):
    kth = logits.topk(k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, 0.0)


def top_k_smallest(logits, k):
    kth = (-logits).topk(k, dim=-1).values[..., -1:]
    return logits.masked_fill(-logits < kth, NEG_INF)


def top_k_in_place(logits, k):
    kth = logits.topk(k, dim=-1).values[..., -1:]
    return logits.masked_fill_(logits < kth, NEG_INF)


def top_k_returns_probs(logits, k):
    kth = logits.topk(k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, NEG_INF).softmax(-1)


# --------------------------------------------------------------------------------------------
# top_p_filter: a correct answer written the way the lab suggests, and mutants of it


def _sorted_masses(logits):
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    return sorted_logits, order, probs, probs.cumsum(dim=-1)


def top_p_by_cutoff(logits, p):
    sorted_logits, _, probs, cumulative = _sorted_masses(logits)
    keep = cumulative - probs < p
    cutoff = sorted_logits.masked_fill(~keep, float("inf")).amin(dim=-1, keepdim=True)
    return logits.masked_fill(logits < cutoff, NEG_INF)


def top_p_drops_the_crossing_token(logits, p):
    sorted_logits, _, _, cumulative = _sorted_masses(logits)
    keep = cumulative < p
    keep[..., 0] = True
    cutoff = sorted_logits.masked_fill(~keep, float("inf")).amin(dim=-1, keepdim=True)
    return logits.masked_fill(logits < cutoff, NEG_INF)


def top_p_no_token_guaranteed(logits, p):
    sorted_logits, _, _, cumulative = _sorted_masses(logits)
    keep = cumulative <= p  # the first token is removed when its own mass exceeds p
    cutoff = sorted_logits.masked_fill(~keep, float("inf")).amin(dim=-1, keepdim=True)
    return logits.masked_fill(logits < cutoff, NEG_INF)


def top_p_sorted_ascending(logits, p):
    sorted_logits, _ = logits.sort(dim=-1)
    probs = sorted_logits.softmax(-1)
    keep = probs.cumsum(-1) - probs < p
    keep[..., 0] = True
    cutoff = sorted_logits.masked_fill(~keep, float("inf")).amin(dim=-1, keepdim=True)
    return logits.masked_fill(logits < cutoff, NEG_INF)


def top_p_mask_not_mapped_back(logits, p):
    _, _, probs, cumulative = _sorted_masses(logits)
    keep = cumulative - probs < p
    return logits.masked_fill(~keep, NEG_INF)  # the mask is in sorted order


def top_p_returns_probs(logits, p):
    sorted_logits, _, probs, cumulative = _sorted_masses(logits)
    keep = cumulative - probs < p
    cutoff = sorted_logits.masked_fill(~keep, float("inf")).amin(dim=-1, keepdim=True)
    kept_probs = logits.softmax(-1).masked_fill(logits < cutoff, 0.0)
    return kept_probs / kept_probs.sum(-1, keepdim=True)


def top_p_in_place(logits, p):
    sorted_logits, _, probs, cumulative = _sorted_masses(logits)
    keep = cumulative - probs < p
    cutoff = sorted_logits.masked_fill(~keep, float("inf")).amin(dim=-1, keepdim=True)
    return logits.masked_fill_(logits < cutoff, NEG_INF)


def top_p_scatter_without_ties(logits, p):
    _, order, probs, cumulative = _sorted_masses(logits)
    keep_sorted = cumulative - probs < p
    keep = keep_sorted.scatter(-1, order, keep_sorted)
    return logits.masked_fill(~keep, NEG_INF)


def top_p_over_the_batch(logits, p):
    # one nucleus for the whole batch: sorts along dim 0
    sorted_logits, _ = logits.sort(dim=0, descending=True)
    probs = sorted_logits.softmax(0)
    keep = probs.cumsum(0) - probs < p
    cutoff = sorted_logits.masked_fill(~keep, float("inf")).amin(dim=0, keepdim=True)
    return logits.masked_fill(logits < cutoff, NEG_INF)


def top_p_large_negative(logits, p):
    sorted_logits, _, probs, cumulative = _sorted_masses(logits)
    keep = cumulative - probs < p
    cutoff = sorted_logits.masked_fill(~keep, float("inf")).amin(dim=-1, keepdim=True)
    return logits.masked_fill(logits < cutoff, -1e9)


def top_p_in_float32(logits, p):
    return top_p_by_cutoff(logits.float(), p)


# --------------------------------------------------------------------------------------------
# sample


def sample_with_keepdim_squeeze(logits, generator):
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def sample_argmax(logits, generator):
    return logits.argmax(-1)


def sample_global_rng(logits, generator):
    with torch.random.fork_rng(devices=[]):  # the global RNG, in a state fixed for the test
        torch.manual_seed(1234)
        return torch.multinomial(logits.softmax(-1), 1).squeeze(-1)


def sample_keeps_dim(logits, generator):
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)


def sample_from_logits_directly(logits, generator):
    return torch.multinomial(logits, 1, generator=generator).squeeze(-1)


def sample_wrong_dim(logits, generator):
    probs = logits.softmax(0)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def sample_as_float(logits, generator):
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1).float()


# --------------------------------------------------------------------------------------------
# What the contract runs: other correct answers pass, each mutant fails on its case

CROSSING = "the token that crosses p is kept: probs [0.5, 0.3, 0.15, 0.05], p = 0.7"

CORRECT_VARIANTS = [
    ("check_apply_temperature", temperature_out_of_place),
    ("check_top_k_filter", top_k_by_sorting),
    ("check_top_p_filter", top_p_by_cutoff),
    ("check_sample", sample_with_keepdim_squeeze),
]

MUTANTS = [
    # (check, mutant, the first case that must fail, words the message must contain)
    (
        "check_apply_temperature",
        temperature_multiplies,
        "T = 0.5 sharpens: (2, 10)",
        "max abs error",
    ),
    ("check_apply_temperature", temperature_in_place, "T = 0.5 sharpens: (2, 10)", "in place"),
    (
        "check_apply_temperature",
        temperature_returns_probs,
        "T = 1 changes nothing",
        "looks like probabilities",
    ),
    ("check_apply_temperature", temperature_ignored, "T = 0.5 sharpens: (2, 10)", "max abs error"),
    ("check_apply_temperature", temperature_to_float32, "float64 logits", "dtype float64"),
    (
        "check_top_k_filter",
        top_k_keeps_k_plus_one,
        "k = 1 keeps the argmax",
        "where inf was expected",
    ),
    ("check_top_k_filter", top_k_keeps_k_minus_one, "k = 1 keeps the argmax", "received -inf"),
    (
        "check_top_k_filter",
        top_k_exactly_k_by_index,
        "ties at the k-th value: [3, 2, 2, 2, 1], k = 2",
        "tied values all stay",
    ),
    ("check_top_k_filter", top_k_zero_instead_of_minus_inf, "k = 1 keeps the argmax", "received 0"),
    ("check_top_k_filter", top_k_smallest, "k = 1 keeps the argmax", "received -inf"),
    ("check_top_k_filter", top_k_in_place, "k = 1 keeps the argmax", "in place"),
    (
        "check_top_k_filter",
        top_k_returns_probs,
        "k = 1 keeps the argmax",
        "looks like probabilities",
    ),
    (
        "check_top_p_filter",
        top_p_drops_the_crossing_token,
        CROSSING,
        "mass of the tokens BEFORE it",
    ),
    ("check_top_p_filter", top_p_no_token_guaranteed, CROSSING, "received -inf"),
    ("check_top_p_filter", top_p_sorted_ascending, CROSSING, "descending order"),
    (
        "check_top_p_filter",
        top_p_mask_not_mapped_back,
        "p = 0.8 on logits in random order (4, 12)",
        "map it back to vocabulary order",
    ),
    ("check_top_p_filter", top_p_returns_probs, CROSSING, "looks like probabilities"),
    ("check_top_p_filter", top_p_in_place, CROSSING, "in place"),
    ("check_top_p_filter", top_p_over_the_batch, CROSSING, "where inf was expected"),
    ("check_top_p_filter", top_p_large_negative, CROSSING, "received -1e+09"),
    (
        "check_top_p_filter",
        top_p_scatter_without_ties,
        "ties: the last kept logit is shared by three tokens",
        "tied with the last kept one",
    ),
    ("check_top_p_filter", top_p_in_float32, "float64 logits", "dtype float64"),
    ("check_sample", sample_argmax, "one row of 5 logits", "values differ"),
    ("check_sample", sample_global_rng, "one row of 5 logits", "values differ"),
    ("check_sample", sample_keeps_dim, "one row of 5 logits", "received shape (1, 1)"),
    ("check_sample", sample_from_logits_directly, "one row of 5 logits", "RuntimeError"),
    ("check_sample", sample_wrong_dim, "4 rows with different distributions", "values differ"),
    ("check_sample", sample_as_float, "one row of 5 logits", "dtype int64"),
]


# --------------------------------------------------------------------------------------------
# Answers that call the library processors: flagged


def top_p_transformers(logits, p):
    return TopPLogitsWarper(top_p=p)(None, logits.clone())


FORBIDDEN = [
    # (check, an answer that calls a forbidden op, the op as the message names it)
    (
        "check_apply_temperature",
        student_copy(dc.reference_apply_temperature),
        "llmlab.inference.generation.apply_temperature",
    ),
    (
        "check_top_k_filter",
        student_copy(dc.reference_top_k_filter),
        "llmlab.inference.generation.top_k_filter",
    ),
    (
        "check_top_p_filter",
        student_copy(dc.reference_top_p_filter),
        "llmlab.inference.generation.top_p_filter",
    ),
    (
        "check_top_p_filter",
        top_p_transformers,
        "transformers.generation.logits_process.TopPLogitsWarper.__init__",
    ),
    (
        "check_sample",
        student_copy(dc.reference_sample),
        "llmlab.inference.generation.sample_from_logits",
    ),
]


def test_a_check_names_the_generator_by_its_seed():
    result = dc.check_sample(sample_argmax)
    assert "generator=Generator(seed=1)" in result.message


def test_top_p_cases_avoid_float_boundaries():
    # Every case's nucleus is the same whether the masses are summed in float32 or float64,
    # so an answer that sums in another order or precision is not failed by rounding.
    captured = []
    result = dc.check_top_p_filter(
        lambda logits, p: captured.append((logits, p)) or top_p_by_cutoff(logits, p)
    )
    assert result.passed and len(captured) == result.n_cases
    for logits, p in captured:
        assert torch.equal(
            top_p_by_cutoff(logits.double(), p).isinf(),
            dc.reference_top_p_filter(logits, p).isinf(),
        )
