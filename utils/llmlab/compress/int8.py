"""INT8 inference: integer matmuls, LLM.int8's outlier decomposition, W8A8 and SmoothQuant.

A linear layer ``y = x W^T`` runs in 8-bit integers when both operands are int8 codes with a
float scale each: ``y ~ (X_q W_q^T) * s_x * s_w``, where the product of codes is summed exactly
in int32 (``torch._int_mm``, which runs real int8 kernels on a CPU too). The choices:

- **weights**: per output channel, absmax, 127 levels each side (``quantize_rowwise``).
- **activations**: per token (a scale per row of ``x``, computed at run time: *dynamic*), or one
  scale per tensor fixed beforehand from calibration data (*static*), or not at all
  (*weight-only*: the int8 weights are de-quantized and the matmul runs in float).
- **LLM.int8** (Dettmers et al. 2022): the few input features (columns of ``x``) where any
  value reaches ``threshold`` (6.0) go through a float matmul; the rest through int8. Large
  models have a handful of such outlier features in every layer, and one outlier in a row would
  coarsen that row's whole int8 grid. bitsandbytes' ``Linear8bitLt`` keeps only int8 weights,
  so its outlier columns multiply de-quantized int8 weights; :class:`QuantLinear` does the same,
  so the two agree to rounding (the paper keeps those weight columns in fp16).
- **SmoothQuant** (Xiao et al. 2022): divide each input channel j of the activations by
  ``s_j = max|X_j|^alpha / max|W_:,j|^(1 - alpha)`` and multiply the weights' column j by it.
  The product is unchanged, the activations' outliers shrink, the weights grow a little.
  The division is folded into the layer before (an RMSNorm's weight, or the rows of
  ``up_proj`` for ``down_proj``), so it costs nothing at run time.
- **calibration** of static scales from a histogram of ``|x|`` on calibration text: min-max
  (the largest value), a percentile, or the clipping threshold whose 128-level histogram is
  closest to the original in KL divergence (TensorRT's entropy calibration, Migacz 2017).

:func:`quantize_linears` swaps a model's ``nn.Linear`` layers for :class:`QuantLinear`;
:func:`collect_activation_stats`, :func:`calibrate` and :func:`smooth_llama` prepare it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from llmlab.validate import require_positive_int, require_real

__all__ = [
    "quantize_rowwise",
    "int8_matmul",
    "ACTIVATION_MODES",
    "QuantLinear",
    "quantize_linears",
    "ActivationStats",
    "collect_activation_stats",
    "CALIBRATIONS",
    "calibrate",
    "kl_threshold",
    "smoothing_scales",
    "smooth_llama",
    "model_bytes",
]

ACTIVATION_MODES = ("none", "dynamic", "static")
CALIBRATIONS = ("minmax", "percentile", "kl")


def quantize_rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Vector-wise absmax int8: ``(codes int8 of x's shape, scale float32 (rows,))``.

    ``codes = round(row * 127 / max|row|)`` in [-127, 127] and ``scale = max|row| / 127``, so
    ``row ~ codes * scale``: each row of a 2-d ``x`` (a token's activations, or an output
    channel's weights) gets its own grid. The codes are computed as bitsandbytes'
    ``int8_vectorwise_quant`` computes them (a multiplication by 127 / absmax in float32).
    """
    if x.dim() != 2:
        raise ValueError(f"x: expected a 2-d tensor (rows, features), got shape {tuple(x.shape)}")
    absmax = x.abs().amax(dim=1).float()
    absmax = torch.where(absmax > 0, absmax, torch.ones_like(absmax))  # all-zero rows: codes 0
    codes = torch.round(x * (127.0 / absmax[:, None])).to(torch.int8)
    return codes, absmax / 127.0


