"""Contract of llmlab.posttrain.finetune: the classifier equals transformers', freezing trains
exactly what it says, training from frozen states equals training through the frozen part."""

from __future__ import annotations

import copy

import pytest
import torch

from llmlab.assets import tiny_smollm2
from llmlab.posttrain.finetune import (
    FinetuneConfig,
    SequenceClassifier,
    encode_texts,
    finetune,
    freeze,
    frozen_blocks,
    frozen_states,
    lm_loss_on_texts,
    pad_batch,
    predict,
    trainable_parameters,
)

TEXTS = [
    "Return the event loop of the current thread.",
    "Parse a header.",
    "Start a worker process and wait until it has started running its target.",
    "Run the test case.",
    "Create an element with the given tag name and attributes.",
    "Log a message with severity 'ERROR' on the root logger.",
]
LABELS = [0, 1, 2, 3, 4, 5]


@pytest.fixture(scope="module")
def tiny():
    return tiny_smollm2(seed=0)


@pytest.fixture
def model(tiny):
    lm, _ = tiny
    lm = copy.deepcopy(lm)
    torch.manual_seed(0)
    return SequenceClassifier(lm.model, 6), lm


@pytest.fixture(scope="module")
def ids(tiny):
    return encode_texts(tiny[1], TEXTS, max_tokens=12)


def test_logits_and_gradients_equal_transformers(model, ids, tiny):
    from transformers import LlamaForSequenceClassification

    classifier, lm = model
    config = copy.deepcopy(lm.config)
    config.num_labels = 6
    ref = LlamaForSequenceClassification(config)
    ref.model.load_state_dict(lm.model.state_dict())
    ref.score.weight.data.copy_(classifier.head.weight)
    x, mask = pad_batch(ids, tiny[1].pad_token_id)
    assert (mask == 0).any(), "the batch must have padding for the check to mean something"
    ours, theirs = classifier(x, mask), ref(input_ids=x, attention_mask=mask).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    y = torch.tensor(LABELS)
    torch.nn.functional.cross_entropy(ours, y).backward()
    torch.nn.functional.cross_entropy(theirs, y).backward()
    torch.testing.assert_close(classifier.head.weight.grad, ref.score.weight.grad)
    for name, p in classifier.backbone.named_parameters():
        torch.testing.assert_close(p.grad, ref.model.get_parameter(name).grad, atol=1e-5, rtol=1e-4)


def test_padding_does_not_change_a_text_logits(model, ids, tiny):
    classifier, _ = model
    x, mask = pad_batch(ids, tiny[1].pad_token_id)
    alone = torch.cat([classifier(*pad_batch([row], 0)) for row in ids])
    torch.testing.assert_close(classifier(x, mask), alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "mode, trains",
    [
        ("full", {"embed_tokens", "layers.0", "layers.1", "norm", "head"}),
        ("lower:1", {"layers.1", "norm", "head"}),
        ("lower:0", {"layers.0", "layers.1", "norm", "head"}),
        ("head", {"head"}),
    ],
)
def test_freeze_trains_exactly_the_mode(model, ids, tiny, mode, trains):
    classifier, _ = model
    freeze(classifier, mode)
    x, mask = pad_batch(ids, tiny[1].pad_token_id)
    torch.nn.functional.cross_entropy(classifier(x, mask), torch.tensor(LABELS)).backward()
    got = set()
    for name, p in classifier.named_parameters():
        part = name.removeprefix("backbone.")
        part = ".".join(part.split(".")[:2]) if part.startswith("layers.") else part.split(".")[0]
        assert (p.grad is not None) == p.requires_grad, name
        if p.requires_grad:
            got.add(part)
    assert got == trains
    expected = sum(
        p.numel()
        for n, p in classifier.named_parameters()
        if any(n.removeprefix("backbone.").startswith(t) for t in trains)
    )
    assert trainable_parameters(classifier) == expected


def test_frozen_states_continue_to_the_same_logits(model, ids, tiny):
    classifier, _ = model
    pad = tiny[1].pad_token_id
    states = frozen_states(
        classifier, ids, pad, ["lower:1", "head"], batch_size=4, precision="fp32"
    )
    assert [s.shape[0] for s in states["lower:1"]] == [len(r) for r in ids]
    full = predict(classifier, ids, pad, precision="fp32")
    assert (
        predict(classifier, ids, pad, mode="lower:1", states=states["lower:1"], precision="fp32")
        == full
    )
    assert (
        predict(classifier, ids, pad, mode="head", states=states["head"], precision="fp32") == full
    )
    x, mask = pad_batch(ids, pad)
    torch.testing.assert_close(
        classifier.head(states["head"]), classifier(x, mask), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("mode", ["lower:1", "head"])
def test_training_from_frozen_states_equals_training_through_them(tiny, ids, mode):
    """cache=True (train from frozen_states) == cache=False (every step runs the frozen part):
    the same losses, weights and predictions."""
    lm0, tok = tiny
    runs = []
    for cache in (True, False):
        lm = copy.deepcopy(lm0)
        torch.manual_seed(0)
        classifier = SequenceClassifier(lm.model, 6)
        config = FinetuneConfig(
            mode=mode, lr=1e-2, epochs=2, batch_size=4, precision="fp32", cache=cache
        )
        result = finetune(classifier, ids, LABELS, ids, LABELS, tok.pad_token_id, config)
        runs.append((result, classifier))
    (cached, a), (through, b) = runs
    assert len(cached.loss) == 4 and cached.loss[-1] != cached.loss[0]
    assert cached.loss == pytest.approx(through.loss, rel=1e-4)
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4, msg=name)
    assert not torch.equal(a.head.weight, SequenceClassifier(lm0.model, 6).head.weight)
    assert cached.predictions == through.predictions
    assert cached.trainable == through.trainable
    assert cached.peak_bytes > 0 and through.peak_bytes > 0


