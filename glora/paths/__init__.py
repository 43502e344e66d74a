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
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from .._registry import Registry

if TYPE_CHECKING:  # (layers import this package: no import of the layer module at run time)
    from ..layer import GLoRALinear

__all__ = [
    "Execution",
    "FORMS",
    "LayerPath",
    "register_path",
    "path_names",
    "path_class",
    "make_path",
    "sharded_path",
    "ALIASES",
]

_REGISTRY: Registry[type[LayerPath]] = Registry(__name__, "execution path")
# Old names still accepted (with a DeprecationWarning): "fused" was ambiguous with the fused AdamW kernel.
ALIASES = {"fused": "manual"}


# The manual backward's reduction forms (Execution.forms).
FORMS = ("auto", "cpu", "accelerator")


@dataclass(frozen=True)
class Execution:
    """How a model's GLoRA layers run (one setting per model, see :func:`glora.set_execution`).

    Args:
        path: a path of :mod:`glora.paths`: ``auto`` (= ``manual``), ``manual`` (hand-written backward),
            ``static`` or ``autograd``; a compiled model runs ``static`` whatever this says.
        forms: the manual backward's reduction forms: ``cpu`` (one-pass skinny products, cache-blocked column dots),
            ``accelerator`` (fewest kernel launches) or ``auto`` (by the input's device).
        scale_guard: the manual path recovers a vector/scalar A's gradient from the output, dividing by ``1 + a``;
            a layer whose ``|1 + a|`` falls below this runs on the autograd path instead.
    """

    path: str = "auto"
    forms: str = "auto"
    scale_guard: float = 1e-2

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", canonical(self.path))
        if self.path not in path_names():
            raise ValueError(f"execution path must be one of {', '.join(path_names())}; got {self.path!r}")
        if self.forms not in FORMS:
            raise ValueError(f"execution forms must be one of {', '.join(FORMS)}; got {self.forms!r}")
        if not 0 <= self.scale_guard < 1:
            raise ValueError(f"scale_guard must be in [0, 1), got {self.scale_guard!r}")


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
    # Capabilities, read by the application instead of lists of path names:
    # shardable: runs under FSDP, where a layer's whole weights exist only while its block runs (no model-wide state
    #   read outside it); sharded_stand_in: the path that runs instead when this one is not shardable (None: refused).
    shardable: ClassVar[bool] = True
    sharded_stand_in: ClassVar[str | None] = None
    # mixed_precision: runs supports in another dtype than the frozen weight (fp32 over bf16) itself, rather than
    #   handing such layers to another path.
    mixed_precision: ClassVar[bool] = True

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


def sharded_path(name: str) -> str:
    """The path a sharded (FSDP) model runs for the setting ``name``: itself when it is shardable, else its declared
    stand-in; ``ValueError`` names the shardable paths when it has none."""
    cls = path_class(canonical(name))
    if cls.shardable:
        return cls.name
    if cls.sharded_stand_in is not None:
        return cls.sharded_stand_in
    allowed = ", ".join(n for n in path_names() if path_class(n).shardable or path_class(n).sharded_stand_in)
    raise ValueError(f"execution path {cls.name!r} cannot run sharded (under --fsdp); use one of {allowed}")
