"""The checks of chapter 03's training labs (llmlab.checks.pretraining: schedule_and_adamw,
training_step).

For every check: the reference passes, other correct answers pass too (torch's own optimizer
and clipping, llmlab.training's pieces), plausible wrong answers (mutants) fail on the case that
exposes them with a hint that names the mistake, a NotImplementedError stub reports "not
implemented", garbage never raises, and the notebook's global seed does not move.
"""

from __future__ import annotations

import math

import pytest
import torch
from check_contract import CheckContract, student_copy

from llmlab import training as tr
from llmlab.checks.pretraining import schedule_and_adamw as sa
from llmlab.checks.pretraining import training_step as ts

CHECKS = {
    "check_warmup_cosine": (sa.check_warmup_cosine, sa.reference_warmup_cosine),
    "check_adamw_step": (sa.check_adamw_step, sa.reference_adamw_step),
    "check_orthogonalize": (sa.check_orthogonalize, sa.reference_orthogonalize),
    "check_train_step": (ts.check_train_step, ts.reference_train_step),
}


GARBAGE = {
    "returns a list": lambda *a, **k: [0.1, 0.9],
    "returns a string": lambda *a, **k: "0.5",
    "returns NaN": lambda *a, **k: float("nan"),
    "returns its first input": lambda x, *a, **k: x,
    "takes no arguments": lambda: 1.0,
}


class TestContract(CheckContract):
    MODULES = (sa, ts)
    CHECKS = CHECKS
    GARBAGE = GARBAGE
    MIN_CASES = 6


# --------------------------------------------------------------------------------------------
# warmup_cosine: correct variants and mutants


def schedule_lambda_lr(step, total_steps, warmup_frac=0.1, min_ratio=0.0):
    # The same curve written with the cosine's phase in steps rather than a 0..1 progress.
    warmup = round(warmup_frac * total_steps)
    if step < warmup:
        return (step + 1) / warmup
    span = max(1, total_steps - 1 - warmup)
    return min_ratio + (1 - min_ratio) * (1 + math.cos(math.pi * (step - warmup) / span)) / 2


def schedule_warmup_from_zero(step, total_steps, warmup_frac=0.1, min_ratio=0.0):
    warmup = round(warmup_frac * total_steps)
    if step < warmup:
        return step / warmup
    return schedule_lambda_lr(step, total_steps, warmup_frac, min_ratio)


def schedule_misses_min(step, total_steps, warmup_frac=0.1, min_ratio=0.0):
    warmup = round(warmup_frac * total_steps)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / (total_steps - warmup)  # never reaches 1
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def schedule_cosine_without_half(step, total_steps, warmup_frac=0.1, min_ratio=0.0):
    warmup = round(warmup_frac * total_steps)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - 1 - warmup)
    return min_ratio + (1 - min_ratio) * (1 + math.cos(math.pi * progress))  # from 2 to 0


def schedule_decays_over_all_steps(step, total_steps, warmup_frac=0.1, min_ratio=0.0):
    warmup = round(warmup_frac * total_steps)
    if step < warmup:
        return (step + 1) / warmup
    progress = step / (total_steps - 1)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def schedule_ignores_min_ratio(step, total_steps, warmup_frac=0.1, min_ratio=0.0):
    return schedule_lambda_lr(step, total_steps, warmup_frac, 0.0)


def schedule_no_warmup(step, total_steps, warmup_frac=0.1, min_ratio=0.0):
    return schedule_lambda_lr(step, total_steps, 0.0, min_ratio)


def _schedule_with(warmup_steps, guard=True, cos=math.cos):
    def warmup_cosine(step, total_steps, warmup_frac=0.1, min_ratio=0.0):
        warmup = warmup_steps(warmup_frac * total_steps)
        if step < warmup:
            return (step + 1) / warmup
        decay = total_steps - 1 - warmup
        progress = (step - warmup) / (max(1, decay) if guard else decay)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + cos(math.pi * progress))

    return warmup_cosine


schedule_no_max_guard = _schedule_with(round, guard=False)  # 0 / 0 when no decay step is left
schedule_floor_warmup = _schedule_with(int)  # int(3.7) = 3 warmup steps
schedule_ceil_warmup = _schedule_with(math.ceil)  # ceil(3.2) = 4 warmup steps
schedule_returns_tensors = _schedule_with(round, cos=lambda a: torch.cos(torch.tensor(a)))


# --------------------------------------------------------------------------------------------
# adamw_step: correct variants and mutants


