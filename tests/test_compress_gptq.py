"""llmlab.compress.gptq: GPTQ equals Optimal Brain Surgeon's update, beats round-to-nearest on
the output error it minimises; AWQ never loses to RTN on its calibration data."""

from __future__ import annotations

import copy

import pytest
import torch

from llmlab.compress import gptq as G
from llmlab.compress.quant import fake_quantize


def _layer(n=1024, k=64, m=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.eye(k) + 2 * torch.randn(k, k, generator=g) / k**0.5
    x = torch.randn(n, k, generator=g) @ mix  # correlated inputs
    x[:, 3] *= 10  # one strong feature
    w = 0.05 * torch.randn(m, k, generator=g)
    return w, x, (x.T @ x / n).double()


def _obs_reference(w, h, bits, scheme, damp=0.01):
    """GPTQ without its tricks: Optimal Brain Surgeon's update with the inverse Hessian
    re-computed (by elimination) after every column, one column at a time, per-row grid."""
    W = w.double().clone()
    H = h.double().clone() + damp * torch.diag(h).mean() * torch.eye(
        h.shape[0], dtype=torch.float64
    )
    Hinv = torch.linalg.inv(H)
    scale, zero, low, high = G._grid(W, bits, scheme)
    Q = torch.zeros_like(W)
    for i in range(W.shape[1]):
        q = G._round(W[:, i : i + 1], scale, zero, low, high)
        Q[:, i : i + 1] = q
        err = (W[:, i : i + 1] - q) / Hinv[i, i]
        W[:, i:] -= err @ Hinv[i : i + 1, i:]
        Hinv = Hinv - Hinv[:, i : i + 1] @ Hinv[i : i + 1, :] / Hinv[i, i]  # remove column i
    return Q


@pytest.mark.parametrize("scheme", ["absmax", "zeropoint"])
def test_gptq_equals_optimal_brain_surgeon(scheme):
    w, _, h = _layer(k=32, m=8)
    ours = G.gptq_quantize(w, h, bits=4, scheme=scheme, block_size=8).weight
    torch.testing.assert_close(ours.double(), _obs_reference(w, h, 4, scheme), rtol=0, atol=1e-6)


@pytest.mark.parametrize("group_size", [None, 16])
@pytest.mark.parametrize("act_order", [False, True])
def test_lazy_blocks_change_nothing(group_size, act_order):
    w, _, h = _layer()
    results = [
        G.gptq_quantize(w, h, 4, group_size, act_order=act_order, block_size=b).weight
        for b in (4, 16, 64)
    ]
    for r in results[1:]:
        torch.testing.assert_close(r, results[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("group_size", [None, 16])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_beats_round_to_nearest_on_the_output_error(bits, group_size, act_order):
    w, x, h = _layer()
    r = G.gptq_quantize(w, h, bits, group_size, act_order=act_order)
    assert r.error < 0.6 * r.rtn_error
    direct = ((x @ (w - r.weight).T) ** 2).sum(1).mean().item()  # ||X (W - W_hat)^T||^2 / n
    assert r.error == pytest.approx(direct, rel=1e-4)
    assert r.rtn_error == pytest.approx(G.output_error(w, G.rtn_quantize(w, bits, group_size), h))


@pytest.mark.parametrize("act_order", [False, True])
def test_every_weight_lies_on_its_group_grid(act_order):
    w, _, h = _layer()
    r = G.gptq_quantize(w, h, bits=3, group_size=16, scheme="zeropoint", act_order=act_order)
    order = r.order.tolist()
    for g in range(0, w.shape[1], 16):
        cols = order[g : g + 16]  # a group: 16 consecutive columns in quantization order
        block = r.weight[:, cols]
        for row in block:
            assert len(torch.unique(row)) <= 8  # 2^3 levels
    if act_order:
        diag = torch.diag(h)
        assert torch.all(diag[r.order[:-1]] >= diag[r.order[1:]])


def test_dead_features_are_zero_and_rtn_matches_fake_quantize():
    w, x, _ = _layer()
    x[:, 5] = 0.0
    h = (x.T @ x / x.shape[0]).double()
    r = G.gptq_quantize(w, h, 4)
    assert (r.weight[:, 5] == 0).all()
    torch.testing.assert_close(
        G.rtn_quantize(w, 4, 16, "absmax"),
        fake_quantize(w, 4, scheme="absmax", granularity="group", group_size=16),
    )


def test_gptq_errors():
    w, _, h = _layer(k=16, m=4)
    with pytest.raises(ValueError, match="weight: expected a 2-D float"):
        G.gptq_quantize(w[0], h)
    with pytest.raises(ValueError, match="hessian: expected a \\(16, 16\\)"):
        G.gptq_quantize(w, h[:8, :8])
    with pytest.raises(ValueError, match="group_size: expected a divisor"):
        G.gptq_quantize(w, h, group_size=5)
    with pytest.raises(ValueError, match="bits"):
        G.gptq_quantize(w, h, bits=9)
    with pytest.raises(ValueError, match="scheme"):
        G.gptq_quantize(w, h, scheme="minmax")
    with pytest.raises(ValueError, match="damp"):
        G.gptq_quantize(w, h, damp=1.5)


def test_awq_never_loses_to_rtn_and_finds_the_strong_feature():
    w, x, h = _layer()
    inputs = G.LayerInputs(h, x.abs().mean(0).double(), x.shape[0])
    r = G.awq_quantize(w, inputs, bits=3, group_size=16, clip=False)
    assert r.errors[0.0] == pytest.approx(G.output_error(w, G.rtn_quantize(w, 3, 16), h))
    assert r.errors[r.alpha] <= r.errors[0.0] and r.alpha > 0
    assert r.scales.argmax() == 3  # the strong feature gets the largest scale
    assert G.output_error(w, r.weight, h) == pytest.approx(r.errors[r.alpha], rel=1e-5)
    assert r.error == pytest.approx(r.errors[r.alpha], rel=1e-6) and r.clip_ratios is None
    with pytest.raises(ValueError, match="inputs: expected the LayerInputs"):
        G.awq_quantize(w, G.LayerInputs(h, x.abs().mean(0)[:5], 1))


def test_awq_clipping_search_lowers_the_error_and_keeps_ratio_1_as_an_option():
    w, x, h = _layer()
    inputs = G.LayerInputs(h, x.abs().mean(0).double(), x.shape[0])
    plain = G.awq_quantize(w, inputs, bits=3, group_size=16, clip=False)
    clipped = G.awq_quantize(w, inputs, bits=3, group_size=16)
    assert clipped.alpha == plain.alpha
    assert clipped.error < plain.error  # 3 bits: a shorter range pays off somewhere
    assert clipped.error == pytest.approx(G.output_error(w, clipped.weight, h), rel=1e-5)
    assert clipped.clip_ratios.shape == (w.shape[0], w.shape[1] // 16)
    assert clipped.clip_ratios.min() >= 0.5 and clipped.clip_ratios.max() <= 1.0
    assert (clipped.clip_ratios < 1).any()
    one = G.awq_quantize(w, inputs, bits=3, group_size=16, clip_grid=1)  # ratio 1 only: no clip
    torch.testing.assert_close(one.weight, plain.weight)
    with pytest.raises(ValueError, match="min_clip"):
        G.awq_quantize(w, inputs, bits=3, group_size=16, min_clip=0.0)


def test_collect_hessians_on_a_tiny_llama():
    from llmlab.assets import tiny_smollm2

    model, _ = tiny_smollm2(seed=0)
    model = model.float().eval()
    ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    seen = {}
    layer = model.model.layers[0].mlp.down_proj
    handle = layer.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0].detach()))
    records = G.collect_hessians(copy.deepcopy(model), [ids, ids])
    model(ids)
    handle.remove()
    x = seen["x"].reshape(-1, seen["x"].shape[-1]).double()
    rec = records["model.layers.0.mlp.down_proj"]
    torch.testing.assert_close(rec.hessian, x.T @ x / x.shape[0])
    torch.testing.assert_close(rec.mean_abs, x.abs().mean(0))
    assert rec.n == 2 * x.shape[0]
    attn = "model.layers.0.self_attn."
    assert records[attn + "q_proj"] is records[attn + "k_proj"] is records[attn + "v_proj"]
    assert records["model.layers.0.mlp.gate_proj"] is records["model.layers.0.mlp.up_proj"]
    assert records[attn + "o_proj"] is not records[attn + "q_proj"]
    assert "lm_head" not in records
    with pytest.raises(ValueError, match="batches"):
        G.collect_hessians(model, [])


@pytest.mark.parametrize("method", ["rtn", "gptq", "awq"])
def test_quantize_weights_on_a_tiny_llama(method):
    from llmlab.assets import tiny_smollm2

    model, _ = tiny_smollm2(seed=0)
    model = model.float().eval()
    ids = torch.randint(0, 1000, (4, 16), generator=torch.Generator().manual_seed(1))
    records = G.collect_hessians(model, [ids[:2], ids[2:]])
    q = copy.deepcopy(model)
    ratios = G.quantize_weights(q, records, method, bits=4, group_size=16)
    assert set(ratios) == set(records)
    if method == "rtn":
        assert all(r == 1.0 for r in ratios.values())
    else:  # AWQ never loses to RTN on its calibration data; GPTQ wins on average
        assert sum(ratios.values()) / len(ratios) < 1.0
    if method == "awq":
        assert all(r <= 1.0 + 1e-9 for r in ratios.values())
    w = q.model.layers[0].self_attn.q_proj.weight
    if method == "rtn":
        torch.testing.assert_close(
            w, G.rtn_quantize(model.model.layers[0].self_attn.q_proj.weight, 4, 16)
        )
    with pytest.raises(ValueError, match="method"):
        G.quantize_weights(q, records, "smooth")
    with pytest.raises(KeyError, match="no linear layer"):
        G.quantize_weights(q, {"nope": records["model.layers.0.mlp.up_proj"]})


def test_loudness_counts_each_shared_record_once():
    quiet = G.LayerInputs(torch.eye(3, dtype=torch.float64), torch.ones(3), 10)
    h = torch.diag(torch.tensor([1.0, 4.0, 400.0], dtype=torch.float64))
    loud = G.LayerInputs(h, torch.ones(3), 10)
    inputs = {"q": loud, "k": loud, "v": loud, "o": quiet}
    assert G.loudness(inputs) == pytest.approx([10.0, 1.0])  # norms 1, 2, 20: 20 / 2


def test_compare_methods_scores_every_variant_and_leaves_the_model_alone():
    from llmlab.assets import tiny_smollm2
    from llmlab.compress.evaluate import window_nll

    model, _ = tiny_smollm2(seed=0)
    model = model.float().eval()
    before = copy.deepcopy(model.state_dict())
    g = torch.Generator().manual_seed(2)
    calib, windows = (
        torch.randint(0, 1000, (4, 16), generator=g),
        torch.randint(0, 1000, (3, 16), generator=g),
    )
    records = G.collect_hessians(model, calib.split(2))
    rows = G.compare_methods(model, records, windows, bits=(4, 3), group_size=16, awq_grid=2)
    assert list(rows) == ["fp32"] + [f"{v} {b}-bit" for b in (4, 3) for v in G.VARIANTS]
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    torch.testing.assert_close(rows["fp32"]["nll"], window_nll(model, windows))
    rtn = copy.deepcopy(model)
    G.quantize_weights(rtn, records, "rtn", bits=3, group_size=16)
    torch.testing.assert_close(rows["RTN 3-bit"]["nll"], window_nll(rtn, windows))
    assert rows["RTN 3-bit"]["layer_error_vs_rtn"] == 1.0
    assert rows["AWQ 4-bit"]["layer_error_vs_rtn"] <= 1.0 + 1e-9
    assert not torch.equal(rows["RTN 3-bit"]["nll"], rows["fp32"]["nll"])
    only = G.compare_methods(
        model, records, windows, {"RTN": dict(method="rtn")}, bits=(4,), group_size=16
    )
    assert list(only) == ["fp32", "RTN 4-bit"]
