"""Weight-only quantization that looks at data: GPTQ and AWQ, against round-to-nearest.

Round-to-nearest (RTN) rounds every weight on its own. What matters is the layer's *output*
on real inputs, ``X W^T``: with ``H = X^T X`` (the inputs' second moments; GPTQ's Hessian of the
squared output error, up to a factor 2), the error of a quantized ``W_hat`` is

    ||X (W - W_hat)^T||^2 = trace((W - W_hat) H (W - W_hat)^T)          (:func:`output_error`)

Both methods below lower that number with the same 4-bit grid as RTN.

**GPTQ** (Frantar et al. 2022) quantizes the columns (input features) one at a time and, after
each, moves the rounding error it just made onto the columns not yet quantized, in the
proportions that the inverse Hessian says cancel it best (Optimal Brain Surgeon's update):

    err = (w_i - q_i) / U_ii,        W[:, j] -= err * U_ij   for j > i

where ``U`` is the upper Cholesky factor of ``H^-1`` (computing it once replaces OBS's
re-inversion after every column). Updates are applied lazily: within a block of
``block_size`` columns at once, and to the rest of the matrix once per block (a matrix
product instead of many rank-one updates; same result). Options: ``act_order`` (quantize the
columns with the largest ``H_ii`` first), groups (a scale per ``group_size`` columns, computed
from the *updated* weights when the group starts), dampening (``damp * mean(diag H)`` added to
the diagonal, so that ``H`` is invertible).

**AWQ** (Lin et al. 2023) protects the weights that meet large activations: it multiplies
each input column j of W by ``s_j = mean|x_j|^alpha`` before quantizing and divides after,
``W_hat = Q(W diag(s)) diag(s)^-1``, so the important columns get a finer share of their
group's grid; ``alpha`` is searched on a grid to minimise the output error. (In deployment
the division is folded into the layer before, as SmoothQuant does; here ``W_hat`` is kept in
float, the same arithmetic.) AWQ's second step, the clipping search, then shrinks each
group's range, row by row: ``max|w|`` of the group times a ratio from 1 down to 0.5, the ratio
with the least output error over that group's inputs (the block ``H_gg``, as the paper's code
measures it on the group's inputs alone). A smaller range clips a few large weights and
rounds all the others on a finer grid.

Inputs come from :func:`collect_hessians`, which records ``H`` and ``mean|x|`` for every
linear layer from a forward pass over calibration text. Layers are quantized from the float
model's inputs, all at once (the GPTQ paper feeds each block the already-quantized outputs of
the blocks before it; the difference is second order).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from llmlab.compress.int8 import _linears
from llmlab.compress.quant import SCHEMES, fake_quantize
from llmlab.validate import require_int, require_positive_int, require_real

__all__ = [
    "LayerInputs",
    "collect_hessians",
    "output_error",
    "GPTQResult",
    "gptq_quantize",
    "rtn_quantize",
    "AWQResult",
    "awq_quantize",
    "METHODS",
    "quantize_weights",
    "VARIANTS",
    "loudness",
    "compare_methods",
]


# --------------------------------------------------------------------------------------------
# What the layers see
# --------------------------------------------------------------------------------------------


@dataclass
class LayerInputs:
    """One linear layer's inputs on the calibration data: ``H = X^T X / n`` (in, in) float64,
    ``mean_abs`` (in,) the mean |x| of each input feature, ``n`` the rows of X seen."""

    hessian: torch.Tensor
    mean_abs: torch.Tensor
    n: int


def collect_hessians(
    model: nn.Module, batches: Iterable[torch.Tensor], skip: Iterable[str] = ("lm_head",)
) -> dict[str, LayerInputs]:
    """Run ``model`` on ``batches`` (token ids) and record each ``nn.Linear``'s :class:`LayerInputs`.

    Layers that read the same tensor one after the other (q, k and v; gate and up) share one
    record (the same object).
    """
    layers = dict(_linears(model, skip))
    sums: dict[str, list] = {}  # reader -> [X^T X, sum |x|, rows]
    reader_of: dict[str, str] = {}
    last: list = [None, None]  # the previous hook's (input tensor, reader)

    def hook(name):
        def record(module, args):
            x = args[0]
            if x is last[0]:  # the same tensor as the layer just before: share its record
                reader_of[name] = last[1]
                return
            last[0], last[1] = x, name
            reader_of[name] = name
            x2 = x.detach().reshape(-1, x.shape[-1]).double()
            acc = sums.setdefault(name, [0.0, 0.0, 0])
            acc[0] = acc[0] + x2.T @ x2
            acc[1] = acc[1] + x2.abs().sum(0)
            acc[2] += x2.shape[0]

        return record

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in layers.items()]
    try:
        with torch.no_grad():
            for ids in batches:
                model(ids)
                last[0] = last[1] = None
    finally:
        for h in handles:
            h.remove()
    if not sums:
        raise ValueError("batches: expected at least one batch, got none")
    records = {name: LayerInputs(xtx / n, s / n, n) for name, (xtx, s, n) in sums.items()}
    return {name: records[reader] for name, reader in reader_of.items()}


def output_error(weight: torch.Tensor, w_hat: torch.Tensor, hessian: torch.Tensor) -> float:
    """``trace((W - W_hat) H (W - W_hat)^T)``: the mean squared output error per input row,
    summed over output features (``H = X^T X / n``)."""
    d = (weight - w_hat).double()
    return float(torch.einsum("oi,ij,oj->", d, hessian.double(), d))


# --------------------------------------------------------------------------------------------
# The grid (shared by RTN, GPTQ and AWQ)
# --------------------------------------------------------------------------------------------


def _grid(
    block: torch.Tensor, bits: int, scheme: str
) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Per-row ``(scale, zero, low, high)`` of ``block`` (rows, cols): the codes are
    ``clamp(round(w / scale) + zero, low, high)``, as :func:`llmlab.compress.quant.quantize`."""
    if scheme == "absmax":
        top = 2 ** (bits - 1) - 1
        scale = block.abs().amax(1, keepdim=True) / top
        zero = torch.zeros_like(scale)
        low, high = -top, top
    else:
        top = 2**bits - 1
        lo = block.amin(1, keepdim=True).clamp(max=0.0)
        hi = block.amax(1, keepdim=True).clamp(min=0.0)
        scale = (hi - lo) / top
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero = torch.round(-lo / scale).clamp(0, top)
        low, high = 0, top
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return scale, zero, low, high


