"""The static path: the formula over every support the space offers, masked by the layer's ``code`` buffer.

No Python branch depends on the choice and nothing is read on the host, so the same kernels run for every subnet:
this is what ``torch.compile`` traces (whatever the setting) and what CUDA graphs capture. Supports a subnet does
not use get zero gradients.

A layer's choice is held as a small ``code`` vector of rank masks and kind gates (:class:`CodeLayout` says where
each part sits); :func:`masked_terms` multiplies the supports by it. Folding many same-shape layers at once uses the
same masks on stacked tensors (:func:`glora.fold.merged_layers`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from ..formula import Terms
from ..space import SUPPORTS, Kind, LayerChoice, SearchSpace
from . import LayerPath, register_path

__all__ = ["StaticPath", "static_forward", "CodeLayout", "code_layout", "encode_choice", "encoded_values",
           "masked_terms"]  # fmt: skip


def static_forward(layer, x: torch.Tensor) -> torch.Tensor:
    """The layer's output for the choice its ``code`` holds."""
    terms = masked_terms(layer.storages(), layer.code, layer.layout)
    return F.linear(x, *layer.uni(terms))


@register_path
class StaticPath(LayerPath):
    name = "static"
    folds = False  # it reads the choice from the codes: a folded evaluation needs no cached weights

    def forward(self, layer, x: torch.Tensor) -> torch.Tensor:
        return static_forward(layer, x)


class CodeLayout:
    """Where each part of a choice sits in a layer's code vector: rank masks for lora A, gift A, lora B, lora C,
    then one gate per vector/scalar kind. A mask is all zeros when its support is not of that kind."""

    GATES = ("a_vector", "a_scalar", "b_vector", "b_scalar", "c_vector", "d_vector", "d_scalar", "e_vector", "e_scalar")

    def __init__(self, space: SearchSpace) -> None:
        self.ranks = {
            "a": space.max_rank("A"),
            "gift": space.max_rank("A", Kind.GIFT),
            "b": space.max_rank("B"),
            "c": space.max_rank("C"),
        }
        self.slices: dict[str, slice] = {}
        at = 0
        for name, r in self.ranks.items():
            self.slices[name] = slice(at, at + r)
            at += r
        self.gate = {g: at + i for i, g in enumerate(self.GATES)}
        self.size = at + len(self.GATES)
        # Whether A / B have a row term (a vector or scalar choice) at all.
        self.rows = {s: space.offers(s, Kind.VECTOR, Kind.SCALAR) for s in ("A", "B")}

    def encode(self, choice: LayerChoice) -> list[float]:
        code = [0.0] * self.size
        for support, c in zip(SUPPORTS, choice):
            if c.kind.ranked:
                mask = self.slices["gift" if c.kind is Kind.GIFT else support.lower()]
                code[mask.start : mask.start + c.rank] = [1.0] * c.rank
            elif c.kind is not Kind.NONE:
                code[self.gate[f"{support.lower()}_{c.kind.value}"]] = 1.0
        return code


@functools.lru_cache(maxsize=64)
def code_layout(space: SearchSpace) -> CodeLayout:
    """Where each part of a choice sits in the code vectors of ``space``'s layers."""
    return CodeLayout(space)


def encode_choice(space: SearchSpace, choice: LayerChoice) -> torch.Tensor:
    """The code vector of ``choice`` (rank masks and kind gates) that the static path multiplies by (CPU float64)."""
    return torch.tensor(encoded_values(space, choice), dtype=torch.float64)


@functools.lru_cache(maxsize=4096)
def encoded_values(space: SearchSpace, choice: LayerChoice) -> tuple[float, ...]:
    """The code of ``choice`` as plain numbers (cached: supernet training draws from a finite set every step)."""
    return tuple(code_layout(space).encode(choice))


def masked_terms(p: Mapping[str, torch.Tensor | None], code: torch.Tensor, lay: CodeLayout) -> Terms:
    """The static path's terms: every support the space offers, each masked by the choice ``code`` encodes
    (``lay``: the space's code layout, ``code_layout(space)``).

    ``p`` holds a layer's support tensors by name (``Ad``, ``Au``, ..., ``phi``, ``psi``), or same-shape layers'
    tensors stacked along a leading dimension with ``code`` stacked the same way (how folding batches layers).
    """
    r, s = lay.ranks, lay.slices

    def mask(name: str) -> torch.Tensor:  # a rank mask, broadcast over a factor's rows
        return code[..., s[name]].unsqueeze(-2)

    def gate(name: str, trailing: int) -> torch.Tensor:  # a kind gate, broadcast over ``trailing`` dimensions
        g = code[..., lay.gate[name]]
        return g.reshape(g.shape + (1,) * trailing)

    t: dict[str, torch.Tensor] = {}
    Ad, Bd, Cd = p["Ad"], p["Bd"], p["Cd"]
    if r["a"]:
        t["a_down"], t["a_up"] = Ad[..., : r["a"]] * mask("a"), p["Au"]
    if lay.rows["A"]:
        t["a_row"] = Ad[..., :1] * gate("a_vector", 2) + Ad[..., :1, :1] * gate("a_scalar", 2)
    if r["gift"]:
        t["gift_phi"], t["gift_psi"] = p["phi"] * mask("gift"), p["psi"]
    if r["b"]:
        t["b_down"], t["b_up"] = Bd[..., : r["b"]] * mask("b"), p["Bu"]
    if lay.rows["B"]:
        t["b_row"] = Bd[..., :1] * gate("b_vector", 2) + Bd[..., :1, :1] * gate("b_scalar", 2)
    if Cd is not None:
        c = Cd[..., 0] * gate("c_vector", 1)
        if r["c"]:
            c = c + ((Cd[..., : r["c"]] * mask("c")) @ p["Cu"]).squeeze(-1)
        t["c"] = c
    for name in ("D", "E"):
        if p[name] is not None:
            v = p[name]
            t[name.lower()] = v * gate(f"{name.lower()}_vector", 1) + v[..., :1] * gate(f"{name.lower()}_scalar", 1)
    return Terms(**t)
