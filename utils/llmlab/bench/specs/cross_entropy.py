"""The LM-head loss benchmark: time *and peak memory* of a forward + backward.

8192 tokens, d_model 4096 (LLaMA-3-8B's head), vocabularies of 32k-128k, bfloat16. The
providers: ``triton`` (``fused_linear_cross_entropy``), ``eager`` (the kernel module's
``reference``: full logits upcast to float32, as transformers), ``torch`` (F.cross_entropy on
the bf16 logits, no upcast) and ``compile`` (torch.compile of the reference). TFLOP/s counts
the three matmuls every provider must do, ``6 * tokens * d_model * V``; the harness records
each provider's peak GPU memory next to its time (``peak_memory_mb`` in the JSON).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llmlab.bench import Benchmark, Case
from llmlab.bench.specs import lazily
from llmlab.kernels.cross_entropy import fused_linear_cross_entropy, reference


def torch_half_logits(h, weight, targets):
    """Eager without the float32 upcast: F.cross_entropy straight on bf16/fp16 logits."""
    return F.cross_entropy(h @ weight.T, targets)


def _cases(scale: str) -> list[Case]:
    if scale == "cpu":
        return [
            Case(
                "float32, forward+backward",
                v,
                {"tokens": 8, "d_model": 16, "vocab": v, "dtype": "float32"},
            )
            for v in (64, 200)
        ]
    vocabs = (32768, 128256) if scale == "quick" else (32768, 49152, 65536, 128256)
    return [
        Case(
            "bfloat16, forward+backward",
            v,
            {"tokens": 8192, "d_model": 4096, "vocab": v, "dtype": "bfloat16"},
        )
        for v in vocabs
    ]


def _work(case: Case) -> float:
    p = case.params
    return 6 * p["tokens"] * p["d_model"] * p["vocab"]


def _setup(case: Case, device) -> dict:
    p = case.params
    dtype = getattr(torch, p["dtype"])
    h = torch.randn(p["tokens"], p["d_model"], device=device, dtype=dtype)
    weight = torch.randn(p["vocab"], p["d_model"], device=device, dtype=dtype) * 0.02
    targets = torch.randint(0, p["vocab"], (p["tokens"],), device=device)
    ops = {
        "triton": lambda: fused_linear_cross_entropy,
        "torch": lambda: torch_half_logits,
        "eager": lambda: reference,
        "compile": lambda: torch.compile(reference),
    }

    def build(op):
        hg, wg = h.detach().requires_grad_(), weight.detach().requires_grad_()
        # The whole training-step share of the loss: forward, then both gradients.
        return lambda: torch.autograd.grad(op(hg, wg, targets), (hg, wg))

    return lazily(ops, build)


def benchmarks() -> list[Benchmark]:
    return [
        Benchmark(
            name="cross_entropy",
            title="LM-head cross-entropy, forward + backward",
            x_label="vocabulary size (classes)",
            metric="TFLOP/s",
            cases=_cases,
            setup=_setup,
            work=_work,
            description="8192 tokens, d_model 4096, bf16; TFLOP/s = 6 N d V / median time; "
            "peak memory per provider in the JSON",
        )
    ]
