"""The MoE grouped GEMM benchmark: TFLOP/s against a loop over the experts and torch's grouped mm.

A Mixtral-like expert layer scaled down: d_model 1024, d_ff 2816, E = 8, 16 or 64 experts, top-2
routing by a random router (softmax over random logits, then the 2 largest: the loads are
uneven, as they are before a load-balancing loss has done its work). The tokens (1024, 4096,
8192) become ``2 * tokens`` rows sorted by expert (:func:`llmlab.moe.layer.permute`), and the
benchmark times the up-projection ``(rows, 1024) -> (rows, 2816)`` of every expert's segment;
bfloat16, forward and backward (``grad_x`` and ``grad_w``). TFLOP/s counts the
``2 * rows * d_model * d_ff`` multiply-adds of the forward (the backward: twice that).

Providers: ``triton`` (:func:`llmlab.kernels.moe_grouped_gemm.grouped_matmul`), ``eager`` (its
``reference``: one ``F.linear`` per expert on its slice of rows, as ``MoE._loop`` runs the
experts; the slicing reads ``counts`` on the host) and ``torch`` (``torch._grouped_mm``, one
call, where this torch has it for the device and dtype; an error row otherwise). The course's
goal for the kernel: at least 3 times the ``eager`` loop from 8 experts up, on a GPU. The
harness only measures; nothing here asserts a speed.
"""

from __future__ import annotations

import torch

from llmlab.bench import Benchmark, Case
from llmlab.bench.specs import forward_or_backward
from llmlab.kernels.moe_grouped_gemm import grouped_matmul, reference
from llmlab.moe.layer import permute

D_MODEL, D_FF, TOP_K = 1024, 2816, 2
EXPERTS = (8, 16, 64)
TOKENS = (1024, 4096, 8192)


def _cases(scale: str) -> list[Case]:
    if scale == "cpu":
        p = {"experts": 4, "d_model": 32, "d_ff": 48, "dtype": "float32", "direction": "forward"}
        return [Case("float32, E=4, forward", t, {**p, "tokens": t}) for t in (16, 64)]
    experts = (8, 64) if scale == "quick" else EXPERTS
    tokens = (4096,) if scale == "quick" else TOKENS
    return [
        Case(
            f"bf16, E={e}, {direction}",
            t,
            {
                "experts": e,
                "tokens": t,
                "d_model": D_MODEL,
                "d_ff": D_FF,
                "dtype": "bfloat16",
                "direction": direction,
            },
        )
        for e in experts
        for direction in ("forward", "backward")
        for t in tokens
    ]


def _work(case: Case) -> float:
    p = case.params
    forward = 2 * (TOP_K * p["tokens"]) * p["d_model"] * p["d_ff"]
    return forward if p["direction"] == "forward" else 2 * forward


def routed_rows(tokens: int, experts: int, d_model: int, device, dtype, seed: int = 0):
    """``(rows, counts)``: ``tokens`` random tokens routed top-2 by a random router, their
    ``2 * tokens`` rows sorted by expert, and each expert's count."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, d_model, generator=g)
    router = torch.randn(experts, d_model, generator=g) / d_model**0.5
    chosen = (x @ router.T).softmax(-1).topk(TOP_K, dim=-1).indices
    _, token_of_row, counts = permute(chosen, experts)
    return x[token_of_row].to(device, dtype), counts.to(device)


def _torch_grouped_mm(x, w, counts):
    # torch's grouped matmul takes the segments' end offsets and the (d_in, d_out) weights.
    return torch._grouped_mm(x, w.transpose(1, 2), offs=counts.cumsum(0).to(torch.int32))


def _setup(case: Case, device) -> dict:
    p = case.params
    dtype = getattr(torch, p["dtype"])
    rows, counts = routed_rows(p["tokens"], p["experts"], p["d_model"], device, dtype)
    g = torch.Generator().manual_seed(1)
    w = torch.randn(p["experts"], p["d_ff"], p["d_model"], generator=g) / p["d_model"] ** 0.5
    w = w.to(device, dtype)
    ops = {"triton": lambda: grouped_matmul, "eager": lambda: reference}
    if hasattr(torch, "_grouped_mm"):
        ops["torch"] = lambda: _torch_grouped_mm
    # Differentiate with respect to the rows and the weights; counts is an input, not a leaf.
    return forward_or_backward(ops, p["direction"], (rows, w, counts), n_grad=2)


def benchmarks() -> list[Benchmark]:
    return [
        Benchmark(
            name="moe_grouped_gemm",
            title="MoE grouped GEMM (top-2, d_model 1024 -> d_ff 2816)",
            x_label="tokens (2 rows each after top-2 routing)",
            metric="TFLOP/s",
            cases=_cases,
            setup=_setup,
            work=_work,
            description="experts' up-projection over expert-sorted rows; TFLOP/s = "
            "2 * rows * d_model * d_ff (backward: twice) / median time",
        )
    ]
