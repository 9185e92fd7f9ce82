"""llmlab.posttrain.soft_prompts: verbalised classification, prompt tuning and prefix tuning.

Parity with peft uses non-trivial soft prompts (random draws scaled like trained ones, never
peft's zero or default state alone), loads ours through peft's own adapter loader (which also
proves the layout of our flat prefix is peft's), and compares the logits of the real tokens,
the LM loss with labels, and the gradients of every trainable tensor. The ``text``
initialisations are checked twice: equal to peft's, and equal to the hard prompt they stand for.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F

from llmlab import results
from llmlab.posttrain.soft_prompts import (
    PrefixTuning,
    PromptTuning,
    build_prompt,
    class_logits,
    label_token_ids,
    load_peft_state_dict,
    peft_state_dict,
    text_init_ids,
    train_soft_prompt,
    trainable_parameters,
)

peft = pytest.importorskip("peft")

PACKAGES = ("asyncio", "email", "logging", "multiprocessing", "unittest", "xml")
TEMPLATE = "Docstring: {text}\nPackage:"
TEXTS = (
    "Run the event loop until the future is done.",
    "Return the message headers.",
    "Log a message with severity ERROR on the root logger.",
    "Start the worker process.",
    "Fail if the two objects are unequal.",
    "Parse an XML document into an element tree.",
)
INIT_TEXT = "Which standard library package wrote this docstring?"


@pytest.fixture(scope="module")
def tiny():
    from llmlab.assets import tiny_smollm2

    return tiny_smollm2(seed=0)


@pytest.fixture
def model(tiny):
    return copy.deepcopy(tiny[0])


@pytest.fixture(scope="module")
def tokenizer(tiny):
    return tiny[1]


@pytest.fixture(scope="module")
def label_ids(tokenizer):
    return label_token_ids(tokenizer, PACKAGES)


def _peft(model, config):
    with warnings.catch_warnings():  # transformers' deprecation notices, raised inside peft
        warnings.simplefilter("ignore", FutureWarning)
        return peft.get_peft_model(model, config)


def _rows(tokenizer, texts=TEXTS[:3]):
    return [tokenizer(build_prompt(t, TEMPLATE))["input_ids"] for t in texts]


def _padded(rows, side="right", pad_id=2):
    """(ids, mask, positions) for rows of different lengths padded on ``side``."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        cols = slice(0, len(row)) if side == "right" else slice(width - len(row), width)
        ids[i, cols], mask[i, cols] = torch.tensor(row), 1
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def _real(logits, mask):
    """The real tokens' logits of a padded batch, (real_tokens, vocab)."""
    return logits[mask.bool()]


# --------------------------------------------------------------------------------------------
# Verbalised classification


def test_label_tokens_are_single_and_distinct(tokenizer, label_ids):
    for name, token in zip(PACKAGES, label_ids, strict=True):
        assert tokenizer(" " + name, add_special_tokens=False)["input_ids"] == [token]
    assert len(set(label_ids)) == 6


def test_label_of_several_tokens_is_scored_by_its_first(tokenizer):
    ids = tokenizer(" docstringology", add_special_tokens=False)["input_ids"]
    assert len(ids) > 1
    assert label_token_ids(tokenizer, ["asyncio", "docstringology"])[1] == ids[0]


def test_label_errors_name_the_argument(tokenizer):
    with pytest.raises(ValueError, match="label_names: expected labels whose first tokens differ"):
        label_token_ids(tokenizer, ["asyncio", "asyncio2"])
    with pytest.raises(TypeError, match="label_names"):
        label_token_ids(tokenizer, "asyncio")
    with pytest.raises(ValueError, match="label_names"):
        label_token_ids(tokenizer, [])


def test_build_prompt_zero_and_few_shot():
    assert build_prompt("Run it.", TEMPLATE) == "Docstring: Run it.\nPackage:"
    few = build_prompt("Run it.", TEMPLATE, [("Log it.", "logging"), ("Mail it.", "email")])
    assert few == (
        "Docstring: Log it.\nPackage: logging\n\n"
        "Docstring: Mail it.\nPackage: email\n\n"
        "Docstring: Run it.\nPackage:"
    )
    assert build_prompt("{x}", TEMPLATE) == "Docstring: {x}\nPackage:"  # braces in text are kept