def test_finetune_learns_and_reports(tiny, ids):
    lm0, tok = tiny
    lm = copy.deepcopy(lm0)
    torch.manual_seed(0)
    classifier = SequenceClassifier(lm.model, 6)
    before = copy.deepcopy(classifier.state_dict())
    config = FinetuneConfig(mode="full", lr=3e-3, epochs=15, batch_size=6, precision="fp32")
    result = finetune(classifier, ids, LABELS, ids, LABELS, tok.pad_token_id, config)
    assert result.accuracy == 1.0  # six texts memorised: the loop trains
    assert result.loss[-1] < result.loss[0] / 4
    assert result.steps == 15 and result.trainable == result.total == trainable_parameters(
        classifier
    )
    assert result.peak_bytes > result.total * 4  # the weights and more
    assert result.step_seconds > 0
    assert any(not torch.equal(before[k], v) for k, v in classifier.state_dict().items())


def test_adapters_mode_trains_the_injected_adapters_and_the_head(tiny, ids):
    from llmlab.posttrain.lora import inject_lora, lora_layers

    lm0, tok = tiny
    lm = copy.deepcopy(lm0)
    classifier = SequenceClassifier(lm.model, 6)
    with pytest.raises(ValueError, match="adapters.*inject"):
        freeze(classifier, "adapters")  # nothing injected: the error says what to do
    inject_lora(classifier.backbone, ("q_proj", "v_proj"), r=2, alpha=4, seed=0)
    frozen = {n: p.clone() for n, p in classifier.named_parameters() if not p.requires_grad}
    config = FinetuneConfig(mode="adapters", lr=1e-2, epochs=3, batch_size=3, precision="fp32")
    result = finetune(classifier, ids, LABELS, ids, LABELS, tok.pad_token_id, config)
    names = {n for n, p in classifier.named_parameters() if p.requires_grad}
    assert names == {"head.weight"} | {
        f"backbone.{layer}.lora_{ab}.weight"
        for layer in lora_layers(classifier.backbone)
        for ab in "AB"
    }
    assert result.trainable == trainable_parameters(classifier) < result.total / 10
    assert all(torch.equal(p, frozen[n]) for n, p in classifier.named_parameters() if n in frozen)
    assert any(
        layer.lora_B.weight.abs().sum() > 0 for layer in lora_layers(classifier.backbone).values()
    )


def test_head_only_leaves_the_language_model_alone(tiny, ids):
    lm0, tok = tiny
    lm = copy.deepcopy(lm0)
    classifier = SequenceClassifier(lm.model, 6)
    loss_before = lm_loss_on_texts(lm, ids, tok.pad_token_id, precision="fp32")
    config = FinetuneConfig(mode="head", lr=1e-2, epochs=3, batch_size=3, precision="fp32")
    finetune(classifier, ids, LABELS, ids, LABELS, tok.pad_token_id, config, measure_memory=False)
    assert lm_loss_on_texts(lm, ids, tok.pad_token_id, precision="fp32") == loss_before
    full = SequenceClassifier(lm.model, 6)
    config = FinetuneConfig(mode="full", lr=1e-2, epochs=3, batch_size=3, precision="fp32")
    finetune(full, ids, LABELS, ids, LABELS, tok.pad_token_id, config, measure_memory=False)
    assert lm_loss_on_texts(lm, ids, tok.pad_token_id, precision="fp32") != loss_before


def test_lm_loss_equals_transformers_loss(tiny, ids):
    lm, tok = tiny
    ours = lm_loss_on_texts(lm, ids[:1], tok.pad_token_id, precision="fp32")
    x = torch.tensor(ids[:1])
    theirs = lm(input_ids=x, labels=x).loss.item()
    assert ours == pytest.approx(theirs, rel=1e-5)


@pytest.mark.parametrize("mode", ["lower", "lower:-1", "lower:3", "top:1", "", None, "adapter"])
def test_bad_modes_are_named(mode):
    with pytest.raises(ValueError, match="mode"):
        frozen_blocks(mode, 2)


def test_input_errors_name_the_argument(model, ids, tiny):
    classifier, lm = model
    pad = tiny[1].pad_token_id
    with pytest.raises(ValueError, match="n_classes"):
        SequenceClassifier(lm.model, 1)
    with pytest.raises(TypeError, match="backbone"):
        SequenceClassifier(lm, 6)  # the causal LM, not its backbone
    with pytest.raises(ValueError, match="max_tokens"):
        encode_texts(tiny[1], TEXTS, 0)
    with pytest.raises(ValueError, match="lr"):
        FinetuneConfig(lr=0)
    with pytest.raises(ValueError, match="epochs"):
        FinetuneConfig(epochs=0)
    with pytest.raises(ValueError, match="precision"):
        FinetuneConfig(precision="fp16")
    with pytest.raises(ValueError, match="labels"):
        finetune(classifier, ids, LABELS[:-1], ids, LABELS, pad, FinetuneConfig())
    with pytest.raises(ValueError, match="labels"):
        finetune(classifier, ids, [9] * 6, ids, LABELS, pad, FinetuneConfig())
    with pytest.raises(ValueError, match="modes"):
        frozen_states(classifier, ids, pad, ["full"])
    with pytest.raises(ValueError, match="states"):
        finetune(
            classifier,
            ids,
            LABELS,
            ids,
            LABELS,
            pad,
            FinetuneConfig(mode="head"),
            states={"head": torch.zeros(3, 64)},
        )
