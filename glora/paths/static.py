"""The static path: the formula over every support the space offers, masked by the layer's ``code`` buffer.

No Python branch depends on the choice and nothing is read on the host, so the same kernels run for every subnet:
this is what ``torch.compile`` traces (whatever the setting) and what CUDA graphs capture. Supports a subnet does
not use get zero gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import LayerPath, register_path

__all__ = ["StaticPath", "static_forward"]


def static_forward(layer, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, *layer.uni(layer.static_terms()))


@register_path
class StaticPath(LayerPath):
    name = "static"
    folds = False  # it reads the choice from the codes: a folded evaluation needs no cached weights

    def forward(self, layer, x: torch.Tensor) -> torch.Tensor:
        return static_forward(layer, x)
