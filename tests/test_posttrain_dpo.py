"""llmlab.posttrain.logprobs and llmlab.posttrain.dpo: sequence log-probs, chat masks, KL, DPO.

The DPO loss is compared with trl 1.16's own computation: a real ``DPOTrainer`` built offline
on a tiny random SmolLM2-shaped model and a 2-row conversational data set, whose
``compute_loss`` runs on trl's collated batch; our ``dpo_batch_loss`` runs on the same batch.
Losses and the gradients of every policy weight must agree, for each loss type.
"""

from __future__ import annotations

import copy
import re
import tempfile

import pytest
import torch

from llmlab.assets import tiny_smollm2
from llmlab.models import Llama
from llmlab.posttrain.dpo import (
    LOSS_TYPES,
    dpo_batch_loss,
    dpo_loss,
    precompute_reference_logps,
)
from llmlab.posttrain.logprobs import (
    _chat_pair,
    kl_to_reference,
    preference_batch,
    sequence_logprobs,
    token_logprobs,
)
from llmlab.posttrain.sft import format_example

PROMPTS = ["What is 2+2?", "Name a colour."]
CHOSEN = ["4", "Blue, like the sky."]
REJECTED = ["5, I think", "Seven."]
SYSTEM = "Be brief."  # shorter than SmolLM2's default system turn: faster tests


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = tiny_smollm2(seed=0)
    return model, tokenizer


@pytest.fixture(scope="module")
def policy_and_ref(tiny):
    """A policy and a reference that differ a little (the reference plus noise), as after
    some training: log-ratios are small but not zero."""
    ref, tokenizer = tiny
    policy = copy.deepcopy(ref)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return policy, ref, tokenizer


def _conversational(n: int = 2):
    from datasets import Dataset

    return Dataset.from_dict(
        {
            "prompt": [
                [{"role": "system", "content": SYSTEM}, {"role": "user", "content": p}]
                for p in PROMPTS[:n]
            ],
            "chosen": [[{"role": "assistant", "content": c}] for c in CHOSEN[:n]],
            "rejected": [[{"role": "assistant", "content": r}] for r in REJECTED[:n]],
        }
    )


def _trainer(policy, ref, tokenizer, n_pairs: int = 2, **config):
    """Fresh copies of the two models, a real trl DPOTrainer on them (CPU, offline, no
    logging) and one collated batch: ``(trainer, policy, ref, batch)``.

    A trainer patches its models (a fused LM head); a second trainer built on the same model
    objects computes slightly different reference log-probs, so each gets its own copies.
    """
    from trl import DPOConfig, DPOTrainer

    policy, ref = copy.deepcopy(policy), copy.deepcopy(ref)

    args = DPOConfig(
        output_dir=tempfile.mkdtemp(),
        report_to=[],
        use_cpu=True,
        bf16=False,  # trl's default (True) makes accelerate wrap the reference in bf16 autocast
        logging_strategy="no",
        save_strategy="no",
        disable_tqdm=True,
        **config,
    )
    trainer = DPOTrainer(
        model=policy,
        ref_model=ref,
        args=args,
        train_dataset=_conversational(n_pairs),
        processing_class=tokenizer,
    )
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(n_pairs)])
    return trainer, policy, ref, batch


def _assert_same_gradients(model, mine, theirs):
    """d mine / d w == d theirs / d w for every weight of ``model``, to float32 summation
    order (trl's fused LM head adds up in tiles, ours runs the head on the completion's rows
    at once): 3e-4 of the largest entry (measured: up to 1.8e-4, in the tied embedding)."""
    params = [p for p in model.parameters() if p.requires_grad]
    g_mine = torch.autograd.grad(mine, params, retain_graph=True)
    g_theirs = torch.autograd.grad(theirs, params)
    for name, a, b in zip(
        [n for n, p in model.named_parameters() if p.requires_grad], g_mine, g_theirs, strict=True
    ):
        assert b.abs().max() > 0, name
        assert (a - b).abs().max() <= 3e-4 * b.abs().max(), name


# --------------------------------------------------------------------------------------------
# DPO against trl


TRL_CASES = [
    ("sigmoid", {"beta": 1.0}, {}),
    ("ipo", {"beta": 0.5}, {}),
    ("hinge", {"beta": 0.5}, {}),
    ("robust", {"beta": 0.5, "label_smoothing": 0.2}, {"label_smoothing": 0.2}),
]


