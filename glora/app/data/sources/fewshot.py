"""``fewshot``: few-shot FGVC in the reference's (NOAH's) layout, ``<root>/<task>/annotations/<list>`` over
``<root>/<task>/images/``; also the 16-shot ImageNet source of the domain-generalization protocol.

The layouts as NOAH's preparation ships them read as they are: list paths relative to ``images/``, to the dataset
folder itself (Stanford Cars) or, for ImageNet's training lists, to ``train/``; ImageNet's validation (and test)
split without a list is ``val/<wnid>/*.JPEG``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ...values import not_found, optional, positive_int
from ..images import ImageSet, locate_images, materialise, read_list_file
from ..transforms import EvalCrop
from . import Source, register_source
from .options import SplitSeedOptions, TaskOptions, option

__all__ = [
    "FEWSHOT_TASKS",
    "FEWSHOT_SHOTS",
    "fewshot_list",
    "split_files",
    "load_fewshot",
    "imagenet_class_names",
    "fewshot_num_classes",
    "FewshotSource",
]

_logger = logging.getLogger(__name__)


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
    crop_pct: float | EvalCrop | None = 0.875,
    cache: bool = True,
    progress: bool | None = None,
) -> ImageSet:
    """One split of a few-shot FGVC dataset in the reference's layout: ``<root>/<task>/annotations/<list>``, lines
    ``relative/path label`` relative to ``<root>/<task>/images/`` (or the other roots NOAH's layouts use)."""
    base = task_folder(root, task)
    files, labels, where = split_files(base, task, split_file, shot, seed, num_classes)
    n = num_classes if num_classes is not None else max(labels) + 1
    names = imagenet_class_names() if task == "imagenet" and n == 1000 else None
    return materialise(files, labels, n, tuple(size), cache, where, progress, names, crop_pct=crop_pct)


def split_files(
    base: Path, task: str, split: str, shot: int | None, seed: int, num_classes: int | None
) -> tuple[list[Path], list[int], str]:
    """The images and labels of a split (a list file, or ImageNet's val folder), and what to call them."""
    no_list = not (base / "annotations" / f"{split}_meta.list").is_file()
    if task == "imagenet" and split in ("val", "test") and no_list:
        pairs = _imagenet_val(base)
        return [f for f, _ in pairs], [label for _, label in pairs], f"{task}/val"
    listing = fewshot_list(base, split, shot, seed)
    files, labels = read_list_file(listing, base, num_classes, task)
    return locate_images(files, base, _image_roots(base, split)), labels, f"{task}/{listing.name}"


def _image_roots(base: Path, split: str) -> list[Path]:
    """Where a list's paths may be relative to, in NOAH's preparations: ``images/`` (most datasets), the dataset
    folder itself (Stanford Cars), ``train/`` (ImageNet's training lists)."""
    return [base / "images", base, *([base / "train"] if split == "train" else [])]


def _imagenet_val(base: Path) -> list[tuple[Path, int]]:
    """ImageNet's validation images as NOAH's preparation ships them: ``val/<wnid>/*.JPEG``, labelled by the wnid's
    index in ImageNet-1k's order (no list file)."""
    from ..images import IMAGE_EXTENSIONS

    folder = base / "val"
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{str(base / 'annotations')!r} has no val_meta.list and {str(folder)!r} does not exist (ImageNet's "
            "val/<wnid>/*.JPEG)"
        )
    index = {w: i for i, w in enumerate(imagenet_class_names())}
    out = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        if sub.name not in index:
            raise ValueError(f"{str(sub)!r} is not an ImageNet-1k class folder (a wnid such as n01440764)")
        out += [(f, index[sub.name]) for f in sorted(sub.iterdir()) if f.suffix.lower() in IMAGE_EXTENSIONS]
    if not out:
        raise ValueError(f"{str(folder)!r} holds no images")
    return out


def imagenet_class_names() -> tuple[str, ...]:
    """ImageNet-1k's wnids in label order (shipped with timm): exported as label names, and what lets the
    domain-generalization sets' wnid folders (ImageNet-Sketch, -A, -R) find their labels."""
    from timm.data import ImageNetInfo

    return tuple(ImageNetInfo("imagenet-1k").label_names())


def task_folder(root: str | Path, task: str) -> Path:
    """``<root>/<task>``; ``FileNotFoundError`` lists the task folders the root has when it is missing."""
    base = Path(root).expanduser() / task
    if not base.is_dir():
        root_path = Path(root).expanduser()
        if not root_path.is_dir():
            raise not_found("--data-root", root_path)
        have = sorted(p.name for p in root_path.iterdir() if (p / "annotations").is_dir())
        listed = ", ".join(have[:12]) + (", ..." if len(have) > 12 else "") if have else "none"
        raise FileNotFoundError(f"few-shot task folder {str(base)!r} does not exist; task folders there: {listed}")
    return base


def fewshot_num_classes(root: str | Path, task: str) -> int:
    """Known datasets: their class count; any other: one more than the largest label of its val and test lists."""
    if task in FEWSHOT_TASKS:
        return FEWSHOT_TASKS[task]
    base = Path(root).expanduser() / task
    task_folder(root, task)
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


@dataclass
class FewshotOptions(TaskOptions, SplitSeedOptions):
    """Few-shot lists."""

    shot: int | None = option(None, "few-shot: images per class (1, 2, 4, 8, 16)", type=optional(positive_int))


@register_source
class FewshotSource(Source):
    name = "fewshot"
    order = 2
    Options = FewshotOptions
    default_crop_pct = 0.875  # the reference: resize to 256, center crop 224

    def check(self, spec) -> None:
        if not spec.task:
            raise ValueError(f"dataset fewshot needs --task: {', '.join(FEWSHOT_TASKS)} or another folder name")
        if spec.shot is None:
            raise ValueError(f"dataset fewshot needs --shot (the reference's lists: {FEWSHOT_SHOTS})")

    def num_classes(self, spec) -> int:
        return fewshot_num_classes(spec.data_root, spec.task)

    def preflight(self, spec, split: str) -> None:
        base = task_folder(spec.data_root, spec.task)
        split_files(base, spec.task, split, spec.shot, spec.split_seed, self.num_classes(spec))

    def load(self, spec, split, progress, *, size, crop_pct) -> ImageSet:
        return load_fewshot(
            spec.data_root, spec.task, split, size, shot=spec.shot, seed=spec.split_seed,
            num_classes=self.num_classes(spec), crop_pct=crop_pct, cache=spec.cache_images, progress=progress,
        )  # fmt: skip
