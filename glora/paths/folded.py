"""The folded path: a merged layer (:meth:`glora.GLoRALinear.merge`, used by :func:`glora.folded`) runs its
``(W_uni, b_uni)``, computed once on first use, as a plain linear map. Not a per-model choice: a mode a layer is in."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import LayerPath, register_path

__all__ = ["FoldedPath"]


@register_path
class FoldedPath(LayerPath):
    name = "folded"
    selectable = False

    def forward(self, layer, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, *layer.folded_weights())
