"""Checks of chapter 03's MLM masking-collator lab (and T5's span sampler),
``solutions/03_pretraining/04_mlm_collator.ipynb``.

    lab 04_mlm_collator: mlm_mask, random_segmentation

``mlm_mask(input_ids, vocab_size, mask_id, special_ids, mlm_prob, generator)`` returns
``(inputs, labels)``, both int64 and shaped like ``input_ids``, drawing exactly three tensors of
random numbers from ``generator``, each of the full shape, in this order:

1. ``select = torch.rand(shape) < mlm_prob``, minus every position whose id is in
   ``special_ids`` (which holds the pad, [CLS], [SEP] and [MASK] ids);
2. ``u = torch.rand(shape)``: a selected position becomes ``mask_id`` when ``u < 0.8``, a random
   token when ``0.8 <= u < 0.9``, and keeps its id when ``u >= 0.9``;
3. ``torch.randint(len(ordinary), shape)`` picks, for every position, an index into
   ``ordinary``, the sorted ids of ``range(vocab_size)`` that are not in ``special_ids``; the
   random token of a position is ``ordinary[index]``.

``labels`` hold the original id at the selected positions and -100 everywhere else;
``input_ids`` itself is left unchanged. These are the draws of :func:`llmlab.training.objectives.mlm_mask`
(tested), so a student's function equals the library's for the same generator.

``random_segmentation(n, k, generator)`` splits ``n`` tokens into ``k`` non-empty runs, as T5
draws its span lengths: ``torch.randperm(n - 1, generator=generator)``, its first ``k - 1``
values plus 1, sorted, are the cut points; the lengths are the gaps between 0, the cuts and
``n`` (a list of ``k`` ints >= 1 summing to ``n``). ``llmlab.training.objectives.span_corruption_mask``
draws its noise and kept runs this way.

The mlm_mask check first tests what must hold whatever the draws (special tokens untouched, labels only
at selected positions, no special random token, the 15% and 80/10/10 rates within 5 binomial
standard deviations on the large cases) and explains the first violation in words; only then
does it compare with the reference exactly, which also catches draws made in another order.

Both references delegate to :mod:`llmlab.training.objectives`. The library also never selects
``mask_id`` when it is missing from ``special_ids``; the lab always lists it there, so the
two agree on every case.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from llmlab.checks import Case, CheckResult, _inputs, describe, run_check
from llmlab.training import objectives
from llmlab.training.losses import IGNORE_INDEX

#: Library collators: an answer that calls one is flagged.
FORBID_MLM = ("llmlab.training.objectives", "transformers.data.data_collator")
FORBID_SEGMENTATION = ("llmlab.training.objectives",)

MASK_FRAC, RANDOM_FRAC = 0.8, 0.1
#: Rates are only tested where at least this many positions are eligible (else too noisy).
MIN_FOR_RATES = 2000
SIGMAS = 5.0


def reference_mlm_mask(
    input_ids: torch.Tensor,
    vocab_size: int,
    mask_id: int,
    special_ids: Sequence[int],
    mlm_prob: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's 80/10/10 masking with the draws in the documented order; (inputs, labels)."""
    return objectives.mlm_mask(input_ids, vocab_size, mask_id, special_ids, mlm_prob, generator)


# --------------------------------------------------------------------------------------------
# Cases: token ids with special tokens and padding where real batches have them