def _round(w: torch.Tensor, scale, zero, low, high) -> torch.Tensor:
    return (torch.clamp(torch.round(w / scale) + zero, low, high) - zero) * scale


def _require_weight(weight: torch.Tensor) -> torch.Tensor:
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError("weight: expected a 2-D float tensor (out, in)")
    return weight


def _require_options(weight, bits, scheme, group_size) -> tuple[int, int | None]:
    bits = require_int(bits, "bits", 2)
    if bits > 8:
        raise ValueError(f"bits: expected 2 to 8, got {bits}")
    if scheme not in SCHEMES[:2]:
        raise ValueError(f"scheme: expected 'absmax' or 'zeropoint', got {scheme!r}")
    if group_size is not None:
        group_size = require_positive_int(group_size, "group_size")
        if weight.shape[1] % group_size:
            raise ValueError(
                f"group_size: expected a divisor of the {weight.shape[1]} input columns, got {group_size}"
            )
    return bits, group_size


def rtn_quantize(
    weight: torch.Tensor, bits: int = 4, group_size: int | None = None, scheme: str = "zeropoint"
) -> torch.Tensor:
    """Round-to-nearest: every weight rounded on its grid (per row, or per group of columns)."""
    _require_weight(weight)
    bits, group_size = _require_options(weight, bits, scheme, group_size)
    granularity = "channel" if group_size is None else "group"
    return fake_quantize(
        weight, bits, scheme=scheme, granularity=granularity, group_size=group_size
    )


# --------------------------------------------------------------------------------------------
# GPTQ
# --------------------------------------------------------------------------------------------


