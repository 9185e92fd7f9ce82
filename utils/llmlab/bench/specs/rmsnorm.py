"""The RMSNorm benchmark: GB/s against F.rms_norm, the reference and torch.compile.

16k tokens of d_model 1k-16k (SmolLM2-1.7B's 2048, LLaMA-3-8B's 4096 and -70B's 8192 among
them), weight in the activations' dtype as in a bf16 model; float16 and bfloat16, forward and
backward. GB/s counts the bytes a perfect kernel moves: forward reads x and writes y; backward
reads x and dy and writes dx (the weight, rstd and dweight are a row each). The harness
reports it as a share of the measured copy bandwidth, the ceiling of this kernel.
"""

from __future__ import annotations

import torch

from llmlab.bench import Benchmark, Case
from llmlab.bench.specs import forward_or_backward, row_cases
from llmlab.kernels.rmsnorm import reference, rms_norm


def torch_rms_norm(x, weight, eps=1e-6):
    """PyTorch's own fused op (it rounds after the weight multiply, see the kernel module)."""
    return torch.nn.functional.rms_norm(x, (x.shape[-1],), weight, eps)


def _cases(scale: str) -> list[Case]:
    return row_cases(scale, 16384, (1024, 2048, 4096, 8192, 16384), (1024, 4096, 16384), (16, 100))


def _work(case: Case) -> float:
    p = case.params
    passes = 2 if p["direction"] == "forward" else 3
    return passes * p["rows"] * p["cols"] * getattr(torch, p["dtype"]).itemsize


def _setup(case: Case, device) -> dict:
    p = case.params
    dtype = getattr(torch, p["dtype"])
    x = torch.randn(p["rows"], p["cols"], device=device, dtype=dtype)
    weight = 1.0 + 0.1 * torch.randn(p["cols"], device=device, dtype=dtype)
    ops = {
        "triton": lambda: rms_norm,
        "torch": lambda: torch_rms_norm,
        "eager": lambda: reference,
        "compile": lambda: torch.compile(reference),
    }

    return forward_or_backward(ops, p["direction"], (x, weight))


def benchmarks() -> list[Benchmark]:
    return [
        Benchmark(
            name="rmsnorm",
            title="RMSNorm",
            x_label="d_model (columns per row)",
            metric="GB/s",
            cases=_cases,
            setup=_setup,
            work=_work,
            description="16384 rows; GB/s = ideal bytes moved / median time",
        )
    ]
