"""Extra evaluation sets: the same model on other data, side by side (the GLoRA paper's domain generalization:
ImageNet 16-shot training, then ImageNet-V2, -Sketch, -A and -R).

A set is ``NAME=PATH[,mask=MASK]``. ``PATH`` is an ImageFolder tree or a list file of ``relative/path label`` lines
(paths relative to the list's folder or, as NOAH's lists in ``<set>/annotations/`` hold them, to the set's root;
labels in the model's label space). A folder's class sub-folders are matched
to the class names the model was trained with (ImageNet wnids such as ``n01443537``); folders named by integers
(ImageNet-V2's ``0`` ... ``999``) are label indices. ``MASK`` restricts the prediction to some classes, for sets that
cover only part of the label space (ImageNet-A and -R: 200 of 1,000): a file of class indices or names (whitespace
or newline separated), or ``present`` (the classes the set holds). Accuracy is then the argmax over the masked
logits, as the benchmarks define it.
"""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from glora._io import read_text_file

from .data import IMAGE_EXTENSIONS, ImageModality, ImageSet, make_loader, read_list_file
from .data.images import locate_images, materialise
from .data.transforms import EvalCrop
from .evaluate import predict

__all__ = [
    "EvalSet",
    "parse_eval_set",
    "load_eval_set",
    "evaluate_sets",
    "masked_accuracy",
    "eval_set_text",
    "eval_set_inputs",
    "check_eval_sets",
]

_logger = logging.getLogger(__name__)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
_KEY = re.compile(r",([A-Za-z_][A-Za-z0-9_]*)=")


@dataclass(frozen=True)
class EvalSet:
    """One extra evaluation set as the command line names it."""

    name: str
    path: str
    mask: str | None = None  # a file of classes, "present", or None (every class)


def parse_eval_set(text: str) -> EvalSet:
    """``NAME=PATH[,mask=MASK]`` -> :class:`EvalSet` (form only; files are checked when loaded)."""
    name, sep, rest = str(text).partition("=")
    path, _, opt = rest.partition(",mask=")
    if not sep or not _NAME.fullmatch(name) or not path:
        raise argparse.ArgumentTypeError(
            f"expected NAME=PATH[,mask=FILE|present] (NAME: letters, digits, '_', '-', '.'), got {text!r}"
        )
    if rest.count(",mask=") > 1 or (opt == "" and ",mask=" in rest):
        raise argparse.ArgumentTypeError(f"expected one mask=FILE|present after the path, got {text!r}")
    key = _KEY.search(path)
    if key and not Path(path).expanduser().exists():  # 'DIR,foo=bar': an option this form does not have
        raise argparse.ArgumentTypeError(
            f"unknown key {key.group(1)!r} in {text!r}; after NAME=PATH only mask=FILE|present is allowed"
        )
    return EvalSet(name, path, opt or None)


def check_eval_sets(sets: Sequence[str]) -> None:
    """Every set's name, folder or list file and mask file, checked before a model is loaded: one line names the
    set and what is wrong (a later failure would come after folding, verification and timing)."""
    seen: set[str] = set()
    for text in sets:
        spec = parse_eval_set(text)
        if spec.name in seen:
            raise ValueError(f"--eval-set name {spec.name!r} is given twice; give each set its own name")
        seen.add(spec.name)
        path = Path(spec.path).expanduser()
        if not path.exists():
            raise FileNotFoundError(
                f"--eval-set {spec.name}: {str(path)!r} does not exist (an ImageFolder tree or a list file)"
            )
        if path.is_file():
            read_text_file(path, f"--eval-set {spec.name} list file")
        if spec.mask not in (None, "present"):
            read_text_file(Path(spec.mask).expanduser(), f"--eval-set {spec.name} mask file")


def eval_set_inputs(sets: Sequence[str]) -> list[tuple[str, str | None]]:
    """What the sets read, as (option, path): an output folder must overlap none of them."""
    found: list[tuple[str, str | None]] = []
    for text in sets:
        spec = parse_eval_set(text)
        found.append(("--eval-set", spec.path))
        if spec.mask not in (None, "present"):
            found.append(("--eval-set", spec.mask))
    return found


def eval_set_text(text: str) -> str:
    """``--eval-set``'s converter: the text as it is, once it parses."""
    parse_eval_set(text)
    return text


def _class_labels(names: Sequence[str], known: Sequence[str] | None, num_classes: int, where: str) -> list[int]:
    """Label index of each class folder: by the model's class names, else folders named by integers."""
    index = {n: i for i, n in enumerate(known or ())}
    if index and all(n in index for n in names):
        return [index[n] for n in names]
    if all(n.isdigit() and int(n) < num_classes for n in names):
        return [int(n) for n in names]
    unknown = [n for n in names if n not in index][:3]
    raise ValueError(
        f"{where}: class folder(s) {', '.join(map(repr, unknown))} are neither class names the model was trained "
        f"with nor label indices below {num_classes}"
    )


