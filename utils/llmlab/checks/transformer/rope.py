"""Checks of chapter 01's RoPE lab (``solutions/01_transformer/03_rope.ipynb``).

    lab 03_rope: rope_frequencies, apply_rotary

Each ``check_NAME(fn)`` compares ``fn`` with ``reference_NAME`` on named cases (head_dim 2, a
table longer than the sequence, LLaMA 3's base ...), prints one line and returns a
:class:`llmlab.checks.CheckResult` whose ``.fn`` the lab keeps using. The references are
:mod:`llmlab.nn.positional`'s tested functions, in the rotate-half (HF LLaMA) layout. Inputs
come from :mod:`llmlab.checks._inputs`, so a check never moves the notebook's seed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from llmlab.checks import Case, CheckResult, compare_tensors, describe, run_check
from llmlab.checks._inputs import randn
from llmlab.nn import positional

#: Library ops that compute a whole answer: an answer that calls one is flagged.
FORBID_ROPE_TABLES = (
    "llmlab.nn.positional",
    "transformers.modeling_rope_utils",
    "transformers.models.llama.modeling_llama.LlamaRotaryEmbedding",
)
FORBID_ROTARY = (
    "llmlab.nn.positional",
    "transformers.models.llama.modeling_llama.apply_rotary_pos_emb",
    "transformers.models.llama.modeling_llama.rotate_half",
)

# --------------------------------------------------------------------------------------------
# References: what a correct answer returns (the chapter's tested functions)


def reference_rope_frequencies(
    head_dim: int, max_seq: int, base: float = 10000.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each (max_seq, head_dim) float32, in the rotate-half layout."""
    return positional.rope_frequencies(head_dim, max_seq, base)


def reference_apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin, with the first seq rows of the tables.

    x: (batch, heads, seq, head_dim); cos, sin: (max_seq, head_dim) with max_seq >= seq.
    """
    return positional.apply_rotary(x, cos, sin)


# --------------------------------------------------------------------------------------------
# Inputs and comparison


def _rope_args(
    batch: int,
    heads: int,
    seq: int,
    head_dim: int,
    table: int | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> tuple:
    """(x, cos, sin): x (batch, heads, seq, head_dim) and float32 tables of ``table`` rows."""
    cos, sin = positional.rope_frequencies(head_dim, table or seq)
    return randn(batch, heads, seq, head_dim, dtype=dtype, seed=seed), cos, sin


def _pair_compare(
    names: tuple[str, str], atol: float | None = None, rtol: float | None = None
) -> Callable[[Any, tuple], str | None]:
    """Compare a returned pair of tensors (e.g. ``(cos, sin)``) with the expected pair."""

    def compare(received: Any, expected: tuple) -> str | None:
        if not isinstance(received, (tuple, list)) or len(received) != 2:
            return f"expected a pair ({', '.join(names)}), received {describe(received)}"
        for name, got, want in zip(names, received, expected, strict=True):
            problem = compare_tensors(got, want, atol=atol, rtol=rtol)
            if problem is not None:
                return f"{name}: {problem}"
        return None

    return compare


# --------------------------------------------------------------------------------------------
# Checks


def check_rope_frequencies(rope_frequencies: Callable) -> CheckResult:
    """Check ``rope_frequencies(head_dim, max_seq, base=10000.0)`` -> (cos, sin)."""
    cases = [
        Case("head_dim 8, 5 positions", (8, 5)),
        Case("head_dim 2, 1 position", (2, 1)),
        Case("head_dim 6, 7 positions", (6, 7)),
        Case("head_dim 64, 16 positions", (64, 16)),
        Case(
            "base 500000 (LLaMA 3), head_dim 16, 10 positions",
            (16, 10),
            {"base": 500000.0},
            hint="use the `base` argument, not a hard-coded 10000.",
        ),
        Case("head_dim 4, 100 positions", (4, 100)),
    ]
    return run_check(
        "rope_frequencies",
        rope_frequencies,
        reference_rope_frequencies,
        cases,
        hint="theta_i = base ** (-2i / head_dim) for i = 0 .. head_dim/2 - 1; angles = "
        "positions 0 .. max_seq-1 (outer) theta, (max_seq, head_dim/2); rotate-half layout: "
        "emb = torch.cat((angles, angles), dim=-1); return emb.cos(), emb.sin() in float32.",
        compare=_pair_compare(("cos", "sin"), atol=1e-4, rtol=1e-4),
        forbid=FORBID_ROPE_TABLES,
    )


def check_apply_rotary(apply_rotary: Callable) -> CheckResult:
    """Check ``apply_rotary(x, cos, sin)`` in the rotate-half (HF LLaMA) convention."""
    cases = [
        Case("one position (1, 1, 1, 2)", _rope_args(1, 1, 1, 2, seed=100)),
        Case("(2, 3, 7, 8), table of 7 positions", _rope_args(2, 3, 7, 8, seed=101)),
        Case("head_dim 6 (1, 2, 5, 6)", _rope_args(1, 2, 5, 6, seed=102)),
        Case(
            "table of 16 positions, seq 5",
            _rope_args(2, 2, 5, 8, table=16, seed=103),
            hint="the table covers max_seq positions; x uses the first seq rows: cos[:seq].",
        ),
        Case("(1, 4, 3, 64)", _rope_args(1, 4, 3, 64, seed=104)),
        Case(
            "float64 x with a float32 table",
            _rope_args(2, 1, 4, 8, dtype=torch.float64, seed=105),
            hint="return x's dtype (float64 here).",
        ),
    ]
    return run_check(
        "apply_rotary",
        apply_rotary,
        reference_apply_rotary,
        cases,
        hint="x * cos + rotate_half(x) * sin, where rotate_half(x) = cat((-x2, x1), dim=-1) for "
        "the two HALVES x1, x2 of the last dim (not the even/odd pairs).",
        forbid=FORBID_ROTARY,
    )
