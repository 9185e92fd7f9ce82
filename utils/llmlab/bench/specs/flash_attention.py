"""The attention benchmark: TFLOP/s against SDPA (flash backend), the reference, compile.

bfloat16, 16 heads and 16k tokens per batch (batch = 16384 // seq), seq 512..16k, head_dim 64
and 128, causal or not, forward and forward+backward. FLOPs count the matmuls of exact
attention: 4 * batch * heads * seq^2 * head_dim for the forward, halved when causal, and 2.5
times that for the backward (five matmuls to the forward's two).
"""

from __future__ import annotations

import torch

from llmlab.bench import Benchmark, Case
from llmlab.bench.specs import lazily
from llmlab.kernels.flash_attention import flash_attention, reference


def sdpa_flash(q, k, v, causal=False):
    """PyTorch's scaled_dot_product_attention, pinned to its FlashAttention backend on CUDA."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if not q.is_cuda:
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)


def _cases(scale: str) -> list[Case]:
    if scale == "cpu":
        p = {"batch": 1, "heads": 2, "head_dim": 16, "causal": False, "mode": "forward"}
        return [
            Case("float32, d=16, non-causal, forward", s, {**p, "seq": s, "dtype": "float32"})
            for s in (32, 64)
        ]
    seqs = (1024, 4096) if scale == "quick" else (512, 1024, 2048, 4096, 8192, 16384)
    return [
        Case(
            f"bf16, d={d}, {'causal' if causal else 'non-causal'}, {mode}",
            seq,
            {
                "batch": max(1, 16384 // seq),
                "heads": 16,
                "seq": seq,
                "head_dim": d,
                "causal": causal,
                "mode": mode,
                "dtype": "bfloat16",
            },
        )
        for mode in ("forward", "forward+backward")
        for d in (64, 128)
        for causal in (False, True)
        for seq in seqs
    ]


def _work(case: Case) -> float:
    p = case.params
    flops = 4 * p["batch"] * p["heads"] * p["seq"] ** 2 * p["head_dim"]
    flops *= 0.5 if p["causal"] else 1.0
    return flops * (3.5 if p["mode"] == "forward+backward" else 1.0)


def _setup(case: Case, device) -> dict:
    p = case.params
    shape = (p["batch"], p["heads"], p["seq"], p["head_dim"])
    grad = p["mode"] == "forward+backward"
    dtype = getattr(torch, p["dtype"])
    q, k, v = (torch.randn(shape, device=device, dtype=dtype, requires_grad=grad) for _ in range(3))
    do = torch.randn(shape, device=device, dtype=dtype)
    ops = {
        "triton": lambda: flash_attention,
        "sdpa": lambda: sdpa_flash,
        "eager": lambda: reference,
        "compile": lambda: torch.compile(reference),
    }

    def build(op):
        if not grad:
            return lambda: op(q, k, v, causal=p["causal"])
        return lambda: torch.autograd.grad(op(q, k, v, causal=p["causal"]), (q, k, v), do)

    return lazily(ops, build)


def benchmarks() -> list[Benchmark]:
    return [
        Benchmark(
            name="flash_attention",
            title="FlashAttention-2",
            x_label="sequence length (tokens)",
            metric="TFLOP/s",
            cases=_cases,
            setup=_setup,
            work=_work,
            description="16 heads, 16k tokens per batch; "
            "TFLOP/s = attention matmul FLOPs / median time",
        )
    ]
