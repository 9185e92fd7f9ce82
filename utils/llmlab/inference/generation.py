"""Decoding: how a language model's next-token scores become text.

A causal LM gives, for every position, one score (a *logit*) per vocabulary entry; softmax turns
the last position's logits into a probability distribution over the next token. Decoding is the
rule that picks a token from it, appends it, and asks again:

    >>> from llmlab.inference.generation import generate, HFCausalLM
    >>> lm = HFCausalLM(hf_model)                          # or a model of llmlab.models
    >>> new_ids = generate(lm, prompt_ids, 40)             # greedy: always the argmax
    >>> new_ids = generate(lm, prompt_ids, 40, do_sample=True, temperature=0.8, top_p=0.9,
    ...                    generator=0)                    # nucleus sampling, seeded

Greedy decoding is deterministic and tends to loop ("the cat is a cat is a cat ..."); sampling
is diverse but can wander off into unlikely tokens. The knobs between the two are **logit
processors**, pure functions from logits (..., vocab) to new logits, applied in this order
(the order of transformers' ``generate``):

- :func:`apply_repetition_penalty` (CTRL, Keskar et al. 2019): tokens already in the text get
  their logit divided by the penalty when positive, multiplied when negative;
- :func:`no_repeat_ngram_filter`: forbid any token that would repeat an n-gram of the text;
- :func:`apply_temperature`: divide by T; T < 1 sharpens the distribution, T > 1 flattens it;
- :func:`top_k_filter`: keep the k largest logits (Fan et al. 2018);
- :func:`top_p_filter`: keep the smallest set of most likely tokens whose probability reaches p,
  the *nucleus* (Holtzman et al. 2020);
- :func:`min_p_filter`: keep the tokens at least ``min_p`` times as likely as the top one.

A removed token gets the logit ``-inf`` (probability exactly 0). Filters never remove every
token: the most likely one always stays. **Ties** are resolved by value, never by position: a
token whose logit equals that of the last kept token is kept too (so top-k may keep more than k
tokens when logits tie exactly; transformers' top-k does the same), and the result does not
depend on how a sort orders equal values.

:func:`generate` runs the loop with a KV cache (``use_cache=True``: the prompt is processed
once, then each step feeds one token; see :mod:`llmlab.nn.cache`) or without one (each step
recomputes the whole prefix, to measure what the cache saves). :func:`beam_search` keeps the
``num_beams`` best partial texts by total log-probability and reorders the cache as beams
split; it follows transformers' beam search rules, so both return the same tokens.

The model interface is that of :mod:`llmlab.models`: ``model(input_ids, cache=None) -> logits
(batch, seq, vocab)`` and ``model.new_cache()``. :class:`HFCausalLM` gives a transformers
causal LM the same interface. :mod:`llmlab.evaluation` measures what each strategy does to
diversity, loops and likelihood (``distinct_n``, ``repetition_rate``, ``token_log_probs``).
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from llmlab.validate import (
    require_dims,
    require_float,
    require_int,
    require_positive_int,
    require_real,
    require_token_ids,
)

__all__ = [
    "apply_temperature",
    "top_k_filter",
    "top_p_filter",
    "min_p_filter",
    "apply_repetition_penalty",
    "no_repeat_ngram_filter",
    "process_logits",
    "sample_from_logits",
    "generate",
    "beam_search",
    "BeamSearchOutput",
    "HFCausalLM",
    "HFCache",
    "generate_text",
    "greedy_decode",
]

NEG_INF = float("-inf")


# --------------------------------------------------------------------------------------------
# Input checks


def _require_logits(logits: Any, name: str = "logits") -> None:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(
            f"{name}: expected a torch.Tensor (..., vocab), got {type(logits).__name__}"
        )
    if logits.dim() < 1 or logits.shape[-1] < 1:
        raise ValueError(
            f"{name}: expected shape (..., vocab) with vocab >= 1, got {tuple(logits.shape)}"
        )
    require_float(logits, name)


def _require_number(
    value: Any,
    name: str,
    low: float,
    high: float = math.inf,
    *,
    low_open: bool = True,
    high_open: bool = False,
) -> float:
    """``value`` must be a real number in the interval (low, high] (ends as flagged)."""
    value = require_real(value, name)
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if math.isnan(value) or too_low or too_high:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name}: expected a value in {interval}, got {value:g}")
    return value


def _eos_list(eos_token_id: int | Sequence[int] | None) -> list[int]:
    if eos_token_id is None:
        return []
    single = isinstance(eos_token_id, numbers.Integral)
    ids = [eos_token_id] if single else list(eos_token_id)
    if any(isinstance(i, bool) or not isinstance(i, numbers.Integral) or i < 0 for i in ids):
        raise ValueError(
            f"eos_token_id: expected an int >= 0 or a list of them, got {eos_token_id!r}"
        )
    return [int(i) for i in ids]


# --------------------------------------------------------------------------------------------
# Logit processors: (..., vocab) -> new (..., vocab), the input left untouched


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``logits / temperature``: T < 1 sharpens the distribution, T > 1 flattens it.

    The argmax never changes, so greedy decoding ignores the temperature; as T -> 0 sampling
    becomes greedy, as T -> inf it becomes uniform over the vocabulary.
    """
    _require_logits(logits)
    temperature = _require_number(temperature, "temperature", 0.0)
    return logits / temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits of each row, set the others to ``-inf``.

    A logit equal to the k-th largest is kept too (ties are never broken by position), so an
    exact tie can keep more than k tokens. ``k >= vocab`` keeps everything.
    """
    _require_logits(logits)
    k = require_positive_int(k, "k")
    if k >= logits.shape[-1]:
        return logits.clone()
    kth_largest = logits.topk(k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth_largest, NEG_INF)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of most likely tokens whose probability >= p.

    In each row, sort the tokens from most to least likely and keep a token when the mass of
    the tokens *before* it is still below p: the token that crosses p is kept, the ones after
    it are not. The most likely token is always kept, ``p = 1`` keeps every token, and a token
    tied with the last kept one is kept too. Removed tokens get ``-inf``.
    """
    _require_logits(logits)
    p = _require_number(p, "p", 0.0, 1.0)
    if p == 1.0:
        return logits.clone()
    # The mass before a token (in descending order) is 1 - the mass of it and every less likely
    # token: summing from the least likely up, as transformers does, gives the same float32
    # rounding, so both cut at the same token even on a 49k vocabulary.
    ascending = logits.sort(dim=-1).values
    mass_from_bottom = ascending.float().softmax(dim=-1).cumsum(dim=-1)
    keep_sorted = mass_from_bottom > 1.0 - p  # i.e. mass before it < p
    keep_sorted[..., -1] = True  # the most likely token
    # The last kept logit is the cut-off; comparing values maps the mask back to vocab order.
    cutoff = ascending.masked_fill(~keep_sorted, math.inf).amin(dim=-1, keepdim=True)
    return logits.masked_fill(logits < cutoff, NEG_INF)


