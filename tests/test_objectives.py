"""llmlab.training.objectives: the pretraining collators.

Rates are tested on large batches against tolerances of 5 binomial standard deviations
(sqrt(p (1 - p) / n)), so a correct collator fails with probability ~1e-6 per check and a
collator off by a couple of percentage points fails for sure. Invariants (specials never
masked, labels only where selected, span corruption undone exactly) are tested exactly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llmlab.training import objectives as obj

VOCAB, MASK, PAD, CLS, SEP = 1000, 3, 0, 1, 2
SPECIALS = [PAD, CLS, SEP]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def within(measured: float, p: float, n: int, sigmas: float = 5.0) -> bool:
    return abs(measured - p) <= sigmas * math.sqrt(p * (1 - p) / n)


def batch(rows: int = 64, seq: int = 512, seed: int = 0) -> torch.Tensor:
    ids = torch.randint(4, VOCAB, (rows, seq), generator=gen(seed))
    ids[:, 0], ids[:, -1] = CLS, SEP
    ids[::2, -100:] = PAD  # padding at the end of every other row
    return ids


# --------------------------------------------------------------------------------------------
# causal LM


def test_causal_lm_batch_shifts_and_ignores_padding():
    inputs, targets = obj.causal_lm_batch([[5, 6, 7], [8, 9, 10, 11, 12]], pad_id=PAD)
    assert inputs.tolist() == [[5, 6, PAD, PAD], [8, 9, 10, 11]]
    assert targets.tolist() == [[6, 7, -100, -100], [9, 10, 11, 12]]
    assert inputs.dtype == targets.dtype == torch.int64


def test_causal_lm_batch_max_len_cuts_documents():
    inputs, targets = obj.causal_lm_batch([list(range(10, 30))], max_len=8)
    assert inputs.tolist() == [list(range(10, 18))] and targets.tolist() == [list(range(11, 19))]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(documents=[[1]]), r"documents\[0\]"),
        (dict(documents=[]), "documents"),
        (dict(documents=[[1, 2]], max_len=0), "max_len"),
        (dict(documents=[[1, 2.5]]), r"documents\[0\]"),
    ],
)
def test_causal_lm_batch_errors_name_the_argument(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        obj.causal_lm_batch(**kwargs)


# --------------------------------------------------------------------------------------------
# masked LM


def test_mlm_rates_15_and_80_10_10():
    ids = batch()
    inputs, labels = obj.mlm_mask(ids, VOCAB, MASK, SPECIALS, generator=gen(1))
    eligible = ~torch.isin(ids, torch.tensor(SPECIALS))
    selected = labels != -100
    n_eligible, n_sel = int(eligible.sum()), int(selected.sum())
    assert within(n_sel / n_eligible, 0.15, n_eligible)
    masked = (inputs == MASK) & selected
    kept = (inputs == ids) & selected
    randomised = selected & ~masked & ~kept
    # a random token equals the original with probability 1 / n_ordinary: fold that in
    p_kept = 0.1 + 0.1 / (VOCAB - 4)
    assert within(int(masked.sum()) / n_sel, 0.8, n_sel)
    assert within(int(kept.sum()) / n_sel, p_kept, n_sel)
    assert within(int(randomised.sum()) / n_sel, 0.1 - 0.1 / (VOCAB - 4), n_sel)


def test_mlm_specials_and_padding_never_selected_and_never_changed():
    ids = batch()
    inputs, labels = obj.mlm_mask(ids, VOCAB, MASK, SPECIALS, mlm_prob=0.9, generator=gen(2))
    special = torch.isin(ids, torch.tensor(SPECIALS))
    assert (labels[special] == -100).all()
    assert torch.equal(inputs[special], ids[special])


def test_mlm_labels_only_at_selected_positions_and_inputs_unchanged_elsewhere():
    ids = batch()
    inputs, labels = obj.mlm_mask(ids, VOCAB, MASK, SPECIALS, generator=gen(3))
    selected = labels != -100
    assert torch.equal(labels[selected], ids[selected])
    assert torch.equal(inputs[~selected], ids[~selected])


def test_mlm_random_tokens_are_never_special():
    ids = batch(seq=256)
    inputs, labels = obj.mlm_mask(
        ids, VOCAB, MASK, SPECIALS, mlm_prob=1.0, mask_frac=0.0, random_frac=1.0, generator=gen(4)
    )
    selected = labels != -100
    assert not torch.isin(inputs[selected], torch.tensor([*SPECIALS, MASK])).any()
    # and they are spread over the whole ordinary vocabulary
    assert len(inputs[selected].unique()) > 0.9 * (VOCAB - 4)


def test_mlm_is_deterministic_and_does_not_touch_its_input():
    ids = batch(rows=8, seq=64)
    before = ids.clone()
    a = obj.mlm_mask(ids, VOCAB, MASK, SPECIALS, generator=gen(5))
    b = obj.mlm_mask(ids, VOCAB, MASK, SPECIALS, generator=gen(5))
    c = obj.mlm_mask(ids, VOCAB, MASK, SPECIALS, generator=gen(6))
    assert torch.equal(ids, before)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_numpy_numbers_work_like_python_ones():
    ids = batch(rows=4, seq=50)
    a = obj.mlm_mask(ids, VOCAB, MASK, SPECIALS, mlm_prob=0.3, generator=gen(9))
    b = obj.mlm_mask(
        ids, np.int64(VOCAB), MASK, SPECIALS, mlm_prob=np.float32(0.3), generator=gen(9)
    )
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    padded = obj.pad_sequences(
        [np.array([5, 6, 7]).tolist(), list(np.array([8], dtype=np.int64))], 0
    )
    assert padded.tolist() == [[5, 6, 7], [8, 0, 0]]
    with pytest.raises(TypeError, match=r"sequences\[0\]: expected an int, got float 1.5"):
        obj.pad_sequences([[1.5]], 0)


def test_mlm_follows_its_documented_draws():
    ids = batch(rows=4, seq=50)
    g = gen(7)
    selected = torch.rand(ids.shape, generator=g) < 0.15
    selected &= ~torch.isin(ids, torch.tensor([*SPECIALS, MASK]))
    u = torch.rand(ids.shape, generator=g)
    ordinary = torch.tensor([i for i in range(VOCAB) if i not in (*SPECIALS, MASK)])
    random_ids = ordinary[torch.randint(len(ordinary), ids.shape, generator=g)]
    expected = torch.where(selected & (u < 0.8), MASK, ids)
    expected = torch.where(selected & (u >= 0.8) & (u < 0.9), random_ids, expected)
    inputs, labels = obj.mlm_mask(ids, VOCAB, MASK, SPECIALS, generator=gen(7))
    assert torch.equal(inputs, expected)
    assert torch.equal(labels, torch.where(selected, ids, -100))


def test_mlm_matches_transformers_collator_statistically():
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {f"t{i}": i for i in range(4, VOCAB)} | {
        "[PAD]": PAD,
        "[CLS]": CLS,
        "[SEP]": SEP,
        "[MASK]": MASK,
    }
    core = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[PAD]"))
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="[PAD]",
        mask_token="[MASK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
    )
    collator = transformers.DataCollatorForLanguageModeling(tok, mlm=True, mlm_probability=0.15)
    ids = batch()
    torch.manual_seed(0)
    hf_inputs, hf_labels = collator.torch_mask_tokens(ids.clone())
    inputs, labels = obj.mlm_mask(ids, VOCAB, MASK, SPECIALS, generator=gen(8))
    for x, y in ((hf_inputs, hf_labels), (inputs, labels)):
        sel = y != -100
        n = int(sel.sum())
        eligible = int((~torch.isin(ids, torch.tensor(SPECIALS))).sum())
        assert within(n / eligible, 0.15, eligible)
        assert within(float((x[sel] == MASK).float().mean()), 0.8, n)
        assert within(float((x[sel] == ids[sel]).float().mean()), 0.1, n, sigmas=6)
        assert (y[torch.isin(ids, torch.tensor(SPECIALS))] == -100).all()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(input_ids=[[5, 6]]), TypeError, "input_ids"),
        (dict(input_ids=torch.rand(2, 3)), TypeError, "input_ids"),
        (dict(input_ids=torch.tensor([[5, VOCAB]])), ValueError, "input_ids"),
        (dict(vocab_size=1.5), TypeError, "vocab_size"),
        (dict(mask_id=VOCAB), ValueError, "mask_id"),
        (dict(special_ids=3), TypeError, "special_ids"),
        (dict(special_ids=[VOCAB + 1]), ValueError, "special_ids"),
        (dict(mlm_prob=1.5), ValueError, "mlm_prob"),
        (dict(mask_frac=0.95, random_frac=0.1), ValueError, "mask_frac"),
        (dict(generator=0), TypeError, "generator"),
        (dict(special_ids=list(range(VOCAB))), ValueError, "special_ids"),
    ],
)
def test_mlm_errors_name_the_argument(kwargs, error, match):
    args = (
        dict(
            input_ids=torch.tensor([[5, 6, 7]]),
            vocab_size=VOCAB,
            mask_id=MASK,
            special_ids=SPECIALS,
        )
        | kwargs
    )
    with pytest.raises(error, match=match):
        obj.mlm_mask(**args)


# --------------------------------------------------------------------------------------------
# next-sentence prediction


def make_documents(n_docs: int = 200, seed: int = 0) -> list[list[tuple[int, int]]]:
    g = gen(seed)
    lengths = torch.randint(1, 12, (n_docs,), generator=g).tolist()
    return [[(d, i) for i in range(n)] for d, n in enumerate(lengths)]  # sentence = (doc, index)


def test_nsp_half_positives_and_negatives_from_other_documents():
    docs = make_documents()
    a, b, is_next = obj.nsp_pairs(docs, gen(0))
    n = sum(len(d) - 1 for d in docs)
    assert len(a) == len(b) == len(is_next) == n
    assert within(float(is_next.float().mean()), 0.5, n)
    for (da, ia), (db, ib), label in zip(a, b, is_next.tolist(), strict=True):
        if label == 1:
            assert (db, ib) == (da, ia + 1)
        else:
            assert db != da  # never from the same document
    assert a == [s for d in docs for s in d[:-1]]  # every consecutive pair, in order


def test_nsp_negatives_cover_the_other_documents():
    docs = make_documents(20)
    _, b, is_next = obj.nsp_pairs(docs * 5, gen(1))
    sources = {s[0] for s, y in zip(b, is_next.tolist(), strict=True) if y == 0}
    assert len(sources) == 20


def test_nsp_is_deterministic():
    docs = make_documents(50)
    first, second = obj.nsp_pairs(docs, gen(2)), obj.nsp_pairs(docs, gen(2))
    assert first[1] == second[1] and torch.equal(first[2], second[2])


@pytest.mark.parametrize(
    "documents, kwargs, match",
    [
        ([[[1], [2]]], {}, "documents"),
        ([[[1]], []], {}, r"documents\[1\]"),
        ("text", {}, "documents"),
        ([[[1]], [[2]]], dict(next_prob=2.0), "next_prob"),
        ([[[1]], [[2]]], dict(generator=1), "generator"),
    ],
)
def test_nsp_errors_name_the_argument(documents, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        obj.nsp_pairs(documents, **kwargs)


def test_bert_pair_batch_layout_and_truncation():
    ids, types, attn = obj.bert_pair_batch(
        [[10, 11, 12], list(range(20, 40))], [[13], [50, 51]], CLS, SEP, PAD, max_len=10
    )
    assert ids[0].tolist() == [CLS, 10, 11, 12, SEP, 13, SEP, PAD, PAD, PAD]
    assert types[0].tolist() == [0, 0, 0, 0, 0, 1, 1, 0, 0, 0]
    assert attn[0].tolist() == [1] * 7 + [0] * 3
    assert ids[1].tolist() == [CLS, 20, 21, 22, 23, 24, SEP, 50, 51, SEP]  # longer side cut
    with pytest.raises(ValueError, match="sentences_b"):
        obj.bert_pair_batch([[1]], [], CLS, SEP, PAD, 10)
    with pytest.raises(ValueError, match="max_len"):
        obj.bert_pair_batch([[1]], [[2]], CLS, SEP, PAD, 4)


# --------------------------------------------------------------------------------------------
# span corruption


SENTINELS = list(range(2000, 2100))


def spans_of(mask: torch.Tensor) -> list[int]:
    lengths, run = [], 0
    for m in mask.tolist() + [False]:
        if m:
            run += 1
        elif run:
            lengths.append(run)
            run = 0
    return lengths


def test_span_mask_density_and_mean_span_length():
    g = gen(0)
    masks = [obj.span_corruption_mask(200, 0.15, 3.0, g) for _ in range(300)]
    for m in masks:
        assert int(m.sum()) == 30  # round(200 * 0.15), exactly
        assert len(spans_of(m)) == 10  # round(30 / 3)
        assert not m[0]  # starts with kept tokens
    lengths = [n for m in masks for n in spans_of(m)]
    assert sum(lengths) / len(lengths) == 3.0
    assert max(lengths) > 6 and min(lengths) == 1  # random lengths, not all 3


def test_span_mask_other_densities():
    for length, density, mean in ((512, 0.3, 8.0), (37, 0.5, 2.0), (10, 0.15, 3.0)):
        m = obj.span_corruption_mask(length, density, mean, gen(1))
        n = max(round(length * density), 1)
        assert int(m.sum()) == n
        assert len(spans_of(m)) == max(round(n / mean), 1)


@pytest.mark.parametrize("seed", range(20))
def test_span_corruption_is_undone_exactly(seed):
    g = gen(seed)
    length = int(torch.randint(2, 300, (1,), generator=g))
    ids = torch.randint(0, 1000, (length,), generator=g).tolist()
    inputs, targets = obj.span_corruption(ids, SENTINELS, 0.15, 3.0, g)
    assert obj.undo_span_corruption(inputs, targets, SENTINELS).tolist() == ids
    n_spans = int(torch.isin(inputs, torch.tensor(SENTINELS)).sum())
    assert targets[0] == SENTINELS[0] and targets[-1] == SENTINELS[n_spans]
    assert len(inputs) + len(targets) == length + 2 * n_spans + 1


def test_span_corruption_t5_example_layout():
    ids = list(range(10, 20))
    inputs, targets = obj.span_corruption(ids, SENTINELS, 0.3, 1.5, gen(3))
    mask = obj.span_corruption_mask(10, 0.3, 1.5, gen(3))
    kept = [t for t in inputs.tolist() if t not in SENTINELS]
    assert kept == [t for t, m in zip(ids, mask.tolist(), strict=True) if not m]
    noise = [t for t in targets.tolist() if t not in SENTINELS]
    assert noise == [t for t, m in zip(ids, mask.tolist(), strict=True) if m]


def test_span_corruption_is_deterministic():
    ids = list(range(100, 400))
    a = obj.span_corruption(ids, SENTINELS, generator=gen(4))
    b = obj.span_corruption(ids, SENTINELS, generator=gen(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: obj.span_corruption_mask(1), "length"),
        (lambda: obj.span_corruption_mask(10, noise_density=0.0), "noise_density"),
        (lambda: obj.span_corruption_mask(10, mean_span=0.5), "mean_span"),
        (lambda: obj.span_corruption(list(range(100)), [2000, 2001]), "sentinel_ids"),
        (lambda: obj.span_corruption([5, 2000, 7], SENTINELS), "ids"),
        (lambda: obj.span_corruption([5, 6], [2000, 2000]), "sentinel_ids"),
        (lambda: obj.span_corruption("abc", SENTINELS), "ids"),
        (lambda: obj.undo_span_corruption([5, 2000], [7, 2000], SENTINELS), "targets"),
    ],
)
def test_span_corruption_errors_name_the_argument(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_span_corruption_batch_teacher_forcing():
    docs = [list(range(10, 40)), list(range(50, 70))]
    enc, attn, dec_in, labels = obj.span_corruption_batch(docs, SENTINELS, PAD, generator=gen(5))
    pairs = [obj.span_corruption(d, SENTINELS, generator=g) for g in [gen(5)] for d in docs]
    for row, (inputs, targets) in enumerate(pairs):
        n, m = len(inputs), len(targets)
        assert enc[row, :n].tolist() == inputs.tolist() and attn[row].sum() == n
        assert labels[row, :m].tolist() == targets.tolist()
        assert (labels[row, m:] == -100).all()
        assert dec_in[row, 0] == PAD and dec_in[row, 1:m].tolist() == targets[:-1].tolist()
    _, _, dec_in, _ = obj.span_corruption_batch(docs, SENTINELS, PAD, generator=gen(5), start_id=7)
    assert dec_in[:, 0].tolist() == [7, 7]  # an explicit decoder start token


def test_pad_sequences():
    out = obj.pad_sequences([[1, 2], [3]], -1, length=4)
    assert out.tolist() == [[1, 2, -1, -1], [3, -1, -1, -1]]
    with pytest.raises(ValueError, match="length"):
        obj.pad_sequences([[1, 2, 3]], 0, length=2)