def _load_mask(spec: EvalSet, labels: list[int], known: Sequence[str] | None, num_classes: int) -> list[int] | None:
    if spec.mask is None:
        return None
    if spec.mask == "present":
        return sorted(set(labels))
    path = Path(spec.mask).expanduser()
    index = {n: i for i, n in enumerate(known or ())}
    out = set()
    for token in read_text_file(path, f"eval set {spec.name!r}: mask file").split():
        if token in index:
            out.add(index[token])
        elif token.isdigit() and int(token) < num_classes:
            out.add(int(token))
        else:
            raise ValueError(
                f"eval set {spec.name!r}: mask {str(path)!r} names {token!r}, neither a class name of the model nor "
                f"a label index below {num_classes}"
            )
    if not out:
        raise ValueError(f"eval set {spec.name!r}: mask {str(path)!r} names no class")
    outside = sorted(set(labels) - out)
    if outside:
        raise ValueError(f"eval set {spec.name!r}: its images have label(s) {outside[:5]} outside the mask")
    return sorted(out)


def load_eval_set(
    spec: EvalSet,
    size: Sequence[int],
    num_classes: int,
    class_names: Sequence[str] | None = None,
    crop_pct: float | EvalCrop | None = None,
) -> tuple[ImageSet, list[int] | None]:
    """The set's images (read from files as they are evaluated: such sets can be large) and its class mask."""
    path = Path(spec.path).expanduser()
    if path.is_dir():
        classes = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not classes:
            raise ValueError(f"eval set {spec.name!r}: {str(path)!r} has no class sub-folders")
        label_of = _class_labels(classes, class_names, num_classes, f"eval set {spec.name!r}")
        files, labels = [], []
        for c, label in zip(classes, label_of):
            found = sorted(p for p in (path / c).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
            files += found
            labels += [label] * len(found)
        if not files:
            raise ValueError(f"eval set {spec.name!r}: {str(path)!r} holds no images")
    elif path.is_file():
        files, labels = read_list_file(path, path.parent, num_classes, f"eval set {spec.name!r}")
        # Paths relative to the list's folder, or (NOAH's lists in <dataset>/annotations/) to the dataset root above.
        files = locate_images(files, path.parent, [path.parent, *list(path.parent.parents)[:2]])
    else:
        raise FileNotFoundError(f"eval set {spec.name!r}: {str(path)!r} does not exist (a folder or a list file)")
    images = materialise(files, labels, num_classes, tuple(size), False, spec.name, crop_pct=crop_pct)
    return images, _load_mask(spec, labels, class_names, num_classes)


def masked_accuracy(logits: torch.Tensor, labels: torch.Tensor, mask: Sequence[int] | None) -> float:
    """Top-1 accuracy; with ``mask`` the argmax runs over those classes only."""
    if len(labels) == 0:
        return 0.0
    if mask is not None:
        keep = torch.tensor(list(mask), device=logits.device)
        pred = keep[logits.index_select(1, keep).argmax(-1)]
    else:
        pred = logits.argmax(-1)
    return (pred == labels).float().mean().item()


def evaluate_sets(
    model: nn.Module,
    sets: Sequence[str | EvalSet],
    *,
    modality: ImageModality,
    num_classes: int,
    class_names: Sequence[str] | None,
    crop_pct: float | EvalCrop | None,
    device: torch.device,
    batch_size: int = 256,
    workers: int = 2,
    amp: str = "off",
    forward: Any = None,
) -> dict[str, dict[str, Any]]:
    """``{name: {"acc", "images", "classes", "masked"}}`` for each set, in the order given (names must be unique).
    ``masked``: the argmax was restricted to ``classes`` of the label space (not comparable with the papers'
    unmasked 1000-way figures for ImageNet-A / -R)."""
    specs = [parse_eval_set(s) if isinstance(s, str) else s for s in sets]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"eval set names must be unique, got {names}")
    out: dict[str, dict[str, Any]] = {}
    for spec in specs:
        images, mask = load_eval_set(spec, modality.input_size, num_classes, class_names, crop_pct)
        loader, _ = make_loader(images, batch_size, shuffle=False, workers=workers)
        logits, labels = predict(model, loader, modality, device, amp, forward)
        acc = masked_accuracy(logits, labels, mask)
        n_cls = len(mask or range(num_classes))
        out[spec.name] = {"acc": round(acc, 6), "images": len(images), "classes": n_cls, "masked": mask is not None}
        how = f"masked to {n_cls} classes" if mask is not None else f"{n_cls}-way, unmasked"
        _logger.info("eval set %s: acc %.4f on %d images (%s)", spec.name, acc, len(images), how)
    return out