@pytest.mark.parametrize(("loss_type", "config", "ours"), TRL_CASES)
def test_dpo_loss_and_gradients_equal_trl(policy_and_ref, loss_type, config, ours):
    policy, ref, tokenizer = policy_and_ref
    trainer, policy, ref, batch = _trainer(policy, ref, tokenizer, loss_type=[loss_type], **config)
    policy.train()
    theirs = trainer.compute_loss(policy, dict(batch))
    [with_ref] = precompute_reference_logps(ref, [batch])
    mine, chosen_rewards, rejected_rewards = dpo_batch_loss(
        policy, with_ref, beta=config["beta"], loss_type=loss_type, **ours
    )
    assert 0.05 < mine.item() and torch.allclose(mine, theirs, atol=1e-6, rtol=1e-5)
    _assert_same_gradients(policy, mine, theirs)
    # the implicit rewards trl logs
    metrics = trainer._metrics["train"]
    assert chosen_rewards.mean().item() == pytest.approx(metrics["rewards/chosen"][-1], rel=1e-4)
    margin = (chosen_rewards - rejected_rewards).mean().item()
    assert margin == pytest.approx(metrics["rewards/margins"][-1], rel=1e-4)


def test_conservative_dpo_equals_trl_aot_on_one_pair(policy_and_ref):
    # trl 1.16's "sigmoid" has no label smoothing; its "aot" keeps the conservative form
    # -(1 - eps) log sigmoid(beta z) - eps log sigmoid(-beta z) after sorting the batch's
    # log-ratios, which is the identity for a single pair.
    policy, ref, tokenizer = policy_and_ref
    cfg = {"beta": 1.0, "label_smoothing": 0.3}
    trainer, policy, ref, batch = _trainer(
        policy, ref, tokenizer, n_pairs=1, loss_type=["aot"], **cfg
    )
    theirs = trainer.compute_loss(policy, dict(batch))
    [with_ref] = precompute_reference_logps(ref, [batch])
    mine, _, _ = dpo_batch_loss(policy, with_ref, loss_type="sigmoid", **cfg)
    plain, _, _ = dpo_batch_loss(policy, with_ref, beta=1.0)
    assert not torch.allclose(mine, plain)  # the smoothing changes the loss
    assert torch.allclose(mine, theirs, atol=1e-6, rtol=1e-5)
    _assert_same_gradients(policy, mine, theirs)


def test_precomputed_reference_logps_equal_trl(policy_and_ref):
    policy, ref, tokenizer = policy_and_ref
    trainer, policy, ref, batch = _trainer(policy, ref, tokenizer)
    theirs_c, theirs_r = trainer.compute_ref_log_probs(ref, dict(batch))
    [with_ref] = precompute_reference_logps(ref, [batch])
    assert not with_ref["ref_chosen_logps"].requires_grad
    assert torch.allclose(with_ref["ref_chosen_logps"], theirs_c, atol=1e-5)
    assert torch.allclose(with_ref["ref_rejected_logps"], theirs_r, atol=1e-5)
    assert set(batch) < set(with_ref) and "ref_chosen_logps" not in batch  # a new dict


# --------------------------------------------------------------------------------------------
# The loss from its definition


def _logps(seed: int, pairs: int = 6):
    gen = torch.Generator().manual_seed(seed)
    return [-20 * torch.rand(pairs, generator=gen, dtype=torch.float64) for _ in range(4)]


def test_gradient_is_the_closed_form():
    pc, pr, rc, rr = _logps(0)
    pc.requires_grad_(True)
    pr.requires_grad_(True)
    beta = 0.3
    losses, _, _ = dpo_loss(pc, pr, rc, rr, beta=beta)
    losses.sum().backward()
    z = (pc - rc) - (pr - rr)
    expected = -beta * torch.sigmoid(-beta * z.detach())
    assert torch.allclose(pc.grad, expected) and torch.allclose(pr.grad, -expected)
    assert (pc.grad < 0).all()  # descending the loss raises the chosen log-prob


