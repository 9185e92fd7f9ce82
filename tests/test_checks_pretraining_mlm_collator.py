"""The check of chapter 03's MLM masking-collator lab (llmlab.checks.pretraining.mlm_collator).

The reference passes and equals llmlab.training.objectives.mlm_mask; other correct answers pass; each
plausible wrong answer (mutant) fails on the case that exposes it, with a message that names
the mistake; the contract (stub, garbage, global seed) holds.
"""

from __future__ import annotations

import torch
from check_contract import CheckContract, student_copy

from llmlab.checks.pretraining import mlm_collator as co
from llmlab.training import objectives

CHECKS = {"check_mlm_mask": (co.check_mlm_mask, co.reference_mlm_mask)}


GARBAGE = {
    "returns a number": lambda *a, **k: 3,
    "returns one tensor": lambda ids, *a, **k: ids.clone(),
    "returns (ids, ids)": lambda ids, *a, **k: (ids.clone(), ids.clone()),
    "returns floats": lambda ids, *a, **k: (ids.float(), ids.float()),
    "returns the wrong shape": lambda ids, *a, **k: (ids.flatten(), ids.flatten()),
    "returns a string pair": lambda *a, **k: ("a", "b"),
    "takes no arguments": lambda: None,
    "is not a function": None,
}


class TestContract(CheckContract):
    MODULES = (co,)
    CHECKS = CHECKS
    GARBAGE = GARBAGE
    MIN_CASES = 7


# --------------------------------------------------------------------------------------------
# Correct variants


def mask_with_library(input_ids, vocab_size, mask_id, special_ids, mlm_prob, generator):
    return objectives.mlm_mask(input_ids, vocab_size, mask_id, special_ids, mlm_prob, generator)


def mask_with_assignments(input_ids, vocab_size, mask_id, special_ids, mlm_prob, generator):
    shape = input_ids.shape
    selected = torch.rand(shape, generator=generator) < mlm_prob
    for s in special_ids:
        selected[input_ids == s] = False
    u = torch.rand(shape, generator=generator)
    ordinary = torch.tensor(sorted(set(range(vocab_size)) - set(special_ids)))
    random_tokens = ordinary[torch.randint(len(ordinary), shape, generator=generator)]
    inputs = input_ids.clone()
    labels = torch.full_like(input_ids, -100)
    labels[selected] = input_ids[selected]
    inputs[selected & (u < 0.8)] = mask_id
    swap = selected & (u >= 0.8) & (u < 0.9)
    inputs[swap] = random_tokens[swap]
    return inputs, labels


def mask_with_bernoulli(input_ids, vocab_size, mask_id, special_ids, mlm_prob, generator):
    # torch.bernoulli on the CPU compares one uniform draw per position with p: the same draw
    shape = input_ids.shape
    selected = torch.bernoulli(torch.full(shape, float(mlm_prob)), generator=generator).bool()
    selected &= ~torch.isin(input_ids, torch.tensor(list(special_ids)))
    u = torch.rand(shape, generator=generator)
    ordinary = torch.tensor(sorted(set(range(vocab_size)) - set(special_ids)))
    random_tokens = ordinary[torch.randint(len(ordinary), shape, generator=generator)]
    inputs = torch.where(selected & (u < 0.8), mask_id, input_ids)
    inputs = torch.where(selected & (u >= 0.8) & (u < 0.9), random_tokens, inputs)
    return inputs, torch.where(selected, input_ids, -100)


CORRECT_VARIANTS = [
    ("check_mlm_mask", mask_with_assignments),
    ("check_mlm_mask", mask_with_bernoulli),
]