def min_p_filter(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Keep the tokens whose probability is at least ``min_p`` times that of the most likely.

    The threshold follows the model's confidence: a peaked distribution keeps few tokens, a
    flat one many (Nguyen et al. 2024). ``min_p = 0`` keeps everything.
    """
    _require_logits(logits)
    min_p = _require_number(min_p, "min_p", 0.0, 1.0, low_open=False)
    probs = logits.float().softmax(dim=-1)
    threshold = min_p * probs.amax(dim=-1, keepdim=True)
    return logits.masked_fill(probs < threshold, NEG_INF)


def apply_repetition_penalty(
    logits: torch.Tensor, input_ids: torch.Tensor, penalty: float
) -> torch.Tensor:
    """Make the tokens already present in ``input_ids`` less likely (CTRL's rule).

    logits: (batch, vocab); input_ids: (batch, seq), the text so far (prompt included). A token
    that occurs in row b has its logit divided by ``penalty`` when positive and multiplied by it
    when negative (either way it moves down for penalty > 1), however often it occurred.
    ``penalty = 1`` changes nothing; penalty < 1 rewards repetition.
    """
    require_dims(logits, 2, "logits", "(batch, vocab)")
    require_float(logits, "logits")
    require_token_ids(input_ids, "input_ids", batch=logits.shape[0])
    penalty = _require_number(penalty, "penalty", 0.0)
    seen = logits.gather(-1, input_ids.long())
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return logits.scatter(-1, input_ids.long(), seen)


def no_repeat_ngram_filter(logits: torch.Tensor, input_ids: torch.Tensor, n: int) -> torch.Tensor:
    """Forbid every token that would complete an n-gram already present in ``input_ids``.

    logits: (batch, vocab); input_ids: (batch, seq). If the last n - 1 tokens of row b also
    occur earlier followed by token t, t gets ``-inf``: no n-gram can appear twice.
    """
    require_dims(logits, 2, "logits", "(batch, vocab)")
    require_float(logits, "logits")
    require_token_ids(input_ids, "input_ids", batch=logits.shape[0])
    n = require_positive_int(n, "n")
    out = logits.clone()
    seq = input_ids.shape[1]
    if seq + 1 < n:
        return out
    for row, ids in enumerate(input_ids.tolist()):
        prefix = ids[seq - n + 1 :] if n > 1 else []
        banned = {ids[i + n - 1] for i in range(seq - n + 1) if ids[i : i + n - 1] == prefix}
        if banned:
            out[row, sorted(banned)] = NEG_INF
    return out


def process_logits(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    *,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float = 1.0,
    no_repeat_ngram_size: int | None = None,
) -> torch.Tensor:
    """Every processor :func:`generate` applies, in transformers' order; returns new logits.

    The penalties always apply; temperature, top-k, top-p and min-p only when ``do_sample`` (they
    cannot change an argmax, except top-k/top-p ties, so greedy decoding skips them).
    """
    if repetition_penalty != 1.0:
        logits = apply_repetition_penalty(logits, input_ids, repetition_penalty)
    if no_repeat_ngram_size:
        logits = no_repeat_ngram_filter(logits, input_ids, no_repeat_ngram_size)
    if do_sample:
        if temperature != 1.0:
            logits = apply_temperature(logits, temperature)
        if top_k is not None:
            logits = top_k_filter(logits, top_k)
        if top_p is not None and top_p < 1.0:
            logits = top_p_filter(logits, top_p)
        if min_p is not None:
            logits = min_p_filter(logits, min_p)
    return logits


def sample_from_logits(
    logits: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One token per row, drawn from softmax(logits): (batch, vocab) -> (batch,) int64.

    Uses ``generator`` (or torch's global RNG when None), exactly as transformers samples:
    ``torch.multinomial(softmax(logits), 1)``.
    """
    require_dims(logits, 2, "logits", "(batch, vocab)")
    require_float(logits, "logits")
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)


# --------------------------------------------------------------------------------------------
# The decoding loop


def _as_generator(generator: torch.Generator | int | None, device: torch.device):
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, bool) or not isinstance(generator, numbers.Integral):
        raise TypeError(
            f"generator: expected a torch.Generator, an int seed or None, "
            f"got {type(generator).__name__}"
        )
    return torch.Generator(device=device).manual_seed(int(generator))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _require_prompt(input_ids: Any) -> None:
    require_token_ids(input_ids, "input_ids", min_seq=1)  # at least one prompt token