def test_loss_at_the_reference_is_log_2_and_rewards_are_beta_log_ratios():
    pc, pr, _, _ = _logps(1)
    losses, chosen_rewards, rejected_rewards = dpo_loss(pc, pr, pc.clone(), pr.clone())
    assert torch.allclose(losses, torch.full_like(losses, torch.log(torch.tensor(2.0)).item()))
    assert (chosen_rewards == 0).all() and (rejected_rewards == 0).all()
    pc, pr, rc, rr = _logps(2)
    _, chosen_rewards, rejected_rewards = dpo_loss(pc, pr, rc, rr, beta=0.25)
    assert torch.allclose(chosen_rewards, 0.25 * (pc - rc))
    assert torch.allclose(rejected_rewards, 0.25 * (pr - rr))


def test_ipo_is_zero_at_its_target_margin():
    beta = 0.5
    pc = torch.tensor([0.0, -1.0])
    rc = torch.zeros(2)
    rr = torch.zeros(2)
    pr = pc - 1 / (2 * beta)  # z = 1 / (2 beta)
    losses, _, _ = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type="ipo")
    assert torch.allclose(losses, torch.zeros(2))


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"beta": 0.0}, ValueError, "beta: expected a positive number"),
        ({"beta": "0.1"}, TypeError, "beta: expected a number"),
        ({"label_smoothing": 0.5}, ValueError, "label_smoothing: expected a number in [0, 0.5)"),
        ({"loss_type": "kto"}, ValueError, "loss_type: expected one of"),
        ({"loss_type": "ipo", "label_smoothing": 0.1}, ValueError, "'ipo' has no label smoothing"),
    ],
)
def test_dpo_loss_rejects_bad_settings(kwargs, error, words):
    with pytest.raises(error, match=re.escape(words)):
        dpo_loss(*_logps(0), **kwargs)


def test_dpo_loss_rejects_mismatched_shapes():
    pc, pr, rc, rr = _logps(0)
    with pytest.raises(ValueError, match="ref_rejected_logps: expected the shape"):
        dpo_loss(pc, pr, rc, rr[:3])
    with pytest.raises(ValueError, match=r"policy_chosen_logps: expected shape \(pairs,\)"):
        dpo_loss(pc[None], pr, rc, rr)
    with pytest.raises(TypeError, match="ref_chosen_logps: expected a torch.Tensor"):
        dpo_loss(pc, pr, rc.tolist(), rr)
    assert set(LOSS_TYPES) == {"sigmoid", "robust", "ipo", "hinge"}


def test_dpo_batch_loss_needs_reference_logps(tiny):
    model, tokenizer = tiny
    batch = preference_batch(tokenizer, PROMPTS, CHOSEN, REJECTED)
    with pytest.raises(ValueError, match="run precompute_reference_logps first"):
        dpo_batch_loss(model, batch)


def test_thirty_dpo_steps_raise_the_implicit_reward_margin(tiny):
    ref, tokenizer = tiny
    policy = copy.deepcopy(ref).train()
    batches = precompute_reference_logps(
        ref, [preference_batch(tokenizer, PROMPTS, CHOSEN, REJECTED, system=SYSTEM)]
    )
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    margins, accuracies = [], []
    for _ in range(30):
        loss, chosen_rewards, rejected_rewards = dpo_batch_loss(policy, batches[0], beta=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        margins.append((chosen_rewards - rejected_rewards).mean().item())
        accuracies.append((chosen_rewards > rejected_rewards).float().mean().item())
    assert margins[0] == pytest.approx(0.0, abs=1e-6)  # the policy starts as the reference
    assert margins[-1] > 1.0 and accuracies[-1] == 1.0, margins


# --------------------------------------------------------------------------------------------
# Sequence log-probs


def _direct(model, rows, masks):
    """Each row alone, unpadded: log_softmax of the logits, gathered at the next token."""
    out = []
    for ids, mask in zip(rows, masks, strict=True):
        ids_t = torch.tensor([ids])
        output = model(ids_t)
        logits = getattr(output, "logits", output)
        logp = torch.log_softmax(logits[0, :-1].float(), -1)
        per_token = logp[torch.arange(len(ids) - 1), ids_t[0, 1:]]
        out.append(per_token[torch.tensor(mask[1:]).bool()].sum())
    return torch.stack(out)


def _rows(tokenizer):
    pairs = [_chat_pair(tokenizer, p, c) for p, c in zip(PROMPTS, CHOSEN, strict=True)]
    pairs.append(_chat_pair(tokenizer, "Write a long answer, please.", "Here it is: " + "la " * 9))
    return [ids for ids, _ in pairs], [mask for _, mask in pairs]


@pytest.mark.parametrize("side", ["left", "right"])
def test_sequence_logprobs_equal_a_direct_gather(tiny, side):
    model, tokenizer = tiny
    rows, masks = _rows(tokenizer)
    assert len({len(r) for r in rows}) == 3  # three lengths: real padding on every row but one
    from llmlab.posttrain.logprobs import _pad

    ids = _pad(rows, tokenizer.pad_token_id, side)
    attention = _pad([[1] * len(r) for r in rows], 0, side)
    completion = _pad(masks, 0, side)
    with torch.no_grad():
        got = sequence_logprobs(model, ids, attention, completion)
        want = _direct(model, rows, masks)
        averaged = sequence_logprobs(model, ids, attention, completion, average=True)
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-5), (got, want)
    lengths = torch.tensor([sum(m) for m in masks])
    assert torch.allclose(averaged, want / lengths, atol=1e-5)


