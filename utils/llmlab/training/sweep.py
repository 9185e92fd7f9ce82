"""A model-size sweep trained to convergence, one size per CPU core (chapter 03's scaling laws).

Kaplan's :math:`L(N)` is the loss a model of size N reaches when data is not the limit, so each
size of the sweep trains until its validation loss stops improving:
:func:`train_until_converged` runs :func:`llmlab.training.train` in chunks of
``check_steps`` at a constant learning rate (after a short warmup), resuming each chunk from
the previous one's checkpoint, and stops once the last quarter of its steps improved the
validation loss by less than ``converged`` at ``patience`` checks in a row (a single
flat stretch can be a plateau that the model later leaves), or at ``max_steps``.

:func:`run_sweep` runs the sizes in parallel worker processes, one thread each: the models
are too small for two threads to speed up one of them, so two cores train two sizes at once.
Every size is seeded, so the results do not depend on which worker ran it.
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass

import numpy as np

from llmlab.validate import require_positive_int

__all__ = ["SizeJob", "improvement", "train_until_converged", "run_sweep"]


@dataclass(frozen=True)
class SizeJob:
    """One size of a sweep: a GPT-2-layout model trained on packed token files.

    size: (d_model, n_layers, n_heads). train_path, val_path: files written by
    :func:`llmlab.data.packing.write_token_file`. The validation set is the first
    ``eval_windows`` consecutive windows of ``seq`` tokens of ``val_path``.
    """

    size: tuple[int, int, int]
    train_path: str
    val_path: str
    vocab_size: int
    seq: int = 64
    batch: int = 32
    lr: float = 3e-3
    warmup_steps: int = 100
    check_steps: int = 250
    min_checks: int = 4
    max_steps: int = 5000
    converged: float = 0.02
    patience: int = 2
    eval_windows: int = 512
    seed: int = 0

    def __post_init__(self):
        if len(self.size) != 3:
            raise ValueError(f"size: expected (d_model, n_layers, n_heads), got {self.size!r}")
        for name in ("vocab_size", "seq", "batch", "check_steps", "min_checks", "max_steps",
                     "patience", "eval_windows"):  # fmt: skip
            require_positive_int(getattr(self, name), name)
        for value in self.size:
            require_positive_int(value, "size")
        if not 0 <= self.warmup_steps < self.max_steps:
            raise ValueError(
                f"warmup_steps: expected 0 <= warmup_steps < max_steps={self.max_steps}, "
                f"got {self.warmup_steps!r}"
            )
        if not 0 < self.converged < 1:
            raise ValueError(f"converged: expected a fraction in (0, 1), got {self.converged!r}")
        if not self.lr > 0:
            raise ValueError(f"lr: expected > 0, got {self.lr!r}")

    @property
    def cost(self) -> int:
        """A rough cost per step (12 L d^2 + the output layer): the biggest jobs start first."""
        d, n_layers, _ = self.size
        return 12 * n_layers * d * d + self.vocab_size * d


def improvement(eval_steps: Sequence[int], eval_losses: Sequence[float]) -> float:
    """Relative drop of the loss over the last 25% of the steps so far.

    ``(L(0.75 s) - L(s)) / L(0.75 s)`` with s the last evaluated step and L(0.75 s)
    interpolated linearly between evaluations (the first one before any).
    """
    if len(eval_steps) != len(eval_losses) or not eval_steps:
        raise ValueError("eval_steps, eval_losses: expected two non-empty lists of equal length")
    earlier = float(np.interp(0.75 * eval_steps[-1], eval_steps, eval_losses))
    return (earlier - eval_losses[-1]) / earlier


def train_until_converged(job: SizeJob) -> dict:
    """Train one size of ``job`` until it converges (see the module docstring); its numbers.

    Returns a dict: size, N (non-embedding parameters), total (all parameters), steps,
    tokens and val (the validation curve), converged, last_gain (the final
    :func:`improvement`), accuracy (next-token top-1 on the validation windows), seconds
    (training steps only) and tok_s.
    """
    import torch

    from llmlab.data.packing import RandomBatchSampler, TokenFile
    from llmlab.env import seed_everything
    from llmlab.models import GPT, GPTConfig
    from llmlab.models.counting import parameter_breakdown
    from llmlab.training.loop import TrainConfig, train
    from llmlab.training.losses import lm_loss

    if not isinstance(job, SizeJob):
        raise TypeError(f"job: expected a SizeJob, got {type(job).__name__}")
    torch.set_num_threads(1)
    d, n_layers, n_heads = job.size
    seed_everything(job.seed)
    model = GPT(GPTConfig(vocab_size=job.vocab_size, max_seq=job.seq, d_model=d,
                          n_layers=n_layers, n_heads=n_heads))  # fmt: skip
    sampler = RandomBatchSampler(TokenFile(job.train_path), job.batch, job.seq, seed=job.seed)
    val_x, val_y = next(
        RandomBatchSampler(TokenFile(job.val_path), job.eval_windows, job.seq).sequential(
            max_batches=1
        )
    )
    config = TrainConfig(steps=job.max_steps, lr=job.lr, seed=job.seed, label_smoothing=0.0,
                         warmup_frac=job.warmup_steps / job.max_steps, min_lr_ratio=1.0,
                         eval_every=job.check_steps)  # fmt: skip

    def evaluate(m):
        return lm_loss(m(val_x), val_y).item()

    calm, done, converged = 0, 0, False
    with tempfile.TemporaryDirectory(prefix="llmlab_sweep_") as folder:
        while done < job.max_steps:
            done = min(done + job.check_steps, job.max_steps)
            history = train(model, sampler, config, evaluate=evaluate, checkpoint_dir=folder,
                            stop_after=done, progress=False)  # fmt: skip
            checks = len(history.eval_step)
            flat = improvement(history.eval_step, history.eval_loss) < job.converged
            calm = calm + 1 if flat and checks >= job.min_checks else 0
            if calm >= job.patience:
                converged = True
                break
    with torch.no_grad():
        accuracy = (model(val_x).argmax(-1) == val_y).float().mean().item()
    return dict(
        size=tuple(job.size),
        N=model.num_parameters() - parameter_breakdown(model.config)["embedding"],
        total=model.num_parameters(),
        steps=history.eval_step[-1],
        tokens=[s * job.batch * job.seq for s in history.eval_step],
        val=list(history.eval_loss),
        converged=converged,
        last_gain=improvement(history.eval_step, history.eval_loss),
        accuracy=accuracy,
        seconds=sum(history.seconds),
        tok_s=history.tokens_per_second(),
    )


def run_sweep(jobs: Sequence[SizeJob], workers: int | None = None, report=print) -> list[dict]:
    """:func:`train_until_converged` for every job, ``workers`` at a time (default: the cores).

    Returns the results in the order of ``jobs``. The largest jobs start first, so the last
    one to finish is a small one. ``report(text)`` is called as each job finishes (``None``:
    silent). Workers are started with ``spawn`` (fresh interpreters that import llmlab), which
    works the same in a notebook, on Linux, macOS and Windows.
    """
    jobs = list(jobs)
    if not jobs or not all(isinstance(j, SizeJob) for j in jobs):
        raise TypeError("jobs: expected a non-empty sequence of SizeJob")
    workers = min(len(jobs), os.cpu_count() or 1) if workers is None else workers
    require_positive_int(workers, "workers")
    start = time.perf_counter()
    results: list[dict | None] = [None] * len(jobs)

    def note(i: int) -> None:
        if report is not None:
            r = results[i]
            d, n_layers, _ = r["size"]
            report(
                f"[{time.perf_counter() - start:5.0f} s] d={d:3d} L={n_layers}: "
                f"{r['steps']:,} steps, {'converged' if r['converged'] else 'at the cap'}"
            )

    order = sorted(range(len(jobs)), key=lambda i: -jobs[i].cost)
    if workers == 1:
        for i in order:
            results[i] = train_until_converged(jobs[i])
            note(i)
        return results  # type: ignore[return-value]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = {pool.submit(train_until_converged, jobs[i]): i for i in order}
        for future in as_completed(futures):
            i = futures[future]
            results[i] = future.result()
            note(i)
    return results  # type: ignore[return-value]
