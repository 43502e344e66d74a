"""Options for the three commands: YAML files set defaults, the command line overrides, all checked.

As in timm's train.py: ``-c/--config`` YAML keys are option names (``batch-size`` or ``batch_size``); several
files may be given and later ones win; unknown keys and wrongly typed values are errors; the resolved options are
written next to the outputs. A ``--config`` that is not a file names a shipped preset (``-c vtab/cifar``, the
same as ``-c configs/vtab/cifar.yaml``, the name the docs use); ``--list-presets`` lists them.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from glora import paths
from glora._io import atomic_write_text
from glora.space import SUPPORTS

from ..data.loading import DATA_ON_DEVICE
from ..values import (
    INT_MAX,
    finite_float,
    nonneg_float,
    nonneg_int,
    optional,
    positive_float,
    positive_int,
    probability,
    yaml_mapping,
)

__all__ = [
    "ConfigError",
    "make_parser",
    "parse_args",
    "explicit_options",
    "config_options",
    "program_name",
    "INT_MAX",
    "merge_for_resume",
    "start_or_resume",
    "add_progress_option",
    "add_runtime_options",
    "COMPILE_MODES",
    "read_yaml",
    "PRESETS",
    "preset_names",
    "resolve_config",
    "save_config",
    "args_to_dict",
    "positive_int",
    "finite_float",
    "nonneg_int",
    "positive_float",
    "nonneg_float",
    "probability",
    "optional",
    "yaml_mapping",
    "support_choices",
    "parse_choices",
]


class ConfigError(ValueError):
    """A bad option value, config file or combination; reported as one line by the CLI."""


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


# ---------------------------------------------------------------------- parsing
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


# The -c presets, shipped inside the package (package data), so they are there after a regular install.
PRESETS = Path(__file__).resolve().parent.parent / "presets"


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


class _ListPresets(argparse.Action):
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
    parser.add_argument("--list-presets", action=_ListPresets, help="list the shipped -c presets and exit")
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


def merge_for_resume(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    args: argparse.Namespace,
    saved: Mapping[str, Any],
    resumable: Iterable[str],
) -> argparse.Namespace:
    """The options a run was saved with, plus only the ``resumable`` ones this command line sets.

    Setting any other option to a different value is an error: a resumed run computes what it started computing.
    """
    resumable = set(resumable) | {"config", "debug", "resume"}
    explicit = explicit_options(parser, argv) | config_options(parser, argv)
    changed = sorted(
        k for k in explicit if k not in resumable and _plain(getattr(args, k)) != saved.get(k.replace("_", "-"))
    )
    if changed:
        names = ", ".join("--" + k.replace("_", "-") for k in changed)
        allowed = ", ".join("--" + k.replace("_", "-") for k in sorted(resumable - {"config", "debug", "resume"}))
        raise ConfigError(
            f"cannot change {names} when resuming (a resumed run keeps its options); may change: {allowed}"
        )
    merged = argparse.Namespace(**{k.replace("-", "_"): v for k, v in saved.items()})
    for k in vars(args):
        if (k in explicit and k in resumable) or not hasattr(merged, k):
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
        return merge_for_resume(parser, argv, args, saved_config(state), resumable), state
    if not args.force and any(Path(p).exists() for p in existing):
        raise FileExistsError(
            f"{str(args.out)!r} already holds {what}; use --resume to continue it or --force to start over"
        )
    return args, None


def add_progress_option(group: argparse._ArgumentGroup | argparse.ArgumentParser) -> None:
    """``--progress/--no-progress``; the default (None) shows bars only on a terminal, so logs stay clean."""
    group.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars (default: only on a terminal)",
    )


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def add_runtime_options(group: argparse._ArgumentGroup | argparse.ArgumentParser) -> None:
    """How a command runs the supernet (none of these change what it computes, so they may change on resume)."""
    group.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the whole supernet (one graph for every subnet: the GLoRA layers' static path); "
        "default: on with CUDA, off on the CPU",
    )
    group.add_argument(
        "--compile-mode",
        choices=COMPILE_MODES,
        default=None,
        help="torch.compile mode (inductor); default: reduce-overhead (CUDA graphs) with CUDA, default on the CPU",
    )
    group.add_argument("--compile-backend", default="inductor", help="torch.compile backend")
    group.add_argument(
        "--execution",
        type=lambda name: paths.ALIASES.get(name, name),  # the old name "fused" still reads as "manual"
        choices=paths.path_names(),
        default="auto",
        help="how GLoRA layers run eagerly: manual (hand-written backward), static (the compiled graph's math), "
        "autograd; auto = manual (a compiled model always runs static)",
    )
    group.add_argument(
        "--fsdp",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="under torchrun, shard the backbone and the supports over the processes (FSDP2 fully_shard per block): "
        "for a model larger than one device; eager (static path), checkpoints stay whole",
    )
    group.add_argument(
        "--data-on-device",
        choices=DATA_ON_DEVICE,
        default="auto",
        help="keep the cached uint8 images on the accelerator (auto: when they take at most a quarter of it)",
    )


def args_to_dict(args: argparse.Namespace | Mapping[str, Any], drop: Iterable[str] = ("config", "debug")) -> dict:
    """Plain YAML/JSON-friendly dict of options (paths as strings, option names with dashes)."""
    items = vars(args).items() if isinstance(args, argparse.Namespace) else args.items()
    out = {}
    for k, v in items:
        if k in drop:
            continue
        out[k.replace("_", "-")] = _plain(v)
    return out


def _plain(v: Any) -> Any:
    if isinstance(v, os.PathLike):
        return str(v)
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    return v


def save_config(args: argparse.Namespace | Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write the resolved options as YAML (loadable again with ``--config``), atomically."""
    text = yaml.safe_dump(args_to_dict(args), sort_keys=False, default_flow_style=None)
    atomic_write_text(path, text)
