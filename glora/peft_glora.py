"""HF PEFT's GLoRA adapters (``GloraConfig``, PEFT >= 0.21) read and written as points of this toolkit's space.

PEFT's GLoRA is one fixed configuration for every adapted layer: ``config_A_B`` (one parameterisation for A and B),
``config_C``, ``config_D_E`` (one for D and E) and one rank ``r``. In this toolkit's terms it is one subnet:

=================  ============================  ====================================================
PEFT               this toolkit                  tensors (PEFT ``glora_X.*`` -> storage corner)
=================  ============================  ====================================================
A, B ``lora``      ``lora_r``                    ``Xd`` (out x r) -> ``Ad``/``Bd``, ``Xu`` (r x in) -> ``Au``/``Bu``
A, B ``vector``    ``vector``                    ``X`` (out x 1) -> first column of ``Ad``/``Bd``
A, B ``constant``  ``scalar``                    ``X`` (1,) -> first element of ``Ad``/``Bd``
C ``lora``         ``lora_r``                    ``Xd`` (in x r) -> ``Cd``, ``Xu`` (r x 1) -> ``Cu``
C ``vector``       ``vector``                    ``X`` (in x 1) -> first column of ``Cd``
D, E ``vector``    ``vector``                    ``X`` (out,) -> ``D``/``E``
D, E ``constant``  ``scalar``                    ``X`` (1,) -> first element of ``D``/``E``
``none``           ``none``                      (PEFT keeps a ``zeros`` buffer; nothing here)
=================  ============================  ====================================================

The formula is the paper's, with these differences in what PEFT offers: A and B always take the same
parameterisation and every lora path the same rank; C, D and E exist only on layers that have a bias (on a layer
without one PEFT adds no bias term, where this toolkit's C and E may create one); ``constant`` is the paper's scalar.
PEFT computes the adapted layer as ``base(x) + linear(x, W_eff, b_eff) - base(x)``, the same function up to float
rounding. Its ``modules_to_save`` (a classification head) are saved whole, as this toolkit saves heads.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._io import atomic_write_bytes, atomic_write_text
from .config import AdapterConfig
from .layer import GLoRALinear
from .space import SUPPORTS, Kind, SearchSpace
from .subnet import Subnet, parse_subnet

__all__ = ["PEFT_CONFIG", "PEFT_WEIGHTS", "is_peft_glora", "read_peft_glora", "write_peft_glora"]

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
_PREFIX = "base_model.model."
_TO_PEFT = {Kind.LORA: "lora", Kind.VECTOR: "vector", Kind.SCALAR: "constant", Kind.NONE: "none"}


def is_peft_glora(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a PEFT adapter (its ``adapter_config.json``), of any type."""
    return (Path(folder) / PEFT_CONFIG).is_file()


