"""The RoPE benchmark: GB/s of rotating q and k against eager PyTorch and torch.compile.

LLaMA-3-8B's attention shapes (32 q heads, 8 kv heads, head_dim 128) with 16k tokens per batch
(batch = 16384 // seq), seq 1k-16k, cos/sin per sequence (batch, seq, head_dim) in the inputs'
dtype as transformers passes them; float16 and bfloat16, forward and backward. GB/s counts the
bytes a perfect kernel moves: read q, k, cos, sin and write the rotated q and k (backward: the
same sizes, gradients instead of activations).
"""

from __future__ import annotations

import torch

from llmlab.bench import Benchmark, Case
from llmlab.bench.specs import forward_or_backward
from llmlab.kernels.rope import reference, rope_qk


def eager_qk(q, k, cos, sin):
    """The eager baseline: chapter 01's apply_rotary on q, then on k (as transformers does)."""
    return reference(q, cos, sin), reference(k, cos, sin)


def _cases(scale: str) -> list[Case]:
    if scale == "cpu":
        p = {"q_heads": 4, "kv_heads": 2, "head_dim": 16, "dtype": "float32"}
        return [
            Case("float32, forward", s, {**p, "batch": 1, "seq": s, "direction": "forward"})
            for s in (16, 64)
        ]
    seqs = (1024, 4096, 16384) if scale == "quick" else (1024, 2048, 4096, 8192, 16384)
    dtypes = ("bfloat16",) if scale == "quick" else ("float16", "bfloat16")
    return [
        Case(
            f"{dtype}, {direction}",
            seq,
            {
                "batch": max(1, 16384 // seq),
                "seq": seq,
                "q_heads": 32,
                "kv_heads": 8,
                "head_dim": 128,
                "dtype": dtype,
                "direction": direction,
            },
        )
        for dtype in dtypes
        for direction in ("forward", "backward")
        for seq in seqs
    ]


def _work(case: Case) -> float:
    p = case.params
    tokens = p["batch"] * p["seq"]
    heads = p["q_heads"] + p["kv_heads"]
    itemsize = getattr(torch, p["dtype"]).itemsize
    # in and out of q and k, plus one read of the cos and sin rows of every token
    return (2 * heads + 2) * tokens * p["head_dim"] * itemsize


def _setup(case: Case, device) -> dict:
    from llmlab.nn.positional import RotaryEmbedding

    p = case.params
    dtype = getattr(torch, p["dtype"])
    q = torch.randn(p["batch"], p["q_heads"], p["seq"], p["head_dim"], device=device, dtype=dtype)
    k = torch.randn(p["batch"], p["kv_heads"], p["seq"], p["head_dim"], device=device, dtype=dtype)
    positions = torch.arange(p["seq"], device=device).expand(p["batch"], -1)
    cos, sin = RotaryEmbedding(p["head_dim"]).to(device)(positions, dtype=dtype)
    ops = {
        "triton": lambda: rope_qk,
        "eager": lambda: eager_qk,
        "compile": lambda: torch.compile(eager_qk),
    }

    # backward: the gradients of q and k (cos and sin are constants)
    return forward_or_backward(ops, p["direction"], (q, k, cos, sin), n_grad=2)


def benchmarks() -> list[Benchmark]:
    return [
        Benchmark(
            name="rope",
            title="Rotary position embedding of q and k",
            x_label="sequence length (tokens)",
            metric="GB/s",
            cases=_cases,
            setup=_setup,
            work=_work,
            description="32 q + 8 kv heads of 128, 16k tokens per batch; "
            "GB/s = ideal bytes moved / median time",
        )
    ]