@torch.no_grad()
def generate(
    model: Callable,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    *,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float = 1.0,
    no_repeat_ngram_size: int | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    use_cache: bool = True,
    generator: torch.Generator | int | None = None,
    timings: list[float] | None = None,
) -> torch.Tensor:
    """Continue each prompt by up to ``max_new_tokens`` tokens; returns the new ids only.

    input_ids: (batch, seq) int64 prompts, all of the same length (no padding). Returns
    (batch, n_new) int64 with n_new <= max_new_tokens: a row that produced an ``eos_token_id``
    is filled with ``pad_token_id`` (default: the first eos id) after it, and the loop stops
    when every row has finished.

    ``do_sample=False`` is greedy decoding (argmax after the penalties); ``do_sample=True``
    samples after :func:`process_logits`, from ``generator`` (a torch.Generator, or an int seed
    for a fresh one; None uses torch's global RNG, as transformers does). ``use_cache=False``
    feeds the whole text to the model at every step instead of one token with a KV cache:
    same tokens, more work. Pass a list as ``timings`` to collect the seconds of each step
    (model call and token choice); step 0 is the prefill, which processes the whole prompt.
    """
    _require_prompt(input_ids)
    max_new_tokens = require_positive_int(max_new_tokens, "max_new_tokens")
    if do_sample:
        _require_number(temperature, "temperature", 0.0)
    eos = _eos_list(eos_token_id)
    if pad_token_id is None:
        pad_token_id = eos[0] if eos else 0
    device = input_ids.device
    generator = _as_generator(generator, device)
    eos_tensor = torch.tensor(eos, dtype=torch.long, device=device)
    settings = dict(
        do_sample=do_sample,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        repetition_penalty=repetition_penalty,
        no_repeat_ngram_size=no_repeat_ngram_size,
    )

    ids = input_ids.long()
    cache = model.new_cache() if use_cache else None
    unfinished = torch.ones(ids.shape[0], dtype=torch.bool, device=device)
    model_input = ids
    for _ in range(max_new_tokens):
        start = time.perf_counter()
        logits = model(model_input, cache=cache) if use_cache else model(ids)
        logits = logits[:, -1, :].float()
        logits = process_logits(logits, ids, **settings)
        if do_sample:
            next_ids = sample_from_logits(logits, generator)
        else:
            next_ids = logits.argmax(dim=-1)
        next_ids = torch.where(unfinished, next_ids, pad_token_id)
        if timings is not None:
            _sync(device)
            timings.append(time.perf_counter() - start)
        ids = torch.cat([ids, next_ids[:, None]], dim=1)
        model_input = next_ids[:, None]
        if eos:
            unfinished &= ~torch.isin(next_ids, eos_tensor)
            if not unfinished.any():
                break
    return ids[:, input_ids.shape[1] :]


