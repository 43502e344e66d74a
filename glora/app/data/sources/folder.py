"""``folder``: any ImageFolder tree (``<root>/<class>/<image>``), with its own train/val/test sub-trees or split
per class by seeded fractions.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

from ...values import not_found, probability
from ..images import IMAGE_EXTENSIONS, ImageSet, materialise, split_per_class
from ..transforms import EvalCrop
from . import Source, register_source
from .options import ImageFileOptions, SplitSeedOptions, option

__all__ = ["scan_folder", "load_folder", "FolderSource"]

_logger = logging.getLogger(__name__)


def scan_folder(root: Path) -> tuple[list[str], list[Path], list[int]]:
    if not root.is_dir():
        raise not_found("image folder", root)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ValueError(f"image folder {str(root)!r} has no class sub-folders (expected <root>/<class>/<image>)")
    files, labels, empty = [], [], []
    for i, c in enumerate(classes):
        found = sorted(p for p in (root / c).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not found:
            empty.append(c)
        files += found
        labels += [i] * len(found)
    if not files:
        raise ValueError(f"image folder {str(root)!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    if empty:  # it would silently become a class the model can never learn
        shown = ", ".join(repr(c) for c in empty[:5]) + (", ..." if len(empty) > 5 else "")
        raise ValueError(
            f"image folder {str(root)!r}: class folder(s) {shown} hold no images ({', '.join(IMAGE_EXTENSIONS)}); "
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
    crop_pct: float | EvalCrop | None = None,
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
        classes, files, labels = scan_folder(sub)
        train_classes = scan_folder(root / "train")[0]
        if classes != train_classes:
            raise ValueError(f"{str(sub)!r} has classes {classes}, train/ has {train_classes}")
        return materialise(
            files, labels, len(classes), tuple(size), cache, f"{root.name}/{split}", progress, classes, crop_pct
        )
    if not 0 < val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError(
            f"val-fraction ({val_fraction}) must be in (0, 1), test-fraction ({test_fraction}) in [0, 1), "
            "and together below 1"
        )
    classes, files, labels = scan_folder(root)
    per_class = [[i for i, lab in enumerate(labels) if lab == c] for c in range(len(classes))]
    picked = split_per_class(
        per_class,
        split,
        random.Random(split_seed),
        lambda n: round(n * test_fraction),
        lambda n: max(1, round(n * val_fraction)) if n > 1 else 0,
    )
    if not picked:
        raise ValueError(f"the {split} split of {str(root)!r} is empty (too few images per class?)")
    return materialise(
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


@dataclass
class FolderOptions(ImageFileOptions, SplitSeedOptions):
    """ImageFolder trees, split per class."""

    val_fraction: float = option(0.2, "ImageFolder: per-class share held out for val", type=probability)
    test_fraction: float = option(0.0, "ImageFolder: per-class share for test", type=probability)


@register_source
class FolderSource(Source):
    name = "folder"
    order = 3
    Options = FolderOptions

    def num_classes(self, spec) -> int:
        root = Path(spec.data_root).expanduser()
        return len(scan_folder(root / "train" if (root / "train").is_dir() else root)[0])

    def load(self, spec, split, progress, *, size, crop_pct) -> ImageSet:
        return load_folder(
            spec.data_root, split, size, val_fraction=spec.val_fraction, test_fraction=spec.test_fraction,
            split_seed=spec.split_seed, cache=spec.cache_images, progress=progress, crop_pct=crop_pct,
        )  # fmt: skip