@dataclass
class GPTQResult:
    """``weight``: the quantized weight, de-quantized to float, in the original column order;
    ``order``: the order in which the columns were quantized (``act_order``: by falling H_ii);
    ``error``, ``rtn_error``: :func:`output_error` of GPTQ and of RTN on the same grid."""

    weight: torch.Tensor
    order: torch.Tensor
    error: float
    rtn_error: float


def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    bits: int = 4,
    group_size: int | None = None,
    scheme: str = "zeropoint",
    act_order: bool = False,
    block_size: int = 128,
    damp: float = 0.01,
) -> GPTQResult:
    """GPTQ: quantize ``weight`` (out, in) column by column, each column's rounding error
    spread over the columns after it through ``hessian`` (in, in) = X^T X / n. See the module
    docstring; with ``act_order`` and groups, a group is ``group_size`` consecutive columns
    *in the quantization order* (each column remembers its group's scale)."""
    _require_weight(weight)
    bits, group_size = _require_options(weight, bits, scheme, group_size)
    block_size = require_positive_int(block_size, "block_size")
    if not 0 <= require_real(damp, "damp") < 1:
        raise ValueError(f"damp: expected a number in [0, 1), got {damp!r}")
    cols = weight.shape[1]
    if not isinstance(hessian, torch.Tensor) or hessian.shape != (cols, cols):
        raise ValueError(
            f"hessian: expected a ({cols}, {cols}) tensor, got {getattr(hessian, 'shape', hessian)}"
        )

    W = weight.detach().double().clone()
    H = hessian.detach().double().clone()
    dead = torch.diag(H) == 0  # features never active: nothing to preserve there
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    order = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(cols)
    W, H = W[:, order], H[order][:, order]
    H += damp * torch.diag(H).mean() * torch.eye(cols, dtype=H.dtype)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)

    Q = torch.zeros_like(W)
    scale = zero = None
    low = high = 0
    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        Wb = W[:, start:end].clone()
        Eb = torch.zeros_like(Wb)
        Ub = U[start:end, start:end]
        for j in range(end - start):
            i = start + j
            if group_size is None and i == 0:
                scale, zero, low, high = _grid(W, bits, scheme)  # per row, from the whole row
            elif group_size is not None and i % group_size == 0:
                # the group's grid from its current (already updated) weights
                upcoming = torch.cat([Wb[:, j:], W[:, end:]], dim=1)[:, :group_size]
                scale, zero, low, high = _grid(upcoming, bits, scheme)
            w = Wb[:, j : j + 1]
            q = _round(w, scale, zero, low, high)
            Q[:, i : i + 1] = q
            err = (w - q) / Ub[j, j]
            Wb[:, j:] -= err @ Ub[j : j + 1, j:]  # j's own column becomes q
            Eb[:, j : j + 1] = err
        W[:, end:] -= Eb @ U[start:end, end:]  # the lazy update of every later column

    inverse = torch.argsort(order)
    w_hat = Q[:, inverse].to(weight.dtype)
    w_hat[:, dead] = 0.0
    rtn = rtn_quantize(weight.detach(), bits, group_size, scheme)  # groups in the original order
    return GPTQResult(
        weight=w_hat,
        order=order,
        error=output_error(weight, w_hat, hessian),
        rtn_error=output_error(weight, rtn, hessian),
    )


# --------------------------------------------------------------------------------------------
# AWQ
# --------------------------------------------------------------------------------------------


@dataclass
class AWQResult:
    """``weight``: ``Q(clip(W diag(s))) diag(s)^-1`` in float; ``alpha`` the chosen exponent,
    ``scales`` s (in,); ``errors``: output error for each alpha tried, without clipping (alpha 0
    is RTN); ``error``: the output error of ``weight`` (after the clipping search, when it ran);
    ``clip_ratios``: (out, groups) the ratio of each row's group range kept (None: no search)."""

    weight: torch.Tensor
    alpha: float
    scales: torch.Tensor
    errors: dict[float, float]
    error: float = 0.0
    clip_ratios: torch.Tensor | None = None


