"""Small helpers for error messages."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["first_of"]


def first_of(items: Sequence[object]) -> str:
    """``'x'`` or ``'x' and 3 more``: name the first offender without flooding the message."""
    extra = len(items) - 1
    return f"{items[0]!r}" + (f" and {extra} more" if extra > 0 else "")
