"""Checks of chapter 04's LoRA-layer lab (``solutions/04_post_training/01_lora_layer.ipynb``).

    lab 01_lora_layer: lora_forward, merge, count_lora_parameters

- ``lora_forward(x, weight, bias, A, B, alpha, r, dropout) -> y``: a frozen linear layer plus
  its low-rank update, ``y = x W^T + b + (alpha / r) * (dropout(x) A^T) B^T`` for ``x`` of
  shape (..., in), ``W`` (out, in), ``b`` (out,) or None, ``A`` (r, in), ``B`` (out, r);
  ``dropout`` is a function applied to the branch's input only.
- ``merge(layer)``: folds the update of a :class:`llmlab.posttrain.lora.LoRALinear` into its
  base weight, in place (``W <- W + layer.scaling * B @ A``), and marks the layer merged so
  that its forward stops adding the branch.
- ``count_lora_parameters(model, target_modules, r) -> int``: the parameters that train once
  every ``nn.Linear`` whose name ends in one of ``target_modules`` gets a rank-``r`` adapter
  and everything else is frozen: ``r * (in + out)`` per targeted layer.

The cases catch the usual slips: the update scaled by ``alpha`` instead of ``alpha / r`` (or
``alpha / r`` recomputed where rsLoRA's ``alpha / sqrt(r)`` is the layer's), ``B @ A``
transposed, the bias forgotten, dropout on the output or on the base path, a merged layer that
still adds its branch (the update counted twice), the frozen base weights or biases counted
as trainable.

Each ``check_NAME(fn)`` prints one line and returns a :class:`llmlab.checks.CheckResult`
whose ``.fn`` the lab keeps using::

    lora_forward = check_lora_forward(lora_forward).fn

The references delegate to :mod:`llmlab.posttrain.lora` where it has the operation. Inputs come
from :mod:`llmlab.checks._inputs`, so a check never moves the notebook's seed.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from llmlab.checks import Case, CheckResult, compare_tensors, describe, run_check
from llmlab.checks._inputs import generator, randn
from llmlab.posttrain.lora import LoRALinear

#: The package's LoRA and peft compute the answers: an answer that calls them is flagged.
FORBID_LORA = ("llmlab.posttrain.lora", "peft")

#: LLaMA's seven linear layers per decoder layer.
ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# --------------------------------------------------------------------------------------------
# Dropouts a case can name and reproduce


class NoDropout:
    """The identity: the case without dropout (``nn.Identity`` in a real layer)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def __repr__(self) -> str:
        return "no dropout"


@dataclass(frozen=True)
class MaskDropout:
    """Inverted dropout with a fixed mask: zeroes each entry with probability ``p`` and scales
    the rest by ``1 / (1 - p)``. The mask depends only on ``seed`` and the input's shape, so
    the student's function and the reference drop the same entries, however often it is called.
    """

    p: float
    seed: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        keep = torch.rand(x.shape, generator=generator(self.seed)) >= self.p
        return x * keep.to(x.dtype) / (1 - self.p)

    def __repr__(self) -> str:
        return f"dropout(p={self.p:g})"


# --------------------------------------------------------------------------------------------
# References


def reference_lora_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    A: torch.Tensor,
    B: torch.Tensor,
    alpha: float,
    r: int,
    dropout: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """x W^T + b + (alpha / r) (dropout(x) A^T) B^T, shape (..., out)."""
    y = x @ weight.T
    if bias is not None:
        y = y + bias
    return y + (alpha / r) * ((dropout(x) @ A.T) @ B.T)


def reference_merge(layer: LoRALinear) -> None:
    """W <- W + scaling * B @ A and ``layer.merged = True`` (:meth:`LoRALinear.merge`)."""
    layer.merge()


def reference_count_lora_parameters(model: nn.Module, target_modules: list[str], r: int) -> int:
    """r * (in + out) summed over the nn.Linear layers whose last name part is a target."""
    return sum(
        r * (module.in_features + module.out_features)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in target_modules
    )


# --------------------------------------------------------------------------------------------
# lora_forward


