"""Options declared once, as dataclass fields: a field's default is the option's default, its metadata the rest (help,
bounds or a converter, choices, whether a resumed run may change it).

A command's options are the fields of a few dataclasses: the objects the command builds from them (:class:`Recipe`,
:class:`Sampling`, :class:`SearchSettings`, a data source's options) or small option groups of the command's own,
as ``HfArgumentParser`` reads ``TrainingArguments``. Metadata is plain data (``{"help": ..., "min": 1}``), so a
dataclass of the core library or the search declares its options without importing this package; :func:`option` is
the short form for the application's own fields. Which argparse type checks a value follows from the field's type
and its bounds (``int`` with ``min: 1`` reads as a positive integer, ``float | None`` also takes ``none``, ``bool``
is a ``--flag/--no-flag`` pair); a ``type`` in the metadata overrides that.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .values import (
    finite_float,
    nonneg_float,
    nonneg_int,
    number,
    optional,
    positive_float,
    positive_int,
    probability,
)

__all__ = ["option", "Declared", "declared", "declared_in", "Group", "RESUME_KINDS"]

# Whether a resumed run may change an option: fixed (it changes what is computed: the saved run's value is kept, and
# another value on the command line is refused), may-change (how or where it runs, how far: this command line's value
# wins), this-run (about this invocation only, never taken from the saved run: --stop-after).
RESUME_KINDS = ("fixed", "may-change", "this-run")


def option(default: Any = dataclasses.MISSING, help: str = "", *, resume: str = "fixed", **meta: Any) -> Any:
    """A dataclass field that is also a command-line option. ``meta``: ``min`` / ``max`` / ``above`` (bounds of a
    number), ``choices``, or argparse's own ``type``, ``nargs``, ``metavar``, ``action``; ``positional=True`` for an
    argument without a flag. A list or dict default is copied per instance."""
    if resume not in RESUME_KINDS:
        raise ValueError(f"resume must be one of {', '.join(RESUME_KINDS)}; got {resume!r}")
    metadata = {"help": help, "resume": resume, **meta}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


# argparse keywords a field's metadata may carry as they are
_ARGPARSE = ("type", "nargs", "metavar", "action", "choices")


@dataclass(frozen=True)
class Declared:
    """One option as a command reads it: its name, default, help, argparse form and resume rule."""

    dest: str
    default: Any
    help: str
    kwargs: dict[str, Any]  # add_argument's keywords (type, nargs, choices, metavar, action)
    resume: str = "fixed"
    positional: bool = False
    owner: type | None = None  # the dataclass that declares it

    @property
    def flag(self) -> str:
        return self.dest if self.positional else "--" + self.dest.replace("_", "-")

    @property
    def is_switch(self) -> bool:
        """An option that takes no value (``--flag`` / ``--no-flag``, or ``store_true``)."""
        action = self.kwargs.get("action")
        return action in ("store_true", "store_false") or action is argparse.BooleanOptionalAction

    def help_text(self) -> str:
        """The help with the default stated once (unless the help already speaks of it)."""
        if self.help == argparse.SUPPRESS:
            return self.help
        text = self.help.replace("%", "%%")
        if "default" in self.help.lower() or self.positional or self.kwargs.get("action") == "store_true":
            return text
        if isinstance(self.default, (list, tuple)):
            shown = " ".join(map(str, self.default)) or "none"
        else:
            shown = self.default
        return f"{text} (default: {str(shown).replace('%', '%%')})" if text else f"(default: {shown})"

    def add_to(self, group: Any) -> None:
        """Add this option to an argparse parser or argument group. Its default is left out (``SUPPRESS``): what the
        command line gives is told apart from what it does not; the defaults are layered by
        :class:`~glora.app.options.parsing.Parsed`."""
        kwargs = dict(self.kwargs)
        if self.positional:
            group.add_argument(self.dest, help=self.help_text(), **kwargs)
        else:
            group.add_argument(self.flag, dest=self.dest, default=argparse.SUPPRESS, help=self.help_text(), **kwargs)


def declared(cls: type, only: Iterable[str] | None = None, skip: Iterable[str] = ()) -> list[Declared]:
    """The options a dataclass declares (its fields with a ``help`` in their metadata), in field order; ``only`` /
    ``skip`` pick some of them."""
    hints = typing.get_type_hints(cls)
    wanted = None if only is None else set(only)
    out = []
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata or f.name in skip or (wanted is not None and f.name not in wanted):
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        meta = f.metadata
        kwargs = {k: meta[k] for k in _ARGPARSE if k in meta}
        if "type" not in kwargs and "action" not in kwargs:
            kwargs |= _argparse_form(hints[f.name], meta, f"{cls.__name__}.{f.name}")
        if isinstance(kwargs.get("choices"), (list, tuple)):
            kwargs["choices"] = tuple(kwargs["choices"])
        out.append(
            Declared(
                f.name, default, meta["help"], kwargs, meta.get("resume", "fixed"), meta.get("positional", False), cls
            )
        )
    if wanted is not None and wanted - {d.dest for d in out}:
        raise ValueError(f"{cls.__name__} declares no option {sorted(wanted - {d.dest for d in out})[0]!r}")
    return out


def _argparse_form(hint: Any, meta: dict[str, Any], where: str) -> dict[str, Any]:
    """``type`` / ``nargs`` / ``action`` for a field of type ``hint`` with bounds ``meta``."""
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType) and type(None) in args:  # X | None: also "none"
        inner = next(a for a in args if a is not type(None))
        form = _argparse_form(inner, meta, where)
        if inner is bool or inner is str or "nargs" in form:
            return form
        return form | {"type": optional(form.get("type", str))}
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin in (list, tuple):
        nargs: Any = len(args) if origin is tuple and args and args[-1] is not Ellipsis else meta.get("nargs", "*")
        element = args[0] if args else str
        return {"nargs": nargs, **_argparse_form(element, meta, where)}
    if hint is int or hint is float:
        return {"type": _converter(hint, meta)}
    if hint is str or hint is typing.Any:
        return {}
    raise TypeError(f"{where}: no command-line form for type {hint!r}; give a 'type' in its metadata")


def _converter(kind: type, meta: dict[str, Any]) -> Callable[[str], Any]:
    """The checked converter for a number with bounds ``min`` (inclusive), ``above`` (exclusive), ``max``."""
    lo, above, hi = meta.get("min"), meta.get("above"), meta.get("max")
    known = {
        (int, 1, None, None): positive_int,
        (int, 0, None, None): nonneg_int,
        (float, None, 0, None): positive_float,
        (float, 0, None, None): nonneg_float,
        (float, 0, None, 1): probability,
        (float, None, None, None): finite_float,
    }
    found = known.get((kind, lo, above, hi))
    if found is not None:
        return found
    noun = "an integer" if kind is int else "a number"
    if lo is not None and hi is not None:
        what = f"{noun} from {lo} to {hi}"
    else:
        bounds = [
            f">= {lo}" if lo is not None else "",
            f"> {above}" if above is not None else "",
            f"<= {hi}" if hi is not None else "",
        ]
        what = " ".join([noun, *(b for b in bounds if b)])

    def check(v: float) -> bool:
        return (lo is None or v >= lo) and (above is None or v > above) and (hi is None or v <= hi)

    return number(kind, check, what)


def declared_in(classes: Sequence[type]) -> list[Declared]:
    """Every option the classes declare, each once (the first class that declares a name wins)."""
    seen: dict[str, Declared] = {}
    for cls in classes:
        for d in declared(cls):
            seen.setdefault(d.dest, d)
    return list(seen.values())


@dataclass(frozen=True)
class Group:
    """A titled group of options in ``--help``: the options of some dataclasses (or declared one by one)."""

    title: str
    options: Sequence[Declared]

    @classmethod
    def of(cls, title: str, *classes: type) -> Group:
        return cls(title, declared_in(classes))
