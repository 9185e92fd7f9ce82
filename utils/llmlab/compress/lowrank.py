"""Low-rank factorisation: a weight matrix replaced by the product of two thin ones.

Seed 004 §5: "decompose a high-dimensional weight matrix into the product of low-dimensional
matrices, e.g. a d x d matrix into d x k and k x d (k << d)". An (out, in) matrix holds
``out * in`` numbers; its rank-k factors hold ``k * (out + in)``, fewer only when
``k < out * in / (out + in)`` (half the width for a square matrix).

- :func:`truncated_svd`: the best rank-k approximation in the Frobenius norm (Eckart-Young):
  keep the k largest singular values, ``W ~ (U_k S_k)(V_k^T)``.
- :func:`whitened_svd`: the best rank-k approximation of the layer's *output* on real inputs,
  ``min ||X (W - W_k)^T||`` (SVD-LLM, Wang et al. 2024; ASVD is a diagonal version). With
  ``H = X^T X / n = L L^T`` (Cholesky), the output error of ``W_k`` is
  ``||(W - W_k) L||_F^2``, so truncate the SVD of ``W L`` and multiply back by ``L^-1``.
- :func:`decompose` keeps the SVD (a :class:`Decomposition`) so that a rank sweep cuts every
  rank from one factorisation.
- :class:`LowRankLinear` runs the two factors as two ``nn.Linear``; :func:`factorize_linears`
  swaps them into a model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from llmlab.compress.int8 import _linears, _set_module
from llmlab.compress.prune import _require_matrix
from llmlab.validate import require_positive_int, require_real

__all__ = [
    "break_even_rank",
    "rank_for_share",
    "energy_rank",
    "Decomposition",
    "decompose",
    "truncated_svd",
    "whitened_svd",
    "LowRankLinear",
    "factorize_linears",
]


def break_even_rank(out_features: int, in_features: int) -> float:
    """The rank at which the two factors hold as many numbers as the matrix: out*in/(out+in)."""
    o, i = (
        require_positive_int(out_features, "out_features"),
        require_positive_int(in_features, "in_features"),
    )
    return o * i / (o + i)


def rank_for_share(out_features: int, in_features: int, share: float) -> int:
    """The rank whose factors hold ``share`` of the matrix's ``out * in`` numbers (at least 1)."""
    s = require_real(share, "share")
    if not 0.0 < s <= 1.0:
        raise ValueError(f"share: expected a fraction in (0, 1], got {share!r}")
    return max(1, int(s * break_even_rank(out_features, in_features)))


def energy_rank(singular_values: torch.Tensor, energy: float) -> int:
    """The smallest k whose k largest singular values hold ``energy`` of ``sum(sigma^2)``."""
    e = require_real(energy, "energy")
    if not 0.0 < e <= 1.0:
        raise ValueError(f"energy: expected a fraction in (0, 1], got {energy!r}")
    sq = singular_values.detach().double().square().sort(descending=True).values
    cumulative = sq.cumsum(0) / sq.sum()
    return int((cumulative < e - 1e-12).sum()) + 1


