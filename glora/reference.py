"""Interop with the GLoRA paper's reference code.

Its supernet layers subclass ``nn.Linear``: a layer keeps ``weight`` / ``bias`` and holds its supports as
``Ad, Au, Bd, Bu, Cd, Cu, D, E`` at ONE rank R (``Ad: out x R``, ``Au: R x in``, ``Cd: in x R``, ``Cu: R x 1``,
``D, E: out``). It names ranks ``LoRA_<r>`` and the scalar choice ``constant``. Our layers use the same
tensor names and layout at the space's largest rank, so its checkpoints load into a model injected with a
space whose largest LoRA rank is R, and its per-layer configs convert to our subnets.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ._text import first_of
from .inject import head_names, require_layers
from .layer import GLoRALinear
from .space import Kind
from .subnet import Subnet, parse_subnet

__all__ = ["load_reference_state_dict", "convert_reference_subnet", "reference_choice_name"]

_logger = logging.getLogger(__name__)

_SUPPORT_TENSORS = ("Ad", "Au", "Bd", "Bu", "Cd", "Cu", "D", "E")


def _unwrap(state_dict: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Accept a raw state dict, ``{"model": sd}`` / ``{"state_dict": sd}``, with or without DDP's ``module.``."""
    sd: Any = state_dict
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(sd, Mapping) and isinstance(sd.get(key), Mapping):
            sd = sd[key]
            break
    if not isinstance(sd, Mapping):
        raise ValueError(f"expected a state dict (mapping of names to tensors), got {type(sd).__name__}")
    out = {}
    for k, v in sd.items():
        if not isinstance(k, str) or not torch.is_tensor(v):
            raise ValueError(f"reference state dict entry {k!r} is not a named tensor")
        out[k.removeprefix("module.")] = v
    return out


def load_reference_state_dict(model: nn.Module, state_dict: Mapping[str, Any]) -> None:
    """Load a supernet checkpoint saved by the paper's reference code into an injected ``model``.

    Every support tensor of every adapted layer must be present with the shape this model expects; the head and
    backbone weights are loaded when present. The reference saves only A-E and the head, so the backbone must
    be the one it trained on: ``vit_base_patch16_224.orig_in21k`` (timm's old ``vit_base_patch16_224_in21k``),
    not ``augreg_in21k``. Anything that does not fit raises ``ValueError`` naming the tensor, before anything is
    changed; a checkpoint without the head's weights loads with a warning (the head keeps its values).

    Example:
        >>> model = glora.inject(timm.create_model("vit_base_patch16_224.orig_in21k", pretrained=True,
        ...                                        num_classes=100), glora.SearchSpace(lora_ranks=(8, 4)))
        >>> glora.load_reference_state_dict(model, torch.load("ref.pth", weights_only=True))
    """
    sd = _unwrap(state_dict)
    layers = require_layers(model)
    own = model.state_dict()
    # Paths in the model (they may differ from layer names when the model is wrapped).
    path_of = {m.name: path for path, m in model.named_modules() if isinstance(m, GLoRALinear)}

    expected_support_keys = []
    for name, layer in layers.items():
        prefix = path_of[name] + "."
        for t in _SUPPORT_TENSORS:
            if getattr(layer, t) is not None:
                expected_support_keys.append(prefix + t)
    missing = [k for k in expected_support_keys if k not in sd]
    if missing:
        hint = ""
        if not any(k.endswith("." + _SUPPORT_TENSORS[0]) for k in sd):
            hint = " (no support tensors at all: is this a GLoRA supernet checkpoint?)"
        raise ValueError(f"reference checkpoint lacks {first_of(missing)}{hint}")
    unknown = [k for k in sd if k not in own]
    if unknown:
        raise ValueError(
            f"reference checkpoint holds {first_of(unknown)}, which this model does not have "
            "(different architecture or adapted layers?)"
        )
    for k, v in sd.items():
        if tuple(v.shape) != tuple(own[k].shape):
            msg = f"reference tensor {k!r} has shape {tuple(v.shape)}, this model expects {tuple(own[k].shape)}"
            if k.rsplit(".", 1)[-1] in _SUPPORT_TENSORS and k.rsplit(".", 1)[-1] not in ("D", "E"):
                msg += "; build the SearchSpace so its largest lora rank equals the reference rank"
            raise ValueError(msg)
    heads = [h for h in head_names(model) if any(k.startswith(h + ".") for k in own)]
    if heads and not any(k.startswith(h + ".") for h in heads for k in sd):
        _logger.warning(
            "reference checkpoint holds no weights for the head (%s); it keeps its current values", ", ".join(heads)
        )
    model.load_state_dict(sd, strict=False)


def reference_choice_name(name: str) -> str:
    """Translate one reference choice name (``LoRA_8``, ``constant``, ...) to ours (``lora_8``, ``scalar``)."""
    if not isinstance(name, str):
        raise ValueError(f"reference choice must be a string, got {name!r}")
    if name == "constant":
        return Kind.SCALAR.value
    m = re.fullmatch(r"LoRA_(\d+)", name)
    if m:
        return f"lora_{int(m.group(1))}"
    return name


def convert_reference_subnet(
    model: nn.Module, configs: Sequence[Mapping[str, str]] | Mapping[str, Mapping[str, str]]
) -> Subnet:
    """Turn the reference's per-layer configs into a subnet of ``model`` (validated).

    ``configs`` is either a list with one ``{"A": "LoRA_8", ..., "E": "constant"}`` per adapted layer, in model
    order (how the reference stores a searched architecture), or a mapping from layer name to such a dict.
    """
    names = list(require_layers(model))
    if isinstance(configs, Mapping):
        items = list(configs.items())
    else:
        configs = list(configs)
        if len(configs) != len(names):
            raise ValueError(f"reference config lists {len(configs)} layers, this model has {len(names)} GLoRA layers")
        items = list(zip(names, configs))
    subnet: Subnet = {}
    for name, cfg in items:
        if not isinstance(cfg, Mapping):
            raise ValueError(f"layer {name!r}: reference config must be a mapping of A-E, got {cfg!r}")
        subnet[str(name)] = {str(k): reference_choice_name(v) for k, v in cfg.items()}
    parse_subnet(model, subnet)
    return subnet
