"""Pixels: timm's eval transform (cached uint8 tensors out), the seeded training augmentation, the device-side
normaliser and the model's input statistics.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from ..declared import option
from ..values import optional

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Normalizer",
    "input_config",
    "eval_transform",
    "EvalCrop",
    "CROP_MODES",
    "TrainAugment",
    "ERASE_MODES",
    "TRAIN_INTERPOLATIONS",
    "open_image",
    "load_image",
    "FileDataset",
    "AugmentedDataset",
]

_logger = logging.getLogger(__name__)


IMAGENET_MEAN = (0.485, 0.456, 0.406)


IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalizer(nn.Module):
    """uint8 batch -> float, normalised with the model's mean/std; runs on the model's device.

    A floating batch passes unchanged: it comes from a training transform that normalised it already (timm's
    random erasing works on normalised pixels)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1) * 255.0, persistent=False)
        self.register_buffer("inv_std", 1.0 / (torch.tensor(std).view(1, -1, 1, 1) * 255.0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_floating_point():
            return x
        return (x.float() - self.mean) * self.inv_std


def input_config(model: nn.Module, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> dict:
    """The model's real input size (channels, H, W) and the mean/std images are normalised with.

    ``mean`` / ``std`` override the model's own statistics (timm's ``--mean`` / ``--std``): the paper's VTAB-1k
    recipe normalises with ImageNet's even where the pretrained config says 0.5. One value stands for every
    channel.
    """
    from timm.data import resolve_data_config
    from timm.models import get_model_input_config

    cfg = resolve_data_config({}, model=model)
    size = tuple(get_model_input_config(model)["input_size"])
    channels = size[0]
    own_mean, own_std = tuple(cfg["mean"]), tuple(cfg["std"])
    if len(own_mean) != channels:  # e.g. a 1-channel model whose config kept RGB statistics
        own_mean = (sum(own_mean) / len(own_mean),) * channels
        own_std = (sum(own_std) / len(own_std),) * channels
    return {
        "input_size": size,
        "mean": _per_channel(mean, channels, "mean") if mean else own_mean,
        "std": _per_channel(std, channels, "std") if std else own_std,
    }


def _per_channel(values: Sequence[float], channels: int, what: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise ValueError(
            f"--{what} has {len(values)} values; the model takes {channels} channel(s): give 1 or {channels}"
        )
    if what == "std" and any(v <= 0 for v in values):
        raise ValueError(f"--std values must be positive, got {list(values)}")
    return values


# --crop-mode, timm's names (create_transform's crop_mode): how an evaluation image becomes size x size.
CROP_MODES = ("center", "squash", "border")


@dataclass(frozen=True)
class EvalCrop:
    """An evaluation crop in timm's terms: ``center`` resizes the shorter side to size / pct and center-crops;
    ``squash`` resizes both sides to size / pct (aspect not kept), then center-crops (the few-shot reference code:
    256 x 256, then 224); ``border`` fits the longer side and pads. Passed where a bare ``crop_pct`` float is
    accepted (None: squash to the size; a float: center crop)."""

    mode: str
    pct: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in CROP_MODES:
            raise ValueError(f"crop-mode must be one of {', '.join(CROP_MODES)}; got {self.mode!r}")
        if not 0 < self.pct <= 1:
            raise ValueError(f"crop-pct must be in (0, 1], got {self.pct}")


@functools.cache
def eval_transform(size: tuple[int, int, int], crop_pct: float | EvalCrop | None = None):
    """timm's eval transform in prefetcher mode, uint8 tensor out (normalisation happens later, on the device, as
    timm's prefetcher does): bicubic squash-resize to the input size (VTAB-1k), or with ``crop_pct`` a resize of
    the shorter side to size / crop_pct and a center crop (the few-shot default: 256 -> 224 is 0.875), or any
    :class:`EvalCrop`."""
    from timm.data import create_transform

    crop = EvalCrop("squash") if crop_pct is None else crop_pct
    if not isinstance(crop, EvalCrop):
        crop = EvalCrop("center", crop)
    return create_transform(
        size, is_training=False, interpolation="bicubic", crop_pct=crop.pct, crop_mode=crop.mode, use_prefetcher=True
    )


# timm's random-erasing modes and training-crop interpolations, as its train.py offers them.
ERASE_MODES = ("pixel", "rand", "const")
TRAIN_INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "random")


@dataclass(frozen=True)
class TrainAugment:
    """Training augmentation through timm's ``create_transform``, with timm train.py's option names.

    The defaults are the GLoRA/NOAH reference's few-shot recipe: random resized crop, horizontal flip, RandAugment
    ``rand-m9-mstd0.5-inc1``, color jitter 0.4 (timm drops it when RandAugment is on, as the reference's timm
    did), random erasing 0.25 in pixel mode, bicubic.
    """

    aa: str | None = option("rand-m9-mstd0.5-inc1", "timm auto-augment policy (none: off)", type=optional(str))
    color_jitter: float = option(0.4, "color jitter strength", min=0)
    reprob: float = option(0.25, "random erasing probability", min=0, max=1)
    remode: str = option("pixel", "random erasing mode", choices=ERASE_MODES)
    recount: int = option(1, "random erasing count", min=1)
    scale: tuple[float, float] = option((0.08, 1.0), "random resized crop scale", above=0)
    ratio: tuple[float, float] = option((3 / 4, 4 / 3), "random resized crop ratio", above=0)
    hflip: float = option(0.5, "horizontal flip probability", min=0, max=1)
    vflip: float = option(0.0, "vertical flip probability", min=0, max=1)
    train_interpolation: str = option("bicubic", "interpolation of the training crop", choices=TRAIN_INTERPOLATIONS)

    def __post_init__(self) -> None:
        if self.remode not in ERASE_MODES:
            raise ValueError(f"remode must be one of {', '.join(ERASE_MODES)}; got {self.remode!r}")
        if self.train_interpolation not in TRAIN_INTERPOLATIONS:
            allowed = ", ".join(TRAIN_INTERPOLATIONS)
            raise ValueError(f"train_interpolation must be one of {allowed}; got {self.train_interpolation!r}")
        for name in ("scale", "ratio"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"--{name} must be two positive numbers, low first; got {lo} {hi}")
        if self.aa:
            self.transform((3, 32, 32), (0.5,) * 3, (0.5,) * 3)  # a bad policy string fails here, in one line

    def transform(self, size: Sequence[int], mean: Sequence[float], std: Sequence[float]):
        from timm.data import create_transform

        try:
            return create_transform(
                tuple(size),
                is_training=True,
                auto_augment=self.aa or None,
                color_jitter=self.color_jitter,
                re_prob=self.reprob,
                re_mode=self.remode,
                re_count=self.recount,
                scale=tuple(self.scale),
                ratio=tuple(self.ratio),
                hflip=self.hflip,
                vflip=self.vflip,
                interpolation=self.train_interpolation,
                mean=tuple(mean),
                std=tuple(std),
            )
        except (AssertionError, KeyError, ValueError) as e:
            raise ValueError(f"timm cannot build this augmentation (--aa {self.aa!r}?): {e}") from None


def open_image(path: Path, channels: int):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return img.convert("L" if channels == 1 else "RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"image {str(path)!r} does not exist") from None
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read image {str(path)!r}: {' '.join(str(e).split())}") from None


def load_image(path: Path, size: tuple[int, int, int], crop_pct: float | EvalCrop | None = None) -> torch.Tensor:
    return eval_transform(tuple(size), crop_pct)(open_image(path, size[0]))


class FileDataset(Dataset):
    def __init__(
        self,
        files: list[Path],
        labels: torch.Tensor,
        size: tuple[int, int, int],
        crop_pct: float | EvalCrop | None = None,
    ) -> None:
        self.files, self.labels, self.size, self.crop_pct = files, labels, size, crop_pct

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        return load_image(self.files[i], self.size, self.crop_pct), self.labels[i]


class AugmentedDataset(Dataset):
    """Training images through a random transform, item ``i`` drawn from RNGs seeded by (``seed``, ``i``).

    timm's transforms draw from Python's, numpy's and torch's global generators; all are forked around each item, so the
    run's own random state is untouched and an image is the same whichever worker (or none) loads it."""

    def __init__(self, files: list[Path], labels: torch.Tensor, size, transform, seed: int) -> None:
        self.files, self.labels, self.size, self.transform, self.seed = files, labels, size, transform, seed

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        img = open_image(self.files[i], self.size[0])
        item_seed = (self.seed * 1_000_003 + i) % (2**63)
        state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            random.seed(item_seed)
            np.random.seed(item_seed % (2**32))  # timm's RandAugment picks its ops with numpy
            torch.manual_seed(item_seed)
            try:
                x = self.transform(img)
            finally:
                random.setstate(state)
                np.random.set_state(np_state)
        return x, self.labels[i]