def int8_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b.T`` of int8 codes, summed exactly in int32: a (M, K), b (N, K) -> (M, N).

    ``torch._int_mm`` runs the integer kernels of the CPU (oneDNN) or of the GPU; it wants its
    second operand as (K, N), and ``b.t()`` is that view of an ``nn.Linear``-shaped matrix,
    with no copy. :func:`llmlab.kernels.int8_matmul.int32_matmul` calls it, and takes an exact
    float64 path where it is wrong (K = 1 on the CPU) or refuses the shape.
    """
    if a.dtype != torch.int8 or b.dtype != torch.int8:
        raise TypeError(f"a, b: expected int8 codes, got {a.dtype} and {b.dtype}")
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"a, b: expected (M, K) and (N, K) with the same K, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    from llmlab.kernels.int8_matmul import int32_matmul

    return int32_matmul(a.contiguous(), b)


class QuantLinear(nn.Module):
    """An ``nn.Linear`` with int8 weights (per output channel) and int8 or float activations.

    ``activations``: ``"none"`` (weight-only int8: the matmul runs in float on de-quantized
    weights), ``"dynamic"`` (a scale per token, at run time), ``"static"`` (one scale per
    tensor, ``input_absmax / 127``, fixed by calibration; larger values are clipped).
    ``threshold`` (with dynamic or static activations): LLM.int8's decomposition, the input
    features where some value reaches it run in float against the de-quantized weights.
    ``outlier_features`` counts how many features took that path at the last call.
    ``quant_dtype``: the weights and activations are rounded to this dtype before they are
    quantized (bitsandbytes' ``Linear8bitLt`` uses float16; the default keeps float32).
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        activations: str = "dynamic",
        threshold: float | None = None,
        input_absmax: float | None = None,
        quant_dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        if quant_dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(
                f"quant_dtype: expected float32, float16 or bfloat16, got {quant_dtype}"
            )
        if activations not in ACTIVATION_MODES:
            raise ValueError(
                f"activations: expected one of {ACTIVATION_MODES}, got {activations!r}"
            )
        if activations == "static" and input_absmax is None:
            raise ValueError("input_absmax: static activations need a calibrated absmax, got None")
        if input_absmax is not None and not float(input_absmax) > 0:
            raise ValueError(f"input_absmax: expected a positive number, got {input_absmax!r}")
        if threshold is not None:
            if activations == "none":
                raise ValueError("threshold: the outlier decomposition needs int8 activations")
            if not require_real(threshold, "threshold") > 0:
                raise ValueError(f"threshold: expected a positive number, got {threshold!r}")
        codes, scale = quantize_rowwise(weight.detach().to(quant_dtype))
        self.register_buffer("weight_codes", codes)
        self.register_buffer("weight_scale", scale)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.activations = activations
        self.threshold = None if threshold is None else float(threshold)
        self.input_absmax = None if input_absmax is None else float(input_absmax)
        self.quant_dtype = quant_dtype
        self.outlier_features = 0

    @classmethod
    def from_linear(cls, linear: nn.Linear, **kwargs) -> QuantLinear:
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear: expected an nn.Linear, got {type(linear).__name__}")
        return cls(linear.weight, linear.bias, **kwargs)

    def dequantized_weight(self) -> torch.Tensor:
        return self.weight_codes.float() * self.weight_scale[:, None]

    def _activation_codes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.activations == "dynamic":
            codes, scale = quantize_rowwise(x)
            return codes, scale[:, None]
        codes = torch.round(x * (127.0 / self.input_absmax)).clamp_(-127, 127).to(torch.int8)
        return codes, torch.tensor(self.input_absmax / 127.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"x: expected last dim {self.in_features}, got shape {tuple(x.shape)}")
        shape, dtype = x.shape, x.dtype
        x_float = x.reshape(-1, self.in_features).float()
        x2 = x_float.to(self.quant_dtype).float()  # what is quantized
        if self.activations == "none":
            out = x_float @ self.dequantized_weight().t()
        else:
            outliers = None
            if self.threshold is not None:
                outliers = (x2.abs() >= self.threshold).any(dim=0)
                self.outlier_features = int(outliers.sum())
                if self.outlier_features:
                    x_int8_part = x2.masked_fill(outliers, 0.0)
                else:
                    outliers = None
            codes, x_scale = self._activation_codes(x2 if outliers is None else x_int8_part)
            out = int8_matmul(codes, self.weight_codes).float() * (x_scale * self.weight_scale)
            if outliers is not None:
                w_cols = self.weight_codes[:, outliers].float() * self.weight_scale[:, None]
                out = out + x_float[:, outliers] @ w_cols.t()
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*shape[:-1], self.out_features).to(dtype)

    def extra_repr(self) -> str:
        extra = f", threshold={self.threshold}" if self.threshold is not None else ""
        if self.input_absmax is not None:
            extra += f", input_absmax={self.input_absmax:.4g}"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"activations={self.activations!r}{extra}"
        )


