"""Time one training step of our GPT + our AdamW against the same model with torch's AdamW
(configured as nanoGPT's ``configure_optimizers`` does) and, optionally, nanoGPT's own model.

    .venv/bin/python tools/bench_train_step.py                 # three shapes, 2 threads, 200 steps
    .venv/bin/python tools/bench_train_step.py --nanogpt /tmp/nanogpt/model.py --ablations
    .venv/bin/python tools/bench_train_step.py --shapes ch03-04 --profile   # where time goes
    .venv/bin/python tools/bench_train_step.py --optimizer --reps 400   # optimizer.step() alone

A step is what :func:`llmlab.training.train` does for one micro-batch, less the scheduler and
the bookkeeping: forward, loss, backward, ``loss.item()``, clip to norm 1, optimizer step,
``zero_grad(set_to_none=True)``. The arms:

- ``llmlab``: our GPT, ``lm_loss``, our ``clip_grad_norm`` and our ``AdamW`` as
  ``make_optimizer`` builds it (the default: the foreach form);
- ``llmlab-before``: the same with ``AdamW(foreach=False)`` (the per-tensor definition) and
  the per-tensor clipping loop ``clip_grad_norm`` had before: the step before the foreach work;
- ``torch-adamw``: our GPT and ``lm_loss``, then ``torch.nn.utils.clip_grad_norm_`` and
  ``torch.optim.AdamW`` as nanoGPT's ``configure_optimizers`` makes it on a CPU (decay on
  params with dim >= 2, none on the rest, betas (0.9, 0.95), no ``fused``: torch then runs
  its per-tensor loop, as foreach is its default on GPUs only);
- with ``--ablations``, our GPT and optimizer with one model-side part swapped for
  nanoGPT's choice: ``llmlab+F.cross_entropy`` (the loss), ``llmlab+exact-gelu``
  (``GPTConfig(activation="gelu")``; GPT-2 and our default use the tanh approximation),
  ``llmlab+both`` (``lm_loss`` itself now gathers the targets first, the form an earlier
  ``llmlab+lm_loss-gather-first`` arm measured);
- ``nanogpt`` (with ``--nanogpt PATH``): nanoGPT's ``model.py`` read from PATH (a checkout of
  karpathy/nanoGPT; nothing of it is part of this project), its loss, torch's clip, its
  ``configure_optimizers``. Besides the exact GELU it fuses q, k and v into one matrix.

The arms take turns step by step, in a new random order every round, so a slow spell of a
shared machine hits all of them alike and no arm always follows the same other arm. Each
reports the median and interquartile range of its steps, and ``speed`` = that arm's median /
``llmlab``'s (above 1: ours is faster; the goal is >= 0.98 against ``nanogpt``); ``paired``
is the median over rounds of the same ratio within a round. A second table gives the median
of each part of the step (the optimizer alone is a few percent of a step, below the noise of
whole steps on a shared machine). Label smoothing is 0 (nanoGPT has none), dropout 0,
weight decay 0.1, lr 6e-4; batches are random token ids.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import io
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from llmlab.models import GPT, GPTConfig
from llmlab.training import AdamW, TrainConfig, clip_grad_norm, lm_loss, make_optimizer


@dataclass(frozen=True)
class Shape:
    name: str
    vocab: int
    seq: int
    batch: int
    d_model: int
    n_layers: int
    n_heads: int
    where: str

    def describe(self) -> str:
        return (
            f"vocab {self.vocab}, seq {self.seq}, batch {self.batch}, d_model {self.d_model}, "
            f"{self.n_layers} layers, {self.n_heads} heads"
        )


SHAPES = {
    s.name: s
    for s in (
        Shape("ch03-04", 2048, 128, 8, 128, 4, 4, "04_small_gpt.ipynb, full size"),
        Shape("ch03-03", 256, 64, 16, 128, 4, 4, "03_training_loop.ipynb, main GPT"),
        Shape("ch03-04-smoke", 2048, 128, 8, 64, 2, 2, "04_small_gpt.ipynb, LLMLAB_SMOKE=1"),
    )
}
LR, WEIGHT_DECAY, BETAS, CLIP = 6e-4, 0.1, (0.9, 0.95), 1.0


def our_gpt(shape: Shape, activation: str = "gelu_tanh") -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=shape.vocab,
        max_seq=shape.seq,
        d_model=shape.d_model,
        n_layers=shape.n_layers,
        n_heads=shape.n_heads,
        activation=activation,
    )
    return GPT(config).train()


def _groups(model: torch.nn.Module) -> list[dict]:
    """Weight decay on the parameters with dim >= 2, none on the others (nanoGPT's and ours)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": WEIGHT_DECAY},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def nanogpt_style_adamw(model: torch.nn.Module) -> torch.optim.AdamW:
    """torch.optim.AdamW with the groups and arguments of nanoGPT's configure_optimizers (CPU)."""
    return torch.optim.AdamW(_groups(model), lr=LR, betas=BETAS)  # on a CPU: no fused=True


def clip_grad_norm_per_tensor(parameters: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """llmlab's clip_grad_norm before it used torch._foreach_norm (same numbers, tested)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale)
    return total


def timed_step(loss_fn: Callable, optimizer, clip: Callable, params: Callable) -> Callable:
    """One micro-batch of train()'s loop, with ``mark()`` between the parts it times."""

    def step(x, y, mark):
        mark()
        loss = loss_fn(x, y)
        mark()
        loss.backward()
        loss.item()
        mark()
        clip(params(), CLIP)
        mark()
        optimizer.step()
        mark()
        optimizer.zero_grad(set_to_none=True)
        mark()

    return step


def llmlab_step(
    foreach: bool | None = None,
    clip: Callable = clip_grad_norm,
    loss: str = "lm_loss",
    activation: str = "gelu_tanh",
) -> Callable[[Shape], Callable]:
    """Our GPT and train()'s step; the arguments swap one part at a time (for the ablations)."""

    def build(shape: Shape) -> Callable:
        model = our_gpt(shape, activation)
        config = TrainConfig(lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY, label_smoothing=0.0)
        optimizer = make_optimizer(model, config)
        assert isinstance(optimizer, AdamW)
        optimizer.foreach = foreach  # what AdamW(..., foreach=foreach) sets

        def loss_fn(x, y):
            if loss == "lm_loss":
                return lm_loss(model(x), y, config.label_smoothing)
            return F.cross_entropy(model(x).flatten(0, 1), y.flatten())

        def with_grads():
            return [p for p in model.parameters() if p.grad is not None]

        return timed_step(loss_fn, optimizer, clip, with_grads)

    return build


def torch_adamw_step(shape: Shape) -> Callable:
    model = our_gpt(shape)
    optimizer = nanogpt_style_adamw(model)

    return timed_step(
        lambda x, y: lm_loss(model(x), y),
        optimizer,
        torch.nn.utils.clip_grad_norm_,
        model.parameters,
    )


def nanogpt_step(path: str) -> Callable[[Shape], Callable]:
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def build(shape: Shape) -> Callable:
        torch.manual_seed(0)
        config = module.GPTConfig(
            block_size=shape.seq,
            vocab_size=shape.vocab,
            n_layer=shape.n_layers,
            n_head=shape.n_heads,
            n_embd=shape.d_model,
            dropout=0.0,
            bias=True,
        )
        with contextlib.redirect_stdout(io.StringIO()):  # it prints parameter counts
            model = module.GPT(config).train()
            optimizer = model.configure_optimizers(WEIGHT_DECAY, LR, BETAS, "cpu")

        # nanoGPT's train.py, one micro-batch, no GradScaler (CPU, fp32)
        return timed_step(
            lambda x, y: model(x, y)[1],
            optimizer,
            torch.nn.utils.clip_grad_norm_,
            model.parameters,
        )

    return build


def batches(shape: Shape, n: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(0, shape.vocab, (shape.batch, shape.seq + 1), generator=g)
        out.append((ids[:, :-1].contiguous(), ids[:, 1:].contiguous()))
    return out


PARTS = ("forward+loss", "backward", "clip", "optimizer", "zero_grad")


def measure(shape: Shape, arms: dict, reps: int, warmup: int) -> dict[str, dict[str, list]]:
    """``{arm: {"step": [seconds], part: [seconds] for part in PARTS}}``, ``reps`` steps each."""
    steps = {name: build(shape) for name, build in arms.items()}
    data = batches(shape)
    names = list(steps)
    marks: list[float] = []

    def mark() -> None:
        marks.append(time.perf_counter())

    for i in range(warmup):
        for name in names:
            steps[name](*data[i % len(data)], mark)
    times = {name: {part: [] for part in ("step", *PARTS)} for name in names}
    order, rng = list(names), random.Random(0)
    for r in range(reps):
        rng.shuffle(order)  # a new order every round: no arm always runs after the same one
        x, y = data[r % len(data)]
        for name in order:
            marks.clear()
            steps[name](x, y, mark)
            times[name]["step"].append(marks[-1] - marks[0])
            for part, start, end in zip(PARTS, marks[:-1], marks[1:], strict=True):
                times[name][part].append(end - start)
    return times


def measure_optimizers(shape: Shape, reps: int) -> dict[str, list[float]]:
    """Seconds of ``optimizer.step()`` alone (fixed random gradients) and of the clipping."""
    makers = {
        "llmlab AdamW (default)": lambda m: AdamW(_groups(m), lr=LR, betas=BETAS),
        "llmlab AdamW(foreach=False)": lambda m: AdamW(
            _groups(m), lr=LR, betas=BETAS, foreach=False
        ),
        "torch AdamW (CPU default: loop)": nanogpt_style_adamw,
        "torch AdamW(foreach=True)": lambda m: torch.optim.AdamW(
            _groups(m), lr=LR, betas=BETAS, foreach=True
        ),
    }
    calls: dict[str, Callable] = {}
    for name, make in makers.items():
        model = our_gpt(shape)
        for p in model.parameters():
            p.grad = torch.randn_like(p) * 1e-3
        calls[name] = make(model).step
    model = our_gpt(shape)
    params = list(model.parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    calls["llmlab clip_grad_norm"] = lambda: clip_grad_norm(params, 1e9)
    calls["per-tensor clip (before)"] = lambda: clip_grad_norm_per_tensor(params, 1e9)
    calls["torch clip_grad_norm_"] = lambda: torch.nn.utils.clip_grad_norm_(params, 1e9)
    times: dict[str, list[float]] = {name: [] for name in calls}
    order, rng = list(calls), random.Random(0)
    for r in range(reps + 10):
        rng.shuffle(order)
        for name in order:
            start = time.perf_counter()
            calls[name]()
            if r >= 10:
                times[name].append(time.perf_counter() - start)
    return times


def profile(shape: Shape, arms: dict, steps: int = 20) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    data = batches(shape)
    for name, build in arms.items():
        step = build(shape)
        for i in range(3):
            step(*data[i % len(data)], lambda: None)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for i in range(steps):
                step(*data[i % len(data)], lambda: None)
        print(f"\n### profile: {name}, {shape.name}, {steps} steps")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated")
    parser.add_argument("--reps", type=int, default=200, help="timed steps per arm and shape")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--nanogpt", metavar="PATH", help="nanoGPT's model.py, for a 4th arm")
    parser.add_argument("--no-before", action="store_true", help="skip llmlab-before")
    parser.add_argument(
        "--ablations",
        action="store_true",
        help="also our GPT with F.cross_entropy for lm_loss, with the exact GELU, and both",
    )
    parser.add_argument("--profile", action="store_true", help="torch.profiler tables instead")
    parser.add_argument(
        "--optimizer", action="store_true", help="time optimizer.step() and clipping alone instead"
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    arms: dict[str, Callable[[Shape], Callable]] = {"llmlab": llmlab_step()}
    if not args.no_before:
        arms["llmlab-before"] = llmlab_step(False, clip_grad_norm_per_tensor)
    arms["torch-adamw"] = torch_adamw_step
    if args.ablations:
        arms["llmlab+F.cross_entropy"] = llmlab_step(loss="F.cross_entropy")
        arms["llmlab+exact-gelu"] = llmlab_step(activation="gelu")
        arms["llmlab+both"] = llmlab_step(loss="F.cross_entropy", activation="gelu")
    if args.nanogpt:
        arms["nanogpt"] = nanogpt_step(args.nanogpt)
    shapes = [SHAPES[name] for name in args.shapes.split(",")]
    if args.profile:
        for shape in shapes:
            profile(shape, arms)
        return

    print(f"# training step, {cpu_name()}, {args.threads} threads, torch {torch.__version__}")
    print(f"# {datetime.date.today()}; {args.reps} interleaved steps per arm, medians in ms")
    print(f"# {' '.join(['python', *sys.argv])}")
    if args.optimizer:
        for shape in shapes:
            n = sum(p.numel() for p in our_gpt(shape).parameters())
            print(f"\n{shape.name}: {shape.describe()}; {n:,} parameters\n")
            print("| what | median ms | IQR ms |\n|---|---:|---:|")
            for name, ts in measure_optimizers(shape, args.reps).items():
                q1, _, q3 = statistics.quantiles(ts, n=4)
                print(f"| {name} | {1e3 * statistics.median(ts):.3f} | {1e3 * (q3 - q1):.3f} |")
        return
    for shape in shapes:
        times = measure(shape, arms, args.reps, args.warmup)
        ours = times["llmlab"]["step"]
        print(f"\n{shape.name}: {shape.describe()} ({shape.where})\n")
        print("| shape | arm | median ms | IQR ms | speed (llmlab / arm) | paired |")
        print("|---|---|---:|---:|---:|---:|")
        for name, parts in times.items():
            ts = parts["step"]
            q1, _, q3 = statistics.quantiles(ts, n=4)
            med = statistics.median(ts)
            paired = statistics.median(t / o for t, o in zip(ts, ours, strict=True))
            print(
                f"| {shape.name} | {name} | {1e3 * med:.2f} | {1e3 * (q3 - q1):.2f} "
                f"| {med / statistics.median(ours):.3f} | {paired:.3f} |"
            )
        print(f"\nmedian ms of each part ({shape.name}):\n")
        print(f"| arm | {' | '.join(PARTS)} |")
        print("|---|" + "---:|" * len(PARTS))
        for name, parts in times.items():
            cells = " | ".join(f"{1e3 * statistics.median(parts[p]):.2f}" for p in PARTS)
            print(f"| {name} | {cells} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
