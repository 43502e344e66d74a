"""Build the frozen backbone from a small, serialisable description, and fingerprint its weights.

Checkpoints store how to rebuild the backbone (timm name + pretrained source, a local folder/file, or a backbone
shipped inside this package), never the frozen weights; the fingerprint makes sure the rebuilt backbone is the one
the supernet was trained on.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from glora._io import weights_format
from glora._text import first_line
from glora.adapter import frozen_fingerprint
from glora.config import AdapterConfig
from glora.inject import get_space, glora_layers, target_names

from .hf_backbone import (
    CausalLM,
    SequenceClassifier,
    bias_flags_for,
    build_transformers,
    is_transformers_model,
    position_limit,
    unwrap,
)
from .values import not_found

__all__ = [
    "BackboneSpec",
    "build_backbone",
    "fingerprint",
    "resolve_model_name",
    "EMBEDDED_PREFIX",
    "embedded_path",
    "enable_checkpointing",
    "BIAS_FREE_OPTIONS",
    "resolve_bias_free",
    "bias_free_rule",
    "check_sequence_length",
    "check_tokenizer",
]

_logger = logging.getLogger(__name__)

# --bias-free: ``auto`` decides per model (below); ``allow`` / ``exclude`` are the space's own rules.
BIAS_FREE_OPTIONS = ("auto", "allow", "exclude")

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
        quantize: transformers models: the frozen weights stored quantized by bitsandbytes (``nf4``, ``fp4``,
            ``int8``; None: not quantized), so search and export rebuild the base the supernet trained over.
        double_quant: 4-bit: the block scales quantized too (QLoRA's double quantization).
    """

    model: str
    num_classes: int | None
    pretrained: bool = True
    pretrained_file: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    init_seed: int | None = None
    task_type: str | None = None
    dtype: str = "auto"
    quantize: str | None = None
    double_quant: bool = True

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
            quantize=spec.quantize,
            double_quant=spec.double_quant,
            device=device,
        )
        # The commands' form: token batches in, logits out.
        classifier = type(model).__name__.endswith("ForSequenceClassification")
        model = SequenceClassifier(model) if classifier else CausalLM(model)
        return model if spec.quantize else model.to(device)  # (a quantized model loads onto its device)
    name = resolve_model_name(spec.model)
    kwargs: dict[str, Any] = dict(spec.model_kwargs)
    pretrained = spec.pretrained
    if spec.pretrained_file:
        weights = Path(spec.pretrained_file).expanduser()
        if not weights.is_file():
            raise not_found("pretrained file", weights, "file")
        if weights_format(weights) is None:
            raise ValueError(
                f"pretrained file {str(weights)!r} is not a weights file (neither safetensors nor a torch checkpoint)"
            )
        kwargs["pretrained_cfg_overlay"] = {"file": str(weights)}
        pretrained = True
    import timm  # here, not at the top: a text run, --help or an option error does not pay its import

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
    if names is None:
        return frozen_fingerprint(model)  # the adapter folders' own: a checkpoint and an adapter agree
    h = hashlib.sha256()
    params = dict(model.named_parameters())
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
    inner = unwrap(model)
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


