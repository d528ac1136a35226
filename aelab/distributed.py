"""Data-parallel training across processes (torchrun): who am I, my shard, averaged gradients.

    torchrun --nproc-per-node=4 -m aelab train model=conv data=fashion-mnist
    torchrun --nnodes=2 --node-rank=0 --master-addr=HOST --nproc-per-node=8 -m aelab train ...

`setup()` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and
starts the process group (NCCL on CUDA, gloo on the CPU). `fit` consults `current()`; with one
process every call here is a no-op, so the single-process path is unchanged.

How the work is split (exact, not approximate): every rank draws the SAME seeded permutation of the
training set, takes the same global batch `perm[i*B:(i+1)*B]` and keeps its shard `[rank::world]`.
Each rank's loss is a mean over its B/world rows, so the mean over ranks of the gradients is the
gradient of the global batch: `average_grads` all-reduces each player's gradients after its
backward (one flat buffer per player). Models with several players (the engine's design) keep their
own optimisers, which is why this is not `DistributedDataParallel`. BatchNorm uses per-rank batch
statistics (as DDP without SyncBatchNorm does); `sync_buffers` copies rank 0's running statistics
to every rank at each epoch end so evaluation and early stopping agree everywhere.
Rank 0 writes every file (run folder, checkpoints, figures); the others only compute.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import ConfigError


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    group: bool = False  # a process group is running (torchrun, even with one process)

    @property
    def active(self) -> bool:
        return self.world > 1 or self.group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def check_batch(self, batch_size: int) -> None:
        if batch_size % self.world:
            raise ConfigError(f"train.batch_size={batch_size} must be divisible by the {self.world} processes "
                              "(it is the global batch, split evenly across them)")

    def shard(self, idx: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a global batch of indices: (B,) -> (B / world,)."""
        return idx[self.rank::self.world] if self.active else idx

    def average_grads(self, params: list[torch.nn.Parameter]) -> None:
        """Mean of each parameter's gradient over the ranks, in place (one all-reduce per call)."""
        if not self.active:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def mean(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The mean over ranks of each (scalar) value: one all-reduce per epoch for the history."""
        if not self.active or not values:
            return values
        keys = sorted(values)
        stacked = torch.stack([values[k].float() for k in keys])
        dist.all_reduce(stacked)
        return {k: v / self.world for k, v in zip(keys, stacked)}

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when it is true on one (a signal caught by one process stops them all)."""
        if not self.active:
            return flag
        t = torch.tensor([int(flag)], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def broadcast_module(self, module: torch.nn.Module, buffers_only: bool = False) -> None:
        """Copy rank 0's parameters (and buffers) to every rank."""
        if not self.active:
            return
        with torch.no_grad():
            tensors = list(module.buffers()) + ([] if buffers_only else list(module.parameters()))
            for t in tensors:
                dist.broadcast(t.data, src=0)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


_CURRENT = DistributedContext()


def current() -> DistributedContext:
    """The context of this process (rank 0 of 1 unless `setup` started a process group)."""
    return _CURRENT


def launched_rank() -> int:
    """This process's rank as torchrun launched it (0 without torchrun), even after `teardown`."""
    return int(os.environ.get("RANK", "0"))


def setup(device: torch.device) -> tuple[DistributedContext, torch.device]:
    """Join the process group that torchrun describes in the environment; a no-op without one.

    Returns the context and the device this rank trains on (cuda:LOCAL_RANK on a GPU machine)."""
    global _CURRENT
    if "TORCHELASTIC_RUN_ID" not in os.environ and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return _CURRENT, device  # not launched by torchrun: one plain process
    # Under torchrun the group starts even for one process, so a 1-GPU run takes the NCCL path N GPUs take.
    world, rank, local = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    _CURRENT = DistributedContext(rank, world, local, group=True)
    return _CURRENT, device


def backend() -> str | None:
    """The process group's backend ("nccl", "gloo"), or None without one."""
    return dist.get_backend() if dist.is_initialized() else None


def teardown() -> None:
    """Leave the process group (at the end of a run), so the process exits cleanly."""
    global _CURRENT
    if dist.is_initialized():
        dist.destroy_process_group()
    _CURRENT = DistributedContext()
