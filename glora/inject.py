"""Turn a pretrained model into a GLoRA supernet: wrap target linear layers, freeze the backbone.

Works on any ``nn.Module``; timm models get their classifier head(s) found from ``pretrained_cfg``, transformers
models theirs by name (``classifier``, ``score``, ``qa_outputs``) and their output layer (``lm_head``) from
``get_output_embeddings`` (never adapted, kept frozen).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .config import SUPPORT_DTYPES, AdapterConfig
from .families import Switch, calls_layers_itself, forward_source, same_math_linear, switch_for
from .gift import GiftBank, gift_group
from .layer import GLoRALinear, adaptable, io_features, storage_shapes
from .paths import Execution, make_path
from .quantized import dense_dtype, keep_trainable_layout, quantized_weight, unsupported_reason
from .space import Kind, SearchSpace

__all__ = [
    "inject",
    "supernet_size",
    "target_names",
    "glora_layers",
    "require_layers",
    "get_space",
    "get_adapter_config",
    "head_names",
    "set_execution",
    "find_in_place_edits",
    "GIFT_ATTR",
]

_logger = logging.getLogger(__name__)

GIFT_ATTR = "glora_gift"  # where the shared GIFT generators live on the model root
_LAYERS_ATTR = "_glora_layers"  # the injected model's layers, in order (a plain attribute: never saved or moved)
_CONFIG_ATTR = "_glora_config"  # the AdapterConfig it was injected with, heads resolved


class _LayerIndex(dict):
    """The injected model's layers by name, kept at its root. A copy of the model (``copy.deepcopy``, which
    :func:`glora.fold` uses to build the plain model) does not inherit it: the copy's layers are found afresh."""

    def __deepcopy__(self, memo: dict) -> None:
        return None


# Fallback head names for non-timm models, by priority; the first group present wins. score / qa_outputs: the
# new task layers of transformers' ForSequenceClassification (decoders) and ForQuestionAnswering models.
_HEAD_ATTRS = (("head", "head_dist"), ("classifier",), ("score",), ("qa_outputs",), ("fc",), ("last_linear",))


def inject(
    model: nn.Module,
    config: AdapterConfig | SearchSpace,
    targets: str | Sequence[str] | None = None,
    *,
    heads: Sequence[str] | None = None,
) -> nn.Module:
    """Wrap target linear layers of ``model`` in place with :class:`GLoRALinear` and freeze the backbone.

    Args:
        model: a pretrained model (timm or any ``nn.Module``).
        config: an :class:`AdapterConfig` (space, targets, heads), or just the search space every adapted layer
            offers, with ``targets`` and ``heads`` given beside it.
        targets: ``None`` (or PEFT's ``"all-linear"``) = every linear layer except the classifier head(s) and the
            model's output layer (a causal LM's ``lm_head``); a string = regex that must match the whole layer
            name; a list = layer-name suffixes (``["qkv", "fc1"]``, ``["q_proj", "v_proj"]``). Linear layers are
            ``nn.Linear`` and transformers' GPT-2 style ``Conv1D`` (adapted as the linear map it is; folding
            gives back a ``Conv1D``).
        heads: names of the classifier head module(s); found automatically for timm models
            (``pretrained_cfg["classifier"]``) or from common names (head, classifier, fc, ...).

    Returns:
        ``model`` itself. Only the support tensors, the GIFT generators and the head(s) require grad.

    Example:
        >>> import timm, glora
        >>> model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10)
        >>> model = glora.inject(model, glora.SearchSpace(lora_ranks=(8, 4)))
        >>> len(glora.glora_layers(model))
        48
    """
    config = _as_config(config, targets, heads)
    if any(isinstance(m, GLoRALinear) for m in model.modules()):
        raise ValueError("model already holds GLoRA layers; inject once per model")
    heads = _resolve_heads(model, config.heads)
    plan = _plan(model, config.targets, heads)
    names = plan.names
    _check_ranks(model, names, config.space)
    _check_heads_trainable(model, heads)
    keep_trainable_layout(model)  # (bitsandbytes' CPU repacking would zero every gradient through a 4-bit layer)
    dtype = None if config.support_dtype is None else SUPPORT_DTYPES[config.support_dtype]
    plan.apply(model)
    bank = _wrap(model, config.space, names, plan.edited_in_place, dtype)
    _freeze_backbone(model, bank, heads)
    # Listed at the root for glora_layers (walking every module costs about a millisecond on a ViT, each time).
    model.__dict__[_LAYERS_ATTR] = _LayerIndex((m.name, m) for m in model.modules() if isinstance(m, GLoRALinear))
    model.__dict__[_CONFIG_ATTR] = AdapterConfig(config.space, config.targets, tuple(heads), config.support_dtype)
    _logger.debug("GLoRA: adapted %d linear layers; heads kept trainable: %s", len(names), ", ".join(heads) or "none")
    return model


