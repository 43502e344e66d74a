"""The GLoRA toolkit's application: options and YAML configs, data, backbones, checkpoints, the training loop,
export, and the three commands (``glora-train``, ``glora-search``, ``glora-export``; ``train_supernet.py``,
``search.py`` and ``reparam.py`` in a source checkout).

It is built on the core library (:mod:`glora`) and the evolutionary search (``search``); neither imports it.

    from glora.app import load_supernet
    model = load_supernet("runs/default/supernet/last.pt")   # rebuilt backbone + trained supports, checked
"""

from .backbone import BackboneSpec, build_backbone
from .checkpoint import load_supernet, read_checkpoint
from .data import Batch, DataSpec, ImageModality, ImageSet, Modality, Normalizer, TextModality, TextSet
from .trainer import Recipe, Trainer

__all__ = [
    "load_supernet",
    "read_checkpoint",
    "BackboneSpec",
    "build_backbone",
    "DataSpec",
    "Batch",
    "Modality",
    "ImageModality",
    "TextModality",
    "ImageSet",
    "TextSet",
    "Normalizer",
    "Recipe",
    "Trainer",
]
