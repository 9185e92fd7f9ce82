"""LoRA, QLoRA and DoRA, written from their definitions and tested equal to ``peft``.

**LoRA** (Hu et al. 2021) freezes a pretrained linear layer ``W`` (out x in) and learns a
low-rank update beside it:

    y = W x + b + s * B A dropout(x),    A: (r, in),  B: (out, r),  s = alpha / r

``A`` starts random (kaiming-uniform, so ``|A| <= 1 / sqrt(in)``) and ``B`` at zero, so the
model is unchanged at step 0 and only ``r * (in + out)`` numbers per layer are trained.
rsLoRA (Kalajdzievski 2023) uses ``s = alpha / sqrt(r)`` so that larger ranks still learn.
After training the update folds into the weight, ``W' = W + s B A`` (:meth:`LoRALinear.merge`),
and the model runs as fast as before: that is what "export merged weights" means.

**QLoRA** (Dettmers et al. 2023) stores the frozen ``W`` in 4-bit NormalFloat (NF4, one 4-bit
code per weight plus one float32 scale per block of 64) through ``bitsandbytes``, dequantises
it block by block inside each matmul, and trains the same float32 ``A`` and ``B`` on top
(:func:`quantize_base_nf4`, then :func:`inject_lora`).

**DoRA** (Liu et al. 2024) splits the adapted weight into a magnitude and a direction: a
trainable vector ``m`` (out,) times the row-normalised ``W + s B A``:

    W' = m * (W + s B A) / ||W + s B A||_row,    ||.||_row detached from the graph (§4.3)

``m`` starts at ``||W||_row``, so a DoRA layer also starts equal to the base layer.

Module and state-dict names follow ``peft``: the wrapped layer is ``.base_layer``, the adapter
``.lora_A.weight`` / ``.lora_B.weight`` (and DoRA's ``lora_magnitude_vector``), and
:func:`lora_state_dict` uses the key names of peft's saved adapters, so a peft model loads ours.

    >>> names = inject_lora(model, target_modules=("q_proj", "v_proj"), r=8, alpha=16)
    >>> trainable_share(model)          # ... train ...
    >>> results.save_tensors("04_post_training/lora_adapter", lora_state_dict(model))
    >>> remove_lora(model, merge=True)  # plain nn.Linear layers with W + s B A
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LoRALinear",
    "DoRALinear",
    "inject_lora",
    "lora_layers",
    "merge_lora",
    "unmerge_lora",
    "remove_lora",
    "lora_state_dict",
    "load_lora_state_dict",
    "cached_lora",
    "trainable_parameters",
    "trainable_share",
    "quantize_base_nf4",
    "is_nf4_linear",
    "dequantized_weight",
    "parameter_bytes",
]

#: Prefix of the keys in a peft adapter file (``adapter_model.safetensors``).
PEFT_PREFIX = "base_model.model."

INITS = ("kaiming", "gaussian")


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return value


def _positive_number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name}: expected a positive number, got {value!r}")
    return float(value)


def is_nf4_linear(module: nn.Module) -> bool:
    """Whether ``module`` is a bitsandbytes 4-bit linear layer (its weight a ``Params4bit``)."""
    return type(getattr(module, "weight", None)).__name__ == "Params4bit"


def dequantized_weight(layer: nn.Linear) -> torch.Tensor:
    """The weight (out, in) that ``layer`` multiplies by, as a float32 tensor.

    A plain ``nn.Linear`` gives its weight; a bitsandbytes ``Linear4bit`` its NF4 codes times
    their block scales. (A layer that bitsandbytes repacked for its CPU inference kernel, see
    :func:`quantize_base_nf4`, is refused: that layout has no public dequantisation.)
    """
    if not is_nf4_linear(layer):
        return layer.weight.float()
    state = layer.weight.quant_state
    if getattr(state, "packing_format_for_cpu", False):
        raise ValueError(
            "layer: its NF4 weight was repacked for bitsandbytes' CPU inference kernel; "
            "quantize with llmlab.posttrain.lora.quantize_base_nf4, which keeps the standard layout"
        )
    import bitsandbytes.functional as bnbf

    return bnbf.dequantize_4bit(layer.weight.data, state).float()


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update (Hu et al. 2021).

    ``y = base_layer(x) + scaling * B(A(dropout(x)))`` for ``x`` of shape (..., in_features),
    ``A`` (``lora_A.weight``) of shape (r, in_features), ``B`` (``lora_B.weight``) of shape
    (out_features, r) and ``scaling = alpha / r`` (``alpha / sqrt(r)`` with ``rslora``).

    base_layer: an ``nn.Linear`` (or bitsandbytes' NF4 ``Linear4bit``); frozen here.
    r, alpha: rank and scale of the update. dropout: probability of zeroing an input of the
    branch in training (the base path always sees the whole input).
    init: ``"kaiming"`` (peft's default: A ~ kaiming-uniform with a = sqrt(5), i.e.
    U(-1/sqrt(in), 1/sqrt(in))) or ``"gaussian"`` (A ~ N(0, 1/r^2)); B = 0 either way.
    generator: draws A (the global RNG when None).

    The adapter is kept in float32, as peft keeps it by default, so that small updates are not
    rounded away in a bf16 model; the branch casts it to the input's dtype and computes there.
    :meth:`merge` folds the update into the base weight; a merged layer is the base layer alone.
    """

    def __init__(
        self,
        base_layer: nn.Linear,
        r: int = 8,
        alpha: float = 16,
        dropout: float = 0.0,
        *,
        rslora: bool = False,
        init: str = "kaiming",
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"base_layer: expected an nn.Linear, got {type(base_layer).__name__}")
        _positive_int("r", r)
        _positive_number("alpha", alpha)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)):
            raise ValueError(f"dropout: expected a probability in [0, 1), got {dropout!r}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {dropout!r}")
        if init not in INITS:
            raise ValueError(f"init: expected one of {INITS}, got {init!r}")
        self.base_layer = base_layer.requires_grad_(False)
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        self.r, self.alpha, self.rslora = r, float(alpha), bool(rslora)
        self.scaling = alpha / math.sqrt(r) if rslora else alpha / r
        # Made on the meta device and then allocated: nn.Linear's own initialisation would
        # draw from the global RNG, which reset_lora_parameters redraws anyway.
        device = base_layer.weight.device
        self.lora_A = nn.Linear(self.in_features, r, bias=False, device="meta").to_empty(
            device=device
        )
        self.lora_B = nn.Linear(r, self.out_features, bias=False, device="meta").to_empty(
            device=device
        )
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.reset_lora_parameters(init, generator)

    def reset_lora_parameters(
        self, init: str = "kaiming", generator: torch.Generator | None = None
    ) -> None:
        """A drawn as ``init`` says, B = 0: the layer equals its base layer again."""
        with torch.no_grad():
            if init == "kaiming":
                nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5), generator=generator)
            else:
                nn.init.normal_(self.lora_A.weight, std=1 / self.r, generator=generator)
            nn.init.zeros_(self.lora_B.weight)

    def delta_weight(self) -> torch.Tensor:
        """``scaling * B @ A``, (out_features, in_features) float32: what training adds to W."""
        return self.scaling * (self.lora_B.weight.float() @ self.lora_A.weight.float())

    def lora_branch(self, x: torch.Tensor) -> torch.Tensor:
        """``scaling * B(A(dropout(x)))`` in ``x``'s dtype, shape (..., out_features)."""
        a = self.lora_A.weight.to(x.dtype)
        b = self.lora_B.weight.to(x.dtype)
        return self.scaling * F.linear(F.linear(self.lora_dropout(x), a), b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        if self.merged:  # the update is inside the base weight already
            return y
        return y + self.lora_branch(x)

    def merged_weight(self) -> torch.Tensor:
        """The weight (out, in) of the merged layer, float32: ``W + scaling * B @ A``."""
        return dequantized_weight(self.base_layer) + self.delta_weight()

    def _require_plain_base(self, action: str) -> None:
        if is_nf4_linear(self.base_layer):
            raise ValueError(
                f"{action}: the base layer is NF4; adding the update to it in place would "
                "re-quantise W + sBA to 4 bits and round most of the update away. Use "
                "remove_lora(model, merge=True), which writes a dequantised merged nn.Linear"
            )

    def _weight_after_merge(self) -> torch.Tensor:
        """The float32 weight that :meth:`merge` stores: ``W + scaling * B @ A``."""
        return self.merged_weight()

    def _weight_after_unmerge(self, merged: torch.Tensor) -> torch.Tensor:
        """The float32 base weight that :meth:`unmerge` recovers from the merged one."""
        return merged - self.delta_weight()

    def merge(self) -> None:
        """W <- W + scaling * B @ A (computed in float32, stored in W's dtype); sets ``merged``."""
        self._require_plain_base("merge")
        if self.merged:
            raise RuntimeError("merge: the adapter is already merged; call unmerge() first")
        with torch.no_grad():
            weight = self.base_layer.weight
            weight.copy_(self._weight_after_merge().to(weight.dtype))
            self.merged = True

    def unmerge(self) -> None:
        """W <- W - scaling * B @ A: back to the base weight (exact up to W's rounding)."""
        self._require_plain_base("unmerge")
        if not self.merged:
            raise RuntimeError("unmerge: the adapter is not merged")
        with torch.no_grad():
            weight = self.base_layer.weight
            weight.copy_(self._weight_after_unmerge(weight.float()).to(weight.dtype))
            self.merged = False

    def to_linear(self, merge: bool = True) -> nn.Linear:
        """The layer as a plain module: ``nn.Linear`` with the merged weight (``merge``), or
        the base layer as it is (the adapter dropped). An NF4 base merges into a float32
        ``nn.Linear`` of its dequantised weight plus the update."""
        if not merge:
            if self.merged:
                self.unmerge()
            return self.base_layer
        base = self.base_layer
        if self.merged:
            return base
        is_nf4 = is_nf4_linear(base)
        dtype = torch.float32 if is_nf4 else base.weight.dtype
        layer = nn.Linear(
            self.in_features,
            self.out_features,
            bias=base.bias is not None,
            device=base.weight.device,
            dtype=dtype,
        )
        with torch.no_grad():
            layer.weight.copy_(self.merged_weight().to(dtype))
            if base.bias is not None:
                layer.bias.copy_(base.bias.to(dtype))
        return layer.requires_grad_(False)

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        """``{"lora_A.weight": A, "lora_B.weight": B}``: the trained tensors, peft's names."""
        return {"lora_A.weight": self.lora_A.weight, "lora_B.weight": self.lora_B.weight}

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
            f"alpha={self.alpha:g}, scaling={self.scaling:g}, merged={self.merged}"
        )


