"""The softmax benchmark: GB/s against torch.softmax, the reference and torch.compile.

4096 rows of 1k-32k columns in float16 and bfloat16, forward and backward. GB/s counts the
bytes a perfect kernel moves: forward reads x and writes y; backward reads y, dy, writes dx.
"""

from __future__ import annotations

import torch

from llmlab.bench import Benchmark, Case
from llmlab.bench.specs import forward_or_backward, row_cases
from llmlab.kernels.softmax import reference, softmax


def _cases(scale: str) -> list[Case]:
    return row_cases(
        scale, 4096, (1024, 2048, 4096, 8192, 16384, 32768), (1024, 4096, 16384), (16, 100)
    )


def _work(case: Case) -> float:
    p = case.params
    passes = 2 if p["direction"] == "forward" else 3
    return passes * p["rows"] * p["cols"] * getattr(torch, p["dtype"]).itemsize


def _setup(case: Case, device) -> dict:
    p = case.params
    x = torch.randn(p["rows"], p["cols"], device=device, dtype=getattr(torch, p["dtype"]))
    ops = {
        "triton": lambda: softmax,
        "torch": lambda: lambda t: torch.softmax(t, dim=-1),
        "eager": lambda: reference,
        "compile": lambda: torch.compile(reference),
    }

    return forward_or_backward(ops, p["direction"], (x,))


def benchmarks() -> list[Benchmark]:
    return [
        Benchmark(
            name="softmax",
            title="Row-wise softmax",
            x_label="columns per row",
            metric="GB/s",
            cases=_cases,
            setup=_setup,
            work=_work,
            description="4096 rows; GB/s = ideal bytes moved / median time",
        )
    ]
