"""llmlab.models: the five families, their KV cache, parity with transformers, and counting."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers
from torch.utils.flop_counter import FlopCounterMode

from llmlab.models import (
    GPT,
    PUBLISHED,
    T5,
    Bert,
    BertConfig,
    GPTConfig,
    KVCache,
    Llama,
    LlamaConfig,
    PaLM,
    PaLMConfig,
    T5Config,
    count_parameters,
    flops_per_token,
    matmul_parameters,
    parameter_breakdown,
)
from llmlab.nn.attention import formula_attention
from llmlab.nn.positional import relative_position_bucket

transformers.logging.set_verbosity_error()

VOCAB = 97
CAUSAL = {
    "gpt2": (GPT, GPTConfig(vocab_size=VOCAB, max_seq=40, d_model=48, n_layers=2, n_heads=4)),
    "gpt1-postnorm": (
        GPT,
        GPTConfig(vocab_size=VOCAB, max_seq=40, d_model=48, n_layers=2, n_heads=4, d_ff=100,
                  norm_first=False, tie_embeddings=False),
    ),
    "gpt-rope-swiglu": (
        GPT,
        GPTConfig(vocab_size=VOCAB, max_seq=40, d_model=48, n_layers=2, n_heads=4,
                  positions="rope", activation="swiglu"),
    ),
    "llama-gqa": (
        Llama, LlamaConfig(vocab_size=VOCAB, d_model=48, n_layers=2, n_heads=6, n_kv_heads=2, d_ff=128)
    ),
    "llama-tied-headdim": (
        Llama,
        LlamaConfig(vocab_size=VOCAB, d_model=48, n_layers=2, n_heads=4, head_dim=16, d_ff=128,
                    tie_embeddings=True),
    ),
    "palm-mqa": (
        PaLM, PaLMConfig(vocab_size=VOCAB, d_model=48, n_layers=2, n_heads=4, head_dim=16, d_ff=192)
    ),
}  # fmt: skip
OTHERS = {
    "bert": (Bert, BertConfig(vocab_size=VOCAB, max_seq=40, d_model=48, n_layers=2, n_heads=4)),
    "t5": (
        T5,
        T5Config(vocab_size=VOCAB, d_model=48, n_layers=2, n_decoder_layers=3, n_heads=4,
                 head_dim=8, d_ff=96),
    ),
}  # fmt: skip


def _build(name):
    cls, config = {**CAUSAL, **OTHERS}[name]
    torch.manual_seed(0)
    return cls(config).eval()


# --------------------------------------------------------------------------------------------
# The causal-LM contract: shapes, the KV cache
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CAUSAL)
def test_causal_lm_logits_shape_and_causality(name):
    model = _build(name)
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(ids)
        changed = ids.clone()
        changed[:, 6] = (changed[:, 6] + 1) % VOCAB
        logits2 = model(changed)
    assert logits.shape == (2, 9, VOCAB) and logits.dtype == torch.float32
    # a token changes no logit before it (causal), and does change its own position's
    assert torch.allclose(logits[:, :6], logits2[:, :6], atol=1e-6)
    assert not torch.allclose(logits[:, 6], logits2[:, 6])


@pytest.mark.parametrize("name", CAUSAL)
def test_kv_cache_step_by_step_equals_full_sequence(name):
    model = _build(name)
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache()
        parts = [model(ids[:, :5], cache=cache)]  # prefill 5, then one token at a time
        for t in range(5, 12):
            parts.append(model(ids[:, t : t + 1], cache=cache))
    assert (torch.cat(parts, dim=1) - full).abs().max() < 1e-5
    assert cache.length == 12
    cfg = model.config
    kv = getattr(cfg, "n_kv_heads", None) or cfg.n_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.d_model // cfg.n_heads
    # stored before GQA repetition: n_kv_heads heads, not n_heads
    assert cache.keys[0].shape == (2, kv, 12, head_dim)


def test_kv_cache_stores_keys_after_rope():
    model = _build("llama-gqa")
    ids = torch.randint(0, VOCAB, (1, 6), generator=torch.Generator().manual_seed(3))
    cache = model.new_cache()
    with torch.no_grad():
        model(ids, cache=cache)
        layer = model.layers[0]
        h = layer.self_attn_norm(model.embed_tokens(ids))
        attn = layer.self_attn
        k = attn.k_proj(h).view(1, 6, attn.n_kv_heads, attn.head_dim).transpose(1, 2)
        cos, sin = model.rotary(torch.arange(6))
    from llmlab.nn.positional import apply_rotary

    assert torch.allclose(cache.keys[0], apply_rotary(k, cos, sin), atol=1e-6)
    assert not torch.allclose(cache.keys[0], k, atol=1e-3)


def test_cache_and_input_errors():
    model = _build("gpt2")
    with pytest.raises(
        TypeError, match="input_ids: expected token ids of dtype int64, got torch.f"
    ):
        model(torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"input_ids: expected 2 dims \(batch, seq\), got shape"):
        model(torch.zeros(3, dtype=torch.long))
    with pytest.raises(
        ValueError, match=r"input_ids: expected ids in \[0, 97\), got min 0, max 97"
    ):
        model(torch.tensor([[0, 97]]))
    with pytest.raises(ValueError, match=r"input_ids: expected seq >= 1, got shape \(1, 0\)"):
        model(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="cache: expected 2 layers"):
        model(torch.zeros(1, 3, dtype=torch.long), cache=KVCache(3))
    with pytest.raises(TypeError, match="cache: expected a KVCache"):
        model(torch.zeros(1, 3, dtype=torch.long), cache={})
    cache = model.new_cache()
    model(torch.zeros(1, 38, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="exceed max_seq=40"):
        model(torch.zeros(1, 3, dtype=torch.long), cache=cache)
    bert = _build("bert")
    with pytest.raises(ValueError, match=r"input_ids: expected seq <= max_seq=40, got shape"):
        bert(torch.zeros(1, 41, dtype=torch.long))
    with pytest.raises(
        ValueError, match=r"token_type_ids: expected ids in \[0, 2\), got min 0, max 2"
    ):
        bert(torch.zeros(1, 3, dtype=torch.long), torch.tensor([[0, 1, 2]]))
    with pytest.raises(ValueError, match=r"token_type_ids: expected shape \(1, 3\), got \(1, 2\)"):
        bert(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long))


def _loss_grads_and_saved_bytes(model, ids):
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    torch.manual_seed(1)  # the same dropout masks in both runs
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    return loss.item(), grads, sum(saved)


@pytest.mark.parametrize("every", [1, 2, 3])
def test_activation_checkpointing_keeps_losses_and_gradients(every):
    torch.manual_seed(0)
    model = GPT(
        GPTConfig(
            vocab_size=VOCAB,
            max_seq=40,
            d_model=48,
            n_layers=4,
            n_heads=4,
            dropout=0.1,
            positions="rope",
        )
    )
    ids = torch.randint(0, VOCAB, (2, 17))
    loss, grads, plain_bytes = _loss_grads_and_saved_bytes(model, ids)
    model.checkpoint_every = every
    loss2, grads2, ckpt_bytes = _loss_grads_and_saved_bytes(model, ids)
    assert loss2 == pytest.approx(loss, abs=1e-6)
    for name, g in grads.items():
        torch.testing.assert_close(grads2[name], g, atol=1e-6, rtol=1e-5, msg=name)
    assert ckpt_bytes < plain_bytes / 2  # only the embeddings, head and group inputs stay
    model.eval()
    with torch.no_grad():  # evaluation and cached decoding ignore the switch
        cache = model.new_cache()
        torch.testing.assert_close(model(ids, cache=cache), model(ids))
    with pytest.raises(ValueError, match="checkpoint_every: expected"):
        model.checkpoint_every = 0


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="d_model: expected a positive int"):
        GPTConfig(vocab_size=10, max_seq=8, d_model=0, n_layers=1, n_heads=1)
    with pytest.raises(ValueError, match="n_kv_heads: expected a divisor of n_heads=6"):
        LlamaConfig(vocab_size=10, d_model=48, n_layers=1, n_heads=6, n_kv_heads=4, d_ff=8)
    with pytest.raises(ValueError, match="n_heads: expected a divisor of d_model=48"):
        PaLMConfig(vocab_size=10, d_model=48, n_layers=1, n_heads=5, d_ff=8)
    with pytest.raises(TypeError, match="d_ff: expected an int, got NoneType"):
        LlamaConfig(vocab_size=10, d_model=48, n_layers=1, n_heads=6, d_ff=None)
    with pytest.raises(TypeError, match="n_layers: expected an int, got float 2.0"):
        LlamaConfig(vocab_size=10, d_model=48, n_layers=2.0, n_heads=6, d_ff=8)
    with pytest.raises(ValueError, match="dropout: expected a float"):
        BertConfig(vocab_size=10, max_seq=8, d_model=8, n_layers=1, n_heads=1, dropout=1.0)
    with pytest.raises(ValueError, match="positions: expected 'learned' .GPT-2. or 'rope'"):
        GPTConfig(vocab_size=10, max_seq=8, d_model=8, n_layers=1, n_heads=1, positions="alibi")
    with pytest.raises(TypeError, match="config: expected a LlamaConfig, got GPTConfig"):
        Llama(CAUSAL["gpt2"][1])
    with pytest.raises(TypeError, match="dropout: expected a number, got str '0.1'"):
        LlamaConfig(vocab_size=10, d_model=48, n_layers=1, n_heads=6, d_ff=8, dropout="0.1")


def test_configs_accept_numpy_numbers_and_store_python_ones():
    config = GPTConfig(vocab_size=np.int64(100), max_seq=np.int32(16), d_model=np.int64(32),
                       n_layers=np.int64(2), n_heads=np.int64(4), dropout=np.float64(0.1))  # fmt: skip
    assert config == GPTConfig(100, 16, 32, 2, 4, dropout=0.1)
    assert all(type(getattr(config, f)) is int for f in ("vocab_size", "d_model", "d_ff"))
    assert type(config.dropout) is float
    torch.manual_seed(0)
    ours = GPT(config)
    torch.manual_seed(0)
    plain = GPT(GPTConfig(100, 16, 32, 2, 4, dropout=0.1))
    assert repr(ours) == repr(plain)
    ids = torch.tensor([[1, 2, 3]])
    torch.testing.assert_close(ours.eval()(ids), plain.eval()(ids), rtol=0, atol=0)
    llama = LlamaConfig(vocab_size=np.int64(10), d_model=np.int64(48), n_layers=np.int16(1),
                        n_heads=np.int64(6), n_kv_heads=np.int64(2), d_ff=np.int64(8))  # fmt: skip
    assert type(llama.n_kv_heads) is int and type(llama.block_config().n_kv_heads) is int
    assert (
        type(BertConfig(np.int64(10), 8, 8, 1, 1, type_vocab_size=np.int64(3)).type_vocab_size)
        is int
    )


def test_family_structure():
    palm, llama, gpt = _build("palm-mqa"), _build("llama-gqa"), _build("gpt2")
    # PaLM: parallel block (one norm per layer), one kv head, no biases anywhere
    assert not hasattr(palm.layers[0], "mlp_norm")
    assert palm.layers[0].self_attn.k_proj.out_features == 16
    assert all("bias" not in n for n, _ in palm.named_parameters())
    assert all("bias" not in n for n, _ in llama.named_parameters())
    assert palm.lm_head.weight is palm.embed_tokens.weight
    assert llama.lm_head.weight is not llama.embed_tokens.weight
    assert gpt.lm_head.weight is gpt.embed_tokens.weight and gpt.embed_positions is not None
    assert llama.config.max_seq is None and gpt.config.max_seq == 40
    # GPT with LLaMA's FFN and positions: d_ff 8/3 d rounded up to 16, a gate, no position table
    rotary = _build("gpt-rope-swiglu")
    assert rotary.config.d_ff == 128 and rotary.embed_positions is None
    assert rotary.layers[0].mlp.gate_proj.out_features == 128 and rotary.rotary is not None


# --------------------------------------------------------------------------------------------
# Parity with transformers (random weights, small configs)
# --------------------------------------------------------------------------------------------


def test_gpt2_logits_equal_transformers():
    torch.manual_seed(0)
    hf_config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=32, n_embd=48, n_layer=2, n_head=4,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    hf = transformers.GPT2LMHeadModel(hf_config).eval()
    ours = GPT.from_hf(hf).eval()
    ids = torch.randint(0, VOCAB, (3, 17))
    with torch.no_grad():
        assert (ours(ids) - hf(ids).logits).abs().max() < 1e-5


def test_llama_logits_equal_transformers_gqa():
    torch.manual_seed(0)
    hf_config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=48, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=6, num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=500.0,
        bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )  # fmt: skip
    hf = transformers.LlamaForCausalLM(hf_config).eval()
    ours = Llama.from_hf(hf)
    assert ours.config.rope_base == 500.0 and ours.config.n_kv_heads == 2
    ids = torch.randint(0, VOCAB, (2, 15))
    with torch.no_grad():
        assert (ours(ids) - hf(ids).logits).abs().max() < 1e-5


def test_bert_pretraining_heads_equal_transformers():
    torch.manual_seed(0)
    hf_config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=96, max_position_embeddings=24,
    )  # fmt: skip
    hf = transformers.BertForPreTraining(hf_config).eval()
    ours = Bert.from_hf(hf)
    ids = torch.randint(0, VOCAB, (2, 11))
    types = torch.randint(0, 2, (2, 11))
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[1, 7:] = 0
    with torch.no_grad():
        a = ours(ids, types, mask)
        b = hf(input_ids=ids, token_type_ids=types, attention_mask=mask)
    assert (a.mlm_logits - b.prediction_logits).abs().max() < 1e-5
    assert (a.nsp_logits - b.seq_relationship_logits).abs().max() < 1e-5


def test_t5_logits_equal_transformers():
    torch.manual_seed(0)
    hf_config = transformers.T5Config(
        vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
        num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20,
    )  # fmt: skip
    hf = transformers.T5ForConditionalGeneration(hf_config).eval()
    ours = T5.from_hf(hf)
    src, tgt = torch.randint(0, VOCAB, (2, 30)), torch.randint(0, VOCAB, (2, 25))
    mask = torch.ones(2, 30, dtype=torch.long)
    mask[1, 20:] = 0
    with torch.no_grad():
        a = ours(src, tgt, mask)
        b = hf(input_ids=src, decoder_input_ids=tgt, attention_mask=mask).logits
    assert (a - b).abs().max() < 1e-5


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize(("num_buckets", "max_distance"), [(32, 128), (8, 20), (16, 9)])
def test_t5_bucket_equals_transformers(bidirectional, num_buckets, max_distance):
    from transformers.models.t5.modeling_t5 import T5Attention

    distance = torch.arange(-400, 400)[None, :]
    ours = relative_position_bucket(distance, bidirectional, num_buckets, max_distance)
    theirs = T5Attention._relative_position_bucket(
        distance, bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance
    )
    assert torch.equal(ours, theirs)
    assert ours.min() >= 0 and ours.max() < num_buckets


def test_t5_bucket_errors():
    with pytest.raises(TypeError, match="relative_position: expected an integer tensor"):
        relative_position_bucket(torch.zeros(3))
    with pytest.raises(ValueError, match="max_distance: expected > 8"):
        relative_position_bucket(torch.arange(3), num_buckets=32, max_distance=8)


# --------------------------------------------------------------------------------------------
# Counting
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*CAUSAL, *OTHERS])
def test_parameter_formula_equals_built_model(name):
    model = _build(name)
    built = sum(p.numel() for p in model.parameters())
    assert count_parameters(model.config) == built
    assert sum(parameter_breakdown(model.config).values()) == built


@pytest.mark.parametrize("name", CAUSAL)
def test_flops_formula_equals_flop_counter(name):
    model = _build(name).train()
    batch, seq = 2, 13
    ids = torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(4))
    # the counter does not see torch's fused CPU attention kernel: count the formula's matmuls
    with formula_attention(), FlopCounterMode(display=False) as counter:
        model(ids)
    assert counter.get_total_flops() == batch * seq * flops_per_token(model.config, seq, False)
    with formula_attention(), FlopCounterMode(display=False) as counter:
        model(ids).sum().backward()
    assert counter.get_total_flops() == batch * seq * flops_per_token(model.config, seq)


def test_published_counts_match_the_papers():
    # the papers' own totals, to the precision they print them
    expected = {
        "GPT-1": 117e6, "GPT-2 XL": 1.5e9, "GPT-3 175B": 175e9, "BERT-base": 110e6,
        "T5-base": 220e6, "LLaMA-7B": 6.7e9, "LLaMA-65B": 65.2e9, "PaLM-540B": 540e9,
    }  # fmt: skip
    for name, claim in expected.items():
        assert abs(count_parameters(PUBLISHED[name]) / claim - 1) < 0.04, name
    assert count_parameters(PUBLISHED["LLaMA-7B"]) == 6_738_415_616  # transformers' count
    assert count_parameters(PUBLISHED["GPT-2 XL"]) == 1_557_611_200


def test_counting_errors():
    with pytest.raises(TypeError, match="config: expected one of"):
        count_parameters({"d_model": 8})
    with pytest.raises(TypeError, match="config: expected a causal LM config"):
        matmul_parameters(OTHERS["bert"][1])
    with pytest.raises(ValueError, match="seq: expected a positive int"):
        flops_per_token(CAUSAL["gpt2"][1], 0)


@pytest.mark.parametrize("name", ["gpt2", "llama-gqa", "bert"])
def test_forward_off_the_cpu_reads_no_scalar(name):
    # On the meta device a scalar read raises: it would be a host sync per step on a GPU.
    model = _build(name).eval().to("meta")
    ids = torch.zeros(2, 6, dtype=torch.long, device="meta")
    with torch.no_grad():
        if name == "bert":
            assert model(ids, attention_mask=torch.ones_like(ids)).mlm_logits.shape == (2, 6, VOCAB)
            return
        cache = model.new_cache()
        model(ids, cache=cache)
        assert model(ids[:, :1], cache=cache).shape == (2, 1, VOCAB)
