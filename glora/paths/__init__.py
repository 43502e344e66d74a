"""How a GLoRA layer computes its output and gradients: one small interface, one module per path.

A path is a :class:`LayerPath` subclass registered under a name with :func:`register_path`. Every module in this
package is imported the first time a path is looked up, so adding a path is adding a module here, nothing else.
A model's layers share one path object (a per-model setting, :func:`glora.set_execution`), which lets a path keep
state for the whole model (the manual path's scale guard reads every layer's ``|1 + a|`` at once).

Paths shipped:

* ``static`` (:mod:`.static`): the formula over every support, masked by the layer's ``code``; what
  ``torch.compile`` traces whatever the setting.
* ``manual`` (:mod:`.manual`): the folding math forward with a hand-written backward, the fastest eager path on
  CPU; opt-in, and falls back to ``autograd`` for the cases it does not cover, each with a named reason.
* ``autograd`` (:mod:`.autograd`): plain autograd through the current choice's formula; the oracle of the tests.
* ``auto`` (:mod:`.auto`): ``manual`` eagerly (``static`` under ``torch.compile``, as every path).
* ``folded`` (:mod:`.folded`, not selectable): a layer in merged mode (:meth:`GLoRALinear.merge`) runs its cached
  ``(W_uni, b_uni)`` as a plain linear map.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import torch

from .._registry import Registry

if TYPE_CHECKING:  # (layers import this package: no import of the layer module at run time)
    from ..layer import Execution, GLoRALinear

__all__ = ["LayerPath", "register_path", "path_names", "path_class", "make_path", "ALIASES"]

_REGISTRY: Registry[type[LayerPath]] = Registry(__name__, "execution path")
# Old names still accepted (with a DeprecationWarning): "fused" was ambiguous with the fused AdamW kernel.
ALIASES = {"fused": "manual"}


class LayerPath:
    """How the layers of one model run: ``forward(layer, x)`` returns the layer's output, its gradients following
    through autograd (possibly a custom ``autograd.Function``).

    Args:
        execution: the model's setting (path name, reduction forms, scale-guard threshold).
        layers: the layers that share this path (a model's GLoRA layers, or one layer on its own).
    """

    name: ClassVar[str] = ""
    selectable: ClassVar[bool] = True  # offered as an --execution / set_execution choice
    folds: ClassVar[bool] = True  # a merged layer (folded mode) runs its cached weights instead of this path

    def __init__(self, execution: Execution, layers: Sequence[GLoRALinear] = ()) -> None:
        self.execution = execution
        self.layers = list(layers)

    def forward(self, layer: GLoRALinear, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.execution!r}, {len(self.layers)} layers)"


def register_path(cls: type[LayerPath]) -> type[LayerPath]:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    _REGISTRY.add(cls.name, cls)
    return cls


def path_names(selectable: bool = True) -> tuple[str, ...]:
    """The registered paths' names (by default only those a user may choose), ``auto`` first."""
    names = sorted(n for n, c in _REGISTRY.entries().items() if c.selectable or not selectable)
    return tuple(sorted(names, key=lambda n: n != "auto"))


def canonical(name: str) -> str:
    """``name`` with a deprecated alias replaced (and warned about)."""
    if name in ALIASES:
        new = ALIASES[name]
        warnings.warn(f"execution path {name!r} is now called {new!r}", DeprecationWarning, stacklevel=3)
        return new
    return name


def path_class(name: str) -> type[LayerPath]:
    """The path registered as ``name``."""
    return _REGISTRY.get(name, ", ".join(path_names()))


def make_path(execution: Execution, layers: Sequence[GLoRALinear] = ()) -> LayerPath:
    """The path object ``layers`` share under ``execution``."""
    return path_class(execution.path)(execution, layers)
