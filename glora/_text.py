"""Small helpers for error messages."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["first_of", "first_line"]


def first_of(items: Sequence[object]) -> str:
    """``'x'`` or ``'x' and 3 more``: name the first offender without flooding the message."""
    extra = len(items) - 1
    return f"{items[0]!r}" + (f" and {extra} more" if extra > 0 else "")


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): enough for a one-line error."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