def adamw_torch(params, grads, state, lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.01):
    # torch.optim.AdamW itself, kept in the state dict between calls.
    if not state:
        state["params"] = [torch.nn.Parameter(p.clone()) for p in params]
        state["opt"] = torch.optim.AdamW(
            state["params"], lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=False
        )
    for shadow, p, g in zip(state["params"], params, grads, strict=True):
        shadow.data.copy_(p)
        shadow.grad = g.clone()
    for group in state["opt"].param_groups:
        group["lr"] = lr
    state["opt"].step()
    for shadow, p in zip(state["params"], params, strict=True):
        p.copy_(shadow.detach())


def adamw_llmlab(params, grads, state, lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.01):
    if not state:
        state["params"] = [torch.nn.Parameter(p.clone()) for p in params]
        state["opt"] = tr.AdamW(
            state["params"], lr=lr, betas=betas, eps=eps, weight_decay=weight_decay
        )
    for shadow, p, g in zip(state["params"], params, grads, strict=True):
        shadow.data.copy_(p)
        shadow.grad = g.clone()
    for group in state["opt"].param_groups:
        group["lr"] = lr
    state["opt"].step()
    for shadow, p in zip(state["params"], params, strict=True):
        p.copy_(shadow.detach())


def make_adamw(
    l2=False,
    bias_correction=True,
    eps_inside=False,
    beta2_for_m=False,
    step_from_zero=False,
    decay_without_lr=False,
    decay_after=False,
):
    def adamw_step(params, grads, state, lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.01):
        beta1, beta2 = betas
        if not state:
            state.update(
                step=0,
                m=[torch.zeros_like(p) for p in params],
                v=[torch.zeros_like(p) for p in params],
            )
        if not step_from_zero:
            state["step"] += 1
        t = state["step"]
        for p, g, m, v in zip(params, grads, state["m"], state["v"], strict=True):
            if l2:
                g = g + weight_decay * p
            elif not decay_after:
                p.mul_(1 - (1 if decay_without_lr else lr) * weight_decay)
            b1 = beta2 if beta2_for_m else beta1
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            m_hat = m / (1 - beta1**t) if bias_correction else m
            v_hat = v / (1 - beta2**t) if bias_correction else v
            denom = (v_hat + eps).sqrt() if eps_inside else v_hat.sqrt() + eps
            p.sub_(lr * m_hat / denom)
            if decay_after:
                p.mul_(1 - lr * weight_decay)
        if step_from_zero:
            state["step"] += 1

    return adamw_step


adamw_plain = make_adamw()
adamw_l2 = make_adamw(l2=True)
adamw_no_bias_correction = make_adamw(bias_correction=False)
adamw_eps_inside_sqrt = make_adamw(eps_inside=True)
adamw_beta2_for_m = make_adamw(beta2_for_m=True)
adamw_step_from_zero = make_adamw(step_from_zero=True)
adamw_decay_without_lr = make_adamw(decay_without_lr=True)
adamw_decay_after_update = make_adamw(decay_after=True)


def adamw_step_per_tensor(params, grads, state, lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.01):
    # Counts the step once per TENSOR instead of once per call.
    if not state:
        state.update(
            step=0, m=[torch.zeros_like(p) for p in params], v=[torch.zeros_like(p) for p in params]
        )
    beta1, beta2 = betas
    for p, g, m, v in zip(params, grads, state["m"], state["v"], strict=True):
        state["step"] += 1
        t = state["step"]
        p.mul_(1 - lr * weight_decay)
        m.mul_(beta1).add_(g, alpha=1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        p.sub_(lr * (m / (1 - beta1**t)) / ((v / (1 - beta2**t)).sqrt() + eps))


adamw_step_copy = student_copy(sa.reference_adamw_step)  # the reference, typed by a student


def adamw_returns_new_tensors(
    params, grads, state, lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.01
):
    # Computes the right values but never writes them into params.
    copies = [p.clone() for p in params]
    adamw_step_copy(copies, grads, state, lr, betas, eps, weight_decay)
    return copies


# --------------------------------------------------------------------------------------------
# train_step: correct variants and mutants


def step_llmlab_clip(model, micro_batches, optimizer, loss_fn, clip_norm=1.0):
    # llmlab's clipping, zero_grad at the END of the step: also correct.
    total = 0.0
    for batch in micro_batches:
        loss = loss_fn(model, batch) / len(micro_batches)
        loss.backward()
        total += loss.item()
    if clip_norm is not None:
        tr.clip_grad_norm(list(model.parameters()), clip_norm)
    optimizer.step()
    optimizer.zero_grad()
    return total


def step_mean_of_losses(model, micro_batches, optimizer, loss_fn, clip_norm=1.0):
    # One backward on the mean of the losses: the same gradient, more memory.
    optimizer.zero_grad()
    loss = torch.stack([loss_fn(model, b) for b in micro_batches]).mean()
    loss.backward()
    if clip_norm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    optimizer.step()
    return loss.item()


def make_step(divide=True, clip="global", zero="before", step="once", clip_when="after"):
    def train_step(model, micro_batches, optimizer, loss_fn, clip_norm=1.0):
        params = list(model.parameters())
        n = len(micro_batches)
        if zero == "before":
            optimizer.zero_grad()
        total = 0.0
        for i, batch in enumerate(micro_batches):
            if zero == "inside":
                optimizer.zero_grad()
            if clip_when == "before_last" and i == n - 1 and clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, clip_norm)
            loss = loss_fn(model, batch)
            loss = loss / n if divide else loss
            loss.backward()
            total += loss.item()
            if step == "per_micro":
                optimizer.step()
        if clip_norm is not None and clip_when == "after":
            if clip == "global":
                torch.nn.utils.clip_grad_norm_(params, clip_norm)
            else:
                for p in params:
                    torch.nn.utils.clip_grad_norm_([p], clip_norm)
        if step == "once":
            optimizer.step()
        return total if divide else total / n

    return train_step