def _linears(model: nn.Module, skip: Iterable[str]) -> list[tuple[str, nn.Linear]]:
    skip = tuple(skip)
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and not any(s in name for s in skip)
    ]


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def quantize_linears(
    model: nn.Module,
    activations: str = "dynamic",
    threshold: float | None = None,
    input_absmax: dict[str, float] | None = None,
    skip: Iterable[str] = ("lm_head",),
) -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` (in place) by a :class:`QuantLinear`; return it.

    Names containing any string of ``skip`` stay float: by default the output head, which a
    tied model shares with the embedding (a lookup table, which int8 matmuls do not touch).
    ``input_absmax`` maps each layer's name to its calibrated absmax (static activations).
    """
    if activations == "static":
        if input_absmax is None:
            raise ValueError("input_absmax: static activations need {layer name: absmax}")
    linears = _linears(model, skip)
    if not linears:
        raise ValueError("model: found no nn.Linear to quantize")
    for name, linear in linears:
        absmax = None
        if activations == "static":
            if name not in input_absmax:
                raise KeyError(f"input_absmax: no calibrated absmax for layer {name!r}")
            absmax = input_absmax[name]
        q = QuantLinear.from_linear(
            linear, activations=activations, threshold=threshold, input_absmax=absmax
        )
        _set_module(model, name, q.to(linear.weight.device))
    return model


# --------------------------------------------------------------------------------------------
# What the activations look like: per-channel absmax and a histogram of |x| per layer
# --------------------------------------------------------------------------------------------


@dataclass
class ActivationStats:
    """What one layer's inputs looked like on the calibration data.

    ``channel_absmax`` (in_features,): max |x| of each input feature (SmoothQuant's statistic);
    ``hist`` (bins,): counts of |x| in equal bins over [0, ``hist_max``].
    """

    channel_absmax: torch.Tensor
    hist: torch.Tensor
    hist_max: float

    @property
    def absmax(self) -> float:
        return float(self.channel_absmax.max())


@contextlib.contextmanager
def _input_hooks(modules: dict[str, nn.Module], fn):
    handles = [
        m.register_forward_pre_hook(lambda mod, args, name=name: fn(name, args[0]))
        for name, m in modules.items()
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _run(model: nn.Module, batches: Iterable[torch.Tensor]) -> None:
    with torch.no_grad():
        for ids in batches:
            model(ids)


def collect_activation_stats(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    bins: int = 2048,
    skip: Iterable[str] = ("lm_head",),
) -> dict[str, ActivationStats]:
    """Run ``model`` on ``batches`` (token ids) twice and record each linear layer's inputs.

    The first pass finds each feature's absmax; the second fills a ``bins``-bin histogram of
    |x| up to that layer's absmax. Layers that read the same tensor (q, k and v) get the same
    statistics. ``batches`` must be re-iterable (a list or a tensor of windows).
    """
    bins = require_positive_int(bins, "bins")
    layers = dict(_linears(model, skip))
    absmax: dict[str, torch.Tensor] = {}

    def record_max(name, x):
        m = x.detach().reshape(-1, x.shape[-1]).abs().amax(dim=0).float()
        absmax[name] = m if name not in absmax else torch.maximum(absmax[name], m)

    with _input_hooks(layers, record_max):
        _run(model, batches)
    if not absmax:
        raise ValueError("batches: expected at least one batch, got none")
    hists = {name: torch.zeros(bins, dtype=torch.float64) for name in layers}

    def record_hist(name, x):
        top = float(absmax[name].max())
        values = x.detach().abs().float().flatten()
        hists[name] += torch.histc(values, bins=bins, min=0.0, max=top if top > 0 else 1.0).double()

    with _input_hooks(layers, record_hist):
        _run(model, batches)
    return {
        name: ActivationStats(absmax[name], hists[name], float(absmax[name].max()) or 1.0)
        for name in layers
    }


def kl_threshold(hist: torch.Tensor, hist_max: float, levels: int = 128) -> float:
    """TensorRT's entropy calibration: the clipping threshold whose ``levels``-level version of
    the histogram is closest to the clipped original in KL divergence.

    For each candidate end bin i (from ``levels`` to all bins): P is the histogram cut at i
    with everything beyond added to its last bin (clipping); Q spreads P's first i bins over
    ``levels`` equal merged bins, each merged count shared evenly among its non-empty bins
    (what quantizing to ``levels`` levels keeps). The threshold is the i with the least
    KL(P || Q), at the bin's upper edge.
    """
    hist = np.asarray(torch.as_tensor(hist, dtype=torch.float64))
    levels = require_positive_int(levels, "levels")
    n = hist.size
    if n < levels:
        raise ValueError(f"hist: expected at least levels={levels} bins, got {n}")
    tail = np.cumsum(hist[::-1])[::-1]  # tail[i] = sum(hist[i:])
    best, best_i = math.inf, n
    for i in range(levels, n + 1):
        p = hist[:i].copy()
        if i < n:
            p[-1] += tail[i]
        if p.sum() == 0:
            continue
        # merge the first i bins into `levels` chunks (the last chunk takes the remainder)
        chunk = np.minimum(np.arange(i) // (i // levels), levels - 1)
        nonzero = hist[:i] > 0
        total = np.bincount(chunk, weights=hist[:i], minlength=levels)
        count = np.bincount(chunk, weights=nonzero, minlength=levels)
        q = np.where(nonzero, total[chunk] / np.maximum(count[chunk], 1), 0.0)
        p, q = p / p.sum(), q / q.sum()
        keep = p > 0
        # a bin that P has and Q lost counts as a tiny Q (TensorRT smooths the same way)
        kl = float(np.sum(p[keep] * np.log(p[keep] / np.maximum(q[keep], 1e-12))))
        if kl < best:
            best, best_i = kl, i
    return best_i * hist_max / n


def calibrate(
    stats: dict[str, ActivationStats], method: str = "minmax", percentile: float = 99.99
) -> dict[str, float]:
    """Each layer's static activation absmax: ``{name: clipping threshold}``.

    ``"minmax"``: the largest |x| seen; ``"percentile"``: the value below which ``percentile``
    percent of |x| fell (read off the histogram, at a bin's upper edge); ``"kl"``:
    :func:`kl_threshold`.
    """
    if method not in CALIBRATIONS:
        raise ValueError(f"method: expected one of {CALIBRATIONS}, got {method!r}")
    if not 0 < require_real(percentile, "percentile") <= 100:
        raise ValueError(f"percentile: expected a number in (0, 100], got {percentile!r}")
    out: dict[str, float] = {}
    done: dict[tuple, float] = {}  # layers that read the same input (q, k, v) share statistics
    for name, s in stats.items():
        key = (s.hist_max, tuple(s.hist.tolist()))
        if key in done:
            out[name] = done[key]
            continue
        if method == "minmax":
            out[name] = s.hist_max
        elif method == "percentile":
            cdf = torch.cumsum(s.hist, 0) / s.hist.sum()
            i = int(torch.searchsorted(cdf, torch.tensor(percentile / 100, dtype=cdf.dtype)))
            out[name] = min(i + 1, s.hist.numel()) * s.hist_max / s.hist.numel()
        else:
            out[name] = kl_threshold(s.hist, s.hist_max)
        done[key] = out[name]
    return out


# --------------------------------------------------------------------------------------------
# SmoothQuant
# --------------------------------------------------------------------------------------------


def smoothing_scales(
    act_absmax: torch.Tensor, weights: Iterable[torch.Tensor], alpha: float = 0.5
) -> torch.Tensor:
    """SmoothQuant's per-input-channel factors ``s_j = max|X_j|^alpha / max|W_:,j|^(1-alpha)``.

    ``weights``: the matrices that read these activations (q, k and v read the same input),
    their column maxima taken together. alpha = 0 leaves activations alone and scales only by
    the weights; alpha = 1 moves the whole activation range onto the weights.
    """
    if not 0.0 <= require_real(alpha, "alpha") <= 1.0:
        raise ValueError(f"alpha: expected a number in [0, 1], got {alpha!r}")
    w_absmax = torch.stack([w.detach().abs().amax(dim=0).float() for w in weights]).amax(dim=0)
    if w_absmax.shape != act_absmax.shape:
        raise ValueError(
            f"act_absmax: expected shape {tuple(w_absmax.shape)} (the weights' inputs), "
            f"got {tuple(act_absmax.shape)}"
        )
    a = act_absmax.float().clamp(min=1e-5)
    s = a.pow(alpha) / w_absmax.clamp(min=1e-5).pow(1 - alpha)
    return s.clamp(min=1e-5)


def _llama_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    parts = ("self_attn", "mlp", "input_layernorm", "post_attention_layernorm")
    layers = [(n, m) for n, m in model.named_modules() if all(hasattr(m, p) for p in parts)]
    if not layers:
        raise ValueError(
            "model: expected a transformers Llama (decoder layers with self_attn, mlp, "
            "input_layernorm and post_attention_layernorm)"
        )
    return layers


def smooth_llama(
    model: nn.Module, stats: dict[str, ActivationStats], alpha: float = 0.5, down_proj: bool = True
) -> nn.Module:
    """Apply SmoothQuant in place to a transformers Llama (SmolLM2); return it.

    q/k/v's input: the factors divide ``input_layernorm``'s weight and multiply q/k/v's
    columns; gate/up's input: ``post_attention_layernorm`` and gate/up; with ``down_proj``,
    down_proj's input (``act(gate) * up``) through the rows of ``up_proj``. ``o_proj`` is left
    alone: its input comes out of attention, where grouped-query heads share the values.
    ``stats`` are the un-smoothed model's (:func:`collect_activation_stats`).
    """
    with torch.no_grad():
        for prefix, layer in _llama_layers(model):
            attn, mlp = layer.self_attn, layer.mlp
            groups = [
                (
                    layer.input_layernorm.weight,
                    [attn.q_proj, attn.k_proj, attn.v_proj],
                    "self_attn.q_proj",
                ),
                (
                    layer.post_attention_layernorm.weight,
                    [mlp.gate_proj, mlp.up_proj],
                    "mlp.gate_proj",
                ),
            ]
            if down_proj:
                groups.append((None, [mlp.down_proj], "mlp.down_proj"))
            for norm_weight, linears, reader in groups:
                name = f"{prefix}.{reader}"
                if name not in stats:
                    raise KeyError(f"stats: no activation statistics for {name!r}")
                s = smoothing_scales(stats[name].channel_absmax, [m.weight for m in linears], alpha)
                if norm_weight is not None:
                    norm_weight.div_(s.to(norm_weight.dtype))
                else:  # down_proj reads act(gate) * up: divide up's output rows
                    mlp.up_proj.weight.div_(s[:, None].to(mlp.up_proj.weight.dtype))
                    if mlp.up_proj.bias is not None:
                        mlp.up_proj.bias.div_(s.to(mlp.up_proj.bias.dtype))
                for m in linears:
                    m.weight.mul_(s[None, :].to(m.weight.dtype))
    return model


def model_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes of a model's parameters and buffers by dtype, shared tensors (a tied head) once,
    and the int8 weights that ``torch.ao.quantization.quantize_dynamic`` packs outside them."""
    seen: set[int] = set()
    out: dict[str, int] = {}
    for t in [*model.parameters(), *model.buffers()]:
        key = t.untyped_storage().data_ptr()
        if key in seen:
            continue
        seen.add(key)
        name = str(t.dtype).removeprefix("torch.")
        out[name] = out.get(name, 0) + t.numel() * t.element_size()
    for m in model.modules():  # torch.ao's dynamic int8 Linear keeps its weight in packed params
        if getattr(m, "_packed_params", None) is not None and callable(getattr(m, "weight", None)):
            w, b = m.weight(), m.bias()
            out["qint8"] = out.get("qint8", 0) + w.numel() * w.element_size()
            if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
                out["float64"] = out.get("float64", 0) + 8 * w.q_per_channel_scales().numel()
            if b is not None:
                out["float32"] = out.get("float32", 0) + b.numel() * b.element_size()
    return out
