"""The weight-entangled GLoRA supernet layer around a frozen ``nn.Linear`` (paper Eq. 10, 13, 14).

    f(x)  = W_uni x + b_uni
    W_uni = W0 + W0 ⊙ A + B          (A = gift_r: W0 + W0·phi·psi + B)
    b_uni = b0 + W0 C + D ⊙ b0 + E

Each support has ONE storage at the largest rank of the space; every choice is a slice of it, so training a
small choice also trains the matching part of the large ones (weight entanglement). Storage names and shapes
follow the paper's reference code (``Ad, Au, Bd, Bu, Cd, Cu, D, E``) so its checkpoints load as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .fused import ScaleGuard, fused_linear
from .gift import GiftGenerator
from .space import SUPPORTS, Choice, Kind, LayerChoice, SearchSpace

__all__ = ["GLoRALinear"]


class GLoRALinear(nn.Module):
    """Supernet layer: a frozen linear map plus support tensors A-E, computing the subnet it is set to.

    Args:
        base: the pretrained layer; its ``weight`` / ``bias`` Parameters are reused (not copied) and frozen,
            so the backbone's state-dict keys stay ``<name>.weight`` / ``<name>.bias``.
        space: the choices each support may take; storages are sized for its largest ranks.
        gift: the shared GIFT generator of this layer's group, when the space offers ``gift_<r>`` for A.
        name: the layer's qualified name in the model, for error messages.
    """

    def __init__(
        self,
        base: nn.Linear,
        space: SearchSpace,
        *,
        gift: GiftGenerator | None = None,
        name: str = "",
    ) -> None:
        super().__init__()
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.space = space
        self.name = name
        self.base_class: type[nn.Linear] = type(base)
        self.register_parameter("weight", base.weight)
        self.register_parameter("bias", base.bias)
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        # Plain attribute, not a submodule: the generator is registered once at the model root (GiftBank).
        object.__setattr__(self, "gift", gift)
        if space.offers("A", Kind.GIFT) and gift is None:
            raise ValueError(f"layer {name!r}: the space offers gift choices for A but no GIFT generator was given")

        out_f, in_f = self.out_features, self.in_features
        like = {"device": base.weight.device, "dtype": base.weight.dtype}
        # A, B: down factor (out x R) whose first column is the vector and first element the scalar choice;
        # up factor (R x in) only when a lora choice exists. Zero down factor => every subnet starts at W0.
        for s in ("A", "B"):
            rank = space.max_rank(s)
            width = max(rank, int(space.offers(s, Kind.VECTOR, Kind.SCALAR)))
            self._param(f"{s}d", torch.zeros(out_f, width, **like) if width else None)
            self._param(f"{s}u", self._xavier(rank, in_f, like) if rank else None)
        rank = space.max_rank("C")
        width = max(rank, int(space.offers("C", Kind.VECTOR)))
        self._param("Cd", torch.zeros(in_f, width, **like) if width else None)
        self._param("Cu", self._xavier(rank, 1, like) if rank else None)
        for s in ("D", "E"):
            self._param(s, torch.zeros(out_f, **like) if space.offers(s, Kind.VECTOR, Kind.SCALAR) else None)
        self._choice: LayerChoice | None = None
        # Shared with the model's other GLoRA layers by glora.inject (one device read per step for all of them).
        self.scale_guard = ScaleGuard([self])
        # (W_uni, b_uni) of the current choice while a candidate is evaluated in folded form.
        self.folded: tuple[torch.Tensor, torch.Tensor | None] | None = None

    # Fused training path (glora.fused); False forces the reference autograd path.
    fused: bool = True
    # Set by inject when the parent adds to this layer's output in place (BEiT-style qkv bias).
    output_edited_in_place: bool = False

    def _param(self, name: str, data: torch.Tensor | None) -> None:
        self.register_parameter(name, nn.Parameter(data) if data is not None else None)

    @staticmethod
    def _xavier(rows: int, cols: int, like: dict) -> torch.Tensor:
        t = torch.empty(rows, cols, **like)
        nn.init.xavier_uniform_(t)
        return t

    # ------------------------------------------------------------------ subnet
    @property
    def choice(self) -> LayerChoice | None:
        return self._choice

    def set_choice(self, choice: LayerChoice) -> None:
        """Set the subnet this layer computes. ``choice`` must come from this layer's space (see set_subnet)."""
        self._choice = choice

    def support_params(self) -> list[nn.Parameter]:
        """The layer's own trainable tensors (GIFT generators live at the model root)."""
        return [p for n, p in self.named_parameters(recurse=False) if n not in ("weight", "bias")]

    # ------------------------------------------------------------------ the math, once
    def _scale(self, support: str, c: Choice) -> torch.Tensor:
        """A or B as a tensor broadcastable to out x in (lora: dense; vector: out x 1; scalar: 0-dim)."""
        down, up = getattr(self, f"{support}d"), getattr(self, f"{support}u")
        if c.kind is Kind.LORA:
            return down[:, : c.rank] @ up[: c.rank]
        if c.kind is Kind.VECTOR:
            return down[:, :1]
        return down[0, 0]

    def merged_bias(self, choice: LayerChoice) -> torch.Tensor | None:
        """b_uni = b0 + W0 C + D ⊙ b0 + E, or None when the layer has no bias and C, E are none."""
        b0 = self.bias
        out = b0
        if b0 is not None and choice.D.kind is not Kind.NONE:
            out = b0 + b0 * (self.D if choice.D.kind is Kind.VECTOR else self.D[0])
        c = choice.C
        if c.kind is not Kind.NONE:
            prompt = self.Cd[:, : c.rank] @ self.Cu[: c.rank] if c.kind is Kind.LORA else self.Cd[:, :1]
            wc = F.linear(prompt.squeeze(1), self.weight)
            out = wc if out is None else out + wc
        e = choice.E
        if e.kind is not Kind.NONE:
            shift = self.E if e.kind is Kind.VECTOR else self.E[0].expand(self.out_features)
            out = shift if out is None else out + shift
        return out

    def merged_weight(self, choice: LayerChoice) -> torch.Tensor:
        """W_uni = W0 + W0 ⊙ A + B (A = gift_r: W0 + W0·phi·psi + B) as a dense out x in tensor."""
        w0 = self.weight
        a, b = choice.A, choice.B
        w = w0
        if a.kind is Kind.GIFT:
            w = w0 + self.gift.delta(w0, a.rank)
        elif a.kind is not Kind.NONE:
            w = w0 + w0 * self._scale("A", a)
        if b.kind is not Kind.NONE:
            w = w + self._scale("B", b)
        return w

    def merged(self, choice: LayerChoice | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(W_uni, b_uni)`` of ``choice`` (default: the current one). Folding uses exactly this."""
        choice = choice if choice is not None else self._require_choice()
        return self.merged_weight(choice), self.merged_bias(choice)

    def count(self, choice: LayerChoice) -> int:
        """Parameters this layer's own supports use for ``choice`` (the paper's "# params"; GIFT counted per group).

        D only scales an existing bias, so on a bias-free layer it is never used and counts 0.
        """
        out_f, in_f = self.out_features, self.in_features
        n = 0
        for s, c in zip(SUPPORTS, choice):
            if c.kind is Kind.LORA:
                n += c.rank * (in_f + 1) if s == "C" else c.rank * (out_f + in_f)
            elif c.kind is Kind.VECTOR:
                n += 0 if (s == "D" and self.bias is None) else (in_f if s == "C" else out_f)
            elif c.kind is Kind.SCALAR:
                n += 0 if (s == "D" and self.bias is None) else 1
        return n

    def _require_choice(self) -> LayerChoice:
        if self._choice is None:
            raise RuntimeError(
                f"GLoRA layer {self.name!r} has no subnet set: call glora.set_subnet(model, subnet) "
                "(or glora.sample_subnet) before running the model"
            )
        return self._choice

    # ------------------------------------------------------------------ forward
    # torch.compile traces around this layer: its subnet changes every training step, which would otherwise
    # recompile the graph each time; the rest of the model (attention, norms, activations) still compiles.
    @torch.compiler.disable
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        choice = self._require_choice()
        if self.folded is not None:  # evaluating one candidate: its W_uni, b_uni computed once (see glora.folded)
            return F.linear(x, *self.folded)
        if self.fused:
            y = fused_linear(self, choice, x)
            if y is not None:
                return y
        return self.forward_reference(x)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """Plain-autograd forward, each choice in its cheapest form: only a lora A builds a W-sized product; a
        vector/scalar A scales the outputs, gift acts on the inputs, B's paths act on activations. The fused path
        (glora.fused) is checked against this one; GIFT and rare edge cases run here."""
        choice = self._require_choice()
        a, b = choice.A, choice.B
        bias = self.merged_bias(choice)
        if a.kind is Kind.LORA:
            y = F.linear(x, self.merged_weight(choice._replace(B=Choice(Kind.NONE))), bias)
        elif a.kind is Kind.GIFT:
            y = F.linear(self.gift.transform(x, a.rank), self.weight, bias)
        elif a.kind is Kind.NONE:
            y = F.linear(x, self.weight, bias)
        else:
            y = F.linear(x, self.weight) * (1 + self._scale("A", a).squeeze(-1))
            if bias is not None:
                y = y + bias
        if b.kind is Kind.LORA:
            y = y + F.linear(F.linear(x, self.Bu[: b.rank]), self.Bd[:, : b.rank])
        elif b.kind is not Kind.NONE:
            # A vector/scalar B is constant along the input axis: B x = B[:, 0] * sum(x).
            y = y + x.sum(-1, keepdim=True) * self._scale("B", b).squeeze(-1)
        return y

    def extra_repr(self) -> str:
        choice = "unset" if self._choice is None else " ".join(f"{s}={c.name}" for s, c in zip(SUPPORTS, self._choice))
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, choice: {choice}"
        )