def test_reference_equals_the_library():
    ids = torch.randint(4, 500, (8, 100), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = 1
    for seed in range(3):
        ours = co.reference_mlm_mask(
            ids, 500, 3, [0, 1, 2, 3], 0.2, torch.Generator().manual_seed(seed)
        )
        lib = objectives.mlm_mask(ids, 500, 3, [0, 1, 2], 0.2, torch.Generator().manual_seed(seed))
        assert torch.equal(ours[0], lib[0]) and torch.equal(ours[1], lib[1])


# --------------------------------------------------------------------------------------------
# Mutants: the same skeleton with one slip each


def make(
    name,
    *,
    skip_specials=True,
    split=(0.8, 0.9),
    random_pool="ordinary",
    labels="selected",
    in_place=False,
    draws="rand",
):
    def mlm_mask(input_ids, vocab_size, mask_id, special_ids, mlm_prob, generator):
        shape = input_ids.shape
        r = torch.rand(shape, generator=generator)
        selected = r < mlm_prob
        if skip_specials:
            selected &= ~torch.isin(input_ids, torch.tensor(list(special_ids)))
        # one draw for both decisions: r / mlm_prob is uniform on the selected positions
        u = r / mlm_prob if draws == "reuse" else torch.rand(shape, generator=generator)
        if random_pool == "ordinary":
            ordinary = torch.tensor(sorted(set(range(vocab_size)) - set(special_ids)))
            random_tokens = ordinary[torch.randint(len(ordinary), shape, generator=generator)]
        else:  # the whole vocabulary, special tokens included
            random_tokens = torch.randint(vocab_size, shape, generator=generator)
        if split == "all":
            to_mask, to_random = selected, torch.zeros_like(selected)
        elif split == "swapped":  # random first, then [MASK]: the same rates, other draws
            to_random = selected & (u < 0.1)
            to_mask = selected & (u >= 0.1) & (u < 0.9)
        else:
            to_mask = selected & (u < split[0])
            to_random = selected & (u >= split[0]) & (u < split[1])
        inputs = input_ids if in_place else input_ids.clone()
        original = input_ids.clone()
        inputs[to_mask] = mask_id
        inputs[to_random] = random_tokens[to_random]
        if labels == "selected":
            out_labels = torch.where(selected, original, -100)
        elif labels == "everywhere":  # every ordinary position, specials left at -100
            special = torch.isin(original, torch.tensor(list(special_ids)))
            out_labels = torch.where(special, -100, original)
        elif labels == "changed":  # only where the token changed
            out_labels = torch.where(inputs != original, original, -100)
        elif labels == "zero":  # 0 instead of -100 where not selected
            out_labels = torch.where(selected, original, 0)
        return (inputs.clone() if in_place else inputs), out_labels

    mlm_mask.__name__ = name
    return mlm_mask


TINY = "tiny vocabulary of 12 (4 special), mlm_prob 0.5, 32 x 128"
MUTANTS = [
    # (check, mutant, the first case that must fail, words the message must contain)
    ("check_mlm_mask", make("all_selected_become_mask", split="all"), TINY, "became [MASK]"),
    ("check_mlm_mask", make("split_10_10_80", split=(0.1, 0.2)), TINY, "became [MASK]"),
    (
        "check_mlm_mask",
        make("masks_special_tokens", skip_specials=False),
        TINY,
        "must never be selected",
    ),
    (
        "check_mlm_mask",
        make("labels_everywhere", labels="everywhere"),
        TINY,
        "of the ordinary positions have a label",
    ),
    (
        "check_mlm_mask",
        make("labels_only_where_changed", labels="changed"),
        TINY,
        "of the ordinary positions have a label",
    ),
    (
        "check_mlm_mask",
        make("zero_instead_of_minus_100", labels="zero"),
        TINY,
        "must never be selected",
    ),
    (
        "check_mlm_mask",
        make("random_from_whole_vocab", random_pool="all"),
        TINY,
        "random replacement is a special token",
    ),
    (
        "check_mlm_mask",
        make("writes_into_input_ids", in_place=True),
        TINY,
        "changed its input in place",
    ),
    (
        "check_mlm_mask",
        make("random_and_mask_bands_swapped", split="swapped"),
        TINY,
        "differ from the reference's draws",
    ),
    (
        "check_mlm_mask",
        make("reuses_the_selection_draw", draws="reuse"),
        TINY,
        "differ from the reference's draws",
    ),
]


def labels_as_floats(input_ids, vocab_size, mask_id, special_ids, mlm_prob, generator):
    # torch.where(selected, input_ids, float("nan"))-style labels: float, not int64 ids
    inputs, labels = make("skeleton")(
        input_ids, vocab_size, mask_id, special_ids, mlm_prob, generator
    )
    return inputs, labels.float()


MUTANTS.append(("check_mlm_mask", labels_as_floats, TINY, "expected an int64 torch.Tensor"))


def test_the_skeleton_of_the_mutants_is_correct():
    assert co.check_mlm_mask(make("skeleton")).passed


# --------------------------------------------------------------------------------------------
# random_segmentation


def segmentation_loop(n, k, generator):
    cuts = sorted(int(c) + 1 for c in torch.randperm(n - 1, generator=generator)[: k - 1])
    lengths, previous = [], 0
    for cut in [*cuts, n]:
        lengths.append(cut - previous)
        previous = cut
    return lengths


def segmentation_library(n, k, generator):
    return objectives.random_segmentation(n, k, generator)


def segmentation_zero_lengths(n, k, generator):  # cut points may repeat: empty spans
    cuts = sorted(torch.randint(1, n, (k - 1,), generator=generator).tolist())
    edges = [0, *cuts, n]
    return [b - a for a, b in zip(edges, edges[1:], strict=False)]


def segmentation_cut_at_zero(n, k, generator):  # cuts in 0 .. n - 2: a first span of length 0
    cuts = sorted(torch.randperm(n - 1, generator=generator)[: k - 1].tolist())
    edges = [0, *cuts, n]
    return [b - a for a, b in zip(edges, edges[1:], strict=False)]


def segmentation_unsorted(n, k, generator):  # forgot to sort the cut points
    cuts = (torch.randperm(n - 1, generator=generator)[: k - 1] + 1).tolist()
    edges = [0, *cuts, n]
    return [b - a for a, b in zip(edges, edges[1:], strict=False)]


def segmentation_k_cuts(n, k, generator):  # k cut points: k + 1 spans
    cuts = sorted((torch.randperm(n - 1, generator=generator)[:k] + 1).tolist())
    edges = [0, *cuts, n]
    return [b - a for a, b in zip(edges, edges[1:], strict=False)]


def segmentation_other_draw(n, k, generator):  # valid lengths, another random recipe
    lengths = [1] * k
    for i in torch.randint(k, (n - k,), generator=generator).tolist():
        lengths[i] += 1
    return lengths


def segmentation_tensor(n, k, generator):  # returns a tensor of lengths: fine too
    cuts = (torch.randperm(n - 1, generator=generator)[: k - 1] + 1).sort().values
    return torch.diff(torch.cat([torch.tensor([0]), cuts, torch.tensor([n])]))


CHECKS["check_random_segmentation"] = (
    co.check_random_segmentation,
    co.reference_random_segmentation,
)
CORRECT_VARIANTS += [
    ("check_random_segmentation", segmentation_loop),
    ("check_random_segmentation", segmentation_tensor),
]
ALL_ONES, FIRST = "k=n: every length is 1", "n=10 into k=3, 5 calls"
MUTANTS += [
    ("check_random_segmentation", segmentation_zero_lengths, ALL_ONES, "DISTINCT"),
    ("check_random_segmentation", segmentation_cut_at_zero, ALL_ONES, "must be >= 1"),
    ("check_random_segmentation", segmentation_unsorted, ALL_ONES, "must be >= 1"),
    ("check_random_segmentation", segmentation_k_cuts, FIRST, "expected 3 lengths"),
    ("check_random_segmentation", segmentation_other_draw, FIRST, "differ from the reference's"),
]


def test_span_mask_uses_the_same_segmentation():
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    for n, k in ((30, 10), (170, 10), (5, 1), (9, 1)):
        assert co.reference_random_segmentation(n, k, g1) == objectives.random_segmentation(
            n, k, g2
        )


# --------------------------------------------------------------------------------------------
# Answers that call a library collator: flagged (mask_with_library and segmentation_library
# compute the right values)


FORBIDDEN = [
    # (check, an answer that calls a forbidden op, the op as the message names it)
    ("check_mlm_mask", mask_with_library, "llmlab.training.objectives.mlm_mask"),
    (
        "check_mlm_mask",
        student_copy(co.reference_mlm_mask),
        "llmlab.training.objectives.mlm_mask",
    ),
    (
        "check_random_segmentation",
        segmentation_library,
        "llmlab.training.objectives.random_segmentation",
    ),
]


def test_the_library_answers_would_pass_unflagged(monkeypatch):
    monkeypatch.setattr(co, "FORBID_MLM", ())
    monkeypatch.setattr(co, "FORBID_SEGMENTATION", ())
    assert co.check_mlm_mask(mask_with_library).passed
    assert co.check_random_segmentation(segmentation_library).passed


def test_a_value_of_the_wrong_type_is_told_so_without_a_hint_about_masking():
    message = co.check_mlm_mask(labels_as_floats).message
    assert "(TypeError: labels is a tensor of shape (32, 128) float32, expected an int64" in message
    assert "torch.rand(shape) < mlm_prob" not in message  # the masking hint does not fit
    message = co.check_random_segmentation(lambda n, k, generator: "1 2 3").message
    assert "returned a str '1 2 3', expected a list of ints" in message
    assert "randperm" not in message