def _check_heads_trainable(model: nn.Module, heads: Sequence[str]) -> None:
    """A head trains in full: one stored quantized cannot (its weight is packed integers)."""
    for h in heads:
        for n, p in model.get_submodule(h).named_parameters():
            if not p.is_floating_point():
                raise ValueError(
                    f"head {h!r} is quantized ({h}.{n} holds {str(p.dtype).removeprefix('torch.')}) but a head trains "
                    "in full: load the model with the head left out of quantization (transformers: "
                    f"BitsAndBytesConfig(llm_int8_skip_modules=[{h.rsplit('.', 1)[-1]!r}]))"
                )


def _as_config(
    config: AdapterConfig | SearchSpace, targets: str | Sequence[str] | None, heads: Sequence[str] | None
) -> AdapterConfig:
    if isinstance(config, SearchSpace):
        return AdapterConfig(config, targets, heads)
    if not isinstance(config, AdapterConfig):
        raise TypeError(f"config must be a glora.AdapterConfig or glora.SearchSpace, got {type(config).__name__}")
    if targets is not None or heads is not None:
        raise TypeError("give targets and heads inside the AdapterConfig, not beside it")
    return config


def _check_ranks(model: nn.Module, names: Sequence[str], space: SearchSpace) -> None:
    """A LoRA rank above a layer's min(in, out), or a GIFT rank above its input width, adds parameters without
    adding anything the layer can express. Past every adapted layer's limit it is refused (before anything is
    allocated, naming the allowed range); past some layers' limits it is a warning naming them."""
    layers = {n: model.get_submodule(n) for n in names}
    checks = (
        (
            "LoRA",
            max(space.max_rank("A"), space.max_rank("B")),
            "min(in, out)",
            lambda m: min(io_features(m)),
        ),
        ("GIFT", space.max_rank("A", Kind.GIFT), "the input width", lambda m: io_features(m)[0]),
    )
    for what, rank, bound, limit_of in checks:
        over = [n for n, m in layers.items() if rank > limit_of(m)]
        if not over:
            continue
        widest = max(layers, key=lambda n: limit_of(layers[n]))
        if len(over) == len(layers):
            m = layers[widest]
            raise ValueError(
                f"{what} rank {rank} exceeds {bound} of every adapted layer (largest: {limit_of(m)}, layer "
                f"{widest!r}, {'->'.join(map(str, io_features(m)))}); allowed {what} ranks here: 1..{limit_of(m)}"
            )
        shown = ", ".join(f"{n!r} ({limit_of(layers[n])})" for n in over[:3]) + (", ..." if len(over) > 3 else "")
        warnings.warn(
            f"GLoRA: {what} rank {rank} exceeds {bound} of {len(over)} adapted layer(s): {shown}; there it adds "
            "parameters but no expressiveness",
            stacklevel=3,
        )


def supernet_size(
    model: nn.Module,
    config: AdapterConfig | SearchSpace,
    targets: str | Sequence[str] | None = None,
    *,
    heads: Sequence[str] | None = None,
) -> int:
    """Trainable elements :func:`inject` would give ``model`` (supports at their largest ranks, GIFT generators,
    heads), counted without allocating anything: check a space's size before building it.

    Raises the same errors as :func:`inject` (no target matched, a rank no adapted layer can use).
    """
    config = _as_config(config, targets, heads)
    head_list = _resolve_heads(model, config.heads)
    names = target_names(model, config)
    space = config.space
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _check_ranks(model, names, space)
    total, groups = 0, {}
    for name in names:
        base = model.get_submodule(name)
        n_in, n_out = io_features(base)
        shapes = storage_shapes(space.for_layer(base.bias is not None), n_in, n_out)
        total += sum(math.prod(shape) for shape in shapes.values() if shape)
        if space.offers("A", Kind.GIFT):
            groups[gift_group(name, n_in, space.gift_sharing)] = n_in
    total += sum(2 * n_in * space.max_rank("A", Kind.GIFT) for n_in in groups.values())
    total += sum(p.numel() for h in head_list for p in model.get_submodule(h).parameters())
    return total