def test_build_prompt_errors_name_the_argument():
    with pytest.raises(ValueError, match="template: expected a string holding"):
        build_prompt("x", "Docstring:\nPackage:")
    with pytest.raises(ValueError, match="template: expected no trailing whitespace"):
        build_prompt("x", TEMPLATE + " ")
    with pytest.raises(TypeError, match=r"examples\[0\]"):
        build_prompt("x", TEMPLATE, [("only text",)])


def test_class_logits_are_the_lm_logits_of_the_label_tokens(model, tokenizer, label_ids):
    prompt = build_prompt(TEXTS[0], TEMPLATE)
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    with torch.no_grad():
        expected = model(input_ids=ids).logits[0, -1, label_ids]
    got = class_logits(model, tokenizer, [prompt], label_ids, precision="fp32")
    assert got.shape == (1, 6)
    torch.testing.assert_close(got[0], expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["plain", "prompt", "prefix"])
def test_batched_class_logits_equal_one_at_a_time_left_and_right(model, tokenizer, label_ids, kind):
    torch.manual_seed(0)
    if kind == "prompt":
        model = PromptTuning(model, 4)
    elif kind == "prefix":
        model = PrefixTuning(model, 3)
    prompts = [build_prompt(t, TEMPLATE) for t in TEXTS[:5]]
    alone = torch.cat(
        [class_logits(model, tokenizer, [p], label_ids, precision="fp32") for p in prompts]
    )
    for side in ("left", "right"):
        batched = class_logits(
            model, tokenizer, prompts, label_ids, batch_size=3, padding_side=side, precision="fp32"
        )
        torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)


def test_class_logits_errors_name_the_argument(model, tokenizer, label_ids):
    prompts = [build_prompt(TEXTS[0], TEMPLATE)]
    with pytest.raises(ValueError, match="label_ids"):
        class_logits(model, tokenizer, prompts, [label_ids[0]])
    with pytest.raises(ValueError, match="label_ids"):
        class_logits(model, tokenizer, prompts, [0, 10**6])
    with pytest.raises(ValueError, match="padding_side"):
        class_logits(model, tokenizer, prompts, label_ids, padding_side="middle")
    with pytest.raises(ValueError, match="precision"):
        class_logits(model, tokenizer, prompts, label_ids, precision="fp8")
    with pytest.raises(TypeError, match="prompts"):
        class_logits(model, tokenizer, prompts[0], label_ids)
    with pytest.raises(ValueError, match="batch_size"):
        class_logits(model, tokenizer, prompts, label_ids, batch_size=0)


# --------------------------------------------------------------------------------------------
# Prompt tuning


def test_prompt_tuning_freezes_all_but_the_prompt(model):
    wrapper = PromptTuning(model, 7)
    assert [n for n, p in wrapper.named_parameters() if p.requires_grad] == ["prompt"]
    assert trainable_parameters(wrapper) == 7 * model.config.hidden_size


@pytest.mark.parametrize("init", ["random", "text"])
def test_prompt_tuning_init_equals_peft(model, tokenizer, init):
    from peft import PromptTuningConfig, PromptTuningInit

    rule = {"random": "RANDOM", "text": "TEXT"}[init]
    config = PromptTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=13,  # more than the init text's tokens: repeated, then cut
        prompt_tuning_init=PromptTuningInit[rule],
        prompt_tuning_init_text=INIT_TEXT,
        tokenizer_name_or_path=tokenizer.name_or_path,
    )
    torch.manual_seed(3)
    theirs = _peft(copy.deepcopy(model), config).prompt_encoder["default"].embedding.weight
    torch.manual_seed(3)
    ours = PromptTuning(model, 13, init=init, text=INIT_TEXT, tokenizer=tokenizer).prompt
    assert torch.equal(ours, theirs)


def test_vocab_init_is_the_embeddings_of_random_tokens(model):
    # peft's SAMPLE_VOCAB draws the same ids, after a discarded N(0, 1) draw of nn.Embedding
    torch.manual_seed(4)
    ids = torch.randint(0, model.config.vocab_size, (6,))
    torch.manual_seed(4)
    ours = PromptTuning(model, 6, init="vocab").prompt
    assert torch.equal(ours, model.get_input_embeddings().weight[ids])


def test_text_init_ids_repeat_then_cut(tokenizer):
    ids = tokenizer("Which package?")["input_ids"]
    assert text_init_ids(tokenizer, "Which package?", 2) == ids[:2]
    assert text_init_ids(tokenizer, "Which package?", 2 * len(ids) + 1) == ids * 2 + ids[:1]


