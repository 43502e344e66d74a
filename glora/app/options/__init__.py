"""Options for the three commands: YAML files set defaults, the command line overrides, all checked.

As in timm's train.py: ``-c/--config`` YAML keys are option names (``batch-size`` or ``batch_size``); several
files may be given and later ones win; unknown keys and wrongly typed values are errors; the resolved options are
written next to the outputs. A ``--config`` that is not a file names a shipped preset (``-c vtab/cifar``, the
same as ``-c configs/vtab/cifar.yaml``, the name the docs use); ``--list-presets`` lists them.

The package is in parts, one job each: :mod:`.parsing` (YAML defaults, checked values, explicit options),
:mod:`.presets` (the shipped ``-c`` files), :mod:`.resume` (fresh start or resume), :mod:`.runtime` (options of how a
command runs), :mod:`.saving` (the resolved options written beside the outputs); :mod:`.train`, :mod:`.search` and
:mod:`.export` hold each command's options and what they build.
"""

from __future__ import annotations

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
from .errors import ConfigError
from .parsing import (
    config_options,
    explicit_options,
    make_parser,
    parse_args,
    parse_choices,
    program_name,
    read_yaml,
    support_choices,
)
from .presets import PRESETS, preset_names, resolve_config
from .resume import merge_for_resume, start_or_resume
from .runtime import COMPILE_MODES, add_progress_option, add_runtime_options
from .saving import args_to_dict, save_config

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
