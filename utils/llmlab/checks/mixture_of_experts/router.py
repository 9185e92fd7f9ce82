"""Checks of chapter 06's router lab (``solutions/06_mixture_of_experts/01_router.ipynb``).

    lab 01_router: router_probs, top_k_route, expert_shares, load_balancing_loss, router_z_loss

A router scores ``T`` tokens against ``E`` experts and sends each token to ``k`` of them.
``x`` is (T, d_model); ``weight`` is the router's weight in the ``nn.Linear`` layout
(n_experts, d_model); ``probs`` is the full softmax over the experts, (T, E); ``experts`` is
(T, k) int64, the ids each token was sent to.

- ``router_probs(x, weight) -> (logits, probs)``: ``logits = x @ weight.T`` computed in float32
  whatever the dtype of ``x`` and ``weight`` (cast BEFORE the matmul), and
  ``probs = softmax(logits)`` over the experts (the last dim). Both float32, (T, E); the probs
  carry the gradient back to ``weight``.
- ``top_k_route(probs, k, renormalize=True) -> (weights, experts)``: the ``k`` largest
  probabilities of each token, largest first (as ``topk`` gives them), and their expert ids,
  both (T, k); with ``renormalize`` the k weights are divided by their sum (GShard, Mixtral),
  otherwise they are the probabilities themselves (Switch with k = 1, DeepSeek-V2).
- ``expert_shares(experts, n_experts) -> f``: the share of all T * k assignments that went to
  each expert, (E,) float32 (float64 accepted), summing to 1.
- ``load_balancing_loss(probs, experts) -> loss``: Switch's ``E * sum_i f_i P_i``, ``f`` the
  shares of ``experts`` and ``P_i`` the mean over ALL tokens of the full softmax ``probs``. A
  0-dim float tensor whose gradient reaches ``probs``.
- ``router_z_loss(logits) -> loss``: ST-MoE's mean over tokens of ``logsumexp(logits)**2``, in
  float32 (float64 accepted). A 0-dim tensor.

The cases catch the usual slips, and the message names the slip when the answer matches it: in
``router_probs``, a softmax over the tokens (dim 0), bfloat16 results (no float32 cast), the
product computed in bfloat16 and cast afterwards, ``weight`` not transposed (wrong values on a
square weight, an error on the others, whose hint gives the layout), ``exp`` that overflows,
the pair returned in the wrong order, probabilities cut off from the gradient; in
``top_k_route``, weights not renormalised when asked or renormalised when not, the k LOWEST
probabilities, a softmax of the chosen probabilities (as if they were logits), log-probabilities
as weights, weights that do not belong to the ids beside them (sorted weights, unsorted ids),
the right pairs in another order, the pair swapped; in ``expert_shares``, counts instead of
shares, a division by T instead of T * k (shares that sum to k), only the first choice counted,
``bincount`` without ``minlength`` (a shorter vector when the last experts get nothing); in
``load_balancing_loss``, ``P`` averaged over the chosen experts only (zeros elsewhere, the
chosen weights, or a mean over the tokens that chose each expert), a softmax applied again to
``probs`` (which flattens ``P`` towards 1/E), no factor E or a mean over the experts, ``f`` from
the first choice only, transformers' convention (k times this loss), counts for ``f``, a sum
over tokens for ``P``, no gradient to ``probs``; in ``router_z_loss``, ``logsumexp`` not
squared, a sum over tokens instead of a mean, the max instead of ``logsumexp``, the squared
mean of the logits (or of the logsumexps), ``logsumexp`` over the tokens, ``log(sum(exp))``
that overflows, a bfloat16 result.

Each ``check_NAME(fn)`` prints one line and returns a :class:`llmlab.checks.CheckResult`
whose ``.fn`` the lab keeps using::

    top_k_route = check_top_k_route(top_k_route).fn

The references delegate to :mod:`llmlab.moe.router` and :mod:`llmlab.moe.losses`; an answer
that calls the package's MoE code is flagged. Inputs come from :mod:`llmlab.checks._inputs`, so
a check never moves the notebook's seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch

from llmlab.checks import Case, CheckResult, compare_tensors, describe, run_check
from llmlab.checks._inputs import randn
from llmlab.moe import losses
from llmlab.moe.router import route

#: The package's MoE code computes the answers: an answer that calls it is flagged.
FORBID = ("llmlab.moe",)

#: Tolerances on the logits (float32 matmuls summed in another order stay well inside).
LOGIT_ATOL, LOGIT_RTOL = 1e-4, 1e-4
#: Tolerances on probabilities, weights and shares.
PROB_ATOL, PROB_RTOL = 1e-6, 1e-4
#: Tolerances on the losses.
LOSS_ATOL, LOSS_RTOL = 1e-5, 1e-4

# --------------------------------------------------------------------------------------------
# References


def reference_router_probs(
    x: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, probs): ``x @ weight.T`` in float32 and its softmax over the experts."""
    logits = x.float() @ weight.float().T
    out = route(logits, 1)
    return out.logits, out.probs


