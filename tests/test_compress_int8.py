"""llmlab.compress.int8 and .evaluate: int8 matmuls, LLM.int8, W8A8, calibration, SmoothQuant."""

from __future__ import annotations

import copy
import logging
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llmlab.compress import evaluate as E
from llmlab.compress import int8 as Q


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def tiny():
    from llmlab.assets import tiny_smollm2

    model, tokenizer = tiny_smollm2(seed=0)
    return model.float().eval(), tokenizer


# --------------------------------------------------------------------------------------------
# quantize_rowwise and int8_matmul
# --------------------------------------------------------------------------------------------


def test_rowwise_codes_bounds_and_error():
    x = torch.randn(6, 40, generator=_gen(0))
    x[2] = 0.0
    codes, scale = Q.quantize_rowwise(x)
    assert codes.dtype == torch.int8 and scale.shape == (6,)
    assert codes.abs().max() == 127 and (codes[2] == 0).all()
    err = (codes.float() * scale[:, None] - x).abs()
    assert (err <= scale[:, None] / 2 + 1e-7).all()  # round to nearest: half a step at most
    for row in (0, 1, 3):  # the row's largest |x| lands on +-127
        assert codes[row].abs().max() == 127


def test_rowwise_rejects_non_2d():
    with pytest.raises(ValueError, match="x: expected a 2-d"):
        Q.quantize_rowwise(torch.randn(2, 3, 4))


@pytest.mark.parametrize(("m", "k"), [(1, 50), (7, 50), (33, 50), (3, 1)])
def test_int8_matmul_is_exact(m, k):
    a = torch.randint(-127, 128, (m, k), generator=_gen(1), dtype=torch.int8)
    b = torch.randint(-127, 128, (24, k), generator=_gen(2), dtype=torch.int8)
    out = Q.int8_matmul(a, b)
    assert out.dtype == torch.int32
    assert torch.equal(out.long(), a.long() @ b.long().t())


def test_int8_matmul_errors():
    a = torch.zeros(2, 4, dtype=torch.int8)
    with pytest.raises(TypeError, match="int8"):
        Q.int8_matmul(a.float(), a)
    with pytest.raises(ValueError, match="same K"):
        Q.int8_matmul(a, torch.zeros(3, 5, dtype=torch.int8))


# --------------------------------------------------------------------------------------------
# QuantLinear
# --------------------------------------------------------------------------------------------