step_plain = make_step()
step_no_division = make_step(divide=False)
step_clip_per_parameter = make_step(clip="per_parameter")
step_clip_before_last_backward = make_step(clip_when="before_last")
step_zero_inside_loop = make_step(zero="inside")
step_never_zeroes = make_step(zero="never")
step_forgets_step = make_step(step="never")
step_steps_per_micro_batch = make_step(step="per_micro")


def step_returns_last_loss(model, micro_batches, optimizer, loss_fn, clip_norm=1.0):
    step_plain(model, micro_batches, optimizer, loss_fn, clip_norm)
    with torch.no_grad():
        return loss_fn(model, micro_batches[-1]).item()


def step_returns_a_tensor(model, micro_batches, optimizer, loss_fn, clip_norm=1.0):
    # The right steps, but the loss comes back as a 0-dim tensor (no .item()).
    optimizer.zero_grad()
    total = 0.0
    for batch in micro_batches:
        loss = loss_fn(model, batch) / len(micro_batches)
        loss.backward()
        total = total + loss.detach()
    if clip_norm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    optimizer.step()
    return total


def step_returns_nothing(model, micro_batches, optimizer, loss_fn, clip_norm=1.0):
    step_plain(model, micro_batches, optimizer, loss_fn, clip_norm)


# --------------------------------------------------------------------------------------------
# orthogonalize: correct variants and mutants


def make_ns(
    normalize="frobenius",
    coefficients=tr.NS_COEFFICIENTS,
    right=False,
    transpose=True,
    transpose_back=True,
    fixed_steps=None,
    to_float=False,
):
    def orthogonalize(g, steps=5):
        a, b, c = coefficients
        tall = transpose and g.shape[0] > g.shape[1]
        x = g.T if tall else g
        if to_float:
            x = x.float()
        if normalize == "frobenius":
            x = x / x.norm()
        elif normalize == "spectral":
            x = x / torch.linalg.matrix_norm(x, ord=2)
        for _ in range(fixed_steps or steps):
            gram = x @ x.T
            poly = b * gram + c * gram @ gram
            x = a * x + (x @ poly if right else poly @ x)
        return x.T if tall and transpose_back else x

    return orthogonalize


def ns_llmlab(g, steps=5):
    return tr.orthogonalize(g, steps)


ns_plain = make_ns()
ns_on_the_long_side = make_ns(transpose=False)  # p(X X^T) X == X p(X^T X): slower, same result
ns_not_normalised = make_ns(normalize=None)
ns_spectral_norm = make_ns(normalize="spectral")
ns_b_and_c_swapped = make_ns(coefficients=(3.4445, 2.0315, -4.7750))
ns_polynomial_on_the_right = make_ns(right=True)
ns_not_transposed_back = make_ns(transpose_back=False)
ns_always_five_steps = make_ns(fixed_steps=5)
ns_in_float32 = make_ns(to_float=True)


# --------------------------------------------------------------------------------------------
# Correct variants pass; each mutant fails on the case that exposes it (run by CheckContract)

