"""The SwiGLU benchmark: GB/s against eager ``F.silu(gate) * up`` and torch.compile.

8192 tokens, d_ff from SmolLM2-135M's 1536 to LLaMA-3-8B's 14336, float16 and bfloat16,
forward and backward. GB/s counts the bytes a perfect kernel moves: forward reads gate and
up and writes h (3 tensors); backward reads gate, up, dh and writes d_gate, d_up (5).
"""

from __future__ import annotations

import torch

from llmlab.bench import Benchmark, Case
from llmlab.bench.specs import forward_or_backward, row_cases
from llmlab.kernels.swiglu import reference, swiglu


def _cases(scale: str) -> list[Case]:
    return row_cases(scale, 8192, (1536, 2048, 4096, 8192, 14336), (1536, 8192), (64, 256))


def _work(case: Case) -> float:
    p = case.params
    tensors = 3 if p["direction"] == "forward" else 5
    return tensors * p["rows"] * p["cols"] * getattr(torch, p["dtype"]).itemsize


def _setup(case: Case, device) -> dict:
    p = case.params
    gate = torch.randn(p["rows"], p["cols"], device=device, dtype=getattr(torch, p["dtype"]))
    up = torch.randn_like(gate)
    ops = {
        "triton": lambda: swiglu,
        "eager": lambda: reference,
        "compile": lambda: torch.compile(reference),
    }

    return forward_or_backward(ops, p["direction"], (gate, up))


def benchmarks() -> list[Benchmark]:
    return [
        Benchmark(
            name="swiglu",
            title="SwiGLU gate silu(gate) * up",
            x_label="d_ff (columns per row)",
            metric="GB/s",
            cases=_cases,
            setup=_setup,
            work=_work,
            description="8192 tokens; GB/s = ideal bytes moved / median time",
        )
    ]
