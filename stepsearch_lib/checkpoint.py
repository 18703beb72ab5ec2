"""Training checkpoints: the trainable weights (actor adapter; critic adapter + value head),
optimizers and step, written atomically.

    <ckpt_dir>/step-000010/{actor_adapter.safetensors, critic.safetensors, optim.pt, state.json}
    <ckpt_dir>/latest            (the name of the newest complete step folder)

A step folder is written under a temporary name and renamed into place, then ``latest`` is
replaced atomically: a kill during a save leaves the previous checkpoint loadable. Optimizer
states are loaded with ``torch.load(weights_only=True)``; weights are safetensors. Per-step
randomness in training is derived from (seed, step), so no RNG state needs saving.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .fileio import MissingInputError, atomic_path


def _trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().clone() for n, p in module.named_parameters() if p.requires_grad}


def _load_trainable(module: torch.nn.Module, file: Path, skip: str | None = None) -> None:
    """Copy ``file``'s tensors into ``module``'s trainable parameters; the two name sets must match exactly
    (names containing ``skip`` left out of both)."""
    keep = (lambda n: skip not in n) if skip else (lambda n: True)
    tensors = {n: t for n, t in load_file(str(file)).items() if keep(n)}
    params = {n: p for n, p in module.named_parameters() if p.requires_grad and keep(n)}
    if set(tensors) != set(params):
        raise KeyError(
            f"{file}: trainable parameters differ from the model's "
            f"(missing {sorted(set(params) - set(tensors))[:3]}, unexpected {sorted(set(tensors) - set(params))[:3]})"
        )
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value)


def save_checkpoint(ckpt_dir: Path, step: int, actor, critic, actor_opt, critic_opt, extra: dict | None = None) -> Path:
    """Save everything needed to resume after ``step`` updates."""
    ckpt_dir = Path(ckpt_dir)
    target = ckpt_dir / f"step-{step:06d}"
    with atomic_path(target, is_dir=True) as tmp:
        save_file(_trainable_state(actor), str(tmp / "actor_adapter.safetensors"))
        save_file(_trainable_state(critic), str(tmp / "critic.safetensors"))
        torch.save({"actor": actor_opt.state_dict(), "critic": critic_opt.state_dict()}, tmp / "optim.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, **(extra or {})}, indent=2))
    with atomic_path(ckpt_dir / "latest") as tmp:
        Path(tmp).write_text(target.name)
    return target


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    pointer = Path(ckpt_dir) / "latest"
    if not pointer.is_file():
        return None
    path = Path(ckpt_dir) / pointer.read_text().strip()
    if not (path / "state.json").is_file():
        raise MissingInputError(f"{pointer} names {path.name}, which is not a complete checkpoint")
    return path


def load_policy_weights(path: Path, actor, skip: str = ".critic.") -> dict:
    """Restore only the policy from a training checkpoint (for evaluation: no critic, no optimizers): every
    tensor of ``actor_adapter.safetensors`` except a shared critic's adapter (names containing ``skip``).
    Returns the checkpoint's state."""
    _load_trainable(actor, Path(path) / "actor_adapter.safetensors", skip)
    return json.loads((Path(path) / "state.json").read_text())


def load_checkpoint(path: Path, actor, critic, actor_opt, critic_opt) -> dict:
    """Restore a checkpoint in place; returns its state (``step`` and extras)."""
    path = Path(path)
    _load_trainable(actor, path / "actor_adapter.safetensors")
    _load_trainable(critic, path / "critic.safetensors")
    optim = torch.load(path / "optim.pt", weights_only=True)
    actor_opt.load_state_dict(optim["actor"])
    critic_opt.load_state_dict(optim["critic"])
    return json.loads((path / "state.json").read_text())