def test_prompt_tuning_text_init_is_the_hard_prompt(model, tokenizer):
    n = len(tokenizer(INIT_TEXT)["input_ids"])
    wrapper = PromptTuning(model, n, init="text", text=INIT_TEXT, tokenizer=tokenizer)
    row = _rows(tokenizer)[0]
    with torch.no_grad():
        soft = wrapper(torch.tensor([row])).logits
        hard = model(input_ids=torch.tensor([tokenizer(INIT_TEXT)["input_ids"] + row])).logits
    torch.testing.assert_close(soft, hard[:, n:], atol=1e-5, rtol=0)


def _trained_looking(wrapper, seed=1):
    """Soft parameters away from their initial values, at the scale of real embeddings."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in wrapper.parameters():
            if p.requires_grad:
                p.copy_(0.5 * p + 0.1 * torch.randn(p.shape, generator=g))


def _parity(ours, twin, ids, mask, positions, labels, n, peft_params, our_params, offset):
    """Equal real-token logits, LM loss and gradients of the soft parameters (atol 1e-5)."""
    g = torch.Generator().manual_seed(7)
    out = ours(ids, mask, position_ids=positions, labels=labels)
    ref = twin(input_ids=ids, attention_mask=mask, position_ids=positions, labels=labels)
    ref_logits = ref.logits[:, n:] if offset else ref.logits
    torch.testing.assert_close(_real(out.logits, mask), _real(ref_logits, mask), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-5, rtol=0)
    weights = torch.randn(out.logits.shape, generator=g) * mask[..., None]
    (out.loss + (out.logits * weights).sum() / 100).backward()
    (ref.loss + (ref_logits * weights).sum() / 100).backward()
    for mine, theirs in zip(our_params, peft_params, strict=True):
        assert mine.grad.abs().max() > 0
        torch.testing.assert_close(mine.grad, theirs.grad, atol=1e-5, rtol=1e-4)


def test_prompt_tuning_equals_peft_logits_loss_and_gradients(model, tokenizer):
    from peft import PromptTuningConfig

    torch.manual_seed(0)
    ours = PromptTuning(copy.deepcopy(model), 5, init="vocab")
    _trained_looking(ours)
    twin = _peft(model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5))
    peft.set_peft_model_state_dict(twin, peft_state_dict(ours))
    encoder = twin.prompt_encoder["default"]
    assert torch.equal(encoder.embedding.weight, ours.prompt)
    ids, mask, _ = _padded(_rows(tokenizer), "right")  # peft ignores position ids here
    labels = ids.masked_fill(mask == 0, -100)
    _parity(ours, twin, ids, mask, None, labels, 5, [encoder.embedding.weight], [ours.prompt], True)


# --------------------------------------------------------------------------------------------
# Prefix tuning


def test_prefix_has_the_kv_heads_shape_and_freezes_the_model(model):
    wrapper = PrefixTuning(model, 4)
    config = model.config  # the tiny model has grouped-query attention too: 4 heads, 2 KV heads
    assert config.num_key_value_heads < config.num_attention_heads
    kv = wrapper.key_values()
    assert kv.shape == (config.num_hidden_layers, 2, config.num_key_value_heads, 4, config.head_dim)
    assert [n for n, p in wrapper.named_parameters() if p.requires_grad] == ["prefix"]
    assert trainable_parameters(wrapper) == 4 * 2 * 2 * 2 * 16
    projected = PrefixTuning(model, 4, projection=True, hidden_size=24)
    names = [n for n, p in projected.named_parameters() if p.requires_grad]
    assert names == ["embedding", "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"]
    assert projected.key_values().shape == kv.shape


@pytest.mark.parametrize("projection", [False, True])
def test_prefix_random_init_equals_peft_with_the_same_seed(model, projection):
    from peft import PrefixTuningConfig

    config = PrefixTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=4,
        prefix_projection=projection,
        encoder_hidden_size=24,
    )
    torch.manual_seed(5)
    encoder = _peft(copy.deepcopy(model), config).prompt_encoder["default"]
    torch.manual_seed(5)
    ours = PrefixTuning(model, 4, projection=projection, hidden_size=24 if projection else None)
    theirs = [p for _, p in sorted(encoder.named_parameters())]
    mine = [p for _, p in sorted(ours.named_parameters()) if p.requires_grad]
    assert len(mine) == len(theirs) == (5 if projection else 1)
    for a, b in zip(mine, theirs, strict=True):
        assert torch.equal(a, b)


def test_prefix_text_init_is_the_hard_prompt(model, tokenizer):
    n = len(tokenizer(INIT_TEXT)["input_ids"])
    wrapper = PrefixTuning(model, n, init="text", text=INIT_TEXT, tokenizer=tokenizer)
    rows = _rows(tokenizer)
    ids, mask, positions = _padded(rows, "left")
    with torch.no_grad():
        soft = wrapper(ids, mask, position_ids=positions).logits
        for i, row in enumerate(rows):
            hard = model(input_ids=torch.tensor([tokenizer(INIT_TEXT)["input_ids"] + row])).logits
            torch.testing.assert_close(soft[i, -len(row) :], hard[0, n:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("side", ["right", "left"])
def test_prefix_tuning_equals_peft_logits_loss_and_gradients(model, tokenizer, side):
    from peft import PrefixTuningConfig

    torch.manual_seed(0)
    ours = PrefixTuning(copy.deepcopy(model), 3)
    _trained_looking(ours)
    twin = _peft(model, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
    peft.set_peft_model_state_dict(twin, peft_state_dict(ours))
    encoder = twin.prompt_encoder["default"]
    assert torch.equal(encoder.embedding.weight, ours.prefix)
    ids, mask, positions = _padded(_rows(tokenizer), side)  # peft shifts position ids by n too
    labels = ids.masked_fill(mask == 0, -100)
    _parity(
        ours,
        twin,
        ids,
        mask,
        positions,
        labels,
        3,
        [encoder.embedding.weight],
        [ours.prefix],
        False,
    )


def test_prefix_projection_equals_peft_logits_loss_and_gradients(model, tokenizer):
    from peft import PrefixTuningConfig

    torch.manual_seed(0)
    ours = PrefixTuning(copy.deepcopy(model), 3, projection=True, hidden_size=24)
    _trained_looking(ours)
    config = PrefixTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=3, prefix_projection=True, encoder_hidden_size=24
    )
    twin = _peft(model, config)
    encoder = twin.prompt_encoder["default"]
    names = {"embedding": "embedding.weight", "mlp.0.weight": "transform.0.weight"}
    names |= {"mlp.0.bias": "transform.0.bias", "mlp.2.weight": "transform.2.weight"}
    names["mlp.2.bias"] = "transform.2.bias"
    encoder.load_state_dict({names[k]: v for k, v in ours.named_parameters() if k in names})
    ids, mask, _ = _padded(_rows(tokenizer), "right")
    labels = ids.masked_fill(mask == 0, -100)
    theirs = [encoder.get_parameter(names[k]) for k in names]
    mine = [ours.get_parameter(k) for k in names]
    _parity(ours, twin, ids, mask, None, labels, 3, theirs, mine, False)


def test_peft_saved_prefix_loads_into_ours(model, tokenizer):
    """peft's own saved state (from a projected prefix) -> our plain prefix: same logits."""
    from peft import PrefixTuningConfig

    torch.manual_seed(0)
    config = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3, prefix_projection=True)
    twin = _peft(copy.deepcopy(model), config)
    state = peft.get_peft_model_state_dict(twin)
    ours = load_peft_state_dict(PrefixTuning(model, 3), state)
    ids, mask, _ = _padded(_rows(tokenizer), "right")
    with torch.no_grad():
        torch.testing.assert_close(
            _real(ours(ids, mask).logits, mask),
            _real(twin(input_ids=ids, attention_mask=mask).logits, mask),
            atol=1e-5,
            rtol=0,
        )
    with pytest.raises(ValueError, match="projection=True"):
        load_peft_state_dict(PrefixTuning(model, 3, projection=True), state)
    with pytest.raises(ValueError, match="state: expected 'prompt_embeddings' of shape"):
        load_peft_state_dict(PrefixTuning(model, 4), state)


