"""GLoRA: generalized LoRA supernets with search and exact folding, for timm models and any ``nn.Module``.

import random, glora
space = glora.SearchSpace(lora_ranks=(8, 4))
model = glora.inject(model, space)                      # wrap linears, freeze backbone
glora.set_subnet(model, glora.sample_subnet(model, random.Random(0)))
plain = glora.fold(model, subnet)                       # plain model, zero overhead
"""

from .backbone import BackboneSpec, build_backbone
from .checkpoint import load_supernet, read_checkpoint
from .fold import fold, fold_layer, folded
from .gift import GiftBank, GiftGenerator, gift_group
from .inject import GIFT_ATTR, get_space, glora_layers, head_names, inject
from .layer import GLoRALinear
from .reference import convert_reference_subnet, load_reference_state_dict, reference_choice_name
from .space import GIFT_SHARING, SUPPORTS, Choice, LayerChoice, SearchSpace
from .subnet import (
    Subnet,
    count_params,
    load_subnet,
    make_subnet,
    parse_subnet,
    sample_subnet,
    save_subnet,
    set_subnet,
)

__version__ = "0.1.0"

__all__ = [
    "SUPPORTS",
    "GIFT_SHARING",
    "GIFT_ATTR",
    "Choice",
    "LayerChoice",
    "SearchSpace",
    "GLoRALinear",
    "GiftGenerator",
    "GiftBank",
    "gift_group",
    "inject",
    "glora_layers",
    "get_space",
    "head_names",
    "Subnet",
    "sample_subnet",
    "set_subnet",
    "parse_subnet",
    "make_subnet",
    "count_params",
    "save_subnet",
    "load_subnet",
    "fold",
    "fold_layer",
    "folded",
    "load_supernet",
    "read_checkpoint",
    "BackboneSpec",
    "build_backbone",
    "load_reference_state_dict",
    "convert_reference_subnet",
    "reference_choice_name",
    "__version__",
]
