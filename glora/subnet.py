"""Subnets: one choice per (layer, support), as plain data that round-trips through YAML.

{"blocks.0.attn.qkv": {"A": "lora_8", "B": "vector", "C": "none", "D": "scalar", "E": "vector"}, ...}
"""

from __future__ import annotations

import functools
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from ._io import atomic_write_text
from ._text import first_of
from .gift import generators_params, gift_params, layer_type
from .inject import require_layers
from .layer import GLoRALinear
from .space import SUPPORTS, Kind, LayerChoice, SearchSpace

__all__ = [
    "Subnet",
    "sample_subnet",
    "set_subnet",
    "parse_subnet",
    "make_subnet",
    "count_params",
    "params_by_type",
    "unused_params",
    "save_subnet",
    "load_subnet",
    "subnet_difference",
]

Subnet = dict[str, dict[str, str]]


def parse_subnet(model: nn.Module, subnet: Mapping[str, Mapping[str, str]]) -> dict[str, LayerChoice]:
    """Validate ``subnet`` against ``model`` and parse it; ``ValueError`` names the layer and the bad choice."""
    return _parse(require_layers(model), subnet)


def _parse(layers: Mapping[str, nn.Module], subnet: Mapping[str, Mapping[str, str]]) -> dict[str, LayerChoice]:
    if not isinstance(subnet, Mapping):
        raise ValueError(f"a subnet must map layer names to their choices, got {type(subnet).__name__}")
    unknown = [n for n in subnet if n not in layers]
    if unknown:
        raise ValueError(
            f"subnet names layer {first_of(unknown)}, which is not a GLoRA layer of this model; "
            f"model layers look like {next(iter(layers))!r} ({len(layers)} in all)"
        )
    missing = [n for n in layers if n not in subnet]
    if missing:
        raise ValueError(f"subnet is missing layer {first_of(missing)}; every GLoRA layer needs a choice")
    parsed = {}
    for name, layer in layers.items():
        entry = subnet[name]
        if isinstance(entry, dict) and len(entry) == len(SUPPORTS):  # the common case, once per layer per step
            key = tuple(entry.get(s) for s in SUPPORTS)
            if all(isinstance(k, str) for k in key):
                hit = _known_choice(layer.space, key)
                if hit is not None:
                    parsed[name] = hit
                    continue
        if not isinstance(entry, Mapping):
            raise ValueError(f"layer {name!r}: expected a mapping of supports A-E to choices, got {entry!r}")
        extra = [k for k in entry if k not in SUPPORTS]
        if extra:
            raise ValueError(f"layer {name!r}: unknown support {extra[0]!r}; supports are {', '.join(SUPPORTS)}")
        lacking = [s for s in SUPPORTS if s not in entry]
        if lacking:
            raise ValueError(f"layer {name!r}: no choice for support {lacking[0]!r}; every layer needs A-E")
        choices = []
        for s in SUPPORTS:
            try:
                choices.append(layer.space.check(s, entry[s]))
            except ValueError as e:
                raise ValueError(f"layer {name!r}: {e}") from None
        parsed[name] = LayerChoice(*choices)
    return parsed


@functools.lru_cache(maxsize=8192)
def _known_choice(space: SearchSpace, names: tuple[str, ...]) -> LayerChoice | None:
    """The parsed layer choice of valid names (None otherwise: the full check then says what is wrong)."""
    try:
        return LayerChoice(*(space.check(s, n) for s, n in zip(SUPPORTS, names)))
    except ValueError:
        return None


def set_subnet(model: nn.Module, subnet: Mapping[str, Mapping[str, str]]) -> None:
    """Make every GLoRA layer of ``model`` compute its choice in ``subnet`` (validated first)."""
    layers = require_layers(model)
    parsed = _parse(layers, subnet)
    GLoRALinear.set_choices(list(layers.values()), [parsed[name] for name in layers])


def sample_subnet(model: nn.Module, rng: random.Random) -> Subnet:
    """Draw every (layer, support) choice uniformly and independently, from ``rng`` only."""
    if not isinstance(rng, random.Random):
        raise TypeError(f"rng must be a random.Random (explicit seeding), got {type(rng).__name__}")
    return {
        name: {s: rng.choice(layer.space.choice_names(s)) for s in SUPPORTS}
        for name, layer in require_layers(model).items()
    }


def make_subnet(model: nn.Module, **choices: str) -> Subnet:
    """The same choice in every layer, e.g. ``make_subnet(model, B="lora_8")`` for plain LoRA.

    Supports not given are ``none``. Validated against the model's space.
    """
    bad = [k for k in choices if k not in SUPPORTS]
    if bad:
        raise ValueError(f"unknown support {bad[0]!r}; supports are {', '.join(SUPPORTS)}")
    entry = {s: choices.get(s, Kind.NONE.value) for s in SUPPORTS}
    subnet = {name: dict(entry) for name in require_layers(model)}
    parse_subnet(model, subnet)
    return subnet


