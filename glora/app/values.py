"""Checked command-line values (argparse ``type=`` converters): a bad value is one line naming what was expected.

Shared by every command's options and by the data sources' own option classes.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

import yaml

__all__ = [
    "INT_MAX",
    "number",
    "finite_float",
    "positive_int",
    "nonneg_int",
    "positive_float",
    "nonneg_float",
    "probability",
    "optional",
    "yaml_mapping",
    "not_found",
]


def number(kind: type, check: Callable[[float], bool], what: str, upper: int | None = None) -> Callable[[str], Any]:
    """A converter of ``kind`` (int or float) whose values must pass ``check``; ``what`` names what is expected in the
    one-line error. Integers stop at ``upper`` (default: :data:`INT_MAX` for ints)."""
    if upper is None and kind is int:
        upper = INT_MAX

    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if upper is not None and value > upper:
            raise argparse.ArgumentTypeError(f"expected {what} up to {upper} (2**63 - 1), got {text!r}")
        if (isinstance(value, float) and not math.isfinite(value)) or not check(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    convert.__name__ = what
    return convert


# Integers end where torch's (seeds: manual_seed takes 0 .. 2**63 - 1) and Python's C-level sizes do.
INT_MAX = 2**63 - 1

finite_float = number(float, lambda v: True, "a number")
positive_int = number(int, lambda v: v > 0, "a positive integer", INT_MAX)
nonneg_int = number(int, lambda v: v >= 0, "an integer >= 0", INT_MAX)
positive_float = number(float, lambda v: v > 0, "a positive number")
nonneg_float = number(float, lambda v: v >= 0, "a number >= 0")
probability = number(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")


def yaml_mapping(text: str) -> dict[str, Any]:
    """A mapping given inline as YAML/JSON, e.g. ``'{embed_dim: 32, depth: 2}'``."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = None
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise argparse.ArgumentTypeError(f"expected a mapping such as '{{drop_rate: 0.1}}', got {text!r}")
    empty = next((k for k, v in value.items() if v is None), None)
    if empty is not None:  # '{img_size:32}' reads as the key 'img_size:32' with no value
        raise argparse.ArgumentTypeError(
            f"key {empty!r} in {text!r} has no value; write 'key: value' with a space after the colon, "
            "e.g. '{img_size: 32, depth: 2}'"
        )
    return value


def optional(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """Also accept ``none``/``null`` (meaning: not set)."""

    def wrapped(text: str) -> Any:
        return None if text.lower() in ("none", "null", "") else convert(text)

    wrapped.__name__ = f"{getattr(convert, '__name__', 'value')} or none"
    return wrapped


def not_found(what: str, path: Any, want: str = "folder") -> OSError:
    """The error for a ``want`` (``"file"`` or ``"folder"``) that is not at ``path``: a file where a folder is
    expected (or the other way round) is said so, rather than called missing."""
    from pathlib import Path

    p = Path(str(path)).expanduser()
    if want == "folder" and p.is_file():
        return NotADirectoryError(f"{what} {str(p)!r} is a file, not a folder")
    if want == "file" and p.is_dir():
        return IsADirectoryError(f"{what} {str(p)!r} is a folder, not a file")
    return FileNotFoundError(f"{what} {str(p)!r} does not exist")
