"""Re-parameterisation (paper §2.4): fold a subnet into plain ``W_uni``, ``b_uni`` weights.

The result is the original model class holding only ordinary torch modules: no extra parameters, no
extra FLOPs, and the same outputs as the supernet running that subnet.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Mapping

import torch
from torch import nn

from .gift import GiftBank
from .inject import glora_layers
from .layer import GLoRALinear
from .space import LayerChoice
from .subnet import parse_subnet

__all__ = ["fold", "fold_layer", "folded"]


def fold_layer(layer: GLoRALinear, choice: LayerChoice | None = None) -> nn.Linear:
    """A plain linear layer (of the wrapped layer's class) computing ``layer`` under ``choice``.

    A bias is created when the wrapped layer had none but C or E produce one.
    """
    with torch.no_grad():
        weight, bias = layer.merged(choice)
        try:
            new = layer.base_class(layer.in_features, layer.out_features, bias=bias is not None, device="meta")
        except TypeError:  # a subclass with another constructor: nn.Linear computes the same thing
            new = nn.Linear(layer.in_features, layer.out_features, bias=bias is not None, device="meta")
        new.weight = nn.Parameter(weight.detach().clone())
        if bias is not None:
            new.bias = nn.Parameter(bias.detach().clone().contiguous())
    new.train(layer.training)
    return new


def fold(model: nn.Module, subnet: Mapping[str, Mapping[str, str]]) -> nn.Module:
    """A copy of ``model`` with ``subnet`` folded into plain weights; ``model`` itself is left untouched.

    The copy is built around the support tensors and GIFT generators (they are never copied), so peak memory
    is one extra backbone, not one extra supernet. Like a freshly created model, every parameter of the copy
    requires grad.

    Example:
        >>> plain = glora.fold(supernet, glora.load_subnet("subnet.yaml"))
        >>> torch.testing.assert_close(plain(x), supernet_output)  # after set_subnet(supernet, subnet)
    """
    parsed = parse_subnet(model, subnet)
    memo: dict[int, object] = {
        id(layer): fold_layer(layer, parsed[name]) for name, layer in glora_layers(model).items()
    }
    holders = [
        (parent_name, key)
        for parent_name, parent in model.named_modules()
        for key, child in parent._modules.items()
        if isinstance(child, GiftBank)
    ]
    for parent_name, key in holders:
        memo[id(model.get_submodule(parent_name)._modules[key])] = None
    folded = copy.deepcopy(model, memo)
    for parent_name, key in holders:
        del folded.get_submodule(parent_name)._modules[key]
    folded.requires_grad_(True)
    return folded


@contextlib.contextmanager
def folded(model: nn.Module, subnet: Mapping[str, Mapping[str, str]]) -> Iterator[nn.Module]:
    """Run ``model`` as its folded form for ``subnet`` without copying it: each layer's ``(W_uni, b_uni)`` is
    computed once on entry and used as a plain linear map until exit (then the supernet is as it was).

    This is how the search evaluates a candidate: one fold, then plain-weight inference over the whole split.

    Example:
        >>> with glora.folded(supernet, subnet):
        ...     logits = supernet(images)
    """
    parsed = parse_subnet(model, subnet)
    layers = glora_layers(model)
    previous = {name: layer.choice for name, layer in layers.items()}
    try:
        with torch.no_grad():
            for name, layer in layers.items():
                layer.set_choice(parsed[name])
                weight, bias = layer.merged(parsed[name])
                layer.folded = (weight.detach(), None if bias is None else bias.detach())
        yield model
    finally:
        for name, layer in layers.items():
            layer.folded = None
            if previous[name] is not None:
                layer.set_choice(previous[name])