def _clip_search(
    ws: torch.Tensor, hessian: torch.Tensor, bits: int, group_size: int | None, scheme: str,
    steps: int, min_ratio: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The quantized ``ws`` with each row's range in each group shrunk by the ratio (from 1 down
    to ``min_ratio`` in ``steps`` steps) of least error ``d H_gg d^T`` on that group; returns
    the quantized weight and the ratios (out, groups). All groups at once: one quantization of
    the whole matrix per ratio."""
    out_f, in_f = ws.shape
    width = in_f if group_size is None else group_size
    groups = in_f // width
    blocks = torch.stack([hessian[g * width : (g + 1) * width, g * width : (g + 1) * width]
                          for g in range(groups)]).double()  # fmt: skip
    w3 = ws.view(out_f, groups, width)
    limit = w3.abs().amax(dim=2, keepdim=True)
    best_err = best_q = best_r = None
    for i in range(steps):
        r = 1.0 - (1.0 - min_ratio) * i / max(steps - 1, 1)
        clipped = torch.maximum(torch.minimum(w3, r * limit), -r * limit).view(out_f, in_f)
        q = rtn_quantize(clipped, bits, group_size, scheme).view(out_f, groups, width)
        d = (w3 - q).double()
        err = torch.einsum("ogi,gij,ogj->og", d, blocks, d)
        if best_err is None:
            best_err, best_q, best_r = err, q, torch.full_like(err, r)
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_q = torch.where(better[..., None], q, best_q)
            best_r = torch.where(better, torch.full_like(err, r), best_r)
    return best_q.reshape(out_f, in_f), best_r.float()


def awq_quantize(
    weight: torch.Tensor,
    inputs: LayerInputs,
    bits: int = 4,
    group_size: int | None = None,
    scheme: str = "zeropoint",
    grid: int = 20,
    clip: bool = True,
    clip_grid: int = 20,
    min_clip: float = 0.5,
) -> AWQResult:
    """AWQ's activation-aware scaling: try ``alpha`` in ``0, 1/grid, ..., (grid-1)/grid``, keep
    the one with the least :func:`output_error` (alpha = 0 is plain RTN, so AWQ never loses to
    it on the calibration data). ``clip``: then AWQ's clipping search (module docstring), each
    row's range in each group scaled by one of ``clip_grid`` ratios from 1 down to
    ``min_clip`` (ratio 1 is no clipping)."""
    _require_weight(weight)
    bits, group_size = _require_options(weight, bits, scheme, group_size)
    grid = require_positive_int(grid, "grid")
    if not isinstance(inputs, LayerInputs) or inputs.mean_abs.shape != (weight.shape[1],):
        raise ValueError(
            f"inputs: expected the LayerInputs of a layer with {weight.shape[1]} inputs"
        )
    W = weight.detach().float()
    act = inputs.mean_abs.float().clamp(min=1e-8)
    errors: dict[float, float] = {}
    best = None
    for k in range(grid):
        alpha = k / grid
        s = act.pow(alpha)
        s = s / (s.max() * s.min()).sqrt()  # centre the scales around 1 (as the paper's code)
        w_hat = rtn_quantize(W * s, bits, group_size, scheme) / s
        errors[alpha] = output_error(W, w_hat, inputs.hessian)
        if best is None or errors[alpha] < errors[best[0]]:
            best = (alpha, s, w_hat)
    alpha, s, w_hat = best
    ratios = None
    if clip:
        if not 0.0 < min_clip <= 1.0:
            raise ValueError(f"min_clip: expected a ratio in (0, 1], got {min_clip!r}")
        clip_grid = require_positive_int(clip_grid, "clip_grid")
        h_scaled = inputs.hessian.float() / (s[:, None] * s[None, :])  # the inputs of W s: x / s
        q, ratios = _clip_search(W * s, h_scaled, bits, group_size, scheme, clip_grid, min_clip)
        w_hat = q / s
    error = output_error(W, w_hat, inputs.hessian)
    return AWQResult(weight=w_hat.to(weight.dtype), alpha=alpha, scales=s, errors=errors,
                     error=error, clip_ratios=ratios)  # fmt: skip


METHODS = ("rtn", "gptq", "awq")


def quantize_weights(
    model: nn.Module,
    inputs: dict[str, LayerInputs],
    method: str = "gptq",
    bits: int = 4,
    group_size: int | None = None,
    scheme: str = "zeropoint",
    act_order: bool = False,
    awq_grid: int = 20,
) -> dict[str, float]:
    """Replace, in place, the weight of every linear layer named in ``inputs`` by its
    ``method``-quantized version (kept in float: fake-quantized), and return each layer's
    output error relative to RTN's on the same grid (1.0 for RTN itself).

    ``inputs`` come from :func:`collect_hessians` on the *float* model; every layer is
    quantized from those (see the module docstring). ``awq_grid``: how many values of AWQ's
    ``alpha`` are tried.
    """
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    modules = dict(model.named_modules())
    missing = [name for name in inputs if not isinstance(modules.get(name), nn.Linear)]
    if missing:
        raise KeyError(f"inputs: no linear layer named {missing[0]!r} in model")
    ratios: dict[str, float] = {}
    with torch.no_grad():
        for name, record in inputs.items():
            layer = modules[name]
            w = layer.weight.detach().float()
            rtn = rtn_quantize(w, bits, group_size, scheme)
            if method == "rtn":
                new, ratios[name] = rtn, 1.0
            elif method == "gptq":
                result = gptq_quantize(w, record.hessian, bits, group_size, scheme, act_order)
                new, ratios[name] = result.weight, result.error / max(result.rtn_error, 1e-30)
            else:
                result = awq_quantize(w, record, bits, group_size, scheme, awq_grid)
                new = result.weight
                ratios[name] = result.error / max(result.errors[0.0], 1e-30)
            layer.weight.copy_(new.to(layer.weight.dtype))
    return ratios


# --------------------------------------------------------------------------------------------
# Every method on one model
# --------------------------------------------------------------------------------------------

VARIANTS = {
    "RTN": dict(method="rtn"),
    "GPTQ": dict(method="gptq"),
    "GPTQ act-order": dict(method="gptq", act_order=True),
    "AWQ": dict(method="awq"),
}


def loudness(inputs: dict[str, LayerInputs]) -> list[float]:
    """For each distinct record of :func:`collect_hessians` (q, k and v share one), the input
    norm of its loudest feature over that of its median feature, over the calibration tokens:
    about 1 for inputs of equal size, hundreds where a few features carry outliers."""
    records = {id(r): r for r in inputs.values()}.values()
    norms = [r.hessian.diagonal().clamp(min=0).sqrt() for r in records]
    return [float(n.max() / n.median().clamp(min=1e-30)) for n in norms]


def compare_methods(
    model: nn.Module,
    inputs: dict[str, LayerInputs],
    windows: torch.Tensor,
    variants: dict[str, dict] | None = None,
    bits: Iterable[int] = (4, 3),
    group_size: int | None = 64,
    awq_grid: int = 10,
) -> dict[str, dict]:
    """Quantize a copy of ``model`` with every variant (``{label: quantize_weights options}``,
    default :data:`VARIANTS`) at every width in ``bits`` and score it on ``windows``.

    Returns ``{"fp32": {"nll"}, "<label> <b>-bit": {"nll", "seconds", "layer_error_vs_rtn"}}``:
    per-window NLL (:func:`llmlab.compress.evaluate.window_nll`), the seconds quantization took,
    and the median over layers of the output error relative to RTN's on the same grid.
    ``model`` itself is left as it was."""
    import copy
    import statistics
    import time

    from llmlab.compress.evaluate import window_nll

    variants = VARIANTS if variants is None else variants
    rows: dict[str, dict] = {"fp32": {"nll": window_nll(model, windows)}}
    for b in bits:
        for label, options in variants.items():
            quantized = copy.deepcopy(model)
            t0 = time.perf_counter()
            ratios = quantize_weights(quantized, inputs, bits=b, group_size=group_size,
                                      awq_grid=awq_grid, **options)  # fmt: skip
            seconds = time.perf_counter() - t0
            rows[f"{label} {b}-bit"] = {"nll": window_nll(quantized, windows), "seconds": seconds,
                                        "layer_error_vs_rtn": statistics.median(ratios.values())}  # fmt: skip
    return rows