# --------------------------------------------------------------------------------------------
# Beam search


@dataclass
class BeamSearchOutput:
    """The best hypothesis of each prompt.

    new_ids: (batch, n_new) int64, padded with ``pad_token_id`` after a shorter row's end.
    lengths: (batch,) how many of those tokens each hypothesis has (an eos included).
    log_probs: (batch,) the sum of its tokens' log-probabilities under the model.
    scores: (batch,) what beam search ranked by: ``log_probs / lengths ** length_penalty``.
    """

    new_ids: torch.Tensor
    lengths: torch.Tensor
    log_probs: torch.Tensor
    scores: torch.Tensor


@torch.no_grad()
def beam_search(
    model: Callable,
    input_ids: torch.Tensor,
    num_beams: int,
    max_new_tokens: int,
    *,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
) -> BeamSearchOutput:
    """Keep the ``num_beams`` most likely partial continuations at every step; return the best.

    input_ids: (batch, seq) int64; each row is searched on its own, with its own KV cache.
    A step scores every (beam, next token) pair by the beam's total log-probability plus the
    token's, and keeps the best 2 x num_beams (more with several eos ids) candidates: those
    ending in eos (or at ``max_new_tokens``) and ranked among the first num_beams become
    finished hypotheses, scored ``sum of log-probs / n_new ** length_penalty``; the best
    num_beams others continue, each taking its parent's cache (``cache.reorder``).

    ``early_stopping`` decides when to stop once num_beams hypotheses are finished: True stops
    at once; False stops when the best running beam, scored at its current length, cannot
    beat the worst finished one; "never" assumes the running beams could reach
    ``max_new_tokens`` (for length_penalty > 0). These are transformers' rules, step for step,
    so ``beam_search`` returns the tokens ``model.generate(num_beams=..., do_sample=False)``
    returns for the same settings.
    """
    _require_prompt(input_ids)
    num_beams = require_positive_int(num_beams, "num_beams")
    max_new_tokens = require_positive_int(max_new_tokens, "max_new_tokens")
    length_penalty = require_real(length_penalty, "length_penalty")
    if early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping: expected True, False or 'never', got {early_stopping!r}")
    eos = _eos_list(eos_token_id)
    if pad_token_id is None:
        pad_token_id = eos[0] if eos else 0
    rows = [
        _beam_search_one(
            model,
            input_ids[b : b + 1].long(),
            num_beams,
            max_new_tokens,
            length_penalty,
            early_stopping,
            eos,
        )
        for b in range(input_ids.shape[0])
    ]
    width = max(len(ids) for ids, _, _ in rows)
    new_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    for b, (ids, _, _) in enumerate(rows):
        new_ids[b, : len(ids)] = ids
    return BeamSearchOutput(
        new_ids=new_ids.to(input_ids.device),
        lengths=torch.tensor([len(ids) for ids, _, _ in rows]),
        log_probs=torch.tensor([log_prob for _, log_prob, _ in rows]),
        scores=torch.tensor([score for _, _, score in rows]),
    )


