"""llmlab.moe.scale: published MoE configs, parameter and FLOP counts against transformers'
models on the meta device and the papers' headline numbers, and the expert-parallel all-to-all
run on CPU processes with gloo."""

import dataclasses
import multiprocessing

import pytest
import torch

from llmlab.moe.scale import (
    CONFIGS,
    DEEPSEEK_V3,
    GLAM_64B_64E,
    MIXTRAL_8X7B,
    SWITCH_C,
    SWITCH_XXL,
    MoEConfig,
    all_to_all_bytes,
    count_parameters,
    flops_per_token,
    n_moe_layers,
    routed_bytes,
    simulate_all_to_all,
    transformers_config,
    transformers_count,
)

# --------------------------------------------------------------------------------------------
# Formulas against transformers (meta device: shapes only)
# --------------------------------------------------------------------------------------------


def test_mixtral_equals_transformers_exactly():
    ours, theirs = count_parameters(MIXTRAL_8X7B), transformers_count(MIXTRAL_8X7B)
    assert ours["total"] == theirs["total"] == 46_702_792_704
    assert ours["experts"] == theirs["experts"]
    assert theirs["buffers"] == 0


def test_deepseek_v3_equals_transformers_exactly():
    # transformers builds no multi-token-prediction module, as the 671B does not count it;
    # e_score_correction_bias is a buffer there (58 MoE layers x 256), not a parameter
    ours, theirs = count_parameters(DEEPSEEK_V3), transformers_count(DEEPSEEK_V3)
    assert ours["total"] == theirs["total"] == 671_026_404_352
    assert ours["experts"] == theirs["experts"]
    assert ours["moe_layers"] == n_moe_layers(DEEPSEEK_V3) == 58
    assert theirs["buffers"] == 58 * 256


@pytest.mark.parametrize(
    "cfg",
    [
        dataclasses.replace(MIXTRAL_8X7B, n_layers=2, tied_embeddings=True),
        dataclasses.replace(MIXTRAL_8X7B, n_layers=2, n_kv_heads=32, n_experts=4, k=1),
        dataclasses.replace(DEEPSEEK_V3, n_layers=5, n_experts=16, q_lora_rank=0),
        dataclasses.replace(DEEPSEEK_V3, n_layers=5, n_experts=16, n_shared=2, first_dense=1),
    ],
    ids=["mixtral-tied", "mixtral-mha", "deepseek-no-q-lora", "deepseek-2-shared"],
)
def test_variants_equal_transformers(cfg):
    ours, theirs = count_parameters(cfg), transformers_count(cfg)
    assert ours["total"] == theirs["total"]
    assert ours["experts"] == theirs["experts"]


SMALL_SWITCH = dataclasses.replace(
    SWITCH_C, name="small Switch", d_model=64, n_heads=4, head_dim=16, d_ff_expert=96,
    d_ff_dense=96, n_experts=8, n_encoder_layers=4, n_layers=4, moe_every=2, vocab=100,
)  # fmt: skip


@pytest.mark.parametrize("moe_every", [1, 2])
def test_switch_encoder_decoder_equals_transformers(moe_every):
    # Switch-C itself (2048 experts as 2048 modules per layer) is too slow to build; a small one
    # has every part: encoder, decoder with cross-attention, T5 position bias, dense and MoE FFNs
    tied = dataclasses.replace(SMALL_SWITCH, moe_every=moe_every, tied_embeddings=True)
    assert count_parameters(tied)["total"] == transformers_count(tied)["total"]
    assert count_parameters(tied)["experts"] == transformers_count(tied)["experts"]
    # untied, transformers keeps the encoder's and decoder's own input tables besides `shared`
    untied = dataclasses.replace(tied, tied_embeddings=False)
    extra = transformers_count(untied)["total"] - count_parameters(untied)["total"]
    assert extra == 2 * untied.vocab * untied.d_model


def test_no_transformers_equivalent_is_named():
    with pytest.raises(ValueError, match="cfg: GLaM"):
        transformers_config(GLAM_64B_64E)


