"""Knowledge distillation: a small student trained on a large teacher's output distribution.

Hinton et al. (2015): the teacher's probabilities over the whole vocabulary say more than the
one right token ("dark knowledge": which wrong answers are nearly right). The student
minimises, at every position, a mix of the usual loss on the true next token and the KL
divergence from the teacher's distribution, both softened by a temperature T:

    loss = alpha * T^2 * KL(p_teacher^T || p_student^T) + (1 - alpha) * CE(student, target)

``p^T = softmax(logits / T)``. Softening by T > 1 lifts the small probabilities the student
should learn from; since the soft loss's gradients shrink as 1/T^2, the T^2 factor keeps the
two terms' scales comparable whatever T is.

**Top-k teacher logits.** SmolLM2's vocabulary has 49,152 entries: full float16 logits for
50k training tokens would take 4.9 GB (15 GB at 150k). The teacher's top ``k`` logits (k = 32)
and the log-sum-exp of all of them are kept instead (:func:`teacher_topk`): the soft target
is the teacher's distribution renormalised over its top k, and the log-sum-exp says how much
probability that drops (:func:`topk_mass`). The student's log-probabilities are computed over
the whole vocabulary and read at the teacher's k entries.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llmlab.compress.evaluate import _logits
from llmlab.validate import require_int, require_positive_int, require_real

__all__ = [
    "teacher_topk",
    "topk_mass",
    "distillation_loss",
    "DistillationBatches",
    "kd_loss_fn",
    "cached_teacher_topk",
    "save_model",
    "load_model",
]


def teacher_topk(
    model,
    windows: torch.Tensor,
    k: int = 32,
    batch_size: int = 4,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """The teacher's ``k`` largest logits at every position of ``windows`` (n, seq).

    Returns ``{"values": float16 (n, seq, k), "indices": int32 (n, seq, k), "lse": float32
    (n, seq)}``: logits in descending order, their vocabulary ids, and the log-sum-exp of the
    full logit vector (so ``topk_mass`` can say what share of the probability the k keep).
    ``autocast_dtype``: run the teacher's forward passes under autocast to this dtype
    (``torch.bfloat16``: faster on a CPU with bf16 instructions).
    """
    k = require_positive_int(k, "k")
    batch_size = require_positive_int(batch_size, "batch_size")
    if not isinstance(windows, torch.Tensor) or windows.dim() != 2:
        raise ValueError("windows: expected an int tensor (n_windows, seq)")
    values, indices, lse = [], [], []
    with torch.no_grad():
        for start in range(0, windows.shape[0], batch_size):
            ids = windows[start : start + batch_size]
            use = autocast_dtype is not None
            with torch.autocast(ids.device.type, dtype=autocast_dtype, enabled=use):
                logits = _logits(model, ids)
            logits = logits.float()
            top = logits.topk(k, dim=-1)
            values.append(top.values.half())
            indices.append(top.indices.int())
            lse.append(torch.logsumexp(logits, dim=-1))
    return {"values": torch.cat(values), "indices": torch.cat(indices), "lse": torch.cat(lse)}


def topk_mass(teacher: dict[str, torch.Tensor]) -> torch.Tensor:
    """The teacher's probability (at T = 1) on its top k tokens, at every position."""
    return torch.exp(teacher["values"].float() - teacher["lse"][..., None]).sum(-1)


def _require_kd(temperature, alpha) -> tuple[float, float]:
    T = require_real(temperature, "temperature")
    if T <= 0:
        raise ValueError(f"temperature: expected a positive number, got {temperature!r}")
    a = require_real(alpha, "alpha")
    if not 0 <= a <= 1:
        raise ValueError(f"alpha: expected a number in [0, 1], got {alpha!r}")
    return T, a


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_values: torch.Tensor,
    teacher_indices: torch.Tensor,
    targets: torch.Tensor | None = None,
    temperature: float = 2.0,
    alpha: float = 0.5,
) -> torch.Tensor:
    """``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, targets)``.

    student_logits (..., vocab); teacher_values, teacher_indices (..., k): the teacher's top-k
    logits and their ids (the teacher's distribution is renormalised over them); targets
    (...) the true next tokens (needed when alpha < 1). Means over positions.
    """
    T, a = _require_kd(temperature, alpha)
    if (
        teacher_values.shape != teacher_indices.shape
        or teacher_values.shape[:-1] != student_logits.shape[:-1]
    ):
        raise ValueError(
            "teacher_values, teacher_indices: expected (..., k) with the student's leading dims "
            f"{tuple(student_logits.shape[:-1])}, got {tuple(teacher_values.shape)} and "
            f"{tuple(teacher_indices.shape)}"
        )
    z = student_logits.float()
    loss = z.new_zeros(())
    if a > 0:
        log_q = F.log_softmax(teacher_values.float() / T, dim=-1)  # teacher over its top k
        log_p = F.log_softmax(z / T, dim=-1)  # the student over the whole vocabulary
        log_p_k = log_p.gather(-1, teacher_indices.long())  # ... read at the teacher's k ids
        kl = (log_q.exp() * (log_q - log_p_k)).sum(-1).mean()
        loss = loss + a * T * T * kl
    if a < 1:
        if targets is None:
            raise ValueError("targets: the hard loss (alpha < 1) needs the true next tokens")
        ce = F.cross_entropy(z.reshape(-1, z.shape[-1]), targets.reshape(-1))
        loss = loss + (1 - a) * ce
    return loss


