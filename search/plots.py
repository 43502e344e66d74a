"""PNG plots of a search: progress per generation, accuracy vs params, and the chosen layer x support grid."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from glora import SUPPORTS, Choice, Subnet
from glora._io import atomic_write_bytes

__all__ = ["plot_progress", "plot_accuracy_vs_params", "plot_choices"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    _plt().close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot_progress(log: list[dict[str, Any]], path: Path) -> None:
    """Best-so-far, generation-best and generation-mean validation accuracy per generation."""
    plt = _plt()
    gens = [r["generation"] for r in log]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(gens, [r["best_acc"] for r in log], "o-", label="best so far")
    ax.plot(gens, [r["gen_best_acc"] for r in log], "s--", alpha=0.7, label="best of generation")
    ax.plot(gens, [r["gen_mean_acc"] for r in log], "^:", alpha=0.7, label="mean of generation")
    ax.set_xlabel("generation")
    ax.set_ylabel("validation accuracy (inherited weights)")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


def plot_accuracy_vs_params(
    points: list[tuple[int, float]],
    front: list[tuple[int, float]],
    pick: tuple[int, float],
    path: Path,
    *,
    limits: tuple[float, float] | None = None,
) -> None:
    """Every evaluated candidate, the Pareto front and the pick; params in thousands."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.scatter([p / 1e3 for p, _ in points], [a for _, a in points], s=10, alpha=0.35, label="evaluated")
    if front:
        ax.step([p / 1e3 for p, _ in front], [a for _, a in front], where="post", color="C1", label="Pareto front")
    ax.scatter([pick[0] / 1e3], [pick[1]], marker="*", s=220, color="C3", zorder=5, label="pick")
    if limits:
        for x in limits:
            if x and x < 1e11:
                ax.axvline(x / 1e3, color="grey", ls="--", lw=1)
    ax.set_xlabel("parameters (thousands, paper's # params)")
    ax.set_ylabel("validation accuracy")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    _save(fig, path)


def plot_choices(subnet: Subnet, path: Path) -> None:
    """Layer x support grid of the chosen choices (like the paper's Fig. 4)."""
    plt = _plt()
    from matplotlib.colors import ListedColormap

    kinds = ["none", "scalar", "vector", "lora", "gift"]
    colors = ["#f0f0f0", "#c6dbef", "#6baed6", "#fd8d3c", "#74c476"]
    layers = list(subnet)
    grid = [[kinds.index(Choice.parse(subnet[n][s]).kind) for s in SUPPORTS] for n in layers]
    fig, ax = plt.subplots(figsize=(4.2, 0.6 + 0.22 * len(layers)))
    ax.imshow(grid, cmap=ListedColormap(colors), vmin=0, vmax=len(kinds) - 1, aspect="auto")
    for i, n in enumerate(layers):
        for j, s in enumerate(SUPPORTS):
            c = Choice.parse(subnet[n][s])
            label = {"none": "", "scalar": "s", "vector": "v"}.get(c.kind, f"{c.kind[0].upper()}{c.rank}")
            ax.text(j, i, label, ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(SUPPORTS)), SUPPORTS)
    ax.set_yticks(range(len(layers)), layers, fontsize=6)
    ax.xaxis.tick_top()
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors]
    ax.legend(handles, kinds, loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=7, frameon=False)
    _save(fig, path)
