"""Figures of a search: progress per generation, accuracy vs params, the chosen layer x support grid and the
subnet's parameters per layer type.

Each function returns a :class:`matplotlib.figure.Figure` built with the object API (no pyplot, no backend switch,
nothing global touched), so the caller decides where it goes; :func:`png_bytes` renders one for writing.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from glora.space import SUPPORTS, Choice, Kind

__all__ = ["plot_progress", "plot_metric_vs_params", "plot_choices", "plot_params_by_type", "png_bytes"]

# Grid colours of the choice plot, from "nothing" to "most expressive".
_KIND_COLORS: dict[Kind, str] = {
    Kind.NONE: "#f0f0f0",
    Kind.SCALAR: "#c6dbef",
    Kind.VECTOR: "#6baed6",
    Kind.LORA: "#fd8d3c",
    Kind.GIFT: "#74c476",
}


def png_bytes(fig: Figure, dpi: int = 120) -> bytes:
    """The figure as PNG bytes (Agg canvas; works without a display)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def plot_progress(log: Sequence[Mapping[str, Any]], label: str = "validation accuracy") -> Figure:
    """Best-so-far, generation-best and generation-mean values of the search's metric per generation (``label``:
    what the metric is)."""
    fig = Figure(figsize=(6, 3.6))
    ax = fig.subplots()
    gens = [r["generation"] for r in log]
    ax.plot(gens, [r["best"] for r in log], "o-", label="best so far")
    ax.plot(gens, [r["gen_best"] for r in log], "s--", alpha=0.7, label="best of generation")
    ax.plot(gens, [r["gen_mean"] for r in log], "^:", alpha=0.7, label="mean of generation")
    ax.set_xlabel("generation")
    ax.set_ylabel(f"{label} (inherited weights)")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def plot_metric_vs_params(
    points: Sequence[tuple[int, float]],
    front: Sequence[tuple[int, float]],
    pick: tuple[int, float],
    *,
    limits: tuple[float, float] | None = None,
    label: str = "validation accuracy",
) -> Figure:
    """Every evaluated candidate, the Pareto front and the pick (values of the search's metric, ``label``); params in
    thousands."""
    fig = Figure(figsize=(6, 3.6))
    ax = fig.subplots()
    ax.scatter([p / 1e3 for p, _ in points], [a for _, a in points], s=10, alpha=0.35, label="evaluated")
    if front:
        ax.step([p / 1e3 for p, _ in front], [a for _, a in front], where="post", color="C1", label="Pareto front")
    ax.scatter([pick[0] / 1e3], [pick[1]], marker="*", s=220, color="C3", zorder=5, label="pick")
    for x in limits or ():
        if x and x < 1e11:  # (no upper limit is stored as a huge number)
            ax.axvline(x / 1e3, color="grey", ls="--", lw=1)
    ax.set_xlabel("parameters (thousands, paper's # params)")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    return fig


def _label(c: Choice) -> str:
    """Cell text: nothing for none, s / v for scalar / vector, L8 / G4 for ranked kinds."""
    if c.kind.ranked:
        return f"{c.kind.value[0].upper()}{c.rank}"
    return {Kind.SCALAR: "s", Kind.VECTOR: "v"}.get(c.kind, "")


def plot_choices(subnet: Mapping[str, Mapping[str, str]]) -> Figure:
    """Layer x support grid of the chosen choices (like the paper's Fig. 4)."""
    kinds = list(_KIND_COLORS)
    layers = list(subnet)
    parsed = [[Choice.parse(subnet[n][s]) for s in SUPPORTS] for n in layers]
    fig = Figure(figsize=(4.2, 0.6 + 0.22 * len(layers)))
    ax = fig.subplots()
    grid = [[kinds.index(c.kind) for c in row] for row in parsed]
    ax.imshow(grid, cmap=ListedColormap(list(_KIND_COLORS.values())), vmin=0, vmax=len(kinds) - 1, aspect="auto")
    for i, row in enumerate(parsed):
        for j, c in enumerate(row):
            ax.text(j, i, _label(c), ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(SUPPORTS)), SUPPORTS)
    ax.set_yticks(range(len(layers)), layers, fontsize=6)
    ax.xaxis.tick_top()
    handles = [Rectangle((0, 0), 1, 1, color=c) for c in _KIND_COLORS.values()]
    ax.legend(handles, [k.value for k in kinds], loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=7, frameon=False)
    return fig


_SUPPORT_COLORS = {"A": "#1f77b4", "B": "#ff7f0e", "C": "#2ca02c", "D": "#9467bd", "E": "#8c564b", "gift": "#bcbd22"}


def plot_params_by_type(by_type: Mapping[str, Mapping[str, int]]) -> Figure:
    """Parameters of the chosen subnet per layer type, stacked by support (like the paper's Fig. 3).

    ``by_type`` is :func:`glora.params_by_type`; the total of each bar is written beside it.
    """
    kinds = list(by_type)
    keys = [k for k in _SUPPORT_COLORS if any(by_type[t].get(k, 0) for t in kinds)] or list(SUPPORTS)
    fig = Figure(figsize=(6, 0.9 + 0.45 * len(kinds)))
    ax = fig.subplots()
    left = [0.0] * len(kinds)
    for key in keys:
        values = [by_type[t].get(key, 0) / 1e3 for t in kinds]
        label = "GIFT generator" if key == "gift" else key
        ax.barh(range(len(kinds)), values, left=left, color=_SUPPORT_COLORS[key], label=label)
        left = [a + b for a, b in zip(left, values)]
    for i, total in enumerate(left):
        ax.text(total, i, f" {total:.1f}k", va="center", fontsize=8)
    ax.set_yticks(range(len(kinds)), kinds, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("parameters (thousands, paper's # params)")
    ax.set_xlim(0, max([*left, 1e-3]) * 1.2)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=7, title="support", title_fontsize=7, frameon=False)
    return fig
