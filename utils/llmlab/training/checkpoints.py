"""Checkpoints that resume exactly: model, optimizer, schedule, RNG states and the log, written
atomically (a temporary folder renamed into place), so a crash never leaves a half checkpoint."""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from llmlab.training.loop import History, TrainConfig

__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint"]


def _step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:08d}"


def latest_checkpoint(checkpoint_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint under ``checkpoint_dir`` (None if there is none).

    Only fully written checkpoints count: each is built in a temporary folder and renamed into
    place in one atomic step, so a crash mid-write leaves the previous one intact.
    """
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return None
    done = sorted(p for p in root.glob("step-*") if (p / "trainer.json").is_file())
    return done[-1] if done else None


def save_checkpoint(
    checkpoint_dir: str | os.PathLike,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    history: History | None = None,
    keep: int = 2,
    config: TrainConfig | None = None,
) -> Path:
    """Write model, optimizer, scheduler, RNG states and history for ``step``; atomically.

    Layout: ``step-NNNNNNNN/{model.safetensors, optimizer.safetensors, trainer.json}``. Tensors
    go to safetensors (no pickle: safe to load from strangers); the rest is JSON. Keeps the
    newest ``keep`` checkpoints (0 keeps all).
    """
    from safetensors.torch import save_file, save_model

    root = Path(checkpoint_dir)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-step-{step:08d}-", dir=root))
    try:
        save_model(model, str(tmp / "model.safetensors"))  # handles tied weights
        tensors, meta = _optimizer_state(optimizer)
        tensors["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_available():
            for i, state in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng.cuda.{i}"] = state
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        py_state = random.getstate()
        trainer = {
            "step": step,
            "optimizer": meta,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "history": asdict(history) if history is not None else None,
            "rng_python": [py_state[0], list(py_state[1]), py_state[2]],
            "config": asdict(config) if config is not None else None,
        }
        (tmp / "trainer.json").write_text(json.dumps(trainer))
        final = _step_dir(root, step)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep:
        for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler=None,
) -> tuple[int, History]:
    """Restore what :func:`save_checkpoint` wrote into ``model`` (and optimizer, scheduler, RNGs).

    Returns ``(step, history)``: the number of steps done and the log so far.
    """
    from safetensors.torch import load_file, load_model

    from llmlab.training.loop import History

    path = Path(path)
    if not (path / "trainer.json").is_file():
        raise FileNotFoundError(
            f"path: {path} is not a complete checkpoint (no trainer.json); "
            "use latest_checkpoint(checkpoint_dir) to find one"
        )
    device = next(model.parameters()).device
    load_model(model, str(path / "model.safetensors"), device=str(device))
    trainer = json.loads((path / "trainer.json").read_text())
    tensors = load_file(str(path / "optimizer.safetensors"))
    if optimizer is not None:
        _load_optimizer_state(optimizer, tensors, trainer["optimizer"], device)
    if scheduler is not None and trainer["scheduler"] is not None:
        scheduler.load_state_dict(trainer["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    version, state, gauss = trainer["rng_python"]
    random.setstate((version, tuple(state), gauss))
    history = History(**trainer["history"]) if trainer["history"] else History()
    return trainer["step"], history


def _optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, state in sd["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{index}.{name}"] = value
    groups = [
        {
            k: ({"dtype": str(v).removeprefix("torch.")} if isinstance(v, torch.dtype) else v)
            for k, v in group.items()
        }
        for group in sd["param_groups"]
    ]  # JSON has no dtype
    return tensors, {"param_groups": groups, "scalars": scalars}


def _load_optimizer_state(optimizer, tensors, meta, device) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("state."):
            _, index, name = key.split(".", 2)
            # torch keeps AdamW's "step" on the CPU unless it runs fused/capturable
            state.setdefault(int(index), {})[name] = value if name == "step" else value.to(device)
    for key, value in meta["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    groups = meta["param_groups"]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
        for k, v in group.items():
            if isinstance(v, dict) and set(v) == {"dtype"}:
                group[k] = getattr(torch, v["dtype"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})
