"""llmlab.training: AdamW == torch's, Muon == torch's, the schedule, the loss, clipping, accumulation, and
checkpoints that are atomic and resume exactly."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llmlab import training as tr
from llmlab.evaluation import sliding_window_nll


class TinyLM(nn.Module):
    def __init__(self, vocab=17, d=12, dropout=0.1):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.mix = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.embed.weight  # tied, as in GPT-2

    def forward(self, ids):
        return self.head(self.norm(self.drop(torch.tanh(self.mix(self.embed(ids))))))


def batch_fn(i, batch=4, seq=6, vocab=17):
    g = torch.Generator().manual_seed(1000 + i)
    x = torch.randint(0, vocab, (batch, seq + 1), generator=g)
    return x[:, :-1], x[:, 1:]


class TinyCausalLM(nn.Module):
    """Each position sees a decayed sum of the embeddings before it: causal, context-dependent."""

    def __init__(self, vocab=17, d=12):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.head = nn.Linear(d, vocab)

    def forward(self, ids):
        e = self.embed(ids)
        seq = ids.shape[1]
        t = torch.arange(seq)
        decay = torch.tril(0.7 ** (t[:, None] - t[None, :]).clamp(min=0).float())
        return self.head(torch.tanh(decay @ e))


@pytest.mark.parametrize(
    "n, window, stride", [(23, 8, 3), (23, 8, 8), (24, 8, 1), (9, 8, 4), (5, 8, 2)]
)
def test_sliding_window_nll_scores_each_target_once_with_its_window(n, window, stride):
    torch.manual_seed(0)
    model = TinyCausalLM()
    tokens = torch.randint(0, 17, (n,))
    got = sliding_window_nll(model, tokens, window, stride, batch_size=2)
    assert got.shape == (n - 1,) and got.dtype == torch.float64
    for j in range(n - 1):  # target tokens[j + 1], scored by the first window that reaches it
        begin = max(0, -(-(j - window + 1) // stride) * stride)
        logp = model(tokens[None, begin : j + 1])[0, -1].log_softmax(-1)
        assert got[j].item() == pytest.approx(-logp[tokens[j + 1]].item(), abs=1e-5)


def test_sliding_window_nll_non_overlapping_equals_lm_loss_per_window():
    torch.manual_seed(0)
    model = TinyCausalLM()
    tokens = torch.randint(0, 17, (4 * 6 + 1,))
    got = sliding_window_nll(model, tokens.tolist(), window=6)
    x = tokens[:-1].view(4, 6)
    y = tokens[1:].view(4, 6)
    assert got.mean().item() == pytest.approx(tr.lm_loss(model(x), y).item(), abs=1e-6)
    for kwargs, match in [
        (dict(window=0), "window: expected a positive int"),
        (dict(window=4, stride=5), r"stride: expected an int in \[1, window=4\]"),
        (dict(window=4, batch_size=0), "batch_size: expected a positive int"),
    ]:
        with pytest.raises(ValueError, match=match):
            sliding_window_nll(model, tokens, **kwargs)
    with pytest.raises(ValueError, match="tokens: expected at least 2 tokens"):
        sliding_window_nll(model, [3], window=4)


def test_adamw_equals_torch_over_100_steps():
    torch.manual_seed(0)
    a = TinyLM(dropout=0.0)
    b = TinyLM(dropout=0.0)
    b.load_state_dict(a.state_dict())
    kw = dict(lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.01)
    ours, theirs = tr.AdamW(a.parameters(), **kw), torch.optim.AdamW(b.parameters(), **kw)
    for step in range(100):
        x, y = batch_fn(step)
        for model, opt in ((a, ours), (b, theirs)):
            opt.zero_grad()
            F.cross_entropy(model(x).flatten(0, 1), y.flatten()).backward()
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, atol=1e-6, rtol=1e-5)


def test_adamw_rejects_bad_hyperparameters():
    p = [nn.Parameter(torch.zeros(2))]
    for kw, name in [
        ({"lr": -1}, "lr"),
        ({"betas": (1.0, 0.9)}, "betas"),
        ({"eps": 0}, "eps"),
        ({"weight_decay": -0.1}, "weight_decay"),
    ]:
        with pytest.raises(ValueError, match=name):
            tr.AdamW(p, **kw)


@pytest.mark.parametrize("shape", [(12, 30), (30, 12), (16, 16)])
def test_orthogonalize_keeps_directions_and_pushes_singular_values_to_one(shape):
    torch.manual_seed(0)
    k = min(shape)
    u, _ = torch.linalg.qr(torch.randn(shape[0], k))
    v, _ = torch.linalg.qr(torch.randn(shape[1], k))
    s = torch.logspace(-1, 0.5, k)  # singular values 0.1 .. 3.2: a 30x spread
    g = u @ torch.diag(s) @ v.T
    x = tr.orthogonalize(g)
    assert x.shape == g.shape and x.dtype == g.dtype
    inner = u.T @ x @ v  # diagonal when x has g's singular vectors
    off = inner - torch.diag(torch.diagonal(inner))
    assert off.abs().max() < 1e-4
    sx = torch.diagonal(inner)
    assert sx.min() > 0.6 and sx.max() < 1.25, sx  # after: all about 1
    assert (sx.max() / sx.min()) < 2
    with pytest.raises(ValueError, match="g: expected a 2-D matrix"):
        tr.orthogonalize(torch.zeros(2, 3, 4))


class TinyMLPLM(nn.Module):
    """Rectangular hidden matrices (Muon's size factor), an untied vocabulary head."""

    def __init__(self, vocab=17, d=12, hidden=20):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.up, self.down = nn.Linear(d, hidden), nn.Linear(hidden, d)
        self.head = nn.Linear(d, vocab, bias=False)

    def forward(self, ids):
        e = self.embed(ids)
        return self.head(e + self.down(torch.tanh(self.up(e))))


def test_muon_param_groups_split_hidden_matrices_from_the_rest():
    model = TinyMLPLM()
    named = {id(p): n for n, p in model.named_parameters()}
    groups = tr.muon_param_groups(model, lr=1e-3, muon_lr=0.02, weight_decay=0.1)
    names = [sorted(named[id(p)] for p in g["params"]) for g in groups]
    assert names == [
        ["down.weight", "up.weight"],
        ["embed.weight", "head.weight"],
        ["down.bias", "up.bias"],
    ]
    assert [(g["muon"], g["lr"], g["weight_decay"]) for g in groups] == [
        (True, 0.02, 0.1),
        (False, 1e-3, 0.1),
        (False, 1e-3, 0.0),
    ]
    tied = TinyLM()  # the head is the embedding: listed once, with AdamW
    groups = tr.muon_param_groups(tied, lr=1e-3)
    assert [len(g["params"]) for g in groups] == [1, 1, 3]
    with pytest.raises(ValueError, match="params: Muon updates 2-D weight matrices"):
        tr.Muon(tied.parameters())


def test_muon_equals_torch_muon_and_adamw_over_30_steps():
    torch.manual_seed(0)
    a, b = TinyMLPLM(), TinyMLPLM()
    b.load_state_dict(a.state_dict())
    groups = tr.muon_param_groups(a, lr=3e-3, muon_lr=0.02, weight_decay=0.1)
    ours = tr.Muon(groups, ns_dtype=torch.bfloat16)  # torch.optim.Muon orthogonalizes in bf16
    hidden = [b.up.weight, b.down.weight]
    theirs = [
        torch.optim.Muon(hidden, lr=0.02, weight_decay=0.1, momentum=0.95, nesterov=True),
        torch.optim.AdamW(
            [
                {"params": [b.embed.weight, b.head.weight], "weight_decay": 0.1},
                {"params": [b.up.bias, b.down.bias], "weight_decay": 0.0},
            ],
            lr=3e-3,
            betas=(0.9, 0.95),
            eps=1e-8,
        ),
    ]
    for step in range(30):
        x, y = batch_fn(step)
        for model in (a, b):
            model.zero_grad()
            F.cross_entropy(model(x).flatten(0, 1), y.flatten()).backward()
        ours.step()
        for opt in theirs:
            opt.step()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, atol=1e-6, rtol=1e-5, msg=name)
    moved = (a.up.weight - TinyMLPLM().up.weight).abs().max()
    assert moved > 0.01  # the updates did something