# --------------------------------------------------------------------------------------------
# Headline numbers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cfg, total, active, tol",
    [
        (MIXTRAL_8X7B, 46.7e9, 12.9e9, 0.005),  # 46.70B, 12.88B
        (DEEPSEEK_V3, 671e9, 37e9, 0.02),  # 671.03B, 37.55B (the paper rounds to 37B)
        (GLAM_64B_64E, 1.2e12, 96.6e9, 0.04),  # 1.162T ("1.2T"), 96.6B to three digits
        (SWITCH_C, 1571e9, None, 0.001),  # 1571.3B (Table 9: 1571B; "1.6 trillion")
        (SWITCH_XXL, 395e9, None, 0.005),  # 394.7B
    ],
    ids=lambda v: v.name if isinstance(v, MoEConfig) else None,
)
def test_published_headlines(cfg, total, active, tol):
    c = count_parameters(cfg)
    assert c["total"] == pytest.approx(total, rel=tol)
    assert cfg.published_total == total
    if active is not None:
        assert c["active"] == pytest.approx(active, rel=tol)
        assert cfg.published_active == active


def test_glam_activates_96_6b_not_137b():
    # seed 004 says "137 billion activated": that is GLaM's *dense* baseline; the MoE's own
    # table says 96.6B, which the formulas reproduce (embedding included)
    c = count_parameters(GLAM_64B_64E)
    assert round(c["active"] / 1e9, 1) == 96.6
    assert c["moe_layers"] == 32
    assert abs(c["active"] - 137e9) > 40e9


def test_switch_c_is_1_6_trillion_with_k_1():
    assert SWITCH_C.k == 1
    assert round(count_parameters(SWITCH_C)["total"] / 1e12, 1) == 1.6


def test_counts_add_up_and_active_removes_unused_experts():
    for cfg in CONFIGS.values():
        c = count_parameters(cfg)
        parts = ("embedding", "attention", "dense_ffn", "experts", "shared", "router", "norms",
                 "position")  # fmt: skip
        assert c["total"] == sum(c[p] for p in parts)
        assert c["experts"] == c["moe_layers"] * cfg.n_experts * c["per_expert"]
        assert (
            c["total"] - c["active"] == c["moe_layers"] * (cfg.n_experts - cfg.k) * c["per_expert"]
        )
        assert cfg.source  # every config cites where it comes from


def test_flops_per_token():
    f = flops_per_token(MIXTRAL_8X7B)
    c = count_parameters(MIXTRAL_8X7B)
    # 2 x (active - input embedding - norms): the look-up and the norms are not matmuls
    assert f["active"] == 2 * (c["active"] - MIXTRAL_8X7B.vocab * 4096 - c["norms"])
    assert f["attention"] == 0 and f["total"] == f["active"]
    assert f["dense"] > f["total"] and f["ratio"] == pytest.approx(f["dense"] / f["total"])
    with_ctx = flops_per_token(MIXTRAL_8X7B, seq=4096)
    assert with_ctx["attention"] == 2 * 32 * (128 + 128) * 4096 * 32
    assert with_ctx["total"] == f["active"] + with_ctx["attention"]
    ds = flops_per_token(DEEPSEEK_V3, seq=10)
    assert ds["attention"] == 2 * 128 * (192 + 128) * 10 * 61
    # MoE with k of E experts: fewer FLOPs than the same weights all used
    for cfg in CONFIGS.values():
        assert flops_per_token(cfg)["ratio"] > 1


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, error, name",
    [
        ({"k": 9}, ValueError, "k:"),
        ({"d_model": 0}, ValueError, "d_model:"),
        ({"n_layers": 2.0}, TypeError, "n_layers:"),
        ({"attention": "gqa"}, ValueError, "attention:"),
        ({"position": "alibi"}, ValueError, "position:"),
        ({"n_kv_heads": 5}, ValueError, "n_kv_heads:"),
        ({"moe_every": 2, "d_ff_dense": 0}, ValueError, "d_ff_dense:"),
        ({"tied_embeddings": 1}, TypeError, "tied_embeddings:"),
        ({"first_dense": 40}, ValueError, "first_dense:"),
    ],
)
def test_bad_config_is_named(change, error, name):
    with pytest.raises(error, match=name):
        dataclasses.replace(MIXTRAL_8X7B, **change)


