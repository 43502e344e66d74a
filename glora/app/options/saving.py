"""The resolved options as plain data, written next to a command's outputs (loadable again with ``-c``)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from glora._io import atomic_write_text

__all__ = ["args_to_dict", "save_config", "plain"]


def args_to_dict(args: argparse.Namespace | Mapping[str, Any], drop: Iterable[str] = ("config", "debug")) -> dict:
    """Plain YAML/JSON-friendly dict of options (paths as strings, option names with dashes)."""
    items = vars(args).items() if isinstance(args, argparse.Namespace) else args.items()
    out = {}
    for k, v in items:
        if k in drop:
            continue
        out[k.replace("_", "-")] = plain(v)
    return out


def plain(v: Any) -> Any:
    if isinstance(v, os.PathLike):
        return str(v)
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, Mapping):
        return {str(k): plain(x) for k, x in v.items()}
    return v


def save_config(args: argparse.Namespace | Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write the resolved options as YAML (loadable again with ``--config``), atomically."""
    text = yaml.safe_dump(args_to_dict(args), sort_keys=False, default_flow_style=None)
    atomic_write_text(path, text)