def _config(folder: Path) -> dict[str, Any]:
    try:
        config = json.loads((folder / PEFT_CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{str(folder / PEFT_CONFIG)!r} is corrupt: {e}") from None
    kind = str(config.get("peft_type", "?")).upper()
    if kind != "GLORA":
        raise ValueError(f"{str(folder)!r} is a PEFT {kind} adapter; only PEFT's GLoRA adapters (GLORA) are read")
    return config


def read_peft_glora(folder: str | os.PathLike) -> tuple[AdapterConfig, Subnet, dict[str, torch.Tensor], list[str]]:
    """A PEFT GLoRA adapter folder as (this toolkit's adapter config, the subnet it is, tensors by this toolkit's
    names, its modules_to_save). Each layer's choice is read from the tensors it holds (a layer without a bias has
    no C, D or E), so what PEFT computes is what the subnet computes."""
    from safetensors.torch import load_file

    folder = Path(folder)
    config = _config(folder)
    weights = folder / PEFT_WEIGHTS
    if not weights.is_file():
        bin_ = " (only adapter_model.bin, a pickle: re-save it with safe_serialization=True)"
        raise ValueError(
            f"{str(folder)!r} holds no {PEFT_WEIGHTS}{bin_ if (folder / 'adapter_model.bin').exists() else ''}"
        )
    peft = load_file(str(weights))
    rank = int(config.get("r", 8))
    paths: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
    modules: dict[str, torch.Tensor] = {}
    for key, t in peft.items():
        name = key.removeprefix(_PREFIX)
        marker = next((f".glora_{s}." for s in SUPPORTS if f".glora_{s}." in name), None)
        if marker is None:  # a module to save (a head), as PEFT names it
            modules[name.replace(".modules_to_save.default.", ".").replace(".modules_to_save.", ".")] = t
            continue
        layer, _, param = name.partition(marker)
        paths.setdefault(layer, {}).setdefault(marker[7], {})[param.split(".")[-1]] = t
    if not paths:
        raise ValueError(f"{str(weights)!r} holds no GLoRA tensors (glora_A ... glora_E)")
    subnet: Subnet = {}
    tensors: dict[str, torch.Tensor] = {}
    for layer, supports in paths.items():
        choice = {}
        for s in SUPPORTS:
            found = supports.get(s, {})
            choice[s], mine = _choice(s, found, rank, f"{weights}: layer {layer!r}, glora_{s}")
            tensors |= {f"{layer}.{k}": v for k, v in mine.items()}
        subnet[layer] = choice
    offered = {s: sorted({c[s] for c in subnet.values()}) for s in SUPPORTS}
    heads = sorted({n.rsplit(".", 1)[0] for n in modules})
    tensors |= modules
    targets = "(?:" + "|".join(_escape(n) for n in subnet) + ")"
    space = SearchSpace(lora_ranks=(rank,), choices=offered)
    return AdapterConfig(space, targets, tuple(heads) or None), subnet, tensors, heads


def _escape(name: str) -> str:
    import re

    return re.escape(name)


def _choice(support: str, found: Mapping[str, torch.Tensor], rank: int, where: str) -> tuple[str, dict]:
    """One support's choice from its PEFT tensors, and those tensors under this toolkit's storage names."""
    if "Xd" in found and "Xu" in found:
        down, up = found["Xd"], found["Xu"]
        if down.shape[1] != rank or up.shape[0] != rank:
            raise ValueError(f"{where}: rank {down.shape[1]}, the config says r={rank}")
        if support in "AB":
            return f"lora_{rank}", {f"{support}d": down, f"{support}u": up}
        if support == "C":
            return f"lora_{rank}", {"Cd": down, "Cu": up}
        raise ValueError(f"{where}: a lora path for {support}, which PEFT's GLoRA does not have")
    if "X" in found:
        x = found["X"]
        if support in "AB":
            if x.numel() == 1:
                return "scalar", {f"{support}d": x.reshape(1, 1)}
            return "vector", {f"{support}d": x.reshape(-1, 1)}
        if support == "C":
            return "vector", {"Cd": x.reshape(-1, 1)}
        if x.numel() == 1:
            return "scalar", {support: x.reshape(1)}
        return "vector", {support: x.reshape(-1)}
    return "none", {}  # an empty path (PEFT's zeros buffer, or nothing)


def write_peft_glora(
    model: nn.Module,
    folder: str | os.PathLike,
    subnet: Subnet,
    tensors: Mapping[str, torch.Tensor],
    *,
    prefix: str = "",
    heads: list[str] | None = None,
    base_model: str | None = None,
    task_type: str | None = None,
) -> Path:
    """Write ``subnet`` of ``model`` (with its trainable ``tensors`` by the base's names) as a PEFT GLoRA adapter
    folder, which ``PeftModel.from_pretrained`` loads. PEFT's config holds one choice for every layer: every adapted
    layer must take the same choices (A and B alike, one lora rank; C, D and E alike on every layer that has a bias,
    none on those without, D and E alike), else ``ValueError`` names two layers that differ."""
    from safetensors.torch import save

    layers = {n.removeprefix(prefix): m for n, m in model.named_modules() if isinstance(m, GLoRALinear)}
    parsed = parse_subnet(model, {prefix + n if prefix + n in {prefix + k for k in layers} else n: c
                                  for n, c in subnet.items()})  # fmt: skip
    shapes: dict[str, tuple[str, str, str, str]] = {}
    ranks: set[int] = set()
    first: dict[bool, tuple[str, tuple]] = {}
    for name, layer in layers.items():
        c = parsed[layer.name]
        if c.A != c.B:
            raise ValueError(
                f"a PEFT GLoRA adapter gives A and B one parameterisation; layer {name!r} has A={c.A.name}, "
                f"B={c.B.name}"
            )
        if c.D != c.E:
            raise ValueError(
                f"a PEFT GLoRA adapter gives D and E one parameterisation; layer {name!r} has D={c.D.name}, "
                f"E={c.E.name}"
            )
        has_bias = layer.bias is not None
        if not has_bias and (c.C.kind is not Kind.NONE or c.E.kind is not Kind.NONE):
            raise ValueError(
                f"layer {name!r} has no bias, and PEFT's GLoRA gives such a layer no C, D or E; this subnet has "
                f"C={c.C.name}, E={c.E.name} there"
            )
        if c.A.kind is Kind.GIFT:
            raise ValueError(f"layer {name!r} takes A={c.A.name}: PEFT's GLoRA has no GIFT choice")
        ranks |= {x.rank for x in (c.A, c.C) if x.kind is Kind.LORA}
        key = (c.A.kind, c.C.kind, c.D.kind) if has_bias else (c.A.kind,)
        seen = first.setdefault(has_bias, (name, key))
        if seen[1] != key:
            other = parsed[layers[seen[0]].name]
            raise ValueError(
                "a PEFT GLoRA adapter holds one choice for every layer; layer "
                f"{seen[0]!r} has {_describe(other)} and layer {name!r} has {_describe(c)}"
            )
        shapes[name] = (_TO_PEFT[c.A.kind], _TO_PEFT[c.C.kind], _TO_PEFT[c.D.kind], "bias" if has_bias else "")
    if len(ranks) > 1:
        raise ValueError(f"a PEFT GLoRA adapter has one rank r; this subnet uses lora ranks {sorted(ranks)}")
    if first.get(False) and first.get(True) and first[False][1][0] != first[True][1][0]:
        a, b = first[True][0], first[False][0]
        raise ValueError(f"a PEFT GLoRA adapter holds one choice for A and B; layers {a!r} and {b!r} differ")
    rank = next(iter(ranks), 8)
    with_bias = next((s for s in shapes.values() if s[3]), None)
    config_ab = next(iter(shapes.values()))[0]
    config_c, config_de = (with_bias[1], with_bias[2]) if with_bias else ("none", "none")
    out: dict[str, torch.Tensor] = {}
    for name, layer in layers.items():
        key = f"{_PREFIX}{name}"
        _peft_paths(out, key, layer, tensors, name, shapes[name])
    for head in heads or ():
        for pname, t in tensors.items():
            if pname.startswith(head + "."):
                out[f"{_PREFIX}{pname}"] = t
    record = {
        "peft_type": "GLORA",
        "task_type": task_type,
        "base_model_name_or_path": base_model,
        "r": rank,
        "target_modules": sorted(layers),
        "config_A_B": config_ab,
        "config_C": config_c,
        "config_D_E": config_de,
        "bias": "none",
        "modules_to_save": list(heads) if heads else None,
        "init_weights": True,
        "inference_mode": True,
        "peft_version": _peft_version(),
    }
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path / PEFT_WEIGHTS, save({k: v.contiguous() for k, v in out.items()}))
    atomic_write_text(path / PEFT_CONFIG, json.dumps(record, indent=1) + "\n")
    return path


def _describe(c) -> str:
    return ", ".join(f"{s}={x.name}" for s, x in zip(SUPPORTS, c))


def _peft_paths(out: dict, key: str, layer: GLoRALinear, tensors: Mapping, name: str, shape: tuple) -> None:
    """One layer's PEFT tensors (its empty paths' zeros buffers included, as PEFT writes them)."""
    ab, c, de, bias = shape
    n_out, n_in = layer.out_features, layer.in_features
    for s in "AB":
        down = tensors.get(f"{name}.{s}d")
        if ab == "lora":
            out[f"{key}.glora_{s}.Xd"] = down
            out[f"{key}.glora_{s}.Xu"] = tensors[f"{name}.{s}u"]
        elif ab == "vector":
            out[f"{key}.glora_{s}.X"] = down[:, :1]
        elif ab == "constant":
            out[f"{key}.glora_{s}.X"] = down.reshape(-1)[:1]
        else:
            out[f"{key}.glora_{s}.zeros"] = torch.zeros(n_out, n_in)
    if bias and c == "lora":
        out[f"{key}.glora_C.Xd"], out[f"{key}.glora_C.Xu"] = tensors[f"{name}.Cd"], tensors[f"{name}.Cu"]
    elif bias and c == "vector":
        out[f"{key}.glora_C.X"] = tensors[f"{name}.Cd"][:, :1]
    else:
        out[f"{key}.glora_C.zeros"] = torch.zeros(n_in, 1)
    for s in "DE":
        if bias and de == "vector":
            out[f"{key}.glora_{s}.X"] = tensors[f"{name}.{s}"]
        elif bias and de == "constant":
            out[f"{key}.glora_{s}.X"] = tensors[f"{name}.{s}"][:1]
        else:
            out[f"{key}.glora_{s}.zeros"] = torch.zeros(n_out)


def _peft_version() -> str:
    try:
        from importlib.metadata import version

        return version("peft")
    except Exception:  # not installed: the version whose format this writes
        return "0.22.0"
