"""``digits``: scikit-learn's bundled handwritten digits as two disjoint tasks, the embedded default run's data."""

from __future__ import annotations

import logging
import random

import torch

from ..images import ImageSet, split_per_class
from . import Source, register_source

__all__ = ["DIGITS_PRETRAIN_CLASSES", "DIGITS_TRANSFER_CLASSES", "load_digits", "DigitsSource"]

_logger = logging.getLogger(__name__)


DIGITS_PRETRAIN_CLASSES = (0, 1, 2, 3, 4)


DIGITS_TRANSFER_CLASSES = (5, 6, 7, 8, 9)


def load_digits(part: str = "transfer", split: str = "train") -> ImageSet:
    """scikit-learn's handwritten digits (8x8, 16 grey levels), split into two disjoint tasks.

    ``pretrain``: classes 0-4 (train / val); ``transfer``: classes 5-9 relabelled 0-4 (train / val / test: 40 and
    60 images per class held out). Splits are fixed (seeded by the dataset, not the run) so every run and every
    command sees the same images.
    """
    try:
        from sklearn.datasets import load_digits as _sk_digits
    except ImportError:
        raise ImportError(
            "the embedded default task needs scikit-learn (it ships the digits images): pip install -e '.[demo]'"
        ) from None
    if part not in ("pretrain", "transfer"):
        raise ValueError(f"digits part must be pretrain or transfer, got {part!r}")
    allowed = ("train", "val") if part == "pretrain" else ("train", "val", "test")
    if split not in allowed:
        raise ValueError(f"digits {part} split must be one of {', '.join(allowed)}; got {split!r}")
    bunch = _sk_digits()
    images = torch.from_numpy(bunch.images).float().mul(255.0 / 16.0).round().clamp(0, 255).to(torch.uint8)
    targets = torch.from_numpy(bunch.target).long()
    classes = DIGITS_PRETRAIN_CLASSES if part == "pretrain" else DIGITS_TRANSFER_CLASSES
    n_val, n_test = (50, 0) if part == "pretrain" else (40, 60)
    per_class = [[int(i) for i in torch.nonzero(targets == c).flatten()] for c in classes]
    picked = split_per_class(per_class, split, random.Random(0), lambda n: n_test, lambda n: n_val)
    sel = torch.tensor(picked, dtype=torch.long)
    return ImageSet(
        labels=targets[sel] - classes[0],
        num_classes=len(classes),
        images=images[sel].unsqueeze(1).contiguous(),
        size=(1, 8, 8),
        class_names=tuple(str(c) for c in classes),
    )


@register_source
class DigitsSource(Source):
    name = "digits"
    order = 0
    needs_root = False
    files = False  # 8x8 arrays, cached whole

    def num_classes(self, spec) -> int:
        return len(DIGITS_TRANSFER_CLASSES)

    def load(self, spec, split, progress, *, size, crop_pct) -> ImageSet:
        if tuple(size) != (1, 8, 8):
            raise ValueError(f"the digits task has 1x8x8 images, but the model expects {'x'.join(map(str, size))}")
        return load_digits("transfer", split)