def target_names(
    model: nn.Module,
    config: AdapterConfig | SearchSpace,
    targets: str | Sequence[str] | None = None,
    *,
    heads: Sequence[str] | None = None,
) -> list[str]:
    """The layers :func:`inject` would adapt, in model order, without wrapping anything: decide per layer (its
    width, whether it has a bias) before building the supernet. Raises inject's error when no target matches."""
    config = _as_config(config, targets, heads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # inject will say which layers it skips
        return _plan(model, config.targets, _resolve_heads(model, config.heads)).names


def _wrap(
    model: nn.Module, space: SearchSpace, names: list[str], edited_in_place: set[str], dtype: torch.dtype | None
) -> GiftBank | None:
    """Replace each named linear by a GLoRALinear around it (supports in ``dtype``; None: the weight's); the GIFT
    generators go to one bank at the root."""
    bank: GiftBank | None = None
    if space.offers("A", Kind.GIFT):
        bank = GiftBank()
        model.add_module(GIFT_ATTR, bank)
    gift_rank = space.max_rank("A", Kind.GIFT)
    model_dtype = None
    for name in names:
        parent, child = _parent_of(model, name)
        base = getattr(parent, child)
        if model_dtype is None and not base.weight.is_floating_point():  # a quantized base: its dense dtype
            model_dtype = dense_dtype(model)
        gift = None
        if bank is not None:
            n_in = io_features(base)[0]
            group = gift_group(name, n_in, space.gift_sharing)
            q = quantized_weight(base, model_dtype)
            gift = bank.get_or_create(group, n_in, gift_rank, base.weight, dtype=dtype or (q.dtype if q else None))
        layer = GLoRALinear(
            base, space.for_layer(base.bias is not None), gift=gift, name=name, dtype=dtype, model_dtype=model_dtype
        )
        layer.output_edited_in_place = name in edited_in_place
        setattr(parent, child, layer)
    return bank


def _freeze_backbone(model: nn.Module, bank: GiftBank | None, heads: list[str]) -> None:
    """Only the support tensors, the GIFT generators and the heads train; the layers share one path object."""
    model.requires_grad_(False)
    layers = glora_layers(model).values()
    for layer in layers:
        for p in layer.support_params():
            p.requires_grad_(True)
    _share_path(layers, Execution())
    if bank is not None:
        bank.requires_grad_(True)
    for h in heads:
        model.get_submodule(h).requires_grad_(True)


def set_execution(
    model: nn.Module, *, path: str | None = None, forms: str | None = None, scale_guard: float | None = None
) -> Execution:
    """Change how ``model``'s GLoRA layers run (see :class:`glora.paths.Execution`); returns the new setting.

    Example:
        >>> glora.set_execution(model, path="static")  # eager, but the graph torch.compile traces
    """
    layers = require_layers(model).values()
    current = next(iter(layers)).execution
    changes = {"path": path, "forms": forms, "scale_guard": scale_guard}
    new = dataclasses.replace(current, **{k: v for k, v in changes.items() if v is not None})
    _share_path(layers, new)
    return new


def _share_path(layers, execution: Execution) -> None:
    """One path object for all of a model's layers (the manual path's scale guard: one device read per step)."""
    layers = list(layers)
    path = make_path(execution, layers)
    for layer in layers:
        layer.use_path(path)


def find_in_place_edits(model: nn.Module, run: Callable[[], object]) -> list[str]:
    """Run ``run()`` (one forward of ``model``) and mark the GLoRA layers whose output the model then edits in place
    (Falcon's ``mlp_output += attention_output``), so the manual path hands them a copy: it keeps a view of its
    output for the backward, which such an edit would corrupt (autograd refuses it). Source scanning finds the
    BEiT-style cases at inject time; this finds the rest by watching each output's version counter.

    ``run`` is called under ``no_grad``, in eval mode (frozen batch-norm statistics stay as they are) and with the
    random state restored afterwards, so a training run draws the same numbers with or without the check.
    Returns the names of the layers marked.
    """
    layers = glora_layers(model)
    seen: dict[str, tuple[torch.Tensor, int]] = {}

    def watch(layer: GLoRALinear, _inputs, output) -> None:
        if isinstance(output, torch.Tensor):
            seen.setdefault(layer.name, (output, output._version))

    hooks = [layer.register_forward_hook(watch) for layer in layers.values()]
    training = model.training
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            model.eval()
            run()
    finally:
        model.train(training)
        for h in hooks:
            h.remove()
    edited = [name for name, (out, version) in seen.items() if out._version != version]
    for name in edited:
        layers[name].output_edited_in_place = True
    if edited:
        _logger.info("GLoRA: %d layer output(s) are edited in place by the model (%s%s); those layers return a copy",
                     len(edited), ", ".join(edited[:2]), ", ..." if len(edited) > 2 else "")  # fmt: skip
    return edited


def glora_layers(model: nn.Module) -> dict[str, GLoRALinear]:
    """The supernet layers of ``model`` in model order, keyed by their name at injection time.

    Keys stay the same when the model is later wrapped (DDP's ``module.``, ``torch.compile``).
    """
    found = model.__dict__.get(_LAYERS_ATTR)
    if found is not None:  # the model inject was called on: its layers, listed once (a step asks several times)
        return dict(found)
    return {m.name: m for m in model.modules() if isinstance(m, GLoRALinear)}


def require_layers(model: nn.Module) -> dict[str, GLoRALinear]:
    """:func:`glora_layers`, or ``ValueError`` when there are none: every operation on a supernet starts here."""
    layers = glora_layers(model)
    if not layers:
        raise ValueError("model has no GLoRA layers: call glora.inject(model, space) first")
    return layers


def get_adapter_config(model: nn.Module) -> AdapterConfig:
    """The adapter configuration ``model`` was injected with (its heads as found), for saving the adapter."""
    found = model.__dict__.get(_CONFIG_ATTR)
    if found is not None:
        return found
    layers = require_layers(model)  # a model injected elsewhere (a wrapper around it): what its layers say
    first = next(iter(layers.values()))
    dtype = next((k for k, v in SUPPORT_DTYPES.items() if v == first.code.dtype), None)
    return AdapterConfig(first.space, tuple(layers), tuple(_resolve_heads(model, None)), dtype)


def get_space(model: nn.Module) -> SearchSpace:
    """The search space ``model`` was injected with."""
    return next(iter(require_layers(model).values())).space


def head_names(model: nn.Module) -> list[str]:
    """Names of the classifier head module(s) that injection keeps trainable and never adapts."""
    return _resolve_heads(model, None)


# ---------------------------------------------------------------------- heads
def _resolve_heads(model: nn.Module, heads: Sequence[str] | None) -> list[str]:
    modules = dict(model.named_modules())
    if heads is not None:
        if isinstance(heads, str):
            heads = [heads]
        for h in heads:
            if h not in modules or h == "":
                raise ValueError(f"heads: no module named {h!r} in this model")
        return list(heads)
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    if isinstance(cfg, dict) and cfg.get("classifier"):
        names = cfg["classifier"]
        names = [names] if isinstance(names, str) else list(names)
        found = [n for n in names if n in modules and _has_params(modules[n])]
        if found:
            return found
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        try:
            picked = get_classifier()
        except Exception:
            picked = None
        picked = picked if isinstance(picked, (tuple, list)) else [picked]
        by_id = {id(m): n for n, m in modules.items() if n}
        found = [by_id[id(m)] for m in picked if isinstance(m, nn.Module) and id(m) in by_id and _has_params(m)]
        if found:
            return found
    for group in _HEAD_ATTRS:
        found = [n for n in group if n in model._modules and _has_params(modules[n])]
        if found:
            return found
    return []


def _output_layers(model: nn.Module) -> list[str]:
    """The model's output (unembedding) layer, never adapted and kept frozen: a causal LM's ``lm_head`` (found
    through transformers' ``get_output_embeddings``), which is pretrained, often tied to the input embedding,
    and the largest matrix of the model."""
    get_output = getattr(model, "get_output_embeddings", None)
    if not callable(get_output):
        return []
    try:
        out = get_output()
    except Exception:  # a model that declares the method but has no such layer
        return []
    if not isinstance(out, nn.Module):
        return []
    return [n for n, m in model.named_modules() if m is out and n]


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


# ---------------------------------------------------------------------- targets
@dataclass
class _Plan:
    """What :func:`inject` will do to a model, decided without changing it: the layers to wrap, and the switches
    (:mod:`glora.families`) that make their ancestors call them."""

    names: list[str]
    switches: list[Switch]

    @property
    def edited_in_place(self) -> set[str]:
        """Layers whose output an ancestor will edit in place once its switch is on."""
        return {s.layer for s in self.switches if s.edits_output}

    def apply(self, model: nn.Module) -> None:
        for s in self.switches:
            module = model.get_submodule(s.module) if s.module else model
            if getattr(module, s.attribute) != s.value:
                setattr(module, s.attribute, s.value)
                _logger.info("GLoRA: %s.%s=%r so its layer is called as a module", s.module or "model", s.attribute,
                             s.value)  # fmt: skip


def _plan(model: nn.Module, targets: str | Sequence[str] | None, heads: list[str]) -> _Plan:
    linears = [n for n, m in model.named_modules() if adaptable(m)]
    outputs = set(_output_layers(model))
    targeted = _targeted(targets)
    picked = [n for n in linears if targeted(n)]

    def in_head(n: str) -> bool:
        return any(n == h or n.startswith(h + ".") for h in heads)

    if targets is not None:
        for n in picked:
            if in_head(n):
                warnings.warn(f"GLoRA: not adapting {n!r}: it is a classifier head, trained in full", stacklevel=3)
            elif n in outputs:
                warnings.warn(f"GLoRA: not adapting {n!r}: it is the model's output layer, kept frozen", stacklevel=3)
    picked = [n for n in picked if not in_head(n) and n not in outputs]

    for n, m in model.named_modules():  # a quantized class GLoRA does not support: refused, not skipped in silence
        reason = unsupported_reason(m) if n and targeted(n) and not in_head(n) else None
        if reason:
            raise ValueError(f"cannot adapt {n!r}: {reason}")
    shared = {n for n, c in Counter(_module_ids(model)).items() if c > 1}
    out, switches = [], []
    by_class: Counter[str] = Counter()  # layers skipped because of their class
    for n in picked:
        module = model.get_submodule(n)
        reason = None
        if id(module) in shared:
            reason = "the same module is registered under several names, so one wrapper cannot replace it everywhere"
        elif isinstance(module, nn.Linear) and quantized_weight(module) is None and not _plain_forward(module):
            reason = f"{type(module).__name__} overrides nn.Linear.forward"
            by_class[type(module).__name__] += 1
        else:
            reason = _direct_read(model, n, switches)
        if reason:
            warnings.warn(f"GLoRA: not adapting {n!r}: {reason}", stacklevel=3)
            continue
        out.append(n)
    if not out:
        sample = ", ".join(linears[:6]) + (", ..." if len(linears) > 6 else "")
        shown = "all-linear" if targets is None else targets if isinstance(targets, str) else list(targets)
        skipped = "; ".join(f"{k} x{v}" for k, v in sorted(by_class.items()))
        because = f"; skipped because of their class ({skipped}: a forward GLoRA cannot reproduce)" if skipped else ""
        raise ValueError(
            f"targets {shown!r} matched no adaptable nn.Linear layer (heads excluded: {heads or 'none'}){because}; "
            f"linear layers here: {sample or 'none'}"
        )
    return _Plan(out, switches)


def _targeted(targets: str | Sequence[str] | None) -> Callable[[str], bool]:
    """Whether a module name is one of ``targets`` (None: every name; a regex matching the whole name; name
    suffixes). Targets were checked by AdapterConfig."""
    if targets is None:
        return lambda n: True
    if isinstance(targets, str):
        rx = re.compile(targets)
        return lambda n: rx.fullmatch(n) is not None
    return lambda n: any(n == t or n.endswith("." + t) for t in targets)


def _module_ids(model: nn.Module) -> list[int]:
    return [id(m) for _, m in model.named_modules(remove_duplicate=False)]


def _plain_forward(module: nn.Module) -> bool:
    forward = type(module).forward
    if forward is nn.Linear.forward or same_math_linear(type(module)):  # FalconLinear: glora.families
        return True
    try:
        from timm.layers import Linear as TimmLinear  # same math; casts only under torchscript
    except ImportError:  # pragma: no cover - timm is a dependency
        return False
    return forward is TimmLinear.forward


def _parent_of(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def _direct_read(model: nn.Module, name: str, switches: list[Switch]) -> str | None:
    """Why wrapping ``name`` would be bypassed (an ancestor reads its weight itself), or None.

    Scans the source of each ancestor's ``forward`` and the methods it calls for ``self.<path>.weight``. Known
    harmless cases are the families of :mod:`glora.families`: an ancestor that calls its layers as configured (Bloom
    without tensor-parallel emulation), or one with a switch that makes it call the layer (timm's
    ``qkv_bias_separate``; the switch is added to ``switches`` for :func:`inject` to apply).
    """
    parts = name.split(".")
    for depth in range(len(parts) - 1, -1, -1):
        ancestor_name = ".".join(parts[:depth])
        ancestor = model.get_submodule(ancestor_name) if ancestor_name else model
        rel = ".".join(parts[depth:])
        source = forward_source(type(ancestor))
        if not re.search(r"self\." + re.escape(rel) + r"\.(weight|bias)\b", source):
            continue
        if calls_layers_itself(ancestor):
            continue
        switch = switch_for(ancestor, ancestor_name, rel) if depth == len(parts) - 1 else None
        if switch is not None:
            switches.append(switch)
            continue
        where = ancestor_name or "the model root"
        return f"{where} ({type(ancestor).__name__}) reads its weight directly, so a wrapper would be bypassed"
    return None