@dataclass(frozen=True)
class ForwardCase:
    """A layer in -> out with a rank-r adapter; every tensor drawn from ``seed``."""

    shape: tuple[int, ...]  # x's leading dims
    d_in: int
    d_out: int
    r: int
    alpha: float
    bias: bool = False
    dropout: float = 0.0
    zero_b: bool = False
    dtype: torch.dtype = torch.float32
    seed: int = 0

    def arguments(self) -> tuple:
        d = self.dtype
        s = self.seed
        x = randn(*self.shape, self.d_in, dtype=d, seed=s)
        weight = randn(self.d_out, self.d_in, dtype=d, seed=s + 1, scale=self.d_in**-0.5)
        bias = randn(self.d_out, dtype=d, seed=s + 2) if self.bias else None
        A = randn(self.r, self.d_in, dtype=d, seed=s + 3, scale=self.d_in**-0.5)
        B = randn(self.d_out, self.r, dtype=d, seed=s + 4, scale=0.0 if self.zero_b else 0.5)
        dropout = MaskDropout(self.dropout, s + 5) if self.dropout else NoDropout()
        return x, weight, bias, A, B, self.alpha, self.r, dropout


def check_lora_forward(lora_forward: Callable) -> CheckResult:
    """Check ``lora_forward(x, weight, bias, A, B, alpha, r, dropout) -> y`` on layers of
    several shapes, with and without bias and dropout."""

    def case(name: str, spec: ForwardCase, hint: str = "") -> Case:
        return Case(name, spec.arguments(), hint=hint)

    cases = [
        case(
            "square 6 -> 6, r=1, alpha=1 (scaling 1), no bias",
            ForwardCase((4,), 6, 6, 1, 1.0),
            hint="A (r, in) acts first and B (out, r) second, like two nn.Linear layers: "
            "(x @ A.T) @ B.T, added to the base output x @ weight.T.",
        ),
        case(
            "12 -> 6, r=4, alpha=8 (scaling 2), no bias",
            ForwardCase((5,), 12, 6, 4, 8.0, seed=1),
            hint="the branch is scaled by alpha / r (here 8 / 4 = 2), not by alpha.",
        ),
        case(
            "8 -> 10, r=2, alpha=4, with bias",
            ForwardCase((3,), 8, 10, 2, 4.0, bias=True, seed=2),
            hint="the base layer keeps its bias: y = x @ weight.T + bias + branch (bias may "
            "be None: add it only when it is not).",
        ),
        case(
            "dropout p=0.5 on the branch, 12 -> 6, r=4",
            ForwardCase((7,), 12, 6, 4, 8.0, bias=True, dropout=0.5, seed=3),
            hint="dropout applies to the branch's INPUT only: (dropout(x) @ A.T) @ B.T; the "
            "base path sees all of x, and the output itself is not dropped.",
        ),
        case("a batch of sequences (2, 5, 12)", ForwardCase((2, 5), 12, 8, 4, 16.0, True, seed=4)),
        case(
            "B = 0 (LoRA's initialisation): the layer equals its base layer",
            ForwardCase((3,), 8, 8, 2, 16.0, bias=True, zero_b=True, seed=5),
        ),
        case(
            "rank 16, alpha 32, 40 -> 24, dropout 0.1",
            ForwardCase((6,), 40, 24, 16, 32.0, True, 0.1, seed=6),
        ),
        case(
            "bfloat16 tensors",
            ForwardCase((2, 3), 16, 8, 4, 8.0, True, dtype=torch.bfloat16, seed=7),
            hint="compute in the inputs' dtype: no .float() that changes the result's dtype.",
        ),
    ]
    return run_check(
        "lora_forward",
        lora_forward,
        reference_lora_forward,
        cases,
        hint="y = x @ weight.T (+ bias when it is not None) + (alpha / r) * "
        "(dropout(x) @ A.T) @ B.T.",
        arg_names=("x", "weight", "bias", "A", "B", "alpha", "r", "dropout"),
        forbid=FORBID_LORA,
    )


# --------------------------------------------------------------------------------------------
# merge


@dataclass(frozen=True)
class MergeCase:
    """A :class:`LoRALinear` on an in -> out ``nn.Linear`` with random non-zero A and B."""

    d_in: int
    d_out: int
    r: int
    alpha: float
    bias: bool = False
    rslora: bool = False
    dtype: torch.dtype = torch.float32
    seed: int = 0

    def layer(self) -> LoRALinear:
        s = self.seed
        base = nn.Linear(self.d_in, self.d_out, bias=self.bias, device="meta")
        base = base.to_empty(device="cpu").to(self.dtype)
        with torch.no_grad():
            base.weight.copy_(randn(self.d_out, self.d_in, seed=s, scale=self.d_in**-0.5))
            if self.bias:
                base.bias.copy_(randn(self.d_out, seed=s + 1))
        layer = LoRALinear(base, self.r, self.alpha, rslora=self.rslora, generator=generator(s))
        with torch.no_grad():
            layer.lora_B.weight.copy_(randn(self.d_out, self.r, seed=s + 2, scale=0.5))
        return layer

    def __repr__(self) -> str:
        kind = "rsLoRA " if self.rslora else ""
        dtype = str(self.dtype).removeprefix("torch.")
        return (
            f"{kind}LoRALinear {self.d_in} -> {self.d_out} {dtype}, r={self.r}, "
            f"alpha={self.alpha:g}, bias={self.bias}"
        )


