"""Data parallelism for the training loop, under ``accelerate launch`` (or any torch.distributed
launcher): every process rolls out its own share of questions, and gradients are averaged
across processes before each optimizer step, so all replicas keep identical weights.

Without a launcher this is a single process and every function here is a no-op. We average
gradients by hand (one all-reduce per parameter tensor) instead of wrapping the models in DDP:
the update calls the actor with its adapter disabled (reference policy) and, with the shared
critic, under a second adapter -- patterns DDP's hooks are not built for.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_world(cpu: bool = True) -> World:
    """Join the process group a launcher set up (gloo on CPU); a plain run is a world of one."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return World()
    from accelerate import PartialState

    state = PartialState(cpu=cpu)
    return World(rank=state.process_index, size=state.num_processes)


def average_gradients(params, world: World) -> None:
    """grad <- mean over processes (missing grads count as zeros, so every rank joins every all-reduce)."""
    if world.size == 1:
        return
    import torch.distributed as dist

    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        p.grad /= world.size


def mean_over_processes(values: dict[str, float], world: World) -> dict[str, float]:
    """Metric dict averaged over processes (same keys on every rank)."""
    if world.size == 1:
        return values
    import torch.distributed as dist

    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return {k: float(v) / world.size for k, v in zip(keys, t.tolist())}


def barrier(world: World) -> None:
    if world.size > 1:
        import torch.distributed as dist

        dist.barrier()


def assert_replicas_equal(params, world: World, atol: float = 0.0) -> None:
    """Raise if any process's weights differ from the others' (data-parallel replicas must stay identical)."""
    if world.size == 1:
        return
    import torch.distributed as dist

    flat = torch.cat([p.detach().reshape(-1).double() for p in params])
    hi, lo = flat.clone(), flat.clone()
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    spread = (hi - lo).abs().max().item() if flat.numel() else 0.0
    if spread > atol:
        raise RuntimeError(
            f"data-parallel replicas diverged: max weight difference {spread:.3g} across {world.size} processes"
        )