def _linear(k=64, n=32, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(k, n)


def test_quantlinear_modes_close_to_float():
    lin = _linear()
    x = torch.randn(3, 5, 64, generator=_gen(3))
    ref = lin(x).detach()
    for mode, kwargs in [
        ("none", {}),
        ("dynamic", {}),
        ("static", {"input_absmax": float(x.abs().max())}),
    ]:
        q = Q.QuantLinear.from_linear(lin, activations=mode, **kwargs)
        out = q(x)
        assert out.shape == ref.shape and out.dtype == x.dtype
        rel = (out - ref).abs().max() / ref.abs().max()
        assert rel < 0.02, (mode, rel)
    # weight-only is the de-quantized weight's exact float product
    q = Q.QuantLinear.from_linear(lin, activations="none")
    torch.testing.assert_close(
        q(x), x @ q.dequantized_weight().t() + lin.bias, rtol=1e-5, atol=1e-6
    )


def test_static_activations_clip_above_the_calibrated_absmax():
    lin = _linear()
    x = torch.randn(4, 64, generator=_gen(4))
    x[0, 0] = 50.0
    q = Q.QuantLinear.from_linear(lin, activations="static", input_absmax=3.0)
    clipped = x.clamp(-3.0, 3.0)
    ref = Q.QuantLinear.from_linear(lin, activations="static", input_absmax=3.0)(clipped)
    torch.testing.assert_close(q(x), ref)


def test_llm_int8_decomposition_rescues_an_outlier_feature():
    lin = _linear(k=128, n=64)
    x = torch.randn(16, 128, generator=_gen(5))
    x[:, 5] = 60.0 * torch.sign(x[:, 5])  # one systematic outlier feature, as in large LMs
    ref = lin(x).detach()
    plain = Q.QuantLinear.from_linear(lin, activations="dynamic")(x)
    q = Q.QuantLinear.from_linear(lin, activations="dynamic", threshold=6.0)
    mixed = q(x)
    assert q.outlier_features == 1
    err_plain, err_mixed = (plain - ref).abs().mean(), (mixed - ref).abs().mean()
    assert err_mixed < err_plain / 5, (err_mixed, err_plain)
    # without a value reaching the threshold nothing changes
    small = torch.randn(4, 128, generator=_gen(6)).clamp(-3, 3)
    torch.testing.assert_close(q(small), plain_like(lin, small), rtol=0, atol=0)
    assert q.outlier_features == 0


def plain_like(lin, x):
    return Q.QuantLinear.from_linear(lin, activations="dynamic")(x)


def test_quantlinear_argument_errors():
    lin = _linear()
    with pytest.raises(ValueError, match="activations: expected one of"):
        Q.QuantLinear.from_linear(lin, activations="int4")
    with pytest.raises(ValueError, match="input_absmax: static"):
        Q.QuantLinear.from_linear(lin, activations="static")
    with pytest.raises(ValueError, match="input_absmax: expected a positive"):
        Q.QuantLinear.from_linear(lin, activations="static", input_absmax=0.0)
    with pytest.raises(ValueError, match="threshold: the outlier decomposition"):
        Q.QuantLinear.from_linear(lin, activations="none", threshold=6.0)
    with pytest.raises(ValueError, match="threshold: expected a positive"):
        Q.QuantLinear.from_linear(lin, threshold=-1.0)
    with pytest.raises(ValueError, match="quant_dtype"):
        Q.QuantLinear.from_linear(lin, quant_dtype=torch.int8)
    with pytest.raises(TypeError, match="linear: expected an nn.Linear"):
        Q.QuantLinear.from_linear(nn.Conv1d(2, 2, 1))
    with pytest.raises(ValueError, match="x: expected last dim 64"):
        Q.QuantLinear.from_linear(lin)(torch.randn(2, 63))


def _bnb_linear(lin, threshold):
    bnb = pytest.importorskip("bitsandbytes")
    layer = bnb.nn.Linear8bitLt(
        lin.in_features, lin.out_features, has_fp16_weights=False, threshold=threshold
    )
    layer.weight = bnb.nn.Int8Params(
        lin.weight.data.clone(), requires_grad=False, has_fp16_weights=False
    )
    layer.bias = nn.Parameter(lin.bias.data.clone())
    return layer.eval()  # in training mode bitsandbytes' CPU path skips int8 altogether


@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_equals_bitsandbytes_linear8bitlt(threshold):
    """With bitsandbytes' float16 rounding before quantization, our LLM.int8 equals
    Linear8bitLt(threshold=6.0) to 1e-4 of the output's scale (the int32 products are equal;
    the scales are multiplied in a different order). Outlier columns here lie wholly above the
    threshold: bitsandbytes zeroes only the outlier *values* before taking each row's absmax,
    the paper (and QuantLinear) the whole outlier column."""
    lin = _linear(k=256, n=128)
    x = torch.randn(4, 10, 256, generator=_gen(7))
    x[..., 7] = torch.sign(x[..., 7]) * (8 + x[..., 7].abs())
    ours = Q.QuantLinear.from_linear(lin, threshold=threshold or None, quant_dtype=torch.float16)
    theirs = _bnb_linear(lin, threshold)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            expected = theirs(x)
        finally:
            logging.disable(logging.NOTSET)
        got = ours(x)
    assert torch.equal(ours.weight_codes, theirs.weight.data)
    assert ours.outlier_features == (1 if threshold else 0)
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()


# --------------------------------------------------------------------------------------------
# quantize_linears, statistics, calibration, SmoothQuant
# --------------------------------------------------------------------------------------------


def test_quantize_linears_swaps_every_linear_but_the_head(tiny):
    model, _ = tiny
    q = Q.quantize_linears(copy.deepcopy(model))
    kinds = {
        n: type(m).__name__ for n, m in q.named_modules() if n.endswith("proj") or n == "lm_head"
    }
    assert kinds["lm_head"] == "Linear"
    assert all(k == "QuantLinear" for n, k in kinds.items() if n != "lm_head")
    ids = torch.randint(0, 1000, (2, 12), generator=_gen(8))
    with torch.no_grad():
        a, b = model(ids).logits, q(ids).logits
    assert (a - b).abs().max() < 0.05 * a.abs().max()


def test_quantize_linears_errors(tiny):
    model, _ = tiny
    with pytest.raises(ValueError, match="input_absmax: static"):
        Q.quantize_linears(copy.deepcopy(model), activations="static")
    with pytest.raises(KeyError, match="no calibrated absmax"):
        Q.quantize_linears(copy.deepcopy(model), activations="static", input_absmax={})
    with pytest.raises(ValueError, match="no nn.Linear"):
        Q.quantize_linears(nn.Sequential(nn.ReLU()))


def test_activation_stats_match_the_inputs(tiny):
    model, _ = tiny
    ids = torch.randint(0, 1000, (2, 16), generator=_gen(9))
    seen = {}
    layer = model.model.layers[0].mlp.down_proj
    handle = layer.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0].detach()))
    with torch.no_grad():
        model(ids)
    handle.remove()
    stats = Q.collect_activation_stats(model, [ids], bins=64)
    s = stats["model.layers.0.mlp.down_proj"]
    x = seen["x"].reshape(-1, seen["x"].shape[-1])
    torch.testing.assert_close(s.channel_absmax, x.abs().amax(0))
    assert s.hist.sum() == x.numel() and s.hist_max == pytest.approx(float(x.abs().max()))
    assert "lm_head" not in stats
    # q, k and v read the same tensor
    q_, k_ = stats["model.layers.0.self_attn.q_proj"], stats["model.layers.0.self_attn.k_proj"]
    assert torch.equal(q_.hist, k_.hist)
    with pytest.raises(ValueError, match="batches"):
        Q.collect_activation_stats(model, [])


