"""Parsing a command's options: ``-c`` YAML files set defaults, the command line overrides, every value checked
the way argparse checks it; which options a command line (or its files) set explicitly; the ``--choices`` form."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from glora.space import SUPPORTS

from ..values import yaml_mapping
from .errors import ConfigError
from .presets import ListPresets, resolve_config

__all__ = [
    "make_parser",
    "parse_args",
    "explicit_options",
    "config_options",
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


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in the help, once: an option whose help already says its default is left as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text.lower():
            return text
        return super()._get_help_string(action)


def program_name(script: str, command: str) -> str:
    """The name a user typed: ``glora-train`` from the console command, ``train_supernet.py`` from the script."""
    typed = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return command if typed == command else script


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad option is one line (``error: ...``), like every other user error."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def make_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, description=description, formatter_class=_HelpFormatter)
    parser.add_argument(
        "-c",
        "--config",
        action="append",
        default=[],
        metavar="YAML",
        help="YAML file whose keys are option names, or a shipped preset's name (e.g. vtab/cifar; see "
        "--list-presets); repeat to stack files (later ones win); the command line overrides them",
    )
    parser.add_argument("--list-presets", action=ListPresets, help="list the shipped -c presets and exit")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    return parser


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.dest not in ("help", "config", argparse.SUPPRESS)}


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


def _coerce(action: argparse.Action, value: Any, where: str) -> Any:
    """Check a YAML value the way argparse would check it on the command line."""
    if action.nargs == 0:  # store_true / store_false
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    from_yaml = getattr(action.type, "from_yaml", None)
    if from_yaml is not None and value is not None:
        return from_yaml(value, where)
    if value is None:
        if action.default is None or action.nargs in ("*", "?"):
            return None
        raise ConfigError(f"{where}: a value is required")
    if action.nargs in ("+", "*") or isinstance(action.nargs, int):
        items = value if isinstance(value, list) else [value]
        if action.nargs == "+" and not items:
            raise ConfigError(f"{where}: expected at least one value")
        return [_coerce_one(action, v, where) for v in items]
    if isinstance(value, list) or (isinstance(value, dict) and action.type is not yaml_mapping):
        raise ConfigError(f"{where}: expected a single value, got {value!r}")
    return _coerce_one(action, value, where)


def _coerce_one(action: argparse.Action, value: Any, where: str) -> Any:
    if action.type is yaml_mapping and isinstance(value, dict):
        return yaml_mapping(yaml.safe_dump(value))
    if isinstance(value, (list, dict)):
        raise ConfigError(f"{where}: expected a single value, got {value!r}")
    if action.type is None:
        word = {False: "off", True: "on"}.get(value) if isinstance(value, bool) else None
        if word is not None and action.choices is not None and word in action.choices:
            value = word  # YAML 1.1 reads an unquoted off / on as a boolean: `amp: off` means the choice "off"
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        out = value
    else:
        text = str(value).lower() if isinstance(value, bool) else str(value)
        try:
            out = action.type(text)
        except (argparse.ArgumentTypeError, TypeError, ValueError) as e:
            raise ConfigError(f"{where}: {e}") from None
    if action.choices is not None and out not in action.choices:
        allowed = ", ".join(map(str, action.choices))
        raise ConfigError(f"{where}: {value!r} is not allowed; choose from {allowed}")
    return out


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` after applying the ``--config`` files as defaults."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("-c", "--config", action="append", default=[])
    known, _ = pre.parse_known_args(argv)
    actions = _actions(parser)
    defaults: dict[str, Any] = {}
    for path in known.config:
        for key, value in read_yaml(path).items():
            dest = str(key).replace("-", "_")
            if dest not in actions or dest == "debug":
                allowed = ", ".join(sorted(a.replace("_", "-") for a in actions if a != "debug"))
                raise ConfigError(f"{path}: unknown key {key!r}; allowed keys: {allowed}")
            defaults[dest] = _coerce(actions[dest], value, f"{path}: {key}")
    parser.set_defaults(**defaults)
    return parser.parse_args(argv)


def explicit_options(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> set[str]:
    """Destinations the command line itself sets (config files and defaults excluded)."""
    probe = argparse.ArgumentParser(add_help=False)
    for action in parser._actions:
        if action.dest in ("help", argparse.SUPPRESS):
            continue
        kwargs: dict[str, Any] = {"dest": action.dest, "default": argparse.SUPPRESS}
        if action.nargs == 0:
            kwargs["action"] = "store_const"
            kwargs["const"] = action.const
        else:
            kwargs["nargs"] = action.nargs
            if isinstance(action, argparse._AppendAction):
                kwargs["action"] = "append"
        probe.add_argument(*action.option_strings, **kwargs)
    seen, _ = probe.parse_known_args(argv)
    return set(vars(seen))


def config_options(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> set[str]:
    """Destinations the ``-c`` files of this command line set (a resumed run compares them as it compares options
    typed on the command line)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("-c", "--config", action="append", default=[])
    known, _ = pre.parse_known_args(argv)
    actions = _actions(parser)
    return {d for path in known.config for d in (str(k).replace("-", "_") for k in read_yaml(path)) if d in actions}
