"""GLoRA: generalized LoRA supernets with exact folding, for timm models and any ``nn.Module``.

The core library is the math and its operations on models, read in this order: search space (``space``) -> the
formula (``formula``) -> supernet layer (``layer``, its execution paths ``paths``, ``gift``) -> injection
(``inject``, ``config``) -> subnets (``subnet``) -> folding (``fold``), plus interop with the paper's reference
code (``reference``). It holds no CLI, data or training code; the application built on it (options, data,
backbones, checkpoints, training, export, the three commands) is :mod:`glora.app`, and the evolutionary search is
the ``search`` package.

    import random, glora
    model = glora.inject(model, glora.SearchSpace(lora_ranks=(8, 4)))   # wrap linears, freeze the backbone
    glora.set_subnet(model, glora.sample_subnet(model, random.Random(0)))
    plain = glora.fold(model, subnet)                                   # plain model, zero overhead
"""

from .adapter import adapter_names, load_adapter, read_adapter, save_adapter, set_adapter
from .config import AdapterConfig
from .fold import fold, folded
from .inject import (
    find_in_place_edits,
    get_adapter_config,
    get_space,
    glora_layers,
    head_names,
    inject,
    set_execution,
    supernet_size,
    target_names,
)
from .layer import GLoRALinear
from .reference import convert_reference_subnet, load_reference_state_dict
from .space import SUPPORTS, Choice, Kind, LayerChoice, SearchSpace
from .subnet import (
    Subnet,
    count_params,
    load_subnet,
    make_subnet,
    params_by_type,
    parse_subnet,
    sample_subnet,
    save_subnet,
    set_subnet,
    unused_params,
)

__version__ = "0.2.0"

__all__ = [
    # the search space
    "SUPPORTS",
    "Kind",
    "Choice",
    "LayerChoice",
    "SearchSpace",
    # the adapter and its layers
    "AdapterConfig",
    "GLoRALinear",
    "inject",
    "supernet_size",
    "target_names",
    "glora_layers",
    "get_space",
    "get_adapter_config",
    "head_names",
    "set_execution",
    "find_in_place_edits",
    # subnets
    "Subnet",
    "sample_subnet",
    "set_subnet",
    "parse_subnet",
    "make_subnet",
    "count_params",
    "params_by_type",
    "unused_params",
    "save_subnet",
    "load_subnet",
    # re-parameterisation
    "fold",
    "folded",
    # adapter folders
    "save_adapter",
    "load_adapter",
    "read_adapter",
    "set_adapter",
    "adapter_names",
    # the paper's reference code
    "load_reference_state_dict",
    "convert_reference_subnet",
    "__version__",
]
