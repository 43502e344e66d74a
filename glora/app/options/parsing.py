"""Parsing a command's options in one pass: the declared defaults, then (for a command that has them) defaults taken
from an earlier run, then the ``-c`` YAML files left to right, then the command line; every value checked the way
argparse checks it, and where each came from remembered (what the command line typed, which file set what), so a
resumed run, an option that cannot apply and an error message can all say so. The ``--choices`` form lives here.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from glora.space import SUPPORTS

from ..declared import Declared, Group
from ..values import yaml_mapping
from .errors import ConfigError
from .presets import ListPresets, resolve_config

__all__ = [
    "Parser",
    "Command",
    "Group",
    "Parsed",
    "parse_args",
    "program_name",
    "read_yaml",
    "support_choices",
    "parse_choices",
]


def support_choices(text: str) -> str:
    """``SUPPORT=NAME[,NAME...]`` (e.g. ``B=lora_8,lora_4``), checked for form and normalised; the names are
    checked against the search space later, where the ranks are known."""
    support, sep, names = str(text).partition("=")
    support = support.strip().upper()
    picked = [n.strip() for n in names.split(",") if n.strip()]
    if not sep or support not in SUPPORTS or not picked:
        raise argparse.ArgumentTypeError(
            f"expected SUPPORT=NAME[,NAME...] with SUPPORT one of A-E, e.g. B=lora_8 or D=vector,none; got {text!r}"
        )
    return f"{support}={','.join(picked)}"


def _choices_from_yaml(value: Any, where: str) -> list[str]:
    """YAML form of ``--choices``: a mapping ``{B: [lora_8], C: none}`` or a list of ``SUPPORT=NAMES`` strings."""
    if isinstance(value, Mapping):
        items = []
        for k, v in value.items():
            names = v if isinstance(v, list) else [v]
            if not names or not all(isinstance(n, str) for n in names):
                raise ConfigError(f"{where}: {k}: expected a choice name or a list of them, got {v!r}")
            items.append(f"{k}={','.join(names)}")
        value = items
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"{where}: expected SUPPORT=NAME[,NAME...] or a mapping of supports, got {item!r}")
        try:
            out.append(support_choices(item))
        except argparse.ArgumentTypeError as e:
            raise ConfigError(f"{where}: {e}") from None
    return out


support_choices.from_yaml = _choices_from_yaml  # type: ignore[attr-defined]


def parse_choices(items: Sequence[str] | None) -> dict[str, list[str]] | None:
    """``["A=none", "B=lora_8"]`` -> ``{"A": ["none"], "B": ["lora_8"]}`` (None: the full space)."""
    if not items:
        return None
    out: dict[str, list[str]] = {}
    for item in items:
        support, _, names = support_choices(item).partition("=")
        if support in out:
            raise ConfigError(f"--choices names support {support} twice; give each support once")
        out[support] = names.split(",")
    return out


def program_name(script: str, command: str) -> str:
    """The name a user typed: ``glora-train`` from the console command, ``train_supernet.py`` from the script."""
    typed = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return command if typed == command else script


class Parser(argparse.ArgumentParser):
    """argparse, but a bad option is one line (``error: ...``), like every other user error."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


class Command:
    """One command's options, declared once (:mod:`glora.app.declared`): its ``--help``, its parse and its resume rules.

    Every command also takes ``-c/--config`` (YAML files of option names, or a shipped preset's name, stacked left to
    right), ``--list-presets`` and ``--debug``.
    """

    def __init__(self, prog: str, description: str, groups: Sequence[Group]) -> None:
        self.prog, self.description, self.groups = prog, description, list(groups)
        self.options: dict[str, Declared] = {}
        for group in self.groups:
            for d in group.options:
                if d.dest in self.options:
                    raise ValueError(f"{prog}: option {d.flag} is declared twice")
                self.options[d.dest] = d

    @functools.cached_property
    def parser(self) -> argparse.ArgumentParser:
        """The argparse parser (its defaults left out: :class:`Parsed` layers them)."""
        p = Parser(prog=self.prog, description=self.description)
        p.add_argument(
            "-c",
            "--config",
            action="append",
            default=argparse.SUPPRESS,
            metavar="YAML",
            help="YAML file whose keys are option names, or a shipped preset's name (e.g. vtab/cifar; see "
            "--list-presets); repeat to stack files (later ones win); the command line overrides them",
        )
        p.add_argument("--list-presets", action=ListPresets, help="list the shipped -c presets and exit")
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks on errors")
        for group in self.groups:
            target = p.add_argument_group(group.title) if group.title else p
            for d in group.options:
                d.add_to(target)
        return p

    def format_help(self) -> str:
        return self.parser.format_help()

    def defaults(self) -> dict[str, Any]:
        """Every option's declared default (a fresh copy of list defaults)."""
        return {k: list(d.default) if isinstance(d.default, list) else d.default for k, d in self.options.items()}

    def with_kind(self, kind: str) -> set[str]:
        """The options whose resume rule is ``kind`` (:data:`~glora.app.declared.RESUME_KINDS`)."""
        return {k for k, d in self.options.items() if d.resume == kind}

    def parse(self, argv: Sequence[str] | None = None) -> Parsed:
        """Parse ``argv`` (default: ``sys.argv[1:]``) and read its ``-c`` files, each once."""
        given = vars(self.parser.parse_args(argv))
        configs = [str(c) for c in given.pop("config", [])]
        debug = bool(given.pop("debug", False))
        files = [(c, self._read(c)) for c in configs]
        return Parsed(self, typed=given, files=files, debug=debug)

    def _read(self, path: str) -> dict[str, Any]:
        """A ``-c`` file's options, each checked as the command line would check it."""
        out = {}
        for key, value in read_yaml(path).items():
            dest = str(key).replace("-", "_")
            declared = self.options.get(dest)
            if declared is None or declared.positional:
                allowed = ", ".join(sorted(d.flag[2:] for d in self.options.values() if not d.positional))
                raise ConfigError(f"{path}: unknown key {key!r}; allowed keys: {allowed}")
            out[dest] = coerce(declared, value, f"{path}: {key}")
        return out