def test_warmup_cosine_shape():
    total = 100
    lrs = [tr.warmup_cosine(s, total) for s in range(total)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)  # 10% warmup
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10], strict=True))
    assert all(a >= b for a, b in zip(lrs[10:-1], lrs[11:], strict=True))
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)
    assert tr.warmup_cosine(99, 100, min_ratio=0.1) == pytest.approx(0.1)
    assert tr.warmup_cosine(0, 10, warmup_frac=0.0) == 1.0
    with pytest.raises(ValueError, match="total_steps"):
        tr.warmup_cosine(0, 0)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_lm_loss_equals_cross_entropy(smoothing):
    logits = torch.randn(2, 5, 11)
    targets = torch.randint(0, 11, (2, 5))
    targets[0, 1] = -100
    expected = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), label_smoothing=smoothing)
    torch.testing.assert_close(tr.lm_loss(logits, targets, smoothing), expected)
    with pytest.raises(ValueError, match="targets"):
        tr.lm_loss(logits, targets[:, :3])


def test_clip_grad_norm_equals_torch():
    torch.manual_seed(0)
    a, b = TinyLM(dropout=0.0), TinyLM(dropout=0.0)
    b.load_state_dict(a.state_dict())
    x, y = batch_fn(0)
    for m in (a, b):
        (100 * F.cross_entropy(m(x).flatten(0, 1), y.flatten())).backward()
    ours = tr.clip_grad_norm(list(a.parameters()), 0.5)
    theirs = torch.nn.utils.clip_grad_norm_(b.parameters(), 0.5)
    torch.testing.assert_close(ours, theirs)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa.grad, pb.grad)


