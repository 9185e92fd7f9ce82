"""Pruning: remove the weights that matter least, and measure what that costs.

Seed 004 §5: pruning "removes unimportant parameters (weights close to 0, neurons that
contribute little)", either **unstructured** (single weights) or **structured** (whole layers
or channels); "structured pruning is friendlier to hardware acceleration, but may lose more".
What counts as unimportant is a score; the masks below keep the highest scores.

- **magnitude** (Han et al. 2015): score ``|W_ij|``, per layer (:func:`magnitude_mask`) or with
  one threshold for the whole model (:func:`global_magnitude_masks`);
- **Wanda** (Sun et al. 2023): score ``|W_ij| * ||X_j||``, the weight times the norm of the
  input feature it multiplies, compared within each output row, in one shot and without any
  update of the kept weights (:func:`wanda_mask`). A small weight on a feature that carries
  large activations (notebook 4's outliers) matters more than its size says;
- **N:M** (:func:`n_m_mask`): keep the N highest scores of every M consecutive weights of a
  row, e.g. 2:4, the pattern NVIDIA's sparse tensor cores run at twice the dense rate.

A mask is a bool tensor of the weight's shape, True where the weight is kept.
"""

from __future__ import annotations

import torch
from torch import nn

from llmlab.validate import require_positive_int, require_real

__all__ = [
    "magnitude_mask",
    "global_magnitude_masks",
    "wanda_mask",
    "n_m_mask",
    "apply_masks",
    "sparsity",
]


def _require_sparsity(value) -> float:
    s = require_real(value, "sparsity")
    if not 0.0 <= s < 1.0:
        raise ValueError(f"sparsity: expected a fraction in [0, 1), got {value!r}")
    return s


def _require_matrix(w, name: str = "weight") -> torch.Tensor:
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        raise ValueError(
            f"{name}: expected a 2-D tensor (out, in), got {getattr(w, 'shape', type(w).__name__)}"
        )
    return w


def _keep_top(scores: torch.Tensor, n_keep: int) -> torch.Tensor:
    """True at the ``n_keep`` largest entries of each row of ``scores`` (ties broken by index)."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if n_keep > 0:
        mask.scatter_(-1, scores.topk(n_keep, dim=-1, sorted=False).indices, True)
    return mask


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep the ``1 - sparsity`` share of ``weight`` with the largest magnitudes (whole layer)."""
    w = _require_matrix(weight).detach()
    s = _require_sparsity(sparsity)
    keep = w.numel() - int(round(s * w.numel()))
    return _keep_top(w.abs().flatten()[None], keep).view(w.shape)


def global_magnitude_masks(
    weights: dict[str, torch.Tensor], sparsity: float
) -> dict[str, torch.Tensor]:
    """One magnitude threshold for all of ``weights``: layers with many small weights lose more."""
    s = _require_sparsity(sparsity)
    if not weights:
        raise ValueError("weights: expected at least one weight matrix")
    names = list(weights)
    flat = torch.cat(
        [_require_matrix(weights[n], f"weights[{n!r}]").detach().abs().flatten() for n in names]
    )
    keep = _keep_top(flat[None], flat.numel() - int(round(s * flat.numel())))[0]
    out, start = {}, 0
    for n in names:
        size = weights[n].numel()
        out[n] = keep[start : start + size].view(weights[n].shape)
        start += size
    return out


def wanda_mask(weight: torch.Tensor, input_norm: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Wanda: keep, in every output row, the ``1 - sparsity`` share of weights with the largest
    ``|W_ij| * input_norm[j]`` (``input_norm``: each input feature's L2 norm over the
    calibration tokens, shape (in,))."""
    w = _require_matrix(weight).detach()
    s = _require_sparsity(sparsity)
    if not isinstance(input_norm, torch.Tensor) or input_norm.shape != (w.shape[1],):
        raise ValueError(
            f"input_norm: expected a tensor of shape ({w.shape[1]},), one norm per input"
        )
    scores = w.abs().float() * input_norm.float()[None, :]
    return _keep_top(scores, w.shape[1] - int(round(s * w.shape[1])))


def n_m_mask(scores: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Keep the ``n`` highest ``scores`` in every ``m`` consecutive entries of each row (N:M)."""
    sc = _require_matrix(scores, "scores").detach()
    n, m = require_positive_int(n, "n"), require_positive_int(m, "m")
    if n > m:
        raise ValueError(f"n: expected at most m={m}, got {n}")
    if sc.shape[1] % m:
        raise ValueError(f"m: expected a divisor of the {sc.shape[1]} input columns, got {m}")
    blocks = sc.reshape(sc.shape[0], -1, m)
    return _keep_top(blocks, n).view(sc.shape)


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """Zero, in place, the weights of ``model``'s layers where their mask is False; return it."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, mask in masks.items():
            layer = modules.get(name)
            if layer is None or not hasattr(layer, "weight") or layer.weight.shape != mask.shape:
                raise KeyError(
                    f"masks: {name!r} is not a layer of model with a weight of shape {tuple(mask.shape)}"
                )
            layer.weight.mul_(mask.to(layer.weight.dtype))
    return model


def sparsity(weights) -> float:
    """The share of exact zeros in a tensor or an iterable of tensors."""
    tensors = [weights] if isinstance(weights, torch.Tensor) else list(weights)
    total = sum(t.numel() for t in tensors)
    if total == 0:
        raise ValueError("weights: expected at least one element")
    return sum(int((t == 0).sum()) for t in tensors) / total