@dataclass
class Parsed:
    """A parsed command line: the values it gives, layered over its ``-c`` files, over ``under`` (defaults from an
    earlier run: ``--init-from``), over the declared defaults; and where each value came from."""

    command: Command
    typed: dict[str, Any]  # what the command line itself gave
    files: list[tuple[str, dict[str, Any]]]  # each -c file and what it set, in order
    debug: bool = False
    under: dict[str, Any] = field(default_factory=dict)

    @property
    def configs(self) -> list[str]:
        return [name for name, _ in self.files]

    def values(self) -> dict[str, Any]:
        out = self.command.defaults() | self.under
        for _, values in self.files:
            out |= values
        return out | self.typed

    @property
    def args(self) -> argparse.Namespace:
        """Every option's value (and ``config``, the -c files; ``debug``)."""
        return argparse.Namespace(**self.values(), config=self.configs, debug=self.debug)

    def get(self, dest: str) -> Any:
        return self.values()[dest]

    def explicit(self) -> set[str]:
        """The options the command line or its ``-c`` files set (a default, or one taken from an earlier run, is
        not)."""
        return set(self.typed) | {d for _, values in self.files for d in values}

    def layered_under(self, defaults: Mapping[str, Any]) -> Parsed:
        """The same command line with ``defaults`` (names it does not declare left out) under its ``-c`` files."""
        known = {k: v for k, v in defaults.items() if k in self.command.options}
        return Parsed(self.command, self.typed, self.files, self.debug, known)

    def layer(self, dest: str) -> int:
        """Which layer gave ``dest`` its value: 0 its declared default, 1 the earlier run's (``under``), 2 + i the
        i-th ``-c`` file, 2 + the number of files the command line. Of two options that say the same thing in
        two ways (``--warmup-epochs``, ``--warmup-ratio``) the one given at the higher layer wins."""
        if dest in self.typed:
            return 2 + len(self.files)
        for i in reversed(range(len(self.files))):
            if dest in self.files[i][1]:
                return 2 + i
        return 1 if dest in self.under else 0

    def set_by(self, dests: Iterable[str]) -> str:
        """Where options came from when a ``-c`` file set them and the command line did not (`` (set by -c
        protocols/recommended)``), else ``""``: an error about them says which file to look at."""
        dests = [d for d in dests if d not in self.typed]
        names = [name for name, values in self.files if any(d in values for d in dests)]
        return f" (set by {', '.join('-c ' + n for n in dict.fromkeys(names))})" if names else ""


def parse_args(command: Command, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The values of ``argv`` for ``command`` (defaults, ``-c`` files, command line), as a namespace."""
    return command.parse(argv).args


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML mapping from ``path`` (a file or a preset name, :func:`resolve_config`; safe_load); ConfigError says
    what is wrong with it."""
    p = resolve_config(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {str(p)!r}: {e}") from None
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"config file {str(p)!r} is not valid YAML{where}: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"config file {str(p)!r} must be a mapping of option names to values")
    return dict(data)


def coerce(option: Declared, value: Any, where: str) -> Any:
    """Check a YAML value the way argparse checks it on the command line."""
    kwargs = option.kwargs
    if option.is_switch:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    convert = kwargs.get("type")
    from_yaml = getattr(convert, "from_yaml", None)
    if from_yaml is not None and value is not None:
        return from_yaml(value, where)
    nargs = kwargs.get("nargs")
    if value is None:
        if option.default is None or nargs in ("*", "?"):
            return None
        raise ConfigError(f"{where}: a value is required")
    if nargs in ("+", "*") or isinstance(nargs, int):
        items = value if isinstance(value, list) else [value]
        if nargs == "+" and not items:
            raise ConfigError(f"{where}: expected at least one value")
        if isinstance(nargs, int) and len(items) != nargs:
            raise ConfigError(f"{where}: expected {nargs} values, got {value!r}")
        return [_coerce_one(option, v, where) for v in items]
    if isinstance(value, list) or (isinstance(value, dict) and convert is not yaml_mapping):
        raise ConfigError(f"{where}: expected a single value, got {value!r}")
    return _coerce_one(option, value, where)


def _coerce_one(option: Declared, value: Any, where: str) -> Any:
    convert, choices = option.kwargs.get("type"), option.kwargs.get("choices")
    if convert is yaml_mapping and isinstance(value, dict):
        return yaml_mapping(yaml.safe_dump(value))
    if isinstance(value, (list, dict)):
        raise ConfigError(f"{where}: expected a single value, got {value!r}")
    if convert is None:
        word = {False: "off", True: "on"}.get(value) if isinstance(value, bool) else None
        if word is not None and choices is not None and word in choices:
            value = word  # YAML 1.1 reads an unquoted off / on as a boolean: `amp: off` means the choice "off"
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        out = value
    else:
        text = str(value).lower() if isinstance(value, bool) else str(value)
        try:
            out = convert(text)
        except (argparse.ArgumentTypeError, TypeError, ValueError) as e:
            raise ConfigError(f"{where}: {e}") from None
    if choices is not None and out not in choices:
        allowed = ", ".join(map(str, choices))
        raise ConfigError(f"{where}: {value!r} is not allowed; choose from {allowed}")
    return out