CORRECT_VARIANTS = [
    ("check_warmup_cosine", schedule_lambda_lr),
    ("check_adamw_step", adamw_plain),
    ("check_orthogonalize", ns_plain),
    ("check_orthogonalize", ns_on_the_long_side),
    ("check_train_step", step_plain),
    ("check_train_step", step_llmlab_clip),
    ("check_train_step", step_mean_of_losses),
]


NO_WARMUP = "no warmup: 50 steps, warmup_frac 0"
WITH_WARMUP = "100 steps, 10% warmup, down to 0"
FIRST_ADAMW = "one tensor (5,), one step, lr 0.01, no decay"
DECAY = "weight decay 0.1 with lr 0.1, 20 steps"
SQUARE_NS = "a square 6x6 matrix, 5 steps"
ONE_MICRO = "one micro-batch, no clipping, SGD"
FOUR_MICRO = "4 micro-batches, no clipping, SGD"
CLIPPED = "4 micro-batches, clip_norm 0.05 (active), SGD"
MUTANTS = [
    # (check, mutant, the first case that must fail, words the hint must contain)
    ("check_warmup_cosine", schedule_misses_min, NO_WARMUP, "exactly at the LAST step"),
    ("check_warmup_cosine", schedule_cosine_without_half, NO_WARMUP, "0.5 * (1 + cos"),
    ("check_warmup_cosine", schedule_warmup_from_zero, WITH_WARMUP, "1/warmup (not 0)"),
    ("check_warmup_cosine", schedule_decays_over_all_steps, WITH_WARMUP, "REMAINING steps"),
    ("check_warmup_cosine", schedule_no_warmup, WITH_WARMUP, "(step + 1) / warmup"),
    (
        "check_warmup_cosine",
        schedule_ignores_min_ratio,
        "seed 000's recipe: 300 steps, 10% warmup, down to 10%",
        "the floor is min_ratio",
    ),
    (
        "check_warmup_cosine",
        schedule_floor_warmup,
        "37 steps, 10% warmup: round(3.7) = 4 warmup steps",
        "int() and math.floor",
    ),
    (
        "check_warmup_cosine",
        schedule_ceil_warmup,
        "32 steps, 10% warmup: round(3.2) = 3 warmup steps",
        "math.ceil",
    ),
    (
        "check_warmup_cosine",
        schedule_no_max_guard,
        "one step after the warmup: 10 steps, 90% warmup",
        "raised ZeroDivisionError",
    ),
    ("check_warmup_cosine", schedule_returns_tensors, NO_WARMUP, "expected a Python float"),
    ("check_adamw_step", adamw_no_bias_correction, FIRST_ADAMW, "bias correction"),
    ("check_adamw_step", adamw_step_from_zero, FIRST_ADAMW, "t = 1"),
    ("check_adamw_step", adamw_beta2_for_m, FIRST_ADAMW, "m = (1 - beta1) g"),
    ("check_adamw_step", adamw_returns_new_tensors, FIRST_ADAMW, "in place"),
    (
        "check_adamw_step",
        adamw_step_per_tensor,
        "two tensors (4, 3) and (3,), 10 steps, lr 0.01, no decay",
        "ONCE per call",
    ),
    ("check_adamw_step", adamw_l2, DECAY, "Adam + L2"),
    ("check_adamw_step", adamw_decay_without_lr, DECAY, "1 - lr * weight_decay"),
    ("check_adamw_step", adamw_decay_after_update, DECAY, "before the Adam update"),
    (
        "check_adamw_step",
        adamw_eps_inside_sqrt,
        "tiny gradients (x 1e-4), 10 steps",
        "OUTSIDE the square root",
    ),
    ("check_orthogonalize", ns_not_normalised, SQUARE_NS, "g / g.norm()"),
    ("check_orthogonalize", ns_spectral_norm, SQUARE_NS, "the Frobenius norm"),
    ("check_orthogonalize", ns_b_and_c_swapped, SQUARE_NS, "in that order"),
    ("check_orthogonalize", ns_polynomial_on_the_right, SQUARE_NS, "from the LEFT"),
    (
        "check_orthogonalize",
        ns_not_transposed_back,
        "a tall 10x4 matrix, 5 steps",
        "transpose the result back",
    ),
    ("check_orthogonalize", ns_always_five_steps, "one step", "not a fixed 5"),
    ("check_orthogonalize", ns_in_float32, "float64 in, float64 out", "no .float()"),
    ("check_train_step", step_forgets_step, ONE_MICRO, "optimizer.step() once"),
    ("check_train_step", step_never_zeroes, ONE_MICRO, "zero the gradients"),
    ("check_train_step", step_returns_last_loss, ONE_MICRO, "return the loss"),
    ("check_train_step", step_returns_a_tensor, ONE_MICRO, "expected a Python float"),
    ("check_train_step", step_returns_nothing, ONE_MICRO, "returned is None, expected a Python"),
    ("check_train_step", step_no_division, FOUR_MICRO, "divide each micro-batch's loss"),
    ("check_train_step", step_zero_inside_loop, FOUR_MICRO, "zero them once, before the loop"),
    (
        "check_train_step",
        step_steps_per_micro_batch,
        FOUR_MICRO,
        "optimizer.step() once after the loop",
    ),
    ("check_train_step", step_clip_per_parameter, CLIPPED, "ALL gradients together"),
    ("check_train_step", step_clip_before_last_backward, CLIPPED, "after the LAST backward"),
]


