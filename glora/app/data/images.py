"""One split of images in memory or on disk (:class:`ImageSet`), and the helpers every source builds it with:
reading list files, stratified splits, decoding a file list once into a uint8 cache.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from glora._io import read_text_file

from .batch import PIXELS, Batch
from .transforms import AugmentedDataset, EvalCrop, FileDataset, TrainAugment, load_image

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageSet",
    "materialise",
    "split_per_class",
    "read_list_file",
    "locate_images",
    "label_span",
]

_logger = logging.getLogger(__name__)


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass
class ImageSet:
    """Images of one split: uint8 tensors (N, C, H, W) in memory, or files resized on access."""

    labels: torch.Tensor  # (N,) classes or real targets; (N, L) token labels for a causal LM
    num_classes: int | None  # None: not a classification (a causal LM's tokens)
    images: torch.Tensor | None = None
    files: list[Path] | None = None
    size: tuple[int, int, int] = (3, 224, 224)
    class_names: tuple[str, ...] | None = None  # label i -> name (ImageFolder: the class folders), when known
    crop_pct: float | EvalCrop | None = None  # eval transform of files read on access (transforms.eval_transform)
    augment: TrainAugment | None = None  # training transform of files read on access (normalised float out)
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)  # what ``augment`` normalises with
    std: tuple[float, ...] = (0.5, 0.5, 0.5)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def targets(self) -> dict[str, torch.Tensor]:
        return {"labels": self.labels}

    def batches(self, order: list[list[int]], seed: int = 0, workers: int = 0) -> Iterable[Batch]:
        """The batches of ``order`` (lists of indices) as :class:`Batch` es of ``pixel_values`` and ``labels``:
        cached images gathered with one ``index_select`` per batch (on whatever device they are), files read by a
        DataLoader (``workers`` processes; augmented items drawn from generators seeded by ``seed``)."""
        if self.images is not None:
            return _CachedBatches(self.images, self.labels, order)
        # An explicit generator: a DataLoader otherwise draws its workers' base seed from the global torch RNG, which
        # would shift every later draw (drop-path, dropout) when an epoch is resumed part-way.
        loader = DataLoader(
            self.dataset(seed),
            batch_sampler=order,
            num_workers=workers,
            persistent_workers=False,
            generator=torch.Generator().manual_seed(seed),
        )
        return _LoadedBatches(loader)

    def dataset(self, seed: int = 0) -> Dataset:
        """Items as (image, label); augmented items are drawn from a generator seeded by ``seed`` and the index."""
        if self.images is not None:
            return TensorDataset(self.images, self.labels)
        if self.augment is not None:
            transform = self.augment.transform(self.size, self.mean, self.std)
            return AugmentedDataset(self.files or [], self.labels, self.size, transform, seed)
        return FileDataset(self.files or [], self.labels, self.size, self.crop_pct)

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


class _CachedBatches:
    """Batches of in-memory images: one ``index_select`` per batch instead of a DataLoader's per-item indexing and
    collation (the images may live on the GPU, where the per-item path would be launch-bound)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batches: list[list[int]]) -> None:
        self.images, self.labels, self.batches = images, labels, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Batch]:
        for b in self.batches:
            idx = torch.tensor(b, dtype=torch.long).to(self.images.device, non_blocking=True)
            yield Batch({PIXELS: self.images.index_select(0, idx)}, {"labels": self.labels.index_select(0, idx)})


class _LoadedBatches:
    """A DataLoader's (images, labels) as :class:`Batch` es."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        for x, y in self.loader:
            yield Batch({PIXELS: x}, {"labels": y})


def materialise(
    files: list[Path],
    labels: list[int],
    num_classes: int,
    size,
    cache: bool,
    desc: str,
    progress: bool | None = None,
    class_names: Sequence[str] | None = None,
    crop_pct: float | EvalCrop | None = None,
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
            pool.map(lambda f: load_image(f, size, crop_pct), files),
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


def split_per_class(
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


def read_list_file(listing: Path, image_root: Path, num_classes: int | None, what: str) -> tuple[list[Path], list[int]]:
    """A list file of ``relative/path label`` lines (VTAB-1k, few-shot FGVC, extra evaluation sets); paths are
    relative to ``image_root``; labels must lie in [0, num_classes) when that is known."""
    files, labels = [], []
    text = read_text_file(listing, "split file")
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


def locate_images(files: list[Path], base: Path, roots: list[Path]) -> list[Path]:
    """The listed files (read relative to ``base``) under the first of ``roots`` that holds the first one of them;
    ``FileNotFoundError`` says where it looked."""
    if not files:
        return files
    rel = [f.relative_to(base) for f in files]
    for root in roots:
        if (root / rel[0]).is_file():
            return [root / r for r in rel]
    tried = ", ".join(repr(str(r)) for r in roots)
    raise FileNotFoundError(f"listed image {str(rel[0])!r} is in none of {tried}")


def label_span(labels: list[int]) -> str:
    found = sorted(set(labels))
    return ", ".join(map(str, found)) if len(found) <= 6 else f"{found[0]}..{found[-1]}"