def test_gradient_accumulation_equals_the_large_batch():
    torch.manual_seed(0)
    a = TinyLM(dropout=0.0)
    b = TinyLM(dropout=0.0)
    b.load_state_dict(a.state_dict())

    def small(i):  # micro-batch i = half of big batch i // 2
        x, y = batch_fn(i // 2, batch=8)
        half = slice(0, 4) if i % 2 == 0 else slice(4, 8)
        return x[half], y[half]

    base = dict(steps=5, label_smoothing=0.0, clip_norm=1.0, warmup_frac=0.2)
    h_acc = tr.train(a, small, tr.TrainConfig(grad_accum=2, **base), progress=False)
    h_big = tr.train(b, lambda i: batch_fn(i, batch=8), tr.TrainConfig(**base), progress=False)
    assert h_acc.loss == pytest.approx(h_big.loss, rel=1e-5)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, atol=1e-6, rtol=1e-5)


def test_training_lowers_the_loss_and_logs():
    torch.manual_seed(0)
    model = TinyLM()
    fixed = batch_fn(0)
    config = tr.TrainConfig(steps=30, lr=1e-2, eval_every=10)
    h = tr.train(model, lambda i: fixed, config, evaluate=lambda m: 1.0, progress=False)
    assert h.loss[-1] < h.loss[0]
    assert h.eval_step == [10, 20, 30] and len(h.lr) == 30
    assert h.tokens[-1] == 30 * fixed[0].numel() and h.tokens_per_second() > 0


def test_bf16_autocast_runs_on_cpu():
    torch.manual_seed(0)
    h = tr.train(TinyLM(), batch_fn, tr.TrainConfig(steps=3, precision="bf16"), progress=False)
    assert all(math.isfinite(v) for v in h.loss)
    with pytest.raises(ValueError, match="fp16"):
        tr.train(TinyLM(), batch_fn, tr.TrainConfig(steps=1, precision="fp16"), progress=False)


@pytest.mark.parametrize("optimizer", ["llmlab", "torch", "muon"])
def test_a_resumed_run_equals_an_unbroken_one(tmp_path, optimizer):
    config = tr.TrainConfig(steps=12, checkpoint_every=4, lr=5e-3, optimizer=optimizer)
    torch.manual_seed(0)
    unbroken = TinyLM()
    init = {k: v.clone() for k, v in unbroken.state_dict().items()}
    full = tr.train(unbroken, batch_fn, config, checkpoint_dir=tmp_path / "a", progress=False)

    first = TinyLM()
    first.load_state_dict(init)
    part = tr.train(
        first, batch_fn, config, checkpoint_dir=tmp_path / "b", stop_after=6, progress=False
    )
    assert len(part.loss) == 6
    torch.manual_seed(123)  # the restart happens in a fresh process with other RNG states
    second = TinyLM()  # the weights come from the checkpoint
    resumed = tr.train(second, batch_fn, config, checkpoint_dir=tmp_path / "b", progress=False)
    assert resumed.loss == full.loss  # exactly: same batches, same dropout masks, same updates
    for pa, pb in zip(unbroken.parameters(), second.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_checkpoints_are_atomic_and_pruned(tmp_path, monkeypatch):
    torch.manual_seed(0)
    config = tr.TrainConfig(steps=6, checkpoint_every=2, keep_checkpoints=2)
    tr.train(TinyLM(), batch_fn, config, checkpoint_dir=tmp_path, progress=False)
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert kept == ["step-00000004", "step-00000006"]
    assert tr.latest_checkpoint(tmp_path).name == "step-00000006"

    def crash(*args, **kwargs):
        raise OSError("disk full")

    model = TinyLM()
    opt = tr.AdamW(model.parameters())
    monkeypatch.setattr("safetensors.torch.save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        tr.save_checkpoint(tmp_path, 7, model, opt, None)
    assert sorted(p.name for p in tmp_path.iterdir()) == kept  # no half-written step-7, no temp
    with pytest.raises(FileNotFoundError, match="latest_checkpoint"):
        tr.load_checkpoint(tmp_path / "nope", model)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="steps"):
        tr.TrainConfig(steps=0)
    with pytest.raises(ValueError, match="precision"):
        tr.TrainConfig(precision="fp8")
    with pytest.raises(ValueError, match="optimizer: expected one of"):
        tr.TrainConfig(optimizer="sgd")
    with pytest.raises(TypeError, match="config"):
        tr.train(TinyLM(), batch_fn, {"steps": 1})