def _stats_from(values: torch.Tensor, bins=2048) -> Q.ActivationStats:
    top = float(values.abs().max())
    return Q.ActivationStats(
        values.abs().reshape(-1, 1).amax(0), torch.histc(values.abs(), bins, 0, top).double(), top
    )


def test_calibration_methods_order_and_kl_clips_outliers():
    x = torch.randn(200_000, generator=_gen(10))
    x[:20] = 40.0
    stats = {"a": _stats_from(x), "b": _stats_from(x)}
    th = {m: Q.calibrate(stats, m)["a"] for m in Q.CALIBRATIONS}
    assert th["minmax"] == pytest.approx(40.0)
    assert 3.5 < th["percentile"] < 40.0  # 99.99% of |x| lies below ~3.9 for a Gaussian
    assert 2.5 < th["kl"] < 10.0  # the 20 outliers are clipped
    assert Q.calibrate(stats, "kl")["b"] == th["kl"]
    with pytest.raises(ValueError, match="method: expected one of"):
        Q.calibrate(stats, "mse")
    with pytest.raises(ValueError, match="percentile"):
        Q.calibrate(stats, "percentile", percentile=0)
    with pytest.raises(ValueError, match="levels"):
        Q.kl_threshold(torch.ones(10), 1.0, levels=128)


def test_smoothing_scales_formula():
    act = torch.tensor([8.0, 1.0, 0.5])
    w1, w2 = torch.tensor([[0.5, 2.0, 1.0]]), torch.tensor([[1.0, 0.25, 4.0]])
    s = Q.smoothing_scales(act, [w1, w2], alpha=0.5)
    torch.testing.assert_close(s, torch.sqrt(act) / torch.sqrt(torch.tensor([1.0, 2.0, 4.0])))
    torch.testing.assert_close(Q.smoothing_scales(act, [w1], 1.0), act)
    with pytest.raises(ValueError, match="alpha"):
        Q.smoothing_scales(act, [w1], 1.5)
    with pytest.raises(ValueError, match="act_absmax: expected shape"):
        Q.smoothing_scales(act[:2], [w1], 0.5)


@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_smooth_llama_keeps_the_function_and_flattens_activations(tiny, alpha):
    model, _ = tiny
    ids = torch.randint(0, 1000, (2, 16), generator=_gen(11))
    stats = Q.collect_activation_stats(model, [ids], bins=16)
    smoothed = Q.smooth_llama(copy.deepcopy(model), stats, alpha)
    with torch.no_grad():
        torch.testing.assert_close(smoothed(ids).logits, model(ids).logits, rtol=1e-4, atol=1e-4)
    after = Q.collect_activation_stats(smoothed, [ids], bins=16)
    for name in ("model.layers.1.self_attn.q_proj", "model.layers.1.mlp.down_proj"):
        before_spread = stats[name].channel_absmax.max() / stats[name].channel_absmax.median()
        after_spread = after[name].channel_absmax.max() / after[name].channel_absmax.median()
        assert after_spread < before_spread
    with pytest.raises(ValueError, match="transformers Llama"):
        Q.smooth_llama(nn.Linear(2, 2), stats)
    with pytest.raises(KeyError, match="no activation statistics"):
        Q.smooth_llama(copy.deepcopy(model), {})


