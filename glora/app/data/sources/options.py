"""The options a data source owns: one dataclass per source (its fields are the option names, as the YAML keys and
``--dash-names`` are), built from shared parts, and the argparse groups they make.

A source declares ``Options = SomeOptions`` (:class:`glora.app.data.sources.Source`); a field's metadata carries
its command-line form (help, type, choices). A field declared in a shared part (:class:`SplitOptions`,
:class:`ImageFileOptions`, :class:`TextFileOptions`) is one option that every source built on that part owns; the
help lists which datasets use each group, and an option of another source is refused, not ignored
(:func:`foreign_options`).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ...declared import Group, declared, option
from ...values import nonneg_int, optional, positive_int, probability
from ..transforms import CROP_MODES

__all__ = [
    "option",
    "SplitOptions",
    "ImageFileOptions",
    "TaskOptions",
    "SplitSeedOptions",
    "TextFileOptions",
    "option_names",
    "declaring_class",
    "source_groups",
    "option_owners",
    "options_from",
]


@dataclass
class SplitOptions:
    """Image splits by name."""

    train_split: str = option("train", "train split (VTAB-1k: train800 or a list file)")
    val_split: str = option("val", "validation split: the search ranks subnets on it")
    test_split: str = option("test", "test split, looked at once for the final pick")


@dataclass
class ImageFileOptions(SplitOptions):
    """Image files under a root folder."""

    data_root: str | None = option(
        None, "VTAB-1k or few-shot root (<root>/<task>/...) or an ImageFolder tree", metavar="DIR"
    )
    cache_images: bool = option(
        True,
        "decode and resize every image once and keep it in memory (uint8)",
        action=argparse.BooleanOptionalAction,
    )
    crop_pct: float | None = option(
        None,
        "evaluation: resize to size/crop-pct, center crop (default: squash-resize; few-shot 0.875 = 256->224)",
        type=optional(probability),
    )
    crop_mode: str | None = option(
        None,
        "evaluation crop as timm names it: center (shorter side to size/crop-pct), squash (both sides: the "
        "few-shot reference code's 256x256 then 224) or border (default: the dataset's)",
        choices=CROP_MODES,
    )

    def __post_init__(self) -> None:
        if self.crop_pct is not None and not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop-pct must be in (0, 1], got {self.crop_pct}")
        if self.crop_mode is not None and self.crop_mode not in CROP_MODES:
            raise ValueError(f"crop-mode must be one of {', '.join(CROP_MODES)}; got {self.crop_mode!r}")


@dataclass
class TaskOptions(ImageFileOptions):
    """Task folders under the root."""

    task: str | None = option(None, "VTAB-1k task (e.g. cifar) or few-shot dataset (e.g. oxford_pets)")


@dataclass
class SplitSeedOptions:
    """Seeded splits."""

    split_seed: int = option(
        0, "ImageFolder: seed of the stratified split; few-shot: the seed of the train list", type=nonneg_int
    )


@dataclass
class TextFileOptions:
    """Text files, read with the datasets library and tokenized by the model's own tokenizer."""

    train_file: str | None = option(None, "CSV, TSV, JSON, JSONL, parquet or a save_to_disk folder", metavar="FILE")
    validation_file: str | None = option(None, "the validation split's file (the search ranks on it)", metavar="FILE")
    test_file: str | None = option(None, "the test split's file, looked at once for the final pick", metavar="FILE")
    max_seq_length: int = option(128, "tokens per text (longer ones are cut)", type=positive_int)
    tokenizer: str | None = option(None, "the tokenizer's folder or hub id (default: the --model's)")


def option_names(options: type) -> tuple[str, ...]:
    """The option names (dests) of an options dataclass."""
    return tuple(f.name for f in dataclasses.fields(options))


def declaring_class(options: type, name: str) -> type:
    """The class in ``options``' hierarchy that first declares field ``name`` (a shared part, or the source's own)."""
    for cls in reversed(options.__mro__):
        if name in getattr(cls, "__annotations__", {}) and dataclasses.is_dataclass(cls):
            return cls
    return options


def options_from(options: type, values: Mapping[str, Any], *, what: str) -> Any:
    """An ``options`` instance from ``values``; a key it does not have is a ``ValueError`` naming ``what`` (the
    dataset) and its options."""
    own = option_names(options)
    unknown = sorted(set(values) - set(own))
    if unknown:
        shown = ", ".join(n.replace("_", "-") for n in own) or "none"
        raise ValueError(
            f"{', '.join(n.replace('_', '-') for n in unknown)}: not an option of {what} (its options: {shown})"
        )
    return options(**values)


def source_groups(sources: Iterable[tuple[str, type]]) -> list[Group]:
    """One option group per options class that declares fields (a shared part or a source's own), each option once,
    titled with the datasets that use it. ``sources``: (dataset name, options class) in listing order."""
    sources = list(sources)
    order = [name for name, _ in sources]
    owners = option_owners(sources)
    declared_by: dict[type, list[str]] = {}
    for _, options in sources:
        for f in dataclasses.fields(options):
            names = declared_by.setdefault(declaring_class(options, f.name), [])
            if f.name not in names:
                names.append(f.name)
    groups = []
    for cls, names in declared_by.items():
        users = sorted({u for n in names for u in owners[n]}, key=order.index)
        first = (cls.__doc__ or cls.__name__).strip().splitlines()[0].rstrip(".")
        word = first.split()[0]
        title = first if any(c.isupper() for c in word[1:]) else first[0].lower() + first[1:]  # ImageFolder stays
        groups.append(Group(f"{title} (--dataset {', '.join(users)})", declared(cls, only=names)))
    return groups


def option_owners(sources: Iterable[tuple[str, type]]) -> dict[str, tuple[str, ...]]:
    """Each option's owners: the datasets whose options class has it."""
    owners: dict[str, list[str]] = {}
    for name, options in sources:
        for f in dataclasses.fields(options):
            owners.setdefault(f.name, []).append(name)
    return {k: tuple(v) for k, v in owners.items()}
