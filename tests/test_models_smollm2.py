"""Our Llama with SmolLM2's weights against transformers' LlamaForCausalLM (the real 135M model)."""

from __future__ import annotations

import pytest
import torch

from llmlab.assets import load_smollm2
from llmlab.models import Llama

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,"]


@pytest.fixture(scope="module")
def models():
    # One thread: the batch-1 matmuls of a 135M model gain little from two, and on the shared
    # 2-core machine two threads per process thrash (the generate test took ~10x longer).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    hf, tokenizer = load_smollm2(dtype=torch.float32, device="cpu")
    yield Llama.from_smollm2(), hf, tokenizer
    torch.set_num_threads(threads)


def test_smollm2_config_and_weights_load(models):
    ours, hf, _ = models
    c = ours.config
    assert (c.n_layers, c.d_model, c.n_heads, c.n_kv_heads, c.d_ff) == (30, 576, 9, 3, 1536)
    assert c.tie_embeddings and ours.lm_head.weight is ours.embed_tokens.weight
    assert ours.num_parameters() == sum(p.numel() for p in hf.parameters())


def test_smollm2_logits_parity(models):
    ours, hf, tokenizer = models
    with torch.no_grad():
        for prompt in PROMPTS:
            ids = tokenizer(prompt, return_tensors="pt").input_ids
            diff = (ours(ids) - hf(ids).logits).abs().max().item()
            assert diff < 1e-4, (prompt, diff)


def test_smollm2_greedy_text_equals_generate(models):
    ours, hf, tokenizer = models
    ids = tokenizer(PROMPTS[0], return_tensors="pt").input_ids
    new_tokens = 8
    with torch.no_grad():
        expected = hf.generate(
            ids, do_sample=False, max_new_tokens=new_tokens, pad_token_id=tokenizer.eos_token_id
        )
        cache, out = ours.new_cache(), ids
        logits = ours(ids, cache=cache)
        for _ in range(expected.shape[1] - ids.shape[1]):
            token = logits[:, -1].argmax(-1, keepdim=True)
            out = torch.cat([out, token], dim=1)
            logits = ours(token, cache=cache)
    assert torch.equal(out, expected)


def test_tiny_smollm2_has_smollm2s_names_and_tokenizer(models):
    from llmlab.assets import tiny_smollm2

    _, hf, tokenizer = models
    tiny, tiny_tokenizer = tiny_smollm2(seed=3, device="cpu")
    assert type(tiny) is type(hf)
    real_names = {n.replace(".layers.29.", ".layers.1.") for n, _ in hf.named_parameters()}
    tiny_names = {n for n, _ in tiny.named_parameters()}
    assert tiny_names <= real_names and "model.layers.1.mlp.down_proj.weight" in tiny_names
    assert tiny.config.vocab_size == hf.config.vocab_size and tiny.config.tie_word_embeddings
    assert tiny_tokenizer.get_vocab() == tokenizer.get_vocab()
    assert tiny_tokenizer.chat_template == tokenizer.chat_template
    assert sum(p.numel() for p in tiny.parameters()) < 4_000_000
    again, _ = tiny_smollm2(seed=3, device="cpu")
    other, _ = tiny_smollm2(seed=4, device="cpu")
    w = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(tiny.state_dict()[w], again.state_dict()[w])
    assert not torch.equal(tiny.state_dict()[w], other.state_dict()[w])
    with pytest.raises(TypeError, match="seed"):
        tiny_smollm2(seed="0")