class DoRALinear(LoRALinear):
    """Weight-decomposed LoRA (Liu et al. 2024): a magnitude times a normalised direction.

    The adapted weight is ``W' = m * V / ||V||_row`` with ``V = W + scaling * B @ A`` (out, in)
    and ``m`` (``lora_magnitude_vector``, shape (out,)) trainable, initialised to ``||W||_row``
    (so the layer starts equal to its base). The norm is treated as a constant in backward
    (the paper's §4.3; it saves memory and changes little). With ``c = m / ||V||_row``:

        y = base(x) + (c - 1) * (W x_d) + c * scaling * B A x_d,   x_d = dropout(x)

    which, without dropout, is ``c * (W x + scaling * B A x) + b = W' x + b``. Arguments as
    :class:`LoRALinear`.
    """

    def __init__(
        self, base_layer: nn.Linear, r: int = 8, alpha: float = 16, dropout: float = 0.0, **kw
    ):
        super().__init__(base_layer, r, alpha, dropout, **kw)
        self.lora_magnitude_vector = nn.Parameter(self.weight_norm())
        self._merge_norm: torch.Tensor | None = None

    def weight_norm(self) -> torch.Tensor:
        """``||W + scaling * B @ A||`` of each output row, shape (out,), float32, detached."""
        with torch.no_grad():
            return torch.linalg.vector_norm(self.merged_weight(), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        if self.merged:
            return y
        c = (self.lora_magnitude_vector / self.weight_norm()).to(x.dtype)
        if isinstance(self.lora_dropout, nn.Identity) or not self.training:
            x_d = x  # no dropout: W x is the base output without its bias
            wx = y if self.base_layer.bias is None else y - self.base_layer.bias.to(y.dtype)
        else:
            x_d = self.lora_dropout(x)
            wx = F.linear(x_d, dequantized_weight(self.base_layer).to(x.dtype))
        a = self.lora_A.weight.to(x.dtype)
        b = self.lora_B.weight.to(x.dtype)
        return y + (c - 1) * wx + c * self.scaling * F.linear(F.linear(x_d, a), b)

    def merged_dora_weight(self) -> torch.Tensor:
        """``m * V / ||V||_row``, (out, in) float32: the weight of the merged layer."""
        norm = self.weight_norm()
        return (self.lora_magnitude_vector.detach() / norm)[:, None] * self.merged_weight()

    def _weight_after_merge(self) -> torch.Tensor:
        """W' = m * (W + sBA) / ||W + sBA||_row; the norm is kept for :meth:`unmerge`."""
        self._merge_norm = self.weight_norm()
        return self.merged_dora_weight()

    def _weight_after_unmerge(self, merged: torch.Tensor) -> torch.Tensor:
        """W = W' * ||V||_row / m - sBA, with the norm saved at merge time."""
        scale = (self._merge_norm / self.lora_magnitude_vector.float())[:, None]
        self._merge_norm = None
        return merged * scale - self.delta_weight()

    def to_linear(self, merge: bool = True) -> nn.Linear:
        layer = super().to_linear(merge)
        if merge and layer is not self.base_layer:
            with torch.no_grad():
                layer.weight.copy_(self.merged_dora_weight().to(layer.weight.dtype))
        return layer

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        return {**super().adapter_tensors(), "lora_magnitude_vector": self.lora_magnitude_vector}


# --------------------------------------------------------------------------------------------
# A whole model


def _targets(target_modules: str | Iterable[str]) -> tuple[str, ...]:
    targets = (target_modules,) if isinstance(target_modules, str) else tuple(target_modules)
    if not targets or not all(isinstance(t, str) and t for t in targets):
        raise ValueError(
            f"target_modules: expected a module name or a non-empty list of names, "
            f"got {target_modules!r}"
        )
    return targets


def _matches(name: str, targets: tuple[str, ...]) -> bool:
    """peft's list form: the full name, or its last components (``q_proj``, ``self_attn.q_proj``)."""
    return any(name == t or name.endswith("." + t) for t in targets)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """``{module name: layer}`` for every LoRA (and DoRA) layer of ``model``, in order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def inject_lora(
    model: nn.Module,
    target_modules: str | Iterable[str] = ("q_proj", "v_proj"),
    r: int = 8,
    alpha: float = 16,
    dropout: float = 0.0,
    *,
    rslora: bool = False,
    init: str = "kaiming",
    dora: bool = False,
    seed: int | None = None,
) -> list[str]:
    """Wrap every linear layer of ``model`` named in ``target_modules`` in a :class:`LoRALinear`
    (a :class:`DoRALinear` with ``dora``), in place, and freeze every other parameter.

    target_modules: names matched as peft matches a list: a module matches when its full name
    equals a target or ends with ``"." + target`` (``"q_proj"`` matches every layer's query).
    r, alpha, dropout, rslora, init: as :class:`LoRALinear`. seed: draws the A matrices from a
    private generator (the global RNG when None).
    Returns the names of the wrapped modules. Raises ValueError when nothing matches and
    TypeError when a matching module is not an ``nn.Linear`` (or already has LoRA).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    targets = _targets(target_modules)
    _positive_int("r", r)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"seed: expected an int or None, got {seed!r}")
    names = [name for name, _ in model.named_modules() if name and _matches(name, targets)]
    if not names:
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        sample = sorted({n.rsplit(".", 1)[-1] for n in linears})
        raise ValueError(
            f"target_modules: {list(targets)} matched no module of the model; its linear "
            f"layers are named {sample}"
        )
    for name in names:
        module = model.get_submodule(name)
        if isinstance(module, LoRALinear):
            raise TypeError(f"target_modules: {name!r} already has a LoRA adapter")
        if not isinstance(module, nn.Linear):
            raise TypeError(
                f"target_modules: {name!r} matched a {type(module).__name__}, expected nn.Linear"
            )
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    model.requires_grad_(False)
    layer_class = DoRALinear if dora else LoRALinear
    for name in names:
        base = model.get_submodule(name)
        layer = layer_class(base, r, alpha, dropout, rslora=rslora, init=init, generator=generator)
        _set_module(model, name, layer.train(base.training))
    return names


def _layers_or_error(model: nn.Module, action: str) -> dict[str, LoRALinear]:
    layers = lora_layers(model)
    if not layers:
        raise ValueError(f"model: has no LoRA layers to {action} (call inject_lora first)")
    return layers


def merge_lora(model: nn.Module) -> list[str]:
    """Merge every LoRA layer's update into its base weight (:meth:`LoRALinear.merge`)."""
    layers = _layers_or_error(model, "merge")
    for layer in layers.values():
        layer.merge()
    return list(layers)


def unmerge_lora(model: nn.Module) -> list[str]:
    """Undo :func:`merge_lora` (:meth:`LoRALinear.unmerge`)."""
    layers = _layers_or_error(model, "unmerge")
    for layer in layers.values():
        layer.unmerge()
    return list(layers)


def remove_lora(model: nn.Module, merge: bool = True) -> nn.Module:
    """Replace every LoRA layer by a plain layer, in place, and return ``model``.

    merge=True: an ``nn.Linear`` whose weight is the merged one (the model to export: same
    architecture and speed as the base model, the update inside). merge=False: the base layer
    as it was before :func:`inject_lora` (the adapter dropped). Parameters stay frozen.
    """
    for name, layer in _layers_or_error(model, "remove").items():
        _set_module(model, name, layer.to_linear(merge))
    return model


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors only (detached copies), under peft's key names:
    ``base_model.model.<module>.lora_A.weight`` (r, in), ``.lora_B.weight`` (out, r) and, for
    DoRA, ``.lora_magnitude_vector`` (out,). Save it with :func:`llmlab.results.save_tensors`."""
    return {
        f"{PEFT_PREFIX}{name}.{key}": tensor.detach().clone()
        for name, layer in _layers_or_error(model, "save").items()
        for key, tensor in layer.adapter_tensors().items()
    }


def load_lora_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` (from :func:`lora_state_dict`, or a peft adapter file) into the LoRA
    layers of ``model``, which must have the same adapters (:func:`inject_lora` with the same
    targets and rank). Every key must be used and every adapter tensor given; shapes must agree.
    """
    if not isinstance(state, dict):
        raise TypeError(f"state: expected a dict of name -> tensor, got {type(state).__name__}")
    wanted = {}
    for name, layer in _layers_or_error(model, "load into").items():
        if layer.merged:
            raise ValueError(f"model: {name!r} is merged; unmerge it before loading an adapter")
        for key, tensor in layer.adapter_tensors().items():
            wanted[f"{PEFT_PREFIX}{name}.{key}"] = tensor
    missing, unexpected = sorted(set(wanted) - set(state)), sorted(set(state) - set(wanted))
    if missing or unexpected:
        raise ValueError(
            f"state: keys do not match the model's adapters: missing {missing[:3]}"
            f"{' ...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}"
            f"{' ...' if len(unexpected) > 3 else ''}"
        )
    for key, target in wanted.items():
        if tuple(state[key].shape) != tuple(target.shape):
            raise ValueError(
                f"state: {key!r} has shape {tuple(state[key].shape)}, the model's adapter "
                f"{tuple(target.shape)} (a different rank?)"
            )
    with torch.no_grad():
        for key, target in wanted.items():
            target.copy_(state[key])


def cached_lora(
    base: nn.Module,
    name: str,
    fit: Callable[[nn.Module], object],
    *,
    target_modules: str | Iterable[str],
    rank: int,
    seed: int = 0,
    merge: bool = True,
) -> tuple[nn.Module, bool]:
    """A LoRA-adapted copy of ``base``, its adapter from the course cache or trained by ``fit``:
    ``(model, trained)``.

    A deep copy of ``base`` (a transformers causal LM: the adapters go into ``.model``) gets
    adapters of rank ``rank`` (alpha ``2 * rank``) on ``target_modules``, drawn with ``seed``.
    Their weights are the course-cache result ``name`` when it exists (``trained`` is False);
    otherwise ``fit(model)`` trains them and they are saved under ``name`` (atomically, so an
    interrupted run leaves no half-written adapter). With ``merge`` the adapters are folded into
    the weights and removed: a plain model, as fast as the base. The model is in eval mode.
    """
    import copy

    from llmlab import results

    if not isinstance(base, nn.Module):
        raise TypeError(f"base: expected a torch nn.Module, got {type(base).__name__}")
    if not isinstance(name, str) or not name:
        raise ValueError(f"name: expected the adapter's course-cache name, got {name!r}")
    if not callable(fit):
        raise TypeError(f"fit: expected a function that trains the adapters, got {fit!r}")
    rank = _positive_int("rank", rank)
    model = copy.deepcopy(base)
    inject_lora(model.model, target_modules, r=rank, alpha=2 * rank, seed=seed)
    try:
        load_lora_state_dict(model, results.load_tensors(name))
        trained = False
    except results.ResultMissingError:
        fit(model)
        results.save_tensors(name, lora_state_dict(model))
        trained = True
    if merge:
        remove_lora(model.model, merge=True)
    model.eval()
    return model, trained


def _numel(parameter: torch.Tensor) -> int:
    """Weights a parameter stands for: a packed 4-bit weight holds two per byte."""
    state = getattr(parameter, "quant_state", None)
    return math.prod(state.shape) if state is not None else parameter.numel()


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts, shared (tied) tensors counted once and an NF4
    weight counted as the weights it encodes (the same numbers as peft's
    ``get_nb_trainable_parameters``)."""
    trainable = total = 0
    for parameter in model.parameters():
        n = _numel(parameter)
        total += n
        trainable += n if parameter.requires_grad else 0
    return trainable, total


def trainable_share(model: nn.Module) -> float:
    """The fraction of ``model``'s parameters that train (0.0 .. 1.0)."""
    trainable, total = trainable_parameters(model)
    if total == 0:
        raise ValueError("model: has no parameters")
    return trainable / total


# --------------------------------------------------------------------------------------------
# QLoRA: an NF4 base


def quantize_base_nf4(
    model: nn.Module,
    target_modules: str | Iterable[str] | None = None,
    *,
    compute_dtype: torch.dtype = torch.float32,
    blocksize: int = 64,
    double_quant: bool = False,
    skip: Iterable[str] = ("lm_head",),
) -> list[str]:
    """Replace linear layers of ``model`` by bitsandbytes NF4 ``Linear4bit`` layers, in place,
    frozen; returns their names. Call it before :func:`inject_lora` (QLoRA's order).

    target_modules: as :func:`inject_lora`; None quantises every ``nn.Linear`` except those
    matching ``skip`` (the output head, tied to the embedding in SmolLM2, stays as it is).
    compute_dtype: the dtype the matmuls run in (float32, or bfloat16 where the CPU has bf16
    units). blocksize: weights per float32 scale (64, QLoRA's). double_quant: also quantise
    the scales to 8 bits (QLoRA's "double quantisation": 0.5 -> 0.127 bits per weight).

    On CPUs with AVX512-BF16, bitsandbytes 0.50 repacks a Linear4bit's weight in place for a
    fused inference kernel the first time the layer runs in eval mode without gradients; that
    kernel has no backward (inputs get no gradient afterwards, silently) and rounds the block
    scales to bf16. The layers made here switch that repacking off, so evaluating between
    training steps is safe and the weights keep one layout.
    """
    import bitsandbytes as bnb

    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if lora_layers(model):
        raise ValueError("model: already has LoRA layers; quantize the base before inject_lora")
    if compute_dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(
            f"compute_dtype: expected torch.float32, torch.bfloat16 or torch.float16, "
            f"got {compute_dtype!r}"
        )
    _positive_int("blocksize", blocksize)
    skip = _targets(skip) if skip else ()
    targets = None if target_modules is None else _targets(target_modules)
    names = [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear)
        and not is_nf4_linear(m)
        and (targets is None or _matches(name, targets))
        and not (skip and _matches(name, skip))
    ]
    if not names:
        raise ValueError(f"target_modules: {target_modules!r} matched no nn.Linear of the model")
    for name in names:
        linear = model.get_submodule(name)
        layer = bnb.nn.Linear4bit(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            compute_dtype=compute_dtype,
            compress_statistics=double_quant,
            quant_type="nf4",
            device="meta",
        )
        layer.weight = bnb.nn.Params4bit(
            linear.weight.detach().float().cpu(),
            requires_grad=False,
            blocksize=blocksize,
            compress_statistics=double_quant,
            quant_type="nf4",
            module=layer,
        )
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.detach().float().cpu(), requires_grad=False)
        layer.support_avx512bf16_for_cpu = False  # see the docstring
        layer = layer.to(linear.weight.device)  # bitsandbytes quantises on this move
        _set_module(model, name, layer.train(linear.training))
    return names


def _quant_state_tensors(state) -> list[torch.Tensor]:
    found = [v for v in vars(state).values() if isinstance(v, torch.Tensor)]
    nested = getattr(state, "state2", None)
    return found + (_quant_state_tensors(nested) if nested is not None else [])


def parameter_bytes(model: nn.Module) -> int:
    """Bytes that ``model``'s parameters and buffers occupy (tied tensors once), an NF4
    weight's block scales and code book included: what a checkpoint of it holds."""
    seen: set[int] = set()
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        extra = []
        state = getattr(tensor, "quant_state", None)
        if state is not None:
            extra = _quant_state_tensors(state)
        for t in [tensor, *extra]:
            if id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
    return total
