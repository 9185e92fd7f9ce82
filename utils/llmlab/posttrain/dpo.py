"""Direct preference optimisation (DPO), and its IPO, hinge and label-smoothed variants.

RLHF maximises ``E[r(x, y)] - beta * KL(pi || pi_ref)``. Its optimum is known in closed form,
``pi*(y|x) ∝ pi_ref(y|x) exp(r(x, y) / beta)``, so a reward can be read off any policy:

    r(x, y) = beta * (log pi(y|x) - log pi_ref(y|x)) + beta * log Z(x).

Put that *implicit reward* into the Bradley-Terry loss of a preference pair and ``Z(x)``
cancels (Rafailov et al. 2023): the policy is trained on the pairs directly, no reward model,
no sampling,

    z = (log pi(y_c) - log pi_ref(y_c)) - (log pi(y_r) - log pi_ref(y_r))
    loss = -log sigmoid(beta * z)                                    ("sigmoid", DPO)

and its gradient w.r.t. ``log pi(y_c)`` is ``-beta * sigmoid(-beta * z)``: large while the
policy still ranks the pair wrongly, vanishing once it ranks it right by a margin.

Variants (``loss_type``):

- ``"sigmoid"`` with ``label_smoothing`` eps: conservative DPO (Mitchell 2023), a pair's label
  flipped with probability eps: ``-(1 - eps) log sigmoid(beta z) - eps log sigmoid(-beta z)``.
- ``"robust"``: robust DPO (Chowdhury et al. 2024), an unbiased loss under flip rate eps:
  ``(-(1 - eps) log sigmoid(beta z) + eps log sigmoid(-beta z)) / (1 - 2 eps)``.
- ``"ipo"``: IPO (Azar et al. 2023), a squared loss that stops at a finite margin,
  ``(z - 1 / (2 beta))^2``; trl (and the IPO authors' runs) use per-token mean log-probs
  here, which :func:`dpo_batch_loss` does.
- ``"hinge"``: SLiC (Zhao et al. 2023), ``max(0, 1 - beta z)``.

:func:`dpo_loss` equals the loss trl 1.16 computes inside ``DPOTrainer._compute_loss`` for the
same log-probabilities (tests call trl's method on a real trainer). trl 1.16 dropped label
smoothing from its ``"sigmoid"`` loss; its ``"aot"`` loss keeps the conservative form, and the
tests compare with that one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from llmlab.posttrain.logprobs import sequence_logprobs
from llmlab.posttrain.preferences import PreferencePair, pair_batch, train_on_pairs
from llmlab.training.loop import History
from llmlab.validate import require_positive_int, require_real

__all__ = [
    "LOSS_TYPES",
    "dpo_loss",
    "precompute_reference_logps",
    "dpo_batch_loss",
    "pair_logps",
    "implicit_rewards",
    "train_dpo",
]

#: The loss types :func:`dpo_loss` implements (trl's names).
LOSS_TYPES = ("sigmoid", "robust", "ipo", "hinge")

_LOGPS = ("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps")


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    loss_type: str = "sigmoid",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO's loss per pair and the implicit rewards: four (pairs,) tensors -> three (pairs,).

    Inputs are sequence log-probabilities of the chosen and rejected completions under the
    policy and the frozen reference. Returns ``(losses, chosen_rewards, rejected_rewards)``
    with ``losses`` per pair (take ``.mean()`` to train) and the implicit rewards
    ``beta * (policy - ref)`` detached (they are for logging: margins, accuracies).
    """
    tensors = (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    for name, x in zip(_LOGPS, tensors, strict=True):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 1 or x.numel() == 0:
            raise ValueError(f"{name}: expected shape (pairs,), got {tuple(x.shape)}")
        if x.shape != policy_chosen_logps.shape:
            raise ValueError(
                f"{name}: expected the shape of policy_chosen_logps "
                f"{tuple(policy_chosen_logps.shape)}, got {tuple(x.shape)}"
            )
    beta = require_real(beta, "beta")
    if not (beta > 0 and math.isfinite(beta)):
        raise ValueError(f"beta: expected a positive number, got {beta!r}")
    eps = require_real(label_smoothing, "label_smoothing")
    if not 0 <= eps < 0.5:
        raise ValueError(f"label_smoothing: expected a number in [0, 0.5), got {eps!r}")
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type: expected one of {LOSS_TYPES}, got {loss_type!r}")
    if eps and loss_type not in ("sigmoid", "robust"):
        raise ValueError(
            f"label_smoothing: {loss_type!r} has no label smoothing; expected 0, got {eps!r}"
        )

    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    z = chosen_logratios - rejected_logratios
    logsigmoid = nn.functional.logsigmoid
    if loss_type == "sigmoid":
        losses = -(1 - eps) * logsigmoid(beta * z) - eps * logsigmoid(-beta * z)
    elif loss_type == "robust":
        losses = (-(1 - eps) * logsigmoid(beta * z) + eps * logsigmoid(-beta * z)) / (1 - 2 * eps)
    elif loss_type == "ipo":
        losses = (z - 1 / (2 * beta)) ** 2
    else:  # hinge
        losses = torch.relu(1 - beta * z)
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def _split_logps(
    model: nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probs of a preference batch: (chosen (pairs,), rejected (pairs,))."""
    for key in ("input_ids", "attention_mask", "completion_mask"):
        if key not in batch:
            raise ValueError(f"batch: expected a key {key!r}, got keys {sorted(batch)}")
    rows = batch["input_ids"].shape[0]
    if rows % 2:
        raise ValueError(f"batch: expected an even number of rows (chosen, rejected), got {rows}")
    logps = sequence_logprobs(
        model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    )
    chosen, rejected = logps.chunk(2)
    return chosen, rejected


@torch.no_grad()
def precompute_reference_logps(
    ref_model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]
) -> list[dict[str, torch.Tensor]]:
    """The reference's log-probs, computed once: each batch with two keys added.

    ``batches``: preference batches (chosen rows, then rejected rows; see
    :func:`llmlab.posttrain.logprobs.preference_batch`). Returns new dicts with
    ``ref_chosen_logps`` and ``ref_rejected_logps`` (pairs,), summed over each completion,
    as trl's ``precompute_ref_log_probs=True`` stores them: the frozen reference then never
    runs again during training, and need not stay in memory.
    """
    out = []
    for batch in batches:
        chosen, rejected = _split_logps(ref_model, batch)
        out.append({**batch, "ref_chosen_logps": chosen, "ref_rejected_logps": rejected})
    if not out:
        raise ValueError("batches: expected at least one batch, got none")
    return out


def dpo_batch_loss(
    policy: nn.Module,
    batch: dict[str, torch.Tensor],
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    loss_type: str = "sigmoid",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean loss, chosen_rewards, rejected_rewards) of ``policy`` on one preference batch.

    ``batch`` carries the reference's log-probs (:func:`precompute_reference_logps`). For
    ``"ipo"`` the loss divides every log-ratio by its completion's length first, as trl
    does; the rewards are ``beta`` times the summed log-ratios for every loss type.
    """
    for key in ("ref_chosen_logps", "ref_rejected_logps"):
        if key not in batch:
            raise ValueError(
                f"batch: expected a key {key!r} (run precompute_reference_logps first), "
                f"got keys {sorted(batch)}"
            )
    logps = (*_split_logps(policy, batch), batch["ref_chosen_logps"], batch["ref_rejected_logps"])
    losses, chosen_rewards, rejected_rewards = dpo_loss(*logps, beta, label_smoothing, loss_type)
    if loss_type == "ipo":  # the loss on per-token means; the rewards stay sequence-level
        length_c, length_r = batch["completion_mask"].sum(dim=1).chunk(2)
        means = [x / length for x, length in zip(logps, (length_c, length_r) * 2, strict=True)]
        losses, _, _ = dpo_loss(*means, beta, label_smoothing, loss_type)
    return losses.mean(), chosen_rewards, rejected_rewards


# --------------------------------------------------------------------------------------------
# On lists of preference pairs


@torch.no_grad()
def pair_logps(
    model: nn.Module, tokenizer: Any, pairs: Sequence[PreferencePair], batch_size: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probs of every pair's chosen and rejected answer under ``model``.

    Two (pairs,) float32 tensors, computed in eval mode, ``batch_size`` pairs at a time, under
    the device's autocast (:func:`llmlab.env.default_precision`): the same precision the
    training loop uses, so a policy equal to its reference gives log-ratios of exactly 0.
    """
    from llmlab.env import default_precision
    from llmlab.training import autocast

    pairs = list(pairs)
    if not pairs:
        raise ValueError("pairs: expected at least one preference pair, got none")
    batch_size = require_positive_int(batch_size, "batch_size")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    for start in range(0, len(pairs), batch_size):
        batch = pair_batch(tokenizer, pairs[start : start + batch_size])
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast(default_precision(device.type), device.type):
            c, r = _split_logps(model, batch)
        chosen.append(c.float().cpu())
        rejected.append(r.float().cpu())
    model.train(was_training)
    return torch.cat(chosen), torch.cat(rejected)


def _require_ref_logps(n: int, ref_chosen_logps: Any, ref_rejected_logps: Any) -> None:
    """Both reference log-prob vectors must be (n,) tensors, one entry per pair."""
    for name, ref in (
        ("ref_chosen_logps", ref_chosen_logps),
        ("ref_rejected_logps", ref_rejected_logps),
    ):
        if not isinstance(ref, torch.Tensor) or ref.shape != (n,):
            raise ValueError(
                f"{name}: expected a ({n},) tensor (one per pair, from pair_logps), got "
                f"{getattr(ref, 'shape', type(ref).__name__)}"
            )


def implicit_rewards(
    policy: nn.Module,
    tokenizer: Any,
    pairs: Sequence[PreferencePair],
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    batch_size: int = 8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DPO's implicit rewards ``beta * (log pi - log pi_ref)`` of each pair's two answers.

    A pair is ranked right when its chosen reward is the larger: the *preference accuracy*
    that trl logs as ``rewards/accuracies``.
    """
    _require_ref_logps(len(pairs), ref_chosen_logps, ref_rejected_logps)
    beta = require_real(beta, "beta")
    chosen, rejected = pair_logps(policy, tokenizer, pairs, batch_size)
    return beta * (chosen - ref_chosen_logps), beta * (rejected - ref_rejected_logps)


def train_dpo(
    policy: nn.Module,
    tokenizer: Any,
    pairs: Sequence[PreferencePair],
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    steps: int,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    batch_size: int = 8,
    lr: float = 1e-4,
    seed: int = 0,
    progress: bool = False,
) -> tuple[History, dict[str, list[float]]]:
    """Train ``policy`` (its parameters that require grad) with DPO on preference pairs.

    ``ref_*_logps``: the reference's log-probs of every pair (:func:`pair_logps`, computed
    once). Runs :func:`llmlab.posttrain.preferences.train_on_pairs` with
    :func:`dpo_batch_loss`. Returns the History and, per step, on that step's batch (before
    its update): ``margin``, the mean implicit-reward margin, and ``accuracy``, the share of
    pairs with a positive margin.
    """
    _require_ref_logps(len(pairs), ref_chosen_logps, ref_rejected_logps)
    metrics: dict[str, list[float]] = {"margin": [], "accuracy": []}

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        loss, chosen, rejected = dpo_batch_loss(
            model, batch, beta=beta, label_smoothing=label_smoothing, loss_type=loss_type
        )
        margin = (chosen - rejected).float()
        metrics["margin"].append(margin.mean().item())
        metrics["accuracy"].append((margin > 0).float().mean().item())
        return loss

    history = train_on_pairs(
        policy,
        tokenizer,
        pairs,
        loss_fn,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        per_pair={"ref_chosen_logps": ref_chosen_logps, "ref_rejected_logps": ref_rejected_logps},
        seed=seed,
        progress=progress,
    )
    return history, metrics
