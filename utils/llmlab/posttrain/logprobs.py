"""Log-probabilities of completions under a causal language model, and the KL to a reference.

Every preference method of chapter 04 scores a completion ``y`` after a prompt ``x`` by its
sequence log-probability

    log pi(y | x) = sum_t log pi(y_t | x, y_<t),

read off one forward pass over ``x + y``: the logit at position ``t`` predicts the token at
``t + 1``, so the per-token log-probabilities of a (batch, seq) sequence are (batch, seq - 1),
and a completion mask shifted by one keeps the completion's tokens only.

The models: a transformers causal LM (its output's ``.logits``, called with the attention
mask and position ids counted from the first real token, so left padding changes nothing)
or a :mod:`llmlab.models` model (``model(input_ids)`` returns the logits; it takes no
attention mask, so its batches may only be padded on the right, where causal attention never
looks).

Batches of preference pairs use trl's layout: the chosen rows first, then the rejected rows,
with ``input_ids``, ``attention_mask`` and ``completion_mask`` (1 on the completion's tokens)
of shape (2 * pairs, seq); :func:`preference_batch` builds one with a chat template.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from llmlab.validate import require_token_ids

__all__ = [
    "token_logprobs",
    "gather_logprobs",
    "k3_kl",
    "sequence_logprobs",
    "KLEstimate",
    "kl_to_reference",
    "chat_batch",
    "preference_batch",
    "sampled_kl",
]


# --------------------------------------------------------------------------------------------
# Per-token and per-sequence log-probabilities


def _require_mask(mask: Any, name: str, input_ids: torch.Tensor) -> torch.Tensor:
    """``mask`` as a bool tensor of ``input_ids``' shape holding only 0 and 1."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(mask).__name__}")
    if mask.shape != input_ids.shape:
        raise ValueError(
            f"{name}: expected shape {tuple(input_ids.shape)} (that of input_ids), "
            f"got {tuple(mask.shape)}"
        )
    if mask.dtype != torch.bool and not ((mask == 0) | (mask == 1)).all():
        raise ValueError(f"{name}: expected only 0 and 1, got values {mask.unique().tolist()}")
    return mask.bool()


def _takes_attention_mask(model: nn.Module) -> tuple[bool, bool]:
    """(takes ``attention_mask``, takes ``position_ids``) from ``model.forward``'s signature."""
    params = inspect.signature(model.forward).parameters
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return "attention_mask" in params or var_kw, "position_ids" in params or var_kw


def _forward_kwargs(
    input_ids: torch.Tensor, attention_mask: torch.Tensor | None, *, positions: bool = True
) -> dict[str, Any]:
    """Keyword arguments of a transformers forward: no KV cache, and with a mask, position ids
    that count from each row's first real token (so left padding changes no real token)."""
    kwargs: dict[str, Any] = {"input_ids": input_ids, "use_cache": False}
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask.long()
        if positions:
            kwargs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    return kwargs


def _logits(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
) -> torch.Tensor:
    """(batch, seq, vocab) logits of ``model`` on ``input_ids``.

    A model whose forward takes ``attention_mask`` gets it, with position ids that count from
    each row's first real token (left padding then leaves the real tokens' logits unchanged).
    One that does not is called as ``model(input_ids)``: only right padding is allowed then.
    """
    takes_mask, takes_positions = _takes_attention_mask(model)
    if takes_mask:
        out = model(**_forward_kwargs(input_ids, attention_mask, positions=takes_positions))
    else:
        if attention_mask is not None and (attention_mask[:, 1:] > attention_mask[:, :-1]).any():
            raise ValueError(
                "attention_mask: this model takes no attention mask, so its batch may only be "
                "padded on the right (1s then 0s in every row); got a row with padding before "
                "a real token"
            )
        out = model(input_ids)
    logits = out if isinstance(out, torch.Tensor) else getattr(out, "logits", None)
    if not isinstance(logits, torch.Tensor) or logits.shape[:2] != input_ids.shape:
        raise TypeError(
            "model: expected logits of shape (batch, seq, vocab) (a tensor, or an output with "
            f".logits), got {type(out).__name__}"
        )
    return logits