def _merged(fn: Callable, case: MergeCase) -> dict[str, torch.Tensor]:
    """Merge with ``fn``; the layer's weight, bias and output afterwards."""
    layer = case.layer()
    x = randn(5, case.d_in, dtype=case.dtype, seed=case.seed + 3)
    fn(layer)
    weight = layer.base_layer.weight.detach().clone()
    with torch.no_grad():  # a weight of another dtype cannot run: its comparison says so
        output = layer(x) if weight.dtype == case.dtype else None
    return {
        "merged weight": weight,
        "bias": None if layer.base_layer.bias is None else layer.base_layer.bias.detach(),
        "output after merge": output,
    }


def _compare_merged(received: dict, expected: dict) -> str | None:
    for part in ("merged weight", "bias"):
        if expected[part] is None:
            continue
        problem = compare_tensors(received[part], expected[part])
        if problem:
            return f"{part}: {problem}"
    problem = compare_tensors(received["output after merge"], expected["output after merge"])
    if problem:
        return (
            "the merged weight is right, but the layer's output after merge is not (its "
            "forward still adds the branch: the update counts twice; set layer.merged = True): "
            + problem
        )
    return None


def check_merge(merge: Callable) -> CheckResult:
    """Check ``merge(layer)`` on LoRA layers of several shapes: the weight it leaves in
    ``layer.base_layer``, the bias, and the layer's output afterwards."""
    cases = [
        Case(
            "square 8 -> 8, r=1, alpha=1",
            (MergeCase(8, 8, 1, 1.0),),
            hint="W += layer.scaling * (B @ A): B @ A has W's shape (out, in), not its "
            "transpose (A.T @ B.T); then layer.merged = True, so that forward stops adding "
            "the branch.",
        ),
        Case(
            "16 -> 8, r=4, alpha=16 (scaling 4)",
            (MergeCase(16, 8, 4, 16.0, seed=1),),
            hint="the update is scaled like the branch: layer.scaling = alpha / r (here 4), "
            "not alpha.",
        ),
        Case("with a bias", (MergeCase(12, 10, 2, 4.0, bias=True, seed=2),)),
        Case(
            "rsLoRA: scaling alpha / sqrt(r)",
            (MergeCase(16, 12, 4, 8.0, rslora=True, seed=3),),
            hint="use layer.scaling: with rslora it is alpha / sqrt(r), not alpha / r.",
        ),
        Case("rank 8, 24 -> 40", (MergeCase(24, 40, 8, 16.0, bias=True, seed=4),)),
        Case(
            "a bfloat16 base layer",
            (MergeCase(16, 8, 4, 8.0, dtype=torch.bfloat16, seed=5),),
            hint="write the merged weight into the base layer's weight in its own dtype "
            "(W.copy_(...) or W += ...), not a new float32 tensor.",
        ),
    ]
    return run_check(
        "merge",
        merge,
        reference_merge,
        cases,
        hint="with torch.no_grad(): layer.base_layer.weight += layer.scaling * "
        "(layer.lora_B.weight @ layer.lora_A.weight); then layer.merged = True.",
        run=_merged,
        compare=_compare_merged,
        arg_names=("layer",),
        forbid=FORBID_LORA,
    )


# --------------------------------------------------------------------------------------------
# count_lora_parameters


class _Attention(nn.Module):
    def __init__(self, d: int, d_kv: int, bias: bool):
        super().__init__()
        self.q_proj = nn.Linear(d, d, bias=bias)
        self.k_proj = nn.Linear(d, d_kv, bias=bias)
        self.v_proj = nn.Linear(d, d_kv, bias=bias)
        self.o_proj = nn.Linear(d, d, bias=bias)


class _MLP(nn.Module):
    def __init__(self, d: int, d_ff: int, bias: bool):
        super().__init__()
        self.gate_proj = nn.Linear(d, d_ff, bias=bias)
        self.up_proj = nn.Linear(d, d_ff, bias=bias)
        self.down_proj = nn.Linear(d_ff, d, bias=bias)


class _Layer(nn.Module):
    def __init__(self, d: int, d_kv: int, d_ff: int, bias: bool):
        super().__init__()
        self.input_layernorm = nn.RMSNorm(d)
        self.self_attn = _Attention(d, d_kv, bias)
        self.mlp = _MLP(d, d_ff, bias)


