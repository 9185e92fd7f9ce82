"""AdamW's foreach form (the default) is the per-tensor definition, bit for bit, and torch's."""

from __future__ import annotations

import copy

import pytest
import torch

from llmlab import training as tr
from llmlab.models import GPT, GPTConfig

VOCAB, SEQ = 48, 12


def small_gpt(dtype: torch.dtype = torch.float32) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=VOCAB, max_seq=SEQ, d_model=32, n_layers=2, n_heads=2)
    return GPT(config).to(dtype)


def param_groups(model: GPT) -> list[dict]:
    """Four groups with their own hyperparameters, one without weight decay."""
    named = dict(model.named_parameters())
    embeddings = [p for n, p in named.items() if n.startswith("embed_")]
    attention = [p for n, p in named.items() if ".self_attn." in n and p.dim() >= 2]
    mlp = [p for n, p in named.items() if ".mlp." in n and p.dim() >= 2]
    vectors = [p for p in named.values() if p.dim() < 2]
    assert len(embeddings) + len(attention) + len(mlp) + len(vectors) == len(named)
    return [
        {"params": embeddings, "weight_decay": 0.01, "lr": 2e-3, "betas": (0.8, 0.99)},
        {"params": attention, "weight_decay": 0.1},
        {"params": mlp, "weight_decay": 0.1, "eps": 1e-6},
        {"params": vectors, "weight_decay": 0.0},
    ]


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    ids = torch.randint(0, VOCAB, (3, SEQ + 1), generator=g)
    return ids[:, :-1], ids[:, 1:]


def train_steps(model: GPT, optimizer: torch.optim.Optimizer, steps: range) -> None:
    """Steps of a GPT in which some parameters have no gradient at some steps.

    The position table never gets one (its state is never created); the second block's
    parameters skip every third step, so their step counts fall behind the others' within
    the same group.
    """
    for step in steps:
        optimizer.zero_grad(set_to_none=True)
        x, y = batch(step)
        tr.lm_loss(model(x), y).backward()
        model.embed_positions.weight.grad = None
        if step % 3 == 2:
            for p in model.layers[1].parameters():
                p.grad = None
        optimizer.step()


def assert_same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb), name


def make(kind: str, model: GPT) -> torch.optim.Optimizer:
    groups = param_groups(model)
    kw = dict(lr=3e-3, betas=(0.9, 0.95), eps=1e-8)
    if kind == "foreach":
        return tr.AdamW(groups, **kw)  # the default
    if kind == "per-tensor":
        return tr.AdamW(groups, **kw, foreach=False)
    return torch.optim.AdamW(groups, **kw, foreach=kind == "torch-foreach")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("run_bytes", [None, 4096])  # None: the model is one run
def test_foreach_equals_per_tensor_and_torch_bit_for_bit(dtype, run_bytes, monkeypatch):
    if run_bytes is not None:  # many runs, and tensors larger than a run
        monkeypatch.setattr("llmlab.training.optim.CPU_FOREACH_BYTES", run_bytes)
    models = {k: small_gpt(dtype) for k in ("foreach", "per-tensor", "torch-foreach", "torch")}
    for kind, model in models.items():
        train_steps(model, make(kind, model), range(40))
    assert_same(models["foreach"], models["per-tensor"])
    assert_same(models["foreach"], models["torch"])  # torch's per-tensor loop (its CPU default)
    if dtype != torch.bfloat16:
        assert_same(models["foreach"], models["torch-foreach"])
    else:  # torch's foreach multiplies by bf16(beta2) = 0.9492 on the CPU: not its own loop
        same = map(torch.equal, models["torch"].parameters(), models["torch-foreach"].parameters())
        assert not all(same)
    moved = (models["foreach"].lm_head.weight - small_gpt(dtype).lm_head.weight).abs().max()
    assert moved > 0.01  # 40 steps did something
    assert models["foreach"].embed_positions.weight.equal(small_gpt(dtype).embed_positions.weight)


def test_foreach_keeps_the_per_tensor_state():
    a, b = small_gpt(), small_gpt()
    opt_a, opt_b = make("foreach", a), make("per-tensor", b)
    train_steps(a, opt_a, range(10))
    train_steps(b, opt_b, range(10))
    sa, sb = opt_a.state_dict(), opt_b.state_dict()
    assert sa["param_groups"] == sb["param_groups"]  # foreach is not a hyperparameter
    assert sa["state"].keys() == sb["state"].keys()
    for i, state in sa["state"].items():
        assert state.keys() == {"step", "exp_avg", "exp_avg_sq"} == sb["state"][i].keys()
        for k, v in state.items():
            assert v.dtype == sb["state"][i][k].dtype and torch.equal(v, sb["state"][i][k])
    steps = {float(s["step"]) for s in sa["state"].values()}
    assert steps == {10.0, 7.0}  # every third step skipped by layers[1]
    assert len(sa["state"]) == len(list(a.parameters())) - 1  # the position table: no state


