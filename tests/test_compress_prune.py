"""llmlab.compress.prune: magnitude, global magnitude, Wanda and N:M masks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llmlab.compress import prune as P


def _w(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("s", [0.0, 0.25, 0.5, 0.9])
def test_magnitude_mask_keeps_the_largest(s):
    w = _w(8, 16)
    mask = P.magnitude_mask(w, s)
    assert mask.dtype == torch.bool and mask.shape == w.shape
    assert int((~mask).sum()) == round(s * w.numel())
    if 0 < s:
        assert w.abs()[mask].min() >= w.abs()[~mask].max()


def test_global_threshold_prunes_the_layer_of_small_weights_more():
    weights = {"small": 0.01 * _w(8, 8, seed=1), "large": _w(8, 8, seed=2)}
    masks = P.global_magnitude_masks(weights, 0.5)
    assert int(sum((~m).sum() for m in masks.values())) == 64
    assert (~masks["small"]).sum() > (~masks["large"]).sum()
    kept = torch.cat([weights[n].abs()[masks[n]] for n in weights])
    pruned = torch.cat([weights[n].abs()[~masks[n]] for n in weights])
    assert kept.min() >= pruned.max()


def test_wanda_scores_weight_times_input_norm_per_row():
    w = _w(6, 10, seed=3)
    uniform = torch.ones(10)
    per_row = P.wanda_mask(w, uniform, 0.5)
    assert (per_row.sum(1) == 5).all()  # the same sparsity in every output row
    for i in range(6):  # with equal input norms: per-row magnitude
        assert w[i].abs()[per_row[i]].min() >= w[i].abs()[~per_row[i]].max()
    loud = uniform.clone()
    loud[0] = 1000.0  # a feature with large activations: its weights survive
    assert P.wanda_mask(w, loud, 0.8)[:, 0].all()
    assert not P.magnitude_mask(w, 0.8)[:, 0].all()
    with pytest.raises(ValueError, match="input_norm"):
        P.wanda_mask(w, torch.ones(9), 0.5)


def test_two_four_pattern():
    scores = _w(4, 16, seed=4).abs()
    mask = P.n_m_mask(scores, 2, 4)
    assert (mask.view(4, 4, 4).sum(-1) == 2).all()
    blocks, kept = scores.view(4, 4, 4), mask.view(4, 4, 4)
    for b, k in zip(blocks.reshape(-1, 4), kept.reshape(-1, 4), strict=True):
        assert b[k].min() >= b[~k].max()
    with pytest.raises(ValueError, match="m: expected a divisor"):
        P.n_m_mask(_w(2, 6), 2, 4)
    with pytest.raises(ValueError, match="n: expected at most"):
        P.n_m_mask(scores, 5, 4)


def test_apply_masks_and_sparsity():
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    masks = {"0": P.magnitude_mask(model[0].weight, 0.5)}
    P.apply_masks(model, masks)
    assert P.sparsity(model[0].weight) == 0.5
    assert P.sparsity([model[0].weight, model[2].weight]) == pytest.approx(16 / 40)
    with pytest.raises(KeyError, match="not a layer"):
        P.apply_masks(model, {"1": masks["0"]})


def test_argument_errors():
    with pytest.raises(ValueError, match="sparsity"):
        P.magnitude_mask(_w(2, 2), 1.0)
    with pytest.raises(ValueError, match="weight: expected a 2-D"):
        P.magnitude_mask(_w(4), 0.5)
    with pytest.raises(ValueError, match="weights: expected at least one"):
        P.global_magnitude_masks({}, 0.5)


# ---- structured pruning on a transformers Llama (the tiny random SmolLM2) ----------------


def _tiny():
    from llmlab.assets import tiny_smollm2

    model, _ = tiny_smollm2(seed=0, device="cpu")
    ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    return model.float().eval(), ids


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def _inputs(model, ids):
    from llmlab.compress.gptq import collect_hessians

    return collect_hessians(model, [ids])


def _layer_input(model, layer, ids, width):
    """What ``layer`` receives when ``model`` reads ``ids``, as (tokens, width) float64."""
    captured = {}
    handle = layer.register_forward_pre_hook(lambda m, a: captured.setdefault("x", a[0]))
    _logits(model, ids)
    handle.remove()
    return captured["x"].reshape(-1, width).double()


def test_keep_ffn_channels_equals_zeroing_the_others():
    import copy

    model, ids = _tiny()
    mlp = model.model.layers[0].mlp
    keep = torch.tensor([0, 3, 5, 64, 100, 127])
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        cols = torch.ones(mlp.down_proj.in_features, dtype=torch.bool)
        cols[keep] = False
        zeroed.model.layers[0].mlp.down_proj.weight[:, cols] = 0
    P.keep_ffn_channels(mlp, keep)
    assert mlp.gate_proj.weight.shape == (6, 64) and mlp.down_proj.weight.shape == (64, 6)
    torch.testing.assert_close(_logits(model, ids), _logits(zeroed, ids), atol=1e-5, rtol=1e-5)


def test_ffn_channel_scores_are_each_channels_mean_squared_output():
    model, ids = _tiny()
    mlp = model.model.layers[1].mlp
    inputs = _inputs(model, ids)["model.layers.1.mlp.down_proj"]
    x = _layer_input(model, mlp.down_proj, ids, mlp.down_proj.in_features)
    w = mlp.down_proj.weight.detach().double()
    direct = torch.stack(
        [(x[:, j : j + 1] * w[:, j]).square().sum(1).mean() for j in range(w.shape[1])]
    )
    torch.testing.assert_close(
        P.ffn_channel_scores(w, inputs).double(), direct, rtol=1e-4, atol=1e-9
    )


def test_keep_attention_groups_equals_zeroing_the_groups_query_columns():
    import copy

    model, ids = _tiny()  # 4 query heads, 2 key/value groups of 2, head_dim 16
    attn = model.model.layers[1].self_attn
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        zeroed.model.layers[1].self_attn.o_proj.weight[:, :32] = 0  # group 0's two query heads
    P.keep_attention_groups(attn, [1])
    assert attn.q_proj.out_features == 32 and attn.k_proj.out_features == 16
    assert attn.o_proj.in_features == 32
    torch.testing.assert_close(_logits(model, ids), _logits(zeroed, ids), atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # generation with a KV cache still runs
        out = model.generate(ids[:1, :4], max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 7)


def test_attention_group_scores_are_each_groups_mean_squared_output():
    model, ids = _tiny()
    attn = model.model.layers[0].self_attn
    inputs = _inputs(model, ids)["model.layers.0.self_attn.o_proj"]
    x = _layer_input(model, attn.o_proj, ids, 64)
    w = attn.o_proj.weight.detach().double()
    direct = torch.stack(
        [
            (x[:, g * 32 : (g + 1) * 32] @ w[:, g * 32 : (g + 1) * 32].T).square().sum(1).mean()
            for g in range(2)
        ]
    )
    torch.testing.assert_close(
        P.attention_group_scores(w, inputs, attn).double(), direct, rtol=1e-4, atol=1e-9
    )


def test_block_influence_is_zero_for_a_layer_that_changes_nothing():
    model, ids = _tiny()
    with torch.no_grad():  # layer 1 adds nothing to the residual stream
        model.model.layers[1].self_attn.o_proj.weight.zero_()
        model.model.layers[1].mlp.down_proj.weight.zero_()
    bi = P.block_influence(model, [ids])
    assert bi.shape == (2,) and bi[0] > 1e-3 and abs(bi[1]) < 1e-6


def test_drop_layers_equals_a_model_without_them_and_still_generates():
    import copy

    model, ids = _tiny()
    identity = copy.deepcopy(model)
    with torch.no_grad():
        identity.model.layers[0].self_attn.o_proj.weight.zero_()
        identity.model.layers[0].mlp.down_proj.weight.zero_()
    P.drop_layers(model, [0])
    assert len(model.model.layers) == 1 and model.config.num_hidden_layers == 1
    assert model.model.layers[0].self_attn.layer_idx == 0
    torch.testing.assert_close(_logits(model, ids), _logits(identity, ids), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        a = model.generate(ids[:1, :4], max_new_tokens=4, do_sample=False, pad_token_id=0)
        b = identity.generate(ids[:1, :4], max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(a, b)


def test_structured_pruning_rejects_bad_input():
    model, ids = _tiny()
    with pytest.raises(ValueError, match="keep"):
        P.keep_ffn_channels(model.model.layers[0].mlp, [])
    with pytest.raises(ValueError, match="keep"):
        P.keep_attention_groups(model.model.layers[0].self_attn, [2])
    with pytest.raises(ValueError, match="drop"):
        P.drop_layers(model, [0, 1])
    with pytest.raises(TypeError, match="model"):
        P.block_influence(nn.Linear(2, 2), [ids])
    inputs = _inputs(model, ids)
    with pytest.raises(ValueError, match="inputs"):
        P.ffn_channel_scores(
            model.model.layers[0].mlp.down_proj.weight, inputs["model.layers.0.self_attn.o_proj"]
        )