def test_sequence_logprobs_of_an_llmlab_model(tiny):
    hf, tokenizer = tiny
    ours = Llama.from_hf(hf)
    batch = preference_batch(tokenizer, PROMPTS, CHOSEN, REJECTED)  # right padding
    with torch.no_grad():
        got = sequence_logprobs(ours, **batch)
        want = sequence_logprobs(hf, **batch)
    assert torch.allclose(got, want, atol=1e-4)
    left = preference_batch(tokenizer, PROMPTS, CHOSEN, REJECTED, padding_side="left")
    with pytest.raises(ValueError, match="may only be padded on the right"):
        sequence_logprobs(ours, **left)


def test_the_head_at_completion_positions_equals_the_full_logits(tiny):
    """sequence_logprobs runs SmolLM2's LM head only where a completion token is predicted;
    values and gradients equal the full-logits path (token_logprobs summed under the mask)."""
    from llmlab.posttrain.logprobs import _has_separate_head

    model, tokenizer = tiny
    assert _has_separate_head(model)
    model = copy.deepcopy(model)
    batch = preference_batch(tokenizer, PROMPTS, CHOSEN, REJECTED, padding_side="left")
    params = [p for p in model.parameters() if p.requires_grad]
    fast = sequence_logprobs(model, **batch)
    per_token = token_logprobs(model, batch["input_ids"], batch["attention_mask"])
    keep = batch["completion_mask"][:, 1:].bool()
    full = torch.where(keep, per_token, torch.zeros_like(per_token)).sum(dim=1)
    assert torch.allclose(fast, full, atol=1e-5, rtol=1e-6)
    weights = torch.arange(1.0, len(fast) + 1)
    g_fast = torch.autograd.grad((weights * fast).sum(), params)
    g_full = torch.autograd.grad((weights * full).sum(), params)
    for a, b in zip(g_fast, g_full, strict=True):
        assert (a - b).abs().max() <= 3e-4 * b.abs().max()  # float32 summation order


def test_sequence_logprobs_gradients_reach_the_model(tiny):
    model, tokenizer = tiny
    model = copy.deepcopy(model)
    batch = preference_batch(tokenizer, PROMPTS, CHOSEN, REJECTED)
    sequence_logprobs(model, **batch).sum().backward()
    assert model.model.embed_tokens.weight.grad.abs().sum() > 0


def test_token_logprobs_shape_and_normalisation(tiny):
    model, tokenizer = tiny
    batch = preference_batch(tokenizer, PROMPTS, CHOSEN, REJECTED)
    with torch.no_grad():
        per_token = token_logprobs(model, batch["input_ids"], batch["attention_mask"])
    assert per_token.shape == (4, batch["input_ids"].shape[1] - 1)
    assert (per_token <= 0).all()


