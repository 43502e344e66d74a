"""Quantized frozen bases (the QLoRA way): GLoRA layers over bitsandbytes' 4-bit and 8-bit linear layers.

The frozen weight stays quantized in memory. Every term of the formula that needs ``W0`` (the frozen product,
A's ``W0 ⊙ A``, GIFT's ``W0 φ ψ``, C's ``W0 C``) reads a dequantized copy made for the step and dropped after it:
forward dequantizes, computes ``(W_uni, b_uni)`` and one matmul, and keeps only the input; backward dequantizes
again (as bitsandbytes' own 4-bit matmul does) instead of keeping a full-precision weight alive between the two.
So a layer's frozen weight costs its quantized bytes, plus one layer's dense weight while it runs.

Supported: bitsandbytes ``Linear4bit`` (and its ``LinearNF4`` / ``LinearFP4`` aliases; NF4 or FP4, with or without
double quantization, any compute dtype and quant storage) and ``Linear8bitLt`` (int8 weights with row scales, with
or without the outlier threshold). Another quantized linear class (GPTQ, AWQ, HQQ, torchao, bitsandbytes'
``OutlierAwareLinear``) is refused naming its class (:func:`unsupported_reason`); nothing here imports bitsandbytes
unless a model already holds its layers.

Folding (:func:`glora.fold`) writes ``W_uni`` computed from the dequantized ``W0`` into a plain ``nn.Linear`` and
:func:`dequantize_model` turns the layers GLoRA did not adapt into plain ones too: a plain floating-point model, as
PEFT users ``merge_and_unload`` after QLoRA.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ._io import human_size

__all__ = [
    "SUPPORTED",
    "QuantizedWeight",
    "quantized_weight",
    "unsupported_reason",
    "is_quantized_model",
    "quantization_of",
    "frozen_bytes",
    "weight_bytes",
    "describe_quantized",
    "dequantize_model",
    "dense_dtype",
    "keep_trainable_layout",
    "quiet_optional_kernel_warning",
]

SUPPORTED = "bitsandbytes Linear4bit (nf4 or fp4) and Linear8bitLt (int8)"

_BNB_4BIT = ("Linear4bit", "LinearNF4", "LinearFP4")
_BNB_8BIT = ("Linear8bitLt",)
# What the class of a quantized linear from another library tends to be called (GPTQ's QuantLinear, AWQ's
# WQLinear_GEMM, HQQLinear, torchao's, fp8 layers): refused by name rather than skipped in silence.
_QUANTIZED_NAME = re.compile(r"quant|4bit|8bit|int8|int4|nf4|fp4|fp8|gptq|awq|hqq|marlin|exllama|bnb", re.IGNORECASE)


def _bnb_class(module: nn.Module) -> str | None:
    """The bitsandbytes class ``module`` is (or derives from), by name; None for any other module. Read from the MRO,
    so bitsandbytes is never imported here."""
    for cls in type(module).__mro__:
        if cls.__module__.startswith("bitsandbytes") and cls.__name__ in _BNB_4BIT + _BNB_8BIT:
            return cls.__name__
    return None


@dataclass(frozen=True)
class QuantizedWeight:
    """How to read one quantized linear's frozen weight.

    Args:
        module: the bitsandbytes layer (its weight and, for 8-bit, its matmul state hold the quantized data).
        scheme: ``nf4``, ``fp4`` or ``int8``.
        dtype: the dense weight's dtype (what the weight was before quantization: the model's dtype).
        double_quant: 4-bit: the block scales are themselves quantized (QLoRA's double quantization).
    """

    module: nn.Module
    scheme: str
    dtype: torch.dtype
    double_quant: bool = False

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight

    @property
    def quantized(self) -> bool:
        """Whether the weight is stored quantized now (a layer built on the meta device or before its first move to
        a device still holds the float weight)."""
        return not self.module.weight.is_floating_point()

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The dense ``out x in`` weight, made now (nothing kept), in ``dtype`` (default: :attr:`dtype`)."""
        dtype = dtype or self.dtype
        w = self.module.weight
        if w.is_floating_point():
            return w.detach().to(dtype)
        import bitsandbytes.functional as bnb_f

        if self.scheme == "int8":
            cb, scb = _int8_state(self.module)
            return bnb_f.int8_vectorwise_dequant(cb, scb).to(dtype)
        _unpack(w)  # (a layer bitsandbytes repacked for its CPU kernel: see keep_trainable_layout)
        return bnb_f.dequantize_4bit(w.data, w.quant_state).to(dtype)

    @property
    def nbytes(self) -> int:
        """Bytes the frozen weight takes in memory, quantized: packed values plus every scale (and the scales' own
        scales under double quantization)."""
        w = self.module.weight
        total = w.numel() * w.element_size()
        if not self.quantized:
            return total
        if self.scheme == "int8":
            return total + _int8_state(self.module)[1].nbytes
        state = w.quant_state
        total += _nbytes(state.absmax) + _nbytes(getattr(state, "code", None))
        nested = getattr(state, "state2", None)
        if nested is not None:
            total += _nbytes(nested.absmax) + _nbytes(getattr(nested, "code", None))
            total += _nbytes(getattr(state, "offset", None))
        return total


def _nbytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


def _int8_state(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 values, row scales) of a Linear8bitLt: bitsandbytes moves them from the weight to the layer's matmul
    state on the first forward, so either may hold them."""
    w, state = module.weight, getattr(module, "state", None)
    cb = getattr(state, "CB", None)
    scb = getattr(state, "SCB", None)
    if scb is None:
        scb = getattr(w, "SCB", None)
    if scb is None:
        raise ValueError(f"{type(module).__name__} holds int8 weights without their row scales (SCB)")
    return (w.data if cb is None else cb), scb


def quantized_weight(module: nn.Module, dtype: torch.dtype | None = None) -> QuantizedWeight | None:
    """The :class:`QuantizedWeight` of a supported quantized linear; None for any other module.

    ``dtype``: the dense dtype where the layer does not record it (an 8-bit layer without a bias: the model's).
    """
    name = _bnb_class(module)
    if name is None:
        return None
    w = module.weight
    if name in _BNB_8BIT:
        bias = getattr(module, "bias", None)
        dense = w.dtype if w.is_floating_point() else bias.dtype if bias is not None else dtype or torch.float32
        return QuantizedWeight(module, "int8", dense)
    state = getattr(w, "quant_state", None)
    scheme = getattr(state, "quant_type", None) or getattr(w, "quant_type", None) or getattr(module, "quant_type", None)
    if state is not None and getattr(state, "packing_format_for_cpu", False):  # (see QuantizedWeight.dequantize)
        dense, double = state.original_dtype, bool(state.original_nested)
    elif state is not None:
        dense, double = state.dtype, bool(getattr(state, "nested", False))
    else:
        dense = w.dtype if w.is_floating_point() else dtype or torch.float32
        double = bool(getattr(w, "compress_statistics", False))
    return QuantizedWeight(module, str(scheme or "fp4"), dense, double)


def unsupported_reason(module: nn.Module) -> str | None:
    """Why ``module``, a quantized linear layer GLoRA cannot adapt, is refused (naming its class and what is
    supported); None for a supported one or a module that is not a quantized linear."""
    if _bnb_class(module) is not None:
        return None
    cls = type(module)
    where = f"{cls.__module__}.{cls.__qualname__}"
    weight = getattr(module, "weight", None)
    non_float = isinstance(weight, torch.Tensor) and not weight.is_floating_point()
    packed = any(hasattr(module, a) for a in ("qweight", "qzeros", "W_q"))
    linear_like = isinstance(module, nn.Linear) or (
        isinstance(getattr(module, "in_features", None), int) and isinstance(getattr(module, "out_features", None), int)
    )
    from_bnb = cls.__module__.startswith("bitsandbytes")
    # (an nn.Linear with a floating-point weight is a linear map whatever its name: torch's own
    # NonDynamicallyQuantizableLinear is one)
    named = not isinstance(module, nn.Linear) and _QUANTIZED_NAME.search(cls.__name__) is not None
    if (linear_like or packed) and (non_float or packed or from_bnb or named):
        return f"{where} is a quantized linear class GLoRA cannot adapt (supported: {SUPPORTED})"
    return None


def quiet_optional_kernel_warning() -> None:
    """bitsandbytes tries, when first imported on a CPU with AVX512-BF16, to fetch an optional inference kernel from
    the Hugging Face hub and warns when it cannot (offline). That kernel only serves the repacked layout GLoRA turns
    off (:func:`keep_trainable_layout`), so the warning says nothing about a GLoRA run: silenced for the commands."""
    import logging

    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def _unpack(w: torch.Tensor) -> None:
    """A 4-bit weight bitsandbytes repacked for its CPU inference kernel, back in the layout its autograd matmul and
    ``dequantize_4bit`` read (in place, as bitsandbytes itself does before moving such a weight to a GPU)."""
    state = getattr(w, "quant_state", None)
    if state is not None and getattr(state, "packing_format_for_cpu", False):
        import bitsandbytes.functional as bnb_f

        w.data, w.quant_state = bnb_f._convert_weight_packed_for_cpu_inverse(w.data, state)


def keep_trainable_layout(model: nn.Module) -> int:
    """Stop bitsandbytes from repacking ``model``'s 4-bit weights for its CPU inference kernel (and undo a repacking
    already done); returns how many layers it touched.

    On a CPU with AVX512-BF16, a ``Linear4bit`` that runs once in eval mode without autograd (a validation pass,
    a causality check) repacks its weight in place, and from then on its matmul has no backward: every gradient that
    flows through it is silently zero, in training mode too. :func:`glora.inject` calls this on every model it
    adapts; call it yourself before training a quantized model you evaluated first.
    """
    n = 0
    for _, m in _quantized_modules(model):
        if _bnb_class(m) in _BNB_4BIT:
            _unpack(m.weight)
            if getattr(m, "support_avx512bf16_for_cpu", False):
                m.support_avx512bf16_for_cpu = False
            n += 1
    return n


def _quantized_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for name, m in model.named_modules():
        if _bnb_class(m) is not None:
            yield name, m


def is_quantized_model(model: nn.Module) -> bool:
    """Whether ``model`` holds any supported quantized linear (GLoRA-wrapped or not)."""
    return bool(_quantized_weights(model))


def quantization_of(model: nn.Module) -> dict[str, object] | None:
    """What a model's quantized linears are (``{"scheme": "nf4", "double_quant": True, "layers": 14}``; the first
    layer's settings when several exist), or None for a model without any: recorded beside adapters and exports."""
    found = list(_quantized_weights(model).values())
    if not found:
        return None
    schemes = sorted({q.scheme for q in found})
    return {
        "scheme": schemes[0] if len(schemes) == 1 else "+".join(schemes),
        "double_quant": any(q.double_quant for q in found),
        "dtype": str(found[0].dtype).removeprefix("torch."),
        "layers": len(found),
    }


def _quantized_weights(model: nn.Module) -> dict[int, QuantizedWeight]:
    """Every quantized weight of ``model`` (GLoRA-wrapped or not), by the id of its tensor: what the functions
    above and below read."""
    from .layer import GLoRALinear

    found = {}
    for m in model.modules():
        q = m.quant if isinstance(m, GLoRALinear) else quantized_weight(m)
        if q is not None:
            found[id(q.weight)] = q
    return found


def weight_bytes(model: nn.Module, *, frozen_only: bool = False) -> int:
    """Bytes ``model``'s parameters (only those that do not train, with ``frozen_only``) take in memory, quantized
    weights at their quantized size, scales included: what a memory check must count."""
    quantized = _quantized_weights(model)
    total = 0
    for p in model.parameters():
        if frozen_only and p.requires_grad:
            continue
        q = quantized.get(id(p))
        total += q.nbytes if q is not None else p.numel() * p.element_size()
    return total


def frozen_bytes(model: nn.Module) -> int:
    """Bytes the model's frozen parameters take in memory, quantized weights at their quantized size."""
    return weight_bytes(model, frozen_only=True)


def describe_quantized(model: nn.Module) -> str:
    """One line for a run's log: the quantization, how many layers, and the weights' bytes against a dense base."""
    quantized = _quantized_weights(model)
    if not quantized:
        return "the base is not quantized"
    first = next(iter(quantized.values()))
    dense_layers = sum(q.module.in_features * q.module.out_features * q.dtype.itemsize for q in quantized.values())
    packed = sum(q.nbytes for q in quantized.values())
    info = quantization_of(model) or {}
    double = " with double quantization" if info.get("double_quant") else ""
    rest = weight_bytes(model) - packed
    dtype = str(first.dtype).removeprefix("torch.")
    return (
        f"base quantized by bitsandbytes: {info.get('scheme')}{double}, {len(quantized)} linear layers; the weights "
        f"take {human_size(packed + rest)} ({human_size(dense_layers + rest)} in {dtype}: "
        f"{(packed + rest) / max(dense_layers + rest, 1):.2f}x), the quantized layers {human_size(packed)} "
        f"({packed / max(dense_layers, 1):.2f}x)"
    )


def dequantize_model(model: nn.Module) -> list[str]:
    """Replace every supported quantized linear of ``model`` (in place) by a plain ``nn.Linear`` holding its
    dequantized weight (and bias), in the layer's dense dtype; returns their names. A transformers model also
    forgets its quantization (``config.quantization_config`` and the loader's flags), so ``save_pretrained`` writes
    a plain model."""
    names = []
    for name, module in list(_quantized_modules(model)):
        q = quantized_weight(module, dense_dtype(model))
        assert q is not None
        with torch.no_grad():
            weight = q.dequantize()
            plain = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None, device="meta")
            plain.weight = nn.Parameter(weight, requires_grad=module.weight.requires_grad)
            if module.bias is not None:
                plain.bias = nn.Parameter(module.bias.detach().to(q.dtype), requires_grad=module.bias.requires_grad)
        plain.train(module.training)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, plain)
        names.append(name)
    _forget_quantization(model)
    return names


