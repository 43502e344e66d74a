"""Batches: a seeded order (replayable from any batch), shards for data parallelism, and where cached images live
during a run (host or accelerator).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch.utils.data import DataLoader

from .images import ImageSet

__all__ = ["make_loader", "DATA_ON_DEVICE", "place"]

_logger = logging.getLogger(__name__)


def make_loader(
    data: ImageSet,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    workers: int = 0,
    shard: Callable[[int], slice] | None = None,
    skip: int = 0,
    drop_last: bool = False,
) -> tuple[DataLoader, list[tuple[int, float]]]:
    """Batches whose order depends only on ``seed`` (a fresh generator per call, so an epoch can be replayed).

    Global batches come from one seeded permutation; with ``shard`` (data parallelism) each rank loads its share
    of every global batch. Returns the loader and, per batch, (global batch size, weight): weight 0 marks a rank
    whose share of a tiny last batch was empty and that runs one item only to take part in the step. ``skip``
    drops the first batches (an epoch resumed after an interruption), without loading them. ``drop_last`` leaves
    out the last global batch when it is incomplete (the reference code's loader does).
    """
    n = len(data)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist() if shuffle else list(range(n))
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    meta = [(len(b), 1.0) for b in batches]
    if shard is not None:
        local = [b[shard(len(b))] for b in batches]
        meta = [(len(b), 1.0 if part else 0.0) for b, part in zip(batches, local)]
        batches = [part or b[:1] for b, part in zip(batches, local)]
    batches, meta = batches[skip:], meta[skip:]
    if data.images is not None:  # cached: one gather per batch, on whatever device the images are
        return _CachedBatches(data.images, data.labels, batches), meta
    # An explicit generator: a DataLoader otherwise draws its workers' base seed from the global torch RNG, which
    # would shift every later draw (drop-path, dropout) when an epoch is resumed part-way.
    loader = DataLoader(
        data.dataset(seed),
        batch_sampler=batches,
        num_workers=workers,
        persistent_workers=False,
        generator=torch.Generator().manual_seed(seed),
    )
    return loader, meta


DATA_ON_DEVICE = ("auto", "on", "off")


def place(data: ImageSet, device: torch.device, policy: str = "auto") -> ImageSet:
    """Where a split's cached images live while a run uses them.

    ``on``: on ``device`` (uint8, normalised there batch by batch: no host-to-device copy per step); ``off``: in
    host memory; ``auto``: on an accelerator when they take at most a quarter of its memory, else in host memory.
    """
    if policy not in DATA_ON_DEVICE:
        raise ValueError(f"data-on-device must be one of {', '.join(DATA_ON_DEVICE)}; got {policy!r}")
    if data.images is None or policy == "off" or device.type == "cpu":
        return data
    if policy == "auto" and device.type == "cuda":
        if data.nbytes > torch.cuda.get_device_properties(device).total_memory // 4:
            return data
    return data.to(device)


class _CachedBatches:
    """Batches of in-memory images: one ``index_select`` per batch instead of a DataLoader's per-item indexing and
    collation (the images may live on the GPU, where the per-item path would be launch-bound)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batches: list[list[int]]) -> None:
        self.images, self.labels, self.batches = images, labels, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for b in self.batches:
            idx = torch.tensor(b, dtype=torch.long).to(self.images.device, non_blocking=True)
            yield self.images.index_select(0, idx), self.labels.index_select(0, idx)