def count_params(model: nn.Module, subnet: Mapping[str, Mapping[str, str]]) -> int:
    """The paper's "# params" of ``subnet``: support tensors it uses, head excluded.

    lora_r: r·(out+in) for A/B, r·(in+1) for C; vector: out (in for C); scalar: 1; none: 0; a GIFT generator
    counts 2·r·in once per group, r the largest gift rank used in that group.
    """
    layers = require_layers(model)
    parsed = _parse(layers, subnet)
    total = sum(layer.count(parsed[name]) for name, layer in layers.items())
    uses = ((layer.gift_group, layer.in_features, parsed[name].A.rank) for name, layer in layers.items()
            if parsed[name].A.kind is Kind.GIFT)  # fmt: skip
    return total + generators_params(uses)


def _gift_usage(
    layers: Mapping[str, GLoRALinear], parsed: Mapping[str, LayerChoice]
) -> dict[str, tuple[int, int, str]]:
    """The GIFT generators ``parsed`` uses: group -> (largest rank used, in_features, name of the group's first
    layer). A generator is counted once per group, at that rank, by every count."""
    usage: dict[str, tuple[int, int, str]] = {}
    for name, layer in layers.items():
        a = parsed[name].A
        if a.kind is Kind.GIFT:
            group = layer.gift_group
            rank, in_f, first = usage.get(group, (0, layer.in_features, name))
            usage[group] = (max(rank, a.rank), in_f, first)
    return usage


def params_by_type(model: nn.Module, subnet: Mapping[str, Mapping[str, str]]) -> dict[str, dict[str, int]]:
    """``count_params`` split by layer type and support: ``{"blocks.*.attn.qkv": {"A": n, ..., "E": n}}``.

    A layer's type is its name with numeric parts wildcarded (the paper's Fig. 3 groups ViT-B's 48 layers into
    Q-K-V, projection, FC1, FC2). A GIFT generator is counted once, under key ``"gift"`` of the type of its
    group's first layer. The values sum to :func:`count_params`.
    """
    layers = require_layers(model)
    parsed = _parse(layers, subnet)
    out: dict[str, dict[str, int]] = {}
    for name, layer in layers.items():
        row = out.setdefault(layer_type(name), dict.fromkeys(SUPPORTS, 0))
        for support, c in zip(SUPPORTS, parsed[name]):
            row[support] += layer.count_support(support, c)
    for r, in_f, first in _gift_usage(layers, parsed).values():
        row = out[layer_type(first)]
        row["gift"] = row.get("gift", 0) + gift_params(in_f, r)
    return out


def unused_params(model: nn.Module) -> list[nn.Parameter]:
    """The support tensors and GIFT generators the current subnet does not read.

    On the eager paths exactly these get no gradient from a step (so AdamW leaves them alone); on the static path
    (``torch.compile``) they get zero gradients (so AdamW still applies momentum and weight decay to them, as in the
    paper's reference code). A trainer picks one behaviour for both by dropping or zero-filling their gradients.
    """
    unused: list[nn.Parameter] = []
    generators: dict[int, tuple[nn.Module, bool]] = {}  # id -> (generator, used by some layer)
    for layer in require_layers(model).values():
        choice = layer.require_choice()
        unused += layer.unused_params(choice)
        if layer.gift is not None:
            seen = generators.get(id(layer.gift), (layer.gift, False))[1]
            generators[id(layer.gift)] = (layer.gift, seen or choice.A.kind is Kind.GIFT)
    return unused + [p for g, used in generators.values() if not used for p in g.parameters()]


def save_subnet(subnet: Mapping[str, Mapping[str, str]], path: str | os.PathLike) -> None:
    """Write ``subnet`` as YAML (one line per layer), atomically."""
    data = _check_structure(subnet, str(path))
    ordered = {name: {s: c[s] for s in SUPPORTS if s in c} | c for name, c in data.items()}
    text = yaml.safe_dump(ordered, sort_keys=False, default_flow_style=None, width=1000)
    atomic_write_text(Path(path), text)


def load_subnet(path: str | os.PathLike) -> Subnet:
    """Read a subnet YAML written by :func:`save_subnet` (or by hand); checked against a model at set time."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"subnet file {str(p)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read subnet file {str(p)!r}: {e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"subnet file {str(p)!r} is not valid YAML: {str(e).splitlines()[0]}") from None
    return _check_structure(data, str(p))


def subnet_difference(subnet: Mapping[str, Mapping[str, str]], other: Mapping[str, Mapping[str, str]]) -> str:
    """Where two subnets first differ, in words (``"layer 'x', support B: lora_8 here, none there"``); "" when they
    are the same subnet."""
    for name in sorted(set(subnet) | set(other)):
        mine, theirs = dict(subnet.get(name) or {}), dict(other.get(name) or {})
        for support in sorted(set(mine) | set(theirs)):
            if mine.get(support) != theirs.get(support):
                return f"layer {name!r}, support {support}: {mine.get(support)} here, {theirs.get(support)} there"
    return ""


def _check_structure(data: Any, where: str) -> Subnet:
    if not isinstance(data, Mapping) or not data:
        raise ValueError(f"{where}: a subnet must be a non-empty mapping of layer names to choices")
    out: Subnet = {}
    for name, entry in data.items():
        if not isinstance(name, str):
            raise ValueError(f"{where}: layer names must be strings, got {name!r}")
        if not isinstance(entry, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in entry.items()
        ):
            raise ValueError(f"{where}: layer {name!r} must map supports A-E to choice names, got {entry!r}")
        out[name] = {str(k): str(v) for k, v in entry.items()}
    return out