def test_mla_needs_its_ranks():
    with pytest.raises(ValueError, match="attention: 'mla'"):
        dataclasses.replace(DEEPSEEK_V3, kv_lora_rank=0)


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="cfg:"):
        count_parameters({"d_model": 4096})
    with pytest.raises(ValueError, match="seq:"):
        flops_per_token(MIXTRAL_8X7B, seq=-1)
    with pytest.raises(ValueError, match="n_devices:"):
        all_to_all_bytes(64, 32, 2, 0)
    with pytest.raises(TypeError, match="bytes_per_value:"):
        all_to_all_bytes(64, 32, 2, 2, bytes_per_value=2.5)
    with pytest.raises(ValueError, match="n_experts:"):
        simulate_all_to_all(n_devices=3, n_experts=4)
    with pytest.raises(ValueError, match="routing:"):
        simulate_all_to_all(routing="zipf")
    with pytest.raises(ValueError, match="k:"):
        simulate_all_to_all(n_experts=2, k=3)
    with pytest.raises(TypeError, match="dtype:"):
        simulate_all_to_all(dtype=torch.int64)
    with pytest.raises(ValueError, match="experts:"):
        routed_bytes(torch.zeros(4, dtype=torch.long), 4, 2, 0, 8)
    with pytest.raises(ValueError, match="rank:"):
        routed_bytes(torch.zeros(4, 2, dtype=torch.long), 4, 2, 2, 8)


# --------------------------------------------------------------------------------------------
# The all-to-all
# --------------------------------------------------------------------------------------------


def test_all_to_all_bytes_formula():
    # 4096 tokens, top-2, d 4096, bf16, 8 devices: 7/8 of 2 x 4096 x 4096 x 2 bytes
    assert all_to_all_bytes(4096, 4096, 2, 8) == 4096 * 2 * 4096 * 2 * 7 / 8
    assert all_to_all_bytes(100, 16, 1, 1) == 0  # one device: nothing leaves
    experts = torch.tensor([[0, 3], [1, 2], [2, 3]])  # devices 0|1 hold experts 0-1|2-3
    assert routed_bytes(experts, 4, 2, rank=0, d_model=8, bytes_per_value=2) == 4 * 8 * 2
    assert routed_bytes(experts, 4, 2, rank=1, d_model=8, bytes_per_value=2) == 2 * 8 * 2


@pytest.fixture(scope="module")
def random_run():
    return simulate_all_to_all(
        n_devices=2, tokens_per_device=64, d_model=32, n_experts=4, k=2, seed=0, timeout=120
    )


def test_simulation_measures_the_routing(random_run):
    r = random_run
    assert r.collective == "all_to_all_single"  # gloo has it on CPU (torch 2.13)
    # what each device sent equals the formula on its actual routing
    assert r.sent_bytes == r.routed_bytes
    assert r.sent_bytes == [n * r.d_model * r.bytes_per_value for n in r.leaving]
    # what 0 sent, 1 received, and the combine sends back what the dispatch brought
    assert r.sent_bytes == r.received_bytes[::-1]
    assert r.combine_sent_bytes == r.received_bytes
    # the expectation under uniform routing: within 25% for 128 random assignments
    assert r.expected_bytes == all_to_all_bytes(64, 32, 2, 2, 4) == 8192
    for sent in r.sent_bytes:
        assert sent == pytest.approx(r.expected_bytes, rel=0.25)
    # the round trip computed the MoE layer right
    assert r.max_error < 1e-5
    assert all(t >= 0 for t in r.wall_s)


@pytest.mark.slow
def test_balanced_routing_matches_the_expectation_exactly():
    r = simulate_all_to_all(
        n_devices=2, tokens_per_device=32, d_model=16, n_experts=4, k=2,
        routing="balanced", dtype=torch.bfloat16, timeout=120,
    )  # fmt: skip
    assert r.bytes_per_value == 2
    assert r.sent_bytes == r.routed_bytes == [r.expected_bytes] * 2
    assert r.max_error < 0.05  # bf16 rows


def test_timeout_raises_and_leaves_no_process():
    with pytest.raises(RuntimeError, match="simulate_all_to_all"):
        simulate_all_to_all(timeout=0.05)
    assert multiprocessing.active_children() == []
