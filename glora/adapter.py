"""Adapter folders: a trained GLoRA adapter saved apart from its base model, and loaded onto a fresh copy of it.

A PEFT user's ``save_pretrained`` / ``from_pretrained``, for GLoRA. A folder holds two files:

- ``glora_adapter.json``: the format and its version, the toolkit's version, the adapter configuration (the space,
  the adapted layers by name, the heads, the supports' dtype), the subnet when one was saved, and the base model's
  identity: its class, each adapted layer's (in, out, bias) and a fingerprint of its frozen weights;
- ``adapter.safetensors``: the support tensors (whole storages, or with a subnet only the slices it reads), the GIFT
  generators, and every other module that trains (a new task head: PEFT's ``modules_to_save``).

:func:`load_adapter` injects a fresh base as the saved one was (or checks a model already injected), refuses a base
whose adapted layers differ (naming the first difference), warns when its frozen weights are not the ones the
adapter was trained on, and loads the tensors: the model then computes exactly what the saved one did.

Several adapters can be loaded into one model under names and switched with :func:`set_adapter`: each keeps its
tensors (the folder's size) beside the model's one set of supports, so switching copies them in, without touching
or reloading the base.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._io import atomic_write_bytes, atomic_write_text
from .config import AdapterConfig
from .gift import GiftBank
from .inject import get_adapter_config, inject
from .layer import GLoRALinear, adaptable, io_features
from .peft_glora import is_peft_glora, read_peft_glora, write_peft_glora
from .quantized import quantization_of
from .space import SUPPORTS, Kind, LayerChoice
from .subnet import Subnet, parse_subnet, set_subnet

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "save_adapter",
    "load_adapter",
    "read_adapter",
    "set_adapter",
    "adapter_names",
    "adapter_state_dict",
    "load_adapter_state_dict",
    "frozen_fingerprint",
]

_logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "glora_adapter.json"
ADAPTER_WEIGHTS = "adapter.safetensors"
FORMAT = "glora-adapter"
VERSION = 1
# The adapters loaded into a model under names (load_adapter(..., name=)), kept at its root: a plain attribute.
_LOADED_ATTR = "_glora_adapters"


# ---------------------------------------------------------------------- the tensors
def _trainable(model: nn.Module, prefix: str = "") -> dict[str, nn.Parameter]:
    """The parameters that train (supports, GIFT generators, heads), by their name under ``prefix`` (stripped)."""
    out = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            out[name.removeprefix(prefix) if prefix and name.startswith(prefix) else name] = p
    return out


def _whole(t: torch.Tensor) -> torch.Tensor:
    """A sharded tensor (FSDP's DTensor) gathered whole (a collective: every rank calls it), on the CPU."""
    full = getattr(t, "full_tensor", None)
    return (full() if callable(full) else t).detach().to("cpu", copy=True)


def _extents(layer: GLoRALinear, choice: LayerChoice) -> dict[str, tuple[int, ...]]:
    """How much of each storage ``choice`` reads, as a leading-corner shape (a storage it does not read: absent)."""
    out: dict[str, tuple[int, ...]] = {}
    for support, c in zip(SUPPORTS, choice):
        if c.kind in (Kind.NONE, Kind.GIFT):
            continue
        if support in "AB":
            down = getattr(layer, f"{support}d")
            if c.kind is Kind.LORA:
                out[f"{support}d"] = (down.shape[0], c.rank)
                out[f"{support}u"] = (c.rank, getattr(layer, f"{support}u").shape[1])
            else:  # the vector is the first column, the scalar its first element
                out[f"{support}d"] = (down.shape[0], 1) if c.kind is Kind.VECTOR else (1, 1)
        elif support == "C":
            cd = layer.Cd
            out["Cd"] = (cd.shape[0], c.rank if c.kind is Kind.LORA else 1)
            if c.kind is Kind.LORA:
                out["Cu"] = (c.rank, 1)
        elif support == "D" and layer.bias is None:
            continue  # D scales a bias the layer does not have
        else:
            out[support] = (getattr(layer, support).shape[0],) if c.kind is Kind.VECTOR else (1,)
    return out


def adapter_state_dict(model: nn.Module, subnet: Subnet | None = None, *, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor that trains, whole and on the CPU, by name: the supports, the GIFT generators and the heads.

    With ``subnet`` only what it reads: each support the slice of its storage that the subnet's choice uses, and
    the GIFT generators of groups it uses. ``prefix``: a leading part of the names to leave out (a wrapper's
    ``model.``), so the names are the base model's own. Under FSDP every rank must call it (tensors are gathered).
    """
    params = _trainable(model, prefix)
    keep: dict[str, tuple[int, ...] | None] = {name: None for name in params}  # None: the whole tensor
    if subnet is not None:
        layers = {n.removeprefix(prefix): m for n, m in model.named_modules() if isinstance(m, GLoRALinear)}
        parsed = parse_subnet(model, subnet)
        used_gift = set()
        for name, layer in layers.items():
            choice = parsed[layer.name]
            extents = _extents(layer, choice)
            for storage in ("Ad", "Au", "Bd", "Bu", "Cd", "Cu", "D", "E"):
                key = f"{name}.{storage}"
                if key in keep:
                    if storage in extents:
                        keep[key] = extents[storage]
                    else:
                        del keep[key]
            if choice.A.kind is Kind.GIFT:
                used_gift.add(id(layer.gift))
        gift_params = {id(p): id(g) for m in model.modules() if isinstance(m, GiftBank) for g in m.generators
                       for p in g.parameters()}  # fmt: skip
        for key, p in params.items():
            if id(p) in gift_params and gift_params[id(p)] not in used_gift:
                keep.pop(key, None)
    out = {}
    for key, shape in keep.items():
        t = _whole(params[key])
        out[key] = t if shape is None else t[tuple(slice(0, n) for n in shape)].contiguous()
    return out


def load_adapter_state_dict(
    model: nn.Module, tensors: Mapping[str, torch.Tensor], *, prefix: str = "", where: str = "adapter"
) -> None:
    """Copy saved trainable tensors into ``model``: whole tensors as they are, a subnet's slices into the leading
    corner of their storage (what the subnet reads). Every name must be one of the model's trainable tensors; a
    tensor larger than its storage is refused, naming it."""
    params = _trainable(model, prefix)
    unknown = [n for n in tensors if n not in params]
    if unknown:
        raise ValueError(
            f"{where}: tensor {unknown[0]!r} is not a trainable tensor of this model ({len(unknown)} unknown): "
            "another architecture, target set or search space?"
        )
    for name, t in tensors.items():
        p = params[name]
        if t.dim() != p.dim() or any(a > b for a, b in zip(t.shape, p.shape)):
            raise ValueError(f"{where}: tensor {name!r} has shape {tuple(t.shape)}, this model holds {tuple(p.shape)}")
    with torch.no_grad():
        for name, t in tensors.items():
            p = params[name]
            corner = tuple(slice(0, n) for n in t.shape)
            if tuple(t.shape) == tuple(p.shape):
                _assign(p, t)
            elif getattr(p, "device_mesh", None) is not None:  # sharded: the whole tensor, its corner, back
                whole = _whole(p)
                whole[corner] = t.to(whole.dtype)
                _assign(p, whole)
            else:
                p.data[corner] = t.to(p.device, p.dtype)


def _assign(param: torch.Tensor, value: torch.Tensor) -> None:
    """A whole tensor (the same on every rank) into ``param``, which may be sharded (FSDP's DTensor: this rank's
    shard of it, cut locally: no communication)."""
    value = value.to(device=param.device, dtype=param.dtype)
    mesh = getattr(param, "device_mesh", None)
    if mesh is not None:
        from torch.distributed.tensor import distribute_tensor

        try:
            value = distribute_tensor(value, mesh, param.placements, src_data_rank=None)
        except TypeError:  # a torch without src_data_rank: scattered from rank 0 (every rank holds the same)
            value = distribute_tensor(value, mesh, param.placements)
    param.copy_(value)


def frozen_fingerprint(model: nn.Module, *, prefix: str = "") -> str:
    """SHA-256 over the names, shapes, dtypes and bytes of the frozen parameters (``prefix`` left out of the
    names): which base weights an adapter was trained on."""
    h = hashlib.sha256()
    params = {n.removeprefix(prefix): p for n, p in model.named_parameters() if not p.requires_grad}
    for name in sorted(params):
        t = _whole(params[name]).contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------- the folder
def _layers(model: nn.Module, prefix: str = "") -> dict[str, GLoRALinear]:
    return {n.removeprefix(prefix): m for n, m in model.named_modules() if isinstance(m, GLoRALinear)}


def _version() -> str:
    from . import __version__

    return __version__


def save_adapter(
    model: nn.Module,
    path: str | os.PathLike,
    subnet: Subnet | None = None,
    *,
    prefix: str = "",
    extra: Mapping[str, Any] | None = None,
    format: str = "glora",
) -> Path:
    """Write ``model``'s adapter (an injected model) into folder ``path``: ``glora_adapter.json`` and
    ``adapter.safetensors``. With ``subnet``, only what it reads is kept and the subnet is recorded, so
    :func:`load_adapter` gives a model that computes it. ``prefix``: a wrapper's leading name part to leave out
    (``model.``), so the folder names the base model's own layers. ``extra``: more plain data for the JSON (what a
    base needs beyond its class: label names, a problem type). ``format="peft"`` writes HF PEFT's GLoRA format instead
    (``adapter_config.json``, ``adapter_model.safetensors``: ``PeftModel.from_pretrained`` loads it), which holds one
    choice for every layer: refused, naming two layers that differ, when the subnet's layers do not all take the same
    choices (:mod:`glora.peft_glora`). Files are written atomically; under FSDP call it on every rank (tensors are
    gathered) and rank 0 writes. Returns the folder.

    Example:
        >>> glora.save_adapter(model, "my-adapter", subnet)            # a few MB instead of the whole model
        >>> base = timm.create_model("vit_base_patch16_224", pretrained=True, num_classes=10)
        >>> subnet = glora.load_adapter(base, "my-adapter")            # the same outputs as ``model``
    """
    from safetensors.torch import save

    if format not in ("glora", "peft"):
        raise ValueError(f"format must be glora or peft; got {format!r}")
    config = get_adapter_config(model)
    layers = _layers(model, prefix)
    if subnet is not None:
        subnet = {name.removeprefix(prefix): dict(c) for name, c in subnet.items()}
        parse_subnet(model, _with_prefix(subnet, model, prefix))  # (a Llama's own names start with "model." too)
    tensors = adapter_state_dict(model, None if subnet is None else _with_prefix(subnet, model, prefix), prefix=prefix)
    if format == "peft":
        if subnet is None:
            raise ValueError("a PEFT GLoRA adapter holds one subnet: give the subnet to save")
        extra = dict(extra or {})
        base = (extra.get("transformers") or {}).get("model")
        if _rank() == 0:
            write_peft_glora(model, path, subnet, tensors, prefix=prefix, heads=_strip(config.heads or (), prefix),
                             base_model=base, task_type=extra.get("task_type"))  # fmt: skip
        return Path(path)
    record = {
        "format": FORMAT,
        "version": VERSION,
        "glora_version": _version(),
        "adapter": config.to_dict() | {"targets": list(layers), "heads": _strip(config.heads or (), prefix)},
        "subnet": subnet,
        "base": {
            "class": type(_inner(model, prefix)).__name__,
            "layers": {n: [m.in_features, m.out_features, m.bias is not None] for n, m in layers.items()},
            "fingerprint": frozen_fingerprint(model, prefix=prefix),
            "quantization": quantization_of(model),
        },
        "tensors": {n: list(t.shape) for n, t in tensors.items()},
    }
    if extra:
        record["extra"] = dict(extra)
    if _rank() == 0:
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(folder / ADAPTER_WEIGHTS, save(tensors, metadata={"format": FORMAT}))
        atomic_write_text(folder / ADAPTER_CONFIG, json.dumps(record, indent=1) + "\n")
    return Path(path)


def _with_prefix(subnet: Subnet, model: nn.Module, prefix: str) -> Subnet:
    """A subnet named by the base's own layers, named as ``model`` names them (its wrapper's prefix added)."""
    if not prefix:
        return subnet
    names = {n for n, m in model.named_modules() if isinstance(m, GLoRALinear)}
    return {(prefix + n if prefix + n in names else n): c for n, c in subnet.items()}


def _strip(names: Any, prefix: str) -> list[str]:
    return [n.removeprefix(prefix) for n in names]


def _inner(model: nn.Module, prefix: str) -> nn.Module:
    """The module a prefix leads to (the wrapped base model), or the model itself."""
    return model.get_submodule(prefix.rstrip(".")) if prefix else model


def _rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def read_adapter(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """An adapter folder's record and tensors (safetensors: nothing in the file is run); ``ValueError`` says what
    is wrong with it."""
    from safetensors.torch import load_file

    folder = Path(path)
    config, weights = folder / ADAPTER_CONFIG, folder / ADAPTER_WEIGHTS
    if not folder.is_dir():
        raise FileNotFoundError(f"adapter folder {str(folder)!r} does not exist")
    if not config.is_file():
        peft = folder / "adapter_config.json"
        hint = " (a PEFT adapter folder: adapter_config.json)" if peft.is_file() else ""
        raise ValueError(f"{str(folder)!r} holds no {ADAPTER_CONFIG}: not a GLoRA adapter folder{hint}")
    try:
        record = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{str(config)!r} is corrupt: {e}") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"{str(config)!r} is not a GLoRA adapter record")
    if int(record.get("version", 0)) > VERSION:
        raise ValueError(f"{str(config)!r} has format version {record['version']}; upgrade glora")
    try:
        tensors = load_file(str(weights))
    except Exception as e:  # missing, truncated, not safetensors
        raise ValueError(f"cannot read {str(weights)!r}: {e}") from None
    return record, tensors


def load_adapter(
    model: nn.Module, path: str | os.PathLike, *, name: str | None = None, prefix: str = ""
) -> Subnet | None:
    """Load the adapter folder ``path`` onto ``model``: a fresh base (it is injected as the saved one was: the same
    space, layers and heads) or a model already injected with the same adapter configuration. Returns the subnet the
    folder holds (set on the model), or None (a whole supernet).

    A base whose adapted layers differ (a missing layer, another shape, a bias where there was none) is refused,
    naming the first difference; other frozen weights than the ones it was trained on (the fingerprint) are a
    warning: the adapter loads, but it may not compute what it did. ``name``: keep this adapter's tensors under a
    name, to switch between several with :func:`set_adapter`. ``prefix``: the wrapper's leading name part, as given
    to :func:`save_adapter`.
    """
    where = f"adapter {str(path)!r}"
    if is_peft_glora(path) and not (Path(path) / ADAPTER_CONFIG).is_file():
        return _load_peft(model, path, name, prefix, where)
    record, tensors = read_adapter(path)
    adapter = AdapterConfig.from_dict(record["adapter"])
    saved_layers = {n: tuple(v) for n, v in record["base"]["layers"].items()}
    if not _layers(model):
        _check_base(model, saved_layers, where, prefix)
        names = [prefix + n for n in saved_layers]
        exact = "|".join(_escape(n) for n in names)
        heads = [prefix + h for h in adapter.heads or ()]
        inject(model, AdapterConfig(adapter.space, f"(?:{exact})", tuple(heads), adapter.support_dtype))
    else:
        own = get_adapter_config(model)
        if own.space != adapter.space and not record.get("subnet"):
            raise ValueError(f"{where}: its space ({adapter.space}) is not this model's ({own.space})")
    _check_layers(model, saved_layers, where, prefix)
    found = frozen_fingerprint(model, prefix=prefix)
    saved_q, own_q = record["base"].get("quantization"), quantization_of(model)
    if _scheme(saved_q) != _scheme(own_q):  # QLoRA's usual move (train over 4-bit, serve over bf16): said as it is
        warnings.warn(
            f"{where} was trained over a {_scheme(saved_q)} base and this base is {_scheme(own_q)}: it loads, and "
            "computes what it did up to the quantization error",
            stacklevel=2,
        )
    elif found != record["base"].get("fingerprint"):
        warnings.warn(
            f"{where} was trained on other frozen weights (fingerprint {record['base'].get('fingerprint')}, this "
            f"base {found}): it loads, but may not compute what it did",
            stacklevel=2,
        )
    subnet = record.get("subnet")
    load_adapter_state_dict(model, tensors, prefix=prefix, where=where)
    if subnet:
        set_subnet(model, _with_prefix(subnet, model, prefix))
    if name is not None:
        _loaded(model)[name] = (dict(tensors), subnet, prefix)
        model.__dict__["_glora_active_adapter"] = name
    return subnet


def _scheme(q: Mapping[str, Any] | None) -> str:
    return "floating-point (not quantized)" if not q else f"{q.get('scheme')}-quantized"


def _load_peft(model: nn.Module, path: str | os.PathLike, name: str | None, prefix: str, where: str) -> Subnet:
    """A PEFT GLoRA adapter: its configuration as a fixed subnet; a fresh base is injected with a space that holds
    it, a model already injected (a larger supernet: a search's starting point) takes it where its space offers it."""
    adapter, subnet, tensors, heads = read_peft_glora(path)
    if not _layers(model):
        modules = dict(model.named_modules())
        missing = next((n for n in subnet if prefix + n not in modules), None)
        if missing is not None:
            raise ValueError(f"{where}: this base has no layer {missing!r} (the adapter adapts {len(subnet)} layers)")
        names = "|".join(_escape(prefix + n) for n in subnet)
        inject(model, AdapterConfig(adapter.space, f"(?:{names})", tuple(prefix + h for h in heads) or None))
    layers = _layers(model, prefix)
    for layer_name, layer in layers.items():
        if layer_name not in subnet:
            raise ValueError(f"{where}: this model adapts {layer_name!r}, which the adapter does not")
        _check_peft_shapes(layer_name, layer, tensors, where)
    full = _with_prefix(subnet, model, prefix)
    parse_subnet(model, full)  # names the layer and choice this model's space does not offer
    load_adapter_state_dict(model, tensors, prefix=prefix, where=where)
    set_subnet(model, full)
    if name is not None:
        _loaded(model)[name] = (dict(tensors), subnet, prefix)
        model.__dict__["_glora_active_adapter"] = name
    return subnet


def _check_peft_shapes(name: str, layer: GLoRALinear, tensors: Mapping[str, torch.Tensor], where: str) -> None:
    """A factor's rows and columns are the layer's own widths (a smaller base's adapter would fit a corner)."""
    n_in, n_out = layer.in_features, layer.out_features
    want = {"Ad": (0, n_out), "Bd": (0, n_out), "Au": (1, n_in), "Bu": (1, n_in), "Cd": (0, n_in)}
    for storage, (dim, size) in want.items():
        t = tensors.get(f"{name}.{storage}")
        if t is not None and t.shape[dim] != size and not (storage in ("Ad", "Bd") and t.numel() == 1):
            raise ValueError(f"{where}: layer {name!r} is {n_in} -> {n_out} here; its {storage} has shape "
                             f"{tuple(t.shape)}")  # fmt: skip
    for storage in ("D", "E"):
        t = tensors.get(f"{name}.{storage}")
        if t is not None and t.numel() not in (1, n_out):
            raise ValueError(f"{where}: layer {name!r} has {n_out} outputs here; its {storage} has {t.numel()}")


def _escape(name: str) -> str:
    import re

    return re.escape(name)


def _check_base(model: nn.Module, saved: Mapping[str, tuple], where: str, prefix: str) -> None:
    """Before injecting: every saved layer must be a linear layer of this base, of the saved shape and bias."""
    modules = dict(model.named_modules())
    for name, (n_in, n_out, bias) in saved.items():
        module = modules.get(prefix + name)
        if module is None:
            raise ValueError(f"{where}: this base has no layer {name!r} (the adapter adapts {len(saved)} layers)")
        if not adaptable(module):
            raise ValueError(f"{where}: {name!r} of this base is a {type(module).__name__}, not a linear layer")
        own = (*io_features(module), getattr(module, "bias", None) is not None)
        if own != (n_in, n_out, bias):
            raise ValueError(
                f"{where}: layer {name!r} is (in {own[0]}, out {own[1]}, bias {own[2]}) in this base, (in {n_in}, "
                f"out {n_out}, bias {bias}) in the adapter"
            )


def _check_layers(model: nn.Module, saved: Mapping[str, tuple], where: str, prefix: str) -> None:
    own = {n: (m.in_features, m.out_features, m.bias is not None) for n, m in _layers(model, prefix).items()}
    for name, shape in saved.items():
        if name not in own:
            raise ValueError(f"{where}: this model does not adapt {name!r}")
        if own[name] != tuple(shape):
            raise ValueError(
                f"{where}: layer {name!r} is (in {own[name][0]}, out {own[name][1]}, bias {own[name][2]}) here, "
                f"(in {shape[0]}, out {shape[1]}, bias {shape[2]}) in the adapter"
            )
    extra = [n for n in own if n not in saved]
    if extra:
        raise ValueError(f"{where}: this model adapts {extra[0]!r}, which the adapter does not")


# ---------------------------------------------------------------------- several adapters over one base
def _loaded(model: nn.Module) -> dict[str, tuple[dict[str, torch.Tensor], Subnet | None, str]]:
    return model.__dict__.setdefault(_LOADED_ATTR, {})


def adapter_names(model: nn.Module) -> list[str]:
    """The adapters loaded into ``model`` under a name (:func:`load_adapter`), in loading order."""
    return list(_loaded(model))


def set_adapter(model: nn.Module, name: str) -> Subnet | None:
    """Make the adapter loaded as ``name`` the model's: its tensors are copied into the supports (the base is not
    touched) and its subnet is set. Returns that subnet (None for a whole supernet). A model in folded mode
    (:func:`glora.folded`) must leave it first."""
    loaded = _loaded(model)
    if name not in loaded:
        raise KeyError(f"no adapter loaded as {name!r}; loaded: {', '.join(loaded) or 'none'}")
    if any(m.is_merged for m in model.modules() if isinstance(m, GLoRALinear)):
        raise RuntimeError("the model is in folded mode: leave glora.folded(...) before switching adapters")
    tensors, subnet, prefix = loaded[name]
    load_adapter_state_dict(model, tensors, prefix=prefix, where=f"adapter {name!r}")
    if subnet:
        set_subnet(model, _with_prefix(subnet, model, prefix))
    model.__dict__["_glora_active_adapter"] = name
    return subnet