def test_model_bytes_counts_a_tied_head_once(tiny):
    model, _ = tiny
    sizes = Q.model_bytes(model)
    n = sum(p.numel() for p in model.parameters())  # parameters() yields a tied tensor once
    n += sum(b.numel() for b in model.buffers())  # RoPE's inverse frequencies
    assert sizes == {"float32": 4 * n}
    q = Q.quantize_linears(copy.deepcopy(model))
    assert q.model.layers[0].mlp.up_proj.weight_codes.numel() in range(
        1, Q.model_bytes(q)["int8"] + 1
    )


# --------------------------------------------------------------------------------------------
# The perplexity protocol
# --------------------------------------------------------------------------------------------


def test_protocol_windows_and_nll(tiny):
    model, tokenizer = tiny
    protocol = E.Protocol(n_windows=3, window=32)
    w = E.heldout_windows(tokenizer, protocol)
    assert w.shape == (3, 32) and torch.equal(w, E.heldout_windows(tokenizer, protocol))
    c = E.calibration_windows(tokenizer, 2, 32)
    assert c.shape == (2, 32) and not torch.equal(c, w[:2])
    nll = E.window_nll(model, w, batch_size=2)
    with torch.no_grad():
        logits = model(w).logits
    manual = F.cross_entropy(logits[:, :-1].transpose(1, 2), w[:, 1:], reduction="none").mean(1)
    torch.testing.assert_close(nll, manual.double(), rtol=1e-5, atol=1e-6)
    assert "3 non-overlapping windows of 32 tokens" in protocol.describe()
    with pytest.raises(ValueError, match="windows: expected"):
        E.window_nll(model, w[0])


def test_paired_difference():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    mean, se = E.paired_difference(a + 0.5, a)
    assert mean == pytest.approx(0.5) and se == pytest.approx(0.0)
    with pytest.raises(ValueError, match="same length"):
        E.paired_difference(a, a[:3])


def test_gap_closed_is_the_share_of_rtn_loss_taken_back_with_its_interval():
    g = torch.Generator().manual_seed(0)
    base = 3.0 + 0.1 * torch.randn(200, generator=g, dtype=torch.float64)
    rtn = base + 0.2 + 0.01 * torch.randn(200, generator=g, dtype=torch.float64)
    half = base + 0.1 + 0.01 * torch.randn(200, generator=g, dtype=torch.float64)
    share, low, high = E.gap_closed(base, rtn, half)
    expected = float((rtn.mean() - half.mean()) / (rtn.mean() - base.mean()))
    assert share == pytest.approx(expected) and abs(share - 0.5) < 0.02
    assert low < share < high and high - low < 0.05  # paired: the windows' own spread cancels
    assert E.gap_closed(base, rtn, rtn)[0] == pytest.approx(0.0)
    assert E.gap_closed(base, rtn, base)[0] == pytest.approx(1.0)
    assert E.gap_closed(base, rtn, rtn + 0.1)[0] < 0  # worse than RTN
    assert E.gap_closed(base, rtn, half, seed=1)[1:] != (low, high)  # the resamples follow the seed
    # unpaired resampling (a mutant) would let the windows' spread of 0.1 widen the interval
    assert high - low < 0.1 * 4 / 200**0.5
    with pytest.raises(ValueError, match="rtn: its mean NLL equals base"):
        E.gap_closed(base, base, half)
    with pytest.raises(ValueError, match="nll: expected a per-window NLL vector"):
        E.gap_closed(base, rtn, half[:10])
    with pytest.raises(ValueError, match="draws"):
        E.gap_closed(base, rtn, half, draws=0)


def test_model_bytes_counts_the_weights_quantize_dynamic_packs():
    import warnings

    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16, bias=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    counted = Q.model_bytes(q)
    assert counted["qint8"] == 64 * 32 + 32 * 16
    assert counted.get("float32", 0) == 32 * 4  # the first layer's bias
