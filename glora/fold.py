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

from .formula import uni_bias, uni_weight
from .gift import GiftBank
from .inject import glora_layers
from .layer import GLoRALinear
from .paths.static import code_layout, encode_choice, masked_terms
from .quantized import dequantize_model
from .space import Kind, LayerChoice
from .subnet import parse_subnet

__all__ = ["fold", "folded", "merged_layers"]


def _plain(layer: GLoRALinear, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    if layer.transposed:  # a transformers Conv1D: Conv1D(nf=out, nx=in), weight stored (in, out), always a bias
        new = layer.base_class(layer.out_features, layer.in_features)
        new.weight = nn.Parameter(weight.detach().t().contiguous())
        new.bias = nn.Parameter((bias if bias is not None else weight.new_zeros(layer.out_features)).detach().clone())
        new.train(layer.training)
        return new
    try:
        new = layer.base_class(layer.in_features, layer.out_features, bias=bias is not None, device="meta")
    except TypeError:  # a subclass with another constructor: nn.Linear computes the same thing
        new = nn.Linear(layer.in_features, layer.out_features, bias=bias is not None, device="meta")
    new.weight = nn.Parameter(weight.detach().clone())
    if bias is not None:
        new.bias = nn.Parameter(bias.detach().clone().contiguous())
    new.train(layer.training)
    return new


def merged_layers(
    layers: Mapping[str, GLoRALinear], choices: Mapping[str, LayerChoice]
) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """``(W_uni, b_uni)`` of every layer under its choice, computed a batch of same-shape layers at a time.

    The layers of one shape (ViT: qkv, proj, fc1, fc2 of every block) are stacked and go through the formula
    once, with their choices as codes (the static path's masks): a few large operations instead of a dozen small
    ones per layer, which is what an accelerator is slow at. Equal to each layer's own ``merged`` up to rounding.
    """
    groups: dict[tuple, list[str]] = {}
    for name, layer in layers.items():
        w = layer.weight
        key = (
            layer.out_features,
            layer.in_features,
            layer.weight_dtype,
            layer.code.dtype,
            w.device,
            layer.bias is None,
            layer.space,
        )
        groups.setdefault(key, []).append(name)
    out: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
    with torch.no_grad():
        for names in groups.values():
            members = [layers[n] for n in names]
            first = members[0]
            if len(members) == 1:
                out[names[0]] = first.merged(choices[names[0]])
                continue
            stores = [m.storages() for m in members]
            stacked = {k: None if v is None else torch.stack([s[k] for s in stores]) for k, v in stores[0].items()}
            # In the supports' dtype (fp32 supports over a bf16 backbone), back to the weights' at the end.
            code = torch.stack([encode_choice(first.space, choices[n]) for n in names]).to(first.code)
            terms = masked_terms(stacked, code, code_layout(first.space))
            w0 = torch.stack([m.w0(code.dtype) for m in members])
            b0 = None if first.bias is None else torch.stack([m.bias for m in members]).to(code.dtype)
            weights, biases = uni_weight(w0, terms), uni_bias(b0, w0, terms)
            dtype = first.weight_dtype
            for i, name in enumerate(names):
                c = choices[name]
                makes_bias = b0 is not None or c.C.kind is not Kind.NONE or c.E.kind is not Kind.NONE
                out[name] = (weights[i].to(dtype), biases[i].to(dtype) if makes_bias else None)
    return out


def fold(model: nn.Module, subnet: Mapping[str, Mapping[str, str]]) -> nn.Module:
    """A copy of ``model`` with ``subnet`` folded into plain weights; ``model`` itself is left untouched.

    The copy is built around the support tensors and GIFT generators (they are never copied), so peak memory
    is one extra backbone, not one extra supernet. Like a freshly created model, every parameter of the copy
    requires grad. Same-shape layers are folded together (:func:`merged_layers`). Over a quantized base
    (:mod:`glora.quantized`) the copy is a plain floating-point model: the adapted layers hold ``W_uni`` computed
    from the dequantized weights and every other quantized layer is dequantized (QLoRA's merge).

    Example:
        >>> plain = glora.fold(supernet, glora.load_subnet("subnet.yaml"))
        >>> torch.testing.assert_close(plain(x), supernet_output)  # after set_subnet(supernet, subnet)
    """
    parsed = parse_subnet(model, subnet)
    layers = glora_layers(model)
    merged = merged_layers(layers, parsed)
    memo: dict[int, object] = {id(layer): _plain(layer, *merged[name]) for name, layer in layers.items()}
    holders = [
        (parent_name, key)
        for parent_name, parent in model.named_modules()
        for key, child in parent._modules.items()
        if isinstance(child, GiftBank)
    ]
    for parent_name, key in holders:
        memo[id(model.get_submodule(parent_name)._modules[key])] = None
    folded = copy.deepcopy(model, memo)  # (the layer index at the root is not copied: the copy has no GLoRA layers)
    for parent_name, key in holders:
        del folded.get_submodule(parent_name)._modules[key]
    dequantize_model(folded)  # a quantized base's other layers, dequantized: a plain floating-point model
    folded.requires_grad_(True)
    return folded


@contextlib.contextmanager
def folded(model: nn.Module, subnet: Mapping[str, Mapping[str, str]]) -> Iterator[nn.Module]:
    """Run ``model`` as its folded form for ``subnet`` without copying it: on the eager paths each layer computes
    its ``(W_uni, b_uni)`` on first use and runs as a plain linear map until exit; a compiled model (the static
    path) reads the subnet from the codes and needs no fold and no recompilation. On exit the supernet is as it was.

    This is how the search evaluates a candidate: one fold, then plain-weight inference over the whole split.

    Example:
        >>> with glora.folded(supernet, subnet):
        ...     logits = supernet(images)
    """
    parsed = parse_subnet(model, subnet)
    layers = glora_layers(model)
    previous = [layer.choice for layer in layers.values()]
    GLoRALinear.set_choices(list(layers.values()), [parsed[name] for name in layers])
    for layer in layers.values():
        layer.merge()
    try:
        yield model
    finally:
        for layer in layers.values():
            layer.unmerge()
        if all(c is not None for c in previous):
            GLoRALinear.set_choices(list(layers.values()), previous)
