"""Data parallelism under ``torchrun`` (gloo on CPU, nccl on GPU), exact with respect to a single process.

Every rank draws the same subnet (same seeded RNG), computes its share of each global batch, and the gradients
that subnet produced are all-reduced in one flat buffer. Parameters outside the subnet keep ``grad = None`` on
every rank, so AdamW leaves them alone exactly as in a single process (DistributedDataParallel's unused-parameter
handling may hand back zero gradients instead, which AdamW would apply). Each rank's loss is weighted by its
share of the global batch, so the summed gradient is the gradient of the global mean even for uneven batches.
Only rank 0 writes files.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

__all__ = ["Distributed", "setup_distributed"]

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Distributed:
    """This process's place in the job; a single process is rank 0 of 1."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This rank's contiguous share of ``n`` items (shares differ by at most one)."""
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (1 if self.rank < extra else 0))

    def all_reduce_grads(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Sum the existing gradients over ranks in one flat buffer (the same set exists on every rank)."""
        if not self.enabled:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def sum(self, values: Sequence[float], device: torch.device) -> list[float]:
        """Sum a few numbers over ranks (losses, correct counts)."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(list(values), dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        """Sum a device tensor over ranks in place, without waiting for it on the host; returns it."""
        if self.enabled:
            dist.all_reduce(t)
        return t

    def gather(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Each tensor concatenated over ranks in rank order (on the host): a split's per-row statistics, sharded
        for evaluation, whole again on every rank."""
        if not self.enabled:
            return list(tensors)
        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, [t.detach().cpu() for t in tensors])
        return [torch.cat([part[i] for part in gathered]) for i in range(len(tensors))]

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """``map`` with the items split over ranks and the results gathered, in order, on every rank."""
        items = list(items)
        if not self.enabled:
            return [fn(x) for x in items]
        mine = [(i, fn(x)) for i, x in enumerate(items) if i % self.world == self.rank]
        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, mine)
        out: dict[int, R] = {i: r for part in gathered for i, r in part}
        return [out[i] for i in range(len(items))]

    def broadcast_object(self, obj: T) -> T:
        """Rank 0's ``obj`` (any picklable value) on every rank."""
        if not self.enabled:
            return obj
        box: list[Any] = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def broadcast_params(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Make every rank start from rank 0's values."""
        if self.enabled:
            with torch.no_grad():
                for p in params:
                    dist.broadcast(p.data, src=0)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def setup_distributed(device: torch.device) -> tuple[Distributed, torch.device]:
    """Join the process group torchrun set up (env WORLD_SIZE > 1); returns the job and this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed(), device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    return Distributed(rank=rank, world=world, local_rank=local), device