def _beam_search_one(
    model,
    prompt: torch.Tensor,
    num_beams: int,
    max_new_tokens: int,
    length_penalty: float,
    early_stopping: bool | str,
    eos: list[int],
) -> tuple[torch.Tensor, float, float]:
    """Beam search for one prompt (1, seq): (new ids, sum of log-probs, score) of the best."""
    device = prompt.device
    n_candidates = max(2, 1 + len(eos)) * num_beams
    eos_tensor = torch.tensor(eos, dtype=torch.long, device=device)
    cache = model.new_cache()
    logits = model(prompt, cache=cache)[:, -1, :].float().expand(num_beams, -1)
    cache.reorder(torch.zeros(num_beams, dtype=torch.long, device=device))  # one copy per beam

    # Running beams: their tokens and total log-probs. All beams start as the same prompt, so
    # only beam 0 may expand at the first step (the others start at -1e9).
    beams = torch.empty(num_beams, 0, dtype=torch.long, device=device)
    beam_scores = torch.full((num_beams,), -1e9, device=device)
    beam_scores[0] = 0.0
    # Finished hypotheses: the num_beams best so far (slots of score -1e9 are empty).
    done_scores = torch.full((num_beams,), -1e9, device=device)
    done_log_probs = torch.zeros(num_beams, device=device)
    done_ids: list[torch.Tensor] = [beams[0]] * num_beams
    can_improve = True

    for step in range(max_new_tokens):
        n_new = step + 1
        totals = (F.log_softmax(logits, dim=-1) + beam_scores[:, None]).reshape(-1)
        top_totals, top_index = totals.topk(n_candidates)
        parent, token = top_index // logits.shape[-1], top_index % logits.shape[-1]
        candidates = torch.cat([beams[parent], token[:, None]], dim=1)
        ends = torch.isin(token, eos_tensor) | (n_new == max_new_tokens)

        # Finished: candidates that end and rank among the first num_beams, merged with the
        # earlier ones; the num_beams best stay.
        full = bool((done_scores > -1e9).all())
        may_finish = ends.clone()
        may_finish[num_beams:] = False
        if not can_improve or (full and early_stopping is True):
            may_finish[:] = False
        new_scores = top_totals / (n_new**length_penalty) + (~may_finish).float() * -1e9
        merged = torch.cat([done_scores, new_scores])
        best = merged.topk(num_beams).indices
        all_log_probs = torch.cat([done_log_probs, top_totals])
        all_ids = done_ids + list(candidates)
        done_scores, done_log_probs = merged[best], all_log_probs[best]
        done_ids = [all_ids[i] for i in best.tolist()]

        # Running: the best num_beams candidates that did not end.
        running = (top_totals + ends.float() * -1e9).topk(num_beams).indices
        beams, beam_scores = candidates[running], (top_totals + ends.float() * -1e9)[running]

        # Stop when no running beam can beat the worst finished hypothesis any more.
        hypothetical = n_new
        if early_stopping == "never" and length_penalty > 0.0:
            hypothetical = max_new_tokens
        best_possible = beam_scores[0] / (hypothetical**length_penalty)
        full = bool((done_scores > -1e9).all())
        worst_done = done_scores.min() if full else torch.tensor(-1e9, device=device)
        can_improve = can_improve and bool(best_possible > worst_done)
        all_full_and_early = full and early_stopping is True
        if not can_improve or all_full_and_early or bool(ends.all()):
            break
        cache.reorder(parent[running])
        logits = model(token[running][:, None], cache=cache)[:, -1, :].float()

    return done_ids[0], float(done_log_probs[0]), float(done_scores[0])


# --------------------------------------------------------------------------------------------
# A transformers causal LM behind llmlab's model interface