def test_the_references_equal_llmlab_train():
    # The lab's references and the package the chapter uses are the same maths.
    for total, frac, low in ((100, 0.1, 0.0), (37, 0.2, 0.3), (5, 0.0, 0.1)):
        ours = [sa.reference_warmup_cosine(s, total, frac, low) for s in range(total)]
        assert ours == pytest.approx([tr.warmup_cosine(s, total, frac, low) for s in range(total)])
    for shape in ((5, 9), (9, 5)):
        g = sa.MatrixCase(shape, spread=30.0).matrix()
        torch.testing.assert_close(sa.reference_orthogonalize(g), tr.orthogonalize(g))
    case = sa.AdamWCase(((3, 4), (4,)), 100, 1e-2, weight_decay=0.1, schedule=True)
    torch.testing.assert_close(
        sa._adamw_trajectory(sa.reference_adamw_step, case),
        sa._adamw_trajectory(adamw_torch, case),
        atol=1e-6,
        rtol=1e-5,
    )


# --------------------------------------------------------------------------------------------
# Answers that call the library's schedule or optimizers: flagged (each computes the right
# values: see test_the_references_equal_llmlab_train)


def schedule_from_llmlab(step, total_steps, warmup_frac=0.1, min_ratio=0.0):
    return tr.warmup_cosine(step, total_steps, warmup_frac, min_ratio)


FORBIDDEN = [
    # (check, an answer that calls a forbidden op, the op as the message names it)
    ("check_warmup_cosine", schedule_from_llmlab, "llmlab.training.schedule.warmup_cosine"),
    ("check_adamw_step", adamw_torch, "torch.optim.adamw.AdamW.__init__"),
    ("check_adamw_step", adamw_llmlab, "llmlab.training.optim.AdamW.__init__"),
    ("check_orthogonalize", ns_llmlab, "llmlab.training.optim.orthogonalize"),
    (
        "check_orthogonalize",
        student_copy(sa.reference_orthogonalize),
        "llmlab.training.optim.orthogonalize",
    ),
]


def test_a_library_function_itself_is_not_the_students():
    result = sa.check_warmup_cosine(tr.warmup_cosine)
    assert result.kind == "not yours" and "llmlab.training.schedule.warmup_cosine" in result.message


def test_the_training_step_may_use_llmlabs_clipping():
    # Only library code that computes the whole answer is flagged, not the pieces it uses.
    assert ts.check_train_step(step_llmlab_clip).passed


def test_a_value_the_driver_cannot_use_is_the_checks_problem_not_an_error_in_your_code():
    # The drivers call the student's function many times and convert what it returns: a
    # value they cannot use fails as such (not as an exception raised by the student's code),
    # with a hint that does not describe the driver's own output as what to return.
    def returns_a_list(step, total_steps, warmup_frac=0.1, min_ratio=0.0):
        return [schedule_lambda_lr(step, total_steps, warmup_frac, min_ratio)]

    for check, fn in (
        (sa.check_warmup_cosine, returns_a_list),
        (ts.check_train_step, step_returns_nothing),
        (ts.check_train_step, step_returns_a_tensor),
    ):
        message = check(fn).message
        assert "the check could not use what your function returned (TypeError: " in message
        assert "your function raised" not in message and "the error is in your code" not in message
        assert "expected a Python float" in message
        assert "return what the exercise's docstring asks for" in message
        assert "torch.Tensor" not in message  # the driver's output is no answer to the exercise


def test_an_error_raised_in_your_code_under_a_driver_is_yours():
    def divides_by_zero(step, total_steps, warmup_frac=0.1, min_ratio=0.0):
        return 1 / (step - step)

    message = sa.check_warmup_cosine(divides_by_zero).message
    assert (
        "your function raised ZeroDivisionError: division by zero at `return 1 / (step" in message
    )
    assert "the error is in your code" in message