def _ids(
    rows: int,
    seq: int,
    vocab_size: int,
    specials: Sequence[int],
    seed: int,
    pad: int | None = None,
    cls: int | None = None,
    sep: int | None = None,
) -> torch.Tensor:
    g = _inputs.generator(seed)
    ordinary = torch.tensor([i for i in range(vocab_size) if i not in set(specials)])
    ids = ordinary[torch.randint(len(ordinary), (rows, seq), generator=g)]
    if cls is not None:
        ids[:, 0] = cls
    if sep is not None:
        ids[:, seq // 2] = sep
        ids[:, -1] = sep
    if pad is not None:
        for r in range(rows):  # a different amount of padding per row
            n_pad = int(torch.randint(0, seq // 3 + 1, (1,), generator=g))
            if n_pad:
                ids[r, seq - n_pad :] = pad
    return ids


def _cases() -> list[Case]:
    # (vocab, mask, specials): pad 0, cls 1, sep 2, mask 3 unless said otherwise
    bert = (1000, 3, [0, 1, 2, 3])
    tiny = (12, 11, [0, 1, 2, 11])  # the mask id last, as some vocabularies have it
    return [
        Case(
            "tiny vocabulary of 12 (4 special), mlm_prob 0.5, 32 x 128",
            (_ids(32, 128, 12, tiny[2], 3, pad=0, cls=1, sep=2), *tiny, 0.5, 3),
        ),
        Case(
            "a batch of 64 x 256 with [CLS], [SEP] and padding, mlm_prob 0.15",
            (_ids(64, 256, 1000, bert[2], 1, pad=0, cls=1, sep=2), *bert, 0.15, 1),
        ),
        Case(
            "mlm_prob 0.0: nothing is selected",
            (_ids(4, 32, 1000, bert[2], 2, pad=0, cls=1), *bert, 0.0, 2),
        ),
        Case(
            "one short sentence, vocab 50",
            (_ids(1, 24, 50, [0, 1, 2, 3], 0, cls=1, sep=2), 50, 3, [0, 1, 2, 3], 0.15, 0),
        ),
        Case(
            "mlm_prob 1.0: every ordinary token is selected, 16 x 200",
            (_ids(16, 200, 1000, bert[2], 4, pad=0, cls=1, sep=2), *bert, 1.0, 4),
        ),
        Case(
            "a 3-D input (2, 4, 300), mlm_prob 0.3",
            (_ids(8, 300, 1000, bert[2], 5, pad=0, cls=1).reshape(2, 4, 300), *bert, 0.3, 5),
        ),
        Case(
            "another seed: 48 x 256, mlm_prob 0.15",
            (_ids(48, 256, 1000, bert[2], 6, pad=0, cls=1, sep=2), *bert, 0.15, 6),
        ),
    ]


# --------------------------------------------------------------------------------------------
# Comparing: invariants and rates first, in words; then exact equality


def _run(fn: Callable, input_ids, vocab_size, mask_id, special_ids, mlm_prob, seed) -> dict:
    original = input_ids.clone()
    out = fn(
        input_ids,
        vocab_size,
        mask_id,
        special_ids,
        mlm_prob,
        _inputs.generator(seed),
    )
    # A value of the wrong type fails as one, not with a hint about the masking rules.
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise TypeError(f"mlm_mask returned {describe(out)}, expected a tuple (inputs, labels)")
    for name, t in zip(("inputs", "labels"), out, strict=True):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.int64:
            raise TypeError(f"{name} is {describe(t)}, expected an int64 torch.Tensor of ids")
    return {
        "out": out,
        "ids": original,
        "vocab_size": vocab_size,
        "mask_id": mask_id,
        "specials": list(special_ids),
        "mlm_prob": mlm_prob,
    }


def _outside(measured: float, p: float, n: int) -> bool:
    return abs(measured - p) > SIGMAS * math.sqrt(p * (1 - p) / n) + 1e-12


def _problem(received: dict, expected: dict) -> str | None:
    ids, out = received["ids"], received["out"]
    shape = tuple(ids.shape)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        return f"expected a tuple (inputs, labels), received {describe(out)}"
    inputs, labels = out
    for name, t in (("inputs", inputs), ("labels", labels)):
        if not isinstance(t, torch.Tensor):
            return f"{name}: expected a torch.Tensor, received {describe(t)}"
        if tuple(t.shape) != shape:
            return f"{name}: expected shape {shape} (that of input_ids), received {tuple(t.shape)}"
        if t.dtype != torch.int64:
            return f"{name}: expected dtype int64, received {str(t.dtype).removeprefix('torch.')}"
    specials = torch.tensor(received["specials"])
    special = torch.isin(ids, specials)
    labelled = labels != IGNORE_INDEX
    if (labelled & special).any():
        value = int(labels[labelled & special][0])
        return (
            f"{int((labelled & special).sum())} special or padding positions got a label "
            f"(e.g. {value}) instead of -100: special tokens (ids in special_ids) must never "
            "be selected, and unselected positions get the label -100"
        )
    if (inputs[special] != ids[special]).any():
        return "special or padding tokens were changed in inputs: they must never be touched"
    if (labels[labelled] != ids[labelled]).any():
        return "labels must be the ORIGINAL token id at selected positions (and -100 elsewhere)"
    if (inputs[~labelled] != ids[~labelled]).any():
        n = int((inputs[~labelled] != ids[~labelled]).sum())
        return (
            f"{n} positions were changed in inputs but have no label (-100): every changed "
            "position must be a selected one, with its original id as label"
        )
    replaced = labelled & (inputs != ids) & (inputs != received["mask_id"])
    if torch.isin(inputs[replaced], specials).any():
        return (
            "a random replacement is a special token: draw random tokens only from the "
            "ordinary ids (not in special_ids)"
        )
    if ((inputs < 0) | (inputs >= received["vocab_size"])).any():
        return f"inputs hold ids outside [0, vocab_size={received['vocab_size']})"
    eligible = int((~special).sum())
    n_sel = int(labelled.sum())
    p = received["mlm_prob"]
    if eligible >= MIN_FOR_RATES and 0 < p < 1 and _outside(n_sel / eligible, p, eligible):
        return (
            f"{100 * n_sel / eligible:.1f}% of the ordinary positions have a label, expected "
            f"{100 * p:g}% (mlm_prob): only SELECTED positions get a label, -100 elsewhere"
        )
    if p == 1 and n_sel != eligible:
        return f"mlm_prob 1.0 must select every ordinary position: {n_sel} of {eligible} selected"
    if n_sel >= MIN_FOR_RATES // 4:
        n_ordinary = received["vocab_size"] - len(set(received["specials"]))
        rates = (
            ("became [MASK]", inputs[labelled] == received["mask_id"], MASK_FRAC),
            (
                "kept their token",
                inputs[labelled] == ids[labelled],
                RANDOM_FRAC + RANDOM_FRAC / n_ordinary,
            ),
        )
        for what, hit, want in rates:
            share = float(hit.float().mean())
            if _outside(share, want, n_sel):
                return (
                    f"{100 * share:.1f}% of the selected positions {what}, expected about "
                    f"{100 * want:.0f}%: 80% [MASK] (u < 0.8), 10% random (0.8 <= u < 0.9), "
                    "10% unchanged"
                )
    exp_inputs, exp_labels = expected["out"]
    if not (torch.equal(inputs, exp_inputs) and torch.equal(labels, exp_labels)):
        n = int(((inputs != exp_inputs) | (labels != exp_labels)).sum())
        return (
            f"the rules hold but {n} positions differ from the reference's draws: draw "
            "exactly torch.rand(shape) (selection), then torch.rand(shape) (the 80/10/10 "
            "split), then torch.randint(len(ordinary), shape), all with generator=generator, "
            "and compare with < mlm_prob, < 0.8 and [0.8, 0.9)"
        )
    return None


def check_mlm_mask(mlm_mask: Callable) -> CheckResult:
    """Check ``mlm_mask(input_ids, vocab_size, mask_id, special_ids, mlm_prob, generator)``."""
    return run_check(
        "mlm_mask",
        mlm_mask,
        reference_mlm_mask,
        _cases(),
        hint="select with torch.rand(shape) < mlm_prob and never a special id; split the "
        "selected positions with a second torch.rand(shape): < 0.8 [MASK], < 0.9 random "
        "ordinary token, else unchanged; labels = original id where selected, else -100. "
        "Build new tensors (torch.where or .clone()), never write into input_ids.",
        run=_run,
        compare=_problem,
        arg_names=("input_ids", "vocab_size", "mask_id", "special_ids", "mlm_prob", "seed"),
        forbid=FORBID_MLM,
    )


# --------------------------------------------------------------------------------------------
# random_segmentation (T5's span lengths)


def reference_random_segmentation(
    n: int, k: int, generator: torch.Generator | None = None
) -> list[int]:
    """``k`` positive ints summing to ``n``: the gaps between k - 1 distinct random cut points.

    The library keeps this sampler private: :func:`llmlab.training.objectives.span_corruption_mask`
    draws its noise and kept runs through it.
    """
    return objectives.random_segmentation(n, k, generator)


def _run_segmentation(fn: Callable, n: int, k: int, seed: int, repeats: int) -> dict:
    g = _inputs.generator(seed)
    out = []
    for _ in range(repeats):
        got = fn(n, k, g)
        ints = (
            not got.is_floating_point() and got.dim() == 1
            if isinstance(got, torch.Tensor)
            else isinstance(got, (list, tuple))
            and all(isinstance(x, int) and not isinstance(x, bool) for x in got)
        )
        if not ints:  # a type slip fails as one, not with a hint about the cut points
            raise TypeError(
                f"random_segmentation returned {describe(got)}, expected a list of ints"
            )
        out.append(got)
    return {"out": out, "n": n, "k": k}


def _segmentation_problem(received: dict, expected: dict) -> str | None:
    n, k = received["n"], received["k"]
    for got in received["out"]:
        if isinstance(got, torch.Tensor):
            got = got.tolist()
        if not isinstance(got, (list, tuple)) or not all(
            isinstance(x, int) and not isinstance(x, bool) for x in got
        ):
            return f"expected a list of {k} ints, received {describe(got)}"
        if len(got) != k:
            return f"expected {k} lengths (one per span), received {len(got)}: {list(got)[:12]}"
        if any(x < 1 for x in got):
            return (
                f"every length must be >= 1 (a span of 0 tokens is no span), received "
                f"{list(got)[:12]}: the k - 1 cut points must be DISTINCT values in 1 .. n - 1"
            )
        if sum(got) != n:
            return f"the lengths must sum to n={n}, received sum {sum(got)}"
    got = [list(x.tolist() if isinstance(x, torch.Tensor) else x) for x in received["out"]]
    if got != expected["out"]:
        return (
            "the lengths are valid but differ from the reference's draws: take "
            "torch.randperm(n - 1, generator=generator), its first k - 1 values + 1, sorted, "
            "as cut points, and return the gaps between 0, the cuts and n"
        )
    return None


def check_random_segmentation(random_segmentation: Callable) -> CheckResult:
    """Check ``random_segmentation(n, k, generator) -> list of k ints >= 1 summing to n``.

    Each case calls the function several times with one generator (as a collator does).
    """
    cases = [
        Case("k=n: every length is 1", (6, 6, 3, 3)),
        Case("n=10 into k=3, 5 calls", (10, 3, 0, 5)),
        Case("n=30 noise tokens into k=10 spans (T5 on 200 tokens), 20 calls", (30, 10, 1, 20)),
        Case("k=1: one span of all n tokens", (7, 1, 2, 3)),
        Case("n=2, k=2", (2, 2, 4, 3)),
        Case("n=170 kept tokens into k=10 runs, 20 calls", (170, 10, 5, 20)),
        Case("n=1000 into k=300, 3 calls", (1000, 300, 6, 3)),
    ]
    return run_check(
        "random_segmentation",
        random_segmentation,
        reference_random_segmentation,
        cases,
        hint="cuts = sorted((torch.randperm(n - 1, generator=generator)[: k - 1] + 1).tolist()); "
        "edges = [0, *cuts, n]; return the k differences of consecutive edges as ints.",
        run=_run_segmentation,
        compare=_segmentation_problem,
        arg_names=("n", "k", "seed", "repeats"),
        forbid=FORBID_SEGMENTATION,
    )
