"""llmlab.compress.distill: the distillation loss and the teacher's top-k logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmlab.compress import distill as D


def _logits(*shape, seed=0, scale=3.0):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_full_vocabulary_top_k_is_hintons_loss(temperature):
    s, t = _logits(2, 5, 11, seed=1), _logits(2, 5, 11, seed=2)
    top = t.topk(11, dim=-1)  # k = vocabulary: nothing dropped
    ours = D.distillation_loss(s, top.values, top.indices, temperature=temperature, alpha=1.0)
    kl = F.kl_div(
        F.log_softmax(s / temperature, -1).flatten(0, 1),
        F.log_softmax(t / temperature, -1).flatten(0, 1),
        log_target=True,
        reduction="batchmean",
    )
    torch.testing.assert_close(ours, temperature**2 * kl)


def test_mix_with_the_hard_loss_and_its_gradient():
    s = _logits(3, 4, 9, seed=3).requires_grad_()
    t = _logits(3, 4, 9, seed=4).topk(4, dim=-1)
    y = torch.randint(0, 9, (3, 4), generator=torch.Generator().manual_seed(5))
    loss = D.distillation_loss(s, t.values, t.indices, y, temperature=2.0, alpha=0.3)
    soft = D.distillation_loss(s, t.values, t.indices, temperature=2.0, alpha=1.0)
    hard = F.cross_entropy(s.flatten(0, 1), y.flatten())
    torch.testing.assert_close(loss, 0.3 * soft + 0.7 * hard)
    assert D.distillation_loss(s, t.values, t.indices, y, alpha=0.0).item() == pytest.approx(
        hard.item()
    )
    loss.backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    # a student equal to the teacher on its top k (and -inf elsewhere) has zero soft loss
    perfect = torch.full((3, 4, 9), -1e9).scatter(-1, t.indices, t.values)
    assert D.distillation_loss(perfect, t.values, t.indices, alpha=1.0).item() == pytest.approx(
        0, abs=1e-6
    )


def test_distillation_loss_errors():
    s = _logits(2, 3, 7)
    t = s.topk(3, dim=-1)
    with pytest.raises(ValueError, match="temperature"):
        D.distillation_loss(s, t.values, t.indices, temperature=0)
    with pytest.raises(ValueError, match="alpha"):
        D.distillation_loss(s, t.values, t.indices, alpha=1.5)
    with pytest.raises(ValueError, match="targets"):
        D.distillation_loss(s, t.values, t.indices, alpha=0.5)
    with pytest.raises(ValueError, match="teacher_values, teacher_indices"):
        D.distillation_loss(s, t.values[:1], t.indices[:1])


def test_teacher_topk_on_a_tiny_model():
    from llmlab.assets import tiny_smollm2

    model, _ = tiny_smollm2(seed=0)
    model = model.float().eval()
    ids = torch.randint(0, 1000, (3, 10), generator=torch.Generator().manual_seed(6))
    out = D.teacher_topk(model, ids, k=8, batch_size=2)
    with torch.no_grad():
        logits = model(ids).logits
    assert out["values"].shape == (3, 10, 8) and out["values"].dtype == torch.float16
    assert out["indices"].dtype == torch.int32
    assert torch.equal(out["indices"].long(), logits.topk(8, -1).indices)
    torch.testing.assert_close(out["lse"], torch.logsumexp(logits, -1))
    mass = D.topk_mass(out)
    probs = logits.softmax(-1).topk(8, -1).values.sum(-1)
    torch.testing.assert_close(mass, probs, rtol=2e-3, atol=2e-3)  # float16 values
    with pytest.raises(ValueError, match="windows"):
        D.teacher_topk(model, ids[0])


def test_distillation_batches_and_loss_fn():
    from llmlab.models import Llama, LlamaConfig
    from llmlab.training import TrainConfig, train

    g = torch.Generator().manual_seed(7)
    windows = torch.randint(0, 50, (6, 9), generator=g)
    logits = _logits(6, 8, 50, seed=8)
    top = logits.topk(4, -1)
    teacher = {"values": top.values.half(), "indices": top.indices.int()}
    batches = D.DistillationBatches(windows, teacher, batch_size=3, seed=1)
    x, y, v, i = batches(5)
    assert x.shape == y.shape == (3, 8) and v.shape == i.shape == (3, 8, 4)
    assert all(torch.equal(a, b) for a, b in zip(batches(5), (x, y, v, i), strict=True))
    row = next(r for r in range(6) if torch.equal(windows[r, :-1], x[0]))
    assert torch.equal(y[0], windows[row, 1:]) and torch.equal(i[0], teacher["indices"][row])
    model = Llama(LlamaConfig(vocab_size=50, d_model=16, n_layers=1, n_heads=2, d_ff=32))
    history = train(
        model,
        batches,
        TrainConfig(steps=3, lr=1e-2),
        loss_fn=D.kd_loss_fn(2.0, 0.5),
        progress=False,
    )
    assert len(history.loss) == 3 and history.tokens[-1] == 3 * 3 * 8
    with pytest.raises(ValueError, match="teacher: expected top-k"):
        D.DistillationBatches(windows[:, :5], teacher, 2)
    with pytest.raises(ValueError, match="batch_size"):
        D.DistillationBatches(windows, teacher, 7)
    with pytest.raises(ValueError, match="alpha"):
        D.kd_loss_fn(alpha=2.0)


def test_save_and_load_a_tied_student_and_cached_teacher(tmp_path, monkeypatch):
    from llmlab.models import Llama, LlamaConfig

    monkeypatch.setenv("LLMLAB_CACHE", str(tmp_path))
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=40, d_model=16, n_layers=1, n_heads=2, d_ff=32, tie_embeddings=True
    )
    model = Llama(cfg)
    D.save_model("05_compression/test-student", model)
    back = D.load_model("05_compression/test-student")
    ids = torch.randint(0, 40, (2, 6))
    with torch.no_grad():
        torch.testing.assert_close(back(ids), model(ids))
    assert back.lm_head.weight is back.embed_tokens.weight
    from llmlab import results

    with pytest.raises(results.ResultMissingError, match="05.1"):
        D.load_model("05_compression/absent", made_by="05.1")
    windows = torch.randint(0, 40, (3, 7))
    calls = []

    def teacher(x):
        calls.append(x.shape)
        return model(x)

    first, spent = D.cached_teacher_topk("05_compression/test-topk", teacher, windows, k=4)
    again, none = D.cached_teacher_topk("05_compression/test-topk", teacher, windows, k=4)
    assert spent > 0 and none == 0.0 and len(calls) == 1
    assert all(torch.equal(first[key], again[key]) for key in first)
    D.cached_teacher_topk("05_compression/test-topk", teacher, windows[:2], k=4)  # other windows
    assert len(calls) == 2