def test_wrapper_errors_name_the_argument(model, tokenizer):
    with pytest.raises(ValueError, match="n_virtual"):
        PromptTuning(model, 0)
    with pytest.raises(ValueError, match="init"):
        PromptTuning(model, 2, init="zeros")
    with pytest.raises(ValueError, match="tokenizer"):
        PromptTuning(model, 2, init="text", text="hello")
    with pytest.raises(ValueError, match="text"):
        PrefixTuning(model, 2, init="text", tokenizer=tokenizer)
    with pytest.raises(ValueError, match="init"):
        PrefixTuning(model, 2, projection=True, init="text", text="hi", tokenizer=tokenizer)
    with pytest.raises(ValueError, match="hidden_size"):
        PrefixTuning(model, 2, hidden_size=8)
    with pytest.raises(TypeError, match="model"):
        PromptTuning(torch.nn.Linear(2, 2), 2)
    with pytest.raises(TypeError, match="wrapper"):
        peft_state_dict(model)


# --------------------------------------------------------------------------------------------
# Training


def _mean_loss(wrapper, tokenizer, prompts, labels, label_ids):
    scores = class_logits(wrapper, tokenizer, prompts, label_ids, precision="fp32")
    return F.cross_entropy(scores, torch.tensor(labels)).item()


