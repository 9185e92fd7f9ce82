"""llmlab.inference.generation: logit processors (== transformers' warpers), generate, beam search, metrics.

Small deterministic fake models test the loop's logic (eos per row, the cache, seeds); the real
SmolLM2 (through HFCausalLM, and as our own Llama) tests parity with transformers' generate.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from llmlab import evaluation as ev
from llmlab.inference import generation as gen
from llmlab.models import KVCache, Llama, LlamaConfig


def _logits(batch: int = 4, vocab: int = 500, seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    return scale * torch.randn(batch, vocab, generator=torch.Generator().manual_seed(seed))


def _ids(batch: int = 4, seq: int = 30, vocab: int = 500, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------
# Parity with transformers' processors on random logits


@pytest.mark.parametrize("t", [0.3, 0.7, 1.0, 1.5, 4.0])
def test_temperature_equals_transformers(t):
    logits = _logits()
    assert torch.equal(gen.apply_temperature(logits, t), TemperatureLogitsWarper(t)(None, logits))


@pytest.mark.parametrize("k", [1, 2, 10, 50, 499, 500, 1000])
def test_top_k_equals_transformers(k):
    logits = _logits(seed=k)
    assert torch.equal(gen.top_k_filter(logits, k), TopKLogitsWarper(k)(None, logits))


@pytest.mark.parametrize("p", [0.01, 0.1, 0.5, 0.8, 0.9, 0.95, 0.999])
@pytest.mark.parametrize("scale", [0.5, 3.0, 10.0])
def test_top_p_equals_transformers(p, scale):
    logits = _logits(batch=8, scale=scale, seed=int(100 * p))
    assert torch.equal(gen.top_p_filter(logits, p), TopPLogitsWarper(p)(None, logits))


def test_top_p_equals_transformers_on_smollm2s_vocabulary():
    # 49152 tokens: the cumulative sum's float32 rounding decides the cut; ours must match.
    logits = _logits(batch=8, vocab=49152, seed=12, scale=4.0)
    for p in (0.5, 0.9, 0.99, 0.999):
        assert torch.equal(gen.top_p_filter(logits, p), TopPLogitsWarper(p)(None, logits))


@pytest.mark.parametrize("min_p", [0.0, 0.01, 0.1, 0.5, 1.0])
def test_min_p_equals_transformers(min_p):
    logits = _logits(seed=3)
    assert torch.equal(gen.min_p_filter(logits, min_p), MinPLogitsWarper(min_p)(None, logits))


@pytest.mark.parametrize("penalty", [0.8, 1.0, 1.2, 2.0])
def test_repetition_penalty_equals_transformers(penalty):
    logits, ids = _logits(seed=4), _ids()
    expected = RepetitionPenaltyLogitsProcessor(penalty)(ids, logits.clone())
    assert torch.equal(gen.apply_repetition_penalty(logits, ids, penalty), expected)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_no_repeat_ngram_equals_transformers(n):
    logits, ids = _logits(seed=5, vocab=12), _ids(seq=40, vocab=3)  # 3 ids: many repeats
    expected = NoRepeatNGramLogitsProcessor(n)(ids, logits.clone())
    got = gen.no_repeat_ngram_filter(logits, ids, n)
    assert torch.equal(got, expected)
    assert got.isinf().any()


def test_processors_with_minus_inf_already_present_equal_transformers():
    logits = _logits(seed=6)
    logits[:, ::3] = float("-inf")
    assert torch.equal(gen.top_p_filter(logits, 0.9), TopPLogitsWarper(0.9)(None, logits))
    assert torch.equal(gen.top_k_filter(logits, 20), TopKLogitsWarper(20)(None, logits))
    assert torch.equal(gen.min_p_filter(logits, 0.1), MinPLogitsWarper(0.1)(None, logits))


# --------------------------------------------------------------------------------------------
# What the filters promise


def test_top_p_keeps_the_token_that_crosses_p():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    kept = gen.top_p_filter(logits, 0.7).isfinite()  # 0.5 < 0.7, 0.5 + 0.3 >= 0.7
    assert kept.tolist() == [[True, True, False, False]]
    kept = gen.top_p_filter(logits, 0.5).isfinite()  # the first token alone reaches 0.5
    assert kept.tolist() == [[True, False, False, False]]


def test_top_p_extremes():
    logits = _logits(seed=7)
    assert torch.equal(gen.top_p_filter(logits, 1.0), logits)
    tiny = gen.top_p_filter(logits, 1e-9)
    assert torch.equal(tiny.isfinite(), logits == logits.amax(-1, keepdim=True))


def test_ties_are_kept_by_value_and_do_not_depend_on_order():
    logits = torch.tensor([[2.0, 1.0, 1.0, 1.0, 0.0]])
    # top-k: the 2nd largest is 1.0, shared by three tokens: all stay.
    assert gen.top_k_filter(logits, 2).isfinite().tolist() == [[True, True, True, True, False]]
    # top-p: p just above the first token's mass crosses inside the tie: the whole tie stays.
    p_first = logits.softmax(-1)[0, 0].item()
    assert gen.top_p_filter(logits, p_first + 1e-3).isfinite().sum() == 4
    perm = torch.randperm(5, generator=torch.Generator().manual_seed(0))
    for fn in (lambda x: gen.top_k_filter(x, 2), lambda x: gen.top_p_filter(x, p_first + 1e-3)):
        assert torch.equal(fn(logits[:, perm]), fn(logits)[:, perm])


@pytest.mark.parametrize(
    "fn",
    [
        lambda x: gen.top_k_filter(x, 1),
        lambda x: gen.top_p_filter(x, 1e-6),
        lambda x: gen.min_p_filter(x, 1.0),
    ],
)
def test_filters_always_keep_the_most_likely_token(fn):
    logits = _logits(seed=8)
    out = fn(logits)
    assert out.isfinite().sum(-1).min() >= 1
    assert torch.equal(out.argmax(-1), logits.argmax(-1))


def test_processors_leave_their_input_alone_and_keep_dtype():
    logits, ids = _logits(seed=9).half(), _ids()
    before = logits.clone()
    outs = [
        gen.apply_temperature(logits, 0.5),
        gen.top_k_filter(logits, 5),
        gen.top_p_filter(logits, 0.9),
        gen.min_p_filter(logits, 0.1),
        gen.apply_repetition_penalty(logits, ids, 1.3),
        gen.no_repeat_ngram_filter(logits, ids, 2),
    ]
    assert torch.equal(logits, before)
    assert all(o.dtype == torch.float16 and o.shape == logits.shape for o in outs)


def test_filters_accept_any_leading_dims():
    logits = _logits(seed=10).reshape(2, 2, 500)
    flat = gen.top_p_filter(logits.reshape(4, 500), 0.8).reshape(2, 2, 500)
    assert torch.equal(gen.top_p_filter(logits, 0.8), flat)


def test_repetition_penalty_moves_seen_tokens_down():
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.5]])
    out = gen.apply_repetition_penalty(logits, torch.tensor([[0, 1, 1]]), 2.0)
    assert out.tolist() == [[1.0, -4.0, 1.0, 0.5]]


def test_process_logits_applies_sampling_knobs_only_when_sampling():
    logits, ids = _logits(seed=11), _ids()
    assert torch.equal(gen.process_logits(logits, ids, temperature=0.5, top_k=3), logits)
    sampled = gen.process_logits(logits, ids, do_sample=True, temperature=0.5, top_k=3)
    assert torch.equal(sampled, gen.top_k_filter(logits / 0.5, 3))


@pytest.mark.parametrize(
    "call, exc, name",
    [
        (lambda: gen.apply_temperature(_logits(), 0.0), ValueError, "temperature"),
        (lambda: gen.apply_temperature(_logits(), "hot"), TypeError, "temperature"),
        (lambda: gen.top_k_filter(_logits(), 0), ValueError, "k"),
        (lambda: gen.top_k_filter(_logits(), 2.5), TypeError, "k"),
        (lambda: gen.top_p_filter(_logits(), 0.0), ValueError, "p"),
        (lambda: gen.top_p_filter(_logits(), 1.5), ValueError, "p"),
        (lambda: gen.top_p_filter(torch.ones(3, 4, dtype=torch.long), 0.5), TypeError, "logits"),
        (lambda: gen.top_p_filter([0.1, 0.2], 0.5), TypeError, "logits"),
        (lambda: gen.min_p_filter(_logits(), -0.1), ValueError, "min_p"),
        (
            lambda: gen.apply_repetition_penalty(_logits(), _ids(batch=3), 1.2),
            ValueError,
            "input_ids",
        ),
        (
            lambda: gen.apply_repetition_penalty(_logits(), _ids().float(), 1.2),
            TypeError,
            "input_ids",
        ),
        (lambda: gen.apply_repetition_penalty(_logits(), _ids(), 0.0), ValueError, "penalty"),
        (lambda: gen.no_repeat_ngram_filter(_logits(), _ids(), 0), ValueError, "n"),
        (lambda: ev.distinct_n([1, 2, 3], 0), ValueError, "n"),
    ],
)
def test_bad_arguments_are_named(call, exc, name):
    with pytest.raises(exc, match=f"^{name}:"):
        call()


# --------------------------------------------------------------------------------------------
# Fake models with llmlab's interface


class ToyLM:
    """logits at position t = A[token t] + B[token t-1] + P[t]: depends on history and position,
    so a cache that loses tokens, misplaces positions or is not reordered changes the output.
    The cache stores token ids (as a 1-dim "key") in a real KVCache."""

    def __init__(self, vocab: int = 13, seed: int = 0, scale: float = 2.0):
        g = torch.Generator().manual_seed(seed)
        self.vocab = vocab
        self.a, self.b = (scale * torch.randn(vocab, vocab, generator=g) for _ in range(2))
        self.p = torch.randn(256, vocab, generator=g)
        self.calls: list[tuple[int, ...]] = []

    def new_cache(self) -> KVCache:
        return KVCache(1)

    def __call__(self, input_ids, cache=None):
        self.calls.append(tuple(input_ids.shape))
        start = 0 if cache is None else cache.length
        if cache is not None:
            key = input_ids[:, None, :, None].float()
            full = cache.update(0, key, key)[0][:, 0, :, 0].long()
        else:
            full = input_ids
        prev = torch.cat([torch.zeros_like(full[:, :1]), full[:, :-1]], dim=1)
        seq = input_ids.shape[1]
        positions = torch.arange(start, start + seq)
        return self.a[full[:, start:]] + self.b[prev[:, start:]] + self.p[positions]


class SuccessorLM:
    """Always predicts (last token + 1) mod vocab, with a clear margin."""

    def __init__(self, vocab: int = 10):
        self.vocab = vocab

    def new_cache(self) -> KVCache:
        return KVCache(1)

    def __call__(self, input_ids, cache=None):
        if cache is not None:
            key = input_ids[:, None, :, None].float()
            cache.update(0, key, key)
        return 5.0 * torch.nn.functional.one_hot((input_ids + 1) % self.vocab, self.vocab).float()


def _greedy_reference(model, ids, steps):
    """Greedy decoding written out, no cache."""
    for _ in range(steps):
        ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def test_greedy_with_and_without_cache_equal_the_plain_loop():
    model, prompt = ToyLM(), torch.tensor([[1, 2, 3], [4, 4, 0]])
    cached = gen.generate(model, prompt, 20)
    model.calls.clear()
    uncached = gen.generate(model, prompt, 20, use_cache=False)
    assert [c[1] for c in model.calls] == list(range(3, 23))  # the whole text each step
    assert torch.equal(cached, uncached)
    assert torch.equal(cached, _greedy_reference(model, prompt, 20)[:, 3:])
    model.calls.clear()
    gen.generate(model, prompt, 5)
    assert model.calls == [(2, 3)] + [(2, 1)] * 4  # prefill, then one token a step


def test_eos_stops_each_row_and_pads_after_it():
    model = SuccessorLM(vocab=10)
    out = gen.generate(model, torch.tensor([[0], [5], [3]]), 20, eos_token_id=7, pad_token_id=9)
    assert out.tolist() == [
        [1, 2, 3, 4, 5, 6, 7],
        [6, 7, 9, 9, 9, 9, 9],
        [4, 5, 6, 7, 9, 9, 9],
    ]
    # several eos ids; the default padding is the first of them
    out = gen.generate(model, torch.tensor([[0], [5]]), 20, eos_token_id=[3, 8])
    assert out.tolist() == [[1, 2, 3], [6, 7, 8]]


def test_max_new_tokens_and_timings():
    timings: list[float] = []
    out = gen.generate(ToyLM(), torch.tensor([[1, 2]]), 6, timings=timings)
    assert out.shape == (1, 6) and len(timings) == 6 and all(t > 0 for t in timings)


def test_seeded_sampling_is_reproducible():
    model, prompt = ToyLM(scale=0.5), torch.tensor([[1, 2, 3]] * 4)
    settings = dict(do_sample=True, temperature=1.2, top_p=0.95)
    a = gen.generate(model, prompt, 30, generator=7, **settings)
    b = gen.generate(model, prompt, 30, generator=torch.Generator().manual_seed(7), **settings)
    c = gen.generate(model, prompt, 30, generator=8, **settings)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len({tuple(row) for row in a.tolist()}) > 1  # rows sample independently
    torch.manual_seed(3)
    d = gen.generate(model, prompt, 30, **settings)  # None: torch's global RNG
    torch.manual_seed(3)
    assert torch.equal(d, gen.generate(model, prompt, 30, **settings))


def test_sampling_with_top_k_1_is_greedy():
    model, prompt = ToyLM(), torch.tensor([[5, 6]])
    greedy = gen.generate(model, prompt, 15)
    assert torch.equal(
        gen.generate(model, prompt, 15, do_sample=True, top_k=1, generator=0), greedy
    )


def test_repetition_penalty_and_no_repeat_ngram_break_loops():
    model, prompt = ToyLM(seed=3), torch.tensor([[1]])
    plain = gen.generate(model, prompt, 60)
    assert ev.repetition_rate(plain, 4) > 0.5  # greedy on a 13-token vocabulary loops
    penalised = gen.generate(model, prompt, 60, repetition_penalty=3.0)
    assert ev.distinct_n(penalised, 1) >= ev.distinct_n(plain, 1)
    no_repeat = gen.generate(model, prompt, 60, no_repeat_ngram_size=3)
    assert ev.repetition_rate(torch.cat([prompt, no_repeat], 1), 3) == 0.0


def test_generate_rejects_bad_input():
    model = ToyLM()
    with pytest.raises(ValueError, match="input_ids\\[None\\]"):
        gen.generate(model, torch.tensor([1, 2]), 3)
    with pytest.raises(ValueError, match="^max_new_tokens:"):
        gen.generate(model, torch.tensor([[1, 2]]), 0)
    with pytest.raises(ValueError, match="^temperature:"):
        gen.generate(model, torch.tensor([[1, 2]]), 3, do_sample=True, temperature=0.0)
    with pytest.raises(TypeError, match="^generator:"):
        gen.generate(model, torch.tensor([[1, 2]]), 3, do_sample=True, generator="seed")
    with pytest.raises(ValueError, match="^eos_token_id:"):
        gen.generate(model, torch.tensor([[1, 2]]), 3, eos_token_id=-1)
    with pytest.raises(ValueError, match=r"^input_ids: expected seq >= 1"):
        gen.generate(model, torch.zeros(1, 0, dtype=torch.long), 3)


def test_numpy_numbers_work_like_python_ones():
    model, prompt = ToyLM(scale=0.5), torch.tensor([[1, 2, 3]] * 2)
    python = dict(do_sample=True, temperature=1.2, top_k=5, top_p=0.9, eos_token_id=4, generator=7)
    numpy = dict(do_sample=True, temperature=np.float32(1.2), top_k=np.int64(5),
                 top_p=np.float64(0.9), eos_token_id=np.int64(4), generator=np.int64(7))  # fmt: skip
    expected = gen.generate(model, prompt, 12, **python)
    assert torch.equal(gen.generate(model, prompt, np.int64(12), **numpy), expected)
    beams = gen.beam_search(model, prompt, 2, 5, length_penalty=0.5)
    numpy_beams = gen.beam_search(
        model, prompt, np.int64(2), np.int32(5), length_penalty=np.float32(0.5)
    )
    assert torch.equal(numpy_beams.new_ids, beams.new_ids)


# --------------------------------------------------------------------------------------------
# Beam search on fake models


def test_beam_search_with_enough_beams_is_exhaustive():
    model, prompt, vocab, steps = ToyLM(vocab=4, scale=1.0), torch.tensor([[1, 2]]), 4, 3
    out = gen.beam_search(
        model, prompt, num_beams=vocab ** (steps - 1), max_new_tokens=steps, length_penalty=0.0
    )
    best, best_lp = None, -math.inf
    for tokens in itertools.product(range(vocab), repeat=steps):
        new = torch.tensor([tokens])
        lp = ev.token_log_probs(model, prompt, new).sum().item()
        if lp > best_lp:
            best, best_lp = tokens, lp
    assert out.new_ids[0].tolist() == list(best)
    assert out.log_probs[0].item() == pytest.approx(best_lp, abs=1e-4)


def test_beam_search_log_probs_are_those_of_its_text():
    # If the cache were not reordered along with the beams, the model would score a beam's
    # next token with another beam's history, and the sum would not match teacher forcing.
    model, prompt = ToyLM(vocab=13, seed=5, scale=1.0), torch.tensor([[3, 1, 4], [1, 5, 9]])
    out = gen.beam_search(model, prompt, num_beams=4, max_new_tokens=12, length_penalty=0.0)
    for b in range(2):
        teacher = ev.token_log_probs(model, prompt[b : b + 1], out.new_ids[b : b + 1]).sum().item()
        assert out.log_probs[b].item() == pytest.approx(teacher, abs=1e-4)
        assert out.scores[b].item() == pytest.approx(teacher, abs=1e-4)  # length_penalty 0
    greedy = gen.generate(model, prompt, 12)
    greedy_lp = ev.token_log_probs(model, prompt, greedy).sum(-1)
    assert (out.log_probs >= greedy_lp - 1e-4).all()


def test_one_beam_with_early_stopping_is_greedy():
    model, prompt = ToyLM(seed=2), torch.tensor([[2, 7]])
    greedy = gen.generate(model, prompt, 15, eos_token_id=4)
    beam = gen.beam_search(model, prompt, 1, 15, eos_token_id=4, early_stopping=True)
    assert beam.new_ids[0, : beam.lengths[0]].tolist() == greedy[0].tolist()


def test_beam_search_stops_at_eos_and_pads():
    # early_stopping=False: poor hypotheses that end early (eos at a -5 logit) fill the
    # finished slots first, then the likely ones replace them.
    out = gen.beam_search(
        SuccessorLM(10), torch.tensor([[0], [5]]), 3, 20, eos_token_id=7, pad_token_id=9
    )
    assert out.new_ids.tolist() == [[1, 2, 3, 4, 5, 6, 7], [6, 7, 9, 9, 9, 9, 9]]
    assert out.lengths.tolist() == [7, 2]


def test_beam_search_rejects_bad_input():
    with pytest.raises(ValueError, match="^num_beams:"):
        gen.beam_search(ToyLM(), torch.tensor([[1]]), 0, 5)
    with pytest.raises(ValueError, match="^early_stopping:"):
        gen.beam_search(ToyLM(), torch.tensor([[1]]), 2, 5, early_stopping="sometimes")


# --------------------------------------------------------------------------------------------
# Metrics


def test_distinct_n_and_repetition_rate_by_hand():
    text = [1, 2, 3, 1, 2, 3]
    assert ev.distinct_n(text, 1) == 0.5
    assert ev.distinct_n(text, 2) == 3 / 5  # (1,2) (2,3) (3,1) (1,2) (2,3)
    assert ev.repetition_rate(text, 2) == pytest.approx(2 / 5)
    assert ev.repetition_rate([1, 2, 3, 4], 2) == 0.0
    # pooled: two identical samples are not diverse; each alone has no repeat
    assert ev.distinct_n([[1, 2, 3], [1, 2, 3]], 2) == 0.5
    assert ev.repetition_rate([[1, 2, 3], [1, 2, 3]], 2) == 0.0
    assert ev.distinct_n(torch.tensor([[1, 2], [3, 4]]), 1) == 1.0
    assert math.isnan(ev.distinct_n([1], 2)) and math.isnan(ev.repetition_rate([1, 2], 4))


def test_token_log_probs_of_a_greedy_text_are_each_steps_maximum():
    model, prompt = ToyLM(), torch.tensor([[1, 2, 3]])
    new = gen.generate(model, prompt, 8)
    lp = ev.token_log_probs(model, prompt, new)
    full = torch.cat([prompt, new], 1)
    steps = model(full)[:, 2:-1].log_softmax(-1)
    assert torch.allclose(lp, steps.amax(-1), atol=1e-6) and lp.shape == (1, 8)
    # the first new token is scored given the prompt: an empty prompt has nothing to give
    with pytest.raises(ValueError, match=r"prompt_ids: expected seq >= 1"):
        ev.token_log_probs(model, prompt[:, :0], new)


# --------------------------------------------------------------------------------------------
# A tiny random Llama of llmlab.models (a real KV cache with RoPE and GQA)


@pytest.fixture(scope="module")
def tiny_llama():
    torch.manual_seed(0)
    model = Llama(
        LlamaConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64)
    ).eval()
    with torch.no_grad():  # peaked logits: no float near-ties between cached and uncached runs
        model.lm_head.weight.mul_(40.0)
    return model


def test_tiny_llama_greedy_and_beams_with_a_real_cache(tiny_llama):
    prompt = torch.tensor([[1, 2, 3, 4], [9, 8, 7, 6]])
    cached = gen.generate(tiny_llama, prompt, 16)
    assert torch.equal(cached, gen.generate(tiny_llama, prompt, 16, use_cache=False))
    out = gen.beam_search(tiny_llama, prompt, 3, 10, length_penalty=0.0)
    teacher = ev.token_log_probs(tiny_llama, prompt, out.new_ids).sum(-1)
    assert torch.allclose(out.log_probs, teacher, atol=1e-3)


# --------------------------------------------------------------------------------------------
# SmolLM2: parity with transformers' generate


@pytest.fixture(scope="module")
def smollm2():
    from llmlab.assets import load_smollm2

    # One thread: batch-1 decoding barely uses a second one, and on a CPU shared with other
    # jobs two spinning threads can be ten times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    hf, tokenizer = load_smollm2(dtype=torch.float32, device="cpu")
    yield hf, gen.HFCausalLM(hf), tokenizer
    torch.set_num_threads(threads)


def _chat_ids(tokenizer, text: str) -> torch.Tensor:
    messages = [{"role": "user", "content": text}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]


def test_hf_cache_adapter(smollm2):
    _, lm, tokenizer = smollm2
    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    cache = lm.new_cache()
    full = lm(ids)
    first = lm(ids[:, :-1], cache=cache)
    assert cache.length == ids.shape[1] - 1 and cache.nbytes() > 0
    last = lm(ids[:, -1:], cache=cache)
    assert torch.allclose(torch.cat([first, last], 1), full, atol=1e-4)
    cache.reorder(torch.tensor([0, 0]))
    cache.crop(3)
    assert cache.length == 3
    with pytest.raises(TypeError, match="^cache:"):
        lm(ids, cache=KVCache(1))


def test_smollm2_greedy_equals_transformers_with_and_without_cache(smollm2):
    hf, lm, tokenizer = smollm2
    ids, n = _chat_ids(tokenizer, "Name three colours."), 10
    for penalty in (1.0, 1.3):
        expected = hf.generate(ids, max_new_tokens=n, do_sample=False, repetition_penalty=penalty)[
            :, ids.shape[1] :
        ]
        assert torch.equal(
            gen.generate(lm, ids, n, eos_token_id=2, repetition_penalty=penalty), expected
        )
    no_cache = gen.generate(lm, ids, n, eos_token_id=2, repetition_penalty=1.3, use_cache=False)
    assert torch.equal(no_cache, expected)


def test_smollm2_sampling_equals_transformers_with_the_same_seed(smollm2):
    hf, lm, tokenizer = smollm2
    ids, n = _chat_ids(tokenizer, "Tell me a story."), 10
    settings = dict(do_sample=True, temperature=0.9, top_k=50, top_p=0.9)
    torch.manual_seed(11)
    expected = hf.generate(ids, max_new_tokens=n, **settings)[:, ids.shape[1] :]
    torch.manual_seed(11)
    assert torch.equal(gen.generate(lm, ids, n, eos_token_id=2, **settings), expected)


@pytest.mark.parametrize(
    "text, num_beams, length_penalty, early_stopping",
    [
        ("What is 2 + 2? Answer with one number.", 3, 1.0, False),  # ends with eos
        ("What is the capital of France?", 2, 0.0, True),
    ],
)
def test_smollm2_beam_search_equals_transformers(
    smollm2, text, num_beams, length_penalty, early_stopping
):
    hf, lm, tokenizer = smollm2
    ids, n = _chat_ids(tokenizer, text), 12
    expected = hf.generate(
        ids,
        max_new_tokens=n,
        do_sample=False,
        num_beams=num_beams,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
    )
    expected = expected[0, ids.shape[1] :]
    out = gen.beam_search(
        lm,
        ids,
        num_beams,
        n,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
        eos_token_id=2,
    )
    assert out.new_ids[0].tolist() == expected.tolist()


def test_our_llama_greedy_with_and_without_cache_equals_transformers(smollm2):
    hf, lm, tokenizer = smollm2
    ours = Llama.from_smollm2()
    ids, n = _chat_ids(tokenizer, "Name three colours."), 8
    cached = gen.generate(ours, ids, n, eos_token_id=2)
    assert torch.equal(cached, gen.generate(ours, ids, n, eos_token_id=2, use_cache=False))
    assert torch.equal(cached, gen.generate(lm, ids, n, eos_token_id=2))


def test_generate_text(smollm2):
    _, lm, tokenizer = smollm2
    text = gen.generate_text(lm, tokenizer, "Say hello.", 4)
    assert isinstance(text, str) and text
    assert gen.generate_text(
        lm, tokenizer, "Once upon a time", 4, chat=False, do_sample=True, seed=1
    ) == gen.generate_text(lm, tokenizer, "Once upon a time", 4, chat=False, do_sample=True, seed=1)
