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

A mask is a bool tensor of the weight's shape, True where the weight is kept. Zeros in a dense
matrix save nothing by themselves: the matmul does the same work.

**Structured** pruning removes whole rows and columns, so the matrices really shrink. For a
transformers Llama-family model (SmolLM2) three units are removed here, each by an importance
score from calibration inputs (:func:`llmlab.compress.gptq.collect_hessians`'s
``H = X^T X / n``):

- **FFN channels** (:func:`ffn_channel_scores`, :func:`keep_ffn_channels`): channel j of the
  gated FFN is row j of ``gate_proj`` and ``up_proj`` and column j of ``down_proj``; its score
  is the mean square of what it adds to the output, ``H_jj * ||W_down[:, j]||^2``;
- **attention groups** (:func:`attention_group_scores`, :func:`keep_attention_groups`): under
  grouped-query attention a key/value head serves a group of query heads, and the group is the
  unit whose removal shrinks q, k, v, o and the KV cache together; its score is the mean square
  of its share of ``o_proj``'s output, ``trace(W_g H_gg W_g^T)``;
- **whole layers** (:func:`block_influence`, :func:`drop_layers`): ShortGPT's block influence
  (Men et al. 2024), one minus the cosine similarity of a layer's input and output hidden
  states: a layer that barely turns the residual stream does little.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from torch import nn

from llmlab.validate import require_positive_int, require_real

if TYPE_CHECKING:
    from llmlab.compress.gptq import LayerInputs