@pytest.mark.parametrize("first, then", [("foreach", "per-tensor"), ("per-tensor", "foreach")])
def test_a_state_dict_of_one_form_resumes_in_the_other(first, then):
    unbroken = small_gpt()
    train_steps(unbroken, make(first, unbroken), range(20))

    model = small_gpt()
    optimizer = make(first, model)
    train_steps(model, optimizer, range(10))
    saved_model = copy.deepcopy(model.state_dict())
    saved_optimizer = copy.deepcopy(optimizer.state_dict())
    resumed = small_gpt()
    resumed.load_state_dict(saved_model)
    other = make(then, resumed)
    other.load_state_dict(saved_optimizer)
    assert other.foreach == (False if then == "per-tensor" else None)  # loading keeps the form
    train_steps(resumed, other, range(10, 20))
    assert_same(unbroken, resumed)


def test_a_checkpoint_of_one_form_resumes_in_the_other(tmp_path):
    unbroken = small_gpt()
    train_steps(unbroken, make("foreach", unbroken), range(12))
    model = small_gpt()
    optimizer = make("foreach", model)
    train_steps(model, optimizer, range(6))
    path = tr.save_checkpoint(tmp_path, 6, model, optimizer, None)
    resumed = small_gpt()
    other = make("per-tensor", resumed)
    assert tr.load_checkpoint(path, resumed, other)[0] == 6
    train_steps(resumed, other, range(6, 12))
    assert_same(unbroken, resumed)


def test_muon_adamw_groups_take_the_foreach_form():
    a, b = small_gpt(), small_gpt()
    opts = []
    for model in (a, b):
        groups = tr.muon_param_groups(model, lr=3e-3, muon_lr=0.02, weight_decay=0.1)
        opts.append(tr.Muon(groups))
    opts[1].foreach = False  # its AdamW groups run AdamW.update_group
    for model, optimizer in zip((a, b), opts, strict=True):
        train_steps(model, optimizer, range(15))
    assert_same(a, b)


@pytest.mark.filterwarnings("ignore:Sparse invariant checks")
def test_foreach_is_the_default_and_is_validated():
    p = [torch.nn.Parameter(torch.zeros(2))]
    assert tr.AdamW(p).foreach is None and tr.AdamW(p, foreach=True).foreach is True
    with pytest.raises(ValueError, match="foreach: expected None, True or False"):
        tr.AdamW(p, foreach="yes")
    p[0].grad = torch.sparse_coo_tensor([[0]], [1.0], (2,))
    with pytest.raises(RuntimeError, match="sparse gradients"):
        tr.AdamW(p).step()


def test_foreach_makes_the_same_calls_whatever_the_number_of_tensors():
    """The point of the foreach form: its operator calls do not grow with the tensors."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.calls += 1
            return func(*args, **(kwargs or {}))

    def calls(n_tensors: int, foreach: bool | None) -> int:
        params = [torch.nn.Parameter(torch.randn(3)) for _ in range(n_tensors)]
        optimizer = tr.AdamW(params, foreach=foreach)
        for p in params:
            p.grad = torch.ones(3)
        optimizer.step()  # creates the state
        with Count() as count:
            optimizer.step()
        return count.calls

    assert calls(4, None) == calls(40, None) - 36  # one .item() of a step count per tensor
    assert calls(40, False) > 8 * 40


def test_cache_sized_runs_keep_order_and_size(monkeypatch):
    from llmlab.training.optim import _cache_sized

    monkeypatch.setattr("llmlab.training.optim.CPU_FOREACH_BYTES", 100)
    tensors = [torch.zeros(n) for n in (10, 10, 5, 30, 1, 1, 23, 2)]  # 4 bytes each
    runs = _cache_sized(tensors, torch.device("cpu"))
    assert [[t.numel() for t in run] for run in runs] == [[10, 10, 5], [30], [1, 1, 23], [2]]
    assert [t for run in runs for t in run] == tensors
    assert _cache_sized(tensors, torch.device("meta")) == [tensors]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_clip_grad_norm_equals_torch_bit_for_bit(dtype):
    a, b = small_gpt(dtype), small_gpt(dtype)
    x, y = batch(0)
    for model in (a, b):
        (100 * tr.lm_loss(model(x), y)).backward()
    ours = tr.clip_grad_norm(list(a.parameters()), 0.5)
    theirs = torch.nn.utils.clip_grad_norm_(b.parameters(), 0.5)
    assert ours.dtype == theirs.dtype and torch.equal(ours, theirs) and ours > 0.5
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa.grad, pb.grad)
    grads = [p.grad for p in a.parameters()]
    per_tensor = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    assert torch.equal(tr.grad_norm(grads), per_tensor)