def resolve_bias_free(model: nn.Module, adapter: AdapterConfig, requested: str) -> AdapterConfig:
    """``--bias-free auto``, decided for this model before the supernet is built: ``allow`` when its adapted layers
    all have a bias, or when the architecture's bias flags (``attention_bias``, ``mlp_bias``: Llama) can give every
    bias-free one a bias in the export; ``exclude`` otherwise (Mistral, Qwen2, Phi-3, timm models: C and E there
    would make subnets no plain architecture loads). ``allow`` / ``exclude`` are kept as asked."""
    if requested not in BIAS_FREE_OPTIONS:
        raise ValueError(f"--bias-free must be one of {', '.join(BIAS_FREE_OPTIONS)}; got {requested!r}")
    if requested == "exclude":
        return _with_rule(adapter, "exclude")
    bias_free = [n for n in target_names(model, adapter) if model.get_submodule(n).bias is None]
    flags = bias_flags_for(model, bias_free)
    name = type(unwrap(model)).__name__
    decided = "allow" if requested == "allow" or flags is not None else "exclude"
    if decided == "exclude":
        kept = [s for s in ("C", "D", "E") if "none" not in adapter.space.choice_names(s)]
        if kept:  # a fixed method (SSF's D and E) asks for those supports on every layer
            (_logger.warning if {"C", "E"} & set(kept) else _logger.info)(
                "--bias-free auto: %s cannot hold a bias on all %d bias-free layer(s), but --choices leave none out "
                "for %s, so they keep every choice%s",
                name,
                len(bias_free),
                ", ".join(kept),
                ": a subnet that picks C or E there trains and searches but cannot be exported"
                if {"C", "E"} & set(kept)
                else " (D scales a bias, so it does nothing there)",
            )
            return _with_rule(adapter, "allow")
        _logger.info("--bias-free auto: exclude for %d bias-free layer(s): %s cannot hold a bias on every one of them",
                     len(bias_free), name)  # fmt: skip
    elif flags is None:
        _logger.warning(
            "--bias-free allow: %s cannot hold a bias on all %d bias-free layer(s); a subnet that picks C or E there "
            "cannot be exported (--bias-free auto or exclude avoids such subnets)",
            name,
            len(bias_free),
        )
    elif flags and requested == "auto":
        _logger.info("--bias-free auto: allow for %d bias-free layer(s): the export can declare them (%s in the "
                     "config)", len(bias_free), ", ".join(flags))  # fmt: skip
    return _with_rule(adapter, decided)


def _with_rule(adapter: AdapterConfig, rule: str) -> AdapterConfig:
    if adapter.space.bias_free == rule:
        return adapter
    return replace(adapter, space=replace(adapter.space, bias_free=rule))


def bias_free_rule(model: nn.Module) -> str | None:
    """One line on the supernet's adapted layers without a bias and the rule they follow (None if there are none),
    for the train and search logs."""
    n = sum(m.bias is None for m in glora_layers(model).values())
    if not n:
        return None
    if get_space(model).bias_free == "exclude":
        return f"{n} adapted layer(s) have no bias: they offer only none for C, D and E (--bias-free exclude)"
    return (
        f"{n} adapted layer(s) have no bias: C and E add one there (--bias-free allow); the export turns on the "
        "config's bias flags that hold it (attention_bias, mlp_bias, ...), or refuses a subnet it cannot hold"
    )


def check_tokenizer(model: nn.Module, tokenizer) -> None:
    """The tokenizer's ids must index the model's embedding table (a larger vocabulary fails deep inside the first
    forward with an IndexError): refused in one line, before any text is tokenized."""
    get = getattr(unwrap(model), "get_input_embeddings", None)
    table = get() if callable(get) else None
    rows = getattr(table, "num_embeddings", None)
    if rows is not None and len(tokenizer) > rows:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but {type(unwrap(model)).__name__} embeds {rows}: it is not "
            "this model's tokenizer (--tokenizer)"
        )


def check_sequence_length(model: nn.Module, max_seq_length: int) -> None:
    """``--max-seq-length`` against the model's positions, before any text is tokenized: beyond a learned position
    table it is refused in one line (the forward would fail deep inside); beyond a rotary model's trained context
    it is allowed, with a warning."""
    limit, hard = position_limit(model)
    if limit is None or max_seq_length <= limit:
        return
    name = type(unwrap(model)).__name__
    if hard:
        raise ValueError(
            f"--max-seq-length {max_seq_length} is longer than {name} takes ({limit} positions); give at most {limit}"
        )
    _logger.warning("--max-seq-length %d is beyond %s's trained context (%d positions)", max_seq_length, name, limit)
