"""The checks of chapter 04's LoRA-layer lab (llmlab.checks.post_training.lora_layer).

For every check: the reference passes, other correct answers pass too (F.linear instead of @,
an in-place addmm_, counting by weight shapes), plausible wrong answers (mutants) fail on the
case that exposes them with words that say what is wrong, a NotImplementedError stub reports
"not implemented", garbage never raises, and the global seed does not move.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from check_contract import CheckContract, student_copy
from torch import nn

from llmlab.checks.post_training import lora_layer as ll
from llmlab.posttrain.lora import LoRALinear, inject_lora, trainable_parameters

CHECKS = {
    "check_lora_forward": (ll.check_lora_forward, ll.reference_lora_forward),
    "check_merge": (ll.check_merge, ll.reference_merge),
    "check_count_lora_parameters": (
        ll.check_count_lora_parameters,
        ll.reference_count_lora_parameters,
    ),
}

GARBAGE = {
    "returns a number": lambda *a, **k: 3.0,
    "returns a string": lambda *a, **k: "lora",
    "returns a list": lambda *a, **k: [0.1, 0.9],
    "returns NaN": lambda *a, **k: torch.tensor(math.nan),
    "returns its first input": lambda x, *a, **k: x,
    "takes no arguments": lambda: 0,
}


class TestContract(CheckContract):
    MODULES = (ll,)
    CHECKS = CHECKS
    GARBAGE = GARBAGE
    MIN_CASES = 6


# --------------------------------------------------------------------------------------------
# lora_forward

FIRST_FWD = "square 6 -> 6, r=1, alpha=1 (scaling 1), no bias"
SCALED = "12 -> 6, r=4, alpha=8 (scaling 2), no bias"
BIAS = "8 -> 10, r=2, alpha=4, with bias"
DROPOUT = "dropout p=0.5 on the branch, 12 -> 6, r=4"


def fwd(x, weight, bias, A, B, alpha, r, dropout):
    y = x @ weight.T
    if bias is not None:
        y = y + bias
    return y + alpha / r * (dropout(x) @ A.T @ B.T)


def fwd_functional(x, weight, bias, A, B, alpha, r, dropout):
    return F.linear(x, weight, bias) + (alpha / r) * F.linear(F.linear(dropout(x), A), B)


def fwd_einsum(x, weight, bias, A, B, alpha, r, dropout):
    branch = torch.einsum("...i,ri,or->...o", dropout(x), A, B)
    base = torch.einsum("...i,oi->...o", x, weight)
    return (base if bias is None else base + bias) + (alpha / r) * branch


def fwd_alpha_not_divided(x, weight, bias, A, B, alpha, r, dropout):
    return F.linear(x, weight, bias) + alpha * F.linear(F.linear(dropout(x), A), B)


def fwd_transposed(x, weight, bias, A, B, alpha, r, dropout):  # x @ (B @ A), not its transpose
    return F.linear(x, weight, bias) + alpha / r * (dropout(x) @ (B @ A))


def fwd_no_bias(x, weight, bias, A, B, alpha, r, dropout):
    return x @ weight.T + alpha / r * (dropout(x) @ A.T @ B.T)


def fwd_bias_always(x, weight, bias, A, B, alpha, r, dropout):  # breaks on bias=None
    return x @ weight.T + bias + alpha / r * (dropout(x) @ A.T @ B.T)


def fwd_dropout_on_output(x, weight, bias, A, B, alpha, r, dropout):
    return F.linear(x, weight, bias) + dropout(alpha / r * (x @ A.T @ B.T))


def fwd_dropout_everywhere(x, weight, bias, A, B, alpha, r, dropout):
    x = dropout(x)
    return F.linear(x, weight, bias) + alpha / r * (x @ A.T @ B.T)


def fwd_base_only(x, weight, bias, A, B, alpha, r, dropout):
    return F.linear(x, weight, bias)


def fwd_in_float32(x, weight, bias, A, B, alpha, r, dropout):
    return fwd(x.float(), weight.float(), None if bias is None else bias.float(), A.float(),
               B.float(), alpha, r, dropout)  # fmt: skip


# --------------------------------------------------------------------------------------------
# merge

FIRST_MERGE = "square 8 -> 8, r=1, alpha=1"


def merge(layer):
    with torch.no_grad():
        layer.base_layer.weight += layer.scaling * (layer.lora_B.weight @ layer.lora_A.weight)
    layer.merged = True


def merge_addmm(layer):
    with torch.no_grad():
        layer.base_layer.weight.addmm_(
            layer.lora_B.weight.to(layer.base_layer.weight.dtype),
            layer.lora_A.weight.to(layer.base_layer.weight.dtype),
            alpha=layer.scaling,
        )
    layer.merged = True


def merge_copy(layer):
    weight = layer.base_layer.weight
    delta = layer.scaling * layer.lora_B.weight.float() @ layer.lora_A.weight.float()
    weight.data.copy_((weight.float() + delta).to(weight.dtype))
    layer.merged = True


def merge_without_flag(layer):  # the forward then adds the branch a second time
    with torch.no_grad():
        layer.base_layer.weight += layer.scaling * (layer.lora_B.weight @ layer.lora_A.weight)


def merge_alpha(layer):
    with torch.no_grad():
        layer.base_layer.weight += layer.alpha * (layer.lora_B.weight @ layer.lora_A.weight)
    layer.merged = True


def merge_transposed(layer):
    with torch.no_grad():
        layer.base_layer.weight += layer.scaling * (layer.lora_A.weight.T @ layer.lora_B.weight.T)
    layer.merged = True


def merge_alpha_over_r(layer):  # ignores rsLoRA's alpha / sqrt(r)
    with torch.no_grad():
        update = layer.alpha / layer.r * (layer.lora_B.weight @ layer.lora_A.weight)
        layer.base_layer.weight += update
    layer.merged = True


def merge_returns_the_weight(layer):  # computes it, never writes it into the layer
    layer.merged = True
    return layer.base_layer.weight + layer.scaling * layer.lora_B.weight @ layer.lora_A.weight


def merge_into_float32(layer):  # a new float32 weight replaces a bf16 one
    weight = layer.base_layer.weight.float()
    update = layer.scaling * layer.lora_B.weight @ layer.lora_A.weight
    layer.base_layer.weight = nn.Parameter(weight + update, requires_grad=False)
    layer.merged = True


# --------------------------------------------------------------------------------------------
# count_lora_parameters

FIRST_COUNT = "q_proj and v_proj, r=8"


def count(model, target_modules, r):
    total = 0
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name.split(".")[-1] in target_modules:
            total += r * (module.in_features + module.out_features)
    return total


def count_by_shape(model, target_modules, r):
    shapes = [
        m.weight.shape
        for n, m in model.named_modules()
        if type(m) is nn.Linear and any(n.endswith("." + t) for t in target_modules)
    ]
    return np.int64(sum(r * sum(s) for s in shapes))  # a numpy integer is an int too


def count_the_base(model, target_modules, r):
    return sum(
        r * (m.in_features + m.out_features) + m.weight.numel()
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and n.split(".")[-1] in target_modules
    )


def count_the_bias(model, target_modules, r):
    return sum(
        r * (m.in_features + m.out_features) + (0 if m.bias is None else m.bias.numel())
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and n.split(".")[-1] in target_modules
    )


def count_every_linear(model, target_modules, r):  # ignores the targets
    return sum(
        r * (m.in_features + m.out_features) for m in model.modules() if isinstance(m, nn.Linear)
    )


def count_square(model, target_modules, r):  # 2 r in: as if every layer were square
    return sum(
        2 * r * m.in_features
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and n.split(".")[-1] in target_modules
    )


# --------------------------------------------------------------------------------------------
# What the contract runs

FWD, MERGE, COUNT = "check_lora_forward", "check_merge", "check_count_lora_parameters"

CORRECT_VARIANTS = [
    (FWD, fwd),
    (FWD, fwd_functional),
    (FWD, fwd_einsum),
    (MERGE, merge),
    (MERGE, merge_addmm),
    (MERGE, merge_copy),
    (COUNT, count),
    (COUNT, count_by_shape),
]

MUTANTS = [
    (FWD, fwd_alpha_not_divided, SCALED, "alpha / r (here 8 / 4 = 2), not by alpha"),
    (FWD, fwd_transposed, FIRST_FWD, "(x @ A.T) @ B.T"),
    (FWD, fwd_base_only, FIRST_FWD, "exceeds the tolerance"),
    (FWD, fwd_bias_always, FIRST_FWD, "TypeError"),
    (FWD, fwd_no_bias, BIAS, "the base layer keeps its bias"),
    (FWD, fwd_dropout_on_output, DROPOUT, "dropout applies to the branch's INPUT only"),
    (FWD, fwd_dropout_everywhere, DROPOUT, "the base path sees all of x"),
    (FWD, fwd_in_float32, "bfloat16 tensors", "expected dtype bfloat16, received float32"),
    (MERGE, merge_without_flag, FIRST_MERGE, "still adds the branch: the update counts twice"),
    (MERGE, merge_transposed, FIRST_MERGE, "merged weight: max abs error"),
    (MERGE, merge_returns_the_weight, FIRST_MERGE, "merged weight: max abs error"),
    (MERGE, merge_alpha, "16 -> 8, r=4, alpha=16 (scaling 4)", "layer.scaling = alpha / r"),
    (MERGE, merge_alpha_over_r, "rsLoRA: scaling alpha / sqrt(r)", "alpha / sqrt(r)"),
    (MERGE, merge_into_float32, "a bfloat16 base layer", "expected dtype bfloat16"),
    (COUNT, count_the_base, FIRST_COUNT, "exactly the frozen weights of the targeted layers"),
    (COUNT, count_every_linear, FIRST_COUNT, "expected 1664 trainable parameters"),
    (COUNT, count_square, FIRST_COUNT, "r * (in + out)"),
    (
        COUNT,
        count_the_bias,
        "layers with biases, q_proj and v_proj, r=8",
        "exactly the targeted layers' biases",
    ),
]


# --------------------------------------------------------------------------------------------
# Answers that call the package's LoRA: flagged


def fwd_with_the_package(x, weight, bias, A, B, alpha, r, dropout):
    base = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    layer = LoRALinear(base, r, alpha)
    with torch.no_grad():
        base.weight.copy_(weight)
        layer.lora_A.weight.copy_(A)
        layer.lora_B.weight.copy_(B)
    layer.lora_dropout = dropout
    return layer(x)


def count_with_the_package(model, target_modules, r):
    model = copy.deepcopy(model)
    inject_lora(model, target_modules, r=r)
    return trainable_parameters(model)[0]


FORBIDDEN = [
    (FWD, fwd_with_the_package, "llmlab.posttrain.lora.LoRALinear.__init__"),
    (MERGE, student_copy(ll.reference_merge), "llmlab.posttrain.lora.LoRALinear.merge"),
    (COUNT, count_with_the_package, "llmlab.posttrain.lora.inject_lora"),
]


def test_the_dropout_of_a_case_is_reproducible():
    dropout = ll.MaskDropout(0.5, seed=3)
    x = torch.ones(4, 6)
    assert torch.equal(dropout(x), dropout(x)) and torch.equal(
        dropout(x), copy.deepcopy(dropout)(x)
    )
    kept = dropout(x) != 0
    assert 0 < kept.float().mean() < 1 and torch.equal(
        dropout(x)[kept], torch.full((int(kept.sum()),), 2.0)
    )
    assert repr(dropout) == "dropout(p=0.5)" and repr(ll.NoDropout()) == "no dropout"
