"""The position-wise feed-forward network (FFN) of a Transformer block.

    relu / gelu / gelu_tanh:  FFN(x) = down_proj(act(up_proj(x)))            (Vaswani; GPT-2; BERT)
    swiglu:                   FFN(x) = down_proj(silu(gate_proj(x)) * up_proj(x))   (Shazeer 2020; LLaMA)

Each token goes through the same two (or three) matrices on its own: attention mixes
information across positions, the FFN processes it within a position, and holds about two
thirds of a Transformer's parameters. The weights are named like LLaMA's (``gate_proj``,
``up_proj``, ``down_proj``) so SmolLM2's MLP loads by name; the plain FFN uses ``up_proj`` and
``down_proj`` for its two matrices too (torch calls them ``linear1``/``linear2``, GPT-2
``c_fc``/``c_proj``).

SwiGLU has three matrices instead of two, so at equal parameter count its ``d_ff`` is 2/3 of
the plain FFN's (LLaMA: d_ff = 8/3 d_model, rounded up).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.validate import require_positive_int

__all__ = ["FeedForward", "ACTIVATIONS"]

ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "swiglu")


class FeedForward(nn.Module):
    """x: (..., d_model) -> (..., d_model) through a hidden layer of width ``d_ff``.

    activation: ``"relu"`` (Vaswani), ``"gelu"`` (exact, BERT), ``"gelu_tanh"`` (the tanh
    approximation GPT-2 uses), ``"swiglu"`` (gated, LLaMA). ``dropout`` is applied to the
    hidden activations, as in ``torch.nn.TransformerEncoderLayer``.
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        activation: str = "relu",
        bias: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        for value, name in ((d_model, "d_model"), (d_ff, "d_ff")):
            require_positive_int(value, name)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout: expected a float in [0, 1), got {dropout!r}")
        self.d_model = d_model
        self.d_ff = d_ff
        self.activation = activation
        if activation == "swiglu":
            self.gate_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.up_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.down_proj = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation == "swiglu":
            hidden = F.silu(self.gate_proj(x)) * self.up_proj(x)
        elif self.activation == "relu":
            hidden = F.relu(self.up_proj(x))
        elif self.activation == "gelu":
            hidden = F.gelu(self.up_proj(x))
        else:
            hidden = F.gelu(self.up_proj(x), approximate="tanh")
        return self.down_proj(self.dropout(hidden))

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_ff={self.d_ff}, activation={self.activation!r}"
