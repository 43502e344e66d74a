"""The quantized path: a layer over a quantized frozen weight (:mod:`glora.quantized`) computes the formula from a
dequantized ``W0`` made for the step, and keeps no full-precision weight between forward and backward.

Forward dequantizes ``W0``, forms ``(W_uni, b_uni)`` without autograd and runs one matmul, saving only the input and
the supports. Backward dequantizes again, forms ``(W_uni, b_uni)`` under autograd from the saved supports and sends
``gᵀx`` and ``Σ g`` through it: every support the choice reads gets its exact gradient (GIFT's shared generators
too), the rest get none, as autograd would leave them. The price is the dequantization twice a step and a
weight-sized gradient per layer (the autograd path's), for memory that stays at the quantized bytes.

Not a per-model choice (no registered path): a quantized layer always runs here, whatever the model's setting, and a
folded evaluation too (caching ``W_uni`` would hold a full-precision copy of every adapted weight).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from ..formula import choice_terms, uni_bias, uni_weight

__all__ = ["quantized_forward"]

_STORAGES = ("Ad", "Au", "Bd", "Bu", "Cd", "Cu", "D", "E", "phi", "psi")


def _uni(layer, choice, storages):
    """``(W_uni, b_uni)`` in the supports' dtype from a freshly dequantized W0 (nothing of it kept)."""
    dtype = layer.code.dtype
    w0 = layer.w0(dtype)
    b0 = None if layer.bias is None else layer.bias.to(dtype)
    terms = choice_terms(storages, choice)
    return uni_weight(w0, terms), uni_bias(b0, w0, terms)


def _as(t, dtype):
    return t if t is None or dtype is None or t.dtype == dtype else t.to(dtype)


def _linear(layer, choice, storages, x: torch.Tensor) -> torch.Tensor:
    """The layer's output, without autograd through the weights: the matmul in the input's dtype (autocast's when
    it is on, with W_uni formed outside it, in the supports' dtype)."""
    dev = x.device.type
    amp = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None
    with torch.no_grad(), torch.autocast(dev, enabled=False) if amp is not None else contextlib.nullcontext():
        w, b = _uni(layer, choice, storages)
        run = amp or x.dtype
        return F.linear(_as(x, run), w.to(run), _as(b, run))


class _DequantizedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, layer, choice, *tensors):
        y = _linear(layer, choice, dict(zip(_STORAGES, tensors)), x)
        ctx.layer, ctx.choice = layer, choice
        ctx.save_for_backward(x, *tensors)
        return y.clone() if layer.output_edited_in_place else y

    @staticmethod
    def backward(ctx, grad_out):
        x, *tensors = ctx.saved_tensors
        layer, choice = ctx.layer, ctx.choice
        need = ctx.needs_input_grad
        leaves = [None if t is None else t.detach().requires_grad_(bool(need[3 + i])) for i, t in enumerate(tensors)]
        with torch.enable_grad():
            w, b = _uni(layer, choice, dict(zip(_STORAGES, leaves)))
        g2 = grad_out.reshape(-1, grad_out.shape[-1])
        grad_x = None
        if need[0]:
            grad_x = (g2 @ w.detach().to(g2.dtype)).view(x.shape).to(x.dtype)
        wanted = [t for t in leaves if t is not None and t.requires_grad]
        grads: dict[int, torch.Tensor | None] = {}
        if wanted:
            outputs, seeds = [], []
            if w.requires_grad:
                x2 = x.reshape(-1, x.shape[-1]).to(g2.dtype)
                outputs.append(w)
                seeds.append((g2.t() @ x2).to(w.dtype))
            if b is not None and b.requires_grad:
                outputs.append(b)
                seeds.append(g2.sum(0).to(b.dtype))
            if outputs:
                got = torch.autograd.grad(outputs, wanted, seeds, allow_unused=True)
                grads = {id(t): g for t, g in zip(wanted, got)}
        return (grad_x, None, None, *(None if t is None else grads.get(id(t)) for t in leaves))


def quantized_forward(layer, x: torch.Tensor) -> torch.Tensor:
    """The layer's output for its current choice (or its merged one, in folded mode), W0 dequantized for the call."""
    choice = layer._merged_choice if layer._merged_choice is not None else layer.require_choice()
    stores = layer.storages()
    tensors = [stores[n] for n in _STORAGES]
    if not torch.is_grad_enabled() or not any(t is not None and t.requires_grad for t in (x, *tensors)):
        return _linear(layer, choice, stores, x)
    return _DequantizedLinear.apply(x, layer, choice, *tensors)