def test_sequence_logprobs_input_checks(tiny):
    model, tokenizer = tiny
    batch = preference_batch(tokenizer, PROMPTS, CHOSEN, REJECTED)
    ids, attention, completion = (
        batch["input_ids"],
        batch["attention_mask"],
        batch["completion_mask"],
    )
    with pytest.raises(ValueError, match="completion_mask: expected shape"):
        sequence_logprobs(model, ids, attention, completion[:, 1:])
    first = completion.clone()
    first[:, 0] = 1
    with pytest.raises(ValueError, match="completion_mask: the first token"):
        sequence_logprobs(model, ids, attention, first)
    with pytest.raises(ValueError, match="expected 1s only where attention_mask is 1"):
        sequence_logprobs(model, ids, torch.zeros_like(attention), completion)
    with pytest.raises(ValueError, match="at least one completion token in every row"):
        sequence_logprobs(model, ids, attention, torch.zeros_like(completion))
    with pytest.raises(ValueError, match="input_ids: expected 2 dims"):
        sequence_logprobs(model, ids[0], attention[0], completion[0])


# --------------------------------------------------------------------------------------------
# Chat formatting and completion masks


@pytest.mark.parametrize("side", ["left", "right"])
def test_completion_mask_is_the_answer_and_its_end_of_turn_as_in_sft(tiny, side):
    _, tokenizer = tiny
    batch = preference_batch(tokenizer, PROMPTS, CHOSEN, REJECTED, padding_side=side)
    answers = CHOSEN + REJECTED
    for row in range(4):
        ids = batch["input_ids"][row]
        completion = batch["completion_mask"][row].bool()
        attention = batch["attention_mask"][row].bool()
        assert tokenizer.decode(ids[completion]) == answers[row] + "<|im_end|>\n"
        assert completion.sum() == len(tokenizer(answers[row])["input_ids"]) + 2
        context = tokenizer.decode(ids[attention & ~completion])
        assert "You are a helpful AI assistant named SmolLM" in context  # the template's system
        assert PROMPTS[row % 2] in context and context.endswith("<|im_start|>assistant\n")
        sft_ids, sft_labels = format_example(tokenizer, PROMPTS[row % 2], answers[row])
        assert torch.equal(ids[attention], sft_ids)  # the tokens and the span SFT trains on
        assert torch.equal(completion[attention], sft_labels != -100)
    ends = batch["attention_mask"].flip(-1) if side == "left" else batch["attention_mask"]
    assert (ends[:, 0] == 1).all()  # padding on the requested side only


def test_chat_pair_with_a_system_prompt(tiny):
    _, tokenizer = tiny
    ids, mask = _chat_pair(tokenizer, "Hi", "Hello!", system="Be brief.")
    text = tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>") and "SmolLM" not in text
    assert (
        tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m]) == "Hello!<|im_end|>\n"
    )


def test_preference_batch_input_checks(tiny):
    _, tokenizer = tiny
    with pytest.raises(ValueError, match="chosen, rejected: expected 2 answers each"):
        preference_batch(tokenizer, PROMPTS, CHOSEN, REJECTED[:1])
    with pytest.raises(ValueError, match="padding_side: expected 'left' or 'right'"):
        preference_batch(tokenizer, PROMPTS, CHOSEN, REJECTED, padding_side="middle")
    with pytest.raises(TypeError, match="completion: expected a str"):
        _chat_pair(tokenizer, "Hi", None)


# --------------------------------------------------------------------------------------------
# KL to the reference


def test_kl_estimators_match_the_exact_kl():
    gen = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(8, generator=gen), 0)
    q = torch.softmax(torch.randn(8, generator=gen), 0)
    exact = (p * (p / q).log()).sum()
    tokens = torch.multinomial(p, 200_000, replacement=True, generator=gen).view(400, 500)
    policy, ref = p.log()[tokens], q.log()[tokens]
    mask = torch.ones_like(tokens, dtype=torch.bool)
    mask[:, 450:] = False  # masked tokens are ignored
    ref_masked = ref.clone()
    ref_masked[:, 450:] = 1e6
    k1, k3 = kl_to_reference(policy, ref_masked, mask)
    assert k1.item() == pytest.approx(exact.item(), rel=0.02)
    assert k3.item() == pytest.approx(exact.item(), rel=0.02)
    same = kl_to_reference(policy, policy, mask)
    assert same.k1 == 0 and same.k3 == 0


def test_kl_input_checks():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="expected the shape of policy_logps"):
        kl_to_reference(x, torch.zeros(2, 4), torch.ones(2, 3))
    with pytest.raises(ValueError, match="mask: expected at least one token"):
        kl_to_reference(x, x, torch.zeros(2, 3))
