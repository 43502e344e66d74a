"""The weight-entangled GLoRA supernet layer around a frozen ``nn.Linear`` (paper Eq. 10, 13, 14).

    f(x)  = W_uni x + b_uni
    W_uni = W0 + W0 ⊙ A + B          (A = gift_r: W0 + W0·phi·psi + B)
    b_uni = b0 + W0 C + D ⊙ b0 + E

Each support has ONE storage at the largest rank of the space; every choice is a slice of it, so training a
small choice also trains the matching part of the large ones (weight entanglement). Storage names and shapes
follow the paper's reference code (``Ad, Au, Bd, Bu, Cd, Cu, D, E``) so its checkpoints load as they are.

The current choice is held twice: as a :class:`LayerChoice` (what the eager paths branch on) and as a small
``code`` buffer of rank masks and kind gates (what the static path, :mod:`glora.paths.static`, multiplies by).
``set_choice`` writes both, in place, so a compiled model computes every subnet with one graph and switching
subnets never recompiles.

How the layer runs is a per-model setting (:class:`glora.paths.Execution`, changed with :func:`glora.set_execution`)
naming a path from :mod:`glora.paths` (``auto``, ``manual``, ``static``, ``autograd``); a compiled model always runs the
static path. :meth:`GLoRALinear.merge` / :meth:`~GLoRALinear.unmerge` put a layer in and out of folded mode (its
``W_uni``, ``b_uni`` cached: how the search evaluates a candidate), as PEFT's merge/unmerge do.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import nn

from . import paths
from .formula import Terms, choice_terms, uni_bias, uni_weight
from .gift import GiftGenerator, gift_group
from .paths import Execution
from .paths.quantized import quantized_forward
from .paths.static import code_layout, encode_choice, encoded_values, static_forward
from .quantized import QuantizedWeight, quantized_weight
from .space import SUPPORTS, Choice, Kind, LayerChoice, SearchSpace

__all__ = [
    "GLoRALinear",
    "storage_shapes",
    "adaptable",
    "io_features",
]


def _is_conv1d(module: nn.Module) -> bool:
    """A transformers ``Conv1D`` (GPT-2, GPT-J's ancestors): a linear map with its weight stored (in, out). Known by
    its shape contract, so the core needs no transformers import."""
    weight = getattr(module, "weight", None)
    return (
        type(module).__name__ == "Conv1D"
        and isinstance(weight, torch.Tensor)
        and weight.dim() == 2
        and getattr(module, "nf", None) == weight.shape[1]
    )


def adaptable(module: nn.Module) -> bool:
    """Whether GLoRA can wrap ``module``: an ``nn.Linear`` (or subclass, bitsandbytes' quantized ones included) or a
    transformers ``Conv1D``."""
    return isinstance(module, nn.Linear) or _is_conv1d(module)


def io_features(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of an adaptable layer (:func:`adaptable`)."""
    if _is_conv1d(module):
        n_in, n_out = module.weight.shape
        return int(n_in), int(n_out)
    return module.in_features, module.out_features


def _linear_of_conv1d(conv: nn.Module) -> nn.Linear:
    """The nn.Linear computing what ``conv`` computes (its weight transposed once; the bias shared)."""
    n_in, n_out = conv.weight.shape
    linear = nn.Linear(n_in, n_out, bias=False, device="meta")
    linear.weight = nn.Parameter(conv.weight.detach().t().contiguous(), requires_grad=False)
    linear.bias = conv.bias
    return linear


_SUPPORT_TENSORS = ("Ad", "Au", "Bd", "Bu", "Cd", "Cu", "D", "E")


def storage_shapes(space: SearchSpace, in_features: int, out_features: int) -> dict[str, tuple[int, ...] | None]:
    """The shape of each support storage a layer of ``space`` holds (``None``: absent), GIFT generators excluded.

    A, B: down factor (out x R) whose first column is the vector and first element the scalar choice; up factor
    (R x in) only when a lora choice exists. C: (in x R) and (R x 1). D, E: (out,). R is the largest rank.
    """
    shapes: dict[str, tuple[int, ...] | None] = {}
    for s in ("A", "B"):
        rank = space.max_rank(s)
        width = max(rank, int(space.offers(s, Kind.VECTOR, Kind.SCALAR)))
        shapes[f"{s}d"] = (out_features, width) if width else None
        shapes[f"{s}u"] = (rank, in_features) if rank else None
    rank = space.max_rank("C")
    width = max(rank, int(space.offers("C", Kind.VECTOR)))
    shapes["Cd"] = (in_features, width) if width else None
    shapes["Cu"] = (rank, 1) if rank else None
    for s in ("D", "E"):
        shapes[s] = (out_features,) if space.offers(s, Kind.VECTOR, Kind.SCALAR) else None
    return shapes


@functools.lru_cache(maxsize=4096)
def _unused_names(choice: LayerChoice, has_bias: bool, present: tuple[bool, ...]) -> tuple[str, ...]:
    """Names of the support tensors a choice leaves unread (cached: it runs every training step)."""
    used = set()
    for s, c in zip(SUPPORTS, choice):
        if c.kind in (Kind.NONE, Kind.GIFT) or (s == "D" and not has_bias):
            continue
        used |= {s} if s in "DE" else ({f"{s}d", f"{s}u"} if c.kind is Kind.LORA else {f"{s}d"})
    return tuple(n for n, here in zip(_SUPPORT_TENSORS, present) if here and n not in used)


class GLoRALinear(nn.Module):
    """Supernet layer: a frozen linear map plus support tensors A-E, computing the subnet it is set to.

    Args:
        base: the pretrained layer; its ``weight`` / ``bias`` Parameters are reused (not copied) and frozen,
            so the backbone's state-dict keys stay ``<name>.weight`` / ``<name>.bias``.
        space: the choices each support may take; storages are sized for its largest ranks.
        gift: the shared GIFT generator of this layer's group, when the space offers ``gift_<r>`` for A.
        name: the layer's qualified name in the model, for error messages.
        execution: how the layer runs (see :class:`Execution`).
        dtype: the supports' dtype (default: the weight's). When it differs (fp32 supports over a bf16 backbone),
            ``W_uni`` / ``b_uni`` are computed in the supports' dtype and cast to the weight's for the matmul, so
            the layer runs at the backbone's precision and the trained tensors keep theirs.
        model_dtype: the dense dtype of a quantized base that does not record it (an 8-bit layer without a bias).

    A quantized ``base`` (bitsandbytes 4-bit or 8-bit, :mod:`glora.quantized`) keeps its weight quantized: ``weight``
    is the quantized tensor, :meth:`w0` dequantizes it when a term needs it, and the layer runs on the quantized path
    (:mod:`glora.paths.quantized`) whatever the model's setting.
    """

    def __init__(
        self,
        base: nn.Linear,
        space: SearchSpace,
        *,
        gift: GiftGenerator | None = None,
        name: str = "",
        execution: Execution | None = None,
        dtype: torch.dtype | None = None,
        model_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = io_features(base)
        self.space = space
        self.name = name
        # A quantized base: its module is kept (an 8-bit layer's matmul state holds the scales), not registered, so
        # the parameter names stay <name>.weight / <name>.bias; folding writes a plain nn.Linear.
        self.quant: QuantizedWeight | None = quantized_weight(base, model_dtype)
        self.base_class: type[nn.Module] = nn.Linear if self.quant is not None else type(base)
        # GPT-2 style Conv1D (transformers): weight stored (in, out), y = x W + b. Adapted as the linear map it is
        # (weight transposed once here); folding writes a layer of the original class back.
        self.transposed = _is_conv1d(base)
        if self.transposed:
            base = _linear_of_conv1d(base)
        self.register_parameter("weight", base.weight)
        self.register_parameter("bias", base.bias)
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        # Plain attribute, not a submodule: the generator is registered once at the model root (GiftBank).
        object.__setattr__(self, "gift", gift)
        if space.offers("A", Kind.GIFT) and gift is None:
            raise ValueError(f"layer {name!r}: the space offers gift choices for A but no GIFT generator was given")

        like = {"device": base.weight.device, "dtype": dtype or self.weight_dtype}
        # Down factors start at zero (every subnet starts at W0); up factors get Xavier's init, as in the reference.
        for n, shape in storage_shapes(space, self.in_features, self.out_features).items():
            if shape is None:
                data = None
            elif n in ("Au", "Bu", "Cu"):
                data = self._xavier(*shape, like)
            else:
                data = torch.zeros(shape, **like)
            self._param(n, data)
        self.layout = code_layout(space)  # where the code buffer holds each part of the choice
        self._present = tuple(self._parameters[n] is not None for n in _SUPPORT_TENSORS)
        self.register_buffer("code", torch.zeros(self.layout.size, **like), persistent=False)
        self._choice: LayerChoice | None = None
        self._execution = execution or Execution()
        # The path object; a model's layers share one (glora.inject, glora.set_execution), a lone layer makes its own.
        self._path: paths.LayerPath | None = None
        # Folded mode (merge / unmerge): the choice being evaluated and its (W_uni, b_uni), computed on first use.
        self._merged_choice: LayerChoice | None = None
        self._merged_weights: tuple[torch.Tensor, torch.Tensor | None] | None = None

    # Set by inject when the parent adds to this layer's output in place (BEiT-style qkv bias).
    output_edited_in_place: bool = False

    def _param(self, name: str, data: torch.Tensor | None) -> None:
        self.register_parameter(name, nn.Parameter(data) if data is not None else None)

    @staticmethod
    def _xavier(rows: int, cols: int, like: dict) -> torch.Tensor:
        t = torch.empty(rows, cols, **like)
        nn.init.xavier_uniform_(t)
        return t

    # ------------------------------------------------------------------ execution
    @property
    def execution(self) -> Execution:
        """How this layer runs (a per-model setting: change it with :func:`glora.set_execution`)."""
        return self._execution

    @execution.setter
    def execution(self, value: Execution) -> None:
        self._execution, self._path = value, None

    def use_path(self, path: paths.LayerPath) -> None:
        """Run on ``path`` (shared with the model's other layers; its ``execution`` becomes this layer's)."""
        self._execution, self._path = path.execution, path

    @property
    def path(self) -> paths.LayerPath:
        """The path object this layer runs on."""
        if self._path is None:
            self._path = paths.make_path(self._execution, [self])
        return self._path

    # ------------------------------------------------------------------ folded mode
    def merge(self, choice: LayerChoice | None = None) -> None:
        """Enter folded mode for ``choice`` (default: the current one): until :meth:`unmerge` the eager forward is
        one plain linear map with ``(W_uni, b_uni)`` computed on first use. Nothing is written into the frozen
        weights, so unmerging is exact. (A static-path or compiled model reads the codes and ignores this.)"""
        self._merged_choice = choice if choice is not None else self.require_choice()
        self._merged_weights = None

    def unmerge(self) -> None:
        """Leave folded mode (the cached weights are dropped)."""
        self._merged_choice = self._merged_weights = None

    @property
    def is_merged(self) -> bool:
        return self._merged_choice is not None

    def folded_weights(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The merged choice's ``(W_uni, b_uni)``, computed once per :meth:`merge`, without autograd."""
        if self._merged_choice is None:
            raise RuntimeError(f"GLoRA layer {self.name!r} is not merged: call merge() first")
        if self._merged_weights is None:
            with torch.no_grad():
                self._merged_weights = self.merged(self._merged_choice)
        return self._merged_weights

    # ------------------------------------------------------------------ subnet
    @property
    def choice(self) -> LayerChoice | None:
        return self._choice

    @property
    def gift_group(self) -> str | None:
        """The GIFT generator group this layer belongs to (``None`` when the space offers no GIFT choice)."""
        if not self.space.offers("A", Kind.GIFT):
            return None
        return gift_group(self.name, self.in_features, self.space.gift_sharing)

    def set_choice(self, choice: LayerChoice) -> None:
        """Set the subnet this layer computes. ``choice`` must come from this layer's space (see set_subnet)."""
        self._choice = choice
        with torch.no_grad():
            self.code.copy_(encode_choice(self.space, choice))

    @staticmethod
    def set_choices(layers: Sequence[GLoRALinear], choices: Sequence[LayerChoice]) -> None:
        """:meth:`set_choice` for many layers at once: one host-to-device copy per device, then one fused copy into
        the codes (this runs every training step)."""
        groups: dict[tuple[torch.device, torch.dtype, int], list[int]] = {}
        codes = [layer._buffers["code"] for layer in layers]
        for i, layer in enumerate(layers):
            layer.__dict__["_choice"] = choices[i]  # (past nn.Module.__setattr__'s checks: a plain attribute)
            # (codes differ in length where a layer offers less: a bias-free layer under bias_free="exclude")
            groups.setdefault((codes[i].device, codes[i].dtype, codes[i].numel()), []).append(i)
        with torch.no_grad():
            for (device, dtype, _), idx in groups.items():
                values = [v for i in idx for v in encoded_values(layers[i].space, choices[i])]
                staged = torch.tensor(values, dtype=dtype).view(len(idx), -1).to(device, non_blocking=True)
                torch._foreach_copy_([codes[i] for i in idx], list(staged.unbind(0)))

    def support_params(self) -> list[nn.Parameter]:
        """The layer's own trainable tensors (GIFT generators live at the model root)."""
        return [p for n, p in self.named_parameters(recurse=False) if n not in ("weight", "bias")]

    def unused_params(self, choice: LayerChoice | None = None) -> list[nn.Parameter]:
        """The layer's own support tensors ``choice`` (default: the current one) does not read: an eager step leaves
        them without a gradient, the static path gives them zeros. (GIFT generators are shared: see
        :func:`glora.unused_params`.)"""
        choice = choice if choice is not None else self.require_choice()
        params = self._parameters
        return [params[n] for n in _unused_names(choice, self.bias is not None, self._present)]

    # ------------------------------------------------------------------ the supports as terms of the formula
    def terms(self, choice: LayerChoice) -> Terms:
        """The supports ``choice`` uses: slices of the entangled storages, ``None`` for the rest."""
        return choice_terms(self.storages(), choice)

    def storages(self) -> dict[str, torch.Tensor | None]:
        """The support tensors by name (GIFT's ``phi`` / ``psi`` included), as the static path's
        :func:`~glora.paths.static.masked_terms` takes them."""
        gift = self.gift
        return {
            "Ad": self.Ad,
            "Au": self.Au,
            "Bd": self.Bd,
            "Bu": self.Bu,
            "Cd": self.Cd,
            "Cu": self.Cu,
            "D": self.D,
            "E": self.E,
            "phi": None if gift is None else gift.phi,
            "psi": None if gift is None else gift.psi,
        }

    def merged(self, choice: LayerChoice | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(W_uni, b_uni)`` of ``choice`` (default: the current one), in the weight's dtype. Folding uses exactly
        this."""
        return self.uni(self.terms(choice if choice is not None else self.require_choice()))

    @property
    def weight_dtype(self) -> torch.dtype:
        """The frozen weight's dtype as the formula sees it: a quantized weight's dense dtype (the model's)."""
        return self.quant.dtype if self.quant is not None else self.weight.dtype

    def w0(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The frozen weight as a dense tensor (in ``dtype``, default :attr:`weight_dtype`): the weight itself, or a
        quantized one dequantized now (nothing kept)."""
        if self.quant is not None:
            return self.quant.dequantize(dtype)
        return self.weight if dtype is None else self.weight.to(dtype)

    @property
    def mixed_precision(self) -> bool:
        """Whether the supports' dtype differs from the frozen weight's."""
        return self.code.dtype != self.weight_dtype

    def uni(self, t: Terms) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(W_uni, b_uni)`` of the terms ``t``: computed in the supports' dtype, returned in the weight's."""
        w0, b0 = self.w0(), self.bias
        if not self.mixed_precision:
            return uni_weight(w0, t), uni_bias(b0, w0, t)
        dtype = self.code.dtype
        w, b = w0.to(dtype), None if b0 is None else b0.to(dtype)
        w_uni, b_uni = uni_weight(w, t), uni_bias(b, w, t)
        return w_uni.to(w0.dtype), None if b_uni is None else b_uni.to(w0.dtype)

    def count(self, choice: LayerChoice) -> int:
        """Parameters this layer's own supports use for ``choice`` (the paper's "# params"; GIFT counted per group).

        D only scales an existing bias, so on a bias-free layer it is never used and counts 0.
        """
        return sum(self.count_support(s, c) for s, c in zip(SUPPORTS, choice))

    def count_support(self, support: str, choice: Choice) -> int:
        """What one support's ``choice`` adds to :meth:`count` (the count is additive over supports)."""
        out_f, in_f = self.out_features, self.in_features
        if choice.kind is Kind.LORA:
            return choice.rank * (in_f + 1) if support == "C" else choice.rank * (out_f + in_f)
        if support == "D" and self.bias is None:
            return 0
        if choice.kind is Kind.VECTOR:
            return in_f if support == "C" else out_f
        return 1 if choice.kind is Kind.SCALAR else 0

    def require_choice(self) -> LayerChoice:
        """The current choice; a ``RuntimeError`` that says what to call when no subnet is set (every path and
        every fold starts here)."""
        if self._choice is None:
            raise RuntimeError(
                f"GLoRA layer {self.name!r} has no subnet set: call glora.set_subnet(model, subnet) "
                "(or glora.sample_subnet) before running the model"
            )
        return self._choice

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.quant is not None:  # a quantized base: W0 dequantized for the call, whatever the path
            return quantized_forward(self, x)
        # Under torch.compile the static path is traced whatever the setting: it reads the choice from ``code`` (a
        # buffer written in place), so one graph serves every subnet and nothing here is guarded on the choice.
        if torch.compiler.is_compiling():
            return static_forward(self, x)
        path = self._path if self._path is not None else self.path
        if self._merged_choice is not None and path.folds:
            return _FOLDED.forward(self, x)
        return path.forward(self, x)

    def extra_repr(self) -> str:
        choice = "unset" if self._choice is None else " ".join(f"{s}={c.name}" for s, c in zip(SUPPORTS, self._choice))
        quant = "" if self.quant is None else f", quantized={self.quant.scheme}"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}{quant}, choice: {choice}"
        )


_FOLDED = paths.path_class("folded")(Execution())