@dataclass
class Decomposition:
    """A matrix's SVD, kept so that any rank can be cut from it without recomputing:
    ``W C = U S V^T``, with ``C`` the lower Cholesky factor of the inputs' ``H`` (activation-
    aware) or None (plain, ``C = I``). :meth:`factors` returns the rank-k ``(A, B)``."""

    u: torch.Tensor
    s: torch.Tensor
    vh: torch.Tensor
    chol: torch.Tensor | None
    dtype: torch.dtype

    def factors(self, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        k = require_positive_int(rank, "rank")
        if k > self.s.numel():
            raise ValueError(f"rank: expected at most min(out, in) = {self.s.numel()}, got {k}")
        root = self.s[:k].sqrt()
        a, b = self.u[:, :k] * root, root[:, None] * self.vh[:k]
        if self.chol is not None:  # B C = sqrt(S) V^T, so B = sqrt(S) V^T C^-1
            b = torch.linalg.solve_triangular(self.chol, b, upper=False, left=False)
        return a.to(self.dtype), b.to(self.dtype)


def decompose(
    weight: torch.Tensor, hessian: torch.Tensor | None = None, damp: float = 0.01
) -> Decomposition:
    """The SVD of ``weight`` (plain), or of ``weight @ C`` with ``H + damp * mean(diag H) I
    = C C^T`` (activation-aware, ``hessian``: the inputs' ``X^T X / n``), in float64."""
    w, chol = _require_matrix(weight, "weight").detach().double(), None
    if hessian is not None:
        if not isinstance(hessian, torch.Tensor) or hessian.shape != (w.shape[1], w.shape[1]):
            raise ValueError(
                f"hessian: expected a ({w.shape[1]}, {w.shape[1]}) tensor, the inputs' X^T X / n, "
                f"got {getattr(hessian, 'shape', type(hessian).__name__)}"
            )
        d = require_real(damp, "damp")
        h = hessian.detach().double()
        chol = torch.linalg.cholesky(
            h + d * h.diagonal().mean() * torch.eye(h.shape[0], dtype=h.dtype)
        )
        w = w @ chol
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    return Decomposition(u, s, vh, chol, weight.dtype)


def truncated_svd(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` with ``A`` (out, rank) and ``B`` (rank, in): the best rank-``rank``
    ``A @ B ~ weight`` in the Frobenius norm. The singular values are split evenly,
    ``A = U sqrt(S)``, ``B = sqrt(S) V^T``, so neither factor carries the whole scale."""
    return decompose(weight).factors(rank)


def whitened_svd(
    weight: torch.Tensor, hessian: torch.Tensor, rank: int, damp: float = 0.01
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` minimising the output error ``trace((W - AB) H (W - AB)^T)`` over rank-``rank``
    factors, with ``H = X^T X / n`` from calibration inputs (``damp * mean(diag H)`` is added
    to its diagonal so that its Cholesky factor exists)."""
    if hessian is None:
        raise ValueError("hessian: expected the inputs' X^T X / n, got None")
    return decompose(weight, hessian, damp).factors(rank)


class LowRankLinear(nn.Module):
    """``y = x B^T A^T + bias``: a linear layer as two thinner ones, ``in -> rank -> out``."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
            raise ValueError(
                f"a, b: expected (out, rank) and (rank, in), got {tuple(a.shape)} and {tuple(b.shape)}"
            )
        rank = a.shape[1]
        self.in_features, self.out_features, self.rank = b.shape[1], a.shape[0], rank
        self.down = nn.Linear(b.shape[1], rank, bias=False, device=b.device, dtype=b.dtype)
        self.up = nn.Linear(rank, a.shape[0], bias=bias is not None, device=a.device, dtype=a.dtype)
        with torch.no_grad():
            self.down.weight.copy_(b)
            self.up.weight.copy_(a)
            if bias is not None:
                self.up.bias.copy_(bias)

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        rank: int,
        hessian: torch.Tensor | None = None,
        damp: float = 0.01,
        decomposition: Decomposition | None = None,
    ) -> LowRankLinear:
        """Factor ``linear``: plain SVD, or activation-aware when ``hessian`` is given; or the
        ``decomposition`` of its weight computed earlier (a sweep over ranks reuses one)."""
        if decomposition is None:
            decomposition = decompose(linear.weight, hessian, damp)
        bias = None if linear.bias is None else linear.bias.detach()
        return cls(*decomposition.factors(rank), bias)

    @property
    def weight(self) -> torch.Tensor:
        """The product ``A @ B`` (out, in), for comparison with the original weight."""
        return self.up.weight @ self.down.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


def factorize_linears(
    model: nn.Module,
    share: float,
    hessians: dict | None = None,
    skip: tuple[str, ...] = ("lm_head",),
    damp: float = 0.01,
    decompositions: dict[str, Decomposition] | None = None,
) -> nn.Module:
    """Replace, in place, every ``nn.Linear`` of ``model`` (but ``skip``) by a
    :class:`LowRankLinear` whose factors hold ``share`` of its numbers; activation-aware when
    ``hessians`` (name -> :class:`~llmlab.compress.gptq.LayerInputs`, from ``collect_hessians``)
    is given. ``decompositions`` (name -> :class:`Decomposition`) reuses SVDs already computed,
    so that a sweep over ``share`` computes each only once. Returns the model."""
    for name, layer in list(_linears(model, skip)):
        rank = rank_for_share(layer.out_features, layer.in_features, share)
        if decompositions is not None:
            if name not in decompositions:
                raise KeyError(f"decompositions: no decomposition for layer {name!r}")
            dec = decompositions[name]
        else:
            if hessians is not None and name not in hessians:
                raise KeyError(f"hessians: no calibration inputs for layer {name!r}")
            dec = decompose(
                layer.weight, None if hessians is None else hessians[name].hessian, damp
            )
        _set_module(model, name, LowRankLinear.from_linear(layer, rank, decomposition=dec))
    return model
