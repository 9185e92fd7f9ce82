"""llmlab.compress.memory: every variant builds from SmolLM2's layout and still generates; the
child process reports the model's own memory, not the imports'."""

import pytest
import torch

from llmlab import assets
from llmlab.compress import memory


def _params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(memory.VARIANTS))
def test_every_variant_builds_and_generates(name):
    model, tok = assets.tiny_smollm2()
    before = _params(model)
    out = memory.build_variant(model, name)
    ids = tok(["def f(x):"], return_tensors="pt")
    with torch.no_grad():
        new = out.generate(
            **ids,
            max_new_tokens=3,
            min_new_tokens=3,
            do_sample=False,
            pad_token_id=tok.eos_token_id,
        )
    assert new.shape[1] == ids["input_ids"].shape[1] + 3
    if name.startswith(("FFN", "attention", "layers", "low rank")):
        assert _params(out) < before, "a structured variant has fewer parameters"


def test_structured_variants_keep_the_stated_share():
    model, _ = assets.tiny_smollm2()
    width = model.model.layers[0].mlp.down_proj.in_features
    memory.build_variant(model, "FFN channels, keep 50%")
    assert all(layer.mlp.down_proj.in_features == width // 2 for layer in model.model.layers)
    model, _ = assets.tiny_smollm2()
    n_layers = len(model.model.layers)
    memory.build_variant(model, "layers, drop a fifth")
    assert len(model.model.layers) == n_layers - 1  # 2 layers: a fifth rounds up to one, never all
    model, _ = assets.tiny_smollm2()
    kv = [layer.self_attn.k_proj.out_features for layer in model.model.layers]
    memory.build_variant(model, "attention groups, drop a third")
    after = [layer.self_attn.k_proj.out_features for layer in model.model.layers]
    assert sum(after) < sum(kv) and all(a > 0 for a in after)


def test_unknown_variant_is_named():
    with pytest.raises(ValueError, match="name: expected one of"):
        memory.peak_memory("int3")
    with pytest.raises(ValueError, match="batch"):
        memory.peak_memory("fp32", batch=0)


@pytest.mark.slow
def test_child_process_counts_the_model_not_the_imports():
    r = memory.peak_memory("fp32", smoke=True, batch=2, new_tokens=4)
    if r["peak_mb"] is None:
        pytest.skip("no /proc/self/clear_refs on this platform")
    weights = _params(assets.tiny_smollm2()[0]) * 4 / 2**20
    assert 0.8 * weights < r["at_rest_mb"] < 1.5 * weights + 8
    assert r["peak_mb"] >= r["at_rest_mb"]
