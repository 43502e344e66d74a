"""Fresh start or resume: the same rules for every command that writes into ``--out``."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from ..outputs import same_input
from .errors import ConfigError
from .parsing import Parsed
from .saving import plain

__all__ = ["merge_for_resume", "start_or_resume"]

# Options of every command that are about this invocation, not the run.
_ALWAYS = {"resume", "force", "out"}


def merge_for_resume(parsed: Parsed, saved: Mapping[str, Any]) -> argparse.Namespace:
    """The options a run was saved with, plus the ones this command line (or its ``-c`` files) may change.

    The command's declarations say which may change (:data:`~glora.app.declared.RESUME_KINDS`): setting a
    fixed one to another value is an error, since a resumed run computes what it started computing. A value is
    compared as what it names: a relative path and the absolute one the run recorded are the same file (the command
    pressed again with ``--resume`` added is always accepted). ``this-run`` options (``--stop-after``: "in this
    run") are never taken from the saved run: this command line's value, or the default.
    """
    command, args = parsed.command, parsed.args
    this_run = command.with_kind("this-run")
    may_change = command.with_kind("may-change") | this_run | _ALWAYS
    explicit = parsed.explicit()
    changed = sorted(
        k for k in explicit if k not in may_change and not same_input(plain(getattr(args, k)), saved.get(_key(k)))
    )
    if changed:
        names = ", ".join("--" + _key(k) for k in changed)
        allowed = ", ".join("--" + _key(k) for k in sorted(may_change - _ALWAYS))
        raise ConfigError(
            f"cannot change {names} when resuming (a resumed run keeps its options); may change: {allowed}"
        )
    merged = argparse.Namespace(**{k.replace("-", "_"): v for k, v in saved.items()})
    for k, v in vars(args).items():
        if (k in explicit and k in may_change) or k in this_run or not hasattr(merged, k) or k in ("config", "debug"):
            setattr(merged, k, v)
    merged.resume = True
    return merged


def _key(dest: str) -> str:
    return dest.replace("_", "-")


def start_or_resume(
    parsed: Parsed,
    *,
    load: Callable[[], Any],
    saved_config: Callable[[Any], Mapping[str, Any]],
    existing: Iterable[Path],
    what: str,
) -> tuple[argparse.Namespace, Any]:
    """``(args, state)`` for a command that writes into ``--out``: fresh (state None) or resumed from ``load()``.

    The same rules for every such command: ``--resume`` and ``--force`` exclude each other; a resumed run keeps its
    saved options (:func:`merge_for_resume`); a fresh run refuses an ``--out`` that already holds results (any of
    ``existing``, described as ``what``) unless ``--force``, so finished work is never overwritten by accident.
    """
    args = parsed.args
    if args.resume and args.force:
        raise ConfigError("--resume and --force contradict each other")
    if args.resume:
        state = load()
        return merge_for_resume(parsed, saved_config(state)), state
    if not args.force and any(Path(p).exists() for p in existing):
        raise FileExistsError(
            f"{str(args.out)!r} already holds {what}; use --resume to continue it or --force to start over"
        )
    return args, None
