"""Options for the three commands: YAML files set defaults, the command line overrides, all checked.

Every option is declared once, as a dataclass field (:mod:`glora.app.declared`): the objects a command builds
(:class:`~glora.app.trainer.Recipe`, :class:`~glora.app.sampling.Sampling`, :class:`search.SearchSettings`, a data
source's options) or small groups of the command's own. As in timm's train.py: ``-c/--config`` YAML keys are option
names (``batch-size`` or ``batch_size``); several files may be given and later ones win; unknown keys and wrongly
typed values are errors; the resolved options are written next to the outputs. A ``--config`` that is not a file
names a shipped preset (``-c vtab/cifar``, the same as ``-c configs/vtab/cifar.yaml``, the name the docs use);
``--list-presets`` lists them.

The package is in parts, one job each: :mod:`.parsing` (a command's options parsed in one pass, defaults under
``-c`` files under the command line, where each value came from), :mod:`.presets` (the shipped ``-c`` files),
:mod:`.resume` (fresh start or resume), :mod:`.runtime` (how a command computes, shared by training and the
search), :mod:`.saving` (the resolved options written beside the outputs); :mod:`.train`, :mod:`.search` and
:mod:`.export` hold each command's own options and what they build.
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
    Command,
    Group,
    Parsed,
    parse_args,
    parse_choices,
    program_name,
    read_yaml,
    support_choices,
)
from .presets import PRESETS, preset_names, resolve_config
from .resume import merge_for_resume, start_or_resume
from .runtime import COMPILE_MODES, Runtime
from .saving import args_to_dict, save_config

__all__ = [
    "ConfigError",
    "Command",
    "Group",
    "Parsed",
    "parse_args",
    "program_name",
    "INT_MAX",
    "merge_for_resume",
    "start_or_resume",
    "Runtime",
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
