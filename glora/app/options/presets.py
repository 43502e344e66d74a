"""The shipped ``-c`` presets: found by name from any folder after a plain install, and listed by
``--list-presets``."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["PRESETS", "preset_names", "resolve_config", "ListPresets"]


def _presets_folder() -> Path:
    """The -c presets: a built package's copy (setup.py puts ``configs/`` there), else the checkout's ``configs/``
    (a source tree or an editable install: the one copy the repository keeps)."""
    here = Path(__file__).resolve()
    packaged = here.parent.parent / "presets"
    return packaged if packaged.is_dir() else here.parents[3] / "configs"


PRESETS = _presets_folder()


def preset_names() -> list[str]:
    """The shipped presets, as ``-c`` accepts them (``vtab/cifar``, ``search/default``, ...)."""
    return sorted(p.relative_to(PRESETS).with_suffix("").as_posix() for p in PRESETS.rglob("*.yaml"))


def resolve_config(name: str | os.PathLike) -> Path:
    """The file a ``--config`` value means: an existing file as given, else the shipped preset of that name
    (``vtab/cifar``, ``vtab/cifar.yaml`` or ``configs/vtab/cifar.yaml``, the name the docs use)."""
    path = Path(name)
    if path.is_file():
        return path
    stem = path.as_posix().removeprefix("configs/").removesuffix(".yaml")
    preset = PRESETS / f"{stem}.yaml"
    if stem and not Path(stem).is_absolute() and ".." not in Path(stem).parts and preset.is_file():
        return preset
    raise ConfigError(f"config file {str(name)!r} does not exist, nor is it a preset name (see --list-presets)")


class ListPresets(argparse.Action):
    """``--list-presets``: print the shipped presets with their one-line descriptions, and exit."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        names = preset_names()
        width = max(map(len, names), default=0)
        for name in names:
            text = (PRESETS / f"{name}.yaml").read_text(encoding="utf-8").splitlines()
            first = next((line.lstrip("# ").strip() for line in text if line.startswith("#")), "")
            print(f"{name:<{width}}  {first}")
        example = "vtab/cifar" if "vtab/cifar" in names else next(iter(names), "NAME")
        print(f"\nuse one with -c NAME (e.g. -c {example}, stacked left to right); the files: {PRESETS}")
        parser.exit(0)
