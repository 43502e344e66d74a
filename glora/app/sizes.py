"""Size sanity before allocation: what a supernet's training state will take, against what the machine has.

A supernet's trainable tensors carry a gradient and two AdamW moments (16 bytes an element in float32) and are
copied to the host at every save; an absurd search space should be refused in a second, not after minutes of
swapping or an out-of-memory kill, and never leave a multi-gigabyte checkpoint behind.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import torch

from glora._io import human_size as human

__all__ = ["TRAIN_BYTES_PER_ELEMENT", "SAVE_BYTES_PER_ELEMENT", "available_memory", "check_training_size"]

_logger = logging.getLogger(__name__)

TRAIN_BYTES_PER_ELEMENT = 16  # float32 value, gradient and AdamW's two moments
SAVE_BYTES_PER_ELEMENT = 12  # a checkpoint: the values and the two moments


def available_memory(device: torch.device) -> int | None:
    """Bytes free for new tensors on ``device`` (host: MemAvailable, else physical memory); None if unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def check_training_size(
    elements: int,
    device: torch.device,
    out: str | os.PathLike,
    *,
    enabled: bool = True,
    element_size: int = 4,
    frozen_bytes: int = 0,
) -> None:
    """Refuse (``ValueError``) a training state larger than the memory free on ``device`` (and on the host, where
    every save copies it); warn when it takes over half of it, or when ``out``'s disk cannot hold two checkpoints
    (the old one stays until the new one is complete). ``enabled=False`` only warns.

    ``element_size``: bytes of one trainable element (4 for fp32 supports, 2 for bf16: value, gradient and the two
    moments each take that much). ``frozen_bytes``: the frozen backbone the device must also hold (a model built on
    the host and moved to an accelerator; on the CPU it is already in memory and in the free figure).
    """
    scale = element_size / 4
    need = round(elements * TRAIN_BYTES_PER_ELEMENT * scale)
    host = round(elements * SAVE_BYTES_PER_ELEMENT * scale) + (need if device.type == "cpu" else 0)
    checks = [(device, need + frozen_bytes)] if device.type != "cpu" else []
    checks.append((torch.device("cpu"), host))
    for where, bytes_needed in checks:
        free = available_memory(where)
        if free is None:
            continue
        frozen = f", the frozen backbone's {human(frozen_bytes)}" if frozen_bytes and where.type != "cpu" else ""
        what = (
            f"{elements:,} trainable elements need about {human(bytes_needed)} on {where} (values, gradients, AdamW "
            f"state{', the copy each save makes' if where.type == 'cpu' else ''}{frozen}); {human(free)} is free"
        )
        if bytes_needed > free:
            if enabled:
                raise ValueError(
                    f"{what}: use smaller --lora-ranks / --gift-ranks or fewer --targets, "
                    "or --no-memory-check to try anyway"
                )
            _logger.warning("%s (--no-memory-check: trying anyway)", what)
        elif bytes_needed > free // 2:
            _logger.warning("%s: more than half of it", what)
    disk = _disk_free(Path(out))
    ckpt = round(elements * SAVE_BYTES_PER_ELEMENT * scale)
    if disk is not None and 2 * ckpt > disk:
        _logger.warning(
            "each checkpoint takes about %s and %s is free where --out is: saving may run out of space",
            human(ckpt),
            human(disk),
        )


def _disk_free(path: Path) -> int | None:
    for p in (path, *path.resolve().parents):
        if p.exists():
            try:
                return shutil.disk_usage(p).free
            except OSError:
                return None
    return None
