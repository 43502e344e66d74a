"""Batches: a seeded order (replayable from any batch), shards for data parallelism, and where cached images live
during a run (host or accelerator).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import torch

from .images import ImageSet
from .sequences import TextSet

# A split of any modality: what the loaders, the trainer and the search take.
Split = ImageSet | TextSet

__all__ = ["make_loader", "DATA_ON_DEVICE", "place", "Split"]

_logger = logging.getLogger(__name__)


def make_loader(
    data: Split,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    workers: int = 0,
    shard: Callable[[int], slice] | None = None,
    skip: int = 0,
    drop_last: bool = False,
) -> tuple[Iterable, list[tuple[int, float]]]:
    """:class:`~glora.app.data.batch.Batch` es whose order depends only on ``seed`` (a fresh generator per call, so
    an epoch can be replayed).

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
    return data.batches(batches, seed, workers), meta


DATA_ON_DEVICE = ("auto", "on", "off")


def place(data: Split, device: torch.device, policy: str = "auto") -> Split:
    """Where a split's cached rows (uint8 images, token fields) live while a run uses them.

    ``on``: on ``device`` (images normalised there batch by batch: no host-to-device copy per step); ``off``: in
    host memory; ``auto``: on an accelerator when they take at most a quarter of its memory, else in host memory.
    """
    if policy not in DATA_ON_DEVICE:
        raise ValueError(f"data-on-device must be one of {', '.join(DATA_ON_DEVICE)}; got {policy!r}")
    if data.nbytes == 0 or policy == "off" or device.type == "cpu":
        return data
    if policy == "auto" and device.type == "cuda":
        if data.nbytes > torch.cuda.get_device_properties(device).total_memory // 4:
            return data
    return data.to(device)