@pytest.mark.parametrize(
    "make",
    [lambda m: PromptTuning(m, 4), lambda m: PrefixTuning(m, 2, projection=True)],
    ids=["prompt", "prefix-projection"],
)
def test_training_lowers_the_loss_and_changes_only_the_soft_prompt(
    model, tokenizer, label_ids, make
):
    torch.manual_seed(0)
    wrapper = make(model)
    prompts = [build_prompt(t, TEMPLATE) for t in TEXTS]
    # A shared soft prompt cannot tell texts apart in a random model: it learns the prior of
    # unbalanced labels (the loss can fall from about ln 6 towards their entropy, 0.64).
    labels = [2, 2, 2, 2, 5, 5]
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    soft = {k: p.detach().clone() for k, p in wrapper.named_parameters() if p.requires_grad}
    before = _mean_loss(wrapper, tokenizer, prompts, labels, label_ids)
    result = train_soft_prompt(
        wrapper,
        tokenizer,
        prompts,
        labels,
        label_ids,
        lr=0.3,
        epochs=5,
        batch_size=3,
        precision="fp32",
        test_prompts=prompts,
        test_labels=labels,
    )
    after = _mean_loss(wrapper, tokenizer, prompts, labels, label_ids)
    assert after < before - 0.15, (before, after)
    assert result.steps == 10 and len(result.loss) == 10
    assert (
        result.trainable == trainable_parameters(wrapper) == sum(p.numel() for p in soft.values())
    )
    assert result.total == result.trainable + sum(p.numel() for p in model.parameters())
    scores = class_logits(wrapper, tokenizer, prompts, label_ids, precision="fp32")
    assert result.predictions == scores.argmax(-1).tolist()
    assert (
        result.accuracy == sum(p == y for p, y in zip(result.predictions, labels, strict=True)) / 6
    )
    assert result.step_seconds > 0 and result.train_seconds >= result.step_seconds
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in frozen.items())
    assert all(not torch.equal(p, soft[k]) for k, p in wrapper.named_parameters() if k in soft)
    assert not wrapper.training


def test_training_errors_name_the_argument(model, tokenizer, label_ids):
    wrapper = PromptTuning(model, 2)
    prompts = [build_prompt(t, TEMPLATE) for t in TEXTS[:2]]
    with pytest.raises(ValueError, match="train_labels: expected one label per prompt"):
        train_soft_prompt(wrapper, tokenizer, prompts, [0], label_ids)
    with pytest.raises(ValueError, match="train_labels: expected class indices"):
        train_soft_prompt(wrapper, tokenizer, prompts, [0, 6], label_ids)
    with pytest.raises(ValueError, match="lr"):
        train_soft_prompt(wrapper, tokenizer, prompts, [0, 1], label_ids, lr=0)
    with pytest.raises(ValueError, match="test_prompts, test_labels"):
        train_soft_prompt(wrapper, tokenizer, prompts, [0, 1], label_ids, test_prompts=prompts)
    with pytest.raises(ValueError, match="wrapper: expected some parameters"):
        train_soft_prompt(model, tokenizer, prompts, [0, 1], label_ids)


def test_soft_prompt_saves_and_loads_through_the_results_cache(
    model, tokenizer, monkeypatch, tmp_path
):
    monkeypatch.setenv("LLMLAB_CACHE", str(tmp_path))
    torch.manual_seed(0)
    trained = PromptTuning(copy.deepcopy(model), 3)
    results.save_tensors("04_post_training/test_prompt", peft_state_dict(trained))
    fresh = load_peft_state_dict(
        PromptTuning(model, 3, init="vocab"), results.load_tensors("04_post_training/test_prompt")
    )
    assert torch.equal(fresh.prompt, trained.prompt)
