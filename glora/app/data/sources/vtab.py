"""``vtab``: VTAB-1k in the reference's layout, ``<root>/<task>/{train800,val200,train800val200,test}.txt``."""

from __future__ import annotations

import difflib
import logging
from pathlib import Path

from ...values import not_found
from ..images import ImageSet, label_span, materialise, read_list_file
from ..transforms import EvalCrop
from . import Source, register_source
from .options import TaskOptions

__all__ = ["VTAB_TASKS", "VTAB_SMALL_LR_TASKS", "load_vtab", "VtabSource"]

_logger = logging.getLogger(__name__)


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


_VTAB_ALIASES = {"train": "train800", "val": "val200", "trainval": "train800val200", "test": "test"}


def load_vtab(
    root: str | Path,
    task: str,
    split_file: str,
    size,
    *,
    cache: bool = True,
    progress: bool | None = None,
    crop_pct: float | EvalCrop | None = None,
) -> ImageSet:
    """One split of a VTAB-1k task: ``<root>/<task>/<split_file>`` lines ``relative/path.jpg label``."""
    if task not in VTAB_TASKS:
        raise ValueError(f"unknown VTAB-1k task {task!r}; tasks: {', '.join(VTAB_TASKS)}")
    base = Path(root).expanduser() / task
    if not Path(root).expanduser().is_dir():
        raise not_found("--data-root", root)
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
            label_span(labels),
            num_classes,
        )
    return materialise(
        files, labels, num_classes, tuple(size), cache, f"{task}/{split_file}", progress, crop_pct=crop_pct
    )


def _vtab_list(base: Path, name: str) -> Path:
    """``train800``, ``train800.txt`` or an alias (train, val, trainval, test) -> the list file."""
    stem = _VTAB_ALIASES.get(name, name)
    for candidate in (base / stem, base / f"{stem}.txt"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"split file {base / stem!s}.txt does not exist")


@register_source
class VtabSource(Source):
    name = "vtab"
    order = 1
    Options = TaskOptions

    def check(self, spec) -> None:
        if not spec.task:
            raise ValueError(f"dataset vtab needs --task, one of: {', '.join(VTAB_TASKS)}")
        if spec.task not in VTAB_TASKS:
            close = difflib.get_close_matches(str(spec.task), list(VTAB_TASKS), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(f"unknown VTAB-1k task {spec.task!r}; {hint}tasks: {', '.join(VTAB_TASKS)}")

    def num_classes(self, spec) -> int:
        return VTAB_TASKS[spec.task]

    def split_key(self, spec, split: str) -> str:
        return _VTAB_ALIASES.get(split, split).removesuffix(".txt")

    def preflight(self, spec, split: str) -> None:
        base = Path(spec.data_root).expanduser() / spec.task
        if not Path(spec.data_root).expanduser().is_dir():
            raise not_found("--data-root", spec.data_root)
        if not base.is_dir():
            raise FileNotFoundError(f"VTAB-1k task folder {str(base)!r} does not exist")
        read_list_file(_vtab_list(base, split), base, VTAB_TASKS[spec.task], spec.task)

    def load(self, spec, split, progress, *, size, crop_pct) -> ImageSet:
        return load_vtab(
            spec.data_root, spec.task, split, size, cache=spec.cache_images, progress=progress, crop_pct=crop_pct
        )