def reference_top_k_route(
    probs: torch.Tensor, k: int, renormalize: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights, experts), (T, k) each: the k largest probabilities, largest first."""
    weights, experts = probs.topk(k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, experts


def reference_expert_shares(experts: torch.Tensor, n_experts: int) -> torch.Tensor:
    """f: the share of the T * k assignments that each expert got, (E,) float32."""
    return losses.expert_shares(experts, n_experts)


def reference_load_balancing_loss(probs: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """Switch's E * sum_i f_i P_i, P_i the mean of the full softmax over all tokens."""
    return losses.load_balancing_loss(probs, experts)


def reference_router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE's z-loss: the mean over tokens of logsumexp(logits)**2, in float32."""
    return losses.router_z_loss(logits)


# --------------------------------------------------------------------------------------------
# Inputs


def _router_inputs(
    tokens: int,
    d_model: int,
    n_experts: int,
    seed: int,
    scale: float = 1.0,
    dtype: torch.dtype = torch.float32,
    weight_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x (tokens, d_model) of ``scale`` and a router weight (n_experts, d_model) whose logits
    are of about the same scale."""
    x = randn(tokens, d_model, seed=seed, scale=scale).to(dtype)
    weight = randn(n_experts, d_model, seed=seed + 1, scale=d_model**-0.5)
    return x, weight.to(weight_dtype or dtype)


def _probs(tokens: int, n_experts: int, seed: int, scale: float = 2.0) -> torch.Tensor:
    """A router's softmax over the experts, (tokens, n_experts) float32, without ties."""
    return randn(tokens, n_experts, seed=seed, scale=scale).softmax(dim=-1)


def _chosen(probs: torch.Tensor, k: int) -> torch.Tensor:
    """The ids of each token's k largest probabilities, largest first, (tokens, k) int64."""
    return probs.topk(k, dim=-1).indices


# --------------------------------------------------------------------------------------------
# Shared pieces: closeness, dtypes, pairs


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _close(got: Any, want: torch.Tensor, atol: float, rtol: float) -> bool:
    """Whether ``got`` is a finite float tensor of ``want``'s shape within the tolerance."""
    if not isinstance(got, torch.Tensor) or got.shape != want.shape:
        return False
    if not got.is_floating_point():
        return False
    a = got.detach().cpu().double()
    b = want.detach().cpu().double()
    if not bool(a.isfinite().all()):
        return False
    return bool(((a - b).abs() <= atol + rtol * b.abs()).all())


def _first_slip(
    got: torch.Tensor, slips: Iterator[tuple[torch.Tensor, str]], atol: float, rtol: float
) -> str | None:
    for wrong, words in slips:
        if _close(got, wrong, atol, rtol):
            return words
    return None


def _pair_problem(got: Any, names: tuple[str, str]) -> str | None:
    """What is wrong with ``got`` as a pair of tensors, before any value is looked at."""
    pair = f"({names[0]}, {names[1]})"
    if isinstance(got, torch.Tensor):
        return f"expected a tuple {pair}, received a single tensor: return both, `return {names[0]}, {names[1]}`"
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return f"expected a tuple {pair} of two tensors, received {describe(got)}"
    for name, value in zip(names, got, strict=True):
        if not isinstance(value, torch.Tensor):
            return f"expected {names[0]} and {names[1]} as tensors; {name} is {describe(value)}"
    return None


def _scalar_problem(value: Any, what: str) -> str | None:
    """Shape and type of a loss, in words; None when it is a 0-dim float32/64 tensor."""
    if not isinstance(value, torch.Tensor):
        return f"expected a 0-dim float tensor ({what}), received {describe(value)}"
    if value.dim() != 0:
        return (
            f"expected a 0-dim tensor ({what}), received shape {tuple(value.shape)}: reduce it "
            "to one number"
        )
    if not value.is_floating_point():
        return f"expected a float tensor, received {_dtype(value)}"
    if value.dtype not in (torch.float32, torch.float64):
        return (
            f"expected a float32 tensor, received {_dtype(value)}: compute the loss in float32 "
            "(.float() first); bfloat16 keeps about 3 significant digits"
        )
    return None


# --------------------------------------------------------------------------------------------
# router_probs


def _probs_cases() -> list[Case]:
    def case(name, *shape, hint="", **kw):
        return Case(name, _router_inputs(*shape, **kw), hint=hint)

    layout = (
        "weight has the nn.Linear layout (n_experts, d_model): logits = x.float() @ "
        "weight.float().T, (T, d_model) @ (d_model, n_experts); then probs = "
        "torch.softmax(logits, dim=-1), over the experts."
    )
    return [
        case("16 tokens, d_model 32, 8 experts", 16, 32, 8, 600, hint=layout),
        case(
            "a square router weight: d_model = n_experts = 8, 12 tokens", 12, 8, 8, 602,
            hint=layout,
        ),
        case(
            "x and weight in bfloat16 (a model loaded in bf16): logits and probs in float32",
            16, 32, 8, 604, dtype=torch.bfloat16,
            hint="cast both to float32 BEFORE the matmul: x.float() @ weight.float().T (the "
            "router's top-k compares probabilities that bf16 would round to 3 digits).",
        ),
        case(
            "x in bfloat16, the router's weight in float32 (kept in float32, as routers often are)",
            10, 24, 6, 606, dtype=torch.bfloat16, weight_dtype=torch.float32,
            hint="a bf16 x and a float32 weight cannot be multiplied as they are: cast both to "
            "float32 first, x.float() @ weight.float().T.",
        ),
        case("one token, 64 experts", 1, 16, 64, 608, hint=layout),
        case(
            "large logits: x of scale 60, so exp(logits) overflows float32",
            8, 16, 8, 610, scale=60.0,
            hint="exp of a logit above 88 is inf in float32, and inf / inf is NaN: subtract each "
            "token's largest logit before exp, or use torch.softmax, which does.",
        ),
    ]  # fmt: skip


def _logit_slips(x: torch.Tensor, weight: torch.Tensor) -> Iterator[tuple[torch.Tensor, str]]:
    if weight.shape[0] == weight.shape[1]:
        yield (
            x.double() @ weight.double(),
            "your logits are x @ weight: weight has the nn.Linear layout (n_experts, d_model), "
            "so logits = x @ weight.T (on a square weight the untransposed product runs, with "
            "the wrong numbers)",
        )
    if x.dtype != torch.float32 and x.dtype == weight.dtype:
        yield (
            (x @ weight.T).float(),
            f"your logits were computed in {_dtype(x)} and cast to float32 afterwards: the "
            "product was already rounded; cast x and weight BEFORE the matmul, "
            "x.float() @ weight.float().T",
        )


def _prob_slips(logits: torch.Tensor) -> Iterator[tuple[torch.Tensor, str]]:
    z = logits.double()
    if z.shape[0] > 1:
        yield (
            z.softmax(dim=0),
            "your probs sum to 1 down each column: that is a softmax over the tokens (dim 0); "
            "each token's probabilities over the experts sum to 1, softmax(dim=-1)",
        )
    yield (
        z.log_softmax(dim=-1),
        "these are log-probabilities: return softmax(logits, dim=-1)",
    )
    yield (
        z.exp(),
        "these are exp(logits), not normalised: divide each row by its sum (softmax does both)",
    )


def _run_probs(fn: Callable, x: torch.Tensor, weight: torch.Tensor) -> dict:
    # Whether the probs carry a gradient is read here: the grader's worker sends tensors back
    # detached.
    leaf = weight.clone().requires_grad_(True)
    out = fn(x.clone(), leaf)
    probs = out[1] if isinstance(out, (tuple, list)) and len(out) == 2 else None
    graded = isinstance(probs, torch.Tensor) and probs.requires_grad
    return {"out": out, "inputs": (x, weight), "probs_have_grad": graded}


def _probs_problem(received: Any, expected: dict) -> str | None:
    got, (want_logits, want_probs) = received["out"], expected["out"]
    x, weight = received["inputs"]
    problem = _pair_problem(got, ("logits", "probs"))
    if problem is not None:
        return problem
    logits, probs = got
    if (
        logits.shape == probs.shape == want_logits.shape
        and _close(logits, want_probs, PROB_ATOL, PROB_RTOL)
        and _close(probs, want_logits, LOGIT_ATOL, LOGIT_RTOL)
    ):
        return "you returned (probs, logits): return them in the order (logits, probs)"
    for name, value in (("logits", logits), ("probs", probs)):
        if value.shape == want_logits.shape and value.dtype in (torch.bfloat16, torch.float16):
            return (
                f"your {name} are {_dtype(value)}: the router works in float32 whatever the "
                "model's dtype; cast x and weight first, x.float() @ weight.float().T"
            )
    problem = compare_tensors(logits, want_logits, atol=LOGIT_ATOL, rtol=LOGIT_RTOL)
    if problem is not None:
        if logits.shape == want_logits.shape and logits.is_floating_point():
            slip = _first_slip(logits, _logit_slips(x, weight), LOGIT_ATOL, LOGIT_RTOL)
            if slip is not None:
                return slip
        return f"logits: {problem}"
    if probs.shape == want_probs.shape and probs.dtype == torch.float32:
        if bool(probs.isnan().any()):
            return (
                "your probs hold NaN: exp of a large logit overflows to inf, and inf / inf is "
                "NaN; subtract each token's largest logit before exp (torch.softmax does)"
            )
        if not _close(probs, want_probs, PROB_ATOL, PROB_RTOL):
            slip = _first_slip(probs, _prob_slips(want_logits), PROB_ATOL, PROB_RTOL)
            if slip is not None:
                return slip
    problem = compare_tensors(probs, want_probs, atol=PROB_ATOL, rtol=PROB_RTOL)
    if problem is not None:
        return f"probs: {problem}"
    if not received["probs_have_grad"]:
        return (
            "your probs carry no gradient back to weight (a .detach(), .item(), torch.no_grad() "
            "or a copy through numpy): the balancing loss trains the router through these "
            "probabilities, so compute them with torch operations on weight"
        )
    return None


def check_router_probs(router_probs: Callable) -> CheckResult:
    """Check ``router_probs(x, weight) -> (logits, probs)``, float32 (T, E) each."""
    return run_check(
        "router_probs",
        router_probs,
        reference_router_probs,
        _probs_cases(),
        hint="logits = x.float() @ weight.float().T; return logits, torch.softmax(logits, dim=-1).",
        run=_run_probs,
        compare=_probs_problem,
        arg_names=("x", "weight"),
        forbid=FORBID,
    )


# --------------------------------------------------------------------------------------------
# top_k_route


def _route_cases() -> list[Case]:
    def case(name, tokens, n_experts, k, seed, renormalize=None, scale=2.0, hint=""):
        kwargs = {} if renormalize is None else {"renormalize": renormalize}
        return Case(name, (_probs(tokens, n_experts, seed, scale), k), kwargs, hint=hint)

    return [
        case("12 tokens over 8 experts, k = 2 (renormalize by default)", 12, 8, 2, 620),
        case(
            "k = 2, renormalize=False: the raw probabilities (DeepSeek-V2)", 12, 8, 2, 622,
            renormalize=False,
        ),
        case("k = 1, renormalize=True: every weight is 1", 10, 6, 1, 624, renormalize=True),
        case(
            "k = 1, renormalize=False: the top probability itself (Switch)", 10, 6, 1, 626,
            renormalize=False,
        ),
        case("64 tokens over 16 experts, k = 4, renormalize=True", 64, 16, 4, 628, renormalize=True),
        case(
            "k = 3 of 5 experts, renormalize=False, a confident router (logits of scale 6)",
            9, 5, 3, 630, renormalize=False, scale=6.0,
        ),
        case("k = E: all 4 experts, largest first", 6, 4, 4, 632, renormalize=True),
    ]  # fmt: skip


def _run_route(fn: Callable, probs: torch.Tensor, k: int, **kwargs: Any) -> dict:
    out = fn(probs.clone(), k, **kwargs)
    return {"out": out, "inputs": (probs, k, kwargs.get("renormalize", True))}


def _renorm(w: torch.Tensor) -> torch.Tensor:
    return w / w.sum(dim=-1, keepdim=True)


def _route_weight_slips(
    probs: torch.Tensor, experts: torch.Tensor, renormalize: bool
) -> Iterator[tuple[torch.Tensor, str]]:
    """Wrong weights for the (right) experts ``experts``."""
    p = probs.double().gather(-1, experts)
    k = experts.shape[1]
    if renormalize and k > 1:
        yield (
            p,
            "your weights are the raw probabilities: with renormalize=True divide each token's "
            "k weights by their sum (they then sum to 1)",
        )
    if not renormalize and k > 1:
        yield (
            _renorm(p),
            "you renormalised the weights, but renormalize=False asks for the raw "
            "probabilities (Switch with k = 1 and DeepSeek-V2 keep them)",
        )
    if not renormalize and k == 1:
        yield (
            torch.ones_like(p),
            "your weights are all 1: with renormalize=False and k = 1 the weight is the top "
            "probability itself (renormalising one weight always gives 1)",
        )
    if k > 1:
        yield (
            p.softmax(dim=-1),
            "your weights are a softmax of the k chosen probabilities, as if they were logits: "
            "top-k-then-softmax takes the softmax of the chosen LOGITS; from probabilities, "
            "divide them by their sum (renormalize=True) or keep them",
        )
    yield (
        p.log(),
        "your weights are log-probabilities (the logits up to a constant): the weights are "
        "taken from probs, the probabilities themselves",
    )
    if renormalize:
        yield (
            _renorm(p.log()),
            "your weights are renormalised log-probabilities: take the probabilities themselves "
            "from probs, then divide them by their sum",
        )


def _route_problem(received: Any, expected: dict) -> str | None:
    got, (want_w, want_e) = received["out"], expected["out"]
    probs, k, renormalize = received["inputs"]
    problem = _pair_problem(got, ("weights", "experts"))
    if problem is not None:
        return problem
    weights, experts = got
    if (
        weights.shape == experts.shape == want_w.shape
        and not weights.is_floating_point()
        and experts.is_floating_point()
    ):
        return "you returned (experts, weights): return them in the order (weights, experts)"
    for name, value in (("weights", weights), ("experts", experts)):
        if value.shape != want_w.shape:
            hint = ""
            if value.shape == probs.shape:
                hint = f": keep only the k = {k} chosen per token"
            return (
                f"expected {name} of shape {tuple(want_w.shape)} (tokens, k), received shape "
                f"{tuple(value.shape)}{hint}"
            )
    if experts.is_floating_point() or experts.dtype == torch.bool:
        return f"expected int64 expert ids (topk's .indices), received {_dtype(experts)}"
    if experts.dtype != torch.int64:
        return f"expected int64 expert ids (topk's .indices), received {_dtype(experts)}"
    if weights.dtype != want_w.dtype:
        return f"expected weights of dtype {_dtype(want_w)} like probs, received {_dtype(weights)}"
    experts = experts.cpu()
    n_experts = probs.shape[1]
    if bool(((experts < 0) | (experts >= n_experts)).any()):
        return f"your expert ids fall outside 0 to {n_experts - 1}: return the ids of the experts"
    same_ids = torch.equal(experts, want_e)
    same_sets = torch.equal(experts.sort(dim=-1).values, want_e.sort(dim=-1).values)
    if not same_sets:
        lowest = probs.topk(k, dim=-1, largest=False).indices
        if torch.equal(experts.sort(dim=-1).values, lowest.sort(dim=-1).values):
            return (
                f"you chose the k = {k} LOWEST probabilities: take the largest, "
                "probs.topk(k, dim=-1) (argsort is ascending)"
            )
        t = int((experts.sort(dim=-1).values != want_e.sort(dim=-1).values).any(-1).nonzero()[0])
        return (
            f"token {t}: you chose experts {experts[t].tolist()}, the {k} largest probabilities "
            f"are those of experts {want_e[t].tolist()}"
        )
    matching = _renorm(probs.double().gather(-1, experts)) if renormalize else None
    if matching is None:
        matching = probs.double().gather(-1, experts)
    if not same_ids:
        if _close(weights, matching, PROB_ATOL, PROB_RTOL):
            return (
                "the right experts with the right weights, but not largest first: return them "
                "in decreasing order of probability, as topk does"
            )
        if _close(weights, want_w, PROB_ATOL, PROB_RTOL):
            return (
                "your weights and ids do not belong together: the weights are sorted largest "
                "first but the ids are in another order, so weights[t, j] is not the weight of "
                "expert experts[t, j]; take both from one topk call (or sort them together)"
            )
        return (
            "your experts are not in decreasing order of probability and your weights do not "
            "match them: take both from one probs.topk(k, dim=-1)"
        )
    if _close(weights, want_w, PROB_ATOL, PROB_RTOL):
        return None
    slip = _first_slip(
        weights, _route_weight_slips(probs, experts, renormalize), PROB_ATOL, PROB_RTOL
    )
    if slip is not None:
        return slip
    return f"weights: {compare_tensors(weights, want_w, atol=PROB_ATOL, rtol=PROB_RTOL)}"


def check_top_k_route(top_k_route: Callable) -> CheckResult:
    """Check ``top_k_route(probs, k, renormalize=True) -> (weights, experts)``, (T, k) each."""
    return run_check(
        "top_k_route",
        top_k_route,
        reference_top_k_route,
        _route_cases(),
        hint="weights, experts = probs.topk(k, dim=-1); if renormalize: weights = weights / "
        "weights.sum(dim=-1, keepdim=True); return weights, experts.",
        run=_run_route,
        compare=_route_problem,
        arg_names=("probs", "k"),
        forbid=FORBID,
    )


# --------------------------------------------------------------------------------------------
# expert_shares


def _shares_cases() -> list[Case]:
    def case(name, tokens, n_experts, k, seed, used=None, hint=""):
        probs = _probs(tokens, used or n_experts, seed)
        return Case(name, (_chosen(probs, k), n_experts), hint=hint)

    # Every first choice is expert 0; the second choices go round experts 1 to 7.
    collapsed = torch.stack([torch.zeros(14, dtype=torch.int64), torch.arange(14) % 7 + 1], 1)
    even = torch.tensor([[0, 1], [2, 3], [1, 0], [3, 2], [0, 2], [1, 3]])
    return [
        case("12 tokens, k = 2, 8 experts", 12, 8, 2, 640),
        case("k = 1 (Switch): each token counts once", 20, 8, 1, 642),
        case(
            "the last 3 of 8 experts get nothing (only experts 0 to 4 are chosen)",
            16, 8, 2, 644, used=5,
            hint="torch.bincount stops at the largest id it sees: pass minlength=n_experts so "
            "that every expert gets its share, 0 included.",
        ),
        Case(
            "a collapsed router: every token's first choice is expert 0, k = 2",
            (collapsed, 8),
        ),
        case("64 tokens, k = 4, 16 experts", 64, 16, 4, 648),
        Case("an even load: each of 4 experts gets 3 of the 12 assignments", (even, 4)),
    ]  # fmt: skip


def _run_shares(fn: Callable, experts: torch.Tensor, n_experts: int) -> dict:
    return {"out": fn(experts.clone(), n_experts), "inputs": (experts, n_experts)}


def _counts(experts: torch.Tensor, n_experts: int) -> torch.Tensor:
    return torch.bincount(experts.reshape(-1), minlength=n_experts).double()


def _share_slips(experts: torch.Tensor, n_experts: int) -> Iterator[tuple[torch.Tensor, str]]:
    tokens, k = experts.shape
    counts = _counts(experts, n_experts)
    yield (
        counts,
        f"these are counts: divide by the number of assignments, T * k = {tokens * k}, so that "
        "the shares sum to 1",
    )
    if k > 1:
        yield (
            counts / tokens,
            f"your shares sum to k = {k}: you divided by the {tokens} tokens; there are "
            f"T * k = {tokens * k} assignments, divide by that (experts.numel())",
        )
        first = _counts(experts[:, :1], n_experts)
        yield (
            first / tokens,
            "you counted only each token's first choice: count all k choices (experts.flatten())",
        )
        yield (
            first / (tokens * k),
            "you counted only each token's first choice: count all k choices (experts.flatten())",
        )


def _shares_problem(received: Any, expected: dict) -> str | None:
    got, want = received["out"], expected["out"]
    experts, n_experts = received["inputs"]
    if isinstance(got, torch.Tensor) and got.dim() == 1 and got.shape != want.shape:
        seen = int(experts.max()) + 1
        if got.shape[0] == seen < n_experts:
            return (
                f"your vector has {seen} entries for {n_experts} experts: experts {seen} to "
                f"{n_experts - 1} got nothing here, and torch.bincount stops at the largest id "
                "it sees; pass minlength=n_experts"
            )
    if isinstance(got, torch.Tensor) and got.shape == want.shape:
        if not got.is_floating_point() and got.dtype != torch.bool:
            if torch.equal(got.cpu().double(), _counts(experts, n_experts)):
                tokens, k = experts.shape
                return (
                    f"these are counts ({_dtype(got)}): divide by the number of assignments, "
                    f"T * k = {tokens * k}, and return float32 shares that sum to 1"
                )
            return f"expected float32 shares, received {_dtype(got)}"
        if got.dtype == torch.float64:
            got = got.float()  # float64 arithmetic is fine
    problem = compare_tensors(got, want, atol=PROB_ATOL, rtol=PROB_RTOL)
    if problem is None or not isinstance(got, torch.Tensor) or got.shape != want.shape:
        return problem
    if not got.is_floating_point():
        return problem
    slip = _first_slip(got, _share_slips(experts, n_experts), PROB_ATOL, PROB_RTOL)
    return slip if slip is not None else problem


def check_expert_shares(expert_shares: Callable) -> CheckResult:
    """Check ``expert_shares(experts, n_experts) -> f``, (E,) float32 summing to 1."""
    return run_check(
        "expert_shares",
        expert_shares,
        reference_expert_shares,
        _shares_cases(),
        hint="counts = torch.bincount(experts.flatten(), minlength=n_experts); return "
        "counts.float() / experts.numel().",
        run=_run_shares,
        compare=_shares_problem,
        arg_names=("experts", "n_experts"),
        forbid=FORBID,
    )


# --------------------------------------------------------------------------------------------
# load_balancing_loss


def _balance_cases() -> list[Case]:
    def case(name, tokens, n_experts, k, seed, scale=2.0, hint=""):
        probs = _probs(tokens, n_experts, seed, scale)
        return Case(name, (probs, _chosen(probs, k)), hint=hint)

    collapsed = (randn(16, 8, seed=654) + torch.tensor([6.0] + [0.0] * 7)).softmax(dim=-1)
    uniform = torch.full((8, 4), 0.25)
    even = torch.tensor([[0, 1], [2, 3], [1, 2], [3, 0], [0, 2], [1, 3], [2, 0], [3, 1]])
    return [
        case("16 tokens over 8 experts, k = 2, a random router", 16, 8, 2, 650),
        case("k = 1 (Switch Transformer), 20 tokens over 8 experts", 20, 8, 1, 652),
        Case(
            "a collapsed router: every token puts most of its probability on expert 0, k = 2",
            (collapsed, _chosen(collapsed, 2)),
        ),
        Case(
            "an even router: uniform probabilities, each of 4 experts chosen 4 times: loss 1",
            (uniform, even),
        ),
        case("64 tokens over 16 experts, k = 4", 64, 16, 4, 656),
        case("a confident router (logits of scale 6), 24 tokens, k = 2 of 6", 24, 6, 2, 658, 6.0),
    ]


def _balance_slips(probs: torch.Tensor, experts: torch.Tensor) -> list[tuple[torch.Tensor, str]]:
    """(what a slip gives, the words that name it), the usual slips in turn."""
    p = probs.double()
    tokens, n_experts = p.shape
    k = experts.shape[1]
    n = tokens * k
    counts = _counts(experts, n_experts)
    f = counts / n
    big_p = p.mean(dim=0)
    chosen = torch.zeros_like(p).scatter(1, experts, 1.0)
    ours = n_experts * (f * big_p).sum()
    double = p.softmax(dim=-1).mean(dim=0)
    chosen_weights = torch.zeros_like(p).scatter(1, experts, _renorm(p.gather(1, experts)))
    chosen_words = (
        "P_i is the mean of the FULL softmax over ALL tokens, probs.mean(dim=0), chosen or not. "
        "With the chosen entries only, the loss also falls when the router merely flattens its "
        "probabilities, without moving any token (the lab's experiment measures it)"
    )
    slips = [
        (
            n_experts * (f * (p * chosen).mean(dim=0)).sum(),
            "your P_i keeps only the probabilities of the experts each token chose (zero "
            f"elsewhere): {chosen_words}",
        ),
        (
            n_experts * (f * (p * chosen).sum(dim=0) / counts.clamp(min=1)).sum(),
            "your P_i averages each expert's probability over the tokens that chose it only: "
            f"{chosen_words}",
        ),
        (
            n_experts * (f * chosen_weights.mean(dim=0)).sum(),
            "your P_i is the mean of the chosen (renormalised) weights, zero elsewhere: "
            f"{chosen_words}",
        ),
        (
            n_experts * (f * double).sum(),
            "you applied softmax to probs, which are already probabilities: softmax of numbers "
            f"in [0, 1] is nearly uniform, so your P ranges over [{double.min():.3f}, "
            f"{double.max():.3f}] where the router's P ranges over [{big_p.min():.3f}, "
            f"{big_p.max():.3f}]: flattened towards 1/E = {1 / n_experts:.3f}, it barely "
            "follows the router; use probs as they are",
        ),
        (
            ours / n_experts,
            f"your loss is the expected one divided by E = {n_experts}: the factor E is missing, "
            "or you averaged over the experts where the formula sums (E * mean_i f_i P_i is "
            "only sum_i f_i P_i); L = E * sum_i f_i P_i, which is 1 for an even router whatever E",
        ),
        (
            ours / n_experts**2,
            f"your loss is the expected one divided by E**2 = {n_experts**2}: sum over the "
            "experts (not a mean) and multiply by E",
        ),
    ]
    if k > 1:
        f_first = _counts(experts[:, :1], n_experts) / tokens
        slips += [
            (
                k * ours,
                f"your loss is k = {k} times the expected one: that is transformers' convention "
                "(load_balancing_loss_func counts each of the k choices as its own share, so f "
                f"sums to k; dividing the counts by T alone does the same); here f is the share "
                f"of all T * k = {n} assignments and sums to 1",
            ),
            (
                n_experts * (f_first * big_p).sum(),
                "your f counts only each token's first choice: count all k choices, the share "
                f"of all T * k = {n} assignments (experts.flatten())",
            ),
        ]
    slips += [
        (
            n_experts * (counts * big_p).sum(),
            f"your f are counts: divide them by the T * k = {n} assignments, so that f sums to 1",
        ),
        (
            n_experts * (f * p.sum(dim=0)).sum(),
            f"your P_i is a sum over the {tokens} tokens: it is the MEAN probability, "
            "probs.mean(dim=0)",
        ),
        (
            (f * big_p).sum() * n_experts * n_experts,
            f"your loss is E = {n_experts} times the expected one: multiply by E once",
        ),
    ]
    return slips


def _run_balance(fn: Callable, probs: torch.Tensor, experts: torch.Tensor) -> dict:
    leaf = probs.clone().requires_grad_(True)
    out = fn(leaf, experts.clone())
    grad = None
    if (
        isinstance(out, torch.Tensor)
        and out.is_floating_point()
        and out.numel() == 1
        and out.requires_grad
    ):
        try:
            (grad,) = torch.autograd.grad(out.sum(), leaf, allow_unused=True)
        except RuntimeError:
            grad = None
    return {"out": out, "grad": grad, "inputs": (probs, experts)}


def _balance_problem(received: Any, expected: dict) -> str | None:
    value, want = received["out"], expected["out"]
    problem = _scalar_problem(value, "E * sum_i f_i P_i")
    if problem is not None:
        return problem
    if not _close(value, want, LOSS_ATOL, LOSS_RTOL):
        for wrong, words in _balance_slips(*received["inputs"]):
            if _close(value, wrong, LOSS_ATOL, LOSS_RTOL):
                return words
        return compare_tensors(
            value.detach().double(), want.double(), atol=LOSS_ATOL, rtol=LOSS_RTOL
        )
    grad, want_grad = received["grad"], expected["grad"]
    if grad is None:
        return (
            "the value is right but no gradient reaches probs (a .detach(), .item(), "
            "torch.no_grad() or numpy on the way): the loss trains the router through P, the "
            "mean of probs, so compute P with torch operations on probs"
        )
    if not _close(grad, want_grad, LOSS_ATOL, LOSS_RTOL):
        return (
            "the value is right but its gradient with respect to probs is not: f is a count "
            "(no gradient); the gradient flows through P_i = probs.mean(dim=0) alone, "
            "E * f_i / T for every token's probability of expert i"
        )
    return None


def check_load_balancing_loss(load_balancing_loss: Callable) -> CheckResult:
    """Check ``load_balancing_loss(probs, experts) -> loss``, a 0-dim float tensor."""
    return run_check(
        "load_balancing_loss",
        load_balancing_loss,
        reference_load_balancing_loss,
        _balance_cases(),
        hint="E = probs.shape[1]; f = the shares of experts (your expert_shares); P = "
        "probs.float().mean(dim=0); return E * (f * P).sum().",
        run=_run_balance,
        compare=_balance_problem,
        arg_names=("probs", "experts"),
        forbid=FORBID,
    )


# --------------------------------------------------------------------------------------------
# router_z_loss


def _z_cases() -> list[Case]:
    def case(name, tokens, n_experts, seed, scale=1.0, shift=0.0, dtype=torch.float32, hint=""):
        logits = randn(tokens, n_experts, seed=seed, scale=scale) + shift
        return Case(name, (logits.to(dtype),), hint=hint)

    return [
        case("16 tokens, 8 experts, logits of scale 1", 16, 8, 660),
        Case(
            "all logits 0: logsumexp = log 8 for every token",
            (torch.zeros(6, 8),),
        ),
        case("logits shifted by +5: a loss of about 50", 12, 8, 662, shift=5.0),
        case(
            "logits of scale 60: exp overflows float32",
            10, 8, 664, scale=60.0,
            hint="exp of a logit above 88 is inf in float32: torch.logsumexp(logits, dim=-1) "
            "subtracts each token's max before exp.",
        ),
        case(
            "bfloat16 logits: the loss in float32",
            16, 8, 666, scale=2.0, dtype=torch.bfloat16,
            hint="cast before the logsumexp, not after: torch.logsumexp(logits.float(), dim=-1).",
        ),
        case("one token, 64 experts", 1, 64, 668, scale=3.0),
    ]  # fmt: skip


def _z_slips(logits: torch.Tensor) -> Iterator[tuple[torch.Tensor, str]]:
    z = logits.double()
    tokens = z.shape[0]
    lse = z.logsumexp(dim=-1)
    yield (
        lse.mean(),
        "you did not square logsumexp: the z-loss is the mean over tokens of logsumexp(logits)**2",
    )
    if tokens > 1:
        yield (
            lse.square().sum(),
            f"your loss is the sum over the {tokens} tokens: take the mean (.mean())",
        )
        yield (
            lse.mean().square(),
            "you squared the mean of logsumexp: square each token's logsumexp, then take the "
            "mean over tokens",
        )
    yield (
        z.amax(dim=-1).square().mean(),
        "you used each token's max logit: the z-loss uses logsumexp(logits, dim=-1), which is "
        "the max plus log of sum exp(logits - max)",
    )
    yield (
        z.mean().square(),
        "that is the squared mean of the logits: the z-loss squares logsumexp(logits, dim=-1) "
        "of each token, then averages over tokens",
    )
    yield (
        z.mean(dim=-1).square().mean(),
        "that is the mean of each token's squared mean logit: the z-loss squares "
        "logsumexp(logits, dim=-1), not the mean",
    )
    yield (
        z.square().mean(),
        "that is the mean of the squared logits: the z-loss squares logsumexp(logits, dim=-1)",
    )
    if tokens > 1:
        yield (
            z.logsumexp(dim=0).square().mean(),
            "your logsumexp runs over the tokens (dim 0): each token's logsumexp runs over its "
            "experts, dim=-1",
        )


def _run_z(fn: Callable, logits: torch.Tensor) -> dict:
    return {"out": fn(logits.clone()), "inputs": (logits,)}


def _z_problem(received: Any, expected: dict) -> str | None:
    value, want = received["out"], expected["out"]
    (logits,) = received["inputs"]
    problem = _scalar_problem(value, "the mean over tokens of logsumexp(logits)**2")
    if problem is not None:
        return problem
    if _close(value, want, LOSS_ATOL, LOSS_RTOL):
        return None
    number = float(value.detach())
    if math.isinf(number) or math.isnan(number):
        return (
            f"received {number}: exp of a large logit overflows float32 (above 88), so "
            "log(sum(exp(logits))) is inf; torch.logsumexp(logits, dim=-1) subtracts the max "
            "first"
        )
    slip = _first_slip(value, _z_slips(logits), LOSS_ATOL, LOSS_RTOL)
    if slip is not None:
        return slip
    return compare_tensors(value.detach().double(), want.double(), atol=LOSS_ATOL, rtol=LOSS_RTOL)


def check_router_z_loss(router_z_loss: Callable) -> CheckResult:
    """Check ``router_z_loss(logits) -> loss``, a 0-dim float32 tensor."""
    return run_check(
        "router_z_loss",
        router_z_loss,
        reference_router_z_loss,
        _z_cases(),
        hint="return torch.logsumexp(logits.float(), dim=-1).square().mean().",
        run=_run_z,
        compare=_z_problem,
        arg_names=("logits",),
        forbid=FORBID,
    )
