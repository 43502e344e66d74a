"""Fresh start or resume: the same rules for every command that writes into ``--out``."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..outputs import same_input
from .errors import ConfigError
from .parsing import config_options, explicit_options
from .saving import plain

__all__ = ["merge_for_resume", "start_or_resume"]


def merge_for_resume(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    args: argparse.Namespace,
    saved: Mapping[str, Any],
    resumable: Iterable[str],
    this_run: Iterable[str] = (),
) -> argparse.Namespace:
    """The options a run was saved with, plus only the ``resumable`` ones this command line sets.

    Setting any other option to a different value is an error: a resumed run computes what it started computing. A
    value is compared as what it names: a relative path and the absolute one the run recorded are the same file
    (the command pressed again with ``--resume`` added is always accepted). ``this_run`` options (``--stop-after``:
    "in this run") are never taken from the saved run: this command line's value, or the default.
    """
    this_run = set(this_run)
    resumable = set(resumable) | this_run | {"config", "debug", "resume"}
    explicit = explicit_options(parser, argv) | config_options(parser, argv)
    changed = sorted(
        k
        for k in explicit
        if k not in resumable and not same_input(plain(getattr(args, k)), saved.get(k.replace("_", "-")))
    )
    if changed:
        names = ", ".join("--" + k.replace("_", "-") for k in changed)
        allowed = ", ".join("--" + k.replace("_", "-") for k in sorted(resumable - {"config", "debug", "resume"}))
        raise ConfigError(
            f"cannot change {names} when resuming (a resumed run keeps its options); may change: {allowed}"
        )
    merged = argparse.Namespace(**{k.replace("-", "_"): v for k, v in saved.items()})
    for k in vars(args):
        if (k in explicit and k in resumable) or k in this_run or not hasattr(merged, k):
            setattr(merged, k, getattr(args, k))
    merged.resume = True
    return merged


def start_or_resume(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    args: argparse.Namespace,
    resumable: Iterable[str],
    *,
    load: Callable[[], Any],
    saved_config: Callable[[Any], Mapping[str, Any]],
    existing: Iterable[Path],
    what: str,
    this_run: Iterable[str] = (),
) -> tuple[argparse.Namespace, Any]:
    """``(args, state)`` for a command that writes into ``--out``: fresh (state None) or resumed from ``load()``.

    The same rules for every such command: ``--resume`` and ``--force`` exclude each other; a resumed run keeps its
    saved options (``merge_for_resume``); a fresh run refuses an ``--out`` that already holds results (any of
    ``existing``, described as ``what``) unless ``--force``, so finished work is never overwritten by accident.
    """
    if args.resume and args.force:
        raise ConfigError("--resume and --force contradict each other")
    if args.resume:
        state = load()
        return merge_for_resume(parser, argv, args, saved_config(state), resumable, this_run), state
    if not args.force and any(Path(p).exists() for p in existing):
        raise FileExistsError(
            f"{str(args.out)!r} already holds {what}; use --resume to continue it or --force to start over"
        )
    return args, None