def token_logprobs(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-token log-probabilities ``log p(x_{t+1} | x_<=t)``: (batch, seq) ids -> (batch, seq - 1).

    Entry ``[b, t]`` is the log-softmax of the logits at position ``t`` read at the token at
    ``t + 1`` (computed in float32). Entries whose target is padding are meaningless: mask them
    with ``attention_mask[:, 1:]`` (or a completion mask shifted the same way).
    """
    require_token_ids(input_ids, "input_ids", min_seq=2)
    if attention_mask is not None:
        _require_mask(attention_mask, "attention_mask", input_ids)
    logits = _logits(model, input_ids, attention_mask)[:, :-1].float()
    # the full log-softmax, as trl's DPO and reward trainers compute it (the tests match their
    # gradients to 1e-4 relative; gather_logprobs' logsumexp form drifts past that here)
    targets = input_ids[:, 1:].unsqueeze(-1)
    return torch.log_softmax(logits, dim=-1).gather(-1, targets).squeeze(-1)


def gather_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[target]`` without the full log-softmax: (..., vocab), (...) -> (...).

    The target's logit minus the log-sum-exp of its row (what trl's ``selective_log_softmax``
    computes in float32, and so what GRPO and PPO score sampled tokens with): no second
    (..., vocab) tensor is written.
    """
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def k3_kl(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi || ref) from tokens sampled from pi, any shape.

    ``exp(ref - logp) - (ref - logp) - 1``: zero where the two agree, never negative
    (e^x >= 1 + x), and its mean over samples of pi is the true KL (E_pi[ref/pi] = 1).
    """
    delta = ref_logps - logps
    return torch.exp(delta) - delta - 1


def sequence_logprobs(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    completion_mask: torch.Tensor,
    *,
    average: bool = False,
) -> torch.Tensor:
    """The summed log-probability of each row's completion: (batch, seq) -> (batch,).

        logp[b] = sum_{t >= 1} completion_mask[b, t] * log p(x_t | x_<t)

    The first token of a row has no prediction, so ``completion_mask[:, 0]`` must be 0 (the
    completion follows a prompt). ``average=True`` divides by the number of completion tokens
    (the per-token mean, what IPO uses in trl). Masked entries are dropped with ``where``, not
    multiplied by 0, so NaN logits at padding positions cannot leak into the sum. For a
    transformers causal LM the LM head runs only at the completion's positions
    (:func:`_completion_logprobs`): the same numbers, about half the time of a DPO step.
    """
    require_token_ids(input_ids, "input_ids", min_seq=2)
    completion = _require_mask(completion_mask, "completion_mask", input_ids)
    if completion[:, 0].any():
        raise ValueError(
            "completion_mask: the first token of a row has no prediction; expected 0 in column 0"
        )
    if attention_mask is not None:
        attention = _require_mask(attention_mask, "attention_mask", input_ids)
        if (completion & ~attention).any():
            raise ValueError("completion_mask: expected 1s only where attention_mask is 1")
    if not completion.any(dim=1).all():
        raise ValueError("completion_mask: expected at least one completion token in every row")
    keep = completion[:, 1:]
    if _has_separate_head(model):
        picked = _completion_logprobs(model, input_ids, attention_mask, keep)
        rows = keep.nonzero()[:, 0]
        total = torch.zeros(len(input_ids), dtype=picked.dtype, device=picked.device)
        total = total.index_add(0, rows, picked)
    else:
        per_token = token_logprobs(model, input_ids, attention_mask)
        total = torch.where(keep, per_token, torch.zeros_like(per_token)).sum(dim=1)
    return total / keep.sum(dim=1) if average else total


def _has_separate_head(model: nn.Module) -> bool:
    """A transformers causal LM whose logits are exactly ``lm_head(model(...))``."""
    config = getattr(model, "config", None)
    return (
        isinstance(getattr(model, "model", None), nn.Module)
        and isinstance(getattr(model, "lm_head", None), nn.Linear)
        and config is not None
        and getattr(config, "final_logit_softcapping", None) is None
        and getattr(config, "logit_scale", None) is None
    )


def _completion_logprobs(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    keep: torch.Tensor,
) -> torch.Tensor:
    """Log-probabilities of the targets where ``keep`` (batch, seq - 1) is True, flattened.

    The LM head (576 x 49,152 for SmolLM2) and the log-softmax over the vocabulary run only at
    the positions that predict a completion token, not at every position: a preference row is
    mostly prompt, so this halves a DPO step on SmolLM2 (the vocabulary-wide work dominated it).
    Mathematically the same numbers as :func:`token_logprobs` read at ``keep``.
    """
    hidden = model.model(**_forward_kwargs(input_ids, attention_mask)).last_hidden_state[:, :-1]
    logits = model.lm_head(hidden[keep]).float()  # (completion tokens, vocab)
    targets = input_ids[:, 1:][keep].unsqueeze(-1)
    return torch.log_softmax(logits, dim=-1).gather(-1, targets).squeeze(-1)


# --------------------------------------------------------------------------------------------
# KL to a reference model


class KLEstimate(NamedTuple):
    """Two Monte-Carlo estimates of KL(policy || reference) per token (0-dim tensors)."""

    k1: torch.Tensor
    k3: torch.Tensor


def kl_to_reference(
    policy_logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor
) -> KLEstimate:
    """KL(pi || pi_ref) per token from per-token log-probs of tokens SAMPLED FROM THE POLICY.

    With ``d = log pi_ref(x_t) - log pi(x_t)`` at each masked token (Schulman's estimators):

    - ``k1 = mean(-d)``: unbiased, but single tokens can be negative, and so can short means;
    - ``k3 = mean(exp(d) - 1 - d)``: unbiased too, never negative, lower variance.

    Shapes: all three (batch, seq - 1), as :func:`token_logprobs` returns them; ``mask`` selects
    the completion tokens. On tokens not drawn from the policy (a fixed data set's answers)
    both are only proxies of the divergence.
    """
    for name, x in (("policy_logps", policy_logps), ("ref_logps", ref_logps), ("mask", mask)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if ref_logps.shape != policy_logps.shape or mask.shape != policy_logps.shape:
        raise ValueError(
            "ref_logps, mask: expected the shape of policy_logps "
            f"{tuple(policy_logps.shape)}, got {tuple(ref_logps.shape)} and {tuple(mask.shape)}"
        )
    keep = mask.bool()
    if not keep.any():
        raise ValueError("mask: expected at least one token to average over, got none")
    policy, ref = policy_logps[keep].float(), ref_logps[keep].float()
    return KLEstimate(k1=(policy - ref).mean(), k3=k3_kl(policy, ref).mean())


# --------------------------------------------------------------------------------------------
# Chat formatting of (prompt, completion) pairs


def _chat_pair(
    tokenizer: Any, prompt: str, completion: str, system: str | None = None
) -> tuple[list[int], list[int]]:
    """(token ids, completion mask) of a prompt and its answer in ``tokenizer``'s chat template.

    The same rendering and the same answer span as SFT (:func:`llmlab.posttrain.sft.format_example`):
    the mask is 1 on the answer, its end-of-turn token and the newline the template writes
    after it (as trl counts the completion), 0 on the system turn, the user turn and the
    assistant header. One convention for the whole chapter: a preference pair scores exactly
    the tokens SFT trained.
    """
    from llmlab.posttrain.sft import format_example

    if not isinstance(completion, str):
        raise TypeError(f"completion: expected a str, got {type(completion).__name__}")
    ids, labels = format_example(tokenizer, prompt, completion, system=system)
    return ids.tolist(), (labels != -100).long().tolist()


def _pad(rows: list[list[int]], value: int, side: str) -> torch.Tensor:
    """Rows of different lengths as one (len(rows), longest) int64 tensor padded on ``side``."""
    width = max(len(row) for row in rows)
    out = torch.full((len(rows), width), value, dtype=torch.int64)
    for i, row in enumerate(rows):
        if side == "right":
            out[i, : len(row)] = torch.tensor(row)
        else:
            out[i, width - len(row) :] = torch.tensor(row)
    return out


def chat_batch(
    tokenizer: Any,
    prompts: Sequence[str],
    answers: Sequence[str],
    *,
    system: str | None = None,
    padding_side: str = "right",
) -> dict[str, torch.Tensor]:
    """Each prompt answered with its answer, in the chat template, as one padded batch.

    Returns ``input_ids``, ``attention_mask`` and ``completion_mask``, each (len(prompts),
    seq); the completion mask covers the answer and its end-of-turn token (:func:`_chat_pair`).
    Padding uses ``tokenizer.pad_token_id`` (for SmolLM2 that is ``<|im_end|>`` itself: read
    where a row ends from ``attention_mask``, never from the pad id).
    """
    if len(prompts) == 0:
        raise ValueError("prompts: expected at least one prompt, got none")
    if len(answers) != len(prompts):
        raise ValueError(f"answers: expected one per prompt ({len(prompts)}), got {len(answers)}")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side: expected 'left' or 'right', got {padding_side!r}")
    rows = [_chat_pair(tokenizer, p, a, system) for p, a in zip(prompts, answers, strict=True)]
    ids = [row for row, _ in rows]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return {
        "input_ids": _pad(ids, pad_id, padding_side),
        "attention_mask": _pad([[1] * len(row) for row in ids], 0, padding_side),
        "completion_mask": _pad([mask for _, mask in rows], 0, padding_side),
    }


def preference_batch(
    tokenizer: Any,
    prompts: Sequence[str],
    chosen: Sequence[str],
    rejected: Sequence[str],
    *,
    system: str | None = None,
    padding_side: str = "right",
) -> dict[str, torch.Tensor]:
    """Preference pairs as one batch in the chat template: chosen rows first, then rejected.

    Returns ``input_ids``, ``attention_mask`` and ``completion_mask``, each (2 * pairs, seq):
    row ``i`` is ``prompts[i]`` answered with ``chosen[i]``, row ``pairs + i`` the same prompt
    answered with ``rejected[i]`` (:func:`chat_batch` of the prompts twice).
    """
    n = len(prompts)
    if n == 0:
        raise ValueError("prompts: expected at least one prompt, got none")
    if len(chosen) != n or len(rejected) != n:
        raise ValueError(
            f"chosen, rejected: expected {n} answers each (one per prompt), "
            f"got {len(chosen)} and {len(rejected)}"
        )
    return chat_batch(
        tokenizer,
        [*prompts, *prompts],
        [*chosen, *rejected],
        system=system,
        padding_side=padding_side,
    )


@torch.no_grad()
def sampled_kl(
    policy: nn.Module,
    reference: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 16,
    batch_size: int = 16,
    seed: int = 0,
) -> tuple[KLEstimate, float]:
    """KL(policy || reference) per answer token, on answers the policy samples to ``prompts``.

    One answer per prompt at temperature 1 (no top-p: the policy's own distribution), rendered
    again in the chat template (:func:`chat_batch`'s convention: the answer and its
    end-of-turn token), scored by both models under the device's autocast, and averaged over
    every answer token with :func:`kl_to_reference`. Returns the estimate and the mean answer
    length in tokens (multiply the two for a per-answer KL).
    """
    from llmlab.env import default_precision
    from llmlab.posttrain.evaluate import sample_answers
    from llmlab.training import autocast

    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts: expected at least one prompt, got none")
    samples = sample_answers(
        policy,
        tokenizer,
        prompts,
        k=1,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        temperature=1.0,
        top_p=1.0,
        seed=seed,
    )
    device = next(policy.parameters()).device
    policy_logps, ref_logps, tokens = [], [], 0
    for start in range(0, len(prompts), batch_size):
        end = start + batch_size
        batch = chat_batch(tokenizer, prompts[start:end], [s[0] for s in samples[start:end]])
        ids, attention = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        keep = batch["completion_mask"][:, 1:].bool().to(device)
        with autocast(default_precision(device.type), device.type):
            policy_logps.append(token_logprobs(policy, ids, attention)[keep].float())
            ref_logps.append(token_logprobs(reference, ids, attention)[keep].float())
        tokens += int(keep.sum())
    policy_all, ref_all = torch.cat(policy_logps), torch.cat(ref_logps)
    estimate = kl_to_reference(policy_all, ref_all, torch.ones_like(policy_all))
    return estimate, tokens / len(prompts)
