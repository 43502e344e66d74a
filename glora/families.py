"""Model families whose code needs a word before GLoRA can wrap their linear layers, in one table.

Injection wraps a layer only when the model calls it as a module (a wrapper is otherwise bypassed) and when its
``forward`` is the linear map ``x @ W.T + b``. Three families break one of these rules in a way that is known to be
harmless, and each is an entry of :data:`FAMILIES` rather than a special case in the injection code:

* ``falcon``: ``FalconLinear`` overrides ``nn.Linear.forward`` with the same math in another order;
* ``bloom``: Bloom's attention and MLP read their dense layers' weights themselves only to emulate tensor
  parallelism (``pretraining_tp > 1`` with ``slow_but_exact``); otherwise they call the layers;
* ``timm-qkv-bias-separate``: timm's BEiT, EVA and Swin V2 attention read ``qkv``'s weight to add their separate
  q/v biases, unless ``qkv_bias_separate`` is on, which computes the same and calls the layer (adding those biases
  to its output in place, which the manual path must know: it keeps a view of the output).

A switch such as ``qkv_bias_separate`` is part of the plan :func:`glora.target_names` makes and that only
:func:`glora.inject` applies: planning never changes the model.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

__all__ = ["Family", "FAMILIES", "Switch", "same_math_linear", "calls_layers_itself", "switch_for", "forward_source"]


@dataclass(frozen=True)
class Switch:
    """An attribute of an ancestor module that makes it call the layer as a module (same results)."""

    layer: str  # the layer's name in the model
    module: str  # the ancestor's name in the model ('' for the root)
    attribute: str
    value: object
    edits_output: bool  # on, the ancestor edits the layer's output in place


@dataclass(frozen=True)
class Family:
    """One known exception to the injection rules.

    Args:
        name: how the logs and the docs call it.
        linear_class: an ``nn.Linear`` subclass (``module.QualName``) whose ``forward`` is the plain linear map.
        calls_layers: given an ancestor that reads a layer's weight, whether it in fact calls the layer as a module
            in its present configuration.
        switch: (child name, attribute, value, edits output): an ancestor with that boolean attribute reads the
            child's weight unless the attribute has that value, which makes it call the child instead.
    """

    name: str
    linear_class: str | None = None
    calls_layers: Callable[[nn.Module], bool] | None = None
    switch: tuple[str, str, object, bool] | None = None


def _bloom_tp_off(module: nn.Module) -> bool:
    """Bloom reads its dense layers' weights only under ``pretraining_tp > 1`` with ``slow_but_exact``."""
    tp = getattr(module, "pretraining_tp", None)
    if not isinstance(tp, int) or "pretraining_tp" not in forward_source(type(module)):
        return False
    return tp <= 1 or getattr(module, "slow_but_exact", True) is False


FAMILIES: tuple[Family, ...] = (
    Family("falcon", linear_class="transformers.models.falcon.modeling_falcon.FalconLinear"),
    Family("bloom", calls_layers=_bloom_tp_off),
    Family("timm-qkv-bias-separate", switch=("qkv", "qkv_bias_separate", True, True)),
)


def same_math_linear(cls: type) -> bool:
    """Whether the ``nn.Linear`` subclass ``cls`` overrides ``forward`` with the plain linear map (a table entry)."""
    forward = cls.forward
    owner = f"{forward.__module__}.{forward.__qualname__.rpartition('.')[0]}"
    return any(f.linear_class == owner for f in FAMILIES)


def calls_layers_itself(module: nn.Module) -> bool:
    """Whether ``module``, although its source reads a layer's weight, calls its layers as modules as configured."""
    return any(f.calls_layers is not None and f.calls_layers(module) for f in FAMILIES)


def switch_for(module: nn.Module, module_name: str, child: str) -> Switch | None:
    """The switch that makes ``module`` call its child ``child`` instead of reading its weight, if a family has
    one and ``module`` offers it."""
    for f in FAMILIES:
        if f.switch is None:
            continue
        name, attribute, value, edits = f.switch
        if child == name and isinstance(getattr(module, attribute, None), type(value)):
            layer = f"{module_name}.{child}" if module_name else child
            return Switch(layer, module_name, attribute, value, edits)
    return None


@functools.cache
def forward_source(cls: type) -> str:
    """Source of ``cls.forward`` and of the methods it calls on ``self``, transitively; '' when unavailable."""
    sources: list[str] = []
    seen: set[str] = set()
    todo = ["forward"]
    while todo:
        meth = todo.pop()
        if meth in seen:
            continue
        seen.add(meth)
        fn = getattr(cls, meth, None)
        if not inspect.isfunction(fn) or fn is getattr(nn.Module, meth, None):
            continue
        try:
            src = inspect.getsource(fn)
        except (OSError, TypeError):
            continue
        sources.append(src)
        todo.extend(re.findall(r"self\.(\w+)\(", src))
    return "\n".join(sources)
