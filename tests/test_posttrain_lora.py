"""llmlab.posttrain.lora: LoRA, rsLoRA, DoRA and QLoRA, equal to peft with the same weights.

peft's default initialisation sets B = 0, which makes the LoRA branch zero and any forward
comparison trivial; every parity test here gives A and B random non-zero values first, copies
them into peft through peft's own adapter loader (which also proves our key names are peft's),
and compares outputs, the gradients of A, B (and DoRA's magnitude), and merged weights.
"""

from __future__ import annotations

import copy
import importlib.util
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llmlab import results
from llmlab.posttrain.lora import (
    DoRALinear,
    LoRALinear,
    dequantized_weight,
    inject_lora,
    load_lora_state_dict,
    lora_layers,
    lora_state_dict,
    merge_lora,
    parameter_bytes,
    quantize_base_nf4,
    remove_lora,
    trainable_parameters,
    trainable_share,
    unmerge_lora,
)

peft = pytest.importorskip("peft")

TARGETS = ("q_proj", "v_proj")


@pytest.fixture(scope="module")
def tiny_model():
    from llmlab.assets import tiny_smollm2

    model, _ = tiny_smollm2(seed=0)
    return model


@pytest.fixture
def model(tiny_model):
    return copy.deepcopy(tiny_model)


def _ids(seed: int = 0, shape=(2, 11)) -> torch.Tensor:
    return torch.randint(0, 2000, shape, generator=torch.Generator().manual_seed(seed))


def _loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())


@torch.no_grad()
def _randomize(model: nn.Module, seed: int = 1) -> None:
    """Give every adapter non-zero A, B (and a magnitude away from ||W||): a real test."""
    g = torch.Generator().manual_seed(seed)
    for layer in lora_layers(model).values():
        layer.lora_A.weight.normal_(0, 0.2, generator=g)
        layer.lora_B.weight.normal_(0, 0.2, generator=g)
        if isinstance(layer, DoRALinear):
            layer.lora_magnitude_vector.mul_(1 + 0.3 * torch.rand(layer.out_features, generator=g))


def _peft_twin(base: nn.Module, ours: nn.Module, **config) -> nn.Module:
    """peft's model on a copy of ``base``, holding our adapter (loaded by peft's own loader)."""
    twin = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(**config))
    loaded = peft.set_peft_model_state_dict(twin, lora_state_dict(ours))
    assert not loaded.unexpected_keys
    return twin


def _peft_name(name: str) -> str:
    """Our parameter name -> peft's (``...q_proj.lora_A.weight`` -> ``...lora_A.default.weight``)."""
    for key in ("lora_A", "lora_B", "lora_magnitude_vector"):
        name = name.replace(f".{key}.weight", f".{key}.default.weight")
        if name.endswith(".lora_magnitude_vector"):
            name = name + ".default.weight"
    return "base_model.model." + name


ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

#: variant: (our inject_lora keywords, peft's LoraConfig keywords), targets included.
CONFIGS = {
    "lora": ({}, {}),
    "rslora": ({"rslora": True}, {"use_rslora": True}),
    "dora": ({"dora": True}, {"use_dora": True}),
    "all linear layers": ({"target_modules": ALL_LINEAR}, {"target_modules": list(ALL_LINEAR)}),
}


def _both(model: nn.Module, variant: str, r: int = 4, alpha: float = 12):
    """(ours, peft's, the base model): the same random non-zero adapter in ours and peft's."""
    ours_kwargs, peft_kwargs = CONFIGS[variant]
    base = copy.deepcopy(model)
    inject_lora(model, **{"target_modules": TARGETS, **ours_kwargs}, r=r, alpha=alpha, seed=0)
    _randomize(model)
    config = {"target_modules": list(TARGETS), **peft_kwargs}
    theirs = _peft_twin(base, model, r=r, lora_alpha=alpha, lora_dropout=0.0, **config)
    return model, theirs, base


# --------------------------------------------------------------------------------------------
# Parity with peft