__all__ = [
    "magnitude_mask",
    "global_magnitude_masks",
    "wanda_mask",
    "n_m_mask",
    "apply_masks",
    "sparsity",
    "ffn_channel_scores",
    "keep_ffn_channels",
    "attention_group_scores",
    "keep_attention_groups",
    "block_influence",
    "drop_layers",
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


# --------------------------------------------------------------------------------------------
# Structured pruning: rows and columns removed, for transformers' Llama-family models
# --------------------------------------------------------------------------------------------


def ffn_channel_scores(down_weight: torch.Tensor, inputs: LayerInputs) -> torch.Tensor:
    """Each FFN channel's mean squared contribution to the FFN's output, ``H_jj * ||W[:, j]||^2``
    (``down_weight``: ``down_proj.weight`` (hidden, channels); ``inputs``: ``down_proj``'s
    :class:`~llmlab.compress.gptq.LayerInputs`). Cross terms between channels are left out."""
    w = _require_matrix(down_weight, "down_weight").detach()
    h = inputs.hessian
    if h.shape != (w.shape[1], w.shape[1]):
        raise ValueError(
            f"inputs: expected the LayerInputs of a layer with {w.shape[1]} inputs, got H of shape {tuple(h.shape)}"
        )
    return h.diagonal().float() * w.float().square().sum(0)


def _keep_index(keep, total: int, what: str) -> torch.Tensor:
    idx = torch.as_tensor(keep, dtype=torch.long).flatten().sort().values
    if idx.numel() == 0 or idx.unique().numel() != idx.numel() or idx[0] < 0 or idx[-1] >= total:
        raise ValueError(f"keep: expected distinct {what} indices in [0, {total}), at least one")
    return idx


def _shrunk(layer: nn.Linear, rows=None, cols=None) -> nn.Linear:
    """A new ``nn.Linear`` holding only ``rows`` (outputs) and ``cols`` (inputs) of ``layer``."""
    w = layer.weight.detach()
    if rows is not None:
        w = w[rows]
    if cols is not None:
        w = w[:, cols]
    bias = layer.bias is not None
    new = nn.Linear(w.shape[1], w.shape[0], bias=bias, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if bias:
            new.bias.copy_(layer.bias.detach() if rows is None else layer.bias.detach()[rows])
    new.weight.requires_grad_(layer.weight.requires_grad)
    return new


def keep_ffn_channels(mlp: nn.Module, keep) -> nn.Module:
    """Shrink a gated FFN (``gate_proj``, ``up_proj``, ``down_proj``) in place to the channels
    ``keep`` (indices); return it. The FFN computes exactly what it did with the others zeroed."""
    total = mlp.down_proj.in_features
    idx = _keep_index(keep, total, "channel")
    mlp.gate_proj = _shrunk(mlp.gate_proj, rows=idx)
    mlp.up_proj = _shrunk(mlp.up_proj, rows=idx)
    mlp.down_proj = _shrunk(mlp.down_proj, cols=idx)
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = idx.numel()
    return mlp


def _group_width(attn: nn.Module) -> tuple[int, int, int]:
    head_dim = attn.head_dim
    heads = attn.q_proj.out_features // head_dim
    groups = attn.k_proj.out_features // head_dim
    return head_dim, groups, heads // groups


def attention_group_scores(
    o_weight: torch.Tensor, inputs: LayerInputs, attn: nn.Module
) -> torch.Tensor:
    """Each key/value group's mean squared share of the attention output: for the columns
    ``g`` of ``o_proj`` that read the group's query heads, ``trace(W_g H_gg W_g^T)``
    (``o_weight``: ``o_proj.weight``; ``inputs``: ``o_proj``'s LayerInputs; ``attn``: the
    attention module, for its head layout)."""
    w = _require_matrix(o_weight, "o_weight").detach().double()
    head_dim, groups, per_group = _group_width(attn)
    width = head_dim * per_group
    if w.shape[1] != groups * width or inputs.hessian.shape != (w.shape[1], w.shape[1]):
        raise ValueError(
            f"o_weight, inputs: expected {groups} groups of {per_group} heads x {head_dim} = "
            f"{groups * width} input columns, got {w.shape[1]} and H {tuple(inputs.hessian.shape)}"
        )
    h = inputs.hessian.double()
    scores = []
    for g in range(groups):
        cols = slice(g * width, (g + 1) * width)
        wg = w[:, cols]
        scores.append(torch.einsum("oi,ij,oj->", wg, h[cols, cols], wg))
    return torch.stack(scores).float()


def keep_attention_groups(attn: nn.Module, keep) -> nn.Module:
    """Shrink a grouped-query attention module in place to the key/value groups ``keep``: their
    key and value heads, their query heads and ``o_proj``'s columns that read them; return it."""
    head_dim, groups, per_group = _group_width(attn)
    idx = _keep_index(keep, groups, "group")
    kv = (idx[:, None] * head_dim + torch.arange(head_dim)).flatten()
    q_width = head_dim * per_group
    q = (idx[:, None] * q_width + torch.arange(q_width)).flatten()
    attn.q_proj = _shrunk(attn.q_proj, rows=q)
    attn.k_proj = _shrunk(attn.k_proj, rows=kv)
    attn.v_proj = _shrunk(attn.v_proj, rows=kv)
    attn.o_proj = _shrunk(attn.o_proj, cols=q)
    return attn


def _decoder_layers(model: nn.Module) -> nn.ModuleList:
    layers = getattr(getattr(model, "model", model), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(
            f"model: expected a transformers decoder with .model.layers, got {type(model).__name__}"
        )
    return layers


def block_influence(model: nn.Module, batches: Iterable[torch.Tensor]) -> torch.Tensor:
    """ShortGPT's block influence of every decoder layer: ``1 - cos(input, output)`` of its
    hidden states, averaged over all tokens of ``batches`` (token ids). Shape (layers,)."""
    layers = _decoder_layers(model)
    sums = torch.zeros(len(layers), dtype=torch.float64)
    count = [0]

    def hook(i):
        def record(module, args, kwargs, output):
            x = args[0] if args else kwargs["hidden_states"]
            y = output[0] if isinstance(output, tuple) else output
            cos = nn.functional.cosine_similarity(x.float(), y.float(), dim=-1)
            sums[i] += (1 - cos).double().sum()
            if i == 0:
                count[0] += cos.numel()

        return record

    handles = [
        layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)
    ]
    try:
        with torch.no_grad():
            for ids in batches:
                model(ids)
    finally:
        for h in handles:
            h.remove()
    if count[0] == 0:
        raise ValueError("batches: expected at least one batch of tokens, got none")
    return (sums / count[0]).float()


def drop_layers(model: nn.Module, drop) -> nn.Module:
    """Remove the decoder layers ``drop`` (indices) from ``model`` in place, renumbering the
    others (their KV-cache slots) and the config; return it."""
    layers = _decoder_layers(model)
    gone = {int(i) for i in torch.as_tensor(drop, dtype=torch.long).flatten().tolist()}
    if any(not 0 <= i < len(layers) for i in gone) or len(gone) >= len(layers):
        raise ValueError(
            f"drop: expected layer indices in [0, {len(layers)}) leaving at least one layer, got {sorted(gone)}"
        )
    kept = [layer for i, layer in enumerate(layers) if i not in gone]
    for new_index, layer in enumerate(kept):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    owner = getattr(model, "model", model)
    owner.layers = nn.ModuleList(kept)
    config = getattr(model, "config", None)
    if config is not None:
        if getattr(config, "layer_types", None) is not None:
            config.layer_types = [t for i, t in enumerate(config.layer_types) if i not in gone]
        config.num_hidden_layers = len(kept)
    return model
