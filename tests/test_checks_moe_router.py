"""The checks of chapter 06's router lab (llmlab.checks.mixture_of_experts.router).

For every check: the reference passes, other correct answers pass too (F.linear, a softmax
written out with the max subtracted, sort instead of topk, one_hot counts, a loop over the
experts, a logsumexp written out), plausible wrong answers (mutants) fail on the case that
exposes them with words that say what is wrong, a NotImplementedError stub reports "not
implemented", garbage never raises, and the global seed does not move.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from check_contract import CheckContract

from llmlab.checks.mixture_of_experts import router as rc
from llmlab.moe import losses
from llmlab.moe.router import route

CHECKS = {
    "check_router_probs": (rc.check_router_probs, rc.reference_router_probs),
    "check_top_k_route": (rc.check_top_k_route, rc.reference_top_k_route),
    "check_expert_shares": (rc.check_expert_shares, rc.reference_expert_shares),
    "check_load_balancing_loss": (
        rc.check_load_balancing_loss,
        rc.reference_load_balancing_loss,
    ),
    "check_router_z_loss": (rc.check_router_z_loss, rc.reference_router_z_loss),
}

GARBAGE = {
    "returns a number": lambda *a, **k: 0.5,
    "returns a string": lambda *a, **k: "router",
    "returns a list": lambda *a, **k: [0.1, 0.9],
    "returns its first input": lambda x, *a, **k: x,
    "returns a 0-dim tensor": lambda *a, **k: torch.tensor(1.0),
    "returns a dict": lambda *a, **k: {"probs": torch.ones(2, 2)},
    "returns a tuple of its first input": lambda x, *a, **k: (x, x),
    "returns a tuple of None": lambda *a, **k: (None, None),
    "returns a NaN tensor": lambda *a, **k: torch.tensor(float("nan")),
    "takes no arguments": lambda: torch.tensor(0.0),
}


class TestContract(CheckContract):
    MODULES = (rc,)
    CHECKS = CHECKS
    GARBAGE = GARBAGE
    MIN_CASES = 6


PRB, TOP, SHR, LBL, ZL = (
    "check_router_probs",
    "check_top_k_route",
    "check_expert_shares",
    "check_load_balancing_loss",
    "check_router_z_loss",
)
PRB_FIRST = "16 tokens, d_model 32, 8 experts"
PRB_SQUARE = "a square router weight: d_model = n_experts = 8, 12 tokens"
PRB_BF16 = "x and weight in bfloat16 (a model loaded in bf16): logits and probs in float32"
PRB_MIXED = "x in bfloat16, the router's weight in float32 (kept in float32, as routers often are)"
PRB_LARGE = "large logits: x of scale 60, so exp(logits) overflows float32"
TOP_FIRST = "12 tokens over 8 experts, k = 2 (renormalize by default)"
TOP_RAW = "k = 2, renormalize=False: the raw probabilities (DeepSeek-V2)"
TOP_SWITCH = "k = 1, renormalize=False: the top probability itself (Switch)"
SHR_FIRST = "12 tokens, k = 2, 8 experts"
SHR_EMPTY = "the last 3 of 8 experts get nothing (only experts 0 to 4 are chosen)"
LBL_FIRST = "16 tokens over 8 experts, k = 2, a random router"
ZL_FIRST = "16 tokens, 8 experts, logits of scale 1"
ZL_LARGE = "logits of scale 60: exp overflows float32"
ZL_BF16 = "bfloat16 logits: the loss in float32"

# --------------------------------------------------------------------------------------------
# router_probs


def probs_of(x, weight):
    logits = x.float() @ weight.float().T
    return logits, logits.softmax(dim=-1)


def probs_linear(x, weight):
    logits = F.linear(x.float(), weight.float())
    return logits, F.softmax(logits, dim=1)


def probs_by_hand(x, weight):  # the softmax written out, the max subtracted first
    logits = torch.einsum("td,ed->te", x.to(torch.float32), weight.to(torch.float32))
    e = (logits - logits.amax(dim=-1, keepdim=True)).exp()
    return logits, e / e.sum(dim=-1, keepdim=True)


def probs_dim0(x, weight):
    logits = x.float() @ weight.float().T
    return logits, logits.softmax(dim=0)


def probs_no_cast(x, weight):
    logits = x @ weight.T
    return logits, logits.softmax(dim=-1)


def probs_cast_after(x, weight):
    logits = (x @ weight.T).float()
    return logits, logits.softmax(dim=-1)


def probs_no_transpose(x, weight):
    logits = x.float() @ weight.float()
    return logits, logits.softmax(dim=-1)


def probs_swapped(x, weight):
    logits, probs = probs_of(x, weight)
    return probs, logits


def probs_only(x, weight):
    return probs_of(x, weight)[1]


def probs_exp_overflow(x, weight):
    logits = x.float() @ weight.float().T
    return logits, logits.exp() / logits.exp().sum(dim=-1, keepdim=True)


def probs_detached(x, weight):
    logits = x.float() @ weight.detach().float().T
    return logits, logits.softmax(dim=-1)


def probs_log(x, weight):
    logits = x.float() @ weight.float().T
    return logits, logits.log_softmax(dim=-1)


# --------------------------------------------------------------------------------------------
# top_k_route


def top_k(probs, k, renormalize=True):
    weights, experts = probs.topk(k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, experts


def top_k_sort(probs, k, renormalize=True):
    order = probs.argsort(dim=-1, descending=True)[:, :k]
    weights = probs.gather(-1, order)
    return (weights / weights.sum(-1, keepdim=True) if renormalize else weights), order


def top_k_no_renorm(probs, k, renormalize=True):
    return probs.topk(k, dim=-1)


def top_k_always_renorm(probs, k, renormalize=True):
    return top_k(probs, k, True)


def top_k_lowest(probs, k, renormalize=True):
    weights, experts = probs.topk(k, dim=-1, largest=False)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, experts


def top_k_softmax_of_probs(probs, k, renormalize=True):  # the weights "from the logits"
    weights, experts = probs.topk(k, dim=-1)
    return weights.softmax(dim=-1), experts


def top_k_log_weights(probs, k, renormalize=True):
    weights, experts = probs.log().topk(k, dim=-1)
    return weights, experts


def top_k_ids_sorted(probs, k, renormalize=True):  # sorted weights, ids in ascending order
    weights, experts = top_k(probs, k, renormalize)
    return weights, experts.sort(dim=-1).values


def top_k_ascending_pairs(probs, k, renormalize=True):  # the right pairs, smallest first
    weights, experts = top_k(probs, k, renormalize)
    return weights.flip(-1), experts.flip(-1)


def top_k_swapped(probs, k, renormalize=True):
    weights, experts = top_k(probs, k, renormalize)
    return experts, weights


def top_k_float_ids(probs, k, renormalize=True):
    weights, experts = top_k(probs, k, renormalize)
    return weights, experts.float()


def top_k_no_default(probs, k, renormalize):
    return top_k(probs, k, renormalize)


# --------------------------------------------------------------------------------------------
# expert_shares


def shares(experts, n_experts):
    return torch.bincount(experts.flatten(), minlength=n_experts).float() / experts.numel()


def shares_one_hot(experts, n_experts):
    return F.one_hot(experts, n_experts).sum(dim=(0, 1)).float() / experts.numel()


def shares_loop(experts, n_experts):
    return torch.tensor(
        [(experts == i).sum().item() / experts.numel() for i in range(n_experts)],
        dtype=torch.float64,
    )


def shares_counts(experts, n_experts):
    return torch.bincount(experts.flatten(), minlength=n_experts)


def shares_counts_float(experts, n_experts):
    return torch.bincount(experts.flatten(), minlength=n_experts).float()


def shares_per_token(experts, n_experts):  # divided by T: the shares sum to k
    return torch.bincount(experts.flatten(), minlength=n_experts).float() / experts.shape[0]


def shares_first_choice(experts, n_experts):
    return torch.bincount(experts[:, 0], minlength=n_experts).float() / experts.shape[0]


def shares_no_minlength(experts, n_experts):
    return torch.bincount(experts.flatten()).float() / experts.numel()


# --------------------------------------------------------------------------------------------
# load_balancing_loss


def balance(probs, experts):
    n_experts = probs.shape[1]
    f = torch.bincount(experts.flatten(), minlength=n_experts).float() / experts.numel()
    return n_experts * (f * probs.float().mean(dim=0)).sum()


def balance_one_hot(probs, experts):  # f from one_hot, the sum as a dot product
    n_experts = probs.shape[1]
    f = F.one_hot(experts, n_experts).float().mean(dim=(0, 1))
    return n_experts * torch.dot(f, probs.mean(dim=0))


def balance_loop(probs, experts):
    n_experts = probs.shape[1]
    loss = probs.new_zeros(())
    for i in range(n_experts):
        f_i = (experts == i).float().mean()
        loss = loss + f_i * probs[:, i].mean()
    return n_experts * loss


def balance_chosen_zero(probs, experts):  # P over the chosen experts only, zeros elsewhere
    n_experts = probs.shape[1]
    f = shares(experts, n_experts)
    chosen = torch.zeros_like(probs).scatter(1, experts, 1.0)
    return n_experts * (f * (probs * chosen).mean(dim=0)).sum()


def balance_chosen_weights(probs, experts):  # P = mean of the renormalised chosen weights
    n_experts = probs.shape[1]
    f = shares(experts, n_experts)
    w = probs.gather(1, experts)
    w = w / w.sum(-1, keepdim=True)
    return n_experts * (f * torch.zeros_like(probs).scatter(1, experts, w).mean(0)).sum()


def balance_chosen_mean(probs, experts):  # P over the tokens that chose each expert
    n_experts = probs.shape[1]
    f = shares(experts, n_experts)
    chosen = torch.zeros_like(probs).scatter(1, experts, 1.0)
    return n_experts * (f * (probs * chosen).sum(0) / chosen.sum(0).clamp(min=1)).sum()


def balance_double_softmax(probs, experts):
    n_experts = probs.shape[1]
    return n_experts * (shares(experts, n_experts) * probs.softmax(-1).mean(0)).sum()


def balance_no_e(probs, experts):
    return (shares(experts, probs.shape[1]) * probs.mean(0)).sum()


def balance_mean_over_experts(probs, experts):
    n_experts = probs.shape[1]
    return n_experts * (shares(experts, n_experts) * probs.mean(0)).mean()


def balance_top1(probs, experts):
    n_experts = probs.shape[1]
    return n_experts * (shares(experts[:, :1], n_experts) * probs.mean(0)).sum()


def balance_transformers(probs, experts):  # load_balancing_loss_func: one share per choice
    n_experts = probs.shape[1]
    tokens_per_expert = F.one_hot(experts, n_experts).float().mean(dim=0)  # (k, E)
    return n_experts * (tokens_per_expert * probs.mean(0)[None]).sum()


def balance_per_token_f(probs, experts):  # f divided by T: sums to k, the same k times ours
    n_experts = probs.shape[1]
    f = torch.bincount(experts.flatten(), minlength=n_experts).float() / experts.shape[0]
    return n_experts * (f * probs.mean(0)).sum()


def balance_detached(probs, experts):
    return balance(probs.detach(), experts)


def balance_item(probs, experts):
    return torch.tensor(balance(probs, experts).item())


# --------------------------------------------------------------------------------------------
# router_z_loss


def z_loss(logits):
    return torch.logsumexp(logits.float(), dim=-1).square().mean()


def z_loss_by_hand(logits):
    z = logits.double()
    m = z.amax(dim=-1, keepdim=True)
    lse = (m + (z - m).exp().sum(dim=-1, keepdim=True).log()).squeeze(-1)
    return (lse**2).mean()


def z_not_squared(logits):
    return torch.logsumexp(logits.float(), dim=-1).mean()


def z_sum(logits):
    return torch.logsumexp(logits.float(), dim=-1).square().sum()


def z_max(logits):
    return logits.float().amax(dim=-1).square().mean()


def z_squared_mean_logits(logits):
    return logits.float().mean().square()


def z_mean_squared_logits(logits):
    return logits.float().square().mean()


def z_squared_mean_lse(logits):
    return torch.logsumexp(logits.float(), dim=-1).mean().square()


def z_overflow(logits):
    return logits.float().exp().sum(dim=-1).log().square().mean()


def z_bf16(logits):
    return torch.logsumexp(logits, dim=-1).square().mean()


def z_over_tokens(logits):
    return torch.logsumexp(logits.float(), dim=0).square().mean()


# --------------------------------------------------------------------------------------------
# What the contract runs

CORRECT_VARIANTS = [
    (PRB, probs_of),
    (PRB, probs_linear),
    (PRB, probs_by_hand),
    (TOP, top_k),
    (TOP, top_k_sort),
    (SHR, shares),
    (SHR, shares_one_hot),
    (SHR, shares_loop),
    (LBL, balance),
    (LBL, balance_one_hot),
    (LBL, balance_loop),
    (ZL, z_loss),
    (ZL, z_loss_by_hand),
]

MUTANTS = [
    (PRB, probs_dim0, PRB_FIRST, "a softmax over the tokens (dim 0)"),
    (PRB, probs_no_transpose, PRB_FIRST, "the nn.Linear layout (n_experts, d_model)"),
    (PRB, probs_swapped, PRB_FIRST, "you returned (probs, logits)"),
    (PRB, probs_only, PRB_FIRST, "received a single tensor"),
    (PRB, probs_detached, PRB_FIRST, "carry no gradient back to weight"),
    (PRB, probs_log, PRB_FIRST, "these are log-probabilities"),
    (PRB, probs_no_cast, PRB_BF16, "your logits are bfloat16"),
    (PRB, probs_cast_after, PRB_BF16, "cast to float32 afterwards"),
    (PRB, probs_exp_overflow, PRB_LARGE, "your probs hold NaN"),
    (TOP, top_k_no_renorm, TOP_FIRST, "your weights are the raw probabilities"),
    (TOP, top_k_lowest, TOP_FIRST, "LOWEST probabilities"),
    (TOP, top_k_softmax_of_probs, TOP_FIRST, "as if they were logits"),
    (TOP, top_k_log_weights, TOP_FIRST, "log-probabilities"),
    (TOP, top_k_ids_sorted, TOP_FIRST, "do not belong together"),
    (TOP, top_k_ascending_pairs, TOP_FIRST, "not largest first"),
    (TOP, top_k_swapped, TOP_FIRST, "you returned (experts, weights)"),
    (TOP, top_k_float_ids, TOP_FIRST, "expected int64 expert ids"),
    (TOP, top_k_always_renorm, TOP_RAW, "renormalize=False asks for the raw probabilities"),
    (SHR, shares_counts, SHR_FIRST, "these are counts (int64)"),
    (SHR, shares_counts_float, SHR_FIRST, "these are counts"),
    (SHR, shares_per_token, SHR_FIRST, "your shares sum to k = 2"),
    (SHR, shares_first_choice, SHR_FIRST, "only each token's first choice"),
    (SHR, shares_no_minlength, SHR_EMPTY, "pass minlength=n_experts"),
    (LBL, balance_chosen_zero, LBL_FIRST, "keeps only the probabilities of the experts"),
    (LBL, balance_chosen_weights, LBL_FIRST, "the mean of the chosen (renormalised) weights"),
    (LBL, balance_chosen_mean, LBL_FIRST, "over the tokens that chose it only"),
    (LBL, balance_double_softmax, LBL_FIRST, "you applied softmax to probs"),
    (LBL, balance_no_e, LBL_FIRST, "the factor E is missing"),
    (LBL, balance_mean_over_experts, LBL_FIRST, "you averaged over the experts"),
    (LBL, balance_top1, LBL_FIRST, "only each token's first choice"),
    (LBL, balance_transformers, LBL_FIRST, "transformers' convention"),
    (LBL, balance_per_token_f, LBL_FIRST, "dividing the counts by T alone"),
    (LBL, balance_detached, LBL_FIRST, "no gradient reaches probs"),
    (LBL, balance_item, LBL_FIRST, "no gradient reaches probs"),
    (ZL, z_not_squared, ZL_FIRST, "you did not square logsumexp"),
    (ZL, z_sum, ZL_FIRST, "the sum over the 16 tokens"),
    (ZL, z_max, ZL_FIRST, "each token's max logit"),
    (ZL, z_squared_mean_logits, ZL_FIRST, "the squared mean of the logits"),
    (ZL, z_mean_squared_logits, ZL_FIRST, "the mean of the squared logits"),
    (ZL, z_squared_mean_lse, ZL_FIRST, "you squared the mean of logsumexp"),
    (ZL, z_over_tokens, ZL_FIRST, "runs over the tokens (dim 0)"),
    (ZL, z_overflow, ZL_LARGE, "overflows float32"),
    (ZL, z_bf16, ZL_BF16, "expected a float32 tensor, received bfloat16"),
]


# --------------------------------------------------------------------------------------------
# Answers that call the package's MoE code: flagged


def probs_with_the_package(x, weight):
    out = route(x.float() @ weight.float().T, 1)
    return out.logits, out.probs


def top_k_with_the_package(probs, k, renormalize=True):
    out = route(probs.log(), k, renormalize=renormalize)
    return out.weights, out.experts


def shares_with_the_package(experts, n_experts):
    return losses.expert_shares(experts, n_experts)


def balance_with_the_package(probs, experts):
    return losses.load_balancing_loss(probs, experts)


def z_loss_with_the_package(logits):
    return losses.router_z_loss(logits)


FORBIDDEN = [
    (PRB, probs_with_the_package, "llmlab.moe.router.route"),
    (TOP, top_k_with_the_package, "llmlab.moe.router.route"),
    (SHR, shares_with_the_package, "llmlab.moe.losses.expert_shares"),
    (LBL, balance_with_the_package, "llmlab.moe.losses.load_balancing_loss"),
    (ZL, z_loss_with_the_package, "llmlab.moe.losses.router_z_loss"),
]


# --------------------------------------------------------------------------------------------
# The cases hold what their names say


def test_the_route_cases_have_no_ties():
    # Without ties every correct selection (topk, a sort) gives the same experts.
    for case in rc._route_cases():
        for row in case.args[0]:
            assert row.unique().numel() == row.numel(), case.name


def test_the_shares_case_leaves_the_last_experts_empty():
    (case,) = [c for c in rc._shares_cases() if c.name == SHR_EMPTY]
    experts, n_experts = case.args
    assert int(experts.max()) == 4 and n_experts == 8
    for case in rc._shares_cases():
        if case.name != SHR_EMPTY:
            experts, n_experts = case.args
            assert int(experts.max()) == n_experts - 1, case.name  # bincount's length is right


def test_the_balance_cases_say_what_they_hold():
    for case in rc._balance_cases():
        probs, experts = case.args
        loss = rc.reference_load_balancing_loss(probs, experts)
        if "an even router" in case.name:
            assert abs(float(loss) - 1.0) < 1e-6
        if "collapsed" in case.name:
            assert bool((experts[:, 0] == 0).all()) and float(loss) > 3.0


def test_the_probs_cases_overflow_a_naive_softmax():
    (case,) = [c for c in rc._probs_cases() if c.name == PRB_LARGE]
    logits, _ = rc.reference_router_probs(*case.args)
    assert float(logits.abs().max()) > 89.0
    (case,) = [c for c in rc._z_cases() if c.name == ZL_LARGE]
    assert float(case.args[0].max()) > 89.0


def test_the_mixed_dtype_case_raises_without_a_cast_and_names_it():
    result = rc.check_router_probs(probs_no_cast_mixed_only)
    assert not result.passed and result.failed_case == PRB_MIXED
    assert "your function raised RuntimeError" in result.message
    assert "cast both to float32 first" in result.message


def probs_no_cast_mixed_only(x, weight):
    if x.dtype == weight.dtype:
        return probs_of(x, weight)  # right on every other case
    return probs_no_cast(x, weight)


def test_the_untransposed_weight_raises_on_a_non_square_case_with_the_layout_hint():
    result = rc.check_router_probs(probs_no_transpose)
    assert result.failed_case == PRB_FIRST
    assert "your function raised RuntimeError" in result.message
    assert "nn.Linear layout (n_experts, d_model)" in result.message


def test_the_untransposed_weight_is_named_on_the_square_case():
    result = rc.check_router_probs(probs_no_transpose_square_only)
    assert not result.passed and result.failed_case == PRB_SQUARE
    assert "your logits are x @ weight" in result.message


def probs_no_transpose_square_only(x, weight):
    if weight.shape[0] == weight.shape[1]:
        return probs_no_transpose(x, weight)
    return probs_of(x, weight)


def test_top_k_without_the_default_fails_on_the_default_case():
    result = rc.check_top_k_route(top_k_no_default)
    assert not result.passed and result.failed_case == TOP_FIRST


def test_the_switch_case_names_weights_of_one():
    result = rc.check_top_k_route(top_k_ones_for_k1)
    assert not result.passed and result.failed_case == TOP_SWITCH
    assert "your weights are all 1" in result.message


def top_k_ones_for_k1(probs, k, renormalize=True):
    if k == 1:
        return top_k(probs, k, True)
    return top_k(probs, k, renormalize)


def test_the_double_softmax_message_gives_the_measured_ranges():
    result = rc.check_load_balancing_loss(balance_double_softmax)
    assert "flattened towards 1/E = 0.125" in result.message
    assert "your P ranges over [" in result.message


def test_transformers_convention_is_k_times_ours():
    # What the check says about transformers' load_balancing_loss_func, measured here.
    (case,) = [c for c in rc._balance_cases() if c.name == LBL_FIRST]
    probs, experts = case.args
    ours = rc.reference_load_balancing_loss(probs, experts)
    k = experts.shape[1]
    assert torch.allclose(balance_transformers(probs, experts), k * ours)


def test_the_gradient_verdicts_survive_detached_replies():
    # The grader's worker sends tensors back detached: the drivers read the gradient themselves.
    (case,) = [c for c in rc._probs_cases() if c.name == PRB_FIRST]
    received = rc._run_probs(probs_of, *case.args)
    expected = rc._run_probs(rc.reference_router_probs, *case.args)
    received["out"] = tuple(t.detach() for t in received["out"])
    assert rc._probs_problem(received, expected) is None
    (case,) = [c for c in rc._balance_cases() if c.name == LBL_FIRST]
    received = rc._run_balance(balance, *case.args)
    expected = rc._run_balance(rc.reference_load_balancing_loss, *case.args)
    received["out"] = received["out"].detach()
    assert rc._balance_problem(received, expected) is None