@pytest.mark.parametrize("variant", list(CONFIGS))
def test_outputs_and_gradients_equal_peft(model, variant):
    ours, theirs, base = _both(model, variant)
    ids = _ids()
    ours_logits, theirs_logits = ours(ids).logits, theirs(ids).logits
    torch.testing.assert_close(ours_logits, theirs_logits, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        assert (ours_logits - base(ids).logits).abs().max() > 1e-2  # the adapter matters

    _loss(ours_logits, ids).backward()
    _loss(theirs_logits, ids).backward()
    peft_params = dict(theirs.named_parameters())
    trained = [(n, p) for n, p in ours.named_parameters() if p.requires_grad]
    assert len(trained) == sum(p.requires_grad for p in peft_params.values())
    for name, param in trained:
        twin = peft_params[_peft_name(name)]
        assert param.grad is not None and param.grad.abs().max() > 0, name
        torch.testing.assert_close(param.grad, twin.grad, atol=1e-6, rtol=1e-4, msg=name)


@pytest.mark.parametrize("variant", ["lora", "rslora", "dora"])
def test_merged_weights_equal_peft_merge_and_unload(model, variant):
    ours, theirs, _ = _both(model, variant)
    ids = _ids(3)
    with torch.no_grad():
        before = ours(ids).logits
    merged_ours = remove_lora(ours, merge=True)
    merged_theirs = theirs.merge_and_unload()
    assert not lora_layers(merged_ours)
    ours_state, theirs_state = merged_ours.state_dict(), merged_theirs.state_dict()
    assert ours_state.keys() == theirs_state.keys()
    for key in ours_state:
        torch.testing.assert_close(ours_state[key], theirs_state[key], atol=1e-6, rtol=1e-5)
    assert all(type(m) is nn.Linear for n, m in merged_ours.named_modules() if n.endswith("q_proj"))
    with torch.no_grad():
        torch.testing.assert_close(merged_ours(ids).logits, before, atol=1e-5, rtol=1e-5)


def test_trainable_counts_equal_peft(model):
    base = copy.deepcopy(model)
    _, total_before = trainable_parameters(model)
    inject_lora(model, TARGETS, r=8, alpha=16)
    twin = peft.get_peft_model(
        base, peft.LoraConfig(r=8, lora_alpha=16, target_modules=list(TARGETS))
    )
    assert trainable_parameters(model) == twin.get_nb_trainable_parameters()
    trainable, total = trainable_parameters(model)
    layers = lora_layers(model)
    assert trainable == sum(8 * (m.in_features + m.out_features) for m in layers.values())
    assert total == total_before + trainable  # the tied embedding / head counted once
    assert trainable_share(model) == pytest.approx(trainable / total)
    for name, param in model.named_parameters():
        assert param.requires_grad == (".lora_" in name), name


# --------------------------------------------------------------------------------------------
# The layer itself


def _layer(dtype=torch.float32, r=4, alpha=8.0, bias=True, seed=0, **kw) -> LoRALinear:
    torch.manual_seed(seed)
    base = nn.Linear(24, 16, bias=bias).to(dtype)
    layer = LoRALinear(base, r=r, alpha=alpha, **kw)
    with torch.no_grad():
        layer.lora_B.weight.normal_(0, 0.3)
    return layer


def test_forward_is_the_definition():
    layer = _layer()
    x = torch.randn(3, 5, 24)
    a, b, s = layer.lora_A.weight, layer.lora_B.weight, 8.0 / 4
    expected = x @ layer.base_layer.weight.T + layer.base_layer.bias + s * (x @ a.T) @ b.T
    torch.testing.assert_close(layer(x), expected)
    rs = _layer(rslora=True)
    assert rs.scaling == pytest.approx(8.0 / math.sqrt(4))


def test_initialisation_starts_at_the_base_model():
    base = nn.Linear(100, 30)
    x = torch.randn(4, 100)
    for init in ("kaiming", "gaussian"):
        layer = LoRALinear(
            copy.deepcopy(base), r=8, init=init, generator=torch.Generator().manual_seed(0)
        )
        assert torch.equal(layer.lora_B.weight, torch.zeros(30, 8))
        torch.testing.assert_close(layer(x), base(x), atol=0, rtol=0)
    kaiming = LoRALinear(base, r=8, generator=torch.Generator().manual_seed(0)).lora_A.weight
    assert kaiming.abs().max() <= 1 / math.sqrt(100) and kaiming.std() > 0.5 / math.sqrt(300)
    gaussian = LoRALinear(base, r=8, init="gaussian").lora_A.weight
    assert gaussian.std().item() == pytest.approx(1 / 8, rel=0.15)


def test_seed_is_reproducible_and_leaves_the_global_rng_alone(model):
    twin = copy.deepcopy(model)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    inject_lora(model, TARGETS, seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)
    inject_lora(twin, TARGETS, seed=7)
    for key, value in lora_state_dict(model).items():
        assert torch.equal(value, lora_state_dict(twin)[key])


def test_dropout_applies_to_the_branch_input_only():
    layer = _layer(dropout=0.5).train()
    x = torch.randn(6, 24)
    torch.manual_seed(5)
    y = layer(x)
    torch.manual_seed(5)
    dropped = F.dropout(x, 0.5, training=True)
    expected = layer.base_layer(x) + 2.0 * dropped @ layer.lora_A.weight.T @ layer.lora_B.weight.T
    torch.testing.assert_close(y, expected)
    layer.eval()
    torch.testing.assert_close(layer(x), _layer()(x))  # eval: no dropout


def test_merge_unmerge_in_float32():
    layer = _layer()
    x = torch.randn(7, 24)
    base_weight = layer.base_layer.weight.detach().clone()
    before = layer(x)
    layer.merge()
    assert layer.merged
    torch.testing.assert_close(layer(x), before, atol=1e-6, rtol=1e-6)  # branch not added twice
    torch.testing.assert_close(
        layer.base_layer.weight, base_weight + 2.0 * layer.lora_B.weight @ layer.lora_A.weight
    )
    with pytest.raises(RuntimeError, match="merge: the adapter is already merged"):
        layer.merge()
    layer.unmerge()
    torch.testing.assert_close(layer.base_layer.weight, base_weight, atol=1e-7, rtol=0)
    torch.testing.assert_close(layer(x), before, atol=1e-6, rtol=1e-6)
    with pytest.raises(RuntimeError, match="unmerge: the adapter is not merged"):
        layer.unmerge()


def test_merge_in_bfloat16_differs_by_bf16_rounding():
    layer = _layer(dtype=torch.bfloat16)
    x = torch.randn(64, 24, dtype=torch.bfloat16)
    unmerged = layer(x).float()
    layer.merge()
    merged = layer(x).float()
    exact = x.double() @ layer.merged_weight().double().T + layer.base_layer.bias.double()
    # Each merged weight is rounded to 8 significant bits (relative error <= 2^-8), each output
    # and partial sum too: bound the difference by a few units of bf16 rounding of |W'| |x|.
    scale = x.double().abs() @ layer.merged_weight().double().abs().T
    bound = 4 * 2.0**-8 * (scale + exact.abs())
    difference = (merged - unmerged).double().abs()
    assert (difference <= bound).all()
    assert difference.max() > 0  # they do differ: bf16 cannot hold W + sBA exactly
    float32_layer = _layer()
    x32 = x.float()
    y = float32_layer(x32)
    float32_layer.merge()
    torch.testing.assert_close(float32_layer(x32), y, atol=1e-6, rtol=1e-6)


def test_branch_runs_in_the_input_dtype():
    layer = _layer(dtype=torch.bfloat16)
    assert layer.lora_A.weight.dtype == torch.float32  # the adapter stays float32
    y = layer(torch.randn(3, 24, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16


def test_dora_layer_is_the_definition():
    torch.manual_seed(0)
    layer = DoRALinear(nn.Linear(24, 16), r=4, alpha=8)
    x = torch.randn(5, 24)
    torch.testing.assert_close(layer(x), layer.base_layer(x))  # m = ||W|| at the start
    with torch.no_grad():
        layer.lora_B.weight.normal_(0, 0.3)
        layer.lora_magnitude_vector.mul_(1.5)
    v = layer.base_layer.weight + 2.0 * layer.lora_B.weight @ layer.lora_A.weight
    w = layer.lora_magnitude_vector[:, None] * v / v.norm(dim=1, keepdim=True)
    torch.testing.assert_close(layer(x), x @ w.T + layer.base_layer.bias)
    before = layer(x)
    layer.merge()
    torch.testing.assert_close(layer(x), before, atol=1e-6, rtol=1e-6)
    layer.unmerge()
    torch.testing.assert_close(layer(x), before, atol=1e-6, rtol=1e-6)


# --------------------------------------------------------------------------------------------
# Whole models: merge, remove, save and load


def test_merge_lora_and_remove_without_merging(model):
    original = copy.deepcopy(model)
    inject_lora(model, TARGETS, r=4, seed=0)
    _randomize(model)
    ids = _ids(1)
    with torch.no_grad():
        adapted = model(ids).logits
        assert merge_lora(model) == list(lora_layers(model))
        torch.testing.assert_close(model(ids).logits, adapted, atol=1e-5, rtol=1e-5)
        unmerge_lora(model)
        remove_lora(model, merge=False)
        torch.testing.assert_close(model(ids).logits, original(ids).logits, atol=1e-5, rtol=1e-5)
    assert model.state_dict().keys() == original.state_dict().keys()


@pytest.mark.parametrize("dora", [False, True])
def test_save_load_round_trip_through_results(model, tmp_path, monkeypatch, dora):
    monkeypatch.setenv("LLMLAB_CACHE", str(tmp_path))
    fresh = copy.deepcopy(model)
    inject_lora(model, TARGETS, r=4, seed=0, dora=dora)
    _randomize(model)
    state = lora_state_dict(model)
    assert all(k.startswith("base_model.model.model.layers.") for k in state)
    assert len(state) == (3 if dora else 2) * len(lora_layers(model))
    path = results.save_tensors("04_post_training/test_adapter", state)
    assert path.is_relative_to(tmp_path)

    inject_lora(fresh, TARGETS, r=4, seed=99, dora=dora)
    load_lora_state_dict(fresh, results.load_tensors("04_post_training/test_adapter"))
    for key, value in lora_state_dict(fresh).items():
        assert torch.equal(value, state[key]), key
    ids = _ids(2)
    with torch.no_grad():
        assert torch.equal(fresh(ids).logits, model(ids).logits)


def test_load_checks_keys_and_shapes(model):
    inject_lora(model, TARGETS, r=4)
    state = lora_state_dict(model)
    key = next(iter(state))
    with pytest.raises(ValueError, match=r"state: keys do not match.*missing"):
        load_lora_state_dict(model, {k: v for k, v in state.items() if k != key})
    with pytest.raises(ValueError, match=r"state: .* has shape \(8, 64\)"):
        load_lora_state_dict(model, {**state, key: torch.zeros(8, 64)})
    with pytest.raises(TypeError, match="state: expected a dict"):
        load_lora_state_dict(model, list(state.values()))


# --------------------------------------------------------------------------------------------
# Errors name the argument


def test_errors_name_the_argument(model):
    linear = nn.Linear(4, 4)
    with pytest.raises(ValueError, match="r: expected a positive int, got 0"):
        LoRALinear(linear, r=0)
    with pytest.raises(ValueError, match="r: expected a positive int, got 2.0"):
        inject_lora(copy.deepcopy(model), r=2.0)
    with pytest.raises(ValueError, match="alpha: expected a positive number, got -1"):
        LoRALinear(linear, alpha=-1)
    with pytest.raises(ValueError, match=r"dropout: expected a probability in \[0, 1\), got 1.0"):
        LoRALinear(linear, dropout=1.0)
    with pytest.raises(ValueError, match="init: expected one of"):
        LoRALinear(linear, init="xavier")
    with pytest.raises(TypeError, match="base_layer: expected an nn.Linear, got Conv1d"):
        LoRALinear(nn.Conv1d(2, 2, 1))
    with pytest.raises(ValueError, match=r"target_modules: \['query'\] matched no module.*q_proj"):
        inject_lora(copy.deepcopy(model), "query")
    with pytest.raises(ValueError, match="target_modules: expected a module name"):
        inject_lora(copy.deepcopy(model), [])
    with pytest.raises(TypeError, match="matched a LlamaAttention, expected nn.Linear"):
        inject_lora(copy.deepcopy(model), "self_attn")
    with pytest.raises(ValueError, match="seed: expected an int or None"):
        inject_lora(copy.deepcopy(model), seed="0")
    with pytest.raises(ValueError, match="model: has no LoRA layers to merge"):
        merge_lora(model)
    inject_lora(model, "q_proj")
    with pytest.raises(TypeError, match="already has a LoRA adapter"):
        inject_lora(model, "q_proj")


# --------------------------------------------------------------------------------------------
# QLoRA: an NF4 base through bitsandbytes, on this CPU


def _bitsandbytes_trains_on_cpu() -> str | None:
    """None when a Linear4bit forward and backward run on CPU here; else why not."""
    if importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed"
    try:
        layer = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64))
        quantize_base_nf4(layer, skip=())
        x = torch.randn(2, 64, requires_grad=True)
        layer(x).sum().backward()
        return None if x.grad is not None else "no gradient flows through Linear4bit"
    except Exception as exc:  # noqa: BLE001 - any failure means: cannot train here
        return f"bitsandbytes cannot run Linear4bit on this CPU: {type(exc).__name__}: {exc}"


NF4_REASON = _bitsandbytes_trains_on_cpu()
needs_nf4 = pytest.mark.skipif(NF4_REASON is not None, reason=str(NF4_REASON))


@needs_nf4
@pytest.mark.parametrize("dora", [False, True])
def test_qlora_trains_and_equals_peft_on_the_same_nf4_base(model, dora):
    fp32_bytes = parameter_bytes(model)
    names = quantize_base_nf4(model)
    assert len(names) == 14 and "lm_head" not in names  # 7 linear layers x 2, the head kept
    assert parameter_bytes(model) < fp32_bytes
    base = copy.deepcopy(model)
    inject_lora(model, TARGETS, r=4, alpha=8, seed=0, dora=dora)
    _randomize(model)
    twin = _peft_twin(base, model, r=4, lora_alpha=8, target_modules=list(TARGETS), use_dora=dora)
    ids = _ids(4)
    ours, theirs = model(ids).logits, twin(ids).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    _loss(ours, ids).backward()
    _loss(theirs, ids).backward()
    peft_params = dict(twin.named_parameters())
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and param.grad.abs().max() > 0, name
            torch.testing.assert_close(
                param.grad, peft_params[_peft_name(name)].grad, atol=1e-6, rtol=1e-4
            )
    assert trainable_parameters(model) == twin.get_nb_trainable_parameters()


@needs_nf4
def test_nf4_layer_is_close_to_the_float_layer_and_merges_dequantised():
    torch.manual_seed(0)
    linear = nn.Linear(128, 64)
    model = nn.Sequential(copy.deepcopy(linear))
    quantize_base_nf4(model, skip=())
    weight = dequantized_weight(model[0])
    # NF4: 16 levels over [-absmax, absmax] per block of 64: error <= absmax / 2 * max gap.
    error = (weight - linear.weight).abs().max().item()
    assert 0 < error < 0.2 * linear.weight.abs().max().item()
    inject_lora(model, "0", r=4, seed=0)
    _randomize(model)
    x = torch.randn(5, 128)
    with torch.no_grad():
        y = model(x)
    with pytest.raises(ValueError, match="merge: the base layer is NF4"):
        merge_lora(model)
    remove_lora(model, merge=True)
    assert type(model[0]) is nn.Linear and model[0].weight.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(model(x), y, atol=1e-5, rtol=1e-5)


@needs_nf4
def test_evaluating_between_steps_keeps_the_gradients():
    # bitsandbytes repacks a Linear4bit for its inference kernel after an eval-mode forward
    # without gradients, and that kernel has no backward; quantize_base_nf4 turns it off.
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64))
    quantize_base_nf4(model, skip=())
    inject_lora(model, "0", r=4, seed=0)
    _randomize(model)
    with torch.no_grad():
        model.eval()(torch.randn(2, 64))
    model.train()(torch.randn(2, 64)).sum().backward()
    grad = lora_layers(model)["0"].lora_B.weight.grad
    assert grad is not None and grad.abs().max() > 0
