"""``fewshot``: few-shot FGVC in the reference's layout, ``<root>/<task>/annotations/<list>`` over
``<root>/<task>/images/``; also the 16-shot ImageNet source of the domain-generalization protocol.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..images import ImageSet, materialise, read_list_file
from ..transforms import EvalCrop
from . import Source, register_source

__all__ = [
    "FEWSHOT_TASKS",
    "FEWSHOT_SHOTS",
    "fewshot_list",
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
    ``relative/path label`` relative to ``<root>/<task>/images/``."""
    base = task_folder(root, task)
    if not base.is_dir():
        raise FileNotFoundError(f"few-shot dataset folder {str(base)!r} does not exist (expected <data-root>/{task})")
    listing = fewshot_list(base, split_file, shot, seed)
    files, labels = read_list_file(listing, base / "images", num_classes, task)
    n = num_classes if num_classes is not None else max(labels) + 1
    names = imagenet_class_names() if task == "imagenet" and n == 1000 else None
    return materialise(
        files, labels, n, tuple(size), cache, f"{task}/{listing.name}", progress, names, crop_pct=crop_pct
    )


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
            raise FileNotFoundError(f"--data-root {str(root_path)!r} does not exist")
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


@register_source
class FewshotSource(Source):
    name = "fewshot"
    order = 2
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
        listing = fewshot_list(base, split, spec.shot, spec.split_seed)
        read_list_file(listing, base / "images", self.num_classes(spec), spec.task)

    def load(self, spec, split, size, progress, crop_pct) -> ImageSet:
        return load_fewshot(
            spec.data_root, spec.task, split, size, shot=spec.shot, seed=spec.split_seed,
            num_classes=self.num_classes(spec), crop_pct=crop_pct, cache=spec.cache_images, progress=progress,
        )  # fmt: skip
