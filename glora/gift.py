"""GIFT generators: one ``(phi, psi)`` pair shared by a group of layers, giving W_uni = W0 + W0·phi·psi.

GIFT (Savadikar et al.) generates a layer's weight update from its pretrained weight, so one small generator
serves many layers. As a GLoRA choice, ``A = gift_r`` uses the first ``r`` columns of ``phi`` / rows of ``psi``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable

import torch
from torch import nn

__all__ = ["GiftGenerator", "GiftBank", "gift_group", "gift_params", "generators_params", "layer_type"]


def gift_params(in_features: int, rank: int) -> int:
    """What a generator used at ``rank`` adds to the paper's "# params": phi (in x r) and psi (r x in), paid once
    per group, at the largest rank any member uses."""
    return 2 * rank * in_features


def generators_params(uses: Iterable[tuple[Hashable, int, int]]) -> int:
    """The generators a subnet uses, in the paper's "# params": ``uses`` holds (group, in_features, rank) for every
    layer whose A is a GIFT choice; each group is paid once, at the largest rank any of its members uses. The one
    rule every count follows (:func:`glora.count_params`, the search's genome)."""
    top: dict[Hashable, tuple[int, int]] = {}
    for group, in_features, rank in uses:
        width, best = top.get(group, (in_features, 0))
        top[group] = (width, max(best, rank))
    return sum(gift_params(width, rank) for width, rank in top.values())


def layer_type(name: str) -> str:
    """A layer name with its numeric parts wildcarded: ``blocks.3.attn.qkv`` -> ``blocks.*.attn.qkv`` (the layers
    one GIFT generator serves under ``type`` sharing, and one bar of the per-type parameter plot)."""
    return ".".join("*" if part.isdigit() else part for part in name.split("."))


def gift_group(name: str, in_features: int, sharing: str) -> str:
    """Name of the generator group a layer belongs to.

    ``type``: numeric name parts wildcarded (``blocks.3.attn.qkv`` -> ``blocks.*.attn.qkv``), split by input
    width when one pattern covers layers of several widths (Swin stages); ``width``: input width only;
    ``layer``: the layer itself.
    """
    if sharing == "layer":
        return name
    if sharing == "width":
        return f"in={in_features}"
    if sharing == "type":
        return f"{layer_type(name)}[in={in_features}]"
    raise ValueError(f"gift_sharing must be one of type, width, layer; got {sharing!r}")


class GiftGenerator(nn.Module):
    """``phi`` (in x G) and ``psi`` (G x in); psi starts at zero so the generated update starts at zero.

    phi gets nn.Linear's default init (GIFT's two plain linear layers), psi zeros as LoRA's up factor. The generator
    holds parameters only: ``W0 phi psi`` is one term of the formula (:func:`glora.formula.uni_weight`), so training,
    folding and export form it in the one place.
    """

    def __init__(
        self,
        in_features: int,
        rank: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.rank = rank
        self.phi = nn.Parameter(torch.empty(in_features, rank, device=device, dtype=dtype))
        self.psi = nn.Parameter(torch.zeros(rank, in_features, device=device, dtype=dtype))
        bound = 1.0 / math.sqrt(in_features)
        nn.init.uniform_(self.phi, -bound, bound)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, rank={self.rank}"


class GiftBank(nn.Module):
    """All generators of a model, registered once at the model root so each is saved and optimised once."""

    def __init__(self) -> None:
        super().__init__()
        self.generators = nn.ModuleList()
        self.groups: list[str] = []

    def get_or_create(
        self, group: str, in_features: int, rank: int, like: torch.Tensor, dtype: torch.dtype | None = None
    ) -> GiftGenerator:
        if group in self.groups:
            return self.generators[self.groups.index(group)]  # type: ignore[return-value]
        gen = GiftGenerator(in_features, rank, device=like.device, dtype=dtype or like.dtype)
        self.generators.append(gen)
        self.groups.append(group)
        return gen

    def get_extra_state(self) -> dict[str, list[str]]:
        # Saved with the state dict so loading into a model grouped differently fails loudly.
        return {"groups": list(self.groups)}

    def set_extra_state(self, state: dict[str, list[str]]) -> None:
        groups = list(state.get("groups", [])) if isinstance(state, dict) else None
        if groups != self.groups:
            raise ValueError(f"GIFT generator groups differ: checkpoint has {groups}, this model has {self.groups}")

    def extra_repr(self) -> str:
        return f"groups={self.groups}"
