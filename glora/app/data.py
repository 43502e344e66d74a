"""Datasets: the embedded digits transfer task, VTAB-1k and few-shot FGVC (the reference's list-file layouts),
any ImageFolder tree, and extra evaluation sets.

Images go through timm's eval transform once (bicubic squash-resize to the model's input size, as the paper's VTAB
pipeline does, or resize and center crop with ``crop_pct``; prefetcher mode, so uint8 tensors come out) and stay in
memory; normalisation with the model's mean/std happens on the device, batch by batch, as timm's prefetcher does.
That keeps a VTAB-1k task (1000 images) in ~150 MB and makes 500 epochs cheap on a CPU. A training split with
augmentation (:class:`TrainAugment`, timm's ``create_transform``) is read from its files every epoch instead, each
image drawn from a generator seeded by (run seed, epoch, index), so the same seed gives the same images whatever the
number of workers.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import logging
import random
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

__all__ = [
    "DATASETS",
    "VTAB_TASKS",
    "VTAB_SMALL_LR_TASKS",
    "DIGITS_PRETRAIN_CLASSES",
    "DIGITS_TRANSFER_CLASSES",
    "DataSpec",
    "ImageSet",
    "Normalizer",
    "input_config",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "load_digits",
    "load_vtab",
    "load_fewshot",
    "FEWSHOT_TASKS",
    "FEWSHOT_SHOTS",
    "imagenet_class_names",
    "TrainAugment",
    "load_folder",
    "make_loader",
    "read_list_file",
    "place",
    "DATA_ON_DEVICE",
]

_logger = logging.getLogger(__name__)

DATASETS = ("digits", "vtab", "fewshot", "folder")

# Few-shot FGVC (GLoRA paper Sec. 4, the reference's folder names): dataset -> number of classes.
FEWSHOT_TASKS: dict[str, int] = {
    "food-101": 101,
    "oxford_flowers": 102,
    "stanford_cars": 196,
    "oxford_pets": 37,
    "fgvc_aircraft": 100,
    "imagenet": 1000,  # the domain-generalization source: 16 shots of ImageNet-1k, labels in timm's wnid order
}
FEWSHOT_SHOTS = (1, 2, 4, 8, 16)

# VTAB-1k: task -> number of classes (DESIGN.md).
VTAB_TASKS: dict[str, int] = {
    "cifar": 100,
    "caltech101": 102,
    "dtd": 47,
    "oxford_flowers102": 102,
    "oxford_iiit_pet": 37,
    "svhn": 10,
    "sun397": 397,
    "patch_camelyon": 2,
    "eurosat": 10,
    "resisc45": 45,
    "diabetic_retinopathy": 5,
    "clevr_count": 8,
    "clevr_dist": 6,
    "dmlab": 6,
    "kitti": 4,
    "dsprites_loc": 16,
    "dsprites_ori": 16,
    "smallnorb_azi": 18,
    "smallnorb_ele": 9,
}
# The paper's supernet lr is 1e-4 for these, 5e-4 for the rest (Appendix A).
VTAB_SMALL_LR_TASKS = ("diabetic_retinopathy", "clevr_count", "clevr_dist", "smallnorb_ele")

DIGITS_PRETRAIN_CLASSES = (0, 1, 2, 3, 4)
DIGITS_TRANSFER_CLASSES = (5, 6, 7, 8, 9)
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass
class ImageSet:
    """Images of one split: uint8 tensors (N, C, H, W) in memory, or files resized on access."""

    labels: torch.Tensor
    num_classes: int
    images: torch.Tensor | None = None
    files: list[Path] | None = None
    size: tuple[int, int, int] = (3, 224, 224)
    class_names: tuple[str, ...] | None = None  # label i -> name (ImageFolder: the class folders), when known
    crop_pct: float | None = None  # eval transform of files read on access: None = squash-resize, else center crop
    augment: TrainAugment | None = None  # training transform of files read on access (normalised float out)
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)  # what ``augment`` normalises with
    std: tuple[float, ...] = (0.5, 0.5, 0.5)

    def __len__(self) -> int:
        return len(self.labels)

    def dataset(self, seed: int = 0) -> Dataset:
        """Items as (image, label); augmented items are drawn from a generator seeded by ``seed`` and the index."""
        if self.images is not None:
            return TensorDataset(self.images, self.labels)
        if self.augment is not None:
            transform = self.augment.transform(self.size, self.mean, self.std)
            return _AugmentedDataset(self.files or [], self.labels, self.size, transform, seed)
        return _FileDataset(self.files or [], self.labels, self.size, self.crop_pct)

    @property
    def nbytes(self) -> int:
        """Memory the cached images take (0 when they are read from files)."""
        return 0 if self.images is None else self.images.numel() * self.images.element_size()

    def to(self, device: torch.device | str) -> ImageSet:
        """The same split with its cached images and labels on ``device`` (normalised there, batch by batch)."""
        if self.images is None:
            return self
        return dataclasses.replace(self, images=self.images.to(device), labels=self.labels.to(device))

    def subset(self, part: int | slice) -> ImageSet:
        """The first ``part`` items, or a slice (a few real inputs for verification, a rank's share)."""
        sel = slice(0, part) if isinstance(part, int) else part
        return ImageSet(
            labels=self.labels[sel],
            num_classes=self.num_classes,
            images=None if self.images is None else self.images[sel],
            files=None if self.files is None else self.files[sel],
            size=self.size,
            class_names=self.class_names,
            crop_pct=self.crop_pct,
            augment=self.augment,
            mean=self.mean,
            std=self.std,
        )


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


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


# ---------------------------------------------------------------------- image decoding
@functools.cache
def _transform(size: tuple[int, int, int], crop_pct: float | None = None):
    """timm's eval transform in prefetcher mode, uint8 tensor out (normalisation happens later, on the device, as
    timm's prefetcher does): bicubic squash-resize to the input size (VTAB-1k), or with ``crop_pct`` a resize of
    the shorter side to size / crop_pct and a center crop (the few-shot reference: 256 -> 224 is 0.875)."""
    from timm.data import create_transform

    if crop_pct is None:
        return create_transform(
            size, is_training=False, interpolation="bicubic", crop_pct=1.0, crop_mode="squash", use_prefetcher=True
        )
    return create_transform(
        size, is_training=False, interpolation="bicubic", crop_pct=crop_pct, crop_mode="center", use_prefetcher=True
    )


@dataclass(frozen=True)
class TrainAugment:
    """Training augmentation through timm's ``create_transform``, with timm train.py's option names.

    The defaults are the GLoRA/NOAH reference's few-shot recipe: random resized crop, horizontal flip, RandAugment
    ``rand-m9-mstd0.5-inc1``, color jitter 0.4 (timm drops it when RandAugment is on, as the reference's timm
    did), random erasing 0.25 in pixel mode, bicubic.
    """

    aa: str | None = "rand-m9-mstd0.5-inc1"
    color_jitter: float = 0.4
    reprob: float = 0.25
    remode: str = "pixel"
    recount: int = 1
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    vflip: float = 0.0
    train_interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        if self.remode not in ("pixel", "rand", "const"):
            raise ValueError(f"remode must be pixel, rand or const; got {self.remode!r}")
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


def _open_image(path: Path, channels: int):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return img.convert("L" if channels == 1 else "RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"image {str(path)!r} does not exist") from None
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read image {str(path)!r}: {' '.join(str(e).split())}") from None


def _load_image(path: Path, size: tuple[int, int, int], crop_pct: float | None = None) -> torch.Tensor:
    return _transform(tuple(size), crop_pct)(_open_image(path, size[0]))


class _FileDataset(Dataset):
    def __init__(
        self, files: list[Path], labels: torch.Tensor, size: tuple[int, int, int], crop_pct: float | None = None
    ) -> None:
        self.files, self.labels, self.size, self.crop_pct = files, labels, size, crop_pct

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        return _load_image(self.files[i], self.size, self.crop_pct), self.labels[i]


class _AugmentedDataset(Dataset):
    """Training images through a random transform, item ``i`` drawn from RNGs seeded by (``seed``, ``i``).

    timm's transforms draw from Python's, numpy's and torch's global generators; all are forked around each item, so the
    run's own random state is untouched and an image is the same whichever worker (or none) loads it."""

    def __init__(self, files: list[Path], labels: torch.Tensor, size, transform, seed: int) -> None:
        self.files, self.labels, self.size, self.transform, self.seed = files, labels, size, transform, seed

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        img = _open_image(self.files[i], self.size[0])
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


def _materialise(
    files: list[Path],
    labels: list[int],
    num_classes: int,
    size,
    cache: bool,
    desc: str,
    progress: bool | None = None,
    class_names: Sequence[str] | None = None,
    crop_pct: float | None = None,
) -> ImageSet:
    label_t = torch.tensor(labels, dtype=torch.long)
    names = None if class_names is None else tuple(class_names)
    if not cache:
        return ImageSet(
            labels=label_t, num_classes=num_classes, files=files, size=size, class_names=names, crop_pct=crop_pct
        )
    from tqdm.auto import tqdm

    with ThreadPoolExecutor(max_workers=4) as pool:
        bar = tqdm(
            pool.map(lambda f: _load_image(f, size, crop_pct), files),
            total=len(files),
            desc=desc,
            leave=False,
            disable=None if progress is None else not progress,  # None: a bar on a terminal only
        )
        images = list(bar)
    stacked = torch.stack(images) if images else torch.empty((0, *size), dtype=torch.uint8)
    return ImageSet(
        labels=label_t, num_classes=num_classes, images=stacked, size=size, class_names=names, crop_pct=crop_pct
    )


def _split_per_class(
    per_class: list[list[int]],
    split: str,
    rng: random.Random,
    n_test: Callable[[int], int],
    n_val: Callable[[int], int],
) -> list[int]:
    """Stratified split: shuffle each class, take test first, then val, the rest is train; sorted indices."""
    picked: list[int] = []
    for idx in per_class:
        idx = list(idx)
        rng.shuffle(idx)
        t, v = n_test(len(idx)), n_val(len(idx))
        lo, hi = {"test": (0, t), "val": (t, t + v), "train": (t + v, len(idx))}[split]
        picked += idx[lo:hi]
    return sorted(picked)


# ---------------------------------------------------------------------- embedded digits
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
    picked = _split_per_class(per_class, split, random.Random(0), lambda n: n_test, lambda n: n_val)
    sel = torch.tensor(picked, dtype=torch.long)
    return ImageSet(
        labels=targets[sel] - classes[0],
        num_classes=len(classes),
        images=images[sel].unsqueeze(1).contiguous(),
        size=(1, 8, 8),
        class_names=tuple(str(c) for c in classes),
    )


# ---------------------------------------------------------------------- VTAB-1k
def load_vtab(
    root: str | Path,
    task: str,
    split_file: str,
    size,
    *,
    cache: bool = True,
    progress: bool | None = None,
    crop_pct: float | None = None,
) -> ImageSet:
    """One split of a VTAB-1k task: ``<root>/<task>/<split_file>`` lines ``relative/path.jpg label``."""
    if task not in VTAB_TASKS:
        raise ValueError(f"unknown VTAB-1k task {task!r}; tasks: {', '.join(VTAB_TASKS)}")
    base = Path(root).expanduser() / task
    if not base.is_dir():
        raise FileNotFoundError(f"VTAB-1k task folder {str(base)!r} does not exist (expected <data-root>/{task})")
    listing = _vtab_list(base, split_file)
    num_classes = VTAB_TASKS[task]
    files, labels = read_list_file(listing, base, num_classes, task)
    used = len(set(labels))
    if used < num_classes:
        _logger.warning(
            "%s uses %d of %s's %d classes (labels %s): the head keeps %d outputs; is this the right task or list?",
            listing,
            used,
            task,
            num_classes,
            _label_span(labels),
            num_classes,
        )
    return _materialise(
        files, labels, num_classes, tuple(size), cache, f"{task}/{split_file}", progress, crop_pct=crop_pct
    )


def read_list_file(listing: Path, image_root: Path, num_classes: int | None, what: str) -> tuple[list[Path], list[int]]:
    """A list file of ``relative/path label`` lines (VTAB-1k, few-shot FGVC, extra evaluation sets); paths are
    relative to ``image_root``; labels must lie in [0, num_classes) when that is known."""
    files, labels = [], []
    try:
        text = listing.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"split file {str(listing)!r} does not exist") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise ValueError(f"{listing}:{lineno}: expected 'relative/path.jpg label', got {line.strip()!r}")
        label = int(parts[1])
        if label < 0 or (num_classes is not None and label >= num_classes):
            raise ValueError(f"{listing}:{lineno}: label {label} out of range for {what} ({num_classes} classes)")
        files.append(image_root / parts[0].strip())
        labels.append(label)
    if not files:
        raise ValueError(f"split file {str(listing)!r} lists no images")
    return files, labels


def _label_span(labels: list[int]) -> str:
    found = sorted(set(labels))
    return ", ".join(map(str, found)) if len(found) <= 6 else f"{found[0]}..{found[-1]}"


# ---------------------------------------------------------------------- few-shot FGVC
def fewshot_list(base: Path, split: str, shot: int | None, seed: int) -> Path:
    """``train`` -> ``annotations/train_meta.list.num_shot_<shot>.seed_<seed>``, ``val`` / ``test`` ->
    ``annotations/<split>_meta.list``; any other name is a file under ``annotations/``."""
    if split == "train":
        if shot is None:
            raise ValueError("dataset fewshot needs --shot (the reference's lists: 1, 2, 4, 8 or 16)")
        name = f"train_meta.list.num_shot_{shot}.seed_{seed}"
    elif split in ("val", "test"):
        name = f"{split}_meta.list"
    else:
        name = split
    path = base / "annotations" / name
    if not path.is_file():
        have = sorted(p.name for p in (base / "annotations").glob("train_meta.list.num_shot_*"))
        found = ", ".join(h.removeprefix("train_meta.list.") for h in have)
        hint = f"; shots and seeds there: {found}" if have else ""
        raise FileNotFoundError(f"split file {str(path)!r} does not exist{hint}")
    return path


def load_fewshot(
    root: str | Path,
    task: str,
    split_file: str,
    size,
    *,
    shot: int | None,
    seed: int = 0,
    num_classes: int | None = None,
    crop_pct: float | None = 0.875,
    cache: bool = True,
    progress: bool | None = None,
) -> ImageSet:
    """One split of a few-shot FGVC dataset in the reference's layout: ``<root>/<task>/annotations/<list>``, lines
    ``relative/path label`` relative to ``<root>/<task>/images/``."""
    base = Path(root).expanduser() / task
    if not base.is_dir():
        raise FileNotFoundError(f"few-shot dataset folder {str(base)!r} does not exist (expected <data-root>/{task})")
    listing = fewshot_list(base, split_file, shot, seed)
    files, labels = read_list_file(listing, base / "images", num_classes, task)
    n = num_classes if num_classes is not None else max(labels) + 1
    names = imagenet_class_names() if task == "imagenet" and n == 1000 else None
    return _materialise(
        files, labels, n, tuple(size), cache, f"{task}/{listing.name}", progress, names, crop_pct=crop_pct
    )


def imagenet_class_names() -> tuple[str, ...]:
    """ImageNet-1k's wnids in label order (shipped with timm): exported as label names, and what lets the
    domain-generalization sets' wnid folders (ImageNet-Sketch, -A, -R) find their labels."""
    from timm.data import ImageNetInfo

    return tuple(ImageNetInfo("imagenet-1k").label_names())


def fewshot_num_classes(root: str | Path, task: str) -> int:
    """Known datasets: their class count; any other: one more than the largest label of its val and test lists."""
    if task in FEWSHOT_TASKS:
        return FEWSHOT_TASKS[task]
    base = Path(root).expanduser() / task
    top = -1
    for split in ("val", "test"):
        try:
            top = max(top, *read_list_file(fewshot_list(base, split, None, 0), base / "images", None, task)[1])
        except FileNotFoundError:
            continue
    if top < 0:
        raise FileNotFoundError(
            f"{str(base / 'annotations')!r} has no val_meta.list or test_meta.list to count classes"
        )
    return top + 1


_VTAB_ALIASES = {"train": "train800", "val": "val200", "trainval": "train800val200", "test": "test"}


def _vtab_list(base: Path, name: str) -> Path:
    """``train800``, ``train800.txt`` or an alias (train, val, trainval, test) -> the list file."""
    stem = _VTAB_ALIASES.get(name, name)
    for candidate in (base / stem, base / f"{stem}.txt"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"split file {base / stem!s}.txt does not exist")


# ---------------------------------------------------------------------- ImageFolder
def _scan_folder(root: Path) -> tuple[list[str], list[Path], list[int]]:
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ValueError(f"image folder {str(root)!r} has no class sub-folders (expected <root>/<class>/<image>)")
    files, labels, empty = [], [], []
    for i, c in enumerate(classes):
        found = sorted(p for p in (root / c).rglob("*") if p.suffix.lower() in _IMAGE_EXTENSIONS and p.is_file())
        if not found:
            empty.append(c)
        files += found
        labels += [i] * len(found)
    if not files:
        raise ValueError(f"image folder {str(root)!r} holds no images ({', '.join(_IMAGE_EXTENSIONS)})")
    if empty:  # it would silently become a class the model can never learn
        shown = ", ".join(repr(c) for c in empty[:5]) + (", ..." if len(empty) > 5 else "")
        raise ValueError(
            f"image folder {str(root)!r}: class folder(s) {shown} hold no images ({', '.join(_IMAGE_EXTENSIONS)}); "
            "add images or remove the folder(s)"
        )
    if len(classes) < 2:
        raise ValueError(
            f"image folder {str(root)!r} has one class ({classes[0]!r}); a classifier needs at least 2 class folders"
        )
    return classes, files, labels


def load_folder(
    root: str | Path,
    split: str,
    size,
    *,
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    split_seed: int = 0,
    cache: bool = True,
    progress: bool | None = None,
    crop_pct: float | None = None,
) -> ImageSet:
    """An ImageFolder tree. With ``train/``, ``val/`` (and ``test/``) sub-trees those are used as they are;
    otherwise one tree is split per class (stratified) into train / val / test by the given fractions."""
    root = Path(root).expanduser()
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val or test; got {split!r}")
    if (root / "train").is_dir():
        sub = root / split
        if not sub.is_dir():
            raise FileNotFoundError(f"image folder {str(root)!r} has train/ but no {split}/ sub-tree")
        classes, files, labels = _scan_folder(sub)
        train_classes = _scan_folder(root / "train")[0]
        if classes != train_classes:
            raise ValueError(f"{str(sub)!r} has classes {classes}, train/ has {train_classes}")
        return _materialise(
            files, labels, len(classes), tuple(size), cache, f"{root.name}/{split}", progress, classes, crop_pct
        )
    if not 0 < val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError(
            f"val-fraction ({val_fraction}) must be in (0, 1), test-fraction ({test_fraction}) in [0, 1), "
            "and together below 1"
        )
    classes, files, labels = _scan_folder(root)
    per_class = [[i for i, lab in enumerate(labels) if lab == c] for c in range(len(classes))]
    picked = _split_per_class(
        per_class,
        split,
        random.Random(split_seed),
        lambda n: round(n * test_fraction),
        lambda n: max(1, round(n * val_fraction)) if n > 1 else 0,
    )
    if not picked:
        raise ValueError(f"the {split} split of {str(root)!r} is empty (too few images per class?)")
    return _materialise(
        [files[i] for i in picked],
        [labels[i] for i in picked],
        len(classes),
        tuple(size),
        cache,
        f"{root.name}/{split}",
        progress,
        classes,
        crop_pct,
    )


# ---------------------------------------------------------------------- loading
def make_loader(
    data: ImageSet,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    workers: int = 0,
    shard: Callable[[int], slice] | None = None,
    skip: int = 0,
) -> tuple[DataLoader, list[tuple[int, float]]]:
    """Batches whose order depends only on ``seed`` (a fresh generator per call, so an epoch can be replayed).

    Global batches come from one seeded permutation; with ``shard`` (data parallelism) each rank loads its share
    of every global batch. Returns the loader and, per batch, (global batch size, weight): weight 0 marks a rank
    whose share of a tiny last batch was empty and that runs one item only to take part in the step. ``skip``
    drops the first batches (an epoch resumed after an interruption), without loading them.
    """
    n = len(data)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist() if shuffle else list(range(n))
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
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


@dataclass
class DataSpec:
    """Which data a run uses; stored in checkpoints so search and export see the same splits.

    ``train_split`` / ``val_split`` / ``test_split`` name VTAB-1k list files (train800, val200, test) or, for the
    other datasets, the split (train, val, test). The supernet trains on train, the search ranks on val, and
    test is looked at once, for the final pick.
    """

    dataset: str = "digits"
    data_root: str | None = None
    task: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    val_fraction: float = 0.2
    test_fraction: float = 0.0
    split_seed: int = 0
    cache_images: bool = True
    shot: int | None = None  # few-shot: images per class of the train list
    crop_pct: float | None = None  # evaluation crop; None: the dataset's (few-shot 0.875, else squash-resize)

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {', '.join(DATASETS)}; got {self.dataset!r}")
        if self.dataset in ("vtab", "folder", "fewshot") and not self.data_root:
            raise ValueError(f"dataset {self.dataset!r} needs --data-root")
        if self.dataset == "fewshot":
            if not self.task:
                raise ValueError(f"dataset fewshot needs --task: {', '.join(FEWSHOT_TASKS)} or another folder name")
            if self.shot is None:
                raise ValueError(f"dataset fewshot needs --shot (the reference's lists: {FEWSHOT_SHOTS})")
        if self.crop_pct is not None and not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop-pct must be in (0, 1], got {self.crop_pct}")
        if self.dataset == "vtab" and not self.task:
            raise ValueError(f"dataset vtab needs --task, one of: {', '.join(VTAB_TASKS)}")
        if self.dataset == "vtab" and self.task not in VTAB_TASKS:
            close = difflib.get_close_matches(str(self.task), list(VTAB_TASKS), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(f"unknown VTAB-1k task {self.task!r}; {hint}tasks: {', '.join(VTAB_TASKS)}")

    @property
    def selects_on_test(self) -> bool:
        """Whether the validation split is the test split (the paper's Table 1 protocol): a search then picks on
        the very images it reports, so its test accuracy is not held out."""
        if self.dataset != "vtab":
            return self.val_split == self.test_split
        name = lambda s: _VTAB_ALIASES.get(s, s).removesuffix(".txt")  # noqa: E731
        return name(self.val_split) == name(self.test_split)

    @property
    def eval_crop_pct(self) -> float | None:
        """How evaluation images are cut: None = squash-resize (VTAB-1k), else timm's center crop."""
        if self.crop_pct is not None:
            return None if self.crop_pct == 1.0 and self.dataset != "fewshot" else self.crop_pct
        return 0.875 if self.dataset == "fewshot" else None

    @classmethod
    def from_dict(cls, data: dict) -> DataSpec:
        return cls(**data)

    def to_dict(self) -> dict:
        return asdict(self)

    def num_classes(self) -> int | None:
        """Known without reading images: digits and VTAB-1k; None for a folder (count its classes)."""
        if self.dataset == "digits":
            return len(DIGITS_TRANSFER_CLASSES)
        if self.dataset == "vtab":
            return VTAB_TASKS[self.task]
        if self.dataset == "fewshot":
            return fewshot_num_classes(self.data_root, self.task)
        root = Path(self.data_root).expanduser()
        return len(_scan_folder(root / "train" if (root / "train").is_dir() else root)[0])

    def load(
        self,
        split: str,
        input_size: Sequence[int],
        progress: bool | None = None,
        *,
        augment: TrainAugment | None = None,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
    ) -> ImageSet:
        """Load ``split`` (train / val / test) at the model's input size (``progress``: the caching bar; None: on
        a terminal only). ``augment``: the split's files are transformed afresh every epoch (normalised with
        ``mean`` / ``std`` there), never cached."""
        if augment is not None:
            if self.dataset == "digits":
                raise ValueError("--augment needs image files (vtab, fewshot or folder); digits are 8x8 arrays")
            plain = dataclasses.replace(self, cache_images=False).load(split, input_size, progress)
            return dataclasses.replace(plain, augment=augment, mean=tuple(mean), std=tuple(std))
        name = {"train": self.train_split, "val": self.val_split, "test": self.test_split}[split]
        size = tuple(input_size)
        if self.dataset == "digits":
            if size != (1, 8, 8):
                raise ValueError(f"the digits task has 1x8x8 images, but the model expects {'x'.join(map(str, size))}")
            return load_digits("transfer", name)
        if self.dataset == "vtab":
            return load_vtab(
                self.data_root, self.task, name, size, cache=self.cache_images, progress=progress,
                crop_pct=self.eval_crop_pct,
            )  # fmt: skip
        if self.dataset == "fewshot":
            return load_fewshot(
                self.data_root, self.task, name, size, shot=self.shot, seed=self.split_seed,
                num_classes=self.num_classes(), crop_pct=self.eval_crop_pct, cache=self.cache_images,
                progress=progress,
            )  # fmt: skip
        return load_folder(
            self.data_root,
            name,
            size,
            val_fraction=self.val_fraction,
            test_fraction=self.test_fraction,
            split_seed=self.split_seed,
            cache=self.cache_images,
            progress=progress,
            crop_pct=self.eval_crop_pct,
        )
