"""One serialisable description of an adapter: the search space, which layers it adapts, which heads it trains.

Like PEFT's ``LoraConfig``: :func:`glora.inject` takes it, and a checkpoint stores ``config.to_dict()`` so the same
supernet can be rebuilt around the same backbone later.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .space import SearchSpace

# AdapterConfig.support_dtype: torch dtype names (plain strings, so configs stay YAML and weights_only friendly).
SUPPORT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

__all__ = ["AdapterConfig", "ALL_LINEAR", "SUPPORT_DTYPES"]


# PEFT's spelling of "every linear layer but the output layer / classifier" (this toolkit's default).
ALL_LINEAR = "all-linear"


def _targets(value: Any) -> str | tuple[str, ...] | None:
    if value is None or value == ALL_LINEAR:
        return None
    if isinstance(value, str):
        try:
            re.compile(value)
        except re.error as e:
            raise ValueError(f"targets regex {value!r} does not compile: {e}") from None
        return value
    if isinstance(value, Sequence) and value and all(isinstance(t, str) and t for t in value):
        return tuple(value)
    raise ValueError(f"targets must be None, a regex string or a non-empty list of name suffixes; got {value!r}")


def _heads(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if isinstance(value, Sequence) and all(isinstance(h, str) and h for h in value):
        return tuple(value)
    raise ValueError(f"heads must be None or a list of module names; got {value!r}")


@dataclass(frozen=True)
class AdapterConfig:
    """What :func:`glora.inject` does to a model, as plain data.

    Args:
        space: the choices every adapted layer offers (:class:`glora.SearchSpace`).
        targets: ``None`` = every ``nn.Linear`` except the classifier head(s); a string = regex that must match
            the whole layer name; a list = layer-name suffixes (``["qkv", "fc1"]`` or ``["attn.proj"]``).
        heads: classifier head module(s), trained in full and never adapted; ``None`` = found from the model
            (timm's ``pretrained_cfg["classifier"]`` or common names). Saved resolved, so a rebuilt supernet
            trains exactly the same tensors.
        support_dtype: the dtype of the support tensors and GIFT generators (``"float32"``, ``"bfloat16"``,
            ``"float16"``); ``None`` = each layer's weight dtype. ``"float32"`` over a bf16 backbone keeps the
            trained tensors and their optimizer state in full precision while the frozen weights take half the
            memory; each layer computes ``W_uni`` in the supports' dtype and runs in its weight's.

    Example:
        >>> cfg = AdapterConfig(SearchSpace(lora_ranks=(8, 4)), targets=["qkv", "fc1"])
        >>> AdapterConfig.from_dict(cfg.to_dict()) == cfg
        True
    """

    space: SearchSpace = field(default_factory=SearchSpace)
    targets: str | tuple[str, ...] | None = None
    heads: tuple[str, ...] | None = None
    support_dtype: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.space, SearchSpace):
            raise TypeError(f"space must be a glora.SearchSpace, got {type(self.space).__name__}")
        if self.support_dtype is not None and self.support_dtype not in SUPPORT_DTYPES:
            raise ValueError(
                f"support_dtype must be one of {', '.join(SUPPORT_DTYPES)} or None; got {self.support_dtype!r}"
            )
        object.__setattr__(self, "targets", _targets(self.targets))
        object.__setattr__(self, "heads", _heads(self.heads))

    def to_dict(self) -> dict[str, Any]:
        """Plain data (YAML/JSON and ``torch.load(weights_only=True)`` friendly)."""
        targets = list(self.targets) if isinstance(self.targets, tuple) else self.targets
        return {
            "space": self.space.to_dict(),
            "targets": targets,
            "heads": None if self.heads is None else list(self.heads),
            "support_dtype": self.support_dtype,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AdapterConfig:
        if not isinstance(data, Mapping):
            raise ValueError(f"an adapter config must be a mapping, got {type(data).__name__}")
        unknown = set(data) - {"space", "targets", "heads", "support_dtype"}
        if unknown:
            raise ValueError(
                f"unknown adapter-config keys: {', '.join(sorted(map(str, unknown)))}; allowed: space, targets, "
                "heads, support_dtype"
            )
        space = data.get("space", {})
        return cls(
            space=space if isinstance(space, SearchSpace) else SearchSpace.from_dict(space),
            targets=data.get("targets"),
            heads=data.get("heads"),
            support_dtype=data.get("support_dtype"),
        )
