"""The autograd path: plain autograd through the current choice's ``(W_uni, b_uni)``. Slow (it forms the full
weight gradient of every adapted layer) but obviously right: the oracle the other paths are tested against, and
the manual path's fallback."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import LayerPath, register_path

__all__ = ["AutogradPath", "autograd_forward"]


def autograd_forward(layer, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, *layer.merged())


@register_path
class AutogradPath(LayerPath):
    name = "autograd"

    def forward(self, layer, x: torch.Tensor) -> torch.Tensor:
        return autograd_forward(layer, x)