class TinyDecoder(nn.Module):
    """A decoder's parameter layout with LLaMA's module names (no forward: only counted)."""

    def __init__(self, vocab: int, d: int, d_kv: int, d_ff: int, n_layers: int, bias: bool):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(_Layer(d, d_kv, d_ff, bias) for _ in range(n_layers))
        self.norm = nn.RMSNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)


@dataclass(frozen=True)
class CountCase:
    """A :class:`TinyDecoder` and the adapter to count."""

    targets: tuple[str, ...]
    r: int
    n_layers: int = 2
    d: int = 32
    d_kv: int = 8
    d_ff: int = 64
    bias: bool = False
    vocab: int = 100

    def model(self) -> TinyDecoder:
        with torch.random.fork_rng(devices=[]):  # the layers' init must not move the seed
            return TinyDecoder(self.vocab, self.d, self.d_kv, self.d_ff, self.n_layers, self.bias)

    def __repr__(self) -> str:
        bias = ", biases" if self.bias else ""
        return (
            f"{self.n_layers}-layer decoder d={self.d}, kv {self.d_kv}, ffn {self.d_ff}{bias}; "
            f"targets {list(self.targets)}, r={self.r}"
        )


def _counted(fn: Callable, case: CountCase) -> tuple[Any, CountCase]:
    """(what ``fn`` counted, the case): the comparison needs the case to say what went wrong."""
    return fn(case.model(), list(case.targets), case.r), case


def _expected_count(case: CountCase) -> tuple[int, CountCase]:
    return reference_count_lora_parameters(case.model(), list(case.targets), case.r), case


def _compare_count(received: tuple[Any, CountCase], expected: tuple[int, CountCase]) -> str | None:
    (received, _), (want, case) = received, expected
    if isinstance(received, torch.Tensor) and received.numel() == 1:
        received = received.item()
    if isinstance(received, bool) or not isinstance(received, numbers.Integral):
        return f"expected an int, received {describe(received)}"
    if received == want:
        return None
    model = case.model()
    targeted = [
        m
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in case.targets
    ]
    base = sum(m.weight.numel() for m in targeted)
    biases = sum(m.bias.numel() for m in targeted if m.bias is not None)
    extra = received - want
    why = {base: "the frozen weights of the targeted layers: they do not train"}
    if biases:
        why[biases] = "the targeted layers' biases: they belong to the frozen base layer"
        why[base + biases] = "the frozen weights and biases of the targeted layers"
    why = why.get(extra, "")
    more = f" ({extra:+d}: exactly {why})" if extra and why else ""
    return f"expected {want} trainable parameters, received {received}{more}"


def check_count_lora_parameters(count_lora_parameters: Callable) -> CheckResult:
    """Check ``count_lora_parameters(model, target_modules, r) -> int`` on decoder layouts."""
    cases = [
        Case(
            "q_proj and v_proj, r=8",
            (CountCase(("q_proj", "v_proj"), 8),),
            hint="a targeted layer in -> out gets A (r x in) and B (out x r): r * (in + out) "
            "numbers train; its own weight is frozen and not counted.",
        ),
        Case(
            "k_proj only (32 -> 8), r=4",
            (CountCase(("k_proj",), 4),),
            hint="use each layer's own in_features and out_features: k_proj maps 32 to 8.",
        ),
        Case(
            "layers with biases, q_proj and v_proj, r=8",
            (CountCase(("q_proj", "v_proj"), 8, bias=True),),
            hint="LoRA adds no bias: the base layer's bias stays frozen.",
        ),
        Case(
            "all seven projections, r=16",
            (CountCase(ALL_PROJECTIONS, 16, n_layers=3),),
            hint="count every nn.Linear whose name ends in a target, in every layer (loop over "
            "model.named_modules()).",
        ),
        Case(
            "the head is no target: only mlp.down_proj, r=2",
            (CountCase(("down_proj",), 2, d_ff=48),),
        ),
        Case("a target that matches nothing", (CountCase(("query",), 8),)),
        Case("rank 1, 4 layers", (CountCase(("q_proj", "o_proj"), 1, n_layers=4, d=24),)),
    ]
    return run_check(
        "count_lora_parameters",
        count_lora_parameters,
        reference_count_lora_parameters,
        cases,
        hint="sum r * (m.in_features + m.out_features) over the (name, m) in "
        "model.named_modules() where m is an nn.Linear and name.split('.')[-1] is a target.",
        run=_counted,
        expect=_expected_count,
        compare=_compare_count,
        arg_names=("model",),
        forbid=FORBID_LORA,
    )
