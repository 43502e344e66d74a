"""Supernet checkpoints: trainable tensors + everything needed to rebuild and resume, loaded safely.

A checkpoint never holds the frozen backbone; it holds how to rebuild it (:class:`BackboneSpec`) and a fingerprint
of its weights. Loading always uses ``torch.load(..., weights_only=True)``: a file carrying arbitrary pickled
objects is refused before anything in it runs.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from glora._io import atomic_save, weights_format
from glora._text import first_line
from glora.adapter import adapter_state_dict, load_adapter_state_dict
from glora.config import AdapterConfig
from glora.inject import inject

from .backbone import BackboneSpec, build_backbone, fingerprint
from .sharding import weightless
from .values import not_found

__all__ = [
    "CHECKPOINT_FORMAT",
    "read_checkpoint",
    "write_checkpoint",
    "load_supernet",
    "load_trainable",
    "trainable_state",
    "supernet_inputs",
    "supernet_skeleton",
]

CHECKPOINT_FORMAT = "glora-supernet"
# 2: the adapter is one AdapterConfig record ("adapter"); version 1 kept "space", "targets", "heads" apart.
CHECKPOINT_VERSION = 2
_REQUIRED = ("format", "version", "backbone", "fingerprint", "adapter", "trainable")


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors training changes (supports, GIFT generators, head), detached on the CPU; whole when the model is
    sharded (FSDP: a collective, so every rank calls it). The adapter folders' own function
    (:func:`glora.adapter.adapter_state_dict`), so a checkpoint and an adapter hold the same tensors."""
    return adapter_state_dict(model)


