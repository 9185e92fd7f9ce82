"""The W4A16 benchmark: GB/s of decode-sized products against dequantize-then-matmul and bf16.

LLaMA-3-8B's projections from d_model 4096 (N = 4096 and 14336), bfloat16 activations, the
weight in 4 bits: GPTQ/AWQ-style zero points in groups of 128, or NF4 (a table) in blocks of
64 as QLoRA stores it. Tokens from 1 to 64: decode, where the product reads the whole weight
for a few rows of ``x`` and is bound by memory. GB/s counts the bytes a perfect W4A16 kernel
moves: the packed weight (``N * K / 2``), the bf16 scales (and zero points), ``x`` and ``y``;
the harness reports it as a share of the measured copy bandwidth.

Providers: ``triton`` (:func:`llmlab.kernels.w4a16.w4a16_matmul`), ``eager`` (its
``reference``: the float weight dequantized in memory, then a bf16 matmul), ``compile``
(torch.compile of the reference) and ``bf16`` (``F.linear`` with an unquantized bfloat16
weight: 4 times the weight bytes; the numbers differ, the time is the comparison). GB/s of
every provider is the same ideal byte count over its time, so the columns compare times. The
backward (``grad_x``, for QLoRA) is tested, not timed here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llmlab.bench import Benchmark, Case
from llmlab.bench.specs import lazily
from llmlab.kernels.w4a16 import reference, w4a16_matmul

#: (N, K) of LLaMA-3-8B's q/o and gate/up projections.
SHAPES = ((4096, 4096), (14336, 4096))
#: (name, group size, zero points?, NF4 table?)
FORMATS = (("zero points, g=128", 128, True, False), ("NF4, g=64", 64, False, True))


def _cases(scale: str) -> list[Case]:
    if scale == "cpu":
        p = {"n": 64, "k": 128, "group": 32, "zeros": True, "lut": False, "dtype": "float32"}
        return [Case("float32, N=64, K=128, zero points", m, {**p, "tokens": m}) for m in (1, 4)]
    tokens = (1, 16) if scale == "quick" else (1, 4, 16, 64)
    shapes = SHAPES[:1] if scale == "quick" else SHAPES
    return [
        Case(
            f"bf16, N={n}, K={k}, {name}",
            m,
            {
                "tokens": m,
                "n": n,
                "k": k,
                "group": group,
                "zeros": zeros,
                "lut": lut,
                "dtype": "bfloat16",
            },
        )
        for n, k in shapes
        for name, group, zeros, lut in FORMATS
        for m in tokens
    ]


def _work(case: Case) -> float:
    p = case.params
    item = getattr(torch, p["dtype"]).itemsize
    per_group = (2 if p["zeros"] else 1) * item  # a scale, and a zero point if any
    weight = p["n"] * p["k"] // 2 + p["n"] * (p["k"] // p["group"]) * per_group
    return weight + p["tokens"] * (p["k"] + p["n"]) * item  # + x in, y out


def _setup(case: Case, device) -> dict:
    p = case.params
    m, n, k, group = p["tokens"], p["n"], p["k"], p["group"]
    dtype = getattr(torch, p["dtype"])
    x = torch.randn(m, k, device=device, dtype=dtype)
    packed = torch.randint(0, 256, (n, k // 2), device=device, dtype=torch.uint8)
    scales = (torch.rand(n, k // group, device=device) / 100).to(dtype)
    zeros = torch.randint(0, 16, (n, k // group), device=device).to(dtype) if p["zeros"] else None
    lut = torch.linspace(-1, 1, 16, device=device, dtype=dtype) if p["lut"] else None
    ops = {
        "triton": lambda: w4a16_matmul,
        "eager": lambda: reference,
        "compile": lambda: torch.compile(reference),
    }
    builders = lazily(ops, lambda op: lambda: op(x, packed, scales, group, zeros, lut))

    def bf16():
        w = torch.randn(n, k, device=device, dtype=dtype)
        return lambda: F.linear(x, w)

    return {**builders, "bf16": bf16}


def benchmarks() -> list[Benchmark]:
    return [
        Benchmark(
            name="w4a16",
            title="W4A16 GEMM (4-bit weight, dequantized on chip)",
            x_label="tokens (rows of x)",
            metric="GB/s",
            cases=_cases,
            setup=_setup,
            work=_work,
            description="LLaMA-3-8B projections, decode sizes; GB/s = ideal bytes of the 4-bit "
            "product / median time",
        )
    ]