class DistillationBatches:
    """Training batches with the teacher's answers: ``batch_fn`` for :func:`llmlab.training.train`.

    ``windows`` (n, seq + 1): fixed windows of the training stream; ``teacher``: the
    :func:`teacher_topk` of ``windows[:, :-1]`` (the teacher's prediction at every input
    position). Batch ``i`` is ``batch_size`` windows drawn without replacement by a generator
    seeded with ``(seed, i)``: ``(inputs, targets, top-k values, top-k ids)``, a pure function
    of ``i`` (so a resumed run sees the same batches).
    """

    def __init__(self, windows: torch.Tensor, teacher: dict, batch_size: int, seed: int = 0):
        if not isinstance(windows, torch.Tensor) or windows.dim() != 2 or windows.shape[1] < 2:
            raise ValueError("windows: expected an int tensor (n, seq + 1) with seq >= 1")
        n, seq = windows.shape[0], windows.shape[1] - 1
        if (
            teacher["values"].shape[:2] != (n, seq)
            or teacher["indices"].shape != teacher["values"].shape
        ):
            raise ValueError(
                f"teacher: expected top-k tensors of shape ({n}, {seq}, k) for windows {tuple(windows.shape)}, "
                f"got {tuple(teacher['values'].shape)}"
            )
        self.batch_size = require_positive_int(batch_size, "batch_size")
        if self.batch_size > n:
            raise ValueError(f"batch_size: expected at most the {n} windows, got {batch_size}")
        self.seed = require_int(seed, "seed", 0)
        self.windows, self.teacher = windows, teacher

    def __call__(self, i: int):
        if isinstance(i, bool) or not isinstance(i, int) or i < 0:
            raise ValueError(f"i: expected a batch index >= 0, got {i!r}")
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        rows = torch.randperm(self.windows.shape[0], generator=g)[: self.batch_size]
        w = self.windows[rows]
        return w[:, :-1], w[:, 1:], self.teacher["values"][rows], self.teacher["indices"][rows]


def kd_loss_fn(temperature: float = 2.0, alpha: float = 0.5):
    """A ``loss_fn`` for :func:`llmlab.training.train` on :class:`DistillationBatches`:
    :func:`distillation_loss` of the model's logits (``alpha = 0``: the hard loss alone, on
    the same batches)."""
    _require_kd(temperature, alpha)

    def loss_fn(model, batch, config):
        inputs, targets, values, indices = batch
        logits = _logits(model, inputs)
        return distillation_loss(logits, values, indices, targets, temperature, alpha)

    return loss_fn


def cached_teacher_topk(
    name: str,
    teacher,
    windows: torch.Tensor,
    k: int = 32,
    batch_size: int = 4,
    autocast_dtype: torch.dtype | None = None,
):
    """:func:`teacher_topk` of ``windows[:, :-1]``, kept in the course cache under ``name``.

    The file holds the windows too: a cached answer for other windows (another corpus, another
    size) is recomputed, never reused. Returns ``(teacher dict, seconds spent computing)``
    (0.0 when it came from the cache).
    """
    import time

    from llmlab import results

    try:
        cached = results.load_tensors(name)
        if torch.equal(cached["windows"], windows) and cached["values"].shape[-1] == k:
            return {key: cached[key] for key in ("values", "indices", "lse")}, 0.0
    except results.ResultMissingError:
        pass
    start = time.perf_counter()
    out = teacher_topk(teacher, windows[:, :-1], k, batch_size, autocast_dtype)
    seconds = time.perf_counter() - start
    results.save_tensors(name, {"windows": windows, **out})
    return out, seconds


def save_model(name: str, model) -> None:
    """Save one of the course's decoder models (its config and weights) in the course cache,
    atomically; a tied output head is stored once (safetensors refuses shared tensors)."""
    import dataclasses
    import json

    from llmlab import results

    config = model.config
    state = dict(model.state_dict())
    if getattr(config, "tie_embeddings", False):
        state.pop("lm_head.weight", None)
    meta = {"class": type(model).__name__, "config": json.dumps(dataclasses.asdict(config))}
    results.save_tensors(name, state, metadata=meta)


def load_model(name: str, made_by: str | None = None):
    """The model :func:`save_model` saved under ``name``, in eval mode (raises
    :class:`llmlab.results.ResultMissingError`, naming ``made_by``, when it is not there)."""
    import json

    from safetensors import safe_open

    from llmlab import models, results

    state = results.load_tensors(name, made_by=made_by)
    with safe_open(results.result_path(name, ".safetensors"), "pt") as f:
        meta = f.metadata()
    cls = getattr(models, meta["class"])
    config_cls = getattr(models, meta["class"] + "Config")
    model = cls(config_cls(**json.loads(meta["config"])))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise ValueError(
            f"{name}: the saved weights do not fit {meta['class']} ({missing}, {unexpected})"
        )
    return model.eval()