class HFCache:
    """A transformers ``DynamicCache`` with the interface of :class:`llmlab.nn.cache.KVCache`
    that decoding uses: ``length``, ``reorder(index)``, ``crop(length)``, ``nbytes()``."""

    def __init__(self) -> None:
        from transformers import DynamicCache

        self.past = DynamicCache()

    @property
    def length(self) -> int:
        """How many positions are cached."""
        return int(self.past.get_seq_length())

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows ``index`` (a row may be taken several times, or dropped)."""
        self.past.reorder_cache(index)

    def crop(self, length: int) -> None:
        """Forget every position from ``length`` on."""
        require_int(length, "length", 0)
        if length < self.length:
            self.past.crop(length - self.length)  # transformers takes minus the tokens to drop

    def nbytes(self) -> int:
        """Memory held by the cached keys and values, in bytes."""
        total = 0
        for layer in self.past.layers:
            for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
                if isinstance(t, torch.Tensor):
                    total += t.numel() * t.element_size()
        return total

    def __repr__(self) -> str:
        return f"HFCache(length={self.length}, nbytes={self.nbytes()})"


class HFCausalLM:
    """Wrap a transformers causal LM (e.g. SmolLM2) as ``model(input_ids, cache=None) -> logits``.

    With a cache (from :meth:`new_cache`), the model gets it as ``past_key_values``: positions
    continue at ``cache.length`` and the new keys and values are appended, as in
    :mod:`llmlab.models`. Without one, the whole sequence is processed from scratch.
    """

    def __init__(self, hf_model: torch.nn.Module) -> None:
        if not callable(hf_model) or not hasattr(hf_model, "config"):
            raise TypeError(
                f"hf_model: expected a transformers causal LM, got {type(hf_model).__name__}"
            )
        self.model = hf_model.eval()
        self.config = hf_model.config

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def new_cache(self) -> HFCache:
        """An empty cache for :func:`generate` and :func:`beam_search`."""
        return HFCache()

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, cache: HFCache | None = None) -> torch.Tensor:
        """(batch, seq) int64 -> logits (batch, seq, vocab)."""
        require_token_ids(input_ids, "input_ids")
        if cache is None:
            return self.model(input_ids=input_ids, use_cache=False).logits
        if not isinstance(cache, HFCache):
            raise TypeError(
                f"cache: expected an HFCache from new_cache(), got {type(cache).__name__}"
            )
        return self.model(input_ids=input_ids, past_key_values=cache.past, use_cache=True).logits

    def __repr__(self) -> str:
        return f"HFCausalLM({type(self.model).__name__})"


def generate_text(
    model: Callable,
    tokenizer: Any,
    prompt: str,
    max_new_tokens: int,
    *,
    chat: bool = True,
    seed: int = 0,
    **settings: Any,
) -> str:
    """Generate a continuation of ``prompt`` and return it as text (special tokens dropped).

    ``chat=True`` wraps the prompt as one user message with the tokenizer's chat template;
    ``chat=False`` continues the plain text. ``settings`` go to :func:`generate`
    (``do_sample``, ``temperature``, ``top_k``, ``top_p``, ``repetition_penalty`` ...); sampling
    draws from a generator seeded with ``seed``, and generation stops at the tokenizer's eos.
    """
    if chat:
        messages = [{"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    else:
        text = prompt
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    settings.setdefault("eos_token_id", tokenizer.eos_token_id)
    new_ids = generate(model, ids.to(_device_of(model)), max_new_tokens, generator=seed, **settings)
    return tokenizer.decode(new_ids[0], skip_special_tokens=True)


def _device_of(model: Any) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


# --------------------------------------------------------------------------------------------
# Encoder-decoders


@torch.no_grad()
def greedy_decode(
    model, src: torch.Tensor, max_len: int, bos: int, eos: int, attention_mask=None
) -> torch.Tensor:
    """Generate up to ``max_len`` tokens per source, each the most likely next token.

    src: (batch, src_seq) ids -> (batch, n) ids with n <= max_len, without BOS, each row ending
    at its first EOS and padded with ``pad_id`` (0 when the config has none) after it; stops
    when every row has an EOS. ``model`` is an encoder-decoder
    (:class:`llmlab.models.EncoderDecoder`); ``attention_mask`` marks the real source tokens
    (default: the model's ``source_mask``). Recomputes the decoder over the whole prefix each
    step (no KV cache: see chapter 08).
    """
    from llmlab.models.encoder_decoder import EncoderDecoder

    if not isinstance(model, EncoderDecoder):
        raise TypeError(f"model: expected an EncoderDecoder, got {type(model).__name__}")
    require_positive_int(max_len, "max_len")
    if model.config.max_seq is not None and max_len + 1 > model.config.max_seq:
        raise ValueError(
            f"max_len: expected <= max_seq - 1 = {model.config.max_seq - 1}, got {max_len}"
        )
    was_training = model.training
    model.eval()
    src_mask = model.source_mask(src, attention_mask)
    memory = model.encode(src, src_mask)
    pad = model.config.pad_id or 0
    batch = src.shape[0]
    out = torch.full((batch, 1), bos, dtype=torch.long, device=src.device)
    done = torch.zeros(batch, dtype=torch.bool, device=src.device)
    for _ in range(max_len):
        logits = model.decode(out, memory, src_mask)[:, -1]
        next_id = logits.argmax(dim=-1)
        next_id = next_id.masked_fill(done, pad)
        out = torch.cat([out, next_id[:, None]], dim=1)
        done |= next_id == eos
        if done.all():
            break
    model.train(was_training)
    return out[:, 1:]