def write_checkpoint(path: str | os.PathLike, payload: Mapping[str, Any]) -> None:
    """Save atomically (temp + rename); refuses non-finite tensors so a diverged run never replaces a good file."""
    for name, t in payload.get("trainable", {}).items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ValueError(f"refusing to write {str(path)!r}: tensor {name!r} holds NaN or inf")
    data = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **payload}
    atomic_save(path, lambda f: torch.save(data, f))


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load and check a supernet checkpoint (weights_only); ``ValueError`` says what is wrong with the file."""
    p = Path(path)
    if not p.is_file():
        raise not_found("supernet checkpoint", p, "file")
    if weights_format(p) != "torch":
        raise ValueError(
            f"{str(p)!r} is not a supernet checkpoint: not a file torch.save writes (empty, text or another format; "
            "a checkpoint cut short while copying?)"
        )
    try:
        data = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "unsupported content"
        if "weights_only" in str(e) or "Unsupported global" in str(e) or "GLOBAL" in str(e):
            raise ValueError(
                f"refusing to load {str(p)!r}: it holds Python objects other than tensors and plain data "
                "(a checkpoint from another tool, or a malicious file); nothing in it was run"
            ) from None
        raise ValueError(f"supernet checkpoint {str(p)!r} is corrupt: {first}") from None
    except Exception as e:
        raise ValueError(f"supernet checkpoint {str(p)!r} is truncated or corrupt ({first_line(e)})") from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{str(p)!r} is not a GLoRA supernet checkpoint (written by train_supernet.py)")
    if data.get("version") == 1 and "space" in data:  # the adapter's parts as separate keys
        data["adapter"] = {
            "space": data.pop("space"),
            "targets": data.pop("targets", None),
            "heads": data.pop("heads", None),
            "support_dtype": None,  # the supports in the weights' dtype, as every run before the option
        }
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise ValueError(f"supernet checkpoint {str(p)!r} lacks {', '.join(missing)}")
    if data["version"] > CHECKPOINT_VERSION:
        raise ValueError(f"supernet checkpoint {str(p)!r} has format version {data['version']}; upgrade glora")
    data["path"] = str(p)
    return data


def load_supernet(
    path_or_checkpoint: str | os.PathLike | Mapping[str, Any], *, device: torch.device | str = "cpu"
) -> nn.Module:
    """Rebuild the backbone, inject the saved space, load the trained tensors; returns the supernet in eval mode.

    Raises ``ValueError`` if the rebuilt backbone's weights differ from the ones it was trained on, or the
    checkpoint's tensors do not fit the model (another architecture or search space).

    Example:
        >>> model = glora.app.load_supernet("runs/default/supernet/last.pt")
        >>> glora.set_subnet(model, glora.load_subnet("runs/default/search/subnet.yaml"))
    """
    ckpt = path_or_checkpoint if isinstance(path_or_checkpoint, Mapping) else read_checkpoint(path_or_checkpoint)
    where = ckpt.get("path", "checkpoint")
    try:
        spec = BackboneSpec.from_dict(dict(ckpt["backbone"]))
        adapter = AdapterConfig.from_dict(ckpt["adapter"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: invalid backbone or adapter record: {e}") from None
    model = build_backbone(spec, device=device if spec.quantize else "cpu")  # (a quantized base loads where it runs)
    inject(model, adapter)
    found = fingerprint(model)
    if found != ckpt["fingerprint"]:
        why = "different pretrained weights"
        if not spec.pretrained and not spec.pretrained_file and spec.init_seed is None:
            why = "a random-init backbone saved without its init seed (an older version) cannot be rebuilt"
        raise ValueError(
            f"{where}: the rebuilt backbone ({spec.model}) has weight fingerprint {found}, but the supernet was "
            f"trained on {ckpt['fingerprint']}: {why}"
        )
    load_trainable(model, ckpt["trainable"], where)
    return model.to(device).eval()


def supernet_skeleton(ckpt: Mapping[str, Any], device: torch.device | str = "meta") -> nn.Module:
    """A checkpoint's supernet architecture without its weights (no file read but the config), on ``device``: what
    the ranks other than 0 build under ``--fsdp`` before receiving their shards (:mod:`glora.app.sharding`)."""
    where = ckpt.get("path", "checkpoint")
    try:
        spec = weightless(BackboneSpec.from_dict(dict(ckpt["backbone"])))
        adapter = AdapterConfig.from_dict(ckpt["adapter"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: invalid backbone or adapter record: {e}") from None
    model = build_backbone(spec, device=device)
    inject(model, adapter)
    return model.eval()


def load_trainable(model: nn.Module, tensors: Mapping[str, torch.Tensor], where: str = "checkpoint") -> None:
    """Copy saved trainable tensors into ``model``; names and shapes must match exactly."""
    own = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing = [n for n in own if n not in tensors]
    unknown = [n for n in tensors if n not in own]
    if missing or unknown:
        detail = f"missing {missing[0]!r}" if missing else f"unexpected {unknown[0]!r}"
        raise ValueError(
            f"{where}: saved tensors do not match this model ({detail}; {len(missing)} missing, {len(unknown)} "
            "unexpected): another architecture, target set or search space?"
        )
    for n, p in own.items():
        t = tensors[n]
        if tuple(t.shape) != tuple(p.shape):
            raise ValueError(f"{where}: tensor {n!r} has shape {tuple(t.shape)}, this model expects {tuple(p.shape)}")
    load_adapter_state_dict(model, tensors, where=where)  # this rank's shard of each when the model is sharded


def supernet_inputs(ckpt: Mapping[str, Any], data_root: str | None = None) -> list[tuple[str, str | None]]:
    """The files and folders rebuilding a checkpoint's supernet reads (its data root, unless ``data_root``
    overrides it, and local weights), as (what, path) pairs for :func:`glora.app.outputs.check_no_overlap`."""
    backbone = ckpt.get("backbone", {})
    found: list[tuple[str, str | None]] = [
        ("the data root", data_root or ckpt.get("data", {}).get("data_root")),
        ("the pretrained file", backbone.get("pretrained_file")),
    ]
    model = str(backbone.get("model", ""))
    if model.startswith("local-dir:"):
        found.append(("the backbone folder", model.removeprefix("local-dir:")))
    elif model and Path(model).expanduser().is_dir():  # a transformers save_pretrained folder
        found.append(("the model folder", model))
    data = ckpt.get("data", {})
    for key in ("train_file", "validation_file", "test_file", "tokenizer"):
        value = data.get(key)
        if value and Path(value).expanduser().exists():
            found.append((f"the {key.replace('_', ' ')}", value))
    return found