def dense_dtype(model: nn.Module) -> torch.dtype:
    """The dtype most of the model's floating parameters have (an 8-bit layer's dense dtype when it has no bias)."""
    counts: dict[torch.dtype, int] = {}
    for p in model.parameters():
        if p.is_floating_point():
            counts[p.dtype] = counts.get(p.dtype, 0) + p.numel()
    return max(counts, key=counts.__getitem__) if counts else torch.float32


def _forget_quantization(model: nn.Module) -> None:
    """A transformers model loaded quantized remembers it in its config and in loader flags: drop them so it saves
    and reloads as a plain model (every model that holds the config, wrappers included)."""
    for m in model.modules():
        config = getattr(m, "config", None)
        if config is not None and getattr(config, "quantization_config", None) is not None:
            try:
                del config.quantization_config
            except AttributeError:
                config.quantization_config = None
        for flag in ("is_quantized", "is_loaded_in_4bit", "is_loaded_in_8bit"):
            if getattr(m, flag, False) is True:
                try:
                    setattr(m, flag, False)
                except AttributeError:  # a read-only property derived from the config
                    pass
        if "hf_quantizer" in vars(m):
            m.hf_quantizer = None
        if getattr(m, "quantization_method", None) is not None and "quantization_method" in vars(m):
            del m.quantization_method
