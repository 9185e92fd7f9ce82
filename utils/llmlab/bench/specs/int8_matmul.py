"""The INT8 GEMM benchmark: TFLOP/s against the eager reference, torch.compile and bf16.

LLaMA-3-8B's projections from d_model 4096 (N = 4096: q and o; N = 14336: gate and up), from
one token (decode: a matrix-vector product, bound by reading ``b``) to 8192 (prefill: compute
bound); int8 codes in, bfloat16 out, per-token and per-channel scales. TFLOP/s counts the
``2 * M * N * K`` multiply-adds of the product (integer operations here). The harness's peak is
its measured *bf16* matmul; int8 tensor cores have twice the bf16 rate on A100 and H100, so
``triton`` may show more than 100% of that peak.

Providers: ``triton`` (:func:`llmlab.kernels.int8_matmul.int8_matmul`), ``eager`` (its
``reference``: ``torch._int_mm`` and then the scales as separate elementwise passes over the
int32 product), ``compile`` (torch.compile of the reference) and ``bf16`` (``F.linear`` of
bfloat16 operands of the same shape: what the int8 GEMM replaces; the numbers differ, the
time is the comparison).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llmlab.bench import Benchmark, Case
from llmlab.bench.specs import lazily
from llmlab.kernels.int8_matmul import int8_matmul, reference

#: (N, K) of LLaMA-3-8B's q/o and gate/up projections.
SHAPES = ((4096, 4096), (14336, 4096))


def _cases(scale: str) -> list[Case]:
    if scale == "cpu":
        p = {"n": 64, "k": 96, "out_dtype": "float32"}
        return [Case("float32 out, N=64, K=96", m, {**p, "tokens": m}) for m in (4, 16)]
    tokens = (1, 4096) if scale == "quick" else (1, 16, 128, 1024, 4096, 8192)
    shapes = SHAPES[:1] if scale == "quick" else SHAPES
    return [
        Case(f"bf16 out, N={n}, K={k}", m, {"tokens": m, "n": n, "k": k, "out_dtype": "bfloat16"})
        for n, k in shapes
        for m in tokens
    ]


def _work(case: Case) -> float:
    p = case.params
    return 2 * p["tokens"] * p["n"] * p["k"]


def _setup(case: Case, device) -> dict:
    p = case.params
    m, n, k = p["tokens"], p["n"], p["k"]
    out_dtype = getattr(torch, p["out_dtype"])
    a = torch.randint(-127, 128, (m, k), device=device, dtype=torch.int8)
    b = torch.randint(-127, 128, (n, k), device=device, dtype=torch.int8)
    a_scale = torch.rand(m, device=device) / 127
    b_scale = torch.rand(n, device=device) / 127
    ops = {
        "triton": lambda: int8_matmul,
        "eager": lambda: reference,
        "compile": lambda: torch.compile(reference),
    }
    builders = lazily(ops, lambda op: lambda: op(a, b, a_scale, b_scale, None, out_dtype))

    def bf16():
        x = torch.randn(m, k, device=device, dtype=torch.bfloat16)
        w = torch.randn(n, k, device=device, dtype=torch.bfloat16)
        return lambda: F.linear(x, w)

    return {**builders, "bf16": bf16}


def benchmarks() -> list[Benchmark]:
    return [
        Benchmark(
            name="int8_matmul",
            title="INT8 GEMM (W8A8) with fused scales",
            x_label="tokens (rows of a)",
            metric="TFLOP/s",
            cases=_cases,
            setup=_setup,
            work=_work,
            description="LLaMA-3-8B projections; TFLOP/s = 2 M N K / median time (integer "
            "ops for int8; the peak is the measured bf16 matmul's)",
        )
    ]
