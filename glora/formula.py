"""The paper's formula, once (Eq. 10, 13, 14): every path that needs ``W_uni`` or ``b_uni`` calls these two functions.

    W_uni = W0 + W0 ⊙ A + B          (A = gift_r: W0 + W0·phi·psi + B)
    b_uni = b0 + W0 C + D ⊙ b0 + E

A layer hands its supports over as :class:`Terms`: low-rank factor pairs and row terms, each ``None`` when absent.
The eager paths pass only the terms the current choice uses (slices of the entangled storages); the static path
passes every term, masked by the choice's code, so one graph computes every subnet; folding passes either, also
for a stack of same-shape layers at once (every function broadcasts over leading dimensions).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch

from .space import SUPPORTS, Choice, Kind

__all__ = ["Terms", "choice_terms", "uni_weight", "uni_bias"]


class Terms(NamedTuple):
    """One layer's supports as tensors (``None``: absent). Shapes for a layer ``out x in`` (plus any leading stack
    dimensions): A = ``a_down @ a_up`` (out x r, r x in) ``+ a_row`` (out x 1, or a 0-dim scalar); GIFT
    ``gift_phi`` (in x r), ``gift_psi`` (r x in); B like A; ``c`` (in), ``d`` and ``e`` (out, or 0-dim scalars)."""

    a_down: torch.Tensor | None = None
    a_up: torch.Tensor | None = None
    a_row: torch.Tensor | None = None
    gift_phi: torch.Tensor | None = None
    gift_psi: torch.Tensor | None = None
    b_down: torch.Tensor | None = None
    b_up: torch.Tensor | None = None
    b_row: torch.Tensor | None = None
    c: torch.Tensor | None = None
    d: torch.Tensor | None = None
    e: torch.Tensor | None = None


def choice_terms(p: Mapping[str, torch.Tensor | None], choice: Sequence[Choice]) -> Terms:
    """The terms ``choice`` uses: slices of the entangled storages ``p`` (a layer's ``Ad, Au, ..., E`` and GIFT's
    ``phi``, ``psi``), ``None`` for the rest. ``choice`` holds the choices of A, B, ... in order (a prefix will do:
    the manual path passes only A and B). The one place a choice turns into tensor slices."""
    t: dict[str, torch.Tensor] = {}
    for support, c in zip(SUPPORTS, choice):
        kind = c.kind
        if kind is Kind.NONE:
            continue
        if support in "AB":
            low = support.lower()
            down = p[f"{support}d"]
            if kind is Kind.LORA:
                t[f"{low}_down"], t[f"{low}_up"] = down[:, : c.rank], p[f"{support}u"][: c.rank]
            elif kind is Kind.GIFT:
                t["gift_phi"], t["gift_psi"] = p["phi"][:, : c.rank], p["psi"][: c.rank]
            else:
                t[f"{low}_row"] = down[:, :1] if kind is Kind.VECTOR else down[0, 0]
        elif support == "C":
            cd = p["Cd"]
            t["c"] = (cd[:, : c.rank] @ p["Cu"][: c.rank]).squeeze(-1) if kind is Kind.LORA else cd[:, 0]
        else:
            v = p[support]
            t[support.lower()] = v if kind is Kind.VECTOR else v[0]
    return Terms(**t)


def uni_weight(w0: torch.Tensor, t: Terms) -> torch.Tensor:
    """``W_uni = W0 + W0 ⊙ A + W0 phi psi + B`` as a dense tensor shaped like ``w0``.

    Fused ops where they apply (``addcmul``, ``addmm``): each is one pass over a weight-sized tensor.
    """
    scale = None
    if t.a_down is not None:
        scale = t.a_down @ t.a_up
    if t.a_row is not None:
        scale = t.a_row if scale is None else scale + t.a_row
    w = w0 if scale is None else torch.addcmul(w0, w0, scale)
    if t.gift_phi is not None:
        w = w + (w0 @ t.gift_phi) @ t.gift_psi
    if t.b_down is not None:
        w = torch.addmm(w, t.b_down, t.b_up) if w.dim() == 2 else w + t.b_down @ t.b_up
    if t.b_row is not None:
        w = w + t.b_row
    return w


def uni_bias(b0: torch.Tensor | None, w0: torch.Tensor, t: Terms) -> torch.Tensor | None:
    """``b_uni = b0 + D ⊙ b0 + W0 C + E``; ``None`` when there is no bias and neither C nor E makes one.

    D only scales an existing bias: on a bias-free layer it is ignored (and counts no parameters).
    """
    out = b0
    if b0 is not None and t.d is not None:
        out = torch.addcmul(b0, b0, t.d)
    if t.c is not None:
        wc = (w0 @ t.c.unsqueeze(-1)).squeeze(-1)
        out = wc if out is None else out + wc
    if t.e is not None:
        shift = t.e.expand(w0.shape[:-1])
        out = shift if out is None else out + shift
    return out
