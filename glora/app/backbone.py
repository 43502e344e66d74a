"""Build the frozen backbone from a small, serialisable description, and fingerprint its weights.

Checkpoints store how to rebuild the backbone (timm name + pretrained source, a local folder/file, or a backbone
shipped inside this package), never the frozen weights; the fingerprint makes sure the rebuilt backbone is the one
the supernet was trained on.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from glora._io import weights_format
from glora._text import first_line

from .hf_backbone import CausalLM, SequenceClassifier, TokenModel, build_transformers, is_transformers_model

__all__ = [
    "BackboneSpec",
    "build_backbone",
    "fingerprint",
    "resolve_model_name",
    "EMBEDDED_PREFIX",
    "embedded_path",
    "enable_checkpointing",
]

# Backbones shipped as package data (timm ``local-dir`` folders under glora/app/assets), named ``embedded:<name>``,
# so a run that uses one works from any folder after a plain ``pip install``.
EMBEDDED_PREFIX = "embedded:"
_ASSETS = Path(__file__).resolve().parent / "assets"


@dataclass
class BackboneSpec:
    """How to rebuild a backbone.

    Args:
        model: a timm model name (``vit_base_patch16_224.orig_in21k``), ``hf-hub:<repo>``,
            ``local-dir:<folder>`` (a timm export: config.json + model.safetensors) or ``embedded:<name>`` (a
            backbone shipped with this package: ``embedded:digits-vit``); or a transformers model: a folder
            written by ``save_pretrained`` or a hub id ``owner/name`` (:mod:`glora.app.hf_backbone`).
        pretrained: load pretrained weights from the model's source.
        pretrained_file: load pretrained weights from this local file instead (offline use of a timm name).
        num_classes: classes of the new head.
        model_kwargs: extra ``timm.create_model`` arguments (e.g. ``img_size``, ``drop_path_rate``).
        init_seed: seeds the weights the model initialises itself (all of them with ``pretrained=False``), so a
            random-init backbone is rebuilt bit for bit by search and export; ``None`` (old checkpoints): unseeded.
        task_type: transformers models: ``text-classification`` or ``causal-lm`` (None: from the config).
        dtype: transformers models: the frozen weights' dtype (``auto``, ``fp32``, ``bf16``, ``fp16``).
    """

    model: str
    num_classes: int | None
    pretrained: bool = True
    pretrained_file: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    init_seed: int | None = None
    task_type: str | None = None
    dtype: str = "auto"

    @property
    def is_transformers(self) -> bool:
        return is_transformers_model(self.model)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackboneSpec:
        return cls(**data)


def embedded_path(name: str) -> Path:
    """The folder of the embedded backbone ``name`` (``digits-vit``); ``ValueError`` names the ones that exist."""
    path = _ASSETS / name
    if not name or "/" in name or "\\" in name or not (path / "config.json").is_file():
        shipped = sorted(p.name for p in _ASSETS.iterdir() if (p / "config.json").is_file())
        raise ValueError(f"no embedded backbone {name!r}; shipped: {', '.join(shipped) or 'none'}")
    return path


def resolve_model_name(name: str) -> str:
    """What ``timm.create_model`` gets: ``embedded:<name>`` and ``local-dir:`` become absolute ``local-dir:`` paths.

    Checkpoints of version 1 named the embedded backbone ``local-dir:assets/digits-vit`` (a path in a source
    checkout); when that path does not exist here, the shipped copy is used.
    """
    if name.startswith(EMBEDDED_PREFIX):
        return f"local-dir:{embedded_path(name.removeprefix(EMBEDDED_PREFIX))}"
    if not name.startswith("local-dir:"):
        return name
    path = Path(name.removeprefix("local-dir:")).expanduser()
    if not path.is_absolute() and not path.exists() and path.parent == Path("assets"):
        path = _ASSETS / path.name
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"local-dir model folder {str(path)!r} has no config.json (a timm export is expected)")
    return f"local-dir:{path.resolve()}"


def build_backbone(spec: BackboneSpec, *, device: torch.device | str = "cpu") -> nn.Module:
    """``timm.create_model`` (or transformers' ``AutoModelFor...``) for ``spec``; raises ``ValueError`` for unknown
    names or unreadable weight files."""
    if spec.is_transformers:
        model = build_transformers(
            str(Path(spec.model).expanduser()) if Path(spec.model).expanduser().is_dir() else spec.model,
            task_type=spec.task_type,
            num_classes=spec.num_classes,
            pretrained=spec.pretrained,
            dtype=spec.dtype,
            init_seed=spec.init_seed,
        )
        # The commands' form: token batches in, logits out.
        classifier = type(model).__name__.endswith("ForSequenceClassification")
        model = SequenceClassifier(model) if classifier else CausalLM(model)
        return model.to(device)
    name = resolve_model_name(spec.model)
    kwargs: dict[str, Any] = dict(spec.model_kwargs)
    pretrained = spec.pretrained
    if spec.pretrained_file:
        weights = Path(spec.pretrained_file).expanduser()
        if not weights.is_file():
            raise FileNotFoundError(f"pretrained file {str(weights)!r} does not exist")
        if weights_format(weights) is None:
            raise ValueError(
                f"pretrained file {str(weights)!r} is not a weights file (neither safetensors nor a torch checkpoint)"
            )
        kwargs["pretrained_cfg_overlay"] = {"file": str(weights)}
        pretrained = True
    bare = name.split(":", 1)[-1] if not name.startswith(("local-dir:", "hf-hub:")) else None
    if bare is not None and not timm.is_model(bare):
        close = timm.list_models(f"*{bare.split('.')[0][:12]}*")[:5]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise ValueError(f"unknown timm model {spec.model!r}{hint}")
    try:
        with torch.random.fork_rng(devices=[], enabled=spec.init_seed is not None):
            if spec.init_seed is not None:
                torch.manual_seed(spec.init_seed)
            model = timm.create_model(name, pretrained=pretrained, num_classes=spec.num_classes, **kwargs)
    except Exception as e:
        raise _build_error(spec, name, kwargs, pretrained, e) from None
    if pretrained:
        # The classifier is always new (paper: the head is new and trainable), even if the class count matches.
        model.reset_classifier(spec.num_classes)
    return model.to(device)


def _build_error(spec: BackboneSpec, name: str, kwargs: dict[str, Any], pretrained: bool, e: Exception) -> Exception:
    """One line saying why ``timm.create_model`` failed, and what to do about it."""
    text, first = str(e).strip(), first_line(e)
    if "Unknown model" in text:
        return ValueError(f"unknown timm model {spec.model!r}")
    if "loading state_dict" in text:
        detail = next((line.strip() for line in text.splitlines()[1:] if line.strip()), first)
        source = spec.pretrained_file or spec.model
        return ValueError(f"pretrained weights of {source!r} do not fit the model ({detail})")
    remote = pretrained and not spec.pretrained_file and not name.startswith("local-dir:")
    if remote and isinstance(e, (OSError, ConnectionError, TimeoutError)):
        return ValueError(
            f"cannot fetch the pretrained weights of {spec.model!r} ({first}); offline, pass --pretrained-file "
            "<a local weights file> or --no-pretrained (a seeded random init)"
        )
    if isinstance(e, OSError):
        return e
    shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if k != "pretrained_cfg_overlay") or "its defaults"
    return ValueError(f"cannot build {spec.model!r} with {shown}: {type(e).__name__}: {first}")


def fingerprint(model: nn.Module, names: list[str] | None = None) -> str:
    """SHA-256 over the names, shapes, dtypes and bytes of the given (default: all frozen) parameters."""
    h = hashlib.sha256()
    params = dict(model.named_parameters())
    if names is None:
        names = [n for n, p in params.items() if not p.requires_grad]
    for n in sorted(names):
        t = params[n].detach().to("cpu").contiguous()
        h.update(f"{n}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def enable_checkpointing(model: nn.Module) -> None:
    """Activation (gradient) checkpointing of the backbone's blocks: activations are recomputed in the backward
    instead of kept, trading compute for memory. Non-reentrant, so the frozen backbone's inputs need no gradient
    and the supports inside every block still get theirs; the recomputation replays the same random draws (dropout,
    drop-path), so a step computes what it computes without checkpointing."""
    inner = model.model if isinstance(model, TokenModel) else model
    if getattr(inner, "supports_gradient_checkpointing", False):  # transformers (5.x renamed the call)
        if callable(getattr(inner, "activation_checkpointing_enable", None)):
            inner.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return
    if callable(getattr(inner, "set_grad_checkpointing", None)):
        try:
            inner.set_grad_checkpointing(True)
            return
        except (AssertionError, NotImplementedError):  # timm: a model without checkpointable stages
            pass
    raise ValueError(f"{type(inner).__name__} does not support gradient checkpointing")
